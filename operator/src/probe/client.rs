//! Asking a running CSI driver what it advertises, over its Unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plinth_api::capabilities::{Capabilities, PluginCapability};
use plinth_csi_proto::v1;
use tonic::transport::Channel;
use tonic::{Code, Status};
use v1::controller_client::ControllerClient;
use v1::group_controller_client::GroupControllerClient;
use v1::identity_client::IdentityClient;
use v1::node_client::NodeClient;

use super::convert;
use super::{ProbeError, ProbeResult};

/// The sockets of the driver instances. At least one is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// The controller instance (controller capabilities come from it).
    pub controller: Option<PathBuf>,
    /// The node instance (node capabilities come from it). Alone, it answers everything:
    /// a per-node deployment has no controller instance.
    pub node: Option<PathBuf>,
}

/// How long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// For each socket to appear and accept a connection (the driver starting).
    pub socket_wait: Duration,
    /// For each RPC.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            socket_wait: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// How often the socket is looked for while the driver starts.
const POLL: Duration = Duration::from_millis(50);

/// `unix:///csi/csi.sock` or `/csi/csi.sock` -> the path.
pub fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(
        endpoint
            .strip_prefix("unix://")
            .or_else(|| endpoint.strip_prefix("unix:"))
            .unwrap_or(endpoint),
    )
}

/// One connected driver instance.
struct Instance {
    path: String,
    channel: Channel,
    limits: Limits,
}

impl Instance {
    /// Waits for the socket to appear, then for the driver to accept on it. A socket
    /// that exists but refuses (a driver that crashed, or is restarting) is retried
    /// within the same wait: a restarted driver replaces it.
    async fn connect(path: &Path, limits: Limits) -> Result<Self, ProbeError> {
        let shown = path.display().to_string();
        let deadline = Instant::now() + limits.socket_wait;
        while std::fs::symlink_metadata(path).is_err() {
            if Instant::now() >= deadline {
                return Err(ProbeError::SocketNeverAppeared {
                    path: shown,
                    waited_seconds: limits.socket_wait.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        loop {
            let attempt =
                tokio::time::timeout(limits.call_timeout, plinth_csi_proto::connect_unix(path))
                    .await;
            let reason = match attempt {
                Ok(Ok(channel)) => {
                    return Ok(Self {
                        path: shown,
                        channel,
                        limits,
                    });
                }
                Ok(Err(err)) => source_chain(&err),
                Err(_) => {
                    return Err(ProbeError::TimedOut {
                        rpc: "connect".to_owned(),
                        path: shown,
                        timeout_seconds: limits.call_timeout.as_secs(),
                    });
                }
            };
            if Instant::now() >= deadline {
                return Err(ProbeError::ConnectFailed {
                    path: shown,
                    reason,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One RPC under the call timeout, its failure named after `rpc`.
    async fn call<T>(
        &self,
        rpc: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.limits.call_timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                Err(CallError::Unimplemented)
            }
            Ok(Err(status)) => Err(CallError::Failed(self.failed(rpc, &status))),
            Err(_) => Err(CallError::Failed(ProbeError::TimedOut {
                rpc: rpc.to_owned(),
                path: self.path.clone(),
                timeout_seconds: self.limits.call_timeout.as_secs(),
            })),
        }
    }

    fn failed(&self, rpc: &str, status: &Status) -> ProbeError {
        // The connection broke under the call: the process is gone.
        if status.code() == Code::Unavailable {
            return ProbeError::ConnectFailed {
                path: self.path.clone(),
                reason: format!("{} during {rpc}", status.message()),
            };
        }
        ProbeError::RpcFailed {
            rpc: rpc.to_owned(),
            path: self.path.clone(),
            code: format!("{:?}", status.code()),
            message: status.message().to_owned(),
        }
    }

    async fn identity(&self) -> Result<(v1::GetPluginInfoResponse, Capabilities), ProbeError> {
        let mut client = IdentityClient::new(self.channel.clone());
        let info = self
            .call(
                "GetPluginInfo",
                client.get_plugin_info(v1::GetPluginInfoRequest {}),
            )
            .await
            .map_err(|e| e.required("GetPluginInfo", &self.path))?;
        let plugin = self
            .call(
                "GetPluginCapabilities",
                client.get_plugin_capabilities(v1::GetPluginCapabilitiesRequest {}),
            )
            .await
            .map_err(|e| e.required("GetPluginCapabilities", &self.path))?;
        let mut caps = Capabilities::default();
        convert::plugin(&plugin.capabilities, &mut caps);
        Ok((info, caps))
    }

    /// ControllerGetCapabilities, asked because CONTROLLER_SERVICE is advertised: an
    /// UNIMPLEMENTED answer contradicts that.
    async fn controller(&self, into: &mut Capabilities) -> Result<(), ProbeError> {
        let mut client = ControllerClient::new(self.channel.clone());
        let reply = self
            .call(
                "ControllerGetCapabilities",
                client.controller_get_capabilities(v1::ControllerGetCapabilitiesRequest {}),
            )
            .await
            .map_err(|e| match e {
                CallError::Unimplemented => ProbeError::ControllerUnimplemented {
                    path: self.path.clone(),
                },
                CallError::Failed(e) => e,
            })?;
        convert::controller(&reply.capabilities, into);
        Ok(())
    }

    async fn node(&self, into: &mut Capabilities) -> Result<(), ProbeError> {
        let mut client = NodeClient::new(self.channel.clone());
        let reply = self
            .call(
                "NodeGetCapabilities",
                client.node_get_capabilities(v1::NodeGetCapabilitiesRequest {}),
            )
            .await
            .map_err(|e| e.required("NodeGetCapabilities", &self.path))?;
        convert::node(&reply.capabilities, into);
        Ok(())
    }

    /// GroupControllerGetCapabilities; UNIMPLEMENTED means none (the service is younger
    /// than many drivers that still claim it loosely).
    async fn group_controller(&self, into: &mut Capabilities) -> Result<(), ProbeError> {
        let mut client = GroupControllerClient::new(self.channel.clone());
        match self
            .call(
                "GroupControllerGetCapabilities",
                client.group_controller_get_capabilities(
                    v1::GroupControllerGetCapabilitiesRequest {},
                ),
            )
            .await
        {
            Ok(reply) => convert::group_controller(&reply.capabilities, into),
            Err(CallError::Unimplemented) => {}
            Err(CallError::Failed(e)) => return Err(e),
        }
        Ok(())
    }
}

enum CallError {
    Unimplemented,
    Failed(ProbeError),
}

impl CallError {
    /// For RPCs every driver must serve: UNIMPLEMENTED is an error like any other.
    fn required(self, rpc: &str, path: &str) -> ProbeError {
        match self {
            Self::Unimplemented => ProbeError::RpcFailed {
                rpc: rpc.to_owned(),
                path: path.to_owned(),
                code: "Unimplemented".to_owned(),
                message: "every CSI driver must serve it".to_owned(),
            },
            Self::Failed(e) => e,
        }
    }
}

/// The error and what caused it, in one line (tonic's transport error alone says only
/// "transport error").
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Asks the driver instances what they advertise: plugin capabilities from each (merged),
/// controller capabilities from the controller instance (or the only one) when it claims
/// CONTROLLER_SERVICE, node capabilities from the node instance (or the only one, unless
/// that is a controller instance), group controller capabilities when claimed.
pub async fn probe(endpoints: &Endpoints, limits: Limits) -> Result<ProbeResult, ProbeError> {
    let controller = match &endpoints.controller {
        Some(path) => Some(Instance::connect(path, limits).await?),
        None => None,
    };
    let node = match &endpoints.node {
        Some(path) => Some(Instance::connect(path, limits).await?),
        None => None,
    };
    let Some(main) = controller.as_ref().or(node.as_ref()) else {
        return Err(ProbeError::NoEndpoint);
    };
    let (info, mut caps) = main.identity().await?;
    if let Some(node) = node.as_ref().filter(|_| controller.is_some()) {
        let (node_info, node_caps) = node.identity().await?;
        if node_info.name != info.name {
            return Err(ProbeError::NamesDiffer {
                controller: info.name,
                node: node_info.name,
            });
        }
        // The node instance does not serve the controller: only what it says about
        // volumes (topology, expansion) adds to the controller's answer.
        caps.plugin.extend(node_caps.plugin.into_iter().filter(|c| {
            !matches!(
                c,
                PluginCapability::ControllerService | PluginCapability::GroupControllerService
            )
        }));
    }
    if caps.has_controller_service() {
        main.controller(&mut caps).await?;
    }
    if caps
        .plugin
        .contains(&PluginCapability::GroupControllerService)
    {
        main.group_controller(&mut caps).await?;
    }
    let node_asked = node.is_some();
    if let Some(node) = &node {
        node.node(&mut caps).await?;
    }
    Ok(ProbeResult {
        driver_name: info.name,
        vendor_version: info.vendor_version,
        capabilities: caps,
        node_asked,
    })
}
