//! Host plumbing for volumes: loop devices, filesystem detection and mkfs, mount(2) and
//! umount2(2), and `/proc/self/mountinfo`.
//!
//! Everything here is a thin, typed layer over the kernel. The [`Host`] trait gathers the
//! operations that change host state so the volume logic above can be isolated in unit
//! tests; [`RealHost`] is the only implementation the driver uses, and the integration
//! tests run it for real.

pub mod fs;
pub(crate) mod ioctl;
pub mod loopdev;
pub mod mountinfo;
pub mod options;
pub mod sys;

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

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

/// The host operations the volume layer performs, as one seam.
pub trait Host: Send + Sync {
    /// Attach `image` to a free loop device.
    fn attach_loop(&self, image: &Path) -> Result<LoopDevice, MountError>;
    /// Attach `image` to a free loop device that refuses writes.
    fn attach_loop_read_only(&self, image: &Path) -> Result<LoopDevice, MountError>;
    /// The read-write loop device currently backed by `image`, if any.
    fn find_loop(&self, image: &Path) -> Result<Option<LoopDevice>, MountError>;
    /// Every loop device backed by `image` (read-write and read-only).
    fn loops_for(&self, image: &Path) -> Result<Vec<LoopDevice>, MountError>;
    /// Detach a loop device (the kernel defers it while the device is still open).
    fn detach_loop(&self, dev: &LoopDevice) -> Result<(), MountError>;
    /// Refresh a loop device's size after its image grew.
    fn refresh_loop_capacity(&self, dev: &LoopDevice) -> Result<(), MountError>;
    /// What filesystem, if any, is on `path` (device or image).
    fn detect(&self, path: &Path) -> Result<Detected, MountError>;
    /// Format `path` as `format` says. Callers guarantee it is blank.
    fn mkfs(&self, format: Format, path: &Path) -> Result<(), MountError>;
    /// mount(2).
    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), MountError>;
    /// umount2(2) without flags.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// The current mount table of this process's namespace.
    fn mountinfo(&self) -> Result<Vec<MountEntry>, MountError>;
}

/// The real host: ioctls, spawned mkfs, mount(2).
#[derive(Clone, Copy, Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn attach_loop(&self, image: &Path) -> Result<LoopDevice, MountError> {
        loopdev::attach(image)
    }
    fn attach_loop_read_only(&self, image: &Path) -> Result<LoopDevice, MountError> {
        loopdev::attach_read_only(image)
    }
    fn find_loop(&self, image: &Path) -> Result<Option<LoopDevice>, MountError> {
        loopdev::find_loop_for(image)
    }
    fn loops_for(&self, image: &Path) -> Result<Vec<LoopDevice>, MountError> {
        loopdev::loops_for(image)
    }
    fn detach_loop(&self, dev: &LoopDevice) -> Result<(), MountError> {
        loopdev::detach(dev)
    }
    fn refresh_loop_capacity(&self, dev: &LoopDevice) -> Result<(), MountError> {
        loopdev::refresh_capacity(dev)
    }
    fn detect(&self, path: &Path) -> Result<Detected, MountError> {
        fs::detect(path)
    }
    fn mkfs(&self, format: Format, path: &Path) -> Result<(), MountError> {
        fs::mkfs(format, path)
    }
    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), MountError> {
        sys::mount(source, target, fstype, flags, data)
    }
    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        sys::unmount(target)
    }
    fn mountinfo(&self) -> Result<Vec<MountEntry>, MountError> {
        mountinfo::read_self()
    }
}
