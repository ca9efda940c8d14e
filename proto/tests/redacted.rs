//! Requests that carry `secrets` never print them: a `{:?}` anywhere (a log line, an error,
//! a test failure) shows how many secrets there were, not what they hold.

use std::collections::HashMap;

use plinth_csi_proto::v1::{
    CreateSnapshotRequest, CreateVolumeRequest, DeleteVolumeRequest, NodeStageVolumeRequest,
    VolumeCapability,
};

const SECRET: &str = "hunter2-do-not-print";

fn secrets() -> HashMap<String, String> {
    HashMap::from([
        ("encryptionKey".to_owned(), SECRET.to_owned()),
        ("other".to_owned(), format!("{SECRET}-too")),
    ])
}

#[test]
fn debug_of_a_secret_bearing_request_shows_the_count_only() {
    let printed = [
        format!(
            "{:?}",
            NodeStageVolumeRequest {
                volume_id: "pvc-123".into(),
                staging_target_path: "/var/lib/kubelet/staging".into(),
                volume_capability: Some(VolumeCapability::default()),
                secrets: secrets(),
                ..Default::default()
            }
        ),
        format!(
            "{:#?}",
            CreateVolumeRequest {
                name: "pvc-123".into(),
                secrets: secrets(),
                ..Default::default()
            }
        ),
        format!(
            "{:?}",
            DeleteVolumeRequest {
                volume_id: "pvc-123".into(),
                secrets: secrets(),
            }
        ),
        format!(
            "{:?}",
            CreateSnapshotRequest {
                source_volume_id: "pvc-123".into(),
                name: "snap".into(),
                secrets: secrets(),
                ..Default::default()
            }
        ),
    ];
    for text in &printed {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("encryptionKey"), "{text}");
        assert!(text.contains("<2 redacted>"), "{text}");
        assert!(
            text.contains("pvc-123"),
            "the other fields still print: {text}"
        );
    }
    // Every field but the secrets is still there, oneofs under their own name.
    assert!(printed[0].contains("staging_target_path: \"/var/lib/kubelet/staging\""));
    assert!(printed[0].contains("volume_capability: Some("));
}
