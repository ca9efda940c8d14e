//! Crash-safe file replacement: write a temp file, fsync it, rename over the target,
//! fsync the directory. A crash leaves either the old file, the new file, or a stray
//! temp file that [`is_temp`] recognises and pool recovery removes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Whether a directory entry is a leftover temp file of [`write_atomic`].
pub(crate) fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Atomically replace `path` with `contents`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path without parent"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("path without UTF-8 file name"))?;
    let temp = dir.join(format!(".{name}{TEMP_SUFFIX}"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// fsync a directory so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
