//! Where a new volume goes: a pure choice over the request's accessibility requirements
//! and the capacity each node plugin published in its PoolNode.
//!
//! Order of preference: a pinned node (the node holding the content source: a copy is
//! made inside one pool), then `preferred` in the CO's order (WaitForFirstConsumer with
//! `--strict-topology` names exactly the node the pod was scheduled to), then the node
//! of `requisite` with the most room, and with no requirements at all the node with the
//! most room. Only segments with the driver's topology key name nodes; others are
//! ignored.

use std::cmp::Reverse;
use std::fmt::Write as _;

use plinth_csi_proto::v1;

use plinth_api::cluster::crd::PoolNode;

/// A node as placement sees it: its name and the room its plugin published (`None`
/// when it has not published any: no PoolNode, or one without status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub node: String,
    pub available: Option<u64>,
    /// What the node's pool holds for volumes when empty.
    pub total: Option<u64>,
}

impl Room {
    pub fn of(pool_node: &PoolNode) -> Self {
        let status = pool_node.status.as_ref();
        Self {
            node: pool_node.spec.node.clone(),
            available: status.map(|s| s.available_bytes),
            total: status.map(|s| s.total_bytes),
        }
    }

    fn fits(&self, needed: u64) -> bool {
        self.available.is_some_and(|a| a >= needed)
    }

    /// Published, and too small for `needed` even empty.
    fn never_fits(&self, needed: u64) -> bool {
        self.total.is_some_and(|t| t < needed)
    }
}

/// Why no node can take the volume; the message names the nodes and their numbers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoPlacement {
    /// No allowed node has room now (RESOURCE_EXHAUSTED: room may come back).
    #[error("{0}")]
    NoRoom(String),
    /// Every allowed node's pool is smaller than the volume (OUT_OF_RANGE: no
    /// deletion anywhere makes it fit).
    #[error("{0}")]
    NeverFits(String),
}

/// The nodes a requirement list names through `key`, in order, without repeats.
fn named<'a>(topologies: &'a [v1::Topology], key: &str) -> Vec<&'a str> {
    let mut nodes: Vec<&str> = Vec::new();
    for node in topologies.iter().filter_map(|t| t.segments.get(key)) {
        if !nodes.contains(&node.as_str()) {
            nodes.push(node);
        }
    }
    nodes
}

/// The requirements as node names: `(requisite, preferred)`. Both empty means
/// unconstrained.
fn requirements<'a>(
    requirement: Option<&'a v1::TopologyRequirement>,
    key: &str,
) -> (Vec<&'a str>, Vec<&'a str>) {
    requirement.map_or_else(Default::default, |r| {
        (named(&r.requisite, key), named(&r.preferred, key))
    })
}

/// Whether `requirement` lets a volume live on `node` (no requirement does).
pub fn allows(requirement: Option<&v1::TopologyRequirement>, key: &str, node: &str) -> bool {
    let (requisite, preferred) = requirements(requirement, key);
    (requisite.is_empty() && preferred.is_empty())
        || requisite.contains(&node)
        || preferred.contains(&node)
}

/// The node a new volume of `needed` bytes goes to.
pub fn choose(
    requirement: Option<&v1::TopologyRequirement>,
    key: &str,
    nodes: &[Room],
    needed: u64,
    pinned: Option<&str>,
) -> Result<String, NoPlacement> {
    let room = |node: &str| nodes.iter().find(|r| r.node == node);
    if let Some(node) = pinned {
        if !allows(requirement, key, node) {
            return Err(NoPlacement::NoRoom(format!(
                "the content source is on node {node}, which the accessibility requirements exclude"
            )));
        }
        return match room(node) {
            Some(r) if r.fits(needed) => Ok(node.to_owned()),
            Some(r) if r.never_fits(needed) => Err(NoPlacement::NeverFits(format!(
                "the content source is on node {node}, whose pool could never hold {needed} bytes: {}",
                describe(nodes, &[node])
            ))),
            _ => Err(NoPlacement::NoRoom(format!(
                "the content source is on node {node}, which has no room for {needed} bytes: {}",
                describe(nodes, &[node])
            ))),
        };
    }
    let (requisite, preferred) = requirements(requirement, key);
    if let Some(node) = preferred
        .iter()
        .find(|node| room(node).is_some_and(|r| r.fits(needed)))
    {
        return Ok((*node).to_owned());
    }
    let candidates: Vec<&str> = match (requisite.is_empty(), preferred.is_empty()) {
        (true, true) => nodes.iter().map(|r| r.node.as_str()).collect(),
        (true, false) => preferred.clone(),
        (false, _) => requisite.clone(),
    };
    let best = candidates
        .iter()
        .filter_map(|node| room(node))
        .filter(|r| r.fits(needed))
        // Most room; among equals the first name, so the choice is stable.
        .max_by_key(|r| (r.available, Reverse(r.node.as_str())));
    match best {
        Some(r) => Ok(r.node.clone()),
        None if candidates.is_empty() => Err(NoPlacement::NoRoom(
            "no node has published its pool (no PoolNode of this driver): is the node plugin running?"
                .to_owned(),
        )),
        None if candidates
            .iter()
            .all(|node| room(node).is_some_and(|r| r.never_fits(needed))) =>
        {
            Err(NoPlacement::NeverFits(format!(
                "no node the volume may go to could ever hold {needed} bytes: {}",
                describe(nodes, &candidates)
            )))
        }
        None => Err(NoPlacement::NoRoom(format!(
            "no node the volume may go to has room for {needed} bytes: {}",
            describe(nodes, &candidates)
        ))),
    }
}

/// "node a has 5 bytes available, node b has no PoolNode (...)".
fn describe(nodes: &[Room], candidates: &[&str]) -> String {
    let mut text = String::new();
    for (i, node) in candidates.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        match nodes.iter().find(|r| r.node == *node) {
            Some(Room {
                available: Some(available),
                total,
                ..
            }) => {
                let _ = write!(text, "node {node} has {available} bytes available");
                if let Some(total) = total {
                    let _ = write!(text, " of {total}");
                }
            }
            Some(_) => {
                let _ = write!(
                    text,
                    "node {node} has not published its capacity yet (is the node plugin running there?)"
                );
            }
            None => {
                let _ = write!(
                    text,
                    "node {node} has no PoolNode (is the node plugin running there?)"
                );
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "topology.local.csi.plinth.dev/node";

    fn at(node: &str) -> v1::Topology {
        v1::Topology {
            segments: [(KEY.to_owned(), node.to_owned())].into(),
        }
    }

    fn elsewhere() -> v1::Topology {
        v1::Topology {
            segments: [("topology.kubernetes.io/zone".to_owned(), "z1".to_owned())].into(),
        }
    }

    fn req(requisite: &[&str], preferred: &[&str]) -> v1::TopologyRequirement {
        v1::TopologyRequirement {
            requisite: requisite.iter().map(|n| at(n)).collect(),
            preferred: preferred.iter().map(|n| at(n)).collect(),
        }
    }

    fn rooms() -> Vec<Room> {
        vec![
            Room {
                node: "a".into(),
                available: Some(100),
                total: Some(1000),
            },
            Room {
                node: "b".into(),
                available: Some(500),
                total: Some(2000),
            },
            Room {
                node: "c".into(),
                available: Some(300),
                total: Some(1000),
            },
            Room {
                node: "d".into(),
                available: None,
                total: None,
            },
        ]
    }

    #[test]
    fn preferred_order_wins_while_it_has_room() {
        let nodes = rooms();
        let r = req(&["a", "b", "c"], &["c", "b"]);
        assert_eq!(choose(Some(&r), KEY, &nodes, 200, None).unwrap(), "c");
        // c is too small now: the next preferred.
        assert_eq!(choose(Some(&r), KEY, &nodes, 400, None).unwrap(), "b");
        // The selected node of WaitForFirstConsumer, exactly.
        let wffc = req(&["a"], &["a"]);
        assert_eq!(choose(Some(&wffc), KEY, &nodes, 50, None).unwrap(), "a");
    }

    #[test]
    fn requisite_and_no_requirement_take_the_node_with_most_room() {
        let nodes = rooms();
        let r = req(&["a", "c"], &[]);
        assert_eq!(choose(Some(&r), KEY, &nodes, 10, None).unwrap(), "c");
        assert_eq!(choose(None, KEY, &nodes, 10, None).unwrap(), "b");
        // Segments of other keys constrain nothing.
        let other = v1::TopologyRequirement {
            requisite: vec![elsewhere()],
            preferred: vec![],
        };
        assert_eq!(choose(Some(&other), KEY, &nodes, 10, None).unwrap(), "b");
        assert!(allows(Some(&other), KEY, "d"));
    }

    #[test]
    fn a_pinned_node_must_be_allowed_and_have_room() {
        let nodes = rooms();
        assert_eq!(choose(None, KEY, &nodes, 50, Some("a")).unwrap(), "a");
        let excluded = choose(Some(&req(&["b"], &["b"])), KEY, &nodes, 50, Some("a")).unwrap_err();
        assert!(excluded.to_string().contains("node a"), "{excluded}");
        assert!(excluded.to_string().contains("exclude"), "{excluded}");
        let full = choose(None, KEY, &nodes, 150, Some("a")).unwrap_err();
        assert!(
            full.to_string().contains("node a has 100 bytes available"),
            "{full}"
        );
    }

    #[test]
    fn refusals_name_nodes_their_room_and_missing_plugins() {
        let nodes = rooms();
        let r = req(&["a", "d", "e"], &["e"]);
        let err = choose(Some(&r), KEY, &nodes, 1000, None).unwrap_err();
        assert!(err.to_string().contains("1000 bytes"), "{err}");
        assert!(
            err.to_string().contains("node a has 100 bytes available"),
            "{err}"
        );
        assert!(
            err.to_string().contains("node d has not published"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("node e has no PoolNode (is the node plugin running there?)"),
            "{err}"
        );
        let none = choose(None, KEY, &[], 1, None).unwrap_err();
        assert!(
            none.to_string().contains("is the node plugin running"),
            "{none}"
        );
    }

    #[test]
    fn a_volume_no_allowed_pool_could_ever_hold_is_told_apart_from_no_room_now() {
        let nodes = rooms();
        // a and c hold 1000 bytes when empty: 1500 never fits there.
        let r = req(&["a", "c"], &[]);
        let never = choose(Some(&r), KEY, &nodes, 1500, None).unwrap_err();
        assert!(matches!(never, NoPlacement::NeverFits(_)), "{never:?}");
        assert!(
            never.to_string().contains("could ever hold 1500 bytes"),
            "{never}"
        );
        // b could hold it once emptied: no room now, not never.
        let later = choose(None, KEY, &nodes, 1500, None).unwrap_err();
        assert!(matches!(later, NoPlacement::NoRoom(_)), "{later:?}");
        // A node that has not published its size may still fit it: not never.
        let unknown = choose(Some(&req(&["a", "d"], &[])), KEY, &nodes, 1500, None).unwrap_err();
        assert!(matches!(unknown, NoPlacement::NoRoom(_)), "{unknown:?}");
        let pinned = choose(None, KEY, &nodes, 1500, Some("a")).unwrap_err();
        assert!(matches!(pinned, NoPlacement::NeverFits(_)), "{pinned:?}");
    }
}
