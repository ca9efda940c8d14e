//! Remembers what was applied so a resync with nothing changed sends no write.
//!
//! After each apply we record a hash of the desired body together with the version the
//! API server answered with. On the next reconcile an object is skipped only when both
//! still match: the desired body is the same *and* nobody has touched the live object
//! since (someone else's edit bumps its version, so it is re-applied and the drift is
//! reverted). The map holds a hash and a short string per object, never whole objects.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use serde_json::Value;

/// Identifies one managed object across reconciles.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    desired: u64,
    live_version: String,
}

/// Per-CR fingerprints of the objects last applied.
#[derive(Debug, Default)]
pub struct Fingerprints {
    by_owner: Mutex<HashMap<String, HashMap<ObjectKey, Recorded>>>,
}

/// A stable hash of a desired body. `serde_json::Map` keeps keys sorted, so equal objects
/// serialise to equal bytes.
pub fn hash_desired(body: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    body.to_string().hash(&mut hasher);
    hasher.finish()
}

impl Fingerprints {
    /// True when `desired` was applied last time and the live object is still the version
    /// that apply produced.
    pub fn is_current(
        &self,
        owner: &str,
        key: &ObjectKey,
        desired: u64,
        live_version: &str,
    ) -> bool {
        let map = self.lock();
        map.get(owner)
            .and_then(|objects| objects.get(key))
            .is_some_and(|r| r.desired == desired && r.live_version == live_version)
    }

    pub fn record(&self, owner: &str, key: ObjectKey, desired: u64, live_version: String) {
        self.lock().entry(owner.to_owned()).or_default().insert(
            key,
            Recorded {
                desired,
                live_version,
            },
        );
    }

    pub fn forget(&self, owner: &str, key: &ObjectKey) {
        if let Some(objects) = self.lock().get_mut(owner) {
            objects.remove(key);
        }
    }

    /// Drops everything recorded for a CR, once it is gone.
    pub fn forget_owner(&self, owner: &str) {
        self.lock().remove(owner);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<ObjectKey, Recorded>>> {
        // A panic while holding the lock leaves at worst a stale fingerprint, which only
        // costs one redundant apply: keep going rather than poison every later reconcile.
        self.by_owner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group: "apps".into(),
            kind: "StatefulSet".into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    #[test]
    fn current_only_when_body_and_live_version_both_match() {
        let fps = Fingerprints::default();
        let body = json!({"spec": {"replicas": 1}});
        let h = hash_desired(&body);
        assert!(!fps.is_current("cr", &key("a"), h, "g1"));
        fps.record("cr", key("a"), h, "g1".into());
        assert!(fps.is_current("cr", &key("a"), h, "g1"));
        assert!(
            !fps.is_current("cr", &key("a"), h, "g2"),
            "drift must re-apply"
        );
        let changed = hash_desired(&json!({"spec": {"replicas": 2}}));
        assert!(!fps.is_current("cr", &key("a"), changed, "g1"));
        assert!(!fps.is_current("other", &key("a"), h, "g1"));
        fps.forget_owner("cr");
        assert!(!fps.is_current("cr", &key("a"), h, "g1"));
    }

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        assert_eq!(hash_desired(&a), hash_desired(&b));
    }
}
