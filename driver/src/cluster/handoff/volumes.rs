//! Volumes handed to nodes: CreateVolume (the source resolved and the node chosen
//! here), DeleteVolume, ControllerExpandVolume, and the reads of ready volumes.

use std::collections::{BTreeMap, HashMap};

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::Span;

use super::{
    Settled, created, delete_work, find_or_write, get_ours, is_deleting, is_live, is_status,
    kube_error, label, list_ready, ready_source, recorded, resources, retry_failed, settled, wait,
};
use crate::cluster::convert::content_source;
use crate::cluster::placement::{self, Room};
use crate::cluster::{Cluster, ClusterError, ids};
use crate::error::Error;
use crate::storage::pool::{CapacityRange, ContentSource, VolumeAccess, VolumeId, image_size};
use crate::storage::report::VolumeInfo;
use crate::storage::restore;
use crate::storage::snapshot::SnapshotId;
use crate::storage::spec::{NewVolume, existing_id};
use plinth_api::cluster::crd::{
    self, ContentSourceSpec, Operation, PoolNode, PoolSnapshot, PoolVolume, PoolVolumeSpec,
};

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

/// A content source as its resource describes it.
struct Source {
    access: VolumeAccess,
    size_bytes: u64,
    node: String,
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
            let id = existing_id(volume_id)?;
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
        None => {
            let (access, range) = new.blank_shape()?;
            (access, range, None)
        }
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
    } else if spec.content_source.as_ref().and_then(content_source) != new.source {
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

/// What the CO is told of a volume: the size its node reports once it has grown the
/// image, the size asked for until then.
fn info(volume: &PoolVolume) -> VolumeInfo {
    let size_bytes = volume
        .status
        .as_ref()
        .and_then(|s| s.size_bytes)
        .unwrap_or(volume.spec.size_bytes);
    VolumeInfo {
        id: volume.name_any(),
        size_bytes,
        content_source: volume.spec.content_source.as_ref().and_then(content_source),
        node: Some(volume.spec.node.clone()),
    }
}

/// CreateVolume: find or write the PoolVolume of `new.name`, then wait for its node.
#[tracing::instrument(skip_all, fields(volume_id = tracing::field::Empty, node = tracing::field::Empty))]
pub async fn create_volume(cluster: &Cluster, new: NewVolume) -> Result<VolumeInfo, Error> {
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
    Ok(info(&volume))
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
pub async fn get_volume(cluster: &Cluster, id: &VolumeId) -> Result<VolumeInfo, Error> {
    Ok(info(&ready_volume(cluster, id).await?))
}

/// ListVolumes: the ready volumes, ordered by ID (the caller pages them).
pub async fn list_volumes(cluster: &Cluster) -> Result<Vec<VolumeInfo>, Error> {
    Ok(list_ready::<PoolVolume>(cluster)
        .await?
        .iter()
        .map(info)
        .collect())
}

/// GetCapacity: the room of the node a segment names (0 when it has published none),
/// or of the roomiest node without one.
pub async fn available(
    cluster: &Cluster,
    segments: Option<&HashMap<String, String>>,
) -> Result<u64, Error> {
    let node = segments.and_then(|s| s.get(&cluster.topology_key));
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
