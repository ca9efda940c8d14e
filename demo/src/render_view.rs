//! What the operator would apply for a CsiDeployment, rendered without a cluster, and what
//! switching snapshots off would prune.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::render::{self, ManagedObject, RenderEnv, Rendered};
use serde_json::Value;

/// The full-featured sample users start from (`config/samples/`).
const SAMPLE: &str = include_str!("../../operator/tests/fixtures/full.yaml");

pub fn show(file: Option<&Path>) -> Result<()> {
    let (source, text) = match file {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => ("the full-featured sample".to_owned(), SAMPLE.to_owned()),
    };
    let cr: CsiDeployment =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {source}"))?;
    // A cluster with the snapshot CRDs installed, as the operator would discover it.
    let env = RenderEnv {
        snapshot_crds_present: true,
        ..RenderEnv::default()
    };
    let rendered = render::render(&cr, &env)?;
    println!(
        "Operator: CsiDeployment {:?} ({source}) renders {} objects for driver {} in namespace {}:",
        cr.metadata.name.as_deref().unwrap_or_default(),
        rendered.objects.len(),
        rendered.driver_name,
        rendered.namespace
    );
    for object in &rendered.objects {
        println!(
            "  {:<22} {}{}",
            kind(object),
            qualified_name(object),
            containers(object)
        );
    }
    println!("  controller sidecars, from the driver's capabilities:");
    for need in &rendered.sidecars {
        println!(
            "    {:<22} because {}",
            need.sidecar.container_name(),
            need.reason
        );
    }
    for warning in &rendered.warnings {
        println!("  warning: {warning}");
    }

    // The edit a user makes: switch snapshots off and drop the classes that need them.
    let mut without = cr.clone();
    without.spec.features.snapshots = Some(false);
    without.spec.volume_snapshot_classes = None;
    let after = render::render(&without, &env)?;
    println!(
        "  edit features.snapshots: false (and drop volumeSnapshotClasses); the operator prunes:"
    );
    for gone in difference(&rendered, &after) {
        println!("    - {gone}");
    }
    Ok(())
}

fn kind(object: &ManagedObject) -> String {
    object.kind().api_resource().kind
}

fn qualified_name(object: &ManagedObject) -> String {
    match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name()),
        None => object.name().to_owned(),
    }
}

/// `[container, ...]` for workloads, so the sidecars show.
fn containers(object: &ManagedObject) -> String {
    let json = object.to_apply_json();
    let Some(Value::Array(list)) = json.pointer("/spec/template/spec/containers") else {
        return String::new();
    };
    let names: Vec<&str> = list
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    format!("  [{}]", names.join(", "))
}

/// Objects and controller containers present in `before` but not in `after`.
fn difference(before: &Rendered, after: &Rendered) -> Vec<String> {
    let objects = |r: &Rendered| -> BTreeSet<String> {
        r.objects
            .iter()
            .map(|o| format!("{} {}", kind(o), qualified_name(o)))
            .collect()
    };
    let sidecars = |r: &Rendered| -> BTreeSet<String> {
        r.sidecars
            .iter()
            .map(|n| {
                format!(
                    "container {} from the controller StatefulSet",
                    n.sidecar.container_name()
                )
            })
            .collect()
    };
    let mut gone: Vec<String> = sidecars(before)
        .difference(&sidecars(after))
        .cloned()
        .collect();
    gone.extend(objects(before).difference(&objects(after)).cloned());
    gone
}
