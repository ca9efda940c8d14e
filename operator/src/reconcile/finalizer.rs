//! The `plinth.dev/cleanup` finalizer: deleting a CsiDeployment removes everything it
//! deployed, but never while PersistentVolumes of its driver exist unless the user said so.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use plinth_api::cluster::crd::{PoolNode, driver_selector};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::FINALIZER;
use super::apply::apply_params;
use super::error::{Error, Verb};
use crate::crd::CsiDeployment;

pub fn has_finalizer(cr: &CsiDeployment) -> bool {
    cr.finalizers().iter().any(|f| f == FINALIZER)
}

/// An apply body naming only our finalizers; without any it leaves out the list, which
/// releases the entry we owned.
fn finalizer_body(name: &str, finalizers: &[&str]) -> serde_json::Value {
    let mut metadata = json!({ "name": name });
    if !finalizers.is_empty() {
        metadata["finalizers"] = json!(finalizers);
    }
    json!({
        "apiVersion": CsiDeployment::api_version(&()),
        "kind": CsiDeployment::kind(&()),
        "metadata": metadata,
    })
}

/// Adds our finalizer with server-side apply: we own just that entry of the set, so other
/// controllers' finalizers and the user's fields are untouched.
#[instrument(skip_all, fields(cr = %cr.name_any()))]
pub async fn add(client: &Client, cr: &CsiDeployment) -> Result<(), Error> {
    let name = cr.name_any();
    let api: Api<CsiDeployment> = Api::all(client.clone());
    let body = finalizer_body(&name, &[FINALIZER]);
    api.patch(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(Error::api(
            Verb::PatchFinalizer,
            format!("CsiDeployment {name}"),
        ))?;
    Ok(())
}

/// Removes our finalizer. Applying without it drops the entry we own; if another manager
/// also claimed the entry (someone re-added it with an update), server-side apply keeps
/// it, so fall back to a JSON patch guarded by a test of the current list.
#[instrument(skip_all, fields(cr = %cr.name_any()))]
pub async fn remove(client: &Client, cr: &CsiDeployment) -> Result<(), Error> {
    let name = cr.name_any();
    let api: Api<CsiDeployment> = Api::all(client.clone());
    let err = Error::api(Verb::PatchFinalizer, format!("CsiDeployment {name}"));
    let body = finalizer_body(&name, &[]);
    let after = match api
        .patch(&name, &apply_params(), &Patch::Apply(&body))
        .await
    {
        Ok(obj) => obj,
        // Gone already: the finalizer was the last thing holding it.
        Err(e) if super::error::is_not_found(&e) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    if !has_finalizer(&after) {
        return Ok(());
    }
    warn!("finalizer still present after apply (co-owned); removing it with a merge patch");
    let kept: Vec<&String> = after
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    // The resourceVersion turns the merge patch into a compare-and-swap: a concurrent
    // change to the list makes it fail (409) and the next reconcile tries again.
    let patch = json!({
        "metadata": { "finalizers": kept, "resourceVersion": after.resource_version() }
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(err)?;
    Ok(())
}

/// Counts the PersistentVolumes provisioned by `driver`, a page at a time so a cluster
/// with many volumes never needs them all in memory.
#[instrument(skip(client))]
pub async fn count_volumes(client: &Client, driver: &str) -> Result<usize, Error> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut params = ListParams::default().limit(200);
    let mut count = 0;
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(Error::api(Verb::List, "PersistentVolumes"))?;
        count += page
            .items
            .iter()
            .filter(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .is_some_and(|csi| csi.driver == driver)
            })
            .count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    info!(count, "PersistentVolumes of the driver");
    Ok(count)
}

/// Deletes the PoolNodes of `driver`: its node plugins' capacity records, which nothing
/// else removes once the DaemonSet is gone. PoolVolumes and PoolSnapshots are never
/// touched: with `OrphanVolumes` they are the record of images left on the nodes.
#[instrument(skip(client))]
pub async fn delete_pool_nodes(client: &Client, driver: &str) -> Result<usize, Error> {
    let api: Api<PoolNode> = Api::all(client.clone());
    let nodes = api
        .list_metadata(&ListParams::default().labels(&driver_selector(driver)))
        .await
        .map_err(Error::api(Verb::List, "PoolNodes"))?;
    for node in &nodes.items {
        let name = node.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if super::error::is_not_found(&e) => {}
            Err(e) => return Err(Error::api(Verb::Delete, format!("PoolNode {name}"))(e)),
        }
    }
    info!(count = nodes.items.len(), "PoolNodes of the driver deleted");
    Ok(nodes.items.len())
}
