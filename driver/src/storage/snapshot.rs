//! Snapshots and group snapshots: read-only point-in-time copies of volume images, kept
//! in the pool's `snapshots/` directory with crash-safe metadata.
//!
//! # Layout
//!
//! ```text
//! <pool>/snapshots/snap-<hex>.img     the copy (reflink or sparse), mode 0400
//! <pool>/snapshots/snap-<hex>.json    its record: the commit point of CreateSnapshot
//! <pool>/snapshots/snap-<hex>.key     an encrypted source's wrapped data key, mode 0600
//! <pool>/snapshots/group-<hex>.json   a group snapshot: the commit point of its members
//! ```
//!
//! A snapshot is created by quiescing the source ([`crate::storage::freeze`]: FIFREEZE of a
//! mounted filesystem, a device flush of a raw block volume), copying the image
//! ([`crate::storage::pool::copy_image`]: reflink where the pool filesystem can, sparse copy
//! otherwise), thawing, then committing the record (write temp, fsync, rename, fsync
//! directory). A crash before the commit leaves an image without record, which
//! [`SnapshotStore::open`] removes; member records whose group record was never written
//! are removed the same way. Deleting removes the record first, then the image.
//!
//! Copies are independent files (a reflink shares extents copy-on-write, it does not
//! depend on its source), so deleting a volume never touches its snapshots, and deleting
//! a snapshot never touches volumes restored from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::mount::MountError;
use crate::storage::freeze::{self, Quiesced};
use crate::storage::pool::backing::{self, PoolFilesystem};
use crate::storage::pool::{
    self, CopyMethod, Pool, PoolError, Reservation, SnapshotShares, VolumeAccess, VolumeId,
    sync_dir, write_atomic,
};
use crate::storage::{IoFailure, io_err};

/// Version of the snapshot records this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const SNAPSHOTS: &str = "snapshots";
const TEMP_SUFFIX: &str = ".tmp";
const HEX_LEN: usize = 32;

/// IDs this store hands out: a fixed prefix and 128 random bits in lowercase hex. Only
/// parsed values are ever joined to a path, so an ID from a request cannot escape.
macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Validate an ID from a request.
            pub fn parse(s: &str) -> Result<Self, InvalidSnapshotId> {
                let hex = s.strip_prefix(Self::PREFIX).unwrap_or("");
                if hex.len() == HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidSnapshotId { shown: s.chars().take(64).collect() })
                }
            }

            fn generate() -> io::Result<Self> {
                // VolumeId's generator is the one source of randomness for IDs.
                Ok(Self(format!("{}{}", Self::PREFIX, VolumeId::generate()?)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidSnapshotId;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

prefixed_id!(
    /// A snapshot ID: `snap-` and 32 lowercase hex characters.
    SnapshotId,
    "snap-"
);
prefixed_id!(
    /// A group snapshot ID: `group-` and 32 lowercase hex characters.
    GroupId,
    "group-"
);

/// The ID failed validation; it was never used to touch the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed snapshot id {shown:?}: not an id this driver issued")]
pub struct InvalidSnapshotId {
    pub shown: String,
}

/// A snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: SnapshotId,
    /// The CSI name (the idempotency key); `None` for members of a group snapshot.
    pub name: Option<String>,
    pub source_volume_id: VolumeId,
    /// The source's access type: a restore must use the same.
    pub source_access: VolumeAccess,
    /// Size of the source when the snapshot was cut; a restore is at least this big.
    pub size_bytes: u64,
    /// When the point-in-time copy was cut (nanoseconds since the epoch).
    pub created_unix_nanos: u64,
    #[serde(default)]
    pub group_id: Option<GroupId>,
    /// `"reflink"` or `"sparse"`.
    pub copy_method: String,
    /// The source was encrypted: the copy is ciphertext, and its wrapped data key
    /// travels with it (a restore shares the source's data key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// A group snapshot: one point in time across several volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSnapshot {
    pub id: GroupId,
    pub name: String,
    /// Member snapshots, in the order of `source_volume_ids`.
    pub members: Vec<SnapshotId>,
    pub source_volume_ids: Vec<VolumeId>,
    pub created_unix_nanos: u64,
}

/// Whether a create made something new or found what the name names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// What a snapshot's metadata file on disk holds (serde's `kind` tag tells which).
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
enum MetadataFile {
    Snapshot {
        format_version: u32,
        #[serde(flatten)]
        snapshot: Snapshot,
    },
    Group {
        format_version: u32,
        #[serde(flatten)]
        group: GroupSnapshot,
    },
}

/// Errors of snapshot operations. Suggested gRPC codes in brackets.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// [NotFound] for lookups and restores; deletes of a malformed ID succeed.
    #[error(transparent)]
    InvalidId(#[from] InvalidSnapshotId),
    /// [NotFound]
    #[error("snapshot {0} not found")]
    NotFound(SnapshotId),
    /// [NotFound]
    #[error("group snapshot {0} not found")]
    GroupNotFound(GroupId),
    /// [NotFound]
    #[error("source volume {0} not found")]
    SourceNotFound(VolumeId),
    /// [AlreadyExists]
    #[error("snapshot name {name:?} already exists for {existing}")]
    AlreadyExists { name: String, existing: String },
    /// Another call for the same name is still copying. [Aborted]
    #[error("a snapshot named {0:?} is being created by another call")]
    Pending(String),
    /// Shutdown thawed a source before its copy finished: the copy is not kept.
    #[error("the driver is shutting down; the snapshot was not taken")]
    Interrupted,
    /// [FailedPrecondition]
    #[error("snapshot {id} belongs to group snapshot {group}; delete the group instead")]
    InGroup { id: SnapshotId, group: GroupId },
    /// [InvalidArgument]
    #[error("snapshot ids {given:?} do not match the members of group snapshot {group}")]
    MembersMismatch { group: GroupId, given: Vec<String> },
    /// [InvalidArgument]
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// [ResourceExhausted]
    #[error("{requested} bytes needed for the copy but only {available} bytes available")]
    ResourceExhausted { requested: u64, available: u64 },
    /// [Internal]
    #[error("snapshot format version {found} is newer than this driver's {FORMAT_VERSION}")]
    UnsupportedFormat { found: u32 },
    /// [Internal]
    #[error(transparent)]
    Io(#[from] IoFailure),
    /// [Internal]
    #[error("snapshot record {path}: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// [by variant]
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// [Internal]
    #[error(transparent)]
    Host(#[from] MountError),
}

#[derive(Default)]
struct Index {
    snapshots: BTreeMap<SnapshotId, Snapshot>,
    by_name: HashMap<String, SnapshotId>,
    groups: BTreeMap<GroupId, GroupSnapshot>,
    group_by_name: HashMap<String, GroupId>,
    /// Names (of snapshots and groups) whose copy is running without the lock held.
    pending: HashSet<String>,
}

/// What [`SnapshotStore::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotRecovery {
    /// Temp files of interrupted record writes and probes.
    pub removed_temp_files: Vec<PathBuf>,
    /// Images without a record (a create interrupted before its commit).
    pub removed_orphan_images: Vec<PathBuf>,
    /// Member records of a group whose own record was never committed.
    pub removed_orphan_members: Vec<SnapshotId>,
}

/// The snapshots of one pool. `Sync`: share it behind an `Arc`.
pub struct SnapshotStore {
    dir: PathBuf,
    filesystem: PoolFilesystem,
    index: Mutex<Index>,
    recovery: SnapshotRecovery,
    /// The pool's ledger of what reflinked snapshots share with volumes.
    shares: std::sync::Arc<SnapshotShares>,
}

impl fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir)
            .field("filesystem", &self.filesystem)
            .finish_non_exhaustive()
    }
}

/// One source of a create: the volume and what its copy goes to.
struct Planned {
    id: SnapshotId,
    volume: pool::Volume,
    image: PathBuf,
}

impl SnapshotStore {
    /// Open the snapshots of `pool`, recover from any crash (see [`SnapshotRecovery`])
    /// and detect how copies will be made.
    #[tracing::instrument(skip_all, fields(pool = %pool.dir().display()))]
    pub fn open(pool: &Pool) -> Result<Self, SnapshotError> {
        let dir = pool.dir().join(SNAPSHOTS);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut recovery = SnapshotRecovery::default();
        let index = recover(&dir, &mut recovery)?;
        let filesystem = backing::probe(&dir)?;
        tracing::info!(%filesystem, ?recovery, snapshots = index.snapshots.len(), "snapshots opened");
        let store = Self {
            dir,
            filesystem,
            index: Mutex::new(index),
            recovery,
            shares: pool.snapshot_shares(),
        };
        for snapshot in store.lock().snapshots.values() {
            store.count_share(snapshot)?;
        }
        Ok(store)
    }

    /// The pool filesystem and whether copies are reflinks.
    pub fn filesystem(&self) -> PoolFilesystem {
        self.filesystem
    }

    pub fn recovery(&self) -> &SnapshotRecovery {
        &self.recovery
    }

    /// The image of a snapshot (whether or not it exists).
    pub fn image_path(&self, id: &SnapshotId) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    /// The wrapped data key an encrypted source had when the snapshot was cut (absent
    /// when it was never staged).
    pub fn key_path(&self, id: &SnapshotId) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // Disk is the truth; an index left behind by a panic is still a valid cache.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut a snapshot of `source` named `name`, or return the one `name` already names.
    /// `ALREADY_EXISTS` when `name` names a snapshot of another volume.
    pub fn create(
        &self,
        pool: &Pool,
        name: &str,
        source: &VolumeId,
    ) -> Result<(Snapshot, Created), SnapshotError> {
        self.create_as(pool, name, source, None)
    }

    /// [`SnapshotStore::create`] under a chosen ID (cluster mode derives it from the
    /// name); `None` draws a random one.
    #[tracing::instrument(skip(self, pool), fields(source_volume_id = %source))]
    pub fn create_as(
        &self,
        pool: &Pool,
        name: &str,
        source: &VolumeId,
        id: Option<SnapshotId>,
    ) -> Result<(Snapshot, Created), SnapshotError> {
        let _pending = {
            let mut index = self.lock();
            if let Some(existing_id) = index.by_name.get(name) {
                let existing = &index.snapshots[existing_id];
                if id.as_ref().is_some_and(|want| want != existing_id) {
                    return Err(SnapshotError::AlreadyExists {
                        name: name.to_owned(),
                        existing: format!("snapshot {existing_id}"),
                    });
                }
                return if existing.source_volume_id == *source {
                    Ok((existing.clone(), Created::Existing))
                } else {
                    Err(SnapshotError::AlreadyExists {
                        name: name.to_owned(),
                        existing: format!("a snapshot of volume {}", existing.source_volume_id),
                    })
                };
            }
            if let Some(taken) = id.as_ref().filter(|id| index.snapshots.contains_key(*id)) {
                return Err(SnapshotError::AlreadyExists {
                    name: name.to_owned(),
                    existing: format!("snapshot {taken} under another name"),
                });
            }
            self.claim_name(&mut index, name)?
        };
        let mut chosen = id;
        let mut next_id = || chosen.take().map_or_else(SnapshotId::generate, Ok);
        let (mut cut, _booked) = self.cut(pool, std::slice::from_ref(source), &mut next_id)?;
        let (taken, mut snapshot) = cut.pop().ok_or_else(|| {
            SnapshotError::InvalidRequest("no source volume to snapshot".to_owned())
        })?;
        snapshot.name = Some(name.to_owned());
        let mut index = self.lock();
        if let Err(e) = self.commit_snapshot(&snapshot) {
            remove_quietly(&taken.image);
            return Err(e);
        }
        self.count_share(&snapshot)?;
        index.by_name.insert(name.to_owned(), snapshot.id.clone());
        index
            .snapshots
            .insert(snapshot.id.clone(), snapshot.clone());
        tracing::info!(snapshot_id = %snapshot.id, method = %snapshot.copy_method, "snapshot created");
        Ok((snapshot, Created::New))
    }

    /// Mark `name` as being created; the returned guard clears the mark.
    fn claim_name(&self, index: &mut Index, name: &str) -> Result<PendingName<'_>, SnapshotError> {
        if !index.pending.insert(name.to_owned()) {
            return Err(SnapshotError::Pending(name.to_owned()));
        }
        Ok(PendingName {
            store: self,
            name: name.to_owned(),
        })
    }

    /// Quiesce every source, copy each image, thaw: one point in time across all of
    /// them. Returns uncommitted snapshots (images written and synced, no records yet).
    ///
    /// The copies' cost is booked in the pool before they start; the booking is returned
    /// and must live until the snapshots are committed and counted.
    fn cut<'p>(
        &self,
        pool: &'p Pool,
        sources: &[VolumeId],
        next_id: &mut dyn FnMut() -> io::Result<SnapshotId>,
    ) -> Result<(Vec<(Planned, Snapshot)>, Reservation<'p>), SnapshotError> {
        let mut planned = Vec::with_capacity(sources.len());
        let mut needed: u64 = 0;
        for source in sources {
            // The pool's "volume not found" is, to a snapshot, the source it was asked for.
            let volume = pool.get(source).map_err(|e| match e {
                PoolError::NotFound(id) => SnapshotError::SourceNotFound(id),
                other => other.into(),
            })?;
            let id = next_id().map_err(io_err("generate id", Path::new("/dev/urandom")))?;
            needed = needed.saturating_add(self.copy_cost(&pool.image_path(source))?);
            let image = self.image_path(&id);
            planned.push(Planned { id, volume, image });
        }
        let reservation = match pool.reserve(needed) {
            Ok(r) => r,
            Err(PoolError::ResourceExhausted {
                requested,
                available,
            }) => {
                return Err(SnapshotError::ResourceExhausted {
                    requested,
                    available,
                });
            }
            Err(e) => return Err(e.into()),
        };
        // Freeze in a stable order; all stay frozen until every copy is done.
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by(|&a, &b| planned[a].volume.id.cmp(&planned[b].volume.id));
        let mut quiesced = Vec::with_capacity(planned.len());
        for &i in &order {
            let dev = pool.attachment(&planned[i].volume.id)?;
            quiesced.push(freeze::quiesce(dev.as_ref())?);
        }
        let created_unix_nanos = now_nanos();
        let mut out = Vec::with_capacity(planned.len());
        let mut result = Ok(());
        for p in planned {
            let encrypted = crate::storage::crypt::is_encrypted(&p.volume.parameters);
            let copied =
                copy_snapshot_image(&pool.image_path(&p.volume.id), &p.image).and_then(|method| {
                    if encrypted {
                        crate::storage::crypt::wrap::copy(
                            &pool.key_path(&p.volume.id),
                            &self.key_path(&p.id),
                        )
                        .map_err(|e| {
                            SnapshotError::from(IoFailure {
                                op: "copy the wrapped key of",
                                path: pool.key_path(&p.volume.id),
                                source: io::Error::other(e.to_string()),
                            })
                        })?;
                    }
                    Ok(method)
                });
            match copied {
                Ok(method) => {
                    let snapshot = Snapshot {
                        id: p.id.clone(),
                        name: None,
                        source_volume_id: p.volume.id.clone(),
                        source_access: p.volume.access,
                        size_bytes: p.volume.size_bytes,
                        created_unix_nanos,
                        group_id: None,
                        copy_method: method_name(method).to_owned(),
                        encrypted,
                    };
                    out.push((p, snapshot));
                }
                Err(e) => {
                    remove_quietly(&p.image);
                    remove_quietly(&self.key_path(&p.id));
                    result = Err(e);
                    break;
                }
            }
        }
        log_quiesced(&quiesced);
        if result.is_ok() && !quiesced.iter().all(Quiesced::is_intact) {
            result = Err(SnapshotError::Interrupted);
        }
        drop(quiesced);
        if let Err(e) = result {
            for (p, _) in &out {
                remove_quietly(&p.image);
                remove_quietly(&self.key_path(&p.id));
            }
            return Err(e);
        }
        Ok((out, reservation))
    }

    /// Bytes a copy of `image` may take from the pool: its allocated blocks. A sparse
    /// copy takes them now; a reflink takes nothing now, but overwriting its source
    /// allocates them again, so it owes them as long as it lives.
    fn copy_cost(&self, image: &Path) -> Result<u64, SnapshotError> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(image).map_err(io_err("stat", image))?;
        Ok(meta.blocks().saturating_mul(512))
    }

    /// Tell the pool what `snapshot` shares with volumes (a reflinked one: its allocated
    /// bytes; it is read-only, so that never changes).
    fn count_share(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        if snapshot.copy_method == method_name(CopyMethod::Reflink) {
            let image = self.image_path(&snapshot.id);
            let shared = pool::shared_by_copy(CopyMethod::Reflink, &image)?;
            self.shares.set(snapshot.id.as_str(), shared);
        }
        Ok(())
    }

    fn commit_snapshot(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        self.write_record(
            snapshot.id.as_str(),
            &MetadataFile::Snapshot {
                format_version: FORMAT_VERSION,
                snapshot: snapshot.clone(),
            },
        )
    }

    fn write_record(&self, id: &str, record: &MetadataFile) -> Result<(), SnapshotError> {
        let path = self.record_path(id);
        let json = serde_json::to_vec_pretty(record).map_err(|source| SnapshotError::Metadata {
            path: path.clone(),
            source,
        })?;
        Ok(write_atomic(&path, &json).map_err(io_err("write", &path))?)
    }

    fn remove_record(&self, id: &str) -> Result<(), SnapshotError> {
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e).into()),
        }
    }

    /// Remove a snapshot's image and its wrapped key, if any.
    fn remove_image(&self, id: &SnapshotId) -> Result<(), SnapshotError> {
        for file in [self.image_path(id), self.key_path(id)] {
            match fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &file)(e).into()),
            }
        }
        Ok(())
    }

    /// Delete a snapshot. Unknown IDs succeed; members of a group snapshot are refused
    /// ([`SnapshotError::InGroup`]): they go with their group.
    #[tracing::instrument(skip(self), fields(snapshot_id = %id))]
    pub fn delete(&self, id: &SnapshotId) -> Result<(), SnapshotError> {
        let mut index = self.lock();
        if let Some(group) = index.snapshots.get(id).and_then(|s| s.group_id.clone()) {
            return Err(SnapshotError::InGroup {
                id: id.clone(),
                group,
            });
        }
        // Record first: once it is gone the image is an orphan the next open removes.
        self.remove_record(id.as_str())?;
        self.remove_image(id)?;
        self.shares.set(id.as_str(), 0);
        if let Some(snapshot) = index.snapshots.remove(id) {
            if let Some(name) = snapshot.name {
                index.by_name.remove(&name);
            }
            tracing::info!("snapshot deleted");
        }
        Ok(())
    }

    /// A snapshot by ID.
    pub fn get(&self, id: &SnapshotId) -> Result<Snapshot, SnapshotError> {
        self.lock()
            .snapshots
            .get(id)
            .cloned()
            .ok_or_else(|| SnapshotError::NotFound(id.clone()))
    }

    /// All snapshots, sorted by ID (stable order for pagination).
    pub fn list(&self) -> Vec<Snapshot> {
        self.lock().snapshots.values().cloned().collect()
    }

    /// Cut one snapshot of every volume in `sources` at a single point in time (all
    /// frozen together), or return the group `name` already names. `ALREADY_EXISTS`
    /// when `name` names a group of other volumes.
    #[tracing::instrument(skip(self, pool, sources), fields(volumes = sources.len()))]
    pub fn create_group(
        &self,
        pool: &Pool,
        name: &str,
        sources: &[VolumeId],
    ) -> Result<(GroupSnapshot, Vec<Snapshot>, Created), SnapshotError> {
        let unique: BTreeSet<&VolumeId> = sources.iter().collect();
        if sources.is_empty() || unique.len() != sources.len() {
            return Err(SnapshotError::InvalidRequest(
                "source_volume_ids must name at least one volume, each once".to_owned(),
            ));
        }
        let _pending = {
            let mut index = self.lock();
            if let Some(id) = index.group_by_name.get(name) {
                let group = &index.groups[id];
                let same: BTreeSet<&VolumeId> = group.source_volume_ids.iter().collect();
                return if same == unique {
                    let members = members_of(&index, group)?;
                    Ok((group.clone(), members, Created::Existing))
                } else {
                    Err(SnapshotError::AlreadyExists {
                        name: name.to_owned(),
                        existing: format!("group snapshot {id} of other volumes"),
                    })
                };
            }
            self.claim_name(&mut index, &format!("group:{name}"))?
        };
        let group_id =
            GroupId::generate().map_err(io_err("generate id", Path::new("/dev/urandom")))?;
        let (cut, _booked) = self.cut(pool, sources, &mut SnapshotId::generate)?;
        let remove_all = |cut: &[(Planned, Snapshot)]| {
            for (p, s) in cut {
                let _ = self.remove_record(s.id.as_str());
                remove_quietly(&p.image);
            }
        };
        let mut members = Vec::with_capacity(cut.len());
        for (_, snapshot) in &cut {
            let mut snapshot = snapshot.clone();
            snapshot.group_id = Some(group_id.clone());
            if let Err(e) = self.commit_snapshot(&snapshot) {
                remove_all(&cut);
                return Err(e);
            }
            members.push(snapshot);
        }
        let group = GroupSnapshot {
            id: group_id.clone(),
            name: name.to_owned(),
            members: members.iter().map(|s| s.id.clone()).collect(),
            source_volume_ids: sources.to_vec(),
            created_unix_nanos: members
                .first()
                .map_or_else(now_nanos, |s| s.created_unix_nanos),
        };
        let mut index = self.lock();
        // The group record is the commit point of the whole group.
        let record = MetadataFile::Group {
            format_version: FORMAT_VERSION,
            group: group.clone(),
        };
        if let Err(e) = self.write_record(group_id.as_str(), &record) {
            remove_all(&cut);
            return Err(e);
        }
        for snapshot in &members {
            self.count_share(snapshot)?;
            index
                .snapshots
                .insert(snapshot.id.clone(), snapshot.clone());
        }
        index
            .group_by_name
            .insert(name.to_owned(), group_id.clone());
        index.groups.insert(group_id.clone(), group.clone());
        tracing::info!(group_snapshot_id = %group_id, "group snapshot created");
        Ok((group, members, Created::New))
    }

    /// A group snapshot and its members. `snapshot_ids`, when given, must be exactly
    /// the members ([`SnapshotError::MembersMismatch`] otherwise).
    pub fn get_group(
        &self,
        id: &GroupId,
        snapshot_ids: &[String],
    ) -> Result<(GroupSnapshot, Vec<Snapshot>), SnapshotError> {
        let index = self.lock();
        let group = index
            .groups
            .get(id)
            .ok_or_else(|| SnapshotError::GroupNotFound(id.clone()))?;
        check_members(group, snapshot_ids)?;
        Ok((group.clone(), members_of(&index, group)?))
    }

    /// Delete a group snapshot with all its members. Unknown IDs succeed.
    #[tracing::instrument(skip(self, snapshot_ids), fields(group_snapshot_id = %id))]
    pub fn delete_group(&self, id: &GroupId, snapshot_ids: &[String]) -> Result<(), SnapshotError> {
        let mut index = self.lock();
        let Some(group) = index.groups.get(id).cloned() else {
            return Ok(());
        };
        check_members(&group, snapshot_ids)?;
        // The group record first: without it, the next open removes the members.
        self.remove_record(id.as_str())?;
        index.groups.remove(id);
        index.group_by_name.remove(&group.name);
        for member in &group.members {
            self.remove_record(member.as_str())?;
            self.remove_image(member)?;
            self.shares.set(member.as_str(), 0);
            index.snapshots.remove(member);
        }
        tracing::info!("group snapshot deleted");
        Ok(())
    }
}

/// Clears a pending name when the create that claimed it ends, however it ends.
struct PendingName<'a> {
    store: &'a SnapshotStore,
    name: String,
}

impl Drop for PendingName<'_> {
    fn drop(&mut self) {
        self.store.lock().pending.remove(&self.name);
    }
}

fn check_members(group: &GroupSnapshot, given: &[String]) -> Result<(), SnapshotError> {
    if given.is_empty() {
        return Ok(());
    }
    let given_set: BTreeSet<&str> = given.iter().map(String::as_str).collect();
    let members: BTreeSet<&str> = group.members.iter().map(SnapshotId::as_str).collect();
    if given_set == members && given.len() == members.len() {
        Ok(())
    } else {
        Err(SnapshotError::MembersMismatch {
            group: group.id.clone(),
            given: given.to_vec(),
        })
    }
}

fn members_of(index: &Index, group: &GroupSnapshot) -> Result<Vec<Snapshot>, SnapshotError> {
    group
        .members
        .iter()
        .map(|id| {
            index
                .snapshots
                .get(id)
                .cloned()
                .ok_or_else(|| SnapshotError::NotFound(id.clone()))
        })
        .collect()
}

fn log_quiesced(quiesced: &[Quiesced]) {
    for q in quiesced {
        match q {
            Quiesced::Idle => {}
            Quiesced::Flushed { device } => {
                tracing::debug!(device = %device.display(), "copied a flushed raw block volume");
            }
            Quiesced::Frozen(fs) => {
                tracing::debug!(mount_point = %fs.mount_point().display(), "copied a frozen filesystem");
            }
        }
    }
}

/// Copy an image into the store and make the copy read-only.
fn copy_snapshot_image(src: &Path, dest: &Path) -> Result<CopyMethod, SnapshotError> {
    let method = pool::copy_image(src, dest)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o400)).map_err(io_err("chmod", dest))?;
    Ok(method)
}

/// The name snapshot records use for a copy method.
pub fn method_name(method: CopyMethod) -> &'static str {
    match method {
        CopyMethod::Reflink => "reflink",
        CopyMethod::Sparse => "sparse",
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove; the next start will");
    }
}

/// Load every record under `dir` and remove what an interrupted operation left.
fn recover(dir: &Path, recovery: &mut SnapshotRecovery) -> Result<Index, SnapshotError> {
    let mut snapshots = BTreeMap::new();
    let mut groups = BTreeMap::new();
    let mut images = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read_dir", dir))? {
        let entry = entry.map_err(io_err("read_dir", dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "ignoring non-UTF-8 file among snapshots");
            continue;
        };
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            recovery.removed_temp_files.push(path);
            continue;
        }
        match name.rsplit_once('.') {
            Some((stem, "json"))
                if SnapshotId::parse(stem).is_ok() || GroupId::parse(stem).is_ok() =>
            {
                match read_record(&path)? {
                    MetadataFile::Snapshot { snapshot, .. } => {
                        snapshots.insert(snapshot.id.clone(), snapshot);
                    }
                    MetadataFile::Group { group, .. } => {
                        groups.insert(group.id.clone(), group);
                    }
                }
            }
            Some((stem, "img" | "key")) => match SnapshotId::parse(stem) {
                Ok(id) => images.push((id, path)),
                Err(_) => {
                    tracing::warn!(path = %path.display(), "ignoring unknown file among snapshots")
                }
            },
            _ => tracing::warn!(path = %path.display(), "ignoring unknown file among snapshots"),
        }
    }
    let orphans: Vec<SnapshotId> = snapshots
        .values()
        .filter(|s: &&Snapshot| s.group_id.as_ref().is_some_and(|g| !groups.contains_key(g)))
        .map(|s| s.id.clone())
        .collect();
    for id in orphans {
        let record = dir.join(format!("{id}.json"));
        fs::remove_file(&record).map_err(io_err("remove", &record))?;
        snapshots.remove(&id);
        recovery.removed_orphan_members.push(id);
    }
    for (id, path) in images {
        if !snapshots.contains_key(&id) {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            recovery.removed_orphan_images.push(path);
        }
    }
    sync_dir(dir).map_err(io_err("sync", dir))?;
    let mut index = Index::default();
    for snapshot in snapshots.into_values() {
        if let Some(name) = &snapshot.name {
            index.by_name.insert(name.clone(), snapshot.id.clone());
        }
        index.snapshots.insert(snapshot.id.clone(), snapshot);
    }
    for group in groups.into_values() {
        index
            .group_by_name
            .insert(group.name.clone(), group.id.clone());
        index.groups.insert(group.id.clone(), group);
    }
    Ok(index)
}

fn read_record(path: &Path) -> Result<MetadataFile, SnapshotError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    let record: MetadataFile =
        serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
    let (MetadataFile::Snapshot { format_version, .. }
    | MetadataFile::Group { format_version, .. }) = &record;
    if *format_version > FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedFormat {
            found: *format_version,
        });
    }
    Ok(record)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_hex_and_nothing_else() {
        let id = SnapshotId::generate().unwrap();
        assert!(id.as_str().starts_with("snap-"));
        assert_eq!(SnapshotId::parse(id.as_str()).unwrap(), id);
        let group = GroupId::generate().unwrap();
        assert!(SnapshotId::parse(group.as_str()).is_err());
        for bad in [
            "",
            "snap-",
            "snap-../../etc/passwd",
            "0123456789abcdef0123456789abcdef",
            "snap-0123456789ABCDEF0123456789abcdef",
            "snap-0123456789abcdef0123456789abcdef/",
            "group-0123456789abcdef0123456789abcdef",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn group(members: &[&str]) -> GroupSnapshot {
        GroupSnapshot {
            id: GroupId::parse("group-0123456789abcdef0123456789abcdef").unwrap(),
            name: "g".into(),
            members: members
                .iter()
                .map(|m| SnapshotId::parse(m).unwrap())
                .collect(),
            source_volume_ids: Vec::new(),
            created_unix_nanos: 0,
        }
    }

    #[test]
    fn member_lists_must_match_exactly() {
        let a = "snap-0123456789abcdef0123456789abcdea";
        let b = "snap-0123456789abcdef0123456789abcdeb";
        let g = group(&[a, b]);
        assert!(check_members(&g, &[]).is_ok());
        assert!(check_members(&g, &[b.into(), a.into()]).is_ok());
        assert!(check_members(&g, &[a.into()]).is_err());
        assert!(check_members(&g, &[a.into(), a.into()]).is_err());
        assert!(check_members(&g, &[a.into(), b.into(), a.into()]).is_err());
    }
}
