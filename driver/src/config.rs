//! Command line and environment configuration of `plinth-driver`.
//!
//! [`Cli`] is what clap parses; [`Config::from_cli`] turns it into a validated [`Config`]
//! so that nothing downstream re-checks flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use plinth_api::{DriverFeatures, Feature, parse_size};

/// The driver name Kubernetes knows the built-in driver by.
pub const DEFAULT_DRIVER_NAME: &str = "local.csi.plinth.dev";
/// The topology key whose value is the node ID.
pub const DEFAULT_TOPOLOGY_KEY: &str = "topology.local.csi.plinth.dev/node";

/// Which CSI services this process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Identity, Controller and Node on the local pool (standalone and conformance runs).
    AllInOne,
    /// Identity and Controller (the StatefulSet pod).
    Controller,
    /// Identity and Node (the DaemonSet pod).
    Node,
}

impl Mode {
    /// The controller and node of a cluster talk through the Kubernetes API.
    pub fn is_cluster(self) -> bool {
        !matches!(self, Self::AllInOne)
    }

    pub fn serves_controller(self) -> bool {
        matches!(self, Self::AllInOne | Self::Controller)
    }

    pub fn serves_node(self) -> bool {
        matches!(self, Self::AllInOne | Self::Node)
    }
}

/// The features this build serves in `mode`: a cluster pair serves
/// [`plinth_api::served_features`], an all-in-one driver everything.
pub fn served_features_in(mode: Mode) -> DriverFeatures {
    if mode.is_cluster() {
        plinth_api::served_features()
    } else {
        plinth_api::served_features_all_in_one()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Plinth's CSI driver: local volumes as sparse image files on loop devices.
#[derive(Debug, Parser)]
#[command(name = "plinth-driver", version, about)]
pub struct Cli {
    /// CSI endpoint: `unix:///path/csi.sock` or an absolute socket path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,

    /// This node's ID (reported by NodeGetInfo and used as topology segment).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Directory holding the volume images and their metadata.
    #[arg(long, env = "PLINTH_POOL", default_value = "/var/lib/plinth/pool")]
    pub pool: PathBuf,

    /// The kubelet root directory this node plugin serves (kubelet's `--root-dir`):
    /// staging and target paths outside it are refused, and no symlink below it is
    /// followed.
    #[arg(long, env = "PLINTH_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,

    /// Space kept free in the pool's filesystem (e.g. `1GiB`, `512M`, `1073741824`).
    #[arg(long, env = "PLINTH_POOL_RESERVE", default_value = "0", value_parser = parse_size)]
    pub pool_reserve: u64,

    /// Name reported by GetPluginInfo; must match the CSIDriver object.
    #[arg(long, env = "CSI_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,

    #[arg(long, env = "PLINTH_MODE", value_enum, default_value = "all-in-one")]
    pub mode: Mode,

    /// Features to switch off (comma separated); switched-off features are neither
    /// advertised nor served.
    #[arg(long, env = "PLINTH_DISABLE", value_enum, value_delimiter = ',')]
    pub disable: Vec<Feature>,

    /// NodeGetInfo.max_volumes_per_node; 0 means no limit.
    #[arg(long, env = "PLINTH_MAX_VOLUMES_PER_NODE", default_value_t = 0)]
    pub max_volumes_per_node: i64,

    /// Topology key reported for this node and set on every volume.
    #[arg(long, env = "PLINTH_TOPOLOGY_KEY", default_value = DEFAULT_TOPOLOGY_KEY)]
    pub topology_key: String,

    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    #[arg(long, env = "PLINTH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Size of an inline (ephemeral) volume whose attributes name no `size`.
    #[arg(long, env = "PLINTH_EPHEMERAL_DEFAULT_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub ephemeral_default_size: u64,

    /// Largest inline (ephemeral) volume a pod spec may ask for.
    #[arg(long, env = "PLINTH_EPHEMERAL_MAX_SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub ephemeral_max_size: u64,

    /// Bytes all inline (ephemeral) volumes of this node may have together.
    #[arg(long, env = "PLINTH_EPHEMERAL_MAX_TOTAL_SIZE", default_value = "64GiB", value_parser = parse_size)]
    pub ephemeral_max_total_size: u64,

    /// How many inline (ephemeral) volumes this node may hold at once.
    #[arg(long, env = "PLINTH_EPHEMERAL_MAX_VOLUMES", default_value_t = 32)]
    pub ephemeral_max_volumes: u32,

    /// How long in-flight calls may run after SIGTERM before the driver exits anyway.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub shutdown_grace_seconds: Duration,

    /// Cluster mode: how long a controller call waits for the node's answer before it
    /// answers ABORTED (the sidecar retries and finds the work in progress). Keep it
    /// below the sidecars' `--timeout`.
    #[arg(long, env = "PLINTH_HANDOFF_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub handoff_timeout_seconds: Duration,

    /// Cluster mode: how often the node plugin re-reads its pool's capacity (it publishes
    /// only when the numbers changed, and at once after its own work).
    #[arg(long, env = "PLINTH_CAPACITY_INTERVAL", default_value = "30", value_parser = parse_seconds)]
    pub capacity_interval_seconds: Duration,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub node_id: String,
    pub pool: PathBuf,
    pub pool_reserve: u64,
    /// Absolute, without `.` or `..`; never overlaps the pool.
    pub kubelet_dir: PathBuf,
    pub driver_name: String,
    pub mode: Mode,
    /// What is advertised and served: the flags, limited to [`served_features_in`].
    pub features: DriverFeatures,
    pub max_volumes_per_node: i64,
    pub topology_key: String,
    pub shutdown_grace: Duration,
    /// Sizes of inline (ephemeral) volumes.
    pub ephemeral: plinth_api::ephemeral::Limits,
    /// Cluster mode: the longest a controller call waits for a node.
    pub handoff_timeout: Duration,
    /// Cluster mode: how often a node re-reads its capacity.
    pub capacity_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("endpoint {0:?}: only unix:// endpoints with an absolute path are supported")]
    Endpoint(String),
    #[error("--node-id (or NODE_ID / KUBE_NODE_NAME) is required")]
    MissingNodeId,
    #[error("--{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl Config {
    /// `kube_node_name` is the fallback for the node ID (the downward API's usual name).
    pub fn from_cli(cli: Cli, kube_node_name: Option<String>) -> Result<Self, ConfigError> {
        let socket = parse_endpoint(&cli.endpoint)?;
        let node_id = cli
            .node_id
            .or(kube_node_name)
            .filter(|id| !id.is_empty())
            .ok_or(ConfigError::MissingNodeId)?;
        check_label_value("node-id", &node_id)?;
        if !is_valid_driver_name(&cli.driver_name) {
            return Err(ConfigError::Invalid {
                flag: "driver-name",
                value: cli.driver_name,
                reason: "must be a DNS subdomain of at most 63 characters",
            });
        }
        if !cli.pool.is_absolute() {
            return Err(ConfigError::Invalid {
                flag: "pool",
                value: cli.pool.display().to_string(),
                reason: "must be an absolute path",
            });
        }
        let kubelet_dir = check_kubelet_dir(&cli.kubelet_dir, &cli.pool)?;
        if cli.max_volumes_per_node < 0 {
            return Err(ConfigError::Invalid {
                flag: "max-volumes-per-node",
                value: cli.max_volumes_per_node.to_string(),
                reason: "must not be negative",
            });
        }
        if cli.topology_key.is_empty() || cli.topology_key.len() > 253 {
            return Err(ConfigError::Invalid {
                flag: "topology-key",
                value: cli.topology_key,
                reason: "must be a non-empty label key",
            });
        }
        if cli.ephemeral_default_size == 0 || cli.ephemeral_default_size > cli.ephemeral_max_size {
            return Err(ConfigError::Invalid {
                flag: "ephemeral-default-size",
                value: cli.ephemeral_default_size.to_string(),
                reason: "must be above zero and at most --ephemeral-max-size",
            });
        }
        if cli.ephemeral_max_size > cli.ephemeral_max_total_size {
            return Err(ConfigError::Invalid {
                flag: "ephemeral-max-size",
                value: cli.ephemeral_max_size.to_string(),
                reason: "must be at most --ephemeral-max-total-size",
            });
        }
        let mut requested = DriverFeatures::default();
        for feature in &cli.disable {
            requested.set(*feature, false);
        }
        if cli.mode.is_cluster() {
            // The node ID names the node's PoolNode and labels its work: it must be the
            // Kubernetes node name.
            if !is_dns_subdomain(&node_id) {
                return Err(ConfigError::Invalid {
                    flag: "node-id",
                    value: node_id,
                    reason: "in cluster mode it must be the Kubernetes node name (a lowercase DNS subdomain)",
                });
            }
            if !requested.topology {
                return Err(ConfigError::Invalid {
                    flag: "disable",
                    value: "topology".to_owned(),
                    reason: "cluster mode needs topology: a volume lives on one node",
                });
            }
            if cli.handoff_timeout_seconds.is_zero() {
                return Err(ConfigError::Invalid {
                    flag: "handoff-timeout-seconds",
                    value: "0".to_owned(),
                    reason: "must be at least one second",
                });
            }
        }
        Ok(Self {
            socket,
            node_id,
            pool: cli.pool,
            pool_reserve: cli.pool_reserve,
            kubelet_dir,
            driver_name: cli.driver_name,
            mode: cli.mode,
            features: requested.intersection(served_features_in(cli.mode)),
            max_volumes_per_node: cli.max_volumes_per_node,
            topology_key: cli.topology_key,
            shutdown_grace: cli.shutdown_grace_seconds,
            ephemeral: plinth_api::ephemeral::Limits {
                default_bytes: cli.ephemeral_default_size,
                max_bytes: cli.ephemeral_max_size,
                node_max_bytes: cli.ephemeral_max_total_size,
                node_max_volumes: cli.ephemeral_max_volumes,
            },
            handoff_timeout: cli.handoff_timeout_seconds,
            capacity_interval: cli.capacity_interval_seconds,
        })
    }
}

/// The kubelet directory in the form paths from kubelet are compared with: absolute,
/// `.` and doubled slashes dropped, no `..`, not `/` (that would allow every path), and
/// apart from the pool (a target inside the pool could overwrite an image).
fn check_kubelet_dir(dir: &Path, pool: &Path) -> Result<PathBuf, ConfigError> {
    let invalid = |reason| ConfigError::Invalid {
        flag: "kubelet-dir",
        value: dir.display().to_string(),
        reason,
    };
    if !dir.is_absolute()
        || dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid("must be an absolute path without '..'"));
    }
    let normal: PathBuf = dir.components().collect();
    if normal.parent().is_none() {
        return Err(invalid("must not be the root directory"));
    }
    let pool: PathBuf = pool.components().collect();
    if normal.starts_with(&pool) || pool.starts_with(&normal) {
        return Err(invalid("must not overlap the pool directory"));
    }
    Ok(normal)
}

/// `unix:///run/csi.sock`, `unix:/run/csi.sock` or `/run/csi.sock`.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, ConfigError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    let path = Path::new(path);
    let bad = || ConfigError::Endpoint(endpoint.to_owned());
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(bad());
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad());
    }
    Ok(path.to_path_buf())
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{text:?}: {e}"))
}

/// Node IDs end up as topology label values: 63 characters, alphanumeric at both ends.
fn check_label_value(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            flag,
            value: value.to_owned(),
            reason: "must be a valid label value (63 characters, alphanumeric, '-', '_', '.')",
        })
    }
}

/// A lowercase DNS subdomain (RFC 1123), as Kubernetes object names are.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn is_valid_driver_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

#[cfg(test)]
mod tests {
    use plinth_api::served_features;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["plinth-driver", "--node-id", "n1"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn the_kubelet_dir_is_absolute_clean_and_apart_from_the_pool() {
        let config = |args: &[&str]| Config::from_cli(cli(args), None);
        let ok = config(&["--kubelet-dir=/var/lib//kubelet/./"]).unwrap();
        assert_eq!(ok.kubelet_dir, Path::new("/var/lib/kubelet"));
        assert_eq!(
            config(&[]).unwrap().kubelet_dir,
            Path::new("/var/lib/kubelet")
        );
        for bad in [
            "--kubelet-dir=relative",
            "--kubelet-dir=/",
            "--kubelet-dir=/var/lib/kubelet/../x",
            "--kubelet-dir=/var/lib/plinth",
            "--kubelet-dir=/var/lib/plinth/pool/k",
        ] {
            assert!(
                matches!(
                    config(&[bad]),
                    Err(ConfigError::Invalid {
                        flag: "kubelet-dir",
                        ..
                    })
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn endpoints_accept_unix_urls_and_absolute_paths_only() {
        assert_eq!(
            parse_endpoint("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            parse_endpoint("/csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        for bad in [
            "tcp://1.2.3.4:10000",
            "unix://relative.sock",
            "csi.sock",
            "unix:///",
            "/a/../b.sock",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn disabled_features_are_off_and_unserved_features_never_on() {
        let config = Config::from_cli(cli(&["--disable", "capacity,topology"]), None).unwrap();
        assert!(!config.features.capacity);
        assert!(!config.features.topology);
        let config = Config::from_cli(cli(&[]), None).unwrap();
        assert!(config.features.capacity && config.features.topology);
        assert_eq!(
            config.features.snapshots,
            served_features().snapshots,
            "a feature this build cannot serve must not be advertised"
        );
    }

    /// `--disable` takes exactly the switches of [`Feature`], each turning off its own
    /// slot and nothing else.
    #[test]
    fn every_feature_switch_disables_exactly_its_feature() {
        for feature in Feature::ALL {
            let config = Config::from_cli(cli(&["--disable", feature.switch()]), None).unwrap();
            assert_eq!(
                config.features,
                DriverFeatures::default().with(feature, false),
                "--disable {}",
                feature.switch()
            );
        }
        for wrong in [
            "resize",
            "capacityTracking",
            "groupSnapshots",
            "group_snapshots",
        ] {
            assert!(
                Cli::try_parse_from(["plinth-driver", "--disable", wrong]).is_err(),
                "{wrong} accepted"
            );
        }
    }

    #[test]
    fn cluster_modes_need_a_kubernetes_node_name_and_topology() {
        let node = |args: &[&str]| {
            let mut argv = vec!["plinth-driver", "--mode", "node"];
            argv.extend_from_slice(args);
            Config::from_cli(Cli::try_parse_from(argv).unwrap(), None)
        };
        assert!(node(&["--node-id", "worker-1.example"]).is_ok());
        assert!(node(&["--node-id", "Worker_1"]).is_err());
        assert!(node(&["--node-id", "worker-1", "--disable", "topology"]).is_err());
        // All-in-one keeps accepting any label value.
        let all_in_one = Cli::try_parse_from(["plinth-driver", "--node-id", "Worker_1"]).unwrap();
        assert!(Config::from_cli(all_in_one, None).is_ok());
    }

    #[test]
    fn group_snapshots_are_served_by_all_in_one_only() {
        assert!(served_features_in(Mode::AllInOne).group_snapshots);
        assert!(!served_features_in(Mode::Controller).group_snapshots);
        assert!(!served_features().group_snapshots);
        let config = Config::from_cli(
            Cli::try_parse_from(["plinth-driver", "--node-id", "n1", "--mode", "controller"])
                .unwrap(),
            None,
        )
        .unwrap();
        assert!(!config.features.group_snapshots);
    }

    #[test]
    fn node_id_falls_back_to_kube_node_name_and_is_required() {
        let no_id = Cli::try_parse_from(["plinth-driver"]).unwrap();
        assert!(matches!(
            Config::from_cli(no_id, None),
            Err(ConfigError::MissingNodeId)
        ));
        let no_id = Cli::try_parse_from(["plinth-driver"]).unwrap();
        let config = Config::from_cli(no_id, Some("worker-1".into())).unwrap();
        assert_eq!(config.node_id, "worker-1");
        let bad = Cli::try_parse_from(["plinth-driver", "--node-id", "a/b"]).unwrap();
        assert!(Config::from_cli(bad, None).is_err());
    }
}
