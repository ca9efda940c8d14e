//! Volumes driven over the driver's Unix socket the way kubelet and the sidecars drive
//! them, with each step's time.
//!
//! A [`Session`] remembers what it created (volumes, snapshots, stagings, publications) and
//! forgets it when the matching undo succeeds, so [`Session::clean_up`] can undo whatever a
//! failed step left behind, in kubelet's order.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use plinth_csi_proto::v1::{
    self, controller_client::ControllerClient, identity_client::IdentityClient,
    node_client::NodeClient, volume_capability, volume_content_source,
};
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A volume this session created, with where kubelet would stage and publish it.
#[derive(Clone)]
pub struct Volume {
    id: String,
    capability: v1::VolumeCapability,
    staging: PathBuf,
    target: PathBuf,
}

pub struct Session {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    work: PathBuf,
    volumes: Vec<String>,
    snapshots: Vec<String>,
    staged: Vec<Volume>,
    published: Vec<Volume>,
}

/// A single-node writer mount of `fs_type`, as a PVC with ReadWriteOnce asks for.
pub fn mount_capability(fs_type: &str) -> v1::VolumeCapability {
    v1::VolumeCapability {
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs_type.to_owned(),
                ..Default::default()
            },
        )),
    }
}

/// Runs `call`, prints the step with its time, and returns its result.
pub async fn step<T, F>(name: &str, call: F, describe: impl FnOnce(&T) -> String) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    match &result {
        Ok(value) => println!("  {name:<22} {:<56} {}", describe(value), ms(elapsed)),
        Err(error) => println!("  {name:<22} FAILED: {error:#}"),
    }
    result
}

fn ms(elapsed: Duration) -> String {
    format!("{:>7.2} ms", elapsed.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

impl Session {
    /// Connects to the driver at `socket` and waits until its Probe says ready.
    pub async fn connect(socket: &Path, work: &Path) -> Result<Self> {
        let channel = connect(socket).await?;
        let mut session = Self {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            work: work.to_owned(),
            volumes: Vec::new(),
            snapshots: Vec::new(),
            staged: Vec::new(),
            published: Vec::new(),
        };
        session.wait_ready().await?;
        let info = session
            .identity
            .get_plugin_info(v1::GetPluginInfoRequest {})
            .await?
            .into_inner();
        let manifest: Vec<String> = info
            .manifest
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "Driver: {} {} over {} ({})",
            info.name,
            info.vendor_version,
            socket.display(),
            manifest.join(", ")
        );
        Ok(session)
    }

    /// One volume's whole life: create → stage → publish → write/read → stats →
    /// unpublish → unstage → delete.
    pub async fn lifecycle(&mut self, size: u64, fs_type: &str) -> Result<()> {
        println!("\nA volume's life, as kubelet and external-provisioner drive it:");
        let cycle = Instant::now();
        let volume = self.create("pvc-demo", size, fs_type, None).await?;
        self.stage(&volume).await?;
        self.publish(&volume).await?;
        self.write_and_check(&volume, "hello.txt", "hello from a Plinth volume\n")
            .await?;
        self.stats(&volume).await?;
        self.unpublish(&volume).await?;
        self.unstage(&volume).await?;
        self.delete(&volume).await?;
        println!("  {:<22} {:<56} {}", "whole cycle", "", ms(cycle.elapsed()));
        Ok(())
    }

    /// Snapshot, restore and online expansion. xfs: growing a mounted ext4 needs
    /// CAP_SYS_RESOURCE, which a privileged node pod has but a development machine may not.
    pub async fn data_services(&mut self) -> Result<()> {
        println!("\nSnapshot, restore and online expansion (xfs):");
        let db = self.create("pvc-db", 320 * MIB, "xfs", None).await?;
        self.stage(&db).await?;
        self.publish(&db).await?;
        self.write_and_check(&db, "state.txt", "version 1\n")
            .await?;
        let snapshot = self.snapshot("snap-db", &db).await?;
        self.write_and_check(&db, "state.txt", "version 2\n")
            .await?;

        let source = volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
            snapshot_id: snapshot.clone(),
        });
        let restored = self
            .create("pvc-db-restored", 320 * MIB, "xfs", Some(source))
            .await?;
        self.stage(&restored).await?;
        self.publish(&restored).await?;
        step(
            "restored data",
            async {
                let text = std::fs::read_to_string(restored.target.join("state.txt"))?;
                ensure!(text == "version 1\n", "restored volume holds {text:?}");
                Ok(text)
            },
            |text| format!("{:?}: the snapshot's point in time", text.trim_end()),
        )
        .await?;

        self.expand(&db, 640 * MIB).await?;

        for volume in [&restored, &db] {
            self.unpublish(volume).await?;
            self.unstage(volume).await?;
            self.delete(volume).await?;
        }
        self.delete_snapshot(&snapshot).await?;
        Ok(())
    }

    async fn create(
        &mut self,
        name: &str,
        size: u64,
        fs_type: &str,
        source: Option<volume_content_source::Type>,
    ) -> Result<Volume> {
        let capability = mount_capability(fs_type);
        let from = match &source {
            Some(volume_content_source::Type::Snapshot(s)) => {
                format!(" from snapshot {}", s.snapshot_id)
            }
            Some(volume_content_source::Type::Volume(v)) => format!(" from volume {}", v.volume_id),
            None => String::new(),
        };
        let request = v1::CreateVolumeRequest {
            name: name.to_owned(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: i64::try_from(size)?,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![capability.clone()],
            volume_content_source: source
                .map(|kind| v1::VolumeContentSource { r#type: Some(kind) }),
            ..Default::default()
        };
        let controller = &mut self.controller;
        let created = step(
            "CreateVolume",
            async {
                controller
                    .create_volume(request)
                    .await?
                    .into_inner()
                    .volume
                    .context("CreateVolume returned no volume")
            },
            |v| {
                let size = u64::try_from(v.capacity_bytes).unwrap_or_default();
                format!("{name}: {} {fs_type}{from}", mib(size))
            },
        )
        .await?;
        self.volumes.push(created.volume_id.clone());
        // kubelet creates the staging directory and the target's parent before calling.
        let base = self.work.join("kubelet");
        let volume = Volume {
            staging: base.join("plugins/kubernetes.io/csi/staging").join(name),
            target: base.join("pods/demo-pod/volumes").join(name).join("mount"),
            id: created.volume_id,
            capability,
        };
        std::fs::create_dir_all(&volume.staging)?;
        std::fs::create_dir_all(volume.target.parent().context("target has a parent")?)?;
        Ok(volume)
    }

    async fn stage(&mut self, volume: &Volume) -> Result<()> {
        let request = v1::NodeStageVolumeRequest {
            volume_id: volume.id.clone(),
            staging_target_path: path_string(&volume.staging)?,
            volume_capability: Some(volume.capability.clone()),
            ..Default::default()
        };
        let node = &mut self.node;
        step(
            "NodeStageVolume",
            async { Ok(node.node_stage_volume(request).await.map(drop)?) },
            |_| "loop device attached, filesystem made if blank, mounted".into(),
        )
        .await?;
        self.staged.push(volume.clone());
        Ok(())
    }

    async fn publish(&mut self, volume: &Volume) -> Result<()> {
        let request = v1::NodePublishVolumeRequest {
            volume_id: volume.id.clone(),
            staging_target_path: path_string(&volume.staging)?,
            target_path: path_string(&volume.target)?,
            volume_capability: Some(volume.capability.clone()),
            ..Default::default()
        };
        let node = &mut self.node;
        step(
            "NodePublishVolume",
            async { Ok(node.node_publish_volume(request).await.map(drop)?) },
            |_| "bind-mounted into the pod's directory".into(),
        )
        .await?;
        self.published.push(volume.clone());
        Ok(())
    }

    async fn unpublish(&mut self, volume: &Volume) -> Result<()> {
        let request = v1::NodeUnpublishVolumeRequest {
            volume_id: volume.id.clone(),
            target_path: path_string(&volume.target)?,
        };
        let node = &mut self.node;
        step(
            "NodeUnpublishVolume",
            async { Ok(node.node_unpublish_volume(request).await.map(drop)?) },
            |_| "the pod's bind mount is gone".into(),
        )
        .await?;
        self.published.retain(|v| v.id != volume.id);
        Ok(())
    }

    async fn unstage(&mut self, volume: &Volume) -> Result<()> {
        let request = v1::NodeUnstageVolumeRequest {
            volume_id: volume.id.clone(),
            staging_target_path: path_string(&volume.staging)?,
        };
        let node = &mut self.node;
        step(
            "NodeUnstageVolume",
            async { Ok(node.node_unstage_volume(request).await.map(drop)?) },
            |_| "unmounted, loop device detached".into(),
        )
        .await?;
        self.staged.retain(|v| v.id != volume.id);
        Ok(())
    }

    async fn delete(&mut self, volume: &Volume) -> Result<()> {
        let request = v1::DeleteVolumeRequest {
            volume_id: volume.id.clone(),
            ..Default::default()
        };
        let controller = &mut self.controller;
        step(
            "DeleteVolume",
            async { Ok(controller.delete_volume(request).await.map(drop)?) },
            |_| "image and metadata removed".into(),
        )
        .await?;
        self.volumes.retain(|id| *id != volume.id);
        Ok(())
    }

    async fn snapshot(&mut self, name: &str, volume: &Volume) -> Result<String> {
        let request = v1::CreateSnapshotRequest {
            source_volume_id: volume.id.clone(),
            name: name.to_owned(),
            ..Default::default()
        };
        let controller = &mut self.controller;
        let snapshot = step(
            "CreateSnapshot",
            async {
                let snapshot = controller
                    .create_snapshot(request)
                    .await?
                    .into_inner()
                    .snapshot
                    .context("CreateSnapshot returned no snapshot")?;
                ensure!(
                    snapshot.ready_to_use,
                    "snapshot {} not ready",
                    snapshot.snapshot_id
                );
                Ok(snapshot)
            },
            |s| {
                let size = u64::try_from(s.size_bytes).unwrap_or_default();
                format!("{name}: frozen, copied, thawed; {} ready", mib(size))
            },
        )
        .await?;
        self.snapshots.push(snapshot.snapshot_id.clone());
        Ok(snapshot.snapshot_id)
    }

    async fn delete_snapshot(&mut self, id: &str) -> Result<()> {
        let request = v1::DeleteSnapshotRequest {
            snapshot_id: id.to_owned(),
            ..Default::default()
        };
        let controller = &mut self.controller;
        step(
            "DeleteSnapshot",
            async { Ok(controller.delete_snapshot(request).await.map(drop)?) },
            |_| "snapshot image removed".into(),
        )
        .await?;
        self.snapshots.retain(|s| s != id);
        Ok(())
    }

    /// ControllerExpandVolume grows the image; NodeExpandVolume grows the mounted
    /// filesystem; the pod sees the new size.
    async fn expand(&mut self, volume: &Volume, size: u64) -> Result<()> {
        let range = Some(v1::CapacityRange {
            required_bytes: i64::try_from(size)?,
            limit_bytes: 0,
        });
        let controller = &mut self.controller;
        step(
            "ControllerExpandVolume",
            async {
                let answer = controller
                    .controller_expand_volume(v1::ControllerExpandVolumeRequest {
                        volume_id: volume.id.clone(),
                        capacity_range: range,
                        volume_capability: Some(volume.capability.clone()),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(answer)
            },
            |a| {
                let size = u64::try_from(a.capacity_bytes).unwrap_or_default();
                format!("image grown to {}", mib(size))
            },
        )
        .await?;
        let node = &mut self.node;
        step(
            "NodeExpandVolume",
            async {
                node.node_expand_volume(v1::NodeExpandVolumeRequest {
                    volume_id: volume.id.clone(),
                    volume_path: path_string(&volume.target)?,
                    staging_target_path: path_string(&volume.staging)?,
                    capacity_range: range,
                    volume_capability: Some(volume.capability.clone()),
                    ..Default::default()
                })
                .await?;
                let stat = nix::sys::statvfs::statvfs(&volume.target)?;
                Ok(stat.blocks() * stat.fragment_size())
            },
            |bytes| {
                format!(
                    "xfs grown online; the pod's mount now shows {}",
                    mib(*bytes)
                )
            },
        )
        .await?;
        Ok(())
    }

    async fn write_and_check(&mut self, volume: &Volume, file: &str, text: &str) -> Result<()> {
        let path = volume.target.join(file);
        step(
            "pod writes, reads",
            async {
                std::fs::write(&path, text)?;
                let back = std::fs::read_to_string(&path)?;
                ensure!(back == text, "read back {back:?}, wrote {text:?}");
                Ok(())
            },
            |()| {
                format!(
                    "{file}: {:?} through the mount, read back intact",
                    text.trim_end()
                )
            },
        )
        .await
    }

    async fn stats(&mut self, volume: &Volume) -> Result<()> {
        let request = v1::NodeGetVolumeStatsRequest {
            volume_id: volume.id.clone(),
            volume_path: path_string(&volume.target)?,
            ..Default::default()
        };
        let node = &mut self.node;
        step(
            "NodeGetVolumeStats",
            async {
                let stats = node.node_get_volume_stats(request).await?.into_inner();
                let usage: HashMap<i32, v1::VolumeUsage> =
                    stats.usage.into_iter().map(|u| (u.unit, u)).collect();
                let unit = |u: v1::volume_usage::Unit| {
                    usage
                        .get(&(u as i32))
                        .cloned()
                        .with_context(|| format!("no {u:?} usage"))
                };
                Ok((
                    unit(v1::volume_usage::Unit::Bytes)?,
                    unit(v1::volume_usage::Unit::Inodes)?,
                ))
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
        .await
        .map(drop)
    }

    /// Undoes whatever a failed step left behind, newest first: unpublish, unstage, delete
    /// snapshots, delete volumes. Best effort: it reports, and keeps going.
    pub async fn clean_up(&mut self) {
        if self.published.is_empty()
            && self.staged.is_empty()
            && self.snapshots.is_empty()
            && self.volumes.is_empty()
        {
            return;
        }
        println!("\nCleaning up after the failure:");
        for volume in self.published.clone().iter().rev() {
            let _ = self.unpublish(volume).await;
        }
        for volume in self.staged.clone().iter().rev() {
            let _ = self.unstage(volume).await;
        }
        for snapshot in self.snapshots.clone().iter().rev() {
            let _ = self.delete_snapshot(snapshot).await;
        }
        for id in self.volumes.clone().iter().rev() {
            let request = v1::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            };
            let _ = self.controller.delete_volume(request).await;
        }
    }

    /// Probe until the pool is usable, as the liveness probe and sidecars do.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = self.identity.probe(v1::ProbeRequest {}).await?.into_inner();
            if probe.ready == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the driver did not become ready within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn connect(socket: &Path) -> Result<Channel> {
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

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
