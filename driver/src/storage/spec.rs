//! What a volume is asked to be, in the driver's own terms: how the workload sees it
//! (block or a filesystem), its access mode, and the size range. `csi::validate` builds
//! these from requests; storage and cluster code take them. Also the checks on volume
//! IDs: a request names volumes in its content source as well as in its own fields, and
//! storage and cluster code resolve those.

use std::collections::BTreeMap;

use plinth_csi_proto::v1;

use crate::error::Error;
use crate::mount::FsType;
use crate::storage::pool::{CapacityRange, ContentSource, VolumeAccess, VolumeId};
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

/// A CreateVolume request, validated.
#[derive(Clone, Debug)]
pub struct NewVolume {
    pub name: String,
    pub caps: Vec<Capability>,
    pub capacity: Capacity,
    pub requirement: Option<v1::TopologyRequirement>,
    pub parameters: BTreeMap<String, String>,
    pub source: Option<ContentSource>,
}

impl NewVolume {
    /// The access and size range of a volume made from nothing (no content source): the
    /// first capability's access and the requested range. A restore or clone takes its
    /// shape from the source instead (`restore::plan`).
    pub fn blank_shape(&self) -> Result<(VolumeAccess, CapacityRange), Error> {
        let access = self
            .caps
            .first()
            .map(|c| c.access.volume_access())
            .ok_or(Error::MissingField("volume_capabilities"))?;
        Ok((
            access,
            CapacityRange::new(self.capacity.required, self.capacity.limit),
        ))
    }
}

/// The spec's general size limit for IDs and names.
pub const MAX_ID_BYTES: usize = 128;

/// A required string field.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() {
        Err(Error::MissingField(field))
    } else {
        Ok(value)
    }
}

/// A plugin-generated volume ID: it names files in the pool, so only a conservative
/// alphabet is accepted and nothing that could walk out of the pool directory.
pub fn volume_id<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    required(field, value)?;
    if value.len() > MAX_ID_BYTES {
        return Err(too_long(field, value.len()));
    }
    let safe = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !value.starts_with('.');
    if !safe {
        return Err(Error::InvalidArgument {
            field,
            reason: format!("{value:?} is not a volume ID of this driver"),
        });
    }
    Ok(value)
}

/// A volume ID that must name an existing volume: malformed-but-harmless IDs cannot
/// exist, so they are NOT_FOUND; IDs that try to escape are INVALID_ARGUMENT.
pub fn existing_id(raw: &str) -> Result<VolumeId, Error> {
    volume_ref(raw)?.lookup()
}

/// A `volume_id` checked for presence and form, not yet looked up.
///
/// Handlers check every argument first and look the volume up afterwards: a request
/// missing a required field is INVALID_ARGUMENT even when it names a volume that does
/// not exist (the spec's order, which csi-sanity checks with IDs like `fake-vol-id-…`).
#[derive(Clone, Debug)]
pub struct VolumeRef(String);

impl VolumeRef {
    /// The lookup step: an ID of a form this driver never issues names no volume.
    pub fn lookup(&self) -> Result<VolumeId, Error> {
        VolumeId::parse(&self.0).map_err(|_| Error::VolumeNotFound(self.0.clone()))
    }
}

/// The argument step for `volume_id`: required, and nothing that could escape the pool.
pub fn volume_ref(raw: &str) -> Result<VolumeRef, Error> {
    volume_id("volume_id", raw)?;
    Ok(VolumeRef(raw.to_owned()))
}

pub fn too_long(field: &'static str, len: usize) -> Error {
    Error::InvalidArgument {
        field,
        reason: format!("is {len} bytes long, the limit is {MAX_ID_BYTES}"),
    }
}
