//! What tests get from the stub besides HTTP: the request log, waiting on it, immutable
//! fields, CRD-served groups and metadata-only lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use kube::api::{Api, ListParams, Patch, PatchParams};
use plinth_apistub::{ApiStub, Fault, path_of};
use serde_json::{Value, json};

const MANAGER: &str = "plinth-test";

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn storage_class(parameters: Option<Value>, labels: Value) -> Value {
    let mut sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fast", "labels": labels},
        "provisioner": "local.csi.plinth.dev"});
    if let Some(parameters) = parameters {
        sc["parameters"] = parameters;
    }
    sc
}

/// 422 Invalid with the real server's wording, naming the field.
async fn refused<K: std::fmt::Debug>(result: Result<K, kube::Error>, field: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            assert!(
                status.message.contains(&format!("{field}: Invalid value"))
                    && status.message.ends_with("field is immutable"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 422 for {field}, got {other:?}"),
    }
}

#[tokio::test]
async fn immutable_fields_answer_422_and_absent_equals_empty() {
    let stub = ApiStub::start().await.unwrap();
    stub.built_in_immutable_fields();
    let client = stub.client().unwrap();
    let classes: Api<StorageClass> = Api::all(client.clone());
    let params = json!({"csi.storage.k8s.io/fstype": "ext4"});
    let first = storage_class(Some(params.clone()), json!({"a": "1"}));
    classes
        .patch("fast", &apply(), &Patch::Apply(&first))
        .await
        .unwrap();

    // Labels are mutable.
    let relabelled = storage_class(Some(params), json!({"a": "2"}));
    classes
        .patch("fast", &apply(), &Patch::Apply(&relabelled))
        .await
        .unwrap();
    // A parameter is not, and dropping every parameter is a change too.
    let xfs = storage_class(
        Some(json!({"csi.storage.k8s.io/fstype": "xfs"})),
        json!({"a": "2"}),
    );
    refused(
        classes.patch("fast", &apply(), &Patch::Apply(&xfs)).await,
        "parameters",
    )
    .await;
    let bare = storage_class(None, json!({"a": "2"}));
    refused(
        classes.patch("fast", &apply(), &Patch::Apply(&bare)).await,
        "parameters",
    )
    .await;
    let stored = stub.get(&path_of::<StorageClass>(None, "fast")).unwrap();
    assert_eq!(stored["parameters"]["csi.storage.k8s.io/fstype"], "ext4");
    assert_eq!(stored["metadata"]["labels"]["a"], "2");

    // Without parameters from the start, none stays none.
    let empty = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "plain"}, "provisioner": "p", "parameters": {}});
    classes
        .patch("plain", &apply(), &Patch::Apply(&empty))
        .await
        .unwrap();
    let mut without = empty.clone();
    without.as_object_mut().unwrap().remove("parameters");
    classes
        .patch("plain", &apply(), &Patch::Apply(&without))
        .await
        .unwrap();

    let drivers: Api<CSIDriver> = Api::all(client.clone());
    let driver = |attach: bool| {
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": "d"}, "spec": {"attachRequired": attach}})
    };
    drivers
        .patch("d", &apply(), &Patch::Apply(&driver(false)))
        .await
        .unwrap();
    refused(
        drivers
            .patch("d", &apply(), &Patch::Apply(&driver(true)))
            .await,
        "spec.attachRequired",
    )
    .await;

    let sets: Api<DaemonSet> = Api::namespaced(client, "ns");
    let ds = |app: &str, priority: &str| {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "n", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}},
                              "spec": {"priorityClassName": priority, "containers": []}}}})
    };
    sets.patch("n", &apply(), &Patch::Apply(&ds("x", "a")))
        .await
        .unwrap();
    sets.patch("n", &apply(), &Patch::Apply(&ds("x", "b")))
        .await
        .unwrap();
    refused(
        sets.patch("n", &apply(), &Patch::Apply(&ds("old", "b")))
            .await,
        "spec.selector",
    )
    .await;
    // A merge patch is held to the same rule.
    let merge = Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "y"}}}}));
    refused(
        sets.patch("n", &PatchParams::default(), &merge).await,
        "spec.selector",
    )
    .await;
}

#[tokio::test]
async fn the_request_log_has_method_path_query_and_body_in_order() {
    let stub = ApiStub::start().await.unwrap();
    let classes: Api<StorageClass> = Api::all(stub.client().unwrap());
    let sc = storage_class(None, json!({"a": "1"}));
    classes
        .patch("fast", &apply(), &Patch::Apply(&sc))
        .await
        .unwrap();
    stub.inject(
        Fault::new(
            Method::DELETE,
            "/apis/storage.k8s.io/v1/storageclasses/",
            http::StatusCode::FORBIDDEN,
        )
        .message("storageclasses \"fast\" is forbidden"),
    );
    let denied = classes
        .delete("fast", &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403 && s.message == "storageclasses \"fast\" is forbidden"),
        "{denied:?}"
    );
    classes
        .list_metadata(&ListParams::default().labels("a=1"))
        .await
        .unwrap();

    let log = stub.take_requests();
    let lines: Vec<String> = log.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/storage.k8s.io/v1/storageclasses/fast",
            "DELETE /apis/storage.k8s.io/v1/storageclasses/fast",
            "GET /apis/storage.k8s.io/v1/storageclasses",
        ]
    );
    assert!(log[0].is_apply() && log[0].is_write());
    assert_eq!(log[0].field_manager(), Some(MANAGER));
    assert_eq!(log[0].param("force"), Some("true"));
    assert_eq!(log[0].body.as_ref(), Some(&sc));
    assert_eq!(log[2].param("labelSelector"), Some("a=1"));
    assert!(!log[2].is_write());
    assert!(stub.requests().is_empty(), "take_requests clears the log");
    // The refused delete changed nothing.
    assert!(stub.get(&path_of::<StorageClass>(None, "fast")).is_some());

    let waiting = stub.wait_for_request(|r| r.method == Method::DELETE);
    let deleted = async {
        classes.delete("fast", &Default::default()).await.unwrap();
    };
    let (seen, ()) = tokio::join!(waiting, deleted);
    assert_eq!(seen.path, "/apis/storage.k8s.io/v1/storageclasses/fast");
    assert_eq!(stub.get(&path_of::<StorageClass>(None, "fast")), None);
}

#[tokio::test]
async fn a_crd_group_is_served_only_for_installed_resources() {
    let stub = ApiStub::start().await.unwrap();
    stub.require_crds("snapshot.storage.k8s.io");
    let client = stub.client().unwrap();
    let path = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses";
    let list = || async {
        client
            .request::<Value>(http::Request::get(path).body(vec![]).unwrap())
            .await
    };
    assert!(matches!(list().await, Err(kube::Error::Api(s)) if s.code == 404));
    stub.insert(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/volumesnapshotclasses.snapshot.storage.k8s.io",
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "volumesnapshotclasses.snapshot.storage.k8s.io"},
               "spec": {"group": "snapshot.storage.k8s.io", "scope": "Cluster",
                        "names": {"plural": "volumesnapshotclasses", "kind": "VolumeSnapshotClass"},
                        "versions": [{"name": "v1", "served": true}]}}),
    );
    assert_eq!(list().await.unwrap()["items"], json!([]));
}

#[tokio::test]
async fn seeded_objects_keep_status_and_creation_time_and_modify_bumps_generation() {
    let stub = ApiStub::start().await.unwrap();
    let path = "/apis/plinth.dev/v1alpha1/csideployments/a";
    let seeded = stub.insert(
        path,
        json!({"apiVersion": "plinth.dev/v1alpha1", "kind": "CsiDeployment",
               "metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"x": 1}, "status": {"phase": "Ready"}}),
    );
    assert_eq!(
        seeded["metadata"]["creationTimestamp"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(seeded["status"]["phase"], "Ready");
    assert_eq!(seeded["metadata"]["generation"], 1);
    let status_only = stub.modify(path, |o| o["status"]["phase"] = json!("Gone"));
    assert_eq!(status_only["metadata"]["generation"], 1);
    let spec = stub.modify(path, |o| o["spec"]["x"] = json!(2));
    assert_eq!(spec["metadata"]["generation"], 2);
    assert_eq!(stub.remove(path).unwrap()["spec"]["x"], 2);
    assert_eq!(stub.get(path), None);
}

#[tokio::test]
async fn start_with_client_gives_a_client_of_that_stub() {
    let (stub, client) = ApiStub::start_with_client().await;
    let classes: Api<StorageClass> = Api::all(client);
    let sc: StorageClass = serde_json::from_value(storage_class(None, json!({}))).unwrap();
    classes.create(&Default::default(), &sc).await.unwrap();
    let stored = stub
        .get_as::<StorageClass>("fast")
        .expect("created through the client");
    assert_eq!(stored.provisioner, "local.csi.plinth.dev");
    let lines: Vec<String> = stub.requests().iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["POST /apis/storage.k8s.io/v1/storageclasses"]);
}

#[tokio::test]
async fn update_changes_an_object_found_by_plural_and_name() {
    let stub = ApiStub::start().await.unwrap();
    let path = path_of::<StorageClass>(None, "fast");
    let seeded = stub.insert(&path, storage_class(None, json!({"a": "1"})));
    let updated = stub.update("storageclasses", "fast", |o| {
        o["metadata"]["labels"]["a"] = json!("2");
    });
    assert_eq!(updated["metadata"]["labels"], json!({"a": "2"}));
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        seeded["metadata"]["resourceVersion"]
    );
    assert_eq!(stub.get(&path), Some(updated));
    assert!(stub.requests().is_empty(), "no request was made");
}

#[tokio::test]
async fn lose_next_create_stores_the_winner_and_answers_409_once() {
    let (stub, client) = ApiStub::start_with_client().await;
    let classes: Api<StorageClass> = Api::all(client);
    let mut winner: StorageClass = serde_json::from_value(storage_class(None, json!({}))).unwrap();
    winner.provisioner = "winner.example.com".into();
    stub.lose_next_create(&winner);
    assert!(
        stub.get_as::<StorageClass>("fast").is_none(),
        "not before the create"
    );

    let ours: StorageClass = serde_json::from_value(storage_class(None, json!({}))).unwrap();
    let lost = classes
        .create(&Default::default(), &ours)
        .await
        .unwrap_err();
    assert!(
        matches!(&lost, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{lost:?}"
    );
    let stored = stub.get_as::<StorageClass>("fast").unwrap();
    assert_eq!(stored.provisioner, "winner.example.com");
    // Armed once: the next create of the kind is served as usual.
    let mut other = ours.clone();
    other.metadata.name = Some("slow".into());
    classes.create(&Default::default(), &other).await.unwrap();
    let lines: Vec<String> = stub.requests().iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "POST /apis/storage.k8s.io/v1/storageclasses",
            "POST /apis/storage.k8s.io/v1/storageclasses",
        ]
    );
}

#[tokio::test]
async fn lose_next_race_stores_just_before_the_matching_request_only() {
    let (stub, client) = ApiStub::start_with_client().await;
    let classes: Api<StorageClass> = Api::all(client);
    let path = path_of::<StorageClass>(None, "fast");
    stub.lose_next_race(
        Method::GET,
        &path,
        &path,
        storage_class(None, json!({"by": "other"})),
    );
    // Another method under the prefix does not trigger it.
    let missing = classes
        .delete("fast", &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404),
        "{missing:?}"
    );
    assert_eq!(stub.get(&path), None);
    // The matching request already meets the object.
    let got = classes.get("fast").await.unwrap();
    assert_eq!(got.metadata.labels.unwrap()["by"], "other");
    // Disarmed: it is stored once, and nothing else is.
    assert_eq!(stub.objects("storageclasses").len(), 1);
    classes.get("fast").await.unwrap();
    assert_eq!(stub.objects("storageclasses").len(), 1);
}
