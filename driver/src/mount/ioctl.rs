//! The only `unsafe` in the driver: the loop-device and reflink ioctls.
//!
//! Each wrapper takes a borrowed file descriptor, so the descriptor is open for the whole
//! call, and passes only plain-old-data structs whose layout matches the kernel's UAPI
//! (`linux/loop.h`, `linux/fs.h`).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `LO_FLAGS_READ_ONLY`.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_DIRECT_IO`.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` from `linux/loop.h`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; LO_NAME_SIZE],
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    pub lo_init: [u64; 2],
}

impl LoopInfo64 {
    /// Zeroed info carrying `flags` and (truncated) `name` as `lo_file_name`.
    pub fn new(flags: u32, name: &[u8]) -> Self {
        let mut file_name = [0u8; LO_NAME_SIZE];
        // Keep the last byte NUL: the kernel treats the field as a C string.
        let len = name.len().min(LO_NAME_SIZE - 1);
        file_name[..len].copy_from_slice(&name[..len]);
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: file_name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` from `linux/loop.h` (kernel >= 5.8).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopConfig {
    pub fd: u32,
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

mod raw {
    use super::{LoopConfig, LoopInfo64};
    // The loop ioctls predate the _IOC encoding, hence the `_bad` variants with the raw
    // numbers from linux/loop.h.
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
    nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    // FICLONE = _IOW(0x94, 9, int).
    nix::ioctl_write_int!(ficlone, 0x94, 9);
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free loop device.
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> Result<u32, Errno> {
    // SAFETY: the request takes no argument; `control` is an open descriptor.
    let n = unsafe { raw::loop_ctl_get_free(control.as_raw_fd()) }?;
    u32::try_from(n).map_err(|_| Errno::EINVAL)
}

/// `LOOP_CONFIGURE`: bind `config.fd` to the loop device in one step.
pub fn loop_configure(dev: BorrowedFd<'_>, config: &LoopConfig) -> Result<(), Errno> {
    // SAFETY: `config` is a valid, initialised `struct loop_config` that outlives the
    // call; the kernel only reads it.
    unsafe { raw::loop_configure(dev.as_raw_fd(), config) }.map(drop)
}

/// `LOOP_SET_FD` (pre-5.8 fallback, followed by [`loop_set_status64`]).
pub fn loop_set_fd(dev: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: the argument is a descriptor number the kernel resolves itself; both
    // descriptors are open for the duration of the call.
    unsafe { raw::loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) }.map(drop)
}

/// `LOOP_SET_STATUS64`: flags and file name after [`loop_set_fd`].
pub fn loop_set_status64(dev: BorrowedFd<'_>, info: &LoopInfo64) -> Result<(), Errno> {
    // SAFETY: `info` is a valid `struct loop_info64` that outlives the call; read-only.
    unsafe { raw::loop_set_status64(dev.as_raw_fd(), info) }.map(drop)
}

/// `LOOP_GET_STATUS64`: what the device is bound to. `ENXIO` when it is unbound.
pub fn loop_get_status64(dev: BorrowedFd<'_>) -> Result<LoopInfo64, Errno> {
    let mut info = LoopInfo64::new(0, &[]);
    // SAFETY: `info` is a valid, writable `struct loop_info64` that outlives the call;
    // the kernel fills it in.
    unsafe { raw::loop_get_status64(dev.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// `LOOP_CLR_FD`: detach the backing file (deferred by the kernel while still open).
pub fn loop_clr_fd(dev: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: no argument; `dev` is an open loop device descriptor.
    unsafe { raw::loop_clr_fd(dev.as_raw_fd()) }.map(drop)
}

/// `LOOP_SET_CAPACITY`: re-read the backing file's size after it grew.
pub fn loop_set_capacity(dev: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: no argument; `dev` is an open loop device descriptor.
    unsafe { raw::loop_set_capacity(dev.as_raw_fd()) }.map(drop)
}

/// `FICLONE`: make `dest` share all of `src`'s extents (reflink).
pub fn ficlone(dest: BorrowedFd<'_>, src: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: the argument is the source descriptor number; both are open for the call.
    unsafe { raw::ficlone(dest.as_raw_fd(), src.as_raw_fd() as _) }.map(drop)
}
