//! What can go wrong while driving a plugin.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::call::Call;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call} failed with {code:?}: {message}", code = status.code(), message = status.message())]
    Rpc {
        call: Call,
        #[source]
        status: tonic::Status,
    },
    #[error("{call} did not answer within {after:?}")]
    Timeout { call: Call, after: Duration },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The plugin cannot do what the benchmark needs.
    #[error("{0}")]
    Unsupported(String),
    /// The plugin answered something the spec forbids.
    #[error("{call} answered against the CSI spec: {problem}")]
    Protocol { call: Call, problem: String },
    /// A volume's content or size is not what the calls promised.
    #[error("verification failed: {0}")]
    Verify(String),
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
