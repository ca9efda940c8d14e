//! A fake API server behind kube's `Client`, for reconcile scenarios.
//!
//! It sits on a `tower_test::mock` pair, so the real `kube::Client` builds every request
//! (paths, query strings, content types, bodies) exactly as it would against a cluster.
//! The fake keeps objects in memory, answers list/get/apply/delete/patch/status like the
//! API server would for a single field manager, records every request in order, and
//! checks the invariants of our writes as they arrive: every server-side apply carries
//! `fieldManager=plinth-operator` and `force=true` with the apply-patch content type.
//! Tests then assert on the ordered request log and on the stored objects.
//!
//! Its server-side apply is the single-manager approximation: fields we applied before
//! and left out now are removed, everything we send is merged in, lists are replaced.
//! Immutable fields are enforced with render's own `ManagedKind::immutable_fields_changed`
//! and answered with the API server's 422 wording.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use plinth_operator::render::ManagedKind;
use serde_json::{Value, json};
use tower_test::mock;

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Req {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    pub fn is_apply(&self) -> bool {
        self.method == Method::PATCH
            && self.content_type.as_deref() == Some("application/apply-patch+yaml")
    }

    /// `PATCH <path>` / `DELETE <path>` / ..., for readable assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Where a collection lives: `/api/v1` or `/apis/<group>/<version>`, the namespace (if
/// any) and the plural.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Collection {
    prefix: String,
    namespace: Option<String>,
    plural: String,
}

#[derive(Debug)]
struct Parsed {
    collection: Collection,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Parsed> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (format!("/api/{}", parts.get(1)?), &parts[2..]),
        "apis" => (
            format!("/apis/{}/{}", parts.get(1)?, parts.get(2)?),
            parts.get(3..)?,
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Parsed {
        collection: Collection {
            prefix,
            namespace,
            plural: (*rest.first()?).to_owned(),
        },
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

#[derive(Default)]
struct Stored {
    object: Value,
    /// What our field manager applied last (main resource), for SSA field removal.
    applied: Option<Value>,
    applied_status: Option<Value>,
}

/// An injected failure: the next matching request gets this answer instead.
struct Fault {
    method: Method,
    path_contains: String,
    status: u16,
    message: String,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<(Collection, String), Stored>,
    log: Vec<Req>,
    violations: Vec<String>,
    next_rv: u64,
    snapshot_crds: bool,
    faults: Vec<Fault>,
}

/// Handle on the fake: inspect and arrange its state from the test.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

pub const FIELD_MANAGER: &str = "plinth-operator";

impl FakeApi {
    /// Starts the fake and returns it with a client talking to it.
    pub fn start() -> (Self, Client) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let fake = Self {
            state: Arc::new(Mutex::new(State {
                next_rv: 100,
                ..State::default()
            })),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let response = server.handle(parts, &bytes);
                send.send_response(response);
            }
        });
        (fake, Client::new(service, "default"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn set_snapshot_crds(&self, present: bool) {
        self.lock().snapshot_crds = present;
    }

    /// The next request whose method matches and whose path contains `path_contains` is
    /// answered with `status` and a Status carrying `message`.
    pub fn fail_next(&self, method: Method, path_contains: &str, status: u16, message: &str) {
        self.lock().faults.push(Fault {
            method,
            path_contains: path_contains.to_owned(),
            status,
            message: message.to_owned(),
        });
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<Req> {
        self.lock().log.clone()
    }

    /// Forgets the request log (objects stay).
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Requests that broke our write rules; tests assert this is empty.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Puts an object in place as if someone created it.
    pub fn insert(&self, path: &str, object: Value) {
        let parsed = parse_path(path).expect("object path");
        let name = parsed.name.expect("object path names the object");
        let mut state = self.lock();
        let mut object = object;
        stamp_new(&mut object, &mut state.next_rv);
        state.objects.insert(
            (parsed.collection, name),
            Stored {
                object,
                ..Stored::default()
            },
        );
    }

    /// The stored object at `path` (e.g. `/apis/apps/v1/namespaces/ns/statefulsets/x`).
    pub fn get(&self, path: &str) -> Option<Value> {
        let parsed = parse_path(path)?;
        let state = self.lock();
        state
            .objects
            .get(&(parsed.collection, parsed.name?))
            .map(|s| s.object.clone())
    }

    /// Changes a stored object the way another client would (bumps resourceVersion and,
    /// for spec changes, generation).
    pub fn modify(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let parsed = parse_path(path).expect("object path");
        let mut state = self.lock();
        let rv = next_rv(&mut state.next_rv);
        let stored = state
            .objects
            .get_mut(&(parsed.collection, parsed.name.expect("name")))
            .expect("object exists");
        let before = stored.object.clone();
        f(&mut stored.object);
        bump(&before, &mut stored.object, &rv);
    }

    /// Number of stored objects under a collection path such as `/apis/apps/v1/statefulsets`
    /// (all namespaces).
    pub fn count(&self, prefix: &str, plural: &str) -> usize {
        self.lock()
            .objects
            .keys()
            .filter(|(c, _)| c.prefix == prefix && c.plural == plural)
            .count()
    }

    /// Every stored object's path, for diagnostics.
    pub fn paths(&self) -> Vec<String> {
        self.lock()
            .objects
            .keys()
            .map(|(c, name)| match &c.namespace {
                Some(ns) => format!("{}/namespaces/{ns}/{}/{name}", c.prefix, c.plural),
                None => format!("{}/{}/{name}", c.prefix, c.plural),
            })
            .collect()
    }

    fn handle(&self, parts: http::request::Parts, bytes: &[u8]) -> Response<Body> {
        let path = parts.uri.path().to_owned();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .map(|q| {
                url_pairs(q)
                    .into_iter()
                    .filter(|(k, _)| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(bytes).ok()
        };
        let req = Req {
            method: parts.method.clone(),
            path: path.clone(),
            query,
            content_type,
            body,
        };
        let mut state = self.lock();
        state.log.push(req.clone());
        check_write_rules(&req, &mut state.violations);
        if let Some(i) = state
            .faults
            .iter()
            .position(|f| f.method == req.method && req.path.contains(&f.path_contains))
        {
            let fault = state.faults.remove(i);
            return status_response(fault.status, &fault.message);
        }
        let (code, value) = serve(
            &mut state,
            &req,
            accept.contains("as=PartialObjectMetadataList"),
        );
        respond(code, &value)
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Our write rules, checked on every request as it arrives.
fn check_write_rules(req: &Req, violations: &mut Vec<String>) {
    if req.method != Method::PATCH {
        return;
    }
    let is_apply = req.is_apply();
    if is_apply {
        if req.query.get("fieldManager").map(String::as_str) != Some(FIELD_MANAGER) {
            violations.push(format!(
                "{}: fieldManager is {:?}",
                req.line(),
                req.query.get("fieldManager")
            ));
        }
        if req.query.get("force").map(String::as_str) != Some("true") {
            violations.push(format!("{}: apply without force=true", req.line()));
        }
    } else if !req.path.contains("/events") && !req.path.contains("csideployments") {
        // Only the finalizer fallback (a guarded merge patch on the CR) and event series
        // may use another patch type.
        violations.push(format!(
            "{}: non-apply patch {:?}",
            req.line(),
            req.content_type
        ));
    }
}

fn respond(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

fn status_json(code: u16, message: &str) -> Value {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        403 => "Forbidden",
        _ => "InternalError",
    };
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn status_response(code: u16, message: &str) -> Response<Body> {
    respond(code, &status_json(code, message))
}

fn next_rv(counter: &mut u64) -> String {
    *counter += 1;
    counter.to_string()
}

fn stamp_new(object: &mut Value, counter: &mut u64) {
    let rv = next_rv(counter);
    let meta = &mut object["metadata"];
    meta["uid"] = json!(format!("uid-{rv}"));
    meta["resourceVersion"] = json!(rv);
    meta["generation"] = json!(1);
    if meta.get("creationTimestamp").is_none() {
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
}

/// Bumps resourceVersion when anything changed and generation when more than metadata
/// and status changed, as the API server does for kinds with a status subresource.
fn bump(before: &Value, after: &mut Value, rv: &str) {
    if before == after {
        return;
    }
    let spec = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("metadata");
            map.remove("status");
        }
        v
    };
    after["metadata"]["resourceVersion"] = json!(rv);
    if spec(before) != spec(after) {
        let generation = before["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        after["metadata"]["generation"] = json!(generation);
    }
}

/// Removes from `target` what `previous` applied and `now` no longer does.
fn drop_released(target: &mut Value, previous: &Value, now: &Value) {
    let (Some(prev), Some(tgt)) = (previous.as_object(), target.as_object_mut()) else {
        return;
    };
    for (key, prev_value) in prev {
        match now.get(key) {
            None => {
                tgt.remove(key);
            }
            Some(now_value) => {
                if let Some(t) = tgt.get_mut(key) {
                    drop_released(t, prev_value, now_value);
                }
            }
        }
    }
}

/// JSON merge: objects merge key by key, everything else (lists too) is replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn kind_of(collection: &Collection) -> Option<ManagedKind> {
    ManagedKind::ALL.iter().copied().find(|k| {
        let r = k.api_resource();
        r.plural == collection.plural
            && collection.prefix
                == if r.group.is_empty() {
                    format!("/api/{}", r.version)
                } else {
                    format!("/apis/{}/{}", r.group, r.version)
                }
    })
}

fn label_matches(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v),
            None => labels.get(term).is_some(),
        })
}

const SNAPSHOT_PREFIX: &str = "/apis/snapshot.storage.k8s.io/v1";

fn serve(state: &mut State, req: &Req, metadata_only: bool) -> (u16, Value) {
    if req.path == SNAPSHOT_PREFIX {
        return if state.snapshot_crds {
            let resources: Vec<Value> = [
                "volumesnapshots",
                "volumesnapshotcontents",
                "volumesnapshotclasses",
            ]
            .iter()
            .map(|n| {
                json!({"name": n, "singularName": "", "namespaced": *n == "volumesnapshots",
                               "kind": "", "verbs": ["get", "list"]})
            })
            .collect();
            (
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1",
                       "groupVersion": "snapshot.storage.k8s.io/v1", "resources": resources}),
            )
        } else {
            (
                404,
                status_json(404, "the server could not find the requested resource"),
            )
        };
    }
    let Some(parsed) = parse_path(&req.path) else {
        return (404, status_json(404, "unknown path"));
    };
    if parsed.collection.prefix == SNAPSHOT_PREFIX && !state.snapshot_crds {
        return (
            404,
            status_json(404, "the server could not find the requested resource"),
        );
    }
    match (&req.method, parsed.name.clone()) {
        (&Method::GET, None) => (200, list(state, &parsed.collection, req, metadata_only)),
        (&Method::GET, Some(name)) => match state.objects.get(&(parsed.collection, name.clone())) {
            Some(s) => (200, s.object.clone()),
            None => (404, status_json(404, &format!("\"{name}\" not found"))),
        },
        (&Method::POST, None) => {
            let mut object = req.body.clone().unwrap_or_default();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("generated")
                .to_owned();
            stamp_new(&mut object, &mut state.next_rv);
            state.objects.insert(
                (parsed.collection, name),
                Stored {
                    object: object.clone(),
                    ..Stored::default()
                },
            );
            (201, object)
        }
        (&Method::PATCH, Some(name)) => patch(state, parsed, name, req),
        (&Method::DELETE, Some(name)) => delete(state, parsed.collection, name, req),
        _ => (405, status_json(405, "method not allowed")),
    }
}

fn list(state: &State, collection: &Collection, req: &Req, metadata_only: bool) -> Value {
    let selector = req.query.get("labelSelector").cloned().unwrap_or_default();
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((c, _), _)| {
            c.prefix == collection.prefix
                && c.plural == collection.plural
                && (collection.namespace.is_none() || c.namespace == collection.namespace)
        })
        .map(|(_, s)| &s.object)
        .filter(|o| label_matches(o, &selector))
        .map(|o| {
            if metadata_only {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
            } else {
                o.clone()
            }
        })
        .collect();
    let kind = if metadata_only {
        "PartialObjectMetadataList"
    } else {
        "List"
    };
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": state.next_rv.to_string()}, "items": items})
}

fn patch(state: &mut State, parsed: Parsed, name: String, req: &Req) -> (u16, Value) {
    let body = req.body.clone().unwrap_or_default();
    let key = (parsed.collection.clone(), name.clone());
    let rv = next_rv(&mut state.next_rv);
    let is_status = parsed.subresource.as_deref() == Some("status");
    let Some(stored) = state.objects.get_mut(&key) else {
        if !req.is_apply() || is_status {
            return (404, status_json(404, &format!("\"{name}\" not found")));
        }
        // Server-side apply creates.
        let mut object = body.clone();
        object["metadata"]["uid"] = json!(format!("uid-{rv}"));
        object["metadata"]["resourceVersion"] = json!(rv);
        object["metadata"]["generation"] = json!(1);
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        state.objects.insert(
            key,
            Stored {
                object: object.clone(),
                applied: Some(body),
                applied_status: None,
            },
        );
        return (201, object);
    };
    let before = stored.object.clone();
    let mut after = before.clone();
    if req.is_apply() {
        let previous = if is_status {
            stored.applied_status.clone()
        } else {
            stored.applied.clone()
        };
        if let Some(previous) = &previous {
            drop_released(&mut after, previous, &body);
        }
        merge(&mut after, &body);
        if !is_status
            && let Some(kind) = kind_of(&parsed.collection)
            && kind.immutable_fields_changed(&before, &body)
        {
            return (
                422,
                status_json(
                    422,
                    &format!(
                        "{} \"{name}\" is invalid: field is immutable",
                        kind.api_resource().kind
                    ),
                ),
            );
        }
    } else {
        // Merge patch; a resourceVersion in it is a precondition.
        if let Some(want) = body["metadata"]["resourceVersion"].as_str()
            && Some(want) != before["metadata"]["resourceVersion"].as_str()
        {
            return (409, status_json(409, "the object has been modified"));
        }
        merge(&mut after, &body);
    }
    if is_status {
        // The status subresource ignores everything but status.
        let status = after["status"].clone();
        after = before.clone();
        after["status"] = status;
    } else if let Some(status) = before.get("status") {
        after["status"] = status.clone();
    }
    // Server-owned metadata stays.
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "generation",
        "resourceVersion",
    ] {
        match before["metadata"].get(field) {
            Some(v) => after["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = after["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    bump(&before, &mut after, &rv);
    if req.is_apply() {
        if is_status {
            stored.applied_status = Some(body);
        } else {
            stored.applied = Some(body);
        }
    }
    let finalizers_left = after["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if after["metadata"].get("deletionTimestamp").is_some() && !finalizers_left {
        state.objects.remove(&key);
        return (200, after);
    }
    stored.object = after.clone();
    (200, after)
}

fn delete(state: &mut State, collection: Collection, name: String, req: &Req) -> (u16, Value) {
    let key = (collection, name.clone());
    let Some(stored) = state.objects.get_mut(&key) else {
        return (404, status_json(404, &format!("\"{name}\" not found")));
    };
    if let Some(uid) = req
        .body
        .as_ref()
        .and_then(|b| b["preconditions"]["uid"].as_str())
        && Some(uid) != stored.object["metadata"]["uid"].as_str()
    {
        return (
            409,
            status_json(
                409,
                "Precondition failed: UID in precondition does not match",
            ),
        );
    }
    let has_finalizers = stored.object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        stored.object["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
        return (200, stored.object.clone());
    }
    let removed = state
        .objects
        .remove(&key)
        .map(|s| s.object)
        .unwrap_or_default();
    (200, removed)
}

/// The REST path of a managed object.
pub fn object_path(kind: ManagedKind, namespace: Option<&str>, name: &str) -> String {
    let r = kind.api_resource();
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    match namespace.filter(|_| kind.namespaced()) {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{}/{name}", r.plural),
        None => format!("{prefix}/{}/{name}", r.plural),
    }
}

pub fn cr_path(name: &str) -> String {
    format!("/apis/plinth.dev/v1alpha1/csideployments/{name}")
}

impl FakeApi {
    /// Removes an object as if someone deleted it (no finalizers involved).
    pub fn remove(&self, path: &str) {
        let parsed = parse_path(path).expect("object path");
        self.lock()
            .objects
            .remove(&(parsed.collection, parsed.name.expect("name")));
    }
}
