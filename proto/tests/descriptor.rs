//! The compiled protocol's shape, read back from the descriptor set `build.rs` emits.
//!
//! The expected lists are transcribed from the CSI spec v1.12 (service definitions and
//! capability enums), independently of `csi.proto`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use plinth_csi_proto::FILE_DESCRIPTOR_SET;
use prost_reflect::{DescriptorPool, ExtensionDescriptor, Value};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn method_names(pool: &DescriptorPool, service: &str) -> Vec<String> {
    let service = pool
        .get_service_by_name(&format!("csi.v1.{service}"))
        .unwrap_or_else(|| panic!("service csi.v1.{service} is missing"));
    service.methods().map(|m| m.name().to_owned()).collect()
}

#[test]
fn every_service_has_exactly_the_spec_methods() {
    let pool = pool();
    let expected: &[(&str, &[&str])] = &[
        (
            "Identity",
            &["GetPluginInfo", "GetPluginCapabilities", "Probe"],
        ),
        (
            "Controller",
            &[
                "CreateVolume",
                "DeleteVolume",
                "ControllerPublishVolume",
                "ControllerUnpublishVolume",
                "ValidateVolumeCapabilities",
                "ListVolumes",
                "GetCapacity",
                "ControllerGetCapabilities",
                "CreateSnapshot",
                "DeleteSnapshot",
                "ListSnapshots",
                "GetSnapshot",
                "ControllerExpandVolume",
                "ControllerGetVolume",
                "ControllerModifyVolume",
            ],
        ),
        (
            "GroupController",
            &[
                "GroupControllerGetCapabilities",
                "CreateVolumeGroupSnapshot",
                "DeleteVolumeGroupSnapshot",
                "GetVolumeGroupSnapshot",
            ],
        ),
        (
            "SnapshotMetadata",
            &["GetMetadataAllocated", "GetMetadataDelta"],
        ),
        (
            "Node",
            &[
                "NodeStageVolume",
                "NodeUnstageVolume",
                "NodePublishVolume",
                "NodeUnpublishVolume",
                "NodeGetVolumeStats",
                "NodeExpandVolume",
                "NodeGetCapabilities",
                "NodeGetInfo",
            ],
        ),
    ];
    for (service, methods) in expected {
        assert_eq!(
            &method_names(&pool, service),
            methods,
            "methods of {service}"
        );
    }
    let services: Vec<_> = pool.services().map(|s| s.full_name().to_owned()).collect();
    assert_eq!(
        services.len(),
        expected.len(),
        "unexpected services: {services:?}"
    );
}

#[test]
fn each_method_takes_its_own_request_and_response() {
    // gRPC paths are /csi.v1.<Service>/<Method>; the message names are part of the
    // contract that generated clients in other languages check.
    let pool = pool();
    for service in pool.services() {
        for method in service.methods() {
            assert_eq!(
                method.input().full_name(),
                format!("csi.v1.{}Request", method.name())
            );
            assert_eq!(
                method.output().full_name(),
                format!("csi.v1.{}Response", method.name())
            );
            let streaming = service.name() == "SnapshotMetadata";
            assert_eq!(
                method.is_server_streaming(),
                streaming,
                "{}",
                method.full_name()
            );
            assert!(!method.is_client_streaming(), "{}", method.full_name());
        }
    }
}

fn enum_values(pool: &DescriptorPool, name: &str) -> Vec<(String, i32)> {
    pool.get_enum_by_name(name)
        .unwrap_or_else(|| panic!("enum {name} is missing"))
        .values()
        .map(|v| (v.name().to_owned(), v.number()))
        .collect()
}

fn numbered(names: &[&str]) -> Vec<(String, i32)> {
    names
        .iter()
        .zip(0..)
        .map(|(n, i)| ((*n).to_owned(), i))
        .collect()
}

#[test]
fn capability_and_mode_enums_match_the_spec() {
    let pool = pool();
    let cases: &[(&str, &[&str])] = &[
        (
            "csi.v1.PluginCapability.Service.Type",
            &[
                "UNKNOWN",
                "CONTROLLER_SERVICE",
                "VOLUME_ACCESSIBILITY_CONSTRAINTS",
                "GROUP_CONTROLLER_SERVICE",
                "SNAPSHOT_METADATA_SERVICE",
            ],
        ),
        (
            "csi.v1.PluginCapability.VolumeExpansion.Type",
            &["UNKNOWN", "ONLINE", "OFFLINE"],
        ),
        (
            "csi.v1.ControllerServiceCapability.RPC.Type",
            &[
                "UNKNOWN",
                "CREATE_DELETE_VOLUME",
                "PUBLISH_UNPUBLISH_VOLUME",
                "LIST_VOLUMES",
                "GET_CAPACITY",
                "CREATE_DELETE_SNAPSHOT",
                "LIST_SNAPSHOTS",
                "CLONE_VOLUME",
                "PUBLISH_READONLY",
                "EXPAND_VOLUME",
                "LIST_VOLUMES_PUBLISHED_NODES",
                "VOLUME_CONDITION",
                "GET_VOLUME",
                "SINGLE_NODE_MULTI_WRITER",
                "MODIFY_VOLUME",
                "GET_SNAPSHOT",
            ],
        ),
        (
            "csi.v1.NodeServiceCapability.RPC.Type",
            &[
                "UNKNOWN",
                "STAGE_UNSTAGE_VOLUME",
                "GET_VOLUME_STATS",
                "EXPAND_VOLUME",
                "VOLUME_CONDITION",
                "SINGLE_NODE_MULTI_WRITER",
                "VOLUME_MOUNT_GROUP",
            ],
        ),
        (
            "csi.v1.GroupControllerServiceCapability.RPC.Type",
            &["UNKNOWN", "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT"],
        ),
        (
            "csi.v1.VolumeCapability.AccessMode.Mode",
            &[
                "UNKNOWN",
                "SINGLE_NODE_WRITER",
                "SINGLE_NODE_READER_ONLY",
                "MULTI_NODE_READER_ONLY",
                "MULTI_NODE_SINGLE_WRITER",
                "MULTI_NODE_MULTI_WRITER",
                "SINGLE_NODE_SINGLE_WRITER",
                "SINGLE_NODE_MULTI_WRITER",
            ],
        ),
        ("csi.v1.VolumeUsage.Unit", &["UNKNOWN", "BYTES", "INODES"]),
        (
            "csi.v1.BlockMetadataType",
            &["UNKNOWN", "FIXED_LENGTH", "VARIABLE_LENGTH"],
        ),
    ];
    for (name, values) in cases {
        assert_eq!(enum_values(&pool, name), numbered(values), "{name}");
    }
}

fn extension(pool: &DescriptorPool, name: &str, number: u32) -> ExtensionDescriptor {
    let ext = pool
        .get_extension_by_name(&format!("csi.v1.{name}"))
        .unwrap_or_else(|| panic!("extension csi.v1.{name} is missing"));
    assert_eq!(ext.number(), number, "extension number of {name}");
    ext
}

#[test]
fn custom_options_have_the_spec_extension_numbers() {
    let pool = pool();
    for (name, number, extendee) in [
        ("csi_secret", 1059, "google.protobuf.FieldOptions"),
        ("alpha_field", 1060, "google.protobuf.FieldOptions"),
        ("alpha_enum", 1060, "google.protobuf.EnumOptions"),
        ("alpha_enum_value", 1060, "google.protobuf.EnumValueOptions"),
        ("alpha_message", 1060, "google.protobuf.MessageOptions"),
        ("alpha_method", 1060, "google.protobuf.MethodOptions"),
        ("alpha_service", 1060, "google.protobuf.ServiceOptions"),
    ] {
        assert_eq!(
            extension(&pool, name, number)
                .containing_message()
                .full_name(),
            extendee
        );
    }
    let file = pool
        .get_file_by_name("csi.proto")
        .expect("csi.proto in the set");
    assert_eq!(file.package_name(), "csi.v1");
    assert_eq!(
        file.file_descriptor_proto()
            .options
            .as_ref()
            .and_then(|o| o.go_package.as_deref()),
        Some("github.com/container-storage-interface/spec/lib/go/csi")
    );
}

#[test]
fn exactly_the_secrets_fields_carry_csi_secret() {
    // The sidecars' gRPC loggers strip fields marked csi_secret; a secrets map without
    // the mark would be logged in clear text.
    let pool = pool();
    let csi_secret = extension(&pool, "csi_secret", 1059);
    let mut marked = Vec::new();
    for message in pool.all_messages().filter(|m| m.package_name() == "csi.v1") {
        for field in message.fields() {
            let options = field.options();
            let is_secret = options.has_extension(&csi_secret)
                && *options.get_extension(&csi_secret) == Value::Bool(true);
            if field.name() == "secrets" {
                assert!(is_secret, "{} lacks (csi_secret) = true", field.full_name());
            }
            if is_secret {
                marked.push(message.name().to_owned());
            }
        }
    }
    marked.sort();
    let mut expected = vec![
        "ControllerExpandVolumeRequest",
        "ControllerModifyVolumeRequest",
        "ControllerPublishVolumeRequest",
        "ControllerUnpublishVolumeRequest",
        "CreateSnapshotRequest",
        "CreateVolumeGroupSnapshotRequest",
        "CreateVolumeRequest",
        "DeleteSnapshotRequest",
        "DeleteVolumeGroupSnapshotRequest",
        "DeleteVolumeRequest",
        "GetMetadataAllocatedRequest",
        "GetMetadataDeltaRequest",
        "GetSnapshotRequest",
        "GetVolumeGroupSnapshotRequest",
        "ListSnapshotsRequest",
        "NodeExpandVolumeRequest",
        "NodePublishVolumeRequest",
        "NodeStageVolumeRequest",
        "ValidateVolumeCapabilitiesRequest",
    ];
    expected.sort_unstable();
    assert_eq!(marked, expected);
}

#[test]
fn alpha_markers_sit_where_v1_12_puts_them() {
    let pool = pool();
    let alpha_method = extension(&pool, "alpha_method", 1060);
    let alpha: Vec<_> = pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .filter(|m| m.options().has_extension(&alpha_method))
        .map(|m| m.name().to_owned())
        .collect();
    // ControllerModifyVolume went GA in v1.12; these two are still alpha.
    assert_eq!(alpha, ["GetSnapshot", "ControllerGetVolume"]);

    let alpha_service = extension(&pool, "alpha_service", 1060);
    let alpha_services: Vec<_> = pool
        .services()
        .filter(|s| s.options().has_extension(&alpha_service))
        .map(|s| s.name().to_owned())
        .collect();
    assert_eq!(alpha_services, ["SnapshotMetadata"]);
}
