//! Pre-formatted template images: format once per (filesystem, size, mkfs options — an
//! encrypted volume's `-O encrypt` among them), then copy.
//!
//! Spawning mkfs dominates a stage of a blank volume. The first blank stage of a given
//! filesystem, size and mkfs options formats a template image in `<pool>/templates/`;
//! later ones copy the template's data extents into the new (blank, not yet attached)
//! image — a reflink where the pool filesystem supports it. The result is the same filesystem mkfs would
//! have written, with the template's UUID: harmless for ext4, and XFS is always mounted
//! with `nouuid`. XFS templates are used only on pools that reflink (see
//! `Templates::pays_off`). The cache is bounded to [`MAX_TEMPLATES`] images (least recently used
//! evicted); templates are sparse and their allocated blocks count against the pool's
//! free space like any other file.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::mount::{Format, FsType, MountError};
use crate::storage::pool::{CopyMethod, copy_image, reflink_supported};

/// Template images kept at most.
pub const MAX_TEMPLATES: usize = 4;

pub(super) struct Templates {
    dir: PathBuf,
    /// Serialises building and evicting; copying out of an existing template does not
    /// need it, but is cheap enough to do under it too.
    lock: Mutex<()>,
    /// Whether the pool filesystem reflinks: then every template copy is O(1).
    reflink: bool,
}

impl Templates {
    pub(super) fn new(dir: PathBuf) -> Self {
        // Temp files of builds a crash interrupted; nothing builds yet at this point.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let reflink = reflink_supported(&dir).unwrap_or(false);
        Self {
            dir,
            lock: Mutex::new(()),
            reflink,
        }
    }

    fn path(&self, format: Format, size: u64) -> PathBuf {
        self.dir.join(format!(
            "{}-{size}-{:08x}.img",
            format.fs,
            format.fingerprint()
        ))
    }

    /// Whether copying a template beats running mkfs. mkfs.ext4 with lazy init writes
    /// well under 1 MiB; mkfs.xfs writes a 64 MiB log (non-zero: cycle-stamped), which
    /// only a reflink copies faster than mkfs.xfs writes it.
    fn pays_off(&self, fs: FsType) -> bool {
        self.reflink || fs == FsType::Ext4
    }

    /// Fill the blank, unattached `image` of `size` bytes with a formatted `fs`; `None`
    /// when mkfs is the faster way for this filesystem on this pool.
    pub(super) fn fill(
        &self,
        format: Format,
        size: u64,
        image: &Path,
    ) -> Result<Option<CopyMethod>, MountError> {
        if !self.pays_off(format.fs) {
            return Ok(None);
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let template = self.path(format, size);
        if !template.exists() {
            self.build(format, size, &template)?;
        }
        let method = match copy_image(&template, image) {
            Ok(m) => m,
            Err(e) => {
                // Leave the image blank again, never half a filesystem (which would read as
                // unknown data and never be formatted).
                let reblank = fs::OpenOptions::new()
                    .write(true)
                    .open(image)
                    .and_then(|f| f.set_len(0).and_then(|()| f.set_len(size)));
                if let Err(r) = reblank {
                    tracing::error!(image = %image.display(), error = %r, "re-blanking after failed copy");
                }
                return Err(e);
            }
        };
        // Touch for LRU eviction.
        if let Ok(f) = fs::File::open(&template) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Ok(Some(method))
    }

    fn build(&self, format: Format, size: u64, template: &Path) -> Result<(), MountError> {
        let name = template
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self.dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(MountError::io("create", &temp))?;
            file.set_len(size)
                .map_err(MountError::io("truncate", &temp))?;
            crate::mount::fs::mkfs(format, &temp)?;
            file.sync_all().map_err(MountError::io("sync", &temp))?;
            fs::rename(&temp, template).map_err(MountError::io("rename", template))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result?;
        tracing::info!(template = %template.display(), "built template image");
        self.evict();
        Ok(())
    }

    /// Keep the newest [`MAX_TEMPLATES`] templates (by mtime) and drop stray temp files.
    fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut templates: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        templates.sort();
        let excess = templates.len().saturating_sub(MAX_TEMPLATES);
        for (_, path) in templates.into_iter().take(excess) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(template = %path.display(), error = %e, "evicting template");
            }
        }
    }
}
