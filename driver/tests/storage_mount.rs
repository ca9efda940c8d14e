//! Host plumbing on the real kernel: loop devices, blank detection, mkfs, mount, binds,
//! mountinfo, image copies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod storage_support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::mount::MsFlags;
use plinth_driver::mount::{Detected, FsType, fs as mfs, loopdev, mountinfo, sys};
use plinth_driver::storage::pool::{CopyMethod, copy_image};
use storage_support::*;

fn sparse_image(sb: &Sandbox, name: &str, size: u64) -> std::path::PathBuf {
    let p = sb.join(name);
    fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

#[test]
fn attach_find_refresh_detach() {
    let sb = Sandbox::new();
    let image = sparse_image(&sb, "a.img", 8 * MIB);
    assert_eq!(loopdev::find_loop_for(&image).unwrap(), None);
    let dev = loopdev::attach(&image).unwrap();
    assert_eq!(dev.dev.0, 7, "loop major");
    assert_eq!(loopdev::find_loop_for(&image).unwrap(), Some(dev.clone()));
    assert_eq!(dev.size_bytes().unwrap(), 8 * MIB);
    // The backing file name is recorded, so sysfs shows the mapping.
    let backing =
        fs::read_to_string(format!("/sys/block/loop{}/loop/backing_file", dev.number)).unwrap();
    assert_eq!(backing.trim(), image.to_str().unwrap());
    // Growth becomes visible after LOOP_SET_CAPACITY.
    fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    loopdev::refresh_capacity(&dev).unwrap();
    assert_eq!(dev.size_bytes().unwrap(), 16 * MIB);
    // Two images attach to two devices concurrently.
    let other = sparse_image(&sb, "b.img", MIB);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let p = sb.join(&format!("c{i}.img"));
            fs::File::create(&p).unwrap().set_len(MIB).unwrap();
            std::thread::spawn(move || loopdev::attach(&p).unwrap())
        })
        .collect();
    let mut numbers: Vec<u32> = handles
        .into_iter()
        .map(|h| h.join().unwrap().number)
        .collect();
    numbers.push(loopdev::attach(&other).unwrap().number);
    numbers.push(dev.number);
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 6, "every attach got its own device");
    loopdev::detach(&dev).unwrap();
    assert_eq!(loopdev::find_loop_for(&image).unwrap(), None);
    // Detaching twice is fine.
    loopdev::detach(&dev).unwrap();
}

#[test]
fn blank_detection_and_mkfs_never_touch_data() {
    let sb = Sandbox::new();
    let ext = sparse_image(&sb, "ext.img", 64 * MIB);
    let xfs = sparse_image(&sb, "xfs.img", 300 * MIB);
    let data = sparse_image(&sb, "data.img", 64 * MIB);
    assert_eq!(mfs::detect(&ext).unwrap(), Detected::Blank);
    // A single byte deep in the first 64 KiB makes it "not blank".
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .write_all_at(&[1], 60 * 1024)
        .unwrap();
    assert_eq!(mfs::detect(&data).unwrap(), Detected::Unknown);

    let dev = loopdev::attach(&ext).unwrap();
    assert_eq!(mfs::detect(&dev.path).unwrap(), Detected::Blank);
    mfs::mkfs(FsType::Ext4, &dev.path).unwrap();
    assert_eq!(mfs::detect(&dev.path).unwrap(), Detected::Fs(FsType::Ext4));
    let xdev = loopdev::attach(&xfs).unwrap();
    mfs::mkfs(FsType::Xfs, &xdev.path).unwrap();
    assert_eq!(mfs::detect(&xdev.path).unwrap(), Detected::Fs(FsType::Xfs));
    // mkfs.xfs without -f refuses to overwrite a filesystem: a second safety net.
    assert!(matches!(
        mfs::mkfs(FsType::Xfs, &xdev.path),
        Err(plinth_driver::mount::MountError::Mkfs { .. })
    ));
    // Too small for XFS: the tool's message comes back.
    let small = sparse_image(&sb, "small.img", 16 * MIB);
    match mfs::mkfs(FsType::Xfs, &small) {
        Err(plinth_driver::mount::MountError::Mkfs { stderr, .. }) => assert!(!stderr.is_empty()),
        other => panic!("expected mkfs failure, got {other:?}"),
    }
}

#[test]
fn mount_bind_readonly_and_mountinfo() {
    let sb = Sandbox::new();
    let image = sparse_image(&sb, "m.img", 64 * MIB);
    let dev = loopdev::attach(&image).unwrap();
    mfs::mkfs(FsType::Ext4, &dev.path).unwrap();
    // A mount point whose name needs mountinfo escaping.
    let stage = sb.join("stage dir\twith\\odd");
    let rw = sb.join("rw");
    let ro = sb.join("ro");
    for d in [&stage, &rw, &ro] {
        fs::create_dir_all(d).unwrap();
    }
    sys::mount(&dev.path, &stage, Some("ext4"), MsFlags::MS_NOATIME, None).unwrap();
    let entries = mountinfo::read_self().unwrap();
    let e = mountinfo::find_mount_point(&entries, &stage).expect("escaped mount point found");
    assert_eq!(e.dev, dev.dev);
    assert_eq!(e.fs_type, "ext4");
    assert!(e.has_option("noatime"));

    sys::bind(&stage, &rw, MsFlags::empty()).unwrap();
    sys::bind(&stage, &ro, MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC).unwrap();
    fs::File::create(rw.join("file"))
        .unwrap()
        .write_all(b"hello")
        .unwrap();
    assert_eq!(fs::read(stage.join("file")).unwrap(), b"hello");
    assert_eq!(fs::read(ro.join("file")).unwrap(), b"hello");
    let err = fs::File::create(ro.join("nope")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let entries = mountinfo::read_self().unwrap();
    let ro_entry = mountinfo::find_mount_point(&entries, &ro).unwrap();
    assert!(ro_entry.is_read_only() && ro_entry.has_option("noexec"));
    assert_eq!(ro_entry.dev, dev.dev);

    // A busy mount is not lazily detached: the error is real and the mount stays.
    let open = fs::File::open(rw.join("file")).unwrap();
    let err = sys::unmount(&rw).unwrap_err();
    assert!(err.to_string().contains("EBUSY"), "{err}");
    drop(open);
    sys::unmount(&ro).unwrap();
    sys::unmount(&rw).unwrap();
    sys::unmount(&stage).unwrap();
    loopdev::detach(&dev).unwrap();
    assert!(mountinfo::find_mount_point(&mountinfo::read_self().unwrap(), &stage).is_none());
}

#[test]
fn copy_image_preserves_holes_and_content() {
    let sb = Sandbox::new();
    let src = sparse_image(&sb, "src.img", 64 * MIB);
    let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&vec![7u8; MIB as usize], 32 * MIB).unwrap();
    f.write_all_at(b"tail", 64 * MIB - 4).unwrap();
    f.sync_all().unwrap();
    let dest = sb.join("dest.img");
    let method = copy_image(&src, &dest).unwrap();
    // /tmp here is ext4: no reflink, so the sparse path is what ran.
    assert!(matches!(method, CopyMethod::Sparse | CopyMethod::Reflink));
    let d = fs::metadata(&dest).unwrap();
    assert_eq!(d.len(), 64 * MIB);
    assert!(
        d.blocks() * 512 < 4 * MIB,
        "holes kept: {} bytes allocated",
        d.blocks() * 512
    );
    assert_eq!(fs::read(&src).unwrap(), fs::read(&dest).unwrap());
    // Copying a formatted image gives a mountable filesystem.
    let fsimg = sparse_image(&sb, "fs.img", 64 * MIB);
    mfs::mkfs(FsType::Ext4, &fsimg).unwrap();
    let copy = sb.join("fs-copy.img");
    copy_image(&fsimg, &copy).unwrap();
    assert_eq!(mfs::detect(&copy).unwrap(), Detected::Fs(FsType::Ext4));
}
