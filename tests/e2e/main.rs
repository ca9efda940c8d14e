//! End-to-end suite against a real cluster.
//!
//! Run: `KUBECONFIG=/path/to/kubeconfig cargo test -p plinth-e2e -- --ignored --test-threads=1`
//!
//! Every test is `#[ignore]`d so a plain `cargo test` reports them as ignored, never as
//! passed; with `--ignored` and no reachable cluster they fail saying so. The operator runs
//! in-process (the same `reconcile::controller::run` as `plinth-operator run`), so the suite
//! needs no operator image: only the CsiDeployment CRD and the driver's PoolVolume /
//! PoolSnapshot / PoolNode CRDs (installed from the code) and a cluster that can pull the
//! driver and sidecar images. The volume test ([`volumes`]) also needs the
//! external-snapshotter CRDs and snapshot-controller, and pulls a busybox image for its
//! pods. [`snapshot_crds`] wants the snapshot CRDs absent (it installs stand-ins, then
//! removes them), or leave to remove and restore the cluster's own
//! (`PLINTH_E2E_REINSTALL_SNAPSHOT_CRDS=1`, only with no snapshots in the cluster); without
//! either it skips itself, saying so. Environment:
//! - `PLINTH_E2E_NAMESPACE` (default `plinth-e2e`): where the driver's workloads and the
//!   test's claims and pods go;
//! - `PLINTH_E2E_DRIVER_IMAGE`: driver image to deploy (e.g. one loaded into kind);
//!   default: the release image the operator would deploy;
//! - `PLINTH_E2E_EDITS` (default 20): CR edits timed by the latency probe;
//! - `PLINTH_E2E_PVCS` (default 1): claims provisioned at once for the provisioning
//!   latency figures;
//! - `PLINTH_E2E_POD_IMAGE` (default `busybox:1.37`): image of the test's pods.
//!
//! Each test uses its own CR, driver name and pool directory, and the tests take a lock,
//! so they never disturb one another (nor a real Plinth install: driver names differ).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_drivers;
mod restart;
mod snapshot_crds;
mod volumes;
mod workloads;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, StorageClass};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use plinth_api::served_features;
use plinth_e2e::{
    Operator, TEST_MANAGER, connect, ensure_namespace, install_crd, none_left, percentile, wait_for,
};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::render::{self, ManagedKind, ManagedObject, RenderEnv};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One test at a time: they share the cluster's nodes and the in-process operator's
/// watches would see each other's objects.
static SERIAL: Mutex<()> = Mutex::const_new(());

const SHORT: Duration = Duration::from_secs(60);
/// Image pulls and kubelet registration on a fresh node take a while.
const LONG: Duration = Duration::from_secs(300);

fn namespace() -> String {
    std::env::var("PLINTH_E2E_NAMESPACE").unwrap_or_else(|_| "plinth-e2e".to_owned())
}

fn spec(test: &str, features: Value) -> Value {
    let mut driver = json!({ "name": format!("{test}.e2e.csi.plinth.dev") });
    if let Ok(image) = std::env::var("PLINTH_E2E_DRIVER_IMAGE") {
        driver["image"] = json!(image);
    }
    json!({
        "namespace": namespace(),
        "driver": driver,
        "features": features,
        "node": { "poolPath": format!("/var/lib/plinth/{test}") },
    })
}

/// Applies the CR as a user would (`kubectl apply --server-side`).
async fn apply_cr(client: &Client, name: &str, spec: &Value) -> anyhow::Result<CsiDeployment> {
    let api: Api<CsiDeployment> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "plinth.dev/v1alpha1",
        "kind": "CsiDeployment",
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .with_context(|| format!("applying CsiDeployment {name}"))
}

/// What the operator will deploy for `cr`: names and expected fields come from the same
/// renderer, the checks are on what the cluster then holds.
fn rendered(cr: &CsiDeployment, snapshot_crds: bool) -> render::Rendered {
    render::render(
        cr,
        &RenderEnv {
            snapshot_crds_present: snapshot_crds,
            ..RenderEnv::default()
        },
    )
    .expect("the test spec is valid")
}

fn find_name(r: &render::Rendered, kind: ManagedKind) -> String {
    r.objects
        .iter()
        .find(|o| o.kind() == kind)
        .map(|o| o.name().to_owned())
        .unwrap_or_else(|| panic!("no {kind:?} rendered"))
}

async fn snapshot_crds_installed(client: &Client) -> bool {
    match client
        .list_api_group_resources("snapshot.storage.k8s.io/v1")
        .await
    {
        Ok(list) => [
            "volumesnapshots",
            "volumesnapshotcontents",
            "volumesnapshotclasses",
        ]
        .iter()
        .all(|r| list.resources.iter().any(|s| s.name == *r)),
        Err(_) => false,
    }
}

fn container_names(sts: &StatefulSet) -> Vec<String> {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

async fn wait_containers(
    client: &Client,
    ns: &str,
    sts: &str,
    container: &str,
    present: bool,
) -> anyhow::Result<()> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let what = format!(
        "StatefulSet {ns}/{sts} {} container {container}",
        if present { "to have" } else { "to lose" }
    );
    wait_for(&what, SHORT, || {
        let api = api.clone();
        async move {
            let Some(sts) = api.get_opt(sts).await? else {
                return Ok(None);
            };
            let has = container_names(&sts).iter().any(|c| c == container);
            Ok((has == present).then_some(()))
        }
    })
    .await
}

/// Waits for a condition of the CR with `status` and (if given) `reason`; returns its message.
async fn wait_condition(
    client: &Client,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> anyhow::Result<String> {
    let api: Api<CsiDeployment> = Api::all(client.clone());
    let what = format!("CsiDeployment {name} condition {type_}={status} {reason:?}");
    wait_for(&what, SHORT, || {
        let api = api.clone();
        async move {
            let cr = api.get(name).await?;
            let found = cr
                .status
                .unwrap_or_default()
                .conditions
                .into_iter()
                .find(|c| {
                    c.type_ == type_ && c.status == status && reason.is_none_or(|r| c.reason == r)
                });
            Ok(found.map(|c| c.message))
        }
    })
    .await
}

fn vsc_api(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ManagedKind::VolumeSnapshotClass.api_resource(),
    )
}

/// Deletes the CR and waits until it and every object labelled for it are gone.
async fn delete_and_wait_clean(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<CsiDeployment> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("deleting the CsiDeployment"),
    }
    wait_for(&format!("CsiDeployment {name} to be gone"), SHORT, || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    })
    .await?;
    let selector = plinth_operator::labels::selector(name);
    wait_for(
        &format!("every object labelled {selector} to be gone"),
        SHORT,
        || {
            let selector = selector.clone();
            async move {
                let mut left = Vec::new();
                for &kind in ManagedKind::ALL {
                    let api: Api<DynamicObject> =
                        Api::all_with(client.clone(), &kind.api_resource());
                    match api
                        .list_metadata(&ListParams::default().labels(&selector))
                        .await
                    {
                        Ok(list) => left.extend(
                            list.items
                                .iter()
                                .map(|o| format!("{kind:?}/{}", o.name_any())),
                        ),
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                none_left(left)
            }
        },
    )
    .await
}

/// Waits until kubelet has registered `driver` (CSINode) on every node the DaemonSet
/// targets; returns how many nodes that is.
async fn wait_registered(
    client: &Client,
    ns: &str,
    ds_name: &str,
    driver: &str,
) -> anyhow::Result<usize> {
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let csinode_api: Api<CSINode> = Api::all(client.clone());
    let registered = wait_for(
        "the driver to register on every node the DaemonSet targets (is the driver image pullable? set PLINTH_E2E_DRIVER_IMAGE)",
        LONG,
        || async {
            let ds = ds_api.get(ds_name).await?;
            let targeted = ds.status.map(|s| s.desired_number_scheduled).unwrap_or_default();
            let nodes = csinode_api.list(&ListParams::default()).await?;
            let registered = nodes
                .items
                .iter()
                .filter(|n| n.spec.drivers.iter().any(|d| d.name == driver))
                .count();
            Ok((targeted > 0 && registered >= usize::try_from(targeted)?).then_some(registered))
        },
    )
    .await?;
    eprintln!("e2e: driver registered on {registered} nodes");
    Ok(registered)
}

/// A short id unique enough for one run's names: a run never meets a previous run's
/// leftovers.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:06x}", nanos % 0x100_0000)
}

/// Runs `flow`, then `cleanup` whatever the flow did (failed or panicked), stops the
/// in-process operator, and reports the flow's outcome (after a clean flow, the
/// cleanup's).
async fn flow_then_cleanup(
    operator: Operator,
    flow: impl std::future::Future<Output = anyhow::Result<()>>,
    cleanup: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use futures::FutureExt as _;
    let outcome = std::panic::AssertUnwindSafe(flow).catch_unwind().await;
    let cleaned = cleanup.await;
    operator.stop().await;
    if let (Err(_) | Ok(Err(_)), Err(cleanup)) = (&outcome, &cleaned) {
        eprintln!("e2e: cleanup after the failure failed too: {cleanup:#}");
    }
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(result) => result.and(cleaned),
    }
}

/// Deletes the CsiDeployment `cr` (waiting until its objects are gone) and the PoolNodes
/// its node plugins published.
async fn remove_deployment(client: &Client, cr: &str) -> anyhow::Result<()> {
    delete_and_wait_clean(client, cr)
        .await
        .context("removing the CsiDeployment")?;
    let driver = spec(cr, json!({}))["driver"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pools: Api<plinth_api::cluster::crd::PoolNode> = Api::all(client.clone());
    for pool in pools.list(&ListParams::default()).await?.items {
        if pool.spec.driver == driver {
            workloads::delete_if_present(&pools, &pool.name_any()).await?;
        }
    }
    Ok(())
}

struct Setup {
    client: Client,
    operator: Operator,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn setup() -> anyhow::Result<Setup> {
    let serial = SERIAL.lock().await;
    let client = connect().await?;
    install_crd(&client).await?;
    ensure_namespace(&client, &namespace()).await?;
    let operator = Operator::start(client.clone());
    Ok(Setup {
        client,
        operator,
        _serial: serial,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn lifecycle_from_apply_through_feature_toggles_to_cleanup() -> anyhow::Result<()> {
    let Setup {
        client,
        operator,
        _serial,
    } = setup().await?;
    let name = "e2e-lifecycle";
    let ns = namespace();
    let off = json!({ "snapshots": false, "resize": false });
    let cr = apply_cr(&client, name, &spec(name, off.clone())).await?;
    let plan = rendered(&cr, false);
    let sts_name = find_name(&plan, ManagedKind::StatefulSet);
    let ds_name = find_name(&plan, ManagedKind::DaemonSet);
    let driver = plan.driver_name.clone();
    let class = find_name(&plan, ManagedKind::StorageClass);

    // Everything the CR needs appears.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let csidriver_api: Api<CSIDriver> = Api::all(client.clone());
    let sc_api: Api<StorageClass> = Api::all(client.clone());
    wait_for(
        "StatefulSet, DaemonSet, CSIDriver and StorageClass",
        SHORT,
        || async {
            let all = sts_api.get_opt(&sts_name).await?.is_some()
                && ds_api.get_opt(&ds_name).await?.is_some()
                && csidriver_api.get_opt(&driver).await?.is_some()
                && sc_api.get_opt(&class).await?.is_some();
            Ok(all.then_some(()))
        },
    )
    .await?;

    // The CSIDriver says what the capabilities imply.
    let csidriver = csidriver_api.get(&driver).await?;
    let want = plan
        .objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::CsiDriver(d) => Some(d.spec.clone()),
            _ => None,
        })
        .expect("CSIDriver rendered");
    assert_eq!(
        csidriver.spec.attach_required,
        Some(false),
        "the built-in driver has no ControllerPublish"
    );
    assert_eq!(csidriver.spec.attach_required, want.attach_required);
    assert_eq!(csidriver.spec.pod_info_on_mount, want.pod_info_on_mount);
    assert_eq!(csidriver.spec.storage_capacity, want.storage_capacity);
    assert_eq!(csidriver.spec.fs_group_policy, want.fs_group_policy);
    assert!(
        csidriver
            .spec
            .volume_lifecycle_modes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| m == "Persistent")
    );
    assert_eq!(
        csidriver
            .labels()
            .get("plinth.dev/csi-deployment")
            .map(String::as_str),
        Some(name)
    );
    assert_eq!(sc_api.get(&class).await?.provisioner, driver);

    // kubelet registers the driver on every targeted node.
    wait_registered(&client, &ns, &ds_name, &driver).await?;
    wait_condition(&client, name, "Ready", "True", Some("Available")).await?;

    // Snapshots on.
    let served = served_features();
    let snapshot_crds = snapshot_crds_installed(&client).await;
    apply_cr(
        &client,
        name,
        &spec(name, json!({ "snapshots": true, "resize": false })),
    )
    .await?;
    let default_vsc = format!("plinth-{name}");
    if !served.snapshots {
        let msg = wait_condition(&client, name, "Degraded", "True", Some("InvalidSpec")).await?;
        assert!(msg.contains("spec.features.snapshots"), "{msg}");
    } else if snapshot_crds {
        wait_containers(&client, &ns, &sts_name, "csi-snapshotter", true).await?;
        wait_for("the VolumeSnapshotClass", SHORT, || async {
            Ok(vsc_api(&client).get_opt(&default_vsc).await?.map(|_| ()))
        })
        .await?;
    } else {
        let msg = wait_condition(
            &client,
            name,
            "Degraded",
            "True",
            Some("FeatureUnavailable"),
        )
        .await?;
        assert!(msg.contains("snapshot.storage.k8s.io"), "{msg}");
        let sts = sts_api.get(&sts_name).await?;
        assert!(!container_names(&sts).iter().any(|c| c == "csi-snapshotter"));
    }

    // Resize on.
    apply_cr(
        &client,
        name,
        &spec(name, json!({ "snapshots": true, "resize": true })),
    )
    .await?;
    if served.expansion {
        wait_containers(&client, &ns, &sts_name, "csi-resizer", true).await?;
        wait_for("StorageClass allowVolumeExpansion: true", SHORT, || async {
            Ok((sc_api.get(&class).await?.allow_volume_expansion == Some(true)).then_some(()))
        })
        .await?;
    } else {
        let msg = wait_condition(&client, name, "Degraded", "True", Some("InvalidSpec")).await?;
        assert!(msg.contains("spec.features.resize"), "{msg}");
    }

    // Both off again: the sidecars, the snapshot class and the expansion flag go.
    apply_cr(&client, name, &spec(name, off)).await?;
    wait_containers(&client, &ns, &sts_name, "csi-snapshotter", false).await?;
    wait_containers(&client, &ns, &sts_name, "csi-resizer", false).await?;
    if snapshot_crds {
        wait_for("the VolumeSnapshotClass to be pruned", SHORT, || async {
            Ok(vsc_api(&client)
                .get_opt(&default_vsc)
                .await?
                .is_none()
                .then_some(()))
        })
        .await?;
    }
    wait_for("StorageClass without volume expansion", SHORT, || async {
        Ok((sc_api.get(&class).await?.allow_volume_expansion != Some(true)).then_some(()))
    })
    .await?;
    wait_condition(&client, name, "Degraded", "False", None).await?;

    delete_and_wait_clean(&client, name).await?;
    operator.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn deletion_waits_while_volumes_of_the_driver_exist() -> anyhow::Result<()> {
    let Setup {
        client,
        operator,
        _serial,
    } = setup().await?;
    let name = "e2e-deletion";
    let cr = apply_cr(&client, name, &spec(name, json!({}))).await?;
    let driver = rendered(&cr, false).driver_name;
    let api: Api<CsiDeployment> = Api::all(client.clone());
    wait_for(
        "the operator to take the CsiDeployment on",
        SHORT,
        || async {
            let cr = api.get(name).await?;
            let taken = cr
                .finalizers()
                .iter()
                .any(|f| f == plinth_operator::reconcile::FINALIZER)
                && cr.status.and_then(|s| s.observed_generation).is_some();
            Ok(taken.then_some(()))
        },
    )
    .await?;

    // A statically provisioned PV of the driver (no data behind it: nothing mounts it).
    let pv_api: Api<PersistentVolume> = Api::all(client.clone());
    let pv_name = format!("{name}-pv");
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": { "name": pv_name },
        "spec": {
            "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "csi": { "driver": driver, "volumeHandle": "e2e-static" }
        }
    });
    pv_api
        .patch(
            &pv_name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&pv),
        )
        .await?;

    api.delete(name, &DeleteParams::default()).await?;
    let msg = wait_condition(&client, name, "Degraded", "True", Some("VolumesExist")).await?;
    assert!(msg.contains("spec.deletionPolicy=OrphanVolumes"), "{msg}");
    let cr = api.get(name).await?;
    assert_eq!(cr.status.and_then(|s| s.remaining_volumes), Some(1));
    assert!(
        Api::<CSIDriver>::all(client.clone())
            .get_opt(&driver)
            .await?
            .is_some()
    );

    pv_api.delete(&pv_name, &DeleteParams::default()).await?;
    // The refusal is re-checked periodically (PV deletions do not trigger the CR).
    let wait = plinth_operator::reconcile::VOLUMES_RECHECK + SHORT;
    wait_for(&format!("CsiDeployment {name} to be gone"), wait, || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    })
    .await?;
    delete_and_wait_clean(&client, name).await?;
    operator.stop().await;
    Ok(())
}

/// How long a CR edit takes to reach the StatefulSet: patch the CR, then watch the
/// StatefulSet until its template carries the edit. Prints p50/p90/max; no threshold is
/// asserted (timings are measured, not tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p plinth-e2e -- --ignored"]
async fn latency_from_cr_edit_to_applied_statefulset() -> anyhow::Result<()> {
    let Setup {
        client,
        operator,
        _serial,
    } = setup().await?;
    let name = "e2e-latency";
    let ns = namespace();
    let edits: usize = std::env::var("PLINTH_E2E_EDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut desired = spec(name, json!({}));
    let cr = apply_cr(&client, name, &desired).await?;
    let sts_name = find_name(&rendered(&cr, false), ManagedKind::StatefulSet);
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    wait_for("the controller StatefulSet", SHORT, || async {
        Ok(sts_api.get_opt(&sts_name).await?.map(|_| ()))
    })
    .await?;

    // One watch for the whole probe, opened before the first edit, so only the operator's
    // work is timed.
    let mut updates = watcher::watch_object(sts_api.clone(), &sts_name).boxed();
    let mut samples = Vec::with_capacity(edits);
    for i in 0..edits {
        let timeout = format!("{}s", 61 + i);
        desired["controller"] = json!({ "timeout": timeout });
        let arg = format!("--timeout={timeout}");
        let started = Instant::now();
        apply_cr(&client, name, &desired).await?;
        let deadline = tokio::time::Instant::now() + SHORT;
        loop {
            let next = tokio::time::timeout_at(deadline, updates.try_next())
                .await
                .with_context(|| format!("the StatefulSet never carried {arg}"))??;
            let carried = next.flatten().is_some_and(|sts| {
                sts.spec.and_then(|s| s.template.spec).is_some_and(|p| {
                    p.containers
                        .iter()
                        .any(|c| c.args.as_ref().is_some_and(|a| a.contains(&arg)))
                })
            });
            if carried {
                samples.push(started.elapsed());
                break;
            }
        }
    }
    eprintln!(
        "e2e: CR edit -> applied StatefulSet over {} edits: p50 {:?}, p90 {:?}, max {:?}",
        samples.len(),
        percentile(&samples, 50),
        percentile(&samples, 90),
        percentile(&samples, 100)
    );
    delete_and_wait_clean(&client, name).await?;
    operator.stop().await;
    Ok(())
}
