//! Every rendered object against the real Kubernetes v1.34 OpenAPI schemas, and every
//! CsiDeployment fixture against the CRD generated from our types, through
//! `tests/kube_validate.py` (PyPI `kubernetes-validate`, which bundles the schemas; strict:
//! unknown fields fail). Needs `python3` with `pip install kubernetes-validate`: the test
//! fails, loudly, when it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use kube::CustomResourceExt;
use plinth_operator::crd::CsiDeployment;
use plinth_operator::render::RenderEnv;

fn require_validator() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "kubernetes-validate is required for this test and is missing \
             (`pip install kubernetes-validate`): {other:?}"
        ),
    }
}

fn write(dir: &Path, sub: &str, name: &str, text: &str) {
    let dir = dir.join(sub);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn rendered_objects_and_fixtures_pass_the_schemas() {
    require_validator();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let envs = [
        ("full", full_env()),
        (
            "release",
            RenderEnv {
                snapshot_crds_present: true,
                ..RenderEnv::default()
            },
        ),
        ("no-snapshot-crds", RenderEnv::default()),
    ];
    let mut written = 0;
    for name in fixture_names() {
        let cr = fixture(&name);
        let text = std::fs::read_to_string(fixtures_dir().join(format!("{name}.yaml"))).unwrap();
        write(base, "crs", &format!("{name}.yaml"), &text);
        for (env_name, env) in &envs {
            let env = &RenderEnv {
                driver_capabilities: advertised(&name),
                ..env.clone()
            };
            // A fixture may ask for features the release does not serve yet: that refusal
            // is validate()'s business, tested elsewhere.
            let Ok(rendered) = plinth_operator::render::render(&cr, env) else {
                continue;
            };
            let mut uid = cr.clone();
            uid.metadata.uid = Some("7d3c1f0e-0000-4000-8000-00000000abcd".into());
            let owned = plinth_operator::render::render(&uid, env).unwrap();
            let probe = plinth_operator::render::probe::setup(&uid, env);
            let job = plinth_operator::render::probe::job(&uid, &probe, "example.com/op:v1");
            write(
                base,
                "objects",
                &format!("{name}-{env_name}-probe-job.json"),
                &serde_json::to_string_pretty(&job).unwrap(),
            );
            for (tag, r) in [("offline", &rendered), ("owned", &owned)] {
                for (i, o) in r.objects.iter().enumerate() {
                    let json = serde_json::to_string_pretty(&o.to_apply_json()).unwrap();
                    write(
                        base,
                        "objects",
                        &format!("{name}-{env_name}-{tag}-{i:02}.json"),
                        &json,
                    );
                    written += 1;
                }
            }
        }
    }
    assert!(written > 100, "only {written} objects rendered");

    // The validator must be live: these two must be refused.
    let r = render_ok(&fixture("minimal"), &full_env());
    let mut bad = stateful_set(&r).clone();
    bad.spec.as_mut().unwrap().replicas = None;
    let mut json = serde_json::to_value(&bad).unwrap();
    json["spec"]["replica"] = 3.into();
    write(base, "invalid-objects", "typo.json", &json.to_string());
    write(
        base,
        "invalid-crs",
        "typo.yaml",
        "apiVersion: plinth.dev/v1alpha1\nkind: CsiDeployment\nmetadata: {name: x}\n\
         spec:\n  namespace: x\n  controller:\n    replica: 2\n",
    );
    write(
        base,
        "invalid-crs",
        "zero-replicas.yaml",
        "apiVersion: plinth.dev/v1alpha1\nkind: CsiDeployment\nmetadata: {name: x}\n\
         spec:\n  namespace: x\n  controller:\n    replicas: 0\n",
    );
    write(
        base,
        "invalid-crs",
        "bad-feature-value.yaml",
        "apiVersion: plinth.dev/v1alpha1\nkind: CsiDeployment\nmetadata: {name: x}\n\
         spec:\n  namespace: x\n  deletionPolicy: Delete\n",
    );

    let crd = serde_json::to_string(&CsiDeployment::crd()).unwrap();
    std::fs::write(base.join("crd.json"), crd).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube_validate.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schema validation failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
