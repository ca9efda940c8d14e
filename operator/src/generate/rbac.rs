//! The operator's own identity and permissions (config/rbac, and the CSV's
//! clusterPermissions/permissions).
//!
//! The ClusterRole is computed, not listed by hand: what the reconciler itself calls, plus
//! every permission of every Role and ClusterRole the renderer can give a driver's sidecars
//! and plugins (the apiserver only lets a subject grant what it holds). A new permission in
//! `render::rbac` therefore reaches the operator's role by re-running `generate`, and the
//! drift test fails until someone does.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use plinth_api::capabilities::Sidecar;

use super::policy::{merge, rule};
use super::{NAMESPACE, SERVICE_ACCOUNT, manager};
use crate::render::ManagedKind;
use crate::render::secrets::OPERATION_SECRET_READER;

/// Name of the ClusterRole, ClusterRoleBinding and ServiceAccount.
pub const CLUSTER_ROLE: &str = "plinth-operator";
/// Name of the namespaced Role for leader election.
pub const LEADER_ELECTION_ROLE: &str = "plinth-operator-leader-election";

/// Verbs on every object kind the operator manages: server-side apply is `patch` (and
/// `create` through apply), pruning and replacing immutable objects are `delete`.
const MANAGE: &[&str] = &["create", "delete", "get", "list", "patch", "watch"];

/// What the reconciler itself calls, cluster-wide.
pub fn own_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        // The custom resource: watch it, add/remove the finalizer (patch), write status.
        rule(
            &["plinth.dev"],
            &["csideployments"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["plinth.dev"],
            &["csideployments/status"],
            &["get", "patch"],
        ),
        // Owner references with blockOwnerDeletion need `update` on the owner's finalizers
        // subresource (OwnerReferencesPermissionEnforcement admission).
        rule(&["plinth.dev"], &["csideployments/finalizers"], &["update"]),
        // Which nodes registered the driver.
        rule(
            &["storage.k8s.io"],
            &["csinodes"],
            &["get", "list", "watch"],
        ),
        // Whether volumes of a driver still exist before deleting it.
        rule(&[""], &["persistentvolumes"], &["list"]),
        // The workload namespace, when a CR names one that does not exist yet; never
        // deleted, so no `delete`.
        rule(&[""], &["namespaces"], &["create"]),
        // The built-in driver's per-node capacity records go with the driver.
        rule(&["plinth.dev"], &["poolnodes"], &["list", "delete"]),
        // Whether the snapshot APIs are served is asked through API discovery, which every
        // authenticated user may read; their CRDs are watched (metadata only) so that one
        // installed after the operator started is noticed at once.
        rule(
            &["apiextensions.k8s.io"],
            &["customresourcedefinitions"],
            &["list", "watch"],
        ),
        // Probe Jobs (what a driver image advertises): applied, watched, deleted once
        // read; their pods only listed, to read the answer and explain a failure.
        rule(
            &["batch"],
            &["jobs"],
            &["create", "delete", "list", "patch", "watch"],
        ),
        rule(&[""], &["pods"], &["list"]),
        // Events about a cluster-scoped CsiDeployment land in `default`; about namespaced
        // objects in theirs: so cluster-wide. `patch` updates an event series.
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ];
    rules.extend(ManagedKind::ALL.iter().map(|kind| {
        let ar = kind.api_resource();
        rule(&[ar.group.as_str()], &[ar.plural.as_str()], MANAGE)
    }));
    rules
}

/// Everything any Role or ClusterRole the renderer creates can grant: each sidecar's rules,
/// the sidecars' leader-election Role, and the built-in driver's plugins' rules on its
/// custom resources. Namespaced rules are held cluster-wide: the operator creates those
/// Roles in whatever namespace a CR names.
pub fn grantable_rules() -> Vec<PolicyRule> {
    use crate::render::rbac::{self, DriverPlugin};
    Sidecar::ALL
        .into_iter()
        .flat_map(|sidecar| {
            let rules = rbac::sidecar_rules(sidecar);
            rules.cluster.into_iter().chain(rules.namespaced)
        })
        .chain(rbac::leader_election_rules())
        .chain(DriverPlugin::ALL.into_iter().flat_map(rbac::driver_rules))
        .collect()
}

/// Binding the shipped operation-secret reader (and nothing else): the operator grants
/// sidecars `get` on the Secrets their StorageClasses name without ever holding Secret
/// access itself, which holding what it grants would require (see `render::secrets`).
pub fn bind_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        resource_names: Some(vec![OPERATION_SECRET_READER.to_owned()]),
        ..rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"])
    }]
}

/// The operator's ClusterRole rules: its own needs ∪ every grantable permission ∪ binding
/// the operation-secret reader.
pub fn cluster_rules() -> Vec<PolicyRule> {
    merge(
        own_rules()
            .into_iter()
            .chain(grantable_rules())
            .chain(bind_rules()),
    )
}

/// The rules of [`OPERATION_SECRET_READER`]: reading one Secret by name, what a sidecar
/// does with the operation secret a StorageClass or VolumeSnapshotClass names.
pub fn operation_secret_reader_rules() -> Vec<PolicyRule> {
    vec![rule(&[""], &["secrets"], &["get"])]
}

/// The ClusterRole the operator binds (per namespace or cluster-wide) to sidecars that
/// read operation secrets; it holds no rights of its own through it.
pub fn operation_secret_reader() -> ClusterRole {
    ClusterRole {
        metadata: meta(OPERATION_SECRET_READER, None),
        rules: Some(operation_secret_reader_rules()),
        ..ClusterRole::default()
    }
}

/// Name of the operator's leader-election Lease: the default of `run --lease-name` (a
/// test holds them equal). The Role is limited to this one Lease.
pub const LEASE_NAME: &str = "plinth-operator-leader";

/// The operator's namespaced rules (its own namespace): its leader-election Lease. Creating
/// cannot be limited to a name (the object does not exist yet); the rest can. (The
/// ClusterRole happens to cover leases too, because the sidecars' leader election needs
/// them; this Role states the operator's own need and survives that changing.)
pub fn namespaced_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        PolicyRule {
            resource_names: Some(vec![LEASE_NAME.to_owned()]),
            ..rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "patch", "update"],
            )
        },
    ]
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(manager::labels()),
        ..ObjectMeta::default()
    }
}

fn subjects() -> Option<Vec<Subject>> {
    Some(vec![Subject {
        kind: "ServiceAccount".to_owned(),
        name: SERVICE_ACCOUNT.to_owned(),
        namespace: Some(NAMESPACE.to_owned()),
        ..Subject::default()
    }])
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

pub fn service_account() -> ServiceAccount {
    ServiceAccount {
        metadata: meta(SERVICE_ACCOUNT, Some(NAMESPACE)),
        ..ServiceAccount::default()
    }
}

pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(CLUSTER_ROLE, None),
        rules: Some(cluster_rules()),
        ..ClusterRole::default()
    }
}

pub fn cluster_role_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(CLUSTER_ROLE, None),
        role_ref: role_ref("ClusterRole", CLUSTER_ROLE),
        subjects: subjects(),
    }
}

pub fn leader_election_role() -> Role {
    Role {
        metadata: meta(LEADER_ELECTION_ROLE, Some(NAMESPACE)),
        rules: Some(namespaced_rules()),
    }
}

pub fn leader_election_role_binding() -> RoleBinding {
    RoleBinding {
        metadata: meta(LEADER_ELECTION_ROLE, Some(NAMESPACE)),
        role_ref: role_ref("Role", LEADER_ELECTION_ROLE),
        subjects: subjects(),
    }
}
