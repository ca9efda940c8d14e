//! One call at a time per volume.
//!
//! The CSI spec lets a plugin answer ABORTED ("operation pending for volume") when a
//! second call arrives for a volume that already has one running; the sidecars retry
//! with backoff. Rejecting instead of queueing keeps a slow mkfs from piling up
//! duplicate work behind it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The keys (volume IDs, or `name:` + volume name for CreateVolume) with a call running.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Held while the call runs; dropping it (also on panic or cancellation) frees the key.
#[derive(Debug)]
pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    held: String,
}

impl InFlight {
    /// `None` when `key` is already claimed.
    pub fn try_claim(&self, key: &str) -> Option<Guard> {
        let mut set = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(key.to_owned()).then(|| Guard {
            keys: Arc::clone(&self.keys),
            held: key.to_owned(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut set = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        set.remove(&self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_key_is_refused_until_released() {
        let inflight = InFlight::default();
        let first = inflight.try_claim("vol-a").unwrap();
        assert!(inflight.try_claim("vol-a").is_none());
        // Other keys are independent.
        drop(inflight.try_claim("vol-b").unwrap());
        drop(first);
        assert!(inflight.try_claim("vol-a").is_some());
    }
}
