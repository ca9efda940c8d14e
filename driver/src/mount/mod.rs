//! Host plumbing for volumes: loop devices, filesystem detection and mkfs, mount(2) and
//! umount2(2), and `/proc/self/mountinfo`.
//!
//! Everything here is a thin, typed layer over the kernel, called directly: the volume
//! logic above is tested against the real kernel (loop devices, mounts), not a stand-in.

pub mod fs;
pub(crate) mod ioctl;
pub mod loopdev;
pub mod mountinfo;
pub mod options;
pub mod sys;

use std::io;
use std::path::{Path, PathBuf};

pub use fs::{Detected, Format, FsType};
pub(crate) use ioctl::ficlone;
pub use loopdev::LoopDevice;
pub use mountinfo::MountEntry;
pub use options::MountOptions;

/// Errors of host operations. Each carries the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// mount(2) with filesystem data failed: the data is in the message, exactly as
    /// passed, since a refused option is the usual cause.
    #[error("mount {fstype} at {path} with data {data}: {source}")]
    MountData {
        path: PathBuf,
        fstype: String,
        data: String,
        #[source]
        source: nix::Error,
    },
    #[error("no free loop device after {attempts} attempts")]
    NoFreeLoop { attempts: u32 },
    #[error("{tool} on {path} failed ({status}): {stderr}")]
    Mkfs {
        tool: &'static str,
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("invalid mount option {option:?}: {reason}")]
    InvalidOption {
        option: String,
        reason: &'static str,
    },
    #[error("unsupported filesystem type {0:?} (supported: ext4, xfs)")]
    UnsupportedFs(String),
    #[error("malformed {path} line {line}: {reason}")]
    MountInfo {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

impl MountError {
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The same error about `path`: a mount made through `/proc/self/fd/N` reports the
    /// path the request named, not the descriptor's.
    pub(crate) fn at(self, path: &Path) -> Self {
        match self {
            Self::Sys { op, source, .. } => Self::Sys {
                op,
                path: path.to_path_buf(),
                source,
            },
            Self::MountData {
                fstype,
                data,
                source,
                ..
            } => Self::MountData {
                path: path.to_path_buf(),
                fstype,
                data,
                source,
            },
            other => other,
        }
    }

    pub(crate) fn sys<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(nix::Error) -> Self + 'a {
        move |source| Self::Sys {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
