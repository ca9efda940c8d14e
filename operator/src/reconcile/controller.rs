//! Wiring the reconciler into a kube-runtime `Controller`: what is watched and how each
//! watch event maps to the CsiDeployment to reconcile.
//!
//! Owned objects are watched metadata-only and only those carrying our managed-by label,
//! so memory grows with what the operator created, not with the cluster. They map to their
//! CR through the `plinth.dev/csi-deployment` label rather than owner references: the CR
//! is cluster-scoped, and kube's `owns` would look a namespaced child's owner up in the
//! child's namespace and never find it.

use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::cache::OwnedStores;
use super::discovery::{ApiAnswers, OPTIONAL_CRDS};
use super::watches::{self, relisting};
use super::{Context, error_policy, reconcile};
use crate::crd::CsiDeployment;
use crate::health::{Health, WatchHealth};
use crate::labels::{CR_LABEL, MANAGED_BY};
use crate::metrics::Metrics;
use crate::render::ManagedKind;

/// The CRD watch's name in [`Health`].
const CRD_WATCH: &str = "customresourcedefinitions";

/// Reconciles at most this many CsiDeployments at once (never the same one twice).
const CONCURRENCY: u16 = 4;

/// Maps a watched object to the CR named by its label.
fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<CsiDeployment>> {
    obj.labels().get(CR_LABEL).map(|name| ObjectRef::new(name))
}

/// The relisting watch of one owned kind (see [`watches`]), reflected into `writer`'s
/// store; yields the objects that changed.
fn owned_events<K>(
    watch: WatchHealth,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    relisting(watch, move || watcher(api.clone(), config.clone()))
        // Nothing the reconciler reads, and the bulk of most objects' metadata.
        .modify(|obj| {
            obj.managed_fields_mut().clear();
            obj.annotations_mut().clear();
        })
        .reflect(writer)
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default())
}

/// Every known CR: CSINode changes (a kubelet registering or dropping a driver) concern
/// whichever CR deploys one of the listed drivers, and after a removal the list no longer
/// says which; an optional CRD arriving or going changes what every CR renders.
/// CsiDeployments are few, so reconciling them all is cheap.
fn every_cr<T>(store: Store<CsiDeployment>) -> impl Fn(T) -> Vec<ObjectRef<CsiDeployment>> {
    move |_| {
        store
            .state()
            .iter()
            .map(|cr| ObjectRef::from(cr.as_ref()))
            .collect()
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
/// Every watch relists after any error (see [`watches`]) and reports to `health`.
pub async fn run(
    client: Client,
    metrics: Metrics,
    reporter: Reporter,
    health: Health,
    probe_image: String,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let crs: Api<CsiDeployment> = Api::all(client.clone());
    let (deployments, deployment_writer) = reflector::store();
    let cr_events = relisting(health.watch("csideployments"), move || {
        watcher(crs.clone(), watches::config())
    })
    .reflect(deployment_writer)
    .applied_objects();
    let controller = Controller::for_stream(cr_events, deployments.clone());

    let (csinodes, csinode_writer) = reflector::store();
    let csinode_api = Api::<CSINode>::all(client.clone());
    let csinode_events = relisting(health.watch("csinodes"), move || {
        watcher(csinode_api.clone(), watches::config())
    })
    // One cached CSINode per node: keep only what registration counts need.
    .modify(|node| {
        node.managed_fields_mut().clear();
        node.annotations_mut().clear();
    })
    .reflect(csinode_writer)
    .touched_objects();
    let mut controller = controller.watches_stream(csinode_events, every_cr(deployments.clone()));

    // CustomResourceDefinitions, metadata only: one of the optional ones (snapshots,
    // group snapshots) installed, established or removed after start changes what every
    // CR renders (the snapshotter sidecar, VolumeSnapshotClasses), so every CR is
    // reconciled; the others map to nothing.
    let crd_api: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client.clone());
    let api_answers = Arc::new(ApiAnswers::new(health.clone(), CRD_WATCH));
    let answers = api_answers.clone();
    let crd_events = relisting(health.watch(CRD_WATCH), move || {
        watcher(crd_api.clone(), watches::config())
    })
    // Reconciles keep the discovery answers until an optional CRD changes; a relist
    // may hide a change made while the watch was down, so it drops them too.
    .inspect(move |event| match event {
        Ok(watcher::Event::Init | watcher::Event::InitDone) => answers.invalidate(),
        Ok(
            watcher::Event::Apply(crd)
            | watcher::Event::InitApply(crd)
            | watcher::Event::Delete(crd),
        ) if OPTIONAL_CRDS.contains(&crd.name_any().as_str()) => answers.invalidate(),
        _ => {}
    })
    .touched_objects()
    .predicate_filter(predicates::resource_version, Default::default());
    let crs_of_optional_crd = {
        let all = every_cr(deployments.clone());
        move |crd: PartialObjectMeta<CustomResourceDefinition>| {
            if OPTIONAL_CRDS.contains(&crd.name_any().as_str()) {
                info!(crd = %crd.name_any(), "an optional API changed; reconciling every CsiDeployment");
                all(())
            } else {
                Vec::new()
            }
        }
    };
    controller = controller.watches_stream(crd_events, crs_of_optional_crd);

    let mut owned_stores = OwnedStores::new(health.clone());
    let owned = watches::config().labels(&format!("{}={},{CR_LABEL}", MANAGED_BY.0, MANAGED_BY.1));
    for &kind in ManagedKind::ALL {
        if kind.needs_optional_crd() && !served(&client, kind).await {
            info!(
                ?kind,
                "API not served; not watching it (periodic resync still covers it)"
            );
            continue;
        }
        let resource = kind.api_resource();
        let watch = health.watch(&resource.plural);
        // The store the reconciler reads instead of listing this kind (see `cache`); it
        // is filled before the event reaches the controller, so the reconcile it triggers
        // sees the change. The workloads are kept whole: their status is what the
        // reconcile reports.
        if matches!(kind, ManagedKind::StatefulSet | ManagedKind::DaemonSet) {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let writer = reflector::store::Writer::new(resource.clone());
            owned_stores.insert_objects(kind, &resource.plural, writer.as_reader());
            let events = owned_events(watch, api, owned.clone(), writer);
            controller = controller.watches_stream_with(events, owner_of, resource);
        } else {
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(client.clone(), &resource);
            let writer = reflector::store::Writer::new(resource.clone());
            owned_stores.insert(kind, &resource.plural, writer.as_reader());
            let events = owned_events(watch, api, owned.clone(), writer);
            controller = controller.watches_stream_with(events, owner_of, resource);
        }
    }

    // Probe Jobs: finishing (or being removed after a failure) moves the CR on.
    let jobs: Api<PartialObjectMeta<Job>> = Api::all(client.clone());
    let job_config = owned.clone();
    let job_events = relisting(health.watch("jobs"), move || {
        watcher(jobs.clone(), job_config.clone())
    })
    .touched_objects()
    .predicate_filter(predicates::resource_version, Default::default());
    controller = controller.watches_stream(job_events, |job: PartialObjectMeta<Job>| {
        job.labels().get(CR_LABEL).map(|name| ObjectRef::new(name))
    });

    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(
        Context::new(client, recorder, metrics, deployments, csinodes)
            .with_owned_stores(owned_stores)
            .with_api_answers(api_answers)
            .with_probe_image(probe_image),
    );
    let in_flight = health.clone();
    controller
        .with_config(Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(
            move |cr, ctx| {
                let guard = in_flight.reconcile_started(&cr.name_any());
                async move {
                    let result = reconcile(cr, ctx).await;
                    drop(guard);
                    result
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((cr, _)) => debug!(cr = %cr.name, "reconciled"),
                // Already logged by the error policy, with the retry decision.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // Logged by the watch, which relists.
                Err(kube::runtime::controller::Error::QueueError(err)) => {
                    debug!(error = %err, "watch error");
                }
                Err(err) => warn!(error = %err, "controller"),
            }
        })
        .await;
    health.controller_stopped();
}

/// Whether the API server serves `kind` (its CRD may be missing).
async fn served(client: &Client, kind: ManagedKind) -> bool {
    let resource = kind.api_resource();
    match client.list_api_group_resources(&resource.api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == resource.plural),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> PartialObjectMeta<DynamicObject> {
        PartialObjectMeta {
            types: None,
            metadata: kube::api::ObjectMeta {
                namespace: Some("plinth-system".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    #[test]
    fn a_namespaced_child_maps_to_its_cluster_scoped_cr_by_label() {
        let cr = owner_of(meta(&[(CR_LABEL, "local")])).expect("mapped");
        assert_eq!(cr.name, "local");
        // Not the child's namespace: the CR is cluster-scoped.
        assert_eq!(cr.namespace, None);
        assert!(owner_of(meta(&[("app", "other")])).is_none());
    }
}
