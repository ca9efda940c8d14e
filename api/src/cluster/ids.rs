//! IDs of cluster-mode volumes and snapshots, derived from their CSI names.
//!
//! The controller keeps no state of its own: a retried CreateVolume must find the work
//! the first attempt started, so the ID (and the name of the custom resource that
//! records it) is a function of the driver and the CSI name. 128 bits of SHA-256 keep
//! the IDs in the same `[0-9a-f]{32}` shape the pool validates, so nothing downstream
//! changes, and a node name never has to fit into a 128-byte CSI ID.

use sha2::{Digest, Sha256};

/// The prefix of every snapshot ID (the driver's `SnapshotId::PREFIX`).
pub const SNAPSHOT_PREFIX: &str = "snap-";

fn digest_hex(kind: &str, driver: &str, name: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [kind, driver, name] {
        hasher.update(part.as_bytes());
        // A separator that cannot occur in a driver name keeps ("a", "bc") and
        // ("ab", "c") apart.
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The ID of the volume `driver` provisions for CSI name `name`: 32 lowercase hex
/// characters (the name of its PoolVolume).
pub fn volume_id(driver: &str, name: &str) -> String {
    digest_hex("volume", driver, name)
}

/// The ID of the snapshot `driver` cuts for CSI name `name`: `snap-` and 32 lowercase
/// hex characters (the name of its PoolSnapshot).
pub fn snapshot_id(driver: &str, name: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{}", digest_hex("snapshot", driver, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct_per_driver_kind_and_name() {
        let a = volume_id("local.csi.plinth.dev", "pvc-1");
        assert_eq!(a, volume_id("local.csi.plinth.dev", "pvc-1"));
        assert_ne!(a, volume_id("local.csi.plinth.dev", "pvc-2"));
        assert_ne!(a, volume_id("other.csi.plinth.dev", "pvc-1"));
        assert_ne!(volume_id("ab", "c"), volume_id("a", "bc"));
        let s = snapshot_id("local.csi.plinth.dev", "pvc-1");
        assert!(s.starts_with("snap-"));
        assert_ne!(&s[5..], a.as_str(), "kinds must not share IDs");
        // Pinned: IDs are recorded in PVs; changing the derivation orphans volumes.
        assert_eq!(
            volume_id("local.csi.plinth.dev", "pvc-1"),
            "b3713cbe2921f0c950476af15ae43729"
        );
    }
}
