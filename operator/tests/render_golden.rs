//! Golden snapshots (insta, YAML) of everything rendered, over every fixture and a matrix of
//! feature combinations. A change in output shows up as a reviewable diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use plinth_operator::crd::{CsiDeployment, Features};

/// Every optional feature of the built-in driver off (topology is not optional: each volume
/// lives in one node's pool).
fn all_off() -> Features {
    Features {
        snapshots: Some(false),
        resize: Some(false),
        clones: Some(false),
        ephemeral: Some(false),
        capacity_tracking: Some(false),
        topology: None,
        group_snapshots: Some(false),
    }
}

/// `minimal` with the given features.
fn with(features: Features) -> CsiDeployment {
    let mut cr = fixture("minimal");
    cr.spec.features = features;
    cr
}

/// Only a third-party driver can run without topology.
fn third_party_without_topology() -> CsiDeployment {
    let mut cr = fixture("third-party");
    cr.spec.features.topology = Some(false);
    cr
}

fn matrix() -> Vec<(&'static str, CsiDeployment)> {
    let off = all_off();
    let mut three = fixture("minimal");
    three.spec.controller.replicas = 3;
    vec![
        ("none", with(off)),
        (
            "snapshots",
            with(Features {
                snapshots: Some(true),
                ..off
            }),
        ),
        (
            "resize",
            with(Features {
                resize: Some(true),
                ..off
            }),
        ),
        (
            "snapshots-resize",
            with(Features {
                snapshots: Some(true),
                resize: Some(true),
                ..off
            }),
        ),
        (
            "capacity-tracking",
            with(Features {
                capacity_tracking: Some(true),
                topology: Some(true),
                ..off
            }),
        ),
        ("topology-off", third_party_without_topology()),
        (
            "ephemeral",
            with(Features {
                ephemeral: Some(true),
                ..off
            }),
        ),
        ("group-snapshots", group_snapshot_driver()),
        ("three-replicas", three),
    ]
}

#[test]
fn feature_matrix() {
    for (name, cr) in matrix() {
        let rendered = render_ok(&cr, &full_env());
        insta::assert_snapshot!(format!("matrix-{name}"), yaml(&rendered));
    }
}

#[test]
fn fixtures() {
    for name in fixture_names() {
        let rendered = render_ok(&fixture(&name), &env_for(&name));
        insta::assert_snapshot!(format!("fixture-{name}"), yaml(&rendered));
    }
}

/// What `plinth-operator render` prints today, with the built-in driver of this release.
#[test]
fn minimal_with_this_release() {
    let env = plinth_operator::render::RenderEnv {
        snapshot_crds_present: true,
        ..Default::default()
    };
    let rendered = render_ok(&fixture("minimal"), &env);
    insta::assert_snapshot!("release-minimal", yaml(&rendered));
}

/// The probe Job of a third-party driver (controller and node instances) and of the
/// built-in driver with an overridden image (its controller instance only).
#[test]
fn probe_jobs() {
    use plinth_operator::render::probe;
    let mut builtin = fixture("minimal");
    builtin.spec.driver.image = Some("example.com/plinth-driver:dev".into());
    for (name, mut cr) in [
        ("third-party", fixture("third-party")),
        ("builtin-image", builtin),
    ] {
        cr.metadata.uid = Some("7d3c1f0e-0000-4000-8000-00000000abcd".into());
        let setup = probe::setup(&cr, &full_env());
        let job = probe::job(&cr, &setup, "ghcr.io/plinth-dev/plinth-operator:v0.1.0");
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let mut names: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .chain(&pod.containers)
            .map(|c| c.name.as_str())
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "container names repeat in {name}");
        insta::assert_snapshot!(
            format!("probe-job-{name}"),
            serde_saphyr::to_string(&job).unwrap()
        );
    }
}

/// The fingerprint follows what changes the driver's answer, and nothing else.
#[test]
fn probe_fingerprint_follows_image_and_arguments_only() {
    use plinth_operator::render::probe;
    let base = fixture("third-party");
    let fp = |cr: &CsiDeployment| probe::setup(cr, &full_env()).fingerprint;
    let mut image = base.clone();
    image.spec.driver.image = Some("registry.acme.example/csi/acme-block:v2.5.0".into());
    let mut args = base.clone();
    args.spec
        .driver
        .third_party
        .as_mut()
        .unwrap()
        .node_args
        .push("--v=5".into());
    let mut unrelated = base.clone();
    unrelated.spec.controller.replicas = 3;
    unrelated.spec.features.resize = Some(false);
    unrelated.spec.storage_classes = Some(Vec::new());
    assert_ne!(fp(&image), fp(&base));
    assert_ne!(fp(&args), fp(&base));
    assert_eq!(fp(&unrelated), fp(&base));
    assert_eq!(fp(&base).len(), 10);
}

/// `status.sidecars` of the host-path sample once its probe answered, one line per
/// sidecar as the README's jsonpath prints it (the README quotes this snapshot).
#[test]
fn hostpath_sidecar_decisions() {
    let rendered = render_ok(&fixture("hostpath"), &env_for("hostpath"));
    let lines: Vec<String> = rendered
        .sidecar_decisions
        .iter()
        .map(|d| format!("{}/{}: {} ({})", d.pod, d.name, d.deployed, d.reason))
        .collect();
    insta::assert_snapshot!("hostpath-sidecars", lines.join("\n"));
}
