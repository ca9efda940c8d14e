//! Volume group snapshots over the driver's socket: one point in time across volumes,
//! each member restorable, the group deleted as a whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use common::*;
use data_rpc::*;
use plinth_csi_proto::v1;
use tonic::Code;
use v1::group_controller_client::GroupControllerClient;

fn create_group_request(name: &str, ids: &[&str]) -> v1::CreateVolumeGroupSnapshotRequest {
    v1::CreateVolumeGroupSnapshotRequest {
        name: name.to_owned(),
        source_volume_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_group_snapshot_cuts_all_volumes_at_one_point_and_restores_each() {
    let driver = TestDriver::start().await;
    let mut group = GroupControllerClient::new(driver.channel().await);
    let caps = group
        .group_controller_get_capabilities(v1::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(caps.len(), 1);

    let cap = mount_cap("ext4");
    let data = create(&driver, &name("g-data"), cap.clone(), 32 * MIB).await;
    let wal = create(&driver, &name("g-wal"), cap.clone(), 16 * MIB).await;
    let pd = publish(&driver, &data.volume_id, "g-data", &cap).await;
    let pw = publish(&driver, &wal.volume_id, "g-wal", &cap).await;
    write_unsynced(&pd.target, "table", "row 1");
    write_unsynced(&pw.target, "log", "commit 1");

    let ids = [data.volume_id.as_str(), wal.volume_id.as_str()];
    let made = group
        .create_volume_group_snapshot(create_group_request("nightly", &ids))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(made.ready_to_use);
    assert_eq!(made.snapshots.len(), 2);
    for s in &made.snapshots {
        assert_eq!(s.group_snapshot_id, made.group_snapshot_id);
        assert_eq!(s.creation_time, made.creation_time, "one point in time");
        assert!(s.ready_to_use);
    }
    let again = group
        .create_volume_group_snapshot(create_group_request("nightly", &ids))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(again, made);
    assert_code(
        group
            .create_volume_group_snapshot(create_group_request("nightly", &ids[..1]))
            .await,
        Code::AlreadyExists,
    );
    write_unsynced(&pd.target, "table", "row 2");
    write_unsynced(&pw.target, "log", "commit 2");

    for (snap, file, expected) in [
        (&made.snapshots[0], "table", "row 1"),
        (&made.snapshots[1], "log", "commit 1"),
    ] {
        let restored = create_from(
            &driver,
            &name(&format!("g-restore-{file}")),
            cap.clone(),
            0,
            from_snapshot(&snap.snapshot_id),
        )
        .await;
        let p = publish(
            &driver,
            &restored.volume_id,
            &format!("g-restore-{file}"),
            &cap,
        )
        .await;
        assert_eq!(read(&p.target, file), expected);
        unpublish(&driver, &p).await;
    }

    let member_ids: Vec<String> = made
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    let msg = assert_code(
        delete_snapshot(&driver, &member_ids[0]).await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains(&made.group_snapshot_id), "{msg}");
    let get = |ids: Vec<String>| v1::GetVolumeGroupSnapshotRequest {
        group_snapshot_id: made.group_snapshot_id.clone(),
        snapshot_ids: ids,
        ..Default::default()
    };
    assert_code(
        group
            .get_volume_group_snapshot(get(member_ids[..1].to_vec()))
            .await,
        Code::InvalidArgument,
    );
    // No snapshot_ids: the spec lets a plugin that finds the members itself ignore
    // the field (and csi-sanity sends none).
    let whole = group
        .get_volume_group_snapshot(get(Vec::new()))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(whole.snapshots.len(), member_ids.len());
    let got = group
        .get_volume_group_snapshot(get(member_ids.clone()))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got, made);

    let delete = v1::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: made.group_snapshot_id.clone(),
        snapshot_ids: member_ids.clone(),
        ..Default::default()
    };
    for _ in 0..2 {
        group
            .delete_volume_group_snapshot(delete.clone())
            .await
            .unwrap();
    }
    assert_code(
        group.get_volume_group_snapshot(get(member_ids)).await,
        Code::NotFound,
    );
    assert!(snapshot_ids(&driver).await.is_empty());
    unpublish(&driver, &pd).await;
    unpublish(&driver, &pw).await;
}

#[tokio::test]
async fn group_snapshot_misuse_gets_the_codes_the_spec_names() {
    let driver = TestDriver::start().await;
    let mut group = GroupControllerClient::new(driver.channel().await);
    let vol = create(&driver, &name("g-err"), block_cap(), 8 * MIB).await;
    let missing = "0123456789abcdef0123456789abcdef";
    assert_code(
        group
            .create_volume_group_snapshot(create_group_request("", &[&vol.volume_id]))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        group
            .create_volume_group_snapshot(create_group_request("g", &[]))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        group
            .create_volume_group_snapshot(create_group_request("g", &[&vol.volume_id, missing]))
            .await,
        Code::NotFound,
    );
    assert_code(
        group
            .create_volume_group_snapshot(create_group_request(
                "g",
                &[&vol.volume_id, &vol.volume_id],
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        group
            .get_volume_group_snapshot(v1::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: "group-0123456789abcdef0123456789abcdef".into(),
                snapshot_ids: vec!["snap-0123456789abcdef0123456789abcdef".into()],
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    group
        .delete_volume_group_snapshot(v1::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "group-0123456789abcdef0123456789abcdef".into(),
            snapshot_ids: vec!["snap-0123456789abcdef0123456789abcdef".into()],
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn cluster_modes_and_switched_off_groups_do_not_serve_the_group_controller() {
    let cluster = stand_in().await;
    for args in [
        &["--mode=node"][..],
        &["--mode=controller"][..],
        &["--disable=group-snapshots"][..],
    ] {
        let driver = if args[0].starts_with("--mode") {
            cluster.driver(NODE_ID, args).await
        } else {
            TestDriver::start_with(args).await
        };
        let mut group = GroupControllerClient::new(driver.channel().await);
        assert_code(
            group
                .group_controller_get_capabilities(v1::GroupControllerGetCapabilitiesRequest {})
                .await,
            Code::Unimplemented,
        );
        let plugin = driver.plugin_capabilities().await;
        let group_service = v1::plugin_capability::service::Type::GroupControllerService as i32;
        assert!(plugin.iter().all(|c| !matches!(
            &c.r#type,
            Some(v1::plugin_capability::Type::Service(s)) if s.r#type == group_service
        )));
    }
}
