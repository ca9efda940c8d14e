//! Volume and snapshot work on this node's pool. The all-in-one Controller service and
//! the cluster-mode node agent ([`crate::cluster::agent`]) both do it through these
//! functions, so both hold the same per-volume claims around the same pool calls.

use crate::error::Error;
use crate::storage::node::NodeStorage;
use crate::storage::pool::{self, VolumeId};
use crate::storage::snapshot::{self, Snapshot, SnapshotId};
use crate::storage::{crypt, restore};

/// Create the volume `request` describes, filled from `source` when given. The source is
/// claimed too: it must not be deleted while it is copied.
pub async fn create_volume(
    node: &NodeStorage,
    request: pool::CreateVolumeRequest,
    source: Option<restore::Source>,
) -> Result<(pool::Volume, pool::Created), Error> {
    let encrypted = crypt::requested(&request.parameters)?;
    if encrypted {
        crypt::check_kernel()?;
    }
    if let Some(source) = &source
        && source.encrypted != encrypted
    {
        return Err(crypt::CryptError::NotEncryptable(if source.encrypted {
            "the source is encrypted: a restore or clone of it is ciphertext under the \
             source's data key, so it must be made in an encrypted StorageClass"
                .to_owned()
        } else {
            "the source is not encrypted: a restore or clone of it cannot be encrypted \
             (its data would stay in plaintext); copy the data into a new encrypted volume"
                .to_owned()
        })
        .into());
    }
    let pool = node.pool()?;
    let mut keys = vec![format!("name:{}", request.name)];
    keys.extend(source.as_ref().map(restore::Source::key));
    node.exclusive_all(&keys, move || match &source {
        Some(source) => restore::create(&pool, &request, source),
        None => Ok(pool.create_volume(&request)?),
    })
    .await
}

pub async fn delete_volume(node: &NodeStorage, id: VolumeId) -> Result<(), Error> {
    let pool = node.pool()?;
    let key = id.to_string();
    node.exclusive(&key, move || Ok(pool.delete_volume(&id)?))
        .await
}

/// Grow the image to `size` bytes; returns the size it has.
pub async fn expand_volume(node: &NodeStorage, id: VolumeId, size: u64) -> Result<u64, Error> {
    let pool = node.pool()?;
    let key = id.to_string();
    node.exclusive(&key, move || Ok(pool.expand_volume(&id, size)?))
        .await
}

/// Cut snapshot `name` of `source` (under `id` when given).
pub async fn create_snapshot(
    node: &NodeStorage,
    name: String,
    source: VolumeId,
    id: Option<SnapshotId>,
) -> Result<(Snapshot, snapshot::Created), Error> {
    let pool = node.pool()?;
    let store = node.snapshots()?;
    let keys = [format!("snapshot:{name}"), source.to_string()];
    node.exclusive_all(&keys, move || {
        Ok(store.create_as(&pool, &name, &source, id)?)
    })
    .await
}

pub async fn delete_snapshot(node: &NodeStorage, id: SnapshotId) -> Result<(), Error> {
    let store = node.snapshots()?;
    let key = id.to_string();
    node.exclusive(&key, move || Ok(store.delete(&id)?)).await
}
