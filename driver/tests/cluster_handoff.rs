//! Cluster mode, controller side: CSI Controller calls handed to nodes through
//! PoolVolume, PoolSnapshot and PoolNode objects, against the stand-in API server
//! (`plinth-apistub`). The tests play the node plugin by writing status, and check the
//! exact requests the controller makes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::wait::await_condition;
use plinth_api::cluster::crd::{
    self, AccessSpec, PoolNode, PoolNodeSpec, PoolNodeStatus, PoolSnapshot, PoolSnapshotSpec,
    PoolVolume, PoolVolumeSpec, VolumeMode,
};
use plinth_csi_proto::v1;
use plinth_csi_proto::v1::controller_server::Controller;
use plinth_driver::cluster::{Cluster, ids};
use plinth_driver::config::{Cli, Config};
use plinth_driver::csi::controller::ControllerService;
use plinth_driver::state::Driver;
use serde_json::{Value, json};
use tonic::{Code, Request};
use v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};

use plinth_apistub::{ApiStub, Recorded, Running, WAIT, path_of};

const DRIVER: &str = "local.csi.plinth.dev";
const KEY: &str = "topology.local.csi.plinth.dev/node";
const MIB: u64 = 1 << 20;
/// A deletionTimestamp another party set.
const DELETED_AT: &str = "2026-01-01T00:00:00Z";

/// The collection path of `K` (`/apis/<group>/<version>/<plural>`).
fn collection<K: kube::Resource<DynamicType = ()>>() -> String {
    K::url_path(&(), None)
}

/// A controller-mode service talking to a fresh fake API server.
async fn controller() -> (Running, ControllerService) {
    let (api, client) = ApiStub::start_with_client().await;
    let cli = Cli::try_parse_from([
        "plinth-driver",
        "--mode",
        "controller",
        "--node-id",
        "controller-0",
        "--driver-name",
        DRIVER,
    ])
    .unwrap();
    let mut config = Config::from_cli(cli, None).unwrap();
    // Short, so the timeout paths run quickly; nothing asserts how long anything took.
    config.handoff_timeout = Duration::from_millis(300);
    let driver = Driver::new(config.clone());
    driver.set_cluster(Cluster::new(client, &config));
    (api, ControllerService::new(Arc::clone(&driver)))
}

fn pool_node(node: &str, available: Option<u64>) -> PoolNode {
    let mut object = PoolNode::new(
        &crd::pool_node_name(node, DRIVER),
        PoolNodeSpec {
            driver: DRIVER.into(),
            node: node.into(),
        },
    );
    object.metadata.labels = Some(crd::labels(DRIVER, node));
    object.status = available.map(|available_bytes| PoolNodeStatus {
        available_bytes,
        total_bytes: 1 << 40,
        volumes: 0,
        snapshots: 0,
        pool_filesystem: "ext4".into(),
    });
    object
}

fn ext4() -> AccessSpec {
    AccessSpec {
        volume_mode: VolumeMode::Filesystem,
        fs_type: Some(crd::FsType::Ext4),
    }
}

/// A PoolVolume of CSI name `name` on `node`, as the controller writes it, and (when
/// `ready`) as its node answered it.
fn pool_volume(name: &str, node: &str, size: u64, ready: bool) -> PoolVolume {
    let mut object = PoolVolume::new(
        ids::volume_id(DRIVER, name).as_str(),
        PoolVolumeSpec {
            driver: DRIVER.into(),
            node: node.into(),
            name: name.into(),
            size_bytes: size,
            access: ext4(),
            parameters: Default::default(),
            content_source: None,
        },
    );
    object.metadata.labels = Some(crd::labels(DRIVER, node));
    object.metadata.finalizers = Some(vec![crd::FINALIZER.into()]);
    if ready {
        object.status = Some(serde_json::from_value(ready_status(1, size)).unwrap());
    }
    object
}

fn ready_status(generation: i64, size: u64) -> Value {
    json!({"observedGeneration": generation, "phase": "Ready", "sizeBytes": size})
}

fn mount_cap(fs_type: &str) -> v1::VolumeCapability {
    v1::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.into(),
            ..Default::default()
        })),
    }
}

fn at(node: &str) -> v1::Topology {
    v1::Topology {
        segments: [(KEY.to_owned(), node.to_owned())].into(),
    }
}

fn requirement(requisite: &[&str], preferred: &[&str]) -> v1::TopologyRequirement {
    v1::TopologyRequirement {
        requisite: requisite.iter().map(|n| at(n)).collect(),
        preferred: preferred.iter().map(|n| at(n)).collect(),
    }
}

fn create_request(name: &str, required: u64) -> v1::CreateVolumeRequest {
    v1::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: i64::try_from(required).unwrap(),
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap("ext4")],
        accessibility_requirements: Some(requirement(&["n1", "n2"], &["n1"])),
        ..Default::default()
    }
}

async fn create(
    service: &ControllerService,
    request: v1::CreateVolumeRequest,
) -> Result<v1::Volume, tonic::Status> {
    let response = service.create_volume(Request::new(request)).await?;
    Ok(response.into_inner().volume.unwrap())
}

fn is_post(request: &Recorded) -> bool {
    request.method == "POST"
}

fn posts(api: &Running) -> Vec<Recorded> {
    api.requests().into_iter().filter(is_post).collect()
}

/// Runs `call` in the background, as the CO's call that waits for a node.
fn spawn<T: Send + 'static>(
    call: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::spawn(call)
}

async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the call never answered")
        .unwrap()
}

#[tokio::test]
async fn apistub_watches_see_later_status_changes() {
    let (api, client) = ApiStub::start_with_client().await;
    let volumes: Api<PoolVolume> = Api::all(client);
    volumes
        .create(
            &PostParams::default(),
            &pool_volume("pvc-w", "n1", MIB, false),
        )
        .await
        .unwrap();
    let id = ids::volume_id(DRIVER, "pvc-w").to_string();
    let waiting = spawn({
        let id = id.clone();
        async move {
            await_condition(volumes, &id, |v: Option<&PoolVolume>| {
                v.and_then(|v| v.status.as_ref())
                    .is_some_and(|s| s.phase == crd::Phase::Ready)
            })
            .await
        }
    });
    api.wait_for_request(Recorded::is_watch).await;
    api.set_status::<PoolVolume>(&id, ready_status(1, MIB));
    assert!(join(waiting).await.unwrap().is_some());
    let watch = api.requests().into_iter().find(Recorded::is_watch).unwrap();
    assert_eq!(
        watch.param("fieldSelector"),
        Some(format!("metadata.name={id}").as_str())
    );
}

#[tokio::test]
async fn create_writes_the_pool_volume_and_answers_once_the_node_reports_ready() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    api.insert_as(&pool_node("n2", Some(20 << 30)));
    let id = ids::volume_id(DRIVER, "pvc-1").to_string();
    let mut request = create_request("pvc-1", MIB + MIB / 2);
    request.parameters = [("speed".to_owned(), "fast".to_owned())].into();

    let call = spawn({
        let service = service.clone();
        let request = request.clone();
        async move { create(&service, request).await }
    });
    let post = api.wait_for_request(is_post).await;
    assert_eq!(post.path, collection::<PoolVolume>());
    assert_eq!(post.param("fieldManager"), Some(crd::FIELD_MANAGER));
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        post.body.unwrap(),
        json!({
            "apiVersion": "plinth.dev/v1alpha1",
            "kind": "PoolVolume",
            "metadata": {
                "name": id,
                "labels": {"plinth.dev/driver": DRIVER, "plinth.dev/node": "n1"},
                "finalizers": ["plinth.dev/pool-image"],
            },
            "spec": {
                "driver": DRIVER,
                // preferred[0], though n2 has more room.
                "node": "n1",
                "name": "pvc-1",
                // 1.5 MiB rounded up to the pool's granularity.
                "sizeBytes": 2 * MIB,
                "access": {"volumeMode": "Filesystem", "fsType": "ext4"},
                "parameters": {"speed": "fast"},
            },
        })
    );
    api.set_status::<PoolVolume>(&id, ready_status(1, 2 * MIB));
    let volume = join(call).await.unwrap();
    assert_eq!(volume.volume_id, id);
    assert_eq!(volume.capacity_bytes, i64::try_from(2 * MIB).unwrap());
    assert_eq!(volume.accessible_topology, vec![at("n1")]);

    // What the controller asked, in order: the name's object, the nodes' room, the write.
    let requests = api.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, path_of::<PoolVolume>(None, &id));
    assert_eq!(requests[1].path, collection::<PoolNode>());
    assert_eq!(
        requests[1].param("labelSelector"),
        Some("plinth.dev/driver=local.csi.plinth.dev")
    );

    // The retry of a call that succeeded finds the volume and writes nothing.
    let again = create(&service, request).await.unwrap();
    assert_eq!(again, volume);
    assert_eq!(posts(&api).len(), 1);
}

#[tokio::test]
async fn a_timeout_answers_aborted_and_the_retry_waits_for_the_same_work() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    let id = ids::volume_id(DRIVER, "pvc-slow").to_string();
    let status = create(&service, create_request("pvc-slow", MIB))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("node n1"), "{status:?}");

    let watches_before = api.requests().iter().filter(|r| r.is_watch()).count();
    let retry = spawn({
        let service = service.clone();
        async move { create(&service, create_request("pvc-slow", MIB)).await }
    });
    // The retry found the object and waits on it again.
    api.wait_for_nth_request(watches_before + 1, Recorded::is_watch)
        .await;
    api.set_status::<PoolVolume>(&id, ready_status(1, MIB));
    let volume = join(retry).await.unwrap();
    assert_eq!(volume.volume_id, id);
    assert_eq!(posts(&api).len(), 1, "the retry must not write again");
}

/// csi-sanity's "capacity no pool could hold": OUT_OF_RANGE, decided from the pools'
/// published sizes before anything is written; a size that fits an emptied pool is
/// still RESOURCE_EXHAUSTED.
#[tokio::test]
async fn a_capacity_no_pool_could_ever_hold_is_out_of_range_and_writes_nothing() {
    let (api, service) = controller().await;
    // Published by both nodes the request allows: 10 GiB available of 1 TiB.
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    api.insert_as(&pool_node("n2", Some(10 << 30)));
    for huge in [(i64::MAX as u64) & !0xfff_ffff, 2 << 40] {
        let status = create(&service, create_request("pvc-huge", huge))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{huge}: {status:?}");
        assert!(status.message().contains("could ever hold"), "{status:?}");
    }
    let status = create(&service, create_request("pvc-later", 20 << 30))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(posts(&api).is_empty(), "nothing handed to a node");
}

#[tokio::test]
async fn a_recorded_failure_is_the_answer_and_the_failed_work_is_deleted() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    let id = ids::volume_id(DRIVER, "pvc-full").to_string();
    let call = spawn({
        let service = service.clone();
        async move { create(&service, create_request("pvc-full", MIB)).await }
    });
    api.wait_for_request(is_post).await;
    let uid = api.object("poolvolumes", &id).unwrap()["metadata"]["uid"].clone();
    // An old failure of another operation is not this call's answer.
    api.wait_for_request(Recorded::is_watch).await;
    api.set_status::<PoolVolume>(
        &id,
        json!({"observedGeneration": 1, "phase": "Failed",
               "error": {"operation": "Expand", "code": "OUT_OF_RANGE", "message": "old"}}),
    );
    // Nor is a failure the node retries by itself within seconds (a busy volume):
    // answering it would discard work about to succeed.
    api.set_status::<PoolVolume>(
        &id,
        json!({"observedGeneration": 1, "phase": "Failed",
               "error": {"operation": "Create", "code": "ABORTED", "message": "busy"}}),
    );
    api.set_status::<PoolVolume>(
        &id,
        json!({"observedGeneration": 1, "phase": "Failed",
               "error": {"operation": "Create", "code": "RESOURCE_EXHAUSTED",
                         "message": "the pool has 1 byte left"}}),
    );
    let status = join(call).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1 byte left"), "{status:?}");
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1,
        "only the final failure discards the work"
    );
    assert!(status.message().contains("n1"), "{status:?}");

    let delete = api.wait_for_request(|r| r.method == "DELETE").await;
    assert_eq!(delete.path, path_of::<PoolVolume>(None, &id));
    assert_eq!(delete.body.unwrap()["preconditions"]["uid"], uid);
    // The finalizer keeps it until the node has removed the image.
    assert!(
        api.object("poolvolumes", &id).unwrap()["metadata"]
            .get("deletionTimestamp")
            .is_some()
    );
}

#[tokio::test]
async fn a_create_that_loses_the_race_continues_with_the_winner_s_object() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    let id = ids::volume_id(DRIVER, "pvc-race").to_string();
    api.lose_next_create(&pool_volume("pvc-race", "n1", MIB, false));
    let call = spawn({
        let service = service.clone();
        async move { create(&service, create_request("pvc-race", MIB)).await }
    });
    api.wait_for_request(is_post).await;
    api.set_status::<PoolVolume>(&id, ready_status(1, MIB));
    assert_eq!(join(call).await.unwrap().volume_id, id);
    assert_eq!(posts(&api).len(), 1);
}

#[tokio::test]
async fn a_create_of_a_name_being_deleted_is_aborted() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    let stored = api.insert_as(&pool_volume("pvc-going", "n1", MIB, true));
    api.update(
        "poolvolumes",
        stored["metadata"]["name"].as_str().unwrap(),
        |o| {
            o["metadata"]["deletionTimestamp"] = json!(DELETED_AT);
        },
    );
    let status = create(&service, create_request("pvc-going", MIB))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("being deleted"), "{status:?}");
    assert!(posts(&api).is_empty());
}

#[tokio::test]
async fn reusing_a_name_for_another_volume_is_already_exists() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    api.insert_as(&pool_volume("pvc-1", "n1", 2 * MIB, true));
    let id = ids::volume_id(DRIVER, "pvc-1").to_string();

    // Compatible: a smaller request the existing size satisfies.
    let volume = create(&service, create_request("pvc-1", MIB))
        .await
        .unwrap();
    assert_eq!(volume.volume_id, id);

    let mut bigger = create_request("pvc-1", 3 * MIB);
    bigger.capacity_range.as_mut().unwrap().limit_bytes = 3 * MIB as i64;
    let mut xfs = create_request("pvc-1", MIB);
    xfs.volume_capabilities = vec![mount_cap("xfs")];
    let mut params = create_request("pvc-1", MIB);
    params.parameters = [("speed".to_owned(), "slow".to_owned())].into();
    let mut elsewhere = create_request("pvc-1", MIB);
    elsewhere.accessibility_requirements = Some(requirement(&["n2"], &["n2"]));
    for (what, request) in [
        ("capacity", bigger),
        ("access", xfs),
        ("parameters", params),
        ("node", elsewhere),
    ] {
        let status = create(&service, request).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
    }
    assert!(posts(&api).is_empty());
}

fn snapshot_source(id: &str) -> v1::VolumeContentSource {
    v1::VolumeContentSource {
        r#type: Some(v1::volume_content_source::Type::Snapshot(
            v1::volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    }
}

fn pool_snapshot(name: &str, node: &str, source: &str) -> PoolSnapshot {
    let mut object = PoolSnapshot::new(
        ids::snapshot_id(DRIVER, name).as_str(),
        PoolSnapshotSpec {
            driver: DRIVER.into(),
            node: node.into(),
            name: name.into(),
            source_volume_id: source.into(),
        },
    );
    object.metadata.labels = Some(crd::labels(DRIVER, node));
    object.metadata.finalizers = Some(vec![crd::FINALIZER.into()]);
    object
}

fn snapshot_ready(size: u64) -> Value {
    json!({"observedGeneration": 1, "phase": "Ready", "sizeBytes": size,
           "createdUnixNanos": 1_700_000_000_123_456_789_u64,
           "sourceAccess": {"volumeMode": "Filesystem", "fsType": "ext4"}})
}

#[tokio::test]
async fn a_restore_goes_to_the_snapshot_node_or_nowhere() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(10 << 30)));
    api.insert_as(&pool_node("n2", Some(10 << 30)));
    let source = ids::volume_id(DRIVER, "pvc-src").to_string();
    let snap = ids::snapshot_id(DRIVER, "snap-1").to_string();
    let mut snapshot = pool_snapshot("snap-1", "n2", &source);
    snapshot.status = Some(serde_json::from_value(snapshot_ready(4 * MIB)).unwrap());
    api.insert_as(&snapshot);

    // The requirement excludes the node holding the snapshot.
    let mut excluded = create_request("pvc-r", MIB);
    excluded.volume_content_source = Some(snapshot_source(&snap));
    excluded.accessibility_requirements = Some(requirement(&["n1"], &["n1"]));
    let status = create(&service, excluded).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("n2"), "{status:?}");

    // A snapshot that does not exist.
    let mut missing = create_request("pvc-r", MIB);
    missing.volume_content_source =
        Some(snapshot_source(ids::snapshot_id(DRIVER, "nope").as_str()));
    let status = create(&service, missing).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(posts(&api).is_empty());

    // Allowed (requisite names n2, preferred n1): pinned to n2, at least the snapshot's size.
    let mut request = create_request("pvc-r", MIB);
    request.volume_content_source = Some(snapshot_source(&snap));
    let id = ids::volume_id(DRIVER, "pvc-r").to_string();
    let call = spawn({
        let service = service.clone();
        async move { create(&service, request).await }
    });
    let post = api.wait_for_request(is_post).await.body.unwrap();
    assert_eq!(post["spec"]["node"], "n2");
    assert_eq!(post["metadata"]["labels"]["plinth.dev/node"], "n2");
    assert_eq!(post["spec"]["sizeBytes"], 4 * MIB);
    assert_eq!(post["spec"]["contentSource"], json!({"snapshotId": snap}));
    api.set_status::<PoolVolume>(&id, ready_status(1, 4 * MIB));
    let volume = join(call).await.unwrap();
    assert_eq!(volume.accessible_topology, vec![at("n2")]);
    assert_eq!(volume.content_source, Some(snapshot_source(&snap)));
}

async fn delete(service: &ControllerService, id: &str) -> Result<(), tonic::Status> {
    service
        .delete_volume(Request::new(v1::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        }))
        .await
        .map(drop)
}

#[tokio::test]
async fn delete_removes_the_object_waits_until_it_is_gone_and_is_idempotent() {
    let (api, service) = controller().await;
    let stored = api.insert_as(&pool_volume("pvc-d", "n1", MIB, true));
    let id = ids::volume_id(DRIVER, "pvc-d").to_string();
    let call = spawn({
        let service = service.clone();
        let id = id.clone();
        async move { delete(&service, &id).await }
    });
    let request = api.wait_for_request(|r| r.method == "DELETE").await;
    assert_eq!(request.path, path_of::<PoolVolume>(None, &id));
    assert_eq!(
        request.body.unwrap()["preconditions"],
        json!({"uid": stored["metadata"]["uid"]})
    );
    // The node removes the image, then its finalizer.
    api.update("poolvolumes", &id, |object| {
        object["metadata"]["finalizers"] = json!([]);
    });
    join(call).await.unwrap();
    assert!(api.object("poolvolumes", &id).is_none());

    // Gone already, or an ID no volume can have: done, nothing written.
    let writes = api.write_requests().len();
    delete(&service, &id).await.unwrap();
    delete(&service, "not-one-of-ours").await.unwrap();
    assert_eq!(api.write_requests().len(), writes);
}

#[tokio::test]
async fn delete_answers_the_failure_the_node_recorded_and_aborted_while_pending() {
    let (api, service) = controller().await;
    api.insert_as(&pool_volume("pvc-busy", "n1", MIB, true));
    let id = ids::volume_id(DRIVER, "pvc-busy").to_string();
    let status = delete(&service, &id).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    api.set_status::<PoolVolume>(
        &id,
        json!({"observedGeneration": 1, "phase": "Ready", "sizeBytes": MIB,
               "error": {"operation": "Delete", "code": "FAILED_PRECONDITION",
                         "message": "volume is still staged"}}),
    );
    let status = delete(&service, &id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("still staged"), "{status:?}");
    // One DELETE: the retry found the object being deleted and did not delete again.
    assert_eq!(
        api.write_requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1
    );
    // It asked the node to retry now rather than at the end of its backoff: the CO's
    // retries drive the node's.
    let asked = retry_requests(&api, &id);
    assert_eq!(asked.len(), 1, "{asked:?}");
    delete(&service, &id).await.unwrap_err();
    let asked = retry_requests(&api, &id);
    assert_eq!(asked.len(), 2);
    assert_ne!(asked[0], asked[1], "each retry is a new request");
}

/// The `plinth.dev/retry` values the controller wrote to `id`, in order.
fn retry_requests(api: &Running, id: &str) -> Vec<Value> {
    api.write_requests()
        .iter()
        .filter(|r| {
            r.method == "PATCH"
                && r.path == path_of::<PoolVolume>(None, id)
                && r.content_type.as_deref() == Some("application/merge-patch+json")
        })
        .filter_map(|r| {
            r.body.as_ref()?["metadata"]["annotations"]
                .get("plinth.dev/retry")
                .cloned()
        })
        .collect()
}

/// ControllerExpandVolume of `id` to `required` bytes, in the background.
fn spawn_expand(
    service: &ControllerService,
    id: &str,
    required: i64,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<v1::ControllerExpandVolumeResponse>, tonic::Status>,
> {
    let service = service.clone();
    let request = v1::ControllerExpandVolumeRequest {
        volume_id: id.to_owned(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    spawn(async move {
        service
            .controller_expand_volume(Request::new(request))
            .await
    })
}

#[tokio::test]
async fn expand_patches_the_size_and_answers_once_the_new_generation_is_observed() {
    let (api, service) = controller().await;
    let stored = api.insert_as(&pool_volume("pvc-e", "n1", 2 * MIB, true));
    let id = ids::volume_id(DRIVER, "pvc-e").to_string();
    let call = spawn_expand(&service, &id, i64::try_from(3 * MIB + 1).unwrap());
    let patch = api.wait_for_request(|r| r.method == "PATCH").await;
    assert_eq!(patch.path, path_of::<PoolVolume>(None, &id));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patch.body.unwrap(),
        json!({"metadata": {"resourceVersion": stored["metadata"]["resourceVersion"]},
               "spec": {"sizeBytes": 4 * MIB}})
    );
    assert_eq!(
        api.object("poolvolumes", &id).unwrap()["metadata"]["generation"],
        2
    );
    // A status of the old generation is no answer; the new one is. (Written once the
    // call watches, so it sees both in order.)
    api.wait_for_request(Recorded::is_watch).await;
    api.set_status::<PoolVolume>(&id, ready_status(1, 2 * MIB));
    api.set_status::<PoolVolume>(&id, ready_status(2, 4 * MIB));
    let response = join(call).await.unwrap().into_inner();
    assert_eq!(response.capacity_bytes, i64::try_from(4 * MIB).unwrap());
    assert!(response.node_expansion_required);
}

#[tokio::test]
async fn a_failed_expansion_is_answered_and_leaves_the_volume_in_place() {
    let (api, service) = controller().await;
    api.insert_as(&pool_volume("pvc-x", "n1", 2 * MIB, true));
    let id = ids::volume_id(DRIVER, "pvc-x").to_string();
    let call = spawn_expand(&service, &id, 1_i64 << 40);
    api.wait_for_request(|r| r.method == "PATCH").await;
    api.set_status::<PoolVolume>(
        &id,
        json!({"observedGeneration": 2, "phase": "Failed", "sizeBytes": 2 * MIB,
               "error": {"operation": "Expand", "code": "RESOURCE_EXHAUSTED",
                         "message": "no room to grow"}}),
    );
    let status = join(call).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("no room to grow"), "{status:?}");
    // Nothing deletes a volume whose expansion failed, and it is still listed, found
    // and answered to a CreateVolume retry.
    assert!(!api.write_requests().iter().any(|r| r.method == "DELETE"));
    let got = service
        .controller_get_volume(Request::new(v1::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.volume.unwrap().capacity_bytes,
        i64::try_from(2 * MIB).unwrap()
    );
    let listed = service
        .list_volumes(Request::new(v1::ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let mut retry = create_request("pvc-x", MIB);
    retry.accessibility_requirements = None;
    assert_eq!(create(&service, retry).await.unwrap().volume_id, id);

    // The resizer retries the same size: the recorded failure answers at once, the size
    // is not written again, and the node is asked to retry now.
    let spec_patches = |api: &Running| {
        api.write_requests()
            .iter()
            .filter(|r| r.body.as_ref().is_some_and(|b| b.get("spec").is_some()))
            .count()
    };
    let before = spec_patches(&api);
    let status = join(spawn_expand(&service, &id, 1_i64 << 40))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(spec_patches(&api), before);
    assert_eq!(retry_requests(&api, &id).len(), 1);
}

#[tokio::test]
async fn snapshots_are_cut_on_the_source_node_and_deleted_through_it() {
    let (api, service) = controller().await;
    api.insert_as(&pool_volume("pvc-s", "n2", 8 * MIB, true));
    let source = ids::volume_id(DRIVER, "pvc-s").to_string();
    let id = ids::snapshot_id(DRIVER, "snap-a").to_string();
    let request = |source: &str| v1::CreateSnapshotRequest {
        name: "snap-a".into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    let call = spawn({
        let service = service.clone();
        let request = request(&source);
        async move { service.create_snapshot(Request::new(request)).await }
    });
    let post = api.wait_for_request(is_post).await;
    assert_eq!(post.path, collection::<PoolSnapshot>());
    assert_eq!(
        post.body.unwrap(),
        json!({
            "apiVersion": "plinth.dev/v1alpha1",
            "kind": "PoolSnapshot",
            "metadata": {
                "name": id,
                "labels": {"plinth.dev/driver": DRIVER, "plinth.dev/node": "n2"},
                "finalizers": ["plinth.dev/pool-image"],
            },
            "spec": {"driver": DRIVER, "node": "n2", "name": "snap-a", "sourceVolumeId": source},
        })
    );
    api.set_status::<PoolSnapshot>(&id, snapshot_ready(8 * MIB));
    let snapshot = join(call).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(snapshot.snapshot_id, id);
    assert_eq!(snapshot.source_volume_id, source);
    assert!(snapshot.ready_to_use);
    assert_eq!(snapshot.size_bytes, i64::try_from(8 * MIB).unwrap());
    assert_eq!(
        snapshot.creation_time,
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789
        })
    );

    // The name with another source, and a source that does not exist.
    api.insert_as(&pool_volume("pvc-other", "n2", MIB, true));
    let other = ids::volume_id(DRIVER, "pvc-other").to_string();
    let status = service
        .create_snapshot(Request::new(request(&other)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let missing = v1::CreateSnapshotRequest {
        name: "snap-b".into(),
        source_volume_id: ids::volume_id(DRIVER, "nope").to_string(),
        ..Default::default()
    };
    let status = service
        .create_snapshot(Request::new(missing))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(posts(&api).len(), 1);

    let call = spawn({
        let service = service.clone();
        let id = id.clone();
        async move {
            service
                .delete_snapshot(Request::new(v1::DeleteSnapshotRequest {
                    snapshot_id: id,
                    ..Default::default()
                }))
                .await
        }
    });
    let delete = api.wait_for_request(|r| r.method == "DELETE").await;
    assert_eq!(delete.path, path_of::<PoolSnapshot>(None, &id));
    api.update("poolsnapshots", &id, |object| {
        object["metadata"]["finalizers"] = json!([]);
    });
    join(call).await.unwrap();
    assert!(api.object("poolsnapshots", &id).is_none());
}

#[tokio::test]
async fn capacity_is_the_named_node_or_the_roomiest() {
    let (api, service) = controller().await;
    api.insert_as(&pool_node("n1", Some(100 * MIB)));
    api.insert_as(&pool_node("n2", Some(300 * MIB)));
    api.insert_as(&pool_node("n3", None));
    let capacity = |node: Option<&str>, fs: &str| {
        let service = service.clone();
        let request = v1::GetCapacityRequest {
            volume_capabilities: vec![mount_cap(fs)],
            accessible_topology: node.map(at),
            ..Default::default()
        };
        async move {
            service
                .get_capacity(Request::new(request))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mib = |n: u64| i64::try_from(n * MIB).unwrap();
    let n1 = capacity(Some("n1"), "ext4").await;
    assert_eq!(n1.available_capacity, mib(100));
    assert_eq!(n1.maximum_volume_size, Some(mib(100)));
    assert_eq!(n1.minimum_volume_size, Some(mib(1)));
    let get = api.requests().pop().unwrap();
    assert_eq!(
        get.path,
        path_of::<PoolNode>(None, &crd::pool_node_name("n1", DRIVER))
    );
    // Published nothing yet, or no node plugin at all.
    assert_eq!(capacity(Some("n3"), "ext4").await.available_capacity, 0);
    assert_eq!(capacity(Some("n9"), "ext4").await.available_capacity, 0);
    let anywhere = capacity(None, "xfs").await;
    assert_eq!(anywhere.available_capacity, mib(300));
    assert_eq!(anywhere.minimum_volume_size, Some(mib(300)));
}

#[tokio::test]
async fn lists_show_ready_volumes_of_this_driver_in_pages() {
    let (api, service) = controller().await;
    let mut ids: Vec<String> = ["pvc-a", "pvc-b", "pvc-c"]
        .iter()
        .map(|name| {
            api.insert_as(&pool_volume(name, "n1", MIB, true));
            ids::volume_id(DRIVER, name).to_string()
        })
        .collect();
    ids.sort();
    api.insert_as(&pool_volume("pvc-pending", "n1", MIB, false));
    let mut foreign = pool_volume("pvc-foreign", "n1", MIB, true);
    foreign.metadata.labels = Some(crd::labels("other.csi.example.com", "n1"));
    api.insert_as(&foreign);
    let deleting = api.insert_as(&pool_volume("pvc-going", "n1", MIB, true));
    api.update(
        "poolvolumes",
        deleting["metadata"]["name"].as_str().unwrap(),
        |o| {
            o["metadata"]["deletionTimestamp"] = json!(DELETED_AT);
        },
    );

    let list = |token: String| {
        let service = service.clone();
        async move {
            service
                .list_volumes(Request::new(v1::ListVolumesRequest {
                    max_entries: 2,
                    starting_token: token,
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = list(String::new()).await;
    let listed = |page: &v1::ListVolumesResponse| -> Vec<String> {
        page.entries
            .iter()
            .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
            .collect()
    };
    assert_eq!(listed(&first), ids[..2]);
    assert_eq!(first.next_token, ids[2]);
    let second = list(first.next_token.clone()).await;
    assert_eq!(listed(&second), ids[2..]);
    assert_eq!(second.next_token, "");
    let request = api
        .requests()
        .into_iter()
        .rfind(|r| r.path == collection::<PoolVolume>())
        .unwrap();
    assert_eq!(
        request.param("labelSelector"),
        Some("plinth.dev/driver=local.csi.plinth.dev")
    );
    let status = service
        .list_volumes(Request::new(v1::ListVolumesRequest {
            max_entries: 0,
            starting_token: "bogus".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
}

#[tokio::test]
async fn get_and_validate_read_the_volume_object() {
    let (api, service) = controller().await;
    let mut volume = pool_volume("pvc-v", "n1", MIB, true);
    volume.spec.parameters = [("speed".to_owned(), "fast".to_owned())].into();
    api.insert_as(&volume);
    let id = ids::volume_id(DRIVER, "pvc-v").to_string();
    let got = service
        .controller_get_volume(Request::new(v1::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().accessible_topology, vec![at("n1")]);
    let status = service
        .controller_get_volume(Request::new(v1::ControllerGetVolumeRequest {
            volume_id: ids::volume_id(DRIVER, "nope").to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let validate = |fs: &str, parameters: &[(&str, &str)]| {
        let service = service.clone();
        let request = v1::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![mount_cap(fs)],
            parameters: parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        async move {
            service
                .validate_volume_capabilities(Request::new(request))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(
        validate("ext4", &[("speed", "fast")])
            .await
            .confirmed
            .is_some()
    );
    let xfs = validate("xfs", &[]).await;
    assert!(xfs.confirmed.is_none());
    assert!(xfs.message.contains("ext4"), "{}", xfs.message);
    assert!(validate("", &[("speed", "slow")]).await.confirmed.is_none());
}

#[tokio::test]
async fn snapshot_lists_filter_and_page_and_get_finds_made_snapshots_only() {
    let (api, service) = controller().await;
    let source = ids::volume_id(DRIVER, "pvc-1").to_string();
    let other = ids::volume_id(DRIVER, "pvc-2").to_string();
    let mut ready = Vec::new();
    for (name, from) in [("s1", &source), ("s2", &source), ("s3", &other)] {
        let mut snapshot = pool_snapshot(name, "n1", from);
        snapshot.status = Some(serde_json::from_value(snapshot_ready(MIB)).unwrap());
        api.insert_as(&snapshot);
        if from == &source {
            ready.push(ids::snapshot_id(DRIVER, name).to_string());
        }
    }
    ready.sort();
    api.insert_as(&pool_snapshot("s-pending", "n1", &source));
    let pending = ids::snapshot_id(DRIVER, "s-pending").to_string();

    let list = |token: String| {
        let service = service.clone();
        let source = source.clone();
        async move {
            service
                .list_snapshots(Request::new(v1::ListSnapshotsRequest {
                    max_entries: 1,
                    starting_token: token,
                    source_volume_id: source,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = list(String::new()).await;
    assert_eq!(first.entries.len(), 1);
    assert_eq!(
        first.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        ready[0]
    );
    assert_eq!(first.next_token, ready[1]);
    let second = list(first.next_token).await;
    assert_eq!(
        second.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        ready[1]
    );
    assert_eq!(second.next_token, "");

    let get = |id: String| {
        let service = service.clone();
        async move {
            service
                .get_snapshot(Request::new(v1::GetSnapshotRequest {
                    snapshot_id: id,
                    ..Default::default()
                }))
                .await
        }
    };
    let found = get(ready[0].clone()).await.unwrap().into_inner();
    assert!(found.snapshot.unwrap().ready_to_use);
    let status = get(pending).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
