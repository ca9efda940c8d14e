//! Cluster mode's records: the custom resources through which the driver's controller
//! hands volume work to the node owning the pool, and the IDs derived from CSI names.

pub mod crd;
pub mod ids;
