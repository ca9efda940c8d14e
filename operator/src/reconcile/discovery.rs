//! Facts about the cluster and the other CsiDeployments that change what is rendered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kube::{Client, ResourceExt};
use tracing::instrument;

use super::error::{Error, Verb, is_not_found};
use crate::crd::{CsiDeployment, CsiDeploymentSpec};
use crate::health::Health;
use crate::render::RenderEnv;

/// The resources external-snapshotter's CRDs serve; the snapshotter sidecar crash-loops
/// unless all three exist.
const SNAPSHOT_API: &str = "snapshot.storage.k8s.io/v1";
const SNAPSHOT_RESOURCES: [&str; 3] = [
    "volumesnapshots",
    "volumesnapshotcontents",
    "volumesnapshotclasses",
];
const GROUP_SNAPSHOT_GROUP: &str = "groupsnapshot.storage.k8s.io";

/// The CustomResourceDefinitions whose arrival (or removal) changes what is rendered:
/// external-snapshotter's, for snapshots and group snapshots.
pub const OPTIONAL_CRDS: &[&str] = &[
    "volumesnapshots.snapshot.storage.k8s.io",
    "volumesnapshotcontents.snapshot.storage.k8s.io",
    "volumesnapshotclasses.snapshot.storage.k8s.io",
    "volumegroupsnapshots.groupsnapshot.storage.k8s.io",
    "volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io",
    "volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io",
];

/// The last answers about the optional APIs, kept while nothing can have changed them:
/// the CRD watch is live and has reported no optional CRD event (and no relist) since
/// the answer was asked for. Every such event or relist starts a new epoch, which drops
/// every answer; so does the watch being down. Without a watch (a hand-built
/// [`super::Context`]) nothing is kept.
#[derive(Debug, Default)]
pub struct ApiAnswers {
    watch: Option<(Health, String)>,
    epoch: AtomicU64,
    snapshots: Mutex<Option<(u64, bool)>>,
    group_snapshots: Mutex<Option<(u64, bool)>>,
}

impl ApiAnswers {
    /// Answers kept while the watch registered in `health` as `watch` is live.
    pub fn new(health: Health, watch: &str) -> Self {
        Self {
            watch: Some((health, watch.to_owned())),
            ..Self::default()
        }
    }

    /// Something that may change an answer happened (an optional CRD event, a relist).
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn kept(&self, slot: &Mutex<Option<(u64, bool)>>) -> Option<bool> {
        let (health, watch) = self.watch.as_ref()?;
        if !health.is_live(watch) {
            return None;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let kept = *slot.lock().unwrap_or_else(PoisonError::into_inner);
        kept.filter(|(at, _)| *at == epoch)
            .map(|(_, answer)| answer)
    }

    /// Keeps `answer`, asked for in `epoch` (read before asking: an event while the
    /// request was out makes the answer stale at once).
    fn keep(slot: &Mutex<Option<(u64, bool)>>, epoch: u64, answer: bool) {
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((epoch, answer));
    }
}

/// Asks the API server which optional snapshot APIs it serves, on top of `base` (what
/// the built-in driver of this release serves), unless `answers` still holds the answer.
/// Only what the spec could use is asked: with snapshots switched off nothing is
/// requested.
#[instrument(skip_all)]
pub async fn render_env(
    client: &Client,
    spec: &CsiDeploymentSpec,
    base: &RenderEnv,
    answers: &ApiAnswers,
) -> Result<RenderEnv, Error> {
    let mut env = base.clone();
    if spec.features.snapshots != Some(false) {
        env.snapshot_crds_present = match answers.kept(&answers.snapshots) {
            Some(present) => present,
            None => {
                let epoch = answers.epoch.load(Ordering::SeqCst);
                let present = match client.list_api_group_resources(SNAPSHOT_API).await {
                    Ok(list) => SNAPSHOT_RESOURCES
                        .iter()
                        .all(|r| list.resources.iter().any(|served| served.name == *r)),
                    Err(err) if is_not_found(&err) => false,
                    Err(err) => return Err(Error::api(Verb::Discover, SNAPSHOT_API)(err)),
                };
                ApiAnswers::keep(&answers.snapshots, epoch, present);
                present
            }
        };
    }
    if spec.features.group_snapshots == Some(true) {
        env.group_snapshot_crds_present = match answers.kept(&answers.group_snapshots) {
            Some(present) => present,
            None => {
                let epoch = answers.epoch.load(Ordering::SeqCst);
                let groups = client
                    .list_api_groups()
                    .await
                    .map_err(Error::api(Verb::Discover, "API groups"))?;
                let present = groups.groups.iter().any(|g| g.name == GROUP_SNAPSHOT_GROUP);
                ApiAnswers::keep(&answers.group_snapshots, epoch, present);
                present
            }
        };
    }
    Ok(env)
}

/// The CsiDeployment that already holds `cr`'s driver name, if one was created before it
/// (creation time, then name, decide: the same answer on every replica and every run).
pub fn older_holder(cr: &CsiDeployment, all: &[Arc<CsiDeployment>]) -> Option<String> {
    let rank = |c: &CsiDeployment| (c.metadata.creation_timestamp.clone(), c.name_any());
    let mine = rank(cr);
    all.iter()
        .filter(|other| {
            other.name_any() != cr.name_any()
                && other.spec.driver.name == cr.spec.driver.name
                && rank(other) < mine
        })
        .min_by_key(|other| rank(other))
        .map(|other| other.name_any())
}

/// The CsiDeployment that already keeps its built-in driver's pool in `cr`'s pool
/// directory, if one was created before it: two drivers in one pool would recover, reap
/// and allocate over each other (the second node plugin refuses to start on it anyway).
pub fn older_pool_holder(cr: &CsiDeployment, all: &[Arc<CsiDeployment>]) -> Option<String> {
    if !cr.spec.is_builtin() {
        return None;
    }
    let rank = |c: &CsiDeployment| (c.metadata.creation_timestamp.clone(), c.name_any());
    let mine = rank(cr);
    let pool = cr.spec.pool_path();
    all.iter()
        .filter(|other| {
            other.name_any() != cr.name_any()
                && other.spec.is_builtin()
                && other.spec.pool_path() == pool
                && rank(other) < mine
        })
        .min_by_key(|other| rank(other))
        .map(|other| other.name_any())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_answer_is_kept_only_while_the_crd_watch_is_live_and_saw_no_change() {
        let health = Health::new(Duration::from_secs(60));
        let watch = health.watch("customresourcedefinitions");
        let answers = ApiAnswers::new(health, "customresourcedefinitions");
        let epoch = answers.epoch.load(Ordering::SeqCst);
        ApiAnswers::keep(&answers.snapshots, epoch, true);
        assert_eq!(
            answers.kept(&answers.snapshots),
            None,
            "watch not listed yet"
        );
        watch.synced();
        assert_eq!(answers.kept(&answers.snapshots), Some(true));
        assert_eq!(answers.kept(&answers.group_snapshots), None, "never asked");
        watch.failed(&"connection reset");
        assert_eq!(answers.kept(&answers.snapshots), None, "watch down");
        watch.synced();
        answers.invalidate();
        assert_eq!(
            answers.kept(&answers.snapshots),
            None,
            "an optional CRD changed"
        );
        // An answer asked for before an event is stale at once.
        ApiAnswers::keep(&answers.snapshots, epoch, false);
        assert_eq!(answers.kept(&answers.snapshots), None);
        // Without a watch nothing is kept.
        let bare = ApiAnswers::default();
        ApiAnswers::keep(&bare.snapshots, 0, true);
        assert_eq!(bare.kept(&bare.snapshots), None);
    }
}
