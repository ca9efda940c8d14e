//! Quiescing a volume for a point-in-time copy: FIFREEZE/FITHAW on a mounted filesystem,
//! a flush of the loop device for a raw block volume.
//!
//! A frozen filesystem has written all dirty data and its journal to the device and
//! blocks new writes until thawed, so an image copied while frozen is a clean
//! filesystem. The loop devices run with direct I/O, so what reached the device is in
//! the image file. [`Quiesced`] thaws on drop, whatever happens in between: a
//! filesystem left frozen would hang every writer in the pod.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

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

impl Quiesced {
    /// Whether the volume is still as quiesced as it was made: false once a frozen
    /// filesystem was thawed under the copy (by [`thaw_all`] at shutdown), when a copy
    /// made meanwhile must not be kept.
    pub fn is_intact(&self) -> bool {
        match self {
            Self::Frozen(fs) => fs.still_frozen(),
            Self::Idle | Self::Flushed { .. } => true,
        }
    }
}

/// A frozen filesystem. Thaws on drop.
#[derive(Debug)]
pub struct FrozenFs {
    id: u64,
    mount_point: PathBuf,
    dir: File,
}

/// Every filesystem this process holds frozen, so that shutdown can thaw them even
/// while the copies they were frozen for are still running ([`thaw_all`]).
struct Registry {
    next: u64,
    frozen: BTreeMap<u64, Registered>,
}

struct Registered {
    mount_point: PathBuf,
    dir: File,
    thawed: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    frozen: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl FrozenFs {
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    fn still_frozen(&self) -> bool {
        registry().frozen.get(&self.id).is_some_and(|r| !r.thawed)
    }
}

/// Thaw every filesystem this process holds frozen: the last thing the driver does on
/// its way out, after the grace period, so that a copy still running then cannot leave
/// a pod's filesystem blocked until the next start. Returns how many it thawed.
pub fn thaw_all() -> usize {
    use std::os::fd::AsFd;
    let mut registry = registry();
    let mut count = 0;
    for entry in registry.frozen.values_mut().filter(|r| !r.thawed) {
        entry.thawed = true;
        match fithaw(entry.dir.as_fd()) {
            Ok(()) | Err(Errno::EINVAL) => {
                tracing::warn!(mount_point = %entry.mount_point.display(), "thawed on shutdown; the copy it was frozen for is abandoned");
                count += 1;
            }
            Err(e) => tracing::error!(
                mount_point = %entry.mount_point.display(), error = %e,
                "cannot thaw filesystem; writers to it stay blocked until `fsfreeze -u`"
            ),
        }
    }
    count
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        let registered = registry().frozen.remove(&self.id);
        if registered.is_some_and(|r| r.thawed) {
            return;
        }
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
    let handle = dir
        .try_clone()
        .map_err(MountError::io("dup", mount_point))?;
    fifreeze(dir.as_fd()).map_err(MountError::sys("FIFREEZE", mount_point))?;
    tracing::debug!(mount_point = %mount_point.display(), "frozen");
    let mut registry = registry();
    let id = registry.next;
    registry.next += 1;
    registry.frozen.insert(
        id,
        Registered {
            mount_point: mount_point.to_path_buf(),
            dir: handle,
            thawed: false,
        },
    );
    Ok(FrozenFs {
        id,
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
