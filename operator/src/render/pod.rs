//! Pieces both pods share: sidecar containers, the socket volume, probes, security.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities as LinuxCapabilities, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, LocalObjectReference, ObjectFieldSelector, Probe, ResourceRequirements,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plinth_api::capabilities::{DriverFeatures, Sidecar};

use super::images;
use crate::crd::{CsiDeployment, DriverPodOptions};
use crate::labels;

/// Where every container of a pod sees the CSI socket's directory.
pub const SOCKET_DIR: &str = "/csi";
/// The CSI endpoint every container of a pod uses.
pub const CSI_ENDPOINT: &str = "unix:///csi/csi.sock";
/// The socket path sidecars take as `--csi-address`.
pub const CSI_ADDRESS: &str = "/csi/csi.sock";
/// The volume holding the socket.
pub const SOCKET_VOLUME: &str = "socket-dir";
const HEALTH_PORT_NAME: &str = "healthz";

/// The driver container's name: `plinth-driver` for the built-in driver, `csi-driver`
/// for a third-party one (also the key of `resources`).
pub fn driver_container_name(cr: &CsiDeployment) -> &'static str {
    if cr.spec.is_builtin() {
        "plinth-driver"
    } else {
        "csi-driver"
    }
}

pub fn socket_mount() -> VolumeMount {
    mount(SOCKET_VOLUME, SOCKET_DIR)
}

pub fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

pub fn host_path_volume(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(type_.to_owned()),
        }),
        ..Volume::default()
    }
}

/// An environment variable from the pod's own fields (downward API).
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

/// Unprivileged containers: no privilege escalation, no capabilities, read-only root.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(LinuxCapabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// A kubernetes-csi sidecar talking to the driver over the pod's socket.
pub fn sidecar(
    cr: &CsiDeployment,
    sidecar: Sidecar,
    args: Vec<String>,
    resources: &BTreeMap<String, ResourceRequirements>,
) -> Container {
    let name = sidecar.container_name();
    let mut args = args;
    args.extend(extra_sidecar_args(cr, sidecar));
    Container {
        name: name.to_owned(),
        image: Some(images::sidecar_image(&cr.spec.images, sidecar)),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(args),
        volume_mounts: Some(vec![socket_mount()]),
        resources: resources.get(name).cloned(),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// The arguments every sidecar takes.
pub fn common_args(cr: &CsiDeployment) -> Vec<String> {
    vec![
        format!("--csi-address={CSI_ADDRESS}"),
        format!("--v={}", cr.spec.driver.log_level.klog_verbosity()),
    ]
}

/// The livenessprobe sidecar: turns the driver's CSI Probe into `/healthz`.
pub fn liveness_sidecar(
    cr: &CsiDeployment,
    resources: &BTreeMap<String, ResourceRequirements>,
) -> Container {
    let mut args = common_args(cr);
    args.push(format!("--health-port={}", cr.spec.driver.health_port));
    sidecar(cr, Sidecar::LivenessProbe, args, resources)
}

/// The driver container's health port and the probe kubelet runs against it.
pub fn driver_health(cr: &CsiDeployment, container: &mut Container) {
    container.ports = Some(vec![ContainerPort {
        name: Some(HEALTH_PORT_NAME.to_owned()),
        container_port: cr.spec.driver.health_port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }]);
    container.liveness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_owned()),
            port: IntOrString::String(HEALTH_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(10),
        timeout_seconds: Some(3),
        period_seconds: Some(10),
        failure_threshold: Some(5),
        ..Probe::default()
    });
}

pub fn pull_secrets(cr: &CsiDeployment) -> Option<Vec<LocalObjectReference>> {
    let secrets = &cr.spec.images.pull_secrets;
    (!secrets.is_empty()).then(|| {
        secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// Linux only: the driver and sidecar images are Linux images.
pub fn node_selector(user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]);
    selector.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
    selector
}

/// The two pods of a deployment (the probe Job borrows their driver container).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodKind {
    /// The controller StatefulSet's pod.
    Controller,
    /// The node DaemonSet's pod.
    Node,
}

impl PodKind {
    /// `controller` or `node`, as `status.sidecars[].pod` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Controller => "controller",
            Self::Node => "node",
        }
    }
}

/// The driver container of `pod`, complete: image, arguments, environment (endpoint, node
/// name, the CR's extras), mounts (the socket, the node's kubelet directories, the CR's
/// extras), security context, resources and health probe. `builtin` is the built-in
/// driver's switches (`Plan::builtin`); a third-party driver ignores it. Everything that
/// starts the driver comes from here, so a Job that runs the driver alone (the capability
/// probe) starts it exactly as the deployment does.
pub fn driver_container(
    cr: &CsiDeployment,
    pod: PodKind,
    builtin: Option<&DriverFeatures>,
) -> Container {
    let name = driver_container_name(cr);
    let driver = &cr.spec.driver;
    let (mut args, resources) = match pod {
        PodKind::Controller => (
            super::controller::driver_args(cr, builtin),
            &cr.spec.controller.resources,
        ),
        PodKind::Node => (
            super::node::driver_args(cr, builtin),
            &cr.spec.node.resources,
        ),
    };
    args.extend(driver.extra_args.iter().cloned());
    let mut env = match &driver.third_party {
        None => vec![field_env("NODE_ID", "spec.nodeName")],
        Some(third) => vec![
            value_env(&third.endpoint_env, CSI_ENDPOINT),
            field_env(&third.node_id_env, "spec.nodeName"),
        ],
    };
    let mut mounts = match pod {
        PodKind::Controller => vec![socket_mount()],
        PodKind::Node => super::node::driver_mounts(cr),
    };
    let mut env_from = Vec::new();
    if let Some(extra) = pod_options(cr, pod) {
        env.extend(extra.env.iter().cloned());
        env_from.extend(extra.env_from.iter().cloned());
        mounts.extend(extra.volume_mounts.iter().cloned());
    }
    let security_context = match pod {
        PodKind::Controller => restricted(),
        // Mounting, loop devices and mkfs need it; Bidirectional propagation requires it.
        PodKind::Node => SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        },
    };
    let mut container = Container {
        name: name.to_owned(),
        image: Some(images::driver_image(
            &cr.spec.images,
            driver.image.as_deref(),
        )),
        image_pull_policy: Some(driver.image_pull_policy.as_str().to_owned()),
        args: Some(args),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        volume_mounts: Some(mounts),
        resources: resources.get(name).cloned(),
        security_context: Some(security_context),
        ..Container::default()
    };
    driver_health(cr, &mut container);
    container
}

/// A third-party driver's extras for `pod` (`driver.thirdParty.controllerPod` / `nodePod`).
pub fn pod_options(cr: &CsiDeployment, pod: PodKind) -> Option<&DriverPodOptions> {
    let third = cr.spec.driver.third_party.as_ref()?;
    Some(match pod {
        PodKind::Controller => &third.controller_pod,
        PodKind::Node => &third.node_pod,
    })
}

/// The CR's extra volumes of `pod` (the driver container mounts them).
pub fn extra_volumes(cr: &CsiDeployment, pod: PodKind) -> Vec<Volume> {
    pod_options(cr, pod)
        // Validation has parsed every one already: rendering never sees a bad one.
        .map(|o| o.volumes.iter().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}

/// `hostNetwork` and the DNS policy that keeps cluster DNS working with it.
pub fn host_network(cr: &CsiDeployment, pod: PodKind) -> (Option<bool>, Option<String>) {
    if pod_options(cr, pod).is_some_and(|o| o.host_network) {
        (Some(true), Some("ClusterFirstWithHostNet".to_owned()))
    } else {
        (None, None)
    }
}

/// The user's extra arguments of `sidecar` (`driver.thirdParty.sidecarArgs`).
pub fn extra_sidecar_args(cr: &CsiDeployment, sidecar: Sidecar) -> Vec<String> {
    cr.spec
        .driver
        .third_party
        .as_ref()
        .and_then(|t| t.sidecar_args.get(sidecar.container_name()))
        .cloned()
        .unwrap_or_default()
}

/// Built-in driver arguments common to both modes.
pub fn builtin_args(cr: &CsiDeployment, mode: &str, disabled: &[&str]) -> Vec<String> {
    let mut args = vec![
        format!("--mode={mode}"),
        format!("--endpoint={CSI_ENDPOINT}"),
        format!("--driver-name={}", cr.spec.driver.name),
        format!("--log-level={}", cr.spec.driver.log_level.filter()),
    ];
    if !disabled.is_empty() {
        args.push(format!("--disable={}", disabled.join(",")));
    }
    args
}

/// The labels and selector of one workload and its pods.
pub struct Workload {
    /// The workload's own metadata (common labels plus the selector labels).
    pub metadata: ObjectMeta,
    /// The selector (immutable once created: only the CR name and component).
    pub selector: LabelSelector,
    /// The pod template's metadata.
    pub template: ObjectMeta,
}

pub fn workload(cr: &CsiDeployment, name: String, component: &str) -> Workload {
    let cr_name = cr.metadata.name.as_deref().unwrap_or_default();
    let selector = labels::pod_selector(cr_name, component);
    let mut pod_labels = labels::common(cr_name);
    pod_labels.extend(selector.clone());
    let mut metadata = labels::metadata(cr, name, Some(&cr.spec.namespace));
    metadata
        .labels
        .get_or_insert_default()
        .extend(selector.clone());
    Workload {
        metadata,
        selector: LabelSelector {
            match_labels: Some(selector),
            match_expressions: None,
        },
        template: ObjectMeta {
            labels: Some(pod_labels),
            ..ObjectMeta::default()
        },
    }
}
