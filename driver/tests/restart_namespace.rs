//! A node-plugin restart the way Kubernetes does it: a new process in a new mount
//! namespace, with its own bind mount of the pool (a hostPath volume) and the kubelet
//! directory shared both ways. The volumes the previous process staged and published —
//! ext4, xfs, raw block read-write and read-only — must stay fully usable: staged again
//! and published again idempotently, stats, a snapshot that freezes the filesystem,
//! online expansion, then unpublish, unstage and delete, leaving no mount and no loop
//! device behind.
//!
//! On a real node (Kubernetes 1.36, containerd) the previous driver's loop devices
//! report their backing files as `/volumes/<id>.img` to the new one; matching them by
//! path orphaned every staged volume. Both a graceful stop (a rollout) and kill -9 (a
//! crash, an OOM kill) are covered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use std::path::Path;

use common::*;
use data_rpc::*;
use plinth_csi_proto::v1;

#[derive(Clone, Copy, Debug)]
enum Restart {
    Graceful,
    Kill9,
}

/// A volume as the previous driver process left it.
struct Staged {
    id: String,
    cap: v1::VolumeCapability,
    staging: String,
    /// Read-write publish; for block, also `readonly_target`.
    target: String,
    readonly_target: Option<String>,
    size: i64,
    kind: &'static str,
}

fn multi_writer_block_cap() -> v1::VolumeCapability {
    use v1::volume_capability::{AccessType, BlockVolume};
    mode_cap(
        Mode::SingleNodeMultiWriter,
        AccessType::Block(BlockVolume {}),
    )
}

const MARKER: &[u8] = b"written before the restart";

#[tokio::test]
async fn staged_volumes_survive_a_graceful_restart_in_a_new_mount_namespace() {
    volumes_survive(Restart::Graceful).await;
}

#[tokio::test]
async fn staged_volumes_survive_kill_9_and_a_restart_in_a_new_mount_namespace() {
    volumes_survive(Restart::Kill9).await;
}

async fn volumes_survive(restart: Restart) {
    let mut driver = TestDriver::prepare(&[]).in_new_mount_namespace();
    driver.spawn().await;

    let mut volumes = Vec::new();
    for (kind, cap, size) in [
        ("ext4", mount_cap("ext4"), 64 * MIB),
        ("xfs", mount_cap("xfs"), 320 * MIB),
        // Two publishes (read-write and read-only) need a multi-publish mode.
        ("block", multi_writer_block_cap(), 16 * MIB),
    ] {
        let label = format!("{kind}-{restart:?}").to_lowercase();
        let vol = create(&driver, &name(&label), cap.clone(), size).await;
        let p = publish(&driver, &vol.volume_id, &label, &cap).await;
        let readonly_target = if kind == "block" {
            let ro = driver.target(&format!("{label}-ro"));
            driver
                .node()
                .await
                .node_publish_volume(publish_request(
                    &vol.volume_id,
                    &p.staging,
                    &ro,
                    cap.clone(),
                    true,
                ))
                .await
                .unwrap();
            write_block(&p.target, 4096, MARKER);
            Some(ro)
        } else {
            std::fs::write(Path::new(&p.target).join("marker"), MARKER).unwrap();
            None
        };
        volumes.push(Staged {
            id: vol.volume_id,
            cap,
            staging: p.staging,
            target: p.target,
            readonly_target,
            size,
            kind,
        });
    }
    nix::unistd::sync();
    let loops_before = driver.loops();
    let mounts_before = driver.mounts();
    assert_eq!(
        loops_before.len(),
        4,
        "3 read-write devices and 1 read-only"
    );

    match restart {
        Restart::Graceful => assert!(driver.terminate().await.success()),
        Restart::Kill9 => driver.kill9(),
    }
    driver.spawn().await;

    // Recovery at start found every device in use: none detached, none attached twice.
    let mut loops_after = driver.loops();
    loops_after.sort();
    let mut expected = loops_before.clone();
    expected.sort();
    assert_eq!(
        loops_after, expected,
        "loop devices changed across the restart"
    );
    assert_eq!(
        driver.mounts(),
        mounts_before,
        "mounts changed across the restart"
    );

    let mut node = driver.node().await;
    for v in &volumes {
        // kubelet repeats stage and publish after a plugin restart: both idempotent.
        node.node_stage_volume(stage_request(&v.id, &v.staging, v.cap.clone()))
            .await
            .unwrap_or_else(|e| panic!("{}: NodeStageVolume again: {e}", v.kind));
        node.node_publish_volume(publish_request(
            &v.id,
            &v.staging,
            &v.target,
            v.cap.clone(),
            false,
        ))
        .await
        .unwrap_or_else(|e| panic!("{}: NodePublishVolume again: {e}", v.kind));
        if let Some(ro) = &v.readonly_target {
            node.node_publish_volume(publish_request(&v.id, &v.staging, ro, v.cap.clone(), true))
                .await
                .unwrap_or_else(|e| panic!("{}: read-only NodePublishVolume again: {e}", v.kind));
        }
        let usage = node
            .node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
                volume_id: v.id.clone(),
                volume_path: v.target.clone(),
                staging_target_path: v.staging.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: NodeGetVolumeStats: {e}", v.kind))
            .into_inner()
            .usage;
        assert!(!usage.is_empty(), "{}: no usage reported", v.kind);
    }

    // A snapshot of a volume staged by the previous process still freezes its
    // filesystem: a write not yet synced is in the snapshot.
    let ext4 = &volumes[0];
    write_unsynced(&ext4.target, "unsynced", "in the snapshot");
    let snap = snapshot(&driver, &name(&format!("snap-{restart:?}")), &ext4.id).await;
    let restored = create_from(
        &driver,
        &name(&format!("restored-{restart:?}")),
        ext4.cap.clone(),
        ext4.size,
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    let r = publish(&driver, &restored.volume_id, "restored", &ext4.cap).await;
    assert_eq!(read(&r.target, "unsynced"), "in the snapshot");
    unpublish(&driver, &r).await;
    delete_volume(&driver, &restored.volume_id).await;
    delete_snapshot(&driver, &snap.snapshot_id).await.unwrap();

    // Online expansion of what the previous process staged.
    for v in &volumes {
        let grown = v.size * 2;
        driver
            .controller()
            .await
            .controller_expand_volume(v1::ControllerExpandVolumeRequest {
                volume_id: v.id.clone(),
                capacity_range: Some(v1::CapacityRange {
                    required_bytes: grown,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{}: ControllerExpandVolume: {e}", v.kind));
        let before = match v.kind {
            "block" => device_size(&v.target),
            _ => fs_size(&v.target),
        };
        let result = node
            .node_expand_volume(v1::NodeExpandVolumeRequest {
                volume_id: v.id.clone(),
                volume_path: v.target.clone(),
                staging_target_path: v.staging.clone(),
                capacity_range: Some(v1::CapacityRange {
                    required_bytes: grown,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await;
        if v.kind == "ext4" && !plinth_driver::storage::grow::can_grow_ext4_online() {
            // Only the missing capability may stop it, and the answer says so.
            let msg = assert_code(result, tonic::Code::FailedPrecondition);
            assert!(msg.contains("CAP_SYS_RESOURCE"), "{msg}");
            continue;
        }
        let reply = result.unwrap_or_else(|e| panic!("{}: NodeExpandVolume: {e}", v.kind));
        assert_eq!(reply.into_inner().capacity_bytes, grown, "{}", v.kind);
        match v.kind {
            "block" => {
                assert_eq!(device_size(&v.target), grown);
                let ro = v.readonly_target.as_deref().unwrap();
                assert_eq!(device_size(ro), grown, "the read-only device follows");
            }
            _ => assert!(
                fs_size(&v.target) > before + v.size / 2,
                "{}: the pod sees {before} -> {}",
                v.kind,
                fs_size(&v.target)
            ),
        }
    }

    // The data written before the restart is intact.
    for v in &volumes {
        match &v.readonly_target {
            Some(ro) => assert_eq!(read_block(ro, 4096, MARKER.len()), MARKER),
            None => assert_eq!(
                std::fs::read(Path::new(&v.target).join("marker")).unwrap(),
                MARKER,
                "{}",
                v.kind
            ),
        }
    }

    for v in &volumes {
        for target in std::iter::once(&v.target).chain(&v.readonly_target) {
            node.node_unpublish_volume(unpublish_request(&v.id, target))
                .await
                .unwrap_or_else(|e| panic!("{}: NodeUnpublishVolume {target}: {e}", v.kind));
        }
        node.node_unstage_volume(unstage_request(&v.id, &v.staging))
            .await
            .unwrap_or_else(|e| panic!("{}: NodeUnstageVolume: {e}", v.kind));
        delete_volume(&driver, &v.id).await;
    }
    driver.assert_nothing_left();
}
