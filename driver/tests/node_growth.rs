//! Node-side expansion at library level on real loop devices: xfs grows online under an
//! open file, raw block devices follow their image, and ext4 either grows (with
//! CAP_SYS_RESOURCE) or is refused with the clear error, never a silent old size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod snapshot_support;
mod storage_support;

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use plinth_driver::mount::FsType;
use plinth_driver::storage::grow::{self, GrowError, Grown};
use snapshot_support::*;
use storage_support::{Sandbox, ext4, xfs};

fn fs_size(path: &std::path::Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks() * st.fragment_size()
}

#[test]
fn xfs_grows_online_while_a_file_is_open_on_it() {
    let sandbox = Sandbox::new();
    let pool = host_pool(&sandbox);
    let (id, mnt) = staged(&sandbox, &pool, "x", 320 * MIB, xfs());
    let mut open = fs::File::create(mnt.join("log")).unwrap();
    open.write_all(b"before").unwrap();
    let before = fs_size(&mnt);

    assert_eq!(pool.expand_volume(&id, 640 * MIB).unwrap(), 640 * MIB);
    let grown = grow::grow(&pool, &id, &mnt).unwrap();
    assert_eq!(
        grown,
        Grown {
            capacity_bytes: 640 * MIB,
            fs: Some(FsType::Xfs)
        }
    );
    let after = fs_size(&mnt);
    assert!(
        after > before + 250 * MIB,
        "filesystem did not grow: {before} -> {after}"
    );
    open.write_all(b" and after").unwrap();
    open.sync_all().unwrap();
    assert_eq!(
        fs::read_to_string(mnt.join("log")).unwrap(),
        "before and after"
    );
    // Retried by the CO: nothing left to do, same answer.
    assert_eq!(grow::grow(&pool, &id, &mnt).unwrap(), grown);
    drop(open);
    unstage(&sandbox, &pool, &id, "x");
    assert!(matches!(
        grow::grow(&pool, &id, &mnt),
        Err(GrowError::NotAttached(_))
    ));
}

#[test]
fn ext4_grows_online_or_says_clearly_why_not() {
    let sandbox = Sandbox::new();
    let pool = host_pool(&sandbox);
    let (id, mnt) = staged(&sandbox, &pool, "e", 64 * MIB, ext4());
    let before = fs_size(&mnt);
    pool.expand_volume(&id, 128 * MIB).unwrap();
    match grow::grow(&pool, &id, &mnt) {
        Ok(grown) => {
            assert!(
                grow::can_grow_ext4_online(),
                "grew without CAP_SYS_RESOURCE?"
            );
            assert_eq!(grown.capacity_bytes, 128 * MIB);
            assert!(fs_size(&mnt) > before + 32 * MIB);
        }
        Err(e @ GrowError::NotPermitted { .. }) => {
            assert!(
                !grow::can_grow_ext4_online(),
                "refused although CAP_SYS_RESOURCE is effective: {e}"
            );
            assert!(e.to_string().contains("CAP_SYS_RESOURCE"), "{e}");
            // The device did follow the image; only the filesystem kept its size.
            let dev = pool.attachment(&id).unwrap().unwrap();
            assert_eq!(dev.size_bytes().unwrap(), 128 * MIB);
            assert_eq!(fs_size(&mnt), before);
        }
        Err(other) => panic!("unexpected error growing ext4: {other}"),
    }
}

#[test]
fn block_volumes_follow_their_image_and_paths_are_checked() {
    let sandbox = Sandbox::new();
    let pool = host_pool(&sandbox);
    let (id, device_file) = staged(&sandbox, &pool, "b", 16 * MIB, block());
    pool.expand_volume(&id, 48 * MIB).unwrap();
    let grown = grow::grow(&pool, &id, &device_file).unwrap();
    assert_eq!(
        grown,
        Grown {
            capacity_bytes: 48 * MIB,
            fs: None
        }
    );
    let mut dev = fs::File::open(&device_file).unwrap();
    assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), 48 * MIB);

    let elsewhere = sandbox.join("not-a-mount");
    fs::create_dir_all(&elsewhere).unwrap();
    assert!(matches!(
        grow::grow(&pool, &id, &elsewhere),
        Err(GrowError::NotAtPath { .. })
    ));
}
