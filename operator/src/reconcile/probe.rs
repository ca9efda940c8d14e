//! Which capabilities a deployment is rendered from, and the probe Job that learns them.
//!
//! A third-party driver (and the built-in driver with an overridden image, as a
//! cross-check) is asked what it advertises by a Job (`render::probe`), once per
//! fingerprint of the driver's image, arguments, environment and volumes: the answer is
//! kept in `status.capabilities` and reused until the fingerprint changes. While a probe
//! runs or after it failed, nothing of the deployment is applied (a running deployment
//! stays as it was). A failed Job stays for `TTL_SECONDS_AFTER_FINISHED` so its pod can be
//! inspected; Kubernetes then removes it, and its removal (a watched event) starts the
//! next attempt: a failure is retried when the fingerprint changes or after that backoff,
//! never in a loop.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PropagationPolicy};
use kube::{Client, ResourceExt};
use plinth_api::capabilities::Capabilities;
use serde::Serialize;
use tracing::{info, instrument};

use super::apply::apply_params;
use super::conditions::{CondStatus, DEGRADED, PROGRESSING, READY, Verdict, merge, upsert};
use super::error::{Error, Verb, is_not_found};
use super::{Context, namespace, now, status};
use crate::crd::{CapabilitiesStatus, CapabilitySource, CsiDeployment, CsiDeploymentStatus};
use crate::probe::{ProbeAnswer, ProbeResult};
use crate::render::probe::{self as job, ProbeSetup, TTL_SECONDS_AFTER_FINISHED};
use crate::render::{Plan, RenderEnv, images};

/// The condition comparing a declaration (or the built-in driver's own capabilities)
/// with what the driver advertised. A difference is not a fault of the deployment (the
/// probe's answer is what is rendered), so it is a condition of its own, not Degraded.
pub const CAPABILITIES_MATCH: &str = "CapabilitiesMatch";
/// How often a running probe is looked at (image pull errors do not change the Job).
pub const PROBE_POLL: Duration = Duration::from_secs(10);
/// How often a failed probe is looked at: its Job's removal (TTL) also triggers a
/// reconcile through the watch, this is the fallback.
pub const FAILED_RECHECK: Duration = Duration::from_secs(60);
/// The label Kubernetes puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// What to render from.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// For `RenderEnv::driver_capabilities` (third-party, probed).
    pub driver_capabilities: Option<Capabilities>,
    /// For `status.capabilities`.
    pub status: CapabilitiesStatus,
    /// `CapabilitiesMatch`, when there is something to compare.
    pub agreement: Option<Verdict>,
}

/// The outcome of looking at the probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Render(Box<Resolved>),
    /// Nothing to render yet; status says why. Look again after this long.
    Wait(Duration),
}

/// Whether `cr` is rendered from a probe.
pub fn needs_probe(cr: &CsiDeployment) -> bool {
    match &cr.spec.driver.third_party {
        Some(third) => third.probe,
        None => cr.spec.driver.image.is_some(),
    }
}

/// Decides what `cr` is rendered from, running the probe Job when needed.
#[instrument(skip_all, fields(cr = %cr.name_any()))]
pub async fn resolve(cr: &CsiDeployment, ctx: &Context, env: &RenderEnv) -> Result<Step, Error> {
    if !needs_probe(cr) {
        return Ok(Step::Render(Box::new(without_probe(cr, env))));
    }
    let setup = job::setup(cr, env);
    if let Some(stored) = cr.status.as_ref().and_then(|s| s.capabilities.as_ref())
        && stored.source == CapabilitySource::Probe
        && stored.fingerprint.as_deref() == Some(setup.fingerprint.as_str())
    {
        let result = ProbeResult {
            driver_name: stored.driver_name.clone().unwrap_or_default(),
            vendor_version: stored.vendor_version.clone().unwrap_or_default(),
            node_asked: !cr.spec.is_builtin(),
            capabilities: stored.advertised.clone(),
        };
        return Ok(Step::Render(Box::new(from_probe(
            cr,
            env,
            &result,
            stored.clone(),
        ))));
    }
    let ns = cr.spec.namespace.as_str();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let name = job::job_name(cr, &setup.fingerprint);
    let listed = jobs
        .list(&ListParams::default().labels(&job::job_selector(&cr.name_any())))
        .await
        .or_else(|err| {
            if is_not_found(&err) {
                Ok(kube::api::ObjectList {
                    types: Default::default(),
                    metadata: Default::default(),
                    items: Vec::new(),
                })
            } else {
                Err(Error::api(Verb::List, format!("Jobs in {ns}"))(err))
            }
        })?;
    // Probes of an earlier image or argument list answer a question nobody asks now.
    for stale in listed.items.iter().filter(|j| j.name_any() != name) {
        delete_job(&jobs, &stale.name_any()).await?;
    }
    let Some(current) = listed.items.into_iter().find(|j| j.name_any() == name) else {
        let body = job::job(cr, &setup, &ctx.probe_image);
        apply_job(&ctx.client, &jobs, cr, &name, &body).await?;
        info!(job = %name, "probing the driver");
        let waiting = format!(
            "probe Job {ns}/{name} is asking image {} what it advertises; nothing is applied until it answers",
            setup.image
        );
        report(cr, ctx, probing(&waiting, None)).await?;
        return Ok(Step::Wait(PROBE_POLL));
    };
    let pod = job_pod(&ctx.client, ns, &name).await?;
    match job_state(&current, pod.as_ref(), &setup) {
        JobState::Answered(result) => {
            if result.driver_name != cr.spec.driver.name {
                let failure = Failure::NameMismatch {
                    reported: result.driver_name.clone(),
                    expected: cr.spec.driver.name.clone(),
                    image: setup.image.clone(),
                };
                report(
                    cr,
                    ctx,
                    failed(
                        &failure.sentence(ns, pod_name(pod.as_ref())),
                        failure.reason(),
                    ),
                )
                .await?;
                return Ok(Step::Wait(FAILED_RECHECK));
            }
            let stored = probed_status(&setup, &result);
            // Recorded before anything else: a later step failing (an invalid spec)
            // must not send the operator probing again.
            let mut with_caps = cr.status.clone().unwrap_or_default();
            with_caps.capabilities = Some(stored.clone());
            status::write_status(&ctx.client, cr, &with_caps).await?;
            delete_job(&jobs, &name).await?;
            Ok(Step::Render(Box::new(from_probe(cr, env, &result, stored))))
        }
        JobState::Running(None) => {
            let waiting = format!(
                "probe Job {ns}/{name} is asking image {} what it advertises; nothing is applied until it answers",
                setup.image
            );
            report(cr, ctx, probing(&waiting, None)).await?;
            Ok(Step::Wait(PROBE_POLL))
        }
        JobState::Running(Some(failure)) => {
            let sentence = failure.sentence(ns, pod_name(pod.as_ref()));
            let waiting = format!("probe Job {ns}/{name} cannot finish: see Degraded");
            report(
                cr,
                ctx,
                probing(&waiting, Some((&sentence, failure.reason()))),
            )
            .await?;
            Ok(Step::Wait(PROBE_POLL))
        }
        JobState::Failed(failure) => {
            let sentence = failure.sentence(ns, pod_name(pod.as_ref()));
            report(cr, ctx, failed(&sentence, failure.reason())).await?;
            Ok(Step::Wait(FAILED_RECHECK))
        }
    }
}

/// The CR with `status.capabilities` as resolved, for the status writes that follow.
pub fn with_capabilities(cr: &CsiDeployment, resolved: &Resolved) -> CsiDeployment {
    let mut cr = cr.clone();
    cr.status.get_or_insert_default().capabilities = Some(resolved.status.clone());
    cr
}

/// Adds the `CapabilitiesMatch` condition (its transition time kept from `previous`).
pub fn add_agreement(
    status: &mut CsiDeploymentStatus,
    previous: &[Condition],
    resolved: &Resolved,
    generation: Option<i64>,
) {
    if let Some(verdict) = &resolved.agreement {
        status.conditions.extend(merge(
            previous,
            std::slice::from_ref(verdict),
            generation,
            &now(),
        ));
    }
}

fn without_probe(cr: &CsiDeployment, env: &RenderEnv) -> Resolved {
    let (source, advertised) = match &cr.spec.driver.third_party {
        Some(third) => (
            CapabilitySource::Declaration,
            third.capabilities.clone().unwrap_or_default(),
        ),
        None => (CapabilitySource::Builtin, Plan::new(cr, env).capabilities),
    };
    Resolved {
        driver_capabilities: None,
        status: CapabilitiesStatus {
            source,
            image: Some(driver_image(cr)),
            fingerprint: None,
            probed_at: None,
            driver_name: None,
            vendor_version: None,
            advertised,
        },
        agreement: None,
    }
}

fn driver_image(cr: &CsiDeployment) -> String {
    images::driver_image(&cr.spec.images, cr.spec.driver.image.as_deref())
}

fn probed_status(setup: &ProbeSetup, result: &ProbeResult) -> CapabilitiesStatus {
    CapabilitiesStatus {
        source: CapabilitySource::Probe,
        image: Some(setup.image.clone()),
        fingerprint: Some(setup.fingerprint.clone()),
        probed_at: Some(now()),
        driver_name: Some(result.driver_name.clone()),
        vendor_version: Some(result.vendor_version.clone()),
        advertised: result.capabilities.clone(),
    }
}

/// Rendering from a probe: a third-party driver renders the probed capabilities (with
/// the declared lifecycle modes, which CSI cannot report); the built-in driver renders
/// its own features and the probe only cross-checks them.
fn from_probe(
    cr: &CsiDeployment,
    env: &RenderEnv,
    result: &ProbeResult,
    stored: CapabilitiesStatus,
) -> Resolved {
    match &cr.spec.driver.third_party {
        Some(third) => {
            let mut caps = result.capabilities.clone();
            if let Some(declared) = &third.capabilities {
                caps.lifecycle_modes = declared.lifecycle_modes.clone();
            }
            let agreement = third.capabilities.as_ref().map(|declared| {
                agreement(&differences(declared, result), "DeclarationDiffers", |diffs| {
                    format!(
                        "the driver's own answer is what is deployed; {diffs}: correct spec.driver.thirdParty.capabilities or remove it"
                    )
                })
            });
            Resolved {
                driver_capabilities: Some(caps),
                status: stored,
                agreement,
            }
        }
        None => {
            let builtin = Plan::new(cr, env).capabilities;
            let image = stored.image.clone().unwrap_or_default();
            let diffs = differences(&builtin, result)
                .into_iter()
                .map(|d| d.replace("declared", "the built-in driver of this release has"))
                .collect::<Vec<_>>();
            let agreement = agreement(&diffs, "BuiltinDiffers", |diffs| {
                format!(
                    "image {image} differs from the built-in driver of this release, whose features are what is deployed; {diffs}: use an image of this release or unset spec.driver.image"
                )
            });
            Resolved {
                driver_capabilities: None,
                status: stored,
                agreement: Some(agreement),
            }
        }
    }
}

fn agreement(diffs: &[String], reason: &str, message: impl Fn(&str) -> String) -> Verdict {
    if diffs.is_empty() {
        Verdict::new(
            CAPABILITIES_MATCH,
            CondStatus::True,
            "ProbeAgrees",
            "the driver advertises exactly the expected capabilities",
        )
    } else {
        Verdict::new(
            CAPABILITIES_MATCH,
            CondStatus::False,
            reason,
            message(&diffs.join("; ")),
        )
    }
}

/// Every difference between `declared` and what the probe found, one sentence each:
/// "declared controller EXPAND_VOLUME, which the driver does not advertise". Node
/// capabilities only when a node instance was asked; lifecycle modes never (not probed).
pub fn differences(declared: &Capabilities, probed: &ProbeResult) -> Vec<String> {
    let found = &probed.capabilities;
    let mut out = Vec::new();
    compare("plugin", &declared.plugin, &found.plugin, &mut out);
    compare(
        "controller",
        &declared.controller,
        &found.controller,
        &mut out,
    );
    if probed.node_asked {
        compare("node", &declared.node, &found.node, &mut out);
    }
    compare(
        "group controller",
        &declared.group_controller,
        &found.group_controller,
        &mut out,
    );
    out
}

fn compare<T: Ord + Serialize>(
    service: &str,
    declared: &BTreeSet<T>,
    found: &BTreeSet<T>,
    out: &mut Vec<String>,
) {
    let name = |c: &T| {
        serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    for missing in declared.difference(found) {
        out.push(format!(
            "declared {service} {}, which the driver does not advertise",
            name(missing)
        ));
    }
    for extra in found.difference(declared) {
        out.push(format!(
            "the driver advertises {service} {}, which is not declared",
            name(extra)
        ));
    }
}

/// Why a probe did not produce capabilities, as read from its Job and pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    ImagePull {
        container: String,
        image: String,
        reason: String,
        message: String,
    },
    DriverCrashed {
        container: String,
        exit_code: i32,
        reason: String,
        restarts: i32,
    },
    /// The probe container's own answer.
    Probe {
        reason: String,
        message: String,
    },
    DeadlineExceeded {
        job: String,
    },
    NameMismatch {
        reported: String,
        expected: String,
        image: String,
    },
    /// The Job failed and its pod says nothing we understand (or is gone).
    Unexplained {
        job: String,
        message: String,
    },
}

const UNTOUCHED: &str = "nothing of the deployment was applied or changed";

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Self::ImagePull { .. } => "ProbeImagePullFailed",
            Self::DriverCrashed { .. } => "DriverCrashed",
            Self::Probe { reason, .. } => reason,
            Self::DeadlineExceeded { .. } => "ProbeDeadlineExceeded",
            Self::NameMismatch { .. } => "DriverNameMismatch",
            Self::Unexplained { .. } => "ProbeFailed",
        }
    }

    /// The condition message: the cause, the pod to look at, the fix.
    pub fn sentence(&self, ns: &str, pod: Option<&str>) -> String {
        let pod = pod.unwrap_or("(gone)");
        let retry = format!(
            "; {UNTOUCHED}, and the probe runs again when the image or arguments change or after {} minutes",
            TTL_SECONDS_AFTER_FINISHED / 60
        );
        match self {
            Self::ImagePull {
                container,
                image,
                reason,
                message,
            } => format!(
                "probe pod {ns}/{pod} cannot pull image {image} of container {container} ({reason}: {message}): check spec.driver.image and spec.images.pullSecrets; {UNTOUCHED}"
            ),
            Self::DriverCrashed {
                container,
                exit_code,
                reason,
                restarts,
            } => format!(
                "the driver container {container} of probe pod {ns}/{pod} exited with code {exit_code} ({reason}) and was restarted {restarts} times: it does not start with these arguments; see `kubectl -n {ns} logs {pod} -c {container} --previous`; {UNTOUCHED}"
            ),
            Self::Probe { message, .. } => format!("probe pod {ns}/{pod}: {message}{retry}"),
            Self::DeadlineExceeded { job } => format!(
                "probe Job {ns}/{job} did not finish within {} s: see `kubectl -n {ns} describe pod {pod}`{retry}",
                job::ACTIVE_DEADLINE_SECONDS
            ),
            Self::NameMismatch {
                reported,
                expected,
                image,
            } => format!(
                "image {image} reports the driver name {reported} (GetPluginInfo) but spec.driver.name is {expected}: kubelet and the sidecars would not find each other; set spec.driver.name to {reported} in a new CsiDeployment, or give the driver the name {expected} in its arguments; {UNTOUCHED}"
            ),
            Self::Unexplained { job, message } => format!(
                "probe Job {ns}/{job} failed ({message}): see `kubectl -n {ns} describe pod {pod}`{retry}"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum JobState {
    Answered(ProbeResult),
    /// Still running; with what already keeps it from finishing.
    Running(Option<Failure>),
    Failed(Failure),
}

fn job_state(job: &Job, pod: Option<&Pod>, setup: &ProbeSetup) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
            .cloned()
    };
    let answer = pod.and_then(probe_answer);
    if condition("Complete").is_some() || status.succeeded.unwrap_or(0) > 0 {
        return match answer {
            Some(ProbeAnswer::Result(result)) => JobState::Answered(result),
            Some(ProbeAnswer::Error { reason, message }) => {
                JobState::Failed(Failure::Probe { reason, message })
            }
            None => JobState::Failed(unexplained(job, "its pod left no probe answer")),
        };
    }
    if let Some(failed) = condition("Failed") {
        if let Some(ProbeAnswer::Error { reason, message }) = answer {
            return JobState::Failed(Failure::Probe { reason, message });
        }
        if let Some(stuck) = pod.and_then(|p| pod_problem(p, setup)) {
            return JobState::Failed(stuck);
        }
        if failed.reason.as_deref() == Some("DeadlineExceeded") {
            return JobState::Failed(Failure::DeadlineExceeded {
                job: job.name_any(),
            });
        }
        let message = failed.message.or(failed.reason).unwrap_or_default();
        return JobState::Failed(unexplained(job, &message));
    }
    JobState::Running(pod.and_then(|p| pod_problem(p, setup)))
}

fn unexplained(job: &Job, message: &str) -> Failure {
    Failure::Unexplained {
        job: job.name_any(),
        message: message.to_owned(),
    }
}

/// The probe container's answer, once it terminated.
fn probe_answer(pod: &Pod) -> Option<ProbeAnswer> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let probe = statuses.iter().find(|s| s.name == job::PROBE_CONTAINER)?;
    let message = probe
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .as_ref()?;
    serde_json::from_str(message.trim()).ok()
}

/// What keeps a probe pod from answering: an image that cannot be pulled, or a driver
/// container that crashed.
fn pod_problem(pod: &Pod, _setup: &ProbeSetup) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let all: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    for c in &all {
        if let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = waiting.reason.as_deref()
            && matches!(
                reason,
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
            )
        {
            return Some(Failure::ImagePull {
                container: c.name.clone(),
                image: c.image.clone(),
                reason: reason.to_owned(),
                message: waiting.message.clone().unwrap_or_default(),
            });
        }
    }
    for c in all.iter().filter(|c| c.name != job::PROBE_CONTAINER) {
        let terminated = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()));
        if let Some(t) = terminated
            && (t.exit_code != 0 || c.restart_count > 0)
        {
            return Some(Failure::DriverCrashed {
                container: c.name.clone(),
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_else(|| "Error".to_owned()),
                restarts: c.restart_count,
            });
        }
    }
    None
}

fn pod_name(pod: Option<&Pod>) -> Option<&str> {
    pod.and_then(|p| p.metadata.name.as_deref())
}

async fn job_pod(client: &Client, ns: &str, job: &str) -> Result<Option<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job}")))
        .await
        .map_err(Error::api(Verb::List, format!("Pods of Job {ns}/{job}")))?;
    // backoffLimit 0: one pod. The newest, should a retry ever make another.
    Ok(list
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone()))
}

async fn apply_job(
    client: &Client,
    jobs: &Api<Job>,
    cr: &CsiDeployment,
    name: &str,
    body: &Job,
) -> Result<(), Error> {
    let mut body = serde_json::to_value(body).unwrap_or_default();
    body["apiVersion"] = "batch/v1".into();
    body["kind"] = "Job".into();
    let patch = Patch::Apply(&body);
    let key = format!("Job {}/{name}", cr.spec.namespace);
    match jobs.patch(name, &apply_params(), &patch).await {
        Ok(_) => Ok(()),
        Err(err) => match namespace::missing_namespace(&err) {
            Some(missing) => {
                namespace::create(client, &missing, &cr.name_any()).await?;
                jobs.patch(name, &apply_params(), &patch)
                    .await
                    .map(|_| ())
                    .map_err(Error::api(Verb::Apply, key))
            }
            None => Err(Error::api(Verb::Apply, key)(err)),
        },
    }
}

async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<(), Error> {
    // Background: the Job goes at once, the garbage collector takes its pod.
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(Error::api(Verb::Delete, format!("Job {name}"))(err)),
    }
}

/// Conditions while a probe runs: Progressing names the Job; Degraded carries what
/// already keeps it from finishing. Ready is left as it was (a running deployment is
/// still what it was), or says nothing is deployed yet.
fn probing(message: &str, problem: Option<(&str, &str)>) -> Vec<Verdict> {
    let mut out = vec![Verdict::new(
        PROGRESSING,
        CondStatus::True,
        "ProbingDriver",
        message,
    )];
    out.push(match problem {
        Some((sentence, reason)) => Verdict::new(DEGRADED, CondStatus::True, reason, sentence),
        None => Verdict::new(DEGRADED, CondStatus::False, "AsExpected", ""),
    });
    out
}

/// Conditions after a failed probe.
fn failed(sentence: &str, reason: &str) -> Vec<Verdict> {
    vec![
        Verdict::new(
            PROGRESSING,
            CondStatus::False,
            reason,
            "waiting for the probe to be retried; see Degraded",
        ),
        Verdict::new(DEGRADED, CondStatus::True, reason, sentence),
    ]
}

async fn report(cr: &CsiDeployment, ctx: &Context, verdicts: Vec<Verdict>) -> Result<(), Error> {
    let mut status = cr.status.clone().unwrap_or_default();
    let when = now();
    if !status.conditions.iter().any(|c| c.type_ == READY) {
        status.conditions = upsert(
            &status.conditions,
            &Verdict::new(
                READY,
                CondStatus::False,
                "ProbingDriver",
                "nothing is deployed until the driver's capabilities are known; see Progressing",
            ),
            cr.metadata.generation,
            &when,
        );
    }
    for verdict in &verdicts {
        status.conditions = upsert(&status.conditions, verdict, cr.metadata.generation, &when);
    }
    status.observed_generation = cr.metadata.generation;
    status::write_status(&ctx.client, cr, &status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_api::capabilities::{ControllerCapability as C, NodeCapability, PluginCapability};

    fn probed(caps: Capabilities, node_asked: bool) -> ProbeResult {
        ProbeResult {
            driver_name: "hostpath.csi.k8s.io".to_owned(),
            vendor_version: "v1.17.0".to_owned(),
            capabilities: caps,
            node_asked,
        }
    }

    #[test]
    fn every_difference_is_one_sentence_naming_the_capability() {
        let mut declared = Capabilities::default();
        declared.plugin.insert(PluginCapability::ControllerService);
        declared
            .controller
            .extend([C::CreateDeleteVolume, C::ExpandVolume]);
        declared.node.insert(NodeCapability::StageUnstageVolume);
        let mut found = declared.clone();
        found.controller.remove(&C::ExpandVolume);
        found.controller.insert(C::CreateDeleteSnapshot);
        found.node.clear();
        assert_eq!(
            differences(&declared, &probed(found.clone(), true)),
            [
                "declared controller EXPAND_VOLUME, which the driver does not advertise",
                "the driver advertises controller CREATE_DELETE_SNAPSHOT, which is not declared",
                "declared node STAGE_UNSTAGE_VOLUME, which the driver does not advertise",
            ]
        );
        // Without a node instance, node capabilities are not compared.
        assert_eq!(differences(&declared, &probed(found, false)).len(), 2);
        assert!(differences(&declared, &probed(declared.clone(), true)).is_empty());
    }

    #[test]
    fn failure_sentences_name_the_cause_the_pod_and_the_fix() {
        let pull = Failure::ImagePull {
            container: "csi-driver".to_owned(),
            image: "example.com/nope:v1".to_owned(),
            reason: "ErrImagePull".to_owned(),
            message: "manifest unknown".to_owned(),
        };
        assert_eq!(
            pull.sentence("storage", Some("hp-probe-0123456789-x7k2p")),
            "probe pod storage/hp-probe-0123456789-x7k2p cannot pull image example.com/nope:v1 of container csi-driver (ErrImagePull: manifest unknown): check spec.driver.image and spec.images.pullSecrets; nothing of the deployment was applied or changed"
        );
        let crashed = Failure::DriverCrashed {
            container: "csi-driver".to_owned(),
            exit_code: 2,
            reason: "Error".to_owned(),
            restarts: 3,
        };
        assert_eq!(
            crashed.sentence("storage", Some("p")),
            "the driver container csi-driver of probe pod storage/p exited with code 2 (Error) and was restarted 3 times: it does not start with these arguments; see `kubectl -n storage logs p -c csi-driver --previous`; nothing of the deployment was applied or changed"
        );
        let deadline = Failure::DeadlineExceeded {
            job: "hp-probe-0123456789".to_owned(),
        };
        assert_eq!(
            deadline.sentence("storage", Some("p")),
            "probe Job storage/hp-probe-0123456789 did not finish within 180 s: see `kubectl -n storage describe pod p`; nothing of the deployment was applied or changed, and the probe runs again when the image or arguments change or after 10 minutes"
        );
        let name = Failure::NameMismatch {
            reported: "hostpath.csi.k8s.io".to_owned(),
            expected: "hp.example.com".to_owned(),
            image: "hostpathplugin:v1".to_owned(),
        };
        assert_eq!(
            name.sentence("storage", None),
            "image hostpathplugin:v1 reports the driver name hostpath.csi.k8s.io (GetPluginInfo) but spec.driver.name is hp.example.com: kubelet and the sidecars would not find each other; set spec.driver.name to hostpath.csi.k8s.io in a new CsiDeployment, or give the driver the name hp.example.com in its arguments; nothing of the deployment was applied or changed"
        );
        assert_eq!(name.reason(), "DriverNameMismatch");
    }
}
