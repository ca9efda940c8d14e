//! Fixtures of the node agent's tests: a node-mode driver with a real pool in its own
//! temporary directory, and the PoolVolume / PoolSnapshot objects a controller writes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use kube::api::ObjectMeta;
use plinth_api::cluster::crd::{
    self, AccessSpec, ContentSourceSpec, PoolSnapshot, PoolSnapshotSpec, PoolVolume,
    PoolVolumeSpec, VolumeMode,
};
use plinth_driver::cluster::agent::Agent;
use plinth_driver::cluster::{Cluster, ids};
use plinth_driver::config::{Cli, Config};
use plinth_driver::state::Driver;
use plinth_driver::storage::pool::{Pool, VolumeId};
use plinth_driver::storage::snapshot::{SnapshotId, SnapshotStore};

pub const DRIVER: &str = "local.csi.plinth.dev";
pub const NODE: &str = "node-a";
pub const MIB: u64 = 1 << 20;

/// A node plugin's state: its pool directory, the driver holding the opened pool, and
/// its agent talking to `client`.
pub struct TestNode {
    pub driver: Arc<Driver>,
    pub agent: Arc<Agent>,
    // Dropped in this order: the pool's own filesystem before its directory.
    tmpfs: Option<Tmpfs>,
    dir: tempfile::TempDir,
}

/// A tmpfs this test mounted, unmounted on drop (nothing else is touched).
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount the test tmpfs {}: {e}", self.0.display());
        }
    }
}

impl TestNode {
    /// A node with an empty pool in a new temporary directory.
    pub fn new(client: kube::Client) -> Self {
        let dir = temp_dir();
        let (driver, agent) = open(dir.path(), client);
        Self {
            driver,
            agent,
            tmpfs: None,
            dir,
        }
    }

    /// A node whose pool has a filesystem of its own (a 256 MiB tmpfs), so its free
    /// space moves only with the pool's own work, not with other tests writing to /tmp.
    pub fn on_own_filesystem(client: kube::Client) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs for its pool: run it as root"
        );
        let dir = temp_dir();
        let pool_dir = dir.path().join("pool");
        std::fs::create_dir_all(&pool_dir).expect("pool dir");
        nix::mount::mount(
            Some("tmpfs"),
            &pool_dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=256m"),
        )
        .expect("mount a tmpfs for the pool");
        let tmpfs = Tmpfs(pool_dir);
        let (driver, agent) = open(dir.path(), client);
        Self {
            driver,
            agent,
            tmpfs: Some(tmpfs),
            dir,
        }
    }

    /// The same pool opened again by a new driver process (a node plugin restart).
    pub fn restart(self, client: kube::Client) -> Self {
        let Self {
            driver,
            agent,
            tmpfs,
            dir,
        } = self;
        drop((driver, agent));
        let (driver, agent) = open(dir.path(), client);
        Self {
            driver,
            agent,
            tmpfs,
            dir,
        }
    }

    pub fn pool(&self) -> Arc<Pool> {
        self.driver.pool().expect("pool is open")
    }

    pub fn snapshots(&self) -> Arc<SnapshotStore> {
        self.driver.snapshots().expect("snapshot store is open")
    }

    /// The length of a volume's image file.
    pub fn image_len(&self, id: &VolumeId) -> Option<u64> {
        std::fs::metadata(self.pool().image_path(id))
            .ok()
            .map(|m| m.len())
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("plinth-agent-")
        .tempdir()
        .expect("temp dir")
}

/// Opens the pool under `dir` as a node-mode driver would. The capacity interval is an
/// hour: a publish a test sees comes from the agent's own work.
fn open(dir: &Path, client: kube::Client) -> (Arc<Driver>, Arc<Agent>) {
    let pool_dir = dir.join("pool");
    std::fs::create_dir_all(&pool_dir).expect("pool dir");
    let cli = Cli::try_parse_from([
        "plinth-driver",
        "--mode",
        "node",
        "--node-id",
        NODE,
        "--driver-name",
        DRIVER,
        "--pool",
        pool_dir.to_str().expect("UTF-8 temp dir"),
        "--capacity-interval-seconds",
        "3600",
    ])
    .expect("valid flags");
    let config = Config::from_cli(cli, None).expect("valid config");
    let cluster = Cluster::new(client, &config);
    let driver = Driver::new(config);
    let pool = Pool::open(&pool_dir, 0).expect("pool opens");
    driver.set_snapshots(SnapshotStore::open(&pool).expect("snapshot store opens"));
    driver.set_pool(pool);
    driver.set_cluster(cluster);
    let agent = Agent::new(driver.storage().clone(), driver.cluster())
        .expect("node mode has a cluster context");
    (driver, agent)
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(crd::labels(DRIVER, NODE)),
        finalizers: Some(vec![crd::FINALIZER.to_owned()]),
        ..ObjectMeta::default()
    }
}

pub fn ext4() -> AccessSpec {
    AccessSpec {
        volume_mode: VolumeMode::Filesystem,
        fs_type: Some(crd::FsType::Ext4),
    }
}

/// The PoolVolume a controller writes for CSI name `name`: named by the volume ID the
/// controller derives, with this node's labels and the finalizer.
pub fn volume(name: &str, size_bytes: u64) -> PoolVolume {
    let id = ids::volume_id(DRIVER, name);
    let mut volume = PoolVolume::new(
        id.as_str(),
        PoolVolumeSpec {
            driver: DRIVER.to_owned(),
            node: NODE.to_owned(),
            name: name.to_owned(),
            size_bytes,
            access: ext4(),
            parameters: Default::default(),
            content_source: None,
        },
    );
    volume.metadata = meta(id.as_str());
    volume
}

/// [`volume`] restored from `snapshot`.
pub fn restored(name: &str, size_bytes: u64, snapshot: &SnapshotId) -> PoolVolume {
    let mut volume = volume(name, size_bytes);
    volume.spec.content_source = Some(ContentSourceSpec {
        snapshot_id: Some(snapshot.to_string()),
        volume_id: None,
    });
    volume
}

/// The PoolSnapshot a controller writes for CSI name `name` of `source`.
pub fn snapshot(name: &str, source: &VolumeId) -> PoolSnapshot {
    let id = ids::snapshot_id(DRIVER, name);
    let mut snapshot = PoolSnapshot::new(
        id.as_str(),
        PoolSnapshotSpec {
            driver: DRIVER.to_owned(),
            node: NODE.to_owned(),
            name: name.to_owned(),
            source_volume_id: source.to_string(),
        },
    );
    snapshot.metadata = meta(id.as_str());
    snapshot
}

/// The volume ID a CSI name maps to.
pub fn volume_id(name: &str) -> VolumeId {
    ids::volume_id(DRIVER, name)
}

pub fn snapshot_id(name: &str) -> SnapshotId {
    ids::snapshot_id(DRIVER, name)
}
