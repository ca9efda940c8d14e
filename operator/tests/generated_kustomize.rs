//! config/ builds with kustomize and installs a locked-down operator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod generated_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use generated_support::{kustomize, read, repo_root, yaml};
use serde_json::Value;

fn kustomization(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let k: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(k["kind"], "Kustomization", "{}", dir.display());
    k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_kustomization_lists_existing_resources_once() {
    let config = repo_root().join("config");
    for dir in ["crd", "rbac", "manager", "samples", "default"] {
        let dir = config.join(dir);
        let resources = kustomization(&dir);
        assert!(!resources.is_empty(), "{} lists nothing", dir.display());
        let unique: BTreeSet<&String> = resources.iter().collect();
        assert_eq!(
            unique.len(),
            resources.len(),
            "{}: duplicates",
            dir.display()
        );
        for resource in &resources {
            let path = dir.join(resource);
            assert!(
                path.is_file() || path.join("kustomization.yaml").is_file(),
                "{} lists {resource}, which does not exist",
                dir.display()
            );
        }
    }
    let default = kustomization(&config.join("default"));
    assert!(
        !default.iter().any(|r| r.contains("samples")),
        "installing the operator must not deploy a driver"
    );
}

#[test]
fn kustomize_builds_the_whole_install() {
    let objects = kustomize("config/default");
    let kinds: BTreeSet<(String, String)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (kind, name) in [
        ("CustomResourceDefinition", "csideployments.plinth.dev"),
        ("Namespace", "plinth-system"),
        ("ServiceAccount", "plinth-operator"),
        ("ClusterRole", "plinth-operator"),
        ("ClusterRoleBinding", "plinth-operator"),
        ("Role", "plinth-operator-leader-election"),
        ("RoleBinding", "plinth-operator-leader-election"),
        ("Deployment", "plinth-operator"),
        ("Service", "plinth-operator-metrics"),
        // The built-in driver's: a CsiDeployment of it must work with no manual step.
        ("CustomResourceDefinition", "poolvolumes.plinth.dev"),
        ("CustomResourceDefinition", "poolsnapshots.plinth.dev"),
        ("CustomResourceDefinition", "poolnodes.plinth.dev"),
    ] {
        assert!(
            kinds.contains(&(kind.to_owned(), name.to_owned())),
            "{kind}/{name} missing from config/default"
        );
    }
    assert_eq!(objects.len(), kinds.len(), "an object appears twice");
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let namespaced = !matches!(
            kind,
            "CustomResourceDefinition" | "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        assert_eq!(
            object["metadata"]["namespace"].as_str(),
            namespaced.then_some("plinth-system"),
            "{kind}"
        );
    }
}

#[test]
fn operator_deployment_is_locked_down_and_probed() {
    let objects = kustomize("config/default");
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "plinth-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "{kind}.{resource} unset"
            );
        }
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args.first(), Some(&"run"));
    assert!(
        args.contains(&"--leader-elect"),
        "replicas > 1 must be safe"
    );
    let env: BTreeSet<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains("POD_NAMESPACE") && env.contains("POD_NAME"));
}

#[test]
fn samples_build_separately_and_are_csideployments() {
    let objects = kustomize("config/samples");
    assert_eq!(
        objects.len(),
        plinth_operator::generate::samples::SAMPLES.len()
    );
    for object in objects {
        assert_eq!(object["apiVersion"], "plinth.dev/v1alpha1");
        assert_eq!(object["kind"], "CsiDeployment");
        assert!(
            object["metadata"]["namespace"].is_null(),
            "the CR is cluster-scoped"
        );
    }
}

#[test]
fn leader_election_role_names_the_lease_the_operator_uses() {
    use clap::Args;
    let cmd = plinth_operator::run::RunArgs::augment_args(clap::Command::new("run"));
    let default = cmd
        .get_arguments()
        .find(|a| a.get_id() == "lease_name")
        .and_then(|a| a.get_default_values().first())
        .and_then(|v| v.to_str())
        .expect("run has a --lease-name default");
    assert_eq!(default, plinth_operator::generate::rbac::LEASE_NAME);
    let role = yaml(&read("config/rbac/leader_election_role.yaml"));
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resourceNames"] == serde_json::json!([default])),
        "the Role grants get/patch/update on the Lease `{default}`"
    );
}

/// What `kubectl apply -k config/default` sends, against the Kubernetes 1.34 OpenAPI schemas,
/// and the samples against the generated CRD's schema, both strict (unknown fields fail),
/// through the render tests' harness (`tests/kube_validate.py`, PyPI kubernetes-validate).
#[test]
fn installed_manifests_and_samples_pass_the_kubernetes_schemas() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "kubernetes-validate is required (pip install -r .ci/requirements.txt)"
    );
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    for sub in ["objects", "invalid-objects", "crs"] {
        std::fs::create_dir_all(base.join(sub)).unwrap();
    }
    let objects = kustomize("config/default");
    for (i, object) in objects.iter().enumerate() {
        std::fs::write(
            base.join(format!("objects/{i:02}.json")),
            object.to_string(),
        )
        .unwrap();
    }
    // Proves the validator is live in this run: a misspelt field must be refused.
    let mut typo = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap()
        .clone();
    typo["spec"]["replica"] = 2.into();
    std::fs::write(base.join("invalid-objects/typo.json"), typo.to_string()).unwrap();
    for (i, sample) in kustomize("config/samples").iter().enumerate() {
        std::fs::write(base.join(format!("crs/{i:02}.yaml")), sample.to_string()).unwrap();
    }
    let crd = yaml(&read(&format!(
        "config/crd/bases/{}",
        plinth_operator::generate::CRD_FILE
    )));
    std::fs::write(base.join("crd.json"), crd.to_string()).unwrap();

    let out = Command::new("python3")
        .arg(repo_root().join("operator/tests/kube_validate.py"))
        .arg(base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schema validation failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(counts["objects"], objects.len());
    assert_eq!(
        counts["crs"],
        plinth_operator::generate::samples::SAMPLES.len()
    );
    assert_eq!(counts["invalid"], 1);
}
