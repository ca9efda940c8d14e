//! The CSI spec's error cases: missing fields, unknown IDs, incompatible repeats,
//! capacity limits, access modes and path-escape attempts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use plinth_csi_proto::v1;
use tonic::Code;
use v1::volume_capability::{AccessType, MountVolume};

const UNKNOWN_ID: &str = "0123456789abcdef0123456789abcdef";
/// What csi-sanity's default ID generator makes (`fake-vol-id-` and ten characters of a
/// UUID): well-formed for any driver, never one of ours.
const SANITY_ID: &str = "fake-vol-id-3f2a9c1e-7";

#[tokio::test]
async fn missing_fields_are_invalid_argument_naming_the_field() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;

    let mut no_name = create_request("x", mount_cap("ext4"), MIB, 0);
    no_name.name.clear();
    assert_invalid_field(controller.create_volume(no_name).await, "name");
    let mut no_caps = create_request("x", mount_cap("ext4"), MIB, 0);
    no_caps.volume_capabilities.clear();
    assert_invalid_field(
        controller.create_volume(no_caps).await,
        "volume_capabilities",
    );
    let no_access_type = v1::VolumeCapability {
        access_type: None,
        ..mount_cap("ext4")
    };
    assert_invalid_field(
        controller
            .create_volume(create_request("x", no_access_type, MIB, 0))
            .await,
        "access_type",
    );
    let no_access_mode = v1::VolumeCapability {
        access_mode: None,
        ..mount_cap("ext4")
    };
    assert_invalid_field(
        controller
            .create_volume(create_request("x", no_access_mode, MIB, 0))
            .await,
        "access_mode",
    );
    assert_invalid_field(
        controller
            .delete_volume(v1::DeleteVolumeRequest::default())
            .await,
        "volume_id",
    );
    assert_invalid_field(
        controller
            .validate_volume_capabilities(v1::ValidateVolumeCapabilitiesRequest::default())
            .await,
        "volume_id",
    );
    let volume = create(&driver, &name("fields"), mount_cap("ext4"), 16 * MIB).await;
    let id = volume.volume_id.as_str();
    assert_invalid_field(
        controller
            .validate_volume_capabilities(v1::ValidateVolumeCapabilitiesRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await,
        "volume_capabilities",
    );
    assert_invalid_field(
        controller
            .controller_get_volume(v1::ControllerGetVolumeRequest::default())
            .await,
        "volume_id",
    );

    let staging = driver.staging(id);
    let target = driver.target("pod");
    let cases: Vec<(&str, v1::NodeStageVolumeRequest)> = vec![
        ("volume_id", stage_request("", &staging, mount_cap("ext4"))),
        (
            "staging_target_path",
            stage_request(id, "", mount_cap("ext4")),
        ),
        (
            "volume_capability",
            v1::NodeStageVolumeRequest {
                volume_capability: None,
                ..stage_request(id, &staging, mount_cap("ext4"))
            },
        ),
    ];
    for (field, request) in cases {
        assert_invalid_field(node.node_stage_volume(request).await, field);
    }
    let cases: Vec<(&str, v1::NodePublishVolumeRequest)> = vec![
        (
            "volume_id",
            publish_request("", &staging, &target, mount_cap("ext4"), false),
        ),
        (
            "target_path",
            publish_request(id, &staging, "", mount_cap("ext4"), false),
        ),
        (
            "volume_capability",
            v1::NodePublishVolumeRequest {
                volume_capability: None,
                ..publish_request(id, &staging, &target, mount_cap("ext4"), false)
            },
        ),
    ];
    for (field, request) in cases {
        assert_invalid_field(node.node_publish_volume(request).await, field);
    }
    // Spec: STAGE_UNSTAGE_VOLUME advertised and no staging path -> FAILED_PRECONDITION.
    assert_code(
        node.node_publish_volume(publish_request(id, "", &target, mount_cap("ext4"), false))
            .await,
        Code::FailedPrecondition,
    );
    for (field, request) in [
        ("volume_id", unstage_request("", &staging)),
        ("staging_target_path", unstage_request(id, "")),
    ] {
        assert_invalid_field(node.node_unstage_volume(request).await, field);
    }
    for (field, request) in [
        ("volume_id", unpublish_request("", &target)),
        ("target_path", unpublish_request(id, "")),
    ] {
        assert_invalid_field(node.node_unpublish_volume(request).await, field);
    }
    for (field, request) in [
        (
            "volume_id",
            v1::NodeGetVolumeStatsRequest {
                volume_path: target.clone(),
                ..Default::default()
            },
        ),
        (
            "volume_path",
            v1::NodeGetVolumeStatsRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            },
        ),
    ] {
        assert_invalid_field(node.node_get_volume_stats(request).await, field);
    }
}

#[tokio::test]
async fn unknown_volume_ids_are_not_found_except_for_delete() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;
    let staging = driver.staging("unknown");
    let target = driver.target("unknown");
    // Well-formed but unknown, and merely malformed (not an escape): both NOT_FOUND.
    for id in [UNKNOWN_ID, "some-volume-id"] {
        controller
            .delete_volume(v1::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("deleting an unknown volume succeeds (idempotent)");
        assert_code(
            controller
                .validate_volume_capabilities(v1::ValidateVolumeCapabilitiesRequest {
                    volume_id: id.to_owned(),
                    volume_capabilities: vec![mount_cap("ext4")],
                    ..Default::default()
                })
                .await,
            Code::NotFound,
        );
        assert_code(
            controller
                .controller_get_volume(v1::ControllerGetVolumeRequest {
                    volume_id: id.to_owned(),
                })
                .await,
            Code::NotFound,
        );
        assert_code(
            node.node_stage_volume(stage_request(id, &staging, mount_cap("ext4")))
                .await,
            Code::NotFound,
        );
        assert_code(
            node.node_publish_volume(publish_request(
                id,
                &staging,
                &target,
                mount_cap("ext4"),
                false,
            ))
            .await,
            Code::NotFound,
        );
        assert_code(
            node.node_unstage_volume(unstage_request(id, &staging))
                .await,
            Code::NotFound,
        );
        assert_code(
            node.node_unpublish_volume(unpublish_request(id, &target))
                .await,
            Code::NotFound,
        );
        assert_code(
            node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
                volume_id: id.to_owned(),
                volume_path: target.clone(),
                staging_target_path: String::new(),
            })
            .await,
            Code::NotFound,
        );
    }
}

#[tokio::test]
async fn create_volume_capacity_and_compatibility_rules() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let cap = mount_cap("ext4");

    // Exact size: required == limit gives exactly that size.
    let exact = controller
        .create_volume(create_request(
            &name("exact"),
            cap.clone(),
            40 * MIB,
            40 * MIB,
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(exact.capacity_bytes, 40 * MIB);

    // limit < required.
    assert_code(
        controller
            .create_volume(create_request(
                &name("inverted"),
                cap.clone(),
                20 * MIB,
                10 * MIB,
            ))
            .await,
        Code::OutOfRange,
    );
    // A limit below the filesystem minimum cannot be met.
    assert_code(
        controller
            .create_volume(create_request(
                &name("tiny-xfs"),
                mount_cap("xfs"),
                0,
                10 * MIB,
            ))
            .await,
        Code::OutOfRange,
    );
    // Negative sizes are malformed.
    assert_code(
        controller
            .create_volume(create_request(&name("negative"), cap.clone(), -1, 0))
            .await,
        Code::InvalidArgument,
    );
    // Far more than the pool could ever hold: see `capacities_...` below.
    assert_code(
        controller
            .create_volume(create_request(&name("huge"), cap.clone(), 1 << 60, 0))
            .await,
        Code::OutOfRange,
    );

    // Incompatible re-create under the same name: capacity, then access type.
    let first = name("recreate");
    create(&driver, &first, cap.clone(), 16 * MIB).await;
    assert_code(
        controller
            .create_volume(create_request(&first, cap.clone(), 64 * MIB, 0))
            .await,
        Code::AlreadyExists,
    );
    assert_code(
        controller
            .create_volume(create_request(&first, block_cap(), 16 * MIB, 0))
            .await,
        Code::AlreadyExists,
    );

    // A content source naming a snapshot that does not exist.
    let mut from_snapshot = create_request(&name("from-snap"), cap.clone(), 16 * MIB, 0);
    from_snapshot.volume_content_source = Some(v1::VolumeContentSource {
        r#type: Some(v1::volume_content_source::Type::Snapshot(
            v1::volume_content_source::SnapshotSource {
                snapshot_id: "snap-1".into(),
            },
        )),
    });
    assert_code(
        controller.create_volume(from_snapshot).await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn unsupported_access_modes_and_types_are_refused() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
        Mode::Unknown,
    ] {
        let cap = mode_cap(
            mode,
            AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            }),
        );
        assert_invalid_field(
            controller
                .create_volume(create_request(&name("multi"), cap, MIB, 0))
                .await,
            "access",
        );
    }
    assert_code(
        controller
            .create_volume(create_request(&name("btrfs"), mount_cap("btrfs"), MIB, 0))
            .await,
        Code::InvalidArgument,
    );
    // A capability list mixing block and filesystem describes no single volume.
    let mut mixed = create_request(&name("mixed"), mount_cap("ext4"), MIB, 0);
    mixed.volume_capabilities.push(block_cap());
    assert_code(controller.create_volume(mixed).await, Code::InvalidArgument);
    // Nothing was created by any refused call.
    let listed = controller
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn names_and_ids_longer_than_128_bytes_are_refused() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;
    let long = "a".repeat(129);
    assert_code(
        controller
            .create_volume(create_request(&long, mount_cap("ext4"), MIB, 0))
            .await,
        Code::InvalidArgument,
    );
    // 128 bytes is fine.
    create(&driver, &"b".repeat(128), mount_cap("ext4"), 8 * MIB).await;
    assert_code(
        controller
            .delete_volume(v1::DeleteVolumeRequest {
                volume_id: long.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    let staging = driver.staging("long");
    assert_code(
        node.node_stage_volume(stage_request(&long, &staging, mount_cap("ext4")))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn path_escapes_are_refused_before_touching_anything() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;
    let volume = create(&driver, &name("escape"), mount_cap("ext4"), 16 * MIB).await;
    let id = volume.volume_id.as_str();

    for bad_id in ["../../etc/passwd", "a/b", "..", ".hidden", "id\0nul"] {
        assert_code(
            controller
                .delete_volume(v1::DeleteVolumeRequest {
                    volume_id: bad_id.to_owned(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            node.node_stage_volume(stage_request(
                bad_id,
                &driver.staging("bad-id"),
                mount_cap("ext4"),
            ))
            .await,
            Code::InvalidArgument,
        );
    }

    let pool_path = driver.pool.join("volumes").display().to_string();
    let escaping = format!("{}/kubelet/../../../etc", driver.dir().display());
    for bad_path in [
        "relative/staging",
        escaping.as_str(),
        pool_path.as_str(),
        "/",
    ] {
        assert_code(
            node.node_stage_volume(stage_request(id, bad_path, mount_cap("ext4")))
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            node.node_publish_volume(publish_request(
                id,
                &driver.staging("ok"),
                bad_path,
                mount_cap("ext4"),
                false,
            ))
            .await,
            Code::InvalidArgument,
        );
        assert_code(
            node.node_unpublish_volume(unpublish_request(id, bad_path))
                .await,
            Code::InvalidArgument,
        );
    }
    assert!(
        driver.mounts().is_empty(),
        "a refused call mounted something"
    );
    assert!(
        driver.loops().is_empty(),
        "a refused call attached something"
    );
}

#[tokio::test]
async fn node_calls_out_of_order_or_incompatible() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let cap = mount_cap("ext4");
    let volume = create(&driver, &name("order"), cap.clone(), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let target = driver.target("pod");

    // Publish before stage.
    assert_code(
        node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), false))
            .await,
        Code::FailedPrecondition,
    );
    // Unpublish of a path never published, unstage of a volume never staged: done.
    node.node_unpublish_volume(unpublish_request(id, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
    // Stats where the volume is not.
    assert_code(
        node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: id.to_owned(),
            volume_path: target.clone(),
            staging_target_path: String::new(),
        })
        .await,
        Code::NotFound,
    );

    node.node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await
        .unwrap();
    // Double stage with different capabilities.
    let with_flags = mode_cap(
        Mode::SingleNodeWriter,
        AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            mount_flags: vec!["ro".into()],
            ..Default::default()
        }),
    );
    assert_code(
        node.node_stage_volume(stage_request(id, &staging, with_flags))
            .await,
        Code::AlreadyExists,
    );
    // A filesystem volume cannot be staged as another filesystem or as block.
    assert_code(
        node.node_stage_volume(stage_request(id, &staging, mount_cap("xfs")))
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        node.node_stage_volume(stage_request(id, &staging, block_cap()))
            .await,
        Code::FailedPrecondition,
    );

    node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), false))
        .await
        .unwrap();
    // SINGLE_NODE_WRITER allows one target: a second one is FAILED_PRECONDITION.
    let second = driver.target("pod-2");
    assert_code(
        node.node_publish_volume(publish_request(id, &staging, &second, cap.clone(), false))
            .await,
        Code::FailedPrecondition,
    );
    // Unstage while published is refused, and nothing is torn down.
    assert_code(
        node.node_unstage_volume(unstage_request(id, &staging))
            .await,
        Code::FailedPrecondition,
    );
    std::fs::write(std::path::Path::new(&target).join("still.txt"), b"ok").unwrap();
    // Delete while staged is refused (in use).
    assert_code(
        driver
            .controller()
            .await
            .delete_volume(v1::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );

    node.node_unpublish_volume(unpublish_request(id, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
}

#[tokio::test]
async fn calls_naming_another_volume_never_touch_this_one() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let cap = mount_cap("ext4");
    let a = create(&driver, &name("owner-a"), cap.clone(), 16 * MIB).await;
    let b = create(&driver, &name("owner-b"), cap.clone(), 16 * MIB).await;
    let staging = driver.staging(&a.volume_id);
    let target = driver.target("pod");
    node.node_stage_volume(stage_request(&a.volume_id, &staging, cap.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(
        &a.volume_id,
        &staging,
        &target,
        cap.clone(),
        false,
    ))
    .await
    .unwrap();
    // B is not mounted at A's target: NOT_FOUND, and A stays published.
    assert_code(
        node.node_unpublish_volume(unpublish_request(&b.volume_id, &target))
            .await,
        Code::NotFound,
    );
    assert_code(
        node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: b.volume_id.clone(),
            volume_path: target.clone(),
            staging_target_path: String::new(),
        })
        .await,
        Code::NotFound,
    );
    // B cannot be staged where A is.
    assert_code(
        node.node_stage_volume(stage_request(&b.volume_id, &staging, cap.clone()))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        driver.mounts().len(),
        2,
        "A's staging and publish are intact"
    );
    std::fs::write(std::path::Path::new(&target).join("a.txt"), b"a").unwrap();
    node.node_unpublish_volume(unpublish_request(&a.volume_id, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&a.volume_id, &staging))
        .await
        .unwrap();
}

/// csi-sanity's argument cases (kubernetes-csi/csi-test, pkg/sanity node.go and
/// groupcontroller.go), with its own IDs and paths: a missing argument is
/// INVALID_ARGUMENT even on a volume that does not exist, NOT_FOUND comes only from the
/// lookup after every argument was checked.
#[tokio::test]
async fn csi_sanity_argument_cases_check_arguments_before_the_lookup() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;
    let mut group = v1::group_controller_client::GroupControllerClient::new(driver.channel().await);
    let target = driver.target("sanity");
    let cap = mount_cap("ext4");

    for id in [SANITY_ID, UNKNOWN_ID] {
        // NodePublishVolume: no target path; no volume capability.
        assert_invalid_field(
            node.node_publish_volume(v1::NodePublishVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await,
            "target_path",
        );
        assert_invalid_field(
            node.node_publish_volume(v1::NodePublishVolumeRequest {
                volume_id: id.to_owned(),
                target_path: target.clone(),
                volume_capability: None,
                ..Default::default()
            })
            .await,
            "volume_capability",
        );
        // NodeStageVolume and NodeUnstageVolume: no staging target path.
        assert_invalid_field(
            node.node_stage_volume(v1::NodeStageVolumeRequest {
                volume_id: id.to_owned(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            "staging_target_path",
        );
        assert_invalid_field(
            node.node_unstage_volume(v1::NodeUnstageVolumeRequest {
                volume_id: id.to_owned(),
                staging_target_path: String::new(),
            })
            .await,
            "staging_target_path",
        );
        assert_invalid_field(
            node.node_unpublish_volume(v1::NodeUnpublishVolumeRequest {
                volume_id: id.to_owned(),
                target_path: String::new(),
            })
            .await,
            "target_path",
        );
        // NodeGetVolumeStats: no volume path; an unknown volume at csi-sanity's path.
        assert_invalid_field(
            node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await,
            "volume_path",
        );
        assert_code(
            node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
                volume_id: id.to_owned(),
                volume_path: "some/path".to_owned(),
                staging_target_path: String::new(),
            })
            .await,
            Code::NotFound,
        );
        // NodeExpandVolume: an unknown volume at csi-sanity's path.
        assert_code(
            node.node_expand_volume(v1::NodeExpandVolumeRequest {
                volume_id: id.to_owned(),
                volume_path: "some/path".to_owned(),
                ..Default::default()
            })
            .await,
            Code::NotFound,
        );
        // Controller calls: the missing argument, not the unknown volume.
        assert_invalid_field(
            controller
                .validate_volume_capabilities(v1::ValidateVolumeCapabilitiesRequest {
                    volume_id: id.to_owned(),
                    ..Default::default()
                })
                .await,
            "volume_capabilities",
        );
        assert_invalid_field(
            controller
                .controller_expand_volume(v1::ControllerExpandVolumeRequest {
                    volume_id: id.to_owned(),
                    ..Default::default()
                })
                .await,
            "capacity_range",
        );
    }
    assert_invalid_field(
        node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_path: "some/path".to_owned(),
            ..Default::default()
        })
        .await,
        "volume_id",
    );

    // An existing volume: no volume path is INVALID_ARGUMENT (NodeExpandVolume), a path
    // where it is not is NOT_FOUND (NodeGetVolumeStats "volume does not exist on the
    // specified path").
    let volume = create(&driver, &name("sanity"), cap.clone(), 16 * MIB).await;
    assert_invalid_field(
        node.node_expand_volume(v1::NodeExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await,
        "volume_path",
    );
    assert_code(
        node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: "some/path".to_owned(),
            staging_target_path: String::new(),
        })
        .await,
        Code::NotFound,
    );

    // GroupController: an unknown group without snapshot_ids is NOT_FOUND for Get and
    // already gone for Delete; no group ID at all is INVALID_ARGUMENT.
    assert_code(
        group
            .get_volume_group_snapshot(v1::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: "fake-vol-id".to_owned(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    group
        .delete_volume_group_snapshot(v1::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "fake-vol-id".to_owned(),
            ..Default::default()
        })
        .await
        .expect("deleting an unknown group snapshot succeeds");
    assert_invalid_field(
        group
            .get_volume_group_snapshot(v1::GetVolumeGroupSnapshotRequest::default())
            .await,
        "group_snapshot_id",
    );
    assert_invalid_field(
        group
            .delete_volume_group_snapshot(v1::DeleteVolumeGroupSnapshotRequest::default())
            .await,
        "group_snapshot_id",
    );
    assert!(driver.mounts().is_empty());
}

/// A capacity no pool of this node could ever hold is OUT_OF_RANGE; RESOURCE_EXHAUSTED
/// stays for a size that fits the pool's filesystem (total minus reserve) but not what
/// is free now.
#[tokio::test]
async fn capacities_no_pool_could_ever_hold_are_out_of_range() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let cap = mount_cap("ext4");
    let st = nix::sys::statvfs::statvfs(&driver.pool).unwrap();
    let total = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    // The largest whole-MiB size the pool's filesystem could hold if it were empty.
    let could_fit = i64::try_from(total).unwrap() / MIB * MIB;
    assert!(
        free + 2 * MIB as u64 <= could_fit as u64,
        "the test needs a pool filesystem with something on it"
    );

    for huge in [i64::MAX, 1 << 60, could_fit + 64 * MIB] {
        let message = assert_code(
            controller
                .create_volume(create_request(&name("never"), cap.clone(), huge, 0))
                .await,
            Code::OutOfRange,
        );
        assert!(message.contains("never fit"), "{message}");
    }
    assert_code(
        controller
            .create_volume(create_request(&name("not-now"), cap.clone(), could_fit, 0))
            .await,
        Code::ResourceExhausted,
    );

    let volume = create(&driver, &name("grow"), cap.clone(), 16 * MIB).await;
    let expand = |required_bytes| v1::ControllerExpandVolumeRequest {
        volume_id: volume.volume_id.clone(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    assert_code(
        controller.controller_expand_volume(expand(i64::MAX)).await,
        Code::OutOfRange,
    );
    assert_code(
        controller.controller_expand_volume(expand(could_fit)).await,
        Code::ResourceExhausted,
    );
}
