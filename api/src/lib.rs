//! What Plinth's operator and its built-in driver agree on, in one small crate that both
//! (and the demo and the e2e suite) depend on:
//!
//! * [`capabilities`]: the CSI capability model, the sidecars it needs, and the built-in
//!   driver's switches ([`DriverFeatures`]);
//! * [`Feature`]: the one list of optional features, from which the CR field, the driver's
//!   `--disable` switch, the capabilities a feature needs and removes all derive;
//! * [`cluster`]: the cluster-mode custom resources (PoolVolume, PoolSnapshot, PoolNode)
//!   and the IDs derived from CSI names;
//! * the inline-volume limits and size syntax the driver's flags use and the operator
//!   validates against ([`ephemeral`], [`parse_size`]).
//!
//! No tonic, no nix: the operator links this instead of the driver crate.

pub mod capabilities;
pub mod cluster;
pub mod ephemeral;
mod feature;
mod size;

pub use capabilities::{Capabilities, DriverFeatures, Sidecar, SidecarNeed};
pub use feature::{Feature, served_features, served_features_all_in_one};
pub use size::parse_size;
