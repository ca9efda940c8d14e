//! HTTP: maps Kubernetes API paths, verbs and content types onto the store.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode, header, request::Parts};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span};

use crate::{
    error::{ApiError, Reason},
    fault::{Faults, Pauses, Races, WatchInfo},
    listener::Power,
    log::{Recorded, RequestLog, query_pairs},
    selector::Selector,
    store::{Preconditions, ResourceKey, Scope, Store, object_id, presented},
    watch::{self as watching, WatchContext, WatchCounters, WatchSpec},
    writes::Verb,
};

/// API groups of built-in Kubernetes kinds (which accept strategic merge patches).
const BUILT_IN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "coordination.k8s.io",
    "events.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
];

/// Request bodies larger than this are refused (the real server's limit is 3 MiB per object).
const MAX_BODY: usize = 8 << 20;

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct App {
    pub store: Arc<Store>,
    pub faults: Faults,
    pub pauses: Pauses,
    pub shutdown: watch::Receiver<bool>,
    /// Restarts: a watch streaming when the server goes down is cut.
    pub power: watch::Receiver<Power>,
    pub watches: Arc<WatchCounters>,
    pub bookmark_interval: Duration,
    pub log: RequestLog,
    pub races: Races,
    /// Groups served only for the resources a stored CustomResourceDefinition defines.
    pub crd_groups: Mutex<BTreeSet<String>>,
}

impl App {
    /// Whether `key` is served: always, unless its group is one of `crd_groups` and no
    /// stored CRD defines it (the real server answers 404 for a resource it does not know).
    fn serves(&self, key: &ResourceKey) -> bool {
        let gated = self
            .crd_groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&key.group);
        !gated
            || self
                .store
                .list(&crd_key(), &Selector::default())
                .items
                .iter()
                .any(|crd| {
                    crd.pointer("/spec/group").and_then(Value::as_str) == Some(&key.group)
                        && crd.pointer("/spec/names/plural").and_then(Value::as_str)
                            == Some(&key.plural)
                })
    }
}

/// The resource and store id of the object an object path names
/// (`/apis/apps/v1/namespaces/ns/statefulsets/x` → apps statefulsets, `ns/x`).
pub(crate) fn object_at(path: &str) -> Option<(ResourceKey, Option<String>, String)> {
    match Target::parse(path)? {
        Target::Object(r, name) => {
            let id = r.id(&name);
            Some((r.key, r.namespace, id))
        }
        _ => None,
    }
}

/// The resource a collection path names (`/api/v1/namespaces/ns/pods` → core pods).
pub(crate) fn collection_at(path: &str) -> Option<ResourceKey> {
    match Target::parse(path)? {
        Target::Collection(r) => Some(r.key),
        _ => None,
    }
}

pub(crate) fn crd_key() -> ResourceKey {
    ResourceKey {
        group: "apiextensions.k8s.io".into(),
        plural: "customresourcedefinitions".into(),
    }
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

/// What a path names.
#[derive(Debug)]
enum Target {
    Version,
    /// `/apis/{group}/{version}`: which resources of the group version are served.
    Discovery {
        group: String,
        version: String,
    },
    Collection(Resource),
    Object(Resource, String),
    Status(Resource, String),
}

#[derive(Debug)]
struct Resource {
    key: ResourceKey,
    /// `group/version` as the request spelled it (`v1` for the core group).
    api_version: String,
    /// The namespace the path names, for namespaced resources.
    namespace: Option<String>,
}

impl Resource {
    /// The store's key of the object `name` of this resource.
    fn id(&self, name: &str) -> String {
        object_id(self.namespace.as_deref(), name)
    }

    /// The request's selectors, limited to the path's namespace.
    fn selector(&self, query: &Query) -> Result<Selector, ApiError> {
        let fields = match (&self.namespace, query.get("fieldSelector")) {
            (Some(ns), Some(given)) if !given.is_empty() => {
                Some(format!("metadata.namespace={ns},{given}"))
            }
            (Some(ns), _) => Some(format!("metadata.namespace={ns}")),
            (None, given) => given.map(str::to_owned),
        };
        Selector::parse(query.get("labelSelector"), fields.as_deref())
    }
}

impl Target {
    fn resource(&self) -> Option<&Resource> {
        match self {
            Target::Collection(r) | Target::Object(r, _) | Target::Status(r, _) => Some(r),
            Target::Version | Target::Discovery { .. } => None,
        }
    }

    fn parse(path: &str) -> Option<Target> {
        if path == "/version" || path == "/version/" {
            return Some(Target::Version);
        }
        // The core group lives under `/api/v1`, every other group under `/apis/{group}`.
        let (group, rest) = if let Some(rest) = path.strip_prefix("/api/") {
            ("", rest)
        } else {
            let rest = path.strip_prefix("/apis/")?;
            rest.split_once('/')
                .unwrap_or((rest.trim_end_matches('/'), ""))
        };
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if group.is_empty() && path.starts_with("/apis/") {
            return None;
        }
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let (version, segments) = segments.split_first()?;
        let (namespace, segments) = match segments {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            _ => (None, segments),
        };
        let resource = |plural: &str| Resource {
            key: ResourceKey {
                group: group.to_owned(),
                plural: plural.to_owned(),
            },
            api_version: if group.is_empty() {
                (*version).to_owned()
            } else {
                format!("{group}/{version}")
            },
            namespace: namespace.clone(),
        };
        match segments {
            [] if namespace.is_none() => Some(Target::Discovery {
                group: group.to_owned(),
                version: (*version).to_owned(),
            }),
            [plural] => Some(Target::Collection(resource(plural))),
            [plural, name] => Some(Target::Object(resource(plural), (*name).to_owned())),
            [plural, name, "status"] => Some(Target::Status(resource(plural), (*name).to_owned())),
            _ => None,
        }
    }
}

/// The decoded query string.
#[derive(Debug, Default)]
struct Query(HashMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    /// Refuses what the stub does not implement rather than silently doing something else.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.get("dryRun").is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request(
                "dryRun is not supported by plinth-apistub",
            ));
        }
        if self.get("resourceVersionMatch") == Some("Exact") {
            return Err(ApiError::bad_request(
                "resourceVersionMatch=Exact is not supported by plinth-apistub",
            ));
        }
        Ok(())
    }
}

async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let span = info_span!("request", method = %parts.method, path = %parts.uri.path());
    async move {
        let bytes = match body_bytes(body).await {
            Ok(bytes) => bytes,
            Err(error) => return error.into_response(),
        };
        if let Some(race) = app.races.take(&parts.method, parts.uri.path())
            && let Some((key, namespace, _)) = object_at(&race.object_path)
            && let Err(error) = app.store.seed(&key, namespace.as_deref(), race.object)
        {
            // The test's own object was refused: say so in the answer it will look at.
            return ApiError::internal(format!("the racing object was refused: {error}"))
                .into_response();
        }
        let response =
            if let Some((status, message)) = app.faults.take(&parts.method, parts.uri.path()) {
                debug!(%status, "answering with an injected fault");
                ApiError::new(
                    status,
                    Reason::for_code(status),
                    message.unwrap_or_else(|| format!("injected fault: {status}")),
                )
                .into_response()
            } else {
                match serve(&app, &parts, Body::from(bytes.clone())).await {
                    Ok(response) => response,
                    Err(error) => {
                        debug!(%error, "request refused");
                        error.into_response()
                    }
                }
            };
        // Logged once answered, so a test that saw the request also sees its effect.
        app.log.push(Recorded {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: query_pairs(parts.uri.query()),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&bytes).ok(),
        });
        response
    }
    .instrument(span)
    .await
}

async fn serve(app: &App, parts: &Parts, body: Body) -> Result<Response, ApiError> {
    let path = parts.uri.path();
    let query = Query::parse(parts.uri.query());
    let target = Target::parse(path).ok_or_else(|| ApiError::no_route(path))?;
    if target.resource().is_some_and(|r| !app.serves(&r.key)) {
        return Err(ApiError::no_route(path));
    }
    query.refuse_unsupported()?;
    let store = &app.store;
    match (&parts.method, target) {
        (&Method::GET, Target::Version) => Ok(version()),
        (&Method::GET, Target::Discovery { group, version }) => {
            discovery(store, &group, &version).map(|list| json_response(StatusCode::OK, &list))
        }
        (&Method::GET, Target::Collection(r)) if query.flag("watch") => {
            watch(app, parts, &query, r)
        }
        (&Method::GET, Target::Collection(r)) => {
            let selector = r.selector(&query)?;
            // resourceVersion "0" is the "Any" semantic: a real server answers it from its
            // watch cache, which may lag.
            let listing = if query.get("resourceVersion") == Some("0") {
                store.list_any(&r.key, &selector)
            } else {
                store.list(&r.key, &selector)
            };
            let rv = listing.resource_version.to_string();
            // `kube::Api::list_metadata` asks for the metadata only.
            let list = if wants_metadata_only(parts) {
                json!({
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": rv},
                    "items": listing.items.iter().map(|o| json!({
                        "apiVersion": "meta.k8s.io/v1",
                        "kind": "PartialObjectMetadata",
                        "metadata": o.get("metadata"),
                    })).collect::<Vec<_>>(),
                })
            } else {
                json!({
                    "apiVersion": r.api_version,
                    "kind": format!("{}List", store.kind_of(&r.key)),
                    "metadata": {"resourceVersion": rv},
                    "items": listing.items.iter().map(|o| presented(o, &r.api_version)).collect::<Vec<_>>(),
                })
            };
            Ok(json_response(StatusCode::OK, &list))
        }
        (&Method::POST, Target::Collection(r)) => {
            store.record_write(Verb::Create, &r.key.plural, false);
            let object = json_body(parts, body).await?;
            let created = store.create(&r.key, r.namespace.as_deref(), object)?;
            Ok(json_response(
                StatusCode::CREATED,
                &presented(&created, &r.api_version),
            ))
        }
        (&Method::GET, Target::Object(r, name) | Target::Status(r, name)) => Ok(json_response(
            StatusCode::OK,
            &presented(&*store.get(&r.key, &r.id(&name))?, &r.api_version),
        )),
        (&Method::PUT, Target::Object(r, name)) => {
            replace(app, parts, body, r, &name, Scope::Main).await
        }
        (&Method::PUT, Target::Status(r, name)) => {
            replace(app, parts, body, r, &name, Scope::Status).await
        }
        (&Method::PATCH, Target::Object(r, name)) => {
            patch(app, parts, &query, body, r, &name, Scope::Main).await
        }
        (&Method::PATCH, Target::Status(r, name)) => {
            patch(app, parts, &query, body, r, &name, Scope::Status).await
        }
        (&Method::DELETE, Target::Object(r, name)) => {
            store.record_write(Verb::Delete, &r.key.plural, false);
            let preconditions = delete_options(&body_bytes(body).await?)?;
            let deleted = store.delete(&r.key, &r.id(&name), &preconditions)?;
            Ok(json_response(
                StatusCode::OK,
                &presented(&deleted, &r.api_version),
            ))
        }
        (method, _) => Err(ApiError::method_not_allowed(method)),
    }
}

fn watch(app: &App, parts: &Parts, query: &Query, r: Resource) -> Result<Response, ApiError> {
    let selector = r.selector(query)?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let start = watching::start_from_query(
        query.get("resourceVersion"),
        query.get("sendInitialEvents"),
        bookmarks,
        query.get("resourceVersionMatch"),
    )?;
    let timeout = query
        .get("timeoutSeconds")
        .map(|t| t.parse::<u64>().map(Duration::from_secs))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid timeoutSeconds: {e}")))?;
    let info = WatchInfo {
        group: r.key.group.clone(),
        plural: r.key.plural.clone(),
        label_selector: query.get("labelSelector").map(str::to_owned),
        field_selector: query.get("fieldSelector").map(str::to_owned),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let ctx = WatchContext {
        store: app.store.clone(),
        pauses: app.pauses.subscribe(),
        shutdown: app.shutdown.clone(),
        power: app.power.clone(),
        counters: app.watches.clone(),
        bookmark_interval: app.bookmark_interval,
    };
    let spec = WatchSpec {
        key: r.key,
        api_version: r.api_version,
        selector,
        start,
        timeout,
        bookmarks,
        info,
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        watching::stream(ctx, spec),
    )
        .into_response())
}

async fn replace(
    app: &App,
    parts: &Parts,
    body: Body,
    r: Resource,
    name: &str,
    scope: Scope,
) -> Result<Response, ApiError> {
    app.store
        .record_write(Verb::Update, &r.key.plural, scope == Scope::Status);
    let object = json_body(parts, body).await?;
    // Custom resources do not allow unconditional updates.
    if object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::invalid(
            &r.key.to_string(),
            name,
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
        ));
    }
    let id = r.id(name);
    let updated = app.store.update(&r.key, &id, scope, |_| Ok(object))?;
    Ok(json_response(
        StatusCode::OK,
        &presented(&updated, &r.api_version),
    ))
}

async fn patch(
    app: &App,
    parts: &Parts,
    query: &Query,
    body: Body,
    r: Resource,
    name: &str,
    scope: Scope,
) -> Result<Response, ApiError> {
    app.store
        .record_write(Verb::Patch, &r.key.plural, scope == Scope::Status);
    let content_type = media_type(parts);
    let bytes = body_bytes(body).await?;
    let resource = r.key.to_string();
    let id = r.id(name);
    let name = id.as_str();
    let updated = match content_type.as_str() {
        "application/merge-patch+json" => {
            let patch = parse_json(&bytes)?;
            app.store.update(&r.key, name, scope, |current| {
                let mut next = current.clone();
                json_patch::merge(&mut next, &patch);
                Ok(next)
            })?
        }
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            app.store.update(&r.key, name, scope, |current| {
                let mut next = current.clone();
                json_patch::patch(&mut next, &patch.0)
                    .map_err(|e| ApiError::invalid(&resource, name, e))?;
                Ok(next)
            })?
        }
        "application/apply-patch+yaml" => {
            let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                return Err(ApiError::bad_request(
                    "PATCH requests with application/apply-patch+yaml require fieldManager",
                ));
            };
            if let Some(force) = query.get("force")
                && !matches!(force, "true" | "false")
            {
                return Err(ApiError::bad_request(format!(
                    "invalid force value: {force:?}"
                )));
            }
            app.store
                .apply(&r.key, name, scope, manager, &parse_json_or_yaml(&bytes)?)?
        }
        // Built-in kinds take strategic merge patches (kube-lease-manager sends them for
        // Leases); without their schemas it is approximated as a merge patch (lists are
        // replaced, not merged by key). Custom resources have no strategic-merge schema;
        // the real server answers 415 for them too.
        "application/strategic-merge-patch+json"
            if BUILT_IN_GROUPS.contains(&r.key.group.as_str()) =>
        {
            let patch = parse_json(&bytes)?;
            app.store.update(&r.key, name, scope, |current| {
                let mut next = current.clone();
                json_patch::merge(&mut next, &patch);
                Ok(next)
            })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(json_response(
        StatusCode::OK,
        &presented(&updated, &r.api_version),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    preconditions: Option<PreconditionsBody>,
    propagation_policy: Option<String>,
    #[serde(default)]
    dry_run: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreconditionsBody {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(bytes: &Bytes) -> Result<Preconditions, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let options: DeleteOptions = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
    if !options.dry_run.is_empty() {
        return Err(ApiError::bad_request(
            "dryRun is not supported by plinth-apistub",
        ));
    }
    // Foreground and Orphan need a garbage collector, which the stub does not run.
    if let Some(policy) = options.propagation_policy.filter(|p| p != "Background") {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {policy} is not supported by plinth-apistub"
        )));
    }
    let pre = options.preconditions.unwrap_or_default();
    Ok(Preconditions {
        uid: pre.uid,
        resource_version: pre.resource_version,
    })
}

fn wants_metadata_only(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadataList"))
}

fn media_type(parts: &Parts) -> String {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn body_bytes(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))
}

/// A POST or PUT body: JSON only (YAML or protobuf bodies are 415).
async fn json_body(parts: &Parts, body: Body) -> Result<Value, ApiError> {
    let content_type = media_type(parts);
    if !content_type.is_empty() && content_type != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (got {content_type:?})"
            ),
        ));
    }
    parse_json(&body_bytes(body).await?)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Apply configurations are YAML on the wire; kube sends JSON, which is also YAML.
fn parse_json_or_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request(format!("the apply configuration is not UTF-8: {e}")))?;
    serde_saphyr::from_str(text).map_err(|e| {
        ApiError::bad_request(format!(
            "the apply configuration is neither JSON nor YAML: {e}"
        ))
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Discovery of a group version: the resources the stored CustomResourceDefinitions
/// serve in it (the stub serves any path, but clients ask discovery whether an optional
/// API is installed); 404 when none does, as for a group the real server does not know.
fn discovery(store: &Store, group: &str, version: &str) -> Result<Value, ApiError> {
    let resources: Vec<Value> = store
        .list(&crd_key(), &Selector::default())
        .items
        .iter()
        .filter(|crd| crd.pointer("/spec/group").and_then(Value::as_str) == Some(group))
        .filter(|crd| {
            crd.pointer("/spec/versions")
                .and_then(Value::as_array)
                .is_some_and(|versions| {
                    versions.iter().any(|v| {
                        v.get("name").and_then(Value::as_str) == Some(version)
                            && v.get("served").and_then(Value::as_bool) != Some(false)
                    })
                })
        })
        .map(|crd| {
            let names = crd.pointer("/spec/names");
            let text = |field: &str| {
                names
                    .and_then(|n| n.get(field))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            json!({
                "name": text("plural"),
                "singularName": text("singular"),
                "namespaced": crd.pointer("/spec/scope").and_then(Value::as_str) == Some("Namespaced"),
                "kind": text("kind"),
                "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        return Err(ApiError::no_route(&format!("/apis/{group}/{version}")));
    }
    Ok(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"),
        "resources": resources,
    }))
}

fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "34",
            "gitVersion": "v1.34.0-plinth-apistub",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-08-27T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(matches!(Target::parse("/version"), Some(Target::Version)));
        let Some(Target::Collection(r)) = Target::parse("/apis/plinth.dev/v1alpha1/poolvolumes")
        else {
            panic!()
        };
        assert_eq!(
            (
                r.key.group.as_str(),
                r.key.plural.as_str(),
                r.api_version.as_str()
            ),
            ("plinth.dev", "poolvolumes", "plinth.dev/v1alpha1")
        );
        assert!(
            matches!(Target::parse("/apis/plinth.dev/v1alpha1/poolvolumes/a"), Some(Target::Object(_, n)) if n == "a")
        );
        assert!(
            matches!(Target::parse("/apis/plinth.dev/v1alpha1/poolvolumes/a/status"), Some(Target::Status(_, n)) if n == "a")
        );
        let Some(Target::Object(r, name)) =
            Target::parse("/apis/apps/v1/namespaces/kube-system/statefulsets/csi")
        else {
            panic!()
        };
        assert_eq!(
            (r.namespace.as_deref(), r.id(&name), r.api_version.as_str()),
            (Some("kube-system"), "kube-system/csi".to_owned(), "apps/v1")
        );
        let Some(Target::Collection(r)) = Target::parse("/api/v1/namespaces/a/serviceaccounts")
        else {
            panic!()
        };
        assert_eq!(
            (
                r.key.group.as_str(),
                r.api_version.as_str(),
                r.namespace.as_deref()
            ),
            ("", "v1", Some("a"))
        );
        assert!(
            matches!(Target::parse("/api/v1/persistentvolumes"), Some(Target::Collection(r)) if r.namespace.is_none())
        );
        assert!(
            matches!(Target::parse("/apis/snapshot.storage.k8s.io/v1"), Some(Target::Discovery { group, version }) if group == "snapshot.storage.k8s.io" && version == "v1")
        );
        for unserved in [
            "/apis",
            "/apis//v1/p",
            "/apis/g/v/ns/x/plural",
            "/apis/g//p",
            "/apis/g/v/p/a/scale",
        ] {
            assert!(Target::parse(unserved).is_none(), "{unserved}");
        }
    }

    #[test]
    fn delete_options_parse() {
        assert!(delete_options(&Bytes::new()).unwrap().uid.is_none());
        let pre = delete_options(&Bytes::from_static(
            br#"{"preconditions":{"uid":"u","resourceVersion":"7"}}"#,
        ))
        .unwrap();
        assert_eq!(
            (pre.uid.as_deref(), pre.resource_version.as_deref()),
            (Some("u"), Some("7"))
        );
        assert!(delete_options(&Bytes::from_static(b"{not json")).is_err());
        assert!(
            delete_options(&Bytes::from_static(
                br#"{"propagationPolicy":"Foreground"}"#
            ))
            .is_err()
        );
    }
}
