//! What tests do to the stub besides talking HTTP to it: read the request log and wait
//! on it, seed and change objects as another party would, declare immutable fields and
//! CRD-served groups.

use std::time::Duration;

use http::Method;
use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    ApiStub, Running,
    fault::Race,
    log::Recorded,
    routes::{collection_at, object_at},
    store::ResourceKey,
};

/// The longest any `wait_for_*` waits before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The fields the real API server refuses to change once an object exists, for the
/// built-in kinds Plinth writes, as (group, plural, JSON pointers). Only what the server
/// decides: the client finds out from its 422. CSIDriver: `ValidateCSIDriverUpdate` (the
/// rest of the spec became mutable over the releases); StorageClass:
/// `ValidateStorageClassUpdate`; StatefulSet: the spec outside replicas, template,
/// updateStrategy and a few more; Job: its selector and pod template.
pub const BUILT_IN_IMMUTABLE_FIELDS: &[(&str, &str, &[&str])] = &[
    (
        "storage.k8s.io",
        "csidrivers",
        &["/spec/attachRequired", "/spec/volumeLifecycleModes"],
    ),
    (
        "storage.k8s.io",
        "storageclasses",
        &[
            "/provisioner",
            "/parameters",
            "/reclaimPolicy",
            "/volumeBindingMode",
        ],
    ),
    (
        "apps",
        "statefulsets",
        &[
            "/spec/selector",
            "/spec/serviceName",
            "/spec/volumeClaimTemplates",
            "/spec/podManagementPolicy",
        ],
    ),
    ("apps", "daemonsets", &["/spec/selector"]),
    ("rbac.authorization.k8s.io", "rolebindings", &["/roleRef"]),
    (
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        &["/roleRef"],
    ),
    ("batch", "jobs", &["/spec/selector", "/spec/template"]),
];

/// The group of external-snapshotter's CRDs, which clusters may or may not have.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// external-snapshotter's CRDs as (plural, kind, scope).
pub const SNAPSHOT_KINDS: [(&str, &str, &str); 3] = [
    ("volumesnapshots", "VolumeSnapshot", "Namespaced"),
    ("volumesnapshotcontents", "VolumeSnapshotContent", "Cluster"),
    ("volumesnapshotclasses", "VolumeSnapshotClass", "Cluster"),
];

/// external-snapshotter's CRDs as the cluster would serve them (schema-less, v1 served
/// and stored), in the order of [`SNAPSHOT_KINDS`]: to create through the API or to
/// seed with [`Running::insert`].
pub fn snapshot_crds() -> impl Iterator<Item = Value> {
    SNAPSHOT_KINDS.into_iter().map(|(plural, kind, scope)| {
        serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{SNAPSHOT_GROUP}")},
            "spec": {
                "group": SNAPSHOT_GROUP,
                "scope": scope,
                "names": {"plural": plural, "kind": kind},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}],
            },
        })
    })
}

/// The REST path of the object `name` of kind `K` (`namespace` for namespaced kinds).
pub fn path_of<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", K::url_path(&(), namespace))
}

fn object_key(path: &str) -> (ResourceKey, Option<String>, String) {
    object_at(path).unwrap_or_else(|| panic!("{path} is not the path of an object"))
}

impl ApiStub {
    /// For tests: a stub with the default settings and a client talking to it; panics
    /// when either cannot be had (nothing a test could go on without).
    pub async fn start_with_client() -> (Running, kube::Client) {
        let stub = ApiStub::start()
            .await
            .unwrap_or_else(|e| panic!("the stand-in API server does not start: {e}"));
        let client = stub
            .client()
            .unwrap_or_else(|e| panic!("no client for the stand-in API server: {e}"));
        (stub, client)
    }
}

impl Running {
    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.app.log.all()
    }

    /// The requests answered so far, clearing the log.
    pub fn take_requests(&self) -> Vec<Recorded> {
        self.app.log.take()
    }

    /// Forgets the requests answered so far (objects stay).
    pub fn clear_requests(&self) {
        self.app.log.take();
    }

    /// The state-changing requests answered so far.
    pub fn write_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    /// Waits until a request matching `matches` has been answered; returns the first one.
    /// Panics after [`WAIT`], listing the requests seen.
    pub async fn wait_for_request(&self, matches: impl Fn(&Recorded) -> bool) -> Recorded {
        self.wait_for_nth_request(1, matches).await
    }

    /// Waits until `n` (1-based) requests matching `matches` have been answered; returns
    /// the `n`th.
    pub async fn wait_for_nth_request(
        &self,
        n: usize,
        matches: impl Fn(&Recorded) -> bool,
    ) -> Recorded {
        self.wait_until(&format!("request #{n} of a kind"), || {
            self.requests()
                .into_iter()
                .filter(|r| matches(r))
                .nth(n.saturating_sub(1))
        })
        .await
    }

    /// Waits until the object at `path` (missing: `None`) satisfies `matches`; returns it.
    pub async fn wait_for_object(
        &self,
        path: &str,
        matches: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        self.wait_until(&format!("{path} to match"), || {
            let object = self.get(path);
            matches(object.as_ref()).then_some(object)
        })
        .await
    }

    async fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let mut requests = self.app.log.subscribe();
        let mut changes = self.app.store.subscribe();
        let wait = async {
            loop {
                requests.borrow_and_update();
                changes.borrow_and_update();
                if let Some(found) = check() {
                    return found;
                }
                tokio::select! {
                    _ = requests.changed() => {}
                    _ = changes.changed() => {}
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(found) => found,
            Err(_) => panic!(
                "waited {WAIT:?} for {what}; requests so far: {:#?}",
                self.requests()
                    .iter()
                    .map(Recorded::line)
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// The stored object at an object path (`/apis/apps/v1/namespaces/ns/statefulsets/x`).
    pub fn get(&self, path: &str) -> Option<Value> {
        let (key, _, id) = object_at(path)?;
        self.app.store.get(&key, &id).ok().map(|o| Value::clone(&o))
    }

    /// The stored object `name` of the cluster-scoped kind `K`.
    pub fn get_as<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.get(&path_of::<K>(None, name)).map(|v| {
            serde_json::from_value(v)
                .unwrap_or_else(|e| panic!("the stored {name} is not a {}: {e}", K::kind(&())))
        })
    }

    /// Stores `object` at `path` as a create would (uid, resourceVersion, generation 1),
    /// keeping its creationTimestamp and status: state another party wrote. Returns the
    /// stored object. Panics when the stub refuses it (a test's mistake).
    pub fn insert(&self, path: &str, object: Value) -> Value {
        let (key, namespace, _) = object_key(path);
        let stored = self
            .app
            .store
            .seed(&key, namespace.as_deref(), object)
            .unwrap_or_else(|e| panic!("cannot insert {path}: {e}"));
        Value::clone(&stored)
    }

    /// [`Running::insert`] of a typed cluster-scoped object.
    pub fn insert_as<K>(&self, object: &K) -> Value
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let value =
            serde_json::to_value(object).unwrap_or_else(|e| panic!("cannot serialize {name}: {e}"));
        self.insert(&path_of::<K>(None, &name), value)
    }

    /// Changes the object at `path` with `change` (anything, status included), as a write
    /// through the API would: resourceVersion bumped, generation bumped when more than
    /// metadata and status changed, deleted when it was being deleted and lost its last
    /// finalizer. Returns the object as stored. Panics when there is no such object.
    pub fn modify(&self, path: &str, change: impl FnOnce(&mut Value)) -> Value {
        let (key, _, id) = object_key(path);
        let stored = self
            .app
            .store
            .edit(&key, &id, change)
            .unwrap_or_else(|e| panic!("cannot modify {path}: {e}"));
        Value::clone(&stored)
    }

    /// [`Running::modify`] of the stored object `name` of this plural (in any group; for
    /// cluster-scoped resources).
    pub fn update(&self, plural: &str, name: &str, change: impl FnOnce(&mut Value)) -> Value {
        let key = self
            .app
            .store
            .all()
            .into_iter()
            .map(|(key, _)| key)
            .find(|key| key.plural == plural)
            .unwrap_or_else(|| panic!("no {plural} stored"));
        let stored = self
            .app
            .store
            .edit(&key, name, change)
            .unwrap_or_else(|e| panic!("cannot update {plural}/{name}: {e}"));
        Value::clone(&stored)
    }

    /// Another writer wins a race: just before the next request with `method` under
    /// `path_prefix`, `object` is stored (as [`Running::insert`] would) at `object_path`,
    /// so that, for example, a create meets 409 `AlreadyExists`.
    pub fn lose_next_race(
        &self,
        method: Method,
        path_prefix: &str,
        object_path: &str,
        object: Value,
    ) {
        self.app.races.arm(Race {
            method,
            path_prefix: path_prefix.to_owned(),
            object_path: object_path.to_owned(),
            object,
        });
    }

    /// The next create of `object`'s kind finds `object` written just before it by
    /// someone else (a concurrent call that won the race) and answers 409
    /// `AlreadyExists`. For cluster-scoped kinds.
    pub fn lose_next_create<K>(&self, object: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let value =
            serde_json::to_value(object).unwrap_or_else(|e| panic!("cannot serialize {name}: {e}"));
        self.lose_next_race(
            Method::POST,
            &K::url_path(&(), None),
            &path_of::<K>(None, &name),
            value,
        );
    }

    /// Replaces the status of the cluster-scoped `name` of kind `K` (as its owner would
    /// through `/status`).
    pub fn set_status<K: Resource<DynamicType = ()>>(&self, name: &str, status: Value) -> Value {
        self.modify(&path_of::<K>(None, name), |object| {
            if let Some(map) = object.as_object_mut() {
                map.insert("status".into(), status);
            }
        })
    }

    /// The path of every stored object (in the version it was stored with), for
    /// diagnostics and "what is left" assertions.
    pub fn paths(&self) -> Vec<String> {
        self.app
            .store
            .all()
            .iter()
            .map(|(key, object)| {
                let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
                let api_version = text("/apiVersion").unwrap_or_default();
                let prefix = if key.group.is_empty() {
                    format!("/api/{api_version}")
                } else {
                    format!("/apis/{api_version}")
                };
                let namespace = text("/metadata/namespace")
                    .map(|ns| format!("/namespaces/{ns}"))
                    .unwrap_or_default();
                let name = text("/metadata/name").unwrap_or_default();
                format!("{prefix}{namespace}/{}/{name}", key.plural)
            })
            .collect()
    }

    /// Deletes the object at `path` at once, finalizers or not; returns what was stored.
    pub fn remove(&self, path: &str) -> Option<Value> {
        let (key, _, id) = object_at(path)?;
        self.app.store.remove(&key, &id).map(|o| Value::clone(&o))
    }

    /// Writes to existing objects of the collection at `collection_path` (e.g.
    /// `/apis/storage.k8s.io/v1/storageclasses`) that change one of `fields` (JSON
    /// pointers) answer 422 Invalid "field is immutable", as the real server's
    /// validation does. Replaces what was declared for that resource before.
    pub fn immutable_fields(&self, collection_path: &str, fields: &[&str]) {
        let key = collection_at(collection_path)
            .unwrap_or_else(|| panic!("{collection_path} is not the path of a collection"));
        self.app
            .store
            .set_immutable(&key, fields.iter().map(|f| (*f).to_owned()).collect());
    }

    /// Declares [`BUILT_IN_IMMUTABLE_FIELDS`].
    pub fn built_in_immutable_fields(&self) {
        for (group, plural, fields) in BUILT_IN_IMMUTABLE_FIELDS {
            let key = ResourceKey {
                group: (*group).to_owned(),
                plural: (*plural).to_owned(),
            };
            self.app
                .store
                .set_immutable(&key, fields.iter().map(|f| (*f).to_owned()).collect());
        }
    }

    /// Serves the resources of `group` only while a stored CustomResourceDefinition
    /// defines them (404 otherwise), as the real server does for an optional API that is
    /// not installed.
    pub fn require_crds(&self, group: &str) {
        self.app
            .crd_groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(group.to_owned());
    }
}
