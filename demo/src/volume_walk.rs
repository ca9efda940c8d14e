//! One volume's life, driven over the driver's Unix socket the way kubelet and the
//! sidecars drive it, with each step's time.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use plinth_csi_proto::v1::{
    self, controller_client::ControllerClient, identity_client::IdentityClient,
    node_client::NodeClient, volume_capability,
};
use tonic::transport::Channel;

const GIB: u64 = 1 << 30;
const MESSAGE: &str = "hello from a Plinth volume\n";

struct Clients {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

/// Runs `call`, prints the step with its time, and returns its result.
async fn step<T, F>(name: &str, call: F, describe: impl FnOnce(&T) -> String) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    match &result {
        Ok(value) => println!("  {name:<22} {:<52} {}", describe(value), ms(elapsed)),
        Err(error) => println!("  {name:<22} FAILED: {error:#}"),
    }
    result
}

fn ms(elapsed: Duration) -> String {
    format!("{:>7.2} ms", elapsed.as_secs_f64() * 1e3)
}

/// Walks one volume through create → stage → publish → write/read → unpublish →
/// unstage → delete. On failure, undoes what it did before returning the error.
pub async fn walk(socket: &Path, work: &Path, size: u64, fs_type: &str) -> Result<()> {
    let channel = connect(socket).await?;
    let mut clients = Clients {
        identity: IdentityClient::new(channel.clone()),
        controller: ControllerClient::new(channel.clone()),
        node: NodeClient::new(channel),
    };
    wait_ready(&mut clients.identity).await?;
    let info = clients
        .identity
        .get_plugin_info(v1::GetPluginInfoRequest {})
        .await?
        .into_inner();
    println!(
        "Driver: {} {}, over {}",
        info.name,
        info.vendor_version,
        socket.display()
    );

    let capability = v1::VolumeCapability {
        access_mode: Some(v1::volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs_type.to_owned(),
                ..Default::default()
            },
        )),
    };
    let staging = work.join("kubelet/plugins/kubernetes.io/csi/staging/demo");
    let target = work.join("kubelet/pods/demo-pod/volumes/demo/mount");
    // kubelet creates the staging directory and the target's parent before calling.
    std::fs::create_dir_all(&staging)?;
    std::fs::create_dir_all(target.parent().context("target has a parent")?)?;

    let cycle = Instant::now();
    let volume = step(
        "CreateVolume",
        async {
            let response = clients
                .controller
                .create_volume(v1::CreateVolumeRequest {
                    name: "pvc-demo".into(),
                    capacity_range: Some(v1::CapacityRange {
                        required_bytes: i64::try_from(size)?,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![capability.clone()],
                    ..Default::default()
                })
                .await?;
            response
                .into_inner()
                .volume
                .context("CreateVolume returned no volume")
        },
        |v| {
            format!(
                "{} ({:.2} GiB, {fs_type})",
                v.volume_id,
                v.capacity_bytes as f64 / GIB as f64
            )
        },
    )
    .await?;
    let id = volume.volume_id.clone();

    let lifecycle = async {
        stage_publish_use(&mut clients, &id, &capability, &staging, &target).await?;
        step(
            "NodeUnpublishVolume",
            async {
                clients
                    .node
                    .node_unpublish_volume(v1::NodeUnpublishVolumeRequest {
                        volume_id: id.clone(),
                        target_path: path_string(&target)?,
                    })
                    .await?;
                Ok(())
            },
            |_| "unmounted the pod's bind mount".into(),
        )
        .await?;
        step(
            "NodeUnstageVolume",
            async {
                clients
                    .node
                    .node_unstage_volume(v1::NodeUnstageVolumeRequest {
                        volume_id: id.clone(),
                        staging_target_path: path_string(&staging)?,
                    })
                    .await?;
                Ok(())
            },
            |_| "unmounted, loop device detached".into(),
        )
        .await
    };
    let lived = lifecycle.await;
    if lived.is_err() {
        cleanup_after_failure(&mut clients, &id, &staging, &target).await;
    }
    let deleted = step(
        "DeleteVolume",
        async {
            clients
                .controller
                .delete_volume(v1::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
                .await?;
            Ok(())
        },
        |_| "image and metadata removed".into(),
    )
    .await;
    lived?;
    deleted?;
    println!("  {:<22} {:<52} {}", "whole cycle", "", ms(cycle.elapsed()));
    Ok(())
}

async fn stage_publish_use(
    clients: &mut Clients,
    id: &str,
    capability: &v1::VolumeCapability,
    staging: &Path,
    target: &Path,
) -> Result<()> {
    step(
        "NodeStageVolume",
        async {
            clients
                .node
                .node_stage_volume(v1::NodeStageVolumeRequest {
                    volume_id: id.to_owned(),
                    staging_target_path: path_string(staging)?,
                    volume_capability: Some(capability.clone()),
                    ..Default::default()
                })
                .await?;
            Ok(())
        },
        |_| "loop device attached, filesystem made, mounted".into(),
    )
    .await?;
    step(
        "NodePublishVolume",
        async {
            clients
                .node
                .node_publish_volume(v1::NodePublishVolumeRequest {
                    volume_id: id.to_owned(),
                    staging_target_path: path_string(staging)?,
                    target_path: path_string(target)?,
                    volume_capability: Some(capability.clone()),
                    ..Default::default()
                })
                .await?;
            Ok(())
        },
        |_| "bind-mounted into the pod's directory".into(),
    )
    .await?;
    step(
        "pod writes, reads",
        async {
            let file = target.join("hello.txt");
            std::fs::write(&file, MESSAGE)?;
            let back = std::fs::read_to_string(&file)?;
            ensure!(back == MESSAGE, "read back {back:?}, wrote {MESSAGE:?}");
            Ok(back.len())
        },
        |n| format!("{n} bytes through the mount, read back intact"),
    )
    .await?;
    step(
        "NodeGetVolumeStats",
        async {
            let stats = clients
                .node
                .node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
                    volume_id: id.to_owned(),
                    volume_path: path_string(target)?,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let usage: HashMap<i32, v1::VolumeUsage> =
                stats.usage.into_iter().map(|u| (u.unit, u)).collect();
            let bytes = usage
                .get(&(v1::volume_usage::Unit::Bytes as i32))
                .context("no byte usage reported")?;
            let inodes = usage
                .get(&(v1::volume_usage::Unit::Inodes as i32))
                .context("no inode usage reported")?;
            Ok((bytes.clone(), inodes.clone()))
        },
        |(bytes, inodes)| {
            format!(
                "{} MiB of {} MiB used, {} of {} inodes",
                bytes.used / (1 << 20),
                bytes.total / (1 << 20),
                inodes.used,
                inodes.total
            )
        },
    )
    .await?;
    Ok(())
}

/// Best effort: a failed step must not leave a mount or loop device behind.
async fn cleanup_after_failure(clients: &mut Clients, id: &str, staging: &Path, target: &Path) {
    if let (Ok(target), Ok(staging)) = (path_string(target), path_string(staging)) {
        let _ = clients
            .node
            .node_unpublish_volume(v1::NodeUnpublishVolumeRequest {
                volume_id: id.to_owned(),
                target_path: target,
            })
            .await;
        let _ = clients
            .node
            .node_unstage_volume(v1::NodeUnstageVolumeRequest {
                volume_id: id.to_owned(),
                staging_target_path: staging,
            })
            .await;
    }
}

async fn connect(socket: &Path) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match plinth_csi_proto::connect_unix(socket).await {
            Ok(channel) => return Ok(channel),
            Err(error) if Instant::now() > deadline => {
                return Err(error).context(format!("connecting to {}", socket.display()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Probe until the pool is usable, as the liveness probe and sidecars do.
async fn wait_ready(identity: &mut IdentityClient<Channel>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = identity.probe(v1::ProbeRequest {}).await?.into_inner();
        if probe.ready == Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the driver did not become ready within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
