//! What `/readyz` and `/healthz` report: whether the controller's watches are live, and
//! whether its reconciles make progress.
//!
//! A watch is live from the end of its (re)list until its next error; every error makes
//! the watch relist (see `reconcile::watches`), so "synced" has one meaning. The process
//! is ready when the API server answered once and, while this replica runs the
//! controller, every watch is live. It is wedged (and `/healthz` fails, so the kubelet
//! restarts it) when, past a bound, a watch has stayed down or a reconcile has not
//! finished: the state the issue-10 operator sat in, deaf behind healthy probes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The default of `--wedged-after-seconds`.
pub const DEFAULT_WEDGED_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
enum WatchState {
    /// Listing for the first time since the controller started.
    Starting {
        since: Instant,
    },
    Live,
    /// Failed; relisting after a backoff.
    Down {
        since: Instant,
        error: String,
    },
}

#[derive(Debug, Default)]
struct Inner {
    /// The API server answered once.
    connected: AtomicBool,
    /// Watches of the running controller, by name; empty while it does not run.
    watches: Mutex<BTreeMap<String, WatchState>>,
    /// Start of every reconcile in flight, by a sequence number.
    reconciles: Mutex<BTreeMap<u64, (String, Instant)>>,
    next_reconcile: AtomicU64,
}

/// Shared by the controller's watches, its reconciles and the HTTP endpoints.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
    wedged_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_WEDGED_AFTER)
    }
}

/// A verdict with the reason, for the endpoint's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failing(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks: a poisoned one still holds valid data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    pub fn new(wedged_after: Duration) -> Self {
        Health {
            inner: Arc::default(),
            wedged_after,
        }
    }

    pub fn set_connected(&self) {
        self.inner.connected.store(true, Ordering::Relaxed);
    }

    /// Registers a watch of the controller being started (not live until listed).
    pub fn watch(&self, name: &str) -> WatchHealth {
        lock(&self.inner.watches).insert(
            name.to_owned(),
            WatchState::Starting {
                since: Instant::now(),
            },
        );
        WatchHealth {
            health: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Whether the watch registered as `name` is live: listed, and not failed since.
    pub fn is_live(&self, name: &str) -> bool {
        matches!(lock(&self.inner.watches).get(name), Some(WatchState::Live))
    }

    /// The controller stopped (shutdown, lost leadership): its watches no longer count.
    pub fn controller_stopped(&self) {
        lock(&self.inner.watches).clear();
        lock(&self.inner.reconciles).clear();
    }

    /// Marks a reconcile of `cr` in flight until the guard is dropped.
    pub fn reconcile_started(&self, cr: &str) -> ReconcileGuard {
        let id = self.inner.next_reconcile.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.reconciles).insert(id, (cr.to_owned(), Instant::now()));
        ReconcileGuard {
            health: self.clone(),
            id,
        }
    }

    /// `/readyz`: the API server answered, and the controller (when running here) has
    /// every watch live.
    pub fn readiness(&self) -> Verdict {
        if !self.inner.connected.load(Ordering::Relaxed) {
            return Verdict::Failing("not connected to the API server yet".to_owned());
        }
        let watches = lock(&self.inner.watches);
        let mut why = String::new();
        for (name, state) in watches.iter() {
            match state {
                WatchState::Live => {}
                WatchState::Starting { .. } => {
                    let _ = writeln!(why, "watch {name}: not listed yet");
                }
                WatchState::Down { error, .. } => {
                    let _ = writeln!(why, "watch {name}: {error}");
                }
            }
        }
        if why.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Failing(why)
        }
    }

    /// `/healthz`: fails once a watch has been down, or a reconcile in flight, for longer
    /// than the bound.
    pub fn liveness(&self) -> Verdict {
        let now = Instant::now();
        let bound = self.wedged_after;
        let mut why = String::new();
        for (name, state) in lock(&self.inner.watches).iter() {
            let down_since = match state {
                WatchState::Live => continue,
                WatchState::Starting { since } | WatchState::Down { since, .. } => *since,
            };
            let down = now.saturating_duration_since(down_since);
            if down > bound {
                let _ = writeln!(
                    why,
                    "watch {name} not live for {}s (bound {}s)",
                    down.as_secs(),
                    bound.as_secs()
                );
            }
        }
        for (cr, started) in lock(&self.inner.reconciles).values() {
            let running = now.saturating_duration_since(*started);
            if running > bound {
                let _ = writeln!(
                    why,
                    "reconcile of {cr} running for {}s (bound {}s)",
                    running.as_secs(),
                    bound.as_secs()
                );
            }
        }
        if why.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Failing(why)
        }
    }
}

/// One watch's reports.
#[derive(Debug, Clone)]
pub struct WatchHealth {
    health: Health,
    name: String,
}

impl WatchHealth {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A (re)list completed: the watch is live.
    pub fn synced(&self) {
        lock(&self.health.inner.watches).insert(self.name.clone(), WatchState::Live);
    }

    /// The watch failed; it stays down (since the first failure) until the next sync.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let mut watches = lock(&self.health.inner.watches);
        let since = match watches.get(&self.name) {
            Some(WatchState::Down { since, .. } | WatchState::Starting { since }) => *since,
            _ => Instant::now(),
        };
        watches.insert(
            self.name.clone(),
            WatchState::Down {
                since,
                error: error.to_string(),
            },
        );
    }
}

/// Removes its reconcile from the in-flight set when dropped.
#[derive(Debug)]
pub struct ReconcileGuard {
    health: Health,
    id: u64,
}

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        lock(&self.health.inner.reconciles).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_the_api_and_every_watch_live() {
        let health = Health::new(Duration::from_secs(60));
        assert!(matches!(health.readiness(), Verdict::Failing(_)));
        health.set_connected();
        assert_eq!(health.readiness(), Verdict::Ok, "a standby is ready");
        let a = health.watch("a");
        let b = health.watch("b");
        assert!(matches!(health.readiness(), Verdict::Failing(_)));
        a.synced();
        b.synced();
        assert_eq!(health.readiness(), Verdict::Ok);
        b.failed(&"connection reset");
        let Verdict::Failing(why) = health.readiness() else {
            panic!("not ready while a watch is down")
        };
        assert!(why.contains("watch b: connection reset"), "{why}");
        assert_eq!(health.liveness(), Verdict::Ok, "not past the bound");
        b.synced();
        assert_eq!(health.readiness(), Verdict::Ok);
        health.controller_stopped();
        assert_eq!(health.readiness(), Verdict::Ok);
    }

    #[test]
    fn wedged_past_the_bound() {
        let health = Health::new(Duration::ZERO);
        health.set_connected();
        let w = health.watch("w");
        w.synced();
        assert_eq!(health.liveness(), Verdict::Ok);
        let guard = health.reconcile_started("local");
        std::thread::sleep(Duration::from_millis(5));
        let Verdict::Failing(why) = health.liveness() else {
            panic!("a reconcile past the bound")
        };
        assert!(why.contains("reconcile of local"), "{why}");
        drop(guard);
        assert_eq!(health.liveness(), Verdict::Ok);
        w.failed(&"gone");
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(health.liveness(), Verdict::Failing(_)));
    }
}
