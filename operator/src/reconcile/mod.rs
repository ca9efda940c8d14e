//! Reconciling a `CsiDeployment`: a thin shell around the pure renderer.
//!
//! validate → discover cluster facts → render → server-side apply (skipping unchanged
//! objects) → prune → read back readiness and registrations → status. Deletion goes
//! through the `plinth.dev/cleanup` finalizer. Errors decide the retry: an invalid spec
//! waits for a change, a failed API call backs off exponentially per CR.

pub mod apply;
pub mod cache;
pub mod conditions;
pub mod controller;
pub mod discovery;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod fingerprint;
pub mod namespace;
pub mod objects;
pub mod ownership;
pub mod probe;
pub mod prune;
pub mod status;
pub mod watches;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tracing::{info, instrument, warn};

pub use error::Error;

use crate::crd::{CsiDeployment, DeletionPolicy};
use crate::metrics::Metrics;
use crate::render::{self, ManagedKind, RenderEnv, RenderError};
use apply::Outcome;
use conditions::{CondStatus, DEGRADED, Verdict};
use events::Note;
use fingerprint::Fingerprints;
use objects::Desired;

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "plinth-operator";
/// Held on every CsiDeployment until its driver is cleaned up.
pub const FINALIZER: &str = "plinth.dev/cleanup";

/// How often a healthy CR is looked at even when no watch event arrives (catches drift on
/// kinds not watched, such as VolumeSnapshotClasses whose CRDs appeared after start).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often a deletion blocked by remaining volumes is re-checked (PV deletions do not
/// trigger the CR).
pub const VOLUMES_RECHECK: Duration = Duration::from_secs(60);

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub fingerprints: Fingerprints,
    /// Every CsiDeployment (the controller's own cache), for driver-name conflicts.
    pub deployments: Store<CsiDeployment>,
    /// Every CSINode, for registration counts.
    pub csinodes: Store<CSINode>,
    /// The owned kinds' watch stores: what exists, without listing it.
    pub owned: cache::OwnedStores,
    /// Which optional APIs are served, kept while the CRD watch says nothing changed.
    pub api_answers: Arc<discovery::ApiAnswers>,
    /// What rendering may assume before asking the cluster: by default, the features the
    /// built-in driver of this release serves.
    pub base_env: RenderEnv,
    /// The image of the probe Job's `plinth-operator probe` container: this operator's.
    pub probe_image: String,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        deployments: Store<CsiDeployment>,
        csinodes: Store<CSINode>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            fingerprints: Fingerprints::default(),
            deployments,
            csinodes,
            owned: cache::OwnedStores::default(),
            api_answers: Arc::default(),
            base_env: RenderEnv::default(),
            probe_image: crate::generate::manager::operator_image(),
            failures: Mutex::default(),
        }
    }

    /// Renders for a different built-in driver (tests exercising features this release's
    /// driver does not serve yet).
    #[must_use]
    pub fn with_builtin_features(
        mut self,
        features: plinth_api::capabilities::DriverFeatures,
    ) -> Self {
        self.base_env.builtin_features = features;
        self
    }

    /// Reads what exists from the controller's watch stores (kinds without a complete
    /// store are still listed).
    #[must_use]
    pub fn with_owned_stores(mut self, owned: cache::OwnedStores) -> Self {
        self.owned = owned;
        self
    }

    /// Keeps discovery answers as long as `answers` (fed by the CRD watch) allows.
    #[must_use]
    pub fn with_api_answers(mut self, answers: Arc<discovery::ApiAnswers>) -> Self {
        self.api_answers = answers;
        self
    }

    /// The probe Job runs `image` (the operator's own, as deployed).
    #[must_use]
    pub fn with_probe_image(mut self, image: String) -> Self {
        self.probe_image = image;
        self
    }

    /// Counts a failure of `cr` and returns how many happened in a row.
    fn note_failure(&self, cr: &str) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(cr.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn clear_failures(&self, cr: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cr);
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// The controller's reconcile function.
pub async fn reconcile(cr: Arc<CsiDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_one(&cr, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.clear_failures(&cr.name_any());
    }
    result
}

/// The controller's error policy: the error decides when to look again.
pub fn error_policy(cr: Arc<CsiDeployment>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.note_failure(&cr.name_any());
    match err.retry_after(failures) {
        Some(delay) => {
            warn!(cr = %cr.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        }
        None => {
            info!(cr = %cr.name_any(), error = %err, "waiting for a spec change");
            Action::await_change()
        }
    }
}

#[instrument(skip_all, fields(cr = %cr.name_any(), generation = cr.metadata.generation))]
async fn reconcile_one(cr: &CsiDeployment, ctx: &Context) -> Result<Action, Error> {
    if cr.metadata.deletion_timestamp.is_some() {
        return cleanup(cr, ctx).await;
    }
    if !finalizer::has_finalizer(cr) {
        finalizer::add(&ctx.client, cr).await?;
    }

    if let Some(holder) = discovery::older_holder(cr, &ctx.deployments.state()) {
        let driver = cr.spec.driver.name.clone();
        let message = format!(
            "driver name {driver} is already deployed by CsiDeployment {holder}, created earlier; nothing was applied. Change spec.driver.name or delete one of the two"
        );
        block(cr, ctx, "DriverNameConflict", &message).await?;
        return Err(Error::DriverNameConflict { driver, holder });
    }

    if let Some(holder) = discovery::older_pool_holder(cr, &ctx.deployments.state()) {
        let pool = cr.spec.pool_path();
        let message = format!(
            "pool directory {pool} is already used by CsiDeployment {holder}, created earlier; nothing was applied. Set a spec.node.poolPath of its own (poolPath cannot change later: create this CsiDeployment anew with it)"
        );
        block(cr, ctx, "PoolPathConflict", &message).await?;
        return Err(Error::PoolPathConflict { pool, holder });
    }

    let mut env =
        discovery::render_env(&ctx.client, &cr.spec, &ctx.base_env, &ctx.api_answers).await?;
    // What the driver advertises decides the rest; until a probe has answered, nothing
    // is applied.
    let resolved = match probe::resolve(cr, ctx, &env).await? {
        probe::Step::Render(resolved) => resolved,
        probe::Step::Wait(again) => return Ok(Action::requeue(again)),
    };
    env.driver_capabilities = resolved.driver_capabilities.clone();
    let cr = &probe::with_capabilities(cr, &resolved);
    let rendered = match render::render(cr, &env) {
        Ok(r) => r,
        Err(RenderError::Invalid(errors)) => {
            let message = format!("{errors}; nothing was applied");
            block(cr, ctx, "InvalidSpec", &message).await?;
            return Err(Error::InvalidSpec(errors.to_string()));
        }
        Err(e @ RenderError::MissingName) => return Err(Error::InvalidSpec(e.to_string())),
    };

    let written = match sync_objects(cr, ctx, &rendered).await {
        Ok(written) => written,
        Err(err) => {
            // Tell the user in status (RBAC refusals, admission webhooks); the error
            // itself still drives the backoff.
            let failed = Verdict::new(
                DEGRADED,
                CondStatus::True,
                err.condition_reason(),
                err.to_string(),
            );
            let full = status::with_condition(cr, &failed, &now());
            if let Err(status_err) = status::write_status(&ctx.client, cr, &full).await {
                warn!(error = %status_err, "could not record the failure in status");
            }
            return Err(err);
        }
    };

    let csinodes = ctx.csinodes.state();
    let observed = status::observe(ctx, &written, &rendered, &csinodes).await?;
    let mut new_status = status::applied_status(cr, &rendered, &observed, &now());
    let previous = cr.status.as_ref().map(|s| s.conditions.as_slice());
    probe::add_agreement(
        &mut new_status,
        previous.unwrap_or_default(),
        &resolved,
        cr.metadata.generation,
    );
    let changes = status::sidecar_changes(cr.status.as_ref(), &new_status);
    status::write_status(&ctx.client, cr, &new_status).await?;
    if let Some((added, removed)) = changes {
        events::publish(
            ctx,
            cr,
            Note::SidecarsChanged {
                added: &added,
                removed: &removed,
            },
        )
        .await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Applies every rendered object (skipping unchanged ones) and deletes the owned objects
/// no longer rendered. Returns the workloads written, as the server answered (fresher
/// than any watch store for the status read back after).
async fn sync_objects(
    cr: &CsiDeployment,
    ctx: &Context,
    rendered: &render::Rendered,
) -> Result<Vec<DynamicObject>, Error> {
    let name = cr.name_any();
    let desired: Vec<Desired> = rendered.objects.iter().map(Desired::from).collect();
    let live = prune::find_owned(&ctx.client, &ctx.owned, ManagedKind::ALL, &name).await?;
    let mut applied = Vec::new();
    let mut written = Vec::new();
    let mut not_ours = Vec::new();
    for d in &desired {
        let current = live.iter().find(|l| l.key == d.key);
        if current.is_none()
            && let Some(holder) = ownership::foreign_holder(&ctx.client, d, &name).await?
        {
            not_ours.push((d.key.to_string(), holder));
            continue;
        }
        let (outcome, answered) =
            apply::apply_object(&ctx.client, &ctx.fingerprints, &name, d, current).await?;
        if matches!(d.kind, ManagedKind::StatefulSet | ManagedKind::DaemonSet) {
            written.extend(answered);
        }
        let kind = d.key.kind.as_str();
        match outcome {
            Outcome::Skipped => Metrics::count(&ctx.metrics.skipped_applies, kind),
            Outcome::Applied => {
                Metrics::count(&ctx.metrics.applies, kind);
                applied.push(d.key.to_string());
            }
            Outcome::Replaced => {
                Metrics::count(&ctx.metrics.replacements, kind);
                events::publish(ctx, cr, Note::Replaced(&d.key)).await;
                applied.push(d.key.to_string());
            }
        }
    }
    if !applied.is_empty() {
        events::publish(ctx, cr, Note::Applied(&applied)).await;
    }
    let mut pruned = Vec::new();
    for obj in prune::stale(&live, &desired) {
        prune::delete_owned(&ctx.client, obj).await?;
        ctx.fingerprints.forget(&name, &obj.key);
        Metrics::count(&ctx.metrics.prunes, &obj.key.kind);
        pruned.push(obj.key.to_string());
    }
    if !pruned.is_empty() {
        events::publish(ctx, cr, Note::Pruned(&pruned)).await;
    }
    if !not_ours.is_empty() {
        return Err(Error::NotOwned(ownership::describe(&not_ours)));
    }
    Ok(written)
}

/// Records in status why nothing was applied; a Warning event goes out when that is news.
async fn block(
    cr: &CsiDeployment,
    ctx: &Context,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let status = status::blocked_status(cr, reason, message, &now());
    if status::write_status(&ctx.client, cr, &status).await? {
        events::publish(ctx, cr, Note::Blocked { reason, message }).await;
    }
    Ok(())
}

/// Deletion: refuse while volumes of the driver exist (unless the policy orphans them),
/// otherwise delete everything the CR owns and release the finalizer.
#[instrument(skip_all, fields(cr = %cr.name_any()))]
async fn cleanup(cr: &CsiDeployment, ctx: &Context) -> Result<Action, Error> {
    if !finalizer::has_finalizer(cr) {
        return Ok(Action::await_change());
    }
    let name = cr.name_any();
    let driver = cr.spec.driver.name.as_str();
    // A CR that lost a driver-name conflict never deployed the driver: the volumes belong
    // to the other CR's driver and must not block this deletion.
    let owns_driver = discovery::older_holder(cr, &ctx.deployments.state()).is_none();
    if owns_driver && cr.spec.deletion_policy == DeletionPolicy::RefuseWhileVolumesExist {
        let volumes = finalizer::count_volumes(&ctx.client, driver).await?;
        if volumes > 0 {
            let message = format!(
                "{volumes} PersistentVolumes of driver {driver} still exist, so the driver stays deployed: delete those volumes (their PersistentVolumeClaims) first, or set spec.deletionPolicy=OrphanVolumes to remove the driver anyway"
            );
            let refused = Verdict::new(DEGRADED, CondStatus::True, "VolumesExist", message.clone());
            let mut status = status::with_condition(cr, &refused, &now());
            status.remaining_volumes = Some(i64::try_from(volumes).unwrap_or(i64::MAX));
            if status::write_status(&ctx.client, cr, &status).await? {
                events::publish(ctx, cr, Note::DeletionRefused(&message)).await;
            }
            return Ok(Action::requeue(VOLUMES_RECHECK));
        }
    }
    // Owner references would let the garbage collector do this, but only eventually and
    // in no particular order; deleting explicitly makes `kubectl delete` return with the
    // CSIDriver and classes already gone.
    // Listed, not read from the watch stores: the finalizer goes after this, so an
    // object the stores have not seen yet would be left behind for good.
    let live = prune::list_owned(&ctx.client, ManagedKind::ALL, &name).await?;
    for obj in &live {
        prune::delete_owned(&ctx.client, obj).await?;
        Metrics::count(&ctx.metrics.prunes, &obj.key.kind);
    }
    if owns_driver && cr.spec.is_builtin() {
        finalizer::delete_pool_nodes(&ctx.client, driver).await?;
    }
    events::publish(ctx, cr, Note::CleanedUp(live.len())).await;
    finalizer::remove(&ctx.client, cr).await?;
    ctx.fingerprints.forget_owner(&name);
    Ok(Action::await_change())
}
