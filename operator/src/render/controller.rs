//! The controller StatefulSet and its PodDisruptionBudget.
//!
//! A StatefulSet, not a Deployment: with one replica it guarantees at most one controller
//! pod at any time (a Deployment's rolling update briefly runs two), so a single replica
//! needs no leader election. With more replicas the sidecars elect leaders through Leases.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSpec,
    PodTemplateSpec, Volume, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plinth_driver::capabilities::{PluginCapability, Sidecar};

use super::pod::{self, SOCKET_VOLUME};
use super::{Plan, names, plan};
use crate::crd::CsiDeployment;

pub const COMPONENT: &str = "controller";

pub fn stateful_set(cr: &CsiDeployment, plan: &Plan) -> StatefulSet {
    let workload = pod::workload(cr, names::controller(cr), COMPONENT);
    let spec = &cr.spec.controller;
    let mut containers = vec![driver(cr, plan)];
    containers.extend(
        plan.controller_sidecars
            .iter()
            .map(|need| sidecar(cr, plan, need.sidecar)),
    );
    StatefulSet {
        metadata: workload.metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            selector: workload.selector.clone(),
            service_name: None,
            // Replicas are interchangeable (leases pick the leader): start them together.
            pod_management_policy: Some("Parallel".to_owned()),
            template: PodTemplateSpec {
                metadata: Some(workload.template),
                spec: Some(PodSpec {
                    service_account_name: Some(names::controller_service_account(cr)),
                    priority_class_name: Some(spec.priority_class_name.clone()),
                    node_selector: Some(pod::node_selector(&spec.node_selector)),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    affinity: affinity(cr, &workload.selector),
                    image_pull_secrets: pod::pull_secrets(cr),
                    containers,
                    volumes: Some(volumes(cr)),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// Replicas on different nodes when possible: the user's affinity wins when set.
fn affinity(cr: &CsiDeployment, selector: &LabelSelector) -> Option<Affinity> {
    let spec = &cr.spec.controller;
    if spec.affinity.is_some() || spec.replicas <= 1 {
        return spec.affinity.clone();
    }
    Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector.clone()),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    })
}

/// The controller-mode built-in driver opens its pool directory at start and answers
/// UNAVAILABLE until it can: with a read-only root filesystem it gets a scratch directory
/// that lives and dies with the pod.
const SCRATCH_POOL: &str = "/var/lib/plinth/controller";
const SCRATCH_VOLUME: &str = "controller-scratch";

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn volumes(cr: &CsiDeployment) -> Vec<Volume> {
    let mut volumes = vec![empty_dir(SOCKET_VOLUME)];
    if cr.spec.is_builtin() {
        volumes.push(empty_dir(SCRATCH_VOLUME));
    }
    volumes
}

fn driver(cr: &CsiDeployment, plan: &Plan) -> Container {
    let mut mounts = vec![pod::socket_mount()];
    let args = match (&plan.builtin, &cr.spec.driver.third_party) {
        (Some(features), _) => {
            mounts.push(pod::mount(SCRATCH_VOLUME, SCRATCH_POOL));
            let mut args = pod::builtin_args(cr, "controller", &plan::disabled_switches(features));
            args.push(format!("--pool={SCRATCH_POOL}"));
            args
        }
        (None, Some(third)) => third.controller_args.clone(),
        (None, None) => Vec::new(),
    };
    let mut container = pod::driver_container(cr, args, &cr.spec.controller.resources);
    container.volume_mounts = Some(mounts);
    container.security_context = Some(pod::restricted());
    container
}

/// Leader election only with several replicas (see the module comment).
pub fn leader_election(cr: &CsiDeployment) -> bool {
    cr.spec.controller.replicas > 1
}

fn sidecar(cr: &CsiDeployment, plan: &Plan, sidecar: Sidecar) -> Container {
    let resources = &cr.spec.controller.resources;
    if sidecar == Sidecar::LivenessProbe {
        return pod::liveness_sidecar(cr, resources);
    }
    let mut args = pod::common_args(cr);
    args.push(format!("--timeout={}", cr.spec.controller.timeout));
    if leader_election(cr) {
        args.push("--leader-election=true".to_owned());
        args.push(format!("--leader-election-namespace={}", cr.spec.namespace));
    }
    let mut env = Vec::new();
    match sidecar {
        Sidecar::Provisioner => {
            // PVC name/namespace and PV name reach CreateVolume as parameters.
            args.push("--extra-create-metadata=true".to_owned());
            args.push("--default-fstype=ext4".to_owned());
            if plan.capabilities.has_topology() {
                args.push("--feature-gates=Topology=true".to_owned());
                if plan.builtin.is_some() {
                    // Local volumes live on exactly the selected node: offer only that one
                    // (a third-party driver may well serve a whole zone).
                    args.push("--strict-topology=true".to_owned());
                }
            }
            if plan.capacity_tracking() {
                args.push("--enable-capacity=true".to_owned());
                // Level 1 from the pod is the StatefulSet: capacity objects live as long
                // as the deployment, not one pod.
                args.push("--capacity-ownerref-level=1".to_owned());
                env.push(pod::field_env("NAMESPACE", "metadata.namespace"));
                env.push(pod::field_env("POD_NAME", "metadata.name"));
            }
        }
        Sidecar::Resizer => {
            // Only drivers that cannot grow published volumes need the resizer to wait
            // for the volume to be unpublished.
            let offline_only = !plan
                .capabilities
                .plugin
                .contains(&PluginCapability::OnlineExpansion)
                && plan
                    .capabilities
                    .plugin
                    .contains(&PluginCapability::OfflineExpansion);
            args.push(format!("--handle-volume-inuse-error={offline_only}"));
        }
        Sidecar::Snapshotter => {
            args.push("--extra-create-metadata=true".to_owned());
            if plan.group_snapshots {
                args.push("--feature-gates=CSIVolumeGroupSnapshot=true".to_owned());
            }
        }
        Sidecar::Attacher | Sidecar::LivenessProbe | Sidecar::NodeDriverRegistrar => {}
    }
    let mut container = pod::sidecar(cr, sidecar, args, resources);
    if !env.is_empty() {
        container.env = Some(env);
    }
    container
}

/// With several replicas, voluntary disruptions (drains) take one down at a time.
pub fn disruption_budget(cr: &CsiDeployment, _plan: &Plan) -> Option<PodDisruptionBudget> {
    if cr.spec.controller.replicas <= 1 {
        return None;
    }
    let workload = pod::workload(cr, names::controller(cr), COMPONENT);
    Some(PodDisruptionBudget {
        metadata: workload.metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(workload.selector),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
