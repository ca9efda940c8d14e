//! Cluster mode: the controller (`--mode controller`) hands volume and snapshot work to
//! the node plugin (`--mode node`) whose pool holds it, through custom resources.
//!
//! - [`crd`]: PoolVolume, PoolSnapshot (the work and its outcome) and PoolNode (a node's
//!   published capacity).
//! - [`ids`]: volume and snapshot IDs derived from CSI names, so a retried call finds the
//!   work its first attempt started.
//! - [`placement`]: which node a new volume goes to (pure).
//! - [`handoff`]: the controller side: write the resource, wait (bounded) for the node's
//!   answer.
//! - [`agent`]: the node side: watch the resources of this node, do the work in the local
//!   pool, report in status, publish capacity.

pub mod agent;
pub mod convert;
pub mod handoff;
pub mod ids;
pub mod placement;
pub mod watch;

use std::fmt;
use std::time::Duration;

use plinth_api::cluster::crd;
use tonic::Code;

use crate::config::Config;

/// What both sides of cluster mode need: the API client and who we are.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    /// The CSI driver name; every resource is labelled with it.
    pub driver: String,
    /// This process's node (the node plugin's own; the controller pod's node otherwise).
    pub node: String,
    pub topology_key: String,
    pub handoff_timeout: Duration,
    pub capacity_interval: Duration,
}

impl Cluster {
    pub fn new(client: kube::Client, config: &Config) -> Self {
        Self {
            client,
            driver: config.driver_name.clone(),
            node: config.node_id.clone(),
            topology_key: config.topology_key.clone(),
            handoff_timeout: config.handoff_timeout,
            capacity_interval: config.capacity_interval,
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("driver", &self.driver)
            .field("node", &self.node)
            .field("handoff_timeout", &self.handoff_timeout)
            .finish_non_exhaustive()
    }
}

/// What went wrong between the controller and a node.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Kubernetes API request failed")]
    Api(#[from] kube::Error),
    /// The node has not answered within the hand-off timeout: the CO retries and the
    /// retry finds the work in progress.
    #[error("{what} is still in progress on node {node}; retry later")]
    InProgress { what: String, node: String },
    /// The node answered with a failure (the code its CSI call would have had).
    #[error("node {node}: {message}")]
    Recorded {
        node: String,
        code: Code,
        message: String,
    },
    /// No node may take a new volume, or none has room for it.
    #[error("cannot place the volume: {0}")]
    Unplaceable(#[from] placement::NoPlacement),
    /// The name is taken by work of another shape (the CSI idempotency rule).
    #[error("{what} already exists with another {differs}")]
    Conflict { what: String, differs: String },
    /// The object is being deleted: a retry after the deletion starts afresh.
    #[error("{what} is being deleted; retry later")]
    Deleting { what: String },
    #[error("{what} not found")]
    NotFound { what: String },
    /// An object holds what the driver never writes (a hand edit, or a node's bug).
    #[error("{0}")]
    Malformed(String),
}

impl ClusterError {
    pub fn code(&self) -> Code {
        match self {
            // A conflicting write lost a race with another: the retry reads again.
            Self::Api(kube::Error::Api(status)) if status.code == 409 => Code::Aborted,
            // The API server is the transport between controller and node.
            Self::Api(_) => Code::Unavailable,
            Self::InProgress { .. } => Code::Aborted,
            Self::Recorded { code, .. } => *code,
            Self::Unplaceable(placement::NoPlacement::NeverFits(_)) => Code::OutOfRange,
            Self::Unplaceable(_) => Code::ResourceExhausted,
            Self::Conflict { .. } => Code::AlreadyExists,
            Self::Deleting { .. } => Code::Aborted,
            Self::NotFound { .. } => Code::NotFound,
            Self::Malformed(_) => Code::Internal,
        }
    }
}

/// The gRPC name of `code`, as recorded in a resource's `status.error.code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A recorded failure the node retries by itself within seconds (a busy volume, the API
/// away): not an answer a waiting controller call should return, let alone act on.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Aborted | Code::Unavailable | Code::DeadlineExceeded
    )
}

/// The code a recorded name stands for; an unknown name (a hand edit) is INTERNAL.
pub fn parse_code(name: &str) -> Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    ALL.into_iter()
        .find(|code| code_name(*code) == name)
        .unwrap_or(Code::Internal)
}

/// How a node records a failed piece of work: the code and message its CSI call would
/// have answered (the one mapping in [`crate::error`]).
pub fn work_error(operation: crd::Operation, error: crate::error::Error) -> crd::WorkError {
    let status = tonic::Status::from(error);
    crd::WorkError {
        operation,
        code: code_name(status.code()).to_owned(),
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_round_trip_and_unknown_names_are_internal() {
        for code in [Code::ResourceExhausted, Code::NotFound, Code::OutOfRange] {
            assert_eq!(parse_code(code_name(code)), code);
        }
        assert_eq!(parse_code("resource_exhausted"), Code::Internal);
    }

    #[test]
    fn a_recorded_failure_keeps_the_code_the_node_would_have_answered() {
        let recorded = work_error(
            crd::Operation::Expand,
            crate::error::Error::OutOfRange("too big".into()),
        );
        assert_eq!(recorded.code, "OUT_OF_RANGE");
        assert!(recorded.message.contains("too big"));
    }
}
