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

// fscrypt (`linux/fscrypt.h`): per-filesystem master keys and directory policies.

/// `FSCRYPT_KEY_IDENTIFIER_SIZE`.
pub const FSCRYPT_KEY_IDENTIFIER_SIZE: usize = 16;
/// The largest raw master key (`FSCRYPT_MAX_KEY_SIZE`); v2 AES-256-XTS uses all 64 bytes.
pub const FSCRYPT_MAX_KEY_SIZE: usize = 64;
const FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;

/// `struct fscrypt_key_specifier`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FscryptKeySpecifier {
    pub kind: u32,
    pub reserved: u32,
    /// The identifier in the first 16 bytes (a union of 32 in the UAPI).
    pub u: [u8; 32],
}

impl FscryptKeySpecifier {
    fn identifier(id: &[u8; FSCRYPT_KEY_IDENTIFIER_SIZE]) -> Self {
        let mut u = [0u8; 32];
        u[..FSCRYPT_KEY_IDENTIFIER_SIZE].copy_from_slice(id);
        Self {
            kind: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
            reserved: 0,
            u,
        }
    }
}

/// `struct fscrypt_add_key_arg` followed by its `raw[]` (64 bytes: the largest key).
/// Holds key material: wiped on drop.
#[repr(C)]
pub struct FscryptAddKeyArg {
    pub key_spec: FscryptKeySpecifier,
    pub raw_size: u32,
    pub key_id: u32,
    pub reserved: [u32; 8],
    pub raw: [u8; FSCRYPT_MAX_KEY_SIZE],
}

impl Drop for FscryptAddKeyArg {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.raw);
    }
}

/// `struct fscrypt_remove_key_arg`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FscryptRemoveKeyArg {
    pub key_spec: FscryptKeySpecifier,
    pub removal_status_flags: u32,
    pub reserved: [u32; 5],
}

/// `struct fscrypt_get_key_status_arg`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FscryptGetKeyStatusArg {
    pub key_spec: FscryptKeySpecifier,
    pub reserved: [u32; 6],
    pub status: u32,
    pub status_flags: u32,
    pub user_count: u32,
    pub out_reserved: [u32; 13],
}

/// `struct fscrypt_policy_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FscryptPolicyV2 {
    pub version: u8,
    pub contents_encryption_mode: u8,
    pub filenames_encryption_mode: u8,
    pub flags: u8,
    pub reserved: [u8; 4],
    pub master_key_identifier: [u8; FSCRYPT_KEY_IDENTIFIER_SIZE],
}

/// `struct fscrypt_get_policy_ex_arg` (the policy union is at most a v2 policy).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FscryptGetPolicyExArg {
    pub policy_size: u64,
    pub policy: FscryptPolicyV2,
}

mod fscrypt_raw {
    use super::{
        FscryptAddKeyArg, FscryptGetKeyStatusArg, FscryptGetPolicyExArg, FscryptPolicyV2,
        FscryptRemoveKeyArg,
    };
    // The request numbers encode the UAPI's own sizes, which are not always the size of
    // what is passed: SET_ENCRYPTION_POLICY is `_IOR('f', 19, struct fscrypt_policy_v1)`
    // (12 bytes; the kernel reads the version byte and then the right policy), and
    // GET_ENCRYPTION_POLICY_EX is `_IOWR('f', 22, __u8[9])`; ADD_ENCRYPTION_KEY counts the
    // 80-byte header without `raw[]`. Hence the `_bad` variants with computed numbers.
    nix::ioctl_write_ptr_bad!(
        set_policy,
        nix::request_code_read!(b'f', 19, 12),
        FscryptPolicyV2
    );
    nix::ioctl_readwrite_bad!(
        get_policy_ex,
        nix::request_code_readwrite!(b'f', 22, 9),
        FscryptGetPolicyExArg
    );
    nix::ioctl_readwrite_bad!(
        add_key,
        nix::request_code_readwrite!(b'f', 23, 80),
        FscryptAddKeyArg
    );
    nix::ioctl_readwrite_bad!(
        remove_key_all_users,
        nix::request_code_readwrite!(b'f', 25, 64),
        FscryptRemoveKeyArg
    );
    nix::ioctl_readwrite_bad!(
        get_key_status,
        nix::request_code_readwrite!(b'f', 26, 128),
        FscryptGetKeyStatusArg
    );
}

/// `FS_IOC_ADD_ENCRYPTION_KEY` of a v2 `key` to the filesystem holding `fs`; returns the
/// key's identifier (which the kernel derives from the key).
pub fn fscrypt_add_key(
    fs: BorrowedFd<'_>,
    key: &[u8; FSCRYPT_MAX_KEY_SIZE],
) -> Result<[u8; FSCRYPT_KEY_IDENTIFIER_SIZE], Errno> {
    let mut arg = FscryptAddKeyArg {
        key_spec: FscryptKeySpecifier::identifier(&[0; FSCRYPT_KEY_IDENTIFIER_SIZE]),
        raw_size: FSCRYPT_MAX_KEY_SIZE as u32,
        key_id: 0,
        reserved: [0; 8],
        raw: *key,
    };
    // SAFETY: `arg` is a valid header followed by `raw_size` bytes of key, writable, and
    // outlives the call; the kernel writes the identifier into `key_spec`.
    unsafe { fscrypt_raw::add_key(fs.as_raw_fd(), &mut arg) }?;
    let mut id = [0u8; FSCRYPT_KEY_IDENTIFIER_SIZE];
    id.copy_from_slice(&arg.key_spec.u[..FSCRYPT_KEY_IDENTIFIER_SIZE]);
    Ok(id)
}

/// `FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS`: returns the removal status flags
/// (`FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY` = 1: files still open keep their
/// inodes' keys until closed).
pub fn fscrypt_remove_key_all_users(
    fs: BorrowedFd<'_>,
    identifier: &[u8; FSCRYPT_KEY_IDENTIFIER_SIZE],
) -> Result<u32, Errno> {
    let mut arg = FscryptRemoveKeyArg {
        key_spec: FscryptKeySpecifier::identifier(identifier),
        removal_status_flags: 0,
        reserved: [0; 5],
    };
    // SAFETY: `arg` is a valid, writable `struct fscrypt_remove_key_arg` for the call.
    unsafe { fscrypt_raw::remove_key_all_users(fs.as_raw_fd(), &mut arg) }?;
    Ok(arg.removal_status_flags)
}

/// `FS_IOC_GET_ENCRYPTION_KEY_STATUS`: `FSCRYPT_KEY_STATUS_*` (1 absent, 2 present,
/// 3 incompletely removed).
pub fn fscrypt_key_status(
    fs: BorrowedFd<'_>,
    identifier: &[u8; FSCRYPT_KEY_IDENTIFIER_SIZE],
) -> Result<u32, Errno> {
    let mut arg = FscryptGetKeyStatusArg {
        key_spec: FscryptKeySpecifier::identifier(identifier),
        reserved: [0; 6],
        status: 0,
        status_flags: 0,
        user_count: 0,
        out_reserved: [0; 13],
    };
    // SAFETY: `arg` is a valid, writable `struct fscrypt_get_key_status_arg`.
    unsafe { fscrypt_raw::get_key_status(fs.as_raw_fd(), &mut arg) }?;
    Ok(arg.status)
}

/// `FS_IOC_SET_ENCRYPTION_POLICY` on the (empty) directory `dir`.
pub fn fscrypt_set_policy(dir: BorrowedFd<'_>, policy: &FscryptPolicyV2) -> Result<(), Errno> {
    // SAFETY: `policy` is a valid v2 policy the kernel only reads.
    unsafe { fscrypt_raw::set_policy(dir.as_raw_fd(), policy) }.map(drop)
}

/// `FS_IOC_GET_ENCRYPTION_POLICY_EX`: the policy of `dir`; `ENODATA` when it has none.
pub fn fscrypt_get_policy(dir: BorrowedFd<'_>) -> Result<FscryptGetPolicyExArg, Errno> {
    let mut arg = FscryptGetPolicyExArg {
        policy_size: std::mem::size_of::<FscryptPolicyV2>() as u64,
        policy: FscryptPolicyV2 {
            version: 0,
            contents_encryption_mode: 0,
            filenames_encryption_mode: 0,
            flags: 0,
            reserved: [0; 4],
            master_key_identifier: [0; FSCRYPT_KEY_IDENTIFIER_SIZE],
        },
    };
    // SAFETY: `arg` is writable and `policy_size` says how much of it the kernel may fill.
    unsafe { fscrypt_raw::get_policy_ex(dir.as_raw_fd(), &mut arg) }?;
    Ok(arg)
}
