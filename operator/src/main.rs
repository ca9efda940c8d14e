//! `plinth-operator`: the operator binary and its offline tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use plinth_operator::crd::CsiDeployment;
use plinth_operator::render::RenderEnv;

#[derive(Debug, Parser)]
#[command(name = "plinth-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CsiDeployment CustomResourceDefinition as YAML.
    Crd,
    /// Print every object the operator would apply for a CsiDeployment, as a multi-document
    /// YAML stream. No cluster needed.
    Render {
        /// The CsiDeployment manifest (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Whether to render as if the VolumeSnapshot CRDs were installed.
        #[arg(long, value_enum, default_value = "present")]
        snapshot_crds: Presence,
        /// Whether to render as if the VolumeGroupSnapshot CRDs were installed.
        #[arg(long, value_enum, default_value = "absent")]
        group_snapshot_crds: Presence,
        /// A third-party driver's capabilities as its probe answered them (YAML or JSON,
        /// e.g. `kubectl get csideployment NAME -o jsonpath='{.status.capabilities.advertised}'`),
        /// to render a CR that declares none, as the operator would.
        #[arg(long, value_name = "FILE")]
        capabilities: Option<PathBuf>,
    },
    /// Write config/ (kustomize) and bundle/ (OLM) from the operator's code; with `--check`,
    /// fail listing every committed file that differs (the CI drift check).
    Generate(plinth_operator::generate::GenerateArgs),
    /// Run the operator: reconcile CsiDeployments, serve /metrics, /healthz and /readyz.
    Run(plinth_operator::run::RunArgs),
    /// Ask a running CSI driver what it advertises (the probe Job's container): writes a
    /// JSON answer to `--output`, exits 1 when the driver did not answer.
    Probe(plinth_operator::probe::ProbeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Presence {
    Present,
    Absent,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Render {
            file,
            snapshot_crds,
            group_snapshot_crds,
            capabilities,
        } => read_capabilities(capabilities.as_deref()).and_then(|driver_capabilities| {
            print_render(
                &file,
                &RenderEnv {
                    snapshot_crds_present: snapshot_crds == Presence::Present,
                    group_snapshot_crds_present: group_snapshot_crds == Presence::Present,
                    driver_capabilities,
                    ..RenderEnv::default()
                },
            )
        }),
        Command::Generate(args) => plinth_operator::generate::run(&args).map_err(Into::into),
        Command::Run(args) => plinth_operator::run::main(args),
        Command::Probe(args) => match plinth_operator::probe::run(&args) {
            Ok(true) => Ok(()),
            // The answer, with its reason, is already written and printed.
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crd() -> anyhow::Result<()> {
    let yaml = serde_saphyr::to_string(&CsiDeployment::crd()).context("serialising the CRD")?;
    write_stdout(&yaml)
}

fn read_capabilities(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<plinth_api::capabilities::Capabilities>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // YAML is a superset of JSON: one parser reads both.
    serde_saphyr::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not a capability list", file.display()))
}

fn print_render(file: &std::path::Path, env: &RenderEnv) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let yaml = plinth_operator::render::yaml::render_stream(&text, env)?;
    write_stdout(&yaml)
}

/// Write to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
