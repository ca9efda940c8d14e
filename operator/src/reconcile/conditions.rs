//! Standard status conditions, keyed by type: `lastTransitionTime` moves only when a
//! condition's status flips, so `kubectl get -o yaml` tells how long something has been
//! true.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A condition as the reconciler decides it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: CondStatus,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    pub fn new(
        type_: &'static str,
        status: CondStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CondStatus {
    True,
    False,
    /// We could not tell (e.g. the spec is invalid, so the workloads were not read).
    Unknown,
}

impl CondStatus {
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// Builds the new condition list from the verdicts, keeping each existing condition's
/// `lastTransitionTime` when its status did not flip. Conditions of types we no longer
/// set are dropped; the order is the verdicts' order.
pub fn merge(
    existing: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            let status = v.status.as_str();
            let since = existing
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: v.type_.to_owned(),
                status: status.to_owned(),
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Sets one condition in place, leaving the others as they are.
pub fn upsert(
    existing: &[Condition],
    verdict: &Verdict,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out = existing.to_vec();
    for condition in merge(existing, std::slice::from_ref(verdict), generation, now) {
        match out.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(slot) => *slot = condition,
            None => out.push(condition),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(
            &[],
            &[
                Verdict::new(READY, CondStatus::False, "Progressing", "waiting"),
                Verdict::new(DEGRADED, CondStatus::False, "AsExpected", ""),
            ],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));

        // Same statuses, new reason and message: time kept, text updated.
        let second = merge(
            &first,
            &[
                Verdict::new(READY, CondStatus::False, "WaitingForNodes", "1/3 nodes"),
                Verdict::new(DEGRADED, CondStatus::False, "AsExpected", ""),
            ],
            Some(2),
            &at(200),
        );
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].reason, "WaitingForNodes");
        assert_eq!(second[0].observed_generation, Some(2));

        // Ready flips: its time moves, Degraded's does not.
        let third = merge(
            &second,
            &[
                Verdict::new(READY, CondStatus::True, "Available", "all ready"),
                Verdict::new(DEGRADED, CondStatus::False, "AsExpected", ""),
            ],
            Some(2),
            &at(300),
        );
        assert_eq!(third[0].status, "True");
        assert_eq!(third[0].last_transition_time, at(300));
        assert_eq!(third[1].last_transition_time, at(100));
    }
}
