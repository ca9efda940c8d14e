//! Controller RPCs beyond create/delete: listing, capacity, validation, topology.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use plinth_csi_proto::v1;
use tonic::Code;

fn topology(node: &str) -> v1::Topology {
    v1::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node.to_owned())]),
    }
}

#[tokio::test]
async fn list_volumes_pages_through_every_volume_once() {
    let driver = TestDriver::start().await;
    let mut created = BTreeSet::new();
    for i in 0..7 {
        let v = create(&driver, &name(&format!("list-{i}")), block_cap(), 4 * MIB).await;
        created.insert(v.volume_id);
    }
    let mut controller = driver.controller().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = controller
            .list_volumes(v1::ListVolumesRequest {
                max_entries: 3,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 3);
        pages += 1;
        for entry in page.entries {
            let volume = entry.volume.unwrap();
            assert_eq!(volume.capacity_bytes, 4 * MIB);
            seen.push(volume.volume_id);
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(pages, 3, "7 volumes in pages of 3");
    assert_eq!(seen.len(), 7, "no duplicates: {seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), created);

    // max_entries 0 means everything.
    let all = controller
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 7);
    assert!(all.next_token.is_empty());

    for bad in ["not-a-token", "../x", "zzzz"] {
        assert_code(
            controller
                .list_volumes(v1::ListVolumesRequest {
                    max_entries: 2,
                    starting_token: bad.to_owned(),
                })
                .await,
            Code::Aborted,
        );
    }
    assert_code(
        controller
            .list_volumes(v1::ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
}

async fn available(driver: &TestDriver, request: v1::GetCapacityRequest) -> i64 {
    driver
        .controller()
        .await
        .get_capacity(request)
        .await
        .unwrap()
        .into_inner()
        .available_capacity
}

#[tokio::test]
async fn get_capacity_shrinks_after_a_create_and_honours_topology() {
    let driver = TestDriver::start().await;
    let before = available(&driver, v1::GetCapacityRequest::default()).await;
    assert!(before > 0);
    let volume = create(&driver, &name("cap"), block_cap(), 1024 * MIB).await;
    let after = available(&driver, v1::GetCapacityRequest::default()).await;
    // Other tests share the filesystem, so only a lower bound on the step is certain:
    // the pool promised 1 GiB (sparse, not yet allocated) and must not offer it again.
    assert!(
        before - after >= volume.capacity_bytes - 128 * MIB,
        "capacity went from {before} to {after} after a {} byte volume",
        volume.capacity_bytes
    );

    let here = v1::GetCapacityRequest {
        accessible_topology: Some(topology(NODE_ID)),
        ..Default::default()
    };
    assert!(available(&driver, here).await > 0);
    let elsewhere = v1::GetCapacityRequest {
        accessible_topology: Some(topology("some-other-node")),
        ..Default::default()
    };
    assert_eq!(available(&driver, elsewhere).await, 0);
    let multi_node = v1::GetCapacityRequest {
        volume_capabilities: vec![mode_cap(
            Mode::MultiNodeMultiWriter,
            v1::volume_capability::AccessType::Block(Default::default()),
        )],
        ..Default::default()
    };
    assert_eq!(available(&driver, multi_node).await, 0);

    let xfs = driver
        .controller()
        .await
        .get_capacity(v1::GetCapacityRequest {
            volume_capabilities: vec![mount_cap("xfs")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(xfs.minimum_volume_size, Some(300 * MIB));
}

#[tokio::test]
async fn get_capacity_keeps_the_reserve_free() {
    let plain = TestDriver::start().await;
    let reserved = TestDriver::start_with(&["--pool-reserve=2GiB"]).await;
    // Both pools sit on one filesystem that other tests write to as well: sample until
    // two back-to-back readings are not disturbed by someone else's write.
    let mut diffs = Vec::new();
    for _ in 0..5 {
        let free_plain = available(&plain, v1::GetCapacityRequest::default()).await;
        let free_reserved = available(&reserved, v1::GetCapacityRequest::default()).await;
        let diff = free_plain - free_reserved;
        if (diff - 2048 * MIB).abs() <= 16 * MIB {
            return;
        }
        diffs.push(diff);
    }
    panic!("a 2 GiB reserve changed capacity by {diffs:?}");
}

#[tokio::test]
async fn accessibility_requirements_must_include_this_node() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut elsewhere = create_request(&name("topo-other"), block_cap(), MIB, 0);
    elsewhere.accessibility_requirements = Some(v1::TopologyRequirement {
        requisite: vec![topology("node-b")],
        preferred: vec![topology("node-b")],
    });
    assert_code(
        controller.create_volume(elsewhere).await,
        Code::ResourceExhausted,
    );
    let mut here = create_request(&name("topo-here"), block_cap(), MIB, 0);
    here.accessibility_requirements = Some(v1::TopologyRequirement {
        requisite: vec![topology("node-b"), topology(NODE_ID)],
        preferred: vec![topology("node-b")],
    });
    let volume = controller
        .create_volume(here)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume.accessible_topology, vec![topology(NODE_ID)]);
}

#[tokio::test]
async fn validate_volume_capabilities_confirms_only_what_fits() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let volume = create(&driver, &name("validate"), mount_cap("ext4"), 16 * MIB).await;
    let check = |caps: Vec<v1::VolumeCapability>| v1::ValidateVolumeCapabilitiesRequest {
        volume_id: volume.volume_id.clone(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = controller
        .validate_volume_capabilities(check(vec![mount_cap("ext4"), mount_cap("")]))
        .await
        .unwrap()
        .into_inner();
    let confirmed = ok.confirmed.expect("ext4 volume confirmed for ext4 mounts");
    assert_eq!(confirmed.volume_capabilities.len(), 2);
    for caps in [
        vec![mount_cap("xfs")],
        vec![block_cap()],
        vec![
            mount_cap("ext4"),
            mode_cap(
                Mode::MultiNodeReaderOnly,
                v1::volume_capability::AccessType::Mount(Default::default()),
            ),
        ],
    ] {
        let reply = controller
            .validate_volume_capabilities(check(caps.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.confirmed.is_none(), "{caps:?} confirmed");
        assert!(!reply.message.is_empty());
    }
}

#[tokio::test]
async fn controller_get_volume_reports_the_volume() {
    let driver = TestDriver::start().await;
    let volume = create(&driver, &name("get"), block_cap(), 8 * MIB).await;
    let got = driver
        .controller()
        .await
        .controller_get_volume(v1::ControllerGetVolumeRequest {
            volume_id: volume.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap(), volume);
    assert!(got.status.is_some());
}
