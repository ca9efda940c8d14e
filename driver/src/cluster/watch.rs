//! How cluster mode's watches ride out an API-server restart.
//!
//! kube's `Controller` backs its trigger stream off on every watch error with a default
//! that grows to 30 s, and `await_condition` gives up at the first error; after an API
//! server restart (connections cut, the port refusing for a while, the history
//! compacted so the watch relists) that made a node pick work up many seconds late and
//! the controller's hand-off waits fail outright. Here retries start at 200 ms and stay
//! under 2 s, and a hand-off wait keeps watching through errors until its own bound.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::utils::{Backoff, StreamBackoff};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(2);

/// Retry delays of a watch: 200 ms doubling to 2 s; back to the start on the next event.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: FIRST_RETRY }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(LAST_RETRY);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// Watches the object `name` until `done` holds for it (`None`: it does not exist) and
/// returns it. Watch errors (the API server restarting, a compacted history) are retried
/// with [`WatchBackoff`]; bound the wait with a timeout.
pub async fn until<K>(api: Api<K>, name: &str, done: impl Fn(Option<&K>) -> bool) -> Option<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(StreamBackoff::new(
        watcher::watcher(api, config),
        WatchBackoff::default()
    ));
    // The object as of the last complete list or event.
    let mut current: Option<K> = None;
    let mut listing: Option<K> = None;
    while let Some(event) = events.next().await {
        let seen = match event {
            Ok(Event::Init) => {
                listing = None;
                continue;
            }
            Ok(Event::InitApply(object)) => {
                listing = Some(object);
                continue;
            }
            Ok(Event::InitDone) => listing.take(),
            Ok(Event::Apply(object)) => Some(object),
            Ok(Event::Delete(_)) => None,
            Err(error) => {
                tracing::debug!(%error, "watch failed; retrying");
                continue;
            }
        };
        current = seen;
        if done(current.as_ref()) {
            return current;
        }
    }
    // A watcher never ends.
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_short_and_stay_short() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<_> = backoff.by_ref().take(6).collect();
        assert_eq!(delays[0], FIRST_RETRY);
        assert_eq!(delays[1], FIRST_RETRY * 2);
        assert_eq!(delays[5], LAST_RETRY);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST_RETRY));
    }
}
