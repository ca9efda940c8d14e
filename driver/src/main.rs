//! `plinth-driver`: the CSI driver binary.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use plinth_driver::config::{Cli, Config, LogFormat};
use plinth_driver::error::chain;
use plinth_driver::server;
use plinth_driver::storage::freeze;

/// Blocking work (mkfs, mount, loop ioctls) runs on at most this many threads: enough
/// for concurrent volumes, small enough to keep the driver's memory flat.
const MAX_BLOCKING_THREADS: usize = 16;

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
    // everything it does is recovered by the next start. A copy abandoned mid-snapshot
    // must not leave its pod's filesystem frozen until then.
    runtime.shutdown_timeout(grace);
    freeze::thaw_all();
    code
}

async fn run(config: Config) -> ExitCode {
    let shutdown = async {
        if let Err(error) = server::termination().await {
            tracing::error!(%error, "cannot install signal handlers");
        }
    };
    match server::run(config, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = %chain(&error), "driver failed");
            ExitCode::FAILURE
        }
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
