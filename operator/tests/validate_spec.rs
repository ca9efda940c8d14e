//! `validate()`: every rule the schema cannot express, each error naming its field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use plinth_api::capabilities::DriverFeatures;
use plinth_operator::crd::{
    CsiDeployment, LifecycleMode, StorageClassSpec, VolumeSnapshotClassSpec,
};
use plinth_operator::render::{RenderEnv, RenderError, render};
use plinth_operator::validate::{ValidationErrors, validate_in};

fn errors(cr: &CsiDeployment) -> ValidationErrors {
    errors_in(cr, &full_env())
}

fn errors_in(cr: &CsiDeployment, env: &RenderEnv) -> ValidationErrors {
    validate_in(cr, env).expect_err("the spec must be refused")
}

fn assert_refused(cr: &CsiDeployment, field: &str, words: &str) {
    assert_refused_in(cr, &full_env(), field, words);
}

fn assert_refused_in(cr: &CsiDeployment, env: &RenderEnv, field: &str, words: &str) {
    let errors = errors_in(cr, env);
    let on_field: Vec<&str> = errors
        .0
        .iter()
        .filter(|e| e.field == field)
        .map(|e| e.message.as_str())
        .collect();
    assert!(!on_field.is_empty(), "no error on {field}: {errors}");
    assert!(
        on_field.iter().any(|m| m.contains(words)),
        "{field}: {on_field:?} does not say {words:?}"
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
        validate_in(&fixture(&name), &env_for(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
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

fn third(cr: &mut CsiDeployment) -> &mut plinth_operator::crd::ThirdPartyDriver {
    cr.spec.driver.third_party.as_mut().unwrap()
}

fn json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

#[test]
fn driver_pod_extras_are_checked() {
    let mut cr = fixture("third-party");
    {
        let t = third(&mut cr);
        t.controller_pod.volumes = vec![json(serde_json::json!({
            "name": "host", "hostPath": { "path": "/etc/acme" },
        }))];
        t.controller_pod.volume_mounts = vec![json(
            serde_json::json!({ "name": "missing", "mountPath": "/x" }),
        )];
        t.controller_pod.env = vec![json(
            serde_json::json!({ "name": "CSI_ENDPOINT", "value": "x" }),
        )];
        t.node_pod.volumes = vec![
            json(serde_json::json!({ "name": "dev", "emptyDir": {} })),
            json(serde_json::json!({ "name": "data", "emptyDir": {} })),
            json(serde_json::json!({ "name": "data", "emptyDir": {} })),
        ];
        t.sidecar_args
            .insert("csi-provisoner".to_owned(), vec!["--x".to_owned()]);
    }
    assert_refused(
        &cr,
        "spec.driver.thirdParty.controllerPod.volumes[0].hostPath",
        "hostPath volumes are allowed in nodePod only",
    );
    assert_refused(
        &cr,
        "spec.driver.thirdParty.controllerPod.volumeMounts[0].name",
        "names no volume of controllerPod.volumes",
    );
    assert_refused(
        &cr,
        "spec.driver.thirdParty.controllerPod.env[0].name",
        "is set by Plinth",
    );
    assert_refused(
        &cr,
        "spec.driver.thirdParty.nodePod.volumes[0].name",
        "one of Plinth's own volumes",
    );
    assert_refused(
        &cr,
        "spec.driver.thirdParty.nodePod.volumes[2].name",
        "listed twice",
    );
    assert_refused(
        &cr,
        "spec.driver.thirdParty.sidecarArgs.csi-provisoner",
        "no sidecar \"csi-provisoner\"",
    );
    // hostPath on the node side is fine: that container is privileged already.
    let mut ok = fixture("third-party");
    third(&mut ok).node_pod.volumes = vec![json(serde_json::json!({
        "name": "host", "hostPath": { "path": "/var/lib/acme" },
    }))];
    validate_in(&ok, &full_env()).unwrap();
}

#[test]
fn per_node_provisioning_needs_topology_and_refuses_attach_and_resize() {
    let mut cr = fixture("third-party");
    {
        let t = third(&mut cr);
        t.provisioning = plinth_operator::crd::Provisioning::PerNode;
    }
    cr.spec.features.topology = Some(false);
    // third-party.yaml: PUBLISH_UNPUBLISH_VOLUME, resize: true, controllerArgs set.
    assert_refused(
        &cr,
        "spec.driver.thirdParty.provisioning",
        "PerNode needs topology",
    );
    assert_refused(
        &cr,
        "spec.driver.thirdParty.provisioning",
        "cannot serve PUBLISH_UNPUBLISH_VOLUME",
    );
    assert_refused(&cr, "spec.features.resize", "no per-node mode");
    assert_refused(
        &cr,
        "spec.driver.thirdParty.controllerArgs",
        "PerNode runs no controller pod",
    );
    let mut expansion = fixture("hostpath");
    expansion.spec.storage_classes.as_mut().unwrap()[0].allow_volume_expansion = Some(true);
    assert_refused_in(
        &expansion,
        &env_for("hostpath"),
        "spec.storageClasses[0].allowVolumeExpansion",
        "external-resizer has no per-node mode",
    );
}

#[test]
fn operation_secret_names_need_their_namespace() {
    let mut cr = fixture("third-party");
    let params = &mut cr.spec.storage_classes.as_mut().unwrap()[0].parameters;
    params.insert(
        "csi.storage.k8s.io/provisioner-secret-name".to_owned(),
        "creds".to_owned(),
    );
    params.insert(
        "csi.storage.k8s.io/node-stage-secret-namespace".to_owned(),
        "keys".to_owned(),
    );
    params.insert(
        "csi.storage.k8s.io/controller-expand-secret-name".to_owned(),
        "x".to_owned(),
    );
    params.insert(
        "csi.storage.k8s.io/controller-expand-secret-namespace".to_owned(),
        "Not_A_Namespace".to_owned(),
    );
    let errors = errors(&cr);
    let messages: Vec<&str> = errors
        .0
        .iter()
        .filter(|e| e.field.starts_with("spec.storageClasses[0].parameters"))
        .map(|e| e.message.as_str())
        .collect();
    assert!(messages.iter().any(|m| m.starts_with(
        "csi.storage.k8s.io/provisioner-secret-name is set without csi.storage.k8s.io/provisioner-secret-namespace"
    )), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with(
        "csi.storage.k8s.io/node-stage-secret-namespace is set without csi.storage.k8s.io/node-stage-secret-name"
    )), "{messages:?}");
    assert_refused(
        &cr,
        "spec.storageClasses[0].parameters.csi.storage.k8s.io/controller-expand-secret-namespace",
        "neither a namespace name nor a template",
    );
}

#[test]
fn encryption_is_the_builtin_drivers_and_ext4_only() {
    let mut xfs = fixture("encrypted");
    let class = &mut xfs.spec.storage_classes.as_mut().unwrap()[0];
    class
        .parameters
        .insert("csi.storage.k8s.io/fstype".to_owned(), "xfs".to_owned());
    class.parameters.insert(
        "csi.storage.k8s.io/node-stage-secret-name".to_owned(),
        "mine".to_owned(),
    );
    assert_refused(&xfs, "spec.storageClasses[0].encryption", "needs ext4");
    assert_refused(
        &xfs,
        "spec.storageClasses[0].parameters",
        "is set by encryption",
    );
    let mut third_party = fixture("third-party");
    third_party.spec.storage_classes.as_mut().unwrap()[0].encryption = Some(Default::default());
    // third-party.yaml sets fstype ext4: only the driver is wrong.
    assert_refused(
        &third_party,
        "spec.storageClasses[0].encryption",
        "a third-party driver does not have",
    );
    let mut ext4 = fixture("encrypted");
    ext4.spec.storage_classes.as_mut().unwrap()[0]
        .parameters
        .insert("csi.storage.k8s.io/fstype".to_owned(), "ext4".to_owned());
    validate_in(&ext4, &full_env()).unwrap();
}
