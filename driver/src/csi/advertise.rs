//! The one translation from the capability model ([`plinth_api::capabilities`]) to the CSI
//! protobuf messages the Identity, Controller and Node services advertise.

use plinth_csi_proto::v1;
use v1::controller_service_capability::rpc::Type as ProtoController;
use v1::group_controller_service_capability::rpc::Type as ProtoGroup;
use v1::node_service_capability::rpc::Type as ProtoNode;
use v1::plugin_capability::service::Type as ProtoService;
use v1::plugin_capability::volume_expansion::Type as ProtoExpansion;

use plinth_api::capabilities::{
    Capabilities, ControllerCapability, GroupControllerCapability, NodeCapability, PluginCapability,
};

fn plugin(cap: PluginCapability) -> v1::PluginCapability {
    use v1::plugin_capability::{Service, Type, VolumeExpansion};
    let service = |t: ProtoService| Type::Service(Service { r#type: t as i32 });
    let expansion = |t: ProtoExpansion| Type::VolumeExpansion(VolumeExpansion { r#type: t as i32 });
    let kind = match cap {
        PluginCapability::ControllerService => service(ProtoService::ControllerService),
        PluginCapability::VolumeAccessibilityConstraints => {
            service(ProtoService::VolumeAccessibilityConstraints)
        }
        PluginCapability::GroupControllerService => service(ProtoService::GroupControllerService),
        PluginCapability::OnlineExpansion => expansion(ProtoExpansion::Online),
        PluginCapability::OfflineExpansion => expansion(ProtoExpansion::Offline),
    };
    v1::PluginCapability { r#type: Some(kind) }
}

fn controller(cap: ControllerCapability) -> v1::ControllerServiceCapability {
    use ControllerCapability as C;
    let t = match cap {
        C::CreateDeleteVolume => ProtoController::CreateDeleteVolume,
        C::PublishUnpublishVolume => ProtoController::PublishUnpublishVolume,
        C::ListVolumes => ProtoController::ListVolumes,
        C::GetCapacity => ProtoController::GetCapacity,
        C::CreateDeleteSnapshot => ProtoController::CreateDeleteSnapshot,
        C::ListSnapshots => ProtoController::ListSnapshots,
        C::CloneVolume => ProtoController::CloneVolume,
        C::PublishReadonly => ProtoController::PublishReadonly,
        C::ExpandVolume => ProtoController::ExpandVolume,
        C::ListVolumesPublishedNodes => ProtoController::ListVolumesPublishedNodes,
        C::GetVolume => ProtoController::GetVolume,
        C::SingleNodeMultiWriter => ProtoController::SingleNodeMultiWriter,
        C::ModifyVolume => ProtoController::ModifyVolume,
        C::GetSnapshot => ProtoController::GetSnapshot,
    };
    use v1::controller_service_capability::{Rpc, Type};
    v1::ControllerServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

fn node(cap: NodeCapability) -> v1::NodeServiceCapability {
    let t = match cap {
        NodeCapability::StageUnstageVolume => ProtoNode::StageUnstageVolume,
        NodeCapability::GetVolumeStats => ProtoNode::GetVolumeStats,
        NodeCapability::ExpandVolume => ProtoNode::ExpandVolume,
        NodeCapability::SingleNodeMultiWriter => ProtoNode::SingleNodeMultiWriter,
        NodeCapability::VolumeMountGroup => ProtoNode::VolumeMountGroup,
    };
    use v1::node_service_capability::{Rpc, Type};
    v1::NodeServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

fn group(cap: GroupControllerCapability) -> v1::GroupControllerServiceCapability {
    let t = match cap {
        GroupControllerCapability::CreateDeleteGetVolumeGroupSnapshot => {
            ProtoGroup::CreateDeleteGetVolumeGroupSnapshot
        }
    };
    use v1::group_controller_service_capability::{Rpc, Type};
    v1::GroupControllerServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

/// GetPluginCapabilities. A process that does not serve the Controller service (node
/// mode) must not claim CONTROLLER_SERVICE or the group controller.
pub fn plugin_capabilities(
    caps: &Capabilities,
    serves_controller: bool,
) -> Vec<v1::PluginCapability> {
    caps.plugin
        .iter()
        .filter(|c| {
            serves_controller
                || !matches!(
                    c,
                    PluginCapability::ControllerService | PluginCapability::GroupControllerService
                )
        })
        .map(|c| plugin(*c))
        .collect()
}

pub fn controller_capabilities(caps: &Capabilities) -> Vec<v1::ControllerServiceCapability> {
    caps.controller.iter().map(|c| controller(*c)).collect()
}

pub fn node_capabilities(caps: &Capabilities) -> Vec<v1::NodeServiceCapability> {
    caps.node.iter().map(|c| node(*c)).collect()
}

pub fn group_controller_capabilities(
    caps: &Capabilities,
) -> Vec<v1::GroupControllerServiceCapability> {
    caps.group_controller.iter().map(|c| group(*c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_api::capabilities::DriverFeatures;

    /// The proto enum names are the serde names of the model: a mapping slip (say,
    /// LIST_SNAPSHOTS sent for LIST_VOLUMES) shows up as a name mismatch.
    #[test]
    fn every_mapped_capability_keeps_its_spec_name() {
        let caps = DriverFeatures::default().capabilities();
        for (model, proto) in caps.controller.iter().zip(controller_capabilities(&caps)) {
            let Some(v1::controller_service_capability::Type::Rpc(rpc)) = proto.r#type else {
                panic!("not an rpc capability");
            };
            let name = ProtoController::try_from(rpc.r#type).unwrap().as_str_name();
            assert_eq!(serde_json::to_value(model).unwrap(), name);
        }
        for (model, proto) in caps.node.iter().zip(node_capabilities(&caps)) {
            let Some(v1::node_service_capability::Type::Rpc(rpc)) = proto.r#type else {
                panic!("not an rpc capability");
            };
            let name = ProtoNode::try_from(rpc.r#type).unwrap().as_str_name();
            assert_eq!(serde_json::to_value(model).unwrap(), name);
        }
    }

    #[test]
    fn node_mode_does_not_claim_the_controller_service() {
        let caps = DriverFeatures::default().capabilities();
        let node_only = plugin_capabilities(&caps, false);
        assert!(node_only.iter().all(|c| !matches!(
            &c.r#type,
            Some(v1::plugin_capability::Type::Service(s))
                if s.r#type == ProtoService::ControllerService as i32
        )));
        assert_eq!(
            plugin_capabilities(&caps, true).len(),
            caps.plugin.len(),
            "all-in-one advertises every plugin capability"
        );
    }
}
