//! Serving the mode's CSI services on the Unix socket, with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plinth_csi_proto::v1;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::controller::ControllerService;
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::state::Driver;

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

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = Server::builder()
        .add_service(identity)
        .add_optional_service(controller)
        .add_optional_service(node)
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
