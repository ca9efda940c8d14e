//! A real public driver through a CsiDeployment (csi-driver-host-path in its per-node
//! topology, capabilities not declared), and an encrypted volume of the built-in driver.
//!
//! The host-path test deploys the driver named `hostpath.csi.k8s.io` (its `--drivername`):
//! run it on a cluster without another csi-driver-host-path install. The operator learns
//! what it advertises from a probe Job running the operator's image (`PLINTH_PROBE_IMAGE`,
//! default this release's published one). The encryption test needs a driver image
//! with fscrypt support (`PLINTH_E2E_DRIVER_IMAGE`) and nodes whose ext4 has encryption.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Client;
use kube::api::Api;
use plinth_operator::crd::CsiDeployment;
use serde_json::{Value, json};

use crate::workloads::{
    Lifetime, RUN_LABEL, claim, create, delete_labelled, pod, wait_pod_succeeded,
};
use crate::{
    LONG, SHORT, Setup, apply_cr, find_name, flow_then_cleanup, namespace, remove_deployment,
    rendered, run_id, setup, snapshot_crds_installed, spec, wait_condition, wait_registered,
};
use plinth_operator::render::ManagedKind;

/// The published host-path sample, as a user would apply it: no declared capabilities,
/// the operator must learn them from the driver.
fn hostpath_spec(class: &str) -> anyhow::Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../operator/tests/fixtures/hostpath.yaml"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let cr: CsiDeployment =
        plinth_operator::render::yaml::parse(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let mut spec = serde_json::to_value(&cr.spec)?;
    spec["namespace"] = json!(namespace());
    spec["storageClasses"] = json!([{ "name": class }]);
    Ok(spec)
}

/// What host-path advertises with its default flags (pkg/hostpath: controller
/// CREATE_DELETE_VOLUME, GET_CAPACITY, CREATE_DELETE_SNAPSHOT, EXPAND_VOLUME, no
/// PUBLISH_UNPUBLISH_VOLUME; plugin VOLUME_ACCESSIBILITY_CONSTRAINTS), deployed per node:
/// (pod, sidecar, deployed).
fn expected_hostpath_sidecars(snapshot_crds: bool) -> BTreeSet<(String, String, bool)> {
    [
        ("node", "csi-provisioner", true),
        ("node", "csi-attacher", false),
        // EXPAND_VOLUME is advertised, but external-resizer has no per-node mode.
        ("node", "csi-resizer", false),
        ("node", "csi-snapshotter", snapshot_crds),
        ("node", "node-driver-registrar", true),
        ("controller", "liveness-probe", false),
        ("node", "liveness-probe", true),
    ]
    .into_iter()
    .map(|(pod, name, deployed)| (pod.to_owned(), name.to_owned(), deployed))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn hostpath_deploys_per_node_from_what_it_advertises_and_provisions() -> anyhow::Result<()> {
    let Setup {
        client,
        operator,
        _serial,
    } = setup().await?;
    let id = run_id();
    let cr = format!("e2e-hostpath-{id}");
    let class = cr.clone();
    let flow = async {
        let spec = hostpath_spec(&class)?;
        let applied = apply_cr(&client, &cr, &spec).await?;
        let snapshot_crds = snapshot_crds_installed(&client).await;
        let ns = namespace();
        let ds = format!("plinth-{cr}-node");
        wait_registered(&client, &ns, &ds, "hostpath.csi.k8s.io").await?;
        wait_condition(&client, &cr, "Ready", "True", None).await?;
        let api: Api<CsiDeployment> = Api::all(client.clone());
        let status = api.get(&cr).await?.status.unwrap_or_default();
        let seen: BTreeSet<(String, String, bool)> = status
            .sidecars
            .iter()
            .map(|s| (s.pod.clone(), s.name.clone(), s.deployed))
            .collect();
        ensure!(
            seen == expected_hostpath_sidecars(snapshot_crds),
            "status.sidecars {:#?} is not what host-path advertises",
            status.sidecars
        );
        ensure!(
            applied.spec.driver.third_party.is_some(),
            "the CR lost its thirdParty block"
        );
        let caps = status
            .capabilities
            .as_ref()
            .context("status.capabilities is unset on a Ready deployment")?;
        ensure!(
            caps.source == plinth_operator::crd::CapabilitySource::Probe
                && caps.driver_name.as_deref() == Some("hostpath.csi.k8s.io")
                && caps
                    .advertised
                    .controller
                    .contains(&plinth_api::capabilities::ControllerCapability::CreateDeleteVolume),
            "status.capabilities is not host-path's probed answer: {caps:#?}"
        );
        read_back_through_a_claim(&client, &id, &class, None).await
    };
    let cleanup = async {
        delete_run(&client, &id).await?;
        remove_deployment(&client, &cr).await
    };
    flow_then_cleanup(operator, flow, cleanup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn an_encrypted_claim_with_its_own_secret_reads_its_data_back() -> anyhow::Result<()> {
    let Setup {
        client,
        operator,
        _serial,
    } = setup().await?;
    plinth_e2e::install_pool_crds(&client).await?;
    let id = run_id();
    let cr = format!("e2e-enc-{id}");
    let class = cr.clone();
    let flow = async {
        let mut spec = spec(&cr, json!({}));
        spec["storageClasses"] = json!([{ "name": class, "encryption": {} }]);
        let applied = apply_cr(&client, &cr, &spec).await?;
        let plan = rendered(&applied, snapshot_crds_installed(&client).await);
        ensure!(
            plan.encrypted_classes == [class.clone()],
            "rendered encrypted classes: {:?}",
            plan.encrypted_classes
        );
        let ds = find_name(&plan, ManagedKind::DaemonSet);
        wait_registered(&client, &namespace(), &ds, &plan.driver_name).await?;
        wait_condition(&client, &cr, "Ready", "True", None).await?;
        read_back_through_a_claim(&client, &id, &class, Some(&random_key()?)).await
    };
    let cleanup = async {
        delete_run(&client, &id).await?;
        remove_deployment(&client, &cr).await
    };
    flow_then_cleanup(operator, flow, cleanup).await
}

/// 32 random bytes, hex: the per-claim Secret's `encryptionKey`.
fn random_key() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A claim of `class` (with its Secret, named like it, when `key` is given), a pod that
/// writes a marker, then a second pod that reads it back.
async fn read_back_through_a_claim(
    client: &Client,
    run: &str,
    class: &str,
    key: Option<&str>,
) -> anyhow::Result<()> {
    let ns = namespace();
    let name = format!("real-{run}");
    if let Some(key) = key {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        create(
            &secrets,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": name, "labels": { RUN_LABEL: run } },
                "stringData": { "encryptionKey": key },
            }),
        )
        .await
        .context("creating the claim's Secret")?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    create(&claims, claim(&name, run, class, "64Mi", None)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let marker = format!("plinth-{run}");
    let writer = format!("{name}-write");
    let script = format!("echo {marker} > /data/marker && sync");
    create(
        &pods,
        pod(&writer, run, None, &[&name], &script, Lifetime::Once),
    )
    .await?;
    wait_pod_succeeded(client, &ns, &writer, &[&name], LONG).await?;
    let reader = format!("{name}-read");
    create(
        &pods,
        pod(
            &reader,
            run,
            None,
            &[&name],
            "cat /data/marker",
            Lifetime::Once,
        ),
    )
    .await?;
    let log = wait_pod_succeeded(client, &ns, &reader, &[&name], LONG).await?;
    ensure!(log.trim() == marker, "read back {log:?}, wrote {marker:?}");
    Ok(())
}

/// The run's pods, claims (and their volumes) and Secrets.
async fn delete_run(client: &Client, run: &str) -> anyhow::Result<()> {
    let ns = namespace();
    let selector = format!("{RUN_LABEL}={run}");
    delete_labelled(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        "pods",
        &selector,
        SHORT,
    )
    .await?;
    delete_labelled(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
        "PVCs",
        &selector,
        SHORT,
    )
    .await?;
    let claim = format!("real-{run}");
    plinth_e2e::wait_claims_volumes_deleted(
        client,
        "the run's PersistentVolumes to be deleted",
        LONG,
        &ns,
        |n| n == claim,
    )
    .await?;
    delete_labelled(
        &Api::<Secret>::namespaced(client.clone(), &ns),
        "Secrets",
        &selector,
        SHORT,
    )
    .await
}

#[test]
fn the_hostpath_test_applies_the_sample_without_declared_capabilities() {
    let spec = hostpath_spec("c").unwrap();
    let third = &spec["driver"]["thirdParty"];
    assert!(third.get("capabilities").is_none(), "{third}");
    assert_eq!(third["provisioning"], "PerNode");
    assert_eq!(spec["storageClasses"], json!([{ "name": "c" }]));
}
