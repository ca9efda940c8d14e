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
use plinth_api::capabilities::{DriverFeatures, PluginCapability, Sidecar};

use super::pod::{self, PodKind, SOCKET_VOLUME};
use super::{Plan, names, plan};
use crate::crd::CsiDeployment;

pub const COMPONENT: &str = "controller";

pub fn stateful_set(cr: &CsiDeployment, plan: &Plan) -> StatefulSet {
    let workload = pod::workload(cr, names::controller(cr), COMPONENT);
    let spec = &cr.spec.controller;
    let mut containers = vec![pod::driver_container(
        cr,
        PodKind::Controller,
        plan.builtin.as_ref(),
    )];
    containers.extend(
        plan.controller_sidecars
            .iter()
            .map(|need| sidecar(cr, plan, need.sidecar, PodKind::Controller)),
    );
    let mut volumes = vec![Volume {
        name: SOCKET_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    volumes.extend(pod::extra_volumes(cr, PodKind::Controller));
    let (host_network, dns_policy) = pod::host_network(cr, PodKind::Controller);
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
                    volumes: Some(volumes),
                    host_network,
                    dns_policy,
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

/// A Go duration as the sidecars' `--timeout` takes it (`60s`, `2m`, `1m30s`, `500ms`;
/// the CRD's pattern), in milliseconds. `None` when it does not parse or overflows.
pub fn go_duration_millis(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(value.checked_mul(unit)?)?;
    }
    Some(total)
}

/// The shortest sidecar `--timeout` the built-in driver can work with: its handoff wait
/// (half the timeout) must be at least a second.
pub const MIN_BUILTIN_TIMEOUT_MILLIS: u64 = 2_000;

/// The built-in controller's `--handoff-timeout-seconds`: half the sidecars' `--timeout`,
/// at least one second. The driver then answers ABORTED while the node is still working,
/// before the sidecar gives up on the call, so the sidecar's retry finds the work in
/// progress instead of starting a second attempt next to a cancelled one.
pub fn handoff_timeout_seconds(cr: &CsiDeployment) -> u64 {
    let timeout = go_duration_millis(&cr.spec.controller.timeout).unwrap_or(0);
    (timeout / 2 / 1_000).max(1)
}

/// The driver's arguments in the controller pod.
pub(super) fn driver_args(cr: &CsiDeployment, builtin: Option<&DriverFeatures>) -> Vec<String> {
    match (builtin, &cr.spec.driver.third_party) {
        (_, Some(third)) => third.controller_args.clone(),
        (Some(features), None) => {
            // No pool here: the controller records work in the API and the node plugins
            // do it in theirs.
            let mut args = pod::builtin_args(cr, "controller", &plan::disabled_switches(features));
            args.push(format!(
                "--handoff-timeout-seconds={}",
                handoff_timeout_seconds(cr)
            ));
            args
        }
        (None, None) => Vec::new(),
    }
}

/// Leader election only with several replicas (see the module comment).
/// Per node there is no controller pod, and each node's sidecars own their node's volumes:
/// nothing to elect.
pub fn leader_election(cr: &CsiDeployment) -> bool {
    cr.spec.controller.replicas > 1 && !cr.spec.is_per_node()
}

/// A sidecar that works through the API (provisioner, attacher, resizer, snapshotter) or
/// the livenessprobe, in `pod`: the controller pod, or with per-node provisioning the node
/// pod, where the provisioner and snapshotter handle only their own node's volumes.
pub(super) fn sidecar(
    cr: &CsiDeployment,
    plan: &Plan,
    sidecar: Sidecar,
    pod: PodKind,
) -> Container {
    let per_node = pod == PodKind::Node;
    let resources = match pod {
        PodKind::Controller => &cr.spec.controller.resources,
        PodKind::Node => &cr.spec.node.resources,
    };
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
    if per_node {
        // `--node-deployment` needs to know which node's volumes are its own.
        env.push(pod::field_env("NODE_NAME", "spec.nodeName"));
    }
    match sidecar {
        Sidecar::Provisioner => {
            // PVC name/namespace and PV name reach CreateVolume as parameters.
            args.push("--extra-create-metadata=true".to_owned());
            args.push("--default-fstype=ext4".to_owned());
            if plan.capabilities.has_topology() {
                args.push("--feature-gates=Topology=true".to_owned());
                if plan.builtin.is_some() || per_node {
                    // Local volumes live on exactly the selected node: offer only that one
                    // (a third-party driver may well serve a whole zone).
                    args.push("--strict-topology=true".to_owned());
                }
            }
            if per_node {
                // Each node's provisioner takes the claims scheduled to its node; claims
                // with Immediate binding would have no node to go to.
                args.push("--node-deployment=true".to_owned());
                args.push("--immediate-topology=false".to_owned());
            }
            if plan.capacity_tracking() {
                args.push("--enable-capacity=true".to_owned());
                // Capacity objects live as long as their owner: from the pod, level 1 is
                // the StatefulSet (the deployment's life). Per node, the pod itself: a
                // node's capacity goes when its pod does (upstream's distributed setup).
                let level = if per_node { 0 } else { 1 };
                args.push(format!("--capacity-ownerref-level={level}"));
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
            if per_node {
                args.push("--node-deployment=true".to_owned());
            }
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
    if cr.spec.controller.replicas <= 1 || cr.spec.is_per_node() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_the_sidecars_flag() {
        assert_eq!(go_duration_millis("60s"), Some(60_000));
        assert_eq!(go_duration_millis("2m"), Some(120_000));
        assert_eq!(go_duration_millis("1m30s"), Some(90_000));
        assert_eq!(go_duration_millis("500ms"), Some(500));
        assert_eq!(go_duration_millis("1h"), Some(3_600_000));
        assert_eq!(go_duration_millis(""), None);
        assert_eq!(go_duration_millis("10"), None);
        assert_eq!(go_duration_millis("s"), None);
        assert_eq!(go_duration_millis("5d"), None);
        assert_eq!(go_duration_millis("99999999999999999999h"), None);
    }

    #[test]
    fn the_handoff_waits_half_the_sidecar_timeout_and_at_least_a_second() {
        let mut cr = crate::render::yaml::parse(
            "apiVersion: plinth.dev/v1alpha1\nkind: CsiDeployment\nmetadata: {name: local}\nspec: {namespace: plinth}\n",
        )
        .unwrap();
        for (timeout, handoff) in [("60s", 30), ("2m", 60), ("3s", 1), ("2s", 1), ("1m1s", 30)] {
            cr.spec.controller.timeout = timeout.to_owned();
            assert_eq!(handoff_timeout_seconds(&cr), handoff, "{timeout}");
        }
    }
}
