//! The controller side of cluster mode: each CSI call becomes a write to a PoolVolume or
//! PoolSnapshot, answered by the node plugin of `spec.node` in the object's status.
//!
//! The controller keeps no state: names map to IDs ([`super::ids`]), so a retried call
//! finds the object its first attempt wrote and waits for the same answer. A wait is
//! bounded by `--handoff-timeout`; past it the call answers ABORTED and the CO's retry
//! waits again. An answer counts only once the node has observed the object's current
//! generation, and only when it belongs to the operation waiting (a deletion is not
//! answered by an old expansion failure).

use std::collections::BTreeMap;
use std::fmt::Debug;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use plinth_csi_proto::v1;
use tracing::Span;

use super::crd::{
    self, ContentSourceSpec, Operation, Phase, PoolNode, PoolSnapshot, PoolSnapshotSpec,
    PoolVolume, PoolVolumeSpec, Record, WorkError,
};
use super::placement::{self, Room};
use super::{Cluster, ClusterError, ids, is_transient, parse_code, watch};
use crate::csi::snapshot as snapshot_rpc;
use crate::csi::validate;
use crate::error::Error;
use crate::storage::pool::{CapacityRange, ContentSource, VolumeAccess, VolumeId, image_size};
use crate::storage::restore;
use crate::storage::snapshot::SnapshotId;
use crate::storage::spec::{Capability, Capacity};

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

/// The smallest image of `access`, as the pool computes it.
/// The rooms the node plugins published.
async fn rooms(cluster: &Cluster) -> Result<Vec<Room>, Error> {
    let nodes = api_nodes(cluster)
        .list(&ListParams::default().labels(&crd::driver_selector(&cluster.driver)))
        .await
        .map_err(kube_error)?;
    Ok(nodes.items.iter().map(Room::of).collect())
}

fn api_nodes(cluster: &Cluster) -> Api<PoolNode> {
    Api::all(cluster.client.clone())
}

/// A CreateVolume request, validated.
#[derive(Clone, Debug)]
pub struct NewVolume {
    pub name: String,
    pub caps: Vec<Capability>,
    pub capacity: Capacity,
    pub requirement: Option<v1::TopologyRequirement>,
    pub parameters: BTreeMap<String, String>,
    pub source: Option<ContentSource>,
}

/// A content source as its resource describes it.
struct Source {
    access: VolumeAccess,
    size_bytes: u64,
    node: String,
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

async fn resolve_source(cluster: &Cluster, content: &ContentSource) -> Result<Source, Error> {
    match content {
        ContentSource::Snapshot { snapshot_id } => {
            let what = format!("snapshot {snapshot_id}");
            let id = SnapshotId::parse(snapshot_id)
                .map_err(|_| ClusterError::NotFound { what: what.clone() })?;
            let snapshot = ready_source::<PoolSnapshot>(cluster, id.as_str(), &what).await?;
            let status = snapshot.status.unwrap_or_default();
            let (Some(size_bytes), Some(access)) = (status.size_bytes, status.source_access) else {
                return Err(ClusterError::Malformed(format!(
                    "{what} is ready but reports no size or source access"
                ))
                .into());
            };
            Ok(Source {
                access: access.into(),
                size_bytes,
                node: snapshot.spec.node,
            })
        }
        ContentSource::Volume { volume_id } => {
            let id = validate::existing_id(volume_id)?;
            let volume =
                ready_source::<PoolVolume>(cluster, id.as_str(), &format!("volume {id}")).await?;
            Ok(Source {
                access: volume.spec.access.into(),
                size_bytes: volume
                    .status
                    .and_then(|s| s.size_bytes)
                    .unwrap_or(volume.spec.size_bytes),
                node: volume.spec.node,
            })
        }
    }
}

/// What every new object carries: the labels that select it, and the finalizer that
/// keeps it until its node has removed the image.
fn label<K: HandedOff>(object: &mut K, cluster: &Cluster, node: &str) {
    let meta = object.meta_mut();
    meta.labels = Some(crd::labels(&cluster.driver, node));
    meta.finalizers = Some(vec![crd::FINALIZER.to_owned()]);
}

/// The PoolVolume a new request describes: source resolved, size computed as the pool
/// would, node chosen.
async fn plan_volume(
    cluster: &Cluster,
    id: &VolumeId,
    new: &NewVolume,
) -> Result<PoolVolume, Error> {
    let (access, range, pinned) = match &new.source {
        Some(content) => {
            let source = resolve_source(cluster, content).await?;
            let (access, range) =
                restore::plan(source.access, source.size_bytes, &new.caps, new.capacity)?;
            (access, range, Some(source.node))
        }
        None => (
            new.caps
                .first()
                .map(|c| c.access.volume_access())
                .ok_or(Error::MissingField("volume_capabilities"))?,
            CapacityRange::new(new.capacity.required, new.capacity.limit),
            None,
        ),
    };
    let size_bytes =
        image_size(range, access.min_size_bytes()).map_err(|e| Error::OutOfRange(e.to_string()))?;
    let node = placement::choose(
        new.requirement.as_ref(),
        &cluster.topology_key,
        &rooms(cluster).await?,
        size_bytes,
        pinned.as_deref(),
    )
    .map_err(ClusterError::from)?;
    let mut object = PoolVolume::new(
        id.as_str(),
        PoolVolumeSpec {
            driver: cluster.driver.clone(),
            node: node.clone(),
            name: new.name.clone(),
            size_bytes,
            access: access.into(),
            parameters: new.parameters.clone(),
            content_source: new.source.as_ref().map(ContentSourceSpec::from),
        },
    );
    label(&mut object, cluster, &node);
    Ok(object)
}

/// Whether an existing PoolVolume is the volume `new` asks for (CSI: same name and
/// compatible parameters is success, anything else ALREADY_EXISTS).
fn check_compatible(cluster: &Cluster, volume: &PoolVolume, new: &NewVolume) -> Result<(), Error> {
    let spec = &volume.spec;
    let access = VolumeAccess::from(spec.access);
    let same_access = match &new.source {
        // A copy keeps its source's access: every capability must fit it.
        Some(_) => new.caps.iter().all(|c| c.access.fits(access)),
        None => new
            .caps
            .first()
            .is_some_and(|c| c.access.volume_access() == access),
    };
    let differs = if spec.name != new.name {
        Some("CSI name (ID collision)")
    } else if !CapacityRange::new(new.capacity.required, new.capacity.limit)
        .is_satisfied_by(spec.size_bytes)
    {
        Some("capacity range")
    } else if !same_access {
        Some("access type")
    } else if spec.parameters != new.parameters {
        Some("parameters")
    } else if spec
        .content_source
        .as_ref()
        .and_then(ContentSourceSpec::content)
        != new.source
    {
        Some("content source")
    } else if !placement::allows(new.requirement.as_ref(), &cluster.topology_key, &spec.node) {
        Some("node (the accessibility requirements exclude it)")
    } else {
        None
    };
    match differs {
        Some(differs) => Err(ClusterError::Conflict {
            what: format!("volume {:?}", new.name),
            differs: differs.to_owned(),
        }
        .into()),
        None => Ok(()),
    }
}

fn volume_proto(cluster: &Cluster, volume: &PoolVolume) -> v1::Volume {
    let size = volume
        .status
        .as_ref()
        .and_then(|s| s.size_bytes)
        .unwrap_or(volume.spec.size_bytes);
    v1::Volume {
        capacity_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        volume_id: volume.name_any(),
        volume_context: Default::default(),
        content_source: volume
            .spec
            .content_source
            .as_ref()
            .and_then(ContentSourceSpec::content)
            .as_ref()
            .map(restore::to_proto),
        accessible_topology: vec![validate::node_topology(
            &cluster.topology_key,
            &volume.spec.node,
        )],
    }
}

/// The object stands for a volume or snapshot that exists, as far as the CO is
/// concerned: made by its node, and not being deleted.
fn is_live<K: HandedOff>(object: &K) -> bool {
    !is_deleting(object) && object.made()
}

/// CreateVolume: find or write the PoolVolume of `new.name`, then wait for its node.
#[tracing::instrument(skip_all, fields(volume_id = tracing::field::Empty, node = tracing::field::Empty))]
pub async fn create_volume(cluster: &Cluster, new: NewVolume) -> Result<v1::Volume, Error> {
    let id = ids::volume_id(&cluster.driver, &new.name);
    Span::current().record("volume_id", id.as_str());
    let what = format!("volume {:?}", new.name);
    let volume = find_or_write(cluster, id.as_str(), &what, || {
        plan_volume(cluster, &id, &new)
    })
    .await?;
    Span::current().record("node", volume.spec.node.as_str());
    check_compatible(cluster, &volume, &new)?;
    let volume = created(cluster, volume, &what).await?;
    Ok(volume_proto(cluster, &volume))
}

/// DeleteVolume of a well-formed ID.
#[tracing::instrument(skip_all, fields(volume_id = %id, node = tracing::field::Empty))]
pub async fn delete_volume(cluster: &Cluster, id: &VolumeId) -> Result<(), Error> {
    delete_work::<PoolVolume>(cluster, id.as_str()).await
}

/// ControllerExpandVolume: raise `spec.sizeBytes` to `wanted` (never lower) and wait
/// for the node to grow the image. Returns the image size.
#[tracing::instrument(skip_all, fields(volume_id = %id, node = tracing::field::Empty))]
pub async fn expand_volume(cluster: &Cluster, id: &VolumeId, wanted: u64) -> Result<u64, Error> {
    let api = resources::<PoolVolume>(cluster);
    let volume = get_ours::<PoolVolume>(cluster, id.as_str())
        .await?
        .filter(|v| !is_deleting(v))
        .ok_or_else(|| Error::VolumeNotFound(id.to_string()))?;
    Span::current().record("node", volume.spec.node.as_str());
    let volume = if wanted > volume.spec.size_bytes {
        // The resourceVersion makes a concurrent, smaller expansion lose (409 → ABORTED)
        // rather than shrink what the other one asked for.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": volume.resource_version()},
            "spec": {"sizeBytes": wanted},
        });
        let params = PatchParams {
            field_manager: Some(crd::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patched = api
            .patch(id.as_str(), &params, &Patch::Merge(&patch))
            .await
            .map_err(kube_error)?;
        tracing::info!(
            from = volume.spec.size_bytes,
            to = wanted,
            "expansion handed to the node"
        );
        patched
    } else if let Some(Settled::Failed(volume, error)) = settled(&volume, Operation::Expand) {
        return Err(retry_failed(&api, &volume, error).await);
    } else {
        volume
    };
    match wait(cluster, &api, volume, Operation::Expand).await? {
        Settled::Ready(volume) => Ok(volume
            .status
            .as_ref()
            .and_then(|s| s.size_bytes)
            .unwrap_or(volume.spec.size_bytes)),
        Settled::Failed(volume, error) => Err(recorded(&volume.spec.node, error)),
        Settled::Gone => Err(Error::VolumeNotFound(id.to_string())),
    }
}

/// The access and parameters of an existing volume (ValidateVolumeCapabilities).
pub async fn volume_shape(
    cluster: &Cluster,
    id: &VolumeId,
) -> Result<(VolumeAccess, BTreeMap<String, String>), Error> {
    let volume = ready_volume(cluster, id).await?;
    Ok((volume.spec.access.into(), volume.spec.parameters))
}

async fn ready_volume(cluster: &Cluster, id: &VolumeId) -> Result<PoolVolume, Error> {
    get_ours::<PoolVolume>(cluster, id.as_str())
        .await?
        .filter(is_live)
        .ok_or_else(|| Error::VolumeNotFound(id.to_string()))
}

/// ControllerGetVolume.
pub async fn get_volume(cluster: &Cluster, id: &VolumeId) -> Result<v1::Volume, Error> {
    Ok(volume_proto(cluster, &ready_volume(cluster, id).await?))
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

/// ListVolumes: the ready volumes, ordered by ID (the caller pages them).
pub async fn list_volumes(cluster: &Cluster) -> Result<Vec<v1::Volume>, Error> {
    Ok(list_ready::<PoolVolume>(cluster)
        .await?
        .iter()
        .map(|v| volume_proto(cluster, v))
        .collect())
}

/// GetCapacity: the room of the node a segment names (0 when it has published none),
/// or of the roomiest node without one.
pub async fn available(cluster: &Cluster, topology: Option<&v1::Topology>) -> Result<u64, Error> {
    let node = topology.and_then(|t| t.segments.get(&cluster.topology_key));
    let Some(node) = node else {
        return Ok(rooms(cluster)
            .await?
            .iter()
            .filter_map(|r| r.available)
            .max()
            .unwrap_or(0));
    };
    let name = crd::pool_node_name(node, &cluster.driver);
    let pool_node = match api_nodes(cluster).get_opt(&name).await {
        Ok(found) => found,
        // A value no object could be named by names no node of ours.
        Err(error) if is_status(&error, 400) => None,
        Err(error) => return Err(kube_error(error)),
    };
    Ok(pool_node
        .and_then(|n| n.status)
        .map_or(0, |s| s.available_bytes))
}

fn snapshot_proto(snapshot: &PoolSnapshot) -> v1::Snapshot {
    let status = snapshot.status.clone().unwrap_or_default();
    v1::Snapshot {
        size_bytes: i64::try_from(status.size_bytes.unwrap_or(0)).unwrap_or(i64::MAX),
        snapshot_id: snapshot.name_any(),
        source_volume_id: snapshot.spec.source_volume_id.clone(),
        creation_time: status.created_unix_nanos.map(snapshot_rpc::timestamp),
        ready_to_use: snapshot.made(),
        group_snapshot_id: String::new(),
    }
}

/// CreateSnapshot: find or write the PoolSnapshot of `name` on the source's node, then
/// wait for it.
#[tracing::instrument(skip_all, fields(snapshot_id = tracing::field::Empty, node = tracing::field::Empty))]
pub async fn create_snapshot(
    cluster: &Cluster,
    name: &str,
    source: &VolumeId,
) -> Result<v1::Snapshot, Error> {
    let id = ids::snapshot_id(&cluster.driver, name);
    Span::current().record("snapshot_id", id.as_str());
    let what = format!("snapshot {name:?}");
    let snapshot = find_or_write(cluster, id.as_str(), &what, || async {
        let volume =
            ready_source::<PoolVolume>(cluster, source.as_str(), &format!("volume {source}"))
                .await?;
        let node = volume.spec.node;
        let mut object = PoolSnapshot::new(
            id.as_str(),
            PoolSnapshotSpec {
                driver: cluster.driver.clone(),
                node: node.clone(),
                name: name.to_owned(),
                source_volume_id: source.to_string(),
            },
        );
        label(&mut object, cluster, &node);
        Ok(object)
    })
    .await?;
    Span::current().record("node", snapshot.spec.node.as_str());
    let differs = if snapshot.spec.name != name {
        Some("CSI name (ID collision)".to_owned())
    } else if snapshot.spec.source_volume_id != source.as_str() {
        Some(format!(
            "source volume ({})",
            snapshot.spec.source_volume_id
        ))
    } else {
        None
    };
    if let Some(differs) = differs {
        return Err(ClusterError::Conflict { what, differs }.into());
    }
    Ok(snapshot_proto(&created(cluster, snapshot, &what).await?))
}

/// DeleteSnapshot of a well-formed ID.
#[tracing::instrument(skip_all, fields(snapshot_id = %id, node = tracing::field::Empty))]
pub async fn delete_snapshot(cluster: &Cluster, id: &SnapshotId) -> Result<(), Error> {
    delete_work::<PoolSnapshot>(cluster, id.as_str()).await
}

/// GetSnapshot.
pub async fn get_snapshot(cluster: &Cluster, id: &SnapshotId) -> Result<v1::Snapshot, Error> {
    get_ours::<PoolSnapshot>(cluster, id.as_str())
        .await?
        .filter(is_live)
        .map(|s| snapshot_proto(&s))
        .ok_or_else(|| {
            ClusterError::NotFound {
                what: format!("snapshot {id}"),
            }
            .into()
        })
}

/// ListSnapshots: the ready snapshots, ordered by ID (the caller filters and pages).
pub async fn list_snapshots(cluster: &Cluster) -> Result<Vec<v1::Snapshot>, Error> {
    Ok(list_ready::<PoolSnapshot>(cluster)
        .await?
        .iter()
        .map(snapshot_proto)
        .collect())
}
