//! Filesystem detection (superblock magics, read by us) and mkfs (spawned tools).
//!
//! The driver formats only what [`detect`] calls [`Detected::Blank`]: a volume that holds
//! anything — a known filesystem or unknown bytes — is never reformatted.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::MountError;

/// Filesystems the driver formats and mounts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// Used when a request leaves the filesystem type empty.
    pub const DEFAULT: FsType = FsType::Ext4;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
        }
    }

    /// Smallest volume mkfs accepts (xfsprogs >= 5.19 refuses filesystems under 300 MiB).
    pub fn min_size_bytes(self) -> u64 {
        match self {
            Self::Ext4 => 1 << 20,
            Self::Xfs => 300 << 20,
        }
    }

    /// Options every mount of this filesystem gets. XFS refuses a second filesystem with
    /// the same UUID, and clones, snapshots and template copies share UUIDs.
    pub fn implied_mount_data(self) -> Option<&'static str> {
        match self {
            Self::Ext4 => None,
            Self::Xfs => Some("nouuid"),
        }
    }

    /// The mkfs tool and its fixed arguments (an allowlist: nothing from requests).
    fn mkfs_command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            // Lazy init leaves inode tables and journal zeroing to the kernel after mount
            // (the image is sparse, so they read as zero anyway); nodiscard because
            // discarding a fresh sparse image only costs time.
            //
            // 4 KiB blocks/sectors always: mkfs on a small image would pick 1 KiB (ext4)
            // or 512-byte sectors (xfs), which a loop device with a 4 KiB logical block
            // size (direct I/O over a reflinked file on xfs) refuses to mount.
            Self::Ext4 => (
                "mkfs.ext4",
                &[
                    "-q",
                    "-b",
                    "4096",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                ],
            ),
            Self::Xfs => ("mkfs.xfs", &["-q", "-K", "-s", "size=4096"]),
        }
    }
}

/// What mkfs makes: a filesystem, and for an encrypted volume ext4 with the `encrypt`
/// feature (fscrypt). Plain volumes are formatted exactly as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Format {
    pub fs: FsType,
    pub encrypt: bool,
}

impl From<FsType> for Format {
    fn from(fs: FsType) -> Self {
        Self { fs, encrypt: false }
    }
}

impl Format {
    /// The full argument list (an allowlist: nothing from requests).
    fn args(self) -> Vec<&'static str> {
        let (_, args) = self.fs.mkfs_command();
        let mut all = args.to_vec();
        if self.encrypt && self.fs == FsType::Ext4 {
            all.extend(["-O", "encrypt"]);
        }
        all
    }

    /// A fingerprint of the exact mkfs invocation (FNV-1a of tool and arguments), so a
    /// cached pre-formatted image is reused only for the options it was made with (an
    /// encrypted volume never gets a plain template, nor the reverse).
    pub fn fingerprint(self) -> u32 {
        let (tool, _) = self.fs.mkfs_command();
        std::iter::once(tool)
            .chain(self.args())
            .flat_map(|s| s.bytes().chain(std::iter::once(0)))
            .fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            })
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = MountError;

    /// `""` is the default (ext4), as CSI leaves an empty `fs_type` to the plugin.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Ok(Self::DEFAULT),
            "ext4" => Ok(Self::Ext4),
            "xfs" => Ok(Self::Xfs),
            other => Err(MountError::UnsupportedFs(other.to_owned())),
        }
    }
}

/// What [`detect`] found on a device or image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// The first 64 KiB are all zero: safe to format.
    Blank,
    Fs(FsType),
    /// Data the driver does not recognise: never formatted over.
    Unknown,
}

const PROBE_LEN: usize = 64 * 1024;
const EXT_MAGIC_OFFSET: usize = 1024 + 0x38;
const EXT_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();
const XFS_MAGIC: &[u8; 4] = b"XFSB";

/// Classify the first 64 KiB of `path`.
pub fn detect(path: &Path) -> Result<Detected, MountError> {
    let mut file = File::open(path).map_err(MountError::io("open", path))?;
    let mut buf = vec![0u8; PROBE_LEN];
    let mut filled = 0;
    // A short image is fine: what is missing reads as zero.
    while filled < PROBE_LEN {
        let n = file
            .read(&mut buf[filled..])
            .map_err(MountError::io("read", path))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(classify(&buf))
}

/// The classification itself, separated for tests.
pub fn classify(head: &[u8]) -> Detected {
    if head.starts_with(XFS_MAGIC) {
        return Detected::Fs(FsType::Xfs);
    }
    // ext2/3 share the magic; the kernel's ext4 driver mounts them all.
    if head.get(EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2) == Some(&EXT_MAGIC[..]) {
        return Detected::Fs(FsType::Ext4);
    }
    if head.iter().any(|&b| b != 0) {
        Detected::Unknown
    } else {
        Detected::Blank
    }
}

/// Run mkfs for `format` on `path` (a block device or an image file).
pub fn mkfs(format: impl Into<Format>, path: &Path) -> Result<(), MountError> {
    mkfs_as(format.into(), path)
}

#[tracing::instrument(level = "debug", fields(fs = %format.fs, encrypt = format.encrypt, path = %path.display()))]
fn mkfs_as(format: Format, path: &Path) -> Result<(), MountError> {
    let (tool, _) = format.fs.mkfs_command();
    let mut argv: Vec<&OsStr> = format.args().into_iter().map(OsStr::new).collect();
    argv.push(path.as_os_str());
    run_tool(tool, &argv)?.map_err(|failed| MountError::Mkfs {
        tool,
        path: path.to_path_buf(),
        status: failed.status,
        stderr: failed.stderr,
    })
}

/// A filesystem tool that ran and failed: its exit status and what it said.
#[derive(Debug)]
pub struct ToolFailure {
    pub status: String,
    pub stderr: String,
}

/// Runs a filesystem tool (mkfs, resize2fs, xfs_growfs). The outer error is a tool that
/// could not be started; the inner one a tool that ran and failed.
pub fn run_tool(
    tool: &'static str,
    args: &[&OsStr],
) -> Result<Result<(), ToolFailure>, MountError> {
    let output = Command::new(tool)
        .args(args)
        // No stdin: a tool that wants confirmation (it found data) gets EOF and aborts.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(MountError::io("spawn", Path::new(tool)))?;
    if output.status.success() {
        return Ok(Ok(()));
    }
    Ok(Err(ToolFailure {
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_superblocks() {
        let mut head = vec![0u8; PROBE_LEN];
        assert_eq!(classify(&head), Detected::Blank);
        head[EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2].copy_from_slice(&EXT_MAGIC);
        assert_eq!(classify(&head), Detected::Fs(FsType::Ext4));
        let mut head = vec![0u8; PROBE_LEN];
        head[..4].copy_from_slice(XFS_MAGIC);
        assert_eq!(classify(&head), Detected::Fs(FsType::Xfs));
        let mut head = vec![0u8; PROBE_LEN];
        head[PROBE_LEN - 1] = 1;
        assert_eq!(classify(&head), Detected::Unknown);
        // Short input (tiny image) is classified on what exists.
        assert_eq!(classify(&[0u8; 10]), Detected::Blank);
    }

    #[test]
    fn encrypted_formats_are_their_own_template_key() {
        let plain = Format::from(FsType::Ext4);
        let encrypted = Format {
            fs: FsType::Ext4,
            encrypt: true,
        };
        assert!(!plain.args().contains(&"encrypt"));
        assert_eq!(encrypted.args().last(), Some(&"encrypt"));
        assert_ne!(plain.fingerprint(), encrypted.fingerprint());
    }

    #[test]
    fn fs_type_names() {
        assert_eq!("".parse::<FsType>().unwrap(), FsType::Ext4);
        assert_eq!("xfs".parse::<FsType>().unwrap(), FsType::Xfs);
        assert!("btrfs".parse::<FsType>().is_err());
        assert!("ext4,ro".parse::<FsType>().is_err());
    }
}
