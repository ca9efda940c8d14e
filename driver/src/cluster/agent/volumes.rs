//! PoolVolume work: the volume's image in this node's pool, created (from a snapshot or
//! a volume when the spec names one), grown when `spec.sizeBytes` rises, deleted with
//! the object.

use std::sync::Arc;

use kube::ResourceExt;
use tracing::Instrument;

use super::{Failure, Outcome, Work, answered, generation, malformed};
use crate::cluster::convert::content_source;
use crate::error::Error;
use crate::storage::local;
use crate::storage::node::{NodeStorage, blocking};
use crate::storage::pool::{self, CapacityRange, ContentSource, Created, VolumeId};
use crate::storage::restore;
use plinth_api::cluster::crd::{
    ContentSourceSpec, Operation, Phase, PoolVolume, PoolVolumeSpec, PoolVolumeStatus, WorkError,
};

impl Work for PoolVolume {
    type Status = PoolVolumeStatus;

    fn status(&self) -> Option<&PoolVolumeStatus> {
        self.status.as_ref()
    }

    fn placement(&self) -> (&str, &str) {
        (&self.spec.driver, &self.spec.node)
    }

    fn is_done(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| answered(self, s.observed_generation, s.phase))
    }

    fn failed(&self, error: WorkError) -> PoolVolumeStatus {
        PoolVolumeStatus {
            observed_generation: generation(self),
            phase: Phase::Failed,
            error: Some(error),
            // The image keeps the size it had: a failed expansion changed nothing.
            ..self.status.clone().unwrap_or_default()
        }
    }

    async fn ensure(
        &self,
        storage: &Arc<NodeStorage>,
    ) -> Result<Outcome<PoolVolumeStatus>, Failure> {
        ensure(self, storage).await
    }

    async fn remove(&self, storage: &Arc<NodeStorage>) -> Result<(), Error> {
        let name = self.name_any();
        // A name that is no volume ID never named an image.
        let Ok(id) = VolumeId::parse(&name) else {
            return Ok(());
        };
        let span = tracing::info_span!("delete_volume", volume_id = %id);
        local::delete_volume(storage, id).instrument(span).await
    }
}

#[tracing::instrument(skip_all, fields(volume_id = %volume.name_any()))]
async fn ensure(
    volume: &PoolVolume,
    storage: &Arc<NodeStorage>,
) -> Result<Outcome<PoolVolumeStatus>, Failure> {
    let spec = &volume.spec;
    let id = VolumeId::parse(&volume.name_any())
        .map_err(|e| malformed("metadata.name", &e))
        .map_err(Failure::during(Operation::Create))?;
    let existing = {
        let storage = storage.clone();
        let id = id.clone();
        blocking(move || Ok(storage.pool()?.get(&id).ok()))
            .await
            .map_err(Failure::during(Operation::Create))?
    };
    // Another name holding this ID falls through to create, which refuses it.
    let (size, changed_pool) = match existing.filter(|v| v.name == spec.name) {
        Some(found) if found.size_bytes >= spec.size_bytes => (found.size_bytes, false),
        Some(found) => {
            let size = local::expand_volume(storage, id, spec.size_bytes)
                .await
                .map_err(Failure::during(Operation::Expand))?;
            tracing::info!(from = found.size_bytes, to = size, "volume expanded");
            (size, true)
        }
        None => {
            let (created, how) = create(storage, id, spec)
                .await
                .map_err(Failure::during(Operation::Create))?;
            (created.size_bytes, how == Created::New)
        }
    };
    Ok(Outcome {
        status: PoolVolumeStatus {
            observed_generation: generation(volume),
            phase: Phase::Ready,
            size_bytes: Some(size),
            error: None,
        },
        changed_pool,
    })
}

/// Creates the image at exactly `spec.sizeBytes` (the controller already applied the
/// capacity range and the filesystem's minimum).
async fn create(
    storage: &Arc<NodeStorage>,
    id: VolumeId,
    spec: &PoolVolumeSpec,
) -> Result<(pool::Volume, Created), Error> {
    let source = match spec.content_source.as_ref().map(content) {
        None => None,
        Some(content) => {
            let content = content?;
            let storage = storage.clone();
            Some(blocking(move || restore::resolve_content(&storage, &content)).await?)
        }
    };
    let request = pool::CreateVolumeRequest {
        name: spec.name.clone(),
        id: Some(id),
        capacity: CapacityRange::new(spec.size_bytes, spec.size_bytes),
        access: spec.access.into(),
        parameters: spec.parameters.clone(),
        content_source: source.as_ref().map(|s| s.content.clone()),
    };
    // The pool logs the creation itself.
    local::create_volume(storage, request, source).await
}

fn content(spec: &ContentSourceSpec) -> Result<ContentSource, Error> {
    content_source(spec).ok_or_else(|| Error::InvalidArgument {
        field: "spec.contentSource",
        reason: "must name exactly one of snapshotId and volumeId".to_owned(),
    })
}
