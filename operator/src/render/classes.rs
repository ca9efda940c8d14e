//! StorageClasses and VolumeSnapshotClasses of the driver.

use std::collections::BTreeMap;

use k8s_openapi::api::storage::v1::StorageClass;

use super::{Plan, VolumeSnapshotClass, names};
use crate::crd::{
    CsiDeployment, ReclaimPolicy, StorageClassSpec, VolumeBindingMode, VolumeSnapshotClassSpec,
};
use crate::labels;

const DEFAULT_STORAGE_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_SNAPSHOT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// The StorageClass created when `spec.storageClasses` is omitted.
pub fn default_storage_class(cr: &CsiDeployment) -> StorageClassSpec {
    StorageClassSpec {
        name: names::default_class(cr),
        default: false,
        reclaim_policy: ReclaimPolicy::Delete,
        volume_binding_mode: VolumeBindingMode::WaitForFirstConsumer,
        parameters: BTreeMap::new(),
        mount_options: Vec::new(),
        allow_volume_expansion: None,
        allowed_topologies: Vec::new(),
    }
}

fn policy(p: ReclaimPolicy) -> String {
    match p {
        ReclaimPolicy::Delete => "Delete",
        ReclaimPolicy::Retain => "Retain",
    }
    .to_owned()
}

fn metadata_with_default(
    cr: &CsiDeployment,
    name: &str,
    is_default: bool,
    annotation: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut metadata = labels::metadata(cr, name.to_owned(), None);
    if is_default {
        metadata.annotations = Some(BTreeMap::from([(annotation.to_owned(), "true".to_owned())]));
    }
    metadata
}

/// Sorted by name, so the output does not depend on the order in the CR.
pub fn storage_classes(cr: &CsiDeployment, plan: &Plan) -> Vec<StorageClass> {
    let specs = match &cr.spec.storage_classes {
        Some(classes) => classes.clone(),
        None => vec![default_storage_class(cr)],
    };
    let mut classes: Vec<StorageClass> = specs
        .iter()
        .map(|sc| StorageClass {
            metadata: metadata_with_default(cr, &sc.name, sc.default, DEFAULT_STORAGE_CLASS),
            provisioner: plan.driver_name.clone(),
            reclaim_policy: Some(policy(sc.reclaim_policy)),
            volume_binding_mode: Some(
                match sc.volume_binding_mode {
                    VolumeBindingMode::WaitForFirstConsumer => "WaitForFirstConsumer",
                    VolumeBindingMode::Immediate => "Immediate",
                }
                .to_owned(),
            ),
            allow_volume_expansion: Some(
                sc.allow_volume_expansion
                    .unwrap_or_else(|| plan.capabilities.can_expand()),
            ),
            parameters: (!sc.parameters.is_empty()).then(|| sc.parameters.clone()),
            mount_options: (!sc.mount_options.is_empty()).then(|| sc.mount_options.clone()),
            allowed_topologies: (!sc.allowed_topologies.is_empty())
                .then(|| sc.allowed_topologies.clone()),
        })
        .collect();
    classes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    classes
}

/// Only when the snapshotter runs (snapshots enabled and the CRDs installed).
pub fn snapshot_classes(cr: &CsiDeployment, plan: &Plan) -> Vec<VolumeSnapshotClass> {
    if !plan.snapshots {
        return Vec::new();
    }
    let specs = match &cr.spec.volume_snapshot_classes {
        Some(classes) => classes.clone(),
        None => vec![VolumeSnapshotClassSpec {
            name: names::default_class(cr),
            default: false,
            deletion_policy: ReclaimPolicy::Delete,
            parameters: BTreeMap::new(),
        }],
    };
    let mut classes: Vec<VolumeSnapshotClass> = specs
        .iter()
        .map(|vsc| VolumeSnapshotClass {
            api_version: VolumeSnapshotClass::API_VERSION.to_owned(),
            kind: VolumeSnapshotClass::KIND.to_owned(),
            metadata: metadata_with_default(cr, &vsc.name, vsc.default, DEFAULT_SNAPSHOT_CLASS),
            driver: plan.driver_name.clone(),
            deletion_policy: policy(vsc.deletion_policy),
            parameters: (!vsc.parameters.is_empty()).then(|| vsc.parameters.clone()),
        })
        .collect();
    classes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    classes
}
