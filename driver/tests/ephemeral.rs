//! CSI ephemeral inline volumes over the driver's socket: publish creates, formats and
//! mounts a volume sized from the attributes; unpublish leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod part2_rpc;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::*;
use part2_rpc::*;
use plinth_csi_proto::v1;
use tonic::Code;

/// Kubelet's inline-volume IDs: `csi-` and a sha256 in hex.
fn kubelet_id(label: &str) -> String {
    let hex: String = label.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(hex.len() <= 64, "label too long for a test ID");
    format!("csi-{hex:0>64}")
}

fn inline_request(
    id: &str,
    target: &str,
    attributes: &[(&str, &str)],
) -> v1::NodePublishVolumeRequest {
    let mut context: HashMap<String, String> = attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    context.insert("csi.storage.k8s.io/pod.name".into(), "web-0".into());
    context.insert("csi.storage.k8s.io/pod.namespace".into(), "default".into());
    v1::NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.to_owned(),
        volume_capability: Some(mount_cap("")),
        volume_context: context,
        ..Default::default()
    }
}

fn image_count(driver: &TestDriver) -> usize {
    fs::read_dir(driver.pool.join("volumes"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn inline_volume_lives_exactly_as_long_as_its_publication() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    for (fs_type, size, label) in [
        ("ext4", 64 * MIB, "inline-ext4"),
        ("xfs", 320 * MIB, "inline-xfs"),
    ] {
        let id = kubelet_id(label);
        let target = driver.target(label);
        let size_attr = format!("{}Mi", size / MIB);
        let req = inline_request(&id, &target, &[("size", &size_attr), ("fsType", fs_type)]);
        for _ in 0..2 {
            node.node_publish_volume(req.clone()).await.unwrap();
        }
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target.as_str()))
            .expect("target mounted");
        assert!(line.contains(&format!(" - {fs_type} ")), "{line}");
        let total = fs_size(&target);
        assert!(total <= size && total > size / 2, "{total} for {size}");
        fs::write(Path::new(&target).join("scratch"), b"pod data").unwrap();
        assert_eq!(image_count(&driver), 1);

        for _ in 0..2 {
            node.node_unpublish_volume(unpublish_request(&id, &target))
                .await
                .unwrap();
        }
        assert!(!Path::new(&target).exists(), "the target is removed");
        assert!(driver.mounts().iter().all(|m| !m.starts_with(&target)));
        assert!(
            driver.loops().is_empty(),
            "loop devices left: {:?}",
            driver.loops()
        );
        assert_eq!(image_count(&driver), 0, "the volume is deleted");
    }
    let listed = driver
        .controller()
        .await
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty());
}

#[tokio::test]
async fn inline_volume_attributes_are_checked() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let target = driver.target("inline-bad");
    let id = kubelet_id("inline-bad");
    for (attrs, code) in [
        (vec![("size", "1Ti")], Code::OutOfRange),
        (vec![("size", "many")], Code::InvalidArgument),
        (vec![("fsType", "btrfs")], Code::InvalidArgument),
        (vec![("sizee", "1Gi")], Code::InvalidArgument),
    ] {
        assert_code(
            node.node_publish_volume(inline_request(&id, &target, &attrs))
                .await,
            code,
        );
        assert_eq!(image_count(&driver), 0, "a refused publish creates nothing");
    }
    // Defaults: no attributes at all.
    node.node_publish_volume(inline_request(&id, &target, &[]))
        .await
        .unwrap();
    assert!(fs_size(&target) > 512 * MIB);
    node.node_unpublish_volume(unpublish_request(&id, &target))
        .await
        .unwrap();
    assert_eq!(image_count(&driver), 0);
}

#[tokio::test]
async fn switched_off_inline_volumes_are_refused() {
    let driver = TestDriver::start_with(&["--disable=ephemeral"]).await;
    let target = driver.target("inline-off");
    assert_code(
        driver
            .node()
            .await
            .node_publish_volume(inline_request(&kubelet_id("off"), &target, &[]))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(image_count(&driver), 0);
}
