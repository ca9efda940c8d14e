//! The CSI Identity service.

use std::sync::Arc;

use plinth_csi_proto::v1;
use tonic::{Request, Response, Status};

use crate::csi::advertise;
use crate::state::Driver;

#[derive(Debug, Clone)]
pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl v1::identity_server::Identity for IdentityService {
    #[tracing::instrument(skip_all)]
    async fn get_plugin_info(
        &self,
        _request: Request<v1::GetPluginInfoRequest>,
    ) -> Result<Response<v1::GetPluginInfoResponse>, Status> {
        Ok(Response::new(v1::GetPluginInfoResponse {
            name: self.driver.config.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: self
                .driver
                .snapshots()
                .map(|s| s.filesystem().manifest())
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_plugin_capabilities(
        &self,
        _request: Request<v1::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<v1::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(v1::GetPluginCapabilitiesResponse {
            capabilities: advertise::plugin_capabilities(
                &self.driver.caps,
                self.driver.config.mode.serves_controller(),
            ),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn probe(
        &self,
        _request: Request<v1::ProbeRequest>,
    ) -> Result<Response<v1::ProbeResponse>, Status> {
        Ok(Response::new(v1::ProbeResponse {
            ready: Some(self.driver.ready().await),
        }))
    }
}
