//! `plinth-operator run`: the controller, its HTTP endpoints and leader election.
//!
//! With `--leader-elect`, every replica serves `/healthz`, `/readyz` and `/metrics`, but
//! only the holder of the Lease runs the controller, so two replicas never reconcile at
//! once. `/readyz` fails while the running controller has a watch that is not live (the
//! API server is down, or a watch is relisting); `/healthz` fails once that, or a
//! reconcile in flight, has lasted past `--wedged-after-seconds`, so the kubelet restarts
//! an operator that would otherwise sit deaf (see [`crate::health`]). SIGTERM (or Ctrl-C) stops the controller after its in-flight reconciles, releases
//! the Lease so a standby takes over at once, and stops the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::Client;
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::health::{DEFAULT_WEDGED_AFTER, Health, Verdict};
use crate::metrics::{self, Metrics};
use crate::reconcile::{FIELD_MANAGER, controller};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options of `plinth-operator run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "PLINTH_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Run the controller only while holding a Lease, so several replicas are safe.
    #[arg(long)]
    pub leader_elect: bool,

    /// Namespace of the Lease (the operator's own; set from the downward API).
    /// Default: the kubeconfig's or service account's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the Lease.
    #[arg(long, default_value = "plinth-operator-leader")]
    pub lease_name: String,

    /// This replica's identity in the Lease and in Events (the pod name).
    /// Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal; a crashed leader is replaced after this.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,

    /// Seconds after which a watch that stays down, or a reconcile that has not finished,
    /// makes /healthz fail (so the kubelet restarts a wedged operator).
    #[arg(long, default_value_t = DEFAULT_WEDGED_AFTER.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub wedged_after_seconds: u64,

    /// Log format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Image of the probe Job's container (`plinth-operator probe`): this operator's own
    /// image, which the Deployment passes in (a mirror rewrites both).
    #[arg(long, env = "PLINTH_PROBE_IMAGE", default_value_t = crate::generate::manager::operator_image())]
    pub probe_image: String,
}

/// Entry point of the subcommand: sets up logging and the runtime, then runs.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    // Two workers are plenty for an I/O-bound controller and keep the footprint small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        eprintln!("logging already initialised: {err}");
    }
}

/// How long a request may wait for the next bytes of its answer: a server that vanished
/// without closing the connection fails the request instead of holding it forever. Longer
/// than a watch's server-side timeout, so a quiet watch ends before it.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What the HTTP endpoints report.
struct Endpoints {
    health: Health,
    registry: Registry,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Health::new(Duration::from_secs(args.wedged_after_seconds));
    let endpoints = Arc::new(Endpoints {
        health: health.clone(),
        registry,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(forward_signals(stop_tx));

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    info!(addr = %args.http_addr, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(serve(listener, endpoints, stopped(stop_rx.clone())));

    let mut config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    config.read_timeout = Some(READ_TIMEOUT);
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the API server")?;
    info!(version = %version.git_version, "connected to the API server");
    health.set_connected();

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: Some(identity.clone()),
    };
    let result = if args.leader_elect {
        lead_then_run(&args, client, metrics, reporter, health, identity, stop_rx).await
    } else {
        run_controller(
            client,
            metrics,
            reporter,
            health,
            args.probe_image.clone(),
            stop_rx,
        )
        .await;
        Ok(())
    };
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "HTTP server"),
        Err(err) => warn!(error = %err, "HTTP server task"),
    }
    info!("stopped");
    result
}

/// Runs the controller until shutdown is requested.
async fn run_controller(
    client: Client,
    metrics: Metrics,
    reporter: Reporter,
    health: Health,
    probe_image: String,
    stop: watch::Receiver<bool>,
) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(
        client,
        metrics,
        reporter,
        health,
        probe_image,
        async {
            let _ = rx.await;
        },
    ));
    stopped(stop).await;
    let _ = tx.send(());
    if let Err(err) = task.await {
        error!(error = %err, "controller task");
    }
}

/// Waits for the Lease, runs the controller while holding it, and waits again after
/// losing it; returns on shutdown (releasing the Lease).
async fn lead_then_run(
    args: &RunArgs,
    client: Client,
    metrics: Metrics,
    reporter: Reporter,
    health: Health,
    identity: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration)
        .with_grace(args.lease_duration.div_ceil(3).max(1))
        .with_field_manager(format!("{FIELD_MANAGER}-lease"))
        .build()
        .await
        .with_context(|| format!("preparing Lease {namespace}/{}", args.lease_name))?;
    let (mut leading, lease_task) = manager.watch().await;
    info!(lease = %format!("{namespace}/{}", args.lease_name), %identity, "waiting for leadership");
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = leading.wait_for(|l| *l) => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
            }
        }
        info!("acquired leadership: starting the controller");
        metrics.leader.set(1);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(
            client.clone(),
            metrics.clone(),
            reporter.clone(),
            health.clone(),
            args.probe_image.clone(),
            async {
                let _ = rx.await;
            },
        ));
        let shutting_down = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = leading.wait_for(|l| !*l) => {
                warn!("lost leadership: stopping the controller");
                false
            }
        };
        let _ = tx.send(());
        if let Err(err) = task.await {
            error!(error = %err, "controller task");
        }
        metrics.leader.set(0);
        if shutting_down {
            break;
        }
    }
    // Dropping the receiver makes the lease task release the Lease and end.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the Lease"),
        Ok(Err(err)) => warn!(error = %err, "releasing the Lease"),
        Err(err) => warn!(error = %err, "lease task"),
    }
    Ok(())
}

fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("plinth-operator-{}", std::process::id()))
}

/// Resolves once shutdown was requested.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Turns SIGTERM / SIGINT into the shutdown flag.
async fn forward_signals(stop: watch::Sender<bool>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
    }
    let _ = stop.send(true);
}

async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Arc<Endpoints>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    match metrics::render(&endpoints.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode metrics".to_owned(),
        ),
    }
}

fn answer(verdict: Verdict) -> (StatusCode, String) {
    match verdict {
        Verdict::Ok => (StatusCode::OK, "ok".to_owned()),
        Verdict::Failing(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(endpoints): State<Arc<Endpoints>>) -> (StatusCode, String) {
    answer(endpoints.health.readiness())
}

async fn healthz(State(endpoints): State<Arc<Endpoints>>) -> (StatusCode, String) {
    answer(endpoints.health.liveness())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response[9..12].parse().unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_report_liveness_readiness_and_metrics_then_shut_down() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe_reconcile(std::time::Duration::from_millis(2), None);
        let health = Health::new(Duration::from_millis(50));
        let endpoints = Arc::new(Endpoints {
            health: health.clone(),
            registry,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, endpoints, stopped(stop_rx)));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        health.set_connected();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let watch = health.watch("csideployments");
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "watch csideployments: not listed yet\n")
        );
        watch.synced();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        watch.failed(&"connection reset");
        assert_eq!(get(addr, "/readyz").await.0, 503);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("watch csideployments not live"), "{body}");
        watch.synced();
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("plinth_operator_reconciles_total 1"),
            "{body}"
        );
        assert!(body.contains("plinth_operator_leader 0"), "{body}");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
