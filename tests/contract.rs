//! Contracts between the operator and the built-in driver that need both crates linked.
//! The operator no longer depends on the driver (they share `plinth-api`), so the checks
//! that hold one to the other live here, in the one crate that links both. No cluster
//! needed: these run with a plain `cargo test -p plinth-e2e`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use clap::Parser;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use plinth_api::Feature;
use plinth_api::capabilities::{
    Capabilities, ControllerCapability as C, DriverFeatures, NodeCapability, PluginCapability,
};
use plinth_driver::csi::advertise;
use plinth_operator::crd::CsiDeployment;
use plinth_operator::probe::convert;
use plinth_operator::render::{self, ManagedObject, RenderEnv, Rendered};

/// The operator's render fixtures (`operator/tests/fixtures`).
fn fixture(name: &str) -> CsiDeployment {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../operator/tests/fixtures")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    render::yaml::parse(&text).unwrap_or_else(|e| panic!("fixture {name}: {e:?}"))
}

/// Every optional CRD present, and the built-in driver of this release as a cluster pair
/// serves it (the operator tests' `full_env`).
fn full_env() -> RenderEnv {
    RenderEnv {
        snapshot_crds_present: true,
        group_snapshot_crds_present: true,
        builtin_features: plinth_api::served_features(),
        driver_capabilities: None,
    }
}

fn controller_pod(r: &Rendered) -> &PodSpec {
    r.objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::StatefulSet(s) => s.spec.as_ref()?.template.spec.as_ref(),
            _ => None,
        })
        .expect("a controller StatefulSet")
}

fn node_pod(r: &Rendered) -> &PodSpec {
    r.objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
            _ => None,
        })
        .expect("a node DaemonSet")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Container> {
    pod.containers.iter().find(|c| c.name == name)
}

fn args(c: &Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

/// Every capability the model knows survives the driver's advertise -> the operator's
/// probe conversion unchanged.
#[test]
fn converting_is_the_inverse_of_what_the_driver_advertises() {
    let mut all = DriverFeatures::default().capabilities();
    all.plugin.insert(PluginCapability::OfflineExpansion);
    all.controller.extend([
        C::PublishUnpublishVolume,
        C::PublishReadonly,
        C::ListVolumesPublishedNodes,
        C::ModifyVolume,
    ]);
    all.node.insert(NodeCapability::VolumeMountGroup);
    let mut back = Capabilities::default();
    convert::plugin(&advertise::plugin_capabilities(&all, true), &mut back);
    convert::controller(&advertise::controller_capabilities(&all), &mut back);
    convert::node(&advertise::node_capabilities(&all), &mut back);
    convert::group_controller(&advertise::group_controller_capabilities(&all), &mut back);
    // Lifecycle modes are no CSI message: never probed.
    all.lifecycle_modes.clear();
    assert_eq!(back, all);
}

#[test]
fn the_real_driver_cli_accepts_the_rendered_arguments() {
    for name in ["minimal", "bare", "full", "k0s", "air-gapped"] {
        for served in [DriverFeatures::default(), plinth_api::served_features()] {
            let env = RenderEnv {
                builtin_features: served,
                ..full_env()
            };
            let cr = fixture(name);
            let Ok(r) = render::render(&cr, &env) else {
                // full.yaml asks for features this release may not serve yet.
                continue;
            };
            for (mode, pod) in [("controller", controller_pod(&r)), ("node", node_pod(&r))] {
                let driver = container(pod, "plinth-driver").unwrap();
                let argv = std::iter::once("plinth-driver").chain(args(driver));
                let cli = plinth_driver::config::Cli::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{name} {mode}: {e}"));
                let config = plinth_driver::config::Config::from_cli(cli, Some("worker-1".into()))
                    .unwrap_or_else(|e| panic!("{name} {mode}: {e}"));
                assert_eq!(config.driver_name, cr.spec.driver.name);
                assert_eq!(config.mode.serves_controller(), mode == "controller");
                if mode == "controller" {
                    let half = plinth_operator::render::controller::go_duration_millis(
                        &cr.spec.controller.timeout,
                    )
                    .unwrap()
                        / 2;
                    assert_eq!(
                        config.handoff_timeout.as_millis(),
                        u128::from(half),
                        "{name}"
                    );
                }
                let planned = plinth_operator::render::Plan::new(&cr, &env)
                    .builtin
                    .unwrap();
                // The node is told only the switches the node side serves (the others
                // are the controller's business: toggling them must not roll the node).
                let node_side = |f: DriverFeatures| -> Vec<bool> {
                    Feature::ALL
                        .into_iter()
                        .filter(|feature| feature.changes_node())
                        .map(|feature| f.get(feature))
                        .collect()
                };
                if served == plinth_api::served_features() {
                    // The driver serves exactly the features the operator deployed for.
                    if mode == "controller" {
                        assert_eq!(config.features, planned, "{name} {mode}");
                    } else {
                        assert_eq!(
                            node_side(config.features),
                            node_side(planned),
                            "{name} {mode}"
                        );
                    }
                } else {
                    // Whatever the build serves, a switched-off feature stays off.
                    let on = |f: DriverFeatures| Feature::ALL.map(|feature| f.get(feature));
                    let pairs: Vec<(bool, bool)> = if mode == "controller" {
                        on(config.features).into_iter().zip(on(planned)).collect()
                    } else {
                        node_side(config.features)
                            .into_iter()
                            .zip(node_side(planned))
                            .collect()
                    };
                    for (got, want) in pairs {
                        assert!(want || !got, "{name} {mode}");
                    }
                }
            }
        }
    }
}
