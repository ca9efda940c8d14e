//! The OLM bundle (registry+v1): the ClusterServiceVersion rendered from
//! `operator/templates/csv.yaml.hbs`, its metadata/annotations.yaml and bundle.Dockerfile.
//!
//! Whatever the operator's code decides is filled in from that code: the CRD's schema
//! (descriptors), the RBAC of [`super::rbac`], the Deployment of [`super::manager`], the
//! default images of [`crate::render::images`] and the samples.

use std::collections::BTreeMap;

use handlebars::{Handlebars, handlebars_helper};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use serde::Serialize;
use serde_json::json;

use super::samples::SAMPLES;
use super::{GenerateError, NAMESPACE, OPERATOR_NAME, SERVICE_ACCOUNT, manager, rbac, yaml};
use crate::render::ManagedKind;
use crate::render::images;

/// The OLM package and its only channel.
pub const PACKAGE: &str = "plinth-operator";
pub const CHANNEL: &str = "alpha";
/// File names under bundle/manifests.
pub const CSV_FILE: &str = "plinth-operator.clusterserviceversion.yaml";
/// The release date of this version, for the CSV's `createdAt`. A constant, bumped with the
/// version: a clock here would make every `generate --check` report drift.
pub const CREATED_AT: &str = "2026-11-22T00:00:00Z";
/// The CSV this one upgrades from (`spec.replaces`); none for the first release.
pub const REPLACES_VERSION: Option<&str> = None;
/// Oldest Kubernetes the operator supports: the API level it is compiled against
/// (k8s-openapi feature `v1_34` in the workspace Cargo.toml; a test keeps them equal).
pub const MIN_KUBE_VERSION: &str = "1.34.0";
pub const REPOSITORY: &str = "https://github.com/plinth-dev/plinth";

const TEMPLATE: &str = include_str!("../../templates/csv.yaml.hbs");
const ICON_SVG: &[u8] = include_bytes!("../../templates/icon.svg");

/// The bundle's labels: metadata/annotations.yaml and bundle.Dockerfile's LABELs carry
/// exactly these (OLM reads the former, registries index the latter).
pub fn bundle_annotations() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "operators.operatorframework.io.bundle.mediatype.v1",
            "registry+v1",
        ),
        (
            "operators.operatorframework.io.bundle.manifests.v1",
            "manifests/",
        ),
        (
            "operators.operatorframework.io.bundle.metadata.v1",
            "metadata/",
        ),
        ("operators.operatorframework.io.bundle.package.v1", PACKAGE),
        ("operators.operatorframework.io.bundle.channels.v1", CHANNEL),
        (
            "operators.operatorframework.io.bundle.channel.default.v1",
            CHANNEL,
        ),
    ]
}

pub fn annotations_yaml() -> Result<String, GenerateError> {
    let annotations: BTreeMap<&str, &str> = bundle_annotations().into_iter().collect();
    yaml::document(
        "bundle annotations",
        &BTreeMap::from([("annotations", annotations)]),
    )
}

/// bundle/bundle.Dockerfile; build with the bundle directory as context.
pub fn dockerfile() -> String {
    let mut out = format!(
        "{}# Build: podman build -f bundle/bundle.Dockerfile \
         -t ghcr.io/plinth-dev/plinth-operator-bundle:v{} bundle/\nFROM scratch\n\n",
        yaml::HEADER,
        env!("CARGO_PKG_VERSION"),
    );
    for (key, value) in bundle_annotations() {
        out.push_str(&format!("LABEL {key}={value}\n"));
    }
    out.push_str("\nCOPY manifests /manifests/\nCOPY metadata /metadata/\n");
    out
}

/// `name` of a CSV for a version.
fn csv_name(version: &str) -> String {
    format!("{PACKAGE}.v{version}")
}

handlebars_helper!(indent: |width: u64, text: str| {
    let pad = " ".repeat(usize::try_from(width).unwrap_or(0));
    text.trim_end_matches('\n')
        .lines()
        .map(|line| if line.is_empty() { String::new() } else { format!("{pad}{line}") })
        .collect::<Vec<_>>()
        .join("\n")
});

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Permission {
    service_account_name: &'static str,
    rules: Vec<PolicyRule>,
}

#[derive(Serialize)]
struct InstallDeployment {
    name: &'static str,
    label: BTreeMap<String, String>,
    spec: DeploymentSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstallSpec {
    cluster_permissions: Vec<Permission>,
    permissions: Vec<Permission>,
    deployments: Vec<InstallDeployment>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    path: String,
    display_name: &'static str,
    description: String,
    #[serde(rename = "x-descriptors")]
    x_descriptors: Vec<String>,
}

#[derive(Serialize)]
struct OwnedResource {
    kind: String,
    name: &'static str,
    version: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnedCrd {
    name: String,
    version: String,
    kind: String,
    display_name: String,
    description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resources: Vec<OwnedResource>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    spec_descriptors: Vec<Descriptor>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    status_descriptors: Vec<Descriptor>,
}

#[derive(Serialize)]
struct RelatedImage {
    name: String,
    image: String,
}

const TEXT: &str = "urn:alm:descriptor:com.tectonic.ui:text";

/// The fields the console form offers, with how to show them. Descriptions and the
/// choices of enum fields come from the CRD schema (the Rust doc comments), so a renamed
/// or removed field fails generation instead of leaving a dead descriptor.
const SPEC_FIELDS: &[(&str, &str, Option<&str>)] = &[
    (
        "namespace",
        "Namespace",
        Some("urn:alm:descriptor:io.kubernetes:Namespace"),
    ),
    ("driver.name", "Driver name", None),
    ("driver.image", "Driver image", None),
    ("driver.logLevel", "Log level", None),
    ("features.snapshots", "Snapshots", None),
    ("features.resize", "Volume expansion", None),
    ("features.clones", "Clones", None),
    ("features.ephemeral", "Ephemeral volumes", None),
    ("features.capacityTracking", "Capacity tracking", None),
    ("features.topology", "Topology", None),
    (
        "controller.replicas",
        "Controller replicas",
        Some("urn:alm:descriptor:com.tectonic.ui:podCount"),
    ),
    ("node.kubeletDir", "kubelet directory", None),
    ("images.registry", "Image registry mirror", None),
    ("deletionPolicy", "Deletion policy", None),
];

const STATUS_FIELDS: &[(&str, &str, Option<&str>)] = &[
    (
        "conditions",
        "Conditions",
        Some("urn:alm:descriptor:io.kubernetes.conditions"),
    ),
    ("registration", "Registered nodes", None),
    ("registeredNodes", "Nodes with the driver registered", None),
    ("targetedNodes", "Nodes targeted", None),
    ("driverName", "Driver name", None),
    ("remainingVolumes", "Volumes blocking deletion", None),
];

fn schema_at<'a>(root: &'a JSONSchemaProps, path: &str) -> Option<&'a JSONSchemaProps> {
    path.split('.')
        .try_fold(root, |node, key| node.properties.as_ref()?.get(key))
}

/// The first sentence of a schema description: the console shows it as a tooltip.
fn first_sentence(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.find(". ") {
        Some(end) => text[..=end].to_owned(),
        None => text,
    }
}

fn descriptors(
    root: &JSONSchemaProps,
    section: &str,
    fields: &[(&str, &'static str, Option<&str>)],
) -> Result<Vec<Descriptor>, GenerateError> {
    fields
        .iter()
        .map(|&(path, display_name, explicit)| {
            let full = format!("{section}.{path}");
            let schema =
                schema_at(root, &full).ok_or_else(|| GenerateError::SchemaPath(full.clone()))?;
            let x_descriptors = match (explicit, schema.type_.as_deref(), &schema.enum_) {
                (Some(x), _, _) => vec![x.to_owned()],
                (None, _, Some(values)) => values
                    .iter()
                    .filter_map(|v| v.0.as_str())
                    .map(|v| format!("urn:alm:descriptor:com.tectonic.ui:select:{v}"))
                    .collect(),
                (None, Some("boolean"), None) => {
                    vec!["urn:alm:descriptor:com.tectonic.ui:booleanSwitch".to_owned()]
                }
                (None, Some("integer"), None) => {
                    vec!["urn:alm:descriptor:com.tectonic.ui:number".to_owned()]
                }
                _ => vec![TEXT.to_owned()],
            };
            Ok(Descriptor {
                path: path.to_owned(),
                display_name,
                description: schema
                    .description
                    .as_deref()
                    .map(first_sentence)
                    .unwrap_or_default(),
                x_descriptors,
            })
        })
        .collect()
}

/// The storage version of a CRD and its schema.
fn storage_schema(
    crd: &CustomResourceDefinition,
) -> Result<(&str, &JSONSchemaProps), GenerateError> {
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .ok_or_else(|| GenerateError::SchemaPath("spec.versions[storage]".to_owned()))?;
    let root = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| GenerateError::SchemaPath("openAPIV3Schema".to_owned()))?;
    Ok((&version.name, root))
}

/// An owned CRD's entry without descriptors: name, version, kind, names for people.
fn owned_entry(
    crd: &CustomResourceDefinition,
    display_name: String,
) -> Result<OwnedCrd, GenerateError> {
    let (version, root) = storage_schema(crd)?;
    Ok(OwnedCrd {
        name: crd.metadata.name.clone().unwrap_or_default(),
        version: version.to_owned(),
        kind: crd.spec.names.kind.clone(),
        display_name,
        description: root
            .description
            .as_deref()
            .map(first_sentence)
            .unwrap_or_default(),
        resources: Vec::new(),
        spec_descriptors: Vec::new(),
        status_descriptors: Vec::new(),
    })
}

/// The CsiDeployment: what it creates, and the console form's descriptors.
fn owned_crd(crd: &CustomResourceDefinition) -> Result<OwnedCrd, GenerateError> {
    let (_, root) = storage_schema(crd)?;
    let resources = ManagedKind::ALL
        .iter()
        .map(|kind| {
            let ar = kind.api_resource();
            OwnedResource {
                kind: ar.kind,
                name: "",
                version: ar.version,
            }
        })
        .collect();
    Ok(OwnedCrd {
        resources,
        spec_descriptors: descriptors(root, "spec", SPEC_FIELDS)?,
        status_descriptors: descriptors(root, "status", STATUS_FIELDS)?,
        ..owned_entry(crd, "CSI Deployment".to_owned())?
    })
}

/// `PoolVolume` -> `Pool Volume`.
fn words(kind: &str) -> String {
    let mut out = String::new();
    for c in kind.chars() {
        if c.is_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The driver's CRDs: listed as owned (OLM installs and upgrades only owned CRDs) and
/// marked internal, so the console offers no form to create them.
fn owned_driver_crd(crd: &CustomResourceDefinition) -> Result<OwnedCrd, GenerateError> {
    owned_entry(crd, words(&crd.spec.names.kind))
}

/// The `operators.operatorframework.io/internal-objects` annotation: a JSON list of CRD
/// names.
fn internal_objects(driver_crds: &[CustomResourceDefinition]) -> Result<String, GenerateError> {
    let names: Vec<&str> = driver_crds
        .iter()
        .filter_map(|crd| crd.metadata.name.as_deref())
        .collect();
    serde_json::to_string(&names).map_err(GenerateError::Json)
}

/// Every image a default install can run, named: the operator, the driver, each sidecar.
pub fn related_images() -> Vec<(String, String)> {
    let mut out = vec![
        (OPERATOR_NAME.to_owned(), manager::operator_image()),
        ("plinth-driver".to_owned(), images::DRIVER_IMAGE.to_owned()),
    ];
    for (sidecar, image) in images::SIDECAR_IMAGES {
        let name = images::image_name(*sidecar).to_owned();
        if !out.iter().any(|(_, i)| i == image) {
            out.push((name, (*image).to_owned()));
        }
    }
    out
}

fn install_spec() -> InstallSpec {
    InstallSpec {
        cluster_permissions: vec![Permission {
            service_account_name: SERVICE_ACCOUNT,
            rules: rbac::cluster_rules(),
        }],
        permissions: vec![Permission {
            service_account_name: SERVICE_ACCOUNT,
            rules: rbac::namespaced_rules(),
        }],
        deployments: vec![InstallDeployment {
            name: OPERATOR_NAME,
            label: manager::labels(),
            spec: manager::deployment_spec(),
        }],
    }
}

fn alm_examples() -> Result<String, GenerateError> {
    let examples = SAMPLES
        .iter()
        .map(|s| s.as_json())
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_string_pretty(&examples).map_err(GenerateError::Json)
}

/// The ClusterServiceVersion YAML, owning the CsiDeployment CRD and the driver's.
pub fn csv(
    operator_crd: &CustomResourceDefinition,
    driver_crds: &[CustomResourceDefinition],
) -> Result<String, GenerateError> {
    let owned = std::iter::once(owned_crd(operator_crd))
        .chain(driver_crds.iter().map(owned_driver_crd))
        .collect::<Result<Vec<_>, _>>()?;
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // YAML, not HTML: values are inserted verbatim.
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("indent", Box::new(indent));
    hb.register_template_string("csv", TEMPLATE)
        .map_err(|e| GenerateError::TemplateSyntax(Box::new(e)))?;

    let related: Vec<RelatedImage> = related_images()
        .into_iter()
        .map(|(name, image)| RelatedImage { name, image })
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    // k8s-openapi's ByteString serializes as base64: reused rather than another dependency.
    let icon = serde_json::to_value(ByteString(ICON_SVG.to_vec())).map_err(GenerateError::Json)?;
    let data = json!({
        "header": yaml::HEADER,
        "name": csv_name(version),
        "version": version,
        "replaces": REPLACES_VERSION.map(csv_name),
        "skip_range": format!(">=0.0.0 <{version}"),
        "created_at": CREATED_AT,
        "container_image": manager::operator_image(),
        "repository": REPOSITORY,
        "namespace": NAMESPACE,
        "min_kube_version": MIN_KUBE_VERSION,
        "icon": icon,
        "alm_examples": alm_examples()?,
        "install_spec": yaml::body("the CSV install strategy", &install_spec())?,
        "owned_crds": yaml::body("the CSV's owned CRDs", &owned)?,
        "internal_objects": internal_objects(driver_crds)?,
        "related_images": yaml::body("the CSV's relatedImages", &related)?,
    });
    hb.render("csv", &data)
        .map_err(|e| GenerateError::Template(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;
    use crate::crd::CsiDeployment;

    fn schema() -> JSONSchemaProps {
        let crd = CsiDeployment::crd();
        let version = crd.spec.versions.into_iter().find(|v| v.storage).unwrap();
        version.schema.unwrap().open_api_v3_schema.unwrap()
    }

    #[test]
    fn a_descriptor_for_a_field_the_crd_lacks_fails_generation() {
        let err = descriptors(
            &schema(),
            "spec",
            &[("features.teleport", "Teleport", None)],
        )
        .err()
        .unwrap();
        assert!(matches!(err, GenerateError::SchemaPath(p) if p == "spec.features.teleport"));
    }

    #[test]
    fn descriptor_widgets_follow_the_schema_types() {
        let found = descriptors(
            &schema(),
            "spec",
            &[
                ("features.snapshots", "Snapshots", None),
                ("deletionPolicy", "Deletion policy", None),
            ],
        )
        .unwrap();
        assert_eq!(
            found[0].x_descriptors,
            ["urn:alm:descriptor:com.tectonic.ui:booleanSwitch"]
        );
        assert!(
            found[1]
                .x_descriptors
                .iter()
                .any(|x| x.ends_with(":select:OrphanVolumes")),
            "enum values become select options: {:?}",
            found[1].x_descriptors
        );
        assert!(found[0].description.starts_with("VolumeSnapshots"));
    }

    #[test]
    fn kinds_become_display_names_word_by_word() {
        assert_eq!(words("PoolVolume"), "Pool Volume");
        assert_eq!(words("PoolNode"), "Pool Node");
    }

    #[test]
    fn first_sentence_stops_at_the_first_full_stop_and_joins_lines() {
        assert_eq!(
            first_sentence("Controller pods. Above 1 the\n sidecars elect a leader."),
            "Controller pods."
        );
        assert_eq!(first_sentence("No stop at all"), "No stop at all");
    }
}
