//! `plinth-apistub`: serves the stand-in API until SIGTERM or SIGINT.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use plinth_apistub::{ApiStub, DEFAULT_HISTORY_LIMIT};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// A stand-in Kubernetes API server for cluster-scoped custom resources (tests and benchmarks).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server here (for KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch events kept for resuming watches; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = DEFAULT_HISTORY_LIMIT)]
    history_limit: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stub = ApiStub::default()
        .listen(args.listen)
        .history_limit(args.history_limit)
        .serve()
        .await?;
    if let Some(path) = &args.kubeconfig {
        stub.write_kubeconfig(path)?;
    }
    // The URL on stdout is how a parent process learns the ephemeral port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", stub.url()).context("writing the URL to stdout")?;
    stdout.flush().context("writing the URL to stdout")?;
    drop(stdout);
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    stub.shutdown().await;
    Ok(())
}
