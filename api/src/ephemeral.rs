//! Limits of the built-in driver's inline (ephemeral) volumes: the driver enforces them,
//! the operator refuses a CR whose values the driver would refuse at start.

/// What inline volumes may take: per volume, and on the whole node. Any pod spec can
/// ask for inline volumes without a claim or a quota, so the node bounds them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of an inline volume whose attributes name none.
    pub default_bytes: u64,
    /// Largest inline volume: a pod spec alone must not be able to fill the pool.
    pub max_bytes: u64,
    /// Bytes all inline volumes of the node together may have.
    pub node_max_bytes: u64,
    /// How many inline volumes the node may hold at once.
    pub node_max_volumes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_bytes: 1 << 30,
            max_bytes: 16 << 30,
            node_max_bytes: 64 << 30,
            node_max_volumes: 32,
        }
    }
}
