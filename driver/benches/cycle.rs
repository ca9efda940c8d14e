//! Library-level volume cycle latency: create, stage (ext4), publish, unpublish,
//! unstage, delete of a 1 GiB volume, 200 iterations, for both formatting strategies.
//!
//! `cargo bench -p plinth-driver --bench cycle` (root; uses loop devices and mounts).
//! Set `PLINTH_BENCH_DIR` to put the pool on another filesystem (default: temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_driver::mount::FsType;
use plinth_driver::storage::pool::{CapacityRange, CreateVolumeRequest, Pool, VolumeAccess};
use plinth_driver::storage::volume::{Formatting, NodeAccess, NodeVolumes};

const ITERATIONS: usize = 200;
const SIZE: u64 = 1 << 30;
const STEPS: [&str; 6] = [
    "create",
    "stage",
    "publish",
    "unpublish",
    "unstage",
    "delete",
];

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cycle bench needs root (loop devices, mount)"
    );
    // `cargo bench` passes `--bench`; nothing else to parse.
    let base = std::env::var_os("PLINTH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    for formatting in [Formatting::Mkfs, Formatting::Templates] {
        let dir = tempfile::Builder::new()
            .prefix("plinth-bench-")
            .tempdir_in(&base)
            .expect("bench dir");
        run(dir.path(), formatting);
    }
}

fn run(dir: &Path, formatting: Formatting) {
    let pool = Arc::new(Pool::open(dir.join("pool"), 0).expect("open pool"));
    let node = NodeVolumes::with_formatting(pool.clone(), formatting);
    let access = NodeAccess::Mount {
        fs_type: Some(FsType::Ext4),
        mount_flags: vec![],
    };
    let mut totals = Vec::with_capacity(ITERATIONS);
    let mut steps: Vec<Vec<Duration>> = vec![Vec::with_capacity(ITERATIONS); STEPS.len()];
    for i in 0..ITERATIONS {
        let staging = dir.join(format!("staging/{i}"));
        let target = dir.join(format!("target/{i}"));
        let request = CreateVolumeRequest {
            name: format!("bench-{i}"),
            id: None,
            capacity: CapacityRange::new(SIZE, 0),
            access: VolumeAccess::Mount {
                fs_type: FsType::Ext4,
            },
            parameters: Default::default(),
            content_source: None,
        };
        let mut marks = [Duration::ZERO; STEPS.len()];
        let start = Instant::now();
        let mut lap = Instant::now();
        let mut mark = |k: usize| {
            marks[k] = lap.elapsed();
            lap = Instant::now();
        };
        let (v, _) = pool.create_volume(&request).expect("create");
        mark(0);
        node.stage(&v.id, &staging, &access, false).expect("stage");
        mark(1);
        node.publish(&v.id, &staging, &target, &access, false)
            .expect("publish");
        mark(2);
        node.unpublish(&v.id, &target).expect("unpublish");
        mark(3);
        node.unstage(&v.id, &staging).expect("unstage");
        mark(4);
        pool.delete_volume(&v.id).expect("delete");
        mark(5);
        totals.push(start.elapsed());
        for (k, d) in marks.into_iter().enumerate() {
            steps[k].push(d);
        }
    }
    println!(
        "formatting={formatting:?} size=1GiB iterations={ITERATIONS} pool={}",
        dir.display()
    );
    println!("  {:<10} {:>9} {:>9}", "step", "p50", "p99");
    for (name, samples) in STEPS.iter().zip(steps.iter_mut()) {
        print_row(name, samples);
    }
    print_row("cycle", &mut totals);
}

fn print_row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "  {:<10} {:>7.2}ms {:>7.2}ms",
        name,
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3
    );
}
