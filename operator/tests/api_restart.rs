//! The real `plinth-operator run` process against the API stand-in (`plinth-apistub`,
//! in this process, reached through KUBECONFIG), with the stand-in restarted under it the
//! way an API-server restart looks to a client: open connections reset, the port refusing
//! connections for a while, the watch history compacted so no earlier resourceVersion can
//! be resumed, and a watch cache that answers "Any" reads from before the restart.
//!
//! Issue 10: an operator went deaf after such a restart (CR edits ignored for minutes,
//! the same expired version retried forever) while `/healthz` and `/readyz` said 200.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use plinth_apistub::{ApiStub, Restart, Running};
use plinth_operator::crd::CsiDeployment;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Bound of every wait for something that should happen within seconds.
const SOON: Duration = Duration::from_secs(20);

struct Operator {
    child: Child,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Operator {
    async fn start(stub: &Running, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        stub.write_kubeconfig(&kubeconfig).unwrap();
        let http = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_plinth-operator"))
            .arg("run")
            .arg(format!("--http-addr={http}"))
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start plinth-operator");
        Operator {
            child,
            http,
            _dir: dir,
        }
    }

    /// The status code of a GET, or `None` while nothing answers.
    async fn probe(&self, path: &str) -> Option<u16> {
        let mut stream = tokio::net::TcpStream::connect(self.http).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.get(9..12)?.parse().ok()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} within {within:?}");
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

/// The CR's generation once the operator has reconciled it (observedGeneration caught up).
async fn reconciled(api: &Api<CsiDeployment>) -> Option<i64> {
    let cr = api.get_opt("local").await.ok()??;
    let generation = cr.metadata.generation?;
    (cr.status?.observed_generation == Some(generation)).then_some(generation)
}

async fn controller_containers(api: &Api<StatefulSet>) -> Vec<String> {
    let Ok(Some(sts)) = api.get_opt("plinth-local-controller").await else {
        return Vec::new();
    };
    let containers = sts
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers)
        .unwrap_or_default();
    containers.into_iter().map(|c| c.name).collect()
}

#[tokio::test]
async fn a_cr_edit_after_an_api_server_restart_is_reconciled_within_seconds() {
    let stub = ApiStub::start().await.unwrap();
    let client = stub.client().unwrap();
    let crs: Api<CsiDeployment> = Api::all(client.clone());
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), "plinth-system");
    crs.create(&PostParams::default(), &minimal_cr())
        .await
        .unwrap();
    // As deployed: with leader election.
    let operator = Operator::start(
        &stub,
        &[
            "--leader-elect",
            "--lease-namespace=plinth-system",
            "--identity=test-0",
        ],
    )
    .await;

    eventually("the CR reconciled", SOON, || async {
        reconciled(&crs).await.is_some()
    })
    .await;
    eventually("/readyz 200 with every watch live", SOON, || async {
        operator.probe("/readyz").await == Some(200)
    })
    .await;
    let sidecars = controller_containers(&statefulsets).await;
    assert!(
        sidecars.iter().any(|c| c == "csi-resizer"),
        "resize is on by default: {sidecars:?}"
    );

    // The API server goes away for a while; the operator must say it is not ready.
    let restart = Restart::new()
        .down_for(Duration::from_secs(3))
        .stale_cache();
    let restarting = async {
        stub.restart(restart).await;
        Instant::now()
    };
    let not_ready = async {
        eventually("/readyz 503 while the API server is down", SOON, || async {
            operator.probe("/readyz").await == Some(503)
        })
        .await;
    };
    let (up_at, ()) = tokio::join!(restarting, not_ready);

    // An edit after the restart: switch resize off, so the resizer sidecar goes.
    let patch = json!({"spec": {"features": {"resize": false}}});
    let edited = crs
        .patch("local", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let generation = edited.metadata.generation.unwrap();
    let took = eventually(
        "the edit made after the restart reconciled",
        SOON,
        || async { reconciled(&crs).await == Some(generation) },
    )
    .await;
    eprintln!(
        "API server up -> edit reconciled: {:?} (edit reconciled {took:?} after it was made)",
        up_at.elapsed()
    );
    let sidecars = controller_containers(&statefulsets).await;
    assert!(
        !sidecars.iter().any(|c| c == "csi-resizer"),
        "the resizer went with the edit: {sidecars:?}"
    );
    eventually("/readyz 200 again", SOON, || async {
        operator.probe("/readyz").await == Some(200)
    })
    .await;
    assert_eq!(operator.probe("/healthz").await, Some(200));
}

#[tokio::test]
async fn healthz_fails_once_the_watches_stay_down_past_the_bound_and_recovers() {
    let stub = ApiStub::start().await.unwrap();
    let crs: Api<CsiDeployment> = Api::all(stub.client().unwrap());
    crs.create(&PostParams::default(), &minimal_cr())
        .await
        .unwrap();
    let operator = Operator::start(&stub, &["--wedged-after-seconds=2"]).await;
    eventually("/readyz 200", SOON, || async {
        operator.probe("/readyz").await == Some(200)
    })
    .await;
    assert_eq!(operator.probe("/healthz").await, Some(200));

    let restarting = stub.restart(Restart::new().down_for(Duration::from_secs(8)));
    let wedged = async {
        eventually("/readyz 503 once the watches are down", SOON, || async {
            operator.probe("/readyz").await == Some(503)
        })
        .await;
        eventually(
            "/healthz 503 with the watches down past the bound",
            SOON,
            || async { operator.probe("/healthz").await == Some(503) },
        )
        .await;
    };
    tokio::join!(restarting, wedged);
    eventually(
        "/healthz 200 once the watches are live again",
        SOON,
        || async { operator.probe("/healthz").await == Some(200) },
    )
    .await;
    assert_eq!(operator.probe("/readyz").await, Some(200));
}

#[tokio::test]
async fn snapshot_crds_installed_after_start_bring_the_snapshotter() {
    let stub = ApiStub::start().await.unwrap();
    let client = stub.client().unwrap();
    let crs: Api<CsiDeployment> = Api::all(client.clone());
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), "plinth-system");
    crs.create(&PostParams::default(), &minimal_cr())
        .await
        .unwrap();
    let operator = Operator::start(&stub, &[]).await;
    eventually("the CR reconciled", SOON, || async {
        reconciled(&crs).await.is_some()
    })
    .await;
    let sidecars = controller_containers(&statefulsets).await;
    assert!(
        !sidecars.iter().any(|c| c == "csi-snapshotter"),
        "no snapshotter without the CRDs: {sidecars:?}"
    );

    // external-snapshotter's CRDs arrive; nothing else changes.
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in plinth_apistub::snapshot_crds() {
        let crd: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
        crd_api.create(&PostParams::default(), &crd).await.unwrap();
    }
    eventually("the snapshotter sidecar deployed", SOON, || async {
        controller_containers(&statefulsets)
            .await
            .iter()
            .any(|c| c == "csi-snapshotter")
    })
    .await;
    drop(operator);
}
