//! The optional features, once: everything that names a feature (the CR's
//! `spec.features` field, the driver's `--disable` switch, the built-in driver's
//! [`DriverFeatures`] slot, the capabilities a feature needs and those switching it off
//! removes) derives from [`Feature`], so adding a feature is adding a variant and
//! following the compiler through the exhaustive matches below.

use crate::capabilities::{
    Capabilities, ControllerCapability as C, DriverFeatures, GroupControllerCapability,
    NodeCapability, PluginCapability, VolumeLifecycleMode,
};

/// An optional feature of a deployment (and a switch of the built-in driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    Snapshots,
    Expansion,
    Clones,
    Ephemeral,
    Capacity,
    Topology,
    GroupSnapshots,
}

impl Feature {
    /// Every feature, in the order the driver's `--help` lists them and the operator
    /// renders `--disable`.
    pub const ALL: [Feature; 7] = [
        Self::Snapshots,
        Self::Expansion,
        Self::Clones,
        Self::Ephemeral,
        Self::Capacity,
        Self::Topology,
        Self::GroupSnapshots,
    ];

    /// The field name under the CR's `spec.features`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Snapshots => "snapshots",
            Self::Expansion => "resize",
            Self::Clones => "clones",
            Self::Ephemeral => "ephemeral",
            Self::Capacity => "capacityTracking",
            Self::Topology => "topology",
            Self::GroupSnapshots => "groupSnapshots",
        }
    }

    /// The value of `plinth-driver --disable` that switches the feature off.
    pub fn switch(self) -> &'static str {
        match self {
            Self::Snapshots => "snapshots",
            Self::Expansion => "expansion",
            Self::Clones => "clones",
            Self::Ephemeral => "ephemeral",
            Self::Capacity => "capacity",
            Self::Topology => "topology",
            Self::GroupSnapshots => "group-snapshots",
        }
    }

    /// The feature whose `--disable` value is `switch`.
    pub fn from_switch(switch: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.switch() == switch)
    }

    /// The feature whose `spec.features` field is `field`.
    pub fn from_field(field: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.field() == field)
    }

    /// Whether switching the feature changes what the node plugin serves. Expansion is
    /// NodeExpandVolume and the node's EXPAND_VOLUME capability, ephemeral is
    /// NodePublishVolume of inline volumes, topology is NodeGetInfo's segment. The
    /// others are the controller's business (it refuses what is off before any work
    /// reaches a node), so toggling them must not roll the node pods.
    pub fn changes_node(self) -> bool {
        match self {
            Self::Expansion | Self::Ephemeral | Self::Topology => true,
            Self::Snapshots | Self::Clones | Self::Capacity | Self::GroupSnapshots => false,
        }
    }

    /// The state of a feature the CR leaves unset, for the built-in driver: on, except
    /// group snapshots, which need extra CRDs in the cluster.
    pub fn on_when_unset(self) -> bool {
        self != Self::GroupSnapshots
    }

    /// The capability names (CSI spec) a driver must declare to serve the feature.
    pub fn required_capability(self) -> &'static str {
        match self {
            Self::Snapshots => "controller: CREATE_DELETE_SNAPSHOT",
            Self::Expansion => "controller or node: EXPAND_VOLUME",
            Self::Clones => "controller: CLONE_VOLUME",
            Self::Ephemeral => "lifecycleModes: Ephemeral",
            Self::Capacity => "controller: GET_CAPACITY",
            Self::Topology => "plugin: VOLUME_ACCESSIBILITY_CONSTRAINTS",
            Self::GroupSnapshots => "groupController: CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT",
        }
    }

    /// Whether a driver with `caps` serves the feature.
    pub fn served_by(self, caps: &Capabilities) -> bool {
        match self {
            Self::Snapshots => caps.can_snapshot(),
            Self::Expansion => caps.can_expand(),
            Self::Clones => caps.controller.contains(&C::CloneVolume),
            Self::Ephemeral => caps
                .lifecycle_modes
                .contains(&VolumeLifecycleMode::Ephemeral),
            Self::Capacity => caps.can_report_capacity(),
            Self::Topology => caps.has_topology(),
            Self::GroupSnapshots => caps.can_group_snapshot(),
        }
    }

    /// Takes out of `caps` every capability that belongs to the feature: what a driver
    /// with the feature switched off advertises no more.
    pub fn remove_from(self, caps: &mut Capabilities) {
        match self {
            Self::Snapshots => {
                for c in [C::CreateDeleteSnapshot, C::ListSnapshots, C::GetSnapshot] {
                    caps.controller.remove(&c);
                }
            }
            Self::Expansion => {
                caps.controller.remove(&C::ExpandVolume);
                caps.node.remove(&NodeCapability::ExpandVolume);
                caps.plugin.remove(&PluginCapability::OnlineExpansion);
                caps.plugin.remove(&PluginCapability::OfflineExpansion);
            }
            Self::Clones => {
                caps.controller.remove(&C::CloneVolume);
            }
            Self::Ephemeral => {
                caps.lifecycle_modes.remove(&VolumeLifecycleMode::Ephemeral);
            }
            Self::Capacity => {
                caps.controller.remove(&C::GetCapacity);
            }
            Self::Topology => {
                caps.plugin
                    .remove(&PluginCapability::VolumeAccessibilityConstraints);
            }
            Self::GroupSnapshots => {
                // Without its one RPC the group controller service is empty.
                caps.plugin
                    .remove(&PluginCapability::GroupControllerService);
                caps.group_controller
                    .remove(&GroupControllerCapability::CreateDeleteGetVolumeGroupSnapshot);
            }
        }
    }
}

// The driver's `--disable` parses the switches from this one table.
impl clap::ValueEnum for Feature {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.switch()))
    }
}

/// The features a cluster deployment of this build (a controller-mode and a node-mode
/// driver working as a pair) can actually serve; what the operator renders against. A
/// feature outside this set is never advertised, whatever the flags say: advertising an
/// RPC that answers UNIMPLEMENTED would make the CO deploy a sidecar that can only fail.
/// Group snapshots need one point in time across volumes, which only one pool can give.
pub fn served_features() -> DriverFeatures {
    DriverFeatures::default().with(Feature::GroupSnapshots, false)
}

/// The features an all-in-one driver (one process, one pool) serves: all of them.
pub fn served_features_all_in_one() -> DriverFeatures {
    DriverFeatures::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_and_switch_names_exactly_one_feature() {
        for feature in Feature::ALL {
            assert_eq!(Feature::from_field(feature.field()), Some(feature));
            assert_eq!(Feature::from_switch(feature.switch()), Some(feature));
        }
        assert_eq!(Feature::from_switch("resize"), None);
        assert_eq!(Feature::from_field("expansion"), None);
    }

    /// The CR struct's serde names are the table's field names: a CR with every field
    /// set serialises to exactly these keys.
    #[test]
    fn field_names_are_the_camel_case_of_the_driver_slots() {
        let fields: Vec<_> = Feature::ALL.map(Feature::field).to_vec();
        assert_eq!(
            fields,
            [
                "snapshots",
                "resize",
                "clones",
                "ephemeral",
                "capacityTracking",
                "topology",
                "groupSnapshots"
            ]
        );
        let switches: Vec<_> = Feature::ALL.map(Feature::switch).to_vec();
        assert_eq!(
            switches,
            [
                "snapshots",
                "expansion",
                "clones",
                "ephemeral",
                "capacity",
                "topology",
                "group-snapshots"
            ]
        );
    }

    #[test]
    fn removing_a_feature_leaves_it_unserved_and_the_others_served() {
        let all = DriverFeatures::default().capabilities();
        for feature in Feature::ALL {
            assert!(feature.served_by(&all), "{feature:?}");
            let mut caps = all.clone();
            feature.remove_from(&mut caps);
            assert!(!feature.served_by(&caps), "{feature:?} still served");
            for other in Feature::ALL.into_iter().filter(|f| *f != feature) {
                assert!(
                    other.served_by(&caps),
                    "removing {feature:?} removed {other:?}"
                );
            }
        }
    }

    /// The built-in driver with one switch off advertises exactly what removing that
    /// feature from everything leaves: the driver and a restricted CR cannot disagree.
    #[test]
    fn the_builtin_driver_advertises_what_removal_leaves() {
        for feature in Feature::ALL {
            let mut want = DriverFeatures::default().capabilities();
            feature.remove_from(&mut want);
            assert_eq!(
                DriverFeatures::default()
                    .with(feature, false)
                    .capabilities(),
                want,
                "{feature:?}"
            );
        }
    }

    #[test]
    fn only_expansion_ephemeral_and_topology_change_the_node() {
        let node: Vec<_> = Feature::ALL
            .into_iter()
            .filter(|f| f.changes_node())
            .collect();
        assert_eq!(
            node,
            [Feature::Expansion, Feature::Ephemeral, Feature::Topology]
        );
    }

    #[test]
    fn a_cluster_pair_serves_everything_but_group_snapshots() {
        let served = served_features();
        for feature in Feature::ALL {
            assert_eq!(
                served.get(feature),
                feature != Feature::GroupSnapshots,
                "{feature:?}"
            );
            assert!(served_features_all_in_one().get(feature), "{feature:?}");
        }
    }

    /// The driver's `--disable` (clap) accepts exactly the table's switches.
    #[test]
    fn the_cli_parses_exactly_the_switches() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[arg(long, value_enum, value_delimiter = ',')]
            disable: Vec<Feature>,
        }
        let all = Feature::ALL.map(Feature::switch).join(",");
        let cli = Cli::try_parse_from(["x", "--disable", &all]).expect("every switch parses");
        assert_eq!(cli.disable, Feature::ALL);
        for wrong in [
            "resize",
            "capacityTracking",
            "groupSnapshots",
            "Snapshots",
            "",
        ] {
            assert!(
                Cli::try_parse_from(["x", "--disable", wrong]).is_err(),
                "{wrong:?} accepted"
            );
        }
    }
}
