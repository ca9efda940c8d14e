//! The driver's error type and its one mapping to gRPC status codes.
//!
//! Storage errors keep their own types (and sources) until the service boundary, where
//! [`From<Error> for tonic::Status`] picks the code the CSI spec names for the
//! condition. Handlers return `Result<_, Error>` and convert with `?` at the end.

use tonic::{Code, Status};

use crate::cluster::ClusterError;
use crate::mount::MountError;
use crate::storage::crypt::CryptError;
use crate::storage::grow::GrowError;
use crate::storage::pool::PoolError;
use crate::storage::snapshot::SnapshotError;
use crate::storage::volume::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is required")]
    MissingField(&'static str),
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    OutOfRange(String),
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    /// A `volume_path` (stats, expansion) that cannot hold the volume: relative, or
    /// outside the kubelet directory. Part of the lookup, so NOT_FOUND.
    #[error("volume {id} is not staged or published at {path:?}")]
    NotAtPath { id: String, path: String },
    #[error("operation pending for volume {0}")]
    Pending(String),
    #[error("the volume pool is not ready yet")]
    NotReady,
    #[error("{0} is not served by this driver (feature off or not implemented)")]
    Unimplemented(&'static str),
    #[error(
        "volumes can only be provisioned on node {0}, which the accessibility requirements exclude"
    )]
    TopologyUnsatisfiable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Grow(#[from] GrowError),
    #[error("starting_token {0:?} is not a token this driver issued")]
    InvalidToken(String),
    #[error("blocking task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Crypt(#[from] CryptError),
}

impl Error {
    fn code(&self) -> Code {
        match self {
            Self::MissingField(_) | Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::VolumeNotFound(_) | Self::NotAtPath { .. } => Code::NotFound,
            Self::Pending(_) => Code::Aborted,
            Self::NotReady => Code::Unavailable,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::TopologyUnsatisfiable(_) => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Pool(e) => pool_code(e),
            Self::Volume(e) => volume_code(e),
            Self::Mount(e) => mount_code(e),
            Self::Snapshot(e) => snapshot_code(e),
            Self::Grow(e) => grow_code(e),
            // Spec (ListVolumes): an invalid starting_token is ABORTED.
            Self::InvalidToken(_) => Code::Aborted,
            Self::Task(_) => Code::Internal,
            Self::Cluster(e) => e.code(),
            Self::Crypt(e) => e.code(),
        }
    }
}

fn pool_code(e: &PoolError) -> Code {
    match e {
        PoolError::InvalidId(_) | PoolError::InvalidName(_) => Code::InvalidArgument,
        // Spec (CreateVolume): an unsupported source is INVALID_ARGUMENT.
        PoolError::ContentSourceUnsupported => Code::InvalidArgument,
        PoolError::NotFound(_) => Code::NotFound,
        // Spec (CreateVolume, ControllerExpandVolume): OUT_OF_RANGE for a capacity the
        // plugin cannot serve at all; RESOURCE_EXHAUSTED only for "not enough now".
        PoolError::OutOfRange(_)
        | PoolError::ShrinkRefused { .. }
        | PoolError::NeverFits { .. } => Code::OutOfRange,
        PoolError::AlreadyExists { .. } => Code::AlreadyExists,
        PoolError::ResourceExhausted { .. } => Code::ResourceExhausted,
        PoolError::InUse { .. } => Code::FailedPrecondition,
        // The spec's "operation pending for this name".
        PoolError::CreatePending(_) => Code::Aborted,
        PoolError::Host(e) => mount_code(e),
        PoolError::UnsupportedFormat { .. }
        | PoolError::Busy { .. }
        | PoolError::Io(_)
        | PoolError::Metadata { .. } => Code::Internal,
    }
}

fn mount_code(e: &MountError) -> Code {
    match e {
        MountError::InvalidOption { .. } | MountError::UnsupportedFs(_) => Code::InvalidArgument,
        // Loop devices are a node-wide resource; the CO retries with backoff.
        MountError::NoFreeLoop { .. } => Code::ResourceExhausted,
        MountError::Io { .. }
        | MountError::Sys { .. }
        | MountError::MountData { .. }
        | MountError::Mkfs { .. }
        | MountError::MountInfo { .. } => Code::Internal,
    }
}

fn snapshot_code(e: &SnapshotError) -> Code {
    match e {
        // A malformed ID can never have been issued: it names nothing.
        SnapshotError::InvalidId(_)
        | SnapshotError::NotFound(_)
        | SnapshotError::GroupNotFound(_)
        | SnapshotError::SourceNotFound(_) => Code::NotFound,
        SnapshotError::AlreadyExists { .. } => Code::AlreadyExists,
        SnapshotError::Pending(_) => Code::Aborted,
        SnapshotError::Interrupted => Code::Unavailable,
        // Spec (Snapshot.group_snapshot_id): members go with their group.
        SnapshotError::InGroup { .. } => Code::FailedPrecondition,
        SnapshotError::MembersMismatch { .. } | SnapshotError::InvalidRequest(_) => {
            Code::InvalidArgument
        }
        SnapshotError::ResourceExhausted { .. } => Code::ResourceExhausted,
        SnapshotError::Pool(e) => pool_code(e),
        SnapshotError::Host(e) => mount_code(e),
        SnapshotError::UnsupportedFormat { .. }
        | SnapshotError::Io(_)
        | SnapshotError::Metadata { .. } => Code::Internal,
    }
}

fn grow_code(e: &GrowError) -> Code {
    match e {
        GrowError::NotAtPath { .. } => Code::NotFound,
        // Spec (NodeExpandVolume): a filesystem that cannot grow while staged or
        // published is FAILED_PRECONDITION, as is a volume not staged here at all.
        GrowError::NotAttached(_)
        | GrowError::NotPermitted { .. }
        | GrowError::UnsupportedFs { .. } => Code::FailedPrecondition,
        GrowError::Pool(e) => pool_code(e),
        GrowError::Host(e) => mount_code(e),
        GrowError::Tool { .. } => Code::Internal,
    }
}

fn volume_code(e: &VolumeError) -> Code {
    match e {
        VolumeError::InvalidPath { .. } | VolumeError::InvalidRequest(_) => Code::InvalidArgument,
        VolumeError::NotOurs { .. } | VolumeError::NotAtPath { .. } => Code::NotFound,
        // Spec (NodePublishVolume): publishing before staging is FAILED_PRECONDITION, as
        // is a capability the volume cannot serve (another filesystem, foreign data).
        VolumeError::NotStaged { .. }
        | VolumeError::StillPublished { .. }
        | VolumeError::FsMismatch { .. }
        | VolumeError::UnknownData { .. }
        | VolumeError::SelinuxUnavailable(_)
        | VolumeError::DoesNotFit { .. } => Code::FailedPrecondition,
        VolumeError::AlreadyExists { .. } => Code::AlreadyExists,
        VolumeError::Pool(e) => pool_code(e),
        VolumeError::Host(e) => mount_code(e),
        VolumeError::Crypt(e) => e.code(),
        VolumeError::Grow(e) => grow_code(e),
    }
}

/// An error and its sources on one line, skipping a source whose text is already there
/// (many wrappers print their source inline).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        let message = chain(&error);
        if code == Code::Internal {
            tracing::error!(%message, "internal error");
        } else {
            tracing::debug!(?code, %message, "request refused");
        }
        Status::new(code, message)
    }
}
