//! Plinth's CSI driver: real local volumes (sparse image files in a per-node pool,
//! attached through loop devices, formatted ext4/xfs or handed out as raw block).

pub mod cluster;
pub mod mount;
pub mod pool;
pub mod volume;

pub mod advertise;
pub mod config;
pub mod controller;
pub mod crypt;
pub mod error;
pub mod identity;
pub mod inflight;
pub mod local;
pub mod node;
pub mod server;
pub mod socket;
pub mod state;
pub mod validate;

// Part 2: snapshots, restore and clones, expansion, inline volumes, group snapshots.
pub mod ephemeral;
pub mod expand_rpc;
pub mod freeze;
pub mod group;
pub mod grow;
pub mod page;
pub mod poolfs;
pub mod restore;
pub mod snapshot;
pub mod snapshot_rpc;
