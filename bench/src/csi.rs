//! Connections to the plugin and what it says about itself.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use plinth_csi_proto::connect_unix;
use plinth_csi_proto::v1::controller_client::ControllerClient;
use plinth_csi_proto::v1::identity_client::IdentityClient;
use plinth_csi_proto::v1::node_client::NodeClient;
use plinth_csi_proto::v1::{
    self, ControllerGetCapabilitiesRequest, GetPluginCapabilitiesRequest, GetPluginInfoRequest,
    NodeGetCapabilitiesRequest, NodeGetInfoRequest, ProbeRequest, Topology,
};
use tonic::transport::Channel;

use crate::call::Call;
use crate::error::Error;
use crate::stats::Recorder;

pub use v1::controller_service_capability::rpc::Type as ControllerCap;
pub use v1::node_service_capability::rpc::Type as NodeCap;
pub use v1::plugin_capability::service::Type as ServiceCap;
pub use v1::plugin_capability::volume_expansion::Type as ExpansionCap;

/// `unix:///run/csi.sock`, `unix:/run/csi.sock` or a bare absolute path.
pub fn socket_path(endpoint: &str) -> Result<&Path, Error> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(Path::new(path))
    } else {
        Err(Error::Unsupported(format!(
            "endpoint {endpoint:?} is not unix:///absolute/path (CSI plugins listen on Unix sockets only)"
        )))
    }
}

async fn connect(endpoint: &str) -> Result<Channel, Error> {
    connect_unix(socket_path(endpoint)?)
        .await
        .map_err(|source| Error::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// Clients for the three services. Cloning is cheap: clones share the connection, so
/// every concurrent worker clones what it calls.
#[derive(Clone)]
pub struct Csi {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
    node_identity: IdentityClient<Channel>,
    timeout: Duration,
}

impl Csi {
    /// `node_endpoint` differs from `endpoint` when controller and node plugins are
    /// separate processes; otherwise both share one connection.
    pub async fn connect(
        endpoint: &str,
        node_endpoint: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let channel = connect(endpoint).await?;
        let node_channel = match node_endpoint {
            Some(node) if node != endpoint => connect(node).await?,
            _ => channel.clone(),
        };
        Ok(Self {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel),
            node: NodeClient::new(node_channel.clone()),
            node_identity: IdentityClient::new(node_channel),
            timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one call under the per-call timeout.
    pub async fn call<T>(
        &self,
        call: Call,
        request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::Rpc { call, status }),
            Err(_) => Err(Error::Timeout {
                call,
                after: self.timeout,
            }),
        }
    }

    /// Like [`Csi::call`], recording the latency of a successful call.
    pub async fn timed<T>(
        &self,
        rec: &mut Recorder,
        call: Call,
        request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let response = self.call(call, request).await?;
        rec.record(call, started.elapsed());
        Ok(response)
    }

    /// Waits until Probe reports ready (an unset `ready` means ready, per the spec).
    async fn wait_ready(
        &self,
        identity: &IdentityClient<Channel>,
        what: &str,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let probe = self
                .call(Call::Probe, identity.clone().probe(ProbeRequest {}))
                .await?;
            if probe.ready.unwrap_or(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unsupported(format!(
                    "the {what} plugin still reports not ready after {:?}",
                    self.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks the plugin who it is and what it can do.
    pub async fn discover(&self) -> Result<Discovery, Error> {
        self.wait_ready(&self.identity, "controller").await?;
        self.wait_ready(&self.node_identity, "node").await?;
        let info = self
            .call(
                Call::GetPluginInfo,
                self.identity
                    .clone()
                    .get_plugin_info(GetPluginInfoRequest {}),
            )
            .await?;
        let plugin = self
            .call(
                Call::GetPluginCapabilities,
                self.identity
                    .clone()
                    .get_plugin_capabilities(GetPluginCapabilitiesRequest {}),
            )
            .await?;
        let mut services = HashSet::new();
        let mut expansion = HashSet::new();
        for cap in plugin.capabilities {
            match cap.r#type {
                Some(v1::plugin_capability::Type::Service(s)) => {
                    services.insert(s.r#type());
                }
                Some(v1::plugin_capability::Type::VolumeExpansion(e)) => {
                    expansion.insert(e.r#type());
                }
                None => {}
            }
        }
        if !services.contains(&ServiceCap::ControllerService) {
            return Err(Error::Unsupported(
                "the plugin does not advertise CONTROLLER_SERVICE, so it cannot create volumes \
                 (for split deployments pass the controller socket as --endpoint and the node \
                 socket as --node-endpoint)"
                    .into(),
            ));
        }
        let controller = self
            .call(
                Call::ControllerGetCapabilities,
                self.controller
                    .clone()
                    .controller_get_capabilities(ControllerGetCapabilitiesRequest {}),
            )
            .await?
            .capabilities
            .into_iter()
            .filter_map(|c| {
                c.r#type
                    .map(|v1::controller_service_capability::Type::Rpc(rpc)| rpc.r#type())
            })
            .collect();
        let node = self
            .call(
                Call::NodeGetCapabilities,
                self.node
                    .clone()
                    .node_get_capabilities(NodeGetCapabilitiesRequest {}),
            )
            .await?
            .capabilities
            .into_iter()
            .filter_map(|c| {
                c.r#type
                    .map(|v1::node_service_capability::Type::Rpc(rpc)| rpc.r#type())
            })
            .collect();
        let node_info = self
            .call(
                Call::NodeGetInfo,
                self.node.clone().node_get_info(NodeGetInfoRequest {}),
            )
            .await?;
        if node_info.node_id.is_empty() {
            return Err(Error::Protocol {
                call: Call::NodeGetInfo,
                problem: "empty node_id".into(),
            });
        }
        Ok(Discovery {
            name: info.name,
            vendor_version: info.vendor_version,
            services,
            expansion,
            controller,
            node,
            node_id: node_info.node_id,
            topology: node_info.accessible_topology,
        })
    }
}

/// The plugin's identity and capabilities.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub name: String,
    pub vendor_version: String,
    pub services: HashSet<ServiceCap>,
    pub expansion: HashSet<ExpansionCap>,
    pub controller: HashSet<ControllerCap>,
    pub node: HashSet<NodeCap>,
    pub node_id: String,
    pub topology: Option<Topology>,
}

impl Discovery {
    pub fn controller_can(&self, cap: ControllerCap) -> bool {
        self.controller.contains(&cap)
    }

    pub fn node_can(&self, cap: NodeCap) -> bool {
        self.node.contains(&cap)
    }

    /// The topology to ask for: this node's, when the plugin constrains accessibility.
    /// That is what external-provisioner sends for a WaitForFirstConsumer claim bound to
    /// this node, and it is what topology-aware plugins need to place the volume here.
    pub fn accessibility(&self) -> Option<v1::TopologyRequirement> {
        if !self
            .services
            .contains(&ServiceCap::VolumeAccessibilityConstraints)
        {
            return None;
        }
        let topology = self.topology.clone()?;
        Some(v1::TopologyRequirement {
            requisite: vec![topology.clone()],
            preferred: vec![topology],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_absolute_unix_paths() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert!(socket_path("unix://relative.sock").is_err());
        assert!(socket_path("tcp://127.0.0.1:10000").is_err());
        assert!(socket_path("").is_err());
    }
}
