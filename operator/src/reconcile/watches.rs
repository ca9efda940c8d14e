//! Watches that recover from anything the API server does to them.
//!
//! kube's `watcher` resumes from its last resourceVersion after a dropped connection and
//! relists after a 410 in the stream, but with the "Any" list semantic that relist may be
//! answered from a lagging cache with the same expired version, forever; and a 410 on the
//! watch request itself (servers answer either way) makes it retry the same version
//! forever. That is how an operator went deaf after an API-server restart while its
//! probes said healthy (issue 10). Here every error drops the watcher and, after a
//! backoff, starts a fresh one whose list is a consistent read (resourceVersion unset,
//! as client-go's reflector does after a 410): each recovery is a full relist, which the
//! operator's label-filtered, metadata-only watches make cheap, and a relist is also
//! what tells the health endpoints that the watch is live again.

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use crate::health::WatchHealth;

/// Server-side timeout of each watch request: the server ends a quiet watch after it
/// (kube's client then notices a dead connection within it plus 5 s), well within the
/// client's read timeout.
pub const WATCH_TIMEOUT_SECONDS: u32 = 45;
/// Backoff between recoveries: doubles from the first to the last, and starts over once
/// a minute has passed without a failure.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);
const RETRY_RESET: Duration = Duration::from_secs(60);

/// The watcher configuration every watch starts from (add selectors to it).
pub fn config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

struct Retry {
    next: Duration,
    last_failure: Option<Instant>,
}

impl Retry {
    fn delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_none_or(|at| now.saturating_duration_since(at) > RETRY_RESET)
        {
            self.next = FIRST_RETRY;
        }
        self.last_failure = Some(now);
        let delay = self.next;
        self.next = (self.next * 2).min(LAST_RETRY);
        delay
    }
}

struct State<K, F> {
    make: F,
    current: Option<BoxStream<'static, watcher::Result<watcher::Event<K>>>>,
    health: WatchHealth,
    retry: Retry,
    /// Sleep this long before starting the next watcher.
    pause: Option<Duration>,
}

/// A watch stream that relists (consistently) after every error, with its own backoff,
/// and reports liveness: live at the end of each list, down from an error until then.
/// Errors are logged and reported, never yielded. `make` builds a fresh watcher; its
/// config must not use the "Any" list semantic.
pub fn relisting<K, S, F>(
    health: WatchHealth,
    make: F,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    F: Fn() -> S + Send + 'static,
{
    let state = State {
        make,
        current: None,
        health,
        retry: Retry {
            next: FIRST_RETRY,
            last_failure: None,
        },
        pause: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(pause) = state.pause.take() {
                tokio::time::sleep(pause).await;
            }
            let stream = state.current.get_or_insert_with(|| {
                debug!("starting a watcher (list, then watch)");
                (state.make)().boxed()
            });
            match stream.next().await {
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::InitDone) {
                        state.health.synced();
                    }
                    return Some((Ok(event), state));
                }
                Some(Err(error)) => {
                    // Handled here, not passed on: kube's Controller backs off its
                    // merged trigger stream on any error, which would stall every
                    // watch (unread, their connections sit in CLOSE-WAIT) for up to
                    // 30 s per error of any one of them.
                    state.health.failed(&error);
                    state.current = None;
                    let delay = state.retry.delay();
                    warn!(watch = %state.health.name(), %error, retry_in = ?delay, "watch failed; relisting");
                    state.pause = Some(delay);
                }
                None => {
                    // A watcher never ends; should one, start over.
                    info!("watch stream ended; relisting");
                    state.current = None;
                    state.pause = Some(state.retry.delay());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::health::{Health, Verdict};

    #[tokio::test]
    async fn errors_restart_the_watcher_and_never_reach_the_consumer() {
        let health = Health::new(Duration::from_secs(60));
        health.set_connected();
        let started = Arc::new(AtomicUsize::new(0));
        let count = started.clone();
        let stream = relisting(health.watch("things"), move || {
            let attempt = count.fetch_add(1, Ordering::SeqCst);
            let events: Vec<watcher::Result<watcher::Event<String>>> = if attempt == 0 {
                vec![
                    Ok(watcher::Event::Init),
                    Ok(watcher::Event::InitDone),
                    Err(watcher::Error::NoResourceVersion),
                ]
            } else {
                vec![
                    Ok(watcher::Event::Init),
                    Ok(watcher::Event::InitApply("a".to_owned())),
                    Ok(watcher::Event::InitDone),
                ]
            };
            futures::stream::iter(events).chain(futures::stream::pending())
        });
        let mut stream = std::pin::pin!(stream);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let event = stream.next().await.expect("a watch never ends");
            seen.push(format!("{:?}", event.expect("errors are not passed on")));
            if seen.len() == 2 {
                assert_eq!(health.readiness(), Verdict::Ok, "live after the first list");
            }
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "a fresh watcher after the error"
        );
        assert_eq!(
            seen,
            ["Init", "InitDone", "Init", "InitApply(\"a\")", "InitDone"]
        );
        assert_eq!(
            health.readiness(),
            Verdict::Ok,
            "live again after the relist"
        );
    }

    #[test]
    fn retries_back_off_and_start_over_after_a_quiet_minute() {
        let mut retry = Retry {
            next: FIRST_RETRY,
            last_failure: None,
        };
        let delays: Vec<_> = (0..7).map(|_| retry.delay()).collect();
        assert_eq!(delays[0], FIRST_RETRY);
        assert_eq!(delays[1], FIRST_RETRY * 2);
        assert_eq!(delays[6], LAST_RETRY);
        retry.last_failure = Some(Instant::now() - RETRY_RESET - Duration::from_secs(1));
        assert_eq!(retry.delay(), FIRST_RETRY);
    }
}
