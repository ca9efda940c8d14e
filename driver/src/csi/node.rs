//! The CSI Node service: stage, publish and measure volumes of the local pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_csi_proto::v1;
use tonic::{Request, Response, Status};
use v1::volume_usage::Unit;

use crate::csi::validate;
use crate::csi::{advertise, expand};
use crate::error::Error;
use crate::mount::mountinfo;
use crate::state::{Driver, blocking};
use crate::storage::crypt::Secrets;
use crate::storage::ephemeral;
use crate::storage::pool::VolumeId;
use crate::storage::volume::{self, NodeStage, NodeVolumes, VolumeStats};

#[derive(Debug, Clone)]
pub struct NodeService {
    driver: Arc<Driver>,
}

impl NodeService {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    /// A staging or target path: present, well-formed, below the kubelet directory.
    fn path(&self, field: &'static str, value: &str) -> Result<PathBuf, Error> {
        validate::kubelet_path(&self.driver.config, field, value)
    }

    // Every handler runs in the same order, in one place: arguments (presence, then
    // form) -> lookup -> work. A request missing an argument is INVALID_ARGUMENT even
    // for a volume that does not exist; NOT_FOUND comes only from the lookup.

    async fn stage(&self, mut req: v1::NodeStageVolumeRequest) -> Result<(), Error> {
        // Out of the request at once: from here on they are redacted and wiped on drop.
        let secrets = Secrets::take(&mut req.secrets);
        let id = validate::volume_ref(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let cap =
            validate::required_capability("volume_capability", req.volume_capability.as_ref())?;
        let id = id.lookup()?;
        let volumes = self.driver.volumes()?;
        let key = id.to_string();
        self.driver
            .storage()
            .exclusive(&key, move || {
                let outcome = volumes.node_stage(&NodeStage {
                    id: &id,
                    staging: &staging,
                    capability: &cap,
                    secrets: &secrets,
                })?;
                tracing::debug!(?outcome, "NodeStageVolume done");
                Ok(())
            })
            .await
    }

    async fn unstage(&self, req: v1::NodeUnstageVolumeRequest) -> Result<(), Error> {
        let id = validate::volume_ref(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let id = id.lookup()?;
        let volumes = self.driver.volumes()?;
        let key = id.to_string();
        self.driver
            .storage()
            .exclusive(&key, move || {
                let outcome = volumes.unstage(&id, &staging)?;
                tracing::debug!(?outcome, "NodeUnstageVolume done");
                Ok(())
            })
            .await
    }

    async fn publish(&self, req: v1::NodePublishVolumeRequest) -> Result<(), Error> {
        if ephemeral::is_ephemeral(&req.volume_context) {
            return super::inline::node_publish(&self.driver, req).await;
        }
        let id = validate::volume_ref(&req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        let cap =
            validate::required_capability("volume_capability", req.volume_capability.as_ref())?;
        // Spec: with STAGE_UNSTAGE_VOLUME advertised a missing staging path is a
        // precondition failure (stage first), not a malformed request.
        if req.staging_target_path.is_empty() {
            return Err(Error::FailedPrecondition(
                "staging_target_path is required: this driver stages volumes (STAGE_UNSTAGE_VOLUME)"
                    .into(),
            ));
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let readonly = req.readonly || cap.mode.read_only();
        let id = id.lookup()?;
        let volumes = self.driver.volumes()?;
        let key = id.to_string();
        self.driver
            .storage()
            .exclusive(&key, move || {
                volumes.check_fits(&id, &cap)?;
                if !cap.mode.multi_publish()
                    && let Some(other) = other_publication(&volumes, &id, &staging, &target)?
                {
                    return Err(Error::FailedPrecondition(format!(
                        "volume {id} is already published at {}; its access mode allows one target",
                        other.display(),
                    )));
                }
                let outcome =
                    volumes.publish(&id, &staging, &target, &cap.access.node_access(), readonly)?;
                tracing::debug!(?outcome, "NodePublishVolume done");
                Ok(())
            })
            .await
    }

    async fn unpublish(&self, req: v1::NodeUnpublishVolumeRequest) -> Result<(), Error> {
        if super::inline::node_unpublish(&self.driver, &req).await? {
            return Ok(());
        }
        let id = validate::volume_ref(&req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        let id = id.lookup()?;
        let volumes = self.driver.volumes()?;
        let key = id.to_string();
        self.driver
            .storage()
            .exclusive(&key, move || {
                let outcome = volumes.unpublish(&id, &target)?;
                tracing::debug!(?outcome, "NodeUnpublishVolume done");
                Ok(())
            })
            .await
    }

    /// Read-only, so no in-flight claim: kubelet polls stats and an ABORTED here would
    /// only add noise while a stage or publish runs.
    ///
    /// `volume_path` names where to look rather than a place the driver writes to, so
    /// once present, a path that cannot hold the volume (relative, outside the kubelet
    /// directory) is part of the lookup: NOT_FOUND, with nothing touched (csi-sanity
    /// asks for NOT_FOUND at `some/path`).
    async fn stats(
        &self,
        req: v1::NodeGetVolumeStatsRequest,
    ) -> Result<v1::NodeGetVolumeStatsResponse, Error> {
        let id = validate::volume_ref(&req.volume_id)?;
        validate::required("volume_path", &req.volume_path)?;
        if !req.staging_target_path.is_empty() {
            self.path("staging_target_path", &req.staging_target_path)?;
        }
        let id = id.lookup()?;
        let volumes = self.driver.volumes()?;
        volumes.pool().get(&id)?;
        let path = self
            .path("volume_path", &req.volume_path)
            .map_err(|_| Error::NotAtPath {
                id: id.to_string(),
                path: req.volume_path.clone(),
            })?;
        let stats = blocking(move || Ok(volumes.stats(&id, &path)?)).await?;
        Ok(v1::NodeGetVolumeStatsResponse {
            usage: usage(stats),
            volume_condition: None,
        })
    }

    fn info(&self) -> v1::NodeGetInfoResponse {
        let config = &self.driver.config;
        v1::NodeGetInfoResponse {
            node_id: config.node_id.clone(),
            max_volumes_per_node: config.max_volumes_per_node,
            accessible_topology: config
                .features
                .topology
                .then(|| validate::node_topology(&config.topology_key, &config.node_id)),
        }
    }
}

/// A mount of this volume other than its staging and `target`, if any.
fn other_publication(
    volumes: &NodeVolumes,
    id: &VolumeId,
    staging: &Path,
    target: &Path,
) -> Result<Option<PathBuf>, Error> {
    let Some(dev) = volumes.pool().attachment(id)? else {
        return Ok(None);
    };
    // mountinfo shows resolved paths; resolve ours the same way before comparing.
    let staging = volumes.resolve(staging)?;
    let target = volumes.resolve(target)?;
    let users = dev.users();
    Ok(mountinfo::read_self()?
        .into_iter()
        .filter(|m| users.contains(m))
        .map(|m| m.mount_point)
        .find(|p| !p.starts_with(&staging) && *p != target))
}

fn usage(stats: VolumeStats) -> Vec<v1::VolumeUsage> {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let entry = |u: volume::Usage, unit: Unit| v1::VolumeUsage {
        available: clamp(u.available),
        total: clamp(u.total),
        used: clamp(u.used),
        unit: unit as i32,
    };
    match stats {
        VolumeStats::Filesystem { bytes, inodes } => {
            vec![entry(bytes, Unit::Bytes), entry(inodes, Unit::Inodes)]
        }
        VolumeStats::Block { total_bytes } => vec![v1::VolumeUsage {
            available: 0,
            total: clamp(total_bytes),
            used: 0,
            unit: Unit::Bytes as i32,
        }],
    }
}

#[tonic::async_trait]
impl v1::node_server::Node for NodeService {
    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        request: Request<v1::NodeStageVolumeRequest>,
    ) -> Result<Response<v1::NodeStageVolumeResponse>, Status> {
        self.stage(request.into_inner()).await?;
        Ok(Response::new(v1::NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        request: Request<v1::NodeUnstageVolumeRequest>,
    ) -> Result<Response<v1::NodeUnstageVolumeResponse>, Status> {
        self.unstage(request.into_inner()).await?;
        Ok(Response::new(v1::NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_publish_volume(
        &self,
        request: Request<v1::NodePublishVolumeRequest>,
    ) -> Result<Response<v1::NodePublishVolumeResponse>, Status> {
        self.publish(request.into_inner()).await?;
        Ok(Response::new(v1::NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_unpublish_volume(
        &self,
        request: Request<v1::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<v1::NodeUnpublishVolumeResponse>, Status> {
        self.unpublish(request.into_inner()).await?;
        Ok(Response::new(v1::NodeUnpublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_get_volume_stats(
        &self,
        request: Request<v1::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<v1::NodeGetVolumeStatsResponse>, Status> {
        Ok(Response::new(self.stats(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_expand_volume(
        &self,
        request: Request<v1::NodeExpandVolumeRequest>,
    ) -> Result<Response<v1::NodeExpandVolumeResponse>, Status> {
        Ok(Response::new(
            expand::node_expand(&self.driver, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn node_get_capabilities(
        &self,
        _request: Request<v1::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<v1::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(v1::NodeGetCapabilitiesResponse {
            capabilities: advertise::node_capabilities(&self.driver.caps),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn node_get_info(
        &self,
        _request: Request<v1::NodeGetInfoRequest>,
    ) -> Result<Response<v1::NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.info()))
    }
}
