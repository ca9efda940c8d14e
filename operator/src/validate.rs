//! Rules the OpenAPI schema cannot express (and, for `plinth-operator render`, which runs
//! without an apiserver, the few schema rules rendering relies on). Each error names the
//! field and says what to fix.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path};

use plinth_api::Feature;
use plinth_api::capabilities::{ControllerCapability, Sidecar};

use crate::crd::{
    CsiDeployment, DriverPodOptions, EncryptionSpec, LifecycleMode, StorageClassSpec,
};
use crate::render::controller::{MIN_BUILTIN_TIMEOUT_MILLIS, go_duration_millis};
use crate::render::images;
use crate::render::names::MAX_CR_NAME;
use crate::render::plan::Plan;
use crate::render::{RenderEnv, classes, secrets};

/// The StorageClass parameter naming the volumes' filesystem.
const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";

/// One problem in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.storageClasses[1].name`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found (validation does not stop at the first).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Whether some error is about `field` (exactly that path).
    pub fn has_field(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Validate against the built-in driver of this release.
pub fn validate(cr: &CsiDeployment) -> Result<(), ValidationErrors> {
    validate_in(cr, &RenderEnv::default())
}

/// Validate against the built-in driver features in `env` (rendering passes its own).
pub fn validate_in(cr: &CsiDeployment, env: &RenderEnv) -> Result<(), ValidationErrors> {
    let mut errors = Errors::default();
    let plan = Plan::new(cr, env);
    metadata(cr, &mut errors);
    driver(cr, &mut errors);
    features(cr, env, &mut errors);
    paths(cr, &mut errors);
    inline_volumes(cr, &mut errors);
    csi_driver(cr, &plan, &mut errors);
    third_party_pods(cr, &mut errors);
    per_node(cr, &plan, &mut errors);
    classes(cr, &plan, &mut errors);
    operation_secrets(cr, &plan, &mut errors);
    images_and_resources(cr, &mut errors);
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors.0))
    }
}

/// RFC 1123 label: what namespaces and the object names derived from the CR name need.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_dns_subdomain(s: &str, max: usize) -> bool {
    s.len() <= max && !s.is_empty() && s.split('.').all(|part| is_dns_label(part, 63))
}

fn metadata(cr: &CsiDeployment, errors: &mut Errors) {
    let name = cr.metadata.name.as_deref().unwrap_or_default();
    if !is_dns_label(name, MAX_CR_NAME) {
        errors.add(
            "metadata.name",
            format!(
                "{name:?} must be a lowercase DNS label of at most {MAX_CR_NAME} characters: \
                 it names the StatefulSet, DaemonSet and roles (`plinth-<name>-controller`), \
                 whose pod and revision labels are limited to 63 characters"
            ),
        );
    }
    if !is_dns_label(&cr.spec.namespace, 63) {
        errors.add(
            "spec.namespace",
            format!(
                "{:?} is not a namespace name (a lowercase DNS label)",
                cr.spec.namespace
            ),
        );
    }
}

fn driver(cr: &CsiDeployment, errors: &mut Errors) {
    let driver = &cr.spec.driver;
    // CSI driver names are DNS subdomains of at most 63 characters; kubelet uses the name
    // as a directory, so mixed case is allowed by CSI but refused here to keep it portable.
    if !is_dns_subdomain(&driver.name, 63) {
        errors.add(
            "spec.driver.name",
            format!(
                "{:?} must be a lowercase DNS subdomain of at most 63 characters, \
                 e.g. local.csi.example.com",
                driver.name
            ),
        );
    }
    let Some(third) = &driver.third_party else {
        return;
    };
    if driver.image.is_none() {
        errors.add(
            "spec.driver.image",
            "a third-party driver needs its image: set spec.driver.image",
        );
    }
    if driver.name == crate::crd::BUILTIN_DRIVER_NAME {
        errors.add(
            "spec.driver.name",
            "a third-party driver needs its own name (the one its GetPluginInfo reports); \
             local.csi.plinth.dev is the built-in driver's",
        );
    }
    let Some(caps) = &third.capabilities else {
        return third_party_limits(cr, errors);
    };
    if !caps.controller.is_empty() && !caps.has_controller_service() {
        errors.add(
            "spec.driver.thirdParty.capabilities.plugin",
            "controller capabilities are declared but CONTROLLER_SERVICE is not: add \
             CONTROLLER_SERVICE to plugin, or remove the controller capabilities",
        );
    }
    if caps.has_controller_service()
        && !caps
            .controller
            .contains(&ControllerCapability::CreateDeleteVolume)
    {
        errors.add(
            "spec.driver.thirdParty.capabilities.controller",
            "CONTROLLER_SERVICE without CREATE_DELETE_VOLUME deploys no provisioner, so \
             StorageClasses of this driver could never provision: add CREATE_DELETE_VOLUME",
        );
    }
    third_party_limits(cr, errors);
}

/// Node settings only the built-in driver understands.
fn third_party_limits(cr: &CsiDeployment, errors: &mut Errors) {
    if cr.spec.node.pool_reserve.is_some() {
        errors.add(
            "spec.node.poolReserve",
            "applies to the built-in driver only: remove it or spec.driver.thirdParty",
        );
    }
    if cr.spec.node.max_volumes_per_node.is_some() {
        errors.add(
            "spec.node.maxVolumesPerNode",
            "applies to the built-in driver only (a third-party driver reports its own \
             limit): remove it",
        );
    }
}

/// The built-in driver runs as a controller and node plugins that hand work to each other
/// through the API: some features follow from that design, not from the release.
fn builtin_features(cr: &CsiDeployment, env: &RenderEnv, errors: &mut Errors) {
    let f = &cr.spec.features;
    let served = env.builtin_features.capabilities();
    for feature in Feature::ALL {
        if f.get(feature) != Some(true) || feature.served_by(&served) {
            continue;
        }
        let message = match feature {
            Feature::GroupSnapshots => {
                "the built-in driver does not serve group snapshots in a cluster: its \
                 volumes live in different nodes' pools, and no single point in time spans \
                 them; unset it or set it to false"
            }
            _ => {
                "the built-in driver of this release does not serve it yet: unset it \
                 (unset features follow what the driver serves) or set it to false"
            }
        };
        errors.add(format!("spec.features.{}", feature.field()), message);
    }
    if f.get(Feature::Topology) == Some(false) {
        errors.add(
            "spec.features.topology",
            "the built-in driver needs topology: each volume lives in one node's pool, so \
             the provisioner must create it where the pod is scheduled; unset it or set it \
             to true",
        );
    }
    let timeout = &cr.spec.controller.timeout;
    if go_duration_millis(timeout).is_none_or(|ms| ms < MIN_BUILTIN_TIMEOUT_MILLIS) {
        errors.add(
            "spec.controller.timeout",
            format!(
                "{timeout:?} is too short for the built-in driver: its controller waits half \
                 the sidecars' timeout for the node plugin before answering ABORTED, and \
                 needs at least a second of that; use 2s or more (60s is the default)"
            ),
        );
    }
}

fn features(cr: &CsiDeployment, env: &RenderEnv, errors: &mut Errors) {
    let f = &cr.spec.features;
    if f.get(Feature::GroupSnapshots) == Some(true) && f.get(Feature::Snapshots) == Some(false) {
        errors.add(
            "spec.features.groupSnapshots",
            "group snapshots need snapshots: set features.snapshots to true or unset it",
        );
    }
    let Some(third) = &cr.spec.driver.third_party else {
        builtin_features(cr, env, errors);
        return;
    };
    let Some(caps) = crate::render::plan::third_party_capabilities(third, env) else {
        errors.add(
            "spec.driver.thirdParty.capabilities",
            "neither declared nor probed yet: the operator renders a third-party driver \
             once its probe Job has answered (or declare them and set thirdParty.probe to \
             false)",
        );
        return;
    };
    for feature in Feature::ALL {
        if f.get(feature) == Some(true) && !feature.served_by(&caps) {
            errors.add(
                format!("spec.features.{}", feature.field()),
                format!(
                    "the driver's declared capabilities cannot serve it (needs {}): declare \
                     the capability in spec.driver.thirdParty.capabilities if the driver has \
                     it, or set the feature to false",
                    feature.required_capability()
                ),
            );
        }
    }
}

/// Absolute, normalised, not the root: these become hostPath mounts of a privileged pod.
fn check_host_path(field: &str, path: &str, errors: &mut Errors) {
    let p = Path::new(path);
    let normal = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !p.is_absolute() || !normal || p.parent().is_none() || path.ends_with('/') {
        errors.add(
            field,
            format!(
                "{path:?} must be an absolute host path without `.`/`..`, a trailing `/` \
                 or being `/` itself"
            ),
        );
    }
}

fn paths(cr: &CsiDeployment, errors: &mut Errors) {
    let node = &cr.spec.node;
    check_host_path("spec.node.kubeletDir", &node.kubelet_dir, errors);
    if cr.spec.is_builtin() {
        let pool_path = cr.spec.pool_path();
        check_host_path("spec.node.poolPath", &pool_path, errors);
        let kubelet = Path::new(&node.kubelet_dir);
        let pool = Path::new(&pool_path);
        if pool.starts_with(kubelet) || kubelet.starts_with(pool) {
            errors.add(
                "spec.node.poolPath",
                format!(
                    "{pool_path:?} overlaps kubeletDir {:?}: the pool must be a directory of \
                     its own (kubelet manages everything under its root)",
                    node.kubelet_dir
                ),
            );
        }
    }
}

/// Inline-volume limits the driver would refuse at start (it would crash-loop instead).
fn inline_volumes(cr: &CsiDeployment, errors: &mut Errors) {
    let Some(limits) = &cr.spec.node.inline_volumes else {
        return;
    };
    if !cr.spec.is_builtin() {
        errors.add(
            "spec.node.inlineVolumes",
            "applies to the built-in driver only: remove it or spec.driver.thirdParty",
        );
        return;
    }
    let defaults = plinth_api::ephemeral::Limits::default();
    let size = |field: &str, value: &Option<String>, default: u64, errors: &mut Errors| match value
        .as_deref()
        .map(plinth_api::parse_size)
    {
        None => Some(default),
        Some(Ok(bytes)) if bytes > 0 => Some(bytes),
        Some(_) => {
            errors.add(
                format!("spec.node.inlineVolumes.{field}"),
                "must be a size above zero, e.g. 1Gi",
            );
            None
        }
    };
    let default_size = size(
        "defaultSize",
        &limits.default_size,
        defaults.default_bytes,
        errors,
    );
    let max_size = size("maxSize", &limits.max_size, defaults.max_bytes, errors);
    let total = size(
        "maxTotalSize",
        &limits.max_total_size,
        defaults.node_max_bytes,
        errors,
    );
    if let (Some(default_size), Some(max_size)) = (default_size, max_size)
        && default_size > max_size
    {
        errors.add(
            "spec.node.inlineVolumes.defaultSize",
            format!(
                "{default_size} bytes is above maxSize ({max_size} bytes): lower it or raise maxSize"
            ),
        );
    }
    if let (Some(max_size), Some(total)) = (max_size, total)
        && max_size > total
    {
        errors.add(
            "spec.node.inlineVolumes.maxSize",
            format!(
                "{max_size} bytes is above maxTotalSize ({total} bytes): one volume could never \
                 fit; lower it or raise maxTotalSize"
            ),
        );
    }
}

fn csi_driver(cr: &CsiDeployment, plan: &Plan, errors: &mut Errors) {
    let options = &cr.spec.csi_driver;
    let caps = &plan.capabilities;
    if options.attach_required == Some(true) && !caps.attach_required() {
        errors.add(
            "spec.csiDriver.attachRequired",
            "true, but the driver lacks PUBLISH_UNPUBLISH_VOLUME: no attacher would be \
             deployed and every volume would wait forever for attachment; unset it",
        );
    }
    if options.storage_capacity == Some(true) && !plan.capacity_tracking() {
        errors.add(
            "spec.csiDriver.storageCapacity",
            "true, but capacity tracking is off: the scheduler would find no capacity and \
             no pod with a volume of this driver could be scheduled; unset it or enable \
             features.capacityTracking",
        );
    }
    if let Some(modes) = &options.volume_lifecycle_modes {
        if modes.is_empty() {
            errors.add(
                "spec.csiDriver.volumeLifecycleModes",
                "empty: list Persistent and/or Ephemeral, or unset it",
            );
        }
        if modes.contains(&LifecycleMode::Ephemeral) && !plan.ephemeral() {
            errors.add(
                "spec.csiDriver.volumeLifecycleModes",
                "Ephemeral, but ephemeral volumes are off: enable features.ephemeral \
                 (declare lifecycleModes: [Ephemeral] for a third-party driver) or drop it",
            );
        }
    }
}

/// Names valid and unique, at most one default, in a list of classes at `field`.
fn check_class_list<'a>(
    field: &str,
    classes: impl Iterator<Item = (&'a str, bool)>,
    errors: &mut Errors,
) {
    let mut seen = BTreeSet::new();
    let mut default = None;
    for (i, (name, is_default)) in classes.enumerate() {
        let item = format!("{field}[{i}]");
        if !is_dns_subdomain(name, 253) {
            errors.add(
                format!("{item}.name"),
                format!("{name:?} is not a valid object name (a lowercase DNS subdomain)"),
            );
        }
        if !seen.insert(name) {
            errors.add(format!("{item}.name"), format!("{name:?} is listed twice"));
        }
        if is_default {
            if let Some(first) = default {
                errors.add(
                    format!("{item}.default"),
                    format!("{field}[{first}] is already the default: only one may be"),
                );
            }
            default.get_or_insert(i);
        }
    }
}

fn classes(cr: &CsiDeployment, plan: &Plan, errors: &mut Errors) {
    if let Some(classes) = &cr.spec.storage_classes {
        let field = "spec.storageClasses";
        check_class_list(
            field,
            classes.iter().map(|c| (c.name.as_str(), c.default)),
            errors,
        );
        for (i, sc) in classes.iter().enumerate() {
            if sc.allow_volume_expansion == Some(true) && !plan.can_resize() {
                errors.add(
                    format!("{field}[{i}].allowVolumeExpansion"),
                    if plan.per_node {
                        "true, but no resizer is deployed: external-resizer has no per-node \
                         mode (driver.thirdParty.provisioning: PerNode); unset it"
                    } else {
                        "true, but resize is off (no resizer is deployed): enable \
                         features.resize or unset it"
                    },
                );
            }
            if let Some(encryption) = &sc.encryption {
                check_encryption(cr, &format!("{field}[{i}]"), sc, encryption, errors);
            }
        }
    }
    if let Some(classes) = &cr.spec.volume_snapshot_classes {
        check_class_list(
            "spec.volumeSnapshotClasses",
            classes.iter().map(|c| (c.name.as_str(), c.default)),
            errors,
        );
        if !classes.is_empty() && !plan.capabilities.can_snapshot() {
            errors.add(
                "spec.volumeSnapshotClasses",
                "listed, but snapshots are off: enable features.snapshots or remove the list",
            );
        }
    }
}

/// The encryption knob: the built-in driver's ext4 fscrypt, with a Secret reference the
/// class does not already set.
fn check_encryption(
    cr: &CsiDeployment,
    item: &str,
    sc: &StorageClassSpec,
    encryption: &EncryptionSpec,
    errors: &mut Errors,
) {
    let field = format!("{item}.encryption");
    if !cr.spec.is_builtin() {
        errors.add(
            &field,
            "encrypts with the built-in driver's ext4 fscrypt support, which a third-party \
             driver does not have: remove it and use the driver's own encryption parameters",
        );
    }
    if let Some(fstype) = sc.parameters.get(FSTYPE_PARAMETER)
        && fstype != "ext4"
    {
        errors.add(
            &field,
            format!(
                "needs ext4 (the volumes are encrypted with ext4's fscrypt), but the class \
                 sets {FSTYPE_PARAMETER}: {fstype:?}; remove that parameter or set it to ext4"
            ),
        );
    }
    let owned = classes::encryption_parameters(encryption);
    for key in owned.keys().filter(|k| sc.parameters.contains_key(*k)) {
        errors.add(
            format!("{item}.parameters"),
            format!(
                "{key:?} is set by encryption: remove it from parameters (set \
                 encryption.secretName / secretNamespace instead)"
            ),
        );
    }
    for (what, value) in [
        ("secretName", &encryption.secret_name),
        ("secretNamespace", &encryption.secret_namespace),
    ] {
        if value.trim().is_empty() {
            errors.add(
                format!("{field}.{what}"),
                "is empty: give a name or a template such as ${pvc.name}, or leave it unset",
            );
        }
    }
    check_secret_namespace(
        &format!("{field}.secretNamespace"),
        &encryption.secret_namespace,
        errors,
    );
}

/// A literal Secret namespace must be a namespace name.
fn check_secret_namespace(field: &str, namespace: &str, errors: &mut Errors) {
    if !secrets::is_templated(namespace) && !namespace.is_empty() && !is_dns_label(namespace, 63) {
        errors.add(
            field,
            format!(
                "{namespace:?} is neither a namespace name nor a template such as \
                 ${{pvc.namespace}}"
            ),
        );
    }
}

/// Operation-secret parameters come in pairs: a Secret is found by name *and* namespace.
fn operation_secrets(cr: &CsiDeployment, plan: &Plan, errors: &mut Errors) {
    let storage = classes::storage_class_specs(cr)
        .into_iter()
        .map(|sc| classes::rendered_parameters(&sc));
    let snapshot = if cr.spec.volume_snapshot_classes.is_some() || plan.snapshots {
        classes::snapshot_class_specs(cr)
    } else {
        Vec::new()
    }
    .into_iter()
    .map(|c| c.parameters);
    let lists = storage
        .enumerate()
        .map(|(i, p)| {
            (
                format!("spec.storageClasses[{i}].parameters"),
                p,
                secrets::STORAGE_CLASS_KINDS,
            )
        })
        .chain(snapshot.enumerate().map(|(i, p)| {
            (
                format!("spec.volumeSnapshotClasses[{i}].parameters"),
                p,
                secrets::SNAPSHOT_CLASS_KINDS,
            )
        }));
    for (field, parameters, kinds) in lists {
        for r in secrets::secret_refs(&parameters, kinds) {
            let prefix = r.kind.prefix();
            match (r.name, r.namespace) {
                (Some(_), None) => errors.add(
                    &field,
                    format!(
                        "{prefix}name is set without {prefix}namespace: a Secret is found by \
                         both; add the namespace (a name, or a template such as \
                         ${{pvc.namespace}})"
                    ),
                ),
                (None, Some(_)) => errors.add(
                    &field,
                    format!(
                        "{prefix}namespace is set without {prefix}name: a Secret is found by \
                         both; add the name (or remove the namespace)"
                    ),
                ),
                (_, Some(namespace)) => {
                    check_secret_namespace(
                        &format!("{field}.{prefix}namespace"),
                        namespace,
                        errors,
                    );
                }
                (None, None) => {}
            }
        }
    }
}

/// A third-party driver's extra env, volumes, mounts and sidecar arguments.
fn third_party_pods(cr: &CsiDeployment, errors: &mut Errors) {
    let Some(third) = &cr.spec.driver.third_party else {
        return;
    };
    for (pod, options, reserved) in [
        (
            "controllerPod",
            &third.controller_pod,
            &[crate::render::pod::SOCKET_VOLUME][..],
        ),
        (
            "nodePod",
            &third.node_pod,
            crate::render::node::RESERVED_VOLUMES,
        ),
    ] {
        let field = format!("spec.driver.thirdParty.{pod}");
        for (i, env) in options.env.iter().enumerate() {
            if env.name == third.endpoint_env || env.name == third.node_id_env {
                errors.add(
                    format!("{field}.env[{i}].name"),
                    format!(
                        "{:?} is set by Plinth (the CSI endpoint and the node name): remove it, \
                         or rename Plinth's with endpointEnv / nodeIdEnv",
                        env.name
                    ),
                );
            }
        }
        let mut names = BTreeSet::new();
        for (i, volume) in options.volumes.iter().enumerate() {
            let item = format!("{field}.volumes[{i}]");
            let volume = match volume.parse() {
                Ok(volume) => volume,
                Err(e) => {
                    errors.add(
                        item,
                        format!(
                            "is not a pod volume ({e}): write it as in a pod spec, \
                             see `kubectl explain pod.spec.volumes`"
                        ),
                    );
                    continue;
                }
            };
            if reserved.contains(&volume.name.as_str()) {
                errors.add(
                    format!("{item}.name"),
                    format!(
                        "{:?} is one of Plinth's own volumes in this pod ({}): pick another name",
                        volume.name,
                        reserved.join(", ")
                    ),
                );
            }
            if !names.insert(volume.name.clone()) {
                errors.add(
                    format!("{item}.name"),
                    format!("{:?} is listed twice", volume.name),
                );
            }
            if pod == "controllerPod" && volume.host_path.is_some() {
                errors.add(
                    format!("{item}.hostPath"),
                    "hostPath volumes are allowed in nodePod only: the controller pod runs \
                     unprivileged and away from any particular node's disks; use another \
                     volume type here, or move it to nodePod",
                );
            }
        }
        for (i, mount) in options.volume_mounts.iter().enumerate() {
            if !names.contains(&mount.name) {
                errors.add(
                    format!("{field}.volumeMounts[{i}].name"),
                    format!(
                        "{:?} names no volume of {pod}.volumes: add the volume, or fix the name",
                        mount.name
                    ),
                );
            }
        }
    }
    let known: Vec<&str> = Sidecar::ALL.iter().map(|s| s.container_name()).collect();
    for key in third.sidecar_args.keys() {
        if !known.contains(&key.as_str()) {
            errors.add(
                format!("spec.driver.thirdParty.sidecarArgs.{key}"),
                format!("no sidecar {key:?}: sidecars are {}", known.join(", ")),
            );
        }
    }
}

/// Per-node provisioning: what a node-local provisioner needs and cannot do.
fn per_node(cr: &CsiDeployment, plan: &Plan, errors: &mut Errors) {
    let Some(third) = cr
        .spec
        .driver
        .third_party
        .as_ref()
        .filter(|_| plan.per_node)
    else {
        return;
    };
    let field = "spec.driver.thirdParty.provisioning";
    if !plan.capabilities.has_topology() {
        errors.add(
            field,
            "PerNode needs topology: each node's provisioner creates volumes on its own node \
             and must tell the scheduler so (plugin capability \
             VOLUME_ACCESSIBILITY_CONSTRAINTS, features.topology not false); use Central \
             for a driver without it",
        );
    }
    if plan.capabilities.attach_required() {
        errors.add(
            field,
            "PerNode cannot serve PUBLISH_UNPUBLISH_VOLUME: external-attacher has no per-node \
             mode, so volumes would wait for attachment forever; use Central for a driver \
             that attaches",
        );
    }
    if cr.spec.features.get(Feature::Expansion) == Some(true) {
        errors.add(
            "spec.features.resize",
            "true, but external-resizer has no per-node mode \
             (driver.thirdParty.provisioning: PerNode): unset it or set it to false",
        );
    }
    if !third.controller_args.is_empty() || third.controller_pod != DriverPodOptions::default() {
        errors.add(
            "spec.driver.thirdParty.controllerArgs",
            "PerNode runs no controller pod, so controllerArgs and controllerPod would be \
             ignored: remove them (the node pod's driver serves the controller calls with \
             nodeArgs and nodePod)",
        );
    }
}

fn images_and_resources(cr: &CsiDeployment, errors: &mut Errors) {
    for key in cr.spec.images.overrides.keys() {
        if !images::override_keys().any(|k| k == key) {
            errors.add(
                format!("spec.images.overrides.{key}"),
                format!(
                    "unknown image {key:?}: overridable images are {}; the driver image is \
                     spec.driver.image",
                    images::override_keys().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    let driver = crate::render::pod_driver_container_name(cr);
    let controller: Vec<&str> = std::iter::once(driver)
        .chain(
            [
                Sidecar::Provisioner,
                Sidecar::Attacher,
                Sidecar::Resizer,
                Sidecar::Snapshotter,
                Sidecar::LivenessProbe,
            ]
            .map(Sidecar::container_name),
        )
        .collect();
    let node: Vec<&str> = std::iter::once(driver)
        .chain([Sidecar::NodeDriverRegistrar, Sidecar::LivenessProbe].map(Sidecar::container_name))
        .collect();
    for (field, map, known) in [
        (
            "spec.controller.resources",
            &cr.spec.controller.resources,
            &controller,
        ),
        ("spec.node.resources", &cr.spec.node.resources, &node),
    ] {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                errors.add(
                    format!("{field}.{key}"),
                    format!(
                        "no container {key:?} in this pod: containers are {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }
}
