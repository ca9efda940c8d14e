//! A known pattern written into a published volume and read back from its restore.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Error;
use crate::workload::AccessKind;

/// Enough to span several filesystem blocks and extents, small enough to stay cheap.
const LEN: usize = 1 << 20;
const FILE_NAME: &str = "plinth-bench.dat";

fn pattern(seed: u64) -> Vec<u8> {
    // xorshift64: a different, non-repeating stream per volume, so a restore that
    // returned another volume's data (or zeroes) cannot pass.
    // Odd and distinct for every seed: xorshift must not start from zero.
    let mut state = seed.wrapping_mul(2).wrapping_add(1);
    (0..LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Where the data lives: a file in a mounted volume, or the device itself.
fn location(access: AccessKind, target: &Path) -> PathBuf {
    match access {
        AccessKind::Mount => target.join(FILE_NAME),
        AccessKind::Block => target.to_path_buf(),
    }
}

/// Writes the pattern and makes it durable, so a snapshot cut afterwards holds it.
pub async fn write(access: AccessKind, target: &Path, seed: u64) -> Result<(), Error> {
    let path = location(access, target);
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true);
    if access == AccessKind::Mount {
        options.create(true).truncate(true);
    }
    let mut file = options
        .open(&path)
        .await
        .map_err(Error::io("open for writing", &path))?;
    file.write_all(&pattern(seed))
        .await
        .map_err(Error::io("write", &path))?;
    file.sync_all().await.map_err(Error::io("fsync", &path))?;
    Ok(())
}

/// Reads the pattern back and compares it byte for byte.
pub async fn verify(access: AccessKind, target: &Path, seed: u64) -> Result<(), Error> {
    let path = location(access, target);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(Error::io("open for reading", &path))?;
    let mut found = vec![0; LEN];
    file.read_exact(&mut found)
        .await
        .map_err(Error::io("read", &path))?;
    let expected = pattern(seed);
    match found.iter().zip(&expected).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(offset) => Err(Error::Verify(format!(
            "{} differs from the data written before the snapshot, first at byte {offset}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_seed_and_repeat_per_seed() {
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
        assert_ne!(pattern(6), pattern(7));
        assert!(pattern(0).iter().any(|b| *b != 0));
    }

    #[tokio::test]
    async fn round_trip_and_mismatch_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(AccessKind::Mount, dir.path(), 42).await.unwrap();
        verify(AccessKind::Mount, dir.path(), 42).await.unwrap();
        let err = verify(AccessKind::Mount, dir.path(), 43).await.unwrap_err();
        assert!(matches!(err, Error::Verify(_)), "{err}");
    }
}
