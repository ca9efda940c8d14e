//! The three things a worker can do once: a plain lifecycle cycle, a snapshot and
//! restore, an expansion. Each undoes everything it created, also when it fails.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use plinth_csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType};
use plinth_csi_proto::v1::{
    ControllerExpandVolumeRequest, CreateSnapshotRequest, DeleteSnapshotRequest,
    NodeExpandVolumeRequest, VolumeContentSource,
};

use crate::call::Call;
use crate::csi::{ControllerCap, NodeCap};
use crate::data;
use crate::error::Error;
use crate::stats::Recorder;
use crate::volume::Volume;
use crate::workload::{AccessKind, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// CreateVolume through DeleteVolume; every call timed, plus the whole cycle.
    Lifecycle,
    /// CreateSnapshot of a published volume holding data, CreateVolume from it (the
    /// restored data is checked), DeleteSnapshot.
    Snapshot,
    /// ControllerExpandVolume and NodeExpandVolume; `online` grows the volume while
    /// published, otherwise while only created (VolumeExpansion OFFLINE).
    Expand { online: bool },
}

impl Job {
    pub async fn run(self, work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
        match self {
            Self::Lifecycle => lifecycle(work, rec).await,
            Self::Snapshot => snapshot(work, rec).await,
            Self::Expand { online } => expand(work, rec, online).await,
        }
    }
}

async fn lifecycle(work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
    let (name, _) = work.next_name("c");
    let mut volume = Volume::new(work, name);
    let started = Instant::now();
    let outcome = async {
        volume.create(work, rec, None, Call::CreateVolume).await?;
        volume.attach(work, rec).await?;
        volume.delete(work, rec).await
    }
    .await;
    match outcome {
        Ok(()) => {
            rec.record_cycle(started.elapsed());
            Ok(())
        }
        Err(err) => {
            volume.cleanup(work).await;
            Err(err)
        }
    }
}

async fn snapshot(work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
    let (name, seed) = work.next_name("s");
    let snapshot_name = format!("{name}-snap");
    let mut source = Volume::new(work, name);
    let mut restored = Volume::new(work, format!("{}-restored", source.name));
    let mut snapshot_id: Option<String> = None;
    // Setting volumes up and down is the lifecycle suite's business; only the
    // snapshot calls are timed here.
    let mut untimed = Recorder::default();

    let outcome = async {
        source
            .create(work, &mut untimed, None, Call::CreateVolume)
            .await?;
        source.attach(work, &mut untimed).await?;
        data::write(work.access, source.target()?, seed).await?;

        let request = CreateSnapshotRequest {
            source_volume_id: source.id.clone().unwrap_or_default(),
            name: snapshot_name,
            secrets: work.secrets.clone(),
            parameters: HashMap::new(),
        };
        let first = work
            .csi
            .timed(
                rec,
                Call::CreateSnapshot,
                work.csi.controller.clone().create_snapshot(request.clone()),
            )
            .await?;
        let mut snap = first.snapshot.ok_or_else(|| Error::Protocol {
            call: Call::CreateSnapshot,
            problem: "no snapshot in the response".into(),
        })?;
        if snap.snapshot_id.is_empty() {
            return Err(Error::Protocol {
                call: Call::CreateSnapshot,
                problem: "empty snapshot_id".into(),
            });
        }
        snapshot_id = Some(snap.snapshot_id.clone());
        // The spec's way to wait for post-processing: reissue the same CreateSnapshot.
        let deadline = Instant::now() + work.csi.timeout();
        while !snap.ready_to_use {
            if Instant::now() >= deadline {
                return Err(Error::Verify(format!(
                    "snapshot {} never became ready_to_use",
                    snap.snapshot_id
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again = work
                .csi
                .call(
                    Call::CreateSnapshot,
                    work.csi.controller.clone().create_snapshot(request.clone()),
                )
                .await?;
            snap = again.snapshot.unwrap_or(snap);
        }

        let from_snapshot = VolumeContentSource {
            r#type: Some(SourceType::Snapshot(SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            })),
        };
        restored
            .create(work, rec, Some(from_snapshot), Call::RestoreVolume)
            .await?;
        restored.attach(work, &mut untimed).await?;
        data::verify(work.access, restored.target()?, seed).await?;
        restored.delete(work, &mut untimed).await?;

        let request = DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: work.secrets.clone(),
        };
        work.csi
            .timed(
                rec,
                Call::DeleteSnapshot,
                work.csi.controller.clone().delete_snapshot(request),
            )
            .await?;
        snapshot_id = None;
        source.delete(work, &mut untimed).await
    }
    .await;

    if outcome.is_err() {
        restored.cleanup(work).await;
        if let Some(id) = snapshot_id {
            let request = DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                secrets: work.secrets.clone(),
            };
            if let Err(err) = work
                .csi
                .call(
                    Call::DeleteSnapshot,
                    work.csi.controller.clone().delete_snapshot(request),
                )
                .await
            {
                eprintln!(
                    "plinth-bench: cleanup left snapshot {id} behind: {}",
                    crate::report::chain(&err)
                );
            }
        }
        source.cleanup(work).await;
    }
    outcome
}

/// Usable size as the workload sees it: the filesystem's size for mounts, the
/// device's for block.
async fn visible_size(access: AccessKind, target: &Path) -> Result<u64, Error> {
    match access {
        AccessKind::Mount => {
            let stat = nix::sys::statvfs::statvfs(target)
                .map_err(|errno| Error::io("statvfs", target)(std::io::Error::from(errno)))?;
            Ok(stat.blocks() * stat.fragment_size())
        }
        AccessKind::Block => {
            use tokio::io::AsyncSeekExt;
            let mut device = tokio::fs::File::open(target)
                .await
                .map_err(Error::io("open", target))?;
            device
                .seek(std::io::SeekFrom::End(0))
                .await
                .map_err(Error::io("seek", target))
        }
    }
}

async fn expand(work: &Workload, rec: &mut Recorder, online: bool) -> Result<(), Error> {
    let (name, _) = work.next_name("e");
    let mut volume = Volume::new(work, name);
    let mut untimed = Recorder::default();
    let new_size = work.size.saturating_mul(2);

    let outcome = async {
        volume
            .create(work, &mut untimed, None, Call::CreateVolume)
            .await?;
        volume.attach(work, &mut untimed).await?;
        let before = visible_size(work.access, volume.target()?).await?;
        if !online {
            volume.detach(work, &mut untimed).await?;
        }

        // Without the controller capability the node alone grows the volume.
        let mut node_required = work.discovery.node_can(NodeCap::ExpandVolume);
        if work.discovery.controller_can(ControllerCap::ExpandVolume) {
            let request = ControllerExpandVolumeRequest {
                volume_id: volume.id.clone().unwrap_or_default(),
                capacity_range: Some(work.capacity(new_size)),
                secrets: work.secrets.clone(),
                volume_capability: Some(work.capability()),
            };
            let response = work
                .csi
                .timed(
                    rec,
                    Call::ControllerExpandVolume,
                    work.csi
                        .controller
                        .clone()
                        .controller_expand_volume(request),
                )
                .await?;
            if u64::try_from(response.capacity_bytes).unwrap_or(0) < new_size {
                return Err(Error::Protocol {
                    call: Call::ControllerExpandVolume,
                    problem: format!(
                        "capacity_bytes {} is below the requested {new_size}",
                        response.capacity_bytes
                    ),
                });
            }
            node_required = response.node_expansion_required;
        }
        if !online {
            volume.attach(work, &mut untimed).await?;
        }
        if node_required {
            if !work.discovery.node_can(NodeCap::ExpandVolume) {
                return Err(Error::Protocol {
                    call: Call::ControllerExpandVolume,
                    problem: "node_expansion_required is set but the node lacks EXPAND_VOLUME"
                        .into(),
                });
            }
            let target = volume.target()?;
            let request = NodeExpandVolumeRequest {
                volume_id: volume.id.clone().unwrap_or_default(),
                volume_path: target.to_string_lossy().into_owned(),
                capacity_range: Some(work.capacity(new_size)),
                staging_target_path: volume
                    .staging()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                volume_capability: Some(work.capability()),
                secrets: work.secrets.clone(),
            };
            work.csi
                .timed(
                    rec,
                    Call::NodeExpandVolume,
                    work.csi.node.clone().node_expand_volume(request),
                )
                .await?;
        }

        let after = visible_size(work.access, volume.target()?).await?;
        let grown = match work.access {
            // Filesystem overhead makes the exact figure driver-specific; it must grow.
            AccessKind::Mount => after > before,
            AccessKind::Block => after >= new_size,
        };
        if !grown {
            return Err(Error::Verify(format!(
                "{} shows {after} bytes after expansion to {new_size} (was {before})",
                volume.target()?.display()
            )));
        }
        volume.delete(work, &mut untimed).await
    }
    .await;

    if outcome.is_err() {
        volume.cleanup(work).await;
    }
    outcome
}
