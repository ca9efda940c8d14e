//! The `CsiDeployment` custom resource (`plinth.dev/v1alpha1`).
//!
//! The CRD YAML is generated from these types (`plinth-operator crd`): the doc comments
//! become the descriptions `kubectl explain` shows, and what the OpenAPI schema can check
//! (enums, ranges, patterns, CEL rules) is checked there, by the apiserver, before the
//! operator ever sees the object. [`crate::validate`] checks the rest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::storage::v1::TokenRequest;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use plinth_api::Feature;
use plinth_api::capabilities::Capabilities;
use schemars::JsonSchema;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The driver name of Plinth's built-in driver.
pub const BUILTIN_DRIVER_NAME: &str = "local.csi.plinth.dev";
/// Where kubelet keeps its state on most distributions.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";
/// Where the built-in driver keeps volume images on each node.
/// Where pools go when `node.poolPath` is unset: one directory per driver name.
pub const POOL_PATH_PARENT: &str = "/var/lib/plinth";
/// The port the livenessprobe sidecar serves `/healthz` on.
pub const DEFAULT_HEALTH_PORT: i32 = 9808;

/// A complete CSI driver deployment: controller StatefulSet with exactly the sidecars
/// the driver's capabilities need, node DaemonSet, CSIDriver, StorageClasses,
/// VolumeSnapshotClasses, ServiceAccounts and least-privilege RBAC.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "plinth.dev",
    version = "v1alpha1",
    kind = "CsiDeployment",
    plural = "csideployments",
    shortname = "csid",
    category = "plinth",
    status = "CsiDeploymentStatus",
    doc = "Deploys and operates a CSI driver: the built-in Plinth local-volume driver or a third-party driver image.",
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver.name"),
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.namespace",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Registered",
        type_ = "string",
        description = "Nodes whose kubelet registered the driver / nodes targeted by the node DaemonSet",
        json_path = ".status.registration"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 34 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label of at most 34 characters: it prefixes the names of the StatefulSet, DaemonSet and roles")
)]
#[x_kube(validation = Rule::new("!has(self.driver.thirdParty) || has(self.driver.image)").message("driver.image is required when driver.thirdParty is set"))]
#[serde(rename_all = "camelCase")]
pub struct CsiDeploymentSpec {
    /// Namespace the controller StatefulSet, node DaemonSet, ServiceAccounts and Roles are
    /// created in. It must exist; the operator does not create or delete namespaces.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,

    /// Which CSI driver to run and how.
    #[serde(default)]
    pub driver: DriverSpec,

    /// Optional features. Unset means "whatever the driver offers": every feature of the
    /// built-in driver, or what a third-party driver's declared capabilities allow.
    /// `true` requires the feature (a third-party driver whose capabilities cannot serve
    /// it is rejected); `false` switches it off together with its sidecar, RBAC and classes.
    #[serde(default)]
    pub features: Features,

    /// The controller StatefulSet (provisioner, attacher, resizer, snapshotter sidecars).
    #[serde(default)]
    pub controller: ControllerSpec,

    /// The node DaemonSet (the driver's node plugin and kubelet registration).
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.poolPath) == has(oldSelf.poolPath) && (!has(self.poolPath) || self.poolPath == oldSelf.poolPath)").message("node.poolPath is immutable: the volumes' images live there; create a new CsiDeployment to use another directory"))]
    pub node: NodeSpec,

    /// Where images come from: registry mirror, per-image overrides, pull secrets.
    #[serde(default)]
    pub images: ImagesSpec,

    /// Fields of the cluster-scoped CSIDriver object. Unset fields are derived from the
    /// driver's capabilities and the features.
    #[serde(default)]
    pub csi_driver: CsiDriverOptions,

    /// StorageClasses to create. Omitted: one StorageClass named `plinth-<metadata.name>`
    /// (WaitForFirstConsumer, Delete, not the cluster default). An empty list creates none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.filter(c, has(c.default) && c.default).size() <= 1").message("at most one StorageClass may be the cluster default"))]
    pub storage_classes: Option<Vec<StorageClassSpec>>,

    /// VolumeSnapshotClasses to create when snapshots are enabled. Omitted: one class
    /// named `plinth-<metadata.name>` (Delete, not the default). An empty list creates none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.filter(c, has(c.default) && c.default).size() <= 1").message("at most one VolumeSnapshotClass may be the default"))]
    pub volume_snapshot_classes: Option<Vec<VolumeSnapshotClassSpec>>,

    /// What deleting this CsiDeployment does while PersistentVolumes of its driver still
    /// exist. `RefuseWhileVolumesExist` (default) keeps the driver running and reports the
    /// remaining volumes in status; `OrphanVolumes` removes the driver anyway.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Which CSI driver runs, with which image and arguments.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriverSpec {
    /// CSI driver name, as reported by GetPluginInfo and used by the CSIDriver object,
    /// StorageClasses and every PersistentVolume of the driver. Immutable: existing
    /// volumes record it. A DNS subdomain of at most 63 characters.
    #[serde(default = "default_driver_name")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("driver.name is immutable: PersistentVolumes record it; create a new CsiDeployment instead"))]
    pub name: String,

    /// Driver image. Defaults to the built-in driver of this operator's release; required
    /// for a third-party driver. `images.registry` rewrites it like every other image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Pull policy of the driver container (sidecars use IfNotPresent: their tags are pinned).
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Log verbosity of the driver and of every sidecar (klog `--v`: Error=0, Warn=1,
    /// Info=2, Debug=4, Trace=5).
    #[serde(default)]
    pub log_level: LogLevel,

    /// Arguments appended to the driver container's arguments in both pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,

    /// Port the livenessprobe sidecars serve `/healthz` on (inside each pod's network
    /// namespace, or on the node itself when a third-party driver's pod uses
    /// `hostNetwork`: then pick a port free on every node).
    #[serde(default = "default_health_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub health_port: i32,

    /// Set to deploy a third-party CSI driver image instead of the built-in driver. What
    /// the driver advertises (probed from the image, or declared) decides the sidecars,
    /// as the built-in driver's capabilities do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("(has(self.probe) && !self.probe) ? has(self.capabilities) : true").message("thirdParty.capabilities is required when thirdParty.probe is false: the operator then has nothing else to learn the driver's capabilities from"))]
    pub third_party: Option<ThirdPartyDriver>,
}

impl Default for DriverSpec {
    fn default() -> Self {
        Self {
            name: default_driver_name(),
            image: None,
            image_pull_policy: PullPolicy::default(),
            log_level: LogLevel::default(),
            extra_args: Vec::new(),
            health_port: DEFAULT_HEALTH_PORT,
            third_party: None,
        }
    }
}

/// A third-party CSI driver: what it can do and how to start it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThirdPartyDriver {
    /// The driver's capabilities in the CSI spec's names, as its documentation lists them
    /// (e.g. `controller: [CREATE_DELETE_VOLUME, PUBLISH_UNPUBLISH_VOLUME]`). Optional:
    /// the operator asks the driver itself (see `probe`); when both exist the probe
    /// decides and every difference is named in the `CapabilitiesMatch` condition.
    /// `lifecycleModes` cannot be probed (CSI has no RPC for it) and is taken from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,

    /// Learn the capabilities from the driver: a short-lived Job in `spec.namespace` runs
    /// the driver image with the node pod's arguments and asks it over its socket
    /// (GetPluginInfo, GetPluginCapabilities, Controller/Node/GroupControllerGetCapabilities),
    /// again whenever the image or arguments change. `false` for clusters that cannot run
    /// that Job: then `capabilities` is required and used as declared.
    #[serde(default = "default_true")]
    pub probe: bool,

    /// Arguments of the driver container in the controller pod. Kubernetes expands
    /// `$(CSI_ENDPOINT)` and `$(NODE_ID)` (the variables named by `endpointEnv` and
    /// `nodeIdEnv`) in them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_args: Vec<String>,

    /// Arguments of the driver container in the node pod (same expansion as `controllerArgs`).
    /// The container runs privileged with kubelet's pods and plugins directories mounted
    /// with Bidirectional propagation, at the same paths as on the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_args: Vec<String>,

    /// Environment variable the driver reads its CSI endpoint from; it is set to
    /// `unix:///csi/csi.sock` in both pods.
    #[serde(default = "default_endpoint_env")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub endpoint_env: String,

    /// Environment variable the driver reads the node name from (set from `spec.nodeName`).
    #[serde(default = "default_node_id_env")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub node_id_env: String,

    /// Where the driver's controller side runs. `Central` (default): a controller
    /// StatefulSet runs the driver's controller service with external-provisioner,
    /// -attacher, -resizer and -snapshotter as its capabilities need. `PerNode`: for local
    /// storage, as upstream's distributed deployments do: no controller StatefulSet; every
    /// node pod runs external-provisioner with `--node-deployment` (it provisions only the
    /// volumes of its own node, capacity objects owned by the pod) and, with snapshots,
    /// external-snapshotter with `--node-deployment` (which also needs the cluster's
    /// snapshot-controller to run with `--enable-distributed-snapshotting`).
    /// external-resizer has no per-node mode, so volumes cannot be expanded, and
    /// PUBLISH_UNPUBLISH_VOLUME is refused (nothing could attach). Needs topology
    /// (VOLUME_ACCESSIBILITY_CONSTRAINTS): the provisioner offers each volume to one node.
    #[serde(default, skip_serializing_if = "is_default")]
    pub provisioning: Provisioning,

    /// Extra environment, volumes and host networking of the driver container in the
    /// controller pod. Volumes here cannot be hostPath: the controller container is not
    /// privileged and has no business on the host.
    #[serde(default, skip_serializing_if = "is_default")]
    pub controller_pod: DriverPodOptions,

    /// Extra environment, volumes and host networking of the driver container in the node
    /// pod, e.g. a hostPath data directory. The container already runs privileged.
    #[serde(default, skip_serializing_if = "is_default")]
    pub node_pod: DriverPodOptions,

    /// Arguments appended to a sidecar's own, keyed by container name: `csi-provisioner`,
    /// `csi-attacher`, `csi-resizer`, `csi-snapshotter`, `liveness-probe` (both pods),
    /// `node-driver-registrar`. E.g. `csi-provisioner: ["--worker-threads=5"]`. The flags
    /// Plinth sets (`--csi-address`, `--timeout`, leader election, topology and capacity
    /// flags) come first; a flag given again here wins where the sidecar takes the last.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sidecar_args: BTreeMap<String, Vec<String>>,
}

/// Where a third-party driver's controller side runs; see `driver.thirdParty.provisioning`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provisioning {
    /// A controller StatefulSet with the sidecars the capabilities need.
    #[default]
    Central,
    /// No controller StatefulSet: the node pods provision their own node's volumes.
    PerNode,
}

/// Extras of the driver container in one pod (third-party drivers).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriverPodOptions {
    /// Environment variables added to the driver container, after the endpoint and node
    /// name variables (which they may not redefine). `$(VAR)` references in the arguments
    /// see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// ConfigMaps and Secrets (in `spec.namespace`) whose keys become environment
    /// variables of the driver container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Volumes added to the pod, for the driver container's `volumeMounts`. Names must not
    /// clash with Plinth's own (`socket-dir`, `registration-dir`, `pods-dir`,
    /// `csi-plugins-dir`, `dev`, `pool`, `kube-api-access`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<PodVolume>,
    /// Mounts of the driver container, each naming one of `volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Run the pod in the node's network namespace (`hostNetwork`, with DNS policy
    /// `ClusterFirstWithHostNet`), for drivers that must reach storage over the node's
    /// interfaces. The livenessprobe then serves `driver.healthPort` on the node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

/// A pod volume, spelled as in a pod spec (`kubectl explain pod.spec.volumes`).
///
/// The CRD checks only its `name`: the full Volume schema, inlined once per pod, made the
/// CRD 450 KB, past the 256 KB a client-side `kubectl apply` can keep in its annotation.
/// Validation parses each one as a Volume ([`PodVolume::parse`]) and says what is wrong
/// in a sentence; the API server checks the rendered pods again. Held as JSON, not as a
/// Volume, so a malformed one is a condition on its own CR, not an object the operator
/// cannot even read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct PodVolume(pub serde_json::Value);

impl PodVolume {
    pub fn parse(&self) -> Result<Volume, serde_json::Error> {
        serde_json::from_value(self.0.clone())
    }
}

impl JsonSchema for PodVolume {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PodVolume".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A pod volume: `name` and one volume source, as in a pod spec.",
            "type": "object",
            "required": ["name"],
            "properties": {"name": {
                "description": "Volume name, unique in the pod; volumeMounts refer to it.",
                "type": "string",
                "maxLength": 63
            }},
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// Optional features; see `spec.features`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// VolumeSnapshots: the csi-snapshotter sidecar, its RBAC and VolumeSnapshotClasses.
    /// Needs the snapshot CRDs and snapshot-controller in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<bool>,
    /// Volume expansion: the csi-resizer sidecar and `allowVolumeExpansion` on StorageClasses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<bool>,
    /// Cloning a PVC from another PVC (`dataSource: PersistentVolumeClaim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clones: Option<bool>,
    /// CSI inline ephemeral volumes (`volumeLifecycleModes: [Ephemeral]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
    /// Storage capacity tracking: the provisioner publishes CSIStorageCapacity objects and
    /// the scheduler only picks nodes with room (`CSIDriver.storageCapacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_tracking: Option<bool>,
    /// Topology: volumes are bound to the node holding them (the provisioner's Topology
    /// feature gate). Required by the built-in driver, whose volumes live in one node's
    /// pool; only a third-party driver can switch it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<bool>,
    /// VolumeGroupSnapshots (beta upstream): the snapshotter's CSIVolumeGroupSnapshot
    /// feature gate and its RBAC. Off unless set: it needs the group snapshot CRDs. Third-
    /// party drivers only: the built-in driver's volumes live in different nodes' pools,
    /// with no point in time across them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshots: Option<bool>,
}

impl Features {
    /// The CR's setting of `feature`; `None` when unset. The fields are the serde
    /// spelling of [`Feature::field`] (a test holds them to it): code reads them through
    /// here, so the list of features lives in [`Feature`] only.
    pub fn get(&self, feature: Feature) -> Option<bool> {
        match feature {
            Feature::Snapshots => self.snapshots,
            Feature::Expansion => self.resize,
            Feature::Clones => self.clones,
            Feature::Ephemeral => self.ephemeral,
            Feature::Capacity => self.capacity_tracking,
            Feature::Topology => self.topology,
            Feature::GroupSnapshots => self.group_snapshots,
        }
    }
}

/// The controller StatefulSet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSpec {
    /// Controller pods. Above 1 the sidecars elect a leader, the pods spread across nodes
    /// and a PodDisruptionBudget (maxUnavailable 1) protects them.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,

    /// Node labels the controller pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the controller pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the controller pods. Unset with more than one replica: a preferred
    /// anti-affinity spreads the replicas across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the controller pods.
    #[serde(default = "default_controller_priority")]
    pub priority_class_name: String,

    /// Resources per container name (`plinth-driver`, or `csi-driver` for a third-party driver, `csi-provisioner`,
    /// `csi-attacher`, `csi-resizer`, `csi-snapshotter`, `liveness-probe`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, ResourceRequirements>,

    /// Timeout of the sidecars' CSI calls (their `--timeout`), a Go duration such as `60s`.
    /// The built-in controller waits half of it for the node plugin before answering
    /// ABORTED (the sidecar retries), so it needs at least `2s`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: String,
}

impl Default for ControllerSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            priority_class_name: default_controller_priority(),
            resources: BTreeMap::new(),
            timeout: default_timeout(),
        }
    }
}

/// The node DaemonSet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// kubelet's root directory on the hosts. `/var/lib/kubelet` on kubeadm, kind, EKS, GKE,
    /// AKS and k3s; `/var/lib/k0s/kubelet` on k0s; `/var/snap/microk8s/common/var/lib/kubelet`
    /// on MicroK8s; RKE (v1) runs kubelet in a container with `/var/lib/kubelet` but check
    /// `--root-dir` if changed. A wrong value leaves the driver unregistered.
    #[serde(default = "default_kubelet_dir")]
    #[schemars(regex(pattern = r"^/.*[^/]$"))]
    pub kubelet_dir: String,

    /// Node labels the node pods must match (where volumes can be provisioned).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the node pods. Unset: tolerate every taint (`operator: Exists`), so
    /// volumes stay usable on tainted nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// PriorityClass of the node pods.
    #[serde(default = "default_node_priority")]
    pub priority_class_name: String,

    /// How the node DaemonSet rolls out a new version.
    #[serde(default)]
    pub update_strategy: NodeUpdateStrategy,

    /// Resources per container name (`plinth-driver`, or `csi-driver` for a third-party
    /// driver, `node-driver-registrar`, `liveness-probe`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, ResourceRequirements>,

    /// Built-in driver: host directory holding the volume images (mounted into the node pod
    /// at the same path). Unset: `/var/lib/plinth/<driver name>`, so deployments of
    /// different drivers never share a pool. Immutable: the volumes' images live there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/.*[^/]$"))]
    pub pool_path: Option<String>,

    /// Built-in driver: space kept free in the pool's filesystem, e.g. `10Gi` (a
    /// Kubernetes binary or decimal quantity without fractions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub pool_reserve: Option<String>,

    /// Built-in driver: the most volumes one node may hold (reported to the scheduler
    /// through NodeGetInfo). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_volumes_per_node: Option<i64>,

    /// Built-in driver: limits on CSI ephemeral inline volumes, which any pod spec may ask
    /// for without a claim or a quota. Unset fields keep the driver's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_volumes: Option<InlineVolumeLimits>,
}

/// Sizes are Kubernetes quantities without fractions, e.g. `512Mi`, `16Gi`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InlineVolumeLimits {
    /// Size of an inline volume whose attributes name none. Default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub default_size: Option<String>,
    /// Largest inline volume one pod may ask for. Default `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max_size: Option<String>,
    /// What all inline volumes of one node may take together. Default `64Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max_total_size: Option<String>,
    /// How many inline volumes one node may hold at once. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i32", range(min = 1))]
    pub max_volumes: Option<u32>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            kubelet_dir: default_kubelet_dir(),
            node_selector: BTreeMap::new(),
            tolerations: None,
            priority_class_name: default_node_priority(),
            update_strategy: NodeUpdateStrategy::default(),
            resources: BTreeMap::new(),
            pool_path: None,
            pool_reserve: None,
            max_volumes_per_node: None,
            inline_volumes: None,
        }
    }
}

/// DaemonSet update strategy of the node pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.type == 'RollingUpdate' || !has(self.maxUnavailable)").message("maxUnavailable only applies to type RollingUpdate"))]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdateStrategy {
    /// `RollingUpdate` replaces node pods a few at a time; `OnDelete` only when you delete them.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,
    /// Node pods that may be down at once during a rolling update: a count (`1`) or a
    /// percentage of nodes (`10%`). Unset: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([1-9][0-9]*|([1-9][0-9]?|100)%)$"))]
    pub max_unavailable: Option<String>,
}

impl Default for NodeUpdateStrategy {
    fn default() -> Self {
        Self {
            type_: UpdateStrategyType::RollingUpdate,
            max_unavailable: None,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategyType {
    #[default]
    RollingUpdate,
    OnDelete,
}

/// Image sources for air-gapped and mirrored clusters.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagesSpec {
    /// Registry (and optional path prefix) replacing the registry of every image, the
    /// driver's, all sidecars' and the capability probe's (the operator's own image),
    /// keeping the repository name and tag: with
    /// `registry.corp.example:5000/mirror`, `registry.k8s.io/sig-storage/csi-provisioner:v5.3.0`
    /// becomes `registry.corp.example:5000/mirror/csi-provisioner:v5.3.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*$"
    ))]
    pub registry: Option<String>,

    /// Full image references replacing the defaults, keyed by image name: `csi-provisioner`,
    /// `csi-attacher`, `csi-resizer`, `csi-snapshotter`, `livenessprobe`,
    /// `csi-node-driver-registrar`. Overrides are used as written (no registry rewrite).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, String>,

    /// Secrets (in `spec.namespace`) used to pull every image of both pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

/// Fields of the CSIDriver object; unset ones are derived.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CsiDriverOptions {
    /// Whether kubelet changes volume ownership to the pod's fsGroup. Unset: `File` for the
    /// built-in driver (its volumes are private filesystems), the Kubernetes default
    /// (`ReadWriteOnceWithFSType`) for a third-party driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group_policy: Option<FsGroupPolicy>,
    /// Pass pod name, namespace, UID and service account to NodePublishVolume. Unset: on
    /// when ephemeral volumes are enabled (they need the pod's identity), off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_info_on_mount: Option<bool>,
    /// Whether volumes go through ControllerPublishVolume (VolumeAttachment objects and the
    /// csi-attacher). Unset: derived from the PUBLISH_UNPUBLISH_VOLUME capability; `true`
    /// without that capability is rejected (volumes would never attach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_required: Option<bool>,
    /// Whether the scheduler uses CSIStorageCapacity. Unset: on with capacity tracking;
    /// `true` without capacity tracking is rejected (no pod could ever be scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_capacity: Option<bool>,
    /// Volume lifecycle modes. Unset: `Persistent`, plus `Ephemeral` with ephemeral volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_lifecycle_modes: Option<Vec<LifecycleMode>>,
    /// Whether the driver supports the `-o context` mount option (SELinux relabelling by mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub se_linux_mount: Option<bool>,
    /// Whether kubelet calls NodePublishVolume periodically (for drivers that refresh
    /// mounted credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_republish: Option<bool>,
    /// Service account tokens kubelet passes to NodePublishVolume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_requests: Vec<TokenRequest>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsGroupPolicy {
    None,
    File,
    ReadWriteOnceWithFSType,
}

#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum LifecycleMode {
    Persistent,
    Ephemeral,
}

/// One StorageClass of the driver.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassSpec {
    /// StorageClass name (cluster-wide, a DNS subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Make this the cluster's default StorageClass
    /// (`storageclass.kubernetes.io/is-default-class`).
    #[serde(default)]
    pub default: bool,
    /// What happens to a volume when its claim is deleted.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
    /// When volumes are provisioned. Local volumes want `WaitForFirstConsumer`: the volume
    /// is created on the node the pod was scheduled to.
    #[serde(default)]
    pub volume_binding_mode: VolumeBindingMode,
    /// Driver parameters, e.g. `csi.storage.k8s.io/fstype: xfs`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Mount options of the volumes' filesystems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
    /// Allow growing claims. Unset: on when resize is enabled; `true` without resize is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_volume_expansion: Option<bool>,
    /// Restrict provisioning to nodes matching these terms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_topologies: Vec<k8s_openapi::api::core::v1::TopologySelectorTerm>,
    /// Built-in driver, ext4 only: encrypt every volume of this class at rest with a key
    /// of its own (ext4 fscrypt). The class gets the parameters `encryption: fscrypt`,
    /// `csi.storage.k8s.io/node-stage-secret-name` and `-namespace`: kubelet reads that
    /// Secret (through its node authorization, so no sidecar gets any Secret access) and
    /// hands it to the driver at NodeStageVolume; the first stage creates the volume's
    /// random key, wrapped with the Secret's `encryptionKey`. A volume whose Secret is
    /// missing is not mounted. The StorageClass is labelled `plinth.dev/encryption: fscrypt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
}

/// Where each encrypted volume's Secret is; `${pvc.name}`, `${pvc.namespace}` and
/// `${pv.name}` are filled in per claim by the provisioner.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSpec {
    /// Name of the Secret holding `encryptionKey`. Default `${pvc.name}`: one Secret per
    /// claim, named like it.
    #[serde(default = "default_encryption_secret_name")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Namespace of that Secret. Default `${pvc.namespace}`: the claim's own.
    #[serde(default = "default_encryption_secret_namespace")]
    #[schemars(length(min = 1, max = 63))]
    pub secret_namespace: String,
}

impl Default for EncryptionSpec {
    fn default() -> Self {
        Self {
            secret_name: default_encryption_secret_name(),
            secret_namespace: default_encryption_secret_namespace(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    #[default]
    Delete,
    Retain,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VolumeBindingMode {
    #[default]
    WaitForFirstConsumer,
    Immediate,
}

/// One VolumeSnapshotClass of the driver.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClassSpec {
    /// VolumeSnapshotClass name (cluster-wide).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Make this the default class for snapshots of this driver's volumes
    /// (`snapshot.storage.kubernetes.io/is-default-class`).
    #[serde(default)]
    pub default: bool,
    /// What happens to the snapshot's data when its VolumeSnapshot is deleted.
    #[serde(default)]
    pub deletion_policy: ReclaimPolicy,
    /// Driver parameters passed to CreateSnapshot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

/// Deleting a CsiDeployment while volumes of its driver exist.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep everything running and report the remaining PersistentVolumes in status until
    /// they are gone (or the policy is changed).
    #[default]
    RefuseWhileVolumesExist,
    /// Remove the driver anyway. The volumes' data stays on the nodes, but their
    /// PersistentVolumes cannot be mounted, expanded or deleted until a driver of the same
    /// name is deployed again.
    OrphanVolumes,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The built-in driver's `--log-level` (a tracing filter).
    pub fn filter(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    /// klog verbosity of the sidecars (`--v`).
    pub fn klog_verbosity(self) -> u8 {
        match self {
            Self::Error => 0,
            Self::Warn => 1,
            Self::Info => 2,
            Self::Debug => 4,
            Self::Trace => 5,
        }
    }
}

/// What the operator observed and did; written by the reconciler.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CsiDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, keyed by type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The controller StatefulSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<WorkloadStatus>,
    /// The node DaemonSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<WorkloadStatus>,
    /// Nodes whose CSINode lists the driver (kubelet registered it).
    #[serde(default)]
    pub registered_nodes: i32,
    /// Nodes the node DaemonSet targets.
    #[serde(default)]
    pub targeted_nodes: i32,
    /// `registeredNodes/targetedNodes`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Every sidecar of the controller and node pods, deployed or left out, each with
    /// why: the answer to "why does this pod have these containers".
    #[serde(default)]
    pub sidecars: Vec<SidecarStatus>,
    /// StorageClasses whose volumes are encrypted at rest (ext4 fscrypt), each claim with
    /// a key of its own, unlocked by the Secret the class names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypted_storage_classes: Vec<String>,
    /// The CSI driver name deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_name: Option<String>,
    /// PersistentVolumes of the driver found when deletion was requested (they block it
    /// under `RefuseWhileVolumesExist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_volumes: Option<i64>,
    /// What the driver advertises, where that came from, for which image and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitiesStatus>,
}

/// Where the capabilities the deployment is rendered from came from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapabilitySource {
    /// The built-in driver of this release (its capabilities are known to the operator).
    Builtin,
    /// Asked from the driver image over its socket by a probe Job.
    Probe,
    /// `spec.driver.thirdParty.capabilities`, as written (`thirdParty.probe: false`).
    Declaration,
}

/// The capabilities in use and their origin.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitiesStatus {
    pub source: CapabilitySource,
    /// The driver image they describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Probe: the hash of everything that changes the driver's answer (image, arguments,
    /// environment, volumes). A different fingerprint means a new probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Probe: when the driver answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Probe: the name GetPluginInfo reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_name: Option<String>,
    /// Probe: the vendor version GetPluginInfo reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_version: Option<String>,
    /// What the driver advertises, in the CSI spec's names.
    pub advertised: Capabilities,
}

/// One sidecar and the decision about it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    /// Container name, e.g. `csi-resizer`.
    #[serde(default)]
    pub name: String,
    /// `controller` or `node`: the pod it runs in (or would).
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub deployed: bool,
    /// Why, in words: the capability the driver advertises, or what keeps it out.
    #[serde(default)]
    pub reason: String,
}

impl CsiDeploymentStatus {
    /// Set the node counts and the printer column derived from them together, so they
    /// cannot disagree.
    pub fn set_registration(&mut self, registered: i32, targeted: i32) {
        self.registered_nodes = registered;
        self.targeted_nodes = targeted;
        self.registration = Some(format!("{registered}/{targeted}"));
    }
}

/// Replica counts of a workload.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Pods wanted (StatefulSet replicas, DaemonSet desiredNumberScheduled).
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods running the current template.
    #[serde(default)]
    pub updated: i32,
}

impl CsiDeploymentSpec {
    /// A built-in driver deployment unless `driver.thirdParty` is set.
    pub fn is_builtin(&self) -> bool {
        self.driver.third_party.is_none()
    }

    /// A third-party driver whose node pods provision their own volumes (no controller
    /// StatefulSet).
    pub fn is_per_node(&self) -> bool {
        self.driver
            .third_party
            .as_ref()
            .is_some_and(|t| t.provisioning == Provisioning::PerNode)
    }

    /// The built-in driver's pool directory: `node.poolPath`, or one named for the driver.
    pub fn pool_path(&self) -> String {
        self.node
            .pool_path
            .clone()
            .unwrap_or_else(|| format!("{POOL_PATH_PARENT}/{}", self.driver.name))
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
fn default_encryption_secret_name() -> String {
    "${pvc.name}".to_owned()
}
fn default_encryption_secret_namespace() -> String {
    "${pvc.namespace}".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_driver_name() -> String {
    BUILTIN_DRIVER_NAME.to_owned()
}
fn default_health_port() -> i32 {
    DEFAULT_HEALTH_PORT
}
fn default_endpoint_env() -> String {
    "CSI_ENDPOINT".to_owned()
}
fn default_node_id_env() -> String {
    "NODE_ID".to_owned()
}
fn default_replicas() -> i32 {
    1
}
fn default_controller_priority() -> String {
    "system-cluster-critical".to_owned()
}
fn default_node_priority() -> String {
    "system-node-critical".to_owned()
}
fn default_timeout() -> String {
    "60s".to_owned()
}
fn default_kubelet_dir() -> String {
    DEFAULT_KUBELET_DIR.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `spec.features.<field>` is read back by `Features::get` as exactly that feature,
    /// for every feature: the CR struct and the one feature table cannot drift apart.
    #[test]
    fn every_feature_field_is_read_through_its_feature() {
        for feature in Feature::ALL {
            let features: Features =
                serde_json::from_value(serde_json::json!({ feature.field(): false }))
                    .expect("every field parses");
            for other in Feature::ALL {
                let want = (other == feature).then_some(false);
                assert_eq!(
                    features.get(other),
                    want,
                    "{} read as {other:?}",
                    feature.field()
                );
            }
        }
        let all: serde_json::Map<_, _> = Feature::ALL
            .into_iter()
            .map(|f| (f.field().to_owned(), serde_json::Value::Bool(true)))
            .collect();
        let features: Features =
            serde_json::from_value(serde_json::Value::Object(all.clone())).expect("parses");
        assert_eq!(
            serde_json::to_value(features).expect("serialises"),
            serde_json::Value::Object(all),
            "the struct has exactly the table's fields"
        );
    }
}
