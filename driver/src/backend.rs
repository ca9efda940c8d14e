//! Where the controller's volume and snapshot work is done: in this process's own pool
//! (all-in-one mode), or handed to the node holding the pool (the controller of a
//! cluster, [`crate::cluster::handoff`]). The CSI services ask a [`Backend`] and build
//! their messages from the domain types it answers with ([`crate::storage::report`]).

use std::collections::{BTreeMap, HashMap};

use plinth_csi_proto::v1;

use crate::cluster::{Cluster, handoff};
use crate::config::Mode;
use crate::error::Error;
use crate::state::{Driver, blocking};
use crate::storage::pool::{self, VolumeAccess, VolumeId};
use crate::storage::report::{SnapshotInfo, VolumeInfo};
use crate::storage::snapshot::SnapshotId;
use crate::storage::spec::NewVolume;
use crate::storage::{local, restore};

/// The store of a driver's volumes and snapshots.
#[derive(Clone, Copy, Debug)]
pub enum Backend<'a> {
    /// This process's pool.
    Local(&'a Driver),
    /// The pools of the node plugins, through the cluster's resources.
    Cluster(&'a Cluster),
}

impl<'a> Backend<'a> {
    /// A controller-mode driver hands every volume call to a node; any other serves from
    /// its own pool. Mode and cluster client are both fixed at start-up.
    pub fn of(driver: &'a Driver) -> Self {
        match driver.cluster() {
            Some(cluster) if driver.config.mode == Mode::Controller => Self::Cluster(cluster),
            _ => Self::Local(driver),
        }
    }

    /// Refuses a request whose accessibility requirements exclude every place this
    /// backend could put the volume, before the rest of the request is looked at. A
    /// cluster places the volume later, when it knows the nodes' room.
    pub fn admits(&self, requirement: Option<&v1::TopologyRequirement>) -> Result<(), Error> {
        match self {
            Self::Local(driver) => {
                let config = &driver.config;
                if config.features.topology {
                    accessibility(requirement, &config.topology_key, &config.node_id)?;
                }
                Ok(())
            }
            Self::Cluster(_) => Ok(()),
        }
    }

    pub async fn create_volume(&self, new: NewVolume) -> Result<VolumeInfo, Error> {
        let driver = match self {
            Self::Cluster(cluster) => return handoff::create_volume(cluster, new).await,
            Self::Local(driver) => driver,
        };
        let source = new
            .source
            .as_ref()
            .map(|content| restore::resolve_content(driver.storage(), content))
            .transpose()?;
        let (access, capacity) = match &source {
            Some(source) => {
                restore::plan(source.access, source.size_bytes, &new.caps, new.capacity)?
            }
            None => new.blank_shape()?,
        };
        let request = pool::CreateVolumeRequest {
            name: new.name,
            id: None,
            capacity,
            access,
            parameters: new.parameters,
            content_source: source.as_ref().map(|s| s.content.clone()),
        };
        let (volume, created) = local::create_volume(driver.storage(), request, source).await?;
        // The calling service's span: its log line carries the new ID.
        tracing::Span::current().record("volume_id", volume.id.as_str());
        tracing::info!(?created, size = volume.size_bytes, "CreateVolume done");
        Ok(local_info(driver, &volume))
    }

    pub async fn delete_volume(&self, id: VolumeId) -> Result<(), Error> {
        match self {
            Self::Cluster(cluster) => handoff::delete_volume(cluster, &id).await,
            Self::Local(driver) => local::delete_volume(driver.storage(), id).await,
        }
    }

    /// The access and parameters the volume was created with.
    pub async fn volume_shape(
        &self,
        id: &VolumeId,
    ) -> Result<(VolumeAccess, BTreeMap<String, String>), Error> {
        match self {
            Self::Cluster(cluster) => handoff::volume_shape(cluster, id).await,
            Self::Local(driver) => {
                let volume = driver.pool()?.get(id)?;
                Ok((volume.access, volume.parameters))
            }
        }
    }

    pub async fn get_volume(&self, id: &VolumeId) -> Result<VolumeInfo, Error> {
        match self {
            Self::Cluster(cluster) => handoff::get_volume(cluster, id).await,
            Self::Local(driver) => Ok(local_info(driver, &driver.pool()?.get(id)?)),
        }
    }

    /// Every volume, ordered by ID.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, Error> {
        match self {
            Self::Cluster(cluster) => handoff::list_volumes(cluster).await,
            Self::Local(driver) => Ok(driver
                .pool()?
                .list()
                .iter()
                .map(|v| local_info(driver, v))
                .collect()),
        }
    }

    /// Bytes a new volume may have in the topology segment `segments` (anywhere when
    /// `None`); `None` when this backend can make no volume there at all.
    pub async fn available(
        &self,
        segments: Option<&HashMap<String, String>>,
    ) -> Result<Option<u64>, Error> {
        match self {
            Self::Cluster(cluster) => Ok(Some(handoff::available(cluster, segments).await?)),
            Self::Local(driver) => {
                let config = &driver.config;
                if config.features.topology
                    && segments
                        .is_some_and(|s| !is_this_node(s, &config.topology_key, &config.node_id))
                {
                    return Ok(None);
                }
                let pool = driver.pool()?;
                Ok(Some(
                    blocking(move || pool.available().map_err(Error::from)).await?,
                ))
            }
        }
    }

    /// Grows the volume to `wanted` bytes (never shrinks it); returns its size.
    pub async fn expand_volume(&self, id: VolumeId, wanted: u64) -> Result<u64, Error> {
        match self {
            Self::Cluster(cluster) => handoff::expand_volume(cluster, &id, wanted).await,
            Self::Local(driver) => local::expand_volume(driver.storage(), id, wanted).await,
        }
    }

    pub async fn create_snapshot(
        &self,
        name: String,
        source: VolumeId,
    ) -> Result<SnapshotInfo, Error> {
        match self {
            Self::Cluster(cluster) => handoff::create_snapshot(cluster, &name, &source).await,
            Self::Local(driver) => {
                let (snapshot, created) =
                    local::create_snapshot(driver.storage(), name, source, None).await?;
                // The calling service's span: its log line carries the new ID.
                tracing::Span::current().record("snapshot_id", snapshot.id.as_str());
                tracing::info!(?created, method = %snapshot.copy_method, "CreateSnapshot done");
                Ok(SnapshotInfo::from(&snapshot))
            }
        }
    }

    pub async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), Error> {
        match self {
            Self::Cluster(cluster) => handoff::delete_snapshot(cluster, &id).await,
            Self::Local(driver) => local::delete_snapshot(driver.storage(), id).await,
        }
    }

    pub async fn get_snapshot(&self, id: &SnapshotId) -> Result<SnapshotInfo, Error> {
        match self {
            Self::Cluster(cluster) => handoff::get_snapshot(cluster, id).await,
            Self::Local(driver) => Ok(SnapshotInfo::from(&driver.snapshots()?.get(id)?)),
        }
    }

    /// Every snapshot, ordered by ID.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        match self {
            Self::Cluster(cluster) => handoff::list_snapshots(cluster).await,
            Self::Local(driver) => Ok(driver
                .snapshots()?
                .list()
                .iter()
                .map(SnapshotInfo::from)
                .collect()),
        }
    }
}

/// A volume of this node's pool: accessible from this node, which is reported when
/// topology is on.
fn local_info(driver: &Driver, volume: &pool::Volume) -> VolumeInfo {
    let config = &driver.config;
    let node = config.features.topology.then_some(config.node_id.as_str());
    VolumeInfo::local(volume, node)
}

/// Whether the segments name this node. Segments without our key do not constrain it,
/// but neither do they place the volume here: only an explicit match counts.
fn is_this_node(segments: &HashMap<String, String>, key: &str, node_id: &str) -> bool {
    segments.get(key).is_some_and(|v| v == node_id)
}

/// A local volume can only be made where this driver runs. When the CO constrains the
/// placement and this node is not among the places it names, the spec's answer is
/// RESOURCE_EXHAUSTED.
fn accessibility(
    requirement: Option<&v1::TopologyRequirement>,
    key: &str,
    node_id: &str,
) -> Result<(), Error> {
    let Some(requirement) = requirement else {
        return Ok(());
    };
    let mut named = requirement
        .requisite
        .iter()
        .chain(&requirement.preferred)
        .peekable();
    if named.peek().is_none() {
        return Ok(());
    }
    if named.any(|t| is_this_node(&t.segments, key, node_id)) {
        Ok(())
    } else {
        Err(Error::TopologyUnsatisfiable(node_id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_topology(key: &str, node_id: &str) -> v1::Topology {
        v1::Topology {
            segments: [(key.to_owned(), node_id.to_owned())].into(),
        }
    }

    #[test]
    fn topology_requirements_must_name_this_node() {
        let key = "topology.local.csi.plinth.dev/node";
        let here = node_topology(key, "n1");
        let there = node_topology(key, "n2");
        let req =
            |requisite: Vec<v1::Topology>, preferred: Vec<v1::Topology>| v1::TopologyRequirement {
                requisite,
                preferred,
            };
        assert!(accessibility(None, key, "n1").is_ok());
        assert!(accessibility(Some(&req(vec![], vec![])), key, "n1").is_ok());
        assert!(
            accessibility(
                Some(&req(vec![there.clone(), here.clone()], vec![there.clone()])),
                key,
                "n1"
            )
            .is_ok()
        );
        assert!(matches!(
            accessibility(Some(&req(vec![there.clone()], vec![])), key, "n1"),
            Err(Error::TopologyUnsatisfiable(_))
        ));
        assert!(accessibility(Some(&req(vec![], vec![there])), key, "n1").is_err());
    }
}
