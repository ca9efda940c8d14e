//! CSI ephemeral inline volumes over the driver's socket: publish creates, formats and
//! mounts a volume sized from the attributes; unpublish leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::*;
use data_rpc::*;
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

/// Inline volumes need no claim and no quota, so the node bounds them all: past the
/// node-wide count or bytes, a publish is refused with RESOURCE_EXHAUSTED before anything
/// is created, and one that exists can still be retried.
#[tokio::test]
async fn inline_volumes_are_bounded_per_node() {
    let driver = TestDriver::start_with(&[
        "--ephemeral-max-volumes=2",
        "--ephemeral-max-total-size=96MiB",
        "--ephemeral-max-size=64MiB",
        "--ephemeral-default-size=16MiB",
    ])
    .await;
    let mut node = driver.node().await;
    let publish = |label: &str, size: &str| {
        let target = driver.target(label);
        (
            inline_request(&kubelet_id(label), &target, &[("size", size)]),
            target,
        )
    };
    let (first, first_target) = publish("cap-a", "64Mi");
    node.node_publish_volume(first.clone()).await.unwrap();

    // Bytes: 64 MiB taken, 48 MiB more would pass 96 MiB.
    let (too_big, _) = publish("cap-b", "48Mi");
    let msg = assert_code(
        node.node_publish_volume(too_big).await,
        Code::ResourceExhausted,
    );
    assert!(msg.contains("--ephemeral-max-total-size"), "{msg}");
    assert_eq!(image_count(&driver), 1, "a refused publish creates nothing");

    // Count: a second fits, a third does not, whatever its size.
    let (second, second_target) = publish("cap-c", "16Mi");
    node.node_publish_volume(second.clone()).await.unwrap();
    let (third, _) = publish("cap-d", "1Mi");
    let msg = assert_code(
        node.node_publish_volume(third).await,
        Code::ResourceExhausted,
    );
    assert!(msg.contains("--ephemeral-max-volumes"), "{msg}");
    assert_eq!(image_count(&driver), 2);

    // Retries of existing inline volumes are not new volumes.
    node.node_publish_volume(first.clone()).await.unwrap();
    for (req, target) in [(first, first_target), (second, second_target)] {
        node.node_unpublish_volume(unpublish_request(&req.volume_id, &target))
            .await
            .unwrap();
    }
    assert_eq!(image_count(&driver), 0);
}

/// A driver that crashed while an inline volume was published, on a node whose pod went
/// away meanwhile (the mount gone, kubelet removed the pod's directory): the next start
/// deletes the volume instead of keeping its bytes forever.
#[tokio::test]
async fn an_inline_volume_orphaned_by_a_crash_is_collected_at_start() {
    let mut driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let kept_target = driver.target("orphan-kept");
    let kept = inline_request(
        &kubelet_id("orphan-kept"),
        &kept_target,
        &[("size", "16Mi")],
    );
    node.node_publish_volume(kept.clone()).await.unwrap();
    let gone_target = driver.target("orphan-gone");
    let gone = inline_request(
        &kubelet_id("orphan-gone"),
        &gone_target,
        &[("size", "16Mi")],
    );
    node.node_publish_volume(gone).await.unwrap();
    assert_eq!(image_count(&driver), 2);
    drop(node);

    driver.kill9();
    // What a reboot and kubelet's cleanup of the pod leave: no mount, no directory.
    nix::mount::umount2(gone_target.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    fs::remove_dir(&gone_target).unwrap();
    driver.spawn().await;

    assert_eq!(
        image_count(&driver),
        1,
        "the orphan is deleted, the published one kept"
    );
    assert_eq!(driver.loops().len(), 1, "{:?}", driver.loops());
    let mut node = driver.node().await;
    node.node_unpublish_volume(unpublish_request(&kept.volume_id, &kept_target))
        .await
        .unwrap();
    assert_eq!(image_count(&driver), 0);
    assert!(driver.loops().is_empty());
}
