//! Volume expansion over the driver's socket: a published xfs volume grows while a file
//! is open on it and the pod sees the new size; ext4 grows or is refused clearly (this
//! needs CAP_SYS_RESOURCE); raw block devices report their new size; misuse gets the
//! spec's codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::*;
use data_rpc::*;
use plinth_csi_proto::v1;
use tonic::Code;

fn expand_request(id: &str, required: i64) -> v1::ControllerExpandVolumeRequest {
    v1::ControllerExpandVolumeRequest {
        volume_id: id.to_owned(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

fn node_expand_request(id: &str, path: &str, required: i64) -> v1::NodeExpandVolumeRequest {
    v1::NodeExpandVolumeRequest {
        volume_id: id.to_owned(),
        volume_path: path.to_owned(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

/// Whether this process may grow a mounted ext4 (the driver runs with our credentials).
fn has_cap_sys_resource() -> bool {
    plinth_driver::storage::grow::can_grow_ext4_online()
}

#[tokio::test]
async fn a_published_xfs_volume_grows_online_under_an_open_file() {
    let driver = TestDriver::start().await;
    let cap = mount_cap("xfs");
    let vol = create(&driver, &name("grow-xfs"), cap.clone(), 320 * MIB).await;
    let p = publish(&driver, &vol.volume_id, "grow-xfs", &cap).await;
    let mut open = fs::File::create(Path::new(&p.target).join("journal")).unwrap();
    open.write_all(b"written before").unwrap();
    let before = fs_size(&p.target);

    let mut c = driver.controller().await;
    let reply = c
        .controller_expand_volume(expand_request(&vol.volume_id, 640 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.capacity_bytes, 640 * MIB);
    assert!(reply.node_expansion_required);
    for _ in 0..2 {
        let grown = driver
            .node()
            .await
            .node_expand_volume(node_expand_request(&vol.volume_id, &p.target, 640 * MIB))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grown.capacity_bytes, 640 * MIB);
    }
    let after = fs_size(&p.target);
    assert!(after > before + 250 * MIB, "pod sees {before} -> {after}");
    open.write_all(b", written after").unwrap();
    open.sync_all().unwrap();
    drop(open);
    assert_eq!(read(&p.target, "journal"), "written before, written after");
    // Retried controller expansion to the same size is a no-op.
    let again = c
        .controller_expand_volume(expand_request(&vol.volume_id, 640 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.capacity_bytes, 640 * MIB);
    unpublish(&driver, &p).await;
}

#[tokio::test]
async fn a_published_ext4_volume_grows_or_the_refusal_says_why() {
    let driver = TestDriver::start().await;
    let cap = mount_cap("ext4");
    let vol = create(&driver, &name("grow-ext4"), cap.clone(), 64 * MIB).await;
    let p = publish(&driver, &vol.volume_id, "grow-ext4", &cap).await;
    let before = fs_size(&p.target);
    driver
        .controller()
        .await
        .controller_expand_volume(expand_request(&vol.volume_id, 128 * MIB))
        .await
        .unwrap();
    let result = driver
        .node()
        .await
        .node_expand_volume(node_expand_request(&vol.volume_id, &p.target, 128 * MIB))
        .await;
    if has_cap_sys_resource() {
        assert_eq!(result.unwrap().into_inner().capacity_bytes, 128 * MIB);
        assert!(fs_size(&p.target) > before + 32 * MIB);
    } else {
        let msg = assert_code(result, Code::FailedPrecondition);
        assert!(msg.contains("CAP_SYS_RESOURCE"), "{msg}");
        assert_eq!(
            fs_size(&p.target),
            before,
            "no pretending: the size is unchanged"
        );
    }
    unpublish(&driver, &p).await;
}

#[tokio::test]
async fn a_published_block_volume_reports_its_new_size() {
    let driver = TestDriver::start().await;
    let cap = block_cap();
    let vol = create(&driver, &name("grow-blk"), cap.clone(), 16 * MIB).await;
    let p = publish(&driver, &vol.volume_id, "grow-blk", &cap).await;
    write_block(&p.target, 0, b"header");
    driver
        .controller()
        .await
        .controller_expand_volume(expand_request(&vol.volume_id, 40 * MIB))
        .await
        .unwrap();
    let grown = driver
        .node()
        .await
        .node_expand_volume(node_expand_request(&vol.volume_id, &p.target, 40 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 40 * MIB);
    assert_eq!(device_size(&p.target), 40 * MIB);
    assert_eq!(read_block(&p.target, 0, 6), b"header");
    let stats = driver
        .node()
        .await
        .node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: p.target.clone(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, 40 * MIB);
    unpublish(&driver, &p).await;
}

#[tokio::test]
async fn expansion_misuse_gets_the_codes_the_spec_names() {
    let driver = TestDriver::start().await;
    let mut c = driver.controller().await;
    let mut n = driver.node().await;
    let vol = create(&driver, &name("exp-err"), mount_cap("ext4"), 32 * MIB).await;
    let missing = "0123456789abcdef0123456789abcdef";

    assert_code(
        c.controller_expand_volume(expand_request(&vol.volume_id, 16 * MIB))
            .await,
        Code::OutOfRange,
    );
    assert_code(
        c.controller_expand_volume(expand_request(missing, 64 * MIB))
            .await,
        Code::NotFound,
    );
    assert_code(
        c.controller_expand_volume(expand_request("", 64 * MIB))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.controller_expand_volume(v1::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    let target = driver.target("exp-err");
    assert_code(
        n.node_expand_volume(node_expand_request(missing, &target, 0))
            .await,
        Code::NotFound,
    );
    assert_code(
        n.node_expand_volume(node_expand_request(&vol.volume_id, "", 0))
            .await,
        Code::InvalidArgument,
    );
    // Not staged anywhere on this node.
    assert_code(
        n.node_expand_volume(node_expand_request(&vol.volume_id, &target, 0))
            .await,
        Code::FailedPrecondition,
    );
    let p = publish(&driver, &vol.volume_id, "exp-err-pub", &mount_cap("ext4")).await;
    let elsewhere = driver.staging("not-this-volume");
    assert_code(
        n.node_expand_volume(node_expand_request(&vol.volume_id, &elsewhere, 0))
            .await,
        Code::NotFound,
    );
    // The node cannot grow beyond what the controller allotted.
    assert_code(
        n.node_expand_volume(node_expand_request(&vol.volume_id, &p.target, 1 << 40))
            .await,
        Code::OutOfRange,
    );
    unpublish(&driver, &p).await;
}

#[tokio::test]
async fn switched_off_expansion_is_neither_advertised_nor_served() {
    let driver = TestDriver::start_with(&["--disable=expansion"]).await;
    let plugin = driver.plugin_capabilities().await;
    assert!(
        plugin.iter().all(|c| !matches!(
            c.r#type,
            Some(v1::plugin_capability::Type::VolumeExpansion(_))
        )),
        "{plugin:?}"
    );
    let vol = create(&driver, &name("exp-off"), block_cap(), 8 * MIB).await;
    assert_code(
        driver
            .controller()
            .await
            .controller_expand_volume(expand_request(&vol.volume_id, 16 * MIB))
            .await,
        Code::Unimplemented,
    );
    assert_code(
        driver
            .node()
            .await
            .node_expand_volume(node_expand_request(&vol.volume_id, &driver.target("x"), 0))
            .await,
        Code::Unimplemented,
    );
}
