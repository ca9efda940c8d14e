//! Counts of write requests, so tests can assert how many writes a component made
//! (e.g. "a resync writes nothing").

use std::collections::BTreeMap;

/// The write verbs of the Kubernetes API (server-side apply is a `Patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Create,
    Update,
    Patch,
    Delete,
}

/// Write requests that reached the store, whatever their outcome (a refused or no-op
/// write still counts: it is traffic the caller chose to send). Requests answered by an
/// injected fault are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// (verb, plural, to the status subresource) → requests.
    counts: BTreeMap<(Verb, String, bool), u64>,
}

impl WriteCounts {
    pub(crate) fn record(&mut self, verb: Verb, plural: &str, status: bool) {
        *self
            .counts
            .entry((verb, plural.to_owned(), status))
            .or_default() += 1;
    }

    /// All write requests.
    pub fn total(&self) -> u64 {
        self.sum(|_, _, _| true)
    }

    /// Write requests of one verb to one resource, main resource and status together.
    pub fn count(&self, verb: Verb, plural: &str) -> u64 {
        self.sum(|v, p, _| v == verb && p == plural)
    }

    /// Write requests of any verb to one resource, main resource and status together.
    pub fn to_resource(&self, plural: &str) -> u64 {
        self.sum(|_, p, _| p == plural)
    }

    /// Write requests to the status subresource of one resource.
    pub fn to_status(&self, plural: &str) -> u64 {
        self.sum(|_, p, status| status && p == plural)
    }

    /// The requests made after `earlier` was taken (counts only grow).
    pub fn since(&self, earlier: &WriteCounts) -> WriteCounts {
        let counts = self
            .counts
            .iter()
            .filter_map(|(key, n)| {
                let delta = n.saturating_sub(earlier.counts.get(key).copied().unwrap_or(0));
                (delta > 0).then(|| (key.clone(), delta))
            })
            .collect();
        WriteCounts { counts }
    }

    /// Every (verb, plural, status subresource, count), for diagnostics.
    pub fn iter(&self) -> impl Iterator<Item = (Verb, &str, bool, u64)> {
        self.counts
            .iter()
            .map(|((verb, plural, status), n)| (*verb, plural.as_str(), *status, *n))
    }

    fn sum(&self, keep: impl Fn(Verb, &str, bool) -> bool) -> u64 {
        self.iter()
            .filter(|(v, p, s, _)| keep(*v, p, *s))
            .map(|(.., n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_deltas() {
        let mut w = WriteCounts::default();
        w.record(Verb::Create, "poolvolumes", false);
        w.record(Verb::Patch, "poolvolumes", true);
        let before = w.clone();
        w.record(Verb::Patch, "poolvolumes", true);
        w.record(Verb::Patch, "poolnodes", false);
        assert_eq!(w.total(), 4);
        assert_eq!(w.count(Verb::Patch, "poolvolumes"), 2);
        assert_eq!(w.to_status("poolvolumes"), 2);
        assert_eq!(w.to_resource("poolnodes"), 1);
        let delta = w.since(&before);
        assert_eq!(delta.total(), 2);
        assert_eq!(delta.count(Verb::Create, "poolvolumes"), 0);
        assert_eq!(delta.to_status("poolvolumes"), 1);
    }
}
