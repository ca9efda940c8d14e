//! Command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::size::parse_size;
use crate::workload::AccessKind;

/// Drives a CSI plugin through the whole volume lifecycle, the way kubelet and the
/// kubernetes-csi sidecars do, and reports per-call latencies.
///
/// Run it as root on the node where the plugin runs: the plugin mounts into
/// `--work-dir`, and the benchmark checks what it finds there.
#[derive(Debug, Parser)]
#[command(name = "plinth-bench", version)]
pub struct Args {
    /// The plugin's socket: `unix:///path/csi.sock` (controller, or all-in-one).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: String,

    /// The node plugin's socket, when it is a separate process.
    #[arg(long)]
    pub node_endpoint: Option<String>,

    /// Measured lifecycle cycles per access type (and runs per extra phase).
    #[arg(long, default_value_t = 20)]
    pub iterations: u64,

    /// Cycles run first and not measured (caches, lazy initialisation).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,

    /// Requested volume size, e.g. `1GiB`, `512Mi`, `10G`.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,

    /// Filesystem for mount volumes (VolumeCapability.mount.fs_type).
    #[arg(long, default_value = "ext4")]
    pub fs_type: String,

    #[arg(long, value_enum, default_value_t = Access::Mount)]
    pub access: Access,

    /// Where staging and target paths are created (the stand-in for kubelet's root
    /// directory; plinth-driver's `--kubelet-dir` must name it or a parent). A per-run
    /// subdirectory is used and removed afterwards.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("plinth-bench"))]
    pub work_dir: PathBuf,

    /// CreateVolume parameter (StorageClass parameter), repeatable: `--param k=v`.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,

    /// Secret sent in every call that carries secrets (CreateVolume, NodeStageVolume,
    /// NodePublishVolume, expansion, snapshots, deletion), repeatable: `--secret k=v`.
    /// E.g. an encrypted class: `--param encryption=fscrypt --secret
    /// encryptionKey="$(head -c 32 /dev/urandom | base64)"`. For benchmarks only: a value
    /// on a command line is visible to the node's other users.
    #[arg(long = "secret", value_parser = parse_param)]
    pub secrets: Vec<(String, String)>,

    /// Driver process whose VmRSS/VmHWM are sampled before and after the run.
    #[arg(long)]
    pub pid: Option<u32>,

    /// Cycles in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Also time CreateSnapshot, restore (CreateVolume from snapshot) and DeleteSnapshot.
    #[arg(long)]
    pub snapshots: bool,

    /// Also time ControllerExpandVolume and NodeExpandVolume (to twice --size).
    #[arg(long)]
    pub expand: bool,

    /// Per-call timeout in seconds.
    #[arg(long, default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Access {
    Mount,
    Block,
    Both,
}

impl Access {
    pub fn kinds(self) -> &'static [AccessKind] {
        match self {
            Self::Mount => &[AccessKind::Mount],
            Self::Block => &[AccessKind::Block],
            Self::Both => &[AccessKind::Mount, AccessKind::Block],
        }
    }
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not key=value")),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a positive number of seconds")),
        Ok(secs) => Ok(Duration::from_secs(secs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_key_value() {
        assert_eq!(
            parse_param("fsType=xfs"),
            Ok(("fsType".into(), "xfs".into()))
        );
        assert_eq!(parse_param("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_param("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=v").is_err());
    }

    #[test]
    fn full_command_line_parses() {
        let args = Args::try_parse_from([
            "plinth-bench",
            "--endpoint",
            "unix:///tmp/x.sock",
            "--iterations",
            "5",
            "--warmup",
            "0",
            "--size",
            "256MiB",
            "--access",
            "both",
            "--param",
            "a=1",
            "--param",
            "b=2",
            "--pid",
            "42",
            "--concurrency",
            "4",
            "--snapshots",
            "--expand",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.size, 256 << 20);
        assert_eq!(args.access.kinds(), [AccessKind::Mount, AccessKind::Block]);
        assert_eq!(
            args.params,
            [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
        assert_eq!(
            (
                args.pid,
                args.concurrency,
                args.snapshots,
                args.expand,
                args.json
            ),
            (Some(42), 4, true, true, true)
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let base = ["plinth-bench", "--endpoint", "unix:///x.sock"];
        for extra in [
            &["--size", "0"][..],
            &["--size", "lots"],
            &["--concurrency", "0"],
            &["--timeout", "0"],
            &["--access", "file"],
            &["--param", "x"],
        ] {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            assert!(
                Args::try_parse_from(&argv).is_err(),
                "{argv:?} should be refused"
            );
        }
    }
}
