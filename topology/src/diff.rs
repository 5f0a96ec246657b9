//! What changed between two validated topologies, for hot reload: a bridge joins added
//! clusters and links, drains removed ones, re-dials changed ones and recomputes routes.

use crate::model::{ClusterName, Link, Topology};

/// A link whose cost changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCostChange {
    pub a: ClusterName,
    pub b: ClusterName,
    pub old_cost: u32,
    pub new_cost: u32,
}

/// The difference `old → new`. Every list is sorted by name (links by their pair).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyDiff {
    /// `Some((old, new))` when the mesh name changed (peers will refuse the handshake).
    pub mesh_renamed: Option<(String, String)>,
    pub added_clusters: Vec<ClusterName>,
    pub removed_clusters: Vec<ClusterName>,
    /// Clusters present in both whose region, cloud, bridge or proxy changed.
    pub changed_clusters: Vec<ClusterName>,
    pub added_links: Vec<Link>,
    pub removed_links: Vec<Link>,
    pub changed_links: Vec<LinkCostChange>,
    /// Any policy added, removed or changed.
    pub policy_changed: bool,
}

impl TopologyDiff {
    /// No change at all.
    pub fn is_empty(&self) -> bool {
        *self == TopologyDiff::default()
    }
}

impl Topology {
    /// What changed from `old` to `new`.
    pub fn diff(old: &Topology, new: &Topology) -> TopologyDiff {
        let mut d = TopologyDiff::default();
        if old.mesh != new.mesh {
            d.mesh_renamed = Some((old.mesh.clone(), new.mesh.clone()));
        }
        for (name, c) in &new.clusters {
            match old.clusters.get(name) {
                None => d.added_clusters.push(name.clone()),
                Some(o) if o != c => d.changed_clusters.push(name.clone()),
                Some(_) => {}
            }
        }
        d.removed_clusters = old
            .clusters
            .keys()
            .filter(|n| !new.clusters.contains_key(*n))
            .cloned()
            .collect();
        for (key, l) in &new.links {
            match old.links.get(key) {
                None => d.added_links.push(l.clone()),
                Some(o) if o.cost != l.cost => d.changed_links.push(LinkCostChange {
                    a: l.a.clone(),
                    b: l.b.clone(),
                    old_cost: o.cost,
                    new_cost: l.cost,
                }),
                Some(_) => {}
            }
        }
        d.removed_links = old
            .links
            .iter()
            .filter(|(k, _)| !new.links.contains_key(*k))
            .map(|(_, l)| l.clone())
            .collect();
        d.policy_changed = old.policies != new.policies;
        d
    }
}
