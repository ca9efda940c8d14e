//! The node DaemonSet: the driver's node plugin, kubelet registration, liveness.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, ExecAction,
    KeyToPath, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Toleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plinth_api::capabilities::{DriverFeatures, Sidecar};

use super::pod::{self, PodKind, SOCKET_DIR, SOCKET_VOLUME};
use super::{Plan, controller, names, plan};
use crate::crd::{CsiDeployment, InlineVolumeLimits, UpdateStrategyType};

pub const COMPONENT: &str = "node";

const REGISTRATION_VOLUME: &str = "registration-dir";
const PODS_VOLUME: &str = "pods-dir";
const CSI_PLUGINS_VOLUME: &str = "csi-plugins-dir";
const DEV_VOLUME: &str = "dev";
const POOL_VOLUME: &str = "pool";
const API_TOKEN_VOLUME: &str = "kube-api-access";
/// Where client libraries (kube-rs's in-cluster config among them) look for the token, the
/// cluster CA and the namespace.
const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// An hour, like kubelet's own: kubelet rotates the file at 80% of it and kube-rs re-reads
/// the file, so a short life costs nothing.
const API_TOKEN_SECONDS: i64 = 3600;

/// kubelet's paths for this driver, from `spec.node.kubeletDir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletPaths {
    /// Where the driver's socket lives on the host.
    pub plugin_dir: String,
    /// Where kubelet discovers plugins' registration sockets.
    pub registration_dir: String,
    /// Publish targets of filesystem volumes (`pods/<uid>/volumes/...`).
    pub pods_dir: String,
    /// Staging paths and raw block publish paths (`plugins/kubernetes.io/csi/...`).
    pub csi_plugins_dir: String,
}

impl KubeletPaths {
    pub fn new(cr: &CsiDeployment) -> Self {
        let root = cr.spec.node.kubelet_dir.trim_end_matches('/');
        Self {
            plugin_dir: format!("{root}/plugins/{}", cr.spec.driver.name),
            registration_dir: format!("{root}/plugins_registry"),
            pods_dir: format!("{root}/pods"),
            csi_plugins_dir: format!("{root}/plugins/kubernetes.io/csi"),
        }
    }

    /// The socket path kubelet dials, as kubelet (on the host) sees it.
    pub fn registration_socket(&self) -> String {
        format!("{}/csi.sock", self.plugin_dir)
    }
}

pub fn daemon_set(cr: &CsiDeployment, plan: &Plan) -> DaemonSet {
    let workload = pod::workload(cr, names::node(cr), COMPONENT);
    let spec = &cr.spec.node;
    let paths = KubeletPaths::new(cr);
    let mut containers = vec![
        pod::driver_container(cr, PodKind::Node, plan.builtin.as_ref()),
        registrar(cr, &paths),
        pod::liveness_sidecar(cr, &spec.resources),
    ];
    // Per-node provisioning: the API-facing sidecars run here, each with the node pod's
    // own token (the ServiceAccount mounts none by default).
    containers.extend(plan.node_sidecars.iter().map(|need| {
        let mut container = controller::sidecar(cr, plan, need.sidecar, PodKind::Node);
        container
            .volume_mounts
            .get_or_insert_default()
            .push(api_token_mount());
        container
    }));
    let (host_network, dns_policy) = pod::host_network(cr, PodKind::Node);
    DaemonSet {
        metadata: workload.metadata,
        spec: Some(DaemonSetSpec {
            selector: workload.selector,
            update_strategy: Some(update_strategy(cr)),
            template: PodTemplateSpec {
                metadata: Some(workload.template),
                spec: Some(PodSpec {
                    service_account_name: Some(names::node_service_account(cr)),
                    priority_class_name: Some(spec.priority_class_name.clone()),
                    node_selector: Some(pod::node_selector(&spec.node_selector)),
                    tolerations: Some(spec.tolerations.clone().unwrap_or_else(|| {
                        vec![Toleration {
                            operator: Some("Exists".to_owned()),
                            ..Toleration::default()
                        }]
                    })),
                    image_pull_secrets: pod::pull_secrets(cr),
                    containers,
                    volumes: Some(volumes(cr, plan, &paths)),
                    host_network,
                    dns_policy,
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

fn update_strategy(cr: &CsiDeployment) -> DaemonSetUpdateStrategy {
    let strategy = &cr.spec.node.update_strategy;
    match strategy.type_ {
        UpdateStrategyType::OnDelete => DaemonSetUpdateStrategy {
            type_: Some("OnDelete".to_owned()),
            rolling_update: None,
        },
        UpdateStrategyType::RollingUpdate => DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(match &strategy.max_unavailable {
                    Some(value) => int_or_percent(value),
                    None => IntOrString::Int(1),
                }),
                max_surge: None,
            }),
        },
    }
}

/// `"3"` -> 3, `"10%"` -> "10%" (the schema allows only these two shapes).
fn int_or_percent(value: &str) -> IntOrString {
    value
        .parse::<i32>()
        .map(IntOrString::Int)
        .unwrap_or_else(|_| IntOrString::String(value.to_owned()))
}

fn volumes(cr: &CsiDeployment, plan: &Plan, paths: &KubeletPaths) -> Vec<Volume> {
    let mut volumes = vec![
        pod::host_path_volume(SOCKET_VOLUME, &paths.plugin_dir, "DirectoryOrCreate"),
        pod::host_path_volume(REGISTRATION_VOLUME, &paths.registration_dir, "Directory"),
        pod::host_path_volume(PODS_VOLUME, &paths.pods_dir, "Directory"),
        pod::host_path_volume(
            CSI_PLUGINS_VOLUME,
            &paths.csi_plugins_dir,
            "DirectoryOrCreate",
        ),
        pod::host_path_volume(DEV_VOLUME, "/dev", "Directory"),
    ];
    if cr.spec.is_builtin() {
        volumes.push(pod::host_path_volume(
            POOL_VOLUME,
            &cr.spec.pool_path(),
            "DirectoryOrCreate",
        ));
    }
    if cr.spec.is_builtin() || !plan.node_sidecars.is_empty() {
        volumes.push(api_token_volume());
    }
    volumes.extend(pod::extra_volumes(cr, PodKind::Node));
    volumes
}

/// Plinth's own volume names in the node pod (the CR's extra volumes may not reuse them).
pub const RESERVED_VOLUMES: &[&str] = &[
    SOCKET_VOLUME,
    REGISTRATION_VOLUME,
    PODS_VOLUME,
    CSI_PLUGINS_VOLUME,
    DEV_VOLUME,
    POOL_VOLUME,
    API_TOKEN_VOLUME,
];

/// The API credentials, read-only, where client libraries look for them.
fn api_token_mount() -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..pod::mount(API_TOKEN_VOLUME, API_TOKEN_DIR)
    }
}

/// The built-in node plugin's own API credentials: what kubelet would automount (a bound
/// token, the cluster CA, the namespace), mounted into the driver container only. The
/// ServiceAccount keeps `automountServiceAccountToken: false`, so the registrar and the
/// livenessprobe, which never call the API, carry no token. The token is bound to the pod
/// and, from Kubernetes 1.32, names the pod's node (`authentication.kubernetes.io/
/// node-name`), which is what admission checks the plugin's writes against.
fn api_token_volume() -> Volume {
    let projection = VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            path: "token".to_owned(),
            expiration_seconds: Some(API_TOKEN_SECONDS),
            audience: None,
        }),
        ..VolumeProjection::default()
    };
    let ca = VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: "kube-root-ca.crt".to_owned(),
            items: Some(vec![KeyToPath {
                key: "ca.crt".to_owned(),
                path: "ca.crt".to_owned(),
                mode: None,
            }]),
            optional: None,
        }),
        ..VolumeProjection::default()
    };
    let namespace = VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "namespace".to_owned(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".to_owned()),
                    field_path: "metadata.namespace".to_owned(),
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
        }),
        ..VolumeProjection::default()
    };
    Volume {
        name: API_TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![projection, ca, namespace]),
            default_mode: Some(0o644),
        }),
        ..Volume::default()
    }
}

/// Mounts made here must reach kubelet and the pods on the host: Bidirectional.
fn bidirectional(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        mount_propagation: Some("Bidirectional".to_owned()),
        ..pod::mount(name, path)
    }
}

/// The driver's arguments in the node pod.
pub(super) fn driver_args(cr: &CsiDeployment, builtin: Option<&DriverFeatures>) -> Vec<String> {
    let node = &cr.spec.node;
    match (builtin, &cr.spec.driver.third_party) {
        (_, Some(third)) => third.node_args.clone(),
        (Some(features), None) => {
            // Only what the node side serves: a controller-only toggle leaves the pod
            // template alone, so the DaemonSet does not roll.
            let disabled = plan::node_disabled_switches(features);
            let mut args = pod::builtin_args(cr, "node", &disabled);
            args.push(format!("--pool={}", cr.spec.pool_path()));
            // Staging and target paths outside it are refused, and nothing under it is
            // reached through a symlink.
            args.push(format!("--kubelet-dir={}", node.kubelet_dir));
            if let Some(reserve) = &node.pool_reserve {
                args.push(format!("--pool-reserve={reserve}"));
            }
            if let Some(max) = node.max_volumes_per_node {
                args.push(format!("--max-volumes-per-node={max}"));
            }
            if let Some(inline) = &node.inline_volumes {
                args.extend(inline_args(inline));
            }
            args
        }
        (None, None) => Vec::new(),
    }
}

/// The node driver container's own mounts. kubelet hands the driver host paths, so the
/// kubelet directories are mounted at the same paths inside the container.
pub(super) fn driver_mounts(cr: &CsiDeployment) -> Vec<VolumeMount> {
    let paths = KubeletPaths::new(cr);
    let mut mounts = vec![
        pod::socket_mount(),
        bidirectional(PODS_VOLUME, &paths.pods_dir),
        bidirectional(CSI_PLUGINS_VOLUME, &paths.csi_plugins_dir),
        pod::mount(DEV_VOLUME, "/dev"),
    ];
    if cr.spec.is_builtin() {
        mounts.push(pod::mount(POOL_VOLUME, &cr.spec.pool_path()));
        mounts.push(api_token_mount());
    }
    mounts
}

/// The driver's inline-volume flags for the limits the CR sets.
fn inline_args(limits: &InlineVolumeLimits) -> Vec<String> {
    let sizes = [
        ("--ephemeral-default-size", &limits.default_size),
        ("--ephemeral-max-size", &limits.max_size),
        ("--ephemeral-max-total-size", &limits.max_total_size),
    ];
    let mut args: Vec<String> = sizes
        .into_iter()
        .filter_map(|(flag, value)| value.as_ref().map(|v| format!("{flag}={v}")))
        .collect();
    if let Some(max) = limits.max_volumes {
        args.push(format!("--ephemeral-max-volumes={max}"));
    }
    args
}

fn registrar(cr: &CsiDeployment, paths: &KubeletPaths) -> Container {
    let registration = format!(
        "--kubelet-registration-path={}",
        paths.registration_socket()
    );
    let mut args = pod::common_args(cr);
    args.push(registration.clone());
    let mut container = pod::sidecar(
        cr,
        Sidecar::NodeDriverRegistrar,
        args,
        &cr.spec.node.resources,
    );
    container.volume_mounts = Some(vec![
        pod::mount(SOCKET_VOLUME, SOCKET_DIR),
        pod::mount(REGISTRATION_VOLUME, "/registration"),
    ]);
    // The registrar's own probe mode checks that kubelet accepted the registration: a
    // registrar that lost it (kubelet restart wiping plugins_registry) gets restarted.
    container.liveness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "/csi-node-driver-registrar".to_owned(),
                registration,
                "--mode=kubelet-registration-probe".to_owned(),
            ]),
        }),
        initial_delay_seconds: Some(30),
        timeout_seconds: Some(15),
        period_seconds: Some(90),
        ..Probe::default()
    });
    container
}
