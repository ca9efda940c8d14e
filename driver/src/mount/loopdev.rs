//! Loop devices through `/dev/loop-control` and the loop ioctls (no losetup).
//!
//! Which device backs which image is asked of the devices themselves
//! (`LOOP_GET_STATUS64`: the backing file's device and inode, see [`FileId`]), never
//! matched by path, so a driver restarted in a new mount namespace finds the devices its
//! predecessor attached.
//!
//! Finding the device of an image means scanning every bound loop device. The
//! read-write device of each image this process attached or found is remembered (see
//! [`RwCache`]) so that the calls that need it (publish, unpublish, stats, attachment)
//! confirm it with one ioctl instead of a scan. Only positive answers come from the
//! cache: "nothing attached" always comes from a scan.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;

use super::ioctl::{self, LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY, LoopConfig, LoopInfo64};
use super::{MountEntry, MountError};

const LOOP_CONTROL: &str = "/dev/loop-control";
const SYS_BLOCK: &str = "/sys/block";
/// Another process may take the free device between GET_FREE and CONFIGURE.
const ATTACH_ATTEMPTS: u32 = 16;

/// An attached loop device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDevice {
    /// `N` of `/dev/loopN`.
    pub number: u32,
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// Device number (`major`, `minor`) as mountinfo shows it.
    pub dev: (u32, u32),
}

impl LoopDevice {
    fn from_number(number: u32) -> Result<Self, MountError> {
        let sys = Path::new(SYS_BLOCK)
            .join(format!("loop{number}"))
            .join("dev");
        let text = fs::read_to_string(&sys).map_err(MountError::io("read", &sys))?;
        let dev = parse_dev(text.trim()).ok_or_else(|| MountError::Io {
            op: "parse",
            path: sys.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad major:minor"),
        })?;
        Ok(Self {
            number,
            path: PathBuf::from(format!("/dev/loop{number}")),
            dev,
        })
    }

    /// Current size in bytes, from sysfs (512-byte sectors).
    pub fn size_bytes(&self) -> Result<u64, MountError> {
        let sys = Path::new(SYS_BLOCK)
            .join(format!("loop{}", self.number))
            .join("size");
        let text = fs::read_to_string(&sys).map_err(MountError::io("read", &sys))?;
        text.trim()
            .parse::<u64>()
            .map(|sectors| sectors * 512)
            .map_err(|_| MountError::Io {
                op: "parse",
                path: sys,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad size"),
            })
    }

    /// Whether the device was attached read-only (`/sys/block/loopN/ro`).
    pub fn is_read_only(&self) -> bool {
        let sys = Path::new(SYS_BLOCK)
            .join(format!("loop{}", self.number))
            .join("ro");
        fs::read_to_string(sys).is_ok_and(|s| s.trim() == "1")
    }

    /// What tells the mounts that use this device from the others.
    pub fn users(&self) -> DeviceUsers {
        DeviceUsers {
            dev: self.dev,
            node_root: PathBuf::from(format!("/loop{}", self.number)),
            node_fs: fs::metadata(&self.path)
                .ok()
                .map(|meta| split_dev(meta.dev())),
        }
    }
}

/// The mounts that use a loop device: its filesystem (mounted from the device), or a bind
/// of its device node — a mount whose root is `/loopN` *on the filesystem that holds
/// `/dev/loopN`* (devtmpfs).
///
/// The root alone would not do: any filesystem can hold a `loopN` entry, and a pod
/// mounting its emptyDir with `subPath: loop0` would pass for a user of `/dev/loop0` and
/// block other tenants' unstage.
#[derive(Clone, Debug)]
pub struct DeviceUsers {
    dev: (u32, u32),
    node_root: PathBuf,
    /// Device of the filesystem holding the device node; `None` if it is gone.
    node_fs: Option<(u32, u32)>,
}

impl DeviceUsers {
    pub fn contains(&self, m: &MountEntry) -> bool {
        m.dev == self.dev || (m.root == self.node_root && Some(m.dev) == self.node_fs)
    }
}

/// `"7:3"` -> `(7, 3)`.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Attach `image` (read-write) to a free loop device and return it.
///
/// Uses `LOOP_CONFIGURE` with direct I/O (no double page cache of image and device);
/// if the pool filesystem refuses direct I/O, configures without it; on kernels before
/// 5.8 falls back to `LOOP_SET_FD` + `LOOP_SET_STATUS64`.
pub fn attach(image: &Path) -> Result<LoopDevice, MountError> {
    attach_with(image, false)
}

/// Attach `image` to a free loop device that refuses writes (`LO_FLAGS_READ_ONLY`):
/// what a read-only raw block publish hands out, since a read-only bind mount does not
/// stop writes to a device node.
pub fn attach_read_only(image: &Path) -> Result<LoopDevice, MountError> {
    attach_with(image, true)
}

#[tracing::instrument(level = "debug", fields(image = %image.display()))]
fn attach_with(image: &Path, read_only: bool) -> Result<LoopDevice, MountError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(MountError::io("open", Path::new(LOOP_CONTROL)))?;
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .map_err(MountError::io("open", image))?;
    let name = image.as_os_str().as_bytes();

    for _ in 0..ATTACH_ATTEMPTS {
        let number = ioctl::loop_ctl_get_free(control.as_fd()).map_err(MountError::sys(
            "LOOP_CTL_GET_FREE",
            Path::new(LOOP_CONTROL),
        ))?;
        let dev_path = PathBuf::from(format!("/dev/loop{number}"));
        let dev = match open_device(&dev_path) {
            Ok(f) => f,
            // devtmpfs creates the node asynchronously right after GET_FREE added it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(MountError::io("open", &dev_path)(e)),
        };
        match configure(&dev, &backing, name, read_only) {
            Ok(()) => {
                let device = LoopDevice::from_number(number)?;
                if !read_only && let Ok(meta) = backing.metadata() {
                    RW_CACHE.remember(FileId::of_metadata(&meta), &device);
                }
                return Ok(device);
            }
            // Someone else bound this device between GET_FREE and now: take another.
            Err(Errno::EBUSY) => continue,
            Err(e) => return Err(MountError::sys("LOOP_CONFIGURE", &dev_path)(e)),
        }
    }
    Err(MountError::NoFreeLoop {
        attempts: ATTACH_ATTEMPTS,
    })
}

fn open_device(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn configure(dev: &File, backing: &File, name: &[u8], read_only: bool) -> Result<(), Errno> {
    let ro = if read_only { LO_FLAGS_READ_ONLY } else { 0 };
    let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(backing)).map_err(|_| Errno::EBADF)?;
    let mut config = LoopConfig {
        fd,
        block_size: 0,
        info: LoopInfo64::new(LO_FLAGS_DIRECT_IO | ro, name),
        reserved: [0; 8],
    };
    match ioctl::loop_configure(dev.as_fd(), &config) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Either direct I/O is unsupported by the pool filesystem or the kernel is
            // older than 5.8 (no LOOP_CONFIGURE). Retry without direct I/O first.
            config.info.lo_flags = ro;
            match ioctl::loop_configure(dev.as_fd(), &config) {
                Err(Errno::EINVAL | Errno::ENOTTY) => legacy_configure(dev, backing, name),
                other => other,
            }
        }
        Err(Errno::ENOTTY) => legacy_configure(dev, backing, name),
        Err(e) => Err(e),
    }
}

fn legacy_configure(dev: &File, backing: &File, name: &[u8]) -> Result<(), Errno> {
    ioctl::loop_set_fd(dev.as_fd(), backing.as_fd())?;
    let info = LoopInfo64::new(0, name);
    if let Err(e) = ioctl::loop_set_status64(dev.as_fd(), &info) {
        // Do not leave a half-configured device bound.
        let _ = ioctl::loop_clr_fd(dev.as_fd());
        return Err(e);
    }
    Ok(())
}

/// Detach `dev` from its backing file. Detaching an already free device is success.
#[tracing::instrument(level = "debug", fields(dev = %dev.path.display()))]
pub fn detach(dev: &LoopDevice) -> Result<(), MountError> {
    // Forget first: whatever happens below, the number may now be reused for another file.
    RW_CACHE.forget_device(dev.number);
    let file = match open_device(&dev.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MountError::io("open", &dev.path)(e)),
    };
    match ioctl::loop_clr_fd(file.as_fd()) {
        Ok(()) => {}
        // ENXIO: not bound (someone detached it already) — the goal state.
        Err(Errno::ENXIO) => return Ok(()),
        Err(e) => return Err(MountError::sys("LOOP_CLR_FD", &dev.path)(e)),
    }
    drop(file);
    // While anything else holds the device open (udev probing after a change event,
    // typically) the kernel only marks it for auto-clear. Wait a moment for that to
    // happen, so a following delete does not see the image as still attached.
    let backing = Path::new(SYS_BLOCK)
        .join(format!("loop{}", dev.number))
        .join("loop/backing_file");
    for _ in 0..DETACH_WAIT_MS {
        if !backing.exists() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(1));
    }
    tracing::debug!(dev = %dev.path.display(), "loop device busy; the kernel detaches it on last close");
    Ok(())
}

const DETACH_WAIT_MS: u32 = 200;

/// `LOOP_SET_CAPACITY`: make the device follow its grown backing file.
pub fn refresh_capacity(dev: &LoopDevice) -> Result<(), MountError> {
    let file = open_device(&dev.path).map_err(MountError::io("open", &dev.path))?;
    ioctl::loop_set_capacity(file.as_fd()).map_err(MountError::sys("LOOP_SET_CAPACITY", &dev.path))
}

/// The identity of a backing file that every process on the node agrees on: its
/// filesystem's device number and its inode.
///
/// The path the kernel reports for a loop device's backing file (sysfs
/// `loop/backing_file`, `LOOP_GET_STATUS64`'s `lo_file_name`) is not that: it is rendered
/// through the mount the file was opened by. A restarted node plugin runs in a new mount
/// namespace with its own bind mount of the pool, and there the device attached by its
/// predecessor reports `/volumes/<id>.img`, not the pool path. Device and inode do not
/// change across namespaces, bind mounts or renames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `(major, minor)` of the filesystem holding the file.
    pub dev: (u32, u32),
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path`; `None` when there is no such file.
    pub fn of(path: &Path) -> Result<Option<Self>, MountError> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(Self::of_metadata(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MountError::io("stat", path)(e)),
        }
    }

    fn of_metadata(meta: &fs::Metadata) -> Self {
        Self {
            dev: split_dev(meta.dev()),
            ino: meta.ino(),
        }
    }

    /// The backing file of a bound loop device, as `LOOP_GET_STATUS64` reports it.
    fn of_loop(info: &LoopInfo64) -> Self {
        // The kernel encodes `lo_device` with `huge_encode_dev` (the "new" dev_t layout:
        // minor's low byte, major, then minor's upper bits).
        let d = info.lo_device;
        let major = ((d >> 8) & 0xfff) as u32;
        let minor = ((d & 0xff) | ((d >> 12) & 0xfff00)) as u32;
        Self {
            dev: (major, minor),
            ino: info.lo_inode,
        }
    }
}

fn split_dev(dev: u64) -> (u32, u32) {
    (
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    )
}

/// What `/dev/loopN` is bound to: `None` when unbound (or gone).
fn status_of(dev: &LoopDevice) -> Result<Option<LoopInfo64>, MountError> {
    let file = match File::open(&dev.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MountError::io("open", &dev.path)(e)),
    };
    match ioctl::loop_get_status64(file.as_fd()) {
        Ok(info) => Ok(Some(info)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(MountError::sys("LOOP_GET_STATUS64", &dev.path)(e)),
    }
}

/// Every bound loop device with the identity of its backing file.
///
/// sysfs lists the devices and says which are bound (`loop/` exists); the backing file's
/// identity comes from the device itself, so the answer is the same in every mount
/// namespace (see [`FileId`]).
pub fn list_attached() -> Result<Vec<(LoopDevice, FileId)>, MountError> {
    let root = Path::new(SYS_BLOCK);
    let entries = fs::read_dir(root).map_err(MountError::io("read_dir", root))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(MountError::io("read_dir", root))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // No `loop/` directory: unbound, so not worth opening. Races with a concurrent
        // attach or detach are settled by the ioctl below.
        if !entry.path().join("loop").exists() {
            continue;
        }
        let Ok(dev) = LoopDevice::from_number(number) else {
            continue;
        };
        if let Some(info) = status_of(&dev)? {
            out.push((dev, FileId::of_loop(&info)));
        }
    }
    Ok(out)
}

/// The read-write loop device backed by `image` (the same file, by device and inode), if
/// any: the one stage attached. Read-only devices of read-only block publishes are not it.
///
/// A device remembered for the image is returned after confirming with the device itself
/// that it is still bound to that file and writable; otherwise (never seen, detached or
/// rebound behind our back) every loop device is scanned.
pub fn find_loop_for(image: &Path) -> Result<Option<LoopDevice>, MountError> {
    let Some(id) = FileId::of(image)? else {
        return Ok(None);
    };
    if let Some(dev) = RW_CACHE.confirmed(id)? {
        return Ok(Some(dev));
    }
    Ok(scan_for(id)?.into_iter().find(|d| !d.is_read_only()))
}

/// Every loop device backed by `image`, read-write and read-only (always a full scan).
pub fn loops_for(image: &Path) -> Result<Vec<LoopDevice>, MountError> {
    match FileId::of(image)? {
        Some(id) => scan_for(id),
        None => Ok(Vec::new()),
    }
}

fn scan_for(id: FileId) -> Result<Vec<LoopDevice>, MountError> {
    let found: Vec<LoopDevice> = list_attached()?
        .into_iter()
        .filter(|(_, backing)| *backing == id)
        .map(|(dev, _)| dev)
        .collect();
    // The scan is the truth: refresh what the cache says about this file.
    match found.iter().find(|d| !d.is_read_only()) {
        Some(rw) => RW_CACHE.remember(id, rw),
        None => RW_CACHE.forget_file(id),
    }
    Ok(found)
}

/// Read-write loop devices by the identity of the file they are bound to.
///
/// An entry is a hint, never trusted as is: [`RwCache::confirmed`] asks the device what
/// it is bound to, so a device detached by someone else (and maybe re-bound to another
/// file under the same number) is noticed and the caller falls back to the scan.
struct RwCache(LazyLock<Mutex<HashMap<FileId, LoopDevice>>>);

static RW_CACHE: RwCache = RwCache(LazyLock::new(|| Mutex::new(HashMap::new())));

impl RwCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, LoopDevice>> {
        // A panic elsewhere cannot make an entry unsafe: every entry is re-checked.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, id: FileId, dev: &LoopDevice) {
        self.map().insert(id, dev.clone());
    }

    fn forget_file(&self, id: FileId) {
        self.map().remove(&id);
    }

    fn forget_device(&self, number: u32) {
        self.map().retain(|_, d| d.number != number);
    }

    /// The remembered device of `id` if the device still says it is bound to that file,
    /// read-write. A stale entry is dropped.
    fn confirmed(&self, id: FileId) -> Result<Option<LoopDevice>, MountError> {
        let Some(dev) = self.map().get(&id).cloned() else {
            return Ok(None);
        };
        let bound = status_of(&dev)?.is_some_and(|info| {
            FileId::of_loop(&info) == id && info.lo_flags & LO_FLAGS_READ_ONLY == 0
        });
        if bound {
            return Ok(Some(dev));
        }
        let mut map = self.map();
        if map.get(&id) == Some(&dev) {
            map.remove(&id);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_that_the_device_does_not_confirm_is_dropped() {
        // Inode 0 is never a file's: no loop device is bound to it, whatever its number.
        let id = FileId {
            dev: (0, 0),
            ino: 0,
        };
        let dev = LoopDevice {
            number: 0,
            path: PathBuf::from("/dev/loop0"),
            dev: (7, 0),
        };
        RW_CACHE.remember(id, &dev);
        assert_eq!(RW_CACHE.confirmed(id).unwrap(), None);
        assert!(!RW_CACHE.map().contains_key(&id), "stale entry kept");
        RW_CACHE.remember(id, &dev);
        RW_CACHE.forget_device(0);
        assert!(!RW_CACHE.map().contains_key(&id));
    }

    #[test]
    fn the_kernels_device_encoding_is_decoded() {
        let mut info = LoopInfo64::new(0, &[]);
        // 254:0 (a virtio disk), as `stat -c %d` prints it too.
        info.lo_device = 65024;
        info.lo_inode = 42;
        assert_eq!(
            FileId::of_loop(&info),
            FileId {
                dev: (254, 0),
                ino: 42
            }
        );
        // 259:300: minors past 255 keep their upper bits above the major.
        info.lo_device = 44 | (259 << 8) | (256 << 12);
        assert_eq!(FileId::of_loop(&info).dev, (259, 300));
    }
}
