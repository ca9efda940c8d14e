//! The object store: cluster-scoped objects as JSON, one global resourceVersion counter,
//! and the event history watches replay from.
//!
//! Every write goes through [`Inner::prepare`] and [`Inner::finish`], which hold the rules
//! a CRD with a status subresource follows on the real server: server-owned metadata is
//! kept, `.status` moves only through `/status`, `generation` counts changes outside
//! metadata and status, and a write that changes nothing leaves no trace.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::{
    error::ApiError,
    selector::Selector,
    writes::{Verb, WriteCounts},
};

/// A cluster-scoped resource type. Versions share one collection, as they share one etcd
/// key on the real server; responses carry the version the request named.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub group: String,
    pub plural: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.plural)
        } else {
            write!(f, "{}.{}", self.plural, self.group)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change. `old` lets a watch with a selector turn a change that moves an
/// object into or out of its selection into ADDED or DELETED, as the real server does.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: ResourceKey,
    pub kind: EventType,
    pub old: Option<Arc<Value>>,
    pub new: Arc<Value>,
}

/// Which part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Main,
    Status,
}

/// `DeleteOptions.preconditions`.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug)]
pub struct Listing {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
}

/// Metadata only the server sets; whatever a client sends for them is replaced by the
/// stored value.
const SERVER_METADATA: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

#[derive(Debug, Default)]
struct Collection {
    kind: Option<String>,
    objects: BTreeMap<String, Arc<Value>>,
    /// The last configuration each field manager applied, per (object, manager, scope):
    /// what stands in for managedFields.
    applied: BTreeMap<(String, String, Scope), Value>,
}

#[derive(Debug)]
struct Inner {
    rv: u64,
    collections: BTreeMap<ResourceKey, Collection>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// The newest resourceVersion whose event was dropped from the history: a watch
    /// starting before it cannot be served.
    pruned_through: u64,
    /// What lists at resourceVersion "0" (the "Any" semantic, served from the watch cache
    /// on a real server) answer while that cache lags behind; `None`: the current state.
    stale_cache: Option<Cache>,
    writes: WriteCounts,
    /// Fields (JSON pointers) a write may not change once the object exists, per resource.
    immutable: BTreeMap<ResourceKey, Vec<String>>,
}

/// A frozen copy of every collection's objects and the resourceVersion it was read at.
#[derive(Debug)]
struct Cache {
    objects: BTreeMap<ResourceKey, BTreeMap<String, Arc<Value>>>,
    rv: u64,
}

#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    latest: watch::Sender<u64>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Store {
            inner: Mutex::new(Inner {
                rv: 0,
                collections: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                pruned_through: 0,
                stale_cache: None,
                writes: WriteCounts::default(),
                immutable: BTreeMap::new(),
            }),
            latest: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock (all input errors are values), so a
        // poisoned lock still guards a consistent store.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes up whenever the resourceVersion moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn record_write(&self, verb: Verb, plural: &str, status: bool) {
        self.lock().writes.record(verb, plural, status);
    }

    pub fn writes(&self) -> WriteCounts {
        self.lock().writes.clone()
    }

    /// The kind recorded from the first created object, else a guess from the plural
    /// (`widgets` → `Widget`; only list and bookmark envelopes use it, and kube ignores it).
    pub fn kind_of(&self, key: &ResourceKey) -> String {
        if let Some(kind) = self
            .lock()
            .collections
            .get(key)
            .and_then(|c| c.kind.clone())
        {
            return kind;
        }
        let singular = key.plural.strip_suffix('s').unwrap_or(&key.plural);
        let mut chars = singular.chars();
        chars
            .next()
            .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    }

    /// Every stored object whose plural is `plural` (in any group), ordered by name.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        let inner = self.lock();
        let mut all: Vec<Value> = inner
            .collections
            .iter()
            .filter(|(key, _)| key.plural == plural)
            .flat_map(|(_, c)| c.objects.values().map(|o| Value::clone(o)))
            .collect();
        all.sort_by(|a, b| name_of(a).cmp(&name_of(b)));
        all
    }

    pub fn get(&self, key: &ResourceKey, name: &str) -> Result<Arc<Value>, ApiError> {
        self.lock().get(key, name)
    }

    /// Every stored object with its resource, in key order.
    pub fn all(&self) -> Vec<(ResourceKey, Arc<Value>)> {
        self.lock()
            .collections
            .iter()
            .flat_map(|(key, c)| c.objects.values().map(|o| (key.clone(), o.clone())))
            .collect()
    }

    pub fn list(&self, key: &ResourceKey, selector: &Selector) -> Listing {
        let inner = self.lock();
        let collection = inner.collections.get(key);
        Listing {
            items: collection
                .map(|c| {
                    c.objects
                        .values()
                        .filter(|o| selector.matches(o))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            resource_version: inner.rv,
        }
    }

    /// A list at resourceVersion "0": from the lagging cache when there is one.
    pub fn list_any(&self, key: &ResourceKey, selector: &Selector) -> Listing {
        let inner = self.lock();
        let Some(cache) = &inner.stale_cache else {
            drop(inner);
            return self.list(key, selector);
        };
        Listing {
            items: cache
                .objects
                .get(key)
                .map(|objects| {
                    objects
                        .values()
                        .filter(|o| selector.matches(o))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            resource_version: cache.rv,
        }
    }

    /// What a restart does to the data: etcd's revision is cluster-wide and moved on while
    /// the server was down (other resources were written), and the restarted server's
    /// watch history starts after it, so every resourceVersion handed out before is too
    /// old to resume from (410 `Expired`). With `stale_cache`, lists at resourceVersion
    /// "0" keep answering the state from before the restart until [`Store::catch_up`].
    /// Returns the new resourceVersion.
    pub fn restart(&self, stale_cache: bool) -> u64 {
        let mut inner = self.lock();
        if stale_cache {
            let objects = inner
                .collections
                .iter()
                .map(|(key, c)| (key.clone(), c.objects.clone()))
                .collect();
            inner.stale_cache = Some(Cache {
                objects,
                rv: inner.rv,
            });
        }
        inner.rv += 1;
        inner.history.clear();
        inner.pruned_through = inner.rv;
        let rv = inner.rv;
        self.latest.send_replace(rv);
        rv
    }

    /// Lists at resourceVersion "0" answer the current state again.
    pub fn catch_up(&self) {
        self.lock().stale_cache = None;
    }

    /// Creates `object` (in `namespace` for a namespaced resource).
    pub fn create(
        &self,
        key: &ResourceKey,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let now = now_rfc3339()?;
        let mut inner = self.lock();
        let created = inner.create(key, namespace, object, now)?;
        self.latest.send_replace(inner.rv);
        Ok(created)
    }

    /// Replaces the object with what `edit` makes of the stored one (a patch or a PUT body).
    pub fn update(
        &self,
        key: &ResourceKey,
        name: &str,
        scope: Scope,
        edit: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let current = inner.get(key, name)?;
        let candidate = edit(&current)?;
        let next = prepare(key, name, scope, &current, candidate)?;
        inner.check_immutable(key, name, &current, &next)?;
        let result = inner.finish(key, name, current, next);
        self.latest.send_replace(inner.rv);
        Ok(result)
    }

    /// Server-side apply, approximated: a merge patch onto the stored object that also
    /// removes the fields this manager applied last time and omits now (field ownership
    /// across managers, conflicts and keyed list merging are not modelled), or a create
    /// from the applied configuration when there is no object.
    pub fn apply(
        &self,
        key: &ResourceKey,
        name: &str,
        scope: Scope,
        manager: &str,
        config: &Value,
    ) -> Result<Arc<Value>, ApiError> {
        let now = now_rfc3339()?;
        let mut inner = self.lock();
        let applied_key = (name.to_owned(), manager.to_owned(), scope);
        let result = match inner.get(key, name) {
            Ok(current) => {
                let mut candidate = Value::clone(&current);
                json_patch::merge(&mut candidate, config);
                let previous = inner
                    .collections
                    .get(key)
                    .and_then(|c| c.applied.get(&applied_key));
                if let Some(previous) = previous {
                    remove_dropped_fields(&mut candidate, previous, config);
                }
                let next = prepare(key, name, scope, &current, candidate)?;
                inner.check_immutable(key, name, &current, &next)?;
                inner.finish(key, name, current, next)
            }
            Err(absent) if scope == Scope::Status => return Err(absent),
            Err(_) => {
                if resource_version_of(config).is_some() {
                    return Err(ApiError::conflict(
                        &key.to_string(),
                        name,
                        "the object does not exist (resourceVersion given)",
                    ));
                }
                let mut object = config.clone();
                let (namespace, bare) = split_id(name);
                edit_metadata(&mut object, |meta| {
                    meta.entry("name").or_insert_with(|| Value::from(bare));
                });
                check_url_name(&object, name)?;
                inner.create(key, namespace, object, now)?
            }
        };
        if let Some(collection) = inner.collections.get_mut(key)
            && collection.objects.contains_key(name)
        {
            collection.applied.insert(applied_key, config.clone());
        }
        self.latest.send_replace(inner.rv);
        Ok(result)
    }

    /// Makes writes that change these fields (JSON pointers) of an existing object answer
    /// 422 Invalid, as the real server's validation does for its immutable fields.
    pub fn set_immutable(&self, key: &ResourceKey, fields: Vec<String>) {
        self.lock().immutable.insert(key.clone(), fields);
    }

    /// Stores `object` as a create would, but keeps its creationTimestamp (when given) and
    /// its status: state another party wrote before the test began.
    pub fn seed(
        &self,
        key: &ResourceKey,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let now = match object
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
        {
            Some(given) => given.to_owned(),
            None => now_rfc3339()?,
        };
        let status = object.get("status").cloned();
        let mut inner = self.lock();
        let mut created = inner.create(key, namespace, object, now)?;
        if let Some(status) = status {
            let name = object_id(namespace, name_of(&created).unwrap_or_default());
            let next = with_field(Value::clone(&created), "status", Some(&status));
            created = inner.finish(key, &name, created, next);
        }
        self.latest.send_replace(inner.rv);
        Ok(created)
    }

    /// Changes the stored object with `edit`, whatever it touches, as another writer would:
    /// resourceVersion moves, generation moves when more than metadata and status changed,
    /// a deleting object that loses its last finalizer goes away.
    pub fn edit(
        &self,
        key: &ResourceKey,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let current = inner.get(key, name)?;
        let mut next = Value::clone(&current);
        edit(&mut next);
        let next = bump_generation_on_content_change(&current, next);
        let result = inner.finish(key, name, current, next);
        self.latest.send_replace(inner.rv);
        Ok(result)
    }

    /// Removes the object at once, finalizers or not.
    pub fn remove(&self, key: &ResourceKey, name: &str) -> Option<Arc<Value>> {
        let mut inner = self.lock();
        let current = inner.get(key, name).ok()?;
        let last = inner.delete_now(key, name, current);
        self.latest.send_replace(inner.rv);
        Some(last)
    }

    pub fn delete(
        &self,
        key: &ResourceKey,
        name: &str,
        pre: &Preconditions,
    ) -> Result<Arc<Value>, ApiError> {
        let now = now_rfc3339()?;
        let mut inner = self.lock();
        let deleted = inner.delete(key, name, pre, now)?;
        self.latest.send_replace(inner.rv);
        Ok(deleted)
    }

    /// Current objects matching `selector` and the resourceVersion they were read at.
    pub fn snapshot(&self, key: &ResourceKey, selector: &Selector) -> (Vec<Arc<Value>>, u64) {
        let listing = self.list(key, selector);
        (listing.items, listing.resource_version)
    }

    /// The events of `key` committed after `cursor`, and the newest resourceVersion seen;
    /// `Expired` when some of them were already dropped from the history.
    pub fn events_after(
        &self,
        cursor: u64,
        key: &ResourceKey,
    ) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        let inner = self.lock();
        if cursor < inner.pruned_through {
            return Err(ApiError::expired(cursor, inner.pruned_through + 1));
        }
        // History is ordered by rv: skip what the watcher has seen.
        let start = inner.history.partition_point(|e| e.rv <= cursor);
        let events = inner
            .history
            .range(start..)
            .filter(|e| &e.key == key)
            .cloned()
            .collect();
        Ok((events, inner.rv.max(cursor)))
    }
}

impl Inner {
    /// 422 when `next` changes a field of `current` the resource declares immutable.
    /// Absent and empty count as the same value, as in the real server's semantic equality.
    fn check_immutable(
        &self,
        key: &ResourceKey,
        name: &str,
        current: &Value,
        next: &Value,
    ) -> Result<(), ApiError> {
        let Some(fields) = self.immutable.get(key) else {
            return Ok(());
        };
        let pick = |object: &Value, field: &str| {
            object
                .pointer(field)
                .filter(|v| !is_empty_value(v))
                .cloned()
        };
        let Some(field) = fields.iter().find(|f| pick(current, f) != pick(next, f)) else {
            return Ok(());
        };
        let kind = self
            .collections
            .get(key)
            .and_then(|c| c.kind.clone())
            .unwrap_or_else(|| key.plural.clone());
        let resource = if key.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", key.group)
        };
        let path = field.trim_start_matches('/').replace('/', ".");
        let value = next.pointer(field).cloned().unwrap_or(Value::Null);
        let (_, bare) = split_id(name);
        Err(ApiError::invalid(
            &resource,
            bare,
            format!("{path}: Invalid value: {value}: field is immutable"),
        ))
    }

    fn get(&self, key: &ResourceKey, name: &str) -> Result<Arc<Value>, ApiError> {
        self.collections
            .get(key)
            .and_then(|c| c.objects.get(name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&key.to_string(), name))
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn create(
        &mut self,
        key: &ResourceKey,
        namespace: Option<&str>,
        mut object: Value,
        now: String,
    ) -> Result<Arc<Value>, ApiError> {
        let resource = key.to_string();
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        };
        for field in ["apiVersion", "kind"] {
            if map
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!(
                    "Object '{field}' is missing in the request body"
                )));
            }
        }
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // With a status subresource the server drops status on create.
        map.remove("status");
        let meta_str = |field: &str| {
            object
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
        };
        let name = match (meta_str("name"), meta_str("generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    &resource,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        validate_name(&resource, &name)?;
        validate_metadata(&resource, &name, &object)?;
        if let Some(namespace) = namespace {
            match meta_str("namespace") {
                Some(given) if !given.is_empty() && given != namespace => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({given}) does not match the namespace sent on the request ({namespace})"
                    )));
                }
                _ => {}
            }
        }
        let bare = name;
        let name = object_id(namespace, &bare);
        if resource_version_of(&object).is_some() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if self.get(key, &name).is_ok() {
            return Err(ApiError::already_exists(&resource, &name));
        }
        let rv = self.next_rv();
        edit_metadata(&mut object, |meta| {
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            meta.insert("name".into(), Value::from(bare.as_str()));
            match namespace {
                Some(ns) => meta.insert("namespace".into(), Value::from(ns)),
                None => meta.remove("namespace"),
            };
            meta.insert("uid".into(), Value::from(random_uid()));
            meta.insert("creationTimestamp".into(), Value::from(now));
            meta.insert("generation".into(), Value::from(1));
            meta.insert("resourceVersion".into(), Value::from(rv.to_string()));
        });
        let collection = self.collections.entry(key.clone()).or_default();
        collection.kind.get_or_insert(kind);
        let object = Arc::new(object);
        self.commit(key, &name, EventType::Added, None, object.clone(), rv);
        Ok(object)
    }

    /// Stores `next` unless it equals `current`; a deleting object left without finalizers
    /// goes away.
    fn finish(
        &mut self,
        key: &ResourceKey,
        name: &str,
        current: Arc<Value>,
        mut next: Value,
    ) -> Arc<Value> {
        if next == *current {
            return current;
        }
        let rv = self.next_rv();
        set_resource_version(&mut next, rv);
        let kind = if is_deleting(&next) && finalizers(&next).is_empty() {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        let next = Arc::new(next);
        self.commit(key, name, kind, Some(current), next.clone(), rv);
        next
    }

    fn delete(
        &mut self,
        key: &ResourceKey,
        name: &str,
        pre: &Preconditions,
        now: String,
    ) -> Result<Arc<Value>, ApiError> {
        let current = self.get(key, name)?;
        let meta_str = |field: &str| {
            current
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let checks = [
            ("UID", &pre.uid, "uid"),
            ("ResourceVersion", &pre.resource_version, "resourceVersion"),
        ];
        for (what, wanted, field) in checks {
            if let Some(wanted) = wanted
                && wanted != meta_str(field)
            {
                let why = format!(
                    "Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {}",
                    meta_str(field)
                );
                return Err(ApiError::conflict(&key.to_string(), name, why));
            }
        }
        if !finalizers(&current).is_empty() {
            if is_deleting(&current) {
                return Ok(current);
            }
            // As the real server's markAsDeleting: the first delete bumps generation.
            let mut next = Value::clone(&current);
            edit_metadata(&mut next, |meta| {
                let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
                meta.insert("generation".into(), Value::from(generation + 1));
                meta.insert("deletionTimestamp".into(), Value::from(now));
                meta.insert("deletionGracePeriodSeconds".into(), Value::from(0));
            });
            return Ok(self.finish(key, name, current, next));
        }
        Ok(self.delete_now(key, name, current))
    }

    /// Deletes the object now (no finalizers hold it): a Deleted event carrying the
    /// object at a new resourceVersion, which is also what the delete answers.
    fn delete_now(&mut self, key: &ResourceKey, name: &str, current: Arc<Value>) -> Arc<Value> {
        let rv = self.next_rv();
        let mut last = Value::clone(&current);
        set_resource_version(&mut last, rv);
        let last = Arc::new(last);
        self.commit(
            key,
            name,
            EventType::Deleted,
            Some(current),
            last.clone(),
            rv,
        );
        last
    }

    fn commit(
        &mut self,
        key: &ResourceKey,
        name: &str,
        kind: EventType,
        old: Option<Arc<Value>>,
        new: Arc<Value>,
        rv: u64,
    ) {
        let collection = self.collections.entry(key.clone()).or_default();
        if kind == EventType::Deleted {
            collection.objects.remove(name);
            collection
                .applied
                .retain(|(applied_to, ..), _| applied_to != name);
        } else {
            collection.objects.insert(name.to_owned(), new.clone());
        }
        self.history.push_back(Arc::new(Event {
            rv,
            key: key.clone(),
            kind,
            old,
            new,
        }));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.pruned_through = dropped.rv;
            }
        }
    }
}

/// Turns a client's candidate into the object to store, or says why it cannot be stored.
fn prepare(
    key: &ResourceKey,
    name: &str,
    scope: Scope,
    current: &Value,
    candidate: Value,
) -> Result<Value, ApiError> {
    let resource = key.to_string();
    if !candidate.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    if let Some(rv) = resource_version_of(&candidate)
        && Some(rv) != resource_version_of(current)
    {
        return Err(ApiError::conflict(
            &resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    check_url_name(&candidate, name)?;
    validate_metadata(&resource, name, &candidate)?;
    let mut next = match scope {
        Scope::Main => with_field(candidate, "status", current.get("status")),
        Scope::Status => {
            let status = candidate.get("status");
            with_field(current.clone(), "status", status)
        }
    };
    for field in ["apiVersion", "kind"] {
        next = with_field(next, field, current.get(field));
    }
    let current_meta = current.get("metadata");
    edit_metadata(&mut next, |meta| {
        for field in SERVER_METADATA {
            set_or_remove(meta, field, current_meta.and_then(|m| m.get(field)));
        }
    });
    if is_deleting(current) {
        let before = finalizers(current);
        if finalizers(&next).iter().any(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                &resource,
                name,
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    Ok(bump_generation_on_content_change(current, next))
}

fn bump_generation_on_content_change(current: &Value, mut next: Value) -> Value {
    let content = |v: &Value| -> Vec<(String, Value)> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if content(current) != content(&next) {
        let generation = current
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        edit_metadata(&mut next, |meta| {
            meta.insert("generation".into(), Value::from(generation + 1));
        });
    }
    next
}

/// Removes from `target` the fields `previous` set and `current` no longer mentions,
/// recursing through objects (lists and scalars are atomic).
fn remove_dropped_fields(target: &mut Value, previous: &Value, current: &Value) {
    let (Some(target), Some(previous)) = (target.as_object_mut(), previous.as_object()) else {
        return;
    };
    for (field, was) in previous {
        match current.get(field) {
            None => {
                target.remove(field);
            }
            Some(now) => {
                if let Some(inner) = target.get_mut(field) {
                    remove_dropped_fields(inner, was, now);
                }
            }
        }
    }
}

fn with_field(mut object: Value, field: &str, value: Option<&Value>) -> Value {
    if let Some(map) = object.as_object_mut() {
        set_or_remove(map, field, value);
    }
    object
}

fn set_or_remove(map: &mut Map<String, Value>, field: &str, value: Option<&Value>) {
    match value {
        Some(v) => {
            map.insert(field.to_owned(), v.clone());
        }
        None => {
            map.remove(field);
        }
    }
}

/// How an object is keyed in its collection: `namespace/name`, or the name of a
/// cluster-scoped object (names never contain a `/`).
pub fn object_id(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The namespace and name an [`object_id`] stands for.
pub fn split_id(id: &str) -> (Option<&str>, &str) {
    match id.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, id),
    }
}

fn check_url_name(object: &Value, id: &str) -> Result<(), ApiError> {
    let (namespace, name) = split_id(id);
    if let Some(namespace) = namespace
        && let Some(given) = object
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty() && *ns != namespace)
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({given}) does not match the namespace sent on the request ({namespace})"
        )));
    }
    match name_of(object) {
        Some(body_name) if body_name != name => Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        ))),
        _ => Ok(()),
    }
}

/// Runs `edit` on the object's metadata map, created as needed (`validate_metadata` has
/// already refused a non-object metadata from clients). Does nothing to a non-object.
fn edit_metadata(object: &mut Value, edit: impl FnOnce(&mut Map<String, Value>)) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let mut meta = match map.remove("metadata") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    edit(&mut meta);
    map.insert("metadata".into(), Value::Object(meta));
}

fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn set_resource_version(object: &mut Value, rv: u64) {
    edit_metadata(object, |meta| {
        meta.insert("resourceVersion".into(), Value::from(rv.to_string()));
    });
}

/// The object as the client sees it: in the version its request named.
pub fn presented(object: &Value, api_version: &str) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), Value::from(api_version));
    }
    object
}

pub fn name_of(object: &Value) -> Option<&str> {
    object.get("metadata")?.get("name")?.as_str()
}

fn resource_version_of(object: &Value) -> Option<&str> {
    object
        .get("metadata")?
        .get("resourceVersion")?
        .as_str()
        .filter(|s| !s.is_empty())
}

fn is_deleting(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|t| !t.is_null())
}

fn finalizers(object: &Value) -> Vec<&str> {
    object
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|fs| fs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The shape checks the real server's schema validation would make on metadata; the
/// selectors and finalizer logic rely on them.
fn validate_metadata(resource: &str, name: &str, object: &Value) -> Result<(), ApiError> {
    let Some(meta) = object.get("metadata") else {
        return Ok(());
    };
    let Some(meta) = meta.as_object() else {
        return Err(ApiError::invalid(
            resource,
            name,
            "metadata: Invalid value: must be an object",
        ));
    };
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    format!("metadata.{field}: Invalid value: must map strings to strings"),
                ));
            }
        }
    }
    match meta.get("finalizers") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(fs)) if fs.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            resource,
            name,
            "metadata.finalizers: Invalid value: must be a list of strings",
        )),
    }
}

/// RFC 1123 subdomain, as the real server requires of custom resource names.
fn validate_name(resource: &str, name: &str) -> Result<(), ApiError> {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.');
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() <= 253 && bytes.iter().all(allowed) && alnum(bytes.first()) && alnum(bytes.last())
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            resource,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

fn now_rfc3339() -> Result<String, ApiError> {
    k8s_openapi::jiff::fmt::strtime::format(
        "%Y-%m-%dT%H:%M:%SZ",
        k8s_openapi::jiff::Timestamp::now(),
    )
    .map_err(|e| ApiError::internal(format!("cannot format the current time: {e}")))
}

/// Random enough for uids and generated names, without a random-number crate: each
/// `RandomState` is keyed from the OS's randomness, and the counter keeps draws distinct.
fn random_u64() -> u64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(DRAWS.fetch_add(1, Ordering::Relaxed))
}

fn random_uid() -> String {
    let (hi, lo) = (random_u64(), random_u64());
    // A version-4 UUID layout: 8-4-4-4-12 hex digits.
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xfff,
        (lo >> 48 & 0x3fff) | 0x8000,
        lo & 0xffff_ffff_ffff
    )
}

/// The 5 characters the real server appends to `generateName` (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut draw = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(draw % ALPHABET.len() as u64) as usize];
            draw /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> ResourceKey {
        ResourceKey {
            group: "test.plinth.dev".into(),
            plural: "widgets".into(),
        }
    }

    fn widget(name: &str) -> Value {
        json!({"apiVersion": "test.plinth.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": 1}})
    }

    #[test]
    fn uids_are_distinct_uuids() {
        let (a, b) = (random_uid(), random_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
    }

    #[test]
    fn history_limit_expires_old_cursors() {
        let store = Store::new(2);
        for i in 0..4 {
            store
                .create(&key(), None, widget(&format!("w{i}")))
                .unwrap();
        }
        // rv 1 and 2 were dropped: resuming after 1 would miss rv 2.
        assert_eq!(
            store.events_after(1, &key()).unwrap_err().code,
            http::StatusCode::GONE
        );
        let (events, latest) = store.events_after(2, &key()).unwrap();
        assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(latest, 4);
    }

    #[test]
    fn names_are_validated() {
        let store = Store::new(10);
        for bad in ["Upper", "-lead", "trail-", "sp ace", ""] {
            let err = store.create(&key(), None, widget(bad)).unwrap_err();
            assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        }
        let mut generated = widget("");
        generated["metadata"] = json!({"generateName": "w-"});
        let created = store.create(&key(), None, generated).unwrap();
        let name = name_of(&created).unwrap();
        assert!(name.starts_with("w-") && name.len() == 7, "{name}");
    }
}
