//! One capability model for the driver and the operator.
//!
//! The driver advertises exactly the [`Capabilities`] its configuration produces
//! ([`DriverFeatures::capabilities`]), and the operator deploys exactly the sidecars those
//! capabilities need ([`Capabilities::controller_sidecars`]). Because both read this one
//! type they cannot disagree: a switched-off feature is neither advertised nor served by a
//! sidecar. For a third-party driver the operator builds the same type from the CR.
//!
//! The names serialise as the CSI spec's enum names (`CREATE_DELETE_VOLUME`, ...), so a
//! user declaring a third-party driver's capabilities writes what the driver's docs say.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Feature;

/// `PluginCapability` (Identity service).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginCapability {
    ControllerService,
    VolumeAccessibilityConstraints,
    GroupControllerService,
    /// `VolumeExpansion.ONLINE`: volumes grow while published.
    OnlineExpansion,
    /// `VolumeExpansion.OFFLINE`: volumes grow only while not published.
    OfflineExpansion,
}

/// `ControllerServiceCapability.RPC.Type`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ControllerCapability {
    CreateDeleteVolume,
    PublishUnpublishVolume,
    ListVolumes,
    GetCapacity,
    CreateDeleteSnapshot,
    ListSnapshots,
    CloneVolume,
    PublishReadonly,
    ExpandVolume,
    ListVolumesPublishedNodes,
    GetVolume,
    SingleNodeMultiWriter,
    ModifyVolume,
    GetSnapshot,
}

/// `NodeServiceCapability.RPC.Type`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeCapability {
    StageUnstageVolume,
    GetVolumeStats,
    ExpandVolume,
    SingleNodeMultiWriter,
    VolumeMountGroup,
}

/// `GroupControllerServiceCapability.RPC.Type`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GroupControllerCapability {
    CreateDeleteGetVolumeGroupSnapshot,
}

/// `CSIDriver.spec.volumeLifecycleModes` values.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum VolumeLifecycleMode {
    Persistent,
    Ephemeral,
}

impl VolumeLifecycleMode {
    /// The string Kubernetes uses in `CSIDriver.spec.volumeLifecycleModes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Persistent => "Persistent",
            Self::Ephemeral => "Ephemeral",
        }
    }
}

/// Everything a CSI driver can do, in the spec's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Capabilities {
    /// Identity service `PluginCapability` values (`CONTROLLER_SERVICE`, ...).
    pub plugin: BTreeSet<PluginCapability>,
    /// Controller service capabilities (`CREATE_DELETE_VOLUME`, ...).
    pub controller: BTreeSet<ControllerCapability>,
    /// Node service capabilities (`STAGE_UNSTAGE_VOLUME`, ...).
    pub node: BTreeSet<NodeCapability>,
    /// Group controller service capabilities.
    pub group_controller: BTreeSet<GroupControllerCapability>,
    /// Empty means the Kubernetes default, `[Persistent]`.
    pub lifecycle_modes: BTreeSet<VolumeLifecycleMode>,
}

/// A kubernetes-csi sidecar container.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Sidecar {
    Provisioner,
    Attacher,
    Resizer,
    Snapshotter,
    LivenessProbe,
    NodeDriverRegistrar,
}

impl Sidecar {
    /// Every sidecar, for whoever must cover them all (the operator's RBAC, image lists).
    pub const ALL: [Sidecar; 6] = [
        Self::Provisioner,
        Self::Attacher,
        Self::Resizer,
        Self::Snapshotter,
        Self::LivenessProbe,
        Self::NodeDriverRegistrar,
    ];

    /// Container name, also the upstream image name without the `csi-` prefix quirks.
    pub fn container_name(self) -> &'static str {
        match self {
            Self::Provisioner => "csi-provisioner",
            Self::Attacher => "csi-attacher",
            Self::Resizer => "csi-resizer",
            Self::Snapshotter => "csi-snapshotter",
            Self::LivenessProbe => "liveness-probe",
            Self::NodeDriverRegistrar => "node-driver-registrar",
        }
    }
}

// A new `Sidecar` variant must be added to `Sidecar::ALL`: this exhaustive match stops
// compiling until someone looks at the list.
const _: fn(Sidecar) = |s| match s {
    Sidecar::Provisioner
    | Sidecar::Attacher
    | Sidecar::Resizer
    | Sidecar::Snapshotter
    | Sidecar::LivenessProbe
    | Sidecar::NodeDriverRegistrar => {}
};

/// A sidecar and the capability that made it necessary, for status and for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SidecarNeed {
    pub sidecar: Sidecar,
    pub reason: String,
}

impl Capabilities {
    pub fn has_controller_service(&self) -> bool {
        self.plugin.contains(&PluginCapability::ControllerService)
    }

    /// Volumes are topology-constrained: the provisioner needs its Topology feature gate.
    pub fn has_topology(&self) -> bool {
        self.plugin
            .contains(&PluginCapability::VolumeAccessibilityConstraints)
    }

    /// `CSIDriver.spec.attachRequired`: only drivers with ControllerPublishVolume need the
    /// attach/detach dance (and the attacher sidecar).
    pub fn attach_required(&self) -> bool {
        self.controller
            .contains(&ControllerCapability::PublishUnpublishVolume)
    }

    /// Volumes can grow (controller side, node side, or both).
    pub fn can_expand(&self) -> bool {
        self.controller
            .contains(&ControllerCapability::ExpandVolume)
            || self.node.contains(&NodeCapability::ExpandVolume)
    }

    pub fn can_snapshot(&self) -> bool {
        self.controller
            .contains(&ControllerCapability::CreateDeleteSnapshot)
    }

    pub fn can_report_capacity(&self) -> bool {
        self.controller.contains(&ControllerCapability::GetCapacity)
    }

    pub fn can_group_snapshot(&self) -> bool {
        self.group_controller
            .contains(&GroupControllerCapability::CreateDeleteGetVolumeGroupSnapshot)
    }

    /// The sidecars the controller pod needs, in a stable order, each with its reason.
    /// The liveness probe is always there: it probes the driver's `Probe`.
    pub fn controller_sidecars(&self) -> Vec<SidecarNeed> {
        let need = |sidecar, reason: &str| SidecarNeed {
            sidecar,
            reason: reason.to_owned(),
        };
        let mut out = Vec::new();
        if self
            .controller
            .contains(&ControllerCapability::CreateDeleteVolume)
        {
            out.push(need(Sidecar::Provisioner, "CREATE_DELETE_VOLUME"));
        }
        if self.attach_required() {
            out.push(need(Sidecar::Attacher, "PUBLISH_UNPUBLISH_VOLUME"));
        }
        if self.can_expand() {
            out.push(need(Sidecar::Resizer, "EXPAND_VOLUME"));
        }
        if self.can_snapshot() {
            out.push(need(Sidecar::Snapshotter, "CREATE_DELETE_SNAPSHOT"));
        }
        out.push(need(Sidecar::LivenessProbe, "always: probes the driver"));
        out
    }

    /// The sidecars every node pod carries.
    pub fn node_sidecars(&self) -> Vec<SidecarNeed> {
        vec![
            SidecarNeed {
                sidecar: Sidecar::NodeDriverRegistrar,
                reason: "always: registers the driver with kubelet".to_owned(),
            },
            SidecarNeed {
                sidecar: Sidecar::LivenessProbe,
                reason: "always: probes the driver".to_owned(),
            },
        ]
    }
}

/// The switches of Plinth's built-in driver. Each feature that is off is neither
/// advertised nor served (its RPCs answer UNIMPLEMENTED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DriverFeatures {
    pub snapshots: bool,
    pub expansion: bool,
    pub clones: bool,
    pub ephemeral: bool,
    pub capacity: bool,
    pub topology: bool,
    pub group_snapshots: bool,
}

impl Default for DriverFeatures {
    /// Everything the built-in driver supports.
    fn default() -> Self {
        Self {
            snapshots: true,
            expansion: true,
            clones: true,
            ephemeral: true,
            capacity: true,
            topology: true,
            group_snapshots: true,
        }
    }
}

impl DriverFeatures {
    fn slot(&mut self, feature: Feature) -> &mut bool {
        match feature {
            Feature::Snapshots => &mut self.snapshots,
            Feature::Expansion => &mut self.expansion,
            Feature::Clones => &mut self.clones,
            Feature::Ephemeral => &mut self.ephemeral,
            Feature::Capacity => &mut self.capacity,
            Feature::Topology => &mut self.topology,
            Feature::GroupSnapshots => &mut self.group_snapshots,
        }
    }

    /// Whether `feature` is on.
    pub fn get(mut self, feature: Feature) -> bool {
        *self.slot(feature)
    }

    pub fn set(&mut self, feature: Feature, on: bool) {
        *self.slot(feature) = on;
    }

    /// These switches with `feature` set to `on`.
    pub fn with(mut self, feature: Feature, on: bool) -> Self {
        self.set(feature, on);
        self
    }

    /// The features that are off, in [`Feature::ALL`] order.
    pub fn disabled(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| !self.get(*f))
    }

    /// The features on in both: what was asked for, limited to what a build serves.
    pub fn intersection(self, other: Self) -> Self {
        Feature::ALL.into_iter().fold(self, |features, feature| {
            features.with(feature, self.get(feature) && other.get(feature))
        })
    }

    /// What the built-in driver advertises with these switches: everything it can do,
    /// minus what each switched-off feature removes ([`Feature::remove_from`]).
    pub fn capabilities(&self) -> Capabilities {
        use ControllerCapability as C;
        let mut caps = Capabilities::default();
        caps.plugin.extend([
            PluginCapability::ControllerService,
            PluginCapability::VolumeAccessibilityConstraints,
            PluginCapability::OnlineExpansion,
            PluginCapability::GroupControllerService,
        ]);
        caps.controller.extend([
            C::CreateDeleteVolume,
            C::ListVolumes,
            C::GetVolume,
            C::SingleNodeMultiWriter,
            C::GetCapacity,
            C::CreateDeleteSnapshot,
            C::ListSnapshots,
            C::GetSnapshot,
            C::CloneVolume,
            C::ExpandVolume,
        ]);
        caps.node.extend([
            NodeCapability::StageUnstageVolume,
            NodeCapability::GetVolumeStats,
            NodeCapability::SingleNodeMultiWriter,
            NodeCapability::ExpandVolume,
        ]);
        caps.group_controller
            .insert(GroupControllerCapability::CreateDeleteGetVolumeGroupSnapshot);
        caps.lifecycle_modes.extend([
            VolumeLifecycleMode::Persistent,
            VolumeLifecycleMode::Ephemeral,
        ]);
        for feature in self.disabled() {
            feature.remove_from(&mut caps);
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecars(features: DriverFeatures) -> Vec<Sidecar> {
        features
            .capabilities()
            .controller_sidecars()
            .into_iter()
            .map(|n| n.sidecar)
            .collect()
    }

    #[test]
    fn everything_on_needs_every_controller_sidecar_but_the_attacher() {
        assert_eq!(
            sidecars(DriverFeatures::default()),
            [
                Sidecar::Provisioner,
                Sidecar::Resizer,
                Sidecar::Snapshotter,
                Sidecar::LivenessProbe
            ]
        );
        assert!(!DriverFeatures::default().capabilities().attach_required());
    }

    #[test]
    fn switching_a_feature_off_removes_its_capability_and_its_sidecar() {
        let off = DriverFeatures {
            snapshots: false,
            expansion: false,
            ..DriverFeatures::default()
        };
        let caps = off.capabilities();
        assert!(!caps.can_snapshot());
        assert!(!caps.can_expand());
        assert!(!caps.plugin.contains(&PluginCapability::OnlineExpansion));
        assert_eq!(
            sidecars(off),
            [Sidecar::Provisioner, Sidecar::LivenessProbe]
        );
    }

    #[test]
    fn third_party_capabilities_parse_from_spec_names() {
        let caps: Capabilities = serde_json::from_str(
            r#"{"plugin":["CONTROLLER_SERVICE"],
                "controller":["CREATE_DELETE_VOLUME","PUBLISH_UNPUBLISH_VOLUME"],
                "lifecycleModes":["Persistent"]}"#,
        )
        .unwrap();
        assert!(caps.attach_required());
        let names: Vec<_> = caps
            .controller_sidecars()
            .into_iter()
            .map(|n| n.sidecar.container_name())
            .collect();
        assert_eq!(names, ["csi-provisioner", "csi-attacher", "liveness-probe"]);
    }
}
