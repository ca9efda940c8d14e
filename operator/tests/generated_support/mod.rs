//! Helpers shared by the generated_* tests: where the committed tree is, how to read it.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The workspace root, where config/ and bundle/ are committed.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_owned()
}

/// A committed file, relative to the repository root.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e} (run `plinth-operator generate`)"))
}

pub fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("valid YAML")
}

/// `kubectl kustomize <dir>` (relative to the repository root), parsed. kubectl, with its
/// built-in kustomize, is part of this project's machine image; without it the calling
/// test fails rather than skip.
pub fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(repo_root())
        .output()
        .expect("kubectl is required to build the kustomizations (Debian package kubectl)");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).expect("UTF-8"))
        .expect("kustomize prints YAML documents")
}
