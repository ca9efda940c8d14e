//! Labels and owner references every rendered object carries.
//!
//! The reconciler prunes by listing each managed kind with [`selector`]: an object that
//! lacks these labels is invisible to pruning, so [`crate::render`] stamps them on all.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::crd::CsiDeployment;

/// `app.kubernetes.io/managed-by`: who applies the object.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "plinth-operator");
/// `app.kubernetes.io/part-of`: the product the object belongs to.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "plinth");
/// The CsiDeployment an object was rendered from (value: the CR's name).
pub const CR_LABEL: &str = "plinth.dev/csi-deployment";
/// `app.kubernetes.io/component`: `controller` or `node` on workloads and their pods.
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/name`: the driver name (several CRs may run different drivers).
pub const NAME: &str = "app.kubernetes.io/name";

/// Label selector matching every object rendered from the CR named `cr_name`.
pub fn selector(cr_name: &str) -> String {
    format!("{CR_LABEL}={cr_name}")
}

/// The labels every rendered object carries.
pub fn common(cr_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (PART_OF.0.to_owned(), PART_OF.1.to_owned()),
        (CR_LABEL.to_owned(), cr_name.to_owned()),
    ])
}

/// The labels selecting one component's pods. Kept minimal and stable: a workload's
/// selector is immutable, so nothing here may ever depend on user input but the CR name.
pub fn pod_selector(cr_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CR_LABEL.to_owned(), cr_name.to_owned()),
        (COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// The controller owner reference to the CR, or `None` for a CR that was never stored
/// (offline `render`: no UID to point at).
pub fn owner_reference(cr: &CsiDeployment) -> Option<OwnerReference> {
    let mut owner = cr.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// Metadata of a rendered object: name, namespace, common labels, owner reference.
pub fn metadata(cr: &CsiDeployment, name: String, namespace: Option<&str>) -> ObjectMeta {
    let cr_name = cr.metadata.name.as_deref().unwrap_or_default();
    ObjectMeta {
        name: Some(name),
        namespace: namespace.map(str::to_owned),
        labels: Some(common(cr_name)),
        owner_references: owner_reference(cr).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}
