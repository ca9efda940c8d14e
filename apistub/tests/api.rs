//! The stub's API semantics, through a real kube client over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    PATH, Widget, WidgetSpec, WidgetStatus, generation, merge, merge_status, rv, start, status_of,
    widget,
};
use http::{Method, StatusCode};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use plinth_apistub::{Fault, Verb};
use serde_json::json;

const MANAGER: &str = "plinth-test";

#[tokio::test]
async fn create_get_and_list_with_selectors() {
    let (stub, api) = start().await;
    let pp = PostParams::default();
    let mut with_status = widget("w1", 1, &[("node", "a"), ("tier", "gold")]);
    with_status.status = Some(WidgetStatus {
        phase: "Ready".into(),
        observed_generation: 1,
    });
    let w1 = api.create(&pp, &with_status).await.unwrap();
    api.create(&pp, &widget("w2", 2, &[("node", "b")]))
        .await
        .unwrap();
    api.create(&pp, &widget("w3", 3, &[("node", "a")]))
        .await
        .unwrap();

    let uid = w1.metadata.uid.as_deref().unwrap();
    assert_eq!(uid.len(), 36, "uid {uid}");
    assert!(w1.metadata.creation_timestamp.is_some());
    assert_eq!(generation(&w1), 1);
    assert_eq!(rv(&w1), 1);
    assert_eq!(
        w1.status, None,
        "status is dropped on create with a status subresource"
    );

    let got = api.get("w1").await.unwrap();
    assert_eq!(got.metadata.uid.as_deref(), Some(uid));
    assert_eq!(
        got.spec,
        WidgetSpec {
            size: 1,
            color: None
        }
    );

    let dup = status_of(api.create(&pp, &widget("w1", 9, &[])).await);
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    let missing = status_of(api.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

    let names = |list: kube::core::ObjectList<Widget>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|w| w.metadata.name.unwrap())
            .collect()
    };
    let by = |labels: &str| ListParams::default().labels(labels);
    assert_eq!(names(api.list(&by("node=a")).await.unwrap()), ["w1", "w3"]);
    assert_eq!(
        names(api.list(&by("node==a,tier=gold")).await.unwrap()),
        ["w1"]
    );
    assert_eq!(names(api.list(&by("node!=a")).await.unwrap()), ["w2"]);
    assert_eq!(names(api.list(&by("tier")).await.unwrap()), ["w1"]);
    assert_eq!(names(api.list(&by("!tier")).await.unwrap()), ["w2", "w3"]);
    assert_eq!(names(api.list(&by("node in (b,c)")).await.unwrap()), ["w2"]);
    let by_name = |f: &str| ListParams::default().fields(f);
    assert_eq!(
        names(api.list(&by_name("metadata.name=w2")).await.unwrap()),
        ["w2"]
    );
    assert_eq!(
        names(api.list(&by_name("metadata.name!=w2")).await.unwrap()),
        ["w1", "w3"]
    );

    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.metadata.resource_version.as_deref(), Some("3"));
    assert_eq!(stub.resource_version(), 3);
    assert_eq!(stub.objects("widgets").len(), 3);

    let bad = status_of(api.list(&by_name("spec.size=1")).await);
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let (_stub, api) = start().await;
    let original = api
        .create(&PostParams::default(), &widget("w", 1, &[]))
        .await
        .unwrap();

    let mut edited = original.clone();
    edited.spec.size = 2;
    let replaced = api
        .replace("w", &PostParams::default(), &edited)
        .await
        .unwrap();
    assert!(rv(&replaced) > rv(&original));
    assert_eq!(generation(&replaced), 2);

    let mut stale = original.clone();
    stale.spec.size = 3;
    let conflict = status_of(api.replace("w", &PostParams::default(), &stale).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

    let stale_patch = json!({"metadata": {"resourceVersion": original.metadata.resource_version}, "spec": {"size": 4}});
    let conflict = status_of(merge(&api, "w", stale_patch).await);
    assert_eq!(conflict.reason, "Conflict");

    let mut unconditional = replaced.clone();
    unconditional.metadata.resource_version = None;
    let invalid = status_of(
        api.replace("w", &PostParams::default(), &unconditional)
            .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));

    assert_eq!(
        api.get("w").await.unwrap().spec.size,
        2,
        "refused writes changed nothing"
    );
}

#[tokio::test]
async fn merge_json_and_apply_patches() {
    let (stub, api) = start().await;
    api.create(&PostParams::default(), &widget("w", 1, &[("node", "a")]))
        .await
        .unwrap();

    let merged = merge(
        &api,
        "w",
        json!({"spec": {"color": "red"}, "metadata": {"labels": {"node": null}}}),
    )
    .await
    .unwrap();
    assert_eq!(
        merged.spec,
        WidgetSpec {
            size: 1,
            color: Some("red".into())
        }
    );
    assert!(
        merged.metadata.labels.as_ref().is_none_or(|l| l.is_empty()),
        "null removes a key"
    );
    assert_eq!(generation(&merged), 2);

    // kube's typed Patch::Json needs its `jsonpatch` feature; the wire format is what matters.
    let client = stub.client().unwrap();
    let ops = json!([{"op": "test", "path": "/spec/size", "value": 1}, {"op": "replace", "path": "/spec/size", "value": 5}]);
    let patched = json_patch_request(&client, "w", &ops).await.unwrap();
    assert_eq!(patched.spec.size, 5);
    assert_eq!(generation(&patched), 3);

    let failing = json!([{"op": "test", "path": "/spec/size", "value": 1}]);
    let refused = status_of(json_patch_request(&client, "w", &failing).await);
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));

    let apply = PatchParams::apply(MANAGER).force();
    let created = api
        .patch("applied", &apply, &Patch::Apply(widget("applied", 7, &[])))
        .await
        .unwrap();
    assert_eq!(
        (created.spec.size, generation(&created)),
        (7, 1),
        "apply creates a missing object"
    );
    let mut config = widget("applied", 8, &[]);
    config.spec.color = Some("blue".into());
    let updated = api
        .patch("applied", &apply, &Patch::Apply(&config))
        .await
        .unwrap();
    assert_eq!(
        updated.spec,
        WidgetSpec {
            size: 8,
            color: Some("blue".into())
        }
    );
    assert_eq!(updated.metadata.uid, created.metadata.uid);
    assert_eq!(generation(&updated), 2);

    // A field someone else wrote survives; one this manager applied and now omits goes.
    merge(
        &api,
        "applied",
        json!({"metadata": {"labels": {"owner": "other"}}}),
    )
    .await
    .unwrap();
    let dropped = api
        .patch("applied", &apply, &Patch::Apply(widget("applied", 8, &[])))
        .await
        .unwrap();
    assert_eq!(
        dropped.spec.color, None,
        "an omitted applied field is removed"
    );
    assert_eq!(
        dropped
            .metadata
            .labels
            .unwrap_or_default()
            .get("owner")
            .map(String::as_str),
        Some("other")
    );

    let strategic = status_of(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"size": 2}})),
        )
        .await,
    );
    assert_eq!(
        (strategic.code, strategic.reason.as_str()),
        (415, "UnsupportedMediaType")
    );
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let (stub, api) = start().await;
    api.create(&PostParams::default(), &widget("w", 1, &[]))
        .await
        .unwrap();
    let rv0 = stub.resource_version();

    let ignored = merge(&api, "w", json!({"status": {"phase": "Ready"}}))
        .await
        .unwrap();
    assert_eq!(ignored.status, None, "the main resource ignores .status");
    assert_eq!(
        stub.resource_version(),
        rv0,
        "an ignored change is no change"
    );

    let status = merge_status(
        &api,
        "w",
        json!({"status": {"phase": "Ready", "observedGeneration": 1}, "spec": {"size": 99}}),
    )
    .await
    .unwrap();
    assert_eq!(status.status.as_ref().unwrap().phase, "Ready");
    assert_eq!(
        status.spec.size, 1,
        "/status ignores everything but .status"
    );
    assert_eq!(
        generation(&status),
        1,
        "status changes do not move generation"
    );
    assert!(rv(&status) > rv0);

    let labelled = merge(&api, "w", json!({"metadata": {"labels": {"x": "y"}}}))
        .await
        .unwrap();
    assert_eq!(
        generation(&labelled),
        1,
        "metadata changes do not move generation"
    );
    assert!(rv(&labelled) > rv(&status));

    let spec = merge(&api, "w", json!({"spec": {"size": 2}}))
        .await
        .unwrap();
    assert_eq!(generation(&spec), 2);
    assert_eq!(
        spec.status.as_ref().unwrap().phase,
        "Ready",
        "spec writes keep status"
    );

    let mut replaced = spec.clone();
    replaced.status = Some(WidgetStatus {
        phase: "Failed".into(),
        observed_generation: 2,
    });
    let after = api
        .replace_status("w", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(
        after.status.unwrap(),
        WidgetStatus {
            phase: "Failed".into(),
            observed_generation: 2
        }
    );

    let applied = api
        .patch_status("w", &PatchParams::apply(MANAGER), &Patch::Apply(json!({"apiVersion": "test.plinth.dev/v1", "kind": "Widget", "status": {"phase": "Ready"}})))
        .await
        .unwrap();
    assert_eq!(applied.status.unwrap().phase, "Ready");
    let absent = status_of(
        api.patch_status(
            "ghost",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(json!({"status": {"phase": "Ready"}})),
        )
        .await,
    );
    assert_eq!(absent.code, 404, "apply to /status does not create");
}

#[tokio::test]
async fn writes_that_change_nothing_bump_nothing() {
    let (stub, api) = start().await;
    api.create(&PostParams::default(), &widget("w", 1, &[("node", "a")]))
        .await
        .unwrap();
    let ready = merge_status(
        &api,
        "w",
        json!({"status": {"phase": "Ready", "observedGeneration": 1}}),
    )
    .await
    .unwrap();
    let rv_before = stub.resource_version();
    let writes_before = stub.writes();

    let same = merge(&api, "w", json!({"spec": {"size": 1}}))
        .await
        .unwrap();
    merge_status(&api, "w", json!({"status": {"phase": "Ready"}}))
        .await
        .unwrap();
    api.patch(
        "w",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(widget("w", 1, &[("node", "a")])),
    )
    .await
    .unwrap();
    api.replace("w", &PostParams::default(), &ready)
        .await
        .unwrap();

    assert_eq!(
        stub.resource_version(),
        rv_before,
        "no-op writes must not bump resourceVersion"
    );
    assert_eq!(
        same.metadata.resource_version,
        ready.metadata.resource_version
    );
    assert_eq!(generation(&same), 1);
    let writes = stub.writes().since(&writes_before);
    assert_eq!(
        writes.total(),
        4,
        "no-op writes are still counted as requests: {writes:?}"
    );
    assert_eq!(writes.count(Verb::Patch, "widgets"), 3);
    assert_eq!(writes.count(Verb::Update, "widgets"), 1);
    assert_eq!(writes.to_status("widgets"), 1);
}

#[tokio::test]
async fn delete_with_and_without_finalizers() {
    let (stub, api) = start().await;
    let plain = api
        .create(&PostParams::default(), &widget("plain", 1, &[]))
        .await
        .unwrap();
    let deleted = api.delete("plain", &DeleteParams::default()).await.unwrap();
    let gone = deleted
        .left()
        .expect("a custom resource delete answers with the object");
    assert_eq!(gone.metadata.uid, plain.metadata.uid);
    assert_eq!(status_of(api.get("plain").await).code, 404);
    assert_eq!(
        status_of(api.delete("plain", &DeleteParams::default()).await).code,
        404
    );

    let mut guarded = widget("guarded", 1, &[]);
    guarded.metadata.finalizers = Some(vec!["test.plinth.dev/cleanup".into()]);
    let guarded = api.create(&PostParams::default(), &guarded).await.unwrap();

    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-it".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(
        status_of(api.delete("guarded", &wrong_uid).await).reason,
        "Conflict"
    );
    let wrong_rv = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("999".into()),
        }),
        ..DeleteParams::default()
    };
    assert_eq!(
        status_of(api.delete("guarded", &wrong_rv).await).reason,
        "Conflict"
    );

    let right = DeleteParams {
        preconditions: Some(Preconditions {
            uid: guarded.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let deleting = api.delete("guarded", &right).await.unwrap().left().unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        generation(&deleting),
        2,
        "marking for deletion bumps generation, as the real server does"
    );
    let rv_deleting = stub.resource_version();
    api.delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        stub.resource_version(),
        rv_deleting,
        "deleting a deleting object changes nothing"
    );

    let more = status_of(
        merge(
            &api,
            "guarded",
            json!({"metadata": {"finalizers": ["test.plinth.dev/cleanup", "other"]}}),
        )
        .await,
    );
    assert_eq!((more.code, more.reason.as_str()), (422, "Invalid"));

    let ts = deleting.metadata.deletion_timestamp.clone();
    let spoofed = merge(
        &api,
        "guarded",
        json!({"metadata": {"deletionTimestamp": null}}),
    )
    .await
    .unwrap();
    assert_eq!(
        spoofed.metadata.deletion_timestamp, ts,
        "clients cannot clear deletionTimestamp"
    );

    merge(&api, "guarded", json!({"metadata": {"finalizers": null}}))
        .await
        .unwrap();
    assert_eq!(
        status_of(api.get("guarded").await).code,
        404,
        "removing the last finalizer completes deletion"
    );
    assert!(stub.object("widgets", "guarded").is_none());
}

async fn json_patch_request(
    client: &kube::Client,
    name: &str,
    ops: &serde_json::Value,
) -> Result<Widget, kube::Error> {
    let request = http::Request::builder()
        .method(Method::PATCH)
        .uri(format!("{PATH}/{name}"))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(ops.to_string().into_bytes())
        .unwrap();
    client.request(request).await
}

/// Sends a raw request and returns the refusal's (code, reason).
async fn refusal(
    client: &kube::Client,
    method: Method,
    uri: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body.as_bytes().to_vec())
        .unwrap();
    let status = status_of(client.request_text(request).await);
    (status.code, status.reason)
}

#[tokio::test]
async fn malformed_requests_get_status_answers() {
    let (stub, api) = start().await;
    api.create(&PostParams::default(), &widget("w", 1, &[]))
        .await
        .unwrap();
    let client = stub.client().unwrap();
    let json = "application/json";
    let merge = "application/merge-patch+json";
    let bad = |code: u16, reason: &str| (code, reason.to_owned());
    assert_eq!(
        refusal(&client, Method::POST, PATH, json, "{not json").await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(&client, Method::POST, PATH, json, "[1,2]").await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(
            &client,
            Method::POST,
            PATH,
            json,
            r#"{"metadata":{"name":"k"}}"#
        )
        .await,
        bad(400, "BadRequest"),
        "kind is required"
    );
    let no_name = r#"{"apiVersion":"test.plinth.dev/v1","kind":"Widget","spec":{"size":1}}"#;
    assert_eq!(
        refusal(&client, Method::POST, PATH, json, no_name).await,
        bad(422, "Invalid")
    );
    let bad_labels = r#"{"apiVersion":"test.plinth.dev/v1","kind":"Widget","metadata":{"name":"l","labels":{"a":1}}}"#;
    assert_eq!(
        refusal(&client, Method::POST, PATH, json, bad_labels).await,
        bad(422, "Invalid")
    );
    assert_eq!(
        refusal(&client, Method::POST, PATH, "application/yaml", "a: b").await,
        bad(415, "UnsupportedMediaType")
    );
    let w = format!("{PATH}/w");
    assert_eq!(
        refusal(&client, Method::PATCH, &w, merge, "{oops").await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(
            &client,
            Method::PATCH,
            &w,
            "application/json-patch+json",
            r#"{"op":"add"}"#
        )
        .await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(
            &client,
            Method::PATCH,
            &w,
            merge,
            r#"{"metadata":{"name":"other"}}"#
        )
        .await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(
            &client,
            Method::PATCH,
            &w,
            "application/apply-patch+yaml",
            "{}"
        )
        .await,
        bad(400, "BadRequest"),
        "fieldManager is required"
    );
    assert_eq!(
        refusal(&client, Method::PATCH, &w, "", "{}").await,
        bad(415, "UnsupportedMediaType")
    );
    assert_eq!(
        refusal(&client, Method::DELETE, &w, json, "{\"preconditions\":7}").await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(&client, Method::DELETE, PATH, json, "").await,
        bad(405, "MethodNotAllowed")
    );
    assert_eq!(
        refusal(
            &client,
            Method::GET,
            "/apis/apps/v1/namespaces/default/deployments/x/scale",
            json,
            ""
        )
        .await,
        bad(404, "NotFound")
    );
    assert_eq!(
        refusal(
            &client,
            Method::GET,
            &format!("{PATH}?labelSelector=a%20b%3Dc"),
            json,
            ""
        )
        .await,
        bad(400, "BadRequest")
    );
    assert_eq!(
        refusal(
            &client,
            Method::POST,
            &format!("{PATH}?dryRun=All"),
            json,
            "{}"
        )
        .await,
        bad(400, "BadRequest")
    );

    assert_eq!(
        api.get("w").await.unwrap().spec.size,
        1,
        "refused requests lost nothing"
    );
    assert_eq!(stub.objects("widgets").len(), 1);

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
}

#[tokio::test]
async fn injected_faults_answer_then_run_out() {
    let (stub, api) = start().await;
    let before = stub.writes();
    stub.inject(Fault::new(
        Method::POST,
        PATH,
        StatusCode::INTERNAL_SERVER_ERROR,
    ));
    let fault = status_of(
        api.create(&PostParams::default(), &widget("w", 1, &[]))
            .await,
    );
    assert_eq!((fault.code, fault.reason.as_str()), (500, "InternalError"));
    assert!(
        stub.objects("widgets").is_empty(),
        "a faulted request does not reach the store"
    );
    assert_eq!(stub.pending_faults(), 0);
    api.create(&PostParams::default(), &widget("w", 1, &[]))
        .await
        .unwrap();
    assert_eq!(
        stub.writes().since(&before).count(Verb::Create, "widgets"),
        1,
        "faulted requests are not counted"
    );

    stub.inject(
        Fault::new(
            Method::PATCH,
            format!("{PATH}/w/status"),
            StatusCode::CONFLICT,
        )
        .times(2),
    );
    let status = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    for _ in 0..2 {
        assert_eq!(
            status_of(
                api.patch_status("w", &PatchParams::default(), &status)
                    .await
            )
            .reason,
            "Conflict"
        );
    }
    let spec = merge(&api, "w", json!({"spec": {"size": 2}}))
        .await
        .unwrap();
    assert_eq!(
        spec.spec.size, 2,
        "the main resource did not match the /status prefix"
    );
    assert_eq!(
        api.patch_status("w", &PatchParams::default(), &status)
            .await
            .unwrap()
            .status
            .unwrap()
            .phase,
        "Ready"
    );

    // kube retries 503 by itself: one injected 503 is invisible to the caller.
    stub.inject(Fault::any_method(
        format!("{PATH}/w"),
        StatusCode::SERVICE_UNAVAILABLE,
    ));
    assert_eq!(api.get("w").await.unwrap().spec.size, 2);
    assert_eq!(
        stub.pending_faults(),
        0,
        "the retried request consumed the fault"
    );
}
