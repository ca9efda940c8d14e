//! Shared fixtures of the storage tests: a sandbox directory that unmounts and detaches,
//! on drop, exactly what was mounted or attached under it — nothing else on the host.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_driver::mount::{loopdev, mountinfo};
use plinth_driver::storage::pool::{CapacityRange, CreateVolumeRequest, Pool, VolumeAccess};

/// Fail loudly (never skip) when the host cannot run real storage tests.
pub fn require_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "storage tests need root (loop devices, mount(2)); run them as root"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "storage tests need /dev/loop-control (loop module)"
    );
}

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

pub struct Sandbox {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        require_host();
        let dir = tempfile::Builder::new()
            .prefix("plinth-storage-")
            .tempdir()
            .expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        Self { dir, root }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.root.join("pool")
    }

    pub fn open_pool(&self) -> Arc<Pool> {
        Arc::new(Pool::open(self.pool_dir(), 0).expect("open pool"))
    }

    /// Mount points under the sandbox, newest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let mut entries: Vec<_> = mountinfo::read_self()
            .expect("mountinfo")
            .into_iter()
            .filter(|e| e.mount_point.starts_with(&self.root))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.mount_id));
        entries.into_iter().map(|e| e.mount_point).collect()
    }

    /// Loop devices backed by files under the sandbox (matched by device and inode).
    pub fn loops(&self) -> Vec<loopdev::LoopDevice> {
        let mut files = Vec::new();
        file_ids(&self.root, &mut files);
        loopdev::list_attached()
            .expect("list loops")
            .into_iter()
            .filter(|(_, backing)| files.contains(backing))
            .map(|(dev, _)| dev)
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Record loops first: once their filesystems are lazily unmounted, sysfs can no
        // longer show their backing paths under the sandbox.
        let loops = self.loops();
        // Newest mounts first: a bind over a mount must go before it.
        for m in self.mounts() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // A device still in use is detached by the kernel when its last user goes.
        for dev in loops {
            let _ = loopdev::detach(&dev);
        }
        let _ = &self.dir;
    }
}

fn file_ids(dir: &Path, out: &mut Vec<loopdev::FileId>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => file_ids(&path, out),
            Ok(t) if t.is_file() => out.extend(loopdev::FileId::of(&path).ok().flatten()),
            _ => {}
        }
    }
}

pub fn request(name: &str, required: u64, limit: u64, access: VolumeAccess) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        id: None,
        capacity: CapacityRange::new(required, limit),
        access,
        parameters: Default::default(),
        content_source: None,
    }
}

pub fn ext4() -> VolumeAccess {
    VolumeAccess::Mount {
        fs_type: plinth_driver::mount::FsType::Ext4,
    }
}

pub fn xfs() -> VolumeAccess {
    VolumeAccess::Mount {
        fs_type: plinth_driver::mount::FsType::Xfs,
    }
}

/// A small ext4 filesystem of `size` bytes mounted at `<sandbox>/<name>`, so capacity
/// accounting is measured on a filesystem nobody else writes to.
pub fn private_fs(sandbox: &Sandbox, name: &str, size: u64) -> PathBuf {
    private_fs_of(sandbox, name, size, plinth_driver::mount::FsType::Ext4)
}

/// [`private_fs`] with a chosen filesystem (xfs reflinks, ext4 does not).
pub fn private_fs_of(
    sandbox: &Sandbox,
    name: &str,
    size: u64,
    fs: plinth_driver::mount::FsType,
) -> PathBuf {
    let image = sandbox.join(&format!("{name}.img"));
    let file = std::fs::File::create(&image).expect("create backing image");
    file.set_len(size).expect("size backing image");
    let dev = loopdev::attach(&image).expect("attach backing image");
    plinth_driver::mount::fs::mkfs(fs, &dev.path).expect("mkfs");
    let mnt = sandbox.join(name);
    std::fs::create_dir_all(&mnt).expect("mount point");
    plinth_driver::mount::sys::mount(
        &dev.path,
        &mnt,
        Some(fs.as_str()),
        nix::mount::MsFlags::empty(),
        None,
    )
    .expect("mount backing fs");
    mnt
}
