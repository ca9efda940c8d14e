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
        let rendered = render_ok(&fixture(&name), &full_env());
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
