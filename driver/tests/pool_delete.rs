//! DeleteVolume commits by removing the metadata, renames the image away and leaves
//! the unlink (which frees the image's blocks) to a background thread; an image caught
//! between rename and unlink by a crash is removed by the next open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod storage_support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use plinth_driver::storage::pool::{Pool, PoolError, VolumeAccess};
use storage_support::*;

fn volume_files(pool: &Pool) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pool.dir().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn delete_is_immediate_for_callers_and_the_image_is_unlinked_soon_after() {
    let sb = Sandbox::new();
    let pool = sb.open_pool();
    let (v, _) = pool
        .create_volume(&request("d", 16 * MIB, 0, VolumeAccess::Block))
        .unwrap();
    let image = pool.image_path(&v.id);
    // Data in the image, as a used volume has.
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.write_all_at(&vec![0x5au8; 4 * MIB as usize], 0).unwrap();
    drop(f);

    pool.delete_volume(&v.id).unwrap();
    assert!(!image.exists(), "image path must be free at once");
    assert!(matches!(pool.get(&v.id), Err(PoolError::NotFound(_))));
    // Idempotent while the unlink may still be pending.
    pool.delete_volume(&v.id).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while !volume_files(&pool).is_empty() {
        assert!(
            Instant::now() < deadline,
            "deleted image never unlinked: {:?}",
            volume_files(&pool)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_image_left_renamed_by_a_crash_is_removed_on_open() {
    let sb = Sandbox::new();
    let id = {
        let pool = sb.open_pool();
        let (v, _) = pool
            .create_volume(&request("c", 16 * MIB, 0, VolumeAccess::Block))
            .unwrap();
        v.id
    };
    // The state a crash between DeleteVolume's rename and the reaper's unlink leaves.
    let volumes = sb.pool_dir().join("volumes");
    fs::remove_file(volumes.join(format!("{id}.json"))).unwrap();
    let trash = volumes.join(format!(".{id}.deleted"));
    fs::rename(volumes.join(format!("{id}.img")), &trash).unwrap();

    let pool = Pool::open(sb.pool_dir(), 0).unwrap();
    assert_eq!(pool.recovery().removed_orphan_images, vec![trash.clone()]);
    assert!(!trash.exists());
    assert!(volume_files(&pool).is_empty());
    assert!(pool.list().is_empty());
}
