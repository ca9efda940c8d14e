//! The operator's own workload: its Namespace, Deployment and metrics Service (config/manager;
//! the ClusterServiceVersion's install strategy embeds the same Deployment spec).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{NAMESPACE, OPERATOR_NAME, SERVICE_ACCOUNT};

/// Port of the operator's HTTP server: `/metrics`, `/healthz`, `/readyz`.
pub const HTTP_PORT: i32 = 8080;
/// The distroless `nonroot` user the operator image runs as.
pub const RUN_AS_USER: i64 = 65532;

/// The operator image of this release.
pub fn operator_image() -> String {
    format!(
        "ghcr.io/plinth-dev/plinth-operator:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Labels of the operator's Deployment and pods. The selector uses only the name: a
/// Deployment's selector is immutable, so it must not carry the version.
pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            OPERATOR_NAME.to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "plinth".to_owned()),
    ])
}

fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/name".to_owned(),
        OPERATOR_NAME.to_owned(),
    )])
}

pub fn namespace() -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "plinth".to_owned()),
                // The operator pod itself meets `restricted`, but the minimal sample runs
                // the driver here too, and CSI node plugins must be privileged (mount
                // propagation into the kubelet directory, loop devices).
                (
                    "pod-security.kubernetes.io/enforce".to_owned(),
                    "privileged".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

pub fn deployment() -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(OPERATOR_NAME.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: Some(deployment_spec()),
        ..Deployment::default()
    }
}

/// `plinth-operator-metrics`: a stable address for scraping `/metrics` (every replica serves
/// it; only the leader's reconcile counters move).
pub fn metrics_service() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(format!("{OPERATOR_NAME}-metrics")),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("http-metrics".to_owned()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Deployment spec, shared by config/manager and the CSV's install strategy.
pub fn deployment_spec() -> DeploymentSpec {
    DeploymentSpec {
        // One is enough: the work is a few watches and applies. Two are safe (leader
        // election) and only shorten fail-over.
        replicas: Some(1),
        selector: LabelSelector {
            match_labels: Some(selector_labels()),
            ..LabelSelector::default()
        },
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels()),
                annotations: Some(BTreeMap::from([(
                    "kubectl.kubernetes.io/default-container".to_owned(),
                    OPERATOR_NAME.to_owned(),
                )])),
                ..ObjectMeta::default()
            }),
            spec: Some(pod_spec()),
        },
        ..DeploymentSpec::default()
    }
}

fn pod_spec() -> PodSpec {
    PodSpec {
        service_account_name: Some(SERVICE_ACCOUNT.to_owned()),
        // Leader election gives the lease up on SIGTERM; this bounds a stuck shutdown.
        termination_grace_period_seconds: Some(30),
        node_selector: Some(BTreeMap::from([(
            "kubernetes.io/os".to_owned(),
            "linux".to_owned(),
        )])),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container()],
        ..PodSpec::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, initial_delay: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ])
}

fn container() -> Container {
    Container {
        name: OPERATOR_NAME.to_owned(),
        image: Some(operator_image()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(run_args()),
        env: Some(vec![
            // The lease lives in the operator's own namespace, which OLM chooses.
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // Leader-election holder identity.
            field_env("POD_NAME", "metadata.name"),
            // The probe Job runs `plinth-operator probe` from this same image; change
            // both together when mirroring.
            EnvVar {
                name: "PLINTH_PROBE_IMAGE".to_owned(),
                value: Some(operator_image()),
                ..EnvVar::default()
            },
            EnvVar {
                name: "RUST_LOG".to_owned(),
                value: Some("info".to_owned()),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 20)),
        readiness_probe: Some(http_probe("/readyz", 5, 10)),
        // Requests fit an operator of ~15 MiB resident; the limit leaves room for the
        // watch caches, which grow with the number of CSINodes and managed objects.
        resources: Some(ResourceRequirements {
            requests: Some(quantities("10m", "32Mi")),
            limits: Some(quantities("500m", "128Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Arguments of `plinth-operator` in the Deployment.
fn run_args() -> Vec<String> {
    vec!["run".to_owned(), "--leader-elect".to_owned()]
}
