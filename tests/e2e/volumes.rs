//! Volumes through the cluster (issue 5): a claim is provisioned by the controller-mode
//! driver handing the work to the node plugin of the pod's node, snapshotted, restored on
//! that node, expanded online, and deleted until the node's pool is empty again, with
//! every step checked on both sides: what Kubernetes shows (PV, VolumeSnapshotContent,
//! pod output) and what the driver recorded (PoolVolume, PoolSnapshot, PoolNode).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use plinth_api::cluster::crd::{
    self, FINALIZER, Phase, PoolNode, PoolNodeStatus, PoolSnapshot, PoolVolume,
};
use plinth_api::cluster::ids;
use plinth_api::served_features;
use plinth_driver::config::DEFAULT_TOPOLOGY_KEY;
use plinth_e2e::timeline::Timeline;
use plinth_e2e::{install_pool_crds, none_left, percentile, wait_for};
use plinth_operator::render::ManagedKind;
use serde_json::json;

use crate::workloads::{
    self, DATA, Lifetime, RUN_LABEL, claim, create, delete_if_present, delete_labelled,
    is_not_found, pod, wait_claim_capacity, wait_gone, wait_pod_ready, wait_pod_succeeded,
};
use crate::{
    LONG, SHORT, Setup, apply_cr, find_name, flow_then_cleanup, namespace, remove_deployment,
    rendered, run_id, setup, snapshot_crds_installed, spec, vsc_api, wait_condition,
    wait_containers, wait_registered,
};

const GI: u64 = 1 << 30;
/// Provisioning, snapshotting, expanding or deleting one volume, hand-off included.
const VOLUME_WORK: Duration = Duration::from_secs(180);
/// The pool shares its filesystem with the node (images, logs): after the test it may
/// have lost a little room to others. A leaked volume of ours would owe at least 1 GiB.
const UNRELATED_DISK_SLACK: u64 = 256 << 20;

/// Claims provisioned at once for the latency figures (`PLINTH_E2E_PVCS`, default 1).
fn claim_count() -> usize {
    std::env::var("PLINTH_E2E_PVCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn snapshot_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", kind),
        plural,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn volumes_are_provisioned_snapshotted_restored_expanded_and_freed_on_their_node()
-> anyhow::Result<()> {
    let Setup {
        client,
        operator,
        _serial,
    } = setup().await?;
    install_pool_crds(&client).await?;
    let run = Run::new(client);
    eprintln!("e2e: run {} (CsiDeployment {})", run.id, run.cr);
    flow_then_cleanup(operator, run.flow(), run.cleanup()).await
}

/// One run: unique names, so a run never meets a previous run's leftovers.
struct Run {
    client: Client,
    ns: String,
    id: String,
    cr: String,
}

/// A ready VolumeSnapshot and what the driver recorded for it.
struct Snapshot {
    name: String,
    /// The CSI snapshot ID (the PoolSnapshot's name).
    id: String,
    /// `status.restoreSize` as the snapshot reports it.
    restore_size: String,
}

/// What step 1 deployed.
struct Deployed {
    driver: String,
    storage_class: String,
    snapshot_class: String,
    /// Each node's pool before any volume of this run.
    pools_before: BTreeMap<String, PoolNodeStatus>,
}

impl Run {
    fn new(client: Client) -> Self {
        let id = run_id();
        Self {
            client,
            ns: namespace(),
            cr: format!("e2e-vol-{id}"),
            id,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("vol-{}-{what}", self.id)
    }

    fn run_selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.id)
    }

    fn namespaced<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(&self) -> Api<K>
    where
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn snapshots(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &snapshot_resource("VolumeSnapshot", "volumesnapshots"),
        )
    }

    async fn flow(&self) -> anyhow::Result<()> {
        let deployed = self.deploy().await?;
        let claims: Vec<String> = (0..claim_count())
            .map(|i| {
                if i == 0 {
                    self.name("data")
                } else {
                    self.name(&format!("extra-{i}"))
                }
            })
            .collect();
        let data = claims[0].clone();
        let token = format!("plinth-e2e-{}-{}", self.id, std::process::id());
        let node = self.provision(&deployed, &claims, &token).await?;
        let source = self.check_volume(&deployed, &data, &node).await?;
        self.wait_pool_node(&deployed, &node, "to count the new volumes", |s| {
            s.volumes >= claims.len() as u64
        })
        .await?;
        let snapshot = self.snapshot(&deployed, &data, &node, &source).await?;
        self.restore(&deployed, &node, &token, &snapshot).await?;
        self.expand(&data, &source, &node).await?;
        self.teardown_workloads().await?;
        self.check_pool_empty(&deployed, &node).await
    }

    /// Step 1: the built-in driver with snapshots and expansion, registered and Ready.
    async fn deploy(&self) -> anyhow::Result<Deployed> {
        let served = served_features();
        ensure!(
            served.snapshots && served.expansion,
            "this build of the driver does not serve snapshots and expansion"
        );
        ensure!(
            snapshot_crds_installed(&self.client).await,
            "the cluster has no snapshot.storage.k8s.io/v1 API: install the external-snapshotter \
             CRDs and snapshot-controller"
        );
        let features = json!({ "snapshots": true, "resize": true });
        let cr = apply_cr(&self.client, &self.cr, &spec(&self.cr, features)).await?;
        let plan = rendered(&cr, true);
        let driver = plan.driver_name.clone();
        let ds_name = find_name(&plan, ManagedKind::DaemonSet);
        let sts_name = find_name(&plan, ManagedKind::StatefulSet);
        let storage_class = find_name(&plan, ManagedKind::StorageClass);
        let snapshot_class = find_name(&plan, ManagedKind::VolumeSnapshotClass);
        ensure!(
            storage_class == format!("plinth-{}", self.cr) && snapshot_class == storage_class,
            "the default classes are plinth-<cr>: {storage_class}, {snapshot_class}"
        );
        let nodes = wait_registered(&self.client, &self.ns, &ds_name, &driver).await?;
        wait_condition(&self.client, &self.cr, "Ready", "True", Some("Available")).await?;
        wait_containers(&self.client, &self.ns, &sts_name, "csi-snapshotter", true).await?;
        wait_containers(&self.client, &self.ns, &sts_name, "csi-resizer", true).await?;
        let storage_classes: Api<StorageClass> = Api::all(self.client.clone());
        wait_for(
            "the StorageClass and VolumeSnapshotClass",
            SHORT,
            || async {
                let sc = storage_classes.get_opt(&storage_class).await?;
                let vsc = vsc_api(&self.client).get_opt(&snapshot_class).await?;
                Ok(
                    (sc.is_some_and(|sc| sc.allow_volume_expansion == Some(true)) && vsc.is_some())
                        .then_some(()),
                )
            },
        )
        .await?;

        // Every node plugin publishes its pool once it is open.
        let api: Api<PoolNode> = Api::all(self.client.clone());
        let pools_before = wait_for(
            &format!("a PoolNode with status from each of the {nodes} nodes of {driver}"),
            SHORT,
            || async {
                let pools: BTreeMap<String, PoolNodeStatus> = api
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter(|p| p.spec.driver == driver)
                    .filter_map(|p| Some((p.spec.node, p.status?)))
                    .collect();
                if pools.len() >= nodes {
                    Ok(Some(pools))
                } else {
                    bail!("published so far: {:?}", pools.keys().collect::<Vec<_>>())
                }
            },
        )
        .await?;
        for (node, pool) in &pools_before {
            ensure!(
                pool.total_bytes > 0 && pool.available_bytes <= pool.total_bytes,
                "PoolNode of {node} reports an impossible pool: {pool:?}"
            );
        }
        Ok(Deployed {
            driver,
            storage_class,
            snapshot_class,
            pools_before,
        })
    }

    /// Step 2 (and the latency figures of step 8): the claims, consumed by one pod that
    /// writes `token` to the first. Returns the pod's node.
    async fn provision(
        &self,
        deployed: &Deployed,
        claims: &[String],
        token: &str,
    ) -> anyhow::Result<String> {
        let claim_api: Api<PersistentVolumeClaim> = self.namespaced();
        let bound = Timeline::start(
            claim_api.clone(),
            watcher::Config::default().labels(&self.run_selector()),
            |pvc: &PersistentVolumeClaim| {
                pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            },
        )
        .await?;
        let ready = Timeline::start(
            Api::<PoolVolume>::all(self.client.clone()),
            watcher::Config::default().labels(&crd::driver_selector(&deployed.driver)),
            |v: &PoolVolume| {
                v.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Ready
                        && s.observed_generation >= v.meta().generation.unwrap_or_default()
                })
            },
        )
        .await?;

        let mut created = BTreeMap::new();
        for name in claims {
            let started = Instant::now();
            create(
                &claim_api,
                claim(name, &self.id, &deployed.storage_class, "1Gi", None),
            )
            .await
            .with_context(|| format!("PVC {name}"))?;
            created.insert(name.clone(), started);
        }
        let writer = self.name("writer");
        let claim_refs: Vec<&str> = claims.iter().map(String::as_str).collect();
        let script = format!("echo '{token}' > {DATA}/file && sync");
        create(
            &self.namespaced::<Pod>(),
            pod(
                &writer,
                &self.id,
                None,
                &claim_refs,
                &script,
                Lifetime::Serve,
            ),
        )
        .await
        .with_context(|| format!("pod {writer}"))?;
        let running = wait_pod_ready(&self.client, &self.ns, &writer, &claim_refs, LONG).await?;
        let node = running
            .spec
            .and_then(|s| s.node_name)
            .context("a Ready pod has a node")?;
        eprintln!("e2e: {writer} runs on node {node}");

        for name in claims {
            let pvc = claim_api.get(name).await?;
            let phase = pvc.status.and_then(|s| s.phase);
            ensure!(
                phase.as_deref() == Some("Bound"),
                "PVC {name} is {phase:?} while its pod runs"
            );
        }
        // The watch may deliver the last events just after the pod turned Ready. Only the
        // figures depend on it: a miss prints as "not observed" rather than failing.
        let _ = wait_for(
            "the watch to see every claim bound",
            Duration::from_secs(10),
            || async {
                Ok(claims
                    .iter()
                    .all(|c| bound.marks(c).is_some_and(|m| m.reached.is_some()))
                    .then_some(()))
            },
        )
        .await;
        print_latencies(claims, &created, &bound, &ready);
        Ok(node)
    }

    /// Step 3: the claim's PV names a Ready PoolVolume on `node`, pinned there by the PV's
    /// node affinity. Returns the volume ID.
    async fn check_volume(
        &self,
        deployed: &Deployed,
        claim: &str,
        node: &str,
    ) -> anyhow::Result<String> {
        let volume = self.pool_volume_of(deployed, claim, node).await?;
        let spec_size = volume.spec.size_bytes;
        let status = volume.status.clone().unwrap_or_default();
        ensure!(
            spec_size >= GI && status.size_bytes.is_some_and(|s| s >= spec_size),
            "PoolVolume {} of a 1Gi claim: spec {spec_size} bytes, status {:?}",
            volume.name_any(),
            status.size_bytes
        );
        ensure!(
            volume.spec.content_source.is_none(),
            "a new empty claim has no content source: {:?}",
            volume.spec.content_source
        );
        Ok(volume.name_any())
    }

    /// The PoolVolume behind `claim`, after the checks every provisioned volume passes.
    async fn pool_volume_of(
        &self,
        deployed: &Deployed,
        claim: &str,
        node: &str,
    ) -> anyhow::Result<PoolVolume> {
        let pvc = self
            .namespaced::<PersistentVolumeClaim>()
            .get(claim)
            .await?;
        let pv_name = pvc
            .spec
            .and_then(|s| s.volume_name)
            .with_context(|| format!("PVC {claim} is bound to no PV"))?;
        let pv = Api::<PersistentVolume>::all(self.client.clone())
            .get(&pv_name)
            .await?;
        let pv_spec = pv.spec.unwrap_or_default();
        let csi = pv_spec
            .csi
            .with_context(|| format!("PV {pv_name} is not a CSI volume"))?;
        ensure!(
            csi.driver == deployed.driver,
            "PV {pv_name} belongs to {}",
            csi.driver
        );
        let terms = pv_spec
            .node_affinity
            .and_then(|a| a.required)
            .map(|r| r.node_selector_terms)
            .unwrap_or_default();
        let pins_node = |term: &k8s_openapi::api::core::v1::NodeSelectorTerm| {
            term.match_expressions.iter().flatten().any(|r| {
                r.key == DEFAULT_TOPOLOGY_KEY
                    && r.operator == "In"
                    && r.values.as_deref() == Some(&[node.to_owned()][..])
            })
        };
        ensure!(
            !terms.is_empty() && terms.iter().all(pins_node),
            "PV {pv_name} must require {DEFAULT_TOPOLOGY_KEY}={node}: {terms:?}"
        );

        let handle = csi.volume_handle;
        let volume = Api::<PoolVolume>::all(self.client.clone())
            .get_opt(&handle)
            .await?
            .with_context(|| format!("PV {pv_name}: no PoolVolume {handle}"))?;
        ensure!(
            volume.spec.driver == deployed.driver && volume.spec.node == node,
            "PoolVolume {handle} is {}'s on {}, the pod runs on {node}",
            volume.spec.driver,
            volume.spec.node
        );
        // The CSI name is the PV name, and the ID derives from it: a retried
        // CreateVolume finds the same resource.
        ensure!(
            volume.spec.name == pv_name
                && handle == ids::volume_id(&deployed.driver, &pv_name).as_str(),
            "PoolVolume {handle} records CSI name {}, PV is {pv_name}",
            volume.spec.name
        );
        check_recorded(&volume, &deployed.driver, node)?;
        let status = volume.status.clone().unwrap_or_default();
        ensure!(
            status.phase == Phase::Ready
                && status.observed_generation >= volume.meta().generation.unwrap_or_default(),
            "PoolVolume {handle} is not Ready for its generation: {status:?}"
        );
        Ok(volume)
    }

    /// Waits until the PoolNode of `node` satisfies `holds`.
    async fn wait_pool_node(
        &self,
        deployed: &Deployed,
        node: &str,
        what: &str,
        holds: impl Fn(&PoolNodeStatus) -> bool,
    ) -> anyhow::Result<PoolNodeStatus> {
        let api: Api<PoolNode> = Api::all(self.client.clone());
        let name = crd::pool_node_name(node, &deployed.driver);
        let holds = &holds;
        wait_for(&format!("PoolNode {name} {what}"), SHORT, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let status = api.get(&name).await?.status.unwrap_or_default();
                if holds(&status) {
                    Ok(Some(status))
                } else {
                    bail!("status {status:?}")
                }
            }
        })
        .await
    }

    /// Step 4: a VolumeSnapshot becomes ready; its content names a Ready PoolSnapshot of
    /// the source volume on the same node.
    async fn snapshot(
        &self,
        deployed: &Deployed,
        claim: &str,
        node: &str,
        source: &str,
    ) -> anyhow::Result<Snapshot> {
        let name = self.name("snap");
        let api = self.snapshots();
        let body = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": { "name": name, "labels": { RUN_LABEL: self.id } },
            "spec": {
                "volumeSnapshotClassName": deployed.snapshot_class,
                "source": { "persistentVolumeClaimName": claim },
            },
        });
        create(&api, body)
            .await
            .with_context(|| format!("VolumeSnapshot {name}"))?;
        let waited = wait_for(
            &format!("VolumeSnapshot {name} to be readyToUse"),
            VOLUME_WORK,
            || async {
                let snap = api.get(&name).await?;
                let status = snap.data.get("status").cloned().unwrap_or_default();
                if status["readyToUse"] == json!(true) {
                    return Ok(Some(status));
                }
                bail!("status {status}")
            },
        )
        .await;
        let status = workloads::explain(&self.client, &self.ns, &[&name, claim], waited).await?;
        let restore_size = status["restoreSize"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            plinth_e2e::quantity::bytes(&restore_size).is_some_and(|s| s >= GI),
            "VolumeSnapshot {name} restores to {restore_size:?}, the source has 1Gi"
        );
        let content_name = status["boundVolumeSnapshotContentName"]
            .as_str()
            .with_context(|| format!("VolumeSnapshot {name} is bound to no content"))?;
        let content = Api::<DynamicObject>::all_with(
            self.client.clone(),
            &snapshot_resource("VolumeSnapshotContent", "volumesnapshotcontents"),
        )
        .get(content_name)
        .await?;
        let handle = content.data["status"]["snapshotHandle"]
            .as_str()
            .with_context(|| format!("VolumeSnapshotContent {content_name} has no handle"))?
            .to_owned();

        let snapshot = Api::<PoolSnapshot>::all(self.client.clone())
            .get_opt(&handle)
            .await?
            .with_context(|| format!("{content_name}: no PoolSnapshot {handle}"))?;
        ensure!(
            snapshot.spec.driver == deployed.driver
                && snapshot.spec.node == node
                && snapshot.spec.source_volume_id == source,
            "PoolSnapshot {handle} is {}'s of {} on {}; expected {source} on {node}",
            snapshot.spec.driver,
            snapshot.spec.source_volume_id,
            snapshot.spec.node
        );
        ensure!(
            handle == ids::snapshot_id(&deployed.driver, &snapshot.spec.name).as_str(),
            "PoolSnapshot {handle} is not named for its CSI name {}",
            snapshot.spec.name
        );
        check_recorded(&snapshot, &deployed.driver, node)?;
        let snap_status = snapshot.status.clone().unwrap_or_default();
        ensure!(
            snap_status.phase == Phase::Ready
                && snap_status.observed_generation
                    >= snapshot.meta().generation.unwrap_or_default()
                && snap_status.size_bytes.is_some_and(|s| s >= GI),
            "PoolSnapshot {handle} is not Ready with the source's size: {snap_status:?}"
        );
        self.wait_pool_node(deployed, node, "to count the snapshot", |s| {
            s.snapshots >= 1
        })
        .await?;
        Ok(Snapshot {
            name,
            id: handle,
            restore_size,
        })
    }

    /// Step 5: a claim restored from the snapshot, read by a pod on the snapshot's node
    /// (a restored local volume lives where its snapshot is).
    async fn restore(
        &self,
        deployed: &Deployed,
        node: &str,
        token: &str,
        snapshot: &Snapshot,
    ) -> anyhow::Result<()> {
        let restored = self.name("restored");
        let reader = self.name("reader");
        create(
            &self.namespaced::<PersistentVolumeClaim>(),
            claim(
                &restored,
                &self.id,
                &deployed.storage_class,
                // The provisioner refuses a restore smaller than the snapshot.
                &snapshot.restore_size,
                Some(&snapshot.name),
            ),
        )
        .await
        .with_context(|| format!("PVC {restored}"))?;
        let script = format!("grep -qx '{token}' {DATA}/file");
        create(
            &self.namespaced::<Pod>(),
            pod(
                &reader,
                &self.id,
                Some(node),
                &[&restored],
                &script,
                Lifetime::Once,
            ),
        )
        .await
        .with_context(|| format!("pod {reader}"))?;
        wait_pod_succeeded(&self.client, &self.ns, &reader, &[&restored], LONG)
            .await
            .context("the restored volume must hold the file written before the snapshot")?;

        let volume = self.pool_volume_of(deployed, &restored, node).await?;
        let from = volume
            .spec
            .content_source
            .as_ref()
            .and_then(|c| c.snapshot_id.as_deref());
        ensure!(
            from == Some(snapshot.id.as_str()),
            "PoolVolume {} of the restored claim records source {:?}, expected {}",
            volume.name_any(),
            volume.spec.content_source,
            snapshot.id
        );
        Ok(())
    }

    /// Step 6: the claim grows to 2Gi while its pod runs (online expansion); the
    /// PoolVolume records the new size, and a new pod sees a filesystem of that size.
    async fn expand(&self, claim: &str, volume_id: &str, node: &str) -> anyhow::Result<()> {
        let claim_api: Api<PersistentVolumeClaim> = self.namespaced();
        claim_api
            .patch(
                claim,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }),
                ),
            )
            .await
            .with_context(|| format!("requesting 2Gi for PVC {claim}"))?;
        let capacity =
            wait_claim_capacity(&self.client, &self.ns, claim, 2 * GI, VOLUME_WORK).await?;
        eprintln!("e2e: PVC {claim} capacity is now {capacity} bytes");

        let api: Api<PoolVolume> = Api::all(self.client.clone());
        wait_for(
            &format!("PoolVolume {volume_id} to be Ready at 2Gi or more"),
            SHORT,
            || async {
                let volume = api.get(volume_id).await?;
                let status = volume.status.clone().unwrap_or_default();
                let grown = volume.spec.size_bytes >= 2 * GI
                    && status.phase == Phase::Ready
                    && status.observed_generation >= volume.meta().generation.unwrap_or_default()
                    && status.size_bytes.is_some_and(|s| s >= 2 * GI);
                if grown {
                    Ok(Some(()))
                } else {
                    bail!("spec {} bytes, status {status:?}", volume.spec.size_bytes)
                }
            },
        )
        .await?;

        // No exec in this client: the first pod goes, a second reports the filesystem.
        let pods: Api<Pod> = self.namespaced();
        let writer = self.name("writer");
        delete_if_present(&pods, &writer).await?;
        wait_gone(&pods, "pod", &writer, SHORT).await?;
        let df = self.name("df");
        create(
            &pods,
            pod(
                &df,
                &self.id,
                Some(node),
                &[claim],
                &format!("df -Pk {DATA}"),
                Lifetime::Once,
            ),
        )
        .await
        .with_context(|| format!("pod {df}"))?;
        let log = wait_pod_succeeded(&self.client, &self.ns, &df, &[claim], LONG).await?;
        let size = df_size_bytes(&log, DATA)
            .with_context(|| format!("no size of {DATA} in the df output:\n{log}"))?;
        eprintln!("e2e: the filesystem of {claim} is {size} bytes after expansion");
        // Filesystem metadata takes a few percent; an unexpanded 1Gi volume stays below 1Gi.
        ensure!(
            size >= GI + GI / 2,
            "the filesystem of {claim} did not grow with its volume: {size} bytes\n{log}"
        );
        Ok(())
    }

    /// Step 7, first half (and cleanup): pods, snapshots and claims of the run go, and
    /// their PVs with them.
    async fn teardown_workloads(&self) -> anyhow::Result<()> {
        let selector = self.run_selector();
        let prefix = self.name("");
        delete_labelled(&self.namespaced::<Pod>(), "pods", &selector, SHORT).await?;
        match delete_labelled(&self.snapshots(), "VolumeSnapshots", &selector, VOLUME_WORK).await {
            Ok(()) => {}
            // No snapshot API: the run made no snapshots.
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(err),
        }
        delete_labelled(
            &self.namespaced::<PersistentVolumeClaim>(),
            "PVCs",
            &selector,
            SHORT,
        )
        .await?;
        plinth_e2e::wait_claims_volumes_deleted(
            &self.client,
            &format!("the PVs of claims {prefix}* to be deleted"),
            VOLUME_WORK,
            &self.ns,
            |n| n.starts_with(&prefix),
        )
        .await
    }

    /// Step 7, second half: the driver recorded no volume or snapshot any more, and the
    /// node's pool is back to empty, with its room back.
    async fn check_pool_empty(&self, deployed: &Deployed, node: &str) -> anyhow::Result<()> {
        let volumes: Api<PoolVolume> = Api::all(self.client.clone());
        let snapshots: Api<PoolSnapshot> = Api::all(self.client.clone());
        let driver = &deployed.driver;
        wait_for(
            &format!("no PoolVolume or PoolSnapshot of {driver} left"),
            VOLUME_WORK,
            || async {
                // Listed without a label selector: a resource missing its labels must not
                // hide here.
                let mut left: Vec<String> = volumes
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|v| v.spec.driver == *driver)
                    .map(|v| format!("PoolVolume {} on {}", v.name_any(), v.spec.node))
                    .collect();
                left.extend(
                    snapshots
                        .list(&ListParams::default())
                        .await?
                        .items
                        .iter()
                        .filter(|s| s.spec.driver == *driver)
                        .map(|s| format!("PoolSnapshot {} on {}", s.name_any(), s.spec.node)),
                );
                none_left(left)
            },
        )
        .await?;
        let before = deployed
            .pools_before
            .get(node)
            .with_context(|| format!("no PoolNode of {node} before the run"))?;
        let after = self
            .wait_pool_node(deployed, node, "to be empty again", |s| {
                s.volumes == 0
                    && s.snapshots == 0
                    && s.available_bytes + UNRELATED_DISK_SLACK >= before.available_bytes
            })
            .await?;
        eprintln!(
            "e2e: pool of {node}: {} bytes available before the run, {} after",
            before.available_bytes, after.available_bytes
        );
        Ok(())
    }

    /// Runs after the flow whatever its outcome: the run's workloads, the CsiDeployment
    /// (refused by the operator while PVs of its driver exist, hence the order) and the
    /// PoolNodes its node plugins published.
    async fn cleanup(&self) -> anyhow::Result<()> {
        // While PVs of the driver exist the operator refuses the deletion, and the
        // driver must stay to delete them: leave the CsiDeployment for a later look.
        self.teardown_workloads().await.with_context(|| {
            format!(
                "removing the run's pods, snapshots and claims (CsiDeployment {} left in place)",
                self.cr
            )
        })?;
        remove_deployment(&self.client, &self.cr).await
    }
}

/// Labels and finalizer the contract puts on every PoolVolume and PoolSnapshot.
fn check_recorded<K: Resource>(object: &K, driver: &str, node: &str) -> anyhow::Result<()> {
    let name = object.meta().name.clone().unwrap_or_default();
    let labels = object.meta().labels.clone().unwrap_or_default();
    for (key, value) in crd::labels(driver, node) {
        ensure!(
            labels.get(&key) == Some(&value),
            "{name} lacks label {key}={value}: {labels:?}"
        );
    }
    let finalizers = object.meta().finalizers.clone().unwrap_or_default();
    ensure!(
        finalizers.iter().any(|f| f == FINALIZER),
        "{name} lacks finalizer {FINALIZER}: {finalizers:?}"
    );
    Ok(())
}

/// Prints the provisioning latency as the cluster showed it: PVC creation to Bound (with
/// WaitForFirstConsumer this includes scheduling the consuming pod) and a PoolVolume's
/// first appearance in the watch to Ready (the node plugin's share). Measured, never
/// asserted.
fn print_latencies(
    claims: &[String],
    created: &BTreeMap<String, Instant>,
    bound: &Timeline,
    ready: &Timeline,
) {
    let to_bound: Vec<Duration> = claims
        .iter()
        .filter_map(|c| {
            let reached = bound.marks(c)?.reached?;
            Some(reached.duration_since(*created.get(c)?))
        })
        .collect();
    let to_ready: Vec<Duration> = ready.all().values().filter_map(|m| m.latency()).collect();
    let show = |samples: &[Duration]| {
        if samples.is_empty() {
            "not observed".to_owned()
        } else {
            format!(
                "p50 {:?}, max {:?} over {}",
                percentile(samples, 50),
                percentile(samples, 100),
                samples.len()
            )
        }
    };
    eprintln!(
        "e2e: provisioning latency: PVC created -> Bound {}; PoolVolume created -> Ready {}",
        show(&to_bound),
        show(&to_ready)
    );
}

/// The size of the filesystem mounted at `mount`, from `df -Pk` output.
pub(crate) fn df_size_bytes(output: &str, mount: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 6 && fields.last() == Some(&mount) {
            fields[1].parse::<u64>().ok()?.checked_mul(1024)
        } else {
            None
        }
    })
}

#[test]
fn df_output_gives_the_size_of_the_mount() {
    let output = "Filesystem           1024-blocks    Used Available Capacity Mounted on\n\
                  /dev/loop7             2031440      24   1910424   0% /data\n";
    assert_eq!(df_size_bytes(output, "/data"), Some(2_031_440 * 1024));
    assert_eq!(df_size_bytes(output, "/other"), None);
    assert_eq!(df_size_bytes("df: /data: not found", "/data"), None);
}
