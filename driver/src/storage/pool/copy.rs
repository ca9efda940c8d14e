//! Copying images: reflink when the pool filesystem can, sparse copy otherwise.
//!
//! The primitive behind snapshots and clones and behind the node side's
//! template images. Holes stay holes, so a copy costs only the data actually written.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use crate::mount::MountError;

/// How [`copy_image`] copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// FICLONE: extents shared copy-on-write, O(1) in data size.
    Reflink,
    /// SEEK_DATA/SEEK_HOLE + copy_file_range over the data extents only.
    Sparse,
}

/// Copy `src` to `dest` (created or truncated), preserving holes, and fsync `dest`.
pub fn copy_image(src: &Path, dest: &Path) -> Result<CopyMethod, MountError> {
    let input = File::open(src).map_err(MountError::io("open", src))?;
    let len = input.metadata().map_err(MountError::io("stat", src))?.len();
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(MountError::io("create", dest))?;
    let method = match crate::mount::ficlone(output.as_fd(), input.as_fd()) {
        Ok(()) => CopyMethod::Reflink,
        // Not supported by this filesystem (or across filesystems): copy data extents.
        Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::EXDEV | Errno::ENOTTY) => {
            sparse_copy(&input, &output, len).map_err(MountError::sys("copy", dest))?;
            CopyMethod::Sparse
        }
        Err(e) => return Err(MountError::sys("FICLONE", dest)(e)),
    };
    output
        .set_len(len)
        .map_err(MountError::io("truncate", dest))?;
    // Durable before anyone mounts it: a crash must not leave a half-copied image, which
    // would read as unknown data and never be formatted again. fdatasync suffices — the
    // size is set above and block allocation counts as data.
    output.sync_data().map_err(MountError::io("sync", dest))?;
    Ok(method)
}

fn sparse_copy(input: &File, output: &File, len: u64) -> Result<(), Errno> {
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    let mut pos: i64 = 0;
    while pos < len {
        let data = match lseek(input.as_fd(), pos, Whence::SeekData) {
            Ok(off) => off,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e),
        };
        let hole = lseek(input.as_fd(), data, Whence::SeekHole)?.min(len);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let chunk = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let n = nix::fcntl::copy_file_range(
                input.as_fd(),
                Some(&mut off_in),
                output.as_fd(),
                Some(&mut off_out),
                chunk,
            )?;
            if n == 0 {
                // Source shrank underneath us.
                return Err(Errno::EIO);
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Whether files in `dir` can be reflinked (FICLONE between two scratch files).
pub fn reflink_supported(dir: &Path) -> Result<bool, MountError> {
    let src = dir.join(".reflink-probe-src.tmp");
    let dest = dir.join(".reflink-probe-dest.tmp");
    let result = (|| {
        // FICLONE needs the source open for reading.
        let mut input = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&src)
            .map_err(MountError::io("create", &src))?;
        std::io::Write::write_all(&mut input, &[1u8; 4096])
            .map_err(MountError::io("write", &src))?;
        let output = File::create(&dest).map_err(MountError::io("create", &dest))?;
        Ok(crate::mount::ficlone(output.as_fd(), input.as_fd()).is_ok())
    })();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dest);
    result
}
