//! A restart under the clients: connections reset, the port refused for a while, the same
//! objects on the same address afterwards, and a compacted watch history; plus namespaced
//! resources and discovery, which the operator's tests need.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, Widget, resize, rv, start, widget};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
};
use plinth_apistub::Restart;
use serde_json::json;
use tokio::time::timeout;

fn expired(event: &WatchEvent<Widget>) -> bool {
    matches!(event, WatchEvent::Error(status) if status.code == 410 && status.reason == "Expired")
}

#[tokio::test]
async fn restart_resets_connections_refuses_meanwhile_and_expires_old_versions() {
    let (stub, api) = start().await;
    let addr = stub.addr();
    let created = api
        .create(&PostParams::default(), &widget("a", 1, &[]))
        .await
        .unwrap();
    let before = rv(&created);
    let mut open = api
        .watch(&WatchParams::default(), &before.to_string())
        .await
        .unwrap()
        .boxed();

    let restarting = tokio::spawn(async move {
        stub.restart(Restart::new().down_for(Duration::from_millis(800)))
            .await;
        stub
    });

    // The open watch is cut: an error, not a clean end of the stream.
    let cut = timeout(WAIT, open.next())
        .await
        .expect("the open watch notices the restart");
    assert!(
        matches!(cut, Some(Err(_))),
        "a reset, not a clean end: {cut:?}"
    );
    // Meanwhile nothing listens on the port.
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the port refuses connections while down");

    let stub = timeout(WAIT, restarting).await.unwrap().unwrap();
    assert_eq!(stub.addr(), addr, "the same address");
    // The same objects, read through a client that held connections to the old server.
    let listed = api.list(&ListParams::default()).await.unwrap();
    let after: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
    assert!(after > before, "{after} > {before}");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].spec.size, 1);

    // Every version from before the restart is too old to resume from...
    let mut old = api
        .watch(&WatchParams::default(), &before.to_string())
        .await
        .unwrap()
        .boxed();
    let first = timeout(WAIT, old.next()).await.unwrap().unwrap().unwrap();
    assert!(expired(&first), "{first:?}");
    // ... and the list's version resumes and sees new changes.
    let mut fresh = api
        .watch(&WatchParams::default(), &after.to_string())
        .await
        .unwrap()
        .boxed();
    resize(&api, "a", 2).await;
    let event = timeout(WAIT, fresh.next()).await.unwrap().unwrap().unwrap();
    assert!(
        matches!(&event, WatchEvent::Modified(w) if w.spec.size == 2),
        "{event:?}"
    );
}

#[tokio::test]
async fn a_stale_cache_answers_any_reads_from_before_the_restart_until_it_catches_up() {
    let (stub, api) = start().await;
    let created = api
        .create(&PostParams::default(), &widget("a", 1, &[]))
        .await
        .unwrap();
    let before = rv(&created);
    let started = Instant::now();
    stub.restart(Restart::new().stale_cache()).await;
    assert!(started.elapsed() < WAIT);
    resize(&api, "a", 2).await;

    let any = ListParams::default().match_any();
    let stale = api.list(&any).await.unwrap();
    assert_eq!(stale.metadata.resource_version, Some(before.to_string()));
    assert_eq!(stale.items[0].spec.size, 1, "the cache's old copy");
    // Which a watch can no longer resume from.
    let mut watch = api
        .watch(&WatchParams::default(), &before.to_string())
        .await
        .unwrap()
        .boxed();
    let first = timeout(WAIT, watch.next()).await.unwrap().unwrap().unwrap();
    assert!(expired(&first), "{first:?}");
    // A consistent read is current.
    let current = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(current.items[0].spec.size, 2);

    stub.catch_up();
    let caught_up = api.list(&any).await.unwrap();
    assert_eq!(caught_up.items[0].spec.size, 2);
    assert_eq!(
        caught_up.metadata.resource_version,
        current.metadata.resource_version
    );
}

#[tokio::test]
async fn namespaced_and_core_resources_are_kept_per_namespace() {
    let (stub, _) = start().await;
    let client = stub.client().unwrap();
    let cm = |ns: &str, value: &str| -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "same", "namespace": ns},
            "data": {"k": value},
        }))
        .unwrap()
    };
    let in_a: Api<ConfigMap> = Api::namespaced(client.clone(), "a");
    let in_b: Api<ConfigMap> = Api::namespaced(client.clone(), "b");
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    let mut watch_a = in_a
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    in_a.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    in_b.create(&PostParams::default(), &cm("b", "2"))
        .await
        .unwrap();
    // A body naming another namespace than the path is refused.
    assert!(
        in_a.create(&PostParams::default(), &cm("b", "3"))
            .await
            .is_err()
    );

    let got = in_b.get("same").await.unwrap();
    assert_eq!(got.metadata.namespace.as_deref(), Some("b"));
    assert_eq!(got.data.unwrap()["k"], "2");
    let listed = in_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    // The namespace's watch sees its own object only.
    let event = timeout(WAIT, watch_a.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, WatchEvent::Added(c) if c.metadata.namespace.as_deref() == Some("a")),
        "{event:?}"
    );
    // Built-in kinds take strategic merge patches (approximated as merge patches).
    let patched = in_b
        .patch(
            "same",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(json!({"data": {"k": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"], "3");
    in_b.delete("same", &Default::default()).await.unwrap();
    assert!(in_a.get("same").await.is_ok());
    assert!(in_b.get_opt("same").await.unwrap().is_none());
}

#[tokio::test]
async fn discovery_answers_what_stored_crds_serve() {
    let (stub, _) = start().await;
    let client = stub.client().unwrap();
    let missing = client
        .list_api_group_resources("snapshot.storage.k8s.io/v1")
        .await;
    assert!(
        matches!(&missing, Err(kube::Error::Api(s)) if s.code == 404),
        "{missing:?}"
    );
    let crds: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        },
    );
    let crd: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "volumesnapshotclasses.snapshot.storage.k8s.io"},
        "spec": {
            "group": "snapshot.storage.k8s.io",
            "scope": "Cluster",
            "names": {"plural": "volumesnapshotclasses", "singular": "volumesnapshotclass", "kind": "VolumeSnapshotClass"},
            "versions": [{"name": "v1", "served": true, "storage": true}],
        },
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let served = client
        .list_api_group_resources("snapshot.storage.k8s.io/v1")
        .await
        .unwrap();
    assert_eq!(served.resources.len(), 1);
    assert_eq!(served.resources[0].name, "volumesnapshotclasses");
    assert_eq!(served.resources[0].kind, "VolumeSnapshotClass");
    assert!(!served.resources[0].namespaced);
}
