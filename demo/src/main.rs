//! `plinth-demo`: Plinth's main job on one machine, no cluster needed.
//!
//! 1. Starts the driver all-in-one on a temporary pool (in this process, on a real Unix
//!    socket), walks one volume through its life the way kubelet would, then takes a
//!    snapshot, restores it and grows a volume online.
//! 2. Runs the driver as a cluster runs it: a controller-mode and a node-mode driver
//!    talking only through the Kubernetes API (here a stand-in for it), and provisions a
//!    volume through the controller on the node's pool.
//! 3. Shows what the operator would deploy for a sample `CsiDeployment`, and what changes
//!    when a feature is switched off.
//!
//! Everything it creates lives under one temporary directory and is removed at the end,
//! also when a step fails.

mod cluster_walk;
mod render_view;
mod volume_walk;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use plinth_driver::config::{Cli as DriverCli, Config};
use plinth_driver::server;
use tokio::sync::oneshot;

/// Plinth's standalone demo: the driver and the operator's rendering, no cluster needed.
#[derive(Debug, Parser)]
#[command(name = "plinth-demo", version, about)]
struct Args {
    /// Size of the demo volume.
    #[arg(long, default_value = "1GiB", value_parser = plinth_api::parse_size)]
    size: u64,
    /// Filesystem of the demo volume (ext4 or xfs).
    #[arg(long, default_value = "ext4")]
    fs_type: String,
    /// CsiDeployment to render (defaults to the full-featured sample).
    #[arg(long, short = 'f')]
    file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("plinth-demo: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nplinth-demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    preflight()?;
    let work = tempfile::Builder::new()
        .prefix("plinth-demo-")
        .tempdir()
        .context("creating the demo's temporary directory")?;
    let socket_path = work.path().join("csi.sock");
    let pool_dir = work.path().join("pool");
    // The stand-in for kubelet's root directory: the driver serves paths below it only.
    let kubelet_dir = work.path().join("kubelet");
    std::fs::create_dir_all(&kubelet_dir).context("creating the demo's kubelet directory")?;

    let config = Config::from_cli(
        DriverCli::parse_from([
            "plinth-driver",
            "--mode=all-in-one",
            "--node-id=demo-node",
            &format!("--endpoint=unix://{}", socket_path.display()),
            &format!("--pool={}", pool_dir.display()),
            &format!("--kubelet-dir={}", kubelet_dir.display()),
            "--log-level=warn",
        ]),
        None,
    )?;
    println!(
        "Plinth demo: driver {} {} (all-in-one) on pool {}\n",
        config.driver_name,
        env!("CARGO_PKG_VERSION"),
        pool_dir.display()
    );

    let (stop, stopped) = oneshot::channel::<()>();
    let driver_task = tokio::spawn(start_driver(config, stopped));
    let walked = walk(&socket_path, work.path(), &args).await;
    // Stop the driver whatever the walk did, so the socket and pool are released before
    // the temporary directory goes.
    drop(stop);
    let served = driver_task.await.context("the driver task panicked")?;
    walked?;
    served?;

    cluster_walk::show(work.path()).await?;

    println!();
    render_view::show(args.file.as_deref())?;

    work.close()
        .context("removing the demo's temporary directory")?;
    println!("\nDone: the temporary pool, socket and mounts are gone.");
    Ok(())
}

/// The driver's part: one volume's life, then snapshot, restore and expansion. Whatever
/// fails, what the session created is undone before returning.
async fn walk(socket: &std::path::Path, work: &std::path::Path, args: &Args) -> Result<()> {
    let mut session = volume_walk::Session::connect(socket, work).await?;
    let mut walked = session.lifecycle(args.size, &args.fs_type).await;
    if walked.is_ok() {
        walked = session.data_services().await;
    }
    session.clean_up().await;
    walked
}

/// The driver needs root (loop devices, mount) and the mkfs tools: say so up front
/// instead of failing halfway.
fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run the demo as root: the driver attaches loop devices, formats and mounts");
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        bail!("/dev/loop-control is missing: load the loop module (modprobe loop)");
    }
    for tool in ["mkfs.ext4", "mkfs.xfs"] {
        if which(tool).is_none() {
            bail!("{tool} not found: install e2fsprogs and xfsprogs");
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/sbin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// The driver as `plinth-driver --mode all-in-one` runs it, in this process, until `stop`
/// fires (or its sender is dropped).
async fn start_driver(config: Config, stop: oneshot::Receiver<()>) -> Result<()> {
    let shutdown = async {
        let _ = stop.await;
    };
    server::run(config, shutdown).await?;
    Ok(())
}
