//! Snapshots, restores and clones over the driver's socket, on real loop devices:
//! write, snapshot, change, restore into a new volume and find the old data; clone and
//! diverge; raw block too; every misuse the spec lists answers its code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use common::*;
use data_rpc::*;
use plinth_csi_proto::v1;
use tonic::Code;

#[tokio::test]
async fn restore_brings_back_the_data_of_the_snapshot_and_nothing_later() {
    let driver = TestDriver::start().await;
    let cap = mount_cap("ext4");
    let source = create(&driver, &name("snap-src"), cap.clone(), 64 * MIB).await;
    let src = publish(&driver, &source.volume_id, "src", &cap).await;
    write_unsynced(&src.target, "state.txt", "version 1");

    let snap = snapshot(&driver, "snap-1", &source.volume_id).await;
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, source.volume_id);
    assert_eq!(snap.size_bytes, source.capacity_bytes);
    assert!(snap.creation_time.as_ref().is_some_and(|t| t.seconds > 0));
    assert!(snap.group_snapshot_id.is_empty());
    // Idempotent: the same name and source give the same snapshot.
    assert_eq!(snapshot(&driver, "snap-1", &source.volume_id).await, snap);

    write_unsynced(&src.target, "state.txt", "version 2");
    let restored = create_from(
        &driver,
        &name("restored"),
        cap.clone(),
        128 * MIB,
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    assert_eq!(
        restored.content_source,
        Some(from_snapshot(&snap.snapshot_id))
    );
    assert!(restored.capacity_bytes >= 128 * MIB);
    let dst = publish(&driver, &restored.volume_id, "restored", &cap).await;
    assert_eq!(read(&dst.target, "state.txt"), "version 1");
    assert_eq!(read(&src.target, "state.txt"), "version 2");
    // Independent: writes to either side stay there.
    write_unsynced(&dst.target, "state.txt", "restored and changed");
    assert_eq!(read(&src.target, "state.txt"), "version 2");

    // The snapshot can go while the restored volume lives, the source while its
    // snapshot lives; nobody loses data.
    let again = snapshot(&driver, "snap-2", &source.volume_id).await;
    delete_snapshot(&driver, &snap.snapshot_id).await.unwrap();
    delete_snapshot(&driver, &snap.snapshot_id).await.unwrap();
    assert_eq!(read(&dst.target, "state.txt"), "restored and changed");
    unpublish(&driver, &src).await;
    delete_volume(&driver, &source.volume_id).await;
    let ids = snapshot_ids(&driver).await;
    assert_eq!(ids, vec![again.snapshot_id.clone()]);
    let from_orphan = create_from(
        &driver,
        &name("from-orphan"),
        cap.clone(),
        0,
        from_snapshot(&again.snapshot_id),
    )
    .await;
    let orphan = publish(&driver, &from_orphan.volume_id, "from-orphan", &cap).await;
    assert_eq!(read(&orphan.target, "state.txt"), "version 2");
    unpublish(&driver, &orphan).await;
    unpublish(&driver, &dst).await;
}

#[tokio::test]
async fn a_clone_of_a_published_volume_diverges_from_it() {
    let driver = TestDriver::start().await;
    let cap = mount_cap("xfs");
    let source = create(&driver, &name("clone-src"), cap.clone(), 320 * MIB).await;
    let src = publish(&driver, &source.volume_id, "clone-src", &cap).await;
    write_unsynced(&src.target, "shared.txt", "common history");

    let clone = create_from(
        &driver,
        &name("clone"),
        cap.clone(),
        0,
        from_volume(&source.volume_id),
    )
    .await;
    assert_eq!(clone.content_source, Some(from_volume(&source.volume_id)));
    assert_eq!(clone.capacity_bytes, source.capacity_bytes);
    let dst = publish(&driver, &clone.volume_id, "clone", &cap).await;
    assert_eq!(read(&dst.target, "shared.txt"), "common history");
    write_unsynced(&src.target, "shared.txt", "source went left");
    write_unsynced(&dst.target, "shared.txt", "clone went right");
    assert_eq!(read(&src.target, "shared.txt"), "source went left");
    assert_eq!(read(&dst.target, "shared.txt"), "clone went right");
    unpublish(&driver, &dst).await;
    unpublish(&driver, &src).await;
}

#[tokio::test]
async fn raw_block_volumes_snapshot_and_restore() {
    let driver = TestDriver::start().await;
    let cap = block_cap();
    let source = create(&driver, &name("blk-src"), cap.clone(), 16 * MIB).await;
    let src = publish(&driver, &source.volume_id, "blk-src", &cap).await;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    write_block(&src.target, 3 * MIB as u64, &pattern);
    let snap = snapshot(&driver, "blk-snap", &source.volume_id).await;
    write_block(&src.target, 3 * MIB as u64, &[0xff; 8192]);

    let restored = create_from(
        &driver,
        &name("blk-restored"),
        cap.clone(),
        32 * MIB,
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    let dst = publish(&driver, &restored.volume_id, "blk-restored", &cap).await;
    assert_eq!(read_block(&dst.target, 3 * MIB as u64, 8192), pattern);
    assert_eq!(device_size(&dst.target), 32 * MIB);
    unpublish(&driver, &dst).await;
    unpublish(&driver, &src).await;
}

#[tokio::test]
async fn list_snapshots_filters_and_pages() {
    let driver = TestDriver::start().await;
    let cap = block_cap();
    let a = create(&driver, &name("list-a"), cap.clone(), 8 * MIB).await;
    let b = create(&driver, &name("list-b"), cap.clone(), 8 * MIB).await;
    let mut all = [
        snapshot(&driver, "la-1", &a.volume_id).await,
        snapshot(&driver, "la-2", &a.volume_id).await,
        snapshot(&driver, "lb-1", &b.volume_id).await,
    ];
    all.sort_by(|x, y| x.snapshot_id.cmp(&y.snapshot_id));
    let mut controller = driver.controller().await;
    let list = |req: v1::ListSnapshotsRequest| {
        let mut c = controller.clone();
        async move { c.list_snapshots(req).await.map(|r| r.into_inner()) }
    };
    let ids = |r: &v1::ListSnapshotsResponse| -> Vec<String> {
        r.entries
            .iter()
            .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
            .collect()
    };

    let by_source = list(v1::ListSnapshotsRequest {
        source_volume_id: a.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(by_source.entries.len(), 2);
    let one = list(v1::ListSnapshotsRequest {
        snapshot_id: all[1].snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(ids(&one), vec![all[1].snapshot_id.clone()]);
    for unknown in [
        v1::ListSnapshotsRequest {
            snapshot_id: "snap-0123456789abcdef0123456789abcdef".into(),
            ..Default::default()
        },
        v1::ListSnapshotsRequest {
            source_volume_id: "0123456789abcdef0123456789abcdef".into(),
            ..Default::default()
        },
    ] {
        assert!(list(unknown).await.unwrap().entries.is_empty());
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(v1::ListSnapshotsRequest {
            max_entries: 2,
            starting_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(page.entries.len() <= 2);
        seen.extend(ids(&page));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let expected: Vec<_> = all.iter().map(|s| s.snapshot_id.clone()).collect();
    assert_eq!(seen, expected);

    assert_code(
        list(v1::ListSnapshotsRequest {
            starting_token: "not-a-token".into(),
            ..Default::default()
        })
        .await,
        Code::Aborted,
    );
    assert_code(
        list(v1::ListSnapshotsRequest {
            max_entries: -1,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    let got = controller
        .get_snapshot(v1::GetSnapshotRequest {
            snapshot_id: all[0].snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(got, all[0]);
}

#[tokio::test]
async fn snapshot_misuse_gets_the_codes_the_spec_names() {
    let driver = TestDriver::start().await;
    let mut c = driver.controller().await;
    let fs_vol = create(&driver, &name("err-fs"), mount_cap("ext4"), 16 * MIB).await;
    let other = create(&driver, &name("err-other"), mount_cap("ext4"), 16 * MIB).await;
    let missing_vol = "0123456789abcdef0123456789abcdef";
    let missing_snap = "snap-0123456789abcdef0123456789abcdef";

    assert_code(
        c.create_snapshot(snapshot_request("", &fs_vol.volume_id))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.create_snapshot(snapshot_request("s", "")).await,
        Code::InvalidArgument,
    );
    assert_code(
        c.create_snapshot(snapshot_request("s", missing_vol)).await,
        Code::NotFound,
    );
    assert_code(
        c.create_snapshot(snapshot_request("s", "../../etc")).await,
        Code::InvalidArgument,
    );
    let snap = snapshot(&driver, "taken", &fs_vol.volume_id).await;
    let msg = assert_code(
        c.create_snapshot(snapshot_request("taken", &other.volume_id))
            .await,
        Code::AlreadyExists,
    );
    assert!(msg.contains(&fs_vol.volume_id), "{msg}");

    for id in [missing_snap, "garbage"] {
        assert_code(
            c.get_snapshot(v1::GetSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await,
            Code::NotFound,
        );
        // Deleting what does not exist is done.
        delete_snapshot(&driver, id).await.unwrap();
    }
    assert_code(delete_snapshot(&driver, "").await, Code::InvalidArgument);

    // Restores that cannot be: unknown sources, another access type, a limit below the
    // source's size.
    let req = |src, cap, required, limit| v1::CreateVolumeRequest {
        capacity_range: Some(v1::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..create_from_request(&name("bad-restore"), cap, required, src)
    };
    assert_code(
        c.create_volume(req(from_snapshot(missing_snap), mount_cap("ext4"), 0, 0))
            .await,
        Code::NotFound,
    );
    assert_code(
        c.create_volume(req(from_volume(missing_vol), mount_cap("ext4"), 0, 0))
            .await,
        Code::NotFound,
    );
    assert_code(
        c.create_volume(req(from_snapshot(&snap.snapshot_id), block_cap(), 0, 0))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.create_volume(req(
            from_snapshot(&snap.snapshot_id),
            mount_cap("xfs"),
            0,
            0,
        ))
        .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.create_volume(req(
            from_snapshot(&snap.snapshot_id),
            mount_cap("ext4"),
            0,
            8 * MIB,
        ))
        .await,
        Code::OutOfRange,
    );
    // The same name with another source is taken.
    let restored = create_from(
        &driver,
        &name("restore-once"),
        mount_cap("ext4"),
        0,
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    assert_code(
        c.create_volume(create_from_request(
            &name("restore-once"),
            mount_cap("ext4"),
            0,
            from_volume(&other.volume_id),
        ))
        .await,
        Code::AlreadyExists,
    );
    let same = create_from(
        &driver,
        &name("restore-once"),
        mount_cap("ext4"),
        0,
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    assert_eq!(same.volume_id, restored.volume_id);
}

#[tokio::test]
async fn switched_off_snapshots_are_neither_advertised_nor_served() {
    let driver = TestDriver::start_with(&["--disable=snapshots,clones"]).await;
    let mut c = driver.controller().await;
    let caps = c
        .controller_get_capabilities(v1::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use v1::controller_service_capability::rpc::Type;
    let advertised: Vec<i32> = caps
        .iter()
        .filter_map(|c| c.r#type.as_ref())
        .map(|v1::controller_service_capability::Type::Rpc(r)| r.r#type)
        .collect();
    for t in [
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        Type::GetSnapshot,
    ] {
        assert!(!advertised.contains(&(t as i32)), "{t:?} advertised");
    }
    let vol = create(&driver, &name("off"), block_cap(), 8 * MIB).await;
    assert_code(
        c.create_snapshot(snapshot_request("s", &vol.volume_id))
            .await,
        Code::Unimplemented,
    );
    assert_code(
        c.list_snapshots(v1::ListSnapshotsRequest::default()).await,
        Code::Unimplemented,
    );
    assert_code(
        c.create_volume(create_from_request(
            &name("clone-off"),
            block_cap(),
            0,
            from_volume(&vol.volume_id),
        ))
        .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn on_an_xfs_pool_snapshots_and_restores_share_extents() {
    let mut driver = TestDriver::prepare(&[]);
    mount_xfs_pool(&driver);
    driver.spawn().await;
    let info = driver.plugin_info().await;
    assert_eq!(
        info.manifest.get("poolFilesystem").map(String::as_str),
        Some("xfs")
    );
    assert_eq!(
        info.manifest.get("snapshotCopy").map(String::as_str),
        Some("reflink")
    );

    let cap = mount_cap("ext4");
    let vol = create(&driver, &name("xfs-pool-src"), cap.clone(), 256 * MIB).await;
    let src = publish(&driver, &vol.volume_id, "xfs-pool-src", &cap).await;
    let data: Vec<u8> = (0..64 * MIB).map(|i| (i % 253) as u8).collect();
    std::fs::write(std::path::Path::new(&src.target).join("big"), &data).unwrap();
    std::fs::File::open(std::path::Path::new(&src.target).join("big"))
        .unwrap()
        .sync_all()
        .unwrap();

    let before = free_bytes(&driver.pool);
    let snap = snapshot(&driver, "xfs-pool-snap", &vol.volume_id).await;
    let restored = create_from(
        &driver,
        &name("xfs-pool-restored"),
        cap.clone(),
        0,
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    let used = before - free_bytes(&driver.pool);
    assert!(
        used < 16 * MIB,
        "a snapshot and a restore of 64 MiB of data took {used} bytes: not reflinks"
    );
    let dst = publish(&driver, &restored.volume_id, "xfs-pool-restored", &cap).await;
    assert!(std::fs::read(std::path::Path::new(&dst.target).join("big")).unwrap() == data);
    unpublish(&driver, &dst).await;
    unpublish(&driver, &src).await;
}
