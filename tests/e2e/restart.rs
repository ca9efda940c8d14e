//! A node-plugin restart with a volume in use (issue 10): on the first real cluster,
//! toggling `features.resize` rolled the node DaemonSet, and the new node pod — a new
//! container in a new mount namespace — could neither expand nor unpublish the volumes
//! its predecessor had staged: pods stuck in Terminating, loop devices and mounts left on
//! the node.
//!
//! Here a pod writes to a claim, resize is switched on (and the node plugin on the pod's
//! node is restarted: by the rollout if the edit rolls it, by deleting its pod
//! otherwise), the claim is expanded online and checked from a pod, then everything is
//! deleted and a privileged pod on the node confirms that no loop device of the volume
//! and no mount of it or of the driver's staging directory is left.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use plinth_e2e::{install_pool_crds, wait_for};
use plinth_operator::render::ManagedKind;
use serde_json::{Value, json};

use crate::workloads::{
    DATA, Lifetime, RUN_LABEL, claim, create, delete_if_present, delete_labelled, pod,
    wait_claim_capacity, wait_pod_ready, wait_pod_succeeded,
};
use crate::{
    LONG, SHORT, Setup, apply_cr, find_name, flow_then_cleanup, namespace, remove_deployment,
    rendered, run_id, setup, spec, wait_condition, wait_containers, wait_registered,
};

const GI: u64 = 1 << 30;
const VOLUME_WORK: Duration = Duration::from_secs(180);
/// How long the resize edit may take to roll the node plugin before the test restarts
/// it itself (an operator that rolls the node side only when it changes may not).
const ROLL_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn a_volume_in_use_survives_a_node_plugin_restart_then_grows_and_is_freed()
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

struct Run {
    client: Client,
    ns: String,
    id: String,
    cr: String,
}

impl Run {
    fn new(client: Client) -> Self {
        let id = run_id();
        Self {
            client,
            ns: namespace(),
            cr: format!("e2e-rst-{id}"),
            id,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("rst-{}-{what}", self.id)
    }

    fn selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.id)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn flow(&self) -> anyhow::Result<()> {
        // Resize off at first; snapshots off, so the run needs no snapshot CRDs.
        let features = json!({ "snapshots": false, "resize": false });
        let cr = apply_cr(&self.client, &self.cr, &spec(&self.cr, features)).await?;
        let plan = rendered(&cr, false);
        let driver = plan.driver_name.clone();
        let ds_name = find_name(&plan, ManagedKind::DaemonSet);
        let sts_name = find_name(&plan, ManagedKind::StatefulSet);
        let class = find_name(&plan, ManagedKind::StorageClass);
        wait_registered(&self.client, &self.ns, &ds_name, &driver).await?;
        wait_condition(&self.client, &self.cr, "Ready", "True", Some("Available")).await?;

        // A pod writes to its claim and keeps it mounted.
        let data = self.name("data");
        let token = format!("plinth-e2e-restart-{}", self.id);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns);
        create(&claims, claim(&data, &self.id, &class, "1Gi", None)).await?;
        let writer = self.name("writer");
        let script = format!("echo '{token}' > {DATA}/file && sync");
        create(
            &self.pods(),
            pod(&writer, &self.id, None, &[&data], &script, Lifetime::Serve),
        )
        .await?;
        let running = wait_pod_ready(&self.client, &self.ns, &writer, &[&data], LONG).await?;
        let node = running
            .spec
            .and_then(|s| s.node_name)
            .context("a Ready pod has a node")?;
        let (pv, volume_id) = self.volume_of(&data).await?;
        eprintln!("e2e: {writer} on {node} uses {pv}, volume {volume_id}");

        // Resize on, and a new node plugin on that node.
        let before = self.node_plugin(&ds_name, &node).await?;
        self.patch_features(json!({ "resize": true })).await?;
        wait_containers(&self.client, &self.ns, &sts_name, "csi-resizer", true).await?;
        let rolled = wait_for(
            &format!("the node plugin on {node} to be replaced by the rollout"),
            ROLL_WAIT,
            || async {
                let now = self.node_plugin(&ds_name, &node).await?;
                Ok((now.uid() != before.uid()).then_some(()))
            },
        )
        .await;
        if rolled.is_err() {
            eprintln!("e2e: the resize edit did not roll the node plugin; deleting its pod");
            delete_if_present(&self.pods(), &before.name_any()).await?;
        }
        let after = wait_for(
            &format!("a new, Ready node plugin on {node}"),
            LONG,
            || async {
                let now = self.node_plugin(&ds_name, &node).await?;
                Ok((now.uid() != before.uid() && is_ready(&now)).then_some(now))
            },
        )
        .await?;
        eprintln!(
            "e2e: node plugin {} replaced {} on {node}",
            after.name_any(),
            before.name_any()
        );
        wait_registered(&self.client, &self.ns, &ds_name, &driver).await?;

        // Online expansion of the volume the previous node plugin staged.
        claims
            .patch(
                &data,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }),
                ),
            )
            .await
            .with_context(|| format!("requesting 2Gi for PVC {data}"))?;
        wait_claim_capacity(&self.client, &self.ns, &data, 2 * GI, VOLUME_WORK).await?;
        let check = self.name("check");
        create(
            &self.pods(),
            pod(
                &check,
                &self.id,
                Some(&node),
                &[&data],
                &format!("cat {DATA}/file && df -Pk {DATA}"),
                Lifetime::Once,
            ),
        )
        .await?;
        let log = wait_pod_succeeded(&self.client, &self.ns, &check, &[&data], LONG).await?;
        ensure!(
            log.contains(&token),
            "the data written before the restart is gone:\n{log}"
        );
        let size = crate::volumes::df_size_bytes(&log, DATA)
            .with_context(|| format!("no size of {DATA} in the df output:\n{log}"))?;
        ensure!(
            size >= GI + GI / 2,
            "the filesystem did not grow after the node plugin restart: {size} bytes\n{log}"
        );

        // Everything goes: pods leave Terminating, the PV is deleted.
        self.teardown().await?;
        self.check_node_clean(&node, &driver, &pv, &volume_id).await
    }

    /// The PV bound to `claim` and its CSI volume ID.
    async fn volume_of(&self, claim: &str) -> anyhow::Result<(String, String)> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns);
        let pv = claims
            .get(claim)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .context("a bound claim names its PV")?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        pvs.get(&pv)
            .await?
            .spec
            .and_then(|s| s.csi)
            .map(|csi| (pv.clone(), csi.volume_handle))
            .with_context(|| format!("PV {pv} has no CSI volume handle"))
    }

    /// The DaemonSet's pod on `node`.
    async fn node_plugin(&self, ds_name: &str, node: &str) -> anyhow::Result<Pod> {
        let ds: Api<DaemonSet> = Api::namespaced(self.client.clone(), &self.ns);
        let labels = ds
            .get(ds_name)
            .await?
            .spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default();
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&selector.join(",")))
            .await?;
        pods.items
            .into_iter()
            .find(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .with_context(|| format!("no node plugin pod of {ds_name} on {node}"))
    }

    async fn patch_features(&self, features: Value) -> anyhow::Result<()> {
        let api: Api<plinth_operator::crd::CsiDeployment> = Api::all(self.client.clone());
        api.patch(
            &self.cr,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "features": features } })),
        )
        .await
        .with_context(|| format!("editing CsiDeployment {}", self.cr))?;
        Ok(())
    }

    async fn teardown(&self) -> anyhow::Result<()> {
        let selector = self.selector();
        delete_labelled(&self.pods(), "pods", &selector, SHORT).await?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns);
        delete_labelled(&claims, "PVCs", &selector, SHORT).await?;
        let prefix = self.name("");
        plinth_e2e::wait_claims_volumes_deleted(
            &self.client,
            &format!("the PVs of claims {prefix}* to be deleted"),
            VOLUME_WORK,
            &self.ns,
            |n| n.starts_with(&prefix),
        )
        .await
    }

    /// A privileged pod on `node` reads the host's mount table and loop devices: nothing
    /// of the volume (its image `<id>.img`, its PV's target directories) nor of the
    /// driver's staging directory is left.
    async fn check_node_clean(
        &self,
        node: &str,
        driver: &str,
        pv: &str,
        volume_id: &str,
    ) -> anyhow::Result<()> {
        let name = self.name("inspect");
        let script = "echo MOUNTS; cat /proc/1/mountinfo; echo LOOPS; \
             for d in /host-sys/block/loop*; do \
             [ -f $d/loop/backing_file ] && echo \"${d##*/} $(cat $d/loop/backing_file)\"; \
             done; echo END";
        let mut inspector = pod(&name, &self.id, Some(node), &[], script, Lifetime::Once);
        inspector["spec"]["hostPID"] = json!(true);
        inspector["spec"]["containers"][0]["securityContext"] = json!({ "privileged": true });
        inspector["spec"]["containers"][0]["volumeMounts"] =
            json!([{ "name": "sys", "mountPath": "/host-sys", "readOnly": true }]);
        inspector["spec"]["volumes"] = json!([{ "name": "sys", "hostPath": { "path": "/sys" } }]);
        create(&self.pods(), inspector).await?;
        let log = wait_pod_succeeded(&self.client, &self.ns, &name, &[], LONG).await?;
        delete_if_present(&self.pods(), &name).await?;
        ensure!(log.contains("END"), "the inspection did not finish:\n{log}");
        let image = format!("{volume_id}.img");
        let staging = format!("kubernetes.io/csi/{driver}/");
        let left: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(&image)
                    || l.contains(&staging)
                    || l.contains(volume_id)
                    || l.contains(pv)
            })
            .collect();
        if !left.is_empty() {
            bail!(
                "left on {node} after the volume was deleted:\n{}",
                left.join("\n")
            );
        }
        eprintln!("e2e: no loop device or mount of {volume_id} left on {node}");
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.teardown().await.with_context(|| {
            format!(
                "removing the run's pods and claims (CsiDeployment {} left in place)",
                self.cr
            )
        })?;
        remove_deployment(&self.client, &self.cr).await
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
