//! Wire compatibility with the CSI spec, checked against bytes encoded by hand.
//!
//! Every expected byte string below is built from the field numbers and wire types
//! the spec (v1.12) declares, never from our generated code. A renumbered, retyped
//! or renamed-into-another-number field in `csi.proto` makes these tests fail, which
//! is exactly the drift that would break kubelet and the sidecars.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use plinth_csi_proto::v1::{
    self, ControllerExpandVolumeResponse, CreateSnapshotRequest, CreateVolumeRequest,
    CreateVolumeResponse, GetPluginCapabilitiesResponse, NodeExpandVolumeRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoResponse, NodePublishVolumeRequest,
    NodeStageVolumeRequest, ProbeResponse, Snapshot, Topology, Volume,
};
use prost::Message;

/// A tiny protobuf encoder: just enough to write messages field by field.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn varint(mut self, mut value: u64) -> Self {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn key(self, field: u32, wire_type: u8) -> Self {
        self.varint(u64::from(field << 3 | u32::from(wire_type)))
    }

    /// Wire type 0.
    fn uint(self, field: u32, value: u64) -> Self {
        self.key(field, 0).varint(value)
    }

    /// Wire type 2.
    fn bytes(self, field: u32, payload: &[u8]) -> Self {
        let mut enc = self.key(field, 2).varint(payload.len() as u64);
        enc.0.extend_from_slice(payload);
        enc
    }

    fn str(self, field: u32, value: &str) -> Self {
        self.bytes(field, value.as_bytes())
    }

    fn msg(self, field: u32, inner: Enc) -> Self {
        self.bytes(field, &inner.0)
    }

    /// A `map<string, string>` entry: a nested message with key = 1, value = 2.
    fn entry(self, field: u32, key: &str, value: &str) -> Self {
        self.msg(field, Enc::default().str(1, key).str(2, value))
    }
}

fn mount_capability(fs_type: &str, mode: u64) -> Enc {
    Enc::default()
        .msg(
            2, // VolumeCapability.mount
            Enc::default()
                .str(1, fs_type) // fs_type
                .str(2, "noatime") // mount_flags
                .str(2, "nodiscard")
                .str(3, "1000"), // volume_mount_group
        )
        .msg(3, Enc::default().uint(1, mode)) // access_mode.mode
}

fn block_capability(mode: u64) -> Enc {
    Enc::default()
        .msg(1, Enc::default()) // VolumeCapability.block
        .msg(3, Enc::default().uint(1, mode))
}

fn assert_mount(
    cap: &v1::VolumeCapability,
    fs_type: &str,
    mode: v1::volume_capability::access_mode::Mode,
) {
    match cap.access_type.as_ref().expect("access_type") {
        v1::volume_capability::AccessType::Mount(m) => {
            assert_eq!(m.fs_type, fs_type);
            assert_eq!(m.mount_flags, ["noatime", "nodiscard"]);
            assert_eq!(m.volume_mount_group, "1000");
        }
        other => panic!("expected a mount capability, got {other:?}"),
    }
    assert_eq!(cap.access_mode.expect("access_mode").mode(), mode);
}

#[test]
fn create_volume_request_decodes_from_spec_field_numbers() {
    use v1::volume_capability::access_mode::Mode;

    let bytes = Enc::default()
        .str(1, "pvc-0b7c")
        .msg(2, Enc::default().uint(1, 1 << 30).uint(2, 2 << 30))
        .msg(3, mount_capability("xfs", 7)) // SINGLE_NODE_MULTI_WRITER
        .msg(3, block_capability(1)) // SINGLE_NODE_WRITER
        .entry(4, "csi.storage.k8s.io/fstype", "xfs")
        .entry(5, "password", "hunter2")
        .msg(6, Enc::default().msg(1, Enc::default().str(1, "snap-1")))
        .msg(
            7,
            Enc::default()
                .msg(1, Enc::default().entry(1, "topology.plinth.dev/node", "n1"))
                .msg(1, Enc::default().entry(1, "topology.plinth.dev/node", "n2"))
                .msg(2, Enc::default().entry(1, "topology.plinth.dev/node", "n2")),
        )
        .entry(8, "iops", "3000")
        .0;

    let req = CreateVolumeRequest::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(req.name, "pvc-0b7c");
    let range = req.capacity_range.expect("capacity_range");
    assert_eq!(
        (range.required_bytes, range.limit_bytes),
        (1 << 30, 2 << 30)
    );
    assert_eq!(req.volume_capabilities.len(), 2);
    assert_mount(
        &req.volume_capabilities[0],
        "xfs",
        Mode::SingleNodeMultiWriter,
    );
    assert!(matches!(
        req.volume_capabilities[1].access_type,
        Some(v1::volume_capability::AccessType::Block(_))
    ));
    assert_eq!(
        req.volume_capabilities[1].access_mode.unwrap().mode(),
        Mode::SingleNodeWriter
    );
    assert_eq!(req.parameters["csi.storage.k8s.io/fstype"], "xfs");
    assert_eq!(req.secrets["password"], "hunter2");
    match req.volume_content_source.and_then(|s| s.r#type) {
        Some(v1::volume_content_source::Type::Snapshot(s)) => assert_eq!(s.snapshot_id, "snap-1"),
        other => panic!("expected a snapshot source, got {other:?}"),
    }
    let topo = req
        .accessibility_requirements
        .expect("accessibility_requirements");
    let nodes = |list: &[Topology]| -> Vec<String> {
        list.iter()
            .map(|t| t.segments["topology.plinth.dev/node"].clone())
            .collect()
    };
    assert_eq!(nodes(&topo.requisite), ["n1", "n2"]);
    assert_eq!(nodes(&topo.preferred), ["n2"]);
    assert_eq!(req.mutable_parameters["iops"], "3000");
}

#[test]
fn volume_clone_source_uses_field_two() {
    let bytes = Enc::default()
        .msg(6, Enc::default().msg(2, Enc::default().str(1, "vol-src")))
        .0;
    let req = CreateVolumeRequest::decode(bytes.as_slice()).unwrap();
    match req.volume_content_source.and_then(|s| s.r#type) {
        Some(v1::volume_content_source::Type::Volume(v)) => assert_eq!(v.volume_id, "vol-src"),
        other => panic!("expected a volume source, got {other:?}"),
    }
}

#[test]
fn node_stage_volume_request_decodes_from_spec_field_numbers() {
    use v1::volume_capability::access_mode::Mode;

    let bytes = Enc::default()
        .str(1, "vol-1")
        .entry(2, "devicePath", "/dev/loop7")
        .str(
            3,
            "/var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount",
        )
        .msg(4, mount_capability("ext4", 2)) // SINGLE_NODE_READER_ONLY
        .entry(5, "key", "secret")
        .entry(6, "pool", "default")
        .0;
    let req = NodeStageVolumeRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.volume_id, "vol-1");
    assert_eq!(req.publish_context["devicePath"], "/dev/loop7");
    assert_eq!(
        req.staging_target_path,
        "/var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount"
    );
    assert_mount(
        req.volume_capability.as_ref().unwrap(),
        "ext4",
        Mode::SingleNodeReaderOnly,
    );
    assert_eq!(req.secrets["key"], "secret");
    assert_eq!(req.volume_context["pool"], "default");
}

#[test]
fn node_publish_volume_request_decodes_from_spec_field_numbers() {
    use v1::volume_capability::access_mode::Mode;

    let bytes = Enc::default()
        .str(1, "vol-1")
        .entry(2, "devicePath", "/dev/loop7")
        .str(3, "/staging")
        .str(4, "/pods/uid/volumes/kubernetes.io~csi/pvc/mount")
        .msg(5, mount_capability("ext4", 5)) // MULTI_NODE_MULTI_WRITER
        .uint(6, 1) // readonly
        .entry(7, "token", "t")
        .entry(8, "csi.storage.k8s.io/pod.name", "web-0")
        .0;
    let req = NodePublishVolumeRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.volume_id, "vol-1");
    assert_eq!(req.publish_context["devicePath"], "/dev/loop7");
    assert_eq!(req.staging_target_path, "/staging");
    assert_eq!(
        req.target_path,
        "/pods/uid/volumes/kubernetes.io~csi/pvc/mount"
    );
    assert_mount(
        req.volume_capability.as_ref().unwrap(),
        "ext4",
        Mode::MultiNodeMultiWriter,
    );
    assert!(req.readonly);
    assert_eq!(req.secrets["token"], "t");
    assert_eq!(req.volume_context["csi.storage.k8s.io/pod.name"], "web-0");
}

#[test]
fn create_snapshot_request_decodes_from_spec_field_numbers() {
    let bytes = Enc::default()
        .str(1, "vol-1")
        .str(2, "snapshot-6f1e")
        .entry(3, "s", "x")
        .entry(4, "csi.storage.k8s.io/volumesnapshot/name", "daily")
        .0;
    let req = CreateSnapshotRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.source_volume_id, "vol-1");
    assert_eq!(req.name, "snapshot-6f1e");
    assert_eq!(req.secrets["s"], "x");
    assert_eq!(
        req.parameters["csi.storage.k8s.io/volumesnapshot/name"],
        "daily"
    );
}

#[test]
fn node_expand_volume_request_decodes_from_spec_field_numbers() {
    let bytes = Enc::default()
        .str(1, "vol-1")
        .str(2, "/published")
        .msg(3, Enc::default().uint(1, 4 << 30))
        .str(4, "/staging")
        .msg(5, block_capability(1))
        .entry(6, "k", "v")
        .0;
    let req = NodeExpandVolumeRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.volume_id, "vol-1");
    assert_eq!(req.volume_path, "/published");
    assert_eq!(req.capacity_range.unwrap().required_bytes, 4 << 30);
    assert_eq!(req.staging_target_path, "/staging");
    assert!(req.volume_capability.is_some());
    assert_eq!(req.secrets["k"], "v");
}

// Responses are what the sidecars decode from us, so check our encoding byte for
// byte. Each message holds at most one map entry, which keeps the encoding
// deterministic.

#[test]
fn create_volume_response_encodes_to_spec_field_numbers() {
    let resp = CreateVolumeResponse {
        volume: Some(Volume {
            capacity_bytes: 1 << 30,
            volume_id: "vol-1".into(),
            volume_context: [("fsType".to_string(), "ext4".to_string())].into(),
            content_source: Some(v1::VolumeContentSource {
                r#type: Some(v1::volume_content_source::Type::Snapshot(
                    v1::volume_content_source::SnapshotSource {
                        snapshot_id: "snap-1".into(),
                    },
                )),
            }),
            accessible_topology: vec![Topology {
                segments: [("topology.plinth.dev/node".to_string(), "n1".to_string())].into(),
            }],
        }),
    };
    let expected = Enc::default()
        .msg(
            1,
            Enc::default()
                .uint(1, 1 << 30)
                .str(2, "vol-1")
                .entry(3, "fsType", "ext4")
                .msg(4, Enc::default().msg(1, Enc::default().str(1, "snap-1")))
                .msg(5, Enc::default().entry(1, "topology.plinth.dev/node", "n1")),
        )
        .0;
    assert_eq!(resp.encode_to_vec(), expected);
}

#[test]
fn snapshot_encodes_to_spec_field_numbers() {
    let snap = Snapshot {
        size_bytes: 4096,
        snapshot_id: "snap-1".into(),
        source_volume_id: "vol-1".into(),
        creation_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        ready_to_use: true,
        group_snapshot_id: "group-1".into(),
    };
    let expected = Enc::default()
        .uint(1, 4096)
        .str(2, "snap-1")
        .str(3, "vol-1")
        .msg(4, Enc::default().uint(1, 1_700_000_000).uint(2, 5))
        .uint(5, 1)
        .str(6, "group-1")
        .0;
    assert_eq!(snap.encode_to_vec(), expected);
}

#[test]
fn node_get_info_response_encodes_to_spec_field_numbers() {
    let resp = NodeGetInfoResponse {
        node_id: "n1".into(),
        max_volumes_per_node: 64,
        accessible_topology: Some(Topology {
            segments: [("topology.plinth.dev/node".to_string(), "n1".to_string())].into(),
        }),
    };
    let expected = Enc::default()
        .str(1, "n1")
        .uint(2, 64)
        .msg(3, Enc::default().entry(1, "topology.plinth.dev/node", "n1"))
        .0;
    assert_eq!(resp.encode_to_vec(), expected);
}

#[test]
fn expand_and_probe_responses_encode_to_spec_field_numbers() {
    let expand = ControllerExpandVolumeResponse {
        capacity_bytes: 2 << 30,
        node_expansion_required: true,
    };
    assert_eq!(
        expand.encode_to_vec(),
        Enc::default().uint(1, 2 << 30).uint(2, 1).0
    );

    // ProbeResponse.ready is a google.protobuf.BoolValue (value = 1), not a bare bool.
    let probe = ProbeResponse { ready: Some(true) };
    assert_eq!(
        probe.encode_to_vec(),
        Enc::default().msg(1, Enc::default().uint(1, 1)).0
    );
}

#[test]
fn capability_messages_use_spec_oneof_numbers_and_enum_values() {
    use v1::plugin_capability::{self, service, volume_expansion};

    let plugin = GetPluginCapabilitiesResponse {
        capabilities: vec![
            v1::PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service {
                        r#type: service::Type::VolumeAccessibilityConstraints as i32,
                    },
                )),
            },
            v1::PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    },
                )),
            },
        ],
    };
    let expected = Enc::default()
        .msg(1, Enc::default().msg(1, Enc::default().uint(1, 2)))
        .msg(1, Enc::default().msg(2, Enc::default().uint(1, 1)))
        .0;
    assert_eq!(plugin.encode_to_vec(), expected);

    let node = NodeGetCapabilitiesResponse {
        capabilities: vec![v1::NodeServiceCapability {
            r#type: Some(v1::node_service_capability::Type::Rpc(
                v1::node_service_capability::Rpc {
                    r#type: v1::node_service_capability::rpc::Type::VolumeMountGroup as i32,
                },
            )),
        }],
    };
    let expected = Enc::default()
        .msg(1, Enc::default().msg(1, Enc::default().uint(1, 6)))
        .0;
    assert_eq!(node.encode_to_vec(), expected);
}
