//! Snapshots and group snapshots at library level, on real loop devices, filesystems and
//! an xfs (reflink) pool built on a loop-backed image: consistency of a snapshot of a
//! mounted, written-to volume, independence from the source, idempotency, and crash
//! recovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod snapshot_support;
mod storage_support;

use std::fs;
use std::io::Write;

use plinth_driver::mount::FsType;
use plinth_driver::storage::pool::backing::{self, FsKind};
use plinth_driver::storage::snapshot::{Created, SnapshotError, SnapshotId, SnapshotStore};
use snapshot_support::*;
use storage_support::{Sandbox, ext4, xfs};

/// Writes `text` to `<dir>/<file>` WITHOUT fsync: only the freeze makes it durable.
fn write_unsynced(dir: &std::path::Path, file: &str, text: &str) {
    let mut f = fs::File::create(dir.join(file)).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn pool_filesystem_is_detected_and_reflink_probed() {
    let sandbox = Sandbox::new();
    let xfs_fs = xfs_reflink_fs(&sandbox, "probe-xfs", 1 << 30);
    let found = backing::probe(&xfs_fs).unwrap();
    assert_eq!(found.kind, FsKind::Xfs);
    assert!(found.reflink, "xfs made with reflink=1 must reflink");
    let host = backing::probe(sandbox.path()).unwrap();
    if host.kind == FsKind::Ext4 {
        assert!(!host.reflink, "ext4 cannot reflink");
    }
    assert!(
        fs::read_dir(&xfs_fs).unwrap().next().is_none(),
        "the probe leaves nothing behind"
    );
}

#[test]
fn snapshot_of_a_mounted_volume_holds_unsynced_data_and_stays_independent() {
    for on_xfs in [true, false] {
        let sandbox = Sandbox::new();
        let pool = if on_xfs {
            xfs_pool(&sandbox)
        } else {
            host_pool(&sandbox)
        };
        let store = SnapshotStore::open(&pool).unwrap();
        assert_eq!(store.filesystem().reflink, on_xfs);
        let (id, mnt) = staged(&sandbox, &pool, "src", 512 * MIB, ext4());
        write_unsynced(&mnt, "data.txt", "before the snapshot");

        let (snap, created) = store.create(&pool, "snap-1", &id).unwrap();
        assert_eq!(created, Created::New);
        assert_eq!(snap.copy_method, if on_xfs { "reflink" } else { "sparse" });
        assert_eq!(snap.size_bytes, 512 * MIB);
        assert_eq!(snap.source_volume_id, id);
        // The volume is thawed again: writes go through.
        write_unsynced(&mnt, "data.txt", "after the snapshot");
        fs::File::open(mnt.join("data.txt"))
            .unwrap()
            .sync_all()
            .unwrap();

        let image = store.image_path(&snap.id);
        assert!(
            allocated(&image) < 64 * MIB,
            "the copy keeps holes: {} bytes allocated",
            allocated(&image)
        );
        let view = mount_image_ro(&sandbox, &image, FsType::Ext4, "view");
        assert_eq!(
            fs::read_to_string(view.join("data.txt")).unwrap(),
            "before the snapshot"
        );
        unmount(&view);

        // The source can go; its snapshot stays whole.
        unstage(&sandbox, &pool, &id, "src");
        pool.delete_volume(&id).unwrap();
        let view = mount_image_ro(&sandbox, &image, FsType::Ext4, "view2");
        assert_eq!(
            fs::read_to_string(view.join("data.txt")).unwrap(),
            "before the snapshot"
        );
        unmount(&view);
        assert_eq!(store.get(&snap.id).unwrap(), snap);
    }
}

#[test]
fn create_is_idempotent_by_name_and_names_are_bound_to_their_source() {
    let sandbox = Sandbox::new();
    let pool = host_pool(&sandbox);
    let store = SnapshotStore::open(&pool).unwrap();
    let (a, _) = pool
        .create_volume(&storage_support::request("a", 8 * MIB, 0, block()))
        .unwrap();
    let (b, _) = pool
        .create_volume(&storage_support::request("b", 8 * MIB, 0, block()))
        .unwrap();
    let (first, _) = store.create(&pool, "nightly", &a.id).unwrap();
    let (again, created) = store.create(&pool, "nightly", &a.id).unwrap();
    assert_eq!((again, created), (first.clone(), Created::Existing));
    assert!(matches!(
        store.create(&pool, "nightly", &b.id),
        Err(SnapshotError::AlreadyExists { .. })
    ));
    let missing =
        plinth_driver::storage::pool::VolumeId::parse("0123456789abcdef0123456789abcdef").unwrap();
    assert!(matches!(
        store.create(&pool, "other", &missing),
        Err(SnapshotError::SourceNotFound(_))
    ));
    assert_eq!(store.list(), vec![first.clone()]);
    store.delete(&first.id).unwrap();
    store.delete(&first.id).unwrap();
    assert!(store.list().is_empty());
    assert!(!store.image_path(&first.id).exists());
    assert!(matches!(
        store.get(&first.id),
        Err(SnapshotError::NotFound(_))
    ));
}

#[test]
fn open_removes_what_an_interrupted_create_left_behind() {
    let sandbox = Sandbox::new();
    let pool = host_pool(&sandbox);
    let (vol, _) = pool
        .create_volume(&storage_support::request("v", 8 * MIB, 0, block()))
        .unwrap();
    let (kept, _) = {
        let store = SnapshotStore::open(&pool).unwrap();
        store.create(&pool, "kept", &vol.id).unwrap()
    };
    let dir = pool.dir().join("snapshots");
    // A copy that crashed before its record, a half-written record, and a member of a
    // group whose group record was never committed.
    let orphan = dir.join("snap-00000000000000000000000000000001.img");
    fs::write(&orphan, b"partial").unwrap();
    fs::write(
        dir.join(".snap-00000000000000000000000000000002.json.tmp"),
        b"{",
    )
    .unwrap();
    let member = serde_json::json!({
        "kind": "snapshot", "formatVersion": 1,
        "id": "snap-00000000000000000000000000000003", "name": null,
        "sourceVolumeId": vol.id.as_str(), "sourceAccess": {"kind": "block"},
        "sizeBytes": 8 * MIB, "createdUnixNanos": 1,
        "groupId": "group-00000000000000000000000000000004", "copyMethod": "sparse"
    });
    fs::write(
        dir.join("snap-00000000000000000000000000000003.json"),
        member.to_string(),
    )
    .unwrap();

    let store = SnapshotStore::open(&pool).unwrap();
    let recovery = store.recovery();
    assert_eq!(recovery.removed_orphan_images, vec![orphan.clone()]);
    assert_eq!(recovery.removed_temp_files.len(), 1);
    assert_eq!(
        recovery.removed_orphan_members,
        vec![SnapshotId::parse("snap-00000000000000000000000000000003").unwrap()]
    );
    assert!(!orphan.exists());
    assert_eq!(store.list(), vec![kept]);
}

#[test]
fn group_snapshot_cuts_every_member_at_one_point_and_goes_as_a_whole() {
    let sandbox = Sandbox::new();
    let pool = xfs_pool(&sandbox);
    let store = SnapshotStore::open(&pool).unwrap();
    let (a, mnt_a) = staged(&sandbox, &pool, "a", 64 * MIB, ext4());
    let (b, mnt_b) = staged(&sandbox, &pool, "b", 320 * MIB, xfs());
    let (c, _) = staged(&sandbox, &pool, "c", 16 * MIB, block());
    write_unsynced(&mnt_a, "wal", "a-1");
    write_unsynced(&mnt_b, "table", "b-1");

    let sources = [a.clone(), b.clone(), c.clone()];
    let (group, members, created) = store.create_group(&pool, "g1", &sources).unwrap();
    assert_eq!(created, Created::New);
    assert_eq!(members.len(), 3);
    assert!(
        members
            .iter()
            .all(|m| m.created_unix_nanos == group.created_unix_nanos
                && m.group_id.as_ref() == Some(&group.id)
                && m.name.is_none())
    );
    let by_source: Vec<_> = members.iter().map(|m| m.source_volume_id.clone()).collect();
    assert_eq!(by_source, sources);
    write_unsynced(&mnt_a, "wal", "a-2");

    // Retried with the volumes in another order: the same group.
    let (again, _, created) = store
        .create_group(&pool, "g1", &[c.clone(), a.clone(), b.clone()])
        .unwrap();
    assert_eq!(
        (again.id.clone(), created),
        (group.id.clone(), Created::Existing)
    );
    assert!(matches!(
        store.create_group(&pool, "g1", std::slice::from_ref(&a)),
        Err(SnapshotError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.create_group(&pool, "dup", &[a.clone(), a.clone()]),
        Err(SnapshotError::InvalidRequest(_))
    ));

    let view = mount_image_ro(
        &sandbox,
        &store.image_path(&members[0].id),
        FsType::Ext4,
        "va",
    );
    assert_eq!(fs::read_to_string(view.join("wal")).unwrap(), "a-1");
    unmount(&view);
    let view = mount_image_ro(
        &sandbox,
        &store.image_path(&members[1].id),
        FsType::Xfs,
        "vb",
    );
    assert_eq!(fs::read_to_string(view.join("table")).unwrap(), "b-1");
    unmount(&view);

    assert!(matches!(
        store.delete(&members[0].id),
        Err(SnapshotError::InGroup { .. })
    ));
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    assert!(matches!(
        store.get_group(&group.id, &ids[..1]),
        Err(SnapshotError::MembersMismatch { .. })
    ));
    assert_eq!(store.get_group(&group.id, &ids).unwrap().1, members);
    store.delete_group(&group.id, &ids).unwrap();
    store.delete_group(&group.id, &ids).unwrap();
    assert!(store.list().is_empty());
    for m in &members {
        assert!(!store.image_path(&m.id).exists());
    }
    // Group state survives a reopen exactly as it was left: nothing.
    drop(store);
    let store = SnapshotStore::open(&pool).unwrap();
    assert!(matches!(
        store.get_group(&group.id, &[]),
        Err(SnapshotError::GroupNotFound(_))
    ));
}

#[test]
fn a_filesystem_left_frozen_by_a_crash_is_thawed_at_start() {
    let sandbox = Sandbox::new();
    let pool = host_pool(&sandbox);
    let (id, mnt) = staged(&sandbox, &pool, "frozen", 32 * MIB, ext4());
    let dev = pool.attachment(&id).unwrap().unwrap();
    // A driver killed mid-snapshot never runs the guard's thaw.
    std::mem::forget(plinth_driver::storage::freeze::freeze(&mnt).unwrap());
    let thawed =
        plinth_driver::storage::freeze::thaw_after_crash(std::slice::from_ref(&dev)).unwrap();
    assert_eq!(thawed, vec![mnt.clone()]);
    // Not frozen any more: nothing to thaw, and writes go through.
    assert!(
        plinth_driver::storage::freeze::thaw_after_crash(&[dev])
            .unwrap()
            .is_empty()
    );
    write_unsynced(&mnt, "after", "writable");
    fs::File::open(mnt.join("after"))
        .unwrap()
        .sync_all()
        .unwrap();
}
