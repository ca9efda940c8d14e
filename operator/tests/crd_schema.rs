//! The CRD generated from the Rust types: what `kubectl` users and the apiserver see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::CustomResourceExt;
use plinth_operator::crd::CsiDeployment;
use serde_json::Value;

fn crd() -> Value {
    serde_json::to_value(CsiDeployment::crd()).unwrap()
}

fn schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every (path, description) below `node`, so missing descriptions can be listed.
fn undocumented(node: &Value, path: String, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            if child.get("description").is_none() {
                out.push(child_path.clone());
            }
            undocumented(child, child_path, out);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented(items, format!("{path}[]"), out);
    }
}

#[test]
fn cluster_scoped_with_names_status_and_printer_columns() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "csideployments.plinth.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "csid");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Driver", "Namespace", "Ready", "Registered", "Age"]
    );
}

#[test]
fn every_spec_field_is_documented_for_kubectl_explain() {
    let mut missing = Vec::new();
    // The k8s-openapi types bring their own descriptions; ours must too.
    undocumented(&schema()["properties"]["spec"], "spec".into(), &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn the_schema_carries_validation_the_apiserver_enforces() {
    let spec = &schema()["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["namespace"]));
    let replicas = &spec["properties"]["controller"]["properties"]["replicas"];
    assert_eq!(replicas["minimum"].as_f64(), Some(1.0));
    let classes = &spec["properties"]["storageClasses"];
    assert_eq!(classes["x-kubernetes-list-type"], "map");
    assert_eq!(classes["x-kubernetes-list-map-keys"][0], "name");
    assert!(
        classes["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("c.default")
    );
    let name = &spec["properties"]["driver"]["properties"]["name"];
    assert_eq!(
        name["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
    assert_eq!(name["default"], "local.csi.plinth.dev");
    let policy = &spec["properties"]["deletionPolicy"];
    assert_eq!(
        policy["enum"],
        serde_json::json!(["RefuseWhileVolumesExist", "OrphanVolumes"])
    );
    let root_rules = schema()["x-kubernetes-validations"].to_string();
    assert!(root_rules.contains("self.metadata.name.size() <= 34"));
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
}

#[test]
fn the_crd_subcommand_prints_the_same_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plinth-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed, crd());
}

/// The objects `plinth-operator <args>` prints; the command must succeed.
fn rendered(args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plinth-operator"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[test]
fn the_render_subcommand_prints_every_object_and_refuses_bad_input() {
    let bin = env!("CARGO_BIN_EXE_plinth-operator");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minimal.yaml");
    let docs = rendered(&["render", "-f", fixture, "--snapshot-crds", "absent"]);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"CSIDriver"));
    assert!(kinds.contains(&"StatefulSet") && kinds.contains(&"DaemonSet"));
    assert!(!kinds.contains(&"VolumeSnapshotClass"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: plinth.dev/v1alpha1\nkind: CsiDeployment\nmetadata: {name: x}\n\
         spec:\n  namespace: x\n  node: {kubeletDir: relative/path}\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.node.kubeletDir"), "{stderr}");
}

/// A third-party CR that declares no capabilities renders offline only with the probe's
/// answer: without it the render says what is missing, with it the per-node provisioner
/// lands in the DaemonSet and no StatefulSet is printed.
#[test]
fn render_of_an_undeclared_driver_takes_the_probe_answer() {
    let bin = env!("CARGO_BIN_EXE_plinth-operator");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let fixture = format!("{dir}/hostpath.yaml");
    let out = std::process::Command::new(bin)
        .args(["render", "-f", &fixture])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.driver.thirdParty.capabilities"),
        "{stderr}"
    );

    let answer = format!("{dir}/advertised/hostpath.yaml");
    let docs = rendered(&["render", "-f", &fixture, "--capabilities", &answer]);
    assert!(!docs.iter().any(|d| d["kind"] == "StatefulSet"));
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let names: Vec<&str> = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"csi-provisioner"), "{names:?}");
}

/// `node.poolPath` can neither change nor appear or vanish once the CR exists (the
/// default follows the driver name, so unset is a value too): evaluated with a real CEL
/// implementation, as the apiserver evaluates the transition rule on every update.
#[test]
fn pool_path_is_immutable_set_or_unset() {
    let node = &schema()["properties"]["spec"]["properties"]["node"];
    assert!(
        node.get("default").is_some(),
        "spec.node must default, or the rule is skipped when it is added later"
    );
    let rule = node["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .expect("a transition rule on spec.node");
    let cases = serde_json::json!([
        [{"poolPath": "/srv/a"}, {"poolPath": "/srv/a"}, true],
        [{"poolPath": "/srv/b"}, {"poolPath": "/srv/a"}, false],
        [{"poolPath": "/srv/a"}, {}, false],
        [{}, {"poolPath": "/srv/a"}, false],
        [{"kubeletDir": "/k"}, {}, true],
    ]);
    assert_cel(rule, &cases);
}

/// Evaluates `rule` with a real CEL implementation on `[self, oldSelf, expected]` cases
/// and asserts each result.
fn assert_cel(rule: &str, cases: &serde_json::Value) {
    let script = r#"
import json, sys, cel
rule, cases = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps([cel.evaluate(rule, {"self": new, "oldSelf": old}) for new, old, _ in cases]))
"#;
    let probe = std::process::Command::new("python3")
        .args(["-c", "import cel"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the CEL evaluator is required (`pip install common-expression-language`, in \
         .ci/requirements.txt)"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", script, rule, &cases.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<bool> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[2].as_bool().unwrap())
        .collect();
    assert_eq!(got, want, "rule {rule}");
}

/// `thirdParty.probe: false` needs declared capabilities; probing needs none.
#[test]
fn no_probe_requires_a_declaration() {
    let driver = &schema()["properties"]["spec"]["properties"]["driver"];
    let third = &driver["properties"]["thirdParty"];
    assert_eq!(third["properties"]["probe"]["default"], true);
    let rule = third["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .expect("a rule on thirdParty");
    let caps = serde_json::json!({"controller": ["CREATE_DELETE_VOLUME"]});
    assert_cel(
        rule,
        &serde_json::json!([
            [{"probe": true}, null, true],
            [{}, null, true],
            [{"probe": false}, null, false],
            [{"probe": false, "capabilities": caps}, null, true],
            [{"probe": true, "capabilities": caps}, null, true],
        ]),
    );
}

/// Every format in every generated CRD is one the API server knows: an unknown one
/// (`uint64` from a Rust `u64`) makes it warn on each write of such an object.
#[test]
fn generated_crds_use_only_formats_the_api_server_knows() {
    const KNOWN: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/crd/bases");
    let mut unknown = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            if let Some(format) = line.trim().strip_prefix("format: ")
                && !KNOWN.contains(&format)
            {
                unknown.push(format!("{}: {format}", path.display()));
            }
        }
    }
    assert!(unknown.is_empty(), "unknown formats: {unknown:#?}");
}

/// `kubectl apply` (client-side, as the README's `kubectl apply -k config/default`) keeps
/// the whole object in the `last-applied-configuration` annotation, and annotations are
/// limited to 256 KiB in total: a bigger CRD installs only with `--server-side`.
#[test]
fn the_crd_fits_a_client_side_apply() {
    const ANNOTATIONS_LIMIT: usize = 256 * 1024;
    let applied = serde_json::to_string(&crd()).expect("CRD serializes");
    assert!(
        applied.len() < ANNOTATIONS_LIMIT,
        "the CRD is {} bytes as JSON, over the {ANNOTATIONS_LIMIT} bytes kubectl's \
         last-applied annotation may hold",
        applied.len()
    );
}

/// Extra pod volumes are schemaless in the CRD (the Volume schema is what made it too
/// big), so validation is what tells a user that one is malformed.
#[test]
fn a_malformed_extra_volume_is_a_sentence_not_an_unreadable_object() {
    let cr: CsiDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "plinth.dev/v1alpha1", "kind": "CsiDeployment",
        "metadata": {"name": "ext"},
        "spec": {"namespace": "ext", "driver": {"name": "ext.csi.example.com",
            "image": "example.com/ext:v1",
            "thirdParty": {"capabilities": {"controller": ["CREATE_DELETE_VOLUME"]},
                "nodePod": {"volumes": [{"name": "data", "hostPath": "/srv/data"}]}}}}
    }))
    .expect("a malformed volume still deserializes: the CR stays readable");
    let errors = plinth_operator::validate::validate(&cr).expect_err("the volume is malformed");
    let text = errors.to_string();
    assert!(
        text.contains("spec.driver.thirdParty.nodePod.volumes[0]")
            && text.contains("is not a pod volume")
            && text.contains("kubectl explain pod.spec.volumes"),
        "{text}"
    );
}
