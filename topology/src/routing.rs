//! The routing table of one cluster: cheapest paths to every other cluster over the
//! topology's undirected links, skipping links known to be down.
//!
//! Dijkstra with a total order on paths: lower total cost first, then fewer hops, then the
//! lexicographically smaller sequence of cluster names. The order is kept by extension (a
//! better path to `u` stays better when both are extended to `v`), so Dijkstra's
//! settle-once argument holds and the result does not depend on the order of links in the
//! file or in memory. Graphs are tens of clusters: every heap entry carries its full path.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use crate::model::{link_key, ClusterName, Topology};

/// One route: total cost and the path, `from` first and the destination last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Sum of link costs along the path.
    pub cost: u64,
    /// Clusters on the path, from the table's own cluster to the destination.
    pub path: Vec<ClusterName>,
}

/// Cheapest routes from one cluster to every cluster it can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    from: ClusterName,
    routes: BTreeMap<ClusterName, Route>,
}

impl RoutingTable {
    /// Routes from `from`, ignoring the links in `down_links` (pairs in either order).
    /// When `from` is not in the topology the table is empty.
    pub fn build(
        topology: &Topology,
        from: &ClusterName,
        down_links: &HashSet<(ClusterName, ClusterName)>,
    ) -> RoutingTable {
        let down: HashSet<(ClusterName, ClusterName)> =
            down_links.iter().map(|(x, y)| link_key(x, y)).collect();
        let mut routes: BTreeMap<ClusterName, Route> = BTreeMap::new();
        if topology.cluster(from.as_str()).is_none() {
            return RoutingTable {
                from: from.clone(),
                routes,
            };
        }
        // Adjacency over the links that are up.
        let mut adj: BTreeMap<&ClusterName, Vec<(&ClusterName, u32)>> = BTreeMap::new();
        for l in topology.links() {
            if down.contains(&l.key()) {
                continue;
            }
            adj.entry(&l.a).or_default().push((&l.b, l.cost));
            adj.entry(&l.b).or_default().push((&l.a, l.cost));
        }
        type Label = (u64, usize, Vec<ClusterName>);
        let mut heap: BinaryHeap<Reverse<Label>> = BinaryHeap::new();
        heap.push(Reverse((0, 0, vec![from.clone()])));
        while let Some(Reverse((cost, hops, path))) = heap.pop() {
            let Some(here) = path.last().cloned() else {
                continue;
            };
            if routes.contains_key(&here) {
                continue; // settled with a better label
            }
            if let Some(next) = adj.get(&here) {
                for (n, c) in next {
                    if routes.contains_key(*n) || path.contains(n) {
                        continue;
                    }
                    let mut p = path.clone();
                    p.push((*n).clone());
                    heap.push(Reverse((cost + u64::from(*c), hops + 1, p)));
                }
            }
            routes.insert(here, Route { cost, path });
        }
        RoutingTable {
            from: from.clone(),
            routes,
        }
    }

    /// The cluster this table routes from.
    pub fn from(&self) -> &ClusterName {
        &self.from
    }

    /// The neighbor to send to for `dest`; `None` when unreachable or `dest` is `from`.
    pub fn next_hop(&self, dest: &ClusterName) -> Option<ClusterName> {
        self.routes.get(dest).and_then(|r| r.path.get(1).cloned())
    }

    /// The full path to `dest` (`[from]` for `from` itself); `None` when unreachable.
    pub fn path(&self, dest: &ClusterName) -> Option<Vec<ClusterName>> {
        self.routes.get(dest).map(|r| r.path.clone())
    }

    /// Total cost to `dest` (0 for `from` itself); `None` when unreachable.
    pub fn cost(&self, dest: &ClusterName) -> Option<u64> {
        self.routes.get(dest).map(|r| r.cost)
    }

    /// Every reachable destination other than `from`, sorted by name.
    pub fn routes(&self) -> impl Iterator<Item = (&ClusterName, &Route)> {
        self.routes.iter().filter(|(d, _)| **d != self.from)
    }
}
