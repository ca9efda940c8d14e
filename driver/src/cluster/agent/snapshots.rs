//! PoolSnapshot work: a snapshot of a volume in this node's pool, cut under the ID the
//! object's name gives, deleted with the object.

use std::sync::Arc;

use kube::ResourceExt;
use tracing::Instrument;

use super::{Failure, Outcome, Work, answered, generation, malformed};
use crate::error::Error;
use crate::storage::local;
use crate::storage::node::NodeStorage;
use crate::storage::pool::VolumeId;
use crate::storage::snapshot::{self, SnapshotId};
use plinth_api::cluster::crd::{
    AccessSpec, Operation, Phase, PoolSnapshot, PoolSnapshotStatus, WorkError,
};

impl Work for PoolSnapshot {
    type Status = PoolSnapshotStatus;

    fn status(&self) -> Option<&PoolSnapshotStatus> {
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

    fn failed(&self, error: WorkError) -> PoolSnapshotStatus {
        PoolSnapshotStatus {
            observed_generation: generation(self),
            phase: Phase::Failed,
            error: Some(error),
            ..self.status.clone().unwrap_or_default()
        }
    }

    async fn ensure(
        &self,
        storage: &Arc<NodeStorage>,
    ) -> Result<Outcome<PoolSnapshotStatus>, Failure> {
        let span = tracing::info_span!("create_snapshot", snapshot_id = %self.name_any());
        ensure(self, storage)
            .instrument(span)
            .await
            .map_err(Failure::during(Operation::Create))
    }

    async fn remove(&self, storage: &Arc<NodeStorage>) -> Result<(), Error> {
        // A name that is no snapshot ID never named an image.
        let Ok(id) = SnapshotId::parse(&self.name_any()) else {
            return Ok(());
        };
        let span = tracing::info_span!("delete_snapshot", snapshot_id = %id);
        local::delete_snapshot(storage, id).instrument(span).await
    }
}

async fn ensure(
    object: &PoolSnapshot,
    storage: &Arc<NodeStorage>,
) -> Result<Outcome<PoolSnapshotStatus>, Error> {
    let id = SnapshotId::parse(&object.name_any()).map_err(|e| malformed("metadata.name", &e))?;
    let source = VolumeId::parse(&object.spec.source_volume_id)
        .map_err(|e| malformed("spec.sourceVolumeId", &e))?;
    let (cut, how) =
        local::create_snapshot(storage, object.spec.name.clone(), source, Some(id)).await?;
    Ok(Outcome {
        status: PoolSnapshotStatus {
            observed_generation: generation(object),
            phase: Phase::Ready,
            size_bytes: Some(cut.size_bytes),
            created_unix_nanos: Some(cut.created_unix_nanos),
            source_access: Some(AccessSpec::from(cut.source_access)),
            error: None,
        },
        changed_pool: how == snapshot::Created::New,
    })
}
