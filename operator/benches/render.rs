//! What one reconcile costs in CPU before any request: render a CsiDeployment, turn every
//! object into its apply body and fingerprint it. Prints p50/p99 per CR for the smallest
//! and the fullest fixture. Run: `cargo bench -p plinth-operator --bench render`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use plinth_api::capabilities::DriverFeatures;
use plinth_operator::crd::CsiDeployment;
use plinth_operator::reconcile::fingerprint::hash_desired;
use plinth_operator::render::{RenderEnv, render};

const ROUNDS: usize = 2000;

fn fixture(name: &str) -> CsiDeployment {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut cr: CsiDeployment =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    // As read from the API: a uid makes render add owner references.
    cr.metadata.uid = Some("5d6c4a3e-0000-4000-8000-000000000001".to_owned());
    cr
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn measure(label: &str, cr: &CsiDeployment, env: &RenderEnv) {
    let mut render_only = Vec::with_capacity(ROUNDS);
    let mut full = Vec::with_capacity(ROUNDS);
    let mut objects = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let rendered = render(black_box(cr), env).expect("fixture renders");
        render_only.push(started.elapsed());
        let hashes: u64 = rendered
            .objects
            .iter()
            .map(|o| hash_desired(&o.to_apply_json()))
            .fold(0, u64::wrapping_add);
        full.push(started.elapsed());
        objects = rendered.objects.len();
        black_box(hashes);
    }
    render_only.sort();
    full.sort();
    println!(
        "{label:<8} {objects:>2} objects  render p50 {:>9.1?} p99 {:>9.1?}  render+bodies+fingerprints p50 {:>9.1?} p99 {:>9.1?}",
        percentile(&render_only, 50),
        percentile(&render_only, 99),
        percentile(&full, 50),
        percentile(&full, 99),
    );
}

fn main() {
    let env = RenderEnv {
        snapshot_crds_present: true,
        builtin_features: DriverFeatures::default(),
        ..RenderEnv::default()
    };
    for name in ["minimal", "full"] {
        measure(name, &fixture(&format!("{name}.yaml")), &env);
    }
}
