//! Node-side operations end to end on real loop devices and mounts: stage, publish,
//! unpublish, unstage, idempotency, incompatible requests, restart recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod storage_support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_driver::mount::{FsType, mountinfo};
use plinth_driver::storage::pool::{Pool, PoolError, Volume, VolumeAccess};
use plinth_driver::storage::volume::{
    Formatting, NodeAccess, NodeVolumes, Outcome, VolumeError, VolumeStats,
};
use storage_support::*;

fn node(pool: &Arc<Pool>, formatting: Formatting) -> NodeVolumes {
    NodeVolumes::with_formatting(pool.clone(), formatting)
}

fn mount_access(fs: FsType) -> NodeAccess {
    NodeAccess::Mount {
        fs_type: Some(fs),
        mount_flags: vec![],
    }
}

struct Paths {
    staging: PathBuf,
    target: PathBuf,
}

fn paths(sb: &Sandbox, v: &Volume) -> Paths {
    Paths {
        staging: sb.join(&format!("kubelet/plugins/pv/{}/globalmount", v.id)),
        target: sb.join(&format!("kubelet/pods/uid/volumes/{}/mount", v.id)),
    }
}

fn is_mounted(p: &Path) -> bool {
    mountinfo::find_mount_point(&mountinfo::read_self().unwrap(), p).is_some()
}

fn filesystem_cycle(fs_type: FsType, formatting: Formatting) {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = node(&pool, formatting);
    let access = match fs_type {
        FsType::Ext4 => ext4(),
        FsType::Xfs => xfs(),
    };
    let (v, _) = pool.create_volume(&request("pvc", 0, 0, access)).unwrap();
    let p = paths(&sb, &v);
    let acc = mount_access(fs_type);

    assert_eq!(
        node.stage(&v.id, &p.staging, &acc, false).unwrap(),
        Outcome::Done
    );
    assert_eq!(
        node.stage(&v.id, &p.staging, &acc, false).unwrap(),
        Outcome::AlreadyDone
    );
    let entries = mountinfo::read_self().unwrap();
    let staged = mountinfo::find_mount_point(&entries, &p.staging).unwrap();
    assert_eq!(staged.fs_type, fs_type.as_str());
    if fs_type == FsType::Xfs {
        assert!(
            staged.super_options.iter().any(|o| o == "nouuid"),
            "{:?}",
            staged.super_options
        );
    }
    assert_eq!(
        node.publish(&v.id, &p.staging, &p.target, &acc, false)
            .unwrap(),
        Outcome::Done
    );
    assert_eq!(
        node.publish(&v.id, &p.staging, &p.target, &acc, false)
            .unwrap(),
        Outcome::AlreadyDone
    );
    fs::File::create(p.target.join("data"))
        .unwrap()
        .write_all(b"persisted")
        .unwrap();
    match node.stats(&v.id, &p.target).unwrap() {
        VolumeStats::Filesystem { bytes, inodes } => {
            assert!(
                bytes.total > v.size_bytes / 2 && bytes.total <= v.size_bytes,
                "{bytes:?}"
            );
            assert!(bytes.used > 0 && bytes.available < bytes.total);
            assert!(inodes.used >= 1 && inodes.total > inodes.used);
        }
        other => panic!("expected filesystem stats, got {other:?}"),
    }

    assert_eq!(node.unpublish(&v.id, &p.target).unwrap(), Outcome::Done);
    assert!(!p.target.exists(), "target removed");
    assert_eq!(
        node.unpublish(&v.id, &p.target).unwrap(),
        Outcome::AlreadyDone
    );
    assert_eq!(node.unstage(&v.id, &p.staging).unwrap(), Outcome::Done);
    assert_eq!(
        node.unstage(&v.id, &p.staging).unwrap(),
        Outcome::AlreadyDone
    );
    assert!(!is_mounted(&p.staging));
    assert!(pool.attachment(&v.id).unwrap().is_none(), "loop detached");

    // Again: the filesystem is found, not recreated, and the file is still there.
    node.stage(&v.id, &p.staging, &acc, false).unwrap();
    node.publish(&v.id, &p.staging, &p.target, &acc, false)
        .unwrap();
    assert_eq!(fs::read(p.target.join("data")).unwrap(), b"persisted");
    node.unpublish(&v.id, &p.target).unwrap();
    node.unstage(&v.id, &p.staging).unwrap();
    pool.delete_volume(&v.id).unwrap();
    assert!(sb.loops().is_empty(), "no loop device leaked");
}

#[test]
fn ext4_cycle_with_templates() {
    filesystem_cycle(FsType::Ext4, Formatting::Templates);
}

#[test]
fn ext4_cycle_with_mkfs() {
    filesystem_cycle(FsType::Ext4, Formatting::Mkfs);
}

#[test]
fn xfs_cycle_with_templates() {
    filesystem_cycle(FsType::Xfs, Formatting::Templates);
}

#[test]
fn xfs_cycle_with_mkfs() {
    filesystem_cycle(FsType::Xfs, Formatting::Mkfs);
}

#[test]
fn templates_give_each_volume_its_own_filesystem() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = node(&pool, Formatting::Templates);
    let acc = mount_access(FsType::Ext4);
    let mut staged = Vec::new();
    for name in ["a", "b"] {
        let (v, _) = pool
            .create_volume(&request(name, 64 * MIB, 0, ext4()))
            .unwrap();
        let p = paths(&sb, &v);
        node.stage(&v.id, &p.staging, &acc, false).unwrap();
        fs::write(p.staging.join("who"), name).unwrap();
        staged.push((v, p));
    }
    for (v, p) in &staged {
        assert_eq!(fs::read_to_string(p.staging.join("who")).unwrap(), v.name);
        node.unstage(&v.id, &p.staging).unwrap();
    }
    let templates: Vec<_> = fs::read_dir(pool.templates_dir()).unwrap().collect();
    assert_eq!(templates.len(), 1, "one template per (fs, size)");
}

#[test]
fn block_cycle() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = node(&pool, Formatting::Templates);
    let (v, _) = pool
        .create_volume(&request("blk", 16 * MIB, 0, VolumeAccess::Block))
        .unwrap();
    let staging = sb.join("kubelet/plugins/volumeDevices/staging/pv");
    let target = sb.join("kubelet/plugins/volumeDevices/publish/pv/pod-uid");
    let b = NodeAccess::Block;

    assert_eq!(
        node.stage(&v.id, &staging, &b, false).unwrap(),
        Outcome::Done
    );
    assert_eq!(
        node.stage(&v.id, &staging, &b, false).unwrap(),
        Outcome::AlreadyDone
    );
    assert_eq!(
        node.publish(&v.id, &staging, &target, &b, false).unwrap(),
        Outcome::Done
    );
    assert_eq!(
        node.publish(&v.id, &staging, &target, &b, false).unwrap(),
        Outcome::AlreadyDone
    );
    {
        let mut dev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        dev.seek(SeekFrom::Start(MIB)).unwrap();
        dev.write_all(b"raw block bytes").unwrap();
        dev.sync_all().unwrap();
    }
    assert_eq!(
        node.stats(&v.id, &target).unwrap(),
        VolumeStats::Block {
            total_bytes: 16 * MIB
        }
    );
    // Unstage while published is refused.
    assert!(matches!(
        node.unstage(&v.id, &staging),
        Err(VolumeError::StillPublished { .. })
    ));
    node.unpublish(&v.id, &target).unwrap();
    assert!(!target.exists());
    node.unstage(&v.id, &staging).unwrap();
    assert!(pool.attachment(&v.id).unwrap().is_none());

    node.stage(&v.id, &staging, &b, false).unwrap();
    node.publish(&v.id, &staging, &target, &b, false).unwrap();
    let mut dev = fs::File::open(&target).unwrap();
    dev.seek(SeekFrom::Start(MIB)).unwrap();
    let mut buf = [0u8; 15];
    dev.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"raw block bytes");
    drop(dev);
    node.unpublish(&v.id, &target).unwrap();

    // Read-only publish: a device that refuses writes, detached again on unpublish.
    let ro_target = sb.join("kubelet/plugins/volumeDevices/publish/pv/ro-pod");
    assert_eq!(
        node.publish(&v.id, &staging, &ro_target, &b, true).unwrap(),
        Outcome::Done
    );
    assert_eq!(
        node.publish(&v.id, &staging, &ro_target, &b, true).unwrap(),
        Outcome::AlreadyDone
    );
    assert!(matches!(
        node.publish(&v.id, &staging, &ro_target, &b, false),
        Err(VolumeError::AlreadyExists { .. })
    ));
    // The kernel may let the device be opened for writing, but no write gets through.
    let write = fs::OpenOptions::new()
        .write(true)
        .open(&ro_target)
        .and_then(|mut f| f.write_all(b"must not land").and_then(|()| f.sync_all()));
    let err = write.unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::EACCES | libc::EROFS | libc::EPERM)
        ),
        "{err}"
    );
    let mut buf = [0u8; 15];
    let f = fs::File::open(&ro_target).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, MIB).unwrap();
    assert_eq!(&buf, b"raw block bytes");
    drop(f);
    assert_eq!(
        node.stats(&v.id, &ro_target).unwrap(),
        VolumeStats::Block {
            total_bytes: 16 * MIB
        }
    );
    assert!(matches!(
        node.unstage(&v.id, &staging),
        Err(VolumeError::StillPublished { .. })
    ));
    assert_eq!(
        node.publications(&v.id, &staging).unwrap(),
        vec![ro_target.clone()]
    );
    assert_eq!(
        plinth_driver::mount::loopdev::loops_for(&pool.image_path(&v.id))
            .unwrap()
            .len(),
        2
    );
    node.unpublish(&v.id, &ro_target).unwrap();
    assert_eq!(
        plinth_driver::mount::loopdev::loops_for(&pool.image_path(&v.id))
            .unwrap()
            .len(),
        1
    );
    node.unstage(&v.id, &staging).unwrap();
    // Block volumes are never formatted.
    assert_eq!(
        plinth_driver::mount::fs::detect(&pool.image_path(&v.id)).unwrap(),
        plinth_driver::mount::Detected::Blank
    );
    assert!(sb.loops().is_empty());
}

#[test]
fn incompatible_and_out_of_order_requests_are_refused_without_side_effects() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = node(&pool, Formatting::Templates);
    let (v, _) = pool
        .create_volume(&request("v", 64 * MIB, 0, ext4()))
        .unwrap();
    let p = paths(&sb, &v);
    let acc = mount_access(FsType::Ext4);

    // Publish before stage.
    assert!(matches!(
        node.publish(&v.id, &p.staging, &p.target, &acc, false),
        Err(VolumeError::NotStaged { .. })
    ));
    node.stage(&v.id, &p.staging, &acc, false).unwrap();
    for (access, ro) in [
        (acc.clone(), true),
        (mount_access(FsType::Xfs), false),
        (
            NodeAccess::Mount {
                fs_type: None,
                mount_flags: vec!["noexec".into()],
            },
            false,
        ),
        (NodeAccess::Block, false),
    ] {
        assert!(
            matches!(
                node.stage(&v.id, &p.staging, &access, ro),
                Err(VolumeError::AlreadyExists { .. })
            ),
            "{access:?} ro={ro}"
        );
    }
    node.publish(&v.id, &p.staging, &p.target, &acc, false)
        .unwrap();
    assert!(matches!(
        node.publish(&v.id, &p.staging, &p.target, &acc, true),
        Err(VolumeError::AlreadyExists { .. })
    ));
    assert!(matches!(
        node.unstage(&v.id, &p.staging),
        Err(VolumeError::StillPublished { .. })
    ));
    assert!(matches!(
        pool.delete_volume(&v.id),
        Err(PoolError::InUse { .. })
    ));
    // Bad mount options are invalid requests.
    assert!(matches!(
        node.publish(
            &v.id,
            &p.staging,
            &sb.join("other"),
            &NodeAccess::Mount {
                fs_type: None,
                mount_flags: vec!["bind".into()]
            },
            false
        ),
        Err(VolumeError::InvalidRequest(_))
    ));
    assert!(!sb.join("other").exists());
    node.unpublish(&v.id, &p.target).unwrap();
    node.unstage(&v.id, &p.staging).unwrap();

    // The image now holds ext4: asking for xfs never reformats it, and leaks nothing.
    assert!(matches!(
        node.stage(&v.id, &p.staging, &mount_access(FsType::Xfs), false),
        Err(VolumeError::FsMismatch {
            found: FsType::Ext4,
            requested: FsType::Xfs,
            ..
        })
    ));
    assert!(pool.attachment(&v.id).unwrap().is_none());
    assert!(!is_mounted(&p.staging));

    // Unknown data is never formatted.
    let (u, _) = pool
        .create_volume(&request("u", 64 * MIB, 0, ext4()))
        .unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pool.image_path(&u.id))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"precious", 4096).unwrap();
    let up = paths(&sb, &u);
    assert!(matches!(
        node.stage(&u.id, &up.staging, &acc, false),
        Err(VolumeError::UnknownData { .. })
    ));
    let mut head = vec![0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 4096).unwrap();
    assert_eq!(&head, b"precious");
    assert!(sb.loops().is_empty());
}

#[test]
fn untrusted_paths_and_foreign_mounts() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = node(&pool, Formatting::Templates);
    let (v, _) = pool
        .create_volume(&request("v", 64 * MIB, 0, ext4()))
        .unwrap();
    let acc = mount_access(FsType::Ext4);
    let bad = [
        PathBuf::from("relative/staging"),
        sb.join("a/../../etc"),
        pool.dir().join("volumes"),
        pool.dir().join("new/inside"),
        PathBuf::from(""),
    ];
    for path in &bad {
        assert!(
            matches!(
                node.stage(&v.id, path, &acc, false),
                Err(VolumeError::InvalidPath { .. })
            ),
            "{path:?}"
        );
    }
    assert!(pool.attachment(&v.id).unwrap().is_none());
    let p = paths(&sb, &v);
    node.stage(&v.id, &p.staging, &acc, false).unwrap();
    for path in &bad {
        assert!(matches!(
            node.publish(&v.id, &p.staging, path, &acc, false),
            Err(VolumeError::InvalidPath { .. })
        ));
    }
    // A symlink in the target path that points into the pool is caught.
    let link = sb.join("kubelet/pods/evil");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(pool.dir(), &link).unwrap();
    assert!(matches!(
        node.publish(&v.id, &p.staging, &link.join("mnt"), &acc, false),
        Err(VolumeError::InvalidPath { .. })
    ));
    // A mount point that is not ours is neither unpublished nor reported.
    let foreign = sb.join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &foreign,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    assert!(matches!(
        node.unpublish(&v.id, &foreign),
        Err(VolumeError::NotOurs { .. })
    ));
    assert!(is_mounted(&foreign));
    assert!(matches!(
        node.stats(&v.id, &foreign),
        Err(VolumeError::NotAtPath { .. })
    ));
    // Unpublishing a target that never existed is success (idempotent).
    assert_eq!(
        node.unpublish(&v.id, &sb.join("never")).unwrap(),
        Outcome::AlreadyDone
    );
    node.unstage(&v.id, &p.staging).unwrap();
}

#[test]
fn readonly_publish_and_mount_flags() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = node(&pool, Formatting::Templates);
    let (v, _) = pool
        .create_volume(&request("ro", 64 * MIB, 0, ext4()))
        .unwrap();
    let p = paths(&sb, &v);
    let acc = NodeAccess::Mount {
        fs_type: None,
        mount_flags: vec!["noatime".into(), "nodev,nosuid".into()],
    };
    node.stage(&v.id, &p.staging, &acc, false).unwrap();
    fs::write(p.staging.join("f"), b"x").unwrap();
    node.publish(&v.id, &p.staging, &p.target, &acc, true)
        .unwrap();
    let entries = mountinfo::read_self().unwrap();
    let e = mountinfo::find_mount_point(&entries, &p.target).unwrap();
    assert!(e.is_read_only() && e.has_option("nodev") && e.has_option("nosuid"));
    assert_eq!(fs::read(p.target.join("f")).unwrap(), b"x");
    let err = fs::write(p.target.join("g"), b"y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        node.publish(&v.id, &p.staging, &p.target, &acc, true)
            .unwrap(),
        Outcome::AlreadyDone
    );
    // A plain publish of a volume staged with flags inherits them, and a retry of it
    // is still recognised as the same publish.
    let plain = mount_access(FsType::Ext4);
    let second = sb.join("kubelet/pods/other/mount");
    assert_eq!(
        node.publish(&v.id, &p.staging, &second, &plain, false)
            .unwrap(),
        Outcome::Done
    );
    assert_eq!(
        node.publish(&v.id, &p.staging, &second, &plain, false)
            .unwrap(),
        Outcome::AlreadyDone
    );
    node.unpublish(&v.id, &second).unwrap();
    node.unpublish(&v.id, &p.target).unwrap();
    node.unstage(&v.id, &p.staging).unwrap();
}

#[test]
fn restart_keeps_staged_volumes_usable_and_leaks_nothing() {
    let sb = Sandbox::new();
    let acc = mount_access(FsType::Ext4);
    let (v, p) = {
        let pool = sb.open_pool();
        let node = node(&pool, Formatting::Templates);
        let (v, _) = pool
            .create_volume(&request("r", 64 * MIB, 0, ext4()))
            .unwrap();
        let p = paths(&sb, &v);
        node.stage(&v.id, &p.staging, &acc, false).unwrap();
        node.publish(&v.id, &p.staging, &p.target, &acc, false)
            .unwrap();
        fs::write(p.target.join("f"), b"before restart").unwrap();
        // A block volume staged too: its only trace is a bind of the device node.
        let (b, _) = pool
            .create_volume(&request("rb", MIB, 0, VolumeAccess::Block))
            .unwrap();
        node.stage(&b.id, &sb.join("block-staging"), &NodeAccess::Block, false)
            .unwrap();
        (v, p)
    };
    // "Restart": the pool and node objects are gone, the kernel state is not.
    let pool = sb.open_pool();
    let recovery = pool.recovery();
    assert_eq!(recovery.in_use.len(), 2, "{recovery:?}");
    assert!(recovery.in_use.iter().any(|(id, _)| *id == v.id));
    assert!(recovery.detached.is_empty());
    let b = pool.get_by_name("rb").unwrap();
    let node = node(&pool, Formatting::Templates);
    assert_eq!(
        node.stage(&v.id, &p.staging, &acc, false).unwrap(),
        Outcome::AlreadyDone
    );
    assert_eq!(
        node.publish(&v.id, &p.staging, &p.target, &acc, false)
            .unwrap(),
        Outcome::AlreadyDone
    );
    assert_eq!(fs::read(p.target.join("f")).unwrap(), b"before restart");
    node.unpublish(&v.id, &p.target).unwrap();
    node.unstage(&v.id, &p.staging).unwrap();
    node.unstage(&b.id, &sb.join("block-staging")).unwrap();
    assert!(sb.loops().is_empty());
    pool.delete_volume(&v.id).unwrap();
}

#[test]
fn different_volumes_stage_concurrently() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let node = Arc::new(node(&pool, Formatting::Templates));
    let vols: Vec<_> = (0..4)
        .map(|i| {
            pool.create_volume(&request(&format!("c{i}"), 64 * MIB, 0, ext4()))
                .unwrap()
                .0
        })
        .collect();
    let threads: Vec<_> = vols
        .iter()
        .map(|v| {
            let node = node.clone();
            let v = v.clone();
            let p = paths(&sb, &v);
            std::thread::spawn(move || {
                let acc = mount_access(FsType::Ext4);
                node.stage(&v.id, &p.staging, &acc, false).unwrap();
                node.publish(&v.id, &p.staging, &p.target, &acc, false)
                    .unwrap();
                fs::write(p.target.join("id"), v.id.as_str()).unwrap();
                node.unpublish(&v.id, &p.target).unwrap();
                node.unstage(&v.id, &p.staging).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(sb.loops().is_empty());
}

#[test]
fn templates_on_a_reflinking_xfs_pool() {
    let sb = Sandbox::new();
    let fs_dir = private_fs_of(&sb, "xfspool", 2 * GIB, FsType::Xfs);
    let scratch = fs_dir.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    assert!(plinth_driver::storage::pool::reflink_supported(&scratch).unwrap());
    let pool = Arc::new(Pool::open(fs_dir.join("pool"), 0).unwrap());
    let node = node(&pool, Formatting::Templates);
    // Small ext4 and xfs volumes: copies of reflinked templates must still mount with
    // the loop device's 4 KiB logical blocks.
    for (name, access, fs_type) in [
        ("small-ext4", ext4(), FsType::Ext4),
        ("xfs", xfs(), FsType::Xfs),
        ("xfs-2", xfs(), FsType::Xfs),
    ] {
        let (v, _) = pool
            .create_volume(&request(name, 64 * MIB, 0, access))
            .unwrap();
        let p = paths(&sb, &v);
        let acc = mount_access(fs_type);
        node.stage(&v.id, &p.staging, &acc, false).unwrap();
        node.publish(&v.id, &p.staging, &p.target, &acc, false)
            .unwrap();
        fs::write(p.target.join("f"), name).unwrap();
        node.unpublish(&v.id, &p.target).unwrap();
        node.unstage(&v.id, &p.staging).unwrap();
        node.stage(&v.id, &p.staging, &acc, false).unwrap();
        assert_eq!(fs::read_to_string(p.staging.join("f")).unwrap(), name);
        node.unstage(&v.id, &p.staging).unwrap();
    }
    let templates = fs::read_dir(pool.templates_dir()).unwrap().count();
    assert_eq!(templates, 2, "one ext4 and one xfs template");
    assert!(
        sb.loops().len() == 1,
        "only the pool filesystem's own device remains"
    );
}

#[test]
fn xfs_templates_are_skipped_where_they_do_not_pay_off() {
    let sb = Sandbox::new();
    let fs_dir = private_fs(&sb, "extpool", 1024 * MIB);
    let pool = Arc::new(Pool::open(fs_dir.join("pool"), 0).unwrap());
    let node = node(&pool, Formatting::Templates);
    let (v, _) = pool
        .create_volume(&request("x", 300 * MIB, 0, xfs()))
        .unwrap();
    let p = paths(&sb, &v);
    node.stage(&v.id, &p.staging, &mount_access(FsType::Xfs), false)
        .unwrap();
    node.unstage(&v.id, &p.staging).unwrap();
    assert_eq!(fs::read_dir(pool.templates_dir()).unwrap().count(), 0);
}
