//! From the CR's feature switches to the capabilities the deployment serves.
//!
//! Built-in driver: the switches become [`DriverFeatures`], the driver is started with the
//! same switches, and [`DriverFeatures::capabilities`] decides the sidecars, so the driver
//! and its sidecars cannot disagree. Third-party driver: the declared capabilities, minus
//! what the switches turn off.

use plinth_api::Feature;
use plinth_api::capabilities::{
    Capabilities, DriverFeatures, Sidecar, SidecarNeed, VolumeLifecycleMode,
};

use super::RenderEnv;
use super::pod::PodKind;
use crate::crd::{CsiDeployment, Features, SidecarStatus};

/// The sidecars with a per-node mode (`--node-deployment`) in their current releases:
/// external-provisioner and external-snapshotter. external-resizer has none
/// (kubernetes-csi/external-resizer#142 is open), and the attacher has nothing to do for
/// a driver whose volumes need no attaching.
pub const PER_NODE_SIDECARS: [Sidecar; 2] = [Sidecar::Provisioner, Sidecar::Snapshotter];

/// The resolved shape of one deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub driver_name: String,
    /// Built-in driver: the switches it is started with.
    pub builtin: Option<DriverFeatures>,
    /// What the deployed driver serves (and the CSIDriver object declares).
    pub capabilities: Capabilities,
    /// The controller pod's sidecars: the capabilities' sidecars minus those the cluster
    /// cannot support yet (see `warnings`). Empty with per-node provisioning: there is no
    /// controller pod.
    pub controller_sidecars: Vec<SidecarNeed>,
    /// Per-node provisioning (`driver.thirdParty.provisioning: PerNode`): no controller
    /// StatefulSet, the node pods provision their own node's volumes.
    pub per_node: bool,
    /// The API-facing sidecars the node pod carries besides the registrar and the
    /// livenessprobe: with per-node provisioning, the provisioner and the snapshotter
    /// (`--node-deployment`). The other sidecars have no per-node mode.
    pub node_sidecars: Vec<SidecarNeed>,
    /// The snapshotter runs and VolumeSnapshotClasses are created.
    pub snapshots: bool,
    /// The snapshotter runs with its group snapshot feature gate.
    pub group_snapshots: bool,
    /// A feature the CR requires (`true`) that the cluster cannot support yet: the CR is
    /// Degraded until it can.
    pub warnings: Vec<String>,
    /// A feature left unset that is left out for now: worth saying, not a fault.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn new(cr: &CsiDeployment, env: &RenderEnv) -> Self {
        let spec = &cr.spec;
        let (builtin, capabilities) = match &spec.driver.third_party {
            None => {
                let features = builtin_features(&spec.features).intersection(env.builtin_features);
                (Some(features), features.capabilities())
            }
            Some(third) => (
                None,
                restrict(
                    &third_party_capabilities(third, env).unwrap_or_default(),
                    &spec.features,
                ),
            ),
        };
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        // Required (`true`): a fault until the cluster can serve it. Unset: only a note.
        let mut say = |required: Option<bool>, text: String| {
            if required == Some(true) {
                warnings.push(text);
            } else {
                notes.push(text);
            }
        };
        let mut snapshots = capabilities.can_snapshot();
        if snapshots && !env.snapshot_crds_present {
            say(
                spec.features.get(Feature::Snapshots),
                "the VolumeSnapshot CRDs (snapshot.storage.k8s.io) are not installed: \
                 csi-snapshotter and VolumeSnapshotClasses are left out until they are"
                    .to_owned(),
            );
            snapshots = false;
        }
        let mut group_snapshots = snapshots && capabilities.can_group_snapshot();
        if group_snapshots && spec.is_per_node() {
            say(
                spec.features.get(Feature::GroupSnapshots),
                "group snapshots are left out: with per-node provisioning each node's \
                 snapshotter sees only its own volumes, and no point in time spans nodes"
                    .to_owned(),
            );
            group_snapshots = false;
        }
        if group_snapshots && !env.group_snapshot_crds_present {
            say(
                spec.features.get(Feature::GroupSnapshots),
                "the VolumeGroupSnapshot CRDs (groupsnapshot.storage.k8s.io) are not \
                 installed: the snapshotter runs without its CSIVolumeGroupSnapshot feature \
                 gate until they are"
                    .to_owned(),
            );
            group_snapshots = false;
        }
        // The driver keeps advertising snapshots when only the CRDs are missing: dropping
        // the sidecar is enough, and installing the CRDs later then only rolls the
        // controller pods, not every node pod.
        let sidecars = capabilities
            .controller_sidecars()
            .into_iter()
            .filter(|need| snapshots || need.sidecar != Sidecar::Snapshotter);
        let per_node = spec.is_per_node();
        let (controller_sidecars, node_sidecars) = if per_node {
            if capabilities.can_expand() {
                say(
                    spec.features.get(Feature::Expansion),
                    "csi-resizer is left out: external-resizer has no per-node mode \
                     (driver.thirdParty.provisioning: PerNode), so volumes of this driver \
                     cannot be expanded"
                        .to_owned(),
                );
            }
            let moved = sidecars
                .filter(|need| PER_NODE_SIDECARS.contains(&need.sidecar))
                .collect();
            (Vec::new(), moved)
        } else {
            (sidecars.collect(), Vec::new())
        };
        Self {
            driver_name: spec.driver.name.clone(),
            builtin,
            capabilities,
            controller_sidecars,
            per_node,
            node_sidecars,
            snapshots,
            group_snapshots,
            warnings,
            notes,
        }
    }

    /// Every sidecar, deployed or left out, with the pod it runs in (or would) and the
    /// reason in words.
    pub fn explain_sidecars(&self, features: &Features) -> Vec<SidecarStatus> {
        let caps = &self.capabilities;
        let home = self.api_sidecar_pod();
        let line = |sidecar: Sidecar, pod: PodKind, deployed: bool, reason: String| SidecarStatus {
            name: sidecar.container_name().to_owned(),
            pod: pod.as_str().to_owned(),
            deployed,
            reason,
        };
        // Deployed because of `cap`; or left out: switched off by `field`, or not
        // advertised by the driver.
        let optional = |sidecar: Sidecar, cap: &str, switch: Option<Feature>| {
            let deployed = self.has_sidecar(sidecar);
            let reason = if deployed && self.per_node {
                format!(
                    "the driver advertises {cap}; runs in every node pod with \
                     --node-deployment (driver.thirdParty.provisioning: PerNode), each \
                     handling its own node's volumes{}",
                    if sidecar == Sidecar::Snapshotter {
                        "; snapshots are taken only if the cluster's snapshot-controller runs \
                         with --enable-distributed-snapshotting"
                    } else {
                        ""
                    }
                )
            } else if deployed {
                format!("the driver advertises {cap}")
            } else if let Some(feature) = switch.filter(|f| features.get(*f) == Some(false)) {
                format!("switched off: features.{} is false", feature.field())
            } else {
                format!("the driver does not advertise {cap}")
            };
            line(sidecar, home, deployed, reason)
        };
        let mut out = vec![
            optional(Sidecar::Provisioner, "CREATE_DELETE_VOLUME", None),
            optional(Sidecar::Attacher, "PUBLISH_UNPUBLISH_VOLUME", None),
        ];
        out.push(
            if self.per_node && caps.can_expand() && features.get(Feature::Expansion) != Some(false)
            {
                line(
                    Sidecar::Resizer,
                    PodKind::Node,
                    false,
                    "the driver advertises EXPAND_VOLUME, but external-resizer has no per-node \
                 mode (driver.thirdParty.provisioning: PerNode): volumes cannot be expanded"
                        .to_owned(),
                )
            } else {
                optional(Sidecar::Resizer, "EXPAND_VOLUME", Some(Feature::Expansion))
            },
        );
        out.push(if caps.can_snapshot() && !self.snapshots {
            line(
                Sidecar::Snapshotter,
                home,
                false,
                "the VolumeSnapshot CRDs (snapshot.storage.k8s.io) are not installed; it is \
                 added when they are"
                    .to_owned(),
            )
        } else {
            optional(
                Sidecar::Snapshotter,
                "CREATE_DELETE_SNAPSHOT",
                Some(Feature::Snapshots),
            )
        });
        out.push(line(
            Sidecar::NodeDriverRegistrar,
            PodKind::Node,
            true,
            "always: registers the driver with kubelet".to_owned(),
        ));
        for pod in [PodKind::Controller, PodKind::Node] {
            out.push(if pod == PodKind::Controller && self.per_node {
                line(
                    Sidecar::LivenessProbe,
                    pod,
                    false,
                    "no controller pod: driver.thirdParty.provisioning is PerNode".to_owned(),
                )
            } else {
                line(
                    Sidecar::LivenessProbe,
                    pod,
                    true,
                    "always: lets kubelet restart a driver that stops answering Probe".to_owned(),
                )
            });
        }
        out
    }

    /// Whether `sidecar` is deployed in either pod (the livenessprobe and the registrar,
    /// which every node pod carries, aside).
    pub fn has_sidecar(&self, sidecar: Sidecar) -> bool {
        self.sidecar_pod(sidecar).is_some()
    }

    /// The pod an API-facing sidecar runs in, if it is deployed.
    pub fn sidecar_pod(&self, sidecar: Sidecar) -> Option<PodKind> {
        let has = |list: &[SidecarNeed]| list.iter().any(|n| n.sidecar == sidecar);
        if has(&self.controller_sidecars) {
            Some(PodKind::Controller)
        } else if has(&self.node_sidecars) {
            Some(PodKind::Node)
        } else {
            None
        }
    }

    /// The pod that holds the sidecars reading operation secrets: there is one at a time
    /// (the controller pod, or the node pod with per-node provisioning).
    pub fn api_sidecar_pod(&self) -> PodKind {
        if self.per_node {
            PodKind::Node
        } else {
            PodKind::Controller
        }
    }

    /// Volumes can grow: a resizer is deployed.
    pub fn can_resize(&self) -> bool {
        self.has_sidecar(Sidecar::Resizer)
    }

    pub fn capacity_tracking(&self) -> bool {
        self.has_sidecar(Sidecar::Provisioner) && self.capabilities.can_report_capacity()
    }

    pub fn ephemeral(&self) -> bool {
        self.capabilities
            .lifecycle_modes
            .contains(&VolumeLifecycleMode::Ephemeral)
    }
}

/// The built-in driver's switches: what the CR sets, and for what it leaves unset
/// [`Feature::on_when_unset`] (everything but group snapshots, which need extra CRDs).
pub fn builtin_features(f: &Features) -> DriverFeatures {
    Feature::ALL
        .into_iter()
        .fold(DriverFeatures::default(), |features, feature| {
            features.with(
                feature,
                f.get(feature).unwrap_or_else(|| feature.on_when_unset()),
            )
        })
}

/// What a third-party driver is rendered from: the probed capabilities when there are
/// any, else the declared ones; `None` when neither exists yet.
pub fn third_party_capabilities(
    third: &crate::crd::ThirdPartyDriver,
    env: &RenderEnv,
) -> Option<Capabilities> {
    env.driver_capabilities
        .clone()
        .or_else(|| third.capabilities.clone())
}

/// A third-party driver's declared capabilities minus the features switched off.
/// (Requested features it cannot serve are rejected earlier, by validation.)
pub fn restrict(declared: &Capabilities, f: &Features) -> Capabilities {
    let mut caps = declared.clone();
    for feature in Feature::ALL {
        if f.get(feature) == Some(false) {
            feature.remove_from(&mut caps);
        }
    }
    caps
}

/// The built-in node plugin's `--disable` values: only the switches that change what
/// the node side serves ([`Feature::changes_node`]), so that toggling a controller-only
/// feature does not roll the node DaemonSet.
pub fn node_disabled_switches(f: &DriverFeatures) -> Vec<&'static str> {
    f.disabled()
        .filter(|feature| feature.changes_node())
        .map(Feature::switch)
        .collect()
}

/// The built-in driver's `--disable` values for the switches that are off, in the
/// driver's own spelling ([`Feature::switch`]).
pub fn disabled_switches(f: &DriverFeatures) -> Vec<&'static str> {
    f.disabled().map(Feature::switch).collect()
}
