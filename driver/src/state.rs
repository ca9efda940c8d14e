//! State shared by the three services: configuration, the pool once it is open, and the
//! per-volume in-flight set.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::config::{Config, Mode};
use crate::error::Error;
use crate::storage::inflight::{Guard, InFlight};
use crate::storage::pool::Pool;
use crate::storage::snapshot::SnapshotStore;
use crate::storage::volume::NodeVolumes;
use plinth_api::capabilities::Capabilities;

/// How long a successful readiness check is trusted; Probe is called every few seconds
/// by the liveness probe and need not touch the disk each time.
const READY_CACHE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Driver {
    pub config: Config,
    pub caps: Capabilities,
    pool: OnceLock<Arc<Pool>>,
    volumes: OnceLock<Arc<NodeVolumes>>,
    snapshots: OnceLock<Arc<SnapshotStore>>,
    cluster: OnceLock<Cluster>,
    inflight: InFlight,
    last_ready: Mutex<Option<Instant>>,
}

impl Driver {
    pub fn new(config: Config) -> Arc<Self> {
        let caps = config.features.capabilities();
        Arc::new(Self {
            config,
            caps,
            pool: OnceLock::new(),
            volumes: OnceLock::new(),
            snapshots: OnceLock::new(),
            cluster: OnceLock::new(),
            inflight: InFlight::default(),
            last_ready: Mutex::new(None),
        })
    }

    /// Installs the opened pool; the services answer UNAVAILABLE until then.
    pub fn set_pool(&self, pool: Pool) {
        let pool = Arc::new(pool);
        // Node operations first: a caller that sees the pool may use both at once.
        if self
            .volumes
            .set(Arc::new(
                NodeVolumes::new(pool.clone()).beneath(&self.config.kubelet_dir),
            ))
            .is_err()
            || self.pool.set(pool).is_err()
        {
            tracing::warn!("pool opened twice; keeping the first");
        }
    }

    /// Installs the pool's snapshot store; call before [`Driver::set_pool`], so a
    /// ready driver always has both.
    pub fn set_snapshots(&self, store: SnapshotStore) {
        if self.snapshots.set(Arc::new(store)).is_err() {
            tracing::warn!("snapshot store opened twice; keeping the first");
        }
    }

    /// Installs the API client of cluster mode.
    pub fn set_cluster(&self, cluster: Cluster) {
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("cluster client set twice; keeping the first");
        }
    }

    /// The cluster-mode context; `None` in all-in-one mode.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
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
        let claim: Guard = self
            .inflight
            .try_claim(key)
            .ok_or_else(|| Error::Pending(key.to_owned()))?;
        blocking(move || {
            let _claim = claim;
            f()
        })
        .await
    }

    /// [`Driver::exclusive`] over several keys (a snapshot's name and its source
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

    /// Probe: the pool is open and still writable (a controller-mode driver has no pool:
    /// it is ready once it has its API client). Concurrent probes share one check.
    pub async fn ready(&self) -> bool {
        if self.config.mode == Mode::Controller {
            return self.cluster.get().is_some();
        }
        let Ok(pool) = self.pool() else {
            return false;
        };
        let mut last = self.last_ready.lock().await;
        if last.is_some_and(|at| at.elapsed() < READY_CACHE) {
            return true;
        }
        // Its own thread, not the blocking pool: Probe (kubelet's liveness check through
        // the livenessprobe sidecar) must never queue behind storage work that fills it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("probe".to_owned())
            .spawn(move || {
                let _ = tx.send(pool.check_ready());
            });
        let ok = match spawned {
            Err(error) => {
                tracing::warn!(%error, "readiness check failed");
                false
            }
            Ok(_) => match rx.await {
                Ok(Ok(())) => true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "pool not ready");
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "readiness check failed");
                    false
                }
            },
        };
        *last = ok.then(Instant::now);
        ok
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

    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    fn driver() -> Arc<Driver> {
        let cli = Cli::try_parse_from(["plinth-driver", "--node-id", "n1"]).unwrap();
        Driver::new(Config::from_cli(cli, None).unwrap())
    }

    #[tokio::test]
    async fn a_busy_volume_stays_busy_until_its_work_ends_even_if_the_caller_left() {
        let driver = driver();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let driver = driver.clone();
            async move {
                driver
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
        driver.exclusive("vol-b", || Ok(())).await.unwrap();
        // The client gives up: its handler is dropped, the blocking work is not.
        first.abort();
        let _ = first.await;
        assert!(matches!(
            driver.exclusive("vol-a", || Ok(())).await,
            Err(Error::Pending(_))
        ));
        finish.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while driver.exclusive("vol-a", || Ok(())).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "claim never released");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
