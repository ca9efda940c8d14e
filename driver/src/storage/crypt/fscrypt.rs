//! The kernel side of an encrypted volume: its data key in the filesystem's keyring
//! while staged, and the v2 policy of its `data/` directory.
//!
//! fscrypt keys belong to a filesystem instance (its superblock), not to a process: they
//! outlive the driver (a restarted driver finds a staged volume still unlocked) and go
//! away with the filesystem's last unmount.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, mkdirat};

use super::wrap::DataKey;
use super::{CryptError, DATA_DIR};
use crate::mount::ioctl;
use crate::mount::mountinfo::MountEntry;
use crate::storage::IoFailure;
use crate::storage::pool::{Pool, VolumeId};

/// A key's identifier: what a v2 policy names.
pub type Identifier = [u8; ioctl::FSCRYPT_KEY_IDENTIFIER_SIZE];

const FSCRYPT_POLICY_V2: u8 = 2;
const FSCRYPT_MODE_AES_256_XTS: u8 = 1;
const FSCRYPT_MODE_AES_256_CTS: u8 = 4;
/// Pad filenames to 32 bytes: hides their lengths best.
const FSCRYPT_POLICY_FLAGS_PAD_32: u8 = 0x03;
/// `FSCRYPT_KEY_STATUS_PRESENT`.
pub const KEY_PRESENT: u32 = 2;
/// `FSCRYPT_KEY_STATUS_ABSENT`.
pub const KEY_ABSENT: u32 = 1;
/// `FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED`: removed, but inodes still in use (a mount
/// of the directory itself, an open file) keep their per-file keys until released.
pub const KEY_INCOMPLETELY_REMOVED: u32 = 3;

fn open_dir(path: &Path) -> Result<OwnedFd, CryptError> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(CryptError::kernel("open", path))
}

/// `data/` of the filesystem mounted at `root`, created when missing. Opened relative to
/// the root's handle and never through a symlink.
fn data_dir(root: &OwnedFd, root_path: &Path, create: bool) -> Result<Option<OwnedFd>, CryptError> {
    let path = root_path.join(DATA_DIR);
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(root.as_fd(), DATA_DIR, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) if create => {
            mkdirat(root.as_fd(), DATA_DIR, Mode::from_bits_truncate(0o755))
                .map_err(CryptError::kernel("mkdir", &path))?;
            openat(root.as_fd(), DATA_DIR, flags, Mode::empty())
                .map(Some)
                .map_err(CryptError::kernel("open", &path))
        }
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(CryptError::kernel("open", &path)(e)),
    }
}

/// The identifier of the key `dir`'s policy names; `None` for a directory without one.
fn policy_of(dir: &OwnedFd, path: &Path) -> Result<Option<Identifier>, CryptError> {
    match ioctl::fscrypt_get_policy(dir.as_fd()) {
        Ok(arg) if arg.policy.version == FSCRYPT_POLICY_V2 => {
            Ok(Some(arg.policy.master_key_identifier))
        }
        Ok(arg) => Err(CryptError::Layout {
            id: path.display().to_string(),
            reason: format!(
                "{} carries an fscrypt policy of version {}, not one this driver set",
                path.display(),
                arg.policy.version
            ),
        }),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(CryptError::kernel("get encryption policy of", path)(e)),
    }
}

/// Unlock the volume `id` mounted at `root`: add `key` to the filesystem and make sure
/// `data/` is encrypted under it (created and given the policy at the first stage).
/// Idempotent. On failure the key is removed again.
pub fn unlock(root: &Path, key: &DataKey, id: &VolumeId) -> Result<(), CryptError> {
    let root_fd = open_dir(root)?;
    let identifier = ioctl::fscrypt_add_key(root_fd.as_fd(), key.bytes())
        .map_err(CryptError::kernel("add encryption key to", root))?;
    let result = apply_policy(&root_fd, root, &identifier, id);
    if result.is_err()
        && let Err(e) = ioctl::fscrypt_remove_key_all_users(root_fd.as_fd(), &identifier)
    {
        tracing::warn!(error = %e, "removing the key after a failed unlock");
    }
    result
}

fn apply_policy(
    root_fd: &OwnedFd,
    root: &Path,
    identifier: &Identifier,
    id: &VolumeId,
) -> Result<(), CryptError> {
    let data_path = root.join(DATA_DIR);
    let Some(data) = data_dir(root_fd, root, true)? else {
        return Err(CryptError::Layout {
            id: id.to_string(),
            reason: format!("{} could not be created", data_path.display()),
        });
    };
    match policy_of(&data, &data_path)? {
        Some(found) if found == *identifier => Ok(()),
        Some(_) => Err(CryptError::KeyLost(id.to_string())),
        None => {
            let policy = ioctl::FscryptPolicyV2 {
                version: FSCRYPT_POLICY_V2,
                contents_encryption_mode: FSCRYPT_MODE_AES_256_XTS,
                filenames_encryption_mode: FSCRYPT_MODE_AES_256_CTS,
                flags: FSCRYPT_POLICY_FLAGS_PAD_32,
                reserved: [0; 4],
                master_key_identifier: *identifier,
            };
            // ENOTEMPTY: data/ holds plaintext from elsewhere; never encrypt over it.
            ioctl::fscrypt_set_policy(data.as_fd(), &policy).map_err(|e| match e {
                Errno::ENOTEMPTY => CryptError::Layout {
                    id: id.to_string(),
                    reason: format!(
                        "{} holds unencrypted files; refusing to encrypt over them",
                        data_path.display()
                    ),
                },
                other => CryptError::kernel("set encryption policy of", &data_path)(other),
            })?;
            tracing::info!("encryption policy set on the volume's data directory");
            Ok(())
        }
    }
}

/// Remove the volume's key from the filesystem mounted at `mount` (its staging root, or
/// a bind of its `data/`) for all users. Files still open keep their contents readable
/// until closed (the kernel reports them busy); nothing new can be opened. Returns
/// whether a key was there.
pub fn lock(mount: &Path, root_of_mount: &Path) -> Result<bool, CryptError> {
    let fd = open_dir(mount)?;
    let data = if root_of_mount == Path::new("/") {
        data_dir(&fd, mount, false)?
    } else {
        Some(fd)
    };
    let Some(data) = data else {
        return Ok(false);
    };
    let data_path = if root_of_mount == Path::new("/") {
        mount.join(DATA_DIR)
    } else {
        mount.to_path_buf()
    };
    let Some(identifier) = policy_of(&data, &data_path)? else {
        return Ok(false);
    };
    match ioctl::fscrypt_key_status(data.as_fd(), &identifier) {
        Ok(KEY_ABSENT) => return Ok(false),
        Ok(_) => {}
        Err(e) => return Err(CryptError::kernel("get key status on", mount)(e)),
    }
    match ioctl::fscrypt_remove_key_all_users(data.as_fd(), &identifier) {
        Ok(flags) => {
            if flags & 1 != 0 {
                tracing::warn!(mount = %mount.display(), "key removed while files were still open");
            }
            Ok(true)
        }
        Err(Errno::ENOKEY) => Ok(false),
        Err(e) => Err(CryptError::kernel("remove encryption key from", mount)(e)),
    }
}

/// `FSCRYPT_KEY_STATUS_*` ([`KEY_PRESENT`], [`KEY_ABSENT`], ...) in its filesystem of
/// the key that the encrypted directory `data` (a staging's `data/`, or a publish)
/// names; `None` when it has no policy.
pub fn key_status(data: &Path) -> Result<Option<u32>, CryptError> {
    let fd = open_dir(data)?;
    let Some(identifier) = policy_of(&fd, data)? else {
        return Ok(None);
    };
    ioctl::fscrypt_key_status(fd.as_fd(), &identifier)
        .map(Some)
        .map_err(CryptError::kernel("get key status on", data))
}

/// At start: an encrypted volume's filesystem that is still mounted but not staged (only
/// binds of its `data/` are left, e.g. its staging was unmounted behind the driver's
/// back) must not keep its key. Staged volumes keep theirs: they survive the restart.
/// Returns the volumes whose key was removed.
pub fn recover(pool: &Pool, mounts: &[MountEntry]) -> Result<Vec<VolumeId>, CryptError> {
    let mut locked = Vec::new();
    for volume in pool.list() {
        if !super::is_encrypted(&volume.parameters) {
            continue;
        }
        let Some(dev) = pool.attachment(&volume.id).map_err(|e| {
            CryptError::from(IoFailure {
                op: "find loop device of",
                path: pool.image_path(&volume.id),
                source: std::io::Error::other(e.to_string()),
            })
        })?
        else {
            continue;
        };
        let users = dev.users();
        let ours: Vec<&MountEntry> = mounts.iter().filter(|m| users.contains(m)).collect();
        if ours.is_empty() || ours.iter().any(|m| m.root == Path::new("/")) {
            continue;
        }
        let mount: PathBuf = ours[0].mount_point.clone();
        if lock(&mount, &ours[0].root)? {
            tracing::warn!(volume_id = %volume.id, mount = %mount.display(), "removed the key of an encrypted volume that is not staged");
            locked.push(volume.id);
        }
    }
    Ok(locked)
}
