//! State shared by the three services: configuration, the pool once it is open, and the
//! per-volume in-flight set.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::config::{Config, Mode};
use crate::error::Error;
use crate::storage::node::NodeStorage;
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
    storage: Arc<NodeStorage>,
    cluster: OnceLock<Cluster>,
    last_ready: Mutex<Option<Instant>>,
}

impl Driver {
    pub fn new(config: Config) -> Arc<Self> {
        let caps = config.features.capabilities();
        Arc::new(Self {
            config,
            caps,
            storage: Arc::default(),
            cluster: OnceLock::new(),
            last_ready: Mutex::new(None),
        })
    }

    /// Installs the opened pool; the services answer UNAVAILABLE until then.
    pub fn set_pool(&self, pool: Pool) {
        self.storage.set_pool(pool, &self.config.kubelet_dir);
    }

    /// Installs the pool's snapshot store; call before [`Driver::set_pool`], so a
    /// ready driver always has both.
    pub fn set_snapshots(&self, store: SnapshotStore) {
        self.storage.set_snapshots(store);
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

    /// The pool, snapshot store, volume layer and claims of this node.
    pub fn storage(&self) -> &Arc<NodeStorage> {
        &self.storage
    }

    pub fn snapshots(&self) -> Result<Arc<SnapshotStore>, Error> {
        self.storage.snapshots()
    }

    pub fn pool(&self) -> Result<Arc<Pool>, Error> {
        self.storage.pool()
    }

    pub fn volumes(&self) -> Result<Arc<NodeVolumes>, Error> {
        self.storage.volumes()
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

pub use crate::storage::node::blocking;
