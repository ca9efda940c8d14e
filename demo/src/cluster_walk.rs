//! Cluster mode on one machine: a controller-mode and a node-mode driver, each with its
//! own socket (and the node with its own pool), in this process, talking only through a
//! stand-in for the Kubernetes API (`plinth-apistub`), as they talk through the real one
//! in a cluster.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures::FutureExt;
use kube::Api;
use plinth_api::cluster::crd::{PoolNode, PoolVolume, pool_node_name};
use plinth_apistub::{ApiStub, Running};
use plinth_csi_proto::v1::{self, controller_client::ControllerClient};
use plinth_driver::config::{Cli as DriverCli, Config, DEFAULT_DRIVER_NAME, DEFAULT_TOPOLOGY_KEY};
use plinth_driver::server;
use tokio::sync::oneshot;

use crate::volume_walk::{connect, mount_capability, step};

const NODE: &str = "worker-1";

/// Creates a volume through the controller, shows the record its node answered on, and
/// deletes it again.
pub async fn show(work: &Path) -> Result<()> {
    println!("\nCluster mode: the controller hands each volume to its node through the API:");
    let api = ApiStub::start()
        .await
        .context("starting the API stand-in")?;
    let controller_socket = work.join("cluster-controller.sock");
    let node_socket = work.join("cluster-node.sock");
    let node = config(&[
        "--mode=node",
        &format!("--node-id={NODE}"),
        &format!("--endpoint=unix://{}", node_socket.display()),
        &format!("--pool={}", work.join("cluster-pool").display()),
        &format!("--kubelet-dir={}", work.join("kubelet").display()),
    ])?;
    let controller = config(&[
        "--mode=controller",
        "--node-id=control-plane",
        &format!("--endpoint=unix://{}", controller_socket.display()),
    ])?;
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    }
    .shared();
    let node_task = tokio::spawn(server::run_with(node, Some(api.client()?), stopped.clone()));
    let controller_task = tokio::spawn(server::run_with(controller, Some(api.client()?), stopped));
    let walked = walk(&api, &controller_socket, &node_socket).await;
    drop(stop);
    for task in [node_task, controller_task] {
        task.await.context("a driver task panicked")??;
    }
    api.shutdown().await;
    walked
}

fn config(args: &[&str]) -> Result<Config> {
    let mut argv = vec!["plinth-driver", "--log-level=warn"];
    argv.extend_from_slice(args);
    Ok(Config::from_cli(DriverCli::try_parse_from(argv)?, None)?)
}

async fn walk(api: &Running, controller: &Path, node: &Path) -> Result<()> {
    let mut csi = ControllerClient::new(connect(controller).await?);
    connect(node).await?;
    let client = api.client()?;
    let available = wait_for_pool_node(&client).await?;
    println!(
        "  PoolNode {}: {} MiB available",
        pool_node_name(NODE, DEFAULT_DRIVER_NAME),
        available >> 20
    );

    // What external-provisioner sends with WaitForFirstConsumer: the selected node.
    let segment = v1::Topology {
        segments: [(DEFAULT_TOPOLOGY_KEY.to_owned(), NODE.to_owned())].into(),
    };
    let request = v1::CreateVolumeRequest {
        name: "pvc-cluster".to_owned(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_capability("ext4")],
        accessibility_requirements: Some(v1::TopologyRequirement {
            requisite: vec![segment.clone()],
            preferred: vec![segment],
        }),
        ..Default::default()
    };
    let volume = step(
        "CreateVolume",
        async {
            csi.create_volume(request)
                .await?
                .into_inner()
                .volume
                .context("CreateVolume returned no volume")
        },
        |v| format!("pvc-cluster → {} on {NODE}", v.volume_id),
    )
    .await?;
    let record = Api::<PoolVolume>::all(client.clone())
        .get(&volume.volume_id)
        .await?;
    let shown = serde_saphyr::to_string(&serde_json::json!({
        "apiVersion": "plinth.dev/v1alpha1",
        "kind": "PoolVolume",
        "metadata": {"name": record.metadata.name, "finalizers": record.metadata.finalizers},
        "spec": record.spec,
        "status": record.status,
    }))?;
    println!("  the record the controller wrote and the node answered on:");
    for line in shown.lines() {
        println!("    {line}");
    }

    let records = Api::<PoolVolume>::all(client);
    step(
        "DeleteVolume",
        async {
            csi.delete_volume(v1::DeleteVolumeRequest {
                volume_id: volume.volume_id.clone(),
                ..Default::default()
            })
            .await?;
            let gone = records.get_opt(&volume.volume_id).await?.is_none();
            ensure!(gone, "the PoolVolume outlived DeleteVolume");
            Ok(())
        },
        |()| "image removed by the node, then its record".to_owned(),
    )
    .await
}

async fn wait_for_pool_node(client: &kube::Client) -> Result<u64> {
    let nodes = Api::<PoolNode>::all(client.clone());
    let name = pool_node_name(NODE, DEFAULT_DRIVER_NAME);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = nodes.get_opt(&name).await?.and_then(|n| n.status) {
            return Ok(status.available_bytes);
        }
        if Instant::now() > deadline {
            bail!("{NODE} did not publish its pool within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
