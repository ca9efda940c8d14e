//! Never taking what is not ours: before the first apply of an object, an object that
//! already exists under its name and is not this CR's is left alone and reported.
//!
//! Every apply is forced (one field manager owns every field it sets) and an immutable
//! field is handled by replacing the object, so without this check a CR naming a
//! StorageClass `standard` would rewrite, then delete and re-create, the cluster's own
//! `standard`; two CRs naming one class would replace each other's forever; and a
//! third-party CR named like an installed driver would take its CSIDriver over.

use kube::Client;
use kube::api::DynamicObject;
use tracing::{instrument, warn};

use super::error::{Error, Verb, is_not_found};
use super::objects::{Desired, KindExt};
use crate::labels::{CR_LABEL, MANAGED_BY};

/// Who holds the object `desired` names, when it exists and is not the CR `cr_name`'s;
/// `None` when it does not exist or is ours. Asked only for objects the CR has not got
/// yet (its own carry its labels and are listed): the cost is one GET per object created.
#[instrument(skip_all, fields(object = %desired.key))]
pub async fn foreign_holder(
    client: &Client,
    desired: &Desired,
    cr_name: &str,
) -> Result<Option<String>, Error> {
    let api = desired.kind.api(client, desired.key.namespace.as_deref());
    let existing = match api.get_opt(&desired.key.name).await {
        Ok(found) => found,
        Err(err) if is_not_found(&err) => None,
        Err(err) => return Err(Error::api(Verb::Get, &desired.key)(err)),
    };
    let Some(existing) = existing else {
        return Ok(None);
    };
    let holder = holder_of(&existing, cr_name);
    if let Some(holder) = &holder {
        warn!(%holder, "exists and is not ours; left alone");
    }
    Ok(holder)
}

/// Who `existing` belongs to, in words, unless it is `cr_name`'s.
fn holder_of(existing: &DynamicObject, cr_name: &str) -> Option<String> {
    let labels = existing.metadata.labels.clone().unwrap_or_default();
    let managed_by_us = labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
    match labels.get(CR_LABEL) {
        Some(owner) if managed_by_us && owner == cr_name => None,
        Some(owner) if managed_by_us => Some(format!("CsiDeployment {owner}")),
        _ => {
            let writer = existing
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .find_map(|m| m.manager.clone());
            Some(match writer {
                Some(manager) => format!("someone else (last written by {manager})"),
                None => "someone else (it has no Plinth labels)".to_owned(),
            })
        }
    }
}

/// The sentence a condition carries for objects left alone.
pub fn describe(conflicts: &[(String, String)]) -> String {
    let each: Vec<String> = conflicts
        .iter()
        .map(|(object, holder)| format!("{object} already exists and belongs to {holder}"))
        .collect();
    format!(
        "{}; it was left alone and the rest applied. Give this CsiDeployment's object another \
         name (spec.storageClasses, spec.volumeSnapshotClasses, spec.driver.name), or delete the \
         existing one if nothing uses it",
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;
    use serde_json::json;

    fn object(labels: serde_json::Value, manager: Option<&str>) -> DynamicObject {
        let mut meta = json!({ "name": "standard", "labels": labels });
        if let Some(m) = manager {
            meta["managedFields"] = json!([{ "manager": m, "operation": "Apply" }]);
        }
        let resource = ApiResource::erase::<k8s_openapi::api::storage::v1::StorageClass>(&());
        let mut o = DynamicObject::new("standard", &resource);
        o.metadata = serde_json::from_value(meta).unwrap_or_default();
        o
    }

    #[test]
    fn only_our_labels_make_an_object_ours() {
        let ours = json!({ "plinth.dev/csi-deployment": "local",
                           "app.kubernetes.io/managed-by": "plinth-operator" });
        assert_eq!(holder_of(&object(ours.clone(), None), "local"), None);
        assert_eq!(
            holder_of(&object(ours, None), "other").as_deref(),
            Some("CsiDeployment local")
        );
        // A CR label without our managed-by is someone imitating us: not ours.
        let forged = json!({ "plinth.dev/csi-deployment": "local" });
        assert!(holder_of(&object(forged, None), "local").is_some());
        assert_eq!(
            holder_of(
                &object(json!({}), Some("kubectl-client-side-apply")),
                "local"
            )
            .as_deref(),
            Some("someone else (last written by kubectl-client-side-apply)")
        );
        assert_eq!(
            describe(&[("StorageClass/standard".into(), "someone else".into())]),
            "StorageClass/standard already exists and belongs to someone else; it was left \
             alone and the rest applied. Give this CsiDeployment's object another name \
             (spec.storageClasses, spec.volumeSnapshotClasses, spec.driver.name), or delete the \
             existing one if nothing uses it"
        );
    }
}
