//! The committed config/ and bundle/ are exactly what the code generates, and the drift
//! check really catches every kind of difference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use plinth_operator::generate::{self, Drift};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn committed_files_match_the_code() {
    let files = generate::artifacts().unwrap();
    let drift = generate::check(&repo_root(), &files).unwrap();
    assert!(
        drift.is_empty(),
        "config/ and bundle/ are out of date; run `cargo run -p plinth-operator -- generate` \
         and commit:\n{}",
        drift
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(
        generate::artifacts().unwrap(),
        generate::artifacts().unwrap()
    );
}

#[test]
fn every_generated_yaml_file_carries_the_header_and_no_paths_repeat() {
    let files = generate::artifacts().unwrap();
    let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    let before = paths.len();
    paths.dedup();
    assert_eq!(before, paths.len(), "a path is generated twice");
    for file in files.iter().filter(|f| f.path.ends_with(".yaml")) {
        if file.path.starts_with("config/samples/") && !file.path.ends_with("kustomization.yaml") {
            continue; // byte copies of the fixtures
        }
        assert!(
            file.contents.starts_with(generate::HEADER),
            "{} lacks the generated-file header",
            file.path
        );
    }
}

#[test]
fn check_reports_changed_missing_and_stale_files_and_write_repairs_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let files = generate::artifacts().unwrap();

    let created = generate::write(root, &files).unwrap();
    assert_eq!(created.len(), files.len(), "a fresh tree gets every file");
    assert!(generate::check(root, &files).unwrap().is_empty());

    let crd = format!("config/crd/bases/{}", generate::CRD_FILE);
    let csv = format!("bundle/manifests/{}", generate::bundle::CSV_FILE);
    std::fs::write(root.join(&crd), "edited by hand\n").unwrap();
    std::fs::remove_file(root.join(&csv)).unwrap();
    std::fs::write(root.join("bundle/manifests/old.yaml"), "kind: Leftover\n").unwrap();

    let drift = generate::check(root, &files).unwrap();
    assert_eq!(
        drift,
        vec![
            Drift::Missing(csv),
            Drift::Differs(crd),
            Drift::Stale("bundle/manifests/old.yaml".to_owned()),
        ]
    );

    assert_eq!(generate::write(root, &files).unwrap(), drift);
    assert!(generate::check(root, &files).unwrap().is_empty());
    assert!(!root.join("bundle/manifests/old.yaml").exists());
}

#[test]
fn the_generate_subcommand_fails_on_drift_and_writes_a_tree_that_then_passes() {
    let bin = env!("CARGO_BIN_EXE_plinth-operator");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();

    let empty = Command::new(bin)
        .args(["generate", "--check", "--out", out])
        .output()
        .unwrap();
    assert!(
        !empty.status.success(),
        "--check on an empty tree must fail"
    );
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(
        stderr.contains("missing: bundle/manifests/plinth-operator.clusterserviceversion.yaml"),
        "--check lists the files that differ, got:\n{stderr}"
    );

    let written = Command::new(bin)
        .args(["generate", "--out", out])
        .output()
        .unwrap();
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );

    let clean = Command::new(bin)
        .args(["generate", "--check", "--out", out])
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
}
