//! Reconcile scenarios against the stand-in API server (`plinth-apistub`, over HTTP):
//! the real `kube::Client`, the real renderer, the real reconcile function; only the API
//! server is a stand-in. It records every request in order and enforces the real
//! server's immutable fields (422); the harness checks the invariants of our writes as
//! they arrive: every server-side apply carries `fieldManager=plinth-operator` and
//! `force=true` with the apply-patch content type. Tests then assert on the ordered
//! request log and on the stored objects. Each test runs under a short timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::storage::v1::CSINode;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use plinth_api::capabilities::DriverFeatures;
use plinth_apistub::{ApiStub, Fault, Recorded as Req, Running, SNAPSHOT_GROUP, snapshot_crds};
use plinth_operator::crd::CsiDeployment;
use plinth_operator::metrics::Metrics;
use plinth_operator::reconcile::{self, Context, Error, FINALIZER};
use plinth_operator::render::{self, ManagedKind, ManagedObject, RenderEnv};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);
const DRIVER: &str = "local.csi.plinth.dev";

async fn timed<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("scenario exceeded its timeout")
}

struct Harness {
    fake: Running,
    ctx: Arc<Context>,
    deployments: Writer<CsiDeployment>,
    csinodes: Writer<CSINode>,
    violations: Vec<String>,
}

const FIELD_MANAGER: &str = "plinth-operator";

impl Harness {
    async fn new() -> Self {
        let fake = ApiStub::start()
            .await
            .expect("the stand-in API server starts");
        fake.built_in_immutable_fields();
        fake.require_crds(SNAPSHOT_GROUP);
        let client = fake.client().expect("a client for the stand-in");
        let (deployments_reader, deployments) = reflector::store();
        let (csinodes_reader, csinodes) = reflector::store();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "plinth-operator".into(),
                instance: None,
            },
        );
        // Everything the built-in driver can do, whatever this release's driver serves
        // yet: the scenarios exercise every sidecar.
        let ctx = Arc::new(
            Context::new(
                client,
                recorder,
                Metrics::default(),
                deployments_reader,
                csinodes_reader,
            )
            .with_builtin_features(DriverFeatures::default()),
        );
        Self {
            fake,
            ctx,
            deployments,
            csinodes,
            violations: Vec::new(),
        }
    }

    /// Installs or removes the snapshot CRDs.
    fn set_snapshot_crds(&self, present: bool) {
        for crd in snapshot_crds() {
            let path = format!(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
                crd["metadata"]["name"].as_str().unwrap_or_default()
            );
            match (present, self.fake.get(&path).is_some()) {
                (true, false) => {
                    self.fake.insert(&path, crd);
                }
                (false, true) => {
                    self.fake.remove(&path);
                }
                _ => {}
            }
        }
    }

    /// The next request with `method` whose path contains `path_contains` is answered
    /// with `status` and a Status carrying `message`.
    fn fail_next(&self, method: Method, path_contains: &str, status: u16, message: &str) {
        let status = http::StatusCode::from_u16(status).expect("an HTTP status");
        self.fake
            .inject(Fault::path_contains(method, path_contains, status).message(message));
    }

    /// Requests of every reconcile so far that broke our write rules (kept across
    /// `clear_requests`); tests assert this is empty.
    fn violations(&self) -> Vec<String> {
        self.violations.clone()
    }

    /// Stores a CR in the fake (as `kubectl apply` would) from a spec.
    fn create(&mut self, name: &str, spec: Value) {
        self.create_at(name, spec, "2026-01-01T00:00:00Z");
    }

    fn create_at(&mut self, name: &str, spec: Value, created: &str) {
        self.fake.insert(
            &cr_path(name),
            json!({
                "apiVersion": "plinth.dev/v1alpha1",
                "kind": "CsiDeployment",
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": spec,
            }),
        );
        let cr = self.cr(name);
        self.deployments
            .apply_watcher_event(&watcher::Event::Apply(cr));
    }

    fn cr(&self, name: &str) -> CsiDeployment {
        serde_json::from_value(self.fake.get(&cr_path(name)).expect("CR stored")).unwrap()
    }

    fn edit_spec(&mut self, name: &str, f: impl FnOnce(&mut Value)) {
        self.fake.modify(&cr_path(name), |cr| f(&mut cr["spec"]));
        let cr = self.cr(name);
        self.deployments
            .apply_watcher_event(&watcher::Event::Apply(cr));
    }

    /// Runs one reconcile of the stored CR, as the controller would after a watch event,
    /// and feeds the outcome to the error policy like the controller does.
    async fn reconcile(&mut self, name: &str) -> (Result<Action, Error>, Action) {
        let cr = Arc::new(self.cr(name));
        let before = self.fake.requests().len();
        let result = timed(reconcile::reconcile(cr.clone(), self.ctx.clone())).await;
        let requests = self.fake.requests();
        self.violations
            .extend(requests[before..].iter().filter_map(write_rule_violation));
        let action = match &result {
            Ok(action) => action.clone(),
            Err(err) => reconcile::error_policy(cr, err, self.ctx.clone()),
        };
        (result, action)
    }

    async fn reconcile_ok(&mut self, name: &str) -> Action {
        let (result, action) = self.reconcile(name).await;
        if let Err(err) = result {
            panic!(
                "reconcile failed: {err}\nrequests: {:#?}",
                lines(&self.fake.requests())
            );
        }
        assert_eq!(self.violations(), Vec::<String>::new());
        action
    }

    fn status(&self, name: &str) -> Value {
        self.fake.get(&cr_path(name)).expect("CR stored")["status"].clone()
    }

    fn register_nodes(&mut self, nodes: &[&str]) {
        self.register_driver(DRIVER, nodes);
    }

    fn register_driver(&mut self, driver: &str, nodes: &[&str]) {
        for node in nodes {
            let csinode: CSINode = serde_json::from_value(json!({
                "metadata": {"name": node},
                "spec": {"drivers": [{"name": driver, "nodeID": node}]}
            }))
            .unwrap();
            self.csinodes
                .apply_watcher_event(&watcher::Event::Apply(csinode));
        }
    }
}

/// Our write rules, checked on every request: server-side apply with our field manager
/// and force; only the finalizer fallback (a guarded merge patch on the CR) and event
/// series may use another patch type.
fn write_rule_violation(req: &Req) -> Option<String> {
    if req.method != Method::PATCH {
        return None;
    }
    if req.is_apply() {
        if req.field_manager() != Some(FIELD_MANAGER) {
            return Some(format!(
                "{}: fieldManager is {:?}",
                req.line(),
                req.field_manager()
            ));
        }
        if req.param("force") != Some("true") {
            return Some(format!("{}: apply without force=true", req.line()));
        }
        None
    } else if !req.path.contains("/events") && !req.path.contains("csideployments") {
        Some(format!(
            "{}: non-apply patch {:?}",
            req.line(),
            req.content_type
        ))
    } else {
        None
    }
}

/// The REST path of a managed object.
fn object_path(kind: ManagedKind, namespace: Option<&str>, name: &str) -> String {
    let r = kind.api_resource();
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    match namespace.filter(|_| kind.namespaced()) {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{}/{name}", r.plural),
        None => format!("{prefix}/{}/{name}", r.plural),
    }
}

fn cr_path(name: &str) -> String {
    format!("/apis/plinth.dev/v1alpha1/csideployments/{name}")
}

fn lines(log: &[Req]) -> Vec<String> {
    log.iter().map(Req::line).collect()
}

fn applies(log: &[Req]) -> Vec<&Req> {
    log.iter().filter(|r| r.is_apply()).collect()
}

/// Apply requests to managed objects (not the CR's finalizer or status).
fn object_applies(log: &[Req]) -> Vec<&Req> {
    applies(log)
        .into_iter()
        .filter(|r| !r.path.contains("/csideployments/"))
        .collect()
}

fn deletes(log: &[Req]) -> Vec<String> {
    log.iter()
        .filter(|r| r.method == Method::DELETE)
        .map(|r| r.path.clone())
        .collect()
}

fn events(log: &[Req]) -> Vec<Value> {
    log.iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/events"))
        .filter_map(|r| r.body.clone())
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

/// What the real renderer produces for the stored CR, as (path, body) in apply order.
fn expected(h: &Harness, name: &str, snapshot_crds: bool) -> Vec<(String, Value)> {
    let env = RenderEnv {
        snapshot_crds_present: snapshot_crds,
        builtin_features: DriverFeatures::default(),
        ..RenderEnv::default()
    };
    render::render(&h.cr(name), &env)
        .unwrap()
        .objects
        .iter()
        .map(|o| (path_of(o), o.to_apply_json()))
        .collect()
}

fn path_of(o: &ManagedObject) -> String {
    object_path(o.kind(), o.namespace(), o.name())
}

fn containers(sts: &Value) -> Vec<String> {
    sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn minimal() -> Value {
    json!({"namespace": "plinth-system"})
}

fn sts_path() -> String {
    object_path(
        ManagedKind::StatefulSet,
        Some("plinth-system"),
        "plinth-local-controller",
    )
}

fn ds_path() -> String {
    object_path(
        ManagedKind::DaemonSet,
        Some("plinth-system"),
        "plinth-local-node",
    )
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_applies_every_object_then_writes_status() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    let action = h.reconcile_ok("local").await;
    assert_eq!(action, Action::requeue(reconcile::RESYNC));
    let log = h.fake.requests();

    // The finalizer comes first, applied with our field manager and nothing else.
    let first_write = log.iter().find(|r| r.is_write()).unwrap();
    assert_eq!(first_write.path, cr_path("local"));
    assert!(first_write.is_apply());
    assert_eq!(
        first_write.body.as_ref().unwrap()["metadata"],
        json!({"name": "local", "finalizers": [FINALIZER]})
    );

    // Every rendered object, in render's order, with exactly render's body.
    let want = expected(&h, "local", true);
    let got: Vec<(String, Value)> = object_applies(&log)
        .iter()
        .map(|r| (r.path.clone(), r.body.clone().unwrap()))
        .collect();
    assert_eq!(
        got.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        want.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((path, body), (_, want_body)) in got.iter().zip(&want) {
        assert_eq!(body, want_body, "apply body of {path}");
    }
    for r in object_applies(&log) {
        assert_eq!(r.field_manager().unwrap(), "plinth-operator");
        assert_eq!(r.param("force").unwrap(), "true");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }

    // The StatefulSet and CSIDriver bodies, spelled out.
    let sts = &got.iter().find(|(p, _)| *p == sts_path()).unwrap().1;
    assert_eq!(sts["apiVersion"], "apps/v1");
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(
        sts["metadata"]["labels"]["plinth.dev/csi-deployment"],
        "local"
    );
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["kind"],
        "CsiDeployment"
    );
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
    let names = containers(sts);
    for sidecar in [
        "csi-provisioner",
        "csi-resizer",
        "csi-snapshotter",
        "liveness-probe",
    ] {
        assert!(
            names.iter().any(|n| n == sidecar),
            "{sidecar} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "csi-attacher"), "{names:?}");
    let csidriver_path = object_path(ManagedKind::CsiDriver, None, DRIVER);
    let csidriver = &got.iter().find(|(p, _)| *p == csidriver_path).unwrap().1;
    assert_eq!(csidriver["apiVersion"], "storage.k8s.io/v1");
    assert_eq!(csidriver["kind"], "CSIDriver");
    assert_eq!(csidriver["spec"]["attachRequired"], false);

    // Status last, on the status subresource, describing generation 1.
    let last = log
        .iter()
        .rev()
        .find(|r| r.is_write() && !r.path.ends_with("/events"))
        .unwrap();
    assert_eq!(last.path, format!("{}/status", cr_path("local")));
    assert!(last.is_apply());
    let status = h.status("local");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["driverName"], DRIVER);
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "Progressing", "Degraded"]);
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Ready")["reason"], "ControllerNotReady");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert!(
        h.cr("local")
            .metadata
            .finalizers
            .unwrap()
            .contains(&FINALIZER.to_owned()),
        "finalizer stored"
    );
    let applied_event = events(&log)
        .into_iter()
        .find(|e| e["reason"] == "Applied")
        .unwrap();
    assert!(
        applied_event["note"]
            .as_str()
            .unwrap()
            .starts_with(&format!("applied {} objects", want.len()))
    );
}

#[tokio::test]
async fn resync_with_nothing_changed_sends_no_write_and_drift_is_reverted() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    h.fake.clear_requests();

    h.reconcile_ok("local").await;
    let log = h.fake.requests();
    let writes: Vec<String> = log.iter().filter(|r| r.is_write()).map(Req::line).collect();
    assert_eq!(
        writes,
        Vec::<String>::new(),
        "a resync with nothing changed wrote"
    );

    // Someone scales the StatefulSet by hand: exactly that object is re-applied.
    h.fake
        .modify(&sts_path(), |sts| sts["spec"]["replicas"] = json!(3));
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    let log = h.fake.requests();
    let applied: Vec<String> = object_applies(&log)
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(applied, [sts_path()]);
    assert_eq!(h.fake.get(&sts_path()).unwrap()["spec"]["replicas"], 1);

    // A status-only change of the StatefulSet (pods becoming ready) is not drift.
    h.fake
        .modify(&sts_path(), |sts| sts["status"] = json!({"replicas": 1}));
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    assert!(object_applies(&h.fake.requests()).is_empty());
}

#[tokio::test]
async fn ready_pods_and_registered_nodes_make_it_ready_and_transition_time_moves_once() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    assert_eq!(condition(&h.status("local"), "Ready")["status"], "False");
    // Back-date every condition, so that a time that moves is visible even when the
    // whole test runs within one second (the times have second resolution).
    const LONG_AGO: &str = "2020-01-01T00:00:00Z";
    h.fake.modify(&cr_path("local"), |cr| {
        for c in cr["status"]["conditions"].as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!(LONG_AGO);
        }
    });

    h.fake.modify(&sts_path(), |sts| {
        sts["status"] = json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1});
    });
    h.fake.modify(&ds_path(), |ds| {
        ds["status"] = json!({"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
            "currentNumberScheduled": 2, "numberMisscheduled": 0, "observedGeneration": 1});
    });
    h.register_nodes(&["node-a"]);
    h.reconcile_ok("local").await;
    let status = h.status("local");
    assert_eq!(condition(&status, "Ready")["reason"], "NotRegistered");
    assert!(
        condition(&status, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("1/2 nodes")
    );
    assert_eq!(status["registration"], "1/2");
    assert_eq!(
        condition(&status, "Ready")["lastTransitionTime"],
        LONG_AGO,
        "Ready stayed False (another reason): its time stays"
    );

    h.register_nodes(&["node-b"]);
    h.reconcile_ok("local").await;
    let status = h.status("local");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "Available");
    assert_eq!(condition(&status, "Progressing")["status"], "False");
    assert_eq!(status["registration"], "2/2");
    assert_eq!(
        status["controller"],
        json!({"desired": 1, "ready": 1, "updated": 1})
    );
    assert_eq!(
        status["node"],
        json!({"desired": 2, "ready": 2, "updated": 2})
    );
    // Degraded never flipped, so its time stayed; Ready's moved when it flipped to True...
    assert_eq!(
        condition(&status, "Degraded")["lastTransitionTime"],
        LONG_AGO
    );
    let ready_since = condition(&status, "Ready")["lastTransitionTime"].clone();
    assert_ne!(ready_since, LONG_AGO, "Ready flipped: its time moves");
    assert!(
        ready_since.as_str().is_some_and(|t| t > LONG_AGO),
        "{ready_since}"
    );
    // ... and only then: a resync with Ready still True keeps it.
    h.reconcile_ok("local").await;
    let status = h.status("local");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(
        condition(&status, "Ready")["lastTransitionTime"],
        ready_since
    );
}

#[tokio::test]
async fn switching_snapshots_off_prunes_the_snapshotter_rbac_and_snapshot_class() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    let with = expected(&h, "local", true);

    h.edit_spec("local", |spec| {
        spec["features"] = json!({"snapshots": false})
    });
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    let without = expected(&h, "local", true);
    let log = h.fake.requests();

    let mut gone: Vec<String> = with
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| !without.iter().any(|(q, _)| q == p))
        .collect();
    gone.sort();
    let mut deleted = deletes(&log);
    deleted.sort();
    assert_eq!(deleted, gone);
    assert!(
        deleted
            .iter()
            .any(|p| p.contains("/volumesnapshotclasses/")),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .any(|p| p.contains("/clusterroles/") && p.contains("snapshotter")),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .any(|p| p.contains("/clusterrolebindings/") && p.contains("snapshotter")),
        "{deleted:?}"
    );
    // Each delete names the instance it listed (uid precondition).
    for r in log.iter().filter(|r| r.method == Method::DELETE) {
        assert!(
            r.body.as_ref().unwrap()["preconditions"]["uid"].is_string(),
            "{}",
            r.line()
        );
    }
    // The sidecar leaves the StatefulSet through the apply itself.
    let sts = h.fake.get(&sts_path()).unwrap();
    assert!(!containers(&sts).iter().any(|c| c == "csi-snapshotter"));
    assert_eq!(h.fake.objects("volumesnapshotclasses").len(), 0);
    assert!(events(&log).iter().any(|e| e["reason"] == "Pruned"));
}

#[tokio::test]
async fn an_immutable_field_change_deletes_and_recreates_the_object() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    let spec = |fstype: &str| {
        json!({"namespace": "plinth-system", "storageClasses": [
            {"name": "fast", "parameters": {"csi.storage.k8s.io/fstype": fstype}}
        ]})
    };
    h.create("local", spec("ext4"));
    h.reconcile_ok("local").await;
    let sc_path = object_path(ManagedKind::StorageClass, None, "fast");
    let old_uid = h.fake.get(&sc_path).unwrap()["metadata"]["uid"].clone();

    h.edit_spec("local", |s| *s = spec("xfs"));
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    let log = h.fake.requests();
    let sc_requests: Vec<String> = log
        .iter()
        .filter(|r| r.path == sc_path && r.is_write())
        .map(Req::line)
        .collect();
    assert_eq!(
        sc_requests,
        [
            format!("PATCH {sc_path}"),
            format!("DELETE {sc_path}"),
            format!("PATCH {sc_path}"),
        ]
    );
    let delete = log.iter().find(|r| r.method == Method::DELETE).unwrap();
    assert_eq!(
        delete.body.as_ref().unwrap()["preconditions"]["uid"],
        old_uid
    );
    let sc = h.fake.get(&sc_path).unwrap();
    assert_eq!(sc["parameters"]["csi.storage.k8s.io/fstype"], "xfs");
    assert_ne!(sc["metadata"]["uid"], old_uid);
    assert!(events(&log).iter().any(|e| e["reason"] == "Replaced"));
    // Nothing else was replaced.
    assert_eq!(log.iter().filter(|r| r.method == Method::DELETE).count(), 1);
}

fn pv(name: &str, driver: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "csi": {"driver": driver, "volumeHandle": name}}})
}

/// Deletes the CR through the API, as `kubectl delete` would (the finalizer holds it).
async fn delete_cr(h: &mut Harness, name: &str) {
    let api: kube::Api<CsiDeployment> = kube::Api::all(h.ctx.client.clone());
    timed(api.delete(name, &Default::default())).await.unwrap();
    let cr = h.cr(name);
    assert!(cr.metadata.deletion_timestamp.is_some());
    h.deployments
        .apply_watcher_event(&watcher::Event::Apply(cr));
}

#[tokio::test]
async fn deletion_is_refused_while_volumes_of_the_driver_exist() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    h.fake
        .insert("/api/v1/persistentvolumes/pv-1", pv("pv-1", DRIVER));
    h.fake
        .insert("/api/v1/persistentvolumes/pv-2", pv("pv-2", DRIVER));
    h.fake.insert(
        "/api/v1/persistentvolumes/other",
        pv("other", "ebs.csi.aws.com"),
    );
    delete_cr(&mut h, "local").await;
    h.fake.clear_requests();

    let action = h.reconcile_ok("local").await;
    assert_eq!(action, Action::requeue(reconcile::VOLUMES_RECHECK));
    let log = h.fake.requests();
    assert_eq!(
        deletes(&log),
        Vec::<String>::new(),
        "nothing may be deleted"
    );
    let status = h.status("local");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "VolumesExist");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.starts_with("2 PersistentVolumes of driver local.csi.plinth.dev"),
        "{message}"
    );
    assert!(
        message.contains("spec.deletionPolicy=OrphanVolumes"),
        "{message}"
    );
    assert_eq!(status["remainingVolumes"], 2);
    assert!(
        h.cr("local")
            .metadata
            .finalizers
            .unwrap()
            .contains(&FINALIZER.to_owned())
    );
    assert!(h.fake.get(&sts_path()).is_some());
    assert!(
        events(&log)
            .iter()
            .any(|e| e["reason"] == "DeletionRefused")
    );

    // Asking again with nothing changed writes nothing.
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    assert!(h.fake.requests().iter().all(|r| !r.is_write()));

    // Once the volumes are gone, the driver goes and the CR with it.
    h.fake.remove("/api/v1/persistentvolumes/pv-1");
    h.fake.remove("/api/v1/persistentvolumes/pv-2");
    h.reconcile_ok("local").await;
    assert!(
        h.fake.get(&cr_path("local")).is_none(),
        "finalizer released"
    );
    assert!(h.fake.get(&sts_path()).is_none());
}

#[tokio::test]
async fn deletion_without_volumes_removes_every_object_and_the_finalizer() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    let created = expected(&h, "local", true);
    // The node plugins' capacity records: ours go with the driver, another driver's stay.
    let ours = "/apis/plinth.dev/v1alpha1/poolnodes/worker-1.local.csi.plinth.dev";
    let theirs = "/apis/plinth.dev/v1alpha1/poolnodes/worker-1.other.csi.plinth.dev";
    h.fake.insert(ours, pool_node("worker-1", DRIVER));
    h.fake
        .insert(theirs, pool_node("worker-1", "other.csi.plinth.dev"));
    delete_cr(&mut h, "local").await;
    h.fake.clear_requests();

    assert_eq!(h.reconcile_ok("local").await, Action::await_change());
    let log = h.fake.requests();
    let mut deleted = deletes(&log);
    deleted.sort();
    let mut want: Vec<String> = created.into_iter().map(|(p, _)| p).collect();
    want.push(ours.to_owned());
    want.sort();
    assert_eq!(deleted, want);
    assert!(h.fake.get(theirs).is_some(), "another driver's record");
    h.fake.remove(theirs);
    assert_eq!(
        managed_paths(&h),
        Vec::<String>::new(),
        "objects left behind"
    );
    assert!(
        h.fake.get(&cr_path("local")).is_none(),
        "finalizer released, CR gone"
    );
    let last_write = log
        .iter()
        .rev()
        .find(|r| r.is_write() && !r.path.ends_with("/events"))
        .unwrap();
    assert_eq!(last_write.path, cr_path("local"));
    assert!(
        last_write.body.as_ref().unwrap()["metadata"]
            .get("finalizers")
            .is_none()
    );
}

fn pool_node(node: &str, driver: &str) -> Value {
    json!({
        "apiVersion": "plinth.dev/v1alpha1",
        "kind": "PoolNode",
        "metadata": {
            "name": format!("{node}.{driver}"),
            "labels": {"plinth.dev/driver": driver, "plinth.dev/node": node},
        },
        "spec": {"driver": driver, "node": node},
    })
}

/// Stored objects other than CRs, events, PersistentVolumes and the CRDs the harness
/// installs.
fn managed_paths(h: &Harness) -> Vec<String> {
    h.fake
        .paths()
        .into_iter()
        .filter(|p| {
            !p.contains("/csideployments/")
                && !p.contains("/events/")
                && !p.contains("/persistentvolumes/")
                && !p.contains("/customresourcedefinitions/")
        })
        .collect()
}

#[tokio::test]
async fn orphan_volumes_policy_removes_the_driver_even_with_volumes() {
    let mut h = Harness::new().await;
    h.create(
        "local",
        json!({"namespace": "plinth-system", "deletionPolicy": "OrphanVolumes"}),
    );
    h.reconcile_ok("local").await;
    h.fake
        .insert("/api/v1/persistentvolumes/pv-1", pv("pv-1", DRIVER));
    delete_cr(&mut h, "local").await;
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    assert!(h.fake.get(&cr_path("local")).is_none());
    assert!(
        h.fake.get("/api/v1/persistentvolumes/pv-1").is_some(),
        "volumes are never touched"
    );
    assert!(
        !h.fake
            .requests()
            .iter()
            .any(|r| r.path.contains("persistentvolumes") && r.is_write())
    );
}

#[tokio::test]
async fn an_invalid_spec_names_the_field_applies_nothing_and_waits_for_a_change() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create(
        "local",
        json!({"namespace": "plinth-system", "csiDriver": {"attachRequired": true}}),
    );
    let (result, action) = h.reconcile("local").await;
    assert!(matches!(result, Err(Error::InvalidSpec(_))), "{result:?}");
    assert_eq!(action, Action::await_change());
    let log = h.fake.requests();
    assert_eq!(object_applies(&log).len(), 0, "{:?}", lines(&log));
    let status = h.status("local");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.csiDriver.attachRequired")
    );
    assert_eq!(condition(&status, "Ready")["status"], "Unknown");
    assert!(
        events(&log)
            .iter()
            .any(|e| e["reason"] == "InvalidSpec" && e["type"] == "Warning")
    );

    // The same invalid spec again: no status write, no second event.
    h.fake.clear_requests();
    let (result, _) = h.reconcile("local").await;
    assert!(result.is_err());
    assert!(
        h.fake.requests().iter().all(|r| !r.is_write()),
        "{:?}",
        lines(&h.fake.requests())
    );

    // Fixing it deploys.
    h.edit_spec("local", |s| s["csiDriver"] = json!({}));
    h.reconcile_ok("local").await;
    assert!(h.fake.get(&sts_path()).is_some());
    assert_eq!(condition(&h.status("local"), "Degraded")["status"], "False");
}

#[tokio::test]
async fn the_newer_of_two_deployments_of_one_driver_name_gets_a_conflict_and_nothing_applied() {
    let mut h = Harness::new().await;
    h.create_at("first", minimal(), "2026-01-01T00:00:00Z");
    h.create_at(
        "second",
        json!({"namespace": "other"}),
        "2026-01-02T00:00:00Z",
    );

    let (result, action) = h.reconcile("second").await;
    assert!(
        matches!(result, Err(Error::DriverNameConflict { ref holder, .. }) if holder == "first")
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(object_applies(&h.fake.requests()).len(), 0);
    let degraded = condition(&h.status("second"), "Degraded").clone();
    assert_eq!(degraded["reason"], "DriverNameConflict");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("CsiDeployment first")
    );

    // The older one deploys normally.
    h.fake.clear_requests();
    h.reconcile_ok("first").await;
    assert!(!object_applies(&h.fake.requests()).is_empty());
}

#[tokio::test]
async fn missing_snapshot_crds_leave_out_the_snapshotter_and_say_so() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(false);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    let log = h.fake.requests();
    assert!(
        log.iter()
            .any(|r| r.path == "/apis/snapshot.storage.k8s.io/v1"),
        "discovery asked"
    );
    assert!(
        !object_applies(&log)
            .iter()
            .any(|r| r.path.contains("volumesnapshotclasses"))
    );
    let sts = h.fake.get(&sts_path()).unwrap();
    assert!(!containers(&sts).iter().any(|c| c == "csi-snapshotter"));
    assert!(containers(&sts).iter().any(|c| c == "csi-provisioner"));
    // Snapshots were left unset: the user asked for nothing that is missing, so not
    // Degraded, but the condition still says what was left out and why.
    let degraded = condition(&h.status("local"), "Degraded").clone();
    assert_eq!(degraded["status"], "False");
    assert_eq!(degraded["reason"], "AsExpected");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("snapshot.storage.k8s.io")
    );
    // Required, they make it Degraded until the CRDs come.
    h.edit_spec("local", |s| s["features"] = json!({"snapshots": true}));
    h.reconcile_ok("local").await;
    let degraded = condition(&h.status("local"), "Degraded").clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "FeatureUnavailable");

    // Once the CRDs are installed, the next reconcile adds the snapshotter.
    h.set_snapshot_crds(true);
    h.reconcile_ok("local").await;
    let sts = h.fake.get(&sts_path()).unwrap();
    assert!(containers(&sts).iter().any(|c| c == "csi-snapshotter"));
    assert_eq!(condition(&h.status("local"), "Degraded")["status"], "False");
}

#[tokio::test]
async fn an_api_failure_is_reported_and_backs_off_exponentially() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.fail_next(
        Method::PATCH,
        "/statefulsets/",
        500,
        "etcdserver: request timed out",
    );
    let (result, action) = h.reconcile("local").await;
    assert!(matches!(result, Err(Error::Api { .. })), "{result:?}");
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let degraded = condition(&h.status("local"), "Degraded").clone();
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("etcdserver: request timed out")
    );

    h.fail_next(
        Method::PATCH,
        "/statefulsets/",
        500,
        "etcdserver: request timed out",
    );
    let (_, action) = h.reconcile("local").await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));

    // Recovery clears the backoff and the condition.
    h.reconcile_ok("local").await;
    assert_eq!(condition(&h.status("local"), "Degraded")["status"], "False");
    h.fail_next(Method::PATCH, "/statefulsets/", 500, "again");
    h.fake
        .modify(&sts_path(), |sts| sts["spec"]["replicas"] = json!(2));
    let (_, action) = h.reconcile("local").await;
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
}

/// A class the CR names that already exists and is not the CR's: left alone (no apply,
/// no replacement, no delete), the rest deployed, and the condition says whose it is and
/// what to change.
#[tokio::test]
async fn an_existing_object_that_is_not_ours_is_left_alone_and_named_in_status() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    let standard = object_path(ManagedKind::StorageClass, None, "standard");
    h.fake.insert(
        &standard,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "standard",
                            "managedFields": [{"manager": "kubectl-client-side-apply",
                                               "operation": "Update"}]},
               "provisioner": "rancher.io/local-path",
               "parameters": {"nodePath": "/opt"}}),
    );
    h.create(
        "local",
        json!({"namespace": "plinth-system",
               "storageClasses": [{"name": "standard"}, {"name": "plinth-fast"}]}),
    );

    let (result, action) = h.reconcile("local").await;
    assert!(matches!(result, Err(Error::NotOwned(_))), "{result:?}");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let log = h.fake.requests();
    assert!(
        !log.iter().any(|r| r.path == standard && r.is_write()),
        "the cluster's class was written: {:#?}",
        lines(&log)
    );
    assert_eq!(
        h.fake.get(&standard).unwrap()["provisioner"],
        "rancher.io/local-path"
    );
    // The rest is deployed, our own class included.
    let ours = object_path(ManagedKind::StorageClass, None, "plinth-fast");
    assert!(object_applies(&log).iter().any(|r| r.path == ours));
    assert!(object_applies(&log).iter().any(|r| r.path == sts_path()));
    let degraded = condition(&h.status("local"), "Degraded").clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "NotOwned");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("StorageClass/standard already exists and belongs to someone else")
            && message.contains("kubectl-client-side-apply")
            && message.contains("spec.storageClasses"),
        "{message}"
    );
}

/// Two CRs naming one StorageClass: the one that created it keeps it; the other neither
/// rewrites nor deletes it (no replace war), and says which CR holds it.
#[tokio::test]
async fn two_deployments_naming_one_class_do_not_take_it_from_each_other() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    let shared = object_path(ManagedKind::StorageClass, None, "shared");
    h.create_at(
        "first",
        json!({"namespace": "plinth-system", "storageClasses": [{"name": "shared"}]}),
        "2026-01-01T00:00:00Z",
    );
    h.reconcile_ok("first").await;
    let uid = h.fake.get(&shared).unwrap()["metadata"]["uid"].clone();

    h.create_at(
        "second",
        json!({"namespace": "other", "driver": {"name": "second.csi.plinth.dev"},
               "storageClasses": [{"name": "shared",
                                   "parameters": {"csi.storage.k8s.io/fstype": "xfs"}}]}),
        "2026-01-02T00:00:00Z",
    );
    h.fake.clear_requests();
    let (result, _) = h.reconcile("second").await;
    assert!(matches!(result, Err(Error::NotOwned(_))), "{result:?}");
    let log = h.fake.requests();
    assert!(!log.iter().any(|r| r.path == shared && r.is_write()));
    assert_eq!(h.fake.get(&shared).unwrap()["metadata"]["uid"], uid);
    let message = condition(&h.status("second"), "Degraded")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("belongs to CsiDeployment first"),
        "{message}"
    );

    // The first goes on owning it: a resync writes nothing to it.
    h.fake.clear_requests();
    h.reconcile_ok("first").await;
    assert!(
        !h.fake
            .requests()
            .iter()
            .any(|r| r.path == shared && r.is_write())
    );
}

/// Two built-in drivers in one pool directory would destroy each other's volumes: the
/// newer CR is refused before anything is applied, with the directory and the holder.
#[tokio::test]
async fn the_newer_of_two_deployments_sharing_a_pool_directory_is_refused() {
    let mut h = Harness::new().await;
    h.create_at(
        "first",
        json!({"namespace": "plinth-system", "node": {"poolPath": "/srv/pool"}}),
        "2026-01-01T00:00:00Z",
    );
    h.create_at(
        "second",
        json!({"namespace": "other", "driver": {"name": "second.csi.plinth.dev"},
               "node": {"poolPath": "/srv/pool"}}),
        "2026-01-02T00:00:00Z",
    );
    let (result, action) = h.reconcile("second").await;
    assert!(
        matches!(result, Err(Error::PoolPathConflict { ref holder, .. }) if holder == "first"),
        "{result:?}"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(object_applies(&h.fake.requests()).len(), 0);
    let degraded = condition(&h.status("second"), "Degraded").clone();
    assert_eq!(degraded["reason"], "PoolPathConflict");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("/srv/pool") && message.contains("CsiDeployment first"),
        "{message}"
    );

    // Unset pool paths follow the driver names, which differ: no conflict.
    h.create_at(
        "third",
        json!({"namespace": "third", "driver": {"name": "third.csi.plinth.dev"}}),
        "2026-01-03T00:00:00Z",
    );
    h.reconcile_ok("third").await;
}

/// The first real cluster: the minimal sample applied before its namespace existed left
/// a Debug dump in status and waited out a backoff. Now the namespace is created (labelled
/// as Plinth's) when the server says it is missing, and the deployment goes on at once.
#[tokio::test]
async fn a_missing_workload_namespace_is_created_and_the_deployment_goes_on() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.fail_next(
        Method::PATCH,
        "/namespaces/plinth-system/",
        404,
        "namespaces \"plinth-system\" not found",
    );
    h.reconcile_ok("local").await;
    let log = h.fake.requests();
    let created: Vec<&Req> = log
        .iter()
        .filter(|r| r.method == Method::POST && r.path == "/api/v1/namespaces")
        .collect();
    assert_eq!(created.len(), 1, "{:#?}", lines(&log));
    let body = created[0].body.as_ref().unwrap();
    assert_eq!(body["metadata"]["name"], "plinth-system");
    assert_eq!(
        body["metadata"]["labels"]["plinth.dev/created-for"],
        "local"
    );
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "plinth-operator"
    );
    // Everything was applied in this one reconcile, the refused object included.
    let want = expected(&h, "local", true);
    assert_eq!(
        object_applies(&log).len(),
        want.len() + 1,
        "one apply repeated"
    );
    assert_eq!(condition(&h.status("local"), "Degraded")["status"], "False");
}

/// An API failure reaches status as the server's sentence, not a dump of client types.
#[tokio::test]
async fn an_api_failure_in_status_is_a_sentence() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.fail_next(
        Method::PATCH,
        "/statefulsets/",
        403,
        "statefulsets.apps \"plinth-local-controller\" is forbidden: User cannot patch",
    );
    let (result, _) = h.reconcile("local").await;
    assert!(result.is_err());
    let message = condition(&h.status("local"), "Degraded")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("is forbidden: User cannot patch")
            && message.contains("the operator's RBAC does not allow it"),
        "{message}"
    );
    for dump in ["Status {", "ErrorResponse", "Some(", "code: 403"] {
        assert!(!message.contains(dump), "a Debug dump in status: {message}");
    }
}

/// Switching a feature off removes its sidecar: an Event says so, and status.sidecars
/// keeps a line saying why it is not there.
#[tokio::test]
async fn a_sidecar_that_goes_is_announced_and_explained() {
    let mut h = Harness::new().await;
    h.set_snapshot_crds(true);
    h.create("local", minimal());
    h.reconcile_ok("local").await;
    let first = h.status("local");
    let snapshotter = |status: &Value| {
        status["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["pod"] == "controller" && s["name"] == "csi-snapshotter")
            .cloned()
            .unwrap()
    };
    assert_eq!(snapshotter(&first)["deployed"], true);
    // No change event for the first deployment.
    assert!(
        !events(&h.fake.requests())
            .iter()
            .any(|e| e["reason"] == "SidecarsChanged")
    );

    h.edit_spec("local", |s| s["features"] = json!({"snapshots": false}));
    h.fake.clear_requests();
    h.reconcile_ok("local").await;
    let after = h.status("local");
    assert_eq!(snapshotter(&after)["deployed"], false);
    assert_eq!(
        snapshotter(&after)["reason"],
        "switched off: features.snapshots is false"
    );
    let changed: Vec<Value> = events(&h.fake.requests())
        .into_iter()
        .filter(|e| e["reason"] == "SidecarsChanged")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(
        changed[0]["note"],
        "removed controller/csi-snapshotter; status.sidecars says why"
    );
}

/// Per-node provisioning renders no StatefulSet: readiness is the node pods and their
/// registration alone, not a controller that never comes.
#[tokio::test]
async fn a_per_node_deployment_is_ready_without_a_controller_statefulset() {
    let mut h = Harness::new().await;
    h.create(
        "local",
        json!({"namespace": "plinth-system", "driver": {
            "name": "hostpath.csi.k8s.io", "image": "example.com/hostpath:v1",
            "thirdParty": {"provisioning": "PerNode", "probe": false,
                "capabilities": {
                    "plugin": ["CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS"],
                    "controller": ["CREATE_DELETE_VOLUME"]}}}}),
    );
    h.reconcile_ok("local").await;
    assert!(
        h.fake.get(&sts_path()).is_none(),
        "per node: no controller StatefulSet"
    );
    h.fake.modify(&ds_path(), |ds| {
        ds["status"] = json!({"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
            "currentNumberScheduled": 2, "numberMisscheduled": 0, "observedGeneration": 1});
    });
    h.register_driver("hostpath.csi.k8s.io", &["node-a", "node-b"]);
    h.reconcile_ok("local").await;
    let status = h.status("local");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "True", "{status:#}");
    assert_eq!(
        ready["message"],
        "driver hostpath.csi.k8s.io provisions per node and is registered on 2/2 nodes"
    );
    assert_eq!(condition(&status, "Progressing")["status"], "False");
}

// ---- Probing a third-party driver -------------------------------------------------------

mod probing {
    use super::*;
    use plinth_api::capabilities::Capabilities;
    use plinth_operator::probe::{ProbeAnswer, ProbeResult};
    use plinth_operator::reconcile::probe::{FAILED_RECHECK, PROBE_POLL};
    use plinth_operator::render::probe as probe_job;

    const HP: &str = "hostpath.csi.k8s.io";
    const IMAGE: &str = "registry.k8s.io/sig-storage/hostpathplugin:v1.17.0";

    fn spec(image: &str) -> Value {
        json!({
            "namespace": "storage",
            "driver": {
                "name": HP,
                "image": image,
                "thirdParty": {
                    "controllerArgs": ["--endpoint=$(CSI_ENDPOINT)", "--drivername=hostpath.csi.k8s.io"],
                    "nodeArgs": ["--endpoint=$(CSI_ENDPOINT)", "--nodeid=$(NODE_ID)", "--drivername=hostpath.csi.k8s.io"]
                }
            }
        })
    }

    /// What host-path advertises (its controller: volumes, snapshots, expansion; no attach).
    fn advertised() -> Capabilities {
        serde_json::from_value(json!({
            "plugin": ["CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS", "ONLINE_EXPANSION"],
            "controller": ["CREATE_DELETE_VOLUME", "CREATE_DELETE_SNAPSHOT", "LIST_SNAPSHOTS",
                           "EXPAND_VOLUME", "GET_CAPACITY"],
            "node": ["STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "EXPAND_VOLUME"]
        }))
        .unwrap()
    }

    fn setup(h: &Harness) -> probe_job::ProbeSetup {
        probe_job::setup(&h.cr("hp"), &RenderEnv::default())
    }

    fn hp_sts() -> String {
        object_path(
            ManagedKind::StatefulSet,
            Some("storage"),
            "plinth-hp-controller",
        )
    }

    fn job_path(name: &str) -> String {
        format!("/apis/batch/v1/namespaces/storage/jobs/{name}")
    }

    fn pod_path(name: &str) -> String {
        format!("/api/v1/namespaces/storage/pods/{name}")
    }

    /// The Job's pod as kubelet reports it, with the given container statuses.
    fn insert_pod(h: &Harness, job: &str, pod: &str, init: Value, main: Value) {
        h.fake.insert(
            &pod_path(pod),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "storage",
                             "labels": {"batch.kubernetes.io/job-name": job}},
                "spec": {"containers": []},
                "status": {"initContainerStatuses": init, "containerStatuses": main}
            }),
        );
    }

    fn status_of(name: &str, state: Value, restarts: i32) -> Value {
        json!({"name": name, "image": IMAGE, "imageID": "", "ready": false,
               "restartCount": restarts, "state": state})
    }

    fn finish(h: &Harness, job: &str, answer: &ProbeAnswer, succeeded: bool) {
        let condition = if succeeded { "Complete" } else { "Failed" };
        h.fake.modify(&job_path(job), |j| {
            j["status"] = json!({"conditions": [{"type": condition, "status": "True"}]});
        });
        let exit = i32::from(!succeeded);
        insert_pod(
            h,
            job,
            &format!("{job}-x7k2p"),
            json!([status_of(
                "csi-driver-node",
                json!({"terminated": {"exitCode": 0}}),
                0
            )]),
            json!([status_of(
                "probe",
                json!({"terminated": {"exitCode": exit, "message": answer.to_json()}}),
                0
            )]),
        );
    }

    fn answer(caps: Capabilities) -> ProbeAnswer {
        ProbeAnswer::Result(ProbeResult {
            driver_name: HP.to_owned(),
            vendor_version: "v1.17.0".to_owned(),
            capabilities: caps,
            node_asked: true,
        })
    }

    fn writes(log: &[Req]) -> Vec<String> {
        log.iter()
            .filter(|r| r.is_write() && !r.path.ends_with("/events"))
            .map(Req::line)
            .collect()
    }

    #[tokio::test]
    async fn the_probe_job_runs_once_its_answer_is_read_and_only_then_the_driver_is_deployed() {
        let mut h = Harness::new().await;
        h.set_snapshot_crds(true);
        h.create("hp", spec(IMAGE));
        let s = setup(&h);
        let job = probe_job::job_name(&h.cr("hp"), &s.fingerprint);
        assert_eq!(job, format!("hp-probe-{}", s.fingerprint));

        // First reconcile: the finalizer, the Job, status. Nothing of the deployment.
        let action = h.reconcile_ok("hp").await;
        assert_eq!(action, Action::requeue(PROBE_POLL));
        let log = h.fake.requests();
        let applied: Vec<&Req> = object_applies(&log);
        assert_eq!(
            applied.iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
            [job_path(&job)]
        );
        let mut want = serde_json::to_value(probe_job::job(
            &h.cr("hp"),
            &s,
            &plinth_operator::generate::manager::operator_image(),
        ))
        .unwrap();
        want["apiVersion"] = json!("batch/v1");
        want["kind"] = json!("Job");
        assert_eq!(applied[0].body.as_ref().unwrap(), &want);
        let status = h.status("hp");
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing["reason"], "ProbingDriver");
        assert_eq!(
            progressing["message"],
            format!(
                "probe Job storage/{job} is asking image {IMAGE} what it advertises; nothing is applied until it answers"
            )
        );
        assert_eq!(condition(&status, "Ready")["status"], "False");
        let requests_to_job = log.len();

        // A second look while it runs: no new Job, no write at all.
        h.fake.clear_requests();
        h.reconcile_ok("hp").await;
        assert_eq!(writes(&h.fake.requests()), Vec::<String>::new());
        let requests_waiting = h.fake.requests().len();

        // The pod answers: the result is recorded, the Job deleted, the driver deployed
        // with exactly the sidecars the answer calls for.
        finish(&h, &job, &answer(advertised()), true);
        h.fake.clear_requests();
        assert_eq!(
            h.reconcile_ok("hp").await,
            Action::requeue(reconcile::RESYNC)
        );
        let log = h.fake.requests();
        assert!(
            deletes(&log).contains(&job_path(&job)),
            "{:#?}",
            lines(&log)
        );
        let caps = &h.status("hp")["capabilities"];
        assert_eq!(caps["source"], "Probe");
        assert_eq!(caps["image"], IMAGE);
        assert_eq!(caps["fingerprint"], s.fingerprint.as_str());
        assert_eq!(caps["driverName"], HP);
        assert_eq!(caps["vendorVersion"], "v1.17.0");
        assert_eq!(
            caps["advertised"],
            serde_json::to_value(advertised()).unwrap()
        );
        let env = RenderEnv {
            snapshot_crds_present: true,
            driver_capabilities: Some(advertised()),
            ..RenderEnv::default()
        };
        let want: Vec<String> = render::render(&h.cr("hp"), &env)
            .unwrap()
            .objects
            .iter()
            .map(path_of)
            .collect();
        let got: Vec<String> = object_applies(&log)
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(got, want);
        let sts = h.fake.get(&hp_sts()).unwrap();
        assert_eq!(
            containers(&sts),
            [
                "csi-driver",
                "csi-provisioner",
                "csi-resizer",
                "csi-snapshotter",
                "liveness-probe"
            ]
        );
        let requests_answered = log.len();
        println!(
            "requests from CR applied to workloads applied, with a probe: {requests_to_job} (Job created) + {requests_waiting} per look while it runs + {requests_answered} (answer read, workloads applied)"
        );

        // From now on the stored answer is used: no Job, nothing written.
        h.fake.clear_requests();
        h.reconcile_ok("hp").await;
        let log = h.fake.requests();
        assert_eq!(writes(&log), Vec::<String>::new());
        assert!(
            !log.iter().any(|r| r.path.contains("/jobs")),
            "{:#?}",
            lines(&log)
        );
    }

    /// Runs the probe to its answer.
    async fn probed(h: &mut Harness, caps: Capabilities) {
        h.reconcile_ok("hp").await;
        let job = probe_job::job_name(&h.cr("hp"), &setup(h).fingerprint);
        finish(h, &job, &answer(caps), true);
        h.reconcile_ok("hp").await;
    }

    #[tokio::test]
    async fn a_new_image_is_probed_again_and_the_running_deployment_is_left_alone_meanwhile() {
        let mut h = Harness::new().await;
        h.create("hp", spec(IMAGE));
        probed(&mut h, advertised()).await;
        let old_job = probe_job::job_name(&h.cr("hp"), &setup(&h).fingerprint);

        h.edit_spec("hp", |s| {
            s["driver"]["image"] = json!(format!("{IMAGE}-rc1"))
        });
        h.fake.clear_requests();
        assert_eq!(h.reconcile_ok("hp").await, Action::requeue(PROBE_POLL));
        let new_job = probe_job::job_name(&h.cr("hp"), &setup(&h).fingerprint);
        assert_ne!(new_job, old_job);
        let log = h.fake.requests();
        assert_eq!(
            object_applies(&log)
                .iter()
                .map(|r| r.path.clone())
                .collect::<Vec<_>>(),
            [job_path(&new_job)]
        );
        assert_eq!(deletes(&log), Vec::<String>::new());
        // The StatefulSet still runs the old image.
        let sts = h.fake.get(&hp_sts()).unwrap();
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["image"],
            IMAGE
        );
    }

    #[tokio::test]
    async fn a_declaration_that_disagrees_is_named_difference_by_difference() {
        let mut h = Harness::new().await;
        let mut s = spec(IMAGE);
        s["driver"]["thirdParty"]["capabilities"] = json!({
            "plugin": ["CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS", "ONLINE_EXPANSION"],
            "controller": ["CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME", "CREATE_DELETE_SNAPSHOT",
                           "LIST_SNAPSHOTS", "EXPAND_VOLUME"],
            "node": ["STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "EXPAND_VOLUME"],
            "lifecycleModes": ["Persistent", "Ephemeral"]
        });
        h.create("hp", s);
        probed(&mut h, advertised()).await;
        let status = h.status("hp");
        let matched = condition(&status, "CapabilitiesMatch");
        assert_eq!(matched["status"], "False");
        assert_eq!(matched["reason"], "DeclarationDiffers");
        assert_eq!(
            matched["message"],
            "the driver's own answer is what is deployed; declared controller PUBLISH_UNPUBLISH_VOLUME, which the driver does not advertise; the driver advertises controller GET_CAPACITY, which is not declared: correct spec.driver.thirdParty.capabilities or remove it"
        );
        // The probe wins: no attacher; the declared lifecycle modes (not probeable) stay.
        let sts = h.fake.get(&hp_sts()).unwrap();
        assert!(!containers(&sts).contains(&"csi-attacher".to_owned()));
        let csidriver = h
            .fake
            .get(&object_path(ManagedKind::CsiDriver, None, HP))
            .unwrap();
        assert_eq!(csidriver["spec"]["attachRequired"], false);
        assert_eq!(
            csidriver["spec"]["volumeLifecycleModes"],
            json!(["Persistent", "Ephemeral"])
        );
        assert_eq!(condition(&status, "Degraded")["status"], "False");
    }

    #[tokio::test]
    async fn an_image_that_cannot_be_pulled_is_degraded_naming_the_pod() {
        let mut h = Harness::new().await;
        h.create(
            "hp",
            spec("registry.k8s.io/sig-storage/hostpathplugin:v0.0.0-nope"),
        );
        h.reconcile_ok("hp").await;
        let job = probe_job::job_name(&h.cr("hp"), &setup(&h).fingerprint);
        let pod = format!("{job}-x7k2p");
        insert_pod(
            &h,
            &job,
            &pod,
            json!([status_of(
                "csi-driver-node",
                json!({"waiting": {"reason": "ErrImagePull",
                                   "message": "rpc error: code = NotFound desc = manifest unknown"}}),
                0
            )]),
            json!([]),
        );
        h.fake.clear_requests();
        assert_eq!(h.reconcile_ok("hp").await, Action::requeue(PROBE_POLL));
        let status = h.status("hp");
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "ProbeImagePullFailed");
        assert_eq!(
            degraded["message"],
            format!(
                "probe pod storage/{pod} cannot pull image {IMAGE} of container csi-driver-node (ErrImagePull: rpc error: code = NotFound desc = manifest unknown): check spec.driver.image and spec.images.pullSecrets; nothing of the deployment was applied or changed"
            )
        );
        assert_eq!(condition(&status, "Progressing")["reason"], "ProbingDriver");
        assert!(object_applies(&h.fake.requests()).is_empty());
    }

    #[tokio::test]
    async fn a_driver_that_crashes_in_the_probe_pod_is_degraded_with_its_exit_code() {
        let mut h = Harness::new().await;
        h.create("hp", spec(IMAGE));
        h.reconcile_ok("hp").await;
        let job = probe_job::job_name(&h.cr("hp"), &setup(&h).fingerprint);
        let pod = format!("{job}-x7k2p");
        let mut crashed = status_of(
            "csi-driver-node",
            json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            2,
        );
        crashed["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error"}});
        insert_pod(&h, &job, &pod, json!([crashed]), json!([]));
        h.fake.clear_requests();
        assert_eq!(h.reconcile_ok("hp").await, Action::requeue(PROBE_POLL));
        let degraded = condition(&h.status("hp"), "Degraded").clone();
        assert_eq!(degraded["reason"], "DriverCrashed");
        assert_eq!(
            degraded["message"],
            format!(
                "the driver container csi-driver-node of probe pod storage/{pod} exited with code 1 (Error) and was restarted 2 times: it does not start with these arguments; see `kubectl -n storage logs {pod} -c csi-driver-node --previous`; nothing of the deployment was applied or changed"
            )
        );
        assert!(object_applies(&h.fake.requests()).is_empty());
    }

    #[tokio::test]
    async fn a_probe_error_is_degraded_with_its_sentence_and_not_retried_in_a_loop() {
        let mut h = Harness::new().await;
        h.create("hp", spec(IMAGE));
        h.reconcile_ok("hp").await;
        let job = probe_job::job_name(&h.cr("hp"), &setup(&h).fingerprint);
        let error = ProbeAnswer::Error {
            reason: "ControllerUnimplemented".to_owned(),
            message: "the driver advertises CONTROLLER_SERVICE but answers ControllerGetCapabilities with UNIMPLEMENTED on /probe/controller/csi.sock".to_owned(),
        };
        finish(&h, &job, &error, false);
        h.fake.clear_requests();
        assert_eq!(h.reconcile_ok("hp").await, Action::requeue(FAILED_RECHECK));
        let status = h.status("hp");
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded["reason"], "ControllerUnimplemented");
        assert_eq!(
            degraded["message"],
            format!(
                "probe pod storage/{job}-x7k2p: the driver advertises CONTROLLER_SERVICE but answers ControllerGetCapabilities with UNIMPLEMENTED on /probe/controller/csi.sock; nothing of the deployment was applied or changed, and the probe runs again when the image or arguments change or after 10 minutes"
            )
        );
        assert!(object_applies(&h.fake.requests()).is_empty());
        assert!(h.status("hp").get("capabilities").is_none());

        // Looking again changes nothing: the failed Job stays (for its pod), no new one.
        h.fake.clear_requests();
        h.reconcile_ok("hp").await;
        assert_eq!(writes(&h.fake.requests()), Vec::<String>::new());

        // Kubernetes removes the failed Job after its TTL: the next look probes again.
        h.fake.remove(&job_path(&job));
        h.fake.clear_requests();
        h.reconcile_ok("hp").await;
        assert_eq!(
            object_applies(&h.fake.requests())
                .iter()
                .map(|r| r.path.clone())
                .collect::<Vec<_>>(),
            [job_path(&job)]
        );
    }

    #[tokio::test]
    async fn a_driver_reporting_another_name_is_refused_before_anything_is_applied() {
        let mut h = Harness::new().await;
        h.create("hp", spec(IMAGE));
        h.reconcile_ok("hp").await;
        let job = probe_job::job_name(&h.cr("hp"), &setup(&h).fingerprint);
        let mut wrong = answer(advertised());
        if let ProbeAnswer::Result(r) = &mut wrong {
            r.driver_name = "other.example.com".to_owned();
        }
        finish(&h, &job, &wrong, true);
        h.fake.clear_requests();
        h.reconcile_ok("hp").await;
        let degraded = condition(&h.status("hp"), "Degraded").clone();
        assert_eq!(degraded["reason"], "DriverNameMismatch");
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("image {IMAGE} reports the driver name other.example.com (GetPluginInfo) but spec.driver.name is {HP}")),
            "{degraded}"
        );
        assert!(object_applies(&h.fake.requests()).is_empty());
    }
}

/// Which classes encrypt is in status, so `kubectl describe csideployment` says it.
#[tokio::test]
async fn status_names_the_encrypted_storage_classes() {
    let mut h = Harness::new().await;
    h.create(
        "local",
        json!({"namespace": "plinth-system", "storageClasses": [
            {"name": "plain"},
            {"name": "sealed", "encryption": {}}]}),
    );
    h.reconcile_ok("local").await;
    assert_eq!(
        h.status("local")["encryptedStorageClasses"],
        json!(["sealed"])
    );
}
