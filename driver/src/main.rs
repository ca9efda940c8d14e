//! `plinth-driver`: the CSI driver binary.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use plinth_driver::config::{Cli, Config, LogFormat};
use plinth_driver::error::chain;
use plinth_driver::pool::Pool;
use plinth_driver::state::Driver;
use plinth_driver::{server, socket};

/// Blocking work (mkfs, mount, loop ioctls) runs on at most this many threads: enough
/// for concurrent volumes, small enough to keep the driver's memory flat.
const MAX_BLOCKING_THREADS: usize = 16;
/// Delay between attempts to open a pool that is not usable yet.
const POOL_RETRY: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    let config = match Config::from_cli(cli, std::env::var("KUBE_NODE_NAME").ok()) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.shutdown_grace;
    let code = runtime.block_on(run(config));
    // Blocking work still running (a slow mkfs) gets the same grace, then is abandoned:
    // everything it does is recovered by the next start.
    runtime.shutdown_timeout(grace);
    code
}

async fn run(config: Config) -> ExitCode {
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
    // Bind first so kubelet and the sidecars can connect at once; Probe says not ready
    // until the pool is open.
    let (listener, socket_guard) = match socket::bind(&config.socket) {
        Ok(bound) => bound,
        Err(error) => {
            tracing::error!(error = %chain(&error), "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.shutdown_grace;
    let driver = Driver::new(config);
    tokio::spawn(open_pool(driver.clone()));

    let shutdown = async {
        if let Err(error) = server::termination().await {
            tracing::error!(%error, "cannot install signal handlers");
        }
    };
    let result = server::serve(driver, listener, shutdown, grace).await;
    drop(socket_guard);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = %chain(&error), "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Opens (and recovers) the pool, retrying until it works: a pool on a volume that is
/// mounted late should not need a restart.
async fn open_pool(driver: Arc<Driver>) {
    loop {
        let dir = driver.config.pool.clone();
        let reserve = driver.config.pool_reserve;
        match tokio::task::spawn_blocking(move || Pool::open(dir, reserve)).await {
            Ok(Ok(pool)) => {
                driver.set_pool(pool);
                tracing::info!("pool ready");
                return;
            }
            Ok(Err(error)) => {
                tracing::error!(error = %chain(&error), "cannot open the pool; retrying");
            }
            Err(error) => tracing::error!(%error, "pool open task failed; retrying"),
        }
        tokio::time::sleep(POOL_RETRY).await;
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
