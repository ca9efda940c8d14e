//! CSI operation secrets: StorageClass and VolumeSnapshotClass parameters naming the
//! Secret a CSI call carries (`csi.storage.k8s.io/provisioner-secret-name` and
//! `-namespace`, ...), and who reads each.
//!
//! A sidecar reads its operation's Secret itself, so its ServiceAccount needs `get` on it;
//! the node operations' Secrets (node-stage, node-publish, node-expand) are read by kubelet,
//! which node authorization already allows to read the Secrets of the pods' volumes on its
//! node: they need no RBAC at all.
//!
//! How narrow the grant is follows from the parameters: a literal namespace gives a
//! RoleBinding in that namespace, a templated one (`${pvc.namespace}`, ...) can name any
//! namespace, so a ClusterRoleBinding. Both bind the shipped ClusterRole
//! [`OPERATION_SECRET_READER`] (`get` on Secrets), which the operator may only *bind*:
//! RBAC escalation prevention would otherwise require the operator to read every Secret
//! itself before it could grant reading one, and a Role with `resourceNames` would need
//! exactly that. A literal name cannot narrow a binding to one Secret for the same reason.

use std::collections::{BTreeMap, BTreeSet};

use plinth_api::capabilities::Sidecar;

/// The ClusterRole (shipped in config/rbac and the bundle) granting `get` on Secrets; the
/// operator holds `bind` on it and nothing else about Secrets.
pub const OPERATION_SECRET_READER: &str = "plinth-operation-secret-reader";

/// The parameters' common prefix.
const PREFIX: &str = "csi.storage.k8s.io/";

/// Who reads one kind of operation secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A sidecar, with its ServiceAccount's token.
    Sidecar(Sidecar),
    /// kubelet, through node authorization: no RBAC is rendered for it.
    Kubelet,
}

/// One kind of operation secret: its parameter stem and its reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretKind {
    /// `provisioner-secret`, `node-stage-secret`, ...
    pub stem: &'static str,
    pub reader: Reader,
}

impl SecretKind {
    /// `csi.storage.k8s.io/<stem>-`: append `name` or `namespace`.
    pub fn prefix(self) -> String {
        format!("{PREFIX}{}-", self.stem)
    }
}

pub const PROVISIONER: SecretKind = SecretKind {
    stem: "provisioner-secret",
    reader: Reader::Sidecar(Sidecar::Provisioner),
};
pub const CONTROLLER_PUBLISH: SecretKind = SecretKind {
    stem: "controller-publish-secret",
    reader: Reader::Sidecar(Sidecar::Attacher),
};
pub const CONTROLLER_EXPAND: SecretKind = SecretKind {
    stem: "controller-expand-secret",
    reader: Reader::Sidecar(Sidecar::Resizer),
};
pub const NODE_STAGE: SecretKind = SecretKind {
    stem: "node-stage-secret",
    reader: Reader::Kubelet,
};
pub const NODE_PUBLISH: SecretKind = SecretKind {
    stem: "node-publish-secret",
    reader: Reader::Kubelet,
};
pub const NODE_EXPAND: SecretKind = SecretKind {
    stem: "node-expand-secret",
    reader: Reader::Kubelet,
};
pub const SNAPSHOTTER: SecretKind = SecretKind {
    stem: "snapshotter-secret",
    reader: Reader::Sidecar(Sidecar::Snapshotter),
};
pub const SNAPSHOTTER_LIST: SecretKind = SecretKind {
    stem: "snapshotter-list-secret",
    reader: Reader::Sidecar(Sidecar::Snapshotter),
};

/// The operation secrets a StorageClass may name.
pub const STORAGE_CLASS_KINDS: &[SecretKind] = &[
    PROVISIONER,
    CONTROLLER_PUBLISH,
    CONTROLLER_EXPAND,
    NODE_STAGE,
    NODE_PUBLISH,
    NODE_EXPAND,
];

/// The operation secrets a VolumeSnapshotClass may name.
pub const SNAPSHOT_CLASS_KINDS: &[SecretKind] = &[SNAPSHOTTER, SNAPSHOTTER_LIST];

/// One operation secret a class's parameters name (either half may be missing: validation
/// says so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef<'a> {
    pub kind: SecretKind,
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
}

/// The operation secrets `parameters` name, among `kinds`.
pub fn secret_refs<'a>(
    parameters: &'a BTreeMap<String, String>,
    kinds: &[SecretKind],
) -> Vec<SecretRef<'a>> {
    kinds
        .iter()
        .filter_map(|&kind| {
            let prefix = kind.prefix();
            let name = parameters.get(&format!("{prefix}name")).map(String::as_str);
            let namespace = parameters
                .get(&format!("{prefix}namespace"))
                .map(String::as_str);
            (name.is_some() || namespace.is_some()).then_some(SecretRef {
                kind,
                name,
                namespace,
            })
        })
        .collect()
}

/// Whether a parameter value is a template the sidecar fills in per object.
pub fn is_templated(value: &str) -> bool {
    value.contains("${")
}

/// Where a sidecar ServiceAccount must be able to read Secrets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretScope {
    /// Any namespace: a templated namespace.
    Cluster,
    /// One namespace, named literally.
    Namespace(String),
}

/// The scopes the deployed sidecars need to read the Secrets that `refs` name. A reader
/// that is not deployed (a controller-expand secret without a resizer) needs nothing;
/// kubelet's reads need no RBAC. With a templated namespace anywhere, the cluster-wide
/// grant alone: it covers every literal one.
pub fn scopes<'a>(
    refs: impl IntoIterator<Item = SecretRef<'a>>,
    deployed: impl Fn(Sidecar) -> bool,
) -> BTreeSet<SecretScope> {
    let mut out = BTreeSet::new();
    for r in refs {
        let Reader::Sidecar(sidecar) = r.kind.reader else {
            continue;
        };
        let Some(namespace) = r.namespace else {
            continue;
        };
        if !deployed(sidecar) {
            continue;
        }
        out.insert(if is_templated(namespace) {
            SecretScope::Cluster
        } else {
            SecretScope::Namespace(namespace.to_owned())
        });
    }
    if out.contains(&SecretScope::Cluster) {
        return BTreeSet::from([SecretScope::Cluster]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn literal_namespaces_stay_namespaced_and_a_template_widens_to_the_cluster() {
        let literal = params(&[
            ("csi.storage.k8s.io/provisioner-secret-name", "creds"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "storage"),
            ("csi.storage.k8s.io/node-stage-secret-name", "${pvc.name}"),
            (
                "csi.storage.k8s.io/node-stage-secret-namespace",
                "${pvc.namespace}",
            ),
        ]);
        let refs = secret_refs(&literal, STORAGE_CLASS_KINDS);
        assert_eq!(refs.len(), 2);
        assert_eq!(
            scopes(refs, |_| true),
            BTreeSet::from([SecretScope::Namespace("storage".to_owned())]),
            "kubelet's node-stage read needs no grant"
        );
        let templated = params(&[
            ("csi.storage.k8s.io/provisioner-secret-name", "creds"),
            (
                "csi.storage.k8s.io/provisioner-secret-namespace",
                "${pvc.namespace}",
            ),
            ("csi.storage.k8s.io/controller-expand-secret-name", "x"),
            (
                "csi.storage.k8s.io/controller-expand-secret-namespace",
                "storage",
            ),
        ]);
        assert_eq!(
            scopes(secret_refs(&templated, STORAGE_CLASS_KINDS), |_| true),
            BTreeSet::from([SecretScope::Cluster])
        );
        // Without a resizer the controller-expand secret grants nothing.
        let expand_only = params(&[
            ("csi.storage.k8s.io/controller-expand-secret-name", "x"),
            (
                "csi.storage.k8s.io/controller-expand-secret-namespace",
                "storage",
            ),
        ]);
        assert!(
            scopes(secret_refs(&expand_only, STORAGE_CLASS_KINDS), |s| s
                != Sidecar::Resizer)
            .is_empty()
        );
    }
}
