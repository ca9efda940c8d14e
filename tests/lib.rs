//! Helpers shared by the end-to-end suites: reaching the cluster, installing the CRD,
//! running the operator in-process, and bounded waits that say what they waited for.

pub mod quantity;
pub mod timeline;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Client, CustomResourceExt, ResourceExt};
use plinth_api::cluster::crd::{PoolNode, PoolSnapshot, PoolVolume};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::metrics::Metrics;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Field manager of what the suite itself writes (CRD, namespaces, test CRs).
pub const TEST_MANAGER: &str = "plinth-e2e";

/// Connects to the cluster named by KUBECONFIG (or in-cluster config) and checks that the
/// API server answers; the error says how to point the suite at a cluster.
pub async fn connect() -> anyhow::Result<Client> {
    let hint = "the e2e suite needs a reachable cluster: KUBECONFIG=/path/to/kubeconfig \
                cargo test -p plinth-e2e -- --ignored --test-threads=1";
    let client = Client::try_default()
        .await
        .with_context(|| format!("no Kubernetes configuration found; {hint}"))?;
    let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| anyhow::anyhow!("the API server did not answer within 10 s; {hint}"))?
        .with_context(|| format!("the API server refused the version request; {hint}"))?;
    eprintln!("e2e: cluster version {}", version.git_version);
    Ok(client)
}

/// Installs (or updates) the CsiDeployment CRD from the operator's types and waits until
/// the API server serves it.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    install_crd_of::<CsiDeployment>(client).await
}

/// Installs (or updates) the driver's cluster-mode CRDs (PoolVolume, PoolSnapshot,
/// PoolNode) from the driver's types, as the suite does for its own CRD, so the checks
/// read the resources the code under test defines.
pub async fn install_pool_crds(client: &Client) -> anyhow::Result<()> {
    install_crd_of::<PoolVolume>(client).await?;
    install_crd_of::<PoolSnapshot>(client).await?;
    install_crd_of::<PoolNode>(client).await
}

async fn install_crd_of<K: CustomResourceExt>(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = K::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .with_context(|| format!("applying the CRD {name}"))?;
    wait_for(
        &format!("CRD {name} to be Established"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(if established { Some(()) } else { None })
            }
        },
    )
    .await
}

/// Creates `name` if it does not exist.
pub async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
    )
    .await
    .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// The operator's controller running inside the test process (same code as
/// `plinth-operator run`, without leader election and HTTP server).
pub struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Operator {
    pub fn start(client: Client) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let reporter = Reporter {
            controller: "plinth-operator".into(),
            instance: Some("e2e".into()),
        };
        let task = tokio::spawn(plinth_operator::reconcile::controller::run(
            client,
            Metrics::default(),
            reporter,
            plinth_operator::health::Health::default(),
            // The probe Job runs the operator's image: point it at the build under test.
            std::env::var("PLINTH_PROBE_IMAGE")
                .unwrap_or_else(|_| plinth_operator::generate::manager::operator_image()),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the controller after its in-flight reconciles.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

/// Polls `probe` every 250 ms until it returns `Some`, for at most `timeout`. The error
/// names what was awaited and the last error the probe returned, if any.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => {
                eprintln!("e2e: {what}: after {:?}", started.elapsed());
                return Ok(value);
            }
            Ok(None) => {}
            Err(err) => last_error = Some(format!("{err:#}")),
        }
        if started.elapsed() >= timeout {
            match last_error {
                Some(err) => {
                    bail!("timed out after {timeout:?} waiting for {what} (last error: {err})")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A [`wait_for`] probe's answer to "is everything gone?": done when `left` is empty,
/// otherwise an error naming what is left, which the timeout message then carries.
/// Waits until no PersistentVolume is bound to a claim of `namespace` whose name `claim`
/// accepts, naming those left (with their phase) when `timeout` runs out: deleting the
/// claims is not the end of a run, the driver must have deleted their volumes.
pub async fn wait_claims_volumes_deleted(
    client: &Client,
    what: &str,
    timeout: Duration,
    namespace: &str,
    claim: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(what, timeout, || async {
        let left = pvs
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .is_some_and(|c| {
                        c.namespace.as_deref() == Some(namespace)
                            && c.name.as_deref().is_some_and(&claim)
                    })
            })
            .map(|pv| {
                let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
                format!("{} ({})", pv.name_any(), phase.unwrap_or("no phase"))
            })
            .collect();
        none_left(left)
    })
    .await
}

pub fn none_left(left: Vec<String>) -> anyhow::Result<Option<()>> {
    if left.is_empty() {
        Ok(Some(()))
    } else {
        bail!("still present: {left:?}")
    }
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = [5, 1, 4, 2, 3].into_iter().map(ms).collect();
        assert_eq!(percentile(&samples, 50), ms(3));
        assert_eq!(percentile(&samples, 99), ms(5));
        assert_eq!(percentile(&samples, 0), ms(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
