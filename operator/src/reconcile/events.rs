//! Kubernetes Events on the CsiDeployment for what a user should see in
//! `kubectl describe csid`: what was applied, pruned or replaced, and refusals.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::Context;
use super::fingerprint::ObjectKey;
use crate::crd::CsiDeployment;

/// Events stay short: the API caps notes at 1 kB, and a list of every object is noise.
const MAX_LISTED: usize = 8;

pub enum Note<'a> {
    Applied(&'a [String]),
    Pruned(&'a [String]),
    Replaced(&'a ObjectKey),
    Blocked {
        reason: &'a str,
        message: &'a str,
    },
    DeletionRefused(&'a str),
    CleanedUp(usize),
    /// Sidecars that came and went (`pod/container`), with the status saying why.
    SidecarsChanged {
        added: &'a [String],
        removed: &'a [String],
    },
}

fn listing(objects: &[String]) -> String {
    let mut out = objects
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if objects.len() > MAX_LISTED {
        out.push_str(&format!(" and {} more", objects.len() - MAX_LISTED));
    }
    out
}

impl Note<'_> {
    fn event(&self) -> Event {
        let (type_, reason, action, note) = match self {
            Self::Applied(objs) => (
                EventType::Normal,
                "Applied",
                "Apply",
                format!("applied {} objects: {}", objs.len(), listing(objs)),
            ),
            Self::Pruned(objs) => (
                EventType::Normal,
                "Pruned",
                "Delete",
                format!(
                    "deleted {} objects no longer needed: {}",
                    objs.len(),
                    listing(objs)
                ),
            ),
            Self::Replaced(key) => (
                EventType::Normal,
                "Replaced",
                "Replace",
                format!("re-created {key}: a field that cannot be updated in place changed"),
            ),
            Self::Blocked { reason, message } => (
                EventType::Warning,
                *reason,
                "Reconcile",
                (*message).to_owned(),
            ),
            Self::SidecarsChanged { added, removed } => {
                let mut parts = Vec::new();
                if !added.is_empty() {
                    parts.push(format!("added {}", listing(added)));
                }
                if !removed.is_empty() {
                    parts.push(format!("removed {}", listing(removed)));
                }
                (
                    EventType::Normal,
                    "SidecarsChanged",
                    "Reconcile",
                    format!("{}; status.sidecars says why", parts.join("; ")),
                )
            }
            Self::DeletionRefused(message) => (
                EventType::Warning,
                "DeletionRefused",
                "Delete",
                (*message).to_owned(),
            ),
            Self::CleanedUp(n) => (
                EventType::Normal,
                "CleanedUp",
                "Delete",
                format!("deleted the {n} objects of this deployment"),
            ),
        };
        Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note)),
            action: action.to_owned(),
            secondary: None,
        }
    }
}

fn truncate(mut s: String) -> String {
    const LIMIT: usize = 1000;
    if s.len() > LIMIT {
        let mut cut = LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Publishes an event; a failure is logged, never fails the reconcile (events are
/// best-effort by design).
pub async fn publish(ctx: &Context, cr: &CsiDeployment, note: Note<'_>) {
    let reference = cr.object_ref(&());
    if let Err(err) = ctx.recorder.publish(&note.event(), &reference).await {
        warn!(error = %err, "could not publish an event");
    }
}
