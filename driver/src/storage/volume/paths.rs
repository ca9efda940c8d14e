//! Paths that arrive from kubelet (untrusted), resolved beneath the kubelet directory
//! without following symlinks.
//!
//! A pod can plant a symlink wherever it can write, and kubelet's directories hold
//! volumes pods write to. Had the driver followed one at a target path, a parent of it
//! or a staging path, a volume would be mounted somewhere else on the node and
//! NodeUnpublishVolume would remove what the link pointed to. So every path the driver
//! mounts on, creates or removes is opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to the kubelet directory,
//! and the work goes through the handle: mount(2) onto `/proc/self/fd/N` of an `O_PATH`
//! descriptor (the kernel takes the exact directory the descriptor holds, so a swap
//! after the check cannot redirect it), and `mkdirat`/`unlinkat` relative to the parent
//! directory's descriptor.
//!
//! A symlink anywhere below the kubelet directory is INVALID_ARGUMENT
//! ([`VolumeError::InvalidPath`]): the request names a path the driver will not use,
//! whatever the CO retries. The kubelet directory itself is configuration (it may be a
//! symlink, as some distributions make it) and is resolved once.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::VolumeError;
use crate::mount::MountError;

const MAX_PATH_LEN: usize = 4096;
/// `openat2` answers EAGAIN when a rename or mount raced the walk; try again a few times.
const EAGAIN_RETRIES: u32 = 4;
/// Directories the driver creates (target paths, their parents): kubelet's own mode.
const DIR_MODE: u32 = 0o750;
/// Block-volume device files, before a device node is bind-mounted over them.
const FILE_MODE: u32 = 0o640;

/// The root every staging and target path must lie beneath.
#[derive(Clone, Debug)]
pub struct Beneath {
    /// As configured: how kubelet writes the paths it sends.
    given: PathBuf,
    /// Resolved once (the configured directory may itself be a symlink): how mountinfo
    /// reports mount points below it.
    real: PathBuf,
}

impl Beneath {
    /// `dir` as configured; its own symlinks are resolved here, once.
    pub fn new(dir: &Path) -> Self {
        let real = std::fs::canonicalize(dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %dir.display(), error = %e, "kubelet directory not resolvable yet; using it as given");
            dir.to_path_buf()
        });
        Self {
            given: dir.to_path_buf(),
            real,
        }
    }

    /// The whole filesystem (library use without a kubelet directory): still no
    /// symlink is followed.
    pub fn filesystem_root() -> Self {
        Self {
            given: PathBuf::from("/"),
            real: PathBuf::from("/"),
        }
    }

    /// Check `path` and return it as mountinfo shows it. Refused: empty, relative,
    /// containing NUL or `..`, too long, not below the kubelet directory, a symlink in
    /// any existing component below it, or inside or above the pool directory.
    pub fn resolve(&self, path: &Path, pool_dir: &Path) -> Result<PathBuf, VolumeError> {
        let invalid = |reason| VolumeError::InvalidPath {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() {
            return Err(invalid("empty"));
        }
        if bytes.len() > MAX_PATH_LEN {
            return Err(invalid("too long"));
        }
        if bytes.contains(&0) {
            return Err(invalid("contains NUL"));
        }
        if !path.is_absolute() {
            return Err(invalid("not absolute"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("contains '..'"));
        }
        let normal: PathBuf = path
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        let rel = normal
            .strip_prefix(&self.given)
            .or_else(|_| normal.strip_prefix(&self.real))
            .map_err(|_| invalid("not below the kubelet directory"))?;
        if rel.as_os_str().is_empty() {
            return Err(invalid("is the kubelet directory itself"));
        }
        let resolved = self.real.join(rel);
        if resolved.starts_with(pool_dir) || pool_dir.starts_with(&resolved) {
            return Err(invalid("inside or above the pool directory"));
        }
        // The longest existing prefix must hold no symlink; the rest is created later,
        // component by component, under the same rule.
        let root = self.root()?;
        let mut existing = rel;
        loop {
            match open_beneath(&root, existing, OFlag::empty()) {
                Ok(_) => break,
                Err(Errno::ENOENT) => match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
                    _ => break,
                },
                Err(e) => return Err(refusal(path, e)),
            }
        }
        Ok(resolved)
    }

    /// An `O_PATH` handle of the existing directory `real` (a resolved path).
    pub fn open_dir(&self, real: &Path) -> Result<OwnedFd, VolumeError> {
        let rel = self.relative(real)?;
        open_beneath(&self.root()?, rel, OFlag::O_DIRECTORY).map_err(|e| refusal(real, e))
    }

    /// `mkdir -p` of `real` beneath the root, one component at a time, never through a
    /// symlink; returns an `O_PATH` handle of the directory.
    pub fn create_dir_all(&self, real: &Path) -> Result<OwnedFd, VolumeError> {
        let rel = self.relative(real)?;
        let root = self.root()?;
        // The common case (the directory exists) costs one openat2.
        match open_beneath(&root, rel, OFlag::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(refusal(real, e)),
        }
        let mut dir = root;
        for name in rel.iter() {
            dir = loop {
                match open_beneath(&dir, Path::new(name), OFlag::O_DIRECTORY) {
                    Ok(fd) => break fd,
                    Err(Errno::ENOENT) => {
                        match mkdirat(&dir, name, Mode::from_bits_truncate(DIR_MODE)) {
                            // EEXIST: created meanwhile (or a dangling symlink, which the
                            // next open refuses).
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(e) => return Err(sys_err("mkdir", real, e)),
                        }
                    }
                    Err(e) => return Err(refusal(real, e)),
                }
            };
        }
        Ok(dir)
    }

    /// The file `real` (a block volume's device file), created empty when missing, as
    /// an `O_PATH` handle; its directory must exist. A directory there is refused.
    pub fn create_file(&self, real: &Path) -> Result<OwnedFd, VolumeError> {
        let (parent, name) = self.split(real)?;
        let dir = open_beneath(&self.root()?, parent, OFlag::O_DIRECTORY)
            .map_err(|e| refusal(real, e))?;
        match kind_at(&dir, name) {
            Ok(SFlag::S_IFDIR) => {
                return Err(VolumeError::InvalidPath {
                    path: real.to_path_buf(),
                    reason: "is a directory; a block volume needs a file",
                });
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                // O_EXCL: never opens (and so never truncates or triggers) anything
                // that appeared in between; a symlink there is refused by openat2.
                let how = OpenHow::new()
                    .flags(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC)
                    .mode(Mode::from_bits_truncate(FILE_MODE))
                    .resolve(resolve_flags());
                match openat2(&dir, name, how) {
                    Ok(_) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(refusal(real, e)),
                }
            }
            Err(e) => return Err(sys_err("stat", real, e)),
        }
        open_beneath(&dir, Path::new(name), OFlag::empty()).map_err(|e| refusal(real, e))
    }

    /// Remove what the driver created at an unmounted path: an empty directory or an
    /// empty regular file, through its parent's handle. Anything else (data, a symlink,
    /// a path through a symlink) is left alone and logged: never delete what the driver
    /// did not create.
    pub fn remove_leftover(&self, real: &Path) {
        if let Err(e) = self.try_remove_leftover(real) {
            tracing::warn!(path = %real.display(), error = %e, "leaving path in place");
        }
    }

    fn try_remove_leftover(&self, real: &Path) -> Result<(), VolumeError> {
        let (parent, name) = self.split(real)?;
        let dir = match open_beneath(&self.root()?, parent, OFlag::O_DIRECTORY) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(refusal(real, e)),
        };
        let stat = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(sys_err("stat", real, e)),
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let flag = if kind == SFlag::S_IFDIR {
            UnlinkatFlags::RemoveDir
        } else if kind == SFlag::S_IFREG && stat.st_size == 0 {
            UnlinkatFlags::NoRemoveDir
        } else {
            return Err(VolumeError::InvalidPath {
                path: real.to_path_buf(),
                reason: "holds something the driver did not create",
            });
        };
        match unlinkat(&dir, name, flag) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(sys_err("remove", real, e)),
        }
    }

    fn root(&self) -> Result<OwnedFd, VolumeError> {
        nix::fcntl::open(
            &self.real,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys_err("open", &self.real, e))
    }

    /// `real` relative to the resolved root; it came from [`Beneath::resolve`].
    fn relative<'a>(&self, real: &'a Path) -> Result<&'a Path, VolumeError> {
        match real.strip_prefix(&self.real) {
            Ok(rel) if !rel.as_os_str().is_empty() => Ok(rel),
            _ => Err(VolumeError::InvalidPath {
                path: real.to_path_buf(),
                reason: "not below the kubelet directory",
            }),
        }
    }

    /// (parent relative to the root, or `.`; final name).
    fn split<'a>(&self, real: &'a Path) -> Result<(&'a Path, &'a OsStr), VolumeError> {
        let rel = self.relative(real)?;
        let name = rel.file_name().ok_or_else(|| VolumeError::InvalidPath {
            path: real.to_path_buf(),
            reason: "has no final component",
        })?;
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        Ok((parent.unwrap_or(Path::new(".")), name))
    }
}

/// The path through which mount(2) reaches what `fd` holds.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

/// `O_PATH` open of `rel` beneath `dir`, no symlinks, no escape.
fn open_beneath<Fd: AsFd>(dir: Fd, rel: &Path, extra: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | extra)
        .resolve(resolve_flags());
    let mut attempts = 0;
    loop {
        match openat2(dir.as_fd(), rel, how) {
            Err(Errno::EAGAIN) if attempts < EAGAIN_RETRIES => attempts += 1,
            other => return other,
        }
    }
}

/// The file type of `name` in `dir`, the name itself (a symlink is a symlink).
fn kind_at(dir: &OwnedFd, name: &OsStr) -> Result<SFlag, Errno> {
    let stat = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT)
}

/// What a failed beneath-open means for the request.
fn refusal(path: &Path, errno: Errno) -> VolumeError {
    let reason = match errno {
        Errno::ELOOP => {
            "contains a symlink below the kubelet directory; symlinks are never followed"
        }
        Errno::EXDEV => "escapes the kubelet directory",
        Errno::ENOTDIR => "has a component that is not a directory",
        _ => return sys_err("open", path, errno),
    };
    VolumeError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    }
}

fn sys_err(op: &'static str, path: &Path, errno: Errno) -> VolumeError {
    VolumeError::Host(MountError::sys(op, path)(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        kubelet: PathBuf,
        pool: PathBuf,
        outside: PathBuf,
        beneath: Beneath,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let kubelet = base.join("kubelet");
        let pool = base.join("pool");
        let outside = base.join("outside");
        for dir in [&kubelet, &pool, &outside] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let beneath = Beneath::new(&kubelet);
        Fixture {
            _tmp: tmp,
            kubelet,
            pool,
            outside,
            beneath,
        }
    }

    #[test]
    fn refuses_escapes_outsiders_and_symlinks() {
        let f = fixture();
        let resolve = |p: &Path| f.beneath.resolve(p, &f.pool);
        for bad in ["", "relative/path", "/var/lib/kubelet/../../etc", "/"] {
            assert!(resolve(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
        let nul = OsStr::from_bytes(b"/tmp/a\0b");
        assert!(resolve(Path::new(nul)).is_err());
        assert!(resolve(&f.outside.join("x")).is_err());
        assert!(resolve(&f.kubelet).is_err());
        // Symlinks at the path, at a parent, dangling: all refused.
        std::os::unix::fs::symlink(&f.outside, f.kubelet.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", f.kubelet.join("dangling")).unwrap();
        for bad in ["link", "link/new-dir", "link/new/deeper", "dangling"] {
            let err = resolve(&f.kubelet.join(bad)).unwrap_err();
            assert!(
                matches!(err, VolumeError::InvalidPath { reason, .. } if reason.contains("symlink")),
                "{bad}"
            );
        }
        let real = f.kubelet.join("link/x");
        assert!(f.beneath.create_dir_all(&real).is_err());
        assert!(std::fs::read_dir(&f.outside).unwrap().next().is_none());
    }

    #[test]
    fn creates_and_removes_only_beneath_without_following() {
        let f = fixture();
        let target = f.kubelet.join("pods/a/./volumes/mount");
        let resolved = f.beneath.resolve(&target, &f.pool).unwrap();
        assert_eq!(resolved, f.kubelet.join("pods/a/volumes/mount"));
        f.beneath.create_dir_all(&resolved).unwrap();
        assert!(resolved.is_dir());
        f.beneath.remove_leftover(&resolved);
        assert!(!resolved.exists());
        // A device file is created empty and removed again; a file with data stays.
        let file = f.kubelet.join("pods/a/volumes/dev");
        f.beneath.create_file(&file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
        f.beneath.remove_leftover(&file);
        assert!(!file.exists());
        std::fs::write(&file, b"data").unwrap();
        f.beneath.remove_leftover(&file);
        assert!(file.exists());
        // A symlink at the removed path is left alone, and so is what it points to.
        let link = f.kubelet.join("pods/a/volumes/link");
        std::os::unix::fs::symlink(&f.outside, &link).unwrap();
        f.beneath.remove_leftover(&link);
        assert!(link.symlink_metadata().is_ok() && f.outside.is_dir());
        assert!(f.beneath.create_file(&link).is_err());
    }
}
