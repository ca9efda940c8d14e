//! Fixtures of the snapshot and growth library tests, on top of the storage sandbox.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use plinth_driver::mount::{FsType, loopdev, sys};
use plinth_driver::storage::pool::{Pool, VolumeAccess, VolumeId};
use plinth_driver::storage::volume::{NodeAccess, NodeVolumes};

use crate::storage_support::{Sandbox, request};

pub const MIB: u64 = 1 << 20;

pub fn block() -> VolumeAccess {
    VolumeAccess::Block
}

/// An xfs filesystem with reflink, on a sparse image in the sandbox, mounted at
/// `<sandbox>/<name>`: the pool filesystem snapshots are cheap on. The sandbox unmounts
/// and detaches it on drop.
pub fn xfs_reflink_fs(sandbox: &Sandbox, name: &str, size: u64) -> PathBuf {
    let image = sandbox.join(&format!("{name}.img"));
    fs::File::create(&image)
        .and_then(|f| f.set_len(size))
        .expect("create the pool image");
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&image)
        .output()
        .expect("mkfs.xfs must be installed (xfsprogs)");
    assert!(
        out.status.success(),
        "mkfs.xfs -m reflink=1 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = loopdev::attach(&image).expect("attach the pool image");
    let mnt = sandbox.join(name);
    fs::create_dir_all(&mnt).unwrap();
    sys::mount(
        &dev.path,
        &mnt,
        Some("xfs"),
        nix::mount::MsFlags::empty(),
        None,
    )
    .expect("mount the xfs pool");
    mnt
}

/// A pool on a fresh xfs (reflink) filesystem.
pub fn xfs_pool(sandbox: &Sandbox) -> Arc<Pool> {
    let fs = xfs_reflink_fs(sandbox, "xfspool", 4 << 30);
    Arc::new(Pool::open(fs.join("pool"), 0).expect("open pool on xfs"))
}

/// A pool on the sandbox's own filesystem (ext4 on these machines: sparse copies).
pub fn host_pool(sandbox: &Sandbox) -> Arc<Pool> {
    sandbox.open_pool()
}

/// Create a volume and stage it at `<sandbox>/staging-<name>`; returns its ID and the
/// mount point (or, for block, the device file).
pub fn staged(
    sandbox: &Sandbox,
    pool: &Arc<Pool>,
    name: &str,
    size: u64,
    access: VolumeAccess,
) -> (VolumeId, PathBuf) {
    let (volume, _) = pool
        .create_volume(&request(name, size, 0, access))
        .expect("create volume");
    let staging = sandbox.join(&format!("staging-{name}"));
    fs::create_dir_all(&staging).unwrap();
    let node_access = match access {
        VolumeAccess::Mount { fs_type } => NodeAccess::Mount {
            fs_type: Some(fs_type),
            mount_flags: Vec::new(),
        },
        VolumeAccess::Block => NodeAccess::Block,
    };
    NodeVolumes::new(pool.clone())
        .stage(&volume.id, &staging, &node_access, false)
        .expect("stage volume");
    let path = match access {
        VolumeAccess::Mount { .. } => staging,
        VolumeAccess::Block => staging.join(volume.id.as_str()),
    };
    (volume.id, path)
}

pub fn unstage(sandbox: &Sandbox, pool: &Arc<Pool>, id: &VolumeId, name: &str) {
    NodeVolumes::new(pool.clone())
        .unstage(id, &sandbox.join(&format!("staging-{name}")))
        .expect("unstage volume");
}

/// Mount a (snapshot or volume) image read-only at `<sandbox>/<name>` and return the
/// mount point; the sandbox cleans up.
pub fn mount_image_ro(sandbox: &Sandbox, image: &Path, fs: FsType, name: &str) -> PathBuf {
    let dev = loopdev::attach(image).expect("attach image");
    let mnt = sandbox.join(name);
    fs::create_dir_all(&mnt).unwrap();
    // ext4: `noload` would hide an unclean journal; a frozen copy must not need one.
    sys::mount(
        &dev.path,
        &mnt,
        Some(fs.as_str()),
        nix::mount::MsFlags::MS_RDONLY,
        fs.implied_mount_data(),
    )
    .expect("mount the image read-only");
    mnt
}

pub fn unmount(path: &Path) {
    nix::mount::umount2(path, nix::mount::MntFlags::empty()).expect("unmount");
}

/// Bytes allocated to a file on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}
