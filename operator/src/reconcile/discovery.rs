//! Facts about the cluster and the other CsiDeployments that change what is rendered.

use std::sync::Arc;

use kube::{Client, ResourceExt};
use tracing::instrument;

use super::error::{Error, Verb, is_not_found};
use crate::crd::{CsiDeployment, CsiDeploymentSpec};
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

/// Asks the API server which optional snapshot APIs it serves, on top of `base` (what
/// the built-in driver of this release serves). Only what the spec could use is asked:
/// with snapshots switched off nothing is requested.
#[instrument(skip_all)]
pub async fn render_env(
    client: &Client,
    spec: &CsiDeploymentSpec,
    base: &RenderEnv,
) -> Result<RenderEnv, Error> {
    let mut env = base.clone();
    if spec.features.snapshots != Some(false) {
        env.snapshot_crds_present = match client.list_api_group_resources(SNAPSHOT_API).await {
            Ok(list) => SNAPSHOT_RESOURCES
                .iter()
                .all(|r| list.resources.iter().any(|served| served.name == *r)),
            Err(err) if is_not_found(&err) => false,
            Err(err) => return Err(Error::api(Verb::Discover, SNAPSHOT_API)(err)),
        };
    }
    if spec.features.group_snapshots == Some(true) {
        let groups = client
            .list_api_groups()
            .await
            .map_err(Error::api(Verb::Discover, "API groups"))?;
        env.group_snapshot_crds_present =
            groups.groups.iter().any(|g| g.name == GROUP_SNAPSHOT_GROUP);
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
