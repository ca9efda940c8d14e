//! The CSI GroupController service: volume group snapshots.
//!
//! A group snapshot freezes every member volume, copies each image, and thaws them all
//! ([`crate::storage::snapshot::SnapshotStore::create_group`]): one crash-consistent point in
//! time across the volumes, as a multi-volume database needs. Its member snapshots are
//! ordinary snapshots (restorable with CreateVolume) that carry the group's ID and are
//! deleted only with their group.

use std::sync::Arc;

use plinth_csi_proto::v1;
use tonic::{Request, Response, Status};

use crate::csi::advertise;
use crate::csi::snapshot;
use crate::csi::validate::{self, existing_id};
use crate::error::Error;
use crate::state::Driver;
use crate::storage::pool::VolumeId;
use crate::storage::snapshot::{GroupId, GroupSnapshot, Snapshot, SnapshotError};

#[derive(Debug, Clone)]
pub struct GroupControllerService {
    driver: Arc<Driver>,
}

fn to_proto(group: &GroupSnapshot, members: &[Snapshot]) -> v1::VolumeGroupSnapshot {
    v1::VolumeGroupSnapshot {
        group_snapshot_id: group.id.to_string(),
        snapshots: members.iter().map(snapshot::to_proto).collect(),
        creation_time: Some(snapshot::timestamp(group.created_unix_nanos)),
        ready_to_use: true,
    }
}

/// The `snapshot_ids` of Delete/Get, each a snapshot ID of this driver when given.
///
/// The spec marks the field required but lets a plugin that does not need it ignore
/// it, and this driver finds a group's members from the group's own record. So it is
/// optional here: absent, an unknown group is NOT_FOUND (Get) or already deleted
/// (Delete), as csi-sanity expects; present, it must match the group's members.
fn snapshot_ids(ids: &[String]) -> Result<Vec<String>, Error> {
    for id in ids {
        validate::volume_id("snapshot_ids", id)?;
    }
    Ok(ids.to_vec())
}

impl GroupControllerService {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    fn require_feature(&self, rpc: &'static str) -> Result<(), Error> {
        if self.driver.config.features.group_snapshots {
            Ok(())
        } else {
            Err(Error::Unimplemented(rpc))
        }
    }

    async fn create(
        &self,
        req: v1::CreateVolumeGroupSnapshotRequest,
    ) -> Result<v1::CreateVolumeGroupSnapshotResponse, Error> {
        self.require_feature("CreateVolumeGroupSnapshot")?;
        let name = validate::name("name", &req.name)?.to_owned();
        if req.source_volume_ids.is_empty() {
            return Err(Error::MissingField("source_volume_ids"));
        }
        let sources = req
            .source_volume_ids
            .iter()
            .map(|id| existing_id(id))
            .collect::<Result<Vec<VolumeId>, _>>()?;
        let distinct: std::collections::BTreeSet<&VolumeId> = sources.iter().collect();
        if distinct.len() != sources.len() {
            return Err(Error::InvalidArgument {
                field: "source_volume_ids",
                reason: "names a volume more than once".into(),
            });
        }
        let mut keys = vec![format!("group:{name}")];
        keys.extend(sources.iter().map(VolumeId::to_string));
        let pool = self.driver.pool()?;
        let store = self.driver.snapshots()?;
        let (group, members, created) = self
            .driver
            .storage()
            .exclusive_all(&keys, move || {
                Ok(store.create_group(&pool, &name, &sources)?)
            })
            .await?;
        tracing::Span::current().record("group_snapshot_id", group.id.as_str());
        tracing::info!(
            ?created,
            members = members.len(),
            "CreateVolumeGroupSnapshot done"
        );
        Ok(v1::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(to_proto(&group, &members)),
        })
    }

    async fn delete(
        &self,
        req: v1::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<v1::DeleteVolumeGroupSnapshotResponse, Error> {
        self.require_feature("DeleteVolumeGroupSnapshot")?;
        validate::volume_id("group_snapshot_id", &req.group_snapshot_id)?;
        let ids = snapshot_ids(&req.snapshot_ids)?;
        // An ID this driver never issued names no group: deleting it is done.
        let Ok(id) = GroupId::parse(&req.group_snapshot_id) else {
            return Ok(v1::DeleteVolumeGroupSnapshotResponse {});
        };
        let store = self.driver.snapshots()?;
        let key = id.to_string();
        self.driver
            .storage()
            .exclusive(&key, move || Ok(store.delete_group(&id, &ids)?))
            .await?;
        Ok(v1::DeleteVolumeGroupSnapshotResponse {})
    }

    fn get(
        &self,
        req: &v1::GetVolumeGroupSnapshotRequest,
    ) -> Result<v1::GetVolumeGroupSnapshotResponse, Error> {
        self.require_feature("GetVolumeGroupSnapshot")?;
        validate::volume_id("group_snapshot_id", &req.group_snapshot_id)?;
        let ids = snapshot_ids(&req.snapshot_ids)?;
        let id = GroupId::parse(&req.group_snapshot_id).map_err(SnapshotError::from)?;
        let (group, members) = self.driver.snapshots()?.get_group(&id, &ids)?;
        Ok(v1::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(to_proto(&group, &members)),
        })
    }
}

#[tonic::async_trait]
impl v1::group_controller_server::GroupController for GroupControllerService {
    #[tracing::instrument(skip_all)]
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<v1::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<v1::GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(v1::GroupControllerGetCapabilitiesResponse {
            capabilities: advertise::group_controller_capabilities(&self.driver.caps),
        }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name, group_snapshot_id))]
    async fn create_volume_group_snapshot(
        &self,
        request: Request<v1::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<v1::CreateVolumeGroupSnapshotResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(group_snapshot_id = %request.get_ref().group_snapshot_id))]
    async fn delete_volume_group_snapshot(
        &self,
        request: Request<v1::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<v1::DeleteVolumeGroupSnapshotResponse>, Status> {
        Ok(Response::new(self.delete(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(group_snapshot_id = %request.get_ref().group_snapshot_id))]
    async fn get_volume_group_snapshot(
        &self,
        request: Request<v1::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<v1::GetVolumeGroupSnapshotResponse>, Status> {
        Ok(Response::new(self.get(request.get_ref())?))
    }
}
