//! The Controller service's snapshot RPCs: CreateSnapshot, DeleteSnapshot,
//! ListSnapshots and GetSnapshot, over the [`Backend`]'s snapshots (this pool's
//! [`crate::storage::snapshot::SnapshotStore`], or the nodes' in cluster mode).
//!
//! Each function validates the request and builds the answer; the backend claims the
//! names and IDs it works on (a concurrent call for the same ones answers ABORTED).
//! Switched-off snapshots answer UNIMPLEMENTED.

use plinth_csi_proto::v1;

use crate::backend::Backend;
use crate::csi::page;
use crate::csi::validate::{self, existing_id};
use crate::error::Error;
use crate::state::Driver;
use crate::storage::report::SnapshotInfo;
use crate::storage::snapshot::{Snapshot, SnapshotError, SnapshotId};

fn require_feature(driver: &Driver, rpc: &'static str) -> Result<(), Error> {
    if driver.config.features.snapshots {
        Ok(())
    } else {
        Err(Error::Unimplemented(rpc))
    }
}

/// The CSI view of a snapshot of this node's store.
pub fn to_proto(snapshot: &Snapshot) -> v1::Snapshot {
    info_proto(&SnapshotInfo::from(snapshot))
}

/// The CSI view of a snapshot, wherever it is kept.
pub fn info_proto(snapshot: &SnapshotInfo) -> v1::Snapshot {
    v1::Snapshot {
        size_bytes: i64::try_from(snapshot.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: snapshot.id.clone(),
        source_volume_id: snapshot.source_volume_id.clone(),
        creation_time: snapshot.created_unix_nanos.map(timestamp),
        ready_to_use: snapshot.ready,
        group_snapshot_id: snapshot.group_id.clone().unwrap_or_default(),
    }
}

/// Nanoseconds since the epoch as a protobuf timestamp.
pub fn timestamp(unix_nanos: u64) -> prost_types::Timestamp {
    const NANOS: u64 = 1_000_000_000;
    prost_types::Timestamp {
        seconds: i64::try_from(unix_nanos / NANOS).unwrap_or(i64::MAX),
        // Below 10^9, so it fits.
        nanos: i32::try_from(unix_nanos % NANOS).unwrap_or(0),
    }
}

pub async fn create(
    driver: &Driver,
    req: v1::CreateSnapshotRequest,
) -> Result<v1::CreateSnapshotResponse, Error> {
    require_feature(driver, "CreateSnapshot")?;
    let name = validate::name("name", &req.name)?.to_owned();
    validate::required("source_volume_id", &req.source_volume_id)?;
    let source = existing_id(&req.source_volume_id)?;
    tracing::Span::current().record("source_volume_id", source.as_str());
    let snapshot = Backend::of(driver).create_snapshot(name, source).await?;
    tracing::Span::current().record("snapshot_id", snapshot.id.as_str());
    Ok(v1::CreateSnapshotResponse {
        snapshot: Some(info_proto(&snapshot)),
    })
}

pub async fn delete(
    driver: &Driver,
    req: v1::DeleteSnapshotRequest,
) -> Result<v1::DeleteSnapshotResponse, Error> {
    require_feature(driver, "DeleteSnapshot")?;
    validate::volume_id("snapshot_id", &req.snapshot_id)?;
    // An ID this driver never issued names no snapshot: deleting it is done.
    let Ok(id) = SnapshotId::parse(&req.snapshot_id) else {
        return Ok(v1::DeleteSnapshotResponse {});
    };
    Backend::of(driver).delete_snapshot(id).await?;
    Ok(v1::DeleteSnapshotResponse {})
}

pub async fn get(
    driver: &Driver,
    req: &v1::GetSnapshotRequest,
) -> Result<v1::GetSnapshotResponse, Error> {
    require_feature(driver, "GetSnapshot")?;
    validate::volume_id("snapshot_id", &req.snapshot_id)?;
    let id = SnapshotId::parse(&req.snapshot_id).map_err(SnapshotError::from)?;
    let snapshot = Backend::of(driver).get_snapshot(&id).await?;
    Ok(v1::GetSnapshotResponse {
        snapshot: Some(info_proto(&snapshot)),
    })
}

/// Pages are ordered by snapshot ID; a token is the ID the next page starts at, so a
/// snapshot deleted between pages does not invalidate it. Filters that name something
/// that does not exist give an empty list, as the spec asks.
pub async fn list(
    driver: &Driver,
    req: &v1::ListSnapshotsRequest,
) -> Result<v1::ListSnapshotsResponse, Error> {
    require_feature(driver, "ListSnapshots")?;
    let size = page::page_size(req.max_entries)?;
    let start = page::start(&req.starting_token, SnapshotId::parse)?.map(|id| id.to_string());
    let matching: Vec<SnapshotInfo> = Backend::of(driver)
        .list_snapshots()
        .await?
        .into_iter()
        .filter(|s| req.snapshot_id.is_empty() || s.id == req.snapshot_id)
        .filter(|s| req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id)
        .collect();
    let (entries, next_token) = page::page(&matching, |s| &s.id, start.as_ref(), size);
    let entries = entries
        .iter()
        .map(|s| v1::list_snapshots_response::Entry {
            snapshot: Some(info_proto(s)),
        })
        .collect();
    Ok(v1::ListSnapshotsResponse {
        entries,
        next_token,
    })
}
