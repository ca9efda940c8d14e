//! StorageClasses and VolumeSnapshotClasses of the driver.

use std::collections::BTreeMap;

use k8s_openapi::api::storage::v1::StorageClass;

use super::{Plan, VolumeSnapshotClass, names, secrets};
use crate::crd::{
    CsiDeployment, EncryptionSpec, ReclaimPolicy, StorageClassSpec, VolumeBindingMode,
    VolumeSnapshotClassSpec,
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
        encryption: None,
    }
}

/// The StorageClasses the CR asks for (the default one when the list is omitted).
pub fn storage_class_specs(cr: &CsiDeployment) -> Vec<StorageClassSpec> {
    match &cr.spec.storage_classes {
        Some(classes) => classes.clone(),
        None => vec![default_storage_class(cr)],
    }
}

/// The VolumeSnapshotClasses the CR asks for (the default one when the list is omitted),
/// created only while snapshots are on.
pub fn snapshot_class_specs(cr: &CsiDeployment) -> Vec<VolumeSnapshotClassSpec> {
    match &cr.spec.volume_snapshot_classes {
        Some(classes) => classes.clone(),
        None => vec![VolumeSnapshotClassSpec {
            name: names::default_class(cr),
            default: false,
            deletion_policy: ReclaimPolicy::Delete,
            parameters: BTreeMap::new(),
        }],
    }
}

/// Label on an encrypted StorageClass (`kubectl get sc -l plinth.dev/encryption`).
pub const ENCRYPTION_LABEL: &str = "plinth.dev/encryption";
/// Annotation saying where each volume's key Secret is.
pub const ENCRYPTION_SECRET_ANNOTATION: &str = "plinth.dev/encryption-secret";
/// The StorageClass parameter the built-in driver reads (`encryption: fscrypt`).
pub const ENCRYPTION_PARAMETER: &str = "encryption";
/// The only mechanism so far: ext4 encryption (fscrypt policy v2).
pub const ENCRYPTION_FSCRYPT: &str = "fscrypt";

/// The parameters an encrypted class adds: the mechanism and the node-stage Secret,
/// which kubelet reads and hands to NodeStageVolume.
pub fn encryption_parameters(encryption: &EncryptionSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ENCRYPTION_PARAMETER.to_owned(),
            ENCRYPTION_FSCRYPT.to_owned(),
        ),
        (
            format!("{}name", secrets::NODE_STAGE.prefix()),
            encryption.secret_name.clone(),
        ),
        (
            format!("{}namespace", secrets::NODE_STAGE.prefix()),
            encryption.secret_namespace.clone(),
        ),
    ])
}

/// The names of the classes whose volumes are encrypted, sorted.
pub fn encrypted_class_names(cr: &CsiDeployment) -> Vec<String> {
    let mut names: Vec<String> = storage_class_specs(cr)
        .into_iter()
        .filter(|sc| sc.encryption.is_some())
        .map(|sc| sc.name)
        .collect();
    names.sort();
    names
}

/// A class's parameters as rendered: the CR's, plus the encryption ones.
pub fn rendered_parameters(sc: &StorageClassSpec) -> BTreeMap<String, String> {
    let mut parameters = sc.parameters.clone();
    if let Some(encryption) = &sc.encryption {
        parameters.extend(encryption_parameters(encryption));
    }
    parameters
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
    let specs = storage_class_specs(cr);
    let mut classes: Vec<StorageClass> = specs
        .iter()
        .map(|sc| StorageClass {
            metadata: storage_class_metadata(cr, sc),
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
                    .unwrap_or_else(|| plan.can_resize()),
            ),
            parameters: Some(rendered_parameters(sc)).filter(|p| !p.is_empty()),
            mount_options: (!sc.mount_options.is_empty()).then(|| sc.mount_options.clone()),
            allowed_topologies: (!sc.allowed_topologies.is_empty())
                .then(|| sc.allowed_topologies.clone()),
        })
        .collect();
    classes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    classes
}

/// An encrypted class says so where `kubectl get/describe storageclass` shows it: a label
/// (selectable) and an annotation naming the key Secret.
fn storage_class_metadata(
    cr: &CsiDeployment,
    sc: &StorageClassSpec,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut metadata = metadata_with_default(cr, &sc.name, sc.default, DEFAULT_STORAGE_CLASS);
    if let Some(encryption) = &sc.encryption {
        metadata
            .labels
            .get_or_insert_default()
            .insert(ENCRYPTION_LABEL.to_owned(), ENCRYPTION_FSCRYPT.to_owned());
        metadata.annotations.get_or_insert_default().insert(
            ENCRYPTION_SECRET_ANNOTATION.to_owned(),
            format!("{}/{}", encryption.secret_namespace, encryption.secret_name),
        );
    }
    metadata
}

/// Only when the snapshotter runs (snapshots enabled and the CRDs installed).
pub fn snapshot_classes(cr: &CsiDeployment, plan: &Plan) -> Vec<VolumeSnapshotClass> {
    if !plan.snapshots {
        return Vec::new();
    }
    let specs = snapshot_class_specs(cr);
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
