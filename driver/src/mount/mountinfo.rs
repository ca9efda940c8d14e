//! `/proc/self/mountinfo`: which mounts exist, from which device, with which options.
//!
//! Idempotency of stage and publish rests on this table rather than on state the driver
//! keeps, so it survives restarts.

use std::path::{Path, PathBuf};

use super::MountError;
use super::loopdev::parse_dev;

const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";
const READ_CHUNK: usize = 32 * 1024;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of the mounted filesystem.
    pub dev: (u32, u32),
    /// Path inside the filesystem that is mounted (`/` unless a bind of a subtree/file).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn is_read_only(&self) -> bool {
        self.has_option("ro")
    }

    pub fn has_option(&self, option: &str) -> bool {
        self.mount_options.iter().any(|o| o == option)
    }
}

/// Read this process's mount table.
pub fn read_self() -> Result<Vec<MountEntry>, MountError> {
    use std::io::Read;
    let path = Path::new(SELF_MOUNTINFO);
    // procfs reports size 0, so `read_to_string` would start at 32 bytes and double
    // through several reads (each regenerating part of the table); a node's table
    // usually fits in one read of this size.
    let mut text = String::with_capacity(READ_CHUNK);
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(MountError::io("read", path))?;
    parse(&text, path)
}

/// Parse mountinfo text; `origin` names the source in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<MountEntry>, MountError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            parse_line(line).map_err(|reason| MountError::MountInfo {
                path: origin.to_path_buf(),
                line: i + 1,
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (before, after) = line.split_once(" - ").ok_or("missing ' - ' separator")?;
    let mut f = before.split(' ');
    let mount_id = f.next().and_then(|s| s.parse().ok()).ok_or("mount id")?;
    let parent_id = f.next().and_then(|s| s.parse().ok()).ok_or("parent id")?;
    let dev = f.next().and_then(parse_dev).ok_or("major:minor")?;
    let root = f.next().map(unescape).ok_or("root")?;
    let mount_point = f.next().map(unescape).ok_or("mount point")?;
    let mount_options = f.next().ok_or("mount options")?;
    // Optional fields (shared:N, master:N, ...) follow until the separator; not needed.
    let mut a = after.split(' ');
    let fs_type = a.next().ok_or("fs type")?;
    let source = a.next().ok_or("source")?;
    let super_options = a.next().unwrap_or("");
    Ok(MountEntry {
        mount_id,
        parent_id,
        dev,
        root: PathBuf::from(root),
        mount_point: PathBuf::from(mount_point),
        mount_options: split_options(mount_options),
        fs_type: unescape(fs_type),
        source: unescape(source),
        super_options: split_options(super_options),
    })
}

fn split_options(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Undo the kernel's octal escaping of space, tab, newline and backslash (`\040` ...).
///
/// Works on bytes so a path that is not UTF-8 stays intact where possible; invalid
/// sequences are kept literally.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entry mounted last at `mount_point` (the visible one when mounts are stacked).
pub fn find_mount_point<'a>(
    entries: &'a [MountEntry],
    mount_point: &Path,
) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == mount_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 7:3 / /var/lib/kubelet/pods/a\\040b/vol\\011x rw,nosuid,noatime shared:5 master:2 - ext4 /dev/loop3 rw,stripe=4
37 22 0:5 /loop3 /var/lib/kubelet/plugins/dev\\134file ro - devtmpfs udev rw,size=100k
";

    #[test]
    fn parses_fields_and_escapes() {
        let entries = parse(SAMPLE, Path::new("sample")).unwrap();
        assert_eq!(entries.len(), 3);
        let e = &entries[1];
        assert_eq!(e.mount_id, 36);
        assert_eq!(e.parent_id, 22);
        assert_eq!(e.dev, (7, 3));
        assert_eq!(e.mount_point, Path::new("/var/lib/kubelet/pods/a b/vol\tx"));
        assert_eq!(e.fs_type, "ext4");
        assert_eq!(e.source, "/dev/loop3");
        assert!(e.has_option("nosuid") && e.has_option("noatime") && !e.is_read_only());
        assert_eq!(e.super_options, vec!["rw", "stripe=4"]);
        let b = &entries[2];
        assert_eq!(b.root, Path::new("/loop3"));
        assert_eq!(
            b.mount_point,
            Path::new("/var/lib/kubelet/plugins/dev\\file")
        );
        assert!(b.is_read_only());
        assert_eq!(
            find_mount_point(&entries, Path::new("/")).unwrap().mount_id,
            22
        );
    }

    #[test]
    fn rejects_malformed_lines_with_line_number() {
        let err = parse("22 1 252:0 / / rw\n", Path::new("x")).unwrap_err();
        assert!(
            matches!(err, MountError::MountInfo { line: 1, .. }),
            "{err}"
        );
        let err = parse("x 1 252:0 / / rw - ext4 a b\n", Path::new("x")).unwrap_err();
        assert!(matches!(err, MountError::MountInfo { .. }));
    }

    #[test]
    fn unescape_keeps_invalid_sequences() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("a\\999"), "a\\999");
        assert_eq!(unescape("tail\\"), "tail\\");
    }

    #[test]
    fn reads_own_mountinfo() {
        let entries = read_self().unwrap();
        assert!(entries.iter().any(|e| e.mount_point == Path::new("/")));
    }
}
