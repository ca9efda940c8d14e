//! The node agent of cluster mode against the stand-in API server (`plinth-apistub`) and a real
//! pool in a temporary directory: what it does in the pool, and exactly what it writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_support;

use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use plinth_api::cluster::crd::{self, Phase, PoolNode, PoolSnapshot, PoolVolume};
use plinth_driver::cluster::agent::capacity::Publisher;
use plinth_driver::storage::local;
use serde_json::{Value, json};

use agent_support::{MIB, TestNode};
use http::{Method, StatusCode};
use plinth_apistub::{ApiStub, Fault, Recorded, Running, path_of};

const VOLUMES: &str = "poolvolumes";
const SNAPSHOTS: &str = "poolsnapshots";

/// Seeds `object` as the controller would have created it and returns it as the API
/// serves it (uid, generation, resourceVersion).
fn seed<K>(api: &Running, object: &K) -> K
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    serde_json::from_value(api.insert_as(object)).unwrap()
}

fn fetch<K>(api: &Running, name: &str) -> K
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    api.get_as::<K>(name)
        .unwrap_or_else(|| panic!("{name} is not stored"))
}

/// Reconciles `name` as the API serves it now.
async fn reconcile_stored<K>(api: &Running, node: &TestNode, name: &str) -> Action
where
    K: plinth_driver::cluster::agent::Work,
{
    node.agent.reconcile(&fetch::<K>(api, name)).await.unwrap()
}

/// Seeds the PoolVolume of CSI name `name` and lets the agent provision it.
async fn provisioned(
    api: &Running,
    node: &TestNode,
    name: &str,
    size_bytes: u64,
) -> plinth_driver::storage::pool::VolumeId {
    seed(api, &agent_support::volume(name, size_bytes));
    let id = agent_support::volume_id(name);
    reconcile_stored::<PoolVolume>(api, node, id.as_str()).await;
    id
}

/// The one write the agent made (fails when it made another number of them).
fn only_write(api: &Running) -> Recorded {
    let writes = api.write_requests();
    assert_eq!(
        writes.len(),
        1,
        "expected exactly one write, got {writes:#?}"
    );
    writes.into_iter().next().unwrap()
}

fn assert_status_merge_patch(write: &Recorded, path: &str, status: Value) {
    assert_eq!(write.method, "PATCH");
    assert_eq!(write.path, format!("{path}/status"));
    assert_eq!(
        write.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(write.param("fieldManager"), Some(crd::FIELD_MANAGER));
    assert_eq!(write.body, Some(json!({ "status": status })));
}

/// The JSON patch that drops our finalizer, guarded by a test of the list it read.
fn finalizer_removal(read: &[&str], left: &[&str]) -> Value {
    json!([
        { "op": "test", "path": "/metadata/finalizers", "value": read },
        { "op": "replace", "path": "/metadata/finalizers", "value": left },
    ])
}

/// Asks for deletion as the controller does (the finalizer keeps the object, marked).
async fn delete<K>(client: &kube::Client, name: &str)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pending_volume_is_created_at_its_exact_size_and_answered_in_one_status_patch() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    // Not a whole MiB: the pool would round a range up, the exact size it must not.
    let size = 64 * MIB + 4096;
    let pending = seed(&api, &agent_support::volume("pvc-1", size));
    let id = agent_support::volume_id("pvc-1");

    let action = node.agent.reconcile(&pending).await.unwrap();

    assert_eq!(action, Action::await_change());
    let created = node.pool().get(&id).expect("the volume is in the pool");
    assert_eq!(created.name, "pvc-1");
    assert_eq!(created.size_bytes, size);
    assert_eq!(node.image_len(&id), Some(size));
    assert_status_merge_patch(
        &only_write(&api),
        &path_of::<PoolVolume>(None, id.as_str()),
        json!({
            "observedGeneration": 1,
            "phase": "Ready",
            "sizeBytes": size,
            "error": null,
        }),
    );
}

/// Labels select what the agent watches, the spec decides: work labelled for this node
/// but placed on another node (or for another driver) is left alone entirely.
#[tokio::test]
async fn work_labelled_for_this_node_but_placed_elsewhere_is_never_touched() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let mut elsewhere = agent_support::volume("pvc-elsewhere", 16 * MIB);
    elsewhere.spec.node = "another-node".to_owned();
    let mut other_driver = agent_support::volume("pvc-other-driver", 16 * MIB);
    other_driver.spec.driver = "other.csi.example.com".to_owned();
    for forged in [elsewhere, other_driver] {
        let stored = seed(&api, &forged);
        api.take_requests();
        let action = node.agent.reconcile(&stored).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(
            api.requests(),
            Vec::<Recorded>::new(),
            "no status, no finalizer"
        );
    }
    assert!(
        node.pool().list().is_empty(),
        "nothing allocated in this pool"
    );

    // A snapshot placed elsewhere is not cut from this node's volume either.
    let id = provisioned(&api, &node, "pvc-1", 16 * MIB).await;
    let mut snapshot = agent_support::snapshot("snap-elsewhere", &id);
    snapshot.spec.node = "another-node".to_owned();
    let stored = seed(&api, &snapshot);
    api.take_requests();
    node.agent.reconcile(&stored).await.unwrap();
    assert_eq!(api.requests(), Vec::<Recorded>::new());
    assert!(node.snapshots().list().is_empty());
}

#[tokio::test]
async fn a_ready_volume_costs_no_request_at_all() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let id = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    let ready: PoolVolume = fetch(&api, id.as_str());
    assert_eq!(ready.status.as_ref().map(|s| s.phase), Some(Phase::Ready));
    api.take_requests();

    // A resync, or a restarted agent listing it again.
    let action = node.agent.reconcile(&ready).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(api.requests(), Vec::<Recorded>::new());
    assert_eq!(node.pool().list().len(), 1);
}

#[tokio::test]
async fn deleting_a_volume_empties_the_pool_then_releases_the_finalizer() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client.clone());
    let id = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    delete::<PoolVolume>(&client, id.as_str()).await;
    let deleting: PoolVolume = fetch(&api, id.as_str());
    assert!(deleting.metadata.deletion_timestamp.is_some());
    api.take_requests();

    let action = node.agent.reconcile(&deleting).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert!(
        node.pool().list().is_empty(),
        "the volume is still in the pool"
    );
    assert_eq!(node.image_len(&id), None, "the image is still there");
    let write = only_write(&api);
    assert_eq!(write.method, "PATCH");
    assert_eq!(write.path, path_of::<PoolVolume>(None, id.as_str()));
    assert_eq!(
        write.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(write.body, Some(finalizer_removal(&[crd::FINALIZER], &[])));
    assert_eq!(api.object(VOLUMES, id.as_str()), None, "the object is gone");
}

/// A loop device this test attached, detached on drop (never anyone else's).
struct Attached(plinth_driver::mount::LoopDevice);

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = plinth_driver::mount::loopdev::detach(&self.0);
    }
}

#[tokio::test]
async fn a_volume_still_attached_keeps_its_finalizer_and_the_refusal_is_recorded() {
    assert!(
        nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/loop-control").exists(),
        "this test attaches a loop device: run it as root with the loop module loaded"
    );
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client.clone());
    let id = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    // Staged on this node (kubelet has not unstaged it yet).
    let attached = Attached(
        plinth_driver::mount::loopdev::attach(&node.pool().image_path(&id)).expect("attach"),
    );
    delete::<PoolVolume>(&client, id.as_str()).await;
    api.take_requests();

    let action = reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;

    assert_ne!(
        action,
        Action::await_change(),
        "the deletion must be retried"
    );
    assert_eq!(
        node.image_len(&id),
        Some(64 * MIB),
        "an attached image was deleted"
    );
    let write = only_write(&api);
    assert_eq!(
        write.path,
        format!("{}/status", path_of::<PoolVolume>(None, id.as_str()))
    );
    let status = &write.body.unwrap()["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["error"]["operation"], "Delete");
    assert_eq!(status["error"]["code"], "FAILED_PRECONDITION");
    let held = api
        .object(VOLUMES, id.as_str())
        .expect("the finalizer holds it");
    assert_eq!(held["metadata"]["finalizers"], json!([crd::FINALIZER]));

    // Unstaged. Another event for the same attempt waits out the backoff...
    drop(attached);
    reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;
    assert_eq!(
        node.image_len(&id),
        Some(64 * MIB),
        "retried before its backoff"
    );
    // ...but the controller passing on the CO's retry is a new attempt, done at once.
    api.update(VOLUMES, id.as_str(), |object| {
        object["metadata"]["annotations"] = json!({crd::RETRY_ANNOTATION: "7"});
    });
    reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;
    assert_eq!(node.image_len(&id), None);
    assert_eq!(api.object(VOLUMES, id.as_str()), None);

    // A restarted agent retries at once as well (its backoff memory is gone).
    let id = provisioned(&api, &node, "pvc-2", 64 * MIB).await;
    let attached = Attached(
        plinth_driver::mount::loopdev::attach(&node.pool().image_path(&id)).expect("attach"),
    );
    delete::<PoolVolume>(&client, id.as_str()).await;
    reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;
    drop(attached);
    let restarted = plinth_driver::cluster::agent::Agent::new(
        node.driver.storage().clone(),
        node.driver.cluster(),
    )
    .unwrap();
    restarted
        .reconcile(&fetch::<PoolVolume>(&api, id.as_str()))
        .await
        .unwrap();
    assert_eq!(node.image_len(&id), None);
    assert_eq!(api.object(VOLUMES, id.as_str()), None);
}

#[tokio::test]
async fn a_finalizer_added_meanwhile_is_never_overwritten() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client.clone());
    let id = agent_support::volume_id("pvc-1");
    seed(&api, &agent_support::volume("pvc-1", 64 * MIB));
    delete::<PoolVolume>(&client, id.as_str()).await;
    let read: PoolVolume = fetch(&api, id.as_str());
    // Another party adds its finalizer after the agent read the object.
    api.update(VOLUMES, id.as_str(), |object| {
        object["metadata"]["finalizers"] = json!([crd::FINALIZER, "example.com/hold"]);
    });

    let result = node.agent.reconcile(&read).await;

    assert!(
        result.is_err(),
        "a stale finalizer list must not be written"
    );
    let stored = api.object(VOLUMES, id.as_str()).expect("still held");
    assert_eq!(
        stored["metadata"]["finalizers"],
        json!([crd::FINALIZER, "example.com/hold"])
    );
    // The retry reads again and keeps the other party's finalizer.
    reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;
    let stored = api
        .object(VOLUMES, id.as_str())
        .expect("still held by the other");
    assert_eq!(
        stored["metadata"]["finalizers"],
        json!(["example.com/hold"])
    );
}

/// A size the pool's filesystem could hold if it were empty, but not what is free now:
/// RESOURCE_EXHAUSTED (space may come later). Larger ones could never fit and are
/// OUT_OF_RANGE (`errors.rs`).
fn fits_only_an_empty_pool(node: &TestNode) -> u64 {
    let pool = node.pool();
    let size = pool.total_bytes().unwrap() / MIB * MIB;
    assert!(
        pool.available().unwrap() + MIB < size,
        "the test needs a pool filesystem with something on it"
    );
    size
}

#[tokio::test]
async fn a_volume_too_big_for_the_pool_is_recorded_and_retried_later_without_writes() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let id = agent_support::volume_id("huge");
    let pending = seed(
        &api,
        &agent_support::volume("huge", fits_only_an_empty_pool(&node)),
    );

    let action = node.agent.reconcile(&pending).await.unwrap();

    assert_ne!(action, Action::await_change(), "no space may come later");
    assert!(node.pool().list().is_empty());
    let write = only_write(&api);
    assert_eq!(
        write.path,
        format!("{}/status", path_of::<PoolVolume>(None, id.as_str()))
    );
    let status = &write.body.as_ref().unwrap()["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["error"]["operation"], "Create");
    assert_eq!(status["error"]["code"], "RESOURCE_EXHAUSTED");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("available"),
        "{status}"
    );
    assert!(status.get("sizeBytes").is_none(), "{status}");

    // The status write comes back as an event: not retried before its time, no write.
    api.take_requests();
    let again = reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;
    assert_ne!(again, Action::await_change());
    assert_eq!(api.requests(), Vec::<Recorded>::new());
}

#[tokio::test]
async fn a_malformed_name_is_invalid_and_waits_for_a_change() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client.clone());
    let mut bad = agent_support::volume("pvc-1", 64 * MIB);
    bad.metadata.name = Some("not-a-volume-id".to_owned());
    let bad = seed(&api, &bad);

    let action = node.agent.reconcile(&bad).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert!(node.pool().list().is_empty());
    let status = &only_write(&api).body.unwrap()["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(status["error"]["operation"], "Create");

    // Its own status event changes nothing.
    api.take_requests();
    let again = reconcile_stored::<PoolVolume>(&api, &node, "not-a-volume-id").await;
    assert_eq!(again, Action::await_change());
    assert!(api.write_requests().is_empty());

    // Deleting it needs no pool work: nothing was ever made under that name.
    delete::<PoolVolume>(&client, "not-a-volume-id").await;
    reconcile_stored::<PoolVolume>(&api, &node, "not-a-volume-id").await;
    assert_eq!(api.object(VOLUMES, "not-a-volume-id"), None);
}

#[tokio::test]
async fn raising_spec_size_grows_the_image_and_answers_the_new_generation() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let id = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    // The controller's ControllerExpandVolume: spec.sizeBytes up, generation 2.
    api.update(VOLUMES, id.as_str(), |object| {
        object["spec"]["sizeBytes"] = json!(96 * MIB);
    });
    let raised: PoolVolume = fetch(&api, id.as_str());
    assert_eq!(raised.metadata.generation, Some(2));
    api.take_requests();

    node.agent.reconcile(&raised).await.unwrap();

    assert_eq!(node.image_len(&id), Some(96 * MIB));
    assert_eq!(node.pool().get(&id).unwrap().size_bytes, 96 * MIB);
    assert_status_merge_patch(
        &only_write(&api),
        &path_of::<PoolVolume>(None, id.as_str()),
        json!({
            "observedGeneration": 2,
            "phase": "Ready",
            "sizeBytes": 96 * MIB,
            "error": null,
        }),
    );
}

#[tokio::test]
async fn a_failed_expansion_keeps_the_size_and_records_the_expand_operation() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let id = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    let too_big = fits_only_an_empty_pool(&node);
    api.update(VOLUMES, id.as_str(), |object| {
        object["spec"]["sizeBytes"] = json!(too_big);
    });
    api.take_requests();

    reconcile_stored::<PoolVolume>(&api, &node, id.as_str()).await;

    assert_eq!(node.image_len(&id), Some(64 * MIB));
    let status = &only_write(&api).body.unwrap()["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["error"]["operation"], "Expand");
    assert_eq!(status["error"]["code"], "RESOURCE_EXHAUSTED");
    // The image still has its old size, and the status says so.
    assert_eq!(status["sizeBytes"], 64 * MIB);
}

#[tokio::test]
async fn a_snapshot_is_cut_under_its_id_reported_and_deleted_with_its_object() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client.clone());
    let source = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    let snap_id = agent_support::snapshot_id("snap-1");
    let pending = seed(&api, &agent_support::snapshot("snap-1", &source));
    api.take_requests();

    let action = node.agent.reconcile(&pending).await.unwrap();

    assert_eq!(action, Action::await_change());
    let cut = node
        .snapshots()
        .get(&snap_id)
        .expect("snapshot in the store");
    assert_eq!(cut.source_volume_id, source);
    assert_eq!(cut.name.as_deref(), Some("snap-1"));
    assert_status_merge_patch(
        &only_write(&api),
        &path_of::<PoolSnapshot>(None, snap_id.as_str()),
        json!({
            "observedGeneration": 1,
            "phase": "Ready",
            "sizeBytes": 64 * MIB,
            "createdUnixNanos": cut.created_unix_nanos,
            "sourceAccess": {"volumeMode": "Filesystem", "fsType": "ext4"},
            "error": null,
        }),
    );

    // Ready: nothing more.
    api.take_requests();
    reconcile_stored::<PoolSnapshot>(&api, &node, snap_id.as_str()).await;
    assert_eq!(api.requests(), Vec::<Recorded>::new());

    delete::<PoolSnapshot>(&client, snap_id.as_str()).await;
    api.take_requests();
    reconcile_stored::<PoolSnapshot>(&api, &node, snap_id.as_str()).await;
    assert!(
        node.snapshots().list().is_empty(),
        "the snapshot is still stored"
    );
    let write = only_write(&api);
    assert_eq!(write.path, path_of::<PoolSnapshot>(None, snap_id.as_str()));
    assert_eq!(write.body, Some(finalizer_removal(&[crd::FINALIZER], &[])));
    assert_eq!(api.object(SNAPSHOTS, snap_id.as_str()), None);
}

#[tokio::test]
async fn a_snapshot_of_a_missing_volume_is_recorded_as_not_found() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let pending = seed(
        &api,
        &agent_support::snapshot("snap-1", &agent_support::volume_id("never-made")),
    );

    node.agent.reconcile(&pending).await.unwrap();

    assert!(node.snapshots().list().is_empty());
    let status = &only_write(&api).body.unwrap()["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["error"]["operation"], "Create");
    assert_eq!(status["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn a_volume_restored_from_a_snapshot_gets_the_snapshot_data() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let source = provisioned(&api, &node, "pvc-1", 64 * MIB).await;
    let marker = b"written before the snapshot";
    write_at(&node.pool().image_path(&source), 5 * MIB, marker);
    let snap_id = agent_support::snapshot_id("snap-1");
    let snap = seed(&api, &agent_support::snapshot("snap-1", &source));
    node.agent.reconcile(&snap).await.unwrap();
    let restored_id = agent_support::volume_id("pvc-2");
    let pending = seed(&api, &agent_support::restored("pvc-2", 80 * MIB, &snap_id));

    node.agent.reconcile(&pending).await.unwrap();

    let restored: PoolVolume = fetch(&api, restored_id.as_str());
    let status = restored.status.expect("answered");
    assert_eq!(status.phase, Phase::Ready, "{:?}", status.error);
    assert_eq!(status.size_bytes, Some(80 * MIB));
    assert_eq!(node.image_len(&restored_id), Some(80 * MIB));
    let image = node.pool().image_path(&restored_id);
    assert_eq!(read_at(&image, 5 * MIB, marker.len()), marker);
}

#[tokio::test]
async fn capacity_is_published_by_server_side_apply_only_when_it_changed() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::on_own_filesystem(client);
    let mut publisher = Publisher::default();
    let name = crd::pool_node_name(agent_support::NODE, agent_support::DRIVER);
    let path = path_of::<PoolNode>(None, &name);

    assert!(publisher.publish(&node.agent).await.unwrap());

    let writes = api.write_requests();
    assert_eq!(writes.len(), 2, "{writes:#?}");
    for write in &writes {
        assert_eq!(write.method, "PATCH");
        assert_eq!(
            write.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(write.param("fieldManager"), Some(crd::FIELD_MANAGER));
        assert_eq!(write.param("force"), Some("true"));
    }
    assert_eq!(writes[0].path, path);
    assert_eq!(
        writes[0].body,
        Some(json!({
            "apiVersion": "plinth.dev/v1alpha1",
            "kind": "PoolNode",
            "metadata": {
                "name": name,
                "labels": {
                    crd::DRIVER_LABEL: agent_support::DRIVER,
                    crd::NODE_LABEL: agent_support::NODE,
                },
            },
            "spec": {"driver": agent_support::DRIVER, "node": agent_support::NODE},
        }))
    );
    assert_eq!(writes[1].path, format!("{path}/status"));
    let published = fetch::<PoolNode>(&api, &name)
        .status
        .expect("status written");
    let pool = node.pool();
    assert_eq!(published.volumes, 0);
    assert_eq!(published.snapshots, 0);
    assert_eq!(published.total_bytes, pool.total_bytes().unwrap());
    assert!(published.available_bytes > 0);
    assert_eq!(
        published.pool_filesystem,
        node.snapshots().filesystem().to_string()
    );

    // Nothing moved: nothing written.
    api.take_requests();
    assert!(!publisher.publish(&node.agent).await.unwrap());
    assert_eq!(api.requests(), Vec::<Recorded>::new());

    // A volume appears: the status alone is written again.
    let request = plinth_driver::storage::pool::CreateVolumeRequest {
        name: "pvc-1".into(),
        id: None,
        capacity: plinth_driver::storage::pool::CapacityRange::new(64 * MIB, 64 * MIB),
        access: plinth_driver::storage::pool::VolumeAccess::Block,
        parameters: Default::default(),
        content_source: None,
    };
    local::create_volume(node.driver.storage(), request, None)
        .await
        .unwrap();
    assert!(publisher.publish(&node.agent).await.unwrap());
    let write = only_write(&api);
    assert_eq!(write.path, format!("{path}/status"));
    let published = fetch::<PoolNode>(&api, &name).status.unwrap();
    assert_eq!(published.volumes, 1);
    assert_eq!(published.available_bytes, pool.available().unwrap());
}

#[tokio::test]
async fn a_failed_capacity_publish_is_retried_whole() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let mut publisher = Publisher::default();
    let name = crd::pool_node_name(agent_support::NODE, agent_support::DRIVER);
    let status_path = format!("{}/status", path_of::<PoolNode>(None, &name));
    api.inject(Fault::new(
        Method::PATCH,
        status_path,
        StatusCode::INTERNAL_SERVER_ERROR,
    ));

    assert!(publisher.publish(&node.agent).await.is_err());
    // Nothing changed in the pool, but nothing was published either.
    assert!(publisher.publish(&node.agent).await.unwrap());
    assert!(fetch::<PoolNode>(&api, &name).status.is_some());
}

#[tokio::test]
async fn the_running_agent_serves_only_its_node_and_publishes_after_its_work() {
    let (api, client) = ApiStub::start_with_client().await;
    let node = TestNode::new(client);
    let ours = agent_support::volume_id("pvc-1");
    seed(&api, &agent_support::volume("pvc-1", 64 * MIB));
    let mut theirs = agent_support::volume("pvc-2", 64 * MIB);
    theirs.spec.node = "node-b".into();
    theirs
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(crd::NODE_LABEL.into(), "node-b".into());
    let theirs = seed(&api, &theirs);
    let name = crd::pool_node_name(agent_support::NODE, agent_support::DRIVER);

    let running = tokio::spawn(node.agent.clone().run());

    api.wait_for_object(&path_of::<PoolVolume>(None, ours.as_str()), |o| {
        o.is_some_and(|o| o["status"]["phase"] == "Ready")
    })
    .await;
    // The capacity interval is an hour: only the agent's own work can have triggered
    // a publish showing the volume.
    api.wait_for_object(&path_of::<PoolNode>(None, &name), |o| {
        o.is_some_and(|o| o["status"]["volumes"] == 1)
    })
    .await;
    let watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(Recorded::is_watch)
        .collect();
    assert!(!watches.is_empty());
    for watch in &watches {
        assert_eq!(
            watch.param("labelSelector"),
            Some(crd::node_selector(agent_support::DRIVER, agent_support::NODE).as_str())
        );
    }
    let untouched = api.object(VOLUMES, &theirs.metadata.name.unwrap()).unwrap();
    assert!(untouched.get("status").is_none(), "{untouched}");
    assert_eq!(node.pool().list().len(), 1);
    running.abort();
}

fn write_at(path: &std::path::Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, offset).unwrap();
    file.sync_all().unwrap();
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut buffer = vec![0; len];
    file.read_exact_at(&mut buffer, offset).unwrap();
    buffer
}

/// The whole agent loop against the HTTP stand-in of the API server: objects a
/// controller creates get done, a deleted one disappears with its image, and a
/// restarted agent finishes what was left pending without touching finished work.
mod through_the_api_server {
    use std::time::Duration;

    use kube::api::{Api, DeleteParams, PostParams};
    use kube::runtime::wait::{Condition, await_condition, conditions};
    use plinth_api::cluster::crd::{Phase, PoolNode, PoolSnapshot, PoolVolume};
    use plinth_apistub::{ApiStub, Verb};
    use tokio::task::JoinHandle;

    use super::agent_support::{self, MIB, TestNode};

    /// Far longer than any step takes; only a broken agent waits this long.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn start(node: &TestNode) -> JoinHandle<()> {
        tokio::spawn(node.agent.clone().run())
    }

    async fn stop(agent: JoinHandle<()>) {
        agent.abort();
        assert!(agent.await.unwrap_err().is_cancelled());
    }

    async fn wait_until<K>(
        client: &kube::Client,
        name: &str,
        what: &str,
        condition: impl Condition<K>,
    ) where
        K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        let api = Api::<K>::all(client.clone());
        tokio::time::timeout(PATIENCE, await_condition(api, name, condition))
            .await
            .unwrap_or_else(|_| panic!("{name} never became {what}"))
            .unwrap();
    }

    fn volume_ready(object: Option<&PoolVolume>) -> bool {
        object
            .and_then(|o| o.status.as_ref())
            .is_some_and(|s| s.phase == Phase::Ready)
    }

    fn snapshot_ready(object: Option<&PoolSnapshot>) -> bool {
        object
            .and_then(|o| o.status.as_ref())
            .is_some_and(|s| s.phase == Phase::Ready)
    }

    #[tokio::test]
    async fn the_agent_loop_does_pending_work_deletes_and_resumes_after_a_restart() {
        let stub = ApiStub::start().await.unwrap();
        let client = stub.client().unwrap();
        let volumes = Api::<PoolVolume>::all(client.clone());
        let snapshots = Api::<PoolSnapshot>::all(client.clone());
        let node = TestNode::new(client.clone());
        let post = PostParams::default();
        let kept = agent_support::volume("pvc-kept", 64 * MIB);
        let gone = agent_support::volume("pvc-gone", 32 * MIB);
        let kept_id = agent_support::volume_id("pvc-kept");
        let gone_id = agent_support::volume_id("pvc-gone");
        volumes.create(&post, &kept).await.unwrap();

        let agent = start(&node);
        wait_until(&client, kept_id.as_str(), "Ready", volume_ready).await;
        volumes.create(&post, &gone).await.unwrap();
        wait_until(&client, gone_id.as_str(), "Ready", volume_ready).await;
        let snap_id = agent_support::snapshot_id("snap-1");
        snapshots
            .create(&post, &agent_support::snapshot("snap-1", &kept_id))
            .await
            .unwrap();
        wait_until(&client, snap_id.as_str(), "Ready", snapshot_ready).await;
        assert_eq!(node.image_len(&gone_id), Some(32 * MIB));

        let uid = volumes
            .get(gone_id.as_str())
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        volumes
            .delete(gone_id.as_str(), &DeleteParams::default())
            .await
            .unwrap();
        wait_until(
            &client,
            gone_id.as_str(),
            "deleted",
            conditions::is_deleted::<PoolVolume>(&uid),
        )
        .await;
        assert_eq!(
            node.image_len(&gone_id),
            None,
            "the deleted volume's image is left"
        );
        let pool_node = crd_pool_node_name();
        let published = Api::<PoolNode>::all(client.clone());
        // Published after the deletion, without waiting for the (hour-long) interval.
        wait_until(
            &client,
            &pool_node,
            "showing one volume",
            |o: Option<&PoolNode>| {
                o.and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.volumes == 1 && s.snapshots == 1)
            },
        )
        .await;
        assert!(published.get(&pool_node).await.is_ok());

        // The node plugin goes away; meanwhile the controller asks for more.
        stop(agent).await;
        let late = agent_support::volume("pvc-late", 48 * MIB);
        let late_id = agent_support::volume_id("pvc-late");
        volumes.create(&post, &late).await.unwrap();
        snapshots
            .delete(snap_id.as_str(), &DeleteParams::default())
            .await
            .unwrap();
        assert!(
            snapshots.get(snap_id.as_str()).await.is_ok(),
            "the finalizer holds the snapshot until the node removed it"
        );

        let node = node.restart(client.clone());
        let before = stub.writes();
        let agent = start(&node);
        wait_until(&client, late_id.as_str(), "Ready", volume_ready).await;
        let snap_uid = stub
            .object("poolsnapshots", snap_id.as_str())
            .map(|o| o["metadata"]["uid"].as_str().unwrap_or_default().to_owned());
        if let Some(snap_uid) = snap_uid {
            wait_until(
                &client,
                snap_id.as_str(),
                "deleted",
                conditions::is_deleted::<PoolSnapshot>(&snap_uid),
            )
            .await;
        }
        assert!(node.snapshots().list().is_empty());
        assert_eq!(node.image_len(&late_id), Some(48 * MIB));
        assert_eq!(node.image_len(&kept_id), Some(64 * MIB));
        wait_until(
            &client,
            &pool_node,
            "showing two volumes",
            |o: Option<&PoolNode>| {
                o.and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.volumes == 2 && s.snapshots == 0)
            },
        )
        .await;
        // Give stray writes (there must be none) the time to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop(agent).await;

        let writes = stub.writes().since(&before);
        let listed: Vec<_> = writes.iter().collect();
        // The pending volume's status, once; the finished volume: nothing.
        assert_eq!(writes.to_resource("poolvolumes"), 1, "{listed:?}");
        assert_eq!(writes.to_status("poolvolumes"), 1, "{listed:?}");
        // The deleted snapshot's finalizer release, once.
        assert_eq!(writes.count(Verb::Patch, "poolsnapshots"), 1, "{listed:?}");
        assert_eq!(writes.to_status("poolsnapshots"), 0, "{listed:?}");
    }

    fn crd_pool_node_name() -> String {
        plinth_api::cluster::crd::pool_node_name(agent_support::NODE, agent_support::DRIVER)
    }
}
