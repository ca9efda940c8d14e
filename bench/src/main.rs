//! `plinth-bench`: drives any CSI endpoint through the volume lifecycle and reports
//! per-call latencies. See `plinth-bench --help`.

mod call;
mod cli;
mod csi;
mod data;
mod error;
mod jobs;
mod memory;
mod mounts;
mod report;
mod runner;
#[cfg(test)]
mod scripted_plugin_tests;
mod size;
mod stats;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tmpfs_plugin_tests;
mod volume;
mod workload;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use crate::cli::Args;
use crate::csi::{ControllerCap, Csi, Discovery, ExpansionCap, NodeCap};
use crate::error::Error;
use crate::jobs::Job;
use crate::report::{MemoryReport, Outcome, Report, SuiteReport, chain};
use crate::size::Bytes;
use crate::workload::{AccessKind, Workload};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            let text = if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => json + "\n",
                    Err(err) => {
                        eprintln!("plinth-bench: cannot encode the report: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                report.to_table()
            };
            // A closed pipe (`| head`) is the reader's choice, not a failure to report.
            let mut stdout = std::io::stdout().lock();
            let printed = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            if let Err(err) = printed
                && err.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("plinth-bench: cannot print the report: {err}");
                return ExitCode::FAILURE;
            }
            if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("plinth-bench: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Unique per run, so names never collide with a previous run's leftovers.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("pb-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

fn sample_memory(pid: u32) -> Result<memory::MemorySample, Error> {
    memory::sample(pid).map_err(Error::io(
        "read the memory of",
        format!("/proc/{pid}/status"),
    ))
}

async fn run(args: &Args) -> Result<Report, Error> {
    let csi = Csi::connect(&args.endpoint, args.node_endpoint.as_deref(), args.timeout).await?;
    let discovery = csi.discover().await?;
    if !discovery.controller_can(ControllerCap::CreateDeleteVolume) {
        return Err(Error::Unsupported(format!(
            "{} does not advertise CREATE_DELETE_VOLUME: there is no lifecycle to drive",
            discovery.name
        )));
    }

    let run_id = run_id();
    let run_dir = args.work_dir.join(&run_id);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&run_dir)
            .map_err(Error::io("create", &run_dir))?;
    }

    let memory_before = args.pid.map(sample_memory).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("plinth-bench: stopping; the volumes in flight are being cleaned up");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }

    let mut suites = Vec::new();
    for &access in args.access.kinds() {
        let work = Arc::new(
            Workload::new(
                csi.clone(),
                discovery.clone(),
                access,
                args.fs_type.clone(),
                args.size,
                args.params.iter().cloned().collect(),
                run_dir.clone(),
                run_id.clone(),
            )
            .with_secrets(args.secrets.iter().cloned().collect()),
        );
        let suite = run_suite(args, work, &stop).await;
        let lifecycle_failed = suite.lifecycle.failed();
        suites.push(suite);
        if lifecycle_failed || stop.load(Ordering::Relaxed) {
            break;
        }
    }

    let memory = match (args.pid, memory_before) {
        (Some(pid), Some(before)) => Some(MemoryReport {
            pid,
            before,
            after: sample_memory(pid)?,
        }),
        _ => None,
    };
    if let Err(err) = std::fs::remove_dir(&run_dir) {
        eprintln!(
            "plinth-bench: {} is not empty ({err}): some cleanup failed, see above",
            run_dir.display()
        );
    }

    Ok(Report {
        endpoint: args.endpoint.clone(),
        node_endpoint: args.node_endpoint.clone(),
        driver: discovery.name.clone(),
        vendor_version: discovery.vendor_version.clone(),
        node_id: discovery.node_id.clone(),
        topology: discovery
            .topology
            .as_ref()
            .map(|t| t.segments.clone().into_iter().collect::<BTreeMap<_, _>>()),
        stage_unstage: discovery.node_can(NodeCap::StageUnstageVolume),
        controller_publish: discovery.controller_can(ControllerCap::PublishUnpublishVolume),
        suites,
        memory,
        interrupted: stop.load(Ordering::Relaxed),
    })
}

async fn batch(
    work: &Arc<Workload>,
    job: Job,
    count: u64,
    args: &Args,
    stop: &Arc<AtomicBool>,
) -> Result<runner::Batch, Error> {
    runner::run(
        Arc::clone(work),
        job,
        count,
        usize::from(args.concurrency),
        Arc::clone(stop),
    )
    .await
}

fn failed(err: &Error) -> Outcome {
    Outcome::Failed { error: chain(err) }
}

async fn run_suite(args: &Args, work: Arc<Workload>, stop: &Arc<AtomicBool>) -> SuiteReport {
    let mut suite = SuiteReport {
        access: work.access,
        fs_type: (work.access == AccessKind::Mount).then(|| work.fs_type.clone()),
        size_bytes: work.size,
        warmup: args.warmup,
        iterations: args.iterations,
        concurrency: usize::from(args.concurrency),
        lifecycle: Outcome::Skipped {
            reason: "not run".into(),
        },
        snapshots: None,
        expansion: None,
    };
    eprintln!(
        "plinth-bench: {} lifecycle: {} warm-up + {} measured cycles",
        work.access, args.warmup, args.iterations
    );
    suite.lifecycle = match batch(&work, Job::Lifecycle, args.warmup, args, stop).await {
        Err(err) => failed(&err),
        Ok(_) => match batch(&work, Job::Lifecycle, args.iterations, args, stop).await {
            Ok(measured) => Outcome::ran(&measured, None),
            Err(err) => failed(&err),
        },
    };
    let lifecycle_ok = !suite.lifecycle.failed();

    if args.snapshots {
        suite.snapshots = Some(if !lifecycle_ok {
            Outcome::Skipped {
                reason: "the lifecycle failed".into(),
            }
        } else if !work
            .discovery
            .controller_can(ControllerCap::CreateDeleteSnapshot)
        {
            Outcome::Skipped {
                reason: "the plugin does not advertise CREATE_DELETE_SNAPSHOT".into(),
            }
        } else {
            eprintln!(
                "plinth-bench: {} snapshots: {} runs",
                work.access, args.iterations
            );
            match batch(&work, Job::Snapshot, args.iterations, args, stop).await {
                Ok(done) => Outcome::ran(
                    &done,
                    Some("1 MiB written before each snapshot, read back intact from each restored volume".to_owned()),
                ),
                Err(err) => failed(&err),
            }
        });
    }

    if args.expand {
        suite.expansion = Some(expansion(args, &work, lifecycle_ok, stop).await);
    }
    suite
}

async fn expansion(
    args: &Args,
    work: &Arc<Workload>,
    lifecycle_ok: bool,
    stop: &Arc<AtomicBool>,
) -> Outcome {
    let d: &Discovery = &work.discovery;
    if !lifecycle_ok {
        return Outcome::Skipped {
            reason: "the lifecycle failed".into(),
        };
    }
    if !d.controller_can(ControllerCap::ExpandVolume) && !d.node_can(NodeCap::ExpandVolume) {
        return Outcome::Skipped {
            reason: "the plugin advertises EXPAND_VOLUME neither on the controller nor on the node"
                .into(),
        };
    }
    // OFFLINE is the safe reading when the plugin does not say ONLINE: it is what the
    // CO would have to do anyway.
    let online = d.expansion.contains(&ExpansionCap::Online);
    eprintln!(
        "plinth-bench: {} expansion ({}): {} runs",
        work.access,
        if online { "online" } else { "offline" },
        args.iterations
    );
    match batch(work, Job::Expand { online }, args.iterations, args, stop).await {
        Ok(done) => Outcome::ran(
            &done,
            Some(format!(
                "{} expansion from {} to {}; the size the workload sees was checked after each",
                if online {
                    "online (while published)"
                } else {
                    "offline (unpublished, then republished)"
                },
                Bytes(work.size),
                Bytes(work.size.saturating_mul(2)),
            )),
        ),
        Err(err) => failed(&err),
    }
}
