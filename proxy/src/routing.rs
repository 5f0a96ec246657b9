//! Which node serves a request: live nodes, the consistent-hash ring over them, the
//! published placement, sticky producer-group assignments and nodes marked down.
//!
//! Order of candidates for a producer group: the node the group is stuck to (the last node
//! that acknowledged one of its publishes, while live and not down), else the node the
//! placement names, then the ring order from the group's hash (each node once). Nodes
//! marked down go last (they are still tried when nothing else is left). Sticky entries
//! keep one group on one node after a failover, so its events keep one order; they are
//! dropped when the group is idle past a timeout, when the placement changes, and when
//! their node leaves.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use meshd_scheduler::registry::Placement;

/// Virtual nodes per node on the ring.
const VNODES: u32 = 64;

/// A node requests can go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Node id (the registry id, or the URL for a static node list).
    pub id: String,
    /// Base URL, e.g. `http://127.0.0.1:7700`, without a trailing slash.
    pub url: String,
}

#[derive(Debug, Default)]
struct Nodes {
    by_id: BTreeMap<String, String>,
    ring: BTreeMap<u64, String>,
    placement: Option<Placement>,
}

#[derive(Debug, Clone)]
struct Sticky {
    node: String,
    last_used: Instant,
}

/// The routing table of one proxy.
#[derive(Debug, Default)]
pub struct Routing {
    nodes: RwLock<Nodes>,
    /// Nodes that run the cluster's federation bridge.
    bridges: RwLock<BTreeSet<String>>,
    sticky: Mutex<HashMap<String, Sticky>>,
    down: Mutex<HashSet<String>>,
}

fn hash_of(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl Nodes {
    fn rebuild_ring(&mut self) {
        self.ring.clear();
        for id in self.by_id.keys() {
            for v in 0..VNODES {
                self.ring.insert(hash_of(&format!("{id}#{v}")), id.clone());
            }
        }
    }

    /// Distinct node ids clockwise from the key's hash.
    fn ring_order(&self, key: &str) -> Vec<String> {
        let h = hash_of(key);
        let mut out: Vec<String> = Vec::with_capacity(self.by_id.len());
        for id in self
            .ring
            .range(h..)
            .chain(self.ring.range(..h))
            .map(|(_, id)| id)
        {
            if !out.contains(id) {
                out.push(id.clone());
                if out.len() == self.by_id.len() {
                    break;
                }
            }
        }
        out
    }
}

impl Routing {
    /// An empty table.
    pub fn new() -> Routing {
        Routing::default()
    }

    /// Replaces the node set.
    pub fn set_nodes(&self, nodes: Vec<Upstream>) {
        if let Ok(mut n) = self.nodes.write() {
            n.by_id = nodes.into_iter().map(|u| (u.id, u.url)).collect();
            n.rebuild_ring();
        }
        self.drop_sticky_to_missing();
    }

    /// Adds or updates one node.
    pub fn upsert_node(&self, node: Upstream) {
        if let Ok(mut n) = self.nodes.write() {
            let changed = n.by_id.insert(node.id, node.url).is_none();
            if changed {
                n.rebuild_ring();
            }
        }
    }

    /// Records whether node `id` runs the cluster's federation bridge.
    pub fn set_bridge(&self, id: &str, runs: bool) {
        if let Ok(mut b) = self.bridges.write() {
            if runs {
                b.insert(id.to_string());
            } else {
                b.remove(id);
            }
        }
    }

    /// Where `/v1/mesh` requests go: the live nodes running the bridge (normally one),
    /// then those marked down.
    pub fn for_mesh(&self) -> Vec<Upstream> {
        let bridges = self.bridges.read().map(|b| b.clone()).unwrap_or_default();
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let (mut live, dead): (Vec<Upstream>, Vec<Upstream>) = self
            .nodes()
            .into_iter()
            .filter(|u| bridges.contains(&u.id))
            .partition(|u| !down.contains(&u.id));
        live.extend(dead);
        live
    }

    /// Removes one node (it left the cluster).
    pub fn remove_node(&self, id: &str) {
        if let Ok(mut b) = self.bridges.write() {
            b.remove(id);
        }
        if let Ok(mut n) = self.nodes.write() {
            if n.by_id.remove(id).is_some() {
                n.rebuild_ring();
            }
        }
        if let Ok(mut d) = self.down.lock() {
            d.remove(id);
        }
        self.drop_sticky_to_missing();
    }

    /// Sets the published placement; sticky assignments are dropped (placement wins).
    pub fn set_placement(&self, placement: Option<Placement>) {
        if let Ok(mut n) = self.nodes.write() {
            n.placement = placement;
        }
        if let Ok(mut s) = self.sticky.lock() {
            s.clear();
        }
    }

    /// The placement epoch, if one is known.
    pub fn placement_epoch(&self) -> Option<u64> {
        self.nodes
            .read()
            .ok()
            .and_then(|n| n.placement.as_ref().map(|p| p.epoch))
    }

    fn drop_sticky_to_missing(&self) {
        let live: HashSet<String> = self
            .nodes
            .read()
            .map(|n| n.by_id.keys().cloned().collect())
            .unwrap_or_default();
        if let Ok(mut s) = self.sticky.lock() {
            s.retain(|_, v| live.contains(&v.node));
        }
    }

    /// All nodes, by id.
    pub fn nodes(&self) -> Vec<Upstream> {
        self.nodes
            .read()
            .map(|n| {
                n.by_id
                    .iter()
                    .map(|(id, url)| Upstream {
                        id: id.clone(),
                        url: url.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nodes not marked down.
    pub fn live_nodes(&self) -> Vec<Upstream> {
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        self.nodes()
            .into_iter()
            .filter(|u| !down.contains(&u.id))
            .collect()
    }

    /// Marks a node down (connection refused); it goes last until marked up.
    pub fn mark_down(&self, id: &str) {
        if let Ok(mut d) = self.down.lock() {
            d.insert(id.to_string());
        }
    }

    /// Marks a node up again.
    pub fn mark_up(&self, id: &str) {
        if let Ok(mut d) = self.down.lock() {
            d.remove(id);
        }
    }

    /// Nodes marked down.
    pub fn down_nodes(&self) -> Vec<Upstream> {
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        self.nodes()
            .into_iter()
            .filter(|u| down.contains(&u.id))
            .collect()
    }

    fn order(&self, first: &[Option<String>], ring_key: &str) -> Vec<Upstream> {
        let Ok(n) = self.nodes.read() else {
            return Vec::new();
        };
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let mut ids: Vec<String> = Vec::with_capacity(n.by_id.len());
        for id in first.iter().flatten() {
            if n.by_id.contains_key(id) && !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        for id in n.ring_order(ring_key) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        // Stable partition: live nodes first, down nodes last.
        let (mut up, dn): (Vec<String>, Vec<String>) =
            ids.into_iter().partition(|id| !down.contains(id));
        up.extend(dn);
        up.into_iter()
            .filter_map(|id| {
                n.by_id.get(&id).map(|url| Upstream {
                    id: id.clone(),
                    url: url.clone(),
                })
            })
            .collect()
    }

    /// Candidate nodes for a producer group, best first.
    pub fn for_producer(&self, group: &str) -> Vec<Upstream> {
        let sticky = self
            .sticky
            .lock()
            .ok()
            .and_then(|s| s.get(group).map(|v| v.node.clone()));
        let placed = self.nodes.read().ok().and_then(|n| {
            n.placement
                .as_ref()
                .and_then(|p| p.producer_groups.get(group).cloned())
        });
        self.order(&[sticky, placed], &format!("producer:{group}"))
    }

    /// Candidate nodes for a subscription (by its name, which is its default consumer
    /// group), best first.
    pub fn for_subscription(&self, name: &str) -> Vec<Upstream> {
        let placed = self.nodes.read().ok().and_then(|n| {
            n.placement
                .as_ref()
                .and_then(|p| p.consumer_groups.get(name).cloned())
        });
        self.order(&[placed], &format!("subscription:{name}"))
    }

    /// Candidate nodes for anything else keyed by `key`.
    pub fn for_key(&self, key: &str) -> Vec<Upstream> {
        self.order(&[], key)
    }

    /// Records that `node` acknowledged a publish of `group`.
    pub fn stick(&self, group: &str, node: &str) {
        if let Ok(mut s) = self.sticky.lock() {
            match s.get_mut(group) {
                Some(v) if v.node == node => v.last_used = Instant::now(),
                _ => {
                    s.insert(
                        group.to_string(),
                        Sticky {
                            node: node.to_string(),
                            last_used: Instant::now(),
                        },
                    );
                }
            }
        }
    }

    /// Drops producer-group state idle for longer than `idle`; returns how many were dropped.
    pub fn reclaim_idle(&self, idle: Duration) -> usize {
        let Ok(mut s) = self.sticky.lock() else {
            return 0;
        };
        let before = s.len();
        s.retain(|_, v| v.last_used.elapsed() < idle);
        before - s.len()
    }

    /// Producer groups with state.
    pub fn producer_groups(&self) -> usize {
        self.sticky.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: &str) -> Upstream {
        Upstream {
            id: id.into(),
            url: format!("http://{id}"),
        }
    }

    #[test]
    fn ring_order_covers_every_node_once_and_moves_little() {
        let r = Routing::new();
        r.set_nodes(vec![up("a"), up("b"), up("c")]);
        let mut firsts = BTreeMap::new();
        for g in 0..300 {
            let c = r.for_producer(&format!("g{g}"));
            assert_eq!(c.len(), 3);
            let mut ids: Vec<_> = c.iter().map(|u| u.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3);
            firsts.insert(g, c[0].id.clone());
        }
        // Every node gets some groups.
        for id in ["a", "b", "c"] {
            assert!(firsts.values().filter(|v| *v == id).count() > 30);
        }
        // Removing c moves only c's groups.
        r.remove_node("c");
        for (g, first) in &firsts {
            let now = r.for_producer(&format!("g{g}"))[0].id.clone();
            if first != "c" {
                assert_eq!(&now, first);
            }
        }
    }

    #[test]
    fn placement_sticky_and_down() {
        let r = Routing::new();
        r.set_nodes(vec![up("a"), up("b")]);
        r.set_placement(Some(Placement {
            epoch: 1,
            producer_groups: [("g".to_string(), "b".to_string())].into(),
            consumer_groups: BTreeMap::new(),
        }));
        assert_eq!(r.for_producer("g")[0].id, "b");
        r.mark_down("b");
        assert_eq!(r.for_producer("g")[0].id, "a");
        assert_eq!(r.for_producer("g")[1].id, "b");
        r.stick("g", "a");
        r.mark_up("b");
        // Sticky after failover: stays on a.
        assert_eq!(r.for_producer("g")[0].id, "a");
        assert_eq!(r.reclaim_idle(Duration::from_secs(60)), 0);
        assert_eq!(r.reclaim_idle(Duration::ZERO), 1);
        assert_eq!(r.for_producer("g")[0].id, "b");
    }

    #[test]
    fn mesh_requests_go_to_the_bridge_node() {
        let r = Routing::new();
        r.set_nodes(vec![up("a"), up("b"), up("c")]);
        assert!(r.for_mesh().is_empty(), "no bridge known");
        r.set_bridge("b", true);
        assert_eq!(r.for_mesh(), vec![up("b")]);
        r.set_bridge("c", true);
        r.mark_down("b");
        assert_eq!(r.for_mesh(), vec![up("c"), up("b")], "live first");
        r.set_bridge("c", false);
        r.remove_node("b");
        assert!(r.for_mesh().is_empty());
        r.upsert_node(up("b"));
        assert!(
            r.for_mesh().is_empty(),
            "a node that left forgets its bridge flag"
        );
    }
}
