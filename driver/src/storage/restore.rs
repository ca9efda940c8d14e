//! CreateVolume with a content source: restoring a snapshot, cloning a volume.
//!
//! The new volume is an independent copy of the source's image (a reflink where the
//! pool filesystem can, a sparse copy otherwise), at least as large as the source and
//! grown to the requested size. The copy is made before the volume's metadata is
//! committed ([`crate::storage::pool::Pool::create_volume_from`]), so a crash never leaves a
//! committed volume without its data. A volume source is quiesced during the copy
//! (filesystem frozen, or raw device flushed), as for a snapshot.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::storage::IoFailure;
use crate::storage::crypt;
use crate::storage::freeze;
use crate::storage::node::NodeStorage;
use crate::storage::pool::{
    self, CapacityRange, ContentSource, Pool, PoolError, VolumeAccess, VolumeId,
};
use crate::storage::snapshot::{SnapshotError, SnapshotId};
use crate::storage::spec::{Capability, Capacity, existing_id};

/// A content source resolved to the image to copy.
#[derive(Clone, Debug)]
pub struct Source {
    pub content: ContentSource,
    pub image: PathBuf,
    pub size_bytes: u64,
    pub access: VolumeAccess,
    /// Set for clones: the live volume to quiesce while copying.
    pub live_volume: Option<VolumeId>,
    /// The source is encrypted; its wrapped data key (if it has one yet) is at `key`.
    pub encrypted: bool,
    pub key: PathBuf,
}

/// Find `content` in this node's pool (a missing source is NOT_FOUND).
pub fn resolve_content(node: &NodeStorage, content: &ContentSource) -> Result<Source, Error> {
    match content {
        ContentSource::Snapshot { snapshot_id } => {
            let id = SnapshotId::parse(snapshot_id).map_err(SnapshotError::from)?;
            let store = node.snapshots()?;
            let snapshot = store.get(&id)?;
            Ok(Source {
                content: ContentSource::Snapshot {
                    snapshot_id: id.to_string(),
                },
                image: store.image_path(&id),
                size_bytes: snapshot.size_bytes,
                access: snapshot.source_access,
                live_volume: None,
                encrypted: snapshot.encrypted,
                key: store.key_path(&id),
            })
        }
        ContentSource::Volume { volume_id } => {
            let id = existing_id(volume_id)?;
            let pool = node.pool()?;
            let volume = pool.get(&id)?;
            Ok(Source {
                content: ContentSource::Volume {
                    volume_id: id.to_string(),
                },
                image: pool.image_path(&id),
                size_bytes: volume.size_bytes,
                access: volume.access,
                encrypted: crypt::is_encrypted(&volume.parameters),
                key: pool.key_path(&id),
                live_volume: Some(id),
            })
        }
    }
}

impl Source {
    /// The in-flight key of the source, claimed while it is copied.
    pub fn key(&self) -> String {
        match &self.content {
            ContentSource::Snapshot { snapshot_id } => snapshot_id.clone(),
            ContentSource::Volume { volume_id } => volume_id.clone(),
        }
    }
}

/// The new volume's access and capacity: the source's access type (every requested
/// capability must fit it: data is never reinterpreted as another filesystem or as
/// raw blocks), and at least the source's size.
pub fn plan(
    source_access: VolumeAccess,
    source_size: u64,
    caps: &[Capability],
    capacity: Capacity,
) -> Result<(VolumeAccess, CapacityRange), Error> {
    if let Some(cap) = caps.iter().find(|c| !c.access.fits(source_access)) {
        return Err(Error::InvalidArgument {
            field: "volume_capabilities",
            reason: format!(
                "the source holds {source_access:?} data, which cannot be served as {:?}",
                cap.access
            ),
        });
    }
    if capacity.limit != 0 && capacity.limit < source_size {
        return Err(Error::OutOfRange(format!(
            "capacity_range.limit_bytes {} is below the source's size {source_size}",
            capacity.limit
        )));
    }
    Ok((
        source_access,
        CapacityRange::new(capacity.required.max(source_size), capacity.limit),
    ))
}

/// Fill a new image at `dest` from `source`; returns the bytes the copy shares with
/// its source (all it holds, for a reflink; nothing, for a sparse copy). Runs outside
/// the pool's lock, with the volume's size booked.
pub fn populate(pool: &Pool, source: &Source, dest: &Path) -> Result<u64, PoolError> {
    let device = match &source.live_volume {
        Some(id) => pool.attachment(id)?,
        None => None,
    };
    let quiesced = freeze::quiesce(device.as_ref())?;
    let method = pool::copy_image(&source.image, dest)?;
    if source.encrypted {
        // The copy is ciphertext under the source's data key: its wrapped key comes
        // along (the new volume's key file: `<id>.key` beside `<id>.img`), still bound
        // to the source until the new claim's first stage re-wraps it.
        let key = dest.with_extension("key");
        crypt::wrap::copy(&source.key, &key).map_err(|e| {
            let _ = std::fs::remove_file(&key);
            PoolError::from(IoFailure {
                op: "copy the wrapped key of",
                path: source.key.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
    }
    if !quiesced.is_intact() {
        return Err(PoolError::from(IoFailure {
            op: "copy",
            path: dest.to_path_buf(),
            source: std::io::Error::other(
                "the driver is shutting down: the source was thawed before the copy finished",
            ),
        }));
    }
    drop(quiesced);
    tracing::info!(?method, source = ?source.content, "volume content copied");
    pool::shared_by_copy(method, dest)
}

/// Create the volume `request` describes from `source`: blocking.
pub fn create(
    pool: &Pool,
    request: &pool::CreateVolumeRequest,
    source: &Source,
) -> Result<(pool::Volume, pool::Created), Error> {
    Ok(pool.create_volume_from(request, &|dest: &Path| populate(pool, source, dest))?)
}
