//! The probe Job: the driver image started exactly as the deployment starts it, asked
//! what it advertises by `plinth-operator probe` over its socket.
//!
//! The driver containers are taken from the rendered controller and node pods (so every
//! argument, environment variable and mount the real pods get, the probe gets), and run
//! as native sidecar init containers (`restartPolicy: Always`): they start first, a crash
//! restarts them like in the real pods, and they are stopped once the probe container has
//! written its answer to its termination message. Three things differ from the real pods,
//! each because the probe must never touch what the running driver owns on a node:
//!
//! - every hostPath volume becomes an emptyDir (the real node plugin's socket, pool and
//!   kubelet directories stay untouched; capability RPCs do not depend on host data), and
//!   mount propagation is dropped with them;
//! - no host network (the running driver holds its ports there);
//! - no liveness probe or ports (there is no livenessprobe sidecar to answer them).
//!
//! The built-in driver (probed only as a cross-check of an overridden image) runs its
//! controller instance alone: its node instance owns the node's pool and publishes the
//! node's capacity, which a probe must never do.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PodSpec, PodTemplateSpec, SecurityContext, Volume, VolumeMount,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::pod::{self, SOCKET_DIR, SOCKET_VOLUME};
use super::{Plan, RenderEnv, controller, node};
use crate::crd::CsiDeployment;

/// `app.kubernetes.io/component` of the probe Job and its pod.
pub const COMPONENT: &str = "probe";
/// The probe container's name (its termination message holds the answer).
pub const PROBE_CONTAINER: &str = "probe";
/// Where the probe container sees the controller instance's socket directory.
pub const CONTROLLER_SOCKET_DIR: &str = "/probe/controller";
/// Where the probe container sees the node instance's socket directory.
pub const NODE_SOCKET_DIR: &str = "/probe/node";
/// The whole Job may take this long (image pulls included) before it fails.
pub const ACTIVE_DEADLINE_SECONDS: i64 = 180;
/// A finished Job is removed by Kubernetes after this long. The operator deletes a
/// successful one as soon as it has read the answer; a failed one stays this long so its
/// pod can be inspected, and its removal is what lets the operator try again.
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 600;
/// How long the probe waits for a driver socket to appear (inside the Job's deadline).
pub const SOCKET_WAIT_SECONDS: u64 = 90;
/// Hex digits of the fingerprint in the Job's name.
const FINGERPRINT_LEN: usize = 10;

/// One driver instance of the deployment, as the probe runs it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriverInstance {
    pub container: Container,
    pub volumes: Vec<Volume>,
}

/// What the probe Job runs: the driver instances and the pod settings they need.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSetup {
    pub controller: Option<DriverInstance>,
    pub node: Option<DriverInstance>,
    /// The pod whose identity, placement and pull secrets the probe pod takes.
    pub pod: PodSpec,
    /// Hash of everything that changes what the driver answers.
    pub fingerprint: String,
    /// The driver image.
    pub image: String,
}

/// The driver instances of `cr`, taken from its rendered pods.
pub fn setup(cr: &CsiDeployment, env: &RenderEnv) -> ProbeSetup {
    let plan = Plan::new(cr, env);
    let name = pod::driver_container_name(cr);
    let controller_pod = controller::stateful_set(cr, &plan)
        .spec
        .and_then(|s| s.template.spec)
        .unwrap_or_default();
    let node_pod = node::daemon_set(cr, &plan)
        .spec
        .and_then(|s| s.template.spec)
        .unwrap_or_default();
    // Per node there is no controller instance: the node one answers everything.
    let controller = if cr.spec.is_per_node() {
        None
    } else {
        instance(&controller_pod, name, "controller")
    };
    // See the module comment: the built-in node instance is never started by a probe.
    let (node, pod) = if cr.spec.is_builtin() {
        (None, controller_pod)
    } else {
        (instance(&node_pod, name, "node"), node_pod)
    };
    let image = controller
        .as_ref()
        .or(node.as_ref())
        .and_then(|i| i.container.image.clone())
        .unwrap_or_default();
    let fingerprint = fingerprint(&[controller.as_ref(), node.as_ref()]);
    ProbeSetup {
        controller,
        node,
        pod,
        fingerprint,
        image,
    }
}

/// The driver container of `pod` and the volumes it mounts, made safe to run beside the
/// real driver (see the module comment). Container and volumes are prefixed with `role`
/// (`controller`, `node`): both instances share one pod.
fn instance(pod: &PodSpec, name: &str, role: &str) -> Option<DriverInstance> {
    let mut container = pod.containers.iter().find(|c| c.name == name)?.clone();
    container.name = format!("{name}-{role}");
    container.liveness_probe = None;
    container.readiness_probe = None;
    container.ports = None;
    let mounts = container.volume_mounts.take().unwrap_or_default();
    let rename = |volume: &str| format!("{role}-{volume}");
    let all = pod.volumes.as_deref().unwrap_or_default();
    let mut volumes = Vec::new();
    let mounts = mounts
        .into_iter()
        .map(|m| {
            if let Some(v) = all.iter().find(|v| v.name == m.name) {
                let mut v = v.clone();
                if v.host_path.is_some() || v.name == SOCKET_VOLUME {
                    v = empty_dir(&v.name);
                }
                v.name = rename(&v.name);
                if !volumes.iter().any(|have: &Volume| have.name == v.name) {
                    volumes.push(v);
                }
            }
            VolumeMount {
                name: rename(&m.name),
                mount_propagation: None,
                ..m
            }
        })
        .collect();
    container.volume_mounts = Some(mounts);
    // A native sidecar: started before the probe container, stopped after it.
    container.restart_policy = Some("Always".to_owned());
    Some(DriverInstance { container, volumes })
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// A short, stable hash of the driver instances: image, arguments, environment, mounts
/// and volumes. Pod placement, resources and the sidecars do not change the driver's
/// answer and are left out, so editing them does not probe again.
fn fingerprint(instances: &[Option<&DriverInstance>]) -> String {
    let relevant: Vec<_> = instances
        .iter()
        .map(|i| {
            i.map(|i| {
                let c = &i.container;
                serde_json::json!({
                    "image": c.image, "command": c.command, "args": c.args, "env": c.env,
                    "envFrom": c.env_from, "mounts": c.volume_mounts,
                    "security": c.security_context, "volumes": i.volumes,
                })
            })
        })
        .collect();
    // Serialising plain data cannot fail; an empty hash input would still be stable.
    let bytes = serde_json::to_vec(&relevant).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..FINGERPRINT_LEN].to_owned()
}

/// The Job's name: `<cr>-probe-<fingerprint>` (a new image or argument list is a new Job).
pub fn job_name(cr: &CsiDeployment, fingerprint: &str) -> String {
    let cr_name = cr.metadata.name.as_deref().unwrap_or_default();
    format!("{cr_name}-probe-{fingerprint}")
}

/// The probe Job for `setup`, whose probe container runs `probe_image`.
pub fn job(cr: &CsiDeployment, setup: &ProbeSetup, probe_image: &str) -> Job {
    let name = job_name(cr, &setup.fingerprint);
    let workload = pod::workload(cr, name, COMPONENT);
    let mut args = vec!["probe".to_owned()];
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    let mut init = Vec::new();
    for (instance, dir, flag) in [
        (
            &setup.controller,
            CONTROLLER_SOCKET_DIR,
            "--controller-endpoint",
        ),
        (&setup.node, NODE_SOCKET_DIR, "--node-endpoint"),
    ] {
        let Some(instance) = instance else { continue };
        let socket_volume = instance
            .container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == SOCKET_DIR)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        args.push(format!("{flag}=unix://{dir}/csi.sock"));
        mounts.push(VolumeMount {
            read_only: Some(true),
            ..pod::mount(&socket_volume, dir)
        });
        volumes.extend(instance.volumes.iter().cloned());
        init.push(instance.container.clone());
    }
    args.push(format!("--socket-wait-seconds={SOCKET_WAIT_SECONDS}"));
    let probe = Container {
        name: PROBE_CONTAINER.to_owned(),
        image: Some(super::images::probe_image(&cr.spec.images, probe_image)),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(args),
        volume_mounts: Some(mounts),
        // The answer goes to /dev/termination-log; a probe that dies before writing it
        // still leaves the end of its log there.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        // Root without any capability, like the sidecars: drivers create their socket
        // owned by root with mode 0660 (the operator image's own user could not open it).
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            ..pod::restricted()
        }),
        ..Container::default()
    };
    let pod_spec = &setup.pod;
    Job {
        metadata: workload.metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
            template: PodTemplateSpec {
                metadata: Some(workload.template),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    service_account_name: pod_spec.service_account_name.clone(),
                    node_selector: pod_spec.node_selector.clone(),
                    tolerations: pod_spec.tolerations.clone(),
                    image_pull_secrets: pod_spec.image_pull_secrets.clone(),
                    init_containers: Some(init),
                    containers: vec![probe],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The labels of every probe Job of a CR (to list them, whatever their fingerprint).
pub fn job_selector(cr_name: &str) -> String {
    let labels: BTreeMap<String, String> = crate::labels::pod_selector(cr_name, COMPONENT);
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
