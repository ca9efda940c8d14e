//! Plinth's operator: reconciles `CsiDeployment` resources into running CSI drivers.

pub mod crd;
pub mod generate;
pub mod health;
pub mod labels;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod validate;
