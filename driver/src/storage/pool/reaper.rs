//! Unlinking deleted images off the request path.
//!
//! Unlinking an image that a filesystem was written into frees its extents in the
//! caller's context, which costs more than the rest of DeleteVolume together. Once the
//! metadata removal is durable the volume is gone (an image without metadata is an
//! orphan that [`super::Pool::open`] removes), so DeleteVolume renames the image to a
//! trash name and this thread unlinks it. A crash before the unlink leaves a trash file
//! the next open removes like any orphan.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

/// Prefix and suffix of an image waiting to be unlinked: `.<id>.deleted`.
const TRASH_PREFIX: &str = ".";
const TRASH_SUFFIX: &str = ".deleted";

/// The trash name of `image` in the same directory (rename stays within it).
pub(super) fn trash_path(image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_str()?;
    Some(image.with_file_name(format!("{TRASH_PREFIX}{stem}{TRASH_SUFFIX}")))
}

/// Whether a directory entry is an image waiting to be unlinked.
pub(super) fn is_trash(name: &str) -> bool {
    name.starts_with(TRASH_PREFIX) && name.ends_with(TRASH_SUFFIX)
}

const REAPER_STACK: usize = 64 * 1024;

/// One background thread, started on first use. Dropping the reaper (with the pool)
/// waits for what it was given, so a pool opened again on the same directory in this
/// process never races it for the same trash files.
#[derive(Default)]
pub(super) struct Reaper {
    tx: Mutex<Option<Sender<PathBuf>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let tx = self.tx.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(tx.take());
        let thread = self.thread.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = thread.take()
            && handle.join().is_err()
        {
            tracing::warn!("the reaper thread panicked; the next open removes its trash");
        }
    }
}

impl Reaper {
    /// Unlink `path` in the background (inline if the thread cannot run).
    pub(super) fn remove(&self, path: PathBuf) {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.is_none() {
            let (sender, receiver) = mpsc::channel::<PathBuf>();
            let spawned = std::thread::Builder::new()
                .name("plinth-reaper".into())
                // It only unlinks: a small stack keeps the driver's footprint flat.
                .stack_size(REAPER_STACK)
                .spawn(move || {
                    for path in receiver {
                        unlink(&path);
                    }
                });
            match spawned {
                Ok(handle) => {
                    *tx = Some(sender);
                    *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                }
                Err(e) => tracing::warn!(error = %e, "cannot start the reaper thread"),
            }
        }
        let unsent = match tx.as_ref() {
            Some(sender) => sender.send(path).err().map(|e| e.0),
            None => Some(path),
        };
        if let Some(path) = unsent {
            *tx = None;
            unlink(&path);
        }
    }
}

fn unlink(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Left for the next open, which removes trash files.
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing deleted image"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trash_names_round_trip_and_are_recognised() {
        let trash = trash_path(Path::new("/p/volumes/0123abcd.img")).unwrap();
        assert_eq!(trash, Path::new("/p/volumes/.0123abcd.deleted"));
        assert!(is_trash(".0123abcd.deleted"));
        assert!(!is_trash("0123abcd.img") && !is_trash(".0123abcd.json.tmp"));
    }

    #[test]
    fn removes_in_the_background_and_drop_waits_for_the_queue() {
        let dir = std::env::temp_dir().join(format!("plinth-reaper-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!(".{i}.deleted"))).collect();
        for f in &files {
            fs::write(f, b"x").unwrap();
        }
        let reaper = Reaper::default();
        for f in &files {
            reaper.remove(f.clone());
        }
        // Dropping waits for the queue to be worked off.
        drop(reaper);
        assert!(files.iter().all(|f| !f.exists()), "trash left after drop");
        fs::remove_dir(&dir).unwrap();
    }
}
