//! One benchmark suite's fixed inputs: the plugin, the access type and the volume shape.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use plinth_csi_proto::v1::volume_capability::access_mode::Mode;
use plinth_csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use plinth_csi_proto::v1::{CapacityRange, VolumeCapability};
use serde::Serialize;

use crate::csi::{ControllerCap, Csi, Discovery, NodeCap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    Mount,
    Block,
}

impl fmt::Display for AccessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mount => "mount",
            Self::Block => "block",
        })
    }
}

pub struct Workload {
    pub csi: Csi,
    pub discovery: Discovery,
    pub access: AccessKind,
    pub fs_type: String,
    pub size: u64,
    pub parameters: HashMap<String, String>,
    /// Sent in every call that carries secrets (`--secret`), as the sidecars and
    /// kubelet send a StorageClass's operation secrets.
    pub secrets: HashMap<String, String>,
    /// Directory for this run's staging and target paths (the stand-in for kubelet's
    /// `/var/lib/kubelet`).
    pub run_dir: PathBuf,
    /// Prefix of every volume and snapshot name, unique per run.
    pub run_id: String,
    next: AtomicU64,
}

impl Workload {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        csi: Csi,
        discovery: Discovery,
        access: AccessKind,
        fs_type: String,
        size: u64,
        parameters: HashMap<String, String>,
        run_dir: PathBuf,
        run_id: String,
    ) -> Self {
        Self {
            csi,
            discovery,
            access,
            fs_type,
            size,
            parameters,
            secrets: HashMap::new(),
            run_dir,
            run_id,
            next: AtomicU64::new(0),
        }
    }

    /// The same workload with `secrets` in every call that carries secrets.
    pub fn with_secrets(mut self, secrets: HashMap<String, String>) -> Self {
        self.secrets = secrets;
        self
    }

    /// A fresh volume name and a seed for its data pattern.
    pub fn next_name(&self, role: &str) -> (String, u64) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        (format!("{}-{}-{role}{seq}", self.run_id, self.access), seq)
    }

    /// Kubelet's order: stage only when the node plugin asks for it.
    pub fn stages(&self) -> bool {
        self.discovery.node_can(NodeCap::StageUnstageVolume)
    }

    /// external-attacher only acts for plugins with PUBLISH_UNPUBLISH_VOLUME.
    pub fn controller_publishes(&self) -> bool {
        self.discovery
            .controller_can(ControllerCap::PublishUnpublishVolume)
    }

    pub fn capacity(&self, bytes: u64) -> CapacityRange {
        CapacityRange {
            required_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            limit_bytes: 0,
        }
    }

    pub fn capability(&self) -> VolumeCapability {
        let access_type = match self.access {
            AccessKind::Mount => AccessType::Mount(MountVolume {
                fs_type: self.fs_type.clone(),
                mount_flags: Vec::new(),
                volume_mount_group: String::new(),
            }),
            AccessKind::Block => AccessType::Block(BlockVolume {}),
        };
        VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }
    }
}
