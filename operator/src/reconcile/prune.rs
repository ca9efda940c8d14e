//! Finding the objects a CR owns and deleting the ones it no longer wants.

use std::collections::BTreeSet;

use futures::future::try_join_all;
use kube::Client;
use kube::api::{DeleteParams, ListParams, Preconditions, PropagationPolicy};
use tracing::{info, instrument};

use super::cache::{OwnedStores, live_object};
use super::error::{Error, Verb, is_conflict, is_not_found};
use super::fingerprint::ObjectKey;
use super::objects::{Desired, KindExt, LiveObject};
use crate::labels::{CR_LABEL, MANAGED_BY};
use crate::render::ManagedKind;

/// The selector matching every object a CR produced.
pub fn owned_selector(cr_name: &str) -> String {
    format!("{CR_LABEL}={cr_name},{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// Lists the metadata of every object of `kinds` carrying the CR's labels, all kinds at
/// once. A kind whose API is not installed (no VolumeSnapshot CRDs) simply has no objects.
#[instrument(skip_all, fields(cr = cr_name))]
pub async fn list_owned(
    client: &Client,
    kinds: &[ManagedKind],
    cr_name: &str,
) -> Result<Vec<LiveObject>, Error> {
    find_owned(client, &OwnedStores::default(), kinds, cr_name).await
}

/// Like [`list_owned`], but a kind whose watch store is complete is read from it: only
/// the other kinds are listed.
#[instrument(skip_all, fields(cr = cr_name))]
pub async fn find_owned(
    client: &Client,
    stores: &OwnedStores,
    kinds: &[ManagedKind],
    cr_name: &str,
) -> Result<Vec<LiveObject>, Error> {
    let selector = owned_selector(cr_name);
    let lists = kinds.iter().map(|&kind| {
        let params = ListParams::default().labels(&selector);
        let cached = stores.owned(kind, cr_name);
        async move {
            if let Some(cached) = cached {
                return Ok(cached);
            }
            let api = kind.api(client, None);
            match api.list_metadata(&params).await {
                Ok(list) => Ok(list
                    .items
                    .iter()
                    .map(|obj| live_object(kind, &obj.metadata))
                    .collect::<Vec<_>>()),
                Err(err) if is_not_found(&err) => Ok(Vec::new()),
                Err(err) => Err(Error::api(Verb::List, kind.api_resource().plural)(err)),
            }
        }
    });
    Ok(try_join_all(lists).await?.into_iter().flatten().collect())
}

/// Live objects that no desired object accounts for.
pub fn stale<'a>(live: &'a [LiveObject], desired: &[Desired]) -> Vec<&'a LiveObject> {
    let wanted: BTreeSet<&ObjectKey> = desired.iter().map(|d| &d.key).collect();
    live.iter()
        .filter(|obj| !wanted.contains(&obj.key))
        .collect()
}

/// Deletes one owned object, only the instance we listed (uid precondition). Already
/// gone, or replaced by somebody meanwhile, counts as done.
#[instrument(skip_all, fields(object = %obj.key))]
pub async fn delete_owned(client: &Client, obj: &LiveObject) -> Result<(), Error> {
    let api = obj.kind.api(client, obj.key.namespace.as_deref());
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: obj.uid.clone().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&obj.key.name, &params).await {
        Ok(_) => {
            info!("deleted");
            Ok(())
        }
        Err(err) if is_not_found(&err) || is_conflict(&err) => Ok(()),
        Err(err) => Err(Error::api(Verb::Delete, &obj.key)(err)),
    }
}
