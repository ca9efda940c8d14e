//! The node side of cluster mode (`--mode node`): watch the PoolVolumes and PoolSnapshots
//! labelled with this driver and node, do their work in the local pool with the same
//! functions all-in-one uses ([`crate::storage::local`]), answer in `status`, and publish the
//! pool's capacity as this node's PoolNode.
//!
//! Restarting is safe at any point: the watch's initial list hands every pending object
//! to [`Agent::reconcile`] again, and every local call is idempotent by name and ID (the
//! IDs are the objects' names), so nothing is done twice.
//!
//! - [`volumes`] and [`snapshots`]: what "done" and "gone" mean for each kind.
//! - `retry`: when a failed piece of work is tried again.
//! - [`capacity`]: the PoolNode publisher.

pub mod capacity;
mod retry;
pub mod snapshots;
pub mod volumes;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::cluster::Cluster;
use crate::cluster::watch::WatchBackoff;
use crate::cluster::{parse_code, work_error};
use crate::error::{Error, chain};
use crate::storage::node::NodeStorage;
use plinth_api::cluster::crd::{self, Operation, Record, WorkError};

use self::retry::{Attempt, Retries};

/// Reconciles running at once per kind. Image work runs on blocking threads; a restart
/// with many pending objects should not start dozens of copies side by side.
const CONCURRENCY: u16 = 8;

/// Why the agent cannot do its part.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the node agent needs the cluster API client (node mode only)")]
    NoCluster,
    #[error("Kubernetes API request failed")]
    Api(#[from] kube::Error),
    #[error("cannot encode a patch")]
    Encode(#[from] serde_json::Error),
    #[error("cannot measure the pool's capacity")]
    Measure(#[source] Error),
}

/// A PoolVolume or PoolSnapshot: work this node does and answers in status.
pub trait Work: Record {
    type Status: Clone + Debug + Default + PartialEq + Serialize + Send + Sync;

    fn status(&self) -> Option<&Self::Status>;

    /// The driver and node the spec places the work on, `(driver, node)`.
    fn placement(&self) -> (&str, &str);

    /// The status answers the current generation with success: nothing to do.
    fn is_done(&self) -> bool;

    /// The current status (kept as far as it is still true) marked failed with `error`
    /// for the current generation.
    fn failed(&self, error: WorkError) -> Self::Status;

    /// Do the work (idempotent) and return the status that reports it.
    fn ensure(
        &self,
        storage: &Arc<NodeStorage>,
    ) -> impl Future<Output = Result<Outcome<Self::Status>, Failure>> + Send;

    /// Remove what the work made from the pool (idempotent: gone is success).
    fn remove(&self, storage: &Arc<NodeStorage>) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What successful work reports.
#[derive(Debug)]
pub struct Outcome<S> {
    pub status: S,
    /// Whether the pool changed (its capacity is then published at once).
    pub changed_pool: bool,
}

/// Failed work: which operation, and the error its CSI call would have answered.
#[derive(Debug)]
pub struct Failure {
    pub operation: Operation,
    pub error: Error,
}

impl Failure {
    /// Wraps an error of `operation` (for `map_err`).
    pub fn during(operation: Operation) -> impl FnOnce(Error) -> Self {
        move |error| Self { operation, error }
    }
}

/// The node agent: its API client, identity, retry bookkeeping and the signal that the
/// pool changed.
pub struct Agent {
    storage: Arc<NodeStorage>,
    client: kube::Client,
    driver_name: String,
    node: String,
    capacity_interval: Duration,
    pool_changed: Notify,
    retries: Retries,
}

impl Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("driver", &self.driver_name)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Runs the node agent until the task is aborted.
pub async fn run(storage: Arc<NodeStorage>, cluster: Option<&Cluster>) {
    match Agent::new(storage, cluster) {
        Ok(agent) => agent.run().await,
        Err(error) => {
            // A configuration bug (node mode always has a client); the CSI node service
            // keeps serving, so stay alive rather than take it down.
            tracing::error!(error = %chain(&error), "node agent not started");
            std::future::pending::<()>().await;
        }
    }
}

impl Agent {
    /// The agent of the node whose storage is `storage`; `cluster` is the node plugin's
    /// API context (node mode always has one).
    pub fn new(
        storage: Arc<NodeStorage>,
        cluster: Option<&Cluster>,
    ) -> Result<Arc<Self>, AgentError> {
        let cluster = cluster.ok_or(AgentError::NoCluster)?.clone();
        Ok(Arc::new(Self {
            client: cluster.client,
            driver_name: cluster.driver,
            node: cluster.node,
            capacity_interval: cluster.capacity_interval,
            storage,
            pool_changed: Notify::new(),
            retries: Retries::default(),
        }))
    }

    /// Watches both kinds and publishes capacity until aborted.
    pub async fn run(self: Arc<Self>) {
        tracing::info!(driver = %self.driver_name, node = %self.node, "node agent started");
        tokio::join!(
            self.clone().watch::<crd::PoolVolume>(),
            self.clone().watch::<crd::PoolSnapshot>(),
            capacity::run(self.clone()),
        );
    }

    async fn watch<K: Work>(self: Arc<Self>) {
        let api = Api::<K>::all(self.client.clone());
        let selector = crd::node_selector(&self.driver_name, &self.node);
        let config = watcher::Config::default().labels(&selector);
        Controller::new(api, config)
            // Back on its feet within 2 s of an API-server restart, not kube's 30 s.
            .trigger_backoff(WatchBackoff::default())
            .with_config(controller::Config::default().concurrency(CONCURRENCY))
            .run(
                |object, agent| async move {
                    let span = tracing::info_span!(
                        "reconcile",
                        kind = %K::kind(&()),
                        name = %object.name_any()
                    );
                    agent.reconcile(object.as_ref()).instrument(span).await
                },
                |object, error, agent| agent.on_api_error(object.as_ref(), error),
                self,
            )
            .for_each(|result| async move {
                match result {
                    // Logged by `on_api_error` with the object's name.
                    Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                    Err(error) => {
                        tracing::warn!(kind = %K::kind(&()), error = %chain(&error), "watch failed");
                    }
                }
            })
            .await;
    }

    /// One pass over `object`: finish its deletion, or do its work, and answer in status.
    /// Work errors are recorded in status (the returned action is the retry); an `Err`
    /// is an API failure the controller retries.
    pub async fn reconcile<K: Work>(&self, object: &K) -> Result<Action, AgentError> {
        // Labels choose what this agent watches; the spec decides whose work it is. A
        // record labelled for this node but placed on another (an edited label, a
        // forged one) is never touched: not its pool, not its status, not its finalizer.
        let (driver, node) = object.placement();
        if driver != self.driver_name || node != self.node {
            tracing::warn!(
                spec_driver = driver,
                spec_node = node,
                "labelled for this node but placed elsewhere; leaving it alone"
            );
            return Ok(Action::await_change());
        }
        let attempt = Attempt::of(object);
        if let Some(wait) = self.retries.pending(&attempt) {
            return Ok(wait);
        }
        if object.meta().deletion_timestamp.is_some() {
            return self.finish_deletion(object, attempt).await;
        }
        if object.is_done() {
            self.retries.forget(&attempt);
            return Ok(Action::await_change());
        }
        match object.ensure(&self.storage).await {
            Ok(outcome) => {
                if outcome.changed_pool {
                    self.pool_changed.notify_one();
                }
                self.write_status(object, outcome.status).await?;
                self.retries.forget(&attempt);
                Ok(Action::await_change())
            }
            Err(failure) => self.record_failure(object, attempt, failure).await,
        }
    }

    async fn finish_deletion<K: Work>(
        &self,
        object: &K,
        attempt: Attempt,
    ) -> Result<Action, AgentError> {
        let finalizers = object.finalizers();
        if !finalizers.iter().any(|f| f == crd::FINALIZER) {
            // Not ours to finish (or already finished): the API server removes it.
            self.retries.forget(&attempt);
            return Ok(Action::await_change());
        }
        if let Err(error) = object.remove(&self.storage).await {
            let failure = Failure {
                operation: Operation::Delete,
                error,
            };
            return self.record_failure(object, attempt, failure).await;
        }
        self.pool_changed.notify_one();
        self.remove_finalizer(object).await?;
        self.retries.forget(&attempt);
        tracing::info!("removed from the pool; finalizer released");
        Ok(Action::await_change())
    }

    /// Drops our finalizer with a JSON patch that first tests the list it read: a
    /// finalizer another party added or removed meanwhile makes the patch fail (and the
    /// reconcile retry on a fresh copy) instead of being overwritten.
    async fn remove_finalizer<K: Work>(&self, object: &K) -> Result<(), AgentError> {
        let current = object.finalizers();
        let remaining: Vec<&String> = current.iter().filter(|f| *f != crd::FINALIZER).collect();
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "replace", "path": "/metadata/finalizers", "value": remaining },
        ]))?;
        let api = Api::<K>::all(self.client.clone());
        api.patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
        Ok(())
    }

    async fn record_failure<K: Work>(
        &self,
        object: &K,
        attempt: Attempt,
        failure: Failure,
    ) -> Result<Action, AgentError> {
        let recorded = work_error(failure.operation, failure.error);
        tracing::warn!(
            operation = ?recorded.operation,
            code = %recorded.code,
            message = %recorded.message,
            "work failed"
        );
        let code = parse_code(&recorded.code);
        self.write_status(object, object.failed(recorded)).await?;
        Ok(self.retries.failed(attempt, code))
    }

    /// Merge-patches `status` onto /status when it differs from what the object holds:
    /// an unchanged answer costs no write (and wakes no watcher).
    async fn write_status<K: Work>(&self, object: &K, status: K::Status) -> Result<(), AgentError> {
        let current = object.status().cloned().unwrap_or_default();
        if current == status {
            return Ok(());
        }
        let body = status_patch(&status)?;
        let api = Api::<K>::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(crd::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch_status(&object.name_any(), &params, &Patch::Merge(&body))
            .await?;
        Ok(())
    }

    /// What the controller does with an API failure of [`Agent::reconcile`]: try again
    /// soon, backing off while it lasts.
    fn on_api_error<K: Work>(&self, object: &K, error: &AgentError) -> Action {
        tracing::warn!(error = %chain(error), name = %object.name_any(), "API request failed; retrying");
        self.retries
            .failed(Attempt::of(object), tonic::Code::Unavailable)
    }
}

/// The object's `metadata.generation` (0 before the API server assigned one).
fn generation<K: Resource>(object: &K) -> i64 {
    object.meta().generation.unwrap_or_default()
}

/// Whether a status with `observed_generation` and `phase` answers the object's current
/// generation with success.
fn answered<K: Resource>(object: &K, observed_generation: i64, phase: crd::Phase) -> bool {
    phase == crd::Phase::Ready && observed_generation == generation(object)
}

/// A malformed field of an object (a hand edit: the controller writes only valid ones).
fn malformed(field: &'static str, reason: &dyn std::fmt::Display) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.to_string(),
    }
}

/// The merge patch that turns any status into `status`: `error` is cleared explicitly
/// (a merge patch leaves fields it does not name, and a stale error must not outlive
/// the success that replaced it).
fn status_patch<S: Serialize>(status: &S) -> Result<serde_json::Value, serde_json::Error> {
    let mut value = serde_json::to_value(status)?;
    if let Some(fields) = value.as_object_mut() {
        fields.entry("error").or_insert(serde_json::Value::Null);
    }
    Ok(serde_json::json!({ "status": value }))
}
