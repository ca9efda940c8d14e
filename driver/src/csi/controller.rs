//! The CSI Controller service: requests checked and answered here, the volumes
//! themselves kept by the [`Backend`] (this process's pool, or the nodes' in cluster mode).

use std::collections::BTreeMap;
use std::sync::Arc;

use plinth_csi_proto::v1;
use tonic::{Request, Response, Status};

use v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};

use crate::backend::Backend;
use crate::csi::validate::{self, existing_id};
use crate::csi::{advertise, expand, page, snapshot};
use crate::error::Error;
use crate::mount::FsType;
use crate::state::Driver;
use crate::storage::crypt;
use crate::storage::pool::{ContentSource, GRANULARITY, VolumeAccess, VolumeId};
use crate::storage::report::VolumeInfo;
use crate::storage::spec::{self, Access, NewVolume};

#[derive(Debug, Clone)]
pub struct ControllerService {
    driver: Arc<Driver>,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    fn backend(&self) -> Backend<'_> {
        Backend::of(&self.driver)
    }

    fn to_proto(&self, volume: &VolumeInfo) -> v1::Volume {
        v1::Volume {
            capacity_bytes: i64::try_from(volume.size_bytes).unwrap_or(i64::MAX),
            volume_id: volume.id.clone(),
            volume_context: Default::default(),
            content_source: volume.content_source.as_ref().map(content_source_proto),
            accessible_topology: volume
                .node
                .iter()
                .map(|node| validate::node_topology(&self.driver.config.topology_key, node))
                .collect(),
        }
    }

    async fn create(
        &self,
        req: v1::CreateVolumeRequest,
    ) -> Result<v1::CreateVolumeResponse, Error> {
        let name = validate::name("name", &req.name)?.to_owned();
        let caps = validate::capabilities("volume_capabilities", &req.volume_capabilities)?;
        let capacity = validate::capacity(req.capacity_range.as_ref())?;
        check_encryption(&req.parameters, &caps)?;
        let backend = self.backend();
        backend.admits(req.accessibility_requirements.as_ref())?;
        let source = req
            .volume_content_source
            .as_ref()
            .map(|s| content_source(&self.driver, s))
            .transpose()?;
        let new = NewVolume {
            name,
            caps,
            capacity,
            requirement: req.accessibility_requirements,
            parameters: req.parameters.into_iter().collect::<BTreeMap<_, _>>(),
            source,
        };
        let volume = backend.create_volume(new).await?;
        tracing::Span::current().record("volume_id", volume.id.as_str());
        Ok(v1::CreateVolumeResponse {
            volume: Some(self.to_proto(&volume)),
        })
    }

    async fn delete(
        &self,
        req: v1::DeleteVolumeRequest,
    ) -> Result<v1::DeleteVolumeResponse, Error> {
        validate::volume_id("volume_id", &req.volume_id)?;
        // An ID this driver can never have issued names no volume: deleting it is done.
        let Ok(id) = VolumeId::parse(&req.volume_id) else {
            return Ok(v1::DeleteVolumeResponse {});
        };
        self.backend().delete_volume(id).await?;
        Ok(v1::DeleteVolumeResponse {})
    }

    async fn validate_capabilities(
        &self,
        req: v1::ValidateVolumeCapabilitiesRequest,
    ) -> Result<v1::ValidateVolumeCapabilitiesResponse, Error> {
        // Arguments -> lookup -> work.
        let id = validate::volume_ref(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::MissingField("volume_capabilities"));
        }
        let id = id.lookup()?;
        let (access, parameters) = self.backend().volume_shape(&id).await?;
        Ok(confirm(&id, access, &parameters, req))
    }

    /// Pages are ordered by volume ID; a token is the ID the next page starts at, so a
    /// volume deleted between pages does not invalidate it.
    async fn list(&self, req: &v1::ListVolumesRequest) -> Result<v1::ListVolumesResponse, Error> {
        let size = page::page_size(req.max_entries)?;
        let start = page::start(&req.starting_token, VolumeId::parse)?.map(|id| id.to_string());
        let volumes = self.backend().list_volumes().await?;
        let (entries, next_token) = page::page(&volumes, |v| &v.id, start.as_ref(), size);
        let entries = entries
            .iter()
            .map(|v| v1::list_volumes_response::Entry {
                volume: Some(self.to_proto(v)),
                status: None,
            })
            .collect();
        Ok(v1::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn capacity(
        &self,
        req: v1::GetCapacityRequest,
    ) -> Result<v1::GetCapacityResponse, Error> {
        let config = &self.driver.config;
        if !config.features.capacity {
            return Err(Error::Unimplemented("GetCapacity"));
        }
        let none = v1::GetCapacityResponse {
            available_capacity: 0,
            maximum_volume_size: Some(0),
            minimum_volume_size: None,
        };
        let mut minimum = GRANULARITY;
        for cap in &req.volume_capabilities {
            match validate::capability(cap) {
                Ok(c) => {
                    if let VolumeAccess::Mount { fs_type } = c.access.volume_access() {
                        minimum = minimum.max(fs_type.min_size_bytes());
                    }
                }
                // Capacity for volumes this driver cannot make is zero.
                Err(_) => return Ok(none),
            }
        }
        let segments = req.accessible_topology.as_ref().map(|t| &t.segments);
        let Some(available) = self.backend().available(segments).await? else {
            return Ok(none);
        };
        let available = i64::try_from(available).unwrap_or(i64::MAX);
        Ok(v1::GetCapacityResponse {
            available_capacity: available,
            maximum_volume_size: Some(available),
            minimum_volume_size: Some(i64::try_from(minimum).unwrap_or(i64::MAX)),
        })
    }

    async fn get(
        &self,
        req: &v1::ControllerGetVolumeRequest,
    ) -> Result<v1::ControllerGetVolumeResponse, Error> {
        let id = existing_id(&req.volume_id)?;
        let volume = self.backend().get_volume(&id).await?;
        Ok(v1::ControllerGetVolumeResponse {
            volume: Some(self.to_proto(&volume)),
            status: Some(Default::default()),
        })
    }
}

/// The content source a request names, if its feature is on. Sources of a switched-off
/// feature are INVALID_ARGUMENT (the spec's "unsupported source").
fn content_source(
    driver: &Driver,
    source: &v1::VolumeContentSource,
) -> Result<ContentSource, Error> {
    let features = driver.config.features;
    match &source.r#type {
        Some(SourceType::Snapshot(SnapshotSource { snapshot_id })) => {
            if !features.snapshots {
                return Err(unsupported_source("restoring snapshots is switched off"));
            }
            Ok(ContentSource::Snapshot {
                snapshot_id: snapshot_id.clone(),
            })
        }
        Some(SourceType::Volume(VolumeSource { volume_id })) => {
            if !features.clones {
                return Err(unsupported_source("cloning volumes is switched off"));
            }
            Ok(ContentSource::Volume {
                volume_id: volume_id.clone(),
            })
        }
        None => Err(Error::MissingField("volume_content_source.type")),
    }
}

fn unsupported_source(reason: &str) -> Error {
    Error::InvalidArgument {
        field: "volume_content_source",
        reason: reason.to_owned(),
    }
}

/// The `content_source` a created volume reports.
fn content_source_proto(content: &ContentSource) -> v1::VolumeContentSource {
    let r#type = match content {
        ContentSource::Snapshot { snapshot_id } => SourceType::Snapshot(SnapshotSource {
            snapshot_id: snapshot_id.clone(),
        }),
        ContentSource::Volume { volume_id } => SourceType::Volume(VolumeSource {
            volume_id: volume_id.clone(),
        }),
    };
    v1::VolumeContentSource {
        r#type: Some(r#type),
    }
}

/// An encrypted class's volumes must be ext4 filesystems: refused before anything is
/// allocated (the node's kernel is asked where the volume is made, see
/// [`local::create_volume`]).
fn check_encryption(
    parameters: &std::collections::HashMap<String, String>,
    caps: &[spec::Capability],
) -> Result<(), Error> {
    let Some(mode) = parameters.get(crypt::PARAMETER) else {
        return Ok(());
    };
    crypt::requested(&BTreeMap::from([(
        crypt::PARAMETER.to_owned(),
        mode.clone(),
    )]))?;
    for cap in caps {
        let fs = match &cap.access {
            Access::Block => None,
            Access::Mount { fs, .. } => Some(fs.unwrap_or(FsType::DEFAULT).as_str()),
        };
        crypt::check_encryptable(fs)?;
    }
    Ok(())
}

/// ValidateVolumeCapabilities' answer for a volume of `access` created with
/// `parameters`: confirmed, or a message saying what it cannot serve.
fn confirm(
    id: &VolumeId,
    access: VolumeAccess,
    parameters: &BTreeMap<String, String>,
    req: v1::ValidateVolumeCapabilitiesRequest,
) -> v1::ValidateVolumeCapabilitiesResponse {
    let refusal = |message: String| v1::ValidateVolumeCapabilitiesResponse {
        confirmed: None,
        message,
    };
    for cap in &req.volume_capabilities {
        match validate::capability(cap) {
            Err(validate::Unsupported(reason)) => return refusal(reason),
            Ok(c) if !c.access.fits(access) => {
                return refusal(format!(
                    "volume {id} is {}, which cannot serve {}",
                    describe(access),
                    describe_request(&c.access)
                ));
            }
            Ok(_) => {}
        }
    }
    if !req.parameters.is_empty()
        && req.parameters.iter().collect::<BTreeMap<_, _>>()
            != parameters.iter().collect::<BTreeMap<_, _>>()
    {
        return refusal(format!("volume {id} was created with other parameters"));
    }
    v1::ValidateVolumeCapabilitiesResponse {
        confirmed: Some(v1::validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: Default::default(),
        }),
        message: String::new(),
    }
}

fn describe(access: VolumeAccess) -> String {
    match access {
        VolumeAccess::Block => "a block volume".into(),
        VolumeAccess::Mount { fs_type } => format!("an {fs_type} filesystem volume"),
    }
}

fn describe_request(access: &Access) -> String {
    match access {
        Access::Block => "block access".into(),
        Access::Mount { fs, .. } => format!(
            "a {} mount",
            fs.map_or(FsType::DEFAULT.as_str(), FsType::as_str)
        ),
    }
}

fn unimplemented<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    Err(Error::Unimplemented(rpc).into())
}

#[tonic::async_trait]
impl v1::controller_server::Controller for ControllerService {
    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name, volume_id))]
    async fn create_volume(
        &self,
        request: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::CreateVolumeResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        request: Request<v1::DeleteVolumeRequest>,
    ) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        Ok(Response::new(self.delete(request.into_inner()).await?))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<v1::ControllerPublishVolumeRequest>,
    ) -> Result<Response<v1::ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<v1::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<v1::ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<v1::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<v1::ValidateVolumeCapabilitiesResponse>, Status> {
        Ok(Response::new(
            self.validate_capabilities(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn list_volumes(
        &self,
        request: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        Ok(Response::new(self.list(request.get_ref()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_capacity(
        &self,
        request: Request<v1::GetCapacityRequest>,
    ) -> Result<Response<v1::GetCapacityResponse>, Status> {
        Ok(Response::new(self.capacity(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn controller_get_capabilities(
        &self,
        _request: Request<v1::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<v1::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(v1::ControllerGetCapabilitiesResponse {
            capabilities: advertise::controller_capabilities(&self.driver.caps),
        }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name, source_volume_id, snapshot_id))]
    async fn create_snapshot(
        &self,
        request: Request<v1::CreateSnapshotRequest>,
    ) -> Result<Response<v1::CreateSnapshotResponse>, Status> {
        Ok(Response::new(
            snapshot::create(&self.driver, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(snapshot_id = %request.get_ref().snapshot_id))]
    async fn delete_snapshot(
        &self,
        request: Request<v1::DeleteSnapshotRequest>,
    ) -> Result<Response<v1::DeleteSnapshotResponse>, Status> {
        Ok(Response::new(
            snapshot::delete(&self.driver, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        Ok(Response::new(
            snapshot::list(&self.driver, request.get_ref()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(snapshot_id = %request.get_ref().snapshot_id))]
    async fn get_snapshot(
        &self,
        request: Request<v1::GetSnapshotRequest>,
    ) -> Result<Response<v1::GetSnapshotResponse>, Status> {
        Ok(Response::new(
            snapshot::get(&self.driver, request.get_ref()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        request: Request<v1::ControllerExpandVolumeRequest>,
    ) -> Result<Response<v1::ControllerExpandVolumeResponse>, Status> {
        Ok(Response::new(
            expand::controller_expand(&self.driver, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn controller_get_volume(
        &self,
        request: Request<v1::ControllerGetVolumeRequest>,
    ) -> Result<Response<v1::ControllerGetVolumeResponse>, Status> {
        Ok(Response::new(self.get(request.get_ref()).await?))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<v1::ControllerModifyVolumeRequest>,
    ) -> Result<Response<v1::ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}
