//! Pure rendering: a validated `CsiDeployment` plus facts about the cluster become every
//! Kubernetes object of the deployment, typed, deterministic, labelled and owned.
//!
//! No client, no async: the reconciler applies what comes out, `plinth-operator render`
//! prints it, and the golden tests pin it.

pub mod admission;
pub mod classes;
pub mod controller;
mod csidriver;
pub mod images;
pub mod names;
pub mod node;
pub mod objects;
pub mod plan;
pub mod pod;
pub mod probe;
pub mod rbac;
pub mod secrets;
pub mod yaml;

use plinth_api::capabilities::{DriverFeatures, SidecarNeed};

pub use objects::{ManagedKind, ManagedObject, VolumeSnapshotClass};
pub use plan::Plan;

/// The driver container's name in both pods (the key of `resources`).
pub fn pod_driver_container_name(cr: &CsiDeployment) -> &'static str {
    pod::driver_container_name(cr)
}

use crate::crd::CsiDeployment;
use crate::validate::{self, ValidationErrors};

/// What the reconciler discovered about the cluster (and the built-in driver of this
/// release) that changes the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderEnv {
    /// The `snapshot.storage.k8s.io` CRDs (VolumeSnapshot, -Content, -Class) are served.
    pub snapshot_crds_present: bool,
    /// The `groupsnapshot.storage.k8s.io` CRDs are served.
    pub group_snapshot_crds_present: bool,
    /// The features the built-in driver image of this release serves. The driver never
    /// advertises more, so deploying a sidecar beyond them would only crash-loop.
    pub builtin_features: DriverFeatures,
    /// What a third-party driver advertised when probed (lifecycle modes from its
    /// declaration): used instead of the declaration. `None`: not probed (yet).
    pub driver_capabilities: Option<plinth_api::capabilities::Capabilities>,
}

impl Default for RenderEnv {
    fn default() -> Self {
        Self {
            snapshot_crds_present: false,
            group_snapshot_crds_present: false,
            builtin_features: plinth_api::served_features(),
            driver_capabilities: None,
        }
    }
}

/// Everything one CsiDeployment needs, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub objects: Vec<ManagedObject>,
    /// The controller pod's sidecars and why each is there.
    pub sidecars: Vec<SidecarNeed>,
    /// StorageClasses whose volumes are encrypted (`storageClasses[].encryption`), by name.
    pub encrypted_classes: Vec<String>,
    /// Every sidecar of both pods, deployed or left out, and why (for status).
    pub sidecar_decisions: Vec<crate::crd::SidecarStatus>,
    /// What the CR requires and the cluster cannot serve yet (snapshots set to `true`
    /// without the snapshot CRDs): the deployment goes ahead, Degraded.
    pub warnings: Vec<String>,
    /// What is left out of features the CR left unset (the snapshotter while the
    /// snapshot CRDs are missing): said, not a fault.
    pub notes: Vec<String>,
    pub driver_name: String,
    pub namespace: String,
}

impl Rendered {
    /// Whether a controller StatefulSet is part of the deployment (not with per-node
    /// provisioning): readiness must not wait for one that is never rendered.
    pub fn has_controller_pod(&self) -> bool {
        self.objects
            .iter()
            .any(|o| o.kind() == ManagedKind::StatefulSet)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid CsiDeployment")]
    Invalid(#[from] ValidationErrors),
    #[error("CsiDeployment has no metadata.name")]
    MissingName,
}

/// Render every object `cr` needs. Validates first: rendering never guesses around an
/// invalid spec.
pub fn render(cr: &CsiDeployment, env: &RenderEnv) -> Result<Rendered, RenderError> {
    validate::validate_in(cr, env)?;
    let cr_name = cr
        .metadata
        .name
        .as_deref()
        .ok_or(RenderError::MissingName)?;
    let plan = Plan::new(cr, env);
    let mut objects = vec![ManagedObject::CsiDriver(csidriver::csi_driver(cr, &plan))];
    objects.extend(rbac::objects(cr, &plan));
    objects.extend(admission::objects(cr));
    // Per-node provisioning has no controller pod at all.
    if !plan.per_node {
        objects.push(ManagedObject::StatefulSet(controller::stateful_set(
            cr, &plan,
        )));
    }
    objects.push(ManagedObject::DaemonSet(node::daemon_set(cr, &plan)));
    objects
        .extend(controller::disruption_budget(cr, &plan).map(ManagedObject::PodDisruptionBudget));
    objects.extend(
        classes::storage_classes(cr, &plan)
            .into_iter()
            .map(ManagedObject::StorageClass),
    );
    objects.extend(
        classes::snapshot_classes(cr, &plan)
            .into_iter()
            .map(ManagedObject::VolumeSnapshotClass),
    );
    if cr_name.is_empty() {
        return Err(RenderError::MissingName);
    }
    // Apply order, then name: stable output whatever the CR's list order.
    objects.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
    Ok(Rendered {
        objects,
        sidecars: plan.controller_sidecars.clone(),
        encrypted_classes: classes::encrypted_class_names(cr),
        sidecar_decisions: plan.explain_sidecars(&cr.spec.features),
        warnings: plan.warnings.clone(),
        notes: plan.notes.clone(),
        driver_name: plan.driver_name.clone(),
        namespace: cr.spec.namespace.clone(),
    })
}
