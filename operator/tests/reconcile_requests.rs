//! The API requests one CsiDeployment edit costs: the real controller (its watches, its
//! stores, the reconcile function) runs in this process against the API stand-in
//! (`plinth-apistub`), through a client that logs every request it sends. Everything
//! from the edit until the controller is quiet again is counted, so the reconciles the
//! operator's own writes trigger (each apply and the status patch come back as watch
//! events) are counted too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use plinth_apistub::{ApiStub, Running};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::health::{Health, Verdict};
use plinth_operator::metrics::Metrics;
use plinth_operator::reconcile::controller;
use serde_json::json;
use tokio::sync::oneshot;

/// Bound of every wait for something that should happen within seconds.
const SOON: Duration = Duration::from_secs(20);
/// The controller counts as quiet once it sent nothing for this long.
const QUIET: Duration = Duration::from_millis(700);
const STATEFULSET: &str =
    "/apis/apps/v1/namespaces/plinth-system/statefulsets/plinth-local-controller";

/// One request the operator sent.
#[derive(Clone, Debug)]
struct Sent {
    /// `METHOD path?query`.
    line: String,
    at: Instant,
    answered: Option<Instant>,
}

/// Every request sent through the client, in order.
#[derive(Clone, Default)]
struct RequestLog(Arc<Mutex<Vec<Sent>>>);

impl RequestLog {
    fn push(&self, line: String) -> usize {
        let mut log = self.0.lock().unwrap();
        log.push(Sent {
            line,
            at: Instant::now(),
            answered: None,
        });
        log.len() - 1
    }

    fn answered(&self, index: usize) {
        self.0.lock().unwrap()[index].answered = Some(Instant::now());
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Requests from `from` on, watch requests (long polls, not per reconcile) left out.
    fn since(&self, from: usize) -> Vec<Sent> {
        self.0.lock().unwrap()[from..]
            .iter()
            .filter(|s| !s.line.contains("watch=true"))
            .cloned()
            .collect()
    }

    /// When the last non-watch request was sent.
    fn last_at(&self) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| !s.line.contains("watch=true"))
            .map(|s| s.at)
    }
}

#[derive(Clone)]
struct Logging<S> {
    inner: S,
    log: RequestLog,
}

impl<S> tower::Layer<S> for RequestLog {
    type Service = Logging<S>;
    fn layer(&self, inner: S) -> Logging<S> {
        Logging {
            inner,
            log: self.clone(),
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Logging<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let uri = request.uri();
        let line = format!(
            "{} {}",
            request.method(),
            uri.path_and_query().map_or(uri.path(), |p| p.as_str())
        );
        let index = self.log.push(line);
        let log = self.log.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            log.answered(index);
            result
        })
    }
}

/// The real controller, in this process, talking through a logging client.
struct Operator {
    log: RequestLog,
    metrics: Metrics,
    health: Health,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    fn start(stub: &Running) -> Self {
        let config = kube::Config::new(stub.url().parse().unwrap());
        let log = RequestLog::default();
        let client: Client = ClientBuilder::try_from(config)
            .unwrap()
            .with_layer(&log)
            .build();
        let health = Health::default();
        health.set_connected();
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Metrics::default();
        let task = tokio::spawn(controller::run(
            client,
            metrics.clone(),
            Reporter {
                controller: "plinth-operator".into(),
                instance: Some("test-0".into()),
            },
            health.clone(),
            "plinth-operator:test".into(),
            async {
                let _ = stopped.await;
            },
        ));
        Operator {
            log,
            metrics,
            health,
            stop: Some(stop),
            task,
        }
    }

    /// Waits until every watch is live and nothing was sent for [`QUIET`].
    async fn settle(&self) {
        eventually("the controller quiet with every watch live", || async {
            self.health.readiness() == Verdict::Ok
                && self.log.last_at().is_some_and(|at| at.elapsed() >= QUIET)
        })
        .await;
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(SOON, &mut self.task)
            .await
            .expect("the controller stopped")
            .unwrap();
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < SOON {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} within {SOON:?}");
}

fn minimal_cr() -> CsiDeployment {
    serde_json::from_value(json!({
        "apiVersion": "plinth.dev/v1alpha1",
        "kind": "CsiDeployment",
        "metadata": {"name": "local"},
        "spec": {"namespace": "plinth-system"},
    }))
    .unwrap()
}

/// external-snapshotter's CRDs, as most clusters have them: every managed kind is served.
async fn install_snapshot_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in plinth_apistub::snapshot_crds() {
        let crd: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
}

/// Whether the controller has caught up with generation `generation` of the CR.
async fn reconciled(crs: &Api<CsiDeployment>, generation: i64) -> bool {
    let Ok(cr) = crs.get("local").await else {
        return false;
    };
    cr.status.and_then(|s| s.observed_generation) == Some(generation)
}

async fn has_resizer(statefulsets: &Api<StatefulSet>) -> bool {
    let sts = statefulsets.get("plinth-local-controller").await.unwrap();
    let containers = sts.spec.and_then(|s| s.template.spec).unwrap().containers;
    containers.iter().any(|c| c.name == "csi-resizer")
}

struct Setup {
    stub: Running,
    crs: Api<CsiDeployment>,
    statefulsets: Api<StatefulSet>,
    operator: Operator,
}

/// The stand-in with the snapshot CRDs and one CR, the controller started and settled.
async fn setup() -> Setup {
    let stub = ApiStub::start().await.unwrap();
    let client = stub.client().unwrap();
    install_snapshot_crds(&client).await;
    let crs: Api<CsiDeployment> = Api::all(client.clone());
    let statefulsets = Api::namespaced(client, "plinth-system");
    crs.create(&PostParams::default(), &minimal_cr())
        .await
        .unwrap();
    let operator = Operator::start(&stub);
    eventually("the CR reconciled", || reconciled(&crs, 1)).await;
    operator.settle().await;
    Setup {
        stub,
        crs,
        statefulsets,
        operator,
    }
}

/// Switches resize on or off; returns the CR's new generation.
async fn edit(crs: &Api<CsiDeployment>, resize: bool) -> i64 {
    let patch = json!({"spec": {"features": {"resize": resize}}});
    let edited = crs
        .patch("local", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    edited.metadata.generation.unwrap()
}

/// A request line the way the assertions spell it: without its query, and an Event's
/// generated name as `*`.
fn spelled(sent: &Sent) -> String {
    let line = sent
        .line
        .split_once('?')
        .map_or(sent.line.as_str(), |(path, _)| path);
    match line.split_once("/events/") {
        Some((events, _)) => format!("{events}/events/*"),
        None => line.to_owned(),
    }
}

#[tokio::test]
async fn one_cr_edit_costs_the_applies_of_what_changed_and_the_status_patch() {
    let Setup {
        stub,
        crs,
        statefulsets,
        operator,
    } = setup().await;
    assert!(has_resizer(&statefulsets).await, "resize is on by default");

    let from = operator.log.len();
    let generation = edit(&crs, false).await;
    eventually("the edit reconciled", || reconciled(&crs, generation)).await;
    operator.settle().await;
    assert!(!has_resizer(&statefulsets).await, "the resizer went");

    let sent: Vec<String> = operator.log.since(from).iter().map(spelled).collect();
    let sts = format!("PATCH {STATEFULSET}");
    let expected = [
        // The reconcile of the edit: no discovery (the CRD watch says the answer still
        // holds), no list of any managed kind (the watch stores know what exists), ...
        // the applies of what the edit changed (the resizer sidecar and its
        // argument, the class's allowVolumeExpansion), nothing else, ...
        &sts,
        "PATCH /apis/apps/v1/namespaces/plinth-system/daemonsets/plinth-local-node",
        "PATCH /apis/storage.k8s.io/v1/storageclasses/plinth-local",
        "PATCH /apis/events.k8s.io/v1/namespaces/default/events/*",
        // ... the resizer's RBAC pruned, ...
        "DELETE /apis/rbac.authorization.k8s.io/v1/clusterroles/plinth-local-resizer",
        "DELETE /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/plinth-local-resizer",
        "POST /apis/events.k8s.io/v1/namespaces/default/events",
        // ... the status patch (the workloads' readiness taken from the apply answers,
        // not read back) and its event.
        "PATCH /apis/plinth.dev/v1alpha1/csideployments/local/status",
        "POST /apis/events.k8s.io/v1/namespaces/default/events",
        // The reconciles the operator's own writes trigger send nothing: nothing
        // changed, and the workloads' status comes from the watch stores.
    ];
    assert_eq!(sent, expected, "requests caused by one CR edit");
    operator.stop().await;
    stub.shutdown().await;
}

#[tokio::test]
async fn a_reconcile_with_nothing_changed_sends_no_request() {
    let Setup {
        stub,
        crs,
        statefulsets: _,
        operator,
    } = setup().await;
    let writes = stub.writes();
    let from = operator.log.len();
    let reconciles = operator.metrics.reconciles.get();
    // An annotation: the CR is reconciled again (every change of it triggers one), but
    // its spec, and so everything rendered, is the same.
    let touch = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
    let touched = crs
        .patch("local", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    assert_eq!(touched.metadata.generation, Some(1));
    eventually("the CR reconciled again", || async {
        operator.metrics.reconciles.get() > reconciles
    })
    .await;
    operator.settle().await;
    let sent: Vec<String> = operator.log.since(from).iter().map(spelled).collect();
    assert_eq!(
        sent,
        Vec::<String>::new(),
        "requests of an unchanged reconcile"
    );
    assert_eq!(
        stub.writes().since(&writes).total(),
        1,
        "only the test's own patch"
    );
    operator.stop().await;
    stub.shutdown().await;
}

/// Not a test of behaviour: measures edit -> StatefulSet applied (the apply answered)
/// over 21 edits and prints requests per edit and the latency percentiles.
/// `cargo test -p plinth-operator --test reconcile_requests -- --ignored --nocapture`
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_edit_to_statefulset_applied() {
    let Setup {
        stub,
        crs,
        statefulsets: _,
        operator,
    } = setup().await;
    let mut latencies = Vec::new();
    let mut requests = Vec::new();
    for round in 0..21 {
        let from = operator.log.len();
        let started = Instant::now();
        let generation = edit(&crs, round % 2 == 1).await;
        eventually("the edit reconciled", || reconciled(&crs, generation)).await;
        operator.settle().await;
        let sent = operator.log.since(from);
        let applied = sent
            .iter()
            .find(|s| s.line.starts_with("PATCH ") && spelled(s).ends_with(STATEFULSET))
            .and_then(|s| s.answered)
            .expect("the StatefulSet applied");
        latencies.push(applied.duration_since(started));
        requests.push(sent.len());
    }
    latencies.sort();
    requests.sort_unstable();
    eprintln!(
        "n={} requests per edit: min {} median {} max {}; edit -> StatefulSet applied: p50 {:?} min {:?} max {:?}",
        latencies.len(),
        requests[0],
        requests[requests.len() / 2],
        requests[requests.len() - 1],
        latencies[latencies.len() / 2],
        latencies[0],
        latencies[latencies.len() - 1],
    );
    operator.stop().await;
    stub.shutdown().await;
}
