//! The routing table of one cluster: cheapest paths to every other cluster over the
//! topology's undirected links, skipping links known to be down.
//!
//! Dijkstra with a total order on paths: lower total cost first, then fewer hops, then the
//! lexicographically smaller sequence of cluster names. The order is kept by extension (a
//! better path to `u` stays better when both are extended to `v`), so Dijkstra's
//! settle-once argument holds and the result does not depend on the order of links in the
//! file or in memory. Graphs are tens of clusters: every heap entry carries its full path
//! (as cluster indices in name order, so index order is name order).

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
        // Clusters as indices in name order, so comparing index paths compares name paths.
        let names: Vec<&ClusterName> = topology.clusters().map(|c| &c.name).collect();
        let index_of = |n: &ClusterName| names.binary_search(&n).ok();
        let mut adj: Vec<Vec<(usize, u32)>> = vec![Vec::new(); names.len()];
        for l in topology.links() {
            if down.contains(&l.key()) {
                continue;
            }
            if let (Some(a), Some(b)) = (index_of(&l.a), index_of(&l.b)) {
                adj[a].push((b, l.cost));
                adj[b].push((a, l.cost));
            }
        }
        let Some(start) = index_of(from) else {
            return RoutingTable {
                from: from.clone(),
                routes,
            };
        };
        type Label = (u64, usize, Vec<usize>);
        let mut settled = vec![false; names.len()];
        let mut heap: BinaryHeap<Reverse<Label>> = BinaryHeap::new();
        heap.push(Reverse((0, 0, vec![start])));
        while let Some(Reverse((cost, hops, path))) = heap.pop() {
            let Some(&here) = path.last() else {
                continue;
            };
            if settled[here] {
                continue; // settled with a better label
            }
            settled[here] = true;
            for &(n, c) in &adj[here] {
                if settled[n] {
                    continue;
                }
                let mut p = Vec::with_capacity(path.len() + 1);
                p.extend_from_slice(&path);
                p.push(n);
                heap.push(Reverse((cost + u64::from(c), hops + 1, p)));
            }
            let path = path.iter().map(|&i| names[i].clone()).collect();
            routes.insert(names[here].clone(), Route { cost, path });
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
