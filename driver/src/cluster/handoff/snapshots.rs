//! Snapshots handed to the node of their source volume: CreateSnapshot,
//! DeleteSnapshot, and the reads of ready snapshots.

use kube::ResourceExt;
use tracing::Span;

use super::{
    HandedOff, created, delete_work, find_or_write, get_ours, is_live, label, list_ready,
    ready_source,
};
use crate::cluster::{Cluster, ClusterError, ids};
use crate::error::Error;
use crate::storage::pool::VolumeId;
use crate::storage::report::SnapshotInfo;
use crate::storage::snapshot::SnapshotId;
use plinth_api::cluster::crd::{PoolSnapshot, PoolSnapshotSpec, PoolVolume};

/// What the CO is told of a snapshot: ready once its node has made it.
fn info(snapshot: &PoolSnapshot) -> SnapshotInfo {
    let status = snapshot.status.clone().unwrap_or_default();
    SnapshotInfo {
        id: snapshot.name_any(),
        source_volume_id: snapshot.spec.source_volume_id.clone(),
        size_bytes: status.size_bytes.unwrap_or(0),
        created_unix_nanos: status.created_unix_nanos,
        ready: snapshot.made(),
        group_id: None,
    }
}

/// CreateSnapshot: find or write the PoolSnapshot of `name` on the source's node, then
/// wait for it.
#[tracing::instrument(skip_all, fields(snapshot_id = tracing::field::Empty, node = tracing::field::Empty))]
pub async fn create_snapshot(
    cluster: &Cluster,
    name: &str,
    source: &VolumeId,
) -> Result<SnapshotInfo, Error> {
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
    Ok(info(&created(cluster, snapshot, &what).await?))
}

/// DeleteSnapshot of a well-formed ID.
#[tracing::instrument(skip_all, fields(snapshot_id = %id, node = tracing::field::Empty))]
pub async fn delete_snapshot(cluster: &Cluster, id: &SnapshotId) -> Result<(), Error> {
    delete_work::<PoolSnapshot>(cluster, id.as_str()).await
}

/// GetSnapshot.
pub async fn get_snapshot(cluster: &Cluster, id: &SnapshotId) -> Result<SnapshotInfo, Error> {
    get_ours::<PoolSnapshot>(cluster, id.as_str())
        .await?
        .filter(is_live)
        .map(|s| info(&s))
        .ok_or_else(|| {
            ClusterError::NotFound {
                what: format!("snapshot {id}"),
            }
            .into()
        })
}

/// ListSnapshots: the ready snapshots, ordered by ID (the caller filters and pages).
pub async fn list_snapshots(cluster: &Cluster) -> Result<Vec<SnapshotInfo>, Error> {
    Ok(list_ready::<PoolSnapshot>(cluster)
        .await?
        .iter()
        .map(info)
        .collect())
}
