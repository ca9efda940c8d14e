//! Plinth's CSI driver: real local volumes (sparse image files in a per-node pool,
//! attached through loop devices, formatted ext4/xfs or handed out as raw block).
//!
//! Imports run one way: `csi` → `backend` → `storage` / `cluster` → `mount`.

/// Where the controller's volume and snapshot work is done: the local pool or the cluster.
pub mod backend;
/// Cluster mode: the controller hands volume and snapshot work to the node holding the pool.
pub mod cluster;
/// Command line and environment: how the driver is run.
pub mod config;
/// The CSI services: request validation and protobuf mapping, nothing else.
pub mod csi;
/// The one error type the services answer with, and its mapping to gRPC codes.
pub mod error;
/// Kernel plumbing: loop devices, filesystems, mounts, ioctls.
pub mod mount;
/// The gRPC server on its Unix socket, and process start-up.
pub mod server;
/// The shared driver state every service holds.
pub mod state;
/// Volumes and snapshots on this node: the pool, images, copies, growth, encryption.
pub mod storage;
