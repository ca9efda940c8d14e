//! The `generate` subcommand's arguments and its one entry point.

use std::path::PathBuf;

use super::{Drift, GenerateError, artifacts, check, write};

/// Write config/ (kustomize) and bundle/ (OLM) from the operator's code.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Repository root; config/ and bundle/ are written under it.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Write nothing: exit non-zero listing every file that differs from what the code
    /// generates (the CI drift check).
    #[arg(long)]
    pub check: bool,
}

/// Run `plinth-operator generate`. With `--check`, drift is an error (after listing it on
/// stderr), so the process exits non-zero.
pub fn run(args: &GenerateArgs) -> Result<(), GenerateError> {
    let files = artifacts()?;
    if args.check {
        let drift = check(&args.out, &files)?;
        if drift.is_empty() {
            println!("{} generated files are up to date", files.len());
            return Ok(());
        }
        eprintln!(
            "{} generated file(s) differ from the code under {}:",
            drift.len(),
            args.out.display()
        );
        for item in &drift {
            eprintln!("  {item}");
        }
        return Err(GenerateError::Drift(drift.len()));
    }
    let changed = write(&args.out, &files)?;
    for item in &changed {
        let verb = match item {
            Drift::Missing(_) => "created",
            Drift::Differs(_) => "updated",
            Drift::Stale(_) => "removed",
        };
        let (Drift::Missing(path) | Drift::Differs(path) | Drift::Stale(path)) = item;
        println!("{verb} {path}");
    }
    println!("{} generated files, {} changed", files.len(), changed.len());
    Ok(())
}
