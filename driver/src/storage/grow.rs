//! Node-side expansion: make an attached volume follow its grown image.
//!
//! [`crate::storage::pool::Pool::expand_volume`] grows the image file (ControllerExpandVolume).
//! Here the loop device is told to re-read its backing file's size (`LOOP_SET_CAPACITY`)
//! and, for a mounted filesystem, the filesystem is grown online: `xfs_growfs` on the
//! mount point, `resize2fs` on the device for ext4. Block volumes only need the refresh.
//!
//! Growing a mounted ext4 goes through `EXT4_IOC_RESIZE_FS`, which the kernel allows
//! only with CAP_SYS_RESOURCE. A privileged node pod has it; a process without it gets
//! [`GrowError::NotPermitted`], reported as such rather than as success at the old size.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::mount::fs::run_tool;
use crate::mount::mountinfo::{self, find_mount_point};
use crate::mount::{FsType, LoopDevice, MountError, loopdev};
use crate::storage::pool::{Pool, PoolError, Volume, VolumeId};

/// Errors of node-side expansion. Suggested gRPC codes in brackets.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// The volume is not staged on this node. [FailedPrecondition]
    #[error("volume {0} is not staged or published on this node")]
    NotAttached(VolumeId),
    /// `volume_path` is not where the volume is mounted or published. [NotFound]
    #[error("volume {id} is not staged or published at {path:?}")]
    NotAtPath { id: VolumeId, path: PathBuf },
    /// The kernel refused to grow the mounted filesystem. [FailedPrecondition]: the spec's
    /// "volume in use, filesystem cannot grow while published".
    #[error(
        "{fs} on {device} cannot grow while mounted here: {tool} was refused ({stderr}); \
         online {fs} growth needs CAP_SYS_RESOURCE (a privileged node pod has it) — \
         the device already has the new size and the filesystem keeps its old one"
    )]
    NotPermitted {
        fs: FsType,
        device: PathBuf,
        tool: &'static str,
        stderr: String,
    },
    /// A mounted filesystem the driver does not grow. [FailedPrecondition]
    #[error("volume {id} is mounted as {fs_type:?}, which this driver cannot grow")]
    UnsupportedFs { id: VolumeId, fs_type: String },
    /// [Internal]
    #[error("{tool} {target} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        target: PathBuf,
        status: String,
        stderr: String,
    },
    /// [by variant]
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// [Internal]
    #[error(transparent)]
    Host(#[from] MountError),
}

/// What [`grow`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grown {
    /// The device size the volume now has.
    pub capacity_bytes: u64,
    /// The filesystem grown, `None` for a raw block volume.
    pub fs: Option<FsType>,
}

/// Grow the volume `id`, staged or published at `volume_path` (already validated and
/// resolved), to its image's size. Idempotent: a volume already at full size is done.
pub fn grow(pool: &Pool, id: &VolumeId, volume_path: &Path) -> Result<Grown, GrowError> {
    pool.get(id)?;
    grow_attached(pool, id, volume_path)
}

/// [`grow`] for a volume whose record the caller has read.
#[tracing::instrument(skip(pool), fields(volume_id = %id, path = %volume_path.display()))]
fn grow_attached(pool: &Pool, id: &VolumeId, volume_path: &Path) -> Result<Grown, GrowError> {
    // The read-write device carries the filesystem; a read-only block publish has a
    // second, read-only device on the same image, which must follow too.
    let devices = loopdev::loops_for(&pool.image_path(id))?;
    let dev = devices
        .iter()
        .find(|d| !d.is_read_only())
        .ok_or_else(|| GrowError::NotAttached(id.clone()))?;
    let image = pool.image_path(id);
    let image_size = fs::metadata(&image)
        .map_err(MountError::io("stat", &image))?
        .len();
    for device in &devices {
        refresh(device, image_size)?;
    }
    let capacity_bytes = dev.size_bytes()?;
    let mounts = mountinfo::read_self()?;
    let not_here = || GrowError::NotAtPath {
        id: id.clone(),
        path: volume_path.to_path_buf(),
    };
    if devices.iter().any(|d| is_device_of(volume_path, d)) {
        return Ok(Grown {
            capacity_bytes,
            fs: None,
        });
    }
    let entry = find_mount_point(&mounts, volume_path)
        .filter(|m| m.dev == dev.dev)
        .ok_or_else(not_here)?;
    let fs = match entry.fs_type.as_str() {
        "xfs" => FsType::Xfs,
        "ext4" | "ext3" | "ext2" => FsType::Ext4,
        other => {
            return Err(GrowError::UnsupportedFs {
                id: id.clone(),
                fs_type: other.to_owned(),
            });
        }
    };
    grow_filesystem(fs, &dev.path, volume_path)?;
    tracing::info!(%fs, capacity_bytes, "volume grown");
    Ok(Grown {
        capacity_bytes,
        fs: Some(fs),
    })
}

/// A volume restored or cloned into a larger size holds a filesystem of the source's
/// size, and kubelet calls NodeExpandVolume only after a resize, so stage (with the
/// filesystem mounted at `staging`, resolved) grows it. Where the kernel refuses online
/// growth the volume still works at the source's size: that is logged, not failed.
pub fn grow_restored(pool: &Pool, volume: &Volume, staging: &Path) -> Result<(), GrowError> {
    if volume.content_source.is_none() {
        return Ok(());
    }
    let id = &volume.id;
    match grow_attached(pool, id, staging) {
        Ok(_) => Ok(()),
        Err(e @ GrowError::NotPermitted { .. }) => {
            tracing::warn!(volume_id = %id, error = %e, "restored volume keeps its source's filesystem size");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Make a loop device as large as its image (`image_size` bytes).
fn refresh(dev: &LoopDevice, image_size: u64) -> Result<(), GrowError> {
    let before = dev.size_bytes()?;
    if before < image_size {
        loopdev::refresh_capacity(dev)?;
        tracing::debug!(dev = %dev.path.display(), before, image_size, "loop capacity refreshed");
    }
    Ok(())
}

/// Whether `path` is a block device node of `dev` (a published or staged raw volume).
fn is_device_of(path: &Path, dev: &LoopDevice) -> bool {
    fs::metadata(path).is_ok_and(|m| {
        m.file_type().is_block_device()
            && (
                nix::sys::stat::major(m.rdev()),
                nix::sys::stat::minor(m.rdev()),
            ) == (u64::from(dev.dev.0), u64::from(dev.dev.1))
    })
}

/// Grow the mounted filesystem `fs` on `device`, mounted at `mount_point`, to the
/// device's size. Both tools are no-ops when there is nothing to grow.
pub fn grow_filesystem(fs: FsType, device: &Path, mount_point: &Path) -> Result<(), GrowError> {
    let (tool, target): (&'static str, &Path) = match fs {
        // xfs grows through the mounted filesystem, addressed by its mount point.
        FsType::Xfs => ("xfs_growfs", mount_point),
        // resize2fs finds the mount from the device and resizes online.
        FsType::Ext4 => ("resize2fs", device),
    };
    run_tool(tool, &[target.as_os_str()])?.map_err(|failed| {
        if is_permission_refusal(&failed.stderr) {
            GrowError::NotPermitted {
                fs,
                device: device.to_path_buf(),
                tool,
                stderr: failed.stderr,
            }
        } else {
            GrowError::Tool {
                tool,
                target: target.to_path_buf(),
                status: failed.status,
                stderr: failed.stderr,
            }
        }
    })
}

/// resize2fs says "Permission denied to resize filesystem" for EPERM from the resize
/// ioctl; xfs_growfs prints strerror(EPERM).
fn is_permission_refusal(stderr: &str) -> bool {
    stderr.contains("Permission denied") || stderr.contains("Operation not permitted")
}

/// Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE is effective), from
/// `/proc/self/status`. Logged at start so an unprivileged node says so up front.
pub fn can_grow_ext4_online() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_tools_permission_refusals() {
        assert!(is_permission_refusal(
            "resize2fs 1.47.0 (5-Feb-2023)\nresize2fs: Permission denied to resize filesystem"
        ));
        assert!(is_permission_refusal(
            "xfs_growfs: XFS_IOC_FSGROWFSDATA xfsctl failed: Operation not permitted"
        ));
        assert!(!is_permission_refusal("resize2fs: No space left on device"));
    }
}
