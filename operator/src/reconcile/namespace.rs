//! The workload namespace: created when a namespaced apply finds it missing, labelled as
//! Plinth's; never deleted (by then it may hold what others put there).
//!
//! Creating it only on the server's "namespace not found" costs the usual reconcile
//! nothing, and a CR applied before its namespace (the first real cluster did exactly
//! that) deploys at once instead of waiting out a backoff for a namespace nobody watches.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, Error as KubeError};
use tracing::info;

use super::error::{Error, Verb};
use crate::labels::{MANAGED_BY, PART_OF};

/// Label naming the CsiDeployment that created a namespace.
pub const CREATED_FOR: &str = "plinth.dev/created-for";

/// The namespace an apply was refused for because it does not exist, if that is why.
pub fn missing_namespace(err: &KubeError) -> Option<String> {
    let KubeError::Api(status) = err else {
        return None;
    };
    if status.code != 404 {
        return None;
    }
    // `namespaces "plinth-system" not found`
    let rest = status.message.strip_prefix("namespaces \"")?;
    let (name, tail) = rest.split_once('"')?;
    (tail.trim() == "not found").then(|| name.to_owned())
}

/// Create `name`, labelled for `cr_name`. Someone creating it meanwhile is fine.
pub async fn create(client: &Client, name: &str, cr_name: &str) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.to_owned());
    namespace.metadata.labels = Some(
        [
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (PART_OF.0.to_owned(), PART_OF.1.to_owned()),
            (CREATED_FOR.to_owned(), cr_name.to_owned()),
        ]
        .into(),
    );
    match api.create(&PostParams::default(), &namespace).await {
        Ok(_) => {
            info!(namespace = name, "created the workload namespace");
            Ok(())
        }
        Err(KubeError::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(Error::api(Verb::Create, format!("Namespace/{name}"))(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn only_a_missing_namespace_is_recognised() {
        let err = |code: u16, message: &str| {
            KubeError::Api(Status::failure(message, "NotFound").with_code(code).boxed())
        };
        assert_eq!(
            missing_namespace(&err(404, "namespaces \"plinth-system\" not found")).as_deref(),
            Some("plinth-system")
        );
        assert_eq!(
            missing_namespace(&err(404, "serviceaccounts \"x\" not found")),
            None
        );
        assert_eq!(
            missing_namespace(&err(403, "namespaces \"x\" not found")),
            None
        );
    }
}
