//! The controller side of cluster mode: each CSI call becomes a write to a PoolVolume or
//! PoolSnapshot, answered by the node plugin of `spec.node` in the object's status.
//!
//! The controller keeps no state: names map to IDs ([`super::ids`]), so a retried call
//! finds the object its first attempt wrote and waits for the same answer. A wait is
//! bounded by `--handoff-timeout`; past it the call answers ABORTED and the CO's retry
//! waits again. An answer counts only once the node has observed the object's current
//! generation, and only when it belongs to the operation waiting (a deletion is not
//! answered by an old expansion failure).
//!
//! This module holds what both kinds of work share: finding or writing an object, and
//! waiting for its node's answer. [`volumes`] and [`snapshots`] hold the calls; they
//! answer with the domain types of [`crate::storage::report`], which the CSI services
//! turn into messages.

mod snapshots;
mod volumes;

pub use snapshots::{create_snapshot, delete_snapshot, get_snapshot, list_snapshots};
pub use volumes::{
    available, create_volume, delete_volume, expand_volume, get_volume, list_volumes, volume_shape,
};

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use tracing::Span;

use super::{Cluster, ClusterError, is_transient, parse_code, watch};
use crate::error::Error;
use plinth_api::cluster::crd::{
    self, Operation, Phase, PoolSnapshot, PoolVolume, Record, WorkError,
};

/// A piece of work handed to a node: a PoolVolume or a PoolSnapshot.
trait HandedOff: Record {
    /// "volume" or "snapshot", for messages.
    const WHAT: &'static str;
    fn driver(&self) -> &str;
    fn node(&self) -> &str;
    /// `(observedGeneration, phase, error)` of the node's last answer.
    fn answer(&self) -> Option<(i64, Phase, Option<&WorkError>)>;
    /// The node has made it: it was ready once (a later failure, say of an expansion,
    /// leaves the image and its recorded size in place).
    fn made(&self) -> bool;
}

/// Both kinds carry the same spec fields and status shape under other type names.
macro_rules! handed_off {
    ($kind:ty, $what:literal) => {
        impl HandedOff for $kind {
            const WHAT: &'static str = $what;
            fn driver(&self) -> &str {
                &self.spec.driver
            }
            fn node(&self) -> &str {
                &self.spec.node
            }
            fn answer(&self) -> Option<(i64, Phase, Option<&WorkError>)> {
                self.status
                    .as_ref()
                    .map(|s| (s.observed_generation, s.phase, s.error.as_ref()))
            }
            fn made(&self) -> bool {
                self.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Ready || s.size_bytes.is_some())
            }
        }
    };
}

handed_off!(PoolVolume, "volume");
handed_off!(PoolSnapshot, "snapshot");

/// Where a piece of work stands for the operation waiting on it.
enum Settled<K> {
    Ready(K),
    Failed(K, WorkError),
    Gone,
}

/// The node's answer to `operation` on `object`, if it has given one.
fn settled<K: HandedOff>(object: &K, operation: Operation) -> Option<Settled<K>> {
    // A creation is answered once the object is made, whatever came after it.
    if operation == Operation::Create && object.made() {
        return Some(Settled::Ready(object.clone()));
    }
    let (observed, phase, error) = object.answer()?;
    let own_error = error
        .filter(|e| e.operation == operation && !is_transient(parse_code(&e.code)))
        .cloned();
    if operation == Operation::Delete {
        // Deleting changes no generation: the node records a failure or the object goes.
        return own_error.map(|e| Settled::Failed(object.clone(), e));
    }
    if observed < object.meta().generation.unwrap_or(0) {
        return None;
    }
    match (phase, own_error) {
        (Phase::Ready, _) => Some(Settled::Ready(object.clone())),
        (_, Some(error)) => Some(Settled::Failed(object.clone(), error)),
        _ => None,
    }
}

fn is_deleting<K: Resource>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_some()
}

fn resources<K: HandedOff>(cluster: &Cluster) -> Api<K> {
    Api::all(cluster.client.clone())
}

/// The object `name` when it belongs to this driver (an ID of another driver on the
/// same cluster names nothing of ours).
async fn get_ours<K: HandedOff>(cluster: &Cluster, name: &str) -> Result<Option<K>, Error> {
    Ok(resources::<K>(cluster)
        .get_opt(name)
        .await
        .map_err(kube_error)?
        .filter(|o| o.driver() == cluster.driver))
}

/// The object `name`, or the one `plan` makes, written under that name. A conflict
/// means a concurrent call wrote it first: its object is the one to continue with. An
/// object being deleted is ABORTED: the retry after its deletion starts afresh.
async fn find_or_write<K, F>(
    cluster: &Cluster,
    name: &str,
    what: &str,
    plan: impl FnOnce() -> F,
) -> Result<K, Error>
where
    K: HandedOff,
    F: Future<Output = Result<K, Error>>,
{
    let object = match get_ours::<K>(cluster, name).await? {
        Some(found) => found,
        None => match resources::<K>(cluster)
            .create(&post_params(), &plan().await?)
            .await
        {
            Ok(created) => {
                tracing::info!(node = created.node(), "{} written", K::kind(&()));
                created
            }
            Err(error) if is_status(&error, 409) => get_ours::<K>(cluster, name)
                .await?
                .ok_or_else(|| deleting(what))?,
            Err(error) => return Err(kube_error(error)),
        },
    };
    if is_deleting(&object) {
        return Err(deleting(what));
    }
    Ok(object)
}

fn deleting(what: &str) -> Error {
    ClusterError::Deleting {
        what: what.to_owned(),
    }
    .into()
}

/// Waits for the node to create `object`: the ready object, or the failure it
/// recorded (the failed object is deleted so that the CO's retry starts afresh).
async fn created<K: HandedOff>(cluster: &Cluster, object: K, what: &str) -> Result<K, Error> {
    let api = resources::<K>(cluster);
    match wait(cluster, &api, object, Operation::Create).await? {
        Settled::Ready(object) => {
            tracing::info!("{what} ready");
            Ok(object)
        }
        Settled::Failed(object, error) => {
            tracing::info!(code = %error.code, "the node failed to create the {what}");
            discard(&api, &object).await;
            Err(recorded(object.node(), error))
        }
        Settled::Gone => Err(deleting(what)),
    }
}

fn kube_error(error: kube::Error) -> Error {
    ClusterError::Api(error).into()
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(crd::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Waits (bounded by the hand-off timeout) until the node has answered `operation` on
/// `current`, or the object is gone.
async fn wait<K: HandedOff>(
    cluster: &Cluster,
    api: &Api<K>,
    current: K,
    operation: Operation,
) -> Result<Settled<K>, Error> {
    if let Some(done) = settled(&current, operation) {
        return Ok(done);
    }
    let name = current.name_any();
    let condition =
        move |object: Option<&K>| object.is_none_or(|o| settled(o, operation).is_some());
    // Watch errors (an API-server restart) are retried within the bound.
    let waited = tokio::time::timeout(
        cluster.handoff_timeout,
        watch::until(api.clone(), &name, condition),
    )
    .await;
    match waited {
        Ok(Some(object)) => Ok(settled(&object, operation).unwrap_or(Settled::Gone)),
        Ok(None) => Ok(Settled::Gone),
        Err(_) => {
            tracing::info!(
                ?operation,
                "the node has not answered yet; answering ABORTED"
            );
            Err(ClusterError::InProgress {
                what: format!("{operation:?} of {} {name}", K::WHAT).to_lowercase(),
                node: current.node().to_owned(),
            }
            .into())
        }
    }
}

/// The failure a node recorded, as this call's answer.
fn recorded(node: &str, error: WorkError) -> Error {
    ClusterError::Recorded {
        node: node.to_owned(),
        code: parse_code(&error.code),
        message: error.message,
    }
    .into()
}

/// The CO retried work its node has already failed: ask the node to try again now
/// (instead of when its own backoff ends) and answer with the failure it recorded; the
/// CO's next retry finds the new outcome. A failure to ask is only logged: the node
/// retries on its own anyway.
async fn retry_failed<K: HandedOff>(api: &Api<K>, object: &K, error: WorkError) -> Error {
    // Any new value is a new request; the resourceVersion the object had is one.
    let request = object.resource_version().unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"annotations": {crd::RETRY_ANNOTATION: request}},
    });
    let params = PatchParams {
        field_manager: Some(crd::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch(&object.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(code = %error.code, "the node failed this before; asked it to retry now")
        }
        Err(e) => tracing::warn!(error = %crate::error::chain(&e), "cannot ask the node to retry"),
    }
    recorded(object.node(), error)
}

/// A deletion of exactly `object`: not of another object written under its name since.
fn delete_params<K: HandedOff>(object: &K) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

/// Deletes a failed creation so that the CO's retry starts afresh; not waited for.
async fn discard<K: HandedOff>(api: &Api<K>, object: &K) {
    if let Err(error) = api.delete(&object.name_any(), &delete_params(object)).await
        && !is_status(&error, 404)
    {
        tracing::warn!(error = %crate::error::chain(&error), "cannot delete the failed work; the next attempt will");
    }
}

/// Deletes `name` and waits until the node has removed its image and the object is
/// gone. A name with no object is deleted already.
async fn delete_work<K: HandedOff>(cluster: &Cluster, name: &str) -> Result<(), Error> {
    let api = resources::<K>(cluster);
    let Some(object) = get_ours::<K>(cluster, name).await? else {
        return Ok(());
    };
    Span::current().record("node", object.node());
    let object = if is_deleting(&object) {
        if let Some(Settled::Failed(object, error)) = settled(&object, Operation::Delete) {
            return Err(retry_failed(&api, &object, error).await);
        }
        object
    } else {
        match api.delete(name, &delete_params(&object)).await {
            Ok(either) => match either.left() {
                Some(deleting) => deleting,
                None => return Ok(()),
            },
            Err(error) if is_status(&error, 404) => return Ok(()),
            Err(error) => return Err(kube_error(error)),
        }
    };
    match wait(cluster, &api, object, Operation::Delete).await? {
        Settled::Gone | Settled::Ready(_) => {
            tracing::info!("deleted by its node");
            Ok(())
        }
        Settled::Failed(object, error) => Err(recorded(object.node(), error)),
    }
}

/// The object `name` when it exists, is not being deleted and is ready: NOT_FOUND when
/// it is missing or going, ABORTED while its node has not made it yet.
async fn ready_source<K: HandedOff>(cluster: &Cluster, name: &str, what: &str) -> Result<K, Error> {
    let object = get_ours::<K>(cluster, name)
        .await?
        .filter(|o| !is_deleting(o))
        .ok_or_else(|| ClusterError::NotFound {
            what: what.to_owned(),
        })?;
    if !is_live(&object) {
        return Err(ClusterError::InProgress {
            what: format!("creation of {what}"),
            node: object.node().to_owned(),
        }
        .into());
    }
    Ok(object)
}

/// What every new object carries: the labels that select it, and the finalizer that
/// keeps it until its node has removed the image.
fn label<K: HandedOff>(object: &mut K, cluster: &Cluster, node: &str) {
    let meta = object.meta_mut();
    meta.labels = Some(crd::labels(&cluster.driver, node));
    meta.finalizers = Some(vec![crd::FINALIZER.to_owned()]);
}

/// The object stands for a volume or snapshot that exists, as far as the CO is
/// concerned: made by its node, and not being deleted.
fn is_live<K: HandedOff>(object: &K) -> bool {
    !is_deleting(object) && object.made()
}

/// The ready objects of this driver, ordered by name.
async fn list_ready<K: HandedOff>(cluster: &Cluster) -> Result<Vec<K>, Error> {
    let list = resources::<K>(cluster)
        .list(&ListParams::default().labels(&crd::driver_selector(&cluster.driver)))
        .await
        .map_err(kube_error)?;
    let mut items: Vec<K> = list.items.into_iter().filter(is_live).collect();
    items.sort_by_key(ResourceExt::name_any);
    Ok(items)
}
