//! What the controller's watches already know about the objects the operator owns, so a
//! reconcile finds what exists without listing every managed kind again.
//!
//! Each owned kind's watch (metadata only, label-selected to Plinth's objects, see
//! [`super::controller`]) feeds a reflector store. A store is used only while it is known
//! to be complete: its first list has finished and its watch is live (not failed and
//! relisting). Otherwise, and for kinds not watched at all (an optional API missing at
//! start), that kind is listed from the API server as before: an empty store on startup
//! must never look like "nothing exists", which would skip a prune or re-adopt by GET.
//!
//! A complete store can still lag the server by a watch event. That is safe: an object
//! created by our own apply and not yet seen is desired (never pruned) and costs at most
//! one ownership GET; a deleted one still cached costs a delete answered NotFound; a
//! version not yet seen makes the fingerprint disagree and costs one redundant apply. The
//! watch event that brings the store up to date triggers the next reconcile.

use std::collections::HashMap;

use futures::FutureExt;
use kube::api::{DynamicObject, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use serde::de::DeserializeOwned;

use super::objects::{KindExt, LiveObject};
use crate::health::Health;
use crate::labels::{CR_LABEL, MANAGED_BY};
use crate::render::ManagedKind;

/// What a watch keeps of its objects.
enum Kept {
    /// Metadata only: what exists.
    Metadata(Store<PartialObjectMeta<DynamicObject>>),
    /// Whole objects, for the workloads whose status the reconcile reports; few (label
    /// selected to Plinth's own) and small.
    Objects(Store<DynamicObject>),
}

/// One owned kind's store and the name its watch reports health under.
struct Watched {
    store: Kept,
    watch: String,
}

impl Watched {
    fn ready(&self) -> bool {
        let ready = match &self.store {
            Kept::Metadata(store) => store.wait_until_ready().now_or_never(),
            Kept::Objects(store) => store.wait_until_ready().now_or_never(),
        };
        matches!(ready, Some(Ok(())))
    }
}

/// The stores of the owned kinds' watches; empty (everything listed) until the
/// controller registers them.
#[derive(Default)]
pub struct OwnedStores {
    health: Option<Health>,
    kinds: HashMap<ManagedKind, Watched>,
}

impl OwnedStores {
    /// Stores whose completeness `health` reports (watch names as registered there).
    pub fn new(health: Health) -> Self {
        Self {
            health: Some(health),
            kinds: HashMap::new(),
        }
    }

    /// Registers the metadata store fed by the watch reporting as `watch`.
    pub fn insert(
        &mut self,
        kind: ManagedKind,
        watch: &str,
        store: Store<PartialObjectMeta<DynamicObject>>,
    ) {
        self.register(kind, watch, Kept::Metadata(store));
    }

    /// Registers the whole-object store fed by the watch reporting as `watch`.
    pub fn insert_objects(&mut self, kind: ManagedKind, watch: &str, store: Store<DynamicObject>) {
        self.register(kind, watch, Kept::Objects(store));
    }

    fn register(&mut self, kind: ManagedKind, watch: &str, store: Kept) {
        self.kinds.insert(
            kind,
            Watched {
                store,
                watch: watch.to_owned(),
            },
        );
    }

    /// The store of `kind`, when it is known to be complete.
    fn complete(&self, kind: ManagedKind) -> Option<&Kept> {
        let watched = self.kinds.get(&kind)?;
        let live = self
            .health
            .as_ref()
            .is_some_and(|h| h.is_live(&watched.watch));
        (live && watched.ready()).then_some(&watched.store)
    }

    /// The objects of `kind` that CR `cr_name` owns, from the store; `None` when there is
    /// no store for the kind or it is not known to be complete (then ask the server).
    pub fn owned(&self, kind: ManagedKind, cr_name: &str) -> Option<Vec<LiveObject>> {
        let ours = |meta: &ObjectMeta| {
            let labels = meta.labels.as_ref();
            labels.and_then(|l| l.get(CR_LABEL)).map(String::as_str) == Some(cr_name)
                && labels.and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str)
                    == Some(MANAGED_BY.1)
        };
        let live = |meta: &ObjectMeta| ours(meta).then(|| live_object(kind, meta));
        Some(match self.complete(kind)? {
            Kept::Metadata(store) => store
                .state()
                .iter()
                .filter_map(|obj| live(&obj.metadata))
                .collect(),
            Kept::Objects(store) => store
                .state()
                .iter()
                .filter_map(|obj| live(&obj.metadata))
                .collect(),
        })
    }

    /// The object `namespace/name` of `kind` as its whole-object store holds it:
    /// `Some(None)` when the complete store has no such object, `None` when there is no
    /// complete whole-object store for the kind (or it does not parse as `K`).
    pub fn object<K: DeserializeOwned>(
        &self,
        kind: ManagedKind,
        namespace: &str,
        name: &str,
    ) -> Option<Option<K>> {
        let Kept::Objects(store) = self.complete(kind)? else {
            return None;
        };
        let found = store.find(|obj| {
            obj.metadata.name.as_deref() == Some(name)
                && obj.metadata.namespace.as_deref() == Some(namespace)
        });
        match found {
            None => Some(None),
            Some(obj) => {
                let value = serde_json::to_value(obj.as_ref()).ok()?;
                serde_json::from_value(value).ok().map(Some)
            }
        }
    }
}

/// The little the reconciler keeps of a live object of `kind`.
pub fn live_object(kind: ManagedKind, meta: &ObjectMeta) -> LiveObject {
    LiveObject {
        kind,
        key: kind.key(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or_default(),
        ),
        uid: meta.uid.clone(),
        version: kind.live_version(meta),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::*;

    fn meta(name: &str, cr: &str, managed_by: &str) -> PartialObjectMeta<DynamicObject> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("7".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    [
                        (CR_LABEL.to_owned(), cr.to_owned()),
                        (MANAGED_BY.0.to_owned(), managed_by.to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    #[test]
    fn a_store_answers_only_once_listed_and_while_its_watch_is_live() {
        let health = Health::new(Duration::from_secs(60));
        let watch = health.watch("storageclasses");
        let kind = ManagedKind::StorageClass;
        let mut writer = Writer::new(kind.api_resource());
        let mut stores = OwnedStores::new(health.clone());
        stores.insert(kind, "storageclasses", writer.as_reader());

        // Not listed yet: an empty store must not read as "nothing exists".
        assert_eq!(stores.owned(kind, "local"), None);
        assert_eq!(stores.owned(ManagedKind::DaemonSet, "local"), None);

        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(meta("mine", "local", MANAGED_BY.1)));
        writer.apply_watcher_event(&Event::InitApply(meta("theirs", "other", MANAGED_BY.1)));
        writer.apply_watcher_event(&Event::InitApply(meta("forged", "local", "someone")));
        writer.apply_watcher_event(&Event::InitDone);
        // Listed, but the watch has not reported its sync.
        assert_eq!(stores.owned(kind, "local"), None);

        watch.synced();
        assert_eq!(
            stores.owned(kind, "local"),
            Some(vec![LiveObject {
                kind,
                key: kind.key(None, "mine"),
                uid: Some("uid-mine".into()),
                version: "rv7".into(),
            }])
        );

        // A failed watch relists: until then its store may have missed anything.
        watch.failed(&"connection reset");
        assert_eq!(stores.owned(kind, "local"), None);
        watch.synced();
        assert_eq!(stores.owned(kind, "other").map(|o| o.len()), Some(1));

        // Without health (tests building a Context by hand) nothing is cached.
        let mut bare = OwnedStores::default();
        bare.insert(kind, "storageclasses", writer.as_reader());
        assert_eq!(bare.owned(kind, "local"), None);
    }

    #[test]
    fn a_workload_comes_whole_from_a_complete_store_and_absent_means_absent() {
        use k8s_openapi::api::apps::v1::StatefulSet;

        let health = Health::new(Duration::from_secs(60));
        let watch = health.watch("statefulsets");
        let kind = ManagedKind::StatefulSet;
        let mut writer = Writer::new(kind.api_resource());
        let mut stores = OwnedStores::new(health.clone());
        stores.insert_objects(kind, "statefulsets", writer.as_reader());
        let sts: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "plinth-local-controller", "namespace": "plinth-system",
                         "generation": 3, "labels": {CR_LABEL: "local", MANAGED_BY.0: MANAGED_BY.1}},
            "spec": {"replicas": 1},
            "status": {"replicas": 1, "readyReplicas": 1, "observedGeneration": 3},
        }))
        .unwrap();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(sts));
        writer.apply_watcher_event(&Event::InitDone);
        let read = |name: &str| stores.object::<StatefulSet>(kind, "plinth-system", name);
        assert!(
            read("plinth-local-controller").is_none(),
            "watch not synced"
        );
        watch.synced();
        let found = read("plinth-local-controller").unwrap().unwrap();
        assert_eq!(found.status.unwrap().ready_replicas, Some(1));
        assert!(
            read("other").unwrap().is_none(),
            "complete store: absent is absent"
        );
        assert_eq!(
            stores.owned(kind, "local").map(|o| o.len()),
            Some(1),
            "whole objects also say what exists"
        );
        // A metadata store cannot answer for whole objects.
        assert!(
            stores
                .object::<StatefulSet>(ManagedKind::DaemonSet, "plinth-system", "x")
                .is_none()
        );
    }
}
