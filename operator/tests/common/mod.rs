//! Fixtures and lookups shared by the render tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use plinth_api::capabilities::{ControllerCapability, GroupControllerCapability, PluginCapability};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::render::{self, ManagedObject, RenderEnv, Rendered, VolumeSnapshotClass};

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture, by file stem, sorted.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn fixture(name: &str) -> CsiDeployment {
    let text = std::fs::read_to_string(fixtures_dir().join(format!("{name}.yaml"))).unwrap();
    render::yaml::parse(&text).unwrap_or_else(|e| panic!("fixture {name}: {e:?}"))
}

/// A cluster with every optional CRD (snapshots, group snapshots), and the built-in driver
/// of this release as a controller/node pair serves it: everything but group snapshots,
/// which no point in time across nodes' pools could give.
pub fn full_env() -> RenderEnv {
    RenderEnv {
        snapshot_crds_present: true,
        group_snapshot_crds_present: true,
        builtin_features: plinth_api::served_features(),
        driver_capabilities: None,
    }
}

/// What the fixture's driver advertises when probed (`fixtures/advertised/<name>.yaml`):
/// fixtures without a declaration (csi-driver-host-path) render from it, as the operator
/// does once its probe answered.
pub fn advertised(name: &str) -> Option<plinth_api::capabilities::Capabilities> {
    let path = fixtures_dir()
        .join("advertised")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("advertised/{name}: {e}")))
}

/// [`full_env`] with the fixture's probe answer, if it has one.
pub fn env_for(name: &str) -> RenderEnv {
    RenderEnv {
        driver_capabilities: advertised(name),
        ..full_env()
    }
}

/// `third-party.yaml` with a driver that declares snapshots and group snapshots (the
/// built-in driver serves no group snapshots in a cluster).
pub fn group_snapshot_driver() -> CsiDeployment {
    let mut cr = fixture("third-party");
    let third = cr.spec.driver.third_party.as_mut().unwrap();
    let caps = third.capabilities.as_mut().unwrap();
    caps.controller.extend([
        ControllerCapability::CreateDeleteSnapshot,
        ControllerCapability::ListSnapshots,
    ]);
    caps.plugin.insert(PluginCapability::GroupControllerService);
    caps.group_controller
        .insert(GroupControllerCapability::CreateDeleteGetVolumeGroupSnapshot);
    cr.spec.features.snapshots = Some(true);
    cr.spec.features.group_snapshots = Some(true);
    cr
}

pub fn render_ok(cr: &CsiDeployment, env: &RenderEnv) -> Rendered {
    render::render(cr, env).unwrap_or_else(|e| panic!("render failed: {e}: {:?}", e))
}

pub fn stateful_set(r: &Rendered) -> &StatefulSet {
    maybe_stateful_set(r).expect("a StatefulSet")
}

/// The controller StatefulSet, absent with per-node provisioning.
pub fn maybe_stateful_set(r: &Rendered) -> Option<&StatefulSet> {
    r.objects.iter().find_map(|o| match o {
        ManagedObject::StatefulSet(s) => Some(s),
        _ => None,
    })
}

/// The controller pod's containers; none with per-node provisioning.
pub fn controller_containers(r: &Rendered) -> Vec<&Container> {
    maybe_stateful_set(r)
        .iter()
        .flat_map(|s| {
            &s.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers
        })
        .collect()
}

/// Fixtures of third-party drivers (driver container `csi-driver`).
pub fn is_third_party_fixture(name: &str) -> bool {
    fixture(name).spec.driver.third_party.is_some()
}

pub fn daemon_set(r: &Rendered) -> &DaemonSet {
    r.objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::DaemonSet(d) => Some(d),
            _ => None,
        })
        .expect("a DaemonSet")
}

pub fn csi_driver(r: &Rendered) -> &CSIDriver {
    r.objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::CsiDriver(d) => Some(d),
            _ => None,
        })
        .expect("a CSIDriver")
}

pub fn storage_classes(r: &Rendered) -> Vec<&StorageClass> {
    r.objects
        .iter()
        .filter_map(|o| match o {
            ManagedObject::StorageClass(s) => Some(s),
            _ => None,
        })
        .collect()
}

pub fn snapshot_classes(r: &Rendered) -> Vec<&VolumeSnapshotClass> {
    r.objects
        .iter()
        .filter_map(|o| match o {
            ManagedObject::VolumeSnapshotClass(s) => Some(s),
            _ => None,
        })
        .collect()
}

pub fn cluster_role<'a>(r: &'a Rendered, name: &str) -> Option<&'a ClusterRole> {
    r.objects.iter().find_map(|o| match o {
        ManagedObject::ClusterRole(c) if c.metadata.name.as_deref() == Some(name) => Some(c),
        _ => None,
    })
}

pub fn controller_pod(r: &Rendered) -> &PodSpec {
    stateful_set(r)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

pub fn node_pod(r: &Rendered) -> &PodSpec {
    daemon_set(r)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

pub fn container<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Container> {
    pod.containers.iter().find(|c| c.name == name)
}

pub fn container_names(pod: &PodSpec) -> Vec<&str> {
    pod.containers.iter().map(|c| c.name.as_str()).collect()
}

pub fn args(c: &Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

/// The objects as the YAML stream `plinth-operator render` prints.
pub fn yaml(r: &Rendered) -> String {
    render::yaml::to_stream(r).unwrap()
}
