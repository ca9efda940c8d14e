//! Quiescing a volume for a point-in-time copy: FIFREEZE/FITHAW on a mounted filesystem,
//! a flush of the loop device for a raw block volume.
//!
//! A frozen filesystem has written all dirty data and its journal to the device and
//! blocks new writes until thawed, so an image copied while frozen is a clean
//! filesystem. The loop devices run with direct I/O, so what reached the device is in
//! the image file. [`Quiesced`] thaws on drop, whatever happens in between: a
//! filesystem left frozen would hang every writer in the pod.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::mount::{LoopDevice, MountEntry, MountError, mountinfo};

mod raw {
    // FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int) in linux/fs.h.
    nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
    nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);
}

fn fifreeze(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut unused: libc::c_int = 0;
    // SAFETY: `fd` is open for the call; the kernel ignores the argument, which points at
    // a valid, writable int that outlives the call.
    unsafe { raw::fifreeze(fd.as_raw_fd(), &mut unused) }.map(drop)
}

fn fithaw(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut unused: libc::c_int = 0;
    // SAFETY: as for `fifreeze`.
    unsafe { raw::fithaw(fd.as_raw_fd(), &mut unused) }.map(drop)
}

/// A volume made consistent for copying. Dropping it thaws a frozen filesystem.
#[derive(Debug)]
pub enum Quiesced {
    /// Not attached: the image is not in use and already consistent.
    Idle,
    /// Attached and used raw (or attached but not mounted): the device was flushed.
    /// Writers are not stopped, so the copy is crash-consistent, like a power cut.
    Flushed { device: PathBuf },
    /// A mounted filesystem, frozen until this value is dropped.
    Frozen(FrozenFs),
}

/// A frozen filesystem. Thaws on drop.
#[derive(Debug)]
pub struct FrozenFs {
    mount_point: PathBuf,
    dir: File,
}

impl FrozenFs {
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        match fithaw(self.dir.as_fd()) {
            // EINVAL: not frozen (someone thawed it already) — the goal state.
            Ok(()) | Err(Errno::EINVAL) => {
                tracing::debug!(mount_point = %self.mount_point.display(), "thawed");
            }
            Err(e) => tracing::error!(
                mount_point = %self.mount_point.display(), error = %e,
                "cannot thaw filesystem; writers to it stay blocked until `fsfreeze -u`"
            ),
        }
    }
}

/// Freeze the filesystem mounted at `mount_point`.
pub fn freeze(mount_point: &Path) -> Result<FrozenFs, MountError> {
    let dir = File::open(mount_point).map_err(MountError::io("open", mount_point))?;
    use std::os::fd::AsFd;
    fifreeze(dir.as_fd()).map_err(MountError::sys("FIFREEZE", mount_point))?;
    tracing::debug!(mount_point = %mount_point.display(), "frozen");
    Ok(FrozenFs {
        mount_point: mount_point.to_path_buf(),
        dir,
    })
}

/// Quiesce the volume behind `device` (its loop device, if attached) for a copy.
pub fn quiesce(device: Option<&LoopDevice>) -> Result<Quiesced, MountError> {
    let Some(dev) = device else {
        return Ok(Quiesced::Idle);
    };
    let mounts = mountinfo::read_self()?;
    if let Some(point) = filesystem_mount(&mounts, dev) {
        return Ok(Quiesced::Frozen(freeze(&point)?));
    }
    // fsync of a block device writes its page cache and sends a flush down, which the
    // loop driver turns into an fsync of the image.
    let file = OpenOptions::new()
        .read(true)
        .open(&dev.path)
        .map_err(MountError::io("open", &dev.path))?;
    file.sync_all()
        .map_err(MountError::io("fsync", &dev.path))?;
    Ok(Quiesced::Flushed {
        device: dev.path.clone(),
    })
}

/// A mount point of the filesystem on `dev` (any one: they share the superblock, and
/// freezing through one freezes it everywhere). Binds of the device node itself (raw
/// block publishes) carry devtmpfs's device number and do not match.
fn filesystem_mount(mounts: &[MountEntry], dev: &LoopDevice) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.dev == dev.dev)
        .map(|m| m.mount_point.clone())
}

/// Thaw filesystems on `devices` that a crashed driver left frozen (a process killed
/// between FIFREEZE and FITHAW): called at start for the volumes still staged. Returns
/// the mount points it thawed; a filesystem that was not frozen is left as it is.
pub fn thaw_after_crash(devices: &[LoopDevice]) -> Result<Vec<PathBuf>, MountError> {
    use std::os::fd::AsFd;
    let mounts = mountinfo::read_self()?;
    let mut thawed = Vec::new();
    for dev in devices {
        let Some(point) = filesystem_mount(&mounts, dev) else {
            continue;
        };
        let dir = File::open(&point).map_err(MountError::io("open", &point))?;
        match fithaw(dir.as_fd()) {
            Ok(()) => {
                tracing::warn!(mount_point = %point.display(), "thawed a filesystem left frozen by a crash");
                thawed.push(point);
            }
            Err(Errno::EINVAL) => {}
            Err(e) => return Err(MountError::sys("FITHAW", &point)(e)),
        }
    }
    Ok(thawed)
}
