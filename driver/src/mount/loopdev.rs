//! Loop devices through `/dev/loop-control` and the loop ioctls (no losetup).
//!
//! A mapping is discoverable from sysfs (`/sys/block/loopN/loop/backing_file`), which is
//! how the pool finds devices still attached after a driver restart.
//!
//! Finding the device of an image means scanning every loop device in sysfs. The
//! read-write device of each image this process attached or found is remembered (see
//! [`RwCache`]) so that the calls that need it (publish, unpublish, stats, attachment)
//! confirm it with one read instead of a scan. Only positive answers come from the
//! cache: "nothing attached" always comes from a scan.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;

use super::MountError;
use super::ioctl::{self, LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY, LoopConfig, LoopInfo64};

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

    /// The device name mountinfo shows as the root of a bind of the device node
    /// (`/loopN`).
    pub fn node_root(&self) -> String {
        format!("/loop{}", self.number)
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
                if !read_only {
                    RW_CACHE.remember(image, &device);
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

/// Every attached loop device with its backing file, from sysfs.
pub fn list_attached() -> Result<Vec<(LoopDevice, PathBuf)>, MountError> {
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
        let backing_path = entry.path().join("loop").join("backing_file");
        // Absent `loop/` directory means the device is unbound; races with a concurrent
        // detach also end here.
        let Ok(backing) = fs::read(&backing_path) else {
            continue;
        };
        let backing = trim_newline(&backing);
        let Ok(dev) = LoopDevice::from_number(number) else {
            continue;
        };
        out.push((dev, PathBuf::from(std::ffi::OsStr::from_bytes(backing))));
    }
    Ok(out)
}

fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

/// The read-write loop device backed by `image` (compared by canonical path), if any:
/// the one stage attached. Read-only devices of read-only block publishes are not it.
///
/// A device remembered for `image` is returned after confirming in sysfs that it is
/// still bound to `image` and writable; otherwise (never seen, detached or rebound behind
/// our back) every loop device is scanned.
pub fn find_loop_for(image: &Path) -> Result<Option<LoopDevice>, MountError> {
    if let Some(dev) = RW_CACHE.confirmed(image) {
        return Ok(Some(dev));
    }
    Ok(loops_for(image)?.into_iter().find(|d| !d.is_read_only()))
}

/// Every loop device backed by `image`, read-write and read-only (always a full scan).
pub fn loops_for(image: &Path) -> Result<Vec<LoopDevice>, MountError> {
    let canonical = match fs::canonicalize(image) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            RW_CACHE.forget_image(image);
            return Ok(Vec::new());
        }
        Err(e) => return Err(MountError::io("canonicalize", image)(e)),
    };
    let found: Vec<LoopDevice> = list_attached()?
        .into_iter()
        .filter(|(_, backing)| *backing == canonical)
        .map(|(dev, _)| dev)
        .collect();
    // The scan is the truth: refresh what the cache says about this image.
    match found.iter().find(|d| !d.is_read_only()) {
        Some(rw) => RW_CACHE.remember(&canonical, rw),
        None => RW_CACHE.forget_image(&canonical),
    }
    Ok(found)
}

/// Read-write loop devices by the image path they were attached or found under.
///
/// An entry is a hint, never trusted as is: [`RwCache::confirmed`] re-reads the device's
/// `loop/backing_file` and `ro` in sysfs, so a device detached by someone else (and
/// maybe re-bound to another file under the same number) is noticed and the caller
/// falls back to the scan. Entries are keyed by the path the kernel reports (canonical);
/// a lookup under any other spelling simply misses.
struct RwCache(LazyLock<Mutex<HashMap<PathBuf, LoopDevice>>>);

static RW_CACHE: RwCache = RwCache(LazyLock::new(|| Mutex::new(HashMap::new())));

impl RwCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, LoopDevice>> {
        // A panic elsewhere cannot make an entry unsafe: every entry is re-checked.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, image: &Path, dev: &LoopDevice) {
        self.map().insert(image.to_path_buf(), dev.clone());
    }

    fn forget_image(&self, image: &Path) {
        self.map().remove(image);
    }

    fn forget_device(&self, number: u32) {
        self.map().retain(|_, d| d.number != number);
    }

    /// The remembered device of `image` if sysfs still shows it bound to `image`,
    /// read-write. A stale entry is dropped.
    fn confirmed(&self, image: &Path) -> Option<LoopDevice> {
        let dev = self.map().get(image).cloned()?;
        let backing = Path::new(SYS_BLOCK)
            .join(format!("loop{}", dev.number))
            .join("loop/backing_file");
        let bound =
            fs::read(&backing).is_ok_and(|b| trim_newline(&b) == image.as_os_str().as_bytes());
        if bound && !dev.is_read_only() {
            return Some(dev);
        }
        let mut map = self.map();
        if map.get(image) == Some(&dev) {
            map.remove(image);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_that_sysfs_does_not_confirm_is_dropped() {
        let image = Path::new("/nonexistent/plinth-cache-test.img");
        // No loop device is bound to a path that does not exist, whatever number it has.
        let dev = LoopDevice {
            number: 0,
            path: PathBuf::from("/dev/loop0"),
            dev: (7, 0),
        };
        RW_CACHE.remember(image, &dev);
        assert_eq!(RW_CACHE.confirmed(image), None);
        assert!(!RW_CACHE.map().contains_key(image), "stale entry kept");
        RW_CACHE.remember(image, &dev);
        RW_CACHE.forget_device(0);
        assert!(!RW_CACHE.map().contains_key(image));
    }
}
