//! Volumes and snapshots on this node: the pool of image files, what a volume is asked
//! to be, copies, restore, growth, freeze, encryption and the node's volume layer.

pub mod crypt;
pub mod ephemeral;
pub mod freeze;
pub mod grow;
pub mod inflight;
pub mod local;
pub mod pool;
pub mod restore;
pub mod snapshot;
pub mod spec;
pub mod volume;
