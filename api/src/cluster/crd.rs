//! The custom resources of cluster mode (`plinth.dev/v1alpha1`, cluster-scoped): how the
//! controller hands volume work to the node that owns the pool, and how nodes publish
//! their capacity.
//!
//! They are the driver's internal bookkeeping, not an interface for users: the controller
//! writes specs, the node plugin of `spec.node` does the work in its pool and writes
//! status. The CRD YAML is generated from these types (`plinth-operator generate`).
//!
//! Counts and sizes are `u64` in Rust but `int64` (minimum 0) in the schema
//! (`schemars(with = "i64")`): the API server knows no `uint64` format and warns on every
//! write of an object whose schema names one.

use std::collections::BTreeMap;

use std::fmt::Debug;

use kube::core::ClusterResourceScope;
use kube::{CustomResource, Resource};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The API group of every Plinth resource.
pub const GROUP: &str = "plinth.dev";
/// Label: the CSI driver name an object belongs to (several Plinth drivers may share a
/// cluster).
pub const DRIVER_LABEL: &str = "plinth.dev/driver";
/// Label: the node whose pool holds the object.
pub const NODE_LABEL: &str = "plinth.dev/node";
/// Held by every PoolVolume and PoolSnapshot while its image may exist on the node: the
/// record of a volume is never lost while its bytes are still there.
pub const FINALIZER: &str = "plinth.dev/pool-image";
/// Set by the controller when the CO retries work the node has failed: the node tries
/// again at once instead of waiting out its own backoff, so the sidecar's retries drive it.
pub const RETRY_ANNOTATION: &str = "plinth.dev/retry";
/// The field manager of the driver's writes.
pub const FIELD_MANAGER: &str = "plinth-driver";

/// A volume in one node's pool. `metadata.name` is the CSI volume ID.
// Every printcolumn repeats `type_ = ...`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "plinth.dev",
    version = "v1alpha1",
    kind = "PoolVolume",
    plural = "poolvolumes",
    shortname = "pvol",
    category = "plinth",
    status = "PoolVolumeStatus",
    doc = "A volume in one node's pool, recorded by the driver's controller and provisioned by the node plugin of spec.node. Internal to the driver: manage volumes through PersistentVolumeClaims.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PoolVolumeSpec {
    /// The CSI driver name the volume belongs to.
    pub driver: String,
    /// The node whose pool holds the volume's image.
    pub node: String,
    /// The CSI name of the volume (its idempotency key, usually the PV name).
    pub name: String,
    /// Size of the image in bytes. Expansion raises it; it never shrinks.
    #[schemars(with = "i64", range(min = 1))]
    pub size_bytes: u64,
    /// How the volume is consumed.
    pub access: AccessSpec,
    /// StorageClass parameters the volume was created with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Initial content: a snapshot or a volume in the same pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_source: Option<ContentSourceSpec>,
}

/// How a volume is consumed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    pub volume_mode: VolumeMode,
    /// Filesystem of a `Filesystem` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<FsType>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeMode {
    Filesystem,
    Block,
}

/// Filesystems the driver formats and mounts.
// The record's spelling of the driver's `mount::FsType` (which carries mkfs and mount
// behaviour); the driver converts with exhaustive matches, so a filesystem added there
// does not compile until it is added here. The doc line above is the schema's
// description: keep it the driver's.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

/// A volume's initial content. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentSourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
}

/// What the node plugin reports about a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolVolumeStatus {
    /// The `metadata.generation` this status answers.
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub phase: Phase,
    /// Size of the image in the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub size_bytes: Option<u64>,
    /// Why the last attempt failed; the node retries with backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WorkError>,
}

/// A snapshot in one node's pool. `metadata.name` is the CSI snapshot ID.
// Every printcolumn repeats `type_ = ...`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "plinth.dev",
    version = "v1alpha1",
    kind = "PoolSnapshot",
    plural = "poolsnapshots",
    shortname = "psnap",
    category = "plinth",
    status = "PoolSnapshotStatus",
    doc = "A snapshot in one node's pool, recorded by the driver's controller and cut by the node plugin of spec.node. Internal to the driver: manage snapshots through VolumeSnapshots.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourceVolumeId"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSnapshotSpec {
    pub driver: String,
    pub node: String,
    /// The CSI name of the snapshot (its idempotency key).
    pub name: String,
    /// The CSI volume ID of the source, in the same pool.
    pub source_volume_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSnapshotStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub phase: Phase,
    /// Size of the source when the snapshot was cut; a restore is at least this big.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub size_bytes: Option<u64>,
    /// When the snapshot was cut, in nanoseconds since the Unix epoch (CSI creation_time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub created_unix_nanos: Option<u64>,
    /// The source's access type: a restore must use the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_access: Option<AccessSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WorkError>,
}

/// One node's pool, as its node plugin last saw it. `metadata.name` is
/// `<node>.<driver>` ([`pool_node_name`]).
// Every printcolumn repeats `type_ = ...`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "plinth.dev",
    version = "v1alpha1",
    kind = "PoolNode",
    plural = "poolnodes",
    shortname = "pnode",
    category = "plinth",
    status = "PoolNodeStatus",
    doc = "One node's volume pool as its node plugin last published it: the capacity the controller places volumes and answers GetCapacity with. Internal to the driver.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableBytes"
    ),
    printcolumn(name = "Volumes", type_ = "integer", json_path = ".status.volumes"),
    printcolumn(name = "Snapshots", type_ = "integer", json_path = ".status.snapshots"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeSpec {
    pub driver: String,
    pub node: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeStatus {
    /// Bytes a new volume may still be promised (free space after the reserve and after
    /// what existing volumes are owed).
    #[schemars(with = "i64", range(min = 0))]
    pub available_bytes: u64,
    /// Size of the pool's filesystem.
    #[schemars(with = "i64", range(min = 0))]
    pub total_bytes: u64,
    #[schemars(with = "i64", range(min = 0))]
    pub volumes: u64,
    #[schemars(with = "i64", range(min = 0))]
    pub snapshots: u64,
    /// The pool's filesystem (ext4, xfs, ...) and how snapshots copy on it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool_filesystem: String,
}

/// Where a piece of work stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not done yet (or not answered for the current generation).
    #[default]
    Pending,
    Ready,
    /// The last attempt failed: see `error`.
    Failed,
}

/// A failure the node recorded, as the CSI call would have answered it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkError {
    /// What the node was doing: a waiting controller call takes only its own failure as
    /// the answer (a deletion is not answered by an old expansion failure).
    pub operation: Operation,
    /// The gRPC status code name, e.g. `RESOURCE_EXHAUSTED`.
    pub code: String,
    pub message: String,
}

/// The piece of work a [`WorkError`] belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Operation {
    Create,
    Expand,
    Delete,
}

/// What the typed API needs of a cluster-scoped resource of ours (one set of bounds for
/// the controller's and the node's generic code).
pub trait Record:
    Resource<DynamicType = (), Scope = ClusterResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
}

impl<T> Record for T where
    T: Resource<DynamicType = (), Scope = ClusterResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize
        + Send
        + Sync
        + 'static
{
}

/// The name of `node`'s PoolNode for `driver`: both are DNS subdomains, so is this.
pub fn pool_node_name(node: &str, driver: &str) -> String {
    format!("{node}.{driver}")
}

/// The labels that select a driver's objects on one node.
pub fn labels(driver: &str, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (DRIVER_LABEL.to_owned(), driver.to_owned()),
        (NODE_LABEL.to_owned(), node.to_owned()),
    ])
}

/// The label selector of everything of `driver` on `node`.
pub fn node_selector(driver: &str, node: &str) -> String {
    format!("{DRIVER_LABEL}={driver},{NODE_LABEL}={node}")
}

/// The label selector of everything of `driver`.
pub fn driver_selector(driver: &str) -> String {
    format!("{DRIVER_LABEL}={driver}")
}

#[cfg(test)]
mod tests {
    use kube::{CustomResourceExt, Resource};

    use super::*;

    #[test]
    fn resources_are_cluster_scoped_in_the_plinth_group() {
        assert_eq!(PoolVolume::group(&()), GROUP);
        assert_eq!(PoolVolume::plural(&()), "poolvolumes");
        assert_eq!(PoolSnapshot::plural(&()), "poolsnapshots");
        assert_eq!(PoolNode::plural(&()), "poolnodes");
        let crd = PoolVolume::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status must be a subresource: the node writes it, the controller the spec"
        );
    }
}
