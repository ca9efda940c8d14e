//! The pool on a real filesystem: idempotent create, sizing, capacity accounting,
//! deletion, crash recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod storage_support;

use std::fs;
use std::os::unix::fs::MetadataExt;

use plinth_driver::storage::pool::{
    ContentSource, Created, DEFAULT_SIZE, Pool, PoolError, VolumeAccess, VolumeId,
};
use storage_support::*;

#[test]
fn create_is_idempotent_by_name_and_rejects_incompatible_requests() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let (v, created) = pool.create_volume(&request("pvc-1", 0, 0, ext4())).unwrap();
    assert_eq!(created, Created::New);
    assert_eq!(v.size_bytes, DEFAULT_SIZE);
    let image = pool.image_path(&v.id);
    let meta = fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), DEFAULT_SIZE);
    assert!(meta.blocks() * 512 < MIB, "image must be sparse");

    // Same name, compatible range: the same volume.
    let (again, created) = pool
        .create_volume(&request("pvc-1", 100 * MIB, 2 * GIB, ext4()))
        .unwrap();
    assert_eq!(created, Created::Existing);
    assert_eq!(again, v);

    // Incompatible: size range, access type, filesystem, parameters.
    for (req, what) in [
        (request("pvc-1", 2 * GIB, 0, ext4()), "capacity range"),
        (request("pvc-1", 0, 0, VolumeAccess::Block), "access type"),
        (request("pvc-1", 0, 0, xfs()), "access type"),
    ] {
        match pool.create_volume(&req) {
            Err(PoolError::AlreadyExists { what: w, .. }) => assert_eq!(w, what),
            other => panic!("expected AlreadyExists({what}), got {other:?}"),
        }
    }
    let mut with_params = request("pvc-1", 0, 0, ext4());
    with_params.parameters.insert("k".into(), "v".into());
    assert!(matches!(
        pool.create_volume(&with_params),
        Err(PoolError::AlreadyExists {
            what: "parameters",
            ..
        })
    ));
    assert_eq!(pool.list().len(), 1);
}

#[test]
fn sizes_round_up_never_past_the_limit_and_exact_ranges_are_exact() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let size = |name: &str, r, l, a| {
        pool.create_volume(&request(name, r, l, a))
            .map(|(v, _)| v.size_bytes)
    };
    assert_eq!(size("a", 1, 0, VolumeAccess::Block).unwrap(), MIB);
    assert_eq!(size("b", 5 * MIB + 1, 0, ext4()).unwrap(), 6 * MIB);
    assert_eq!(
        size("c", 1_000_000_000, 1_000_000_000, ext4()).unwrap(),
        1_000_000_000
    );
    assert_eq!(
        size("d", MIB + 1, MIB + 4096, VolumeAccess::Block).unwrap(),
        MIB + 4096
    );
    // XFS needs 300 MiB.
    assert_eq!(size("e", 10 * MIB, 0, xfs()).unwrap(), 300 * MIB);
    for (name, r, l, a) in [
        ("f", 10 * MIB, 5 * MIB, ext4()),
        ("g", MIB + 1, MIB + 100, ext4()),
        ("h", 0, 100 * MIB, xfs()),
    ] {
        assert!(
            matches!(size(name, r, l, a), Err(PoolError::OutOfRange(_))),
            "{name} not out of range"
        );
        assert!(pool.get_by_name(name).is_none());
    }
    // The image really has the recorded size.
    let c = pool.get_by_name("c").unwrap();
    assert_eq!(
        fs::metadata(pool.image_path(&c.id)).unwrap().len(),
        1_000_000_000
    );
}

#[test]
fn names_are_never_paths_and_bad_requests_change_nothing() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    for name in ["../../etc/passwd", "/abs", "a\u{0}b", "ünïcødé ✓"] {
        let (v, _) = pool
            .create_volume(&request(name, MIB, 0, VolumeAccess::Block))
            .unwrap();
        assert_eq!(pool.get_by_name(name).unwrap().id, v.id);
    }
    assert!(matches!(
        pool.create_volume(&request("", 0, 0, ext4())),
        Err(PoolError::InvalidName(_))
    ));
    assert!(matches!(
        pool.create_volume(&request(&"n".repeat(129), 0, 0, ext4())),
        Err(PoolError::InvalidName(_))
    ));
    let mut cloned = request("clone", 0, 0, ext4());
    cloned.content_source = Some(ContentSource::Volume {
        volume_id: "x".into(),
    });
    assert!(matches!(
        pool.create_volume(&cloned),
        Err(PoolError::ContentSourceUnsupported)
    ));
    // Only id-named files exist in the pool, nothing outside it was created.
    let mut names: Vec<String> = fs::read_dir(pool.dir().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 8);
    for n in &names {
        let (stem, _) = n.rsplit_once('.').unwrap();
        VolumeId::parse(stem).unwrap();
    }
    assert!(!sb.path().join("etc").exists());
    // IDs that could escape never become VolumeIds.
    for bad in ["..", "../x", "volumes/../../x", "", "ABC"] {
        assert!(VolumeId::parse(bad).is_err());
    }
}

#[test]
fn delete_is_idempotent_and_refused_while_attached() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let (v, _) = pool
        .create_volume(&request("d", MIB, 0, VolumeAccess::Block))
        .unwrap();
    let image = pool.image_path(&v.id);
    let dev = plinth_driver::mount::loopdev::attach(&image).unwrap();
    match pool.delete_volume(&v.id) {
        Err(PoolError::InUse { device, .. }) => assert_eq!(device, dev.path),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(image.exists());
    plinth_driver::mount::loopdev::detach(&dev).unwrap();
    pool.delete_volume(&v.id).unwrap();
    assert!(!image.exists());
    assert!(matches!(pool.get(&v.id), Err(PoolError::NotFound(_))));
    pool.delete_volume(&v.id).unwrap();
    // The name is free again.
    let (w, created) = pool
        .create_volume(&request("d", MIB, 0, VolumeAccess::Block))
        .unwrap();
    assert_eq!(created, Created::New);
    assert_ne!(w.id, v.id);
}

#[test]
fn capacity_counts_promises_not_just_allocated_blocks() {
    let sb = Sandbox::new();
    let fs_dir = private_fs(&sb, "poolfs", 256 * MIB);
    let pool = Pool::open(fs_dir.join("pool"), 16 * MIB).unwrap();
    let slack = 256 * 1024; // metadata files and directory blocks
    let a0 = pool.available().unwrap();
    assert!(a0 > 150 * MIB && a0 < 256 * MIB, "available {a0}");

    let (v, _) = pool
        .create_volume(&request("a", 64 * MIB, 0, VolumeAccess::Block))
        .unwrap();
    let a1 = pool.available().unwrap();
    assert!(
        a0 - a1 >= 64 * MIB && a0 - a1 <= 64 * MIB + slack,
        "{a0} -> {a1}"
    );

    // Writing into the sparse image moves bytes from "owed" to "allocated": no change.
    let data = vec![0xa5u8; 8 * MIB as usize];
    let image = pool.image_path(&v.id);
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).unwrap();
    f.sync_all().unwrap();
    let a2 = pool.available().unwrap();
    assert!(a1.abs_diff(a2) <= slack, "{a1} -> {a2} after writing 8 MiB");

    // What does not fit is refused, what fits is granted, and then nothing more fits.
    let too_big = a2 + MIB;
    assert!(matches!(
        pool.create_volume(&request("big", too_big, 0, VolumeAccess::Block)),
        Err(PoolError::ResourceExhausted { .. })
    ));
    let fits = (a2 - slack) / MIB * MIB;
    pool.create_volume(&request("fits", fits, fits, VolumeAccess::Block))
        .unwrap();
    assert!(matches!(
        pool.create_volume(&request("more", 2 * MIB, 0, VolumeAccess::Block)),
        Err(PoolError::ResourceExhausted { .. })
    ));
    // Deleting gives the promise back at once (56 MiB still owed); the 8 MiB written
    // return when ext4 commits the freed blocks, so they are not asserted.
    pool.delete_volume(&v.id).unwrap();
    let a3 = pool.available().unwrap();
    assert!(a3 + slack >= 56 * MIB, "available after delete {a3}");
    assert!(pool.total_bytes().unwrap() > 200 * MIB);
}

#[test]
fn metadata_is_versioned_and_written_atomically() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let (v, _) = pool.create_volume(&request("m", 0, 0, xfs())).unwrap();
    let path = pool.dir().join(format!("volumes/{}.json", v.id));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["formatVersion"], 1);
    assert_eq!(json["name"], "m");
    assert_eq!(json["access"]["kind"], "mount");
    assert_eq!(json["access"]["fsType"], "xfs");
    assert!(json.get("contentSource").is_some());
    assert!(pool.dir().join("snapshots").is_dir());

    // Atomic means replaced, never rewritten in place. A handle on the old record
    // still reads it whole after an update, and it is no longer linked: an in-place
    // write (truncate + write) would show the new or a partial record through it and
    // keep the same inode.
    let before = fs::read(&path).unwrap();
    let old = fs::File::open(&path).unwrap();
    let old_inode = old.metadata().unwrap().ino();
    let mut size = pool.expand_volume(&v.id, v.size_bytes + MIB).unwrap();
    let mut seen_through_old = Vec::new();
    std::io::Read::read_to_end(&mut &old, &mut seen_through_old).unwrap();
    assert!(
        seen_through_old == before,
        "the record was rewritten in place: {}",
        String::from_utf8_lossy(&seen_through_old)
    );
    assert_eq!(
        old.metadata().unwrap().nlink(),
        0,
        "the old record is still linked"
    );
    let mut inode = fs::metadata(&path).unwrap().ino();
    assert_ne!(inode, old_inode);

    // Readers racing a stream of updates only ever see complete records.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = fs::read(&path).expect("the record is always there");
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    panic!("a reader saw a partial record ({e}): {bytes:?}");
                }
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..40 {
        size = pool.expand_volume(&v.id, size + MIB).unwrap();
        let now = fs::metadata(&path).unwrap().ino();
        assert_ne!(now, inode, "an update kept the record's inode");
        inode = now;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("reader") > 0);
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["sizeBytes"], size);

    // Nothing but the record and the image is left behind (no temp file).
    let mut names: Vec<String> = fs::read_dir(pool.dir().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![format!("{}.img", v.id), format!("{}.json", v.id)]
    );

    // A pool written by a newer driver is not misread.
    drop(pool);
    fs::write(sb.pool_dir().join("pool.json"), br#"{"formatVersion": 99}"#).unwrap();
    assert!(matches!(
        Pool::open(sb.pool_dir(), 0),
        Err(PoolError::UnsupportedFormat { found: 99 })
    ));
}

#[test]
fn open_recovers_from_a_crash_at_any_point() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let (kept, _) = pool.create_volume(&request("kept", 0, 0, ext4())).unwrap();
    let (attached, _) = pool
        .create_volume(&request("attached", MIB, 0, VolumeAccess::Block))
        .unwrap();
    drop(pool);
    let volumes = sb.pool_dir().join("volumes");
    // Crash during a metadata write: temp file left.
    let temp = volumes.join(format!(".{}.json.tmp", "0".repeat(32)));
    fs::write(&temp, b"{\"partial").unwrap();
    // Crash between image and metadata of a create (or during a delete): orphan image.
    let orphan = volumes.join(format!("{}.img", "f".repeat(32)));
    fs::File::create(&orphan).unwrap().set_len(GIB).unwrap();
    // Crash between attach and mount during a stage: loop attached, nothing mounted.
    let dev = plinth_driver::mount::loopdev::attach(&volumes.join(format!("{}.img", attached.id)))
        .unwrap();
    // An unknown file is none of our business.
    fs::write(volumes.join("README"), b"hands off").unwrap();

    let pool = sb.open_pool();
    let r = pool.recovery();
    assert_eq!(r.removed_temp_files, vec![temp.clone()]);
    assert_eq!(r.removed_orphan_images, vec![orphan.clone()]);
    assert_eq!(r.detached, vec![dev.clone()]);
    assert!(r.in_use.is_empty());
    assert!(!temp.exists() && !orphan.exists());
    assert!(volumes.join("README").exists());
    assert!(pool.attachment(&attached.id).unwrap().is_none());
    // Index rebuilt from metadata: same name -> same volume.
    let (again, created) = pool.create_volume(&request("kept", 0, 0, ext4())).unwrap();
    assert_eq!((again.id, created), (kept.id.clone(), Created::Existing));
    assert_eq!(pool.list().len(), 2);
    let ids: Vec<_> = pool.list().into_iter().map(|v| v.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "list is sorted by id");

    // An image whose size was lost (created, not yet fsynced, then a crash) is grown
    // back to the recorded size.
    let (short, _) = pool
        .create_volume(&request("short", 8 * MIB, 0, VolumeAccess::Block))
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(pool.image_path(&short.id))
        .unwrap()
        .set_len(0)
        .unwrap();
    drop(pool);
    let pool = sb.open_pool();
    assert_eq!(pool.recovery().resized_images, vec![short.id.clone()]);
    assert_eq!(
        fs::metadata(pool.image_path(&short.id)).unwrap().len(),
        8 * MIB
    );
    pool.delete_volume(&short.id).unwrap();

    // Metadata whose image vanished is kept so that delete can finish the job.
    fs::remove_file(pool.image_path(&kept.id)).unwrap();
    drop(pool);
    let pool = sb.open_pool();
    assert_eq!(pool.recovery().missing_images, vec![kept.id.clone()]);
    pool.delete_volume(&kept.id).unwrap();
    assert!(pool.get_by_name("kept").is_none());
}

#[test]
fn expand_grows_the_sparse_image_and_refuses_shrink() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let (v, _) = pool
        .create_volume(&request("x", 10 * MIB, 0, VolumeAccess::Block))
        .unwrap();
    assert_eq!(pool.expand_volume(&v.id, 20 * MIB + 1).unwrap(), 21 * MIB);
    assert_eq!(
        fs::metadata(pool.image_path(&v.id)).unwrap().len(),
        21 * MIB
    );
    assert_eq!(pool.get(&v.id).unwrap().size_bytes, 21 * MIB);
    // Same size again: no-op; smaller: refused.
    assert_eq!(pool.expand_volume(&v.id, 21 * MIB).unwrap(), 21 * MIB);
    assert!(matches!(
        pool.expand_volume(&v.id, 5 * MIB),
        Err(PoolError::ShrinkRefused { .. })
    ));
    // The new size survives a restart.
    drop(pool);
    assert_eq!(sb.open_pool().get(&v.id).unwrap().size_bytes, 21 * MIB);
}
