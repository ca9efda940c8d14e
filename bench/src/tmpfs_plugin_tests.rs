//! The snapshot and expansion phases end to end, against a small plugin whose volumes
//! are tmpfs mounts. Needs root (mount(2)); fails loudly without it.
//!
//! The plugin is deliberately simple but real: staging mounts a tmpfs of the volume's
//! size and loads the volume's files into it, publishing bind-mounts it, a snapshot
//! copies the files, expansion remounts the tmpfs bigger. So every check the benchmark
//! makes (mount points, data read back from a restore, the size the workload sees)
//! runs against the kernel, not against canned answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{MsFlags, mount, umount};
use plinth_csi_proto::v1::{self, controller_server, identity_server, node_server};
use tonic::{Request, Response, Status};

use crate::call::Call;
use crate::error::Error;
use crate::jobs::Job;
use crate::test_support::{self, Harness, service};

struct Store {
    root: PathBuf,
    /// Restore volumes with one byte of each file flipped.
    corrupt_restore: bool,
    /// volume_id -> (capacity, staging path while staged)
    volumes: Mutex<HashMap<String, (i64, Option<PathBuf>)>>,
    log: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Tmpfs(Arc<Store>);

fn internal(err: impl std::fmt::Display) -> Status {
    Status::internal(err.to_string())
}

/// Copies the regular files of `from` into `to` (the benchmark writes one flat file).
fn copy_files(from: &Path, to: &Path) -> Result<(), Status> {
    for entry in std::fs::read_dir(from).map_err(internal)? {
        let entry = entry.map_err(internal)?;
        if entry.file_type().map_err(internal)?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(internal)?;
        }
    }
    Ok(())
}

/// Flips byte 4096 of every file in `dir`.
fn corrupt_files(dir: &Path) -> Result<(), Status> {
    use std::os::unix::fs::FileExt;
    for entry in std::fs::read_dir(dir).map_err(internal)? {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(entry.map_err(internal)?.path())
            .map_err(internal)?;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 4096).map_err(internal)?;
        file.write_all_at(&[!byte[0]], 4096).map_err(internal)?;
    }
    Ok(())
}

impl Tmpfs {
    fn log(&self, entry: impl Into<String>) {
        self.0.log.lock().unwrap().push(entry.into());
    }

    fn volume_dir(&self, id: &str) -> PathBuf {
        self.0.root.join("volumes").join(id)
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.0.root.join("snapshots").join(id)
    }

    fn capacity(&self, id: &str) -> Result<i64, Status> {
        self.0
            .volumes
            .lock()
            .unwrap()
            .get(id)
            .map(|v| v.0)
            .ok_or_else(|| Status::not_found(id.to_owned()))
    }

    /// Where the volume's current files are: its tmpfs while staged, else its directory.
    fn live_dir(&self, id: &str) -> Result<PathBuf, Status> {
        let volumes = self.0.volumes.lock().unwrap();
        let (_, staged) = volumes
            .get(id)
            .ok_or_else(|| Status::not_found(id.to_owned()))?;
        Ok(staged.clone().unwrap_or_else(|| self.volume_dir(id)))
    }
}

service!(Tmpfs, identity_server::Identity {
    async fn get_plugin_info(&self, _: Request<v1::GetPluginInfoRequest>) -> Result<Response<v1::GetPluginInfoResponse>, Status> {
        Ok(Response::new(v1::GetPluginInfoResponse { name: "tmpfs.test".into(), vendor_version: "0".into(), manifest: Default::default() }))
    }
    async fn get_plugin_capabilities(&self, _: Request<v1::GetPluginCapabilitiesRequest>) -> Result<Response<v1::GetPluginCapabilitiesResponse>, Status> {
        use v1::plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
        let capabilities = vec![
            v1::PluginCapability { r#type: Some(Type::Service(Service { r#type: service::Type::ControllerService as i32 })) },
            v1::PluginCapability { r#type: Some(Type::VolumeExpansion(VolumeExpansion { r#type: volume_expansion::Type::Online as i32 })) },
        ];
        Ok(Response::new(v1::GetPluginCapabilitiesResponse { capabilities }))
    }
    async fn probe(&self, _: Request<v1::ProbeRequest>) -> Result<Response<v1::ProbeResponse>, Status> {
        Ok(Response::new(v1::ProbeResponse { ready: Some(true) }))
    }
} unimplemented {});

service!(Tmpfs, controller_server::Controller {
    async fn create_volume(&self, request: Request<v1::CreateVolumeRequest>) -> Result<Response<v1::CreateVolumeResponse>, Status> {
        let r = request.into_inner();
        let id = format!("vol-{}", r.name);
        let capacity = r.capacity_range.map_or(1 << 20, |c| c.required_bytes);
        let dir = self.volume_dir(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let source = match r.volume_content_source.and_then(|s| s.r#type) {
            Some(v1::volume_content_source::Type::Snapshot(s)) => {
                copy_files(&self.snapshot_dir(&s.snapshot_id), &dir)?;
                if self.0.corrupt_restore {
                    corrupt_files(&dir)?;
                }
                format!(" from {}", s.snapshot_id)
            }
            _ => String::new(),
        };
        self.log(format!("CreateVolume {id}{source}"));
        self.0.volumes.lock().unwrap().insert(id.clone(), (capacity, None));
        let volume = v1::Volume { capacity_bytes: capacity, volume_id: id, ..Default::default() };
        Ok(Response::new(v1::CreateVolumeResponse { volume: Some(volume) }))
    }
    async fn delete_volume(&self, request: Request<v1::DeleteVolumeRequest>) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        let id = request.into_inner().volume_id;
        self.log(format!("DeleteVolume {id}"));
        self.0.volumes.lock().unwrap().remove(&id);
        let _ = std::fs::remove_dir_all(self.volume_dir(&id));
        Ok(Response::new(v1::DeleteVolumeResponse {}))
    }
    async fn controller_get_capabilities(&self, _: Request<v1::ControllerGetCapabilitiesRequest>) -> Result<Response<v1::ControllerGetCapabilitiesResponse>, Status> {
        use v1::controller_service_capability::{Rpc, Type, rpc};
        let capabilities = [rpc::Type::CreateDeleteVolume, rpc::Type::CreateDeleteSnapshot, rpc::Type::ExpandVolume]
            .into_iter()
            .map(|t| v1::ControllerServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) })
            .collect();
        Ok(Response::new(v1::ControllerGetCapabilitiesResponse { capabilities }))
    }
    async fn create_snapshot(&self, request: Request<v1::CreateSnapshotRequest>) -> Result<Response<v1::CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let id = format!("snap-{}", r.name);
        let dir = self.snapshot_dir(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        copy_files(&self.live_dir(&r.source_volume_id)?, &dir)?;
        self.log(format!("CreateSnapshot {id} of {}", r.source_volume_id));
        let snapshot = v1::Snapshot {
            size_bytes: self.capacity(&r.source_volume_id)?,
            snapshot_id: id,
            source_volume_id: r.source_volume_id,
            creation_time: Some(prost_types::Timestamp::default()),
            ready_to_use: true,
            group_snapshot_id: String::new(),
        };
        Ok(Response::new(v1::CreateSnapshotResponse { snapshot: Some(snapshot) }))
    }
    async fn delete_snapshot(&self, request: Request<v1::DeleteSnapshotRequest>) -> Result<Response<v1::DeleteSnapshotResponse>, Status> {
        let id = request.into_inner().snapshot_id;
        self.log(format!("DeleteSnapshot {id}"));
        let _ = std::fs::remove_dir_all(self.snapshot_dir(&id));
        Ok(Response::new(v1::DeleteSnapshotResponse {}))
    }
    async fn controller_expand_volume(&self, request: Request<v1::ControllerExpandVolumeRequest>) -> Result<Response<v1::ControllerExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        let wanted = r.capacity_range.map_or(0, |c| c.required_bytes);
        self.log(format!("ControllerExpandVolume {} to {wanted}", r.volume_id));
        let mut volumes = self.0.volumes.lock().unwrap();
        let volume = volumes.get_mut(&r.volume_id).ok_or_else(|| Status::not_found(r.volume_id.clone()))?;
        volume.0 = volume.0.max(wanted);
        Ok(Response::new(v1::ControllerExpandVolumeResponse { capacity_bytes: volume.0, node_expansion_required: true }))
    }
} unimplemented {
    controller_publish_volume: ControllerPublishVolumeRequest => ControllerPublishVolumeResponse,
    controller_unpublish_volume: ControllerUnpublishVolumeRequest => ControllerUnpublishVolumeResponse,
    validate_volume_capabilities: ValidateVolumeCapabilitiesRequest => ValidateVolumeCapabilitiesResponse,
    list_volumes: ListVolumesRequest => ListVolumesResponse,
    get_capacity: GetCapacityRequest => GetCapacityResponse,
    list_snapshots: ListSnapshotsRequest => ListSnapshotsResponse,
    get_snapshot: GetSnapshotRequest => GetSnapshotResponse,
    controller_get_volume: ControllerGetVolumeRequest => ControllerGetVolumeResponse,
    controller_modify_volume: ControllerModifyVolumeRequest => ControllerModifyVolumeResponse,
});

service!(Tmpfs, node_server::Node {
    async fn node_stage_volume(&self, request: Request<v1::NodeStageVolumeRequest>) -> Result<Response<v1::NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        let staging = PathBuf::from(&r.staging_target_path);
        let size = format!("size={}", self.capacity(&r.volume_id)?);
        mount(Some("tmpfs"), &staging, Some("tmpfs"), MsFlags::empty(), Some(size.as_str())).map_err(internal)?;
        copy_files(&self.volume_dir(&r.volume_id), &staging)?;
        self.0.volumes.lock().unwrap().entry(r.volume_id.clone()).and_modify(|v| v.1 = Some(staging));
        self.log(format!("NodeStageVolume {}", r.volume_id));
        Ok(Response::new(v1::NodeStageVolumeResponse {}))
    }
    async fn node_unstage_volume(&self, request: Request<v1::NodeUnstageVolumeRequest>) -> Result<Response<v1::NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        let staging = PathBuf::from(&r.staging_target_path);
        copy_files(&staging, &self.volume_dir(&r.volume_id))?;
        umount(&staging).map_err(internal)?;
        self.0.volumes.lock().unwrap().entry(r.volume_id.clone()).and_modify(|v| v.1 = None);
        self.log(format!("NodeUnstageVolume {}", r.volume_id));
        Ok(Response::new(v1::NodeUnstageVolumeResponse {}))
    }
    async fn node_publish_volume(&self, request: Request<v1::NodePublishVolumeRequest>) -> Result<Response<v1::NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        std::fs::create_dir(&r.target_path).map_err(internal)?;
        mount(Some(r.staging_target_path.as_str()), r.target_path.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(internal)?;
        self.log(format!("NodePublishVolume {}", r.volume_id));
        Ok(Response::new(v1::NodePublishVolumeResponse {}))
    }
    async fn node_unpublish_volume(&self, request: Request<v1::NodeUnpublishVolumeRequest>) -> Result<Response<v1::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        umount(r.target_path.as_str()).map_err(internal)?;
        std::fs::remove_dir(&r.target_path).map_err(internal)?;
        self.log(format!("NodeUnpublishVolume {}", r.volume_id));
        Ok(Response::new(v1::NodeUnpublishVolumeResponse {}))
    }
    async fn node_expand_volume(&self, request: Request<v1::NodeExpandVolumeRequest>) -> Result<Response<v1::NodeExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        let capacity = self.capacity(&r.volume_id)?;
        let size = format!("size={capacity}");
        mount(None::<&str>, r.staging_target_path.as_str(), None::<&str>, MsFlags::MS_REMOUNT, Some(size.as_str())).map_err(internal)?;
        self.log(format!("NodeExpandVolume {} at {}", r.volume_id, if r.volume_path.is_empty() { "?" } else { "published path" }));
        Ok(Response::new(v1::NodeExpandVolumeResponse { capacity_bytes: capacity }))
    }
    async fn node_get_capabilities(&self, _: Request<v1::NodeGetCapabilitiesRequest>) -> Result<Response<v1::NodeGetCapabilitiesResponse>, Status> {
        use v1::node_service_capability::{Rpc, Type, rpc};
        let capabilities = [rpc::Type::StageUnstageVolume, rpc::Type::ExpandVolume]
            .into_iter()
            .map(|t| v1::NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) })
            .collect();
        Ok(Response::new(v1::NodeGetCapabilitiesResponse { capabilities }))
    }
    async fn node_get_info(&self, _: Request<v1::NodeGetInfoRequest>) -> Result<Response<v1::NodeGetInfoResponse>, Status> {
        Ok(Response::new(v1::NodeGetInfoResponse { node_id: "n1".into(), ..Default::default() }))
    }
} unimplemented {
    node_get_volume_stats: NodeGetVolumeStatsRequest => NodeGetVolumeStatsResponse,
});

const SIZE: u64 = 4 << 20;

async fn start(corrupt_restore: bool) -> (Arc<Store>, Harness, tempfile::TempDir) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts tmpfs and bind mounts: run it as root (the benchmark itself needs root too)"
    );
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store {
        root: root.path().to_path_buf(),
        corrupt_restore,
        volumes: Mutex::default(),
        log: Mutex::default(),
    });
    for dir in ["volumes", "snapshots"] {
        std::fs::create_dir(root.path().join(dir)).unwrap();
    }
    let harness =
        test_support::start(Tmpfs(Arc::clone(&store)), Duration::from_secs(20), SIZE).await;
    (store, harness, root)
}

fn leftovers(store: &Store) -> Vec<String> {
    ["volumes", "snapshots"]
        .iter()
        .flat_map(|d| std::fs::read_dir(store.root.join(d)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn snapshot_phase_restores_and_verifies_data_then_cleans_up() {
    let (store, h, _root) = start(false).await;
    let batch = h.run(Job::Snapshot, 2, 1).await.expect("snapshot phase");
    assert_eq!(batch.completed, 2);
    assert_eq!(
        test_support::call_counts(&batch),
        [
            (Call::CreateSnapshot, 2),
            (Call::RestoreVolume, 2),
            (Call::DeleteSnapshot, 2)
        ]
    );

    let log = store.log.lock().unwrap().clone();
    assert_eq!(
        log[..10],
        [
            "CreateVolume vol-t-mount-s0",
            "NodeStageVolume vol-t-mount-s0",
            "NodePublishVolume vol-t-mount-s0",
            "CreateSnapshot snap-t-mount-s0-snap of vol-t-mount-s0",
            "CreateVolume vol-t-mount-s0-restored from snap-t-mount-s0-snap",
            "NodeStageVolume vol-t-mount-s0-restored",
            "NodePublishVolume vol-t-mount-s0-restored",
            "NodeUnpublishVolume vol-t-mount-s0-restored",
            "NodeUnstageVolume vol-t-mount-s0-restored",
            "DeleteVolume vol-t-mount-s0-restored",
        ]
    );
    assert_eq!(log[10], "DeleteSnapshot snap-t-mount-s0-snap");
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    assert!(h.mounts_below().is_empty());
    assert!(h.run_dir_is_empty());
}

#[tokio::test]
async fn a_restore_with_wrong_data_fails_verification_and_cleans_up() {
    let (store, h, _root) = start(true).await;
    let err = h
        .run(Job::Snapshot, 1, 1)
        .await
        .err()
        .expect("a corrupt restore must fail");
    match &err {
        Error::Verify(message) => assert!(message.contains("first at byte 4096"), "{message}"),
        other => panic!("expected a verification failure, got {other}"),
    }
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    assert!(h.mounts_below().is_empty());
    assert!(h.run_dir_is_empty());
}

#[tokio::test]
async fn online_expansion_grows_what_the_workload_sees() {
    let (store, h, _root) = start(false).await;
    let batch = h
        .run(Job::Expand { online: true }, 2, 2)
        .await
        .expect("expansion phase");
    assert_eq!(batch.completed, 2);
    assert_eq!(
        test_support::call_counts(&batch),
        [
            (Call::ControllerExpandVolume, 2),
            (Call::NodeExpandVolume, 2)
        ]
    );
    let log = store.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!(
            "ControllerExpandVolume vol-t-mount-e0 to {}",
            2 * SIZE
        )),
        "{log:#?}"
    );
    assert!(
        log.contains(&"NodeExpandVolume vol-t-mount-e0 at published path".to_owned()),
        "{log:#?}"
    );
    assert!(leftovers(&store).is_empty());
    assert!(h.mounts_below().is_empty());
}

#[tokio::test]
async fn offline_expansion_detaches_first() {
    let (store, h, _root) = start(false).await;
    h.run(Job::Expand { online: false }, 1, 1)
        .await
        .expect("expansion phase");
    let log = store.log.lock().unwrap().clone();
    let position = |entry: &str| {
        log.iter()
            .position(|l| l.starts_with(entry))
            .unwrap_or_else(|| panic!("{entry}: {log:#?}"))
    };
    assert!(position("NodeUnstageVolume") < position("ControllerExpandVolume"));
    assert!(position("ControllerExpandVolume") < position("NodeExpandVolume"));
    assert!(h.mounts_below().is_empty());
}
