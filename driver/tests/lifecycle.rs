//! Full volume lifecycles on real loop devices and filesystems, each step repeated to
//! prove idempotency, with data written through the published path and read back after
//! a re-stage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use common::*;
use plinth_csi_proto::v1;
use v1::volume_capability::{AccessType, MountVolume};
use v1::volume_usage::Unit;

async fn stats(driver: &TestDriver, id: &str, path: &str) -> Vec<v1::VolumeUsage> {
    driver
        .node()
        .await
        .node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: id.to_owned(),
            volume_path: path.to_owned(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .usage
}

/// Stage + publish twice each (idempotent), as kubelet retries do.
async fn stage_and_publish(
    driver: &TestDriver,
    id: &str,
    staging: &str,
    target: &str,
    cap: &v1::VolumeCapability,
) {
    let mut node = driver.node().await;
    for _ in 0..2 {
        node.node_stage_volume(stage_request(id, staging, cap.clone()))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        node.node_publish_volume(publish_request(id, staging, target, cap.clone(), false))
            .await
            .unwrap();
    }
}

/// Unpublish + unstage twice each (idempotent).
async fn unpublish_and_unstage(driver: &TestDriver, id: &str, staging: &str, target: &str) {
    let mut node = driver.node().await;
    for _ in 0..2 {
        node.node_unpublish_volume(unpublish_request(id, target))
            .await
            .unwrap();
    }
    assert!(
        !Path::new(target).exists(),
        "unpublish must remove the target it created"
    );
    for _ in 0..2 {
        node.node_unstage_volume(unstage_request(id, staging))
            .await
            .unwrap();
    }
}

async fn delete_twice(driver: &TestDriver, id: &str) {
    let mut controller = driver.controller().await;
    for _ in 0..2 {
        controller
            .delete_volume(v1::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let listed = controller
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .entries
            .iter()
            .all(|e| e.volume.as_ref().unwrap().volume_id != id)
    );
}

async fn filesystem_lifecycle(fs_type: &str, size: i64) {
    let driver = TestDriver::start().await;
    let cap = mount_cap(fs_type);
    let volume_name = name(&format!("life-{fs_type}"));
    let volume = create(&driver, &volume_name, cap.clone(), size).await;
    let again = create(&driver, &volume_name, cap.clone(), size).await;
    assert_eq!(
        again.volume_id, volume.volume_id,
        "CreateVolume is idempotent"
    );
    assert!(volume.capacity_bytes >= size);
    assert_eq!(
        volume.accessible_topology[0].segments.get(TOPOLOGY_KEY),
        Some(&NODE_ID.to_owned())
    );
    let id = volume.volume_id.as_str();

    let staging = driver.staging(id);
    let target = driver.target("pod-a");
    stage_and_publish(&driver, id, &staging, &target, &cap).await;
    assert_eq!(driver.loops().len(), 1, "one loop device per staged volume");

    let file = Path::new(&target).join("data.txt");
    fs::write(&file, b"plinth keeps this").unwrap();
    nix::unistd::sync();

    let usage = stats(&driver, id, &target).await;
    let bytes = usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .expect("byte usage");
    assert!(bytes.total > 0 && bytes.total <= volume.capacity_bytes);
    assert!(bytes.used > 0 && bytes.available > 0);
    let inodes = usage
        .iter()
        .find(|u| u.unit == Unit::Inodes as i32)
        .expect("inode usage");
    assert!(inodes.total > 0 && inodes.used > 0);
    // The staging path is a valid volume_path too.
    assert!(!stats(&driver, id, &staging).await.is_empty());

    unpublish_and_unstage(&driver, id, &staging, &target).await;
    assert!(
        driver.loops().is_empty(),
        "unstage detaches the loop device"
    );
    assert!(driver.mounts().is_empty(), "unstage leaves no mount behind");

    // Re-stage (no reformat!) and publish somewhere else: the data is still there.
    let target2 = driver.target("pod-b");
    stage_and_publish(&driver, id, &staging, &target2, &cap).await;
    assert_eq!(
        fs::read(Path::new(&target2).join("data.txt")).unwrap(),
        b"plinth keeps this"
    );
    unpublish_and_unstage(&driver, id, &staging, &target2).await;
    delete_twice(&driver, id).await;
    assert!(driver.loops().is_empty() && driver.mounts().is_empty());
}

#[tokio::test]
async fn ext4_volume_lifecycle_keeps_data_across_restage() {
    filesystem_lifecycle("ext4", 64 * MIB).await;
}

#[tokio::test]
async fn xfs_volume_lifecycle_keeps_data_across_restage() {
    // xfsprogs refuses filesystems under 300 MiB.
    filesystem_lifecycle("xfs", 320 * MIB).await;
}

#[tokio::test]
async fn default_fs_type_is_ext4() {
    let driver = TestDriver::start().await;
    let cap = mount_cap("");
    let volume = create(&driver, &name("default-fs"), cap.clone(), 32 * MIB).await;
    let staging = driver.staging(&volume.volume_id);
    let target = driver.target("pod");
    stage_and_publish(&driver, &volume.volume_id, &staging, &target, &cap).await;
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .expect("target mounted");
    assert!(line.contains(" - ext4 "), "{line}");
    unpublish_and_unstage(&driver, &volume.volume_id, &staging, &target).await;
}

#[tokio::test]
async fn block_volume_lifecycle_keeps_data_across_restage() {
    let driver = TestDriver::start().await;
    let cap = block_cap();
    let volume = create(&driver, &name("life-block"), cap.clone(), 32 * MIB).await;
    assert_eq!(volume.capacity_bytes, 32 * MIB);
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let target = driver.target("pod-a");
    stage_and_publish(&driver, id, &staging, &target, &cap).await;

    let meta = fs::metadata(&target).unwrap();
    assert!(
        meta.file_type().is_block_device(),
        "a block volume is published as a device node"
    );
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    {
        let mut dev = fs::OpenOptions::new().write(true).open(&target).unwrap();
        dev.seek(SeekFrom::Start(1 << 20)).unwrap();
        dev.write_all(&pattern).unwrap();
        dev.sync_all().unwrap();
    }
    let usage = stats(&driver, id, &target).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].unit, Unit::Bytes as i32);
    assert_eq!(usage[0].total, 32 * MIB);

    unpublish_and_unstage(&driver, id, &staging, &target).await;
    assert!(driver.loops().is_empty() && driver.mounts().is_empty());

    let target2 = driver.target("pod-b");
    stage_and_publish(&driver, id, &staging, &target2, &cap).await;
    let mut back = vec![0u8; pattern.len()];
    {
        let mut dev = fs::File::open(&target2).unwrap();
        dev.seek(SeekFrom::Start(1 << 20)).unwrap();
        dev.read_exact(&mut back).unwrap();
    }
    assert_eq!(back, pattern);
    unpublish_and_unstage(&driver, id, &staging, &target2).await;
    delete_twice(&driver, id).await;
}

#[tokio::test]
async fn readonly_publish_is_really_read_only() {
    let driver = TestDriver::start().await;
    // SINGLE_NODE_MULTI_WRITER: one volume, a writable and a read-only target.
    let cap = mode_cap(
        Mode::SingleNodeMultiWriter,
        AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        }),
    );
    let volume = create(&driver, &name("readonly"), cap.clone(), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let rw = driver.target("writer");
    let ro = driver.target("reader");
    let mut node = driver.node().await;
    node.node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(id, &staging, &rw, cap.clone(), false))
        .await
        .unwrap();
    for _ in 0..2 {
        node.node_publish_volume(publish_request(id, &staging, &ro, cap.clone(), true))
            .await
            .unwrap();
    }
    fs::write(Path::new(&rw).join("shared.txt"), b"visible").unwrap();
    assert_eq!(
        fs::read(Path::new(&ro).join("shared.txt")).unwrap(),
        b"visible"
    );
    let err = fs::write(Path::new(&ro).join("nope.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // Same target, other readonly flag: incompatible re-publish.
    assert_code(
        node.node_publish_volume(publish_request(id, &staging, &ro, cap.clone(), false))
            .await,
        tonic::Code::AlreadyExists,
    );
    for target in [&rw, &ro] {
        node.node_unpublish_volume(unpublish_request(id, target))
            .await
            .unwrap();
    }
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
}

#[tokio::test]
async fn reader_only_access_mode_mounts_read_only() {
    let driver = TestDriver::start().await;
    let rw_cap = mount_cap("ext4");
    let ro_cap = mode_cap(
        Mode::SingleNodeReaderOnly,
        AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        }),
    );
    let volume = create(&driver, &name("reader-only"), rw_cap, 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let target = driver.target("pod");
    stage_and_publish(&driver, id, &staging, &target, &ro_cap).await;
    let err = fs::write(Path::new(&target).join("x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    unpublish_and_unstage(&driver, id, &staging, &target).await;
}

/// A read-only block publish hands out a device that refuses writes (a read-only loop
/// device of its own: a read-only bind of the staged device's node would not stop them).
#[tokio::test]
async fn readonly_block_publish_yields_a_device_that_refuses_writes() {
    let driver = TestDriver::start().await;
    let cap = block_cap();
    let volume = create(&driver, &name("ro-block"), cap.clone(), 8 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let target = driver.target("pod");
    let mut node = driver.node().await;
    node.node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), true))
        .await
        .unwrap();
    let written = fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .and_then(|mut dev| {
            dev.write_all(&[0xAA; 512])?;
            dev.sync_all()
        });
    assert!(written.is_err(), "wrote through a read-only block publish");
    node.node_unpublish_volume(unpublish_request(id, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
}
