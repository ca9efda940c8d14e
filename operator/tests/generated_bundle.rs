//! The OLM bundle is complete and in step with the operator's code: CSV fields, CRD copy,
//! bundle labels, examples valid against the CRD schema, every image and every permission
//! the operator can need listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod generated_support;

use std::collections::BTreeSet;

use generated_support::{read, repo_root, yaml};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use plinth_api::capabilities::{DriverFeatures, Sidecar};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::generate::{self, bundle, manager, policy, rbac, samples::SAMPLES};
use plinth_operator::render::{self, ManagedKind, RenderEnv, images};
use serde_json::Value;

fn csv() -> Value {
    yaml(&read(&format!("bundle/manifests/{}", bundle::CSV_FILE)))
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("CSV has no {pointer}"))
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    at(value, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("CSV {pointer} is not a string"))
}

#[test]
fn csv_has_every_required_field() {
    let csv = csv();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(text(&csv, "/apiVersion"), "operators.coreos.com/v1alpha1");
    assert_eq!(text(&csv, "/kind"), "ClusterServiceVersion");
    assert_eq!(
        text(&csv, "/metadata/name"),
        format!("plinth-operator.v{version}")
    );
    assert_eq!(text(&csv, "/spec/version"), version);
    assert_eq!(text(&csv, "/spec/maturity"), "alpha");
    for pointer in [
        "/spec/displayName",
        "/spec/description",
        "/spec/provider/name",
        "/spec/maintainers/0/name",
        "/spec/maintainers/0/email",
        "/spec/links/0/url",
        "/spec/keywords/0",
        "/spec/icon/0/mediatype",
        "/metadata/annotations/description",
        "/metadata/annotations/repository",
        "/metadata/annotations/support",
    ] {
        assert!(!text(&csv, pointer).trim().is_empty(), "{pointer} is empty");
    }
    let description = text(&csv, "/spec/description");
    for needle in [
        "kubectl patch csideployment",
        "kubectl get csidrivers",
        "kubectl get csinodes",
    ] {
        assert!(description.contains(needle), "description lacks `{needle}`");
    }
    assert_eq!(text(&csv, "/metadata/annotations/categories"), "Storage");
    assert!(
        [
            "Basic Install",
            "Seamless Upgrades",
            "Full Lifecycle",
            "Deep Insights",
            "Auto Pilot"
        ]
        .contains(&text(&csv, "/metadata/annotations/capabilities"))
    );
    assert!(text(&csv, "/metadata/annotations/olm.skipRange").ends_with(&format!("<{version}")));
}

#[test]
fn csv_icon_is_the_svg_base64_encoded() {
    let csv = csv();
    assert_eq!(text(&csv, "/spec/icon/0/mediatype"), "image/svg+xml");
    let data: k8s_openapi::ByteString =
        serde_json::from_value(at(&csv, "/spec/icon/0/base64data").clone()).unwrap();
    let svg = String::from_utf8(data.0).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn created_at_is_a_fixed_rfc3339_timestamp() {
    let created = text(&csv(), "/metadata/annotations/createdAt").to_owned();
    assert_eq!(created, bundle::CREATED_AT, "not derived from a clock");
    let time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(Value::String(created.clone())).unwrap();
    assert!(
        serde_json::to_string(&time)
            .unwrap()
            .contains(&created[..10])
    );
}

#[test]
fn min_kube_version_matches_the_k8s_openapi_feature() {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let feature_line = cargo
        .lines()
        .find(|l| l.starts_with("k8s-openapi"))
        .unwrap();
    let (major, minor) = bundle::MIN_KUBE_VERSION
        .strip_suffix(".0")
        .and_then(|v| v.split_once('.'))
        .unwrap();
    assert!(
        feature_line.contains(&format!("\"v{major}_{minor}\"")),
        "minKubeVersion {} but k8s-openapi is built with: {feature_line}",
        bundle::MIN_KUBE_VERSION
    );
    assert_eq!(
        text(&csv(), "/spec/minKubeVersion"),
        bundle::MIN_KUBE_VERSION
    );
}

#[test]
fn openshift_feature_annotations_are_all_set() {
    let csv = csv();
    let annotations = at(&csv, "/metadata/annotations").as_object().unwrap();
    for (feature, expected) in [
        ("disconnected", "true"),
        ("fips-compliant", "false"),
        ("proxy-aware", "false"),
        ("tls-profiles", "false"),
        ("token-auth-aws", "false"),
        ("token-auth-azure", "false"),
        ("token-auth-gcp", "false"),
        ("cnf", "false"),
        ("cni", "false"),
        ("csi", "true"),
    ] {
        let key = format!("features.operators.openshift.io/{feature}");
        assert_eq!(
            annotations.get(&key).and_then(Value::as_str),
            Some(expected),
            "{key}: a quoted \"true\"/\"false\" string"
        );
    }
    let legacy: Vec<String> = serde_json::from_str(
        annotations["operators.openshift.io/infrastructure-features"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(legacy, ["disconnected"]);
}

#[test]
fn only_all_namespaces_install_mode_is_supported() {
    let csv = csv();
    let modes: Vec<(String, bool)> = at(&csv, "/spec/installModes")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_owned(),
                m["supported"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(modes.len(), 4);
    for (mode, supported) in modes {
        assert_eq!(supported, mode == "AllNamespaces", "{mode}");
    }
}

#[test]
fn install_strategy_is_the_generated_deployment_and_rbac() {
    let csv = csv();
    assert_eq!(text(&csv, "/spec/install/strategy"), "deployment");
    let spec = at(&csv, "/spec/install/spec");
    assert_eq!(
        spec["deployments"][0]["spec"],
        serde_json::to_value(manager::deployment_spec()).unwrap()
    );
    assert_eq!(
        text(&csv, "/metadata/annotations/containerImage"),
        spec["deployments"][0]["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
    );
    let rules = |pointer: &str| -> Vec<PolicyRule> {
        serde_json::from_value(spec.pointer(pointer).unwrap().clone()).unwrap()
    };
    assert_eq!(rules("/clusterPermissions/0/rules"), rbac::cluster_rules());
    assert_eq!(rules("/permissions/0/rules"), rbac::namespaced_rules());
    for pointer in [
        "/clusterPermissions/0/serviceAccountName",
        "/permissions/0/serviceAccountName",
    ] {
        assert_eq!(spec.pointer(pointer).unwrap(), generate::SERVICE_ACCOUNT);
    }
}

/// The operator's CRD and the built-in driver's, as the code defines them.
fn all_crds() -> Vec<CustomResourceDefinition> {
    std::iter::once(CsiDeployment::crd())
        .chain(generate::driver_crds())
        .collect()
}

#[test]
fn bundle_crds_are_byte_identical_to_config_crds() {
    assert_eq!(
        generate::crd_file(&CsiDeployment::crd()),
        generate::CRD_FILE
    );
    for crd in all_crds() {
        let file = generate::crd_file(&crd);
        let config = read(&format!("config/crd/bases/{file}"));
        let bundle = read(&format!("bundle/manifests/{file}"));
        assert_eq!(config, bundle, "{file}");
        let parsed: Value = yaml(&bundle);
        assert_eq!(parsed, serde_json::to_value(&crd).unwrap(), "{file}");
    }
}

/// CustomResourceDefinition names of the files in bundle/manifests.
fn bundle_crd_names() -> BTreeSet<String> {
    let dir = repo_root().join("bundle/manifests");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|path| {
            let object: Value = yaml(&std::fs::read_to_string(&path).unwrap());
            (object["kind"] == "CustomResourceDefinition")
                .then(|| object["metadata"]["name"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn the_csv_owns_exactly_the_bundles_crds_and_hides_the_drivers() {
    let csv = csv();
    let owned = at(&csv, "/spec/customresourcedefinitions/owned")
        .as_array()
        .unwrap();
    let owned_names: BTreeSet<String> = owned
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(owned_names.len(), owned.len(), "a CRD is listed twice");
    assert_eq!(owned_names, bundle_crd_names());
    for crd in all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        let entry = owned.iter().find(|o| o["name"] == name.as_str()).unwrap();
        assert_eq!(entry["kind"], crd.spec.names.kind.as_str(), "{name}");
        assert_eq!(
            entry["version"],
            crd.spec.versions[0].name.as_str(),
            "{name}"
        );
        for key in ["displayName", "description"] {
            assert!(
                !entry[key].as_str().unwrap_or_default().is_empty(),
                "{name}: no {key}"
            );
        }
    }
    // Users manage PVCs and VolumeSnapshots, not the driver's bookkeeping: the console
    // must not offer forms for it. The CsiDeployment stays public.
    let internal: Vec<String> = serde_json::from_str(text(
        &csv,
        "/metadata/annotations/operators.operatorframework.io~1internal-objects",
    ))
    .unwrap();
    let drivers: Vec<String> = generate::driver_crds()
        .into_iter()
        .map(|crd| crd.metadata.name.unwrap())
        .collect();
    assert_eq!(internal, drivers);
    assert_eq!(
        internal,
        [
            "poolvolumes.plinth.dev",
            "poolsnapshots.plinth.dev",
            "poolnodes.plinth.dev"
        ]
    );
}

#[test]
fn owned_crd_matches_the_crd_and_lists_descriptors() {
    let csv = csv();
    let crd = CsiDeployment::crd();
    let owned = at(&csv, "/spec/customresourcedefinitions/owned/0");
    assert_eq!(owned["name"], crd.metadata.name.clone().unwrap().as_str());
    assert_eq!(owned["kind"], crd.spec.names.kind.as_str());
    assert_eq!(owned["version"], crd.spec.versions[0].name.as_str());
    assert!(!owned["description"].as_str().unwrap().is_empty());
    let paths = |key: &str| -> BTreeSet<String> {
        owned[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap().to_owned())
            .collect()
    };
    for path in ["features.snapshots", "features.resize", "namespace"] {
        assert!(paths("specDescriptors").contains(path), "{path}");
    }
    assert!(paths("statusDescriptors").contains("conditions"));
    let kinds: BTreeSet<&str> = owned["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for kind in ManagedKind::ALL {
        assert!(
            kinds.contains(kind.api_resource().kind.as_str()),
            "{kind:?}"
        );
    }
}

#[test]
fn bundle_dockerfile_labels_equal_annotations_yaml() {
    let annotations: Value = yaml(&read("bundle/metadata/annotations.yaml"));
    let annotations = annotations["annotations"].as_object().unwrap();
    let dockerfile = read("bundle/bundle.Dockerfile");
    let labels: serde_json::Map<String, Value> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("LABEL "))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), Value::String(v.to_owned()))
        })
        .collect();
    assert_eq!(&labels, annotations);
    for (key, value) in [
        ("mediatype.v1", "registry+v1"),
        ("manifests.v1", "manifests/"),
        ("metadata.v1", "metadata/"),
        ("package.v1", "plinth-operator"),
        ("channels.v1", "alpha"),
        ("channel.default.v1", "alpha"),
    ] {
        let key = format!("operators.operatorframework.io.bundle.{key}");
        assert_eq!(annotations[&key], value, "{key}");
    }
    assert!(dockerfile.contains("\nFROM scratch\n"));
    assert!(dockerfile.contains("COPY manifests /manifests/"));
    assert!(dockerfile.contains("COPY metadata /metadata/"));
}

/// (Their validity against the CRD's schema is checked, strictly, by
/// `installed_manifests_and_samples_pass_the_kubernetes_schemas`: they are the same bytes.)
#[test]
fn alm_examples_are_the_samples_and_pass_the_operators_validation() {
    let csv = csv();
    let examples: Vec<Value> =
        serde_json::from_str(text(&csv, "/metadata/annotations/alm-examples")).unwrap();
    assert_eq!(examples.len(), SAMPLES.len());
    for (example, sample) in examples.iter().zip(SAMPLES) {
        assert_eq!(example, &sample.as_json().unwrap(), "{}", sample.file);
        assert_eq!(example["apiVersion"], "plinth.dev/v1alpha1");
        assert_eq!(example["kind"], "CsiDeployment");
        let cr = sample.parse().unwrap();
        plinth_operator::validate::validate_in(&cr, &sample_env(sample, RenderEnv::default()))
            .unwrap_or_else(|e| panic!("{} fails the operator's validation: {e}", sample.file));
    }
}

/// The most the renderer can produce: every optional CRD present and a built-in driver
/// serving every feature it has (the RBAC the operator holds must cover future releases of
/// the driver too, not only what this build serves).
fn env_with_everything() -> RenderEnv {
    RenderEnv {
        snapshot_crds_present: true,
        group_snapshot_crds_present: true,
        builtin_features: DriverFeatures::default(),
        driver_capabilities: None,
    }
}

/// `env` with the sample's probe answer, for a sample that declares no capabilities
/// (the operator renders it once the probe answered).
fn sample_env(sample: &generate::samples::Sample, env: RenderEnv) -> RenderEnv {
    let stem = sample.fixture.trim_end_matches(".yaml");
    RenderEnv {
        driver_capabilities: common::advertised(stem),
        ..env
    }
}

/// Every sample rendered with [`env_with_everything`].
fn rendered_samples() -> Vec<(&'static str, Vec<Value>)> {
    SAMPLES
        .iter()
        .map(|sample| {
            let cr = sample.parse().unwrap();
            let rendered = render::render(&cr, &sample_env(sample, env_with_everything()))
                .unwrap_or_else(|e| panic!("{}: {e}", sample.file));
            (
                sample.file,
                rendered.objects.iter().map(|o| o.to_apply_json()).collect(),
            )
        })
        .collect()
}

fn images_in(object: &Value) -> Vec<String> {
    let pod = &object["spec"]["template"]["spec"];
    ["containers", "initContainers"]
        .iter()
        .filter_map(|key| pod[key].as_array())
        .flatten()
        .filter_map(|c| c["image"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn related_images_cover_every_default_image() {
    let csv = csv();
    let entries = at(&csv, "/spec/relatedImages").as_array().unwrap();
    let listed: BTreeSet<String> = entries
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_owned())
        .collect();
    let names: BTreeSet<&str> = entries
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), entries.len(), "relatedImages names are unique");
    assert_eq!(listed.len(), entries.len(), "no image is listed twice");
    assert!(listed.contains(&manager::operator_image()));
    for image in images::all_default_images() {
        assert!(listed.contains(image), "relatedImages lacks {image}");
    }
    // And what the renderer really puts in pods when the CR leaves images alone.
    for sample in SAMPLES {
        let mut cr = sample.parse().unwrap();
        if cr.spec.driver.third_party.is_some() {
            continue; // a third-party image is the user's, not ours to mirror
        }
        cr.spec.images = Default::default();
        cr.spec.driver.image = None;
        let rendered = render::render(&cr, &env_with_everything()).unwrap();
        for object in &rendered.objects {
            for image in images_in(&object.to_apply_json()) {
                assert!(
                    listed.contains(&image),
                    "{}: {image} not in relatedImages",
                    sample.file
                );
            }
        }
    }
}

#[test]
fn operator_cluster_role_holds_every_permission_it_grants() {
    let held = rbac::cluster_rules();
    let csv_rules: Vec<PolicyRule> =
        serde_json::from_value(at(&csv(), "/spec/install/spec/clusterPermissions/0/rules").clone())
            .unwrap();
    let config_role: Value = yaml(&read("config/rbac/role.yaml"));
    let config_rules: Vec<PolicyRule> =
        serde_json::from_value(config_role["rules"].clone()).unwrap();
    assert_eq!(config_rules, held);
    assert_eq!(csv_rules, held);

    // Every rule of every sidecar, in any configuration.
    for sidecar in Sidecar::ALL {
        let rules = render::rbac::sidecar_rules(sidecar);
        let gaps = policy::missing(&held, &[rules.cluster, rules.namespaced].concat());
        assert!(gaps.is_empty(), "{sidecar:?}: operator lacks {gaps:#?}");
    }
    // Every rule of the built-in driver's plugins.
    for plugin in render::rbac::DriverPlugin::ALL {
        let gaps = policy::missing(&held, &render::rbac::driver_rules(plugin));
        assert!(gaps.is_empty(), "{plugin:?}: operator lacks {gaps:#?}");
    }
    // Every rule the renderer actually emits for the samples (sidecars and driver alike).
    let mut checked = 0;
    for (file, objects) in rendered_samples() {
        for object in objects {
            if !matches!(object["kind"].as_str(), Some("Role" | "ClusterRole")) {
                continue;
            }
            let rules: Vec<PolicyRule> =
                serde_json::from_value(object["rules"].clone()).unwrap_or_default();
            checked += rules.len();
            let gaps = policy::missing(&held, &rules);
            assert!(
                gaps.is_empty(),
                "{file}: {} {} grants what the operator lacks: {:?}",
                object["kind"],
                object["metadata"]["name"],
                gaps.iter().map(ToString::to_string).collect::<Vec<_>>()
            );
        }
    }
    assert!(checked > 0, "the samples rendered no RBAC rules at all");
}

#[test]
fn operator_cluster_role_manages_every_kind_without_update_or_wildcards() {
    let held = rbac::cluster_rules();
    for kind in ManagedKind::ALL {
        let ar = kind.api_resource();
        let wanted = policy::rule(
            &[ar.group.as_str()],
            &[ar.plural.as_str()],
            &["get", "list", "watch", "create", "patch", "delete"],
        );
        assert!(policy::missing(&held, &[wanted]).is_empty(), "{kind:?}");
    }
    for rule in &held {
        assert!(
            !rule.verbs.iter().any(|v| v == "*"),
            "wildcard verb: {rule:?}"
        );
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "*"),
            "wildcard resource: {rule:?}"
        );
        assert!(
            !rule.verbs.iter().any(|v| v == "escalate"),
            "the operator holds what it grants instead of escalating: {rule:?}"
        );
        // `bind` only on the shipped operation-secret reader, by name: the operator never
        // holds Secret access itself (see render::secrets).
        if rule.verbs.iter().any(|v| v == "bind") {
            assert_eq!(
                rule,
                &PolicyRule {
                    api_groups: Some(vec!["rbac.authorization.k8s.io".to_owned()]),
                    resources: Some(vec!["clusterroles".to_owned()]),
                    resource_names: Some(vec!["plinth-operation-secret-reader".to_owned()]),
                    verbs: vec!["bind".to_owned()],
                    ..PolicyRule::default()
                },
                "bind beyond the operation-secret reader"
            );
        }
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "secrets"),
            "the operator must not hold Secret access: {rule:?}"
        );
    }
    // `update` only where something the operator grants needs it, or on finalizers.
    let update_needed: Vec<PolicyRule> = rbac::grantable_rules()
        .into_iter()
        .chain([policy::rule(
            &["plinth.dev"],
            &["csideployments/finalizers"],
            &["update"],
        )])
        .collect();
    for grant in held.iter().flat_map(policy::grants) {
        if grant.verb == "update" {
            assert!(
                policy::missing(
                    &update_needed,
                    &[policy::rule(
                        &[grant.group.as_str()],
                        &[grant.resource.as_str()],
                        &["update"]
                    )]
                )
                .is_empty(),
                "needless update: {grant}"
            );
        }
    }
}

#[test]
fn the_operation_secret_reader_ships_in_config_and_bundle_and_only_gets_secrets() {
    let file = generate::OPERATION_SECRET_READER_FILE;
    let config = read(&format!("config/rbac/{file}"));
    assert_eq!(config, read(&format!("bundle/manifests/{file}")));
    let role: Value = yaml(&config);
    assert_eq!(role["kind"], "ClusterRole");
    assert_eq!(role["metadata"]["name"], "plinth-operation-secret-reader");
    let rules: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone()).unwrap();
    assert_eq!(rules, [policy::rule(&[""], &["secrets"], &["get"])]);
    assert!(
        read("config/rbac/kustomization.yaml").contains(file),
        "config/rbac/kustomization.yaml does not list {file}"
    );
}
