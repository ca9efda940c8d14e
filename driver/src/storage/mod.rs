//! Volumes and snapshots on this node: the pool of image files, what a volume is asked
//! to be, copies, restore, growth, freeze, encryption, the node's volume layer, and what
//! the controller reports of volumes and snapshots.

pub mod crypt;
pub mod ephemeral;
pub mod freeze;
pub mod grow;
pub mod inflight;
pub mod local;
/// The process's handle on this node's pool, snapshot store, volume layer and claims.
pub mod node;
pub mod pool;
pub mod report;
pub mod restore;
pub mod snapshot;
pub mod spec;
pub mod volume;

use std::io;
use std::path::{Path, PathBuf};

/// A file operation that failed, with the operation and the path it was on. The storage
/// errors wrap this one shape so an I/O failure reads the same whichever layer met it.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoFailure {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// For `map_err`: the [`IoFailure`] of `op` on `path`; `?` lifts it into the caller's
/// error.
pub fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IoFailure + 'a {
    move |source| IoFailure {
        op,
        path: path.to_path_buf(),
        source,
    }
}
