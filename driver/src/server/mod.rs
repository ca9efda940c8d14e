//! Running the driver: the socket, the pool opened in the background, the mode's CSI
//! services, graceful shutdown. `plinth-driver` and the demo both start here.

pub mod socket;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plinth_csi_proto::v1;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use self::socket::SocketError;
use crate::cluster::{self, Cluster};
use crate::config::{Config, Mode};
use crate::csi::controller::ControllerService;
use crate::csi::group::GroupControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::error::{Error, chain};
use crate::state::Driver;
use crate::storage::pool::{Pool, PoolError};
use crate::storage::snapshot::SnapshotStore;
use crate::storage::{ephemeral, freeze, grow};

/// Delay between attempts to open a pool that is not usable yet.
const POOL_RETRY: Duration = Duration::from_secs(5);

/// Why the driver could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen")]
    Listen(#[from] SocketError),
    #[error("server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("cluster mode needs the Kubernetes API: no in-cluster or KUBECONFIG configuration")]
    Kube(#[source] kube::Error),
    #[error("cluster mode ({0:?}) needs a Kubernetes API client")]
    NoClient(Mode),
    #[error("cannot serve this pool")]
    Pool(#[source] PoolError),
}

/// Runs the driver until `shutdown` resolves. In cluster mode the API client comes from
/// the pod's service account or KUBECONFIG.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let client = if config.mode.is_cluster() {
        Some(kube::Client::try_default().await.map_err(RunError::Kube)?)
    } else {
        None
    };
    run_with(config, client, shutdown).await
}

/// [`run`] with the API client given (cluster mode; ignored all-in-one). The socket is
/// bound first, so kubelet and the sidecars can connect at once (Probe says not ready
/// until the pool is open); the pool is opened in the background and retried; the
/// socket is removed on the way out.
pub async fn run_with(
    config: Config,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        driver = %config.driver_name,
        node_id = %config.node_id,
        mode = ?config.mode,
        features = ?config.features,
        socket = %config.socket.display(),
        pool = %config.pool.display(),
        "starting"
    );
    let (listener, socket_guard) = socket::bind(&config.socket)?;
    if config.mode.serves_node() && config.features.expansion && !grow::can_grow_ext4_online() {
        tracing::warn!(
            "CAP_SYS_RESOURCE is not effective: mounted ext4 volumes cannot grow online here \
             (NodeExpandVolume answers FAILED_PRECONDITION for them); xfs and block volumes can. \
             Run the node plugin privileged."
        );
    }
    let grace = config.shutdown_grace;
    let cluster = match (config.mode.is_cluster(), client) {
        (false, _) => None,
        (true, Some(client)) => Some(Cluster::new(client, &config)),
        (true, None) => return Err(RunError::NoClient(config.mode)),
    };
    let driver = Driver::new(config);
    if let Some(cluster) = cluster {
        driver.set_cluster(cluster);
    }
    let mut background = tokio::spawn(background(driver.clone()));
    // A pool that is not ours to serve stops the driver; everything else in the
    // background is retried there.
    let mut fatal = None;
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            Ok(Err(error)) = &mut background => fatal = Some(error),
        }
    };
    let served = serve(driver, listener, stop, grace).await;
    background.abort();
    drop(socket_guard);
    if let Some(error) = fatal {
        return Err(RunError::Pool(error));
    }
    Ok(served?)
}

/// What runs beside the CSI server: the pool being opened (the controller of a cluster
/// has none), then the node plugin's cluster agent. Ends with an error only when the
/// pool can never be this driver's.
async fn background(driver: Arc<Driver>) -> Result<(), PoolError> {
    let mode = driver.config.mode;
    if mode.serves_node() {
        open_pool(driver.clone()).await?;
    }
    if mode == Mode::Node {
        cluster::agent::run(driver.storage().clone(), driver.cluster()).await;
    }
    Ok(())
}

/// Opens (and recovers) the pool, retrying until it works: a pool on a volume that is
/// mounted late should not need a restart. A pool another driver holds is refused at
/// once: waiting could only end with two owners.
async fn open_pool(driver: Arc<Driver>) -> Result<(), PoolError> {
    loop {
        let dir = driver.config.pool.clone();
        let reserve = driver.config.pool_reserve;
        match tokio::task::spawn_blocking(move || open_storage(&dir, reserve)).await {
            Ok(Ok((pool, snapshots))) => {
                driver.set_snapshots(snapshots);
                driver.set_pool(pool);
                tracing::info!("pool ready");
                return Ok(());
            }
            Ok(Err(Error::Pool(busy @ PoolError::Busy { .. }))) => {
                tracing::error!(error = %busy, "refusing to start");
                return Err(busy);
            }
            Ok(Err(error)) => {
                tracing::error!(error = %chain(&error), "cannot open the pool; retrying");
            }
            Err(error) => tracing::error!(%error, "pool open task failed; retrying"),
        }
        tokio::time::sleep(POOL_RETRY).await;
    }
}

/// The pool, its snapshots, and no filesystem left frozen by a crash mid-snapshot.
fn open_storage(dir: &Path, reserve: u64) -> Result<(Pool, SnapshotStore), Error> {
    let pool = Pool::open(dir, reserve)?;
    let staged: Vec<_> = pool
        .recovery()
        .in_use
        .iter()
        .map(|(_, dev)| dev.clone())
        .collect();
    freeze::thaw_after_crash(&staged)?;
    let locked =
        crate::storage::crypt::fscrypt::recover(&pool, &crate::mount::mountinfo::read_self()?)?;
    if !locked.is_empty() {
        tracing::info!(
            count = locked.len(),
            "keys of encrypted volumes that are not staged removed"
        );
    }
    let orphans = ephemeral::collect_orphans(&pool)?;
    if !orphans.is_empty() {
        tracing::info!(count = orphans.len(), "inline volumes of gone pods deleted");
    }
    let snapshots = SnapshotStore::open(&pool)?;
    let fs = snapshots.filesystem();
    tracing::info!(pool_filesystem = %fs.kind, copy = fs.copy_method(), "snapshots ready");
    Ok((pool, snapshots))
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight calls finish
/// for at most `grace`, and returns.
pub async fn serve(
    driver: Arc<Driver>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let mode = driver.config.mode;
    let identity = v1::identity_server::IdentityServer::new(IdentityService::new(driver.clone()));
    let controller = mode.serves_controller().then(|| {
        v1::controller_server::ControllerServer::new(ControllerService::new(driver.clone()))
    });
    let node = mode
        .serves_node()
        .then(|| v1::node_server::NodeServer::new(NodeService::new(driver.clone())));
    // Served exactly when GROUP_CONTROLLER_SERVICE is advertised.
    let group = (mode.serves_controller() && driver.caps.can_group_snapshot()).then(|| {
        v1::group_controller_server::GroupControllerServer::new(GroupControllerService::new(
            driver.clone(),
        ))
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = Server::builder()
        .add_service(identity)
        .add_optional_service(controller)
        .add_optional_service(node)
        .add_optional_service(group)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result,
        () = shutdown => {}
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down: draining in-flight calls"
    );
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, &mut serving).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("in-flight calls still running after the grace period; exiting anyway");
            Ok(())
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
