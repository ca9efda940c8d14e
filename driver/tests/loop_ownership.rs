//! Tenants on one node cannot pose as users of each other's loop devices: a mount whose
//! root is `/loopN` on some other filesystem (a pod's emptyDir mounted with
//! `subPath: loopN`) is not a bind of `/dev/loopN`, and does not keep the volume on that
//! device from being unstaged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use common::*;
use nix::mount::{MsFlags, mount};

#[tokio::test]
async fn a_subpath_named_like_the_loop_device_does_not_block_unstage() {
    let driver = TestDriver::start().await;
    let cap = mount_cap("ext4");
    let vol = create(&driver, &name("owner"), cap.clone(), 32 * MIB).await;
    let staging = driver.staging("owner");
    let mut node = driver.node().await;
    node.node_stage_volume(stage_request(&vol.volume_id, &staging, cap.clone()))
        .await
        .unwrap();
    let loops = driver.loops();
    assert_eq!(loops.len(), 1, "{loops:?}");
    let number = loops[0].strip_prefix("/dev/").unwrap();

    // Another tenant's pod: a memory emptyDir, mounted at its target with subPath loopN.
    let empty_dir = driver.dir().join("tenant-emptydir");
    fs::create_dir_all(&empty_dir).unwrap();
    let none: Option<&str> = None;
    mount(
        Some("tmpfs"),
        &empty_dir,
        Some("tmpfs"),
        MsFlags::empty(),
        none,
    )
    .unwrap();
    fs::create_dir(empty_dir.join(number)).unwrap();
    fs::write(empty_dir.join(number).join("data"), b"the other tenant's").unwrap();
    let tenant_target = driver.target("tenant");
    fs::create_dir_all(&tenant_target).unwrap();
    mount(
        Some(&empty_dir.join(number)),
        tenant_target.as_str(),
        none,
        MsFlags::MS_BIND,
        none,
    )
    .unwrap();
    let root_shown = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(3) == Some(&format!("/{number}")) && l.contains(&tenant_target));
    assert!(
        root_shown,
        "the tenant's bind must look like /{number} in mountinfo"
    );

    node.node_unstage_volume(unstage_request(&vol.volume_id, &staging))
        .await
        .expect("another tenant's subPath named like the device blocked unstage");
    assert!(driver.loops().is_empty(), "the volume's loop device stayed");
    assert_eq!(
        fs::read(std::path::Path::new(&tenant_target).join("data")).unwrap(),
        b"the other tenant's",
        "the other tenant's mount is untouched"
    );
}
