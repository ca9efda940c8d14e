//! `plinth-operator generate`: the install artifacts, from code.
//!
//! config/ (kustomize: CRD, RBAC, manager, samples, default) and bundle/ (OLM registry+v1)
//! are produced here from the same types, RBAC rules, image defaults and fixtures the
//! operator uses, then committed. `generate --check` (and the `generated_drift` test)
//! fails when the committed copies differ, so they cannot fall out of step with the code.
//! Everything under config/ and bundle/ is generated: files found there that the generator
//! does not produce are reported as stale (and removed by a writing run).

pub mod bundle;
mod cli;
pub mod manager;
pub mod policy;
pub mod rbac;
pub mod samples;
mod yaml;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use plinth_api::cluster::crd::{PoolNode, PoolSnapshot, PoolVolume};
use serde::Serialize;

use crate::crd::CsiDeployment;

pub use cli::{GenerateArgs, run};
pub use yaml::HEADER;

/// Name of the operator's Deployment, ServiceAccount and ClusterRole.
pub const OPERATOR_NAME: &str = "plinth-operator";
/// Namespace of a kustomize install (OLM installs into the namespace the user picks).
pub const NAMESPACE: &str = "plinth-system";
pub const SERVICE_ACCOUNT: &str = "plinth-operator";
/// The operation-secret reader ClusterRole's file, the same in config/rbac and
/// bundle/manifests.
pub const OPERATION_SECRET_READER_FILE: &str = "operation_secret_reader_role.yaml";
/// The CRD's file name, the same in config/crd/bases and bundle/manifests.
pub const CRD_FILE: &str = "plinth.dev_csideployments.yaml";
/// The CRDs of the built-in driver: its controller and node plugins hand volume work to
/// each other through them. Internal objects (users manage PVCs and VolumeSnapshots), but
/// installed with the operator, since a built-in driver cannot run without them.
pub fn driver_crds() -> Vec<CustomResourceDefinition> {
    vec![PoolVolume::crd(), PoolSnapshot::crd(), PoolNode::crd()]
}

/// A CRD's file name (kubebuilder's `<group>_<plural>.yaml`), the same in
/// config/crd/bases and bundle/manifests.
pub fn crd_file(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// Directories whose whole content is generated.
pub const GENERATED_DIRS: &[&str] = &["config", "bundle"];

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot serialize {what} to YAML")]
    Yaml {
        what: String,
        #[source]
        source: serde_saphyr::SerializeError,
    },
    #[error("cannot serialize to JSON")]
    Json(#[source] serde_json::Error),
    #[error("fixture operator/tests/fixtures/{fixture} is not a valid CsiDeployment")]
    Sample {
        fixture: &'static str,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("the CRD schema has no field {0} (named by a CSV descriptor in generate/bundle.rs)")]
    SchemaPath(String),
    #[error("the ClusterServiceVersion template does not parse")]
    TemplateSyntax(#[source] Box<handlebars::TemplateError>),
    #[error("cannot render the ClusterServiceVersion template")]
    Template(#[source] Box<handlebars::RenderError>),
    #[error(
        "{0} generated file(s) differ from the code: run `cargo run -p plinth-operator -- generate` and commit the result"
    )]
    Drift(usize),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One generated file: its path relative to the repository root, and its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub path: String,
    pub contents: String,
}

/// How a committed tree differs from what the code generates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    Missing(String),
    Differs(String),
    /// Present under a generated directory but not generated.
    Stale(String),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(p) => write!(f, "missing: {p}"),
            Self::Differs(p) => write!(f, "differs: {p}"),
            Self::Stale(p) => write!(f, "stale (not generated): {p}"),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization<'a> {
    api_version: &'static str,
    kind: &'static str,
    resources: &'a [&'a str],
}

fn kustomization(resources: &[&str]) -> Result<String, GenerateError> {
    yaml::document(
        "a kustomization",
        &Kustomization {
            api_version: "kustomize.config.k8s.io/v1beta1",
            kind: "Kustomization",
            resources,
        },
    )
}

/// Collects files, each kustomize directory listing its resources in the order added.
#[derive(Default)]
struct Tree {
    files: Vec<Artifact>,
}

impl Tree {
    fn add(&mut self, path: impl Into<String>, contents: String) {
        self.files.push(Artifact {
            path: path.into(),
            contents,
        });
    }

    /// Add `dir/<name>` for each entry, plus `dir/kustomization.yaml` listing them.
    fn kustomize_dir(
        &mut self,
        dir: &str,
        entries: Vec<(&str, String)>,
    ) -> Result<(), GenerateError> {
        let names: Vec<&str> = entries.iter().map(|(name, _)| *name).collect();
        let listing = kustomization(&names)?;
        for (name, contents) in entries {
            self.add(format!("{dir}/{name}"), contents);
        }
        self.add(format!("{dir}/kustomization.yaml"), listing);
        Ok(())
    }
}

/// Every generated file, in memory. Pure: the same code always yields the same bytes.
pub fn artifacts() -> Result<Vec<Artifact>, GenerateError> {
    let operator_crd = CsiDeployment::crd();
    let driver_crds = driver_crds();
    let crd_objects: Vec<&CustomResourceDefinition> =
        std::iter::once(&operator_crd).chain(&driver_crds).collect();
    let crd_files = crd_objects
        .iter()
        .map(|crd| {
            let what = format!("the {} CRD", crd.spec.names.kind);
            Ok((crd_file(crd), yaml::document(&what, crd)?))
        })
        .collect::<Result<Vec<_>, GenerateError>>()?;
    let mut tree = Tree::default();

    let crd_entries: Vec<(String, String)> = crd_files
        .iter()
        .map(|(file, text)| (format!("bases/{file}"), text.clone()))
        .collect();
    tree.kustomize_dir(
        "config/crd",
        crd_entries
            .iter()
            .map(|(path, text)| (path.as_str(), text.clone()))
            .collect(),
    )?;
    tree.kustomize_dir(
        "config/rbac",
        vec![
            (
                "service_account.yaml",
                yaml::document("the ServiceAccount", &rbac::service_account())?,
            ),
            (
                "role.yaml",
                yaml::document("the ClusterRole", &rbac::cluster_role())?,
            ),
            (
                "role_binding.yaml",
                yaml::document("the ClusterRoleBinding", &rbac::cluster_role_binding())?,
            ),
            (
                "leader_election_role.yaml",
                yaml::document("the leader-election Role", &rbac::leader_election_role())?,
            ),
            (
                "leader_election_role_binding.yaml",
                yaml::document(
                    "the leader-election RoleBinding",
                    &rbac::leader_election_role_binding(),
                )?,
            ),
            (
                OPERATION_SECRET_READER_FILE,
                yaml::document(
                    "the operation-secret reader ClusterRole",
                    &rbac::operation_secret_reader(),
                )?,
            ),
        ],
    )?;
    tree.kustomize_dir(
        "config/manager",
        vec![
            (
                "namespace.yaml",
                yaml::document("the Namespace", &manager::namespace())?,
            ),
            (
                "manager.yaml",
                yaml::document("the Deployment", &manager::deployment())?,
            ),
            (
                "metrics_service.yaml",
                yaml::document("the metrics Service", &manager::metrics_service())?,
            ),
        ],
    )?;
    tree.kustomize_dir(
        "config/samples",
        samples::SAMPLES
            .iter()
            .map(|s| (s.file, s.yaml.to_owned()))
            .collect(),
    )?;
    // Samples stay out of default: installing the operator must not deploy a driver.
    tree.add(
        "config/default/kustomization.yaml",
        kustomization(&["../crd", "../rbac", "../manager"])?,
    );

    tree.add(
        format!("bundle/manifests/{}", bundle::CSV_FILE),
        bundle::csv(&operator_crd, &driver_crds)?,
    );
    for (file, text) in crd_files {
        tree.add(format!("bundle/manifests/{file}"), text);
    }
    // OLM installs ClusterRoles shipped in the bundle as they are: the CSV's
    // clusterPermissions hold `bind` on this one.
    tree.add(
        format!("bundle/manifests/{OPERATION_SECRET_READER_FILE}"),
        yaml::document(
            "the operation-secret reader ClusterRole",
            &rbac::operation_secret_reader(),
        )?,
    );
    tree.add(
        "bundle/metadata/annotations.yaml",
        bundle::annotations_yaml()?,
    );
    tree.add("bundle/bundle.Dockerfile", bundle::dockerfile());
    Ok(tree.files)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GenerateError {
    let path = path.to_owned();
    move |source| GenerateError::Io {
        action,
        path,
        source,
    }
}

/// Files under the generated directories of `root`, relative to it, `/`-separated.
fn existing_files(root: &Path) -> Result<BTreeSet<String>, GenerateError> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<(), GenerateError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("list", dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_error("list", dir))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    for dir in GENERATED_DIRS {
        walk(root, &root.join(dir), &mut out)?;
    }
    Ok(out)
}

/// How the tree at `root` differs from `artifacts`; empty when it is up to date.
pub fn check(root: &Path, artifacts: &[Artifact]) -> Result<Vec<Drift>, GenerateError> {
    let mut drift = Vec::new();
    for artifact in artifacts {
        let path = root.join(&artifact.path);
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == artifact.contents => {}
            Ok(_) => drift.push(Drift::Differs(artifact.path.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drift.push(Drift::Missing(artifact.path.clone()));
            }
            Err(e) => return Err(io_error("read", &path)(e)),
        }
    }
    let generated: BTreeSet<&str> = artifacts.iter().map(|a| a.path.as_str()).collect();
    drift.extend(
        existing_files(root)?
            .into_iter()
            .filter(|p| !generated.contains(p.as_str()))
            .map(Drift::Stale),
    );
    drift.sort();
    Ok(drift)
}

/// Bring `root` up to date: write what differs, remove stale files. Returns what changed.
pub fn write(root: &Path, artifacts: &[Artifact]) -> Result<Vec<Drift>, GenerateError> {
    let drift = check(root, artifacts)?;
    for item in &drift {
        match item {
            Drift::Missing(p) | Drift::Differs(p) => {
                let path = root.join(p);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
                }
                let contents = artifacts
                    .iter()
                    .find(|a| &a.path == p)
                    .map(|a| a.contents.as_bytes())
                    .unwrap_or_default();
                // Write beside, then rename: an interrupted run never leaves half a file.
                let tmp = path.with_extension("generate-tmp");
                std::fs::write(&tmp, contents).map_err(io_error("write", &tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
            }
            Drift::Stale(p) => {
                let path = root.join(p);
                std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
    }
    Ok(drift)
}
