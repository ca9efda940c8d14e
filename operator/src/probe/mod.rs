//! `plinth-operator probe`: ask a running CSI driver what it advertises and write the
//! answer where Kubernetes keeps a container's termination message.
//!
//! The probe Job (`render::probe`) runs this next to the driver; the reconciler reads the
//! answer from the pod's status (`reconcile::probe`). The answer is one compact JSON
//! object, `{"result": {...}}` or `{"error": {"reason": ..., "message": ...}}`, well under
//! the 4096 bytes kubelet keeps.

pub mod client;
pub mod convert;

use std::path::PathBuf;
use std::time::Duration;

use plinth_api::capabilities::Capabilities;
use serde::{Deserialize, Serialize};

pub use client::{Endpoints, Limits, probe};

/// What the driver advertised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// GetPluginInfo's name.
    pub driver_name: String,
    /// GetPluginInfo's vendor version.
    pub vendor_version: String,
    /// Plugin, controller, node and group controller capabilities (never lifecycle
    /// modes: CSI has no RPC for them).
    pub capabilities: Capabilities,
    /// Whether node capabilities were asked (a node instance ran). The built-in driver's
    /// cross-check runs its controller instance only.
    pub node_asked: bool,
}

/// Why a probe failed; each message is a sentence naming the cause and where to look.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the driver's socket {path} did not appear within {waited_seconds} s: the driver did not start serving CSI there; check the driver container's log, and that its endpoint argument or variable names {path}"
    )]
    SocketNeverAppeared { path: String, waited_seconds: u64 },
    #[error(
        "nothing accepts connections on the driver's socket {path} ({reason}): the driver process exited or crashed; check the driver container's log"
    )]
    ConnectFailed { path: String, reason: String },
    #[error(
        "the driver did not answer {rpc} within {timeout_seconds} s on {path}: it accepts connections but does not serve them (hung or overloaded); check the driver container's log"
    )]
    TimedOut {
        rpc: String,
        path: String,
        timeout_seconds: u64,
    },
    #[error(
        "the driver advertises CONTROLLER_SERVICE but answers ControllerGetCapabilities with UNIMPLEMENTED on {path}: it does not serve the Controller service it claims; start it with the arguments that enable its controller, or declare its capabilities and set spec.driver.thirdParty.probe to false"
    )]
    ControllerUnimplemented { path: String },
    #[error("the driver answered {rpc} on {path} with {code}: {message}")]
    RpcFailed {
        rpc: String,
        path: String,
        code: String,
        message: String,
    },
    #[error(
        "the driver's controller instance calls itself {controller} and its node instance {node}: both must report the same GetPluginInfo name; check the arguments of the two"
    )]
    NamesDiffer { controller: String, node: String },
    #[error("no driver endpoint given: pass --controller-endpoint, --node-endpoint or both")]
    NoEndpoint,
}

impl ProbeError {
    /// A CamelCase word for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SocketNeverAppeared { .. } => "SocketNeverAppeared",
            Self::ConnectFailed { .. } => "DriverNotListening",
            Self::TimedOut { .. } => "DriverTimedOut",
            Self::ControllerUnimplemented { .. } => "ControllerUnimplemented",
            Self::RpcFailed { .. } => "DriverRpcFailed",
            Self::NamesDiffer { .. } => "DriverNamesDiffer",
            Self::NoEndpoint => "NoEndpoint",
        }
    }
}

/// What the probe container writes to its termination message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAnswer {
    Result(ProbeResult),
    Error { reason: String, message: String },
}

/// kubelet keeps at most this much of a termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

impl ProbeAnswer {
    pub fn from_outcome(outcome: &Result<ProbeResult, ProbeError>) -> Self {
        match outcome {
            Ok(result) => Self::Result(result.clone()),
            Err(err) => Self::Error {
                reason: err.reason().to_owned(),
                message: err.to_string(),
            },
        }
    }

    /// Compact JSON within the termination message limit: an error message is cut (on a
    /// character boundary) before the JSON could be. A result is a few hundred bytes.
    pub fn to_json(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        if text.len() <= TERMINATION_MESSAGE_LIMIT {
            return text;
        }
        match self {
            Self::Error { reason, message } => {
                let mut cut = TERMINATION_MESSAGE_LIMIT / 2;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                Self::Error {
                    reason: reason.clone(),
                    message: format!("{}...", &message[..cut]),
                }
                .to_json()
            }
            Self::Result(_) => text,
        }
    }
}

/// `plinth-operator probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The controller instance's CSI endpoint (`unix:///path/csi.sock`).
    #[arg(long)]
    pub controller_endpoint: Option<String>,
    /// The node instance's CSI endpoint. Alone, it answers for everything.
    #[arg(long)]
    pub node_endpoint: Option<String>,
    /// Where the JSON answer goes.
    #[arg(long, default_value = "/dev/termination-log")]
    pub output: PathBuf,
    /// How long each socket may take to appear and accept.
    #[arg(long, default_value_t = 60)]
    pub socket_wait_seconds: u64,
    /// How long each RPC may take.
    #[arg(long, default_value_t = 10)]
    pub call_timeout_seconds: u64,
}

/// Runs the probe, writes the answer; `Ok(true)` when the driver answered.
pub fn run(args: &ProbeArgs) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    let endpoints = Endpoints {
        controller: args.controller_endpoint.as_deref().map(client::socket_path),
        node: args.node_endpoint.as_deref().map(client::socket_path),
    };
    let limits = Limits {
        socket_wait: Duration::from_secs(args.socket_wait_seconds),
        call_timeout: Duration::from_secs(args.call_timeout_seconds),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(probe(&endpoints, limits));
    let answer = ProbeAnswer::from_outcome(&outcome).to_json();
    std::fs::write(&args.output, &answer)
        .with_context(|| format!("writing the answer to {}", args.output.display()))?;
    match &outcome {
        Ok(_) => println!("{answer}"),
        Err(err) => eprintln!("probe failed: {err}"),
    }
    Ok(outcome.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_to_fit_the_termination_message() {
        let answer = ProbeAnswer::Error {
            reason: "DriverRpcFailed".to_owned(),
            message: "é".repeat(5000),
        };
        let json = answer.to_json();
        assert!(json.len() <= TERMINATION_MESSAGE_LIMIT, "{}", json.len());
        let back: ProbeAnswer = serde_json::from_str(&json).unwrap();
        let ProbeAnswer::Error { message, .. } = back else {
            panic!("not an error")
        };
        assert!(message.ends_with("..."));
    }

    #[test]
    fn the_answer_is_tagged_json() {
        let answer = ProbeAnswer::from_outcome(&Err(ProbeError::SocketNeverAppeared {
            path: "/probe/node/csi.sock".to_owned(),
            waited_seconds: 90,
        }));
        assert_eq!(
            answer.to_json(),
            r#"{"error":{"reason":"SocketNeverAppeared","message":"the driver's socket /probe/node/csi.sock did not appear within 90 s: the driver did not start serving CSI there; check the driver container's log, and that its endpoint argument or variable names /probe/node/csi.sock"}}"#
        );
    }
}
