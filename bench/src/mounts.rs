//! Checks on what the plugin left at a path: the benchmark trusts no "OK" blindly.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Undoes the octal escapes the kernel applies to mount points in mountinfo
/// (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(digits) = escaped {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `mountinfo` (the text of `/proc/self/mountinfo`) lists `path` as a mount point.
pub fn is_listed(mountinfo: &str, path: &Path) -> bool {
    let Some(path) = path.to_str() else {
        return false;
    };
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape(mount_point) == path)
}

pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(is_listed(
        &std::fs::read_to_string("/proc/self/mountinfo")?,
        path,
    ))
}

/// Whether `path` is (or, through a bind mount or symlink, resolves to) a block device.
pub fn is_block_device(path: &Path) -> io::Result<bool> {
    Ok(std::fs::metadata(path)?.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 7:3 / /work/bench/vol-1/staging rw,relatime shared:20 - ext4 /dev/loop3 rw
36 22 7:3 / /work/bench/vol\\0401/pod/volume rw,relatime shared:20 - ext4 /dev/loop3 rw
";

    #[test]
    fn finds_mount_points_by_exact_path() {
        assert!(is_listed(MOUNTINFO, Path::new("/work/bench/vol-1/staging")));
        assert!(is_listed(MOUNTINFO, Path::new("/")));
        assert!(!is_listed(MOUNTINFO, Path::new("/work/bench/vol-1")));
        assert!(!is_listed(
            MOUNTINFO,
            Path::new("/work/bench/vol-1/staging/x")
        ));
    }

    #[test]
    fn decodes_escaped_mount_points() {
        assert!(is_listed(
            MOUNTINFO,
            Path::new("/work/bench/vol 1/pod/volume")
        ));
        assert_eq!(unescape("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn root_is_a_mount_point_and_dev_null_is_not_a_block_device() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(!is_block_device(Path::new("/dev/null")).unwrap());
    }
}
