//! Deterministic object names. Everything the operator creates is `plinth-<cr>-...`: the
//! CR is cluster-scoped, so its name is unique and so are these, and the prefix keeps them
//! clear of other software's cluster-wide roles.

use plinth_api::capabilities::Sidecar;

use crate::crd::CsiDeployment;

/// The longest CR name: `plinth-<cr>-controller` must stay within 52 characters, the
/// limit for a StatefulSet whose revision label (`<name>-<hash>`) fits 63.
pub const MAX_CR_NAME: usize = 34;

pub fn cr_name(cr: &CsiDeployment) -> &str {
    cr.metadata.name.as_deref().unwrap_or_default()
}

fn prefixed(cr: &CsiDeployment, suffix: &str) -> String {
    format!("plinth-{}-{suffix}", cr_name(cr))
}

/// The default StorageClass and VolumeSnapshotClass name.
pub fn default_class(cr: &CsiDeployment) -> String {
    format!("plinth-{}", cr_name(cr))
}

/// The controller StatefulSet (and its PodDisruptionBudget).
pub fn controller(cr: &CsiDeployment) -> String {
    prefixed(cr, "controller")
}

/// The node DaemonSet.
pub fn node(cr: &CsiDeployment) -> String {
    prefixed(cr, "node")
}

pub fn controller_service_account(cr: &CsiDeployment) -> String {
    prefixed(cr, "controller")
}

pub fn node_service_account(cr: &CsiDeployment) -> String {
    prefixed(cr, "node")
}

/// The ClusterRole / Role (and binding) of one sidecar.
pub fn sidecar_role(cr: &CsiDeployment, sidecar: Sidecar) -> String {
    let short = match sidecar {
        Sidecar::Provisioner => "provisioner",
        Sidecar::Attacher => "attacher",
        Sidecar::Resizer => "resizer",
        Sidecar::Snapshotter => "snapshotter",
        Sidecar::LivenessProbe => "livenessprobe",
        Sidecar::NodeDriverRegistrar => "node-driver-registrar",
    };
    prefixed(cr, short)
}

/// The Role granting the controller's sidecars their leader-election Leases.
pub fn leader_election_role(cr: &CsiDeployment) -> String {
    prefixed(cr, "leader-election")
}

/// The bindings granting the sidecars `get` on the operation secrets the classes name
/// (a RoleBinding per namespace, or one ClusterRoleBinding).
pub fn operation_secrets_binding(cr: &CsiDeployment) -> String {
    prefixed(cr, "operation-secrets")
}

/// The ClusterRole (and binding) of the built-in driver's controller plugin.
pub fn driver_controller_role(cr: &CsiDeployment) -> String {
    prefixed(cr, "driver-controller")
}

/// The ClusterRole (and binding) of the built-in driver's node plugin.
pub fn driver_node_role(cr: &CsiDeployment) -> String {
    prefixed(cr, "driver-node")
}

/// The ValidatingAdmissionPolicy (and binding) holding the node plugin to its own node.
pub fn driver_node_policy(cr: &CsiDeployment) -> String {
    prefixed(cr, "driver-node")
}
