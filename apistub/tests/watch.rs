//! Watches through kube-runtime: the event stream a controller depends on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{WAIT, Widget, WidgetStatus, merge, merge_status, resize, rv, start, widget};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api,
    api::{DeleteParams, PostParams, WatchEvent, WatchParams},
    runtime::{
        conditions,
        wait::await_condition,
        watcher::{self, Event},
    },
};
use plinth_apistub::ApiStub;
use serde_json::json;
use tokio::{sync::mpsc, time::timeout};

/// What a watcher reported, reduced to what the tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String, u64),
    Delete(String),
}

fn seen(event: Event<Widget>) -> Seen {
    let name = |w: &Widget| w.metadata.name.clone().unwrap();
    match event {
        Event::Init => Seen::Init,
        Event::InitApply(w) => Seen::InitApply(name(&w)),
        Event::InitDone => Seen::InitDone,
        Event::Apply(w) => Seen::Apply(name(&w), w.spec.size),
        Event::Delete(w) => Seen::Delete(name(&w)),
    }
}

/// Runs a kube-runtime watcher in the background and hands its events over.
fn spawn_watcher(api: Api<Widget>, config: watcher::Config) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).boxed();
        while let Some(event) = stream.next().await {
            // Stream errors (a reconnect) are retried by the watcher itself; only events count.
            if let Ok(event) = event
                && tx.send(seen(event)).is_err()
            {
                return;
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("the watcher is running")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn watcher_sees_changes_in_order_across_reconnects() {
    let (stub, api) = start().await;
    let pp = PostParams::default();
    api.create(&pp, &widget("w1", 1, &[])).await.unwrap();

    // A 1 s server-side timeout makes the watcher reconnect, from its last resourceVersion.
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().timeout(1));
    assert_eq!(next(&mut rx).await, Seen::Init);
    assert_eq!(next(&mut rx).await, Seen::InitApply("w1".into()));
    assert_eq!(next(&mut rx).await, Seen::InitDone);

    api.create(&pp, &widget("w2", 2, &[])).await.unwrap();
    resize(&api, "w1", 10).await;
    api.delete("w2", &DeleteParams::default()).await.unwrap();
    let started = stub.watches_started();
    wait_until("the watcher reconnected", || {
        stub.watches_started() > started
    })
    .await;
    // Changes while the watcher is between streams are replayed from its resourceVersion.
    resize(&api, "w1", 11).await;
    api.create(&pp, &widget("w3", 3, &[])).await.unwrap();
    let again = stub.watches_started();
    wait_until("the watcher reconnected again", || {
        stub.watches_started() > again
    })
    .await;
    api.delete("w1", &DeleteParams::default()).await.unwrap();

    let expected = [
        Seen::Apply("w2".into(), 2),
        Seen::Apply("w1".into(), 10),
        Seen::Delete("w2".into()),
        Seen::Apply("w1".into(), 11),
        Seen::Apply("w3".into(), 3),
        Seen::Delete("w1".into()),
    ];
    for want in expected {
        // A re-list (Init...) here would mean the reconnect did not resume from the resourceVersion.
        assert_eq!(next(&mut rx).await, want);
    }
    assert!(
        stub.watches_started() >= 3,
        "the watch reconnected at least twice"
    );
}

#[tokio::test]
async fn watch_replays_every_event_after_a_resource_version() {
    let (_stub, api) = start().await;
    let pp = PostParams::default();
    let before = api
        .create(&pp, &widget("a", 1, &[("node", "n1")]))
        .await
        .unwrap();
    api.create(&pp, &widget("b", 2, &[("node", "n1")]))
        .await
        .unwrap();
    resize(&api, "a", 5).await;
    // Moves b out of node=n1: a watch on node=n1 sees it as deleted.
    merge(&api, "b", json!({"metadata": {"labels": {"node": "n2"}}}))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    // And back in: ADDED.
    merge(&api, "b", json!({"metadata": {"labels": {"node": "n1"}}}))
        .await
        .unwrap();

    let wp = WatchParams::default().labels("node=n1").timeout(1);
    let events: Vec<(String, String, u64)> = api
        .watch(&wp, &rv(&before).to_string())
        .await
        .unwrap()
        .map_ok(|event| match event {
            WatchEvent::Added(w) => ("ADDED".into(), w.metadata.name.clone().unwrap(), rv(&w)),
            WatchEvent::Modified(w) => {
                ("MODIFIED".into(), w.metadata.name.clone().unwrap(), rv(&w))
            }
            WatchEvent::Deleted(w) => ("DELETED".into(), w.metadata.name.clone().unwrap(), rv(&w)),
            WatchEvent::Bookmark(b) => (
                "BOOKMARK".into(),
                String::new(),
                b.metadata.resource_version.parse().unwrap(),
            ),
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        })
        .try_collect()
        .await
        .unwrap();
    let expected = [
        ("ADDED", "b", 2),
        ("MODIFIED", "a", 3),
        ("DELETED", "b", 4),
        ("DELETED", "a", 5),
        ("ADDED", "b", 6),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(t, n, r)| ((*t).into(), (*n).into(), *r))
        .collect();
    assert_eq!(events, expected);

    // From "0": the current objects, as ADDED.
    let current: Vec<WatchEvent<Widget>> = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        matches!(current.as_slice(), [WatchEvent::Added(w)] if w.metadata.name.as_deref() == Some("b")),
        "{current:?}"
    );
}

#[tokio::test]
async fn expired_resource_version_is_gone_and_the_watcher_relists() {
    let stub = ApiStub::default().history_limit(2).serve().await.unwrap();
    let api: Api<Widget> = Api::all(stub.client().unwrap());
    for i in 0..5 {
        api.create(&PostParams::default(), &widget(&format!("w{i}"), i, &[]))
            .await
            .unwrap();
    }
    let events: Vec<WatchEvent<Widget>> = api
        .watch(&WatchParams::default().timeout(5), "1")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match events.as_slice() {
        [WatchEvent::Error(status)] => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }

    // A watcher held back while the history moves past it must re-list, not miss events.
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().timeout(1));
    assert_eq!(next(&mut rx).await, Seen::Init);
    for _ in 0..5 {
        assert!(matches!(next(&mut rx).await, Seen::InitApply(_)));
    }
    assert_eq!(next(&mut rx).await, Seen::InitDone);
    stub.pause_watches();
    for i in 5..9 {
        api.create(&PostParams::default(), &widget(&format!("w{i}"), i, &[]))
            .await
            .unwrap();
    }
    stub.resume_watches();
    assert_eq!(
        next(&mut rx).await,
        Seen::Init,
        "410 Gone makes the watcher re-list"
    );
    let mut relisted = Vec::new();
    loop {
        match next(&mut rx).await {
            Seen::InitApply(name) => relisted.push(name),
            Seen::InitDone => break,
            other => panic!("unexpected {other:?} during the re-list"),
        }
    }
    assert_eq!(relisted.len(), 9, "{relisted:?}");
}

#[tokio::test]
async fn streaming_list_ends_initial_events_with_a_bookmark() {
    let (_stub, api) = start().await;
    api.create(&PostParams::default(), &widget("w1", 1, &[]))
        .await
        .unwrap();
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().streaming_lists());
    assert_eq!(next(&mut rx).await, Seen::Init);
    assert_eq!(next(&mut rx).await, Seen::InitApply("w1".into()));
    assert_eq!(next(&mut rx).await, Seen::InitDone);
    resize(&api, "w1", 2).await;
    assert_eq!(next(&mut rx).await, Seen::Apply("w1".into(), 2));
}

#[tokio::test]
async fn await_condition_sees_status_and_deletion() {
    let (_stub, api) = start().await;
    let created = api
        .create(&PostParams::default(), &widget("w", 1, &[]))
        .await
        .unwrap();
    let ready = |w: Option<&Widget>| {
        w.and_then(|w| w.status.as_ref())
            .is_some_and(|s| s.phase == "Ready")
    };
    let waiting = tokio::spawn(await_condition(api.clone(), "w", ready));
    // Another object's changes must not satisfy a wait on "w" (fieldSelector metadata.name).
    api.create(&PostParams::default(), &widget("other", 1, &[]))
        .await
        .unwrap();
    merge_status(&api, "other", json!({"status": {"phase": "Ready"}}))
        .await
        .unwrap();
    merge_status(
        &api,
        "w",
        serde_json::to_value(Widget {
            status: Some(WidgetStatus {
                phase: "Ready".into(),
                observed_generation: 1,
            }),
            ..created.clone()
        })
        .unwrap(),
    )
    .await
    .unwrap();
    let found = timeout(WAIT, waiting)
        .await
        .expect("in time")
        .unwrap()
        .unwrap()
        .expect("the object");
    assert_eq!(found.metadata.name.as_deref(), Some("w"));
    assert_eq!(found.status.unwrap().phase, "Ready");

    let uid = created.metadata.uid.clone().unwrap();
    let gone = timeout(
        WAIT,
        await_condition(api.clone(), "w", conditions::is_deleted(&uid)),
    );
    let dp = DeleteParams::default();
    let (gone, deleted) = tokio::join!(gone, api.delete("w", &dp));
    deleted.unwrap();
    gone.expect("in time").unwrap();
}

#[tokio::test]
async fn paused_watches_hold_events_until_resumed() {
    let (stub, api) = start().await;
    let mut on_a = spawn_watcher(api.clone(), watcher::Config::default().labels("node=a"));
    let mut on_b = spawn_watcher(api.clone(), watcher::Config::default().labels("node=b"));
    for rx in [&mut on_a, &mut on_b] {
        assert_eq!(next(rx).await, Seen::Init);
        assert_eq!(next(rx).await, Seen::InitDone);
    }
    wait_until("both watches are open", || stub.active_watches() == 2).await;

    // Cut off node a only.
    stub.pause_watches_matching(|w| w.label_selector.as_deref() == Some("node=a"));
    api.create(&PostParams::default(), &widget("va", 1, &[("node", "a")]))
        .await
        .unwrap();
    resize(&api, "va", 2).await;
    api.create(&PostParams::default(), &widget("vb", 1, &[("node", "b")]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut on_b).await,
        Seen::Apply("vb".into(), 1),
        "an unpaused watch keeps flowing"
    );
    assert!(
        timeout(Duration::from_millis(300), on_a.recv())
            .await
            .is_err(),
        "the paused watch delivered an event"
    );

    stub.resume_watches();
    assert_eq!(
        next(&mut on_a).await,
        Seen::Apply("va".into(), 1),
        "held events arrive in order"
    );
    assert_eq!(next(&mut on_a).await, Seen::Apply("va".into(), 2));

    stub.pause_watches();
    resize(&api, "vb", 3).await;
    assert!(
        timeout(Duration::from_millis(300), on_b.recv())
            .await
            .is_err(),
        "pause_watches holds every watch"
    );
    stub.resume_watches();
    assert_eq!(next(&mut on_b).await, Seen::Apply("vb".into(), 3));
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let (stub, api) = start().await;
    let stream = api.watch(&WatchParams::default(), "0").await.unwrap();
    wait_until("the watch is open", || stub.active_watches() == 1).await;
    timeout(WAIT, stub.shutdown())
        .await
        .expect("shutdown does not wait on open watches");
    let rest: Vec<_> = timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ended");
    assert!(rest.iter().all(|e| e.is_ok()), "{rest:?}");
}
