//! mount(2) and umount2(2) through nix.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use super::MountError;

/// mount(2). `data` must already be validated ([`super::options`]).
pub fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    nix::mount::mount(Some(source), target, fstype, flags, data).map_err(|source| match data {
        Some(data) => MountError::MountData {
            path: target.to_path_buf(),
            fstype: fstype.unwrap_or("").to_owned(),
            data: data.to_owned(),
            source,
        },
        None => MountError::sys("mount", target)(source),
    })
}

/// Bind `source` onto `target`; with `remount_flags` non-empty, remount the bind with them
/// (a bind ignores most flags on the first call, so read-only etc. need the remount).
/// On a failed remount the bind is undone so no half-configured mount stays behind.
pub fn bind(source: &Path, target: &Path, remount_flags: MsFlags) -> Result<(), MountError> {
    mount(source, target, None, MsFlags::MS_BIND, None)?;
    if remount_flags.is_empty() {
        return Ok(());
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount_flags;
    if let Err(e) = mount(source, target, None, flags, None) {
        if let Err(undo) = unmount(target) {
            tracing::warn!(target = %target.display(), error = %undo, "undoing bind after failed remount");
        }
        return Err(e);
    }
    Ok(())
}

/// umount2(2), no lazy detach: a busy mount is an error, so the caller never believes a
/// volume is released while a process still uses it. `UMOUNT_NOFOLLOW`: a symlink
/// planted at the mount point is never followed to unmount something else (the volume
/// layer refuses symlinks in the rest of the path).
///
/// EBUSY is retried for a few milliseconds first: between fork and exec, a process
/// spawned by any thread (mkfs for another volume) holds copies of every descriptor,
/// including close-on-exec ones on this mount, for a moment.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let mut attempts = 0;
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Err(nix::errno::Errno::EBUSY) if attempts < BUSY_RETRIES => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other.map_err(MountError::sys("umount", target)),
        }
    }
}

const BUSY_RETRIES: u32 = 10;
