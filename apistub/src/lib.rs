//! A small, honest stand-in for the Kubernetes API server, for tests and benchmarks that
//! run Plinth's controller-mode and node-mode drivers as two processes talking through
//! the API, where no real API server can run.
//!
//! It knows no schemas: it stores objects as JSON under
//! `/apis/{group}/{version}/{plural}[/{name}[/status]]`, and follows the real server's
//! rules for what clients observe:
//!
//! - create (`AlreadyExists`, uid, creationTimestamp, generation 1, `generateName`),
//!   get, list and watch with label selectors (`=`, `==`, `!=`, `in`, `notin`, `k`, `!k`)
//!   and field selectors (`metadata.name`, `metadata.namespace`);
//! - one global resourceVersion counter; a write carrying a stale `resourceVersion` is a
//!   409 `Conflict`, PUT requires one;
//! - merge patch (RFC 7386), JSON patch (RFC 6902) and server-side apply (approximated as
//!   a merge patch that also removes the fields the same field manager applied before and
//!   now omits, and creates a missing object; `fieldManager` required); strategic merge
//!   patch is 415 as for any custom resource, and a merge patch for built-in groups;
//! - a status subresource: `/status` writes change only `.status`, other writes ignore
//!   it; `metadata.generation` moves when anything outside metadata and status changes;
//!   a write that changes nothing bumps nothing and emits no event;
//! - deletion with finalizers (deletionTimestamp, then removal when the last finalizer
//!   goes), delete preconditions;
//! - watches: synthetic ADDED for current objects, or a replay of every event after a
//!   given resourceVersion from a bounded history (410 `Expired` beyond it), then live
//!   events; `timeoutSeconds`, bookmarks, `sendInitialEvents` streaming lists.
//!   `kube::runtime::watcher` and `kube::runtime::wait::await_condition` work against it.
//!
//! For tests, [`Running`] adds fault injection ([`Running::inject`]), paused watch
//! delivery ([`Running::pause_watches`]), direct read access to the stored objects and
//! counts of write requests ([`Running::writes`]), a log of every request with its exact
//! method, path, query and body ([`Running::requests`], [`Running::wait_for_request`]),
//! direct writes as another party would make them ([`Running::insert`],
//! [`Running::modify`], [`Running::update`], [`Running::remove`]), another writer that
//! wins a race just before a request ([`Running::lose_next_race`],
//! [`Running::lose_next_create`]), immutable fields per resource that answer
//! 422 like the real server's validation ([`Running::immutable_fields`],
//! [`BUILT_IN_IMMUTABLE_FIELDS`]), and groups served only where a stored CRD defines the
//! resource ([`Running::require_crds`]). [`ApiStub::start_with_client`] starts one with a
//! client for a test in one call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let stub = plinth_apistub::ApiStub::start().await?;
//! stub.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?; // KUBECONFIG for child processes
//! let client = stub.client()?;
//! # let _ = client;
//! let before = stub.writes();
//! // ... run the code under test ...
//! assert_eq!(stub.writes().since(&before).total(), 0);
//! # Ok(()) }
//! ```
//!
//! Namespaced resources and the core group (`/api/v1`) are served the same way, with no
//! schema either (`/api/v1/namespaces/{ns}/serviceaccounts/{name}`,
//! `/apis/apps/v1/namespaces/{ns}/statefulsets`, lists across namespaces). Discovery of a
//! group version (`/apis/{group}/{version}`) answers the resources that stored
//! `CustomResourceDefinition`s serve in it, so a client can see an optional API arrive.
//!
//! [`Running::restart`] restarts the server under its clients: connections reset, the
//! port closed for a while, the watch history compacted (old resourceVersions answer 410),
//! optionally a lagging watch cache ([`Restart::stale_cache`]).
//!
//! Not modelled (the lead's tests must not rely on them): discovery of built-in groups
//! and `/apis` (404), schemas, defaulting and validation beyond metadata shape,
//! `managedFields` (none are reported) and apply conflicts between managers (`force` is
//! accepted and changes nothing; lists are replaced, not merged by key), controllers (a
//! StatefulSet gets no pods and no status), garbage collection (Foreground/Orphan
//! deletion is refused), namespace lifecycle (any namespace exists), dry run and
//! `resourceVersionMatch=Exact` (refused), list pagination (every list is one page,
//! `limit` is ignored), authentication and authorization, and the watch-cache's lag
//! (events are visible to watches as soon as the write returns; only
//! [`Restart::stale_cache`] makes "Any" lists lag).

mod error;
mod fault;
mod kubeconfig;
mod listener;
mod log;
mod routes;
mod selector;
mod store;
mod testing;
mod watch;
mod writes;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde_json::Value;
use tokio::{sync::watch as channel, task::JoinHandle};
use tracing::{debug, info};

pub use crate::{
    error::StartError,
    fault::{Fault, WatchInfo},
    log::Recorded,
    testing::{
        BUILT_IN_IMMUTABLE_FIELDS, SNAPSHOT_GROUP, SNAPSHOT_KINDS, WAIT, path_of, snapshot_crds,
    },
    writes::{Verb, WriteCounts},
};
use crate::{
    fault::{Faults, Pauses},
    listener::{Power, Switched},
    routes::App,
    store::Store,
    watch::WatchCounters,
};

/// Events kept for watches resuming from a resourceVersion; older cursors get 410 Gone.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;
/// How often an idle watch that allows bookmarks gets one.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// Configuration of a stub server; [`ApiStub::start`] runs one with the defaults.
#[derive(Debug, Clone)]
pub struct ApiStub {
    listen: SocketAddr,
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for ApiStub {
    fn default() -> Self {
        ApiStub {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            history_limit: DEFAULT_HISTORY_LIMIT,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}

impl ApiStub {
    /// Serves on an ephemeral port of 127.0.0.1 with the default settings.
    pub async fn start() -> Result<Running, StartError> {
        ApiStub::default().serve().await
    }

    /// The address to listen on (port 0: ephemeral).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How many events to keep for resuming watches (at least 1).
    pub fn history_limit(mut self, events: usize) -> Self {
        self.history_limit = events;
        self
    }

    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Binds and starts serving in the background of the current tokio runtime.
    pub async fn serve(self) -> Result<Running, StartError> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = channel::channel(false);
        let (power, power_rx) = channel::channel(Power { up: true, epoch: 0 });
        let app = Arc::new(App {
            store: Arc::new(Store::new(self.history_limit)),
            faults: Faults::default(),
            pauses: Pauses::default(),
            shutdown: shutdown_rx.clone(),
            power: power_rx.clone(),
            watches: Arc::new(WatchCounters::default()),
            bookmark_interval: self.bookmark_interval,
            log: log::RequestLog::default(),
            races: fault::Races::default(),
            crd_groups: std::sync::Mutex::default(),
        });
        let router = routes::router(app.clone());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            let listener = Switched::new(listener, addr, power_rx);
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|down| *down).await;
                })
                .await
        });
        info!(%addr, "plinth-apistub serving");
        Ok(Running {
            addr,
            app,
            shutdown,
            power,
            server: Some(server),
        })
    }
}

/// A serving stub. Dropping it stops the server (open watches end, connections close).
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: channel::Sender<bool>,
    power: channel::Sender<Power>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// How [`Running::restart`] restarts the server.
#[derive(Debug, Clone, Default)]
pub struct Restart {
    down_for: Duration,
    stale_cache: bool,
}

impl Restart {
    /// Down and up again at once (connections are still cut, the history compacted).
    pub fn new() -> Self {
        Restart::default()
    }

    /// Stays down this long: connections to the address are refused meanwhile.
    pub fn down_for(mut self, period: Duration) -> Self {
        self.down_for = period;
        self
    }

    /// Comes back with a lagging watch cache: lists at resourceVersion "0" (the "Any"
    /// semantic) answer the objects and resourceVersion from before the restart, which
    /// the compacted history can no longer resume from, until [`Running::catch_up`].
    /// This is what a real server may do (such reads "may return arbitrarily stale
    /// data"): a cache still at an old revision, or an HA peer behind the load balancer.
    /// A client that relists at "Any" after a 410 gets the same expired version back,
    /// forever; one that relists with a consistent read recovers.
    pub fn stale_cache(mut self) -> Self {
        self.stale_cache = true;
        self
    }
}

impl Running {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes (atomically) a kubeconfig pointing at this stub without authentication, for
    /// `KUBECONFIG=path` in child processes (`kube::Client::try_default()` accepts it).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), StartError> {
        kubeconfig::write(path, &self.url())
    }

    /// A client talking to this stub.
    pub fn client(&self) -> Result<kube::Client, StartError> {
        let url = self.url();
        let uri = url.parse::<http::Uri>().map_err(|source| StartError::Url {
            url: url.clone(),
            source,
        })?;
        kube::Client::try_from(kube::Config::new(uri))
            .map_err(|source| StartError::Client { url, source })
    }

    /// Every stored object of this plural (in any group), ordered by name, as stored
    /// (apiVersion is the one it was created with).
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        self.app.store.objects(plural)
    }

    /// One stored object.
    pub fn object(&self, plural: &str, name: &str) -> Option<Value> {
        self.objects(plural)
            .into_iter()
            .find(|o| store::name_of(o) == Some(name))
    }

    /// The current resourceVersion: it moves on every change and only then.
    pub fn resource_version(&self) -> u64 {
        self.app.store.resource_version()
    }

    /// Write requests so far (take one before and [`WriteCounts::since`] after).
    pub fn writes(&self) -> WriteCounts {
        self.app.store.writes()
    }

    /// Arms a fault; see [`Fault`].
    pub fn inject(&self, fault: Fault) {
        debug!(?fault, "fault armed");
        self.app.faults.arm(fault);
    }

    /// Uses left across armed faults (0 once all fired).
    pub fn pending_faults(&self) -> u32 {
        self.app.faults.pending()
    }

    /// Holds back events of every watch until [`Running::resume_watches`].
    pub fn pause_watches(&self) {
        self.app.pauses.pause(|_| true);
    }

    /// Holds back events of the watches `holds` picks (e.g. by label selector, to cut off
    /// one node), replacing any earlier pause.
    pub fn pause_watches_matching(
        &self,
        holds: impl Fn(&WatchInfo) -> bool + Send + Sync + 'static,
    ) {
        self.app.pauses.pause(holds);
    }

    /// Delivers held events, in order, and lifts the pause.
    pub fn resume_watches(&self) {
        self.app.pauses.resume();
    }

    /// Watch requests served so far (a reconnecting watcher adds one per reconnect).
    pub fn watches_started(&self) -> u64 {
        self.app.watches.started.load(Ordering::Relaxed)
    }

    /// Watch streams currently open.
    pub fn active_watches(&self) -> usize {
        self.app.watches.active.load(Ordering::Relaxed)
    }

    /// Restarts the server the way an API server process restart looks to its clients:
    /// every open connection (requests, watch streams) is reset under its client, with no
    /// clean end of stream; the port refuses connections for the `down_for` period; the
    /// server then serves the same objects on the same address, with the watch history
    /// compacted so that every resourceVersion handed out before answers 410 `Expired`
    /// (etcd's revision moved on meanwhile). Returns once it serves again.
    pub async fn restart(&self, how: Restart) {
        info!(down_for = ?how.down_for, stale_cache = how.stale_cache, "plinth-apistub restarting");
        self.power.send_modify(|p| {
            p.up = false;
            p.epoch += 1;
        });
        let rv = self.app.store.restart(how.stale_cache);
        tokio::time::sleep(how.down_for).await;
        self.power.send_modify(|p| p.up = true);
        // Serving again once a connection is accepted.
        let mut delay = Duration::from_millis(5);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        info!(resource_version = rv, "plinth-apistub restarted");
    }

    /// Lists at resourceVersion "0" answer the current state again (after
    /// [`Restart::stale_cache`]).
    pub fn catch_up(&self) {
        self.app.store.catch_up();
    }

    /// Stops serving and waits until open connections have closed.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => debug!("plinth-apistub stopped"),
                Ok(Err(error)) => tracing::warn!(%error, "plinth-apistub stopped with an error"),
                Err(error) => tracing::warn!(%error, "plinth-apistub server task failed"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
