//! Identity service, capability advertisement, modes and feature switches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use plinth_csi_proto::v1;
use tonic::Code;
use v1::controller_service_capability::rpc::Type as ControllerCap;
use v1::node_service_capability::rpc::Type as NodeCap;
use v1::plugin_capability::service::Type as ServiceCap;

async fn plugin_services(driver: &TestDriver) -> Vec<ServiceCap> {
    driver
        .plugin_capabilities()
        .await
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(v1::plugin_capability::Type::Service(s)) => ServiceCap::try_from(s.r#type).ok(),
            _ => None,
        })
        .collect()
}

async fn controller_caps(driver: &TestDriver) -> Vec<ControllerCap> {
    driver
        .controller()
        .await
        .controller_get_capabilities(v1::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(v1::controller_service_capability::Type::Rpc(r)) => {
                ControllerCap::try_from(r.r#type).ok()
            }
            None => None,
        })
        .collect()
}

#[tokio::test]
async fn plugin_info_names_the_driver_and_its_version() {
    let driver = TestDriver::start().await;
    let info = driver.plugin_info().await;
    assert_eq!(info.name, "local.csi.plinth.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));

    let custom = TestDriver::start_with(&["--driver-name=other.example.com"]).await;
    let info = custom.plugin_info().await;
    assert_eq!(info.name, "other.example.com");
}

#[tokio::test]
async fn all_in_one_advertises_what_it_serves() {
    let driver = TestDriver::start().await;
    let services = plugin_services(&driver).await;
    assert!(services.contains(&ServiceCap::ControllerService));
    assert!(services.contains(&ServiceCap::VolumeAccessibilityConstraints));

    let controller = controller_caps(&driver).await;
    for cap in [
        ControllerCap::CreateDeleteVolume,
        ControllerCap::ListVolumes,
        ControllerCap::GetCapacity,
        ControllerCap::GetVolume,
        ControllerCap::SingleNodeMultiWriter,
    ] {
        assert!(
            controller.contains(&cap),
            "{cap:?} missing from {controller:?}"
        );
    }
    for cap in [
        ControllerCap::CreateDeleteSnapshot,
        ControllerCap::ListSnapshots,
        ControllerCap::GetSnapshot,
        ControllerCap::ExpandVolume,
        ControllerCap::CloneVolume,
    ] {
        assert!(
            controller.contains(&cap),
            "{cap:?} missing from {controller:?}"
        );
    }
    assert!(services.contains(&ServiceCap::GroupControllerService));
    // Local volumes need no attach step: never advertised, never served.
    assert!(!controller.contains(&ControllerCap::PublishUnpublishVolume));

    let node: Vec<_> = driver
        .node()
        .await
        .node_get_capabilities(v1::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(v1::node_service_capability::Type::Rpc(r)) => NodeCap::try_from(r.r#type).ok(),
            None => None,
        })
        .collect();
    assert!(node.contains(&NodeCap::StageUnstageVolume));
    assert!(node.contains(&NodeCap::GetVolumeStats));
    assert!(node.contains(&NodeCap::ExpandVolume));

    let info = driver
        .node()
        .await
        .node_get_info(v1::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, NODE_ID);
    assert_eq!(
        info.accessible_topology.unwrap().segments.get(TOPOLOGY_KEY),
        Some(&NODE_ID.to_owned())
    );
}

#[tokio::test]
async fn switched_off_features_are_neither_advertised_nor_served() {
    let driver =
        TestDriver::start_with(&["--disable=capacity,topology", "--max-volumes-per-node=7"]).await;
    assert!(
        !plugin_services(&driver)
            .await
            .contains(&ServiceCap::VolumeAccessibilityConstraints)
    );
    assert!(
        !controller_caps(&driver)
            .await
            .contains(&ControllerCap::GetCapacity)
    );
    assert_code(
        driver
            .controller()
            .await
            .get_capacity(v1::GetCapacityRequest::default())
            .await,
        Code::Unimplemented,
    );
    let info = driver
        .node()
        .await
        .node_get_info(v1::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.accessible_topology.is_none());
    assert_eq!(info.max_volumes_per_node, 7);
    // Without topology, volumes carry no accessible_topology (the CO may then place
    // the pod anywhere; the operator only runs this mode single-node).
    let volume = create(&driver, &name("notopo"), mount_cap("ext4"), 16 * MIB).await;
    assert!(volume.accessible_topology.is_empty());
}

#[tokio::test]
async fn switched_off_snapshot_and_expansion_rpcs_answer_unimplemented() {
    let driver = TestDriver::start_with(&["--disable=snapshots,expansion"]).await;
    let mut controller = driver.controller().await;
    assert_code(
        controller
            .create_snapshot(v1::CreateSnapshotRequest {
                source_volume_id: "0".repeat(32),
                name: "snap".into(),
                ..Default::default()
            })
            .await,
        Code::Unimplemented,
    );
    assert_code(
        controller
            .controller_expand_volume(v1::ControllerExpandVolumeRequest::default())
            .await,
        Code::Unimplemented,
    );
    assert_code(
        controller
            .controller_publish_volume(v1::ControllerPublishVolumeRequest::default())
            .await,
        Code::Unimplemented,
    );
    assert_code(
        driver
            .node()
            .await
            .node_expand_volume(v1::NodeExpandVolumeRequest::default())
            .await,
        Code::Unimplemented,
    );
}

#[tokio::test]
async fn node_mode_serves_identity_and_node_only() {
    let cluster = stand_in().await;
    let driver = cluster.driver(NODE_ID, &["--mode=node"]).await;
    assert!(
        !plugin_services(&driver)
            .await
            .contains(&ServiceCap::ControllerService)
    );
    assert_code(
        driver
            .controller()
            .await
            .controller_get_capabilities(v1::ControllerGetCapabilitiesRequest {})
            .await,
        Code::Unimplemented,
    );
    driver
        .node()
        .await
        .node_get_info(v1::NodeGetInfoRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn controller_mode_serves_identity_and_controller_only() {
    let cluster = stand_in().await;
    let driver = cluster.driver(NODE_ID, &["--mode=controller"]).await;
    assert!(
        plugin_services(&driver)
            .await
            .contains(&ServiceCap::ControllerService)
    );
    assert_code(
        driver
            .node()
            .await
            .node_get_info(v1::NodeGetInfoRequest {})
            .await,
        Code::Unimplemented,
    );
    assert!(!controller_caps(&driver).await.is_empty());
}

#[tokio::test]
async fn cluster_modes_without_an_api_server_exit_saying_so() {
    for mode in ["--mode=controller", "--mode=node"] {
        let mut driver = TestDriver::prepare(&[mode]).env("KUBECONFIG", "/nonexistent/kubeconfig");
        driver.spawn_unready();
        let status = driver.wait_exit(std::time::Duration::from_secs(30)).await;
        assert!(!status.success(), "{mode} started without an API server");
        assert!(
            driver.log().contains("needs the Kubernetes API"),
            "{mode} exited without saying why:\n{}",
            driver.log()
        );
    }
}
