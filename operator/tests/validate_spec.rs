//! `validate()`: every rule the schema cannot express, each error naming its field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use plinth_driver::capabilities::DriverFeatures;
use plinth_operator::crd::{
    CsiDeployment, LifecycleMode, StorageClassSpec, VolumeSnapshotClassSpec,
};
use plinth_operator::render::{RenderEnv, RenderError, render};
use plinth_operator::validate::{ValidationErrors, validate_in};

fn errors(cr: &CsiDeployment) -> ValidationErrors {
    validate_in(cr, &full_env()).expect_err("the spec must be refused")
}

fn assert_refused(cr: &CsiDeployment, field: &str, words: &str) {
    let errors = errors(cr);
    let error = errors
        .0
        .iter()
        .find(|e| e.field == field)
        .unwrap_or_else(|| panic!("no error on {field}: {errors}"));
    assert!(
        error.message.contains(words),
        "{field}: {:?} does not say {words:?}",
        error.message
    );
}

fn class(name: &str, default: bool) -> StorageClassSpec {
    StorageClassSpec {
        default,
        ..serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
    }
}

#[test]
fn every_fixture_is_valid() {
    for name in fixture_names() {
        validate_in(&fixture(&name), &full_env()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn duplicate_and_double_default_storage_classes() {
    let mut cr = fixture("minimal");
    cr.spec.storage_classes = Some(vec![class("a", true), class("b", true), class("a", false)]);
    assert_refused(&cr, "spec.storageClasses[1].default", "already the default");
    assert_refused(&cr, "spec.storageClasses[2].name", "listed twice");
}

#[test]
fn duplicate_snapshot_classes_and_classes_without_snapshots() {
    let vsc = |name: &str| -> VolumeSnapshotClassSpec {
        serde_json::from_value(serde_json::json!({ "name": name, "default": true })).unwrap()
    };
    let mut cr = fixture("minimal");
    cr.spec.volume_snapshot_classes = Some(vec![vsc("s"), vsc("s")]);
    assert_refused(&cr, "spec.volumeSnapshotClasses[1].name", "listed twice");
    assert_refused(
        &cr,
        "spec.volumeSnapshotClasses[1].default",
        "already the default",
    );
    cr.spec.features.snapshots = Some(false);
    assert_refused(&cr, "spec.volumeSnapshotClasses", "snapshots are off");
}

#[test]
fn third_party_feature_without_the_capability() {
    let mut cr = fixture("third-party");
    cr.spec.features.snapshots = Some(true);
    cr.spec.features.capacity_tracking = Some(true);
    assert_refused(&cr, "spec.features.snapshots", "CREATE_DELETE_SNAPSHOT");
    assert_refused(&cr, "spec.features.capacityTracking", "GET_CAPACITY");
    // Unset features of a third-party driver just follow its capabilities.
    cr.spec.features.snapshots = None;
    cr.spec.features.capacity_tracking = None;
    validate_in(&cr, &full_env()).unwrap();
}

#[test]
fn third_party_needs_an_image_and_consistent_capabilities() {
    let mut cr = fixture("third-party");
    cr.spec.driver.image = None;
    let third = cr.spec.driver.third_party.as_mut().unwrap();
    third.capabilities.as_mut().unwrap().plugin.clear();
    cr.spec.node.pool_reserve = Some("1Gi".into());
    assert_refused(&cr, "spec.driver.image", "image");
    assert_refused(
        &cr,
        "spec.driver.thirdParty.capabilities.plugin",
        "CONTROLLER_SERVICE",
    );
    assert_refused(&cr, "spec.node.poolReserve", "built-in driver only");
    cr.spec.driver.name = "local.csi.plinth.dev".into();
    assert_refused(&cr, "spec.driver.name", "its own name");
}

#[test]
fn builtin_feature_the_release_does_not_serve() {
    let mut cr = fixture("minimal");
    cr.spec.features.snapshots = Some(true);
    let none = RenderEnv {
        builtin_features: DriverFeatures {
            snapshots: false,
            ..DriverFeatures::default()
        },
        ..full_env()
    };
    let errors = validate_in(&cr, &none).unwrap_err();
    assert!(errors.has_field("spec.features.snapshots"), "{errors}");
    // And render refuses it the same way, with the same field.
    assert_render_refuses(&cr, &none, &["spec.features.snapshots"]);
}

/// `render` refuses `cr` as invalid, naming each of `fields`.
fn assert_render_refuses(cr: &CsiDeployment, env: &RenderEnv, fields: &[&str]) {
    match render(cr, env) {
        Err(RenderError::Invalid(e)) => {
            for field in fields {
                assert!(e.has_field(field), "{field}: {e}");
            }
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[test]
fn host_paths_must_be_absolute_and_apart() {
    let mut cr = fixture("minimal");
    cr.spec.node.kubelet_dir = "var/lib/kubelet".into();
    assert_refused(&cr, "spec.node.kubeletDir", "absolute");
    cr.spec.node.kubelet_dir = "/var/lib/../kubelet".into();
    assert_refused(&cr, "spec.node.kubeletDir", "absolute");
    cr.spec.node.kubelet_dir = "/var/lib/kubelet".into();
    cr.spec.node.pool_path = Some("/var/lib/kubelet/plinth".into());
    assert_refused(&cr, "spec.node.poolPath", "overlaps kubeletDir");
    cr.spec.node.pool_path = Some("/".into());
    assert_refused(&cr, "spec.node.poolPath", "absolute");
}

#[test]
fn the_default_pool_is_named_for_the_driver() {
    let mut cr = fixture("minimal");
    cr.spec.node.pool_path = None;
    assert_eq!(cr.spec.pool_path(), "/var/lib/plinth/local.csi.plinth.dev");
    cr.spec.driver.name = "fast.csi.example.com".into();
    assert_eq!(cr.spec.pool_path(), "/var/lib/plinth/fast.csi.example.com");
    cr.spec.node.pool_path = Some("/srv/pool".into());
    assert_eq!(cr.spec.pool_path(), "/srv/pool");
}

#[test]
fn inline_volume_limits_the_driver_would_refuse_are_refused_here() {
    use plinth_operator::crd::InlineVolumeLimits;
    let mut cr = fixture("minimal");
    cr.spec.node.inline_volumes = Some(InlineVolumeLimits {
        default_size: Some("2Gi".into()),
        max_size: Some("1Gi".into()),
        ..InlineVolumeLimits::default()
    });
    assert_refused(&cr, "spec.node.inlineVolumes.defaultSize", "above maxSize");
    cr.spec.node.inline_volumes = Some(InlineVolumeLimits {
        max_size: Some("100Gi".into()),
        ..InlineVolumeLimits::default()
    });
    assert_refused(&cr, "spec.node.inlineVolumes.maxSize", "above maxTotalSize");
    cr.spec.node.inline_volumes = Some(InlineVolumeLimits {
        max_total_size: Some("0".into()),
        ..InlineVolumeLimits::default()
    });
    assert_refused(&cr, "spec.node.inlineVolumes.maxTotalSize", "above zero");
    let mut third = fixture("third-party");
    third.spec.node.inline_volumes = Some(InlineVolumeLimits::default());
    assert_refused(&third, "spec.node.inlineVolumes", "built-in driver only");
}

#[test]
fn csi_driver_overrides_that_would_break_volumes() {
    let mut cr = fixture("minimal");
    cr.spec.csi_driver.attach_required = Some(true);
    cr.spec.features.capacity_tracking = Some(false);
    cr.spec.csi_driver.storage_capacity = Some(true);
    cr.spec.features.ephemeral = Some(false);
    cr.spec.csi_driver.volume_lifecycle_modes = Some(vec![LifecycleMode::Ephemeral]);
    assert_refused(
        &cr,
        "spec.csiDriver.attachRequired",
        "PUBLISH_UNPUBLISH_VOLUME",
    );
    assert_refused(
        &cr,
        "spec.csiDriver.storageCapacity",
        "capacity tracking is off",
    );
    assert_refused(
        &cr,
        "spec.csiDriver.volumeLifecycleModes",
        "ephemeral volumes are off",
    );
}

#[test]
fn expansion_allowed_without_resize() {
    let mut cr = fixture("minimal");
    cr.spec.features.resize = Some(false);
    let mut sc = class("x", false);
    sc.allow_volume_expansion = Some(true);
    cr.spec.storage_classes = Some(vec![sc]);
    assert_refused(
        &cr,
        "spec.storageClasses[0].allowVolumeExpansion",
        "resize is off",
    );
}

#[test]
fn unknown_image_override_and_resource_keys() {
    let mut cr = fixture("minimal");
    cr.spec
        .images
        .overrides
        .insert("csi-provisoner".into(), "x/y:z".into());
    cr.spec
        .controller
        .resources
        .insert("node-driver-registrar".into(), Default::default());
    assert_refused(
        &cr,
        "spec.images.overrides.csi-provisoner",
        "csi-provisioner, ",
    );
    assert_refused(
        &cr,
        "spec.controller.resources.node-driver-registrar",
        "no container",
    );
}

#[test]
fn names_that_cannot_prefix_objects() {
    let mut cr = fixture("minimal");
    cr.metadata.name = Some("a-name-that-is-far-too-long-for-plinth-objects".into());
    cr.spec.namespace = "Not_A_Namespace".into();
    cr.spec.driver.name = "Local.CSI".into();
    assert_refused(&cr, "metadata.name", "at most 34");
    assert_refused(&cr, "spec.namespace", "namespace name");
    assert_refused(&cr, "spec.driver.name", "DNS subdomain");
}

#[test]
fn the_builtin_driver_refuses_what_a_cluster_of_pools_cannot_serve() {
    let mut cr = fixture("minimal");
    cr.spec.features.topology = Some(false);
    cr.spec.features.group_snapshots = Some(true);
    cr.spec.controller.timeout = "1s".into();
    assert_refused(&cr, "spec.features.topology", "needs topology");
    assert_refused(
        &cr,
        "spec.features.groupSnapshots",
        "does not serve group snapshots in a cluster",
    );
    assert_refused(&cr, "spec.controller.timeout", "2s or more");
    // The same CR is refused by render, against the release's own driver.
    assert_render_refuses(
        &cr,
        &RenderEnv::default(),
        &[
            "spec.features.topology",
            "spec.features.groupSnapshots",
            "spec.controller.timeout",
        ],
    );
    // 2s is enough; a third-party driver may run without topology and with any timeout.
    let mut ok = fixture("minimal");
    ok.spec.controller.timeout = "2s".into();
    validate_in(&ok, &full_env()).unwrap();
    let mut third = fixture("third-party");
    third.spec.features.topology = Some(false);
    third.spec.controller.timeout = "500ms".into();
    validate_in(&third, &full_env()).unwrap();
}
