//! The example CsiDeployments users see: config/samples and the CSV's alm-examples.
//!
//! They are the render tests' fixtures, byte for byte, so every sample is known to
//! validate and render, and samples cannot drift from the examples the tests exercise.

use serde_json::Value;

use super::GenerateError;
use crate::crd::CsiDeployment;

/// A fixture published as a sample.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// File name under config/samples.
    pub file: &'static str,
    /// Fixture under operator/tests/fixtures (for messages).
    pub fixture: &'static str,
    pub yaml: &'static str,
}

macro_rules! sample {
    ($file:literal, $fixture:literal) => {
        Sample {
            file: $file,
            fixture: $fixture,
            yaml: include_str!(concat!("../../tests/fixtures/", $fixture)),
        }
    };
}

/// Minimal first: OLM's console pre-fills its form from the first alm-example.
pub const SAMPLES: &[Sample] = &[
    sample!("plinth_v1alpha1_csideployment_minimal.yaml", "minimal.yaml"),
    sample!("plinth_v1alpha1_csideployment_full.yaml", "full.yaml"),
    sample!(
        "plinth_v1alpha1_csideployment_third_party.yaml",
        "third-party.yaml"
    ),
    // Per-volume encryption keys from per-claim Secrets.
    sample!(
        "plinth_v1alpha1_csideployment_encrypted.yaml",
        "encrypted.yaml"
    ),
    // A real third-party driver, upstream's distributed (per-node) topology.
    sample!(
        "plinth_v1alpha1_csideployment_hostpath.yaml",
        "hostpath.yaml"
    ),
    // Disconnected clusters: every image from a mirror (see the CSV's relatedImages).
    sample!(
        "plinth_v1alpha1_csideployment_air_gapped.yaml",
        "air-gapped.yaml"
    ),
];

impl Sample {
    /// The sample as a typed CsiDeployment (proves it deserializes with the CRD's types).
    pub fn parse(&self) -> Result<CsiDeployment, GenerateError> {
        serde_saphyr::from_str(self.yaml).map_err(|source| GenerateError::Sample {
            fixture: self.fixture,
            source: Box::new(source),
        })
    }

    /// The sample as written (no defaults filled in), for alm-examples.
    pub fn as_json(&self) -> Result<Value, GenerateError> {
        serde_saphyr::from_str(self.yaml).map_err(|source| GenerateError::Sample {
            fixture: self.fixture,
            source: Box::new(source),
        })
    }
}
