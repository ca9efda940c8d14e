//! The reconciler's view of managed objects: desired bodies ready to apply, and the
//! little it keeps of live objects (identity and version, never their content).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DynamicObject};
use serde_json::Value;

use super::fingerprint::ObjectKey;
use crate::render::{ManagedKind, ManagedObject};

/// What the reconciler needs from a [`ManagedKind`] beyond what render defines.
pub trait KindExt: Copy {
    /// Kinds with a status subresource bump `metadata.generation` on spec changes only;
    /// their resourceVersion also moves on every status update, which must not count as
    /// drift. Kinds without status keep generation at 0 and move resourceVersion on any
    /// change.
    fn tracks_generation(self) -> bool;
    /// A dynamic API handle; cluster-wide when `namespace` is `None`.
    fn api(self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject>;
    fn key(self, namespace: Option<&str>, name: &str) -> ObjectKey;
    /// The version of a live object that tells our own last write apart from anyone
    /// else's later change.
    fn live_version(self, meta: &ObjectMeta) -> String;
}

impl KindExt for ManagedKind {
    fn tracks_generation(self) -> bool {
        matches!(
            self,
            Self::StatefulSet
                | Self::DaemonSet
                | Self::PodDisruptionBudget
                | Self::ValidatingAdmissionPolicy
        )
    }

    fn api(self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = self.api_resource();
        match namespace {
            Some(ns) if self.namespaced() => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        }
    }

    fn key(self, namespace: Option<&str>, name: &str) -> ObjectKey {
        let resource = self.api_resource();
        ObjectKey {
            group: resource.group,
            kind: resource.kind,
            namespace: namespace.filter(|_| self.namespaced()).map(str::to_owned),
            name: name.to_owned(),
        }
    }

    fn live_version(self, meta: &ObjectMeta) -> String {
        if self.tracks_generation() {
            format!("g{}", meta.generation.unwrap_or_default())
        } else {
            format!("rv{}", meta.resource_version.as_deref().unwrap_or_default())
        }
    }
}

/// One object the CR should produce, ready for server-side apply.
#[derive(Clone, Debug)]
pub struct Desired {
    pub kind: ManagedKind,
    pub key: ObjectKey,
    /// Full object with apiVersion, kind and metadata: the apply body.
    pub body: Value,
}

impl From<&ManagedObject> for Desired {
    fn from(obj: &ManagedObject) -> Self {
        let kind = obj.kind();
        Self {
            kind,
            key: kind.key(obj.namespace(), obj.name()),
            body: obj.to_apply_json(),
        }
    }
}

/// One object found in the cluster carrying the CR's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveObject {
    pub kind: ManagedKind,
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub version: String,
}
