//! The volume pool: one sparse image file per volume plus crash-safe JSON metadata.
//!
//! # Layout
//!
//! ```text
//! <dir>/pool.json              {"formatVersion": 1}
//! <dir>/volumes/<id>.img       the volume's bytes (sparse)
//! <dir>/volumes/<id>.json      its metadata: the commit point of CreateVolume
//! <dir>/snapshots/             reserved for snapshot images and records
//! <dir>/templates/             pre-formatted images the node side copies from
//! ```
//!
//! Creating writes the (sparse, empty) image first, then the metadata (write temp, fsync,
//! rename, fsync directory); deleting removes the metadata first, then renames the image
//! to `.<id>.deleted` for a background thread to unlink. So an image without metadata
//! (under either name) is always an unfinished create or delete, and [`Pool::open`]
//! removes it.
//! Metadata carries a `formatVersion` and a `contentSource`, and snapshots get their own
//! directory, so snapshots, clones, restore and expansion fit without a format change.
//!
//! # Capacity
//!
//! Images are sparse but the pool never overcommits: every byte a volume was promised
//! is either already allocated on the pool filesystem (and so missing from its free
//! space) or still owed. [`Pool::available`] is
//!
//! ```text
//! free bytes (statvfs f_bavail) − reserve − Σ owed by volumes − Σ shared by snapshots
//!   − bytes booked by copies in flight
//! owed by a volume = min(provisioned, provisioned − allocated + shared)
//! ```
//!
//! and a create that does not fit in it fails with [`PoolError::ResourceExhausted`].
//! A reflink copy (a snapshot, a restore, a clone) is free when made but not for good:
//! its extents are shared with its source, and overwriting either side allocates them
//! again. So a reflinked volume counts the bytes it shared when it was made as not yet
//! its own (`shared`), and a reflinked snapshot owes what it shares (registered by the
//! snapshot store in [`SnapshotShares`]). Copies book their bytes
//! ([`Pool::reserve`]) before they start and run outside the pool's lock, so a long copy
//! neither blocks other volumes nor lets concurrent creates promise the same bytes.
//! A size above the pool filesystem's total size minus the reserve could never fit,
//! however much is freed: [`PoolError::NeverFits`] (OUT_OF_RANGE at the CSI boundary).

pub mod backing;
mod copy;
mod id;
mod meta;
mod reaper;
mod size;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::mount::loopdev::{self, LoopDevice};
use crate::mount::{FsType, MountError, mountinfo};
use crate::storage::{IoFailure, io_err};

pub use copy::{CopyMethod, copy_image, reflink_supported};
pub use id::{InvalidId, VolumeId};
// For the snapshot store, which commits its records the same way.
#[allow(unused_imports)]
pub(crate) use meta::{sync_dir, write_atomic};
pub use size::{CapacityRange, DEFAULT_SIZE, GRANULARITY, SizeError, image_size};

/// Version of the on-disk layout and metadata this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// CSI's size limit for names.
pub const MAX_NAME_LEN: usize = 128;

const VOLUMES: &str = "volumes";
const SNAPSHOTS: &str = "snapshots";
const TEMPLATES: &str = "templates";
const POOL_FILE: &str = "pool.json";
const IMAGE_EXT: &str = "img";
const META_EXT: &str = "json";
/// An encrypted volume's wrapped data key (see [`crate::storage::crypt`]), mode 0600.
const KEY_EXT: &str = "key";

/// How a volume is consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum VolumeAccess {
    /// A filesystem the node formats (when blank) and mounts.
    Mount {
        #[serde(rename = "fsType")]
        fs_type: FsType,
    },
    /// The raw loop device.
    Block,
}

impl VolumeAccess {
    /// The smallest image this access can use (a filesystem needs room for itself).
    pub fn min_size_bytes(self) -> u64 {
        match self {
            Self::Mount { fs_type } => fs_type.min_size_bytes(),
            Self::Block => GRANULARITY,
        }
    }
}

/// Where a volume's initial content comes from (CSI `VolumeContentSource`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ContentSource {
    Snapshot {
        #[serde(rename = "snapshotId")]
        snapshot_id: String,
    },
    Volume {
        #[serde(rename = "volumeId")]
        volume_id: String,
    },
}

/// A CreateVolume request as the pool sees it (already decoded from protobuf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateVolumeRequest {
    /// CSI name: the idempotency key. Arbitrary UTF-8, ≤ 128 bytes; never a path.
    pub name: String,
    /// The ID to create the volume under; `None` draws a random one. Cluster mode
    /// passes the ID the controller derived from the name ([`crate::cluster::ids`]).
    pub id: Option<VolumeId>,
    pub capacity: CapacityRange,
    pub access: VolumeAccess,
    pub parameters: BTreeMap<String, String>,
    /// Recorded with the volume; [`Pool::create_volume_from`] fills the image from it
    /// ([`Pool::create_volume`] refuses it: [`PoolError::ContentSourceUnsupported`]).
    pub content_source: Option<ContentSource>,
}

/// A volume in the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub id: VolumeId,
    pub name: String,
    pub size_bytes: u64,
    pub access: VolumeAccess,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub content_source: Option<ContentSource>,
    pub created_unix_ms: u64,
    /// Bytes of the image shared (reflinked) with its source when it was made: allocated
    /// now, but overwriting them allocates them again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether [`Pool::create_volume`] made a new volume or found the one the name names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// On-disk metadata record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeRecord {
    format_version: u32,
    #[serde(flatten)]
    volume: Volume,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolRecord {
    format_version: u32,
}

/// What [`Pool::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Stray temp files of interrupted metadata writes, removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// Images without committed metadata (interrupted create/delete), removed.
    pub removed_orphan_images: Vec<PathBuf>,
    /// Wrapped keys without committed metadata, removed.
    pub removed_orphan_keys: Vec<PathBuf>,
    /// Metadata whose image is missing: kept (delete still works), logged.
    pub missing_images: Vec<VolumeId>,
    /// Images shorter than their recorded size (size lost in a crash): grown back.
    pub resized_images: Vec<VolumeId>,
    /// Loop devices of pool images still in use by a mount: the volume stays staged.
    pub in_use: Vec<(VolumeId, LoopDevice)>,
    /// Loop devices of pool images that nothing used any more (a crash between attach
    /// and mount, or between unmount and detach): detached.
    pub detached: Vec<LoopDevice>,
}

/// Errors of pool operations.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    #[error("invalid volume name: {0}")]
    InvalidName(&'static str),
    #[error("volume {0} not found")]
    NotFound(VolumeId),
    #[error("capacity range cannot be met: {0}")]
    OutOfRange(#[source] SizeError),
    #[error("volume name {name:?} already exists with incompatible {what}")]
    AlreadyExists { name: String, what: &'static str },
    #[error("{requested} bytes requested but only {available} bytes available in the pool")]
    ResourceExhausted { requested: u64, available: u64 },
    #[error("volume {0:?} is being created from its content source; try again")]
    CreatePending(String),
    /// A size larger than the pool could hold even empty: see [`Pool::total_bytes`].
    #[error(
        "{requested} bytes can never fit: the pool's filesystem holds {total} bytes for volumes"
    )]
    NeverFits { requested: u64, total: u64 },
    #[error("volume {id} is in use (attached to {})", device.display())]
    InUse { id: VolumeId, device: PathBuf },
    #[error("volume content sources (snapshots, clones) are not supported yet")]
    ContentSourceUnsupported,
    #[error("cannot shrink volume {id} from {current} to {requested} bytes")]
    ShrinkRefused {
        id: VolumeId,
        current: u64,
        requested: u64,
    },
    #[error("pool format version {found} is newer than this driver's {FORMAT_VERSION}")]
    UnsupportedFormat { found: u32 },
    #[error(
        "pool {} is in use by another driver process (it holds the pool's lock); \
         a pool has exactly one owner: give each driver its own pool directory",
        dir.display()
    )]
    Busy { dir: PathBuf },
    #[error(transparent)]
    Io(#[from] IoFailure),
    #[error("metadata {path}: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Host(#[from] MountError),
}

struct Index {
    by_id: BTreeMap<VolumeId, Volume>,
    by_name: HashMap<String, VolumeId>,
    /// Names of volumes whose content is being copied (outside the lock).
    creating: std::collections::HashSet<String>,
    /// Bytes booked by copies in flight ([`Reservation`]).
    reserved: u64,
}

/// What reflinked snapshots share with volumes, by snapshot ID: kept by the snapshot
/// store, counted by [`Pool::available`]. Its lock is only ever taken last.
#[derive(Debug, Default)]
pub struct SnapshotShares(Mutex<HashMap<String, u64>>);

impl SnapshotShares {
    /// Snapshot `id` shares `bytes` with volumes (0: nothing, or it is gone).
    pub fn set(&self, id: &str, bytes: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if bytes == 0 {
            map.remove(id);
        } else {
            map.insert(id.to_owned(), bytes);
        }
    }

    fn total(&self) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().sum()
    }
}

/// The pool. `Sync`: share it behind an `Arc`; methods take `&self`.
pub struct Pool {
    root: PathBuf,
    reserve_bytes: u64,
    index: Mutex<Index>,
    recovery: Recovery,
    reaper: reaper::Reaper,
    snapshot_shares: std::sync::Arc<SnapshotShares>,
    /// An exclusive flock on the pool directory, held while this value lives: two
    /// drivers recovering, reaping and allocating in one pool would destroy each other's
    /// volumes (each detaches the other's "unused" loop devices, double-books space).
    _owner: Flock<fs::File>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("root", &self.root)
            .field("reserve_bytes", &self.reserve_bytes)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Open (creating if needed) the pool at `dir`, keeping `reserve_bytes` of the pool
    /// filesystem free, and recover from any crash: see [`Recovery`].
    #[tracing::instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub fn open(dir: impl AsRef<Path>, reserve_bytes: u64) -> Result<Pool, PoolError> {
        let dir = dir.as_ref();
        for sub in [VOLUMES, SNAPSHOTS, TEMPLATES] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let root = fs::canonicalize(dir).map_err(io_err("canonicalize", dir))?;
        let owner = lock_owner(&root)?;
        check_format(&root)?;
        let mut pool = Pool {
            root,
            reserve_bytes,
            index: Mutex::new(Index {
                by_id: BTreeMap::new(),
                by_name: HashMap::new(),
                creating: Default::default(),
                reserved: 0,
            }),
            snapshot_shares: Default::default(),
            recovery: Recovery::default(),
            reaper: reaper::Reaper::default(),
            _owner: owner,
        };
        pool.check_ready()?;
        pool.recover()?;
        tracing::info!(recovery = ?pool.recovery, "pool opened");
        Ok(pool)
    }

    /// The canonical pool directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Directory for pre-formatted template images (owned by the node side).
    pub fn templates_dir(&self) -> PathBuf {
        self.root.join(TEMPLATES)
    }

    /// What the last [`Pool::open`] repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Whether the pool can serve: the directory is writable and statvfs works. Probe
    /// answers not-ready while this fails.
    pub fn check_ready(&self) -> Result<(), PoolError> {
        let probe = self.root.join(".probe.tmp");
        fs::write(&probe, b"ok").map_err(io_err("write", &probe))?;
        fs::remove_file(&probe).map_err(io_err("remove", &probe))?;
        nix::sys::statvfs::statvfs(&self.root).map_err(|e| {
            PoolError::from(IoFailure {
                op: "statvfs",
                path: self.root.clone(),
                source: e.into(),
            })
        })?;
        Ok(())
    }

    /// The image file of a volume (whether or not it exists).
    pub fn image_path(&self, id: &VolumeId) -> PathBuf {
        self.file(id, IMAGE_EXT)
    }

    /// The wrapped data key of an encrypted volume (whether or not it exists: it is
    /// written at the volume's first stage).
    pub fn key_path(&self, id: &VolumeId) -> PathBuf {
        self.file(id, KEY_EXT)
    }

    fn file(&self, id: &VolumeId, ext: &str) -> PathBuf {
        self.root.join(VOLUMES).join(format!("{id}.{ext}"))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index inconsistent with disk
        // in a way later calls trust blindly (disk is the truth), so keep serving.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Create a volume, or return the existing one created under the same name.
    pub fn create_volume(&self, req: &CreateVolumeRequest) -> Result<(Volume, Created), PoolError> {
        self.create_volume_with(req, None)
    }

    /// Create a volume whose image `populate` writes from `req.content_source` (a
    /// snapshot restore, a clone), or return the existing one created under the same
    /// name from the same source. `populate` creates the image file at the path it is
    /// given, at most the volume's size, and returns the bytes it shares with its source
    /// (reflinked); the pool then grows it to the volume's size. It runs before the
    /// metadata is committed, so a crash leaves an orphan image (removed at the next
    /// open), never a committed volume without its data. The volume's size is booked
    /// first and the copy runs outside the pool's lock; the same name asked for again
    /// meanwhile is [`PoolError::CreatePending`].
    pub fn create_volume_from(
        &self,
        req: &CreateVolumeRequest,
        populate: Populate<'_>,
    ) -> Result<(Volume, Created), PoolError> {
        self.create_volume_with(req, Some(populate))
    }

    #[tracing::instrument(skip_all, fields(name = %req.name))]
    fn create_volume_with(
        &self,
        req: &CreateVolumeRequest,
        populate: Option<Populate<'_>>,
    ) -> Result<(Volume, Created), PoolError> {
        validate_name(&req.name)?;
        if req.content_source.is_some() && populate.is_none() {
            return Err(PoolError::ContentSourceUnsupported);
        }
        let size =
            image_size(req.capacity, req.access.min_size_bytes()).map_err(PoolError::OutOfRange)?;

        let mut index = self.lock();
        if index.creating.contains(&req.name) {
            return Err(PoolError::CreatePending(req.name.clone()));
        }
        if let Some(id) = index.by_name.get(&req.name) {
            let existing = &index.by_id[id];
            let what = if req.id.as_ref().is_some_and(|want| want != id) {
                Some("volume id")
            } else if !req.capacity.is_satisfied_by(existing.size_bytes) {
                Some("capacity range")
            } else if existing.access != req.access {
                Some("access type")
            } else if existing.parameters != req.parameters {
                Some("parameters")
            } else if existing.content_source != req.content_source {
                Some("content source")
            } else {
                None
            };
            return match what {
                None => Ok((existing.clone(), Created::Existing)),
                Some(what) => Err(PoolError::AlreadyExists {
                    name: req.name.clone(),
                    what,
                }),
            };
        }

        self.check_could_ever_fit(size)?;
        let available = self.available_locked(&index)?;
        if size > available {
            return Err(PoolError::ResourceExhausted {
                requested: size,
                available,
            });
        }
        let id = match &req.id {
            Some(id) if index.by_id.contains_key(id) => {
                return Err(PoolError::AlreadyExists {
                    name: req.name.clone(),
                    what: "volume id (another name holds it)",
                });
            }
            Some(id) => id.clone(),
            None => {
                VolumeId::generate().map_err(io_err("generate id", Path::new("/dev/urandom")))?
            }
        };
        let mut volume = Volume {
            id: id.clone(),
            name: req.name.clone(),
            size_bytes: size,
            access: req.access,
            parameters: req.parameters.clone(),
            content_source: req.content_source.clone(),
            created_unix_ms: now_ms(),
            shared_bytes: 0,
        };
        let span = tracing::info_span!("create", volume_id = %id, size);
        let _guard = span.enter();
        let image = self.image_path(&id);
        match populate {
            None => self.create_image(&image, size)?,
            Some(fill) => {
                // Book the size and copy without the lock: a copy of gigabytes must not
                // stall every other volume's calls, nor let them promise these bytes.
                let copying = Copying::start(self, &mut index, &req.name, size);
                drop(index);
                volume.shared_bytes = fill_image(&image, size, fill)?;
                index = self.lock();
                copying.finish(&mut index);
            }
        }
        if let Err(e) = self.write_record(&volume) {
            // Without metadata the image is an orphan: remove it now rather than at the
            // next open.
            let _ = fs::remove_file(&image);
            return Err(e);
        }
        index.by_name.insert(volume.name.clone(), id.clone());
        index.by_id.insert(id, volume.clone());
        tracing::info!("volume created");
        Ok((volume, Created::New))
    }

    /// Book `bytes` of the pool for a copy about to run (a snapshot): refused with
    /// [`PoolError::ResourceExhausted`] when they are not available; released when the
    /// returned value is dropped.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, PoolError> {
        let mut index = self.lock();
        let available = self.available_locked(&index)?;
        if bytes > available {
            return Err(PoolError::ResourceExhausted {
                requested: bytes,
                available,
            });
        }
        index.reserved = index.reserved.saturating_add(bytes);
        Ok(Reservation { pool: self, bytes })
    }

    /// The ledger the snapshot store keeps of what its reflinked snapshots share.
    pub fn snapshot_shares(&self) -> std::sync::Arc<SnapshotShares> {
        self.snapshot_shares.clone()
    }

    fn create_image(&self, image: &Path, size: u64) -> Result<(), PoolError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(image)
            .map_err(io_err("create", image))?;
        // No fsync here: the image holds no data yet, and the directory fsync that
        // commits the metadata makes its entry durable. Should its size still be lost in
        // a crash, `open` restores it from the metadata (see `Recovery::resized_images`).
        let result = file.set_len(size).map_err(io_err("allocate", image));
        if result.is_err() {
            let _ = fs::remove_file(image);
        }
        Ok(result?)
    }

    fn write_record(&self, volume: &Volume) -> Result<(), PoolError> {
        let path = self.file(&volume.id, META_EXT);
        let record = VolumeRecord {
            format_version: FORMAT_VERSION,
            volume: volume.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|source| PoolError::Metadata {
            path: path.clone(),
            source,
        })?;
        Ok(meta::write_atomic(&path, &json).map_err(io_err("write", &path))?)
    }

    /// Delete a volume. Unknown IDs succeed (idempotent); a volume whose image is
    /// attached to a loop device (staged or published) is refused with
    /// [`PoolError::InUse`].
    #[tracing::instrument(skip(self), fields(volume_id = %id))]
    pub fn delete_volume(&self, id: &VolumeId) -> Result<(), PoolError> {
        let mut index = self.lock();
        let image = self.image_path(id);
        if let Some(dev) = loopdev::loops_for(&image)?.into_iter().next() {
            return Err(PoolError::InUse {
                id: id.clone(),
                device: dev.path,
            });
        }
        let meta = self.file(id, META_EXT);
        let volumes = self.root.join(VOLUMES);
        // Metadata first: once it is gone the image is an orphan any later open removes.
        match fs::remove_file(&meta) {
            Ok(()) => meta::sync_dir(&volumes).map_err(io_err("sync", &volumes))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &meta)(e).into()),
        }
        // The wrapped key goes with the record (a crash in between leaves a key file
        // without record, which the next open removes).
        let key = self.key_path(id);
        match fs::remove_file(&key) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &key)(e).into()),
        }
        // The volume is gone now; freeing the image's blocks is left to the reaper (see
        // `reaper`). The rename keeps the image name free and the file an orphan.
        let trash = reaper::trash_path(&image).ok_or_else(|| {
            PoolError::from(IoFailure {
                op: "rename",
                path: image.clone(),
                source: io::Error::other("image path without a file name"),
            })
        })?;
        match fs::rename(&image, &trash) {
            Ok(()) => self.reaper.remove(trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("rename", &image)(e).into()),
        }
        if let Some(volume) = index.by_id.remove(id) {
            index.by_name.remove(&volume.name);
            tracing::info!("volume deleted");
        }
        Ok(())
    }

    /// A volume by ID.
    pub fn get(&self, id: &VolumeId) -> Result<Volume, PoolError> {
        self.lock()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| PoolError::NotFound(id.clone()))
    }

    /// A volume by CSI name.
    pub fn get_by_name(&self, name: &str) -> Option<Volume> {
        let index = self.lock();
        index.by_name.get(name).map(|id| index.by_id[id].clone())
    }

    /// All volumes, sorted by ID (stable order for pagination).
    pub fn list(&self) -> Vec<Volume> {
        self.lock().by_id.values().cloned().collect()
    }

    /// The loop device a volume's image is attached to, if any (it is then staged, or
    /// being staged/unstaged).
    pub fn attachment(&self, id: &VolumeId) -> Result<Option<LoopDevice>, PoolError> {
        Ok(loopdev::find_loop_for(&self.image_path(id))?)
    }

    /// Bytes a new volume may still be promised. See the module docs for the formula.
    pub fn available(&self) -> Result<u64, PoolError> {
        let index = self.lock();
        self.available_locked(&index)
    }

    /// Total bytes of the pool filesystem, minus the reserve (GetCapacity's maximum).
    pub fn total_bytes(&self) -> Result<u64, PoolError> {
        let st = self.statvfs()?;
        Ok(st
            .blocks()
            .saturating_mul(st.fragment_size())
            .saturating_sub(self.reserve_bytes))
    }

    /// A volume of `size` bytes "could never fit" when it is larger than the pool's
    /// filesystem minus the reserve ([`Pool::total_bytes`]): no deletion of other
    /// volumes or snapshots could make room, so the answer is OUT_OF_RANGE, while a
    /// size that fits an empty pool but not today's free space is RESOURCE_EXHAUSTED
    /// (the CO may retry, or pick another node).
    fn check_could_ever_fit(&self, size: u64) -> Result<(), PoolError> {
        let total = self.total_bytes()?;
        if size > total {
            return Err(PoolError::NeverFits {
                requested: size,
                total,
            });
        }
        Ok(())
    }

    fn statvfs(&self) -> Result<nix::sys::statvfs::Statvfs, PoolError> {
        nix::sys::statvfs::statvfs(&self.root).map_err(|e| {
            PoolError::from(IoFailure {
                op: "statvfs",
                path: self.root.clone(),
                source: e.into(),
            })
        })
    }

    fn available_locked(&self, index: &Index) -> Result<u64, PoolError> {
        let st = self.statvfs()?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        let mut owed: u64 = 0;
        for volume in index.by_id.values() {
            let image = self.image_path(&volume.id);
            let allocated = match fs::metadata(&image) {
                Ok(m) => m.blocks().saturating_mul(512),
                // A missing image owes nothing and holds nothing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => volume.size_bytes,
                Err(e) => return Err(io_err("stat", &image)(e).into()),
            };
            let own = allocated.saturating_sub(volume.shared_bytes);
            owed = owed.saturating_add(volume.size_bytes.saturating_sub(own));
        }
        let shared = self.snapshot_shares.total();
        Ok(free
            .saturating_sub(self.reserve_bytes)
            .saturating_sub(owed)
            .saturating_sub(shared)
            .saturating_sub(index.reserved))
    }

    /// Grow a volume's image to at least `new_size` bytes (rounded like create).
    /// Returns the new size. Shrinking is refused; an equal or smaller-but-satisfied
    /// request is a no-op. The caller refreshes an attached loop device
    /// ([`crate::mount::loopdev::refresh_capacity`]) and grows the filesystem.
    #[tracing::instrument(skip(self), fields(volume_id = %id))]
    pub fn expand_volume(&self, id: &VolumeId, new_size: u64) -> Result<u64, PoolError> {
        let mut index = self.lock();
        let mut volume = index
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| PoolError::NotFound(id.clone()))?;
        let target = image_size(CapacityRange::new(new_size, 0), GRANULARITY)
            .map_err(PoolError::OutOfRange)?;
        if new_size < volume.size_bytes {
            return Err(PoolError::ShrinkRefused {
                id: id.clone(),
                current: volume.size_bytes,
                requested: new_size,
            });
        }
        if target <= volume.size_bytes {
            return Ok(volume.size_bytes);
        }
        self.check_could_ever_fit(target)?;
        let grow = target - volume.size_bytes;
        let available = self.available_locked(&index)?;
        if grow > available {
            return Err(PoolError::ResourceExhausted {
                requested: grow,
                available,
            });
        }
        let image = self.image_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(io_err("open", &image))?;
        // Image first, metadata second: a crash in between leaves a bigger image than
        // recorded, which a retried expand simply confirms (set_len to the same size).
        file.set_len(target)
            .and_then(|()| file.sync_all())
            .map_err(io_err("grow", &image))?;
        volume.size_bytes = target;
        self.write_record(&volume)?;
        index.by_id.insert(id.clone(), volume);
        Ok(target)
    }

    fn recover(&mut self) -> Result<(), PoolError> {
        let volumes_dir = self.root.join(VOLUMES);
        let mut recovery = Recovery::default();
        let mut records = BTreeMap::new();
        let mut images = Vec::new();
        let mut keys = Vec::new();
        let entries = fs::read_dir(&volumes_dir).map_err(io_err("read_dir", &volumes_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read_dir", &volumes_dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "ignoring non-UTF-8 file in pool");
                continue;
            };
            if reaper::is_trash(&name) {
                // An image DeleteVolume had renamed away when the process stopped.
                match fs::remove_file(&path) {
                    Ok(()) => recovery.removed_orphan_images.push(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e).into()),
                }
                continue;
            }
            if meta::is_temp(&name) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                recovery.removed_temp_files.push(path);
                continue;
            }
            let Some((stem, ext)) = name.rsplit_once('.') else {
                continue;
            };
            let Ok(id) = VolumeId::parse(stem) else {
                tracing::warn!(path = %path.display(), "ignoring unknown file in pool");
                continue;
            };
            match ext {
                META_EXT => {
                    let volume = read_record(&path)?;
                    records.insert(id, volume);
                }
                IMAGE_EXT => images.push((id, path)),
                KEY_EXT => keys.push((id, path)),
                _ => tracing::warn!(path = %path.display(), "ignoring unknown file in pool"),
            }
        }
        for (id, path) in images {
            if records.contains_key(&id) {
                continue;
            }
            if let Some(dev) = loopdev::find_loop_for(&path)? {
                // Never ours to lose: an attached image without metadata means someone
                // attached it by hand. Leave it and say so.
                tracing::warn!(image = %path.display(), dev = %dev.path.display(), "orphan image is attached; keeping it");
                continue;
            }
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            recovery.removed_orphan_images.push(path);
        }
        for (id, path) in keys {
            // The wrapped key of a volume whose record is gone (deleted, or a restore
            // that never committed): nothing can use it.
            if !records.contains_key(&id) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                recovery.removed_orphan_keys.push(path);
            }
        }
        for (id, volume) in &records {
            let image = self.image_path(id);
            match fs::metadata(&image) {
                Ok(m) if m.len() < volume.size_bytes => {
                    // A size lost in a crash right after create (images are not fsynced
                    // before their metadata). Growing a sparse file adds only zeros.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&image)
                        .map_err(io_err("open", &image))?;
                    file.set_len(volume.size_bytes)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err("resize", &image))?;
                    tracing::warn!(volume_id = %id, "restored image size from metadata");
                    recovery.resized_images.push(id.clone());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::error!(volume_id = %id, "metadata without image");
                    recovery.missing_images.push(id.clone());
                }
                Err(e) => return Err(io_err("stat", &image)(e).into()),
            }
        }
        self.recover_loops(&records, &mut recovery)?;
        let index = self.index.get_mut().unwrap_or_else(|e| e.into_inner());
        for (id, volume) in records {
            index.by_name.insert(volume.name.clone(), id.clone());
            index.by_id.insert(id, volume);
        }
        self.recovery = recovery;
        Ok(())
    }

    /// Loop devices backed by pool images: keep those a mount still uses, detach the
    /// rest (a crash between attach and mount, or between unmount and detach).
    fn recover_loops(
        &self,
        records: &BTreeMap<VolumeId, Volume>,
        recovery: &mut Recovery,
    ) -> Result<(), PoolError> {
        // By device and inode, not path: a predecessor in another mount namespace
        // attached these through its own bind mount of the pool (see `FileId`).
        let mut ours = HashMap::new();
        for id in records.keys() {
            if let Some(file) = loopdev::FileId::of(&self.image_path(id))? {
                ours.insert(file, id);
            }
        }
        let mounts = mountinfo::read_self()?;
        for (dev, backing) in loopdev::list_attached()? {
            let Some(&id) = ours.get(&backing) else {
                continue;
            };
            let id = id.clone();
            let users = dev.users();
            let used = mounts.iter().any(|m| users.contains(m));
            if used {
                recovery.in_use.push((id, dev));
            } else {
                loopdev::detach(&dev)?;
                tracing::info!(volume_id = %id, dev = %dev.path.display(), "detached unused loop device");
                recovery.detached.push(dev);
            }
        }
        Ok(())
    }
}

/// Take the pool directory's lock, or say who has it. The lock is on the directory's
/// inode, so it holds across processes, containers and mount namespaces, and the kernel
/// releases it when its holder exits, however it exits.
fn lock_owner(root: &Path) -> Result<Flock<fs::File>, PoolError> {
    let dir = fs::File::open(root).map_err(io_err("open", root))?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => PoolError::Busy {
            dir: root.to_path_buf(),
        },
        other => io_err("flock", root)(io::Error::from(other)).into(),
    })
}

/// Fills a new image from a content source and returns the bytes it shares with the
/// source: see [`Pool::create_volume_from`].
pub type Populate<'a> = &'a dyn Fn(&Path) -> Result<u64, PoolError>;

/// Bytes a fresh copy made with `method` shares with its source: every allocated byte
/// of a reflink, nothing of a sparse copy (its bytes are its own, and already taken
/// from the pool's free space).
pub fn shared_by_copy(method: CopyMethod, copy: &Path) -> Result<u64, PoolError> {
    match method {
        CopyMethod::Reflink => Ok(fs::metadata(copy)
            .map_err(io_err("stat", copy))?
            .blocks()
            .saturating_mul(512)),
        CopyMethod::Sparse => Ok(0),
    }
}

/// Bytes booked in the pool while a copy runs; given back on drop.
#[derive(Debug)]
pub struct Reservation<'a> {
    pool: &'a Pool,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut index = self.pool.lock();
        index.reserved = index.reserved.saturating_sub(self.bytes);
    }
}

/// A volume being created from a content source: its name is taken and its size booked
/// until it is committed or the copy fails (then both are given back on drop).
struct Copying<'a> {
    pool: &'a Pool,
    name: String,
    bytes: u64,
    finished: bool,
}

impl<'a> Copying<'a> {
    fn start(pool: &'a Pool, index: &mut Index, name: &str, bytes: u64) -> Self {
        index.creating.insert(name.to_owned());
        index.reserved = index.reserved.saturating_add(bytes);
        Self {
            pool,
            name: name.to_owned(),
            bytes,
            finished: false,
        }
    }

    /// Give back the name and the booking under the lock the caller already holds.
    fn finish(mut self, index: &mut Index) {
        self.release(index);
        self.finished = true;
    }

    fn release(&self, index: &mut Index) {
        index.creating.remove(&self.name);
        index.reserved = index.reserved.saturating_sub(self.bytes);
    }
}

impl Drop for Copying<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.release(&mut self.pool.lock());
        }
    }
}

/// Let `fill` write `image`, then grow it to `size` and make it durable; on any failure
/// nothing is left at `image`.
fn fill_image(image: &Path, size: u64, fill: Populate<'_>) -> Result<u64, PoolError> {
    let result = fill(image).and_then(|shared| {
        let file = OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(io_err("open", image))?;
        let len = file.metadata().map_err(io_err("stat", image))?.len();
        if len > size {
            // Truncating would cut the source's data: the caller sized the volume wrong.
            return Err(io_err("fill", image)(io::Error::other(format!(
                "source of {len} bytes does not fit a volume of {size} bytes"
            )))
            .into());
        }
        file.set_len(size)
            .and_then(|()| file.sync_all())
            .map_err(io_err("grow", image))?;
        Ok(shared)
    });
    if result.is_err() {
        let _ = fs::remove_file(image);
    }
    result
}

fn read_record(path: &Path) -> Result<Volume, PoolError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    let record: VolumeRecord =
        serde_json::from_slice(&bytes).map_err(|source| PoolError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
    if record.format_version > FORMAT_VERSION {
        return Err(PoolError::UnsupportedFormat {
            found: record.format_version,
        });
    }
    Ok(record.volume)
}

fn check_format(root: &Path) -> Result<(), PoolError> {
    let path = root.join(POOL_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let record: PoolRecord =
                serde_json::from_slice(&bytes).map_err(|source| PoolError::Metadata {
                    path: path.clone(),
                    source,
                })?;
            if record.format_version > FORMAT_VERSION {
                return Err(PoolError::UnsupportedFormat {
                    found: record.format_version,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let json = serde_json::to_vec(&PoolRecord {
                format_version: FORMAT_VERSION,
            })
            .map_err(|source| PoolError::Metadata {
                path: path.clone(),
                source,
            })?;
            Ok(meta::write_atomic(&path, &json).map_err(io_err("write", &path))?)
        }
        Err(e) => Err(io_err("read", &path)(e).into()),
    }
}

fn validate_name(name: &str) -> Result<(), PoolError> {
    if name.is_empty() {
        return Err(PoolError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PoolError::InvalidName("longer than 128 bytes"));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
