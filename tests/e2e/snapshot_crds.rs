//! external-snapshotter's CRDs installed after the operator started (issue 10): the
//! operator notices them arriving and deploys the snapshotter without any other trigger.
//!
//! The CRDs have to be absent when the operator starts. The test never deletes anyone's
//! snapshots to get there:
//! - absent from the cluster: it installs minimal stand-ins (same names, group and
//!   kinds, any content accepted), labelled as its own, and deletes them at the end;
//! - installed: it removes and re-creates them only when asked to
//!   (`PLINTH_E2E_REINSTALL_SNAPSHOT_CRDS=1`) and no VolumeSnapshot or
//!   VolumeSnapshotContent exists (deleting a CRD deletes its objects); otherwise it is
//!   skipped, saying why. The re-created CRDs are the saved ones, status stripped.

use std::time::Instant;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use plinth_e2e::{Operator, connect, ensure_namespace, install_crd, wait_for};
use serde_json::json;

use super::{
    LONG, SERIAL, SHORT, apply_cr, delete_and_wait_clean, find_name, namespace, rendered, spec,
    wait_containers,
};
use plinth_operator::render::ManagedKind;

const GROUP: &str = "snapshot.storage.k8s.io";
const KINDS: [(&str, &str, &str); 3] = [
    ("volumesnapshots", "VolumeSnapshot", "Namespaced"),
    ("volumesnapshotcontents", "VolumeSnapshotContent", "Cluster"),
    ("volumesnapshotclasses", "VolumeSnapshotClass", "Cluster"),
];
const STAND_IN_LABEL: (&str, &str) = ("plinth.dev/e2e", "snapshot-crd-stand-in");
const OPT_IN: &str = "PLINTH_E2E_REINSTALL_SNAPSHOT_CRDS";

fn crd_name(plural: &str) -> String {
    format!("{plural}.{GROUP}")
}

/// How the CRDs come back once the operator runs.
enum Arrival {
    /// Ours: created now, deleted at the end.
    StandIns,
    /// The cluster's own, saved before removing them.
    Saved(Vec<CustomResourceDefinition>),
}

fn stand_in(plural: &str, kind: &str, scope: &str) -> anyhow::Result<CustomResourceDefinition> {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": crd_name(plural),
            "labels": {STAND_IN_LABEL.0: STAND_IN_LABEL.1},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"plural": plural, "kind": kind, "singular": kind.to_lowercase()},
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    }))
    .context("building a stand-in CRD")
}

/// How many objects of `plural` exist anywhere.
async fn count(client: &Client, plural: &str, kind: &str) -> anyhow::Result<usize> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", kind), plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    Ok(api.list_metadata(&ListParams::default()).await?.items.len())
}

/// Makes the snapshot CRDs absent; `None` when the test must be skipped (reason printed).
async fn make_absent(client: &Client) -> anyhow::Result<Option<Arrival>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut present = Vec::new();
    for (plural, _, _) in KINDS {
        if let Some(crd) = crds.get_opt(&crd_name(plural)).await? {
            present.push(crd);
        }
    }
    if present.is_empty() {
        return Ok(Some(Arrival::StandIns));
    }
    if present
        .iter()
        .any(|c| c.labels().get(STAND_IN_LABEL.0).map(String::as_str) == Some(STAND_IN_LABEL.1))
    {
        bail!(
            "stand-in snapshot CRDs of an earlier run are still installed: delete the CRDs labelled {}={}",
            STAND_IN_LABEL.0,
            STAND_IN_LABEL.1
        );
    }
    if std::env::var(OPT_IN).as_deref() != Ok("1") {
        eprintln!(
            "e2e: SKIPPED snapshot_crds_installed_after_the_operator_started: the snapshot CRDs are installed; \
             set {OPT_IN}=1 to let the test remove and re-create them (only when no VolumeSnapshot exists)"
        );
        return Ok(None);
    }
    for (plural, kind, _) in [KINDS[0], KINDS[1]] {
        let n = count(client, plural, kind).await?;
        if n > 0 {
            eprintln!(
                "e2e: SKIPPED snapshot_crds_installed_after_the_operator_started: {n} {kind} objects exist, \
                 and removing their CRD would delete them"
            );
            return Ok(None);
        }
    }
    for crd in &present {
        crds.delete(&crd.name_any(), &DeleteParams::default())
            .await
            .with_context(|| format!("deleting CRD {}", crd.name_any()))?;
    }
    wait_for("the snapshot CRDs to be gone", LONG, || async {
        for (plural, _, _) in KINDS {
            if crds.get_opt(&crd_name(plural)).await?.is_some() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    Ok(Some(Arrival::Saved(present)))
}

/// Installs the CRDs that are missing (stand-ins, or the saved ones as they were).
async fn install(client: &Client, arrival: &Arrival) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let bodies = match arrival {
        Arrival::StandIns => KINDS
            .iter()
            .map(|(plural, kind, scope)| stand_in(plural, kind, scope))
            .collect::<anyhow::Result<Vec<_>>>()?,
        Arrival::Saved(saved) => saved
            .iter()
            .map(|crd| {
                let mut crd = crd.clone();
                let meta = &mut crd.metadata;
                meta.resource_version = None;
                meta.uid = None;
                meta.creation_timestamp = None;
                meta.managed_fields = None;
                meta.generation = None;
                crd.status = None;
                crd
            })
            .collect(),
    };
    for crd in &bodies {
        if crds.get_opt(&crd.name_any()).await?.is_some() {
            continue;
        }
        crds.create(&PostParams::default(), crd)
            .await
            .with_context(|| format!("creating CRD {}", crd.name_any()))?;
    }
    Ok(())
}

/// Removes the stand-ins (never the cluster's own CRDs).
async fn remove_stand_ins(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let selector = format!("{}={}", STAND_IN_LABEL.0, STAND_IN_LABEL.1);
    for crd in crds
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        crds.delete(&crd.name_any(), &DeleteParams::default())
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn snapshot_crds_installed_after_the_operator_started() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let client = connect().await?;
    install_crd(&client).await?;
    ensure_namespace(&client, &namespace()).await?;
    let Some(arrival) = make_absent(&client).await? else {
        return Ok(());
    };
    // The operator starts without the snapshot API.
    let operator = Operator::start(client.clone());
    let name = "e2e-snapshot-crds";
    let ns = namespace();
    let result = async {
        // Snapshots unset: follow what the cluster serves.
        let cr = apply_cr(&client, name, &spec(name, json!({}))).await?;
        let sts_name = find_name(&rendered(&cr, false), ManagedKind::StatefulSet);
        let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        wait_for("the controller StatefulSet", SHORT, || async {
            Ok(sts_api.get_opt(&sts_name).await?.map(|_| ()))
        })
        .await?;
        wait_containers(&client, &ns, &sts_name, "csi-snapshotter", false).await?;

        let installed = Instant::now();
        install(&client, &arrival).await?;
        wait_containers(&client, &ns, &sts_name, "csi-snapshotter", true).await?;
        eprintln!(
            "e2e: snapshot CRDs installed -> snapshotter applied: {:?}",
            installed.elapsed()
        );
        delete_and_wait_clean(&client, name).await
    }
    .await;
    operator.stop().await;
    if matches!(arrival, Arrival::StandIns) {
        remove_stand_ins(&client).await?;
    } else {
        // Put the cluster's CRDs back whatever failed (a no-op when they are there).
        install(&client, &arrival).await?;
    }
    result
}
