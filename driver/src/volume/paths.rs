//! Validation of paths that arrive from kubelet (untrusted).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::VolumeError;

const MAX_PATH_LEN: usize = 4096;

/// Check a staging or target path and return it resolved (symlinks of the existing
/// part followed), which is how mountinfo reports mount points.
///
/// Refused: empty, relative, containing NUL or a `..` component, too long, or
/// resolving into the pool directory (a volume must never be mounted over the pool).
pub fn resolve(path: &Path, pool_dir: &Path) -> Result<PathBuf, VolumeError> {
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
    // Canonicalise the longest existing prefix; append the rest as given.
    let normal: PathBuf = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let mut existing = normal.as_path();
    let mut tail: Vec<&OsStr> = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(existing) {
            Ok(canon) => break tail.iter().rev().fold(canon, |p, c| p.join(c)),
            Err(_) => {
                let (Some(name), Some(parent)) = (existing.file_name(), existing.parent()) else {
                    return Err(invalid("cannot be resolved"));
                };
                tail.push(name);
                existing = parent;
            }
        }
    };
    if resolved.starts_with(pool_dir) || pool_dir.starts_with(&resolved) {
        return Err(invalid("inside or above the pool directory"));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes_and_pool_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = tmp.path().join("pool");
        std::fs::create_dir_all(pool.join("volumes")).unwrap();
        let pool = std::fs::canonicalize(&pool).unwrap();
        for bad in ["", "relative/path", "/var/lib/kubelet/../../etc"] {
            assert!(resolve(Path::new(bad), &pool).is_err(), "{bad:?} accepted");
        }
        let nul = OsStr::from_bytes(b"/tmp/a\0b");
        assert!(resolve(Path::new(nul), &pool).is_err());
        assert!(resolve(&pool.join("volumes/x"), &pool).is_err());
        assert!(resolve(&pool, &pool).is_err());
        assert!(resolve(Path::new("/"), &pool).is_err());
        // A symlink outside the pool pointing into it is caught after resolution.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(pool.join("volumes"), &link).unwrap();
        assert!(resolve(&link.join("new-dir"), &pool).is_err());
    }

    #[test]
    fn resolves_existing_prefix_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = tmp.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let target = tmp.path().join("pods/./a/mount");
        let resolved = resolve(&target, &pool).unwrap();
        assert_eq!(
            resolved,
            std::fs::canonicalize(tmp.path())
                .unwrap()
                .join("pods/a/mount")
        );
    }
}
