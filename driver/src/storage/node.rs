//! This node's storage as the process holds it: the pool, its snapshot store and the
//! volume layer, installed once they are open (every call answers UNAVAILABLE before),
//! and the per-key claims that every change to them holds. The CSI services, the local
//! backend and cluster mode's node agent all reach the pool through this one handle, so
//! they take the same claims around the same calls.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::error::Error;
use crate::storage::inflight::{Guard, InFlight};
use crate::storage::pool::Pool;
use crate::storage::snapshot::SnapshotStore;
use crate::storage::volume::NodeVolumes;

#[derive(Debug, Default)]
pub struct NodeStorage {
    pool: OnceLock<Arc<Pool>>,
    volumes: OnceLock<Arc<NodeVolumes>>,
    snapshots: OnceLock<Arc<SnapshotStore>>,
    inflight: InFlight,
}

impl NodeStorage {
    /// Installs the opened pool, with the volume layer that stages and publishes its
    /// volumes beneath `kubelet_dir`.
    pub fn set_pool(&self, pool: Pool, kubelet_dir: &Path) {
        let pool = Arc::new(pool);
        // Node operations first: a caller that sees the pool may use both at once.
        if self
            .volumes
            .set(Arc::new(
                NodeVolumes::new(pool.clone()).beneath(kubelet_dir),
            ))
            .is_err()
            || self.pool.set(pool).is_err()
        {
            tracing::warn!("pool opened twice; keeping the first");
        }
    }

    /// Installs the pool's snapshot store; call before [`NodeStorage::set_pool`], so a
    /// ready node always has both.
    pub fn set_snapshots(&self, store: SnapshotStore) {
        if self.snapshots.set(Arc::new(store)).is_err() {
            tracing::warn!("snapshot store opened twice; keeping the first");
        }
    }

    pub fn snapshots(&self) -> Result<Arc<SnapshotStore>, Error> {
        self.snapshots.get().cloned().ok_or(Error::NotReady)
    }

    pub fn pool(&self) -> Result<Arc<Pool>, Error> {
        self.pool.get().cloned().ok_or(Error::NotReady)
    }

    pub fn volumes(&self) -> Result<Arc<NodeVolumes>, Error> {
        self.volumes.get().cloned().ok_or(Error::NotReady)
    }

    /// Runs blocking work `f` while holding `key` (ABORTED when another call holds it).
    ///
    /// The claim moves into the blocking task: when the client gives up (deadline) the
    /// handler future is dropped but a running mkfs or mount is not, and a retry must not
    /// start beside it. The key is released only when the work itself has finished.
    pub async fn exclusive<T, F>(&self, key: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        self.exclusive_all(&[key], f).await
    }

    /// [`NodeStorage::exclusive`] over several keys (a snapshot's name and its source
    /// volume, say): all are claimed, or none and the call is ABORTED.
    pub async fn exclusive_all<K, T, F>(&self, keys: &[K], f: F) -> Result<T, Error>
    where
        K: AsRef<str>,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let mut claims: Vec<Guard> = Vec::with_capacity(keys.len());
        for key in keys {
            let key = key.as_ref();
            // On failure the claims taken so far drop here, releasing their keys.
            claims.push(
                self.inflight
                    .try_claim(key)
                    .ok_or_else(|| Error::Pending(key.to_owned()))?,
            );
        }
        blocking(move || {
            let _claims = claims;
            f()
        })
        .await
    }
}

/// Runs blocking storage work (syscalls, mkfs) off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_busy_volume_stays_busy_until_its_work_ends_even_if_the_caller_left() {
        let storage = Arc::new(NodeStorage::default());
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let storage = storage.clone();
            async move {
                storage
                    .exclusive("vol-a", move || {
                        let _ = started.send(());
                        let _ = finished.recv();
                        Ok(())
                    })
                    .await
            }
        });
        has_started.await.unwrap();
        // Another volume is independent.
        storage.exclusive("vol-b", || Ok(())).await.unwrap();
        // The client gives up: its handler is dropped, the blocking work is not.
        first.abort();
        let _ = first.await;
        assert!(matches!(
            storage.exclusive("vol-a", || Ok(())).await,
            Err(Error::Pending(_))
        ));
        finish.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while storage.exclusive("vol-a", || Ok(())).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "claim never released");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
