//! Cluster mode with real processes: a controller-mode driver and node-mode drivers, each
//! its own `plinth-driver` process with its own socket and pool, talking only through a
//! stand-in for the Kubernetes API (`plinth-apistub`, over HTTP, via KUBECONFIG).
//!
//! The controller is called like external-provisioner, external-snapshotter and
//! external-resizer call it; the node sockets like kubelet calls them. Volumes are real:
//! images in the node's pool, loop devices, ext4/xfs, mounts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use data_rpc::*;
use kube::Api;
use plinth_api::cluster::crd::{Phase, PoolNode, PoolSnapshot, PoolVolume, pool_node_name};
use plinth_csi_proto::v1;
use tonic::Code;

const DRIVER: &str = "local.csi.plinth.dev";

/// The API stand-in, one controller-mode driver and node-mode drivers.
struct Cluster {
    api: StandIn,
    controller: TestDriver,
    nodes: Vec<(String, TestDriver)>,
}

impl Cluster {
    async fn start(nodes: &[&str]) -> Self {
        require_host();
        let api = stand_in().await;
        let controller = api
            .driver(
                "control-plane-1",
                &["--mode=controller", "--handoff-timeout-seconds=2"],
            )
            .await;
        let mut started = Vec::new();
        for node in nodes {
            let driver = api
                .driver(node, &["--mode=node", "--capacity-interval-seconds=1"])
                .await;
            started.push(((*node).to_owned(), driver));
        }
        let cluster = Self {
            api,
            controller,
            nodes: started,
        };
        for (node, _) in &cluster.nodes {
            cluster
                .wait_for(&format!("node {node} to publish its pool"), || async {
                    cluster.pool_node(node).await.is_some()
                })
                .await;
        }
        cluster
    }

    fn node(&self, name: &str) -> &TestDriver {
        &self
            .nodes
            .iter()
            .find(|(n, _)| n == name)
            .expect("no such node")
            .1
    }

    fn node_mut(&mut self, name: &str) -> &mut TestDriver {
        &mut self
            .nodes
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("no such node")
            .1
    }

    fn client(&self) -> kube::Client {
        self.api.api.client().unwrap()
    }

    async fn pool_volume(&self, id: &str) -> Option<PoolVolume> {
        Api::<PoolVolume>::all(self.client())
            .get_opt(id)
            .await
            .unwrap()
    }

    async fn pool_snapshot(&self, id: &str) -> Option<PoolSnapshot> {
        Api::<PoolSnapshot>::all(self.client())
            .get_opt(id)
            .await
            .unwrap()
    }

    /// The node's published pool status, once it has one.
    async fn pool_node(&self, node: &str) -> Option<plinth_api::cluster::crd::PoolNodeStatus> {
        Api::<PoolNode>::all(self.client())
            .get_opt(&pool_node_name(node, DRIVER))
            .await
            .unwrap()
            .and_then(|n| n.status)
    }

    /// DeleteVolume retried the way external-provisioner retries it, until it succeeds:
    /// the node answers a refused deletion (volume still attached) with a failure and
    /// retries on its own once kubelet has let go of the volume.
    async fn delete_eventually(&self, id: &str) {
        self.wait_for(&format!("DeleteVolume {id} to succeed"), || {
            let request = v1::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            };
            async move {
                match self
                    .controller
                    .controller()
                    .await
                    .delete_volume(request)
                    .await
                {
                    Ok(_) => true,
                    Err(status)
                        if matches!(status.code(), Code::FailedPrecondition | Code::Aborted) =>
                    {
                        false
                    }
                    Err(status) => panic!("DeleteVolume {id}: {status}"),
                }
            }
        })
        .await;
    }

    async fn wait_for<F, Fut>(&self, what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- controller log:\n{}\n--- node logs:\n{}",
                self.controller.log(),
                self.nodes
                    .iter()
                    .map(|(n, d)| format!("[{n}]\n{}", d.log()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn segment(node: &str) -> v1::Topology {
    v1::Topology {
        segments: [(TOPOLOGY_KEY.to_owned(), node.to_owned())].into(),
    }
}

/// What external-provisioner sends with WaitForFirstConsumer and --strict-topology: the
/// node the scheduler selected, as the only requisite and preferred segment.
fn on_node(mut request: v1::CreateVolumeRequest, node: &str) -> v1::CreateVolumeRequest {
    request.accessibility_requirements = Some(v1::TopologyRequirement {
        requisite: vec![segment(node)],
        preferred: vec![segment(node)],
    });
    request
}

fn volume_image(driver: &TestDriver, id: &str) -> PathBuf {
    driver.pool.join("volumes").join(format!("{id}.img"))
}

/// Image files (volumes and snapshots) in a pool, excluding templates.
fn images_in(pool: &Path) -> Vec<PathBuf> {
    ["volumes", "snapshots"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(pool.join(dir)).ok())
        .flatten()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "img"))
        .collect()
}

async fn create_on(cluster: &Cluster, request: v1::CreateVolumeRequest) -> v1::Volume {
    let name = request.name.clone();
    cluster
        .controller
        .controller()
        .await
        .create_volume(request)
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}"))
        .into_inner()
        .volume
        .expect("CreateVolume returned no volume")
}

#[tokio::test]
async fn volumes_are_provisioned_snapshotted_restored_expanded_and_deleted_on_their_node() {
    let cluster = Cluster::start(&["node-a", "node-b"]).await;
    assert!(
        !cluster.controller.pool.exists(),
        "the controller of a cluster must not open a pool of its own"
    );
    let xfs = mount_cap("xfs");

    // Provision on the node the scheduler selected.
    let request = on_node(
        create_request(&name("data"), xfs.clone(), 320 * MIB, 0),
        "node-b",
    );
    let volume = create_on(&cluster, request.clone()).await;
    assert_eq!(volume.accessible_topology, vec![segment("node-b")]);
    let id = volume.volume_id.clone();
    assert!(volume_image(cluster.node("node-b"), &id).exists());
    assert!(images_in(&cluster.node("node-a").pool).is_empty());
    let record = cluster.pool_volume(&id).await.expect("PoolVolume recorded");
    assert_eq!(record.spec.node, "node-b");
    assert_eq!(record.status.as_ref().map(|s| s.phase), Some(Phase::Ready));
    // The provisioner's retry finds the same volume.
    assert_eq!(create_on(&cluster, request).await.volume_id, id);

    // Use it on the node, then snapshot it through the controller.
    let node_b = cluster.node("node-b");
    let published = publish(node_b, &id, "data", &xfs).await;
    write_unsynced(&published.target, "file", "before the snapshot");
    let snap = snapshot(&cluster.controller, &name("snap"), &id).await;
    assert!(snap.ready_to_use);
    let snap_record = cluster
        .pool_snapshot(&snap.snapshot_id)
        .await
        .expect("PoolSnapshot recorded");
    assert_eq!(snap_record.spec.node, "node-b");
    write_unsynced(&published.target, "file", "after the snapshot");

    // A restore lives where its snapshot is: elsewhere is refused, there it works.
    let restore = |node: &str| {
        on_node(
            create_from_request(
                &name("restored"),
                xfs.clone(),
                0,
                from_snapshot(&snap.snapshot_id),
            ),
            node,
        )
    };
    let refused = cluster
        .controller
        .controller()
        .await
        .create_volume(restore("node-a"))
        .await;
    assert_code(refused, Code::ResourceExhausted);
    let restored = create_on(&cluster, restore("node-b")).await;
    assert_eq!(restored.accessible_topology, vec![segment("node-b")]);
    let restored_mount = publish(node_b, &restored.volume_id, "restored", &xfs).await;
    assert_eq!(read(&restored_mount.target, "file"), "before the snapshot");

    // Expansion: the controller grows the image on its node, the node grows xfs online.
    let before = fs_size(&published.target);
    let expanded = cluster
        .controller
        .controller()
        .await
        .controller_expand_volume(v1::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 512 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(expanded.capacity_bytes >= 512 * MIB);
    assert!(expanded.node_expansion_required);
    node_b
        .node()
        .await
        .node_expand_volume(v1::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: published.target.clone(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 512 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        fs_size(&published.target) > before,
        "the pod sees the new size"
    );

    // Deleting a volume still in use is refused by its node, and said so.
    let in_use = cluster
        .controller
        .controller()
        .await
        .delete_volume(v1::DeleteVolumeRequest {
            volume_id: restored.volume_id.clone(),
            ..Default::default()
        })
        .await;
    assert_code(in_use, Code::FailedPrecondition);

    // Clean up like kubelet and the sidecars would; the pools end up empty.
    unpublish(node_b, &published).await;
    unpublish(node_b, &restored_mount).await;
    delete_snapshot(&cluster.controller, &snap.snapshot_id)
        .await
        .unwrap();
    cluster.delete_eventually(&restored.volume_id).await;
    cluster.delete_eventually(&id).await;
    assert!(cluster.pool_volume(&id).await.is_none());
    assert!(cluster.pool_snapshot(&snap.snapshot_id).await.is_none());
    assert_eq!(images_in(&node_b.pool), Vec::<PathBuf>::new());
    cluster
        .wait_for("node-b to publish an empty pool", || async {
            cluster
                .pool_node("node-b")
                .await
                .is_some_and(|s| s.volumes == 0 && s.snapshots == 0)
        })
        .await;
}

#[tokio::test]
async fn capacity_is_answered_per_node_and_a_full_node_gets_nothing() {
    let cluster = Cluster::start(&["node-a"]).await;
    let mut controller = cluster.controller.controller().await;
    let capacity = |node: &str| v1::GetCapacityRequest {
        volume_capabilities: vec![block_cap()],
        accessible_topology: Some(segment(node)),
        ..Default::default()
    };
    let published = cluster.pool_node("node-a").await.unwrap().available_bytes;
    let answered = controller
        .get_capacity(capacity("node-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        u64::try_from(answered.available_capacity).unwrap(),
        published
    );
    assert!(published > 0);
    let elsewhere = controller
        .get_capacity(capacity("node-without-plinth"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(elsewhere.available_capacity, 0);

    // More than the node has: refused before any work is handed to it.
    let too_big = i64::try_from(published).unwrap() + 64 * MIB;
    let request = on_node(
        create_request(&name("huge"), block_cap(), too_big, 0),
        "node-a",
    );
    assert_code(
        controller.create_volume(request).await,
        Code::ResourceExhausted,
    );
    assert!(
        Api::<PoolVolume>::all(cluster.client())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(images_in(&cluster.node("node-a").pool).is_empty());
}

#[tokio::test]
async fn a_node_restarted_mid_work_finishes_it_once_and_rewrites_nothing() {
    let mut cluster = Cluster::start(&["node-a"]).await;
    cluster.node_mut("node-a").kill9();

    // The node is down: the controller records the work, waits its bounded time and
    // answers ABORTED, so the provisioner retries later.
    let request = on_node(
        create_request(&name("late"), block_cap(), 16 * MIB, 0),
        "node-a",
    );
    let pending = cluster
        .controller
        .controller()
        .await
        .create_volume(request.clone())
        .await;
    assert_code(pending, Code::Aborted);
    let id = plinth_driver::cluster::ids::volume_id(DRIVER, &request.name).to_string();
    let record = cluster.pool_volume(&id).await.expect("work recorded");
    assert_ne!(record.status.map(|s| s.phase), Some(Phase::Ready));

    // The node comes back, picks the work up; the retry gets the volume.
    cluster.node_mut("node-a").spawn().await;
    let volume = create_on(&cluster, request.clone()).await;
    assert_eq!(volume.volume_id, id);
    let node_a = cluster.node("node-a");
    assert_eq!(images_in(&node_a.pool), vec![volume_image(node_a, &id)]);

    // Another restart finds nothing to do: no write to the volume's record.
    let before = cluster.api.api.writes();
    let watches = cluster.api.api.watches_started();
    let node_a = cluster.node_mut("node-a");
    node_a.terminate().await;
    node_a.spawn().await;
    let restarted = cluster.node("node-a");
    // Its volume and snapshot watches are up again: it has listed its work.
    cluster
        .wait_for("the restarted node to watch its work", || async {
            cluster.api.api.watches_started() >= watches + 2
        })
        .await;
    // Long enough for any reconcile the list triggered to have written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        cluster
            .api
            .api
            .writes()
            .since(&before)
            .to_resource("poolvolumes")
            + cluster
                .api
                .api
                .writes()
                .since(&before)
                .to_status("poolvolumes"),
        0,
        "a restarted node must not rewrite finished work"
    );
    cluster.delete_eventually(&id).await;
    assert!(images_in(&restarted.pool).is_empty());
}

/// CreateVolume retried the way external-provisioner retries it (ABORTED and UNAVAILABLE
/// are "try again"), until it succeeds or `within` has passed.
async fn create_retried(
    cluster: &Cluster,
    request: &v1::CreateVolumeRequest,
    within: Duration,
) -> v1::Volume {
    let deadline = Instant::now() + within;
    loop {
        let answer = match cluster
            .controller
            .controller()
            .await
            .create_volume(request.clone())
            .await
        {
            Ok(response) => return response.into_inner().volume.expect("a volume"),
            Err(status) => status,
        };
        assert!(
            matches!(
                answer.code(),
                Code::Aborted | Code::Unavailable | Code::DeadlineExceeded
            ),
            "CreateVolume {}: {answer}",
            request.name
        );
        assert!(
            Instant::now() < deadline,
            "CreateVolume {} did not succeed within {within:?} (last: {answer})\n--- controller log:\n{}\n--- node logs:\n{}",
            request.name,
            cluster.controller.log(),
            cluster
                .nodes
                .iter()
                .map(|(n, d)| format!("[{n}]\n{}", d.log()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn provisioning_works_again_after_the_api_server_restarts() {
    // Generous for what recovery takes (a retry or two: ~3 s here); kube's default
    // trigger backoff made it ~25 s after a 12 s outage.
    const BOUND: u64 = 10;
    let cluster = Cluster::start(&["node-a"]).await;
    let first = on_node(
        create_request(&name("before-restart"), block_cap(), 16 * MIB, 0),
        "node-a",
    );
    let first = create_on(&cluster, first).await;

    // The API server restarts under both drivers: their watches and connections are cut,
    // it refuses connections for a while, and comes back with a compacted history (no
    // earlier resourceVersion can be resumed) and a watch cache that answers "Any" reads
    // from before the restart.
    cluster
        .api
        .api
        .restart(
            plinth_apistub::Restart::new()
                .down_for(Duration::from_secs(12))
                .stale_cache(),
        )
        .await;
    let up = Instant::now();

    // A provisioning made afterwards is handed to the node and completes within seconds,
    // as the provisioner's retries would see it.
    let second = on_node(
        create_request(&name("after-restart"), block_cap(), 16 * MIB, 0),
        "node-a",
    );
    let volume = create_retried(&cluster, &second, Duration::from_secs(BOUND)).await;
    eprintln!("API server up -> CreateVolume answered: {:?}", up.elapsed());
    let node_a = cluster.node("node-a");
    assert!(volume_image(node_a, &volume.volume_id).exists());
    let record = cluster
        .pool_volume(&volume.volume_id)
        .await
        .expect("PoolVolume recorded");
    assert_eq!(record.status.map(|s| s.phase), Some(Phase::Ready));

    cluster.delete_eventually(&volume.volume_id).await;
    cluster.delete_eventually(&first.volume_id).await;
    assert!(images_in(&node_a.pool).is_empty());
}
