//! The results, as a table for people or JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::call::Call;
use crate::memory::MemorySample;
use crate::runner::Batch;
use crate::size::Bytes;
use crate::stats::Summary;
use crate::workload::AccessKind;

/// An error with all its causes, `outer: inner: innermost`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // A Status is already spelled out (code and message) by the error wrapping it;
        // only what lies beneath it (a transport error) adds anything.
        if !cause.is::<tonic::Status>() {
            let _ = write!(text, ": {cause}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn chains_causes_without_repeating_the_status() {
        let err = Error::Rpc {
            call: Call::NodeStageVolume,
            status: tonic::Status::internal("mkfs failed"),
        };
        assert_eq!(
            chain(&err),
            "NodeStageVolume failed with Internal: mkfs failed"
        );

        let io =
            Error::io("create", "/x")(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(chain(&io), "cannot create /x: permission denied");
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub endpoint: String,
    pub node_endpoint: Option<String>,
    pub driver: String,
    pub vendor_version: String,
    pub node_id: String,
    pub topology: Option<BTreeMap<String, String>>,
    pub stage_unstage: bool,
    pub controller_publish: bool,
    pub suites: Vec<SuiteReport>,
    pub memory: Option<MemoryReport>,
    /// Ctrl-C stopped the run early; the figures cover what completed.
    pub interrupted: bool,
}

#[derive(Debug, Serialize)]
pub struct SuiteReport {
    pub access: AccessKind,
    pub fs_type: Option<String>,
    pub size_bytes: u64,
    pub warmup: u64,
    pub iterations: u64,
    pub concurrency: usize,
    pub lifecycle: Outcome,
    /// Absent when not asked for with `--snapshots`.
    pub snapshots: Option<Outcome>,
    /// Absent when not asked for with `--expand`.
    pub expansion: Option<Outcome>,
}

#[derive(Debug, Serialize)]
pub struct CallSummary {
    pub call: &'static str,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Ran {
        completed: u64,
        wall_seconds: f64,
        /// Completed runs per second of wall time (cycles per second for the lifecycle).
        per_second: f64,
        calls: Vec<CallSummary>,
        /// Whole lifecycle cycles; only for the lifecycle suite.
        cycle: Option<Summary>,
        note: Option<String>,
    },
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

impl Outcome {
    pub fn ran(batch: &Batch, note: Option<String>) -> Self {
        let wall = batch.wall.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let per_second = if wall > 0.0 {
            batch.completed as f64 / wall
        } else {
            0.0
        };
        Self::Ran {
            completed: batch.completed,
            wall_seconds: wall,
            per_second,
            calls: batch
                .recorder
                .call_summaries()
                .into_iter()
                .map(|(call, summary): (Call, Summary)| CallSummary {
                    call: call.name(),
                    summary,
                })
                .collect(),
            cycle: batch.recorder.cycle_summary(),
            note,
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub pid: u32,
    pub before: MemorySample,
    pub after: MemorySample,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.suites.iter().any(|s| {
            s.lifecycle.failed()
                || s.snapshots.as_ref().is_some_and(Outcome::failed)
                || s.expansion.as_ref().is_some_and(Outcome::failed)
        })
    }
}

/// The memory target the driver is held to.
const RSS_TARGET_KIB: u64 = 8 * 1024;

fn row(out: &mut String, label: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "  {label:<30} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    );
}

fn outcome(out: &mut String, title: &str, outcome: &Outcome, unit: &str) {
    match outcome {
        Outcome::Skipped { reason } => {
            let _ = writeln!(out, "\n{title}: skipped: {reason}");
        }
        Outcome::Failed { error } => {
            let _ = writeln!(out, "\n{title}: FAILED: {error}");
        }
        Outcome::Ran {
            completed,
            wall_seconds,
            per_second,
            calls,
            cycle,
            note,
        } => {
            let _ = writeln!(out, "\n{title}: {completed} {unit}");
            if let Some(note) = note {
                let _ = writeln!(out, "  {note}");
            }
            let _ = writeln!(
                out,
                "  {:<30} {:>6} {:>9} {:>9} {:>9} {:>9}",
                "call (ms)", "n", "p50", "p90", "p99", "max"
            );
            for call in calls {
                row(out, call.call, &call.summary);
            }
            if let Some(cycle) = cycle {
                row(out, "full cycle", cycle);
            }
            let _ = writeln!(out, "  {per_second:.2} {unit}/s over {wall_seconds:.2} s");
        }
    }
}

impl Report {
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plinth-bench: {} {} at {}{}",
            self.driver,
            self.vendor_version,
            self.endpoint,
            self.node_endpoint
                .as_deref()
                .map(|n| format!(" (node plugin at {n})"))
                .unwrap_or_default()
        );
        let topology = match &self.topology {
            Some(segments) if !segments.is_empty() => segments
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            _ => "none".into(),
        };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "node {}, topology {topology}, stage/unstage {}, controller publish {}",
            self.node_id,
            yes_no(self.stage_unstage),
            yes_no(self.controller_publish)
        );
        for suite in &self.suites {
            let fs = suite
                .fs_type
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "\n== {}{fs}, {} volumes, {} iterations after {} warm-up, concurrency {}",
                suite.access,
                Bytes(suite.size_bytes),
                suite.iterations,
                suite.warmup,
                suite.concurrency
            );
            outcome(&mut out, "lifecycle", &suite.lifecycle, "cycles");
            if let Some(snapshots) = &suite.snapshots {
                outcome(&mut out, "snapshots", snapshots, "runs");
            }
            if let Some(expansion) = &suite.expansion {
                outcome(&mut out, "expansion", expansion, "runs");
            }
        }
        if let Some(mem) = &self.memory {
            let kib = |k: u64| Bytes(k * 1024);
            let verdict = if mem.after.vm_hwm_kib <= RSS_TARGET_KIB {
                "within"
            } else {
                "ABOVE"
            };
            let _ = writeln!(
                out,
                "\ndriver memory (pid {}): VmRSS {} -> {}, VmHWM {} -> {} ({verdict} the {} target)",
                mem.pid,
                kib(mem.before.vm_rss_kib),
                kib(mem.after.vm_rss_kib),
                kib(mem.before.vm_hwm_kib),
                kib(mem.after.vm_hwm_kib),
                kib(RSS_TARGET_KIB),
            );
        }
        if self.interrupted {
            let _ = writeln!(
                out,
                "\ninterrupted: the figures cover the runs that completed"
            );
        }
        out
    }
}
