//! Fault injection: canned error answers for chosen requests, and paused watch delivery.

use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, StatusCode};
use tokio::sync::watch;

/// Answer the next `times` requests whose method matches and whose path starts with
/// `path_prefix` with `status` (a `Status` body with the reason the real server gives for
/// that code), without touching the store.
///
/// Note that kube's client retries 429, 503 and 504 on its own (up to 15 times by
/// default): to make a caller see such an error, inject more than that; a 500 or a 409
/// reaches the caller on the first try.
#[derive(Debug, Clone)]
pub struct Fault {
    method: Option<Method>,
    path_prefix: String,
    /// Match `path_prefix` anywhere in the path rather than at its start.
    anywhere: bool,
    status: StatusCode,
    message: Option<String>,
    remaining: u32,
}

impl Fault {
    /// One request with this method under `path_prefix` answers `status`.
    pub fn new(method: Method, path_prefix: impl Into<String>, status: StatusCode) -> Self {
        Fault {
            method: Some(method),
            path_prefix: path_prefix.into(),
            anywhere: false,
            status,
            message: None,
            remaining: 1,
        }
    }

    /// One request of any method under `path_prefix` answers `status`.
    pub fn any_method(path_prefix: impl Into<String>, status: StatusCode) -> Self {
        Fault {
            method: None,
            path_prefix: path_prefix.into(),
            anywhere: false,
            status,
            message: None,
            remaining: 1,
        }
    }

    /// One request with this method whose path contains `fragment` (e.g.
    /// `/namespaces/ns/`, whichever kind comes first) answers `status`.
    pub fn path_contains(method: Method, fragment: impl Into<String>, status: StatusCode) -> Self {
        Fault {
            anywhere: true,
            ..Fault::new(method, fragment, status)
        }
    }

    /// The message of the answered `Status` (what the real server would have said).
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Applies to the next `times` matching requests instead of one.
    pub fn times(mut self, times: u32) -> Self {
        self.remaining = times;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.remaining > 0
            && self.method.as_ref().is_none_or(|m| m == method)
            && if self.anywhere {
                path.contains(&self.path_prefix)
            } else {
                path.starts_with(&self.path_prefix)
            }
    }
}

/// The armed faults, consumed first-armed first.
#[derive(Debug, Default)]
pub(crate) struct Faults(Mutex<Vec<Fault>>);

impl Faults {
    pub fn arm(&self, fault: Fault) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// The status (and message, if the fault has one) to answer this request with,
    /// consuming one use of the matching fault.
    pub fn take(&self, method: &Method, path: &str) -> Option<(StatusCode, Option<String>)> {
        let mut faults = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let fault = faults.iter_mut().find(|f| f.matches(method, path))?;
        fault.remaining -= 1;
        let answer = (fault.status, fault.message.clone());
        faults.retain(|f| f.remaining > 0);
        Some(answer)
    }

    /// Uses left across all armed faults.
    pub fn pending(&self) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|f| f.remaining)
            .sum()
    }
}

/// Another writer that wins a race: just before the next request with this method under
/// `path_prefix` is served, `object` is stored at `object_path` (as
/// [`crate::Running::insert`] would); the request then meets it, e.g. a create answered
/// 409 `AlreadyExists` as on a real server.
#[derive(Debug, Clone)]
pub(crate) struct Race {
    pub method: Method,
    pub path_prefix: String,
    pub object_path: String,
    pub object: serde_json::Value,
}

#[derive(Debug, Default)]
pub(crate) struct Races(Mutex<Vec<Race>>);

impl Races {
    pub fn arm(&self, race: Race) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(race);
    }

    /// The first armed race this request meets, disarmed.
    pub fn take(&self, method: &Method, path: &str) -> Option<Race> {
        let mut races = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let at = races
            .iter()
            .position(|r| r.method == method && path.starts_with(&r.path_prefix))?;
        Some(races.remove(at))
    }
}

/// What a watch asked for, for deciding which watches a pause holds.
#[derive(Debug, Clone)]
pub struct WatchInfo {
    pub group: String,
    pub plural: String,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub user_agent: Option<String>,
}

type Predicate = Arc<dyn Fn(&WatchInfo) -> bool + Send + Sync>;

/// Which watches hold their events back; held events are delivered, in order, on resume
/// (unless the history limit dropped them meanwhile: then the watch ends with 410 Gone,
/// as a real server's would after compaction).
#[derive(Clone)]
pub(crate) struct PauseRule(Option<Predicate>);

impl std::fmt::Debug for PauseRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "PauseRule(active)"
        } else {
            "PauseRule(none)"
        })
    }
}

impl PauseRule {
    pub fn holds(&self, watch: &WatchInfo) -> bool {
        self.0.as_ref().is_some_and(|p| p(watch))
    }
}

pub(crate) struct Pauses(watch::Sender<PauseRule>);

impl Default for Pauses {
    fn default() -> Self {
        Pauses(watch::Sender::new(PauseRule(None)))
    }
}

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pauses").field(&*self.0.borrow()).finish()
    }
}

impl Pauses {
    pub fn pause(&self, predicate: impl Fn(&WatchInfo) -> bool + Send + Sync + 'static) {
        self.0.send_replace(PauseRule(Some(Arc::new(predicate))));
    }

    pub fn resume(&self) {
        self.0.send_replace(PauseRule(None));
    }

    pub fn subscribe(&self) -> watch::Receiver<PauseRule> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_match_method_and_prefix_and_run_out() {
        let faults = Faults::default();
        faults.arm(
            Fault::new(
                Method::PATCH,
                "/apis/plinth.dev/v1alpha1/poolvolumes",
                StatusCode::CONFLICT,
            )
            .times(2),
        );
        assert_eq!(
            faults.take(&Method::GET, "/apis/plinth.dev/v1alpha1/poolvolumes/a"),
            None
        );
        assert_eq!(
            faults.take(&Method::PATCH, "/apis/plinth.dev/v1alpha1/poolnodes/a"),
            None
        );
        assert_eq!(
            faults.take(
                &Method::PATCH,
                "/apis/plinth.dev/v1alpha1/poolvolumes/a/status"
            ),
            Some((StatusCode::CONFLICT, None))
        );
        assert_eq!(faults.pending(), 1);
        assert_eq!(
            faults.take(&Method::PATCH, "/apis/plinth.dev/v1alpha1/poolvolumes/b"),
            Some((StatusCode::CONFLICT, None))
        );
        assert_eq!(
            faults.take(&Method::PATCH, "/apis/plinth.dev/v1alpha1/poolvolumes/b"),
            None
        );
        assert_eq!(faults.pending(), 0);
    }
}
