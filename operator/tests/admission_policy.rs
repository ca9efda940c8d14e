//! The ValidatingAdmissionPolicy that holds the built-in node plugin to its own node's
//! objects: its shape (what it matches, how it is bound) and its CEL, evaluated on
//! admission requests by a real CEL implementation (`tests/admission_cel.py`, PyPI
//! `common-expression-language`; the test fails loudly when it is missing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use plinth_operator::render::rbac::{DriverPlugin, driver_rules};
use plinth_operator::render::{ManagedObject, Rendered};
use serde_json::{Value, json};

fn policy_of(r: &Rendered) -> Option<Value> {
    r.objects.iter().find_map(|o| match o {
        ManagedObject::ValidatingAdmissionPolicy(_) => Some(o.to_apply_json()),
        _ => None,
    })
}

fn binding_of(r: &Rendered) -> Option<Value> {
    r.objects.iter().find_map(|o| match o {
        ManagedObject::ValidatingAdmissionPolicyBinding(_) => Some(o.to_apply_json()),
        _ => None,
    })
}

#[test]
fn the_policy_matches_every_write_of_the_node_plugin_and_is_enforced() {
    let r = render_ok(&fixture("full"), &full_env());
    let policy = policy_of(&r).expect("a ValidatingAdmissionPolicy for the built-in driver");
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    let rules = spec["matchConstraints"]["resourceRules"]
        .as_array()
        .unwrap();
    assert_eq!(rules.len(), 1);
    let matched: BTreeSet<&str> = rules[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rules[0]["apiGroups"], json!(["plinth.dev"]));
    assert_eq!(rules[0]["operations"], json!(["CREATE", "UPDATE"]));
    // Whatever the node role lets the plugin write (create, patch) the policy checks.
    for rule in driver_rules(DriverPlugin::Node) {
        if !rule.verbs.iter().any(|v| v == "create" || v == "patch") {
            continue;
        }
        for resource in rule.resources.iter().flatten() {
            assert!(matched.contains(resource.as_str()), "{resource} unchecked");
        }
    }
    assert!(
        spec["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("'system:serviceaccount:storage:plinth-full-node'")
    );
    let binding = binding_of(&r).unwrap();
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // A third-party node plugin gets no API access from the operator: nothing to police.
    let third = render_ok(&fixture("third-party"), &full_env());
    assert!(policy_of(&third).is_none() && binding_of(&third).is_none());
}

/// A write of a PoolVolume on `node` (labelled for it, as the controller creates them).
fn review(user: &str, node_claim: Option<&str>, op: &str, node: &str, old: Option<&str>) -> Value {
    let mut user_info = json!({ "username": user });
    if let Some(claim) = node_claim {
        user_info["extra"] = json!({ "authentication.kubernetes.io/node-name": [claim] });
    }
    let object = |node: &str| {
        json!({
            "metadata": { "name": "0123456789abcdef0123456789abcdef",
                          "labels": { "plinth.dev/driver": "local.csi.plinth.dev",
                                      "plinth.dev/node": node } },
            "spec": { "driver": "local.csi.plinth.dev", "node": node },
        })
    };
    json!({
        "request": { "operation": op, "userInfo": user_info,
                     "resource": { "group": "plinth.dev", "version": "v1alpha1",
                                   "resource": "poolvolumes" } },
        "object": object(node),
        "oldObject": old.map(object),
    })
}

/// A write of the PoolNode named `name` for node `node`.
fn pool_node_review(node_claim: &str, op: &str, name: &str, node: &str) -> Value {
    let user = "system:serviceaccount:plinth-system:plinth-local-node";
    let mut r = review(user, Some(node_claim), op, node, None);
    r["request"]["resource"]["resource"] = "poolnodes".into();
    r["object"]["metadata"]["name"] = name.into();
    r
}

#[test]
fn the_policy_admits_a_node_plugin_only_on_its_own_nodes_objects() {
    let probe = Command::new("python3").args(["-c", "import cel"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the CEL evaluator is required for this test and is missing \
         (`pip install common-expression-language`, listed in .ci/requirements.txt)"
    );
    let r = render_ok(&fixture("minimal"), &full_env());
    let node = "system:serviceaccount:plinth-system:plinth-local-node";
    let controller = "system:serviceaccount:plinth-system:plinth-local-controller";
    let mut other_driver = review(node, Some("w1"), "CREATE", "w1", None);
    other_driver["object"]["spec"]["driver"] = "other.csi.example".into();
    let mut relabelled = review(node, Some("w1"), "UPDATE", "w1", Some("w1"));
    relabelled["object"]["metadata"]["labels"]["plinth.dev/node"] = "w2".into();
    let cases: Vec<(&str, Value, Option<usize>)> = vec![
        // (what, request, None = not matched / Some(number of failed validations))
        (
            "create own PoolNode",
            review(node, Some("w1"), "CREATE", "w1", None),
            Some(0),
        ),
        (
            "patch own status",
            review(node, Some("w1"), "UPDATE", "w1", Some("w1")),
            Some(0),
        ),
        (
            "create for another node (spec and label)",
            review(node, Some("w1"), "CREATE", "w2", None),
            Some(2),
        ),
        (
            "patch another node's (spec, old spec, label)",
            review(node, Some("w1"), "UPDATE", "w2", Some("w2")),
            Some(3),
        ),
        (
            "take over another node's",
            review(node, Some("w1"), "UPDATE", "w1", Some("w2")),
            Some(1),
        ),
        (
            "no node claim",
            review(node, None, "UPDATE", "w1", Some("w1")),
            Some(4),
        ),
        ("another driver's object", other_driver, Some(1)),
        ("relabel own object for another node", relabelled, Some(1)),
        (
            "own PoolNode under its own name",
            pool_node_review("w1", "CREATE", "w1.local.csi.plinth.dev", "w1"),
            Some(0),
        ),
        (
            "a PoolNode under another node's name",
            pool_node_review("w1", "CREATE", "w2.local.csi.plinth.dev", "w1"),
            Some(1),
        ),
        (
            "the controller is not matched",
            review(controller, None, "UPDATE", "w2", Some("w2")),
            None,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    let requests: Vec<&Value> = cases.iter().map(|(_, request, _)| request).collect();
    std::fs::write(
        &input,
        json!({ "policy": policy_of(&r).unwrap(), "requests": requests }).to_string(),
    )
    .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/admission_cel.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CEL evaluation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Option<Vec<String>>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    for ((what, _, expected), got) in cases.iter().zip(&results) {
        assert_eq!(got.as_ref().map(Vec::len), *expected, "{what}: {got:?}");
    }
    // Refusals say why, naming the node the token belongs to.
    let refused = results[2].as_ref().unwrap();
    assert!(
        refused[0].contains("on w1") && refused[0].contains("node w2"),
        "{refused:?}"
    );
    let relabel = results[7].as_ref().unwrap();
    assert!(relabel[0].contains("plinth.dev/node=w2"), "{relabel:?}");
    let pool_node = results[9].as_ref().unwrap();
    assert!(
        pool_node[0].contains("only PoolNode w1.local.csi.plinth.dev"),
        "{pool_node:?}"
    );
}
