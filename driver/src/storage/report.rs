//! What the controller reports of a volume or a snapshot, wherever it is kept: this
//! node's pool, or (cluster mode) the resource a node answers in. The CSI services build
//! their messages from these.

use crate::storage::pool::{self, ContentSource};
use crate::storage::snapshot::Snapshot;

/// A volume as ControllerGetVolume, ListVolumes and CreateVolume describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub size_bytes: u64,
    pub content_source: Option<ContentSource>,
    /// The node the volume is accessible from; `None` when the driver reports no
    /// topology.
    pub node: Option<String>,
}

impl VolumeInfo {
    /// A volume of this node's pool; `node` is this node when topology is reported.
    pub fn local(volume: &pool::Volume, node: Option<&str>) -> Self {
        Self {
            id: volume.id.to_string(),
            size_bytes: volume.size_bytes,
            content_source: volume.content_source.clone(),
            node: node.map(str::to_owned),
        }
    }
}

/// A snapshot as CreateSnapshot, GetSnapshot and ListSnapshots describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub source_volume_id: String,
    pub size_bytes: u64,
    /// Unknown until the node that cuts it reports it.
    pub created_unix_nanos: Option<u64>,
    pub ready: bool,
    pub group_id: Option<String>,
}

impl From<&Snapshot> for SnapshotInfo {
    /// A local copy is complete when its record is committed, so every snapshot in the
    /// store is ready to use.
    fn from(snapshot: &Snapshot) -> Self {
        Self {
            id: snapshot.id.to_string(),
            source_volume_id: snapshot.source_volume_id.to_string(),
            size_bytes: snapshot.size_bytes,
            created_unix_nanos: Some(snapshot.created_unix_nanos),
            ready: true,
            group_id: snapshot.group_id.as_ref().map(ToString::to_string),
        }
    }
}
