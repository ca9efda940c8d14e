//! From the CSI messages a driver answers with to the capability model. The inverse of
//! `plinth_driver::csi::advertise` (`tests/contract.rs` in the e2e crate, which links both,
//! holds them to that). Values the model does not know (`UNKNOWN`, the alpha
//! VOLUME_CONDITION that spec v1.13 removes, SNAPSHOT_METADATA_SERVICE) are skipped: no
//! sidecar the operator deploys depends on them.

use plinth_api::capabilities::{
    Capabilities, ControllerCapability as C, GroupControllerCapability, NodeCapability,
    PluginCapability,
};
use plinth_csi_proto::v1;
use v1::controller_service_capability::rpc::Type as ProtoController;
use v1::group_controller_service_capability::rpc::Type as ProtoGroup;
use v1::node_service_capability::rpc::Type as ProtoNode;
use v1::plugin_capability::service::Type as ProtoService;
use v1::plugin_capability::volume_expansion::Type as ProtoExpansion;

pub fn plugin(caps: &[v1::PluginCapability], into: &mut Capabilities) {
    use v1::plugin_capability::Type;
    for cap in caps {
        let known = match &cap.r#type {
            Some(Type::Service(s)) => match ProtoService::try_from(s.r#type) {
                Ok(ProtoService::ControllerService) => Some(PluginCapability::ControllerService),
                Ok(ProtoService::VolumeAccessibilityConstraints) => {
                    Some(PluginCapability::VolumeAccessibilityConstraints)
                }
                Ok(ProtoService::GroupControllerService) => {
                    Some(PluginCapability::GroupControllerService)
                }
                _ => None,
            },
            Some(Type::VolumeExpansion(e)) => match ProtoExpansion::try_from(e.r#type) {
                Ok(ProtoExpansion::Online) => Some(PluginCapability::OnlineExpansion),
                Ok(ProtoExpansion::Offline) => Some(PluginCapability::OfflineExpansion),
                _ => None,
            },
            None => None,
        };
        into.plugin.extend(known);
    }
}

pub fn controller(caps: &[v1::ControllerServiceCapability], into: &mut Capabilities) {
    use v1::controller_service_capability::Type;
    for cap in caps {
        let Some(Type::Rpc(rpc)) = &cap.r#type else {
            continue;
        };
        let known = match ProtoController::try_from(rpc.r#type) {
            Ok(ProtoController::CreateDeleteVolume) => Some(C::CreateDeleteVolume),
            Ok(ProtoController::PublishUnpublishVolume) => Some(C::PublishUnpublishVolume),
            Ok(ProtoController::ListVolumes) => Some(C::ListVolumes),
            Ok(ProtoController::GetCapacity) => Some(C::GetCapacity),
            Ok(ProtoController::CreateDeleteSnapshot) => Some(C::CreateDeleteSnapshot),
            Ok(ProtoController::ListSnapshots) => Some(C::ListSnapshots),
            Ok(ProtoController::CloneVolume) => Some(C::CloneVolume),
            Ok(ProtoController::PublishReadonly) => Some(C::PublishReadonly),
            Ok(ProtoController::ExpandVolume) => Some(C::ExpandVolume),
            Ok(ProtoController::ListVolumesPublishedNodes) => Some(C::ListVolumesPublishedNodes),
            Ok(ProtoController::GetVolume) => Some(C::GetVolume),
            Ok(ProtoController::SingleNodeMultiWriter) => Some(C::SingleNodeMultiWriter),
            Ok(ProtoController::ModifyVolume) => Some(C::ModifyVolume),
            Ok(ProtoController::GetSnapshot) => Some(C::GetSnapshot),
            Ok(ProtoController::Unknown | ProtoController::VolumeCondition) | Err(_) => None,
        };
        into.controller.extend(known);
    }
}

pub fn node(caps: &[v1::NodeServiceCapability], into: &mut Capabilities) {
    use v1::node_service_capability::Type;
    for cap in caps {
        let Some(Type::Rpc(rpc)) = &cap.r#type else {
            continue;
        };
        let known = match ProtoNode::try_from(rpc.r#type) {
            Ok(ProtoNode::StageUnstageVolume) => Some(NodeCapability::StageUnstageVolume),
            Ok(ProtoNode::GetVolumeStats) => Some(NodeCapability::GetVolumeStats),
            Ok(ProtoNode::ExpandVolume) => Some(NodeCapability::ExpandVolume),
            Ok(ProtoNode::SingleNodeMultiWriter) => Some(NodeCapability::SingleNodeMultiWriter),
            Ok(ProtoNode::VolumeMountGroup) => Some(NodeCapability::VolumeMountGroup),
            Ok(ProtoNode::Unknown | ProtoNode::VolumeCondition) | Err(_) => None,
        };
        into.node.extend(known);
    }
}

pub fn group_controller(caps: &[v1::GroupControllerServiceCapability], into: &mut Capabilities) {
    use v1::group_controller_service_capability::Type;
    for cap in caps {
        let Some(Type::Rpc(rpc)) = &cap.r#type else {
            continue;
        };
        if ProtoGroup::try_from(rpc.r#type) == Ok(ProtoGroup::CreateDeleteGetVolumeGroupSnapshot) {
            into.group_controller
                .insert(GroupControllerCapability::CreateDeleteGetVolumeGroupSnapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_the_model_does_not_know_are_skipped() {
        use v1::controller_service_capability::{Rpc, Type};
        let caps = [
            ProtoController::VolumeCondition as i32,
            99,
            ProtoController::GetVolume as i32,
        ]
        .map(|t| v1::ControllerServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t })),
        });
        let mut back = Capabilities::default();
        controller(&caps, &mut back);
        assert_eq!(
            back.controller.into_iter().collect::<Vec<_>>(),
            [C::GetVolume]
        );
    }
}
