//! The objects the operator manages, as one typed enum, and their kinds.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `snapshot.storage.k8s.io/v1` VolumeSnapshotClass. Not in k8s-openapi (it comes with the
/// external-snapshotter CRDs), so typed here with exactly the fields that CRD defines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub driver: String,
    /// `Delete` or `Retain`.
    pub deletion_policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<std::collections::BTreeMap<String, String>>,
}

impl VolumeSnapshotClass {
    pub const API_VERSION: &'static str = "snapshot.storage.k8s.io/v1";
    pub const KIND: &'static str = "VolumeSnapshotClass";
}

impl Resource for VolumeSnapshotClass {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        Self::KIND.into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "snapshot.storage.k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "volumesnapshotclasses".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every kind the operator creates. Order: the order objects are applied in (identities and
/// permissions before the workloads that use them; classes last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ManagedKind {
    CsiDriver,
    ServiceAccount,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
    StatefulSet,
    DaemonSet,
    PodDisruptionBudget,
    StorageClass,
    VolumeSnapshotClass,
}

impl ManagedKind {
    pub const ALL: &'static [ManagedKind] = &[
        Self::CsiDriver,
        Self::ServiceAccount,
        Self::ClusterRole,
        Self::ClusterRoleBinding,
        Self::Role,
        Self::RoleBinding,
        Self::ValidatingAdmissionPolicy,
        Self::ValidatingAdmissionPolicyBinding,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::PodDisruptionBudget,
        Self::StorageClass,
        Self::VolumeSnapshotClass,
    ];

    /// Group, version, kind and plural, for `kube::Api<DynamicObject>`.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Self::CsiDriver => ApiResource::erase::<CSIDriver>(&()),
            Self::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
            Self::ClusterRole => ApiResource::erase::<ClusterRole>(&()),
            Self::ClusterRoleBinding => ApiResource::erase::<ClusterRoleBinding>(&()),
            Self::Role => ApiResource::erase::<Role>(&()),
            Self::RoleBinding => ApiResource::erase::<RoleBinding>(&()),
            Self::ValidatingAdmissionPolicy => ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
            Self::ValidatingAdmissionPolicyBinding => {
                ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&())
            }
            Self::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Self::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
            Self::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            Self::StorageClass => ApiResource::erase::<StorageClass>(&()),
            Self::VolumeSnapshotClass => ApiResource::erase::<VolumeSnapshotClass>(&()),
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Self::ServiceAccount
                | Self::Role
                | Self::RoleBinding
                | Self::StatefulSet
                | Self::DaemonSet
                | Self::PodDisruptionBudget
        )
    }

    /// Whether the kind exists only when optional CRDs are installed (the reconciler
    /// must not fail listing it when they are not).
    pub fn needs_optional_crd(self) -> bool {
        matches!(self, Self::VolumeSnapshotClass)
    }
}

/// One rendered object, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum ManagedObject {
    CsiDriver(CSIDriver),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ValidatingAdmissionPolicy(ValidatingAdmissionPolicy),
    ValidatingAdmissionPolicyBinding(ValidatingAdmissionPolicyBinding),
    StatefulSet(StatefulSet),
    DaemonSet(DaemonSet),
    PodDisruptionBudget(PodDisruptionBudget),
    StorageClass(StorageClass),
    VolumeSnapshotClass(VolumeSnapshotClass),
}

/// Apply `$body` to the inner object whatever the variant.
macro_rules! each {
    ($obj:expr, $inner:ident => $body:expr) => {
        match $obj {
            ManagedObject::CsiDriver($inner) => $body,
            ManagedObject::ServiceAccount($inner) => $body,
            ManagedObject::ClusterRole($inner) => $body,
            ManagedObject::ClusterRoleBinding($inner) => $body,
            ManagedObject::Role($inner) => $body,
            ManagedObject::RoleBinding($inner) => $body,
            ManagedObject::ValidatingAdmissionPolicy($inner) => $body,
            ManagedObject::ValidatingAdmissionPolicyBinding($inner) => $body,
            ManagedObject::StatefulSet($inner) => $body,
            ManagedObject::DaemonSet($inner) => $body,
            ManagedObject::PodDisruptionBudget($inner) => $body,
            ManagedObject::StorageClass($inner) => $body,
            ManagedObject::VolumeSnapshotClass($inner) => $body,
        }
    };
}

impl ManagedObject {
    pub fn kind(&self) -> ManagedKind {
        match self {
            Self::CsiDriver(_) => ManagedKind::CsiDriver,
            Self::ServiceAccount(_) => ManagedKind::ServiceAccount,
            Self::ClusterRole(_) => ManagedKind::ClusterRole,
            Self::ClusterRoleBinding(_) => ManagedKind::ClusterRoleBinding,
            Self::Role(_) => ManagedKind::Role,
            Self::RoleBinding(_) => ManagedKind::RoleBinding,
            Self::ValidatingAdmissionPolicy(_) => ManagedKind::ValidatingAdmissionPolicy,
            Self::ValidatingAdmissionPolicyBinding(_) => {
                ManagedKind::ValidatingAdmissionPolicyBinding
            }
            Self::StatefulSet(_) => ManagedKind::StatefulSet,
            Self::DaemonSet(_) => ManagedKind::DaemonSet,
            Self::PodDisruptionBudget(_) => ManagedKind::PodDisruptionBudget,
            Self::StorageClass(_) => ManagedKind::StorageClass,
            Self::VolumeSnapshotClass(_) => ManagedKind::VolumeSnapshotClass,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, o => o.meta())
    }

    /// The object's name (render always sets one).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// The full object with apiVersion and kind: a server-side apply body.
    pub fn to_apply_json(&self) -> Value {
        // Serialising these plain data types cannot fail (string keys, no custom impls
        // that error); Null would only mean a bug the golden tests catch at once.
        each!(self, o => serde_json::to_value(o).unwrap_or(Value::Null))
    }
}
