//! What a user runs against the driver: claims and small busybox pods, and waits on them
//! whose timeout says where the object was stuck (its status and recent events).

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use plinth_e2e::wait_for;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Label on every workload object of one run, so cleanup finds them all.
pub const RUN_LABEL: &str = "plinth.dev/e2e-run";

/// Where pods mount their first claim.
pub const DATA: &str = "/data";

/// The image of the test pods (`PLINTH_E2E_POD_IMAGE`, e.g. a mirror on air-gapped
/// clusters); it needs a POSIX shell, `grep`, `sync` and `df -P`.
fn pod_image() -> String {
    std::env::var("PLINTH_E2E_POD_IMAGE").unwrap_or_else(|_| "busybox:1.37".to_owned())
}

/// A claim of `size` in `class`, optionally restored from VolumeSnapshot `snapshot`.
pub fn claim(name: &str, run: &str, class: &str, size: &str, snapshot: Option<&str>) -> Value {
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "labels": { RUN_LABEL: run } },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": { "requests": { "storage": size } },
        },
    });
    if let Some(snapshot) = snapshot {
        claim["spec"]["dataSource"] = json!({
            "apiGroup": "snapshot.storage.k8s.io",
            "kind": "VolumeSnapshot",
            "name": snapshot,
        });
    }
    claim
}

/// How a test pod runs.
pub enum Lifetime {
    /// Runs `script`, then stays up; Ready once the script has completed.
    Serve,
    /// Runs `script` once (restartPolicy Never): Succeeded or Failed says how it went.
    Once,
}

/// Marker a serving pod's script leaves when done; its readiness probe checks it.
const READY_MARKER: &str = "/tmp/script-done";

/// A busybox pod mounting `claims` (the first at [`DATA`], the others at `/extra-<i>`),
/// pinned to `node` when given. Pinning is by `metadata.name`, which unlike the hostname
/// label always is the node's name.
pub fn pod(
    name: &str,
    run: &str,
    node: Option<&str>,
    claims: &[&str],
    script: &str,
    lifetime: Lifetime,
) -> Value {
    let path = |i: usize| {
        if i == 0 {
            DATA.to_owned()
        } else {
            format!("/extra-{i}")
        }
    };
    let volumes: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({ "name": format!("v{i}"), "persistentVolumeClaim": { "claimName": c } })
        })
        .collect();
    let mounts: Vec<Value> = (0..claims.len())
        .map(|i| json!({ "name": format!("v{i}"), "mountPath": path(i) }))
        .collect();
    let (command, restart) = match lifetime {
        Lifetime::Serve => (
            format!("{script} && touch {READY_MARKER} && exec sleep 86400"),
            "Always",
        ),
        Lifetime::Once => (script.to_owned(), "Never"),
    };
    let mut container = json!({
        "name": "main",
        "image": pod_image(),
        "command": ["sh", "-c", command],
        "volumeMounts": mounts,
    });
    if matches!(lifetime, Lifetime::Serve) {
        container["readinessProbe"] = json!({
            "exec": { "command": ["test", "-f", READY_MARKER] },
            "periodSeconds": 1,
        });
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { RUN_LABEL: run } },
        "spec": {
            "restartPolicy": restart,
            // `sleep` as PID 1 ignores SIGTERM: do not wait 30 s for it on deletion.
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": volumes,
        },
    });
    if let Some(node) = node {
        pod["spec"]["affinity"] = json!({ "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                { "matchFields": [{ "key": "metadata.name", "operator": "In", "values": [node] }] }
            ]}
        }});
    }
    pod
}

/// Creates `body` (a full object as JSON) in `api`.
pub async fn create<K>(api: &Api<K>, body: Value) -> anyhow::Result<K>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + Debug,
{
    let object: K = serde_json::from_value(body).context("building the object")?;
    api.create(&PostParams::default(), &object)
        .await
        .context("creating the object")
}

fn pod_summary(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".to_owned();
    };
    let mut parts = vec![format!("phase {}", status.phase.as_deref().unwrap_or("?"))];
    for c in status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
    {
        parts.push(format!(
            "{} {} {}",
            c.type_,
            c.reason.as_deref().unwrap_or_default(),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    for s in status.container_statuses.iter().flatten() {
        if let Some(waiting) = s.state.as_ref().and_then(|st| st.waiting.as_ref()) {
            parts.push(format!(
                "container {} waiting: {} {}",
                s.name,
                waiting.reason.as_deref().unwrap_or_default(),
                waiting.message.as_deref().unwrap_or_default()
            ));
        }
    }
    parts.join("; ")
}

/// The latest events about `name` in `ns`, one per line, for failure messages.
pub async fn recent_events(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let selector = format!("involvedObject.name={name}");
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => {
            // Event names are `<object>.<hex timestamp>`: listed in order of creation.
            let lines: Vec<String> = list
                .items
                .iter()
                .rev()
                .take(8)
                .rev()
                .map(|e| {
                    format!(
                        "  {} {}: {}",
                        e.type_.as_deref().unwrap_or_default(),
                        e.reason.as_deref().unwrap_or_default(),
                        e.message.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            if lines.is_empty() {
                format!("no events about {name}")
            } else {
                format!("events about {name}:\n{}", lines.join("\n"))
            }
        }
        Err(err) => format!("events about {name} unavailable: {err}"),
    }
}

/// Adds the recent events of `names` to a failed wait.
pub async fn explain<T>(
    client: &Client,
    ns: &str,
    names: &[&str],
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(err) => {
            let mut context = Vec::new();
            for name in names {
                context.push(recent_events(client, ns, name).await);
            }
            Err(err.context(context.join("\n")))
        }
    }
}

/// Polls pod `name` until `outcome` gives an answer; the timeout says where the pod was
/// and what happened to it and its claims.
async fn wait_pod<T>(
    client: &Client,
    ns: &str,
    name: &str,
    claims: &[&str],
    what: &str,
    timeout: Duration,
    outcome: impl Fn(&Pod) -> Option<T>,
) -> anyhow::Result<T> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let outcome = &outcome;
    let waited = wait_for(&format!("pod {ns}/{name} {what}"), timeout, || {
        let api = api.clone();
        async move {
            let pod = api.get(name).await?;
            match outcome(&pod) {
                Some(answer) => Ok(Some(answer)),
                None => bail!("{}", pod_summary(&pod)),
            }
        }
    })
    .await;
    let involved = [&[name][..], claims].concat();
    explain(client, ns, &involved, waited).await
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Waits until a serving pod is Ready (its script done); fails early when it stopped.
pub async fn wait_pod_ready(
    client: &Client,
    ns: &str,
    name: &str,
    claims: &[&str],
    timeout: Duration,
) -> anyhow::Result<Pod> {
    // A failed script restarts the container (restartPolicy Always): that is a failure
    // too, and waiting for readiness would only end in the timeout.
    let stopped = |pod: &Pod| {
        matches!(phase(pod), Some("Failed" | "Succeeded"))
            || pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.restart_count > 0))
    };
    let ready = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let pod = wait_pod(client, ns, name, claims, "to be Ready", timeout, |pod| {
        (stopped(pod) || ready(pod)).then(|| pod.clone())
    })
    .await?;
    if stopped(&pod) {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        bail!(
            "pod {name} stopped ({}); its log:\n{}",
            pod_summary(&pod),
            logs(&api, name).await
        );
    }
    Ok(pod)
}

/// Waits for a run-once pod to finish and returns its log; a failed pod fails the test
/// with its log.
pub async fn wait_pod_succeeded(
    client: &Client,
    ns: &str,
    name: &str,
    claims: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let succeeded = wait_pod(
        client,
        ns,
        name,
        claims,
        "to finish",
        timeout,
        |pod| match phase(pod) {
            Some("Succeeded") => Some(true),
            Some("Failed") => Some(false),
            _ => None,
        },
    )
    .await?;
    let log = logs(&Api::namespaced(client.clone(), ns), name).await;
    if !succeeded {
        bail!("pod {name} failed; its log:\n{log}");
    }
    Ok(log)
}

async fn logs(api: &Api<Pod>, name: &str) -> String {
    api.logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|err| format!("(log unavailable: {err})"))
}

/// Waits until `claim` has a capacity of at least `bytes`.
pub async fn wait_claim_capacity(
    client: &Client,
    ns: &str,
    claim: &str,
    bytes: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let waited = wait_for(
        &format!("PVC {ns}/{claim} to have a capacity of {bytes} bytes"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let pvc = api.get(claim).await?;
                let status = pvc.status.unwrap_or_default();
                let capacity = status
                    .capacity
                    .as_ref()
                    .and_then(|c| c.get("storage"))
                    .and_then(|q| plinth_e2e::quantity::bytes(&q.0));
                if let Some(capacity) = capacity.filter(|c| *c >= bytes) {
                    return Ok(Some(capacity));
                }
                let conditions: Vec<String> = status
                    .conditions
                    .iter()
                    .flatten()
                    .map(|c| {
                        format!(
                            "{}={} {}",
                            c.type_,
                            c.status,
                            c.message.as_deref().unwrap_or_default()
                        )
                    })
                    .collect();
                bail!(
                    "phase {:?}, capacity {capacity:?}, allocated {:?}, conditions {conditions:?}",
                    status.phase,
                    status.allocated_resource_statuses
                )
            }
        },
    )
    .await;
    explain(client, ns, &[claim], waited).await
}

/// Deletes `name`, a missing object being fine: cleanup runs whatever state a failed
/// test left.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err).with_context(|| format!("deleting {name}")),
    }
}

/// Waits until `name` (a `kind`, for the message) no longer exists.
pub async fn wait_gone<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    wait_for(&format!("{kind} {name} to be gone"), timeout, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// Whether `err` comes from a 404 answer (an object or a whole API that is not there).
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<kube::Error>(),
            Some(kube::Error::Api(s)) if s.code == 404
        )
    })
}

/// Deletes every object of `api` matching `selector` and waits until none is left.
pub async fn delete_labelled<K>(
    api: &Api<K>,
    kind: &str,
    selector: &str,
    timeout: Duration,
) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = ListParams::default().labels(selector);
    for object in api.list(&params).await?.items {
        delete_if_present(api, &object.name_any()).await?;
    }
    wait_for(
        &format!("{kind} labelled {selector} to be gone"),
        timeout,
        || async {
            let left: Vec<String> = api
                .list(&params)
                .await?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            plinth_e2e::none_left(left)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies go through the typed objects before they are sent: a misspelt field
    /// would be dropped silently, so each must survive the round trip unchanged.
    fn round_trips<K: DeserializeOwned + serde::Serialize>(body: &Value) {
        let typed: K = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(&serde_json::to_value(&typed).unwrap(), body);
    }

    #[test]
    fn claims_and_pods_are_valid_objects() {
        round_trips::<PersistentVolumeClaim>(&claim("c", "run", "sc", "1Gi", None));
        round_trips::<PersistentVolumeClaim>(&claim("c", "run", "sc", "1Gi", Some("snap")));
        let serve = pod("p", "run", None, &["a", "b"], "true", Lifetime::Serve);
        round_trips::<Pod>(&serve);
        assert_eq!(
            serve["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"],
            "b"
        );
        assert_eq!(
            serve["spec"]["containers"][0]["volumeMounts"][1]["mountPath"],
            "/extra-1"
        );
        let once = pod("p", "run", Some("node-1"), &["a"], "true", Lifetime::Once);
        round_trips::<Pod>(&once);
        assert_eq!(once["spec"]["restartPolicy"], "Never");
        let affinity = &once["spec"]["affinity"]["nodeAffinity"];
        let required = &affinity["requiredDuringSchedulingIgnoredDuringExecution"];
        assert_eq!(
            required["nodeSelectorTerms"][0]["matchFields"][0],
            json!({ "key": "metadata.name", "operator": "In", "values": ["node-1"] })
        );
    }
}
