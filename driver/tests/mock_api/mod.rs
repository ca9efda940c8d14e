//! An in-process fake of the Kubernetes API server for cluster-scoped custom resources,
//! served to a real `kube::Client` through kube's mocked service (`tower_test::mock`).
//!
//! It keeps objects as JSON, so it serves any custom resource under
//! `/apis/<group>/<version>/<plural>[/<name>[/status]]`, with the semantics the driver
//! relies on: `metadata.uid`, a cluster-wide `resourceVersion`, `generation` bumped by
//! spec changes only, the status subresource (a write to the main resource leaves
//! `status` alone, a write to `/status` changes only `status`), finalizers (DELETE sets
//! `deletionTimestamp`; removing the last finalizer deletes), optimistic concurrency
//! (`metadata.resourceVersion` in a write, `preconditions` in a DeleteOptions), label
//! and field selectors (`metadata.name`), list paging (`limit`/`continue`), and watches
//! whose bodies stream newline-delimited events as the state changes.
//!
//! ```ignore
//! mod mock_api;
//! let (api, client) = mock_api::MockApi::start();      // inside a tokio runtime
//! api.insert(&pool_node);                               // seed objects (typed)
//! api.set_status::<PoolVolume>("abc", json!({...}));    // act as the other side
//! let req = api.wait_for_request(|r| r.method == "POST").await;
//! assert_eq!(req.content_type.as_deref(), Some("application/json"));
//! api.fail_next("POST", "/apis/plinth.dev/v1alpha1/poolvolumes", 409);
//! ```
//!
//! API (additive changes only; the node agent's tests use it too):
//! - [`MockApi::start`] → `(MockApi, kube::Client)`; [`MockApi::requests`] /
//!   [`MockApi::take_requests`] / [`MockApi::writes`]: the [`Recorded`] requests served,
//!   in order (method, path, query, content type, JSON body).
//! - Objects: [`MockApi::get`] / [`MockApi::get_as`], [`MockApi::list_as`],
//!   [`MockApi::insert`] (as a create), [`MockApi::set_status`], [`MockApi::update`]
//!   (any change, as a write through the API would make it), [`MockApi::remove`].
//! - Faults: [`MockApi::fail_next`] answers the next request with that method and path
//!   with an error `Status`; [`MockApi::lose_next_create`] makes the next POST of a kind
//!   lose a race against another writer's object (409).
//! - Waiting (each bounded by [`WAIT`], panicking with what it waited for):
//!   [`MockApi::wait_for_request`], [`MockApi::wait_for_nth_request`],
//!   [`MockApi::wait_for_object`].
//!
//! Not modelled: namespaces, server-side apply's field ownership (an apply is a merge
//! patch that may create), strategic merge patch (415, as for custom resources),
//! watch timeouts and bookmarks other than the initial-events one.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The longest any `wait_for_*` waits before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The creation timestamp of every object: fixed, so bodies compare exactly.
pub const CREATED: &str = "2026-01-01T00:00:00Z";

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request the fake served.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Query parameters in order (kube writes them in a fixed order).
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// The body, parsed as JSON (`None` when empty).
    pub body: Option<Value>,
}

impl Recorded {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }

    /// A request that changes state (anything but GET).
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// The collection path of `K` (`/apis/<group>/<version>/<plural>`).
pub fn collection<K: Resource<DynamicType = ()>>() -> String {
    format!("/apis/{}/{}", K::api_version(&()), K::plural(&()))
}

/// The path of the object `name` of kind `K`.
pub fn object_path<K: Resource<DynamicType = ()>>(name: &str) -> String {
    format!("{}/{name}", collection::<K>())
}

struct Fault {
    method: String,
    path: String,
    code: u16,
    /// Stored (as a create) just before the failure: another writer's object.
    before: Option<(String, Value)>,
}

struct Watcher {
    plural: String,
    selector: Selector,
    events: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    /// plural → name → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    resource_version: u64,
    uids: u64,
    requests: Vec<Recorded>,
    faults: VecDeque<Fault>,
    /// Every change, so a watch from a resourceVersion replays what came after it.
    history: Vec<(u64, String, &'static str, Value)>,
    watchers: Vec<Watcher>,
}

/// The fake API server. Cloning shares it.
#[derive(Clone)]
pub struct MockApi {
    state: Arc<Mutex<State>>,
    /// Ticks on every request and every change, for the `wait_for_*` helpers.
    changed: Arc<watch::Sender<u64>>,
}

impl MockApi {
    /// Starts serving on the current tokio runtime; the client talks to nothing else.
    pub fn start() -> (Self, kube::Client) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
        let api = Self {
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        };
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let response = server.serve(request).await;
                reply.send_response(response);
            }
        });
        (api, kube::Client::new(service, "default"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mock API state poisoned")
    }

    fn tick(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests served so far, clearing the log.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.lock().requests)
    }

    /// The state-changing requests served so far.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    pub fn get(&self, plural: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(plural)?.get(name).cloned()
    }

    pub fn get_as<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.get(&K::plural(&()), name)
            .map(|v| serde_json::from_value(v).expect("stored object deserializes"))
    }

    /// The objects of kind `K`, ordered by name.
    pub fn list_as<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let state = self.lock();
        state
            .objects
            .get(&*K::plural(&()))
            .map(|objects| {
                objects
                    .values()
                    .map(|v| serde_json::from_value(v.clone()).expect("stored object deserializes"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stores `object` as a create through the API would (uid, resourceVersion,
    /// generation 1) but keeps its status: seeds state another party wrote. Replaces an
    /// object of the same name. Returns the stored object.
    pub fn insert<K>(&self, object: &K) -> Value
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let mut value = serde_json::to_value(object).expect("object serializes");
        let name = value["metadata"]["name"]
            .as_str()
            .expect("inserted objects need metadata.name")
            .to_owned();
        let plural = K::plural(&()).into_owned();
        let mut state = self.lock();
        state.admit(&mut value);
        state.store(&plural, &name, value, "ADDED");
        let stored = state.objects[&plural][&name].clone();
        drop(state);
        self.tick();
        stored
    }

    /// Replaces the status of `name` (as its node would through `/status`).
    pub fn set_status<K>(&self, name: &str, status: Value) -> Value
    where
        K: Resource<DynamicType = ()>,
    {
        self.update(&K::plural(&()), name, |object| {
            ensure_object(object, "status");
            object["status"] = status;
        })
    }

    /// Changes `name` with `change`, as a write through the API would: resourceVersion
    /// bumped, generation bumped when the spec changed, deleted when it was being
    /// deleted and lost its last finalizer. Returns the object as stored (or as last
    /// seen when this deleted it). Panics when there is no such object.
    pub fn update(&self, plural: &str, name: &str, change: impl FnOnce(&mut Value)) -> Value {
        let mut state = self.lock();
        let old = state
            .objects
            .get(plural)
            .and_then(|o| o.get(name))
            .cloned()
            .unwrap_or_else(|| panic!("no {plural}/{name} to update"));
        let mut new = old.clone();
        change(&mut new);
        if new.get("spec") != old.get("spec") {
            bump_generation(&mut new);
        }
        let stored = state.replace(plural, name, new);
        drop(state);
        self.tick();
        stored
    }

    /// Deletes `name` at once, finalizers or not.
    pub fn remove(&self, plural: &str, name: &str) -> Option<Value> {
        let mut state = self.lock();
        let object = state.objects.get_mut(plural)?.remove(name)?;
        state.resource_version += 1;
        let mut gone = object.clone();
        gone["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        state.emit(plural, "DELETED", gone);
        drop(state);
        self.tick();
        Some(object)
    }

    /// The next request with `method` and `path` (no query) is answered with an error
    /// `Status` of `code` and changes nothing (it is still recorded).
    pub fn fail_next(&self, method: &str, path: &str, code: u16) {
        self.lock().faults.push_back(Fault {
            method: method.to_owned(),
            path: path.to_owned(),
            code,
            before: None,
        });
    }

    /// The next POST of a `K` finds `object` written just before it by someone else
    /// (a concurrent call that won the race) and answers 409 AlreadyExists.
    pub fn lose_next_create<K>(&self, object: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let value = serde_json::to_value(object).expect("object serializes");
        self.lock().faults.push_back(Fault {
            method: "POST".to_owned(),
            path: collection::<K>(),
            code: 409,
            before: Some((K::plural(&()).into_owned(), value)),
        });
    }

    /// Waits until a request matching `matches` has been served; returns the first one.
    pub async fn wait_for_request(&self, matches: impl Fn(&Recorded) -> bool) -> Recorded {
        self.wait_until("a matching request", || {
            self.lock().requests.iter().find(|r| matches(r)).cloned()
        })
        .await
    }

    /// Waits until `n` (1-based) requests matching `matches` have been served; returns
    /// the `n`th.
    pub async fn wait_for_nth_request(
        &self,
        n: usize,
        matches: impl Fn(&Recorded) -> bool,
    ) -> Recorded {
        self.wait_until(&format!("request #{n} of a kind"), || {
            self.lock()
                .requests
                .iter()
                .filter(|r| matches(r))
                .nth(n.saturating_sub(1))
                .cloned()
        })
        .await
    }

    /// Waits until `name` (missing: `None`) satisfies `matches`; returns it.
    pub async fn wait_for_object(
        &self,
        plural: &str,
        name: &str,
        matches: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        self.wait_until(&format!("{plural}/{name} to match"), || {
            let object = self.get(plural, name);
            matches(object.as_ref()).then_some(object)
        })
        .await
    }

    async fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                changed.borrow_and_update();
                if let Some(found) = check() {
                    return found;
                }
                if changed.changed().await.is_err() {
                    panic!("mock API stopped while waiting for {what}");
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(found) => found,
            Err(_) => panic!(
                "waited {WAIT:?} for {what}; requests so far: {:#?}",
                self.requests()
            ),
        }
    }

    async fn serve(&self, request: Request<kube::client::Body>) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let recorded = Recorded {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts
                .uri
                .query()
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .filter(|(k, _)| !k.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&bytes).ok(),
        };
        let response = {
            let mut state = self.lock();
            state.requests.push(recorded.clone());
            state.answer(&recorded)
        };
        self.tick();
        response
    }
}

/// What a request addresses.
struct Target<'a> {
    plural: &'a str,
    name: Option<&'a str>,
    status: bool,
}

fn target(path: &str) -> Option<Target<'_>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis", _, _, plural] => Some(Target {
            plural,
            name: None,
            status: false,
        }),
        ["apis", _, _, plural, name] => Some(Target {
            plural,
            name: Some(name),
            status: false,
        }),
        ["apis", _, _, plural, name, "status"] => Some(Target {
            plural,
            name: Some(name),
            status: true,
        }),
        _ => None,
    }
}

impl State {
    fn answer(&mut self, request: &Recorded) -> Response<ResponseBody> {
        if let Some(at) = self
            .faults
            .iter()
            .position(|f| f.method == request.method && f.path == request.path)
        {
            let fault = self.faults.remove(at).expect("position is in range");
            if let Some((plural, object)) = fault.before {
                let _ = self.create(&plural, Some(object));
            }
            return failure(fault.code, "injected failure");
        }
        let Some(target) = target(&request.path) else {
            return failure(404, &format!("{} is not served", request.path));
        };
        let plural = target.plural.to_owned();
        match (request.method.as_str(), target.name) {
            ("GET", None) if request.is_watch() => self.watch(&plural, request),
            ("GET", None) => self.list(&plural, request),
            ("GET", Some(name)) => match self.object(&plural, name) {
                Some(object) => ok(200, &object),
                None => not_found(&plural, name),
            },
            ("POST", None) => self.create(&plural, request.body.clone()),
            ("PUT", Some(name)) => self.put(&plural, name, target.status, request),
            ("PATCH", Some(name)) => self.patch(&plural, name, target.status, request),
            ("DELETE", Some(name)) => self.delete(&plural, name, request.body.as_ref()),
            (method, _) => failure(405, &format!("{method} {} is not served", request.path)),
        }
    }

    fn object(&self, plural: &str, name: &str) -> Option<Value> {
        self.objects.get(plural)?.get(name).cloned()
    }

    fn list(&self, plural: &str, request: &Recorded) -> Response<ResponseBody> {
        let selector = match Selector::from_request(request) {
            Ok(selector) => selector,
            Err(message) => return failure(400, &message),
        };
        let after = request.param("continue").unwrap_or("");
        let limit = request
            .param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let matching: Vec<&Value> = self
            .objects
            .get(plural)
            .into_iter()
            .flat_map(|objects| {
                objects.range::<str, _>((
                    if after.is_empty() {
                        std::ops::Bound::Unbounded
                    } else {
                        std::ops::Bound::Excluded(after)
                    },
                    std::ops::Bound::Unbounded,
                ))
            })
            .map(|(_, object)| object)
            .filter(|object| selector.matches(object))
            .collect();
        let items: Vec<Value> = matching.iter().take(limit).map(|o| (*o).clone()).collect();
        let mut metadata = json!({"resourceVersion": self.resource_version.to_string()});
        if matching.len() > limit
            && let Some(last) = items.last()
        {
            metadata["continue"] = last["metadata"]["name"].clone();
        }
        let (api_version, kind) = items
            .first()
            .map(|o| {
                (
                    o["apiVersion"].clone(),
                    json!(format!("{}List", o["kind"].as_str().unwrap_or(""))),
                )
            })
            .unwrap_or((json!("v1"), json!("List")));
        ok(
            200,
            &json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": metadata,
                "items": items,
            }),
        )
    }

    fn watch(&mut self, plural: &str, request: &Recorded) -> Response<ResponseBody> {
        let selector = match Selector::from_request(request) {
            Ok(selector) => selector,
            Err(message) => return failure(400, &message),
        };
        let (events, body) = mpsc::unbounded();
        let since = request
            .param("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv > 0);
        let initial = request.param("sendInitialEvents") == Some("true");
        match since {
            Some(rv) if !initial => {
                for (at, kind, event, object) in &self.history {
                    if *at > rv && kind == plural && selector.matches(object) {
                        let _ = events.unbounded_send(event_line(event, object));
                    }
                }
            }
            _ => {
                for object in self
                    .objects
                    .get(plural)
                    .into_iter()
                    .flat_map(|o| o.values())
                {
                    if selector.matches(object) {
                        let _ = events.unbounded_send(event_line("ADDED", object));
                    }
                }
                if initial {
                    let bookmark = json!({
                        "metadata": {
                            "resourceVersion": self.resource_version.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        }
                    });
                    let _ = events.unbounded_send(event_line("BOOKMARK", &bookmark));
                }
            }
        }
        self.watchers.push(Watcher {
            plural: plural.to_owned(),
            selector,
            events,
        });
        let stream = body.map(|line| Ok::<_, Infallible>(Frame::data(line)));
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("static response parts")
    }

    fn create(&mut self, plural: &str, body: Option<Value>) -> Response<ResponseBody> {
        let Some(mut object) = body.filter(Value::is_object) else {
            return failure(400, "the body must be an object");
        };
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
            return failure(422, "metadata.name is required");
        };
        if self.object(plural, &name).is_some() {
            return status(
                409,
                "AlreadyExists",
                &format!("{plural} {name:?} already exists"),
            );
        }
        // The status subresource: a create never sets status.
        if let Some(fields) = object.as_object_mut() {
            fields.remove("status");
        }
        self.admit(&mut object);
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("deletionTimestamp");
        }
        self.store(plural, &name, object, "ADDED");
        ok(201, &self.objects[plural][&name])
    }

    fn put(
        &mut self,
        plural: &str,
        name: &str,
        status_only: bool,
        request: &Recorded,
    ) -> Response<ResponseBody> {
        let Some(old) = self.object(plural, name) else {
            return not_found(plural, name);
        };
        let Some(body) = request.body.clone().filter(Value::is_object) else {
            return failure(400, "the body must be an object");
        };
        if let Some(conflict) = stale(&old, &body) {
            return conflict;
        }
        self.write(plural, name, old, body, status_only)
    }

    fn patch(
        &mut self,
        plural: &str,
        name: &str,
        status_only: bool,
        request: &Recorded,
    ) -> Response<ResponseBody> {
        let Some(body) = request.body.clone() else {
            return failure(400, "a patch needs a body");
        };
        let content_type = request.content_type.as_deref().unwrap_or("");
        let existing = self.object(plural, name);
        let apply = content_type == "application/apply-patch+yaml";
        let old = match existing {
            Some(old) => old,
            // Server-side apply creates what does not exist.
            None if apply && !status_only => {
                let mut object = body.clone();
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), json!(name));
                }
                return self.create(plural, Some(object));
            }
            None => return not_found(plural, name),
        };
        let mut new = old.clone();
        match content_type {
            "application/merge-patch+json" | "application/apply-patch+yaml" => {
                if let Some(conflict) = stale(&old, &body) {
                    return conflict;
                }
                json_patch::merge(&mut new, &body);
            }
            "application/json-patch+json" => {
                let operations: json_patch::Patch = match serde_json::from_value(body) {
                    Ok(operations) => operations,
                    Err(e) => return failure(400, &format!("not a JSON patch: {e}")),
                };
                if let Err(e) = json_patch::patch(&mut new, &operations) {
                    return status(422, "Invalid", &format!("JSON patch failed: {e}"));
                }
            }
            other => {
                return failure(415, &format!("content type {other:?} is not supported"));
            }
        }
        self.write(plural, name, old, new, status_only)
    }

    /// Stores `new` in place of `old` with the subresource rules of a write.
    fn write(
        &mut self,
        plural: &str,
        name: &str,
        old: Value,
        mut new: Value,
        status_only: bool,
    ) -> Response<ResponseBody> {
        if status_only {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(status) => new["status"] = status,
                None => {
                    if let Some(fields) = new.as_object_mut() {
                        fields.remove("status");
                    }
                }
            }
        } else {
            match old.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Some(fields) = new.as_object_mut() {
                        fields.remove("status");
                    }
                }
            }
            // Fields the server owns.
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
            ] {
                match old["metadata"].get(field) {
                    Some(value) => new["metadata"][field] = value.clone(),
                    None => {
                        if let Some(meta) = new["metadata"].as_object_mut() {
                            meta.remove(field);
                        }
                    }
                }
            }
            if new.get("spec") != old.get("spec") {
                bump_generation(&mut new);
            }
        }
        let stored = self.replace(plural, name, new);
        ok(200, &stored)
    }

    fn delete(
        &mut self,
        plural: &str,
        name: &str,
        options: Option<&Value>,
    ) -> Response<ResponseBody> {
        let Some(old) = self.object(plural, name) else {
            return not_found(plural, name);
        };
        if let Some(preconditions) = options.and_then(|o| o.get("preconditions")) {
            for field in ["uid", "resourceVersion"] {
                if let Some(wanted) = preconditions.get(field).filter(|v| !v.is_null())
                    && old["metadata"].get(field) != Some(wanted)
                {
                    return status(
                        409,
                        "Conflict",
                        &format!(
                            "Precondition failed: {field}: {wanted}, object has {}",
                            old["metadata"][field]
                        ),
                    );
                }
            }
        }
        let finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            let mut new = old.clone();
            if new["metadata"].get("deletionTimestamp").is_none() {
                new["metadata"]["deletionTimestamp"] = json!(CREATED);
            }
            let stored = self.replace(plural, name, new);
            return ok(200, &stored);
        }
        if let Some(objects) = self.objects.get_mut(plural) {
            objects.remove(name);
        }
        self.resource_version += 1;
        let mut gone = old;
        gone["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.emit(plural, "DELETED", gone);
        ok(
            200,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": plural},
            }),
        )
    }

    /// The metadata the server sets on a new object.
    fn admit(&mut self, object: &mut Value) {
        self.uids += 1;
        let uid = format!("uid-{}", self.uids);
        let meta = ensure_object(object, "metadata");
        meta.insert("uid".into(), json!(uid));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(CREATED));
    }

    /// Stores a changed object, completing a deletion whose finalizers are gone.
    fn replace(&mut self, plural: &str, name: &str, mut new: Value) -> Value {
        let deleting = new["metadata"].get("deletionTimestamp").is_some();
        let finalized = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if deleting && finalized {
            if let Some(objects) = self.objects.get_mut(plural) {
                objects.remove(name);
            }
            self.resource_version += 1;
            new["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
            self.emit(plural, "DELETED", new.clone());
            return new;
        }
        self.store(plural, name, new, "MODIFIED");
        self.objects[plural][name].clone()
    }

    fn store(&mut self, plural: &str, name: &str, mut object: Value, event: &'static str) {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.objects
            .entry(plural.to_owned())
            .or_default()
            .insert(name.to_owned(), object.clone());
        self.emit(plural, event, object);
    }

    fn emit(&mut self, plural: &str, event: &'static str, object: Value) {
        self.watchers.retain(|w| {
            if w.plural != plural || !w.selector.matches(&object) {
                return !w.events.is_closed();
            }
            w.events.unbounded_send(event_line(event, &object)).is_ok()
        });
        self.history
            .push((self.resource_version, plural.to_owned(), event, object));
    }
}

fn ensure_object<'a>(value: &'a mut Value, field: &str) -> &'a mut serde_json::Map<String, Value> {
    if !value[field].is_object() {
        value[field] = json!({});
    }
    value[field].as_object_mut().expect("just made an object")
}

fn bump_generation(object: &mut Value) {
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
    object["metadata"]["generation"] = json!(generation + 1);
}

/// A write naming a resourceVersion other than the stored one loses.
fn stale(old: &Value, body: &Value) -> Option<Response<ResponseBody>> {
    let wanted = body["metadata"].get("resourceVersion")?.as_str()?;
    let current = old["metadata"]["resourceVersion"].as_str()?;
    (wanted != current).then(|| {
        status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    })
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event, "object": object}))
        .expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn ok(code: u16, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(
                serde_json::to_vec(body).expect("JSON values serialize"),
            ))
            .boxed_unsync(),
        )
        .expect("valid status code")
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

fn failure(code: u16, message: &str) -> Response<ResponseBody> {
    status(code, reason(code), message)
}

fn not_found(plural: &str, name: &str) -> Response<ResponseBody> {
    status(404, "NotFound", &format!("{plural} {name:?} not found"))
}

fn status(code: u16, reason: &str, message: &str) -> Response<ResponseBody> {
    ok(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

/// Label and field selectors (fields: `metadata.name` only).
#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<Requirement>,
    names: Vec<(bool, String)>,
}

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn from_request(request: &Recorded) -> Result<Self, String> {
        let mut selector = Self::default();
        for term in split_terms(request.param("labelSelector").unwrap_or("")) {
            selector.labels.push(Requirement::parse(&term)?);
        }
        for term in split_terms(request.param("fieldSelector").unwrap_or("")) {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("field selector {term:?} is not key=value"));
            };
            if key.trim() != "metadata.name" {
                return Err(format!("field {key:?} is not supported"));
            }
            selector.names.push((equal, value.trim().to_owned()));
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let name = object["metadata"]["name"].as_str().unwrap_or("");
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.names
            .iter()
            .all(|(equal, wanted)| (name == wanted) == *equal)
            && self.labels.iter().all(|r| match r {
                Requirement::Equals(k, v) => label(k) == Some(v),
                Requirement::NotEquals(k, v) => label(k) != Some(v),
                Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
                Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
                Requirement::Exists(k) => label(k).is_some(),
                Requirement::Absent(k) => label(k).is_none(),
            })
    }
}

impl Requirement {
    fn parse(term: &str) -> Result<Self, String> {
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("label selector {term:?}: expected (values)"))?;
            Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
        };
        if let Some((key, values)) = term.split_once(" notin ") {
            return Ok(Self::NotIn(key.trim().to_owned(), set(values)?));
        }
        if let Some((key, values)) = term.split_once(" in ") {
            return Ok(Self::In(key.trim().to_owned(), set(values)?));
        }
        if let Some((key, value)) = term.split_once("!=") {
            return Ok(Self::NotEquals(
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            return Ok(Self::Equals(key.trim().to_owned(), value.trim().to_owned()));
        }
        match term.trim().strip_prefix('!') {
            Some(key) => Ok(Self::Absent(key.trim().to_owned())),
            None => Ok(Self::Exists(term.trim().to_owned())),
        }
    }
}

/// Comma-separated terms, keeping the commas inside `in (a,b)` sets.
fn split_terms(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0_u32;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms.retain(|t| !t.trim().is_empty());
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_split_sets_and_match_labels_and_names() {
        let request = Recorded {
            method: "GET".into(),
            path: "/apis/g/v/things".into(),
            query: vec![
                ("labelSelector".into(), "a=1,b in (x,y),!c".into()),
                ("fieldSelector".into(), "metadata.name=one".into()),
            ],
            content_type: None,
            body: None,
        };
        let selector = Selector::from_request(&request).unwrap();
        let object =
            |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        assert!(selector.matches(&object("one", json!({"a": "1", "b": "y"}))));
        assert!(!selector.matches(&object("two", json!({"a": "1", "b": "y"}))));
        assert!(!selector.matches(&object("one", json!({"a": "1", "b": "z"}))));
        assert!(!selector.matches(&object("one", json!({"a": "1", "b": "x", "c": ""}))));
    }
}
