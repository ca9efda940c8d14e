//! Runs a job many times over a fixed number of concurrent workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::error::Error;
use crate::jobs::Job;
use crate::stats::Recorder;
use crate::workload::Workload;

pub struct Batch {
    pub recorder: Recorder,
    pub completed: u64,
    pub wall: Duration,
}

/// Runs `job` `count` times, `concurrency` at a time. A failure stops new runs, waits
/// for the runs in flight (each cleans up after itself) and returns the first error.
/// `stop` (set on Ctrl-C) ends the batch early without an error.
pub async fn run(
    work: Arc<Workload>,
    job: Job,
    count: u64,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> Result<Batch, Error> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(concurrency.max(1));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (work, next, stop, failed) = (
            Arc::clone(&work),
            Arc::clone(&next),
            Arc::clone(&stop),
            Arc::clone(&failed),
        );
        set.spawn(async move {
            let mut mine = Recorder::default();
            let mut completed = 0u64;
            while !stop.load(Ordering::Relaxed) && !failed.load(Ordering::Relaxed) {
                if next.fetch_add(1, Ordering::Relaxed) >= count {
                    break;
                }
                if let Err(err) = job.run(&work, &mut mine).await {
                    failed.store(true, Ordering::Relaxed);
                    return Err(err);
                }
                completed += 1;
            }
            Ok((mine, completed))
        });
    }

    let mut batch = Batch {
        recorder: Recorder::default(),
        completed: 0,
        wall: Duration::ZERO,
    };
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((recorder, completed))) => {
                batch.recorder.merge(recorder);
                batch.completed += completed;
            }
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            // A panicking worker is a bug in the benchmark itself: surface it as such.
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    batch.wall = started.elapsed();
    match first_error {
        Some(err) => Err(err),
        None => Ok(batch),
    }
}
