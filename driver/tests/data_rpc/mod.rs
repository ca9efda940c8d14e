//! Helpers of the snapshot, expansion, inline-volume and group-snapshot tests over the
//! driver's socket (on top of `common`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use plinth_csi_proto::v1;
use v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};

use crate::common::*;

/// A staged and published volume: where it is, to undo it later.
pub struct Published {
    pub id: String,
    pub staging: String,
    pub target: String,
}

/// Stage and publish `id` under fresh paths named after `label`.
pub async fn publish(
    driver: &TestDriver,
    id: &str,
    label: &str,
    cap: &v1::VolumeCapability,
) -> Published {
    publish_with(driver, id, label, cap, Default::default()).await
}

/// [`publish`], staging with the node-stage `secrets` (an encrypted volume's).
pub async fn publish_with(
    driver: &TestDriver,
    id: &str,
    label: &str,
    cap: &v1::VolumeCapability,
    secrets: std::collections::HashMap<String, String>,
) -> Published {
    let staging = driver.staging(label);
    let target = driver.target(label);
    let mut node = driver.node().await;
    let mut stage = stage_request(id, &staging, cap.clone());
    stage.secrets = secrets;
    node.node_stage_volume(stage)
        .await
        .unwrap_or_else(|e| panic!("NodeStageVolume {label}: {e}"));
    node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), false))
        .await
        .unwrap_or_else(|e| panic!("NodePublishVolume {label}: {e}"));
    Published {
        id: id.to_owned(),
        staging,
        target,
    }
}

pub async fn unpublish(driver: &TestDriver, p: &Published) {
    let mut node = driver.node().await;
    node.node_unpublish_volume(unpublish_request(&p.id, &p.target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&p.id, &p.staging))
        .await
        .unwrap();
}

pub fn snapshot_request(name: &str, source: &str) -> v1::CreateSnapshotRequest {
    v1::CreateSnapshotRequest {
        source_volume_id: source.to_owned(),
        name: name.to_owned(),
        ..Default::default()
    }
}

pub async fn snapshot(driver: &TestDriver, name: &str, source: &str) -> v1::Snapshot {
    driver
        .controller()
        .await
        .create_snapshot(snapshot_request(name, source))
        .await
        .unwrap_or_else(|e| panic!("CreateSnapshot {name}: {e}"))
        .into_inner()
        .snapshot
        .expect("CreateSnapshot returned no snapshot")
}

pub fn from_snapshot(id: &str) -> v1::VolumeContentSource {
    v1::VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: id.to_owned(),
        })),
    }
}

pub fn from_volume(id: &str) -> v1::VolumeContentSource {
    v1::VolumeContentSource {
        r#type: Some(SourceType::Volume(VolumeSource {
            volume_id: id.to_owned(),
        })),
    }
}

pub fn create_from_request(
    name: &str,
    cap: v1::VolumeCapability,
    required_bytes: i64,
    source: v1::VolumeContentSource,
) -> v1::CreateVolumeRequest {
    v1::CreateVolumeRequest {
        volume_content_source: Some(source),
        ..create_request(name, cap, required_bytes, 0)
    }
}

pub async fn create_from(
    driver: &TestDriver,
    name: &str,
    cap: v1::VolumeCapability,
    required_bytes: i64,
    source: v1::VolumeContentSource,
) -> v1::Volume {
    driver
        .controller()
        .await
        .create_volume(create_from_request(name, cap, required_bytes, source))
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name} from a source: {e}"))
        .into_inner()
        .volume
        .expect("CreateVolume returned no volume")
}

pub async fn delete_volume(driver: &TestDriver, id: &str) {
    driver
        .controller()
        .await
        .delete_volume(v1::DeleteVolumeRequest {
            volume_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("DeleteVolume {id}: {e}"));
}

pub async fn delete_snapshot(driver: &TestDriver, id: &str) -> Result<(), tonic::Status> {
    driver
        .controller()
        .await
        .delete_snapshot(v1::DeleteSnapshotRequest {
            snapshot_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .map(drop)
}

/// IDs of all snapshots, as ListSnapshots returns them.
pub async fn snapshot_ids(driver: &TestDriver) -> Vec<String> {
    driver
        .controller()
        .await
        .list_snapshots(v1::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.snapshot.expect("entry without snapshot").snapshot_id)
        .collect()
}

/// Write `text` to a file in a mounted volume WITHOUT fsync: only the driver's freeze
/// makes it part of a snapshot.
pub fn write_unsynced(dir: &str, file: &str, text: &str) {
    let mut f = fs::File::create(Path::new(dir).join(file)).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

pub fn read(dir: &str, file: &str) -> String {
    fs::read_to_string(Path::new(dir).join(file)).unwrap()
}

/// Write `data` at `offset` of a published block device, synced.
pub fn write_block(device: &str, offset: u64, data: &[u8]) {
    let mut dev = fs::OpenOptions::new().write(true).open(device).unwrap();
    dev.seek(SeekFrom::Start(offset)).unwrap();
    dev.write_all(data).unwrap();
    dev.sync_all().unwrap();
}

pub fn read_block(device: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut dev = fs::File::open(device).unwrap();
    dev.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    dev.read_exact(&mut buf).unwrap();
    buf
}

/// Bytes of a block device (as the pod sees it).
pub fn device_size(device: &str) -> i64 {
    let end = fs::File::open(device)
        .unwrap()
        .seek(SeekFrom::End(0))
        .unwrap();
    i64::try_from(end).unwrap()
}

/// Bytes of the filesystem mounted at `dir` (as the pod sees it).
pub fn fs_size(dir: &str) -> i64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    i64::try_from(st.blocks() * st.fragment_size()).unwrap()
}

/// Put the (not yet started) driver's pool on a fresh xfs filesystem with reflink, on a
/// sparse image in the test directory. `mount -o loop` sets autoclear, so the loop
/// device goes when the harness unmounts the pool.
pub fn mount_xfs_pool(driver: &TestDriver) {
    let image = driver.dir().join("xfs-pool.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(2 << 30))
        .unwrap();
    let mkfs = std::process::Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&image)
        .output()
        .expect("mkfs.xfs (xfsprogs) is required");
    assert!(
        mkfs.status.success(),
        "{}",
        String::from_utf8_lossy(&mkfs.stderr)
    );
    fs::create_dir_all(&driver.pool).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "xfs", "-o", "loop"])
        .arg(&image)
        .arg(&driver.pool)
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "{}",
        String::from_utf8_lossy(&mount.stderr)
    );
}

/// Bytes free on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> i64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    i64::try_from(st.blocks_free() * st.fragment_size()).unwrap()
}
