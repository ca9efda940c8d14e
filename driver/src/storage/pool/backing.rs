//! What the pool directory's filesystem can do for snapshots and clones.
//!
//! Snapshots and clones copy a whole image. On xfs (with `reflink=1`) and btrfs that copy
//! is a reflink: the new file shares every extent copy-on-write, so it is O(1) in the
//! data size and costs no space until either side writes. Elsewhere (ext4, tmpfs) the
//! pool falls back to a sparse-aware copy of the data extents
//! ([`crate::storage::pool::copy_image`] makes that choice per copy). [`probe`] tells operators and
//! logs in advance which one a pool gets.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sys::statfs::statfs;
use serde::Serialize;

use crate::mount::MountError;

/// `statfs(2)` magics of the filesystems the pool commonly sits on (`linux/magic.h`).
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683e;
const EXT4_MAGIC: i64 = 0xef53;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// The pool filesystem's type, from `statfs` `f_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Xfs,
    Btrfs,
    /// ext2/3/4 share the magic.
    Ext4,
    Tmpfs,
    Overlay,
    /// Anything else, by magic.
    Other(i64),
}

impl FsKind {
    fn from_magic(magic: i64) -> Self {
        match magic {
            XFS_MAGIC => Self::Xfs,
            BTRFS_MAGIC => Self::Btrfs,
            EXT4_MAGIC => Self::Ext4,
            TMPFS_MAGIC => Self::Tmpfs,
            OVERLAYFS_MAGIC => Self::Overlay,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xfs => f.write_str("xfs"),
            Self::Btrfs => f.write_str("btrfs"),
            Self::Ext4 => f.write_str("ext4"),
            Self::Tmpfs => f.write_str("tmpfs"),
            Self::Overlay => f.write_str("overlay"),
            Self::Other(magic) => write!(f, "unknown(0x{magic:x})"),
        }
    }
}

/// How snapshots and clones of this pool are copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolFilesystem {
    pub kind: FsKind,
    /// Whether FICLONE works here: snapshots and clones are reflinks. Without it
    /// they are sparse copies (time and space proportional to the data written).
    pub reflink: bool,
}

impl PoolFilesystem {
    /// `"reflink"` or `"sparse copy"`, for logs and the plugin manifest.
    pub fn copy_method(&self) -> &'static str {
        if self.reflink {
            "reflink"
        } else {
            "sparse copy"
        }
    }
}

impl PoolFilesystem {
    /// Entries for GetPluginInfo's manifest, so `csc identity plugin-info` (or a log of
    /// the sidecars) shows how this node copies snapshots.
    pub fn manifest(&self) -> HashMap<String, String> {
        HashMap::from([
            ("poolFilesystem".to_owned(), self.kind.to_string()),
            ("snapshotCopy".to_owned(), self.copy_method().to_owned()),
        ])
    }
}

impl fmt::Display for PoolFilesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.copy_method())
    }
}

const PROBE_SRC: &str = ".reflink-probe-src.tmp";
const PROBE_DEST: &str = ".reflink-probe-dest.tmp";

/// Detect the filesystem under `dir` and whether it can reflink, by trying it on two
/// small files in `dir` (xfs without `reflink=1` has the same magic as xfs with it).
/// The probe files are temp-named, so pool recovery removes them after a crash.
pub fn probe(dir: &Path) -> Result<PoolFilesystem, MountError> {
    let st = statfs(dir).map_err(MountError::sys("statfs", dir))?;
    // `f_type`'s integer type differs between libc targets; the magics fit in i64.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    let kind = FsKind::from_magic(magic);
    let src = dir.join(PROBE_SRC);
    let dest = dir.join(PROBE_DEST);
    let result = reflink_works(&src, &dest);
    let _ = fs::remove_file(&src);
    let _ = fs::remove_file(&dest);
    Ok(PoolFilesystem {
        kind,
        reflink: result?,
    })
}

fn reflink_works(src: &Path, dest: &Path) -> Result<bool, MountError> {
    let mut input = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(src)
        .map_err(MountError::io("create", src))?;
    // One filesystem block of data: FICLONE of an empty file succeeds trivially on
    // some filesystems without proving anything.
    input
        .write_all(&[0x5a; 4096])
        .and_then(|()| input.sync_all())
        .map_err(MountError::io("write", src))?;
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(MountError::io("create", dest))?;
    Ok(crate::mount::ficlone(output.as_fd(), input.as_fd()).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_common_pool_filesystems() {
        assert_eq!(FsKind::from_magic(0x5846_5342), FsKind::Xfs);
        assert_eq!(FsKind::from_magic(0xef53), FsKind::Ext4);
        assert_eq!(FsKind::from_magic(0x9123_683e), FsKind::Btrfs);
        assert_eq!(FsKind::from_magic(7).to_string(), "unknown(0x7)");
    }

    #[test]
    fn probe_cleans_up_after_itself() {
        let dir = tempfile::tempdir().unwrap();
        let found = probe(dir.path()).unwrap();
        // Whatever the host's filesystem, the probe leaves nothing behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "{found}");
    }
}
