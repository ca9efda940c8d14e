//! The benchmark's own failure handling, against a scripted plugin on a real socket.
//!
//! The plugin here is not a CSI driver stand-in for measuring anything: it fails or
//! stalls on purpose so the tests can check that the benchmark undoes every step it
//! took, in kubelet's order, and reports the failure instead of figures.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_csi_proto::v1::{self, controller_server, identity_server, node_server};
use tonic::{Request, Response, Status};

use crate::call::Call;
use crate::error::Error;
use crate::jobs::Job;
use crate::test_support::{self, Harness, service};

#[derive(Default)]
struct Script {
    /// Answer NodePublishVolume with INTERNAL.
    fail_publish: bool,
    /// Stall the first CreateVolume this long (longer than the client's timeout).
    stall_first_create: Option<Duration>,
    creates: AtomicUsize,
    log: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Scripted(Arc<Script>);

impl Scripted {
    fn log(&self, entry: String) {
        self.0.log.lock().unwrap().push(entry);
    }
}

service!(Scripted, identity_server::Identity {
    async fn get_plugin_info(&self, _: Request<v1::GetPluginInfoRequest>) -> Result<Response<v1::GetPluginInfoResponse>, Status> {
        Ok(Response::new(v1::GetPluginInfoResponse { name: "scripted.test".into(), vendor_version: "0".into(), manifest: Default::default() }))
    }
    async fn get_plugin_capabilities(&self, _: Request<v1::GetPluginCapabilitiesRequest>) -> Result<Response<v1::GetPluginCapabilitiesResponse>, Status> {
        use v1::plugin_capability::{Service, Type, service};
        let cap = v1::PluginCapability { r#type: Some(Type::Service(Service { r#type: service::Type::ControllerService as i32 })) };
        Ok(Response::new(v1::GetPluginCapabilitiesResponse { capabilities: vec![cap] }))
    }
    async fn probe(&self, _: Request<v1::ProbeRequest>) -> Result<Response<v1::ProbeResponse>, Status> {
        Ok(Response::new(v1::ProbeResponse { ready: None }))
    }
} unimplemented {});

service!(Scripted, controller_server::Controller {
    async fn create_volume(&self, request: Request<v1::CreateVolumeRequest>) -> Result<Response<v1::CreateVolumeResponse>, Status> {
        let name = request.into_inner().name;
        self.log(format!("CreateVolume {name}"));
        let first = self.0.creates.fetch_add(1, Ordering::SeqCst) == 0;
        if let Some(stall) = self.0.stall_first_create.filter(|_| first) {
            tokio::time::sleep(stall).await;
        }
        let volume = v1::Volume { capacity_bytes: 1 << 20, volume_id: format!("id-{name}"), ..Default::default() };
        Ok(Response::new(v1::CreateVolumeResponse { volume: Some(volume) }))
    }
    async fn delete_volume(&self, request: Request<v1::DeleteVolumeRequest>) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        self.log(format!("DeleteVolume {}", request.into_inner().volume_id));
        Ok(Response::new(v1::DeleteVolumeResponse {}))
    }
    async fn controller_get_capabilities(&self, _: Request<v1::ControllerGetCapabilitiesRequest>) -> Result<Response<v1::ControllerGetCapabilitiesResponse>, Status> {
        use v1::controller_service_capability::{Rpc, Type, rpc};
        let cap = v1::ControllerServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: rpc::Type::CreateDeleteVolume as i32 })) };
        Ok(Response::new(v1::ControllerGetCapabilitiesResponse { capabilities: vec![cap] }))
    }
} unimplemented {
    controller_publish_volume: ControllerPublishVolumeRequest => ControllerPublishVolumeResponse,
    controller_unpublish_volume: ControllerUnpublishVolumeRequest => ControllerUnpublishVolumeResponse,
    validate_volume_capabilities: ValidateVolumeCapabilitiesRequest => ValidateVolumeCapabilitiesResponse,
    list_volumes: ListVolumesRequest => ListVolumesResponse,
    get_capacity: GetCapacityRequest => GetCapacityResponse,
    create_snapshot: CreateSnapshotRequest => CreateSnapshotResponse,
    delete_snapshot: DeleteSnapshotRequest => DeleteSnapshotResponse,
    list_snapshots: ListSnapshotsRequest => ListSnapshotsResponse,
    get_snapshot: GetSnapshotRequest => GetSnapshotResponse,
    controller_expand_volume: ControllerExpandVolumeRequest => ControllerExpandVolumeResponse,
    controller_get_volume: ControllerGetVolumeRequest => ControllerGetVolumeResponse,
    controller_modify_volume: ControllerModifyVolumeRequest => ControllerModifyVolumeResponse,
});

fn exists(path: &str) -> &'static str {
    if Path::new(path).exists() {
        "exists"
    } else {
        "absent"
    }
}

fn parent_exists(path: &str) -> &'static str {
    if Path::new(path).parent().is_some_and(Path::is_dir) {
        "parent exists"
    } else {
        "parent absent"
    }
}

service!(Scripted, node_server::Node {
    async fn node_stage_volume(&self, request: Request<v1::NodeStageVolumeRequest>) -> Result<Response<v1::NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        self.log(format!("NodeStageVolume {} staging {}", r.volume_id, exists(&r.staging_target_path)));
        Ok(Response::new(v1::NodeStageVolumeResponse {}))
    }
    async fn node_unstage_volume(&self, request: Request<v1::NodeUnstageVolumeRequest>) -> Result<Response<v1::NodeUnstageVolumeResponse>, Status> {
        self.log(format!("NodeUnstageVolume {}", request.into_inner().volume_id));
        Ok(Response::new(v1::NodeUnstageVolumeResponse {}))
    }
    async fn node_publish_volume(&self, request: Request<v1::NodePublishVolumeRequest>) -> Result<Response<v1::NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        self.log(format!(
            "NodePublishVolume {} target {}, {}, staging given {}",
            r.volume_id, exists(&r.target_path), parent_exists(&r.target_path), !r.staging_target_path.is_empty()
        ));
        if self.0.fail_publish {
            return Err(Status::internal("scripted failure"));
        }
        Ok(Response::new(v1::NodePublishVolumeResponse {}))
    }
    async fn node_unpublish_volume(&self, request: Request<v1::NodeUnpublishVolumeRequest>) -> Result<Response<v1::NodeUnpublishVolumeResponse>, Status> {
        self.log(format!("NodeUnpublishVolume {}", request.into_inner().volume_id));
        Ok(Response::new(v1::NodeUnpublishVolumeResponse {}))
    }
    async fn node_get_capabilities(&self, _: Request<v1::NodeGetCapabilitiesRequest>) -> Result<Response<v1::NodeGetCapabilitiesResponse>, Status> {
        use v1::node_service_capability::{Rpc, Type, rpc};
        let cap = v1::NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: rpc::Type::StageUnstageVolume as i32 })) };
        Ok(Response::new(v1::NodeGetCapabilitiesResponse { capabilities: vec![cap] }))
    }
    async fn node_get_info(&self, _: Request<v1::NodeGetInfoRequest>) -> Result<Response<v1::NodeGetInfoResponse>, Status> {
        Ok(Response::new(v1::NodeGetInfoResponse { node_id: "n1".into(), ..Default::default() }))
    }
} unimplemented {
    node_get_volume_stats: NodeGetVolumeStatsRequest => NodeGetVolumeStatsResponse,
    node_expand_volume: NodeExpandVolumeRequest => NodeExpandVolumeResponse,
});

async fn start(script: Script, timeout: Duration) -> (Arc<Script>, Harness) {
    let script = Arc::new(script);
    let harness = test_support::start(Scripted(Arc::clone(&script)), timeout, 1 << 20).await;
    (script, harness)
}

fn log(script: &Script) -> Vec<String> {
    script.log.lock().unwrap().clone()
}

fn failing_publish() -> Script {
    Script {
        fail_publish: true,
        ..Script::default()
    }
}

#[tokio::test]
async fn a_failed_publish_is_undone_in_kubelet_order_and_stops_the_batch() {
    let (script, h) = start(failing_publish(), Duration::from_secs(10)).await;
    let result = h.run(Job::Lifecycle, 5, 1).await;

    match result {
        Err(Error::Rpc {
            call: Call::NodePublishVolume,
            status,
        }) => assert_eq!(status.message(), "scripted failure"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a failing publish must fail the batch"),
    }
    assert_eq!(
        log(&script),
        [
            "CreateVolume t-mount-c0",
            // The CO creates the staging directory, and only the target's parent.
            "NodeStageVolume id-t-mount-c0 staging exists",
            "NodePublishVolume id-t-mount-c0 target absent, parent exists, staging given true",
            // A failed publish may have half-happened: unpublish is still issued.
            "NodeUnpublishVolume id-t-mount-c0",
            "NodeUnstageVolume id-t-mount-c0",
            "DeleteVolume id-t-mount-c0",
        ]
    );
    assert!(
        h.run_dir_is_empty(),
        "the benchmark left directories behind"
    );
}

#[tokio::test]
async fn a_timed_out_create_is_replayed_to_find_and_delete_the_volume() {
    let script = Script {
        stall_first_create: Some(Duration::from_millis(600)),
        ..Script::default()
    };
    let (script, h) = start(script, Duration::from_millis(200)).await;
    let result = h.run(Job::Lifecycle, 1, 1).await;

    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                call: Call::CreateVolume,
                ..
            })
        ),
        "expected a CreateVolume timeout"
    );
    assert_eq!(
        log(&script),
        [
            "CreateVolume t-mount-c0",
            "CreateVolume t-mount-c0",
            "DeleteVolume id-t-mount-c0"
        ]
    );
    assert!(h.run_dir_is_empty());
}

#[tokio::test]
async fn concurrent_failures_each_clean_up_their_own_volume() {
    let (script, h) = start(failing_publish(), Duration::from_secs(10)).await;
    let result = h.run(Job::Lifecycle, 50, 4).await;
    assert!(result.is_err());
    let log = log(&script);
    let created = log.iter().filter(|l| l.starts_with("CreateVolume")).count();
    let deleted = log.iter().filter(|l| l.starts_with("DeleteVolume")).count();
    // Every publish fails here, so each of the four workers stops after its first
    // cycle; none may start more, and each must undo its own.
    assert!(
        (1..=4).contains(&created),
        "{created} volumes created: {log:#?}"
    );
    assert_eq!(
        created, deleted,
        "every created volume is deleted: {log:#?}"
    );
    assert!(h.run_dir_is_empty());
}
