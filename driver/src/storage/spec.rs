//! What a volume is asked to be, in the driver's own terms: how the workload sees it
//! (block or a filesystem), its access mode, and the size range. `csi::validate` builds
//! these from requests; storage and cluster code take them.

use crate::mount::FsType;
use crate::storage::pool::VolumeAccess;
use crate::storage::volume::NodeAccess;

/// How the workload sees the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Block,
    /// `fs: None`: the request left fs_type empty (CreateVolume defaults it, the node
    /// uses the volume's own filesystem).
    Mount {
        fs: Option<FsType>,
        flags: Vec<String>,
    },
}

impl Access {
    /// The access a new volume is created with.
    pub fn volume_access(&self) -> VolumeAccess {
        match self {
            Self::Block => VolumeAccess::Block,
            Self::Mount { fs, .. } => VolumeAccess::Mount {
                fs_type: fs.unwrap_or(FsType::DEFAULT),
            },
        }
    }

    /// The same capability as the node-side volume layer takes it.
    pub fn node_access(&self) -> NodeAccess {
        match self {
            Self::Block => NodeAccess::Block,
            Self::Mount { fs, flags } => NodeAccess::Mount {
                fs_type: *fs,
                mount_flags: flags.clone(),
            },
        }
    }

    /// Whether a volume created as `volume` can be used this way: block stays block, and
    /// a filesystem is never swapped for another (that would need a reformat).
    pub fn fits(&self, volume: VolumeAccess) -> bool {
        match (self, volume) {
            (Self::Block, VolumeAccess::Block) => true,
            (Self::Mount { fs, .. }, VolumeAccess::Mount { fs_type }) => {
                fs.is_none_or(|f| f == fs_type)
            }
            _ => false,
        }
    }
}

/// The access modes a local volume can honour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
    SingleNodeReaderOnly,
}

impl AccessMode {
    pub fn read_only(self) -> bool {
        self == Self::SingleNodeReaderOnly
    }

    /// Several target paths on this node may share the volume. The spec's second
    /// publish table allows it only for SINGLE_NODE_MULTI_WRITER among the single-node
    /// modes; the others answer FAILED_PRECONDITION.
    pub fn multi_publish(self) -> bool {
        self == Self::SingleNodeMultiWriter
    }
}

/// A validated `VolumeCapability`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub access: Access,
    pub mode: AccessMode,
}

/// Same volume kind: both block, or the same filesystem (flags may differ per use).
pub fn same_kind(a: &Access, b: &Access) -> bool {
    match (a, b) {
        (Access::Block, Access::Block) => true,
        (Access::Mount { fs: x, .. }, Access::Mount { fs: y, .. }) => {
            x.unwrap_or(FsType::DEFAULT) == y.unwrap_or(FsType::DEFAULT)
        }
        _ => false,
    }
}

/// A `CapacityRange` in bytes; zero means "not set" as in the spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub required: u64,
    pub limit: u64,
}
