//! The cluster-mode IDs ([`plinth_api::cluster::ids`], where the derivation lives) as the
//! pool's validated ID types.

use plinth_api::cluster::ids;

use crate::storage::pool::VolumeId;
use crate::storage::snapshot::SnapshotId;

/// The ID of the volume `driver` provisions for CSI name `name`.
pub fn volume_id(driver: &str, name: &str) -> VolumeId {
    // 32 lowercase hex characters: always a valid ID.
    VolumeId::parse(&ids::volume_id(driver, name))
        .unwrap_or_else(|_| unreachable!("sha256 hex is a volume id"))
}

/// The ID of the snapshot `driver` cuts for CSI name `name`.
pub fn snapshot_id(driver: &str, name: &str) -> SnapshotId {
    SnapshotId::parse(&ids::snapshot_id(driver, name))
        .unwrap_or_else(|_| unreachable!("sha256 hex is a snapshot id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed IDs are the shared derivation's, and the prefixes agree.
    #[test]
    fn typed_ids_are_the_shared_derivation() {
        assert_eq!(SnapshotId::PREFIX, ids::SNAPSHOT_PREFIX);
        assert_eq!(
            volume_id("local.csi.plinth.dev", "pvc-1").as_str(),
            "b3713cbe2921f0c950476af15ae43729"
        );
        assert_eq!(
            snapshot_id("d", "s").as_str(),
            ids::snapshot_id("d", "s").as_str()
        );
    }
}
