//! What can go wrong in a reconcile, and what each failure means for the retry.

use std::time::Duration;

/// The API operation that failed, for messages and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Apply,
    Create,
    Delete,
    List,
    Get,
    PatchStatus,
    PatchFinalizer,
    Discover,
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Apply => "apply",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Get => "get",
            Self::PatchStatus => "patch the status of",
            Self::PatchFinalizer => "patch the finalizer of",
            Self::Discover => "discover",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be deployed as written. Waits for the user to change it.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// Another, older CsiDeployment already deploys this driver name.
    #[error("driver name {driver} is already deployed by CsiDeployment {holder}")]
    DriverNameConflict { driver: String, holder: String },

    /// Another, older CsiDeployment keeps its pool in this one's pool directory.
    #[error("pool directory {pool} is already used by CsiDeployment {holder}")]
    PoolPathConflict { pool: String, holder: String },

    /// Objects the CR would create exist and belong to someone else: they were left
    /// alone (the message says which and to whom, and what to change).
    #[error("{0}")]
    NotOwned(String),

    /// An API request failed; usually transient (apiserver restart, throttling, conflict).
    /// Said with the server's own sentence, never a dump of the client's error types.
    #[error("cannot {verb} {target}: {}", human(source))]
    Api {
        verb: Verb,
        target: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub fn api(verb: Verb, target: impl std::fmt::Display) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Api {
            verb,
            target: target.to_string(),
            source,
        }
    }

    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::DriverNameConflict { .. } => "driver_name_conflict",
            Self::PoolPathConflict { .. } => "pool_path_conflict",
            Self::NotOwned(_) => "not_owned",
            Self::Api { .. } => "api",
        }
    }

    /// The `reason` of the Degraded condition a failed apply leaves.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Self::NotOwned(_) => "NotOwned",
            _ => "ApplyFailed",
        }
    }

    /// How long to wait before trying again; `None` means only a change to the CR (or
    /// one of its objects) should trigger the next attempt. `failures` counts consecutive
    /// failures of this CR, for exponential backoff.
    pub fn retry_after(&self, failures: u32) -> Option<Duration> {
        match self {
            Self::InvalidSpec(_) => None,
            // Resolves when the other CR goes away or changes its driver name; its
            // deletion does not trigger this CR, so look again now and then.
            Self::DriverNameConflict { .. } | Self::PoolPathConflict { .. } => {
                Some(Duration::from_secs(60))
            }
            // Resolves when the other object goes, which does not trigger this CR (it is
            // not ours to watch).
            Self::NotOwned(_) => Some(Duration::from_secs(60)),
            Self::Api { .. } => Some(backoff(failures)),
        }
    }
}

/// What a user reads of an API failure: the API server's message (it names the object
/// and the cause) and, for a refusal, who refused; other failures by their own text.
pub fn human(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if status.code == 403 => {
            format!("{} (the operator's RBAC does not allow it)", status.message)
        }
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// 1 s, 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    const CAP: Duration = Duration::from_secs(300);
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(CAP)
}

/// The API server refused a change to a field that cannot change after creation.
///
/// We ask the server rather than keep our own list of immutable fields: which fields are
/// immutable differs between Kubernetes versions (several CSIDriver fields became mutable
/// over time), and the server's 422 is the authority. Messages seen: "field is immutable"
/// (CSIDriver, DaemonSet selector, StorageClass volumeBindingMode), "updates to parameters
/// are forbidden" (StorageClass), "updates to statefulset spec for fields other than ...
/// are forbidden" (StatefulSet).
pub fn is_immutable_rejection(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) if status.code == 422 => {
            let msg = status.message.to_ascii_lowercase();
            msg.contains("field is immutable")
                || (msg.contains("updates to") && msg.contains("forbidden"))
        }
        _ => false,
    }
}

pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// 409 on a delete with a uid precondition: the object was already replaced by someone.
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_err(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, "Invalid").with_code(code).boxed())
    }

    #[test]
    fn immutable_rejections_are_recognised_in_their_several_wordings() {
        assert!(is_immutable_rejection(&api_err(
            422,
            r#"CSIDriver.storage.k8s.io "x" is invalid: spec.attachRequired: Invalid value: false: field is immutable"#
        )));
        assert!(is_immutable_rejection(&api_err(
            422,
            r#"StorageClass.storage.k8s.io "x" is invalid: parameters: Forbidden: updates to parameters are forbidden."#
        )));
        assert!(is_immutable_rejection(&api_err(
            422,
            "spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden"
        )));
        assert!(!is_immutable_rejection(&api_err(
            422,
            "spec.template.spec.containers[0].image: Required value"
        )));
        assert!(!is_immutable_rejection(&api_err(409, "field is immutable")));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(300));
        assert_eq!(Error::InvalidSpec("x".into()).retry_after(3), None);
    }
}
