//! Reading back what the workloads did and turning it into status conditions a human
//! can act on.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use super::Context;
use super::apply::apply_params;
use super::conditions::{CondStatus, DEGRADED, PROGRESSING, READY, Verdict, merge, upsert};
use super::error::{Error, Verb};
use crate::crd::{CsiDeployment, CsiDeploymentStatus, WorkloadStatus};
use crate::render::{ManagedObject, Rendered};

/// What the cluster reports about the deployed driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `namespace/name` of the controller StatefulSet, for messages.
    pub controller_name: String,
    pub controller: Option<WorkloadStatus>,
    pub node_name: String,
    pub node: Option<WorkloadStatus>,
    /// Nodes whose CSINode lists the driver.
    pub registered: i32,
}

/// Reads the controller StatefulSet and node DaemonSet status and counts the CSINodes
/// that list the driver. A workload comes from `written` (this reconcile's apply answer)
/// when it was written, else from the complete watch store, else from the API server.
#[instrument(skip_all, fields(driver = %rendered.driver_name))]
pub async fn observe(
    ctx: &Context,
    written: &[DynamicObject],
    rendered: &Rendered,
    csinodes: &[std::sync::Arc<CSINode>],
) -> Result<Observed, Error> {
    let mut observed = Observed {
        registered: count_registered(csinodes, &rendered.driver_name),
        ..Observed::default()
    };
    for obj in &rendered.objects {
        let target = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name());
        match obj {
            ManagedObject::StatefulSet(_) => {
                observed.controller = read(ctx, written, obj, statefulset_status).await?;
                observed.controller_name = target;
            }
            ManagedObject::DaemonSet(_) => {
                observed.node = read(ctx, written, obj, daemonset_status).await?;
                observed.node_name = target;
            }
            _ => {}
        }
    }
    Ok(observed)
}

/// Reads the live workload `obj` names and summarises it; `None` when it does not exist.
async fn read<K>(
    ctx: &Context,
    written: &[DynamicObject],
    obj: &ManagedObject,
    summarise: fn(&K) -> WorkloadStatus,
) -> Result<Option<WorkloadStatus>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let answered = written
        .iter()
        .find(|w| {
            w.metadata.name.as_deref() == Some(obj.name())
                && w.metadata.namespace.as_deref() == Some(ns)
                && w.types.as_ref().is_some_and(|t| t.kind == K::kind(&()))
        })
        .and_then(|w| serde_json::to_value(w).ok())
        .and_then(|v| serde_json::from_value::<K>(v).ok());
    if let Some(live) = answered {
        return Ok(Some(summarise(&live)));
    }
    if let Some(cached) = ctx.owned.object::<K>(obj.kind(), ns, obj.name()) {
        return Ok(cached.as_ref().map(summarise));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let live = api.get_opt(obj.name()).await.map_err(Error::api(
        Verb::Get,
        format!("{} {ns}/{}", K::kind(&()), obj.name()),
    ))?;
    Ok(live.as_ref().map(summarise))
}

pub fn count_registered(csinodes: &[std::sync::Arc<CSINode>], driver: &str) -> i32 {
    let n = csinodes
        .iter()
        .filter(|node| node.spec.drivers.iter().any(|d| d.name == driver))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Counts only pods of the current generation as ready: right after an edit the old
/// pods are still ready, and calling that "Ready" would hide the rollout.
fn statefulset_status(sts: &StatefulSet) -> WorkloadStatus {
    let desired = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = sts.status.clone().unwrap_or_default();
    let current = status.observed_generation >= sts.metadata.generation;
    WorkloadStatus {
        desired,
        ready: status.ready_replicas.unwrap_or_default(),
        updated: if current {
            status.updated_replicas.unwrap_or_default()
        } else {
            0
        },
    }
}

fn daemonset_status(ds: &DaemonSet) -> WorkloadStatus {
    let status = ds.status.clone().unwrap_or_default();
    let current = status.observed_generation >= ds.metadata.generation;
    WorkloadStatus {
        desired: status.desired_number_scheduled,
        ready: status.number_ready,
        updated: if current {
            status.updated_number_scheduled.unwrap_or_default()
        } else {
            0
        },
    }
}

fn rolled_out(w: Option<&WorkloadStatus>) -> bool {
    w.is_some_and(|w| w.ready >= w.desired && w.updated >= w.desired)
}

/// The conditions for a deployment that was applied.
pub fn verdicts(cr: &CsiDeployment, rendered: &Rendered, obs: &Observed) -> Vec<Verdict> {
    let driver = &rendered.driver_name;
    let ctrl = obs.controller.unwrap_or_default();
    let node = obs.node.unwrap_or_default();
    let targeted = node.desired;
    // Per-node provisioning renders no StatefulSet: there is no controller to wait for.
    let controller_ready = !rendered.has_controller_pod() || rolled_out(obs.controller.as_ref());
    let (ready, reason, message) = if !controller_ready {
        (
            false,
            "ControllerNotReady",
            format!(
                "controller StatefulSet {}: {}/{} pods ready and updated; see `kubectl -n {} describe statefulset` and the pods' events",
                obs.controller_name,
                ctrl.ready.min(ctrl.updated),
                ctrl.desired,
                rendered.namespace
            ),
        )
    } else if obs.node.is_some() && targeted == 0 {
        (
            false,
            "NoNodes",
            format!(
                "node DaemonSet {} matches no node: check spec.node.nodeSelector and the nodes' taints",
                obs.node_name
            ),
        )
    } else if !rolled_out(obs.node.as_ref()) {
        (
            false,
            "NodePluginsNotReady",
            format!(
                "node DaemonSet {}: {}/{} pods ready and updated",
                obs.node_name,
                node.ready.min(node.updated),
                node.desired
            ),
        )
    } else if obs.registered < targeted {
        (
            false,
            "NotRegistered",
            format!(
                "driver {driver} registered on {}/{} nodes: check the node-driver-registrar logs and that spec.node.kubeletDir ({}) is kubelet's root directory",
                obs.registered, targeted, cr.spec.node.kubelet_dir
            ),
        )
    } else if !rendered.has_controller_pod() {
        (
            true,
            "Available",
            format!(
                "driver {driver} provisions per node and is registered on {}/{} nodes",
                obs.registered, targeted
            ),
        )
    } else {
        (
            true,
            "Available",
            format!(
                "controller {}/{} ready, driver {driver} registered on {}/{} nodes",
                ctrl.ready, ctrl.desired, obs.registered, targeted
            ),
        )
    };
    let progressing = !controller_ready || !rolled_out(obs.node.as_ref());
    let mut out = vec![
        Verdict::new(READY, CondStatus::from_bool(ready), reason, message),
        if progressing {
            Verdict::new(
                PROGRESSING,
                CondStatus::True,
                "RollingOut",
                "waiting for the controller and node pods to run the current spec",
            )
        } else {
            Verdict::new(
                PROGRESSING,
                CondStatus::False,
                "Complete",
                "every pod runs the current spec",
            )
        },
    ];
    out.push(if rendered.warnings.is_empty() {
        // Left-out parts of unset features are no fault, but still said.
        Verdict::new(
            DEGRADED,
            CondStatus::False,
            "AsExpected",
            rendered.notes.join("; "),
        )
    } else {
        Verdict::new(
            DEGRADED,
            CondStatus::True,
            "FeatureUnavailable",
            rendered.warnings.join("; "),
        )
    });
    out
}

/// The conditions when nothing could be applied: the reason says why and what to do.
pub fn blocked_verdicts(reason: &str, message: &str) -> Vec<Verdict> {
    vec![
        Verdict::new(
            READY,
            CondStatus::Unknown,
            reason,
            "nothing was applied; see Degraded",
        ),
        Verdict::new(
            PROGRESSING,
            CondStatus::False,
            reason,
            "waiting for a spec change",
        ),
        Verdict::new(DEGRADED, CondStatus::True, reason, message),
    ]
}

/// The status after a successful apply.
pub fn applied_status(
    cr: &CsiDeployment,
    rendered: &Rendered,
    obs: &Observed,
    now: &Time,
) -> CsiDeploymentStatus {
    let previous = cr.status.clone().unwrap_or_default();
    let mut status = CsiDeploymentStatus {
        observed_generation: cr.metadata.generation,
        conditions: merge(
            &previous.conditions,
            &verdicts(cr, rendered, obs),
            cr.metadata.generation,
            now,
        ),
        controller: obs.controller,
        node: obs.node,
        sidecars: rendered.sidecar_decisions.clone(),
        encrypted_storage_classes: rendered.encrypted_classes.clone(),
        driver_name: Some(rendered.driver_name.clone()),
        capabilities: previous.capabilities,
        ..CsiDeploymentStatus::default()
    };
    status.set_registration(obs.registered, obs.node.map_or(0, |n| n.desired));
    status
}

/// The status when the spec could not be applied; keeps what was observed before (the
/// previous deployment, if any, is left running).
pub fn blocked_status(
    cr: &CsiDeployment,
    reason: &str,
    message: &str,
    now: &Time,
) -> CsiDeploymentStatus {
    let previous = cr.status.clone().unwrap_or_default();
    CsiDeploymentStatus {
        observed_generation: cr.metadata.generation,
        conditions: merge(
            &previous.conditions,
            &blocked_verdicts(reason, message),
            cr.metadata.generation,
            now,
        ),
        ..previous
    }
}

/// The CR's current status with one condition set (the others and every field kept).
pub fn with_condition(cr: &CsiDeployment, verdict: &Verdict, now: &Time) -> CsiDeploymentStatus {
    let mut status = cr.status.clone().unwrap_or_default();
    status.conditions = upsert(&status.conditions, verdict, cr.metadata.generation, now);
    status
}

/// Writes `status` with server-side apply on the status subresource, unless the CR
/// already carries exactly it. Returns whether a write happened.
#[instrument(skip_all, fields(cr = %cr.name_any()))]
pub async fn write_status(
    client: &Client,
    cr: &CsiDeployment,
    status: &CsiDeploymentStatus,
) -> Result<bool, Error> {
    if cr.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let name = cr.name_any();
    let api: Api<CsiDeployment> = Api::all(client.clone());
    let body = json!({
        "apiVersion": CsiDeployment::api_version(&()),
        "kind": CsiDeployment::kind(&()),
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(Error::api(
            Verb::PatchStatus,
            format!("CsiDeployment {name}"),
        ))?;
    Ok(true)
}

/// The sidecars deployed now that were not before, and those gone (`pod/container`);
/// `None` when nothing changed or there was no previous deployment to compare with.
pub fn sidecar_changes(
    previous: Option<&CsiDeploymentStatus>,
    now: &CsiDeploymentStatus,
) -> Option<(Vec<String>, Vec<String>)> {
    let deployed = |status: &CsiDeploymentStatus| -> std::collections::BTreeSet<String> {
        status
            .sidecars
            .iter()
            .filter(|s| s.deployed)
            .map(|s| format!("{}/{}", s.pod, s.name))
            .collect()
    };
    let before = deployed(previous.filter(|p| !p.sidecars.is_empty())?);
    let after = deployed(now);
    let added: Vec<String> = after.difference(&before).cloned().collect();
    let removed: Vec<String> = before.difference(&after).cloned().collect();
    (!added.is_empty() || !removed.is_empty()).then_some((added, removed))
}
