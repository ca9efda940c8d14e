//! Watch streams: newline-delimited JSON events, replayed from the store's history and
//! then followed live, honoring selectors, timeouts, bookmarks and injected pauses.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::body::Body;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, interval_at, sleep_until},
};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, info_span};

use crate::{
    error::ApiError,
    fault::{PauseRule, WatchInfo},
    listener::Power,
    selector::Selector,
    store::{Event, EventType, ResourceKey, Store, presented},
};

/// Where a watch starts, from its `resourceVersion` and `sendInitialEvents` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Synthetic ADDED events for the current objects, then live (`resourceVersion` unset or "0").
    Current,
    /// As `Current`, closed by a BOOKMARK annotated `k8s.io/initial-events-end` (streaming lists).
    InitialEvents,
    /// Live events only (`sendInitialEvents=false` without a resourceVersion).
    Now,
    /// Every event after this resourceVersion, then live.
    After(u64),
}

#[derive(Debug)]
pub struct WatchSpec {
    pub key: ResourceKey,
    /// `group/version` of the request: objects are presented in it.
    pub api_version: String,
    pub selector: Selector,
    pub start: Start,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub info: WatchInfo,
}

/// Watches started and currently open.
#[derive(Debug, Default)]
pub struct WatchCounters {
    pub started: AtomicU64,
    pub active: AtomicUsize,
}

/// What every watch shares with the server.
#[derive(Debug, Clone)]
pub struct WatchContext {
    pub store: Arc<Store>,
    pub pauses: watch::Receiver<PauseRule>,
    pub shutdown: watch::Receiver<bool>,
    pub power: watch::Receiver<Power>,
    pub counters: Arc<WatchCounters>,
    pub bookmark_interval: Duration,
}

/// A line of the body, or the error that aborts the response (the client sees the
/// connection go without the end of the chunked body).
type Chunk = Result<String, std::io::Error>;

/// Starts the watch and returns its response body; the stream ends on timeout, server
/// shutdown, client disconnect, or 410 Gone, and breaks off on a restart.
pub fn stream(ctx: WatchContext, spec: WatchSpec) -> Body {
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let span = info_span!("watch", resource = %spec.key, labels = ?spec.info.label_selector, fields = ?spec.info.field_selector);
    ctx.counters.started.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(run(ctx, spec, tx).instrument(span));
    Body::from_stream(ReceiverStream::new(rx))
}

/// Decrements the open-watch count however the task ends.
struct Active(Arc<WatchCounters>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(mut ctx: WatchContext, spec: WatchSpec, tx: mpsc::Sender<Chunk>) {
    ctx.counters.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(ctx.counters.clone());
    let epoch = ctx.power.borrow_and_update().epoch;
    let mut latest = ctx.store.subscribe();
    let kind = ctx.store.kind_of(&spec.key);
    let (mut pending, mut cursor) = initial_events(&ctx.store, &spec, &kind);
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut bookmark_timer = interval_at(
        Instant::now() + ctx.bookmark_interval,
        ctx.bookmark_interval,
    );
    debug!(?spec.start, "watch started");
    loop {
        let held = ctx.pauses.borrow_and_update().holds(&spec.info);
        if !held {
            latest.borrow_and_update();
            match ctx.store.events_after(cursor, &spec.key) {
                Ok((events, newest)) => {
                    pending.extend(events.iter().filter_map(|e| render(e, &spec)));
                    cursor = newest;
                }
                Err(gone) => {
                    debug!(%gone, "watch cursor expired");
                    pending.push_back(line("ERROR", gone.to_status()));
                    let _ = deliver(&tx, &mut ctx.shutdown, pending).await;
                    return;
                }
            }
            if deliver(&tx, &mut ctx.shutdown, std::mem::take(&mut pending))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            changed = ctx.pauses.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            _ = ctx.shutdown.wait_for(|down| *down) => return,
            _ = ctx.power.wait_for(|p| p.epoch != epoch) => break,
            () = until(deadline) => {
                debug!("watch timeout reached");
                return;
            }
            _ = bookmark_timer.tick(), if spec.bookmarks && !held => {
                pending.push_back(bookmark(&spec, &kind, cursor, false));
            }
        }
    }
    // The server is going down: break the response off (no end of the chunked body).
    // Queued events go first; a client that reads nothing is cut off when the task ends.
    debug!("server restarting: breaking the watch off");
    let cut = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "plinth-apistub restarted",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(cut))).await;
}

/// The synthetic events a watch opens with, and the resourceVersion they were read at.
fn initial_events(store: &Store, spec: &WatchSpec, kind: &str) -> (VecDeque<String>, u64) {
    match spec.start {
        Start::After(rv) => (VecDeque::new(), rv),
        Start::Now => (VecDeque::new(), store.resource_version()),
        Start::Current | Start::InitialEvents => {
            let (objects, rv) = store.snapshot(&spec.key, &spec.selector);
            let mut lines: VecDeque<String> = objects
                .iter()
                .map(|o| line("ADDED", presented(o, &spec.api_version)))
                .collect();
            if spec.start == Start::InitialEvents {
                lines.push_back(bookmark(spec, kind, rv, true));
            }
            (lines, rv)
        }
    }
}

/// Sends the lines in order; `Err` when the client is gone or the server is stopping.
async fn deliver(
    tx: &mpsc::Sender<Chunk>,
    shutdown: &mut watch::Receiver<bool>,
    lines: VecDeque<String>,
) -> Result<(), ()> {
    for l in lines {
        tokio::select! {
            sent = tx.send(Ok(l)) => sent.map_err(|_| ())?,
            _ = shutdown.wait_for(|down| *down) => return Err(()),
        }
    }
    Ok(())
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The event this watch sees for a committed change: a change that moves an object into
/// or out of the selection is an ADDED or DELETED for this watch.
fn render(event: &Event, spec: &WatchSpec) -> Option<String> {
    let was = event
        .old
        .as_deref()
        .is_some_and(|o| spec.selector.matches(o));
    let is = spec.selector.matches(&event.new);
    let kind = match event.kind {
        EventType::Added => is.then_some("ADDED"),
        EventType::Modified => match (was, is) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
        EventType::Deleted => was.then_some("DELETED"),
    }?;
    Some(line(kind, presented(&event.new, &spec.api_version)))
}

fn bookmark(spec: &WatchSpec, kind: &str, rv: u64, initial_end: bool) -> String {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"apiVersion": spec.api_version, "kind": kind, "metadata": metadata}),
    )
}

fn line(kind: &str, object: Value) -> String {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    text
}

/// Parses the watch parameters of a list request.
pub fn start_from_query(
    resource_version: Option<&str>,
    send_initial_events: Option<&str>,
    bookmarks: bool,
    version_match: Option<&str>,
) -> Result<Start, ApiError> {
    let rv = resource_version.filter(|rv| !rv.is_empty() && *rv != "0");
    match send_initial_events {
        Some("true") => {
            if !bookmarks || version_match != Some("NotOlderThan") {
                return Err(ApiError::invalid(
                    "watch",
                    "",
                    "sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
                ));
            }
            Ok(Start::InitialEvents)
        }
        Some("false") | None => match rv {
            Some(rv) => rv
                .parse()
                .map(Start::After)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}"))),
            None if send_initial_events.is_some() => Ok(Start::Now),
            None => Ok(Start::Current),
        },
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid sendInitialEvents value: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_parameters() {
        assert_eq!(
            start_from_query(None, None, true, None).unwrap(),
            Start::Current
        );
        assert_eq!(
            start_from_query(Some("0"), None, true, None).unwrap(),
            Start::Current
        );
        assert_eq!(
            start_from_query(Some("17"), None, true, None).unwrap(),
            Start::After(17)
        );
        assert_eq!(
            start_from_query(None, Some("false"), false, None).unwrap(),
            Start::Now
        );
        assert_eq!(
            start_from_query(None, Some("true"), true, Some("NotOlderThan")).unwrap(),
            Start::InitialEvents
        );
        assert!(start_from_query(None, Some("true"), false, Some("NotOlderThan")).is_err());
        assert!(start_from_query(Some("abc"), None, true, None).is_err());
    }
}
