//! CSI ephemeral inline volumes: a volume that lives exactly as long as one pod.
//!
//! Kubelet marks them with `csi.storage.k8s.io/ephemeral: "true"` in the volume context
//! of NodePublishVolume and never calls CreateVolume, NodeStageVolume or DeleteVolume. So
//! publish creates the volume in the local pool (named after kubelet's volume ID, which
//! makes a retried publish find it again), formats and mounts it straight at the target
//! path; unpublish unmounts, detaches and deletes it. Nothing outlives the pod.
//!
//! Volume attributes (the pod spec's `volumeAttributes`):
//! * `size` — e.g. `256Mi`, `1Gi` (default [`Limits::default_bytes`], at most
//!   [`Limits::max_bytes`]);
//! * `fsType` — `ext4` (default) or `xfs`.
//!
//! Kubelet adds `csi.storage.k8s.io/*` keys (pod name, namespace, ...); they are
//! accepted and ignored. Any other key is refused, so a misspelt attribute is an error
//! rather than a silently ignored wish.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use plinth_api::ephemeral::Limits;
use plinth_api::parse_size;

use crate::error::Error;
use crate::mount::{FsType, mountinfo};
use crate::storage::pool::{self, CapacityRange, Created, Pool, VolumeAccess, VolumeId};
use crate::storage::volume::{NodeAccess, NodeVolumes};

/// The volume-context key kubelet sets on inline volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Prefix of the keys kubelet adds on its own (pod name, namespace, uid, ...).
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";
pub const SIZE_KEY: &str = "size";
pub const FS_TYPE_KEY: &str = "fsType";
/// Pool names of inline volumes: this prefix and kubelet's volume ID.
const NAME_PREFIX: &str = "ephemeral:";
/// Parameter recorded on inline volumes, so listings can tell them apart.
pub const PARAMETER: &str = "plinth.dev/ephemeral";
/// Parameter recording an inline volume's target path (its only mount), so that a start
/// after a crash can tell a volume whose pod is gone.
pub const TARGET_PARAMETER: &str = "plinth.dev/ephemeral-target";

/// Serialises "count the node's inline volumes, then create one": publishes of different
/// inline volumes run concurrently, and two must not both take the last place.
static ADMISSION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_inline(volume: &pool::Volume) -> bool {
    volume
        .parameters
        .get(PARAMETER)
        .is_some_and(|v| v == "true")
}

/// Refuse a new inline volume the node-wide limits have no room for (a retry of one that
/// exists is always let through). Nothing is reserved before this says yes.
fn admit(pool: &Pool, name: &str, spec: InlineSpec, limits: Limits) -> Result<(), Error> {
    if pool.get_by_name(name).is_some() {
        return Ok(());
    }
    let inline: Vec<pool::Volume> = pool.list().into_iter().filter(is_inline).collect();
    if inline.len() >= limits.node_max_volumes as usize {
        return Err(Error::ResourceExhausted(format!(
            "this node already holds {} inline volumes, its limit (--ephemeral-max-volumes); \
             use a PersistentVolumeClaim or schedule the pod elsewhere",
            inline.len()
        )));
    }
    let used: u64 = inline.iter().map(|v| v.size_bytes).sum();
    if used.saturating_add(spec.size_bytes) > limits.node_max_bytes {
        return Err(Error::ResourceExhausted(format!(
            "an inline volume of {} bytes does not fit: inline volumes on this node already \
             take {used} of their {} bytes (--ephemeral-max-total-size)",
            spec.size_bytes, limits.node_max_bytes
        )));
    }
    Ok(())
}

/// Delete the inline volumes a crash orphaned: their target path is gone (kubelet
/// removed the pod's directory) and nothing has their image attached. Runs once the pool
/// is open and its loop devices recovered; returns what it deleted.
pub fn collect_orphans(pool: &Pool) -> Result<Vec<VolumeId>, pool::PoolError> {
    let mut collected = Vec::new();
    for volume in pool.list().into_iter().filter(is_inline) {
        // Volumes created before targets were recorded cannot be judged: kept.
        let Some(target) = volume.parameters.get(TARGET_PARAMETER) else {
            continue;
        };
        let target_gone = matches!(
            std::fs::symlink_metadata(target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        );
        if !target_gone || pool.attachment(&volume.id)?.is_some() {
            continue;
        }
        pool.delete_volume(&volume.id)?;
        tracing::info!(volume_id = %volume.id, %target, "deleted an inline volume whose pod is gone");
        collected.push(volume.id);
    }
    Ok(collected)
}

/// An inline volume as the attributes describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineSpec {
    pub size_bytes: u64,
    pub fs: FsType,
}

/// Whether a NodePublishVolume volume context marks an inline volume.
pub fn is_ephemeral(context: &HashMap<String, String>) -> bool {
    context.get(EPHEMERAL_KEY).is_some_and(|v| v == "true")
}

/// Parse and check the volume attributes.
pub fn spec(context: &HashMap<String, String>, limits: Limits) -> Result<InlineSpec, Error> {
    let invalid = |reason: String| Error::InvalidArgument {
        field: "volume_context",
        reason,
    };
    if context.contains_key(crate::storage::crypt::PARAMETER) {
        return Err(crate::storage::crypt::CryptError::Inline.into());
    }
    if let Some(key) = context
        .keys()
        .filter(|k| !k.starts_with(KUBELET_PREFIX))
        .find(|k| *k != SIZE_KEY && *k != FS_TYPE_KEY)
    {
        return Err(invalid(format!(
            "unknown volume attribute {key:?} for an inline volume (known: {SIZE_KEY}, {FS_TYPE_KEY})"
        )));
    }
    let size_bytes = match context.get(SIZE_KEY) {
        None => limits.default_bytes,
        Some(text) => parse_size(text).map_err(|e| invalid(format!("{SIZE_KEY}: {e}")))?,
    };
    if size_bytes == 0 {
        return Err(invalid(format!("{SIZE_KEY} must not be zero")));
    }
    if size_bytes > limits.max_bytes {
        return Err(Error::OutOfRange(format!(
            "inline volume size {size_bytes} bytes exceeds this node's limit of {} bytes",
            limits.max_bytes
        )));
    }
    let fs = context
        .get(FS_TYPE_KEY)
        .map_or(Ok(FsType::DEFAULT), |t| t.parse::<FsType>())
        .map_err(|e| invalid(format!("{FS_TYPE_KEY}: {e}")))?;
    Ok(InlineSpec { size_bytes, fs })
}

fn pool_name(kubelet_id: &str) -> Result<String, Error> {
    let name = format!("{NAME_PREFIX}{kubelet_id}");
    if name.len() > pool::MAX_NAME_LEN {
        return Err(Error::InvalidArgument {
            field: "volume_id",
            reason: format!(
                "inline volume IDs may be at most {} bytes",
                pool::MAX_NAME_LEN - NAME_PREFIX.len()
            ),
        });
    }
    Ok(name)
}

/// The pool volume backing kubelet's inline volume `kubelet_id`, if there is one.
pub fn find(pool: &Pool, kubelet_id: &str) -> Option<pool::Volume> {
    pool.get_by_name(&pool_name(kubelet_id).ok()?)
}

/// Create (or find) the inline volume and mount it at `target`. Blocking. Idempotent
/// for retries with the same attributes; a failed first publish leaves nothing behind.
#[tracing::instrument(skip(volumes, spec, limits, mount_flags), fields(kubelet_volume_id = %kubelet_id, volume_id))]
pub fn publish(
    volumes: &NodeVolumes,
    kubelet_id: &str,
    target: &Path,
    spec: InlineSpec,
    limits: Limits,
    mount_flags: Vec<String>,
    readonly: bool,
) -> Result<VolumeId, Error> {
    let pool = volumes.pool();
    let request = pool::CreateVolumeRequest {
        name: pool_name(kubelet_id)?,
        id: None,
        capacity: CapacityRange::new(spec.size_bytes, 0),
        access: VolumeAccess::Mount { fs_type: spec.fs },
        parameters: BTreeMap::from([
            (PARAMETER.to_owned(), "true".to_owned()),
            (TARGET_PARAMETER.to_owned(), target.display().to_string()),
        ]),
        content_source: None,
    };
    let (volume, created) = {
        let _admission = ADMISSION.lock().unwrap_or_else(|e| e.into_inner());
        admit(pool, &request.name, spec, limits)?;
        pool.create_volume(&request)?
    };
    tracing::Span::current().record("volume_id", volume.id.as_str());
    let access = NodeAccess::Mount {
        fs_type: Some(spec.fs),
        mount_flags,
    };
    // The target is the only mount: no staging path exists for inline volumes.
    match volumes.stage(&volume.id, target, &access, readonly) {
        Ok(outcome) => {
            tracing::info!(
                ?created,
                ?outcome,
                size = volume.size_bytes,
                "inline volume published"
            );
            Ok(volume.id)
        }
        Err(e) => {
            if created == Created::New
                && let Err(cleanup) = pool.delete_volume(&volume.id)
            {
                tracing::warn!(error = %cleanup, "removing the inline volume after a failed publish");
            }
            Err(e.into())
        }
    }
}

/// Unmount and delete the inline volume `kubelet_id` published at `target`. Blocking.
/// Returns `false` when `kubelet_id` is not an inline volume this driver knows nor one
/// it already deleted: the caller handles it as a persistent volume's ID.
#[tracing::instrument(skip(volumes), fields(kubelet_volume_id = %kubelet_id))]
pub fn unpublish(volumes: &NodeVolumes, kubelet_id: &str, target: &Path) -> Result<bool, Error> {
    let pool = volumes.pool();
    let Some(volume) = find(pool, kubelet_id) else {
        if !is_kubelet_inline_id(kubelet_id) {
            return Ok(false);
        }
        // Not a pool ID, so an inline volume already deleted by an earlier call:
        // done, unless something else is mounted at the target.
        let target = volumes.resolve(target)?;
        if let Some(entry) = mountinfo::find_mount_point(&mountinfo::read_self()?, &target) {
            return Err(Error::FailedPrecondition(format!(
                "{} is mounted from {}, not from inline volume {kubelet_id}",
                target.display(),
                entry.source
            )));
        }
        volumes.remove_leftover(&target);
        return Ok(true);
    };
    volumes.unstage(&volume.id, target)?;
    if let Ok(resolved) = volumes.resolve(target) {
        volumes.remove_leftover(&resolved);
    }
    pool.delete_volume(&volume.id)?;
    tracing::info!(volume_id = %volume.id, "inline volume deleted");
    Ok(true)
}

/// Kubelet names inline volumes `csi-` and the hex SHA-256 of the pod and volume. An
/// unknown ID of that form is an inline volume a previous unpublish already deleted (a
/// retry must succeed, or the pod never finishes terminating); any other unknown ID is
/// left to the persistent path, which answers NOT_FOUND.
pub fn is_kubelet_inline_id(id: &str) -> bool {
    id.strip_prefix("csi-")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn attributes_give_size_and_filesystem_with_defaults() {
        let limits = Limits::default();
        let ctx = context(&[
            (EPHEMERAL_KEY, "true"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
        ]);
        assert!(is_ephemeral(&ctx));
        assert_eq!(
            spec(&ctx, limits).unwrap(),
            InlineSpec {
                size_bytes: limits.default_bytes,
                fs: FsType::Ext4
            }
        );
        let ctx = context(&[(SIZE_KEY, "512Mi"), (FS_TYPE_KEY, "xfs")]);
        assert_eq!(
            spec(&ctx, limits).unwrap(),
            InlineSpec {
                size_bytes: 512 << 20,
                fs: FsType::Xfs
            }
        );
        assert!(!is_ephemeral(&context(&[(EPHEMERAL_KEY, "false")])));
    }

    #[test]
    fn bad_attributes_are_refused() {
        let limits = Limits::default();
        for bad in [
            context(&[("sizee", "1Gi")]),
            context(&[(SIZE_KEY, "lots")]),
            context(&[(SIZE_KEY, "0")]),
            context(&[(FS_TYPE_KEY, "btrfs")]),
        ] {
            assert!(
                matches!(spec(&bad, limits), Err(Error::InvalidArgument { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            spec(&context(&[(SIZE_KEY, "1Ti")]), limits),
            Err(Error::OutOfRange(_))
        ));
    }

    #[test]
    fn only_kubelet_shaped_ids_count_as_already_deleted_inline_volumes() {
        assert!(is_kubelet_inline_id(&format!("csi-{}", "0a".repeat(32))));
        assert!(!is_kubelet_inline_id("csi-abc"));
        assert!(!is_kubelet_inline_id("some-volume-id"));
        assert!(!is_kubelet_inline_id("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn long_kubelet_ids_are_refused_before_touching_the_pool() {
        assert!(pool_name(&"a".repeat(118)).is_ok());
        assert!(pool_name(&"a".repeat(119)).is_err());
    }
}
