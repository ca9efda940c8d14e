//! The CSI calls the benchmark times, in the order a volume's life visits them.

use std::fmt;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Call {
    CreateVolume,
    ControllerPublishVolume,
    NodeStageVolume,
    NodePublishVolume,
    NodeUnpublishVolume,
    NodeUnstageVolume,
    ControllerUnpublishVolume,
    DeleteVolume,
    CreateSnapshot,
    /// `CreateVolume` with a snapshot as `volume_content_source`.
    RestoreVolume,
    DeleteSnapshot,
    ControllerExpandVolume,
    NodeExpandVolume,
    // Discovery calls, never timed.
    Probe,
    GetPluginInfo,
    GetPluginCapabilities,
    ControllerGetCapabilities,
    NodeGetCapabilities,
    NodeGetInfo,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateVolume => "CreateVolume",
            Self::ControllerPublishVolume => "ControllerPublishVolume",
            Self::NodeStageVolume => "NodeStageVolume",
            Self::NodePublishVolume => "NodePublishVolume",
            Self::NodeUnpublishVolume => "NodeUnpublishVolume",
            Self::NodeUnstageVolume => "NodeUnstageVolume",
            Self::ControllerUnpublishVolume => "ControllerUnpublishVolume",
            Self::DeleteVolume => "DeleteVolume",
            Self::CreateSnapshot => "CreateSnapshot",
            Self::RestoreVolume => "CreateVolume (from snapshot)",
            Self::DeleteSnapshot => "DeleteSnapshot",
            Self::ControllerExpandVolume => "ControllerExpandVolume",
            Self::NodeExpandVolume => "NodeExpandVolume",
            Self::Probe => "Probe",
            Self::GetPluginInfo => "GetPluginInfo",
            Self::GetPluginCapabilities => "GetPluginCapabilities",
            Self::ControllerGetCapabilities => "ControllerGetCapabilities",
            Self::NodeGetCapabilities => "NodeGetCapabilities",
            Self::NodeGetInfo => "NodeGetInfo",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
