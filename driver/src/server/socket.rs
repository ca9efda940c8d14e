//! The CSI Unix socket: created safely, removed only when it is ours or stale.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};
use tokio::net::UnixListener;

/// Socket permissions: kubelet and the sidecars run as root or in the socket's group.
const SOCKET_MODE: u32 = 0o660;
/// Parent directory permissions when the driver has to create it.
const DIR_MODE: u32 = 0o750;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("{path} is in use by another running process")]
    InUse { path: PathBuf },
    #[error("inspecting {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The bound listener; dropping it removes the socket file it created.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Only remove what is still a socket: another process may have replaced it.
        if is_socket(&self.path).unwrap_or(false)
            && let Err(error) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove socket");
        }
    }
}

/// Creates the parent directory, clears a stale socket and binds with mode 0660.
///
/// Must run before the runtime spawns other work: the umask is process wide, and is
/// tightened only for the instant of `bind` so the socket never exists with looser
/// permissions.
pub fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), SocketError> {
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .map_err(|source| SocketError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    remove_stale(path)?;
    let previous = umask(Mode::from_bits_truncate(0o777 & !SOCKET_MODE));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let guard = BoundSocket {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| SocketError::Bind {
            path: path.to_path_buf(),
            source,
        },
    )?;
    Ok((listener, guard))
}

fn is_socket(path: &Path) -> io::Result<bool> {
    Ok(std::fs::symlink_metadata(path)?.file_type().is_socket())
}

/// Removes `path` only if it is a socket nobody answers on.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(SocketError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_0660_and_removes_the_socket_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let (listener, guard) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(listener);
        drop(guard);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let (live, guard) = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(live);
        // The listener is gone but the file stays: a crashed driver's leftover.
        std::mem::forget(guard);
        assert!(path.exists());
        let (_listener, _guard) = bind(&path).unwrap();
    }

    #[tokio::test]
    async fn never_removes_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(bind(&path), Err(SocketError::NotASocket { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
