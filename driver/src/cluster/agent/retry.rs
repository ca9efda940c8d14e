//! When failed work is tried again.
//!
//! A failure is recorded in the object's status, and that write comes back through the
//! watch as a new event for the same object: without memory of the failure the agent
//! would retry at once, every time. So the agent remembers, per attempt (object UID,
//! generation, deleting or not, the controller's retry request), when it may try again;
//! a new generation (the spec changed), the start of deletion or a retry request (the CO
//! retried the call) is a new attempt and runs at once. The memory is
//! per process: a restarted agent retries everything once, which is what a restart is
//! for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::time::Instant;
use tonic::Code;

/// First retry of a transient failure (a busy volume, the API server away).
const TRANSIENT_FIRST: Duration = Duration::from_secs(2);
const TRANSIENT_MAX: Duration = Duration::from_secs(60);
/// First retry of a failure that only changes around the node can fix (no space left,
/// a missing source): slower, it will not clear up in a second.
const TERMINAL_FIRST: Duration = Duration::from_secs(30);
const TERMINAL_MAX: Duration = Duration::from_secs(600);

/// Which piece of work a retry belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    uid: String,
    generation: i64,
    deleting: bool,
    /// The controller's retry request (`plinth.dev/retry`): a new value is a new attempt.
    retry: Option<String>,
}

impl Attempt {
    pub fn of<K: Resource>(object: &K) -> Self {
        Self {
            // Objects without a UID exist only in tests; the name stands in.
            uid: object.uid().unwrap_or_else(|| object.name_any()),
            generation: super::generation(object),
            deleting: object.meta().deletion_timestamp.is_some(),
            retry: object
                .annotations()
                .get(plinth_api::cluster::crd::RETRY_ANNOTATION)
                .cloned(),
        }
    }
}

#[derive(Debug)]
struct Retry {
    attempt: Attempt,
    failures: u32,
    /// `None`: not before the object changes.
    not_before: Option<Instant>,
}

/// Per-object retry state (keyed by UID: one entry per object at most).
#[derive(Debug, Default)]
pub struct Retries {
    by_uid: Mutex<HashMap<String, Retry>>,
}

impl Retries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Retry>> {
        // The map holds only timing hints: a poisoned one is still usable.
        self.by_uid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The action to take instead of working when `attempt` failed and its retry is
    /// not due yet.
    pub fn pending(&self, attempt: &Attempt) -> Option<Action> {
        self.pending_at(attempt, Instant::now())
    }

    fn pending_at(&self, attempt: &Attempt, now: Instant) -> Option<Action> {
        let retries = self.lock();
        let retry = retries.get(&attempt.uid)?;
        if retry.attempt != *attempt {
            return None;
        }
        match retry.not_before {
            None => Some(Action::await_change()),
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                (!wait.is_zero()).then(|| Action::requeue(wait))
            }
        }
    }

    /// Records a failure of `attempt` with `code`; returns when to try again.
    pub fn failed(&self, attempt: Attempt, code: Code) -> Action {
        let mut retries = self.lock();
        let failures = match retries.get(&attempt.uid) {
            Some(retry) if retry.attempt == attempt => retry.failures.saturating_add(1),
            _ => 1,
        };
        let delay = delay(code, failures);
        retries.insert(
            attempt.uid.clone(),
            Retry {
                attempt,
                failures,
                not_before: delay.map(|d| Instant::now() + d),
            },
        );
        delay.map_or_else(Action::await_change, Action::requeue)
    }

    /// The attempt succeeded (or no longer needs work).
    pub fn forget(&self, attempt: &Attempt) {
        self.lock().remove(&attempt.uid);
    }
}

/// The wait before retry number `failures` after a failure with `code`; `None` when
/// only a change to the object can help (an invalid spec fails the same way forever).
fn delay(code: Code, failures: u32) -> Option<Duration> {
    let (first, max) = match code {
        Code::InvalidArgument => return None,
        // FAILED_PRECONDITION is a volume still attached: kubelet's unstage frees it
        // within seconds, and a deletion should not wait minutes after that.
        Code::Aborted
        | Code::Unavailable
        | Code::Internal
        | Code::DeadlineExceeded
        | Code::FailedPrecondition => (TRANSIENT_FIRST, TRANSIENT_MAX),
        _ => (TERMINAL_FIRST, TERMINAL_MAX),
    };
    let doublings = failures.saturating_sub(1).min(16);
    Some(first.saturating_mul(1 << doublings).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(generation: i64, deleting: bool) -> Attempt {
        Attempt {
            uid: "u1".into(),
            generation,
            deleting,
            retry: None,
        }
    }

    #[test]
    fn transient_failures_back_off_exponentially_up_to_a_cap() {
        let waits: Vec<_> = (1..=8)
            .map(|n| delay(Code::Aborted, n).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(Code::ResourceExhausted, 1), Some(TERMINAL_FIRST));
        assert_eq!(delay(Code::NotFound, 40), Some(TERMINAL_MAX));
    }

    #[test]
    fn an_invalid_spec_waits_for_a_change() {
        assert_eq!(delay(Code::InvalidArgument, 1), None);
        let retries = Retries::default();
        assert_eq!(
            retries.failed(attempt(1, false), Code::InvalidArgument),
            Action::await_change()
        );
        assert_eq!(
            retries.pending(&attempt(1, false)),
            Some(Action::await_change())
        );
        // A new generation is new work.
        assert_eq!(retries.pending(&attempt(2, false)), None);
    }

    #[test]
    fn a_failed_attempt_is_not_retried_before_its_time_but_deletion_is_new_work() {
        let retries = Retries::default();
        retries.failed(attempt(1, false), Code::ResourceExhausted);
        assert!(
            matches!(retries.pending(&attempt(1, false)), Some(a) if a != Action::await_change())
        );
        assert_eq!(retries.pending(&attempt(1, true)), None);
        // The CO retried the call and the controller asked for a retry: new work too.
        let requested = Attempt {
            retry: Some("1".into()),
            ..attempt(1, false)
        };
        assert_eq!(retries.pending(&requested), None);
        // The second failure of the same attempt waits twice as long.
        let second = retries.failed(attempt(1, false), Code::ResourceExhausted);
        assert_eq!(second, Action::requeue(TERMINAL_FIRST * 2));
        let due = Instant::now() + TERMINAL_FIRST * 2;
        assert_eq!(retries.pending_at(&attempt(1, false), due), None);
        retries.forget(&attempt(1, false));
        assert_eq!(
            retries.failed(attempt(1, false), Code::Unavailable),
            Action::requeue(TRANSIENT_FIRST)
        );
    }
}
