//! Between the cluster-mode records ([`plinth_api::cluster::crd`], shared with the
//! operator, which generates their CRDs) and the pool's own types.

use plinth_api::cluster::crd::{AccessSpec, ContentSourceSpec, FsType as RecordFs, VolumeMode};

use crate::mount::FsType;
use crate::storage::pool::{ContentSource, VolumeAccess};

impl From<FsType> for RecordFs {
    fn from(fs: FsType) -> Self {
        match fs {
            FsType::Ext4 => Self::Ext4,
            FsType::Xfs => Self::Xfs,
        }
    }
}

impl From<RecordFs> for FsType {
    fn from(fs: RecordFs) -> Self {
        match fs {
            RecordFs::Ext4 => Self::Ext4,
            RecordFs::Xfs => Self::Xfs,
        }
    }
}

impl From<VolumeAccess> for AccessSpec {
    fn from(access: VolumeAccess) -> Self {
        match access {
            VolumeAccess::Mount { fs_type } => Self {
                volume_mode: VolumeMode::Filesystem,
                fs_type: Some(fs_type.into()),
            },
            VolumeAccess::Block => Self {
                volume_mode: VolumeMode::Block,
                fs_type: None,
            },
        }
    }
}

impl From<AccessSpec> for VolumeAccess {
    fn from(access: AccessSpec) -> Self {
        match access.volume_mode {
            VolumeMode::Filesystem => Self::Mount {
                fs_type: access.fs_type.map_or(FsType::DEFAULT, FsType::from),
            },
            VolumeMode::Block => Self::Block,
        }
    }
}

impl From<&ContentSource> for ContentSourceSpec {
    fn from(source: &ContentSource) -> Self {
        match source {
            ContentSource::Snapshot { snapshot_id } => Self {
                snapshot_id: Some(snapshot_id.clone()),
                volume_id: None,
            },
            ContentSource::Volume { volume_id } => Self {
                snapshot_id: None,
                volume_id: Some(volume_id.clone()),
            },
        }
    }
}

/// The content a recorded spec names; `None` when it names no source or both kinds (an
/// object nobody but a hand edit could have written).
pub fn content_source(spec: &ContentSourceSpec) -> Option<ContentSource> {
    match (&spec.snapshot_id, &spec.volume_id) {
        (Some(snapshot_id), None) => Some(ContentSource::Snapshot {
            snapshot_id: snapshot_id.clone(),
        }),
        (None, Some(volume_id)) => Some(ContentSource::Volume {
            volume_id: volume_id.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_round_trips_through_the_resource() {
        for access in [
            VolumeAccess::Block,
            VolumeAccess::Mount {
                fs_type: FsType::Xfs,
            },
            VolumeAccess::Mount {
                fs_type: FsType::Ext4,
            },
        ] {
            assert_eq!(VolumeAccess::from(AccessSpec::from(access)), access);
        }
        let json = serde_json::to_value(AccessSpec::from(VolumeAccess::Mount {
            fs_type: FsType::Ext4,
        }))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"volumeMode": "Filesystem", "fsType": "ext4"})
        );
    }

    /// The record and the driver spell filesystems the same: a PoolVolume written by an
    /// older driver (from `mount::FsType`'s serde) reads back.
    #[test]
    fn filesystem_names_match_the_drivers() {
        for fs in [FsType::Ext4, FsType::Xfs] {
            assert_eq!(
                serde_json::to_value(RecordFs::from(fs)).unwrap(),
                serde_json::to_value(fs).unwrap()
            );
        }
    }

    #[test]
    fn content_sources_need_exactly_one_kind() {
        let snap = ContentSource::Snapshot {
            snapshot_id: "snap-1".into(),
        };
        assert_eq!(content_source(&ContentSourceSpec::from(&snap)), Some(snap));
        let both = ContentSourceSpec {
            snapshot_id: Some("a".into()),
            volume_id: Some("b".into()),
        };
        assert_eq!(content_source(&both), None);
    }
}
