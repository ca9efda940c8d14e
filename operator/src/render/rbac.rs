//! ServiceAccounts and least-privilege RBAC, per sidecar and per driver plugin.
//!
//! Each sidecar gets its own ClusterRole (and Role for namespaced objects) holding what its
//! upstream `deploy/kubernetes/rbac.yaml` asks for, narrowed to the features in use: no
//! snapshot rules for a provisioner without snapshots, no VolumeAttachment access without
//! PUBLISH_UNPUBLISH_VOLUME, no CSIStorageCapacity without capacity tracking.
//!
//! The built-in driver's controller and node plugins hand work to each other through the
//! driver's custom resources (`plinth_api::cluster::crd`): each plugin gets a ClusterRole
//! for exactly its side of that exchange. A third-party driver gets no driver roles; its
//! node ServiceAccount no roles at all.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::Resource;
use plinth_api::capabilities::{PluginCapability, Sidecar};
use plinth_api::cluster::crd::{GROUP, PoolNode, PoolSnapshot, PoolVolume};

use super::pod::PodKind;
use super::secrets::{self, SecretScope};
use super::{ManagedObject, Plan, classes, controller, names};
use crate::crd::CsiDeployment;
use crate::labels;

/// What one sidecar needs: cluster-wide rules and rules in the driver's namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SidecarRbac {
    pub cluster: Vec<PolicyRule>,
    pub namespaced: Vec<PolicyRule>,
}

/// The features that widen a sidecar's permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub snapshots: bool,
    pub group_snapshots: bool,
    pub attach: bool,
    pub capacity: bool,
    pub topology: bool,
    /// The resizer waits for pods to stop using a volume (offline-only expansion).
    pub offline_resize: bool,
    /// The provisioner runs in the node pods (per-node provisioning): its capacity objects
    /// are owned by its pod, not by a StatefulSet.
    pub per_node: bool,
}

impl Needs {
    pub const ALL: Needs = Needs {
        snapshots: true,
        group_snapshots: true,
        attach: true,
        capacity: true,
        topology: true,
        offline_resize: true,
        per_node: false,
    };

    pub fn of(plan: &Plan) -> Self {
        let caps = &plan.capabilities;
        Self {
            snapshots: plan.snapshots,
            group_snapshots: plan.group_snapshots,
            attach: caps.attach_required(),
            capacity: plan.capacity_tracking(),
            topology: caps.has_topology(),
            offline_resize: !caps.plugin.contains(&PluginCapability::OnlineExpansion)
                && caps.plugin.contains(&PluginCapability::OfflineExpansion),
            per_node: plan.per_node,
        }
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const EVENTS: &[&str] = &["list", "watch", "create", "update", "patch"];
const LEASES: &[&str] = &["get", "watch", "list", "delete", "update", "create"];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

fn events() -> PolicyRule {
    rule("", &["events"], EVENTS)
}

/// The rules `sidecar` needs with the features in `needs`.
pub fn rules(sidecar: Sidecar, needs: Needs) -> SidecarRbac {
    let mut cluster = Vec::new();
    let mut namespaced = Vec::new();
    match sidecar {
        Sidecar::Provisioner => {
            cluster.push(rule(
                "",
                &["persistentvolumes"],
                &["get", "list", "watch", "create", "patch", "delete"],
            ));
            cluster.push(rule(
                "",
                &["persistentvolumeclaims"],
                &["get", "list", "watch", "update"],
            ));
            cluster.push(rule("storage.k8s.io", &["storageclasses"], READ));
            cluster.push(rule("storage.k8s.io", &["volumeattributesclasses"], READ));
            cluster.push(events());
            if needs.topology || needs.capacity {
                cluster.push(rule("", &["nodes"], READ));
                cluster.push(rule("storage.k8s.io", &["csinodes"], READ));
            }
            if needs.snapshots {
                // Restoring a volume from a snapshot reads the snapshot and its content.
                cluster.push(rule(
                    "snapshot.storage.k8s.io",
                    &["volumesnapshots", "volumesnapshotcontents"],
                    &["get", "list"],
                ));
            }
            if needs.attach {
                // A volume is deleted only once no VolumeAttachment refers to it.
                cluster.push(rule("storage.k8s.io", &["volumeattachments"], READ));
            }
            if needs.capacity {
                namespaced.push(rule(
                    "storage.k8s.io",
                    &["csistoragecapacities"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ));
                // The owner of the capacity objects is found from the pod, up to the
                // StatefulSet (`--capacity-ownerref-level=1`); per node the pod itself
                // owns them (level 0).
                namespaced.push(rule("", &["pods"], &["get"]));
                if !needs.per_node {
                    namespaced.push(rule("apps", &["statefulsets"], &["get"]));
                }
            }
        }
        Sidecar::Attacher => {
            cluster.push(rule(
                "",
                &["persistentvolumes"],
                &["get", "list", "watch", "update", "patch"],
            ));
            cluster.push(rule("", &["nodes"], READ));
            cluster.push(rule("storage.k8s.io", &["csinodes"], READ));
            cluster.push(rule(
                "storage.k8s.io",
                &["volumeattachments"],
                &["get", "list", "watch", "update", "patch"],
            ));
            cluster.push(rule(
                "storage.k8s.io",
                &["volumeattachments/status"],
                &["patch"],
            ));
            cluster.push(events());
        }
        Sidecar::Resizer => {
            cluster.push(rule(
                "",
                &["persistentvolumes"],
                &["get", "list", "watch", "patch"],
            ));
            cluster.push(rule("", &["persistentvolumeclaims"], READ));
            cluster.push(rule("", &["persistentvolumeclaims/status"], &["patch"]));
            cluster.push(rule("storage.k8s.io", &["volumeattributesclasses"], READ));
            cluster.push(events());
            if needs.offline_resize {
                // Offline expansion waits until no pod uses the volume.
                cluster.push(rule("", &["pods"], READ));
            }
        }
        Sidecar::Snapshotter => {
            cluster.push(events());
            cluster.push(rule(
                "snapshot.storage.k8s.io",
                &["volumesnapshotclasses"],
                READ,
            ));
            cluster.push(rule(
                "snapshot.storage.k8s.io",
                &["volumesnapshotcontents"],
                &["create", "get", "list", "watch", "update", "patch"],
            ));
            cluster.push(rule(
                "snapshot.storage.k8s.io",
                &["volumesnapshotcontents/status"],
                &["update", "patch"],
            ));
            if needs.group_snapshots {
                cluster.push(rule(
                    "groupsnapshot.storage.k8s.io",
                    &["volumegroupsnapshotclasses"],
                    READ,
                ));
                cluster.push(rule(
                    "groupsnapshot.storage.k8s.io",
                    &["volumegroupsnapshotcontents"],
                    &["get", "list", "watch", "update", "patch"],
                ));
                cluster.push(rule(
                    "groupsnapshot.storage.k8s.io",
                    &["volumegroupsnapshotcontents/status"],
                    &["update", "patch"],
                ));
            }
        }
        // Both talk only to the driver's socket (and kubelet): no API access.
        Sidecar::LivenessProbe | Sidecar::NodeDriverRegistrar => {}
    }
    SidecarRbac {
        cluster,
        namespaced,
    }
}

/// Every permission `sidecar` may need in any configuration (the union over features):
/// the operator's own ClusterRole must hold it to be allowed to grant it.
pub fn sidecar_rules(sidecar: Sidecar) -> SidecarRbac {
    rules(sidecar, Needs::ALL)
}

/// One of the built-in driver's two plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverPlugin {
    /// `--mode=controller`, in the controller StatefulSet.
    Controller,
    /// `--mode=node`, in the node DaemonSet.
    Node,
}

impl DriverPlugin {
    pub const ALL: [DriverPlugin; 2] = [Self::Controller, Self::Node];
}

/// A driver resource's plural (from the driver's types, so a renamed resource cannot leave
/// a stale rule behind).
fn plural<K: Resource<DynamicType = ()>>() -> String {
    K::plural(&()).into_owned()
}

/// Its status subresource.
fn status<K: Resource<DynamicType = ()>>() -> String {
    format!("{}/status", K::plural(&()))
}

fn driver_rule(resources: &[String], verbs: &[&str]) -> PolicyRule {
    let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
    rule(GROUP, &resources, verbs)
}

/// What `plugin` of the built-in driver does with the driver's custom resources.
///
/// The controller records work (create), follows it (watch), raises a volume's size
/// (patch), withdraws it (delete), and reads PoolNodes to place volumes. The node plugin
/// does the work: it removes its finalizer when the image is gone (patch), answers in
/// status, and publishes its own PoolNode by server-side apply (create and patch). Neither
/// needs `update` (every write is a patch), `deletecollection` or wildcards.
///
/// RBAC cannot narrow the node plugin to its own node's objects: rules name resources, and
/// `resourceNames` would have to list volume IDs that do not exist yet. Each node plugin
/// watches only the objects labelled with its node (`plinth.dev/node`), which keeps a
/// healthy plugin to its own work; a compromised node pod could still write any node's
/// objects of this group, which is why [`super::admission`] holds its writes to objects
/// whose `spec.node` is the node its token was issued on.
pub fn driver_rules(plugin: DriverPlugin) -> Vec<PolicyRule> {
    let work = [plural::<PoolVolume>(), plural::<PoolSnapshot>()];
    match plugin {
        DriverPlugin::Controller => vec![
            driver_rule(
                &work,
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
            driver_rule(&[plural::<PoolNode>()], READ),
        ],
        DriverPlugin::Node => vec![
            driver_rule(&work, &["get", "list", "watch", "patch"]),
            driver_rule(
                &[status::<PoolVolume>(), status::<PoolSnapshot>()],
                &["patch"],
            ),
            driver_rule(&[plural::<PoolNode>()], &["get", "create", "patch"]),
            driver_rule(&[status::<PoolNode>()], &["patch"]),
        ],
    }
}

/// The Lease rules of leader election (in the driver's namespace).
pub fn leader_election_rules() -> Vec<PolicyRule> {
    vec![rule("coordination.k8s.io", &["leases"], LEASES)]
}

fn service_account(cr: &CsiDeployment, name: String) -> ServiceAccount {
    ServiceAccount {
        metadata: labels::metadata(cr, name, Some(&cr.spec.namespace)),
        ..ServiceAccount::default()
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

fn subject(cr: &CsiDeployment, service_account: String) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".to_owned(),
        name: service_account,
        namespace: Some(cr.spec.namespace.clone()),
        api_group: None,
    }]
}

fn controller_subject(cr: &CsiDeployment) -> Vec<Subject> {
    subject(cr, names::controller_service_account(cr))
}

/// A ClusterRole and its ClusterRoleBinding to `subjects`.
fn cluster_grant(
    cr: &CsiDeployment,
    name: String,
    rules: Vec<PolicyRule>,
    subjects: Vec<Subject>,
) -> [ManagedObject; 2] {
    [
        ManagedObject::ClusterRole(ClusterRole {
            metadata: labels::metadata(cr, name.clone(), None),
            rules: Some(rules),
            aggregation_rule: None,
        }),
        ManagedObject::ClusterRoleBinding(ClusterRoleBinding {
            metadata: labels::metadata(cr, name.clone(), None),
            role_ref: role_ref("ClusterRole", &name),
            subjects: Some(subjects),
        }),
    ]
}

/// A Role and its RoleBinding to `subjects`.
fn namespaced_grant(
    cr: &CsiDeployment,
    name: String,
    rules: Vec<PolicyRule>,
    subjects: Vec<Subject>,
) -> [ManagedObject; 2] {
    let ns = Some(cr.spec.namespace.as_str());
    [
        ManagedObject::Role(Role {
            metadata: labels::metadata(cr, name.clone(), ns),
            rules: Some(rules),
        }),
        ManagedObject::RoleBinding(RoleBinding {
            metadata: labels::metadata(cr, name.clone(), ns),
            role_ref: role_ref("Role", &name),
            subjects: Some(subjects),
        }),
    ]
}

/// The ServiceAccount of `pod`.
fn pod_subject(cr: &CsiDeployment, pod: PodKind) -> Vec<Subject> {
    match pod {
        PodKind::Controller => controller_subject(cr),
        PodKind::Node => subject(cr, names::node_service_account(cr)),
    }
}

/// Bindings of [`OPERATION_SECRET_READER`] for the operation secrets the classes name:
/// one RoleBinding per literal namespace, or one ClusterRoleBinding when a namespace is
/// templated, to the ServiceAccount of the pod running the reading sidecars. None for the
/// node-stage, node-publish and node-expand secrets: kubelet reads those with its own
/// node authorization.
pub fn operation_secret_bindings(cr: &CsiDeployment, plan: &Plan) -> Vec<ManagedObject> {
    let storage_classes = classes::storage_class_specs(cr);
    let parameters: Vec<_> = storage_classes
        .iter()
        .map(classes::rendered_parameters)
        .collect();
    let snapshot_classes = if plan.snapshots {
        classes::snapshot_class_specs(cr)
    } else {
        Vec::new()
    };
    let refs = parameters
        .iter()
        .flat_map(|p| secrets::secret_refs(p, secrets::STORAGE_CLASS_KINDS))
        .chain(
            snapshot_classes
                .iter()
                .flat_map(|c| secrets::secret_refs(&c.parameters, secrets::SNAPSHOT_CLASS_KINDS)),
        );
    let scopes = secrets::scopes(refs, |sidecar| plan.has_sidecar(sidecar));
    let name = names::operation_secrets_binding(cr);
    let subjects = pod_subject(cr, plan.api_sidecar_pod());
    let reader = role_ref("ClusterRole", secrets::OPERATION_SECRET_READER);
    scopes
        .into_iter()
        .map(|scope| match scope {
            SecretScope::Cluster => ManagedObject::ClusterRoleBinding(ClusterRoleBinding {
                metadata: labels::metadata(cr, name.clone(), None),
                role_ref: reader.clone(),
                subjects: Some(subjects.clone()),
            }),
            SecretScope::Namespace(ns) => ManagedObject::RoleBinding(RoleBinding {
                metadata: labels::metadata(cr, name.clone(), Some(&ns)),
                role_ref: reader.clone(),
                subjects: Some(subjects.clone()),
            }),
        })
        .collect()
}

/// ServiceAccounts, roles and bindings of one deployment.
pub fn objects(cr: &CsiDeployment, plan: &Plan) -> Vec<ManagedObject> {
    let mut out = Vec::new();
    // Per-node provisioning has no controller pod, so no controller identity either.
    if !plan.per_node {
        out.push(ManagedObject::ServiceAccount(service_account(
            cr,
            names::controller_service_account(cr),
        )));
    }
    out.push(ManagedObject::ServiceAccount(ServiceAccount {
        // The registrar and livenessprobe never call the API server, so no container
        // gets a token by default; the containers that do (the built-in driver, the
        // per-node provisioner and snapshotter) mount one of their own
        // (`node::api_token_volume`).
        automount_service_account_token: Some(false),
        ..service_account(cr, names::node_service_account(cr))
    }));
    if cr.spec.is_builtin() {
        out.extend(cluster_grant(
            cr,
            names::driver_controller_role(cr),
            driver_rules(DriverPlugin::Controller),
            controller_subject(cr),
        ));
        out.extend(cluster_grant(
            cr,
            names::driver_node_role(cr),
            driver_rules(DriverPlugin::Node),
            subject(cr, names::node_service_account(cr)),
        ));
    }
    let needs = Needs::of(plan);
    let placed = plan
        .controller_sidecars
        .iter()
        .map(|need| (need, PodKind::Controller))
        .chain(plan.node_sidecars.iter().map(|need| (need, PodKind::Node)));
    for (need, pod) in placed {
        let SidecarRbac {
            cluster,
            namespaced,
        } = rules(need.sidecar, needs);
        let name = names::sidecar_role(cr, need.sidecar);
        if !cluster.is_empty() {
            out.extend(cluster_grant(
                cr,
                name.clone(),
                cluster,
                pod_subject(cr, pod),
            ));
        }
        if !namespaced.is_empty() {
            out.extend(namespaced_grant(cr, name, namespaced, pod_subject(cr, pod)));
        }
    }
    if controller::leader_election(cr) {
        out.extend(namespaced_grant(
            cr,
            names::leader_election_role(cr),
            leader_election_rules(),
            controller_subject(cr),
        ));
    }
    out.extend(operation_secret_bindings(cr, plan));
    out
}
