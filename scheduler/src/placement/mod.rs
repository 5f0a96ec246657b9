//! Placement: which live node serves which producer group and which consumer group.
//!
//! Owns the pure placement reducer: [`reduce`] maps (spec = live nodes and reported
//! groups, status = the current placement) to a [`Decision`] — either "nothing to do" or
//! a new [`Placement`] with the next epoch and the list of moved groups. No I/O, no clock,
//! no randomness: the same inputs always give the same output, so any scheduler member
//! computes the same decision.
//!
//! # Algorithm: sticky bounded-load consistent hashing
//!
//! Each group kind (producer, consumer) is placed independently. Every live node is put
//! on a [`hashring::HashRing`] `vnodes` times, as `(node id, replica index)`, so each node
//! owns many small arcs. A group's *preference list* is the ring walk from the hash of
//! `(kind, group)`: the distinct nodes in the order the walk meets them.
//!
//! With `G` groups of a kind and `N` live nodes, the capacity of a node is
//! `cap = ceil((1 + ε) · G / N)`. The reducer then:
//!
//! 1. **Keeps** every group whose current node is alive.
//! 2. **Pulls** for joining nodes: a node holding no group, or (when no node of the
//!    current placement is dead) fewer than half the mean, takes the groups whose first
//!    preference it is, up to `floor(G / N)`, from the most loaded
//!    owners first. This moves onto a joining node the groups consistent hashing gives
//!    it, and only those.
//! 3. **Sheds**: a node still above `cap` (the mean fell because a node joined or groups
//!    went away) releases its excess, groups that hash elsewhere first.
//! 4. **Places** the groups left over (new groups, groups of dead nodes, shed groups) on
//!    the first node of their preference list with load below `cap` (bounded load).
//!
//! After step 3 no node is above `cap` and step 4 never fills a node past it, so no node
//! ever carries more than `cap` groups of a kind. A leaving node moves only its own
//! groups (step 4); a joining node moves the groups that hash to it (step 2) plus, only
//! when the lower mean forces it, the excess of nodes above the new cap (step 3).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hashring::HashRing;

use crate::registry::{GroupKind, MemberInfo, Placement, Role};

/// Settings of the placement algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementConfig {
    /// Allowed overload above the mean: no node carries more than
    /// `ceil((1 + epsilon) · mean)` groups of a kind. Default 0.25.
    pub epsilon: f64,
    /// Ring points per node. Default 64.
    pub vnodes: u32,
    /// Rebalancing pace ([`pace`]): at most this many groups of each kind move between
    /// live nodes per published placement; `0`: all at once. Default 1.
    pub rebalance_moves: usize,
    /// Pause between two paced placements. Default 200 ms.
    pub rebalance_pause: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            epsilon: 0.25,
            vnodes: 64,
            rebalance_moves: 1,
            rebalance_pause: Duration::from_millis(200),
        }
    }
}

/// Invalid placement settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// `epsilon` must be finite and not negative.
    #[error("placement epsilon {0} must be a finite number >= 0")]
    InvalidEpsilon(f64),
    /// `vnodes` must be at least 1.
    #[error("placement vnodes must be at least 1")]
    NoVnodes,
}

impl PlacementConfig {
    /// Checks the settings.
    pub fn validate(self) -> Result<Self, PlacementError> {
        if !self.epsilon.is_finite() || self.epsilon < 0.0 {
            return Err(PlacementError::InvalidEpsilon(self.epsilon));
        }
        if self.vnodes == 0 {
            return Err(PlacementError::NoVnodes);
        }
        Ok(self)
    }

    /// The most groups one node may carry when `groups` groups are spread on `nodes`
    /// nodes: `ceil((1 + ε) · groups / nodes)` (0 without nodes).
    pub fn capacity(&self, groups: usize, nodes: usize) -> usize {
        if nodes == 0 {
            return 0;
        }
        let eps = if self.epsilon.is_finite() && self.epsilon >= 0.0 {
            self.epsilon
        } else {
            0.0
        };
        let mean = groups as f64 / nodes as f64;
        let cap = ((1.0 + eps) * mean).ceil();
        // Never below the plain ceiling of the mean (float rounding), so it always fits.
        (cap as usize).max(groups.div_ceil(nodes))
    }
}

/// What the placement must cover: the live nodes and the groups to place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementSpec {
    /// Ids of the live runtime nodes.
    pub nodes: BTreeSet<String>,
    /// Producer groups to place.
    pub producer_groups: BTreeSet<String>,
    /// Consumer groups to place.
    pub consumer_groups: BTreeSet<String>,
}

impl PlacementSpec {
    /// The spec from registry members: nodes are the members with role node; groups are
    /// the union of the groups every member (node or proxy) reports.
    pub fn from_members<'a>(members: impl IntoIterator<Item = &'a MemberInfo>) -> Self {
        let mut spec = Self::default();
        for m in members {
            if m.role == Role::Node {
                spec.nodes.insert(m.id.clone());
            }
            spec.producer_groups
                .extend(m.groups.producer.iter().cloned());
            spec.consumer_groups
                .extend(m.groups.consumer.iter().cloned());
        }
        spec
    }
}

/// Groups that changed node in a decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// `(group, from, to)` for producer groups; `from` is None for a new group.
    pub producer: Vec<(String, Option<String>, Option<String>)>,
    /// `(group, from, to)` for consumer groups; `to` is None when no node is alive.
    pub consumer: Vec<(String, Option<String>, Option<String>)>,
}

impl Moves {
    /// Groups that left a live or dead node for another node (new groups and dropped
    /// groups are not counted).
    pub fn moved(&self) -> usize {
        self.producer
            .iter()
            .chain(self.consumer.iter())
            .filter(|(_, from, to)| from.is_some() && to.is_some())
            .count()
    }
}

/// The reducer's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The current placement already matches the spec.
    Unchanged,
    /// Publish this placement (epoch = current epoch + 1).
    Publish {
        /// The new placement.
        placement: Placement,
        /// What moved relative to the current placement.
        moves: Moves,
    },
}

/// The pure reducer: from the spec and the current placement (None: nothing published
/// yet) to a decision. Deterministic.
pub fn reduce(
    cfg: &PlacementConfig,
    spec: &PlacementSpec,
    current: Option<&Placement>,
) -> Decision {
    let empty = Placement::default();
    let cur = current.unwrap_or(&empty);
    let ring = build_ring(cfg, &spec.nodes);
    let producer = place_kind(
        cfg,
        &ring,
        &spec.nodes,
        GroupKind::Producer,
        &spec.producer_groups,
        &cur.producer_groups,
    );
    let consumer = place_kind(
        cfg,
        &ring,
        &spec.nodes,
        GroupKind::Consumer,
        &spec.consumer_groups,
        &cur.consumer_groups,
    );
    if current.is_some() && producer == cur.producer_groups && consumer == cur.consumer_groups {
        return Decision::Unchanged;
    }
    let moves = Moves {
        producer: diff(&cur.producer_groups, &producer),
        consumer: diff(&cur.consumer_groups, &consumer),
    };
    Decision::Publish {
        placement: Placement {
            epoch: cur.epoch.saturating_add(1),
            producer_groups: producer,
            consumer_groups: consumer,
        },
        moves,
    }
}

/// A ring point: node id and replica index.
type Point = (String, u32);

fn build_ring(cfg: &PlacementConfig, nodes: &BTreeSet<String>) -> HashRing<Point> {
    let mut ring = HashRing::new();
    let vnodes = cfg.vnodes.max(1);
    let points: Vec<Point> = nodes
        .iter()
        .flat_map(|n| (0..vnodes).map(move |i| (n.clone(), i)))
        .collect();
    ring.batch_add(points);
    ring
}

fn kind_tag(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Producer => "producer",
        GroupKind::Consumer => "consumer",
    }
}

/// The first node of a group's preference list.
fn first_choice<'r>(ring: &'r HashRing<Point>, kind: GroupKind, group: &str) -> Option<&'r str> {
    ring.get(&(kind_tag(kind), group)).map(|(n, _)| n.as_str())
}

/// The distinct nodes in ring-walk order from a group's hash.
fn preference(ring: &HashRing<Point>, kind: GroupKind, group: &str) -> Vec<String> {
    let walk = ring
        .get_with_replicas(&(kind_tag(kind), group), ring.len())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (n, _) in walk {
        if seen.insert(n.clone()) {
            out.push(n);
        }
    }
    out
}

fn place_kind(
    cfg: &PlacementConfig,
    ring: &HashRing<Point>,
    nodes: &BTreeSet<String>,
    kind: GroupKind,
    groups: &BTreeSet<String>,
    current: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if nodes.is_empty() {
        return out;
    }
    let cap = cfg.capacity(groups.len(), nodes.len());
    let mut load: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();

    // 1. Keep every group whose node is alive.
    for g in groups {
        if let Some(n) = current.get(g).filter(|n| nodes.contains(*n)) {
            if let Some(l) = load.get_mut(n.as_str()) {
                *l += 1;
                out.insert(g.clone(), n.clone());
            }
        }
    }

    // 2. Joining nodes (below half the mean) take back the groups that hash to them,
    //    from the most loaded owners first.
    //    While a node is gone, only empty nodes pull: the dead node's groups are what
    //    moves, and the survivors keep theirs.
    let floor_mean = groups.len() / nodes.len();
    let none_dead = current.values().all(|n| nodes.contains(n));
    for n in nodes {
        let have = load.get(n.as_str()).copied().unwrap_or(0);
        let joining = have == 0 || (none_dead && have.saturating_mul(2) < floor_mean);
        if !joining || have >= floor_mean {
            continue;
        }
        let mut wanted: Vec<(usize, String)> = out
            .iter()
            .filter(|(g, owner)| *owner != n && first_choice(ring, kind, g) == Some(n.as_str()))
            .map(|(g, owner)| (load.get(owner.as_str()).copied().unwrap_or(0), g.clone()))
            .collect();
        wanted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, g) in wanted {
            if load.get(n.as_str()).copied().unwrap_or(0) >= floor_mean {
                break;
            }
            if let Some(prev) = out.insert(g, n.clone()) {
                if let Some(l) = load.get_mut(prev.as_str()) {
                    *l = l.saturating_sub(1);
                }
            }
            if let Some(l) = load.get_mut(n.as_str()) {
                *l += 1;
            }
        }
    }

    // 3. Nodes above the cap shed groups, those that hash elsewhere first.
    let mut orphans: BTreeSet<String> = groups
        .iter()
        .filter(|g| !out.contains_key(*g))
        .cloned()
        .collect();
    for n in nodes {
        let have = load.get(n.as_str()).copied().unwrap_or(0);
        if have <= cap {
            continue;
        }
        let mut mine: Vec<(bool, String)> = out
            .iter()
            .filter(|(_, owner)| *owner == n)
            .map(|(g, _)| (first_choice(ring, kind, g) == Some(n.as_str()), g.clone()))
            .collect();
        mine.sort();
        for (_, g) in mine.into_iter().take(have - cap) {
            out.remove(&g);
            orphans.insert(g);
        }
        load.insert(n.as_str(), cap);
    }

    // 4. Place the rest on the first node of the walk with room (bounded load).
    for g in orphans {
        // The first choice usually has room: skip the full walk then.
        if let Some(first) = first_choice(ring, kind, &g) {
            if let Some(l) = load.get_mut(first) {
                if *l < cap {
                    *l += 1;
                    out.insert(g, first.to_string());
                    continue;
                }
            }
        }
        for n in preference(ring, kind, &g) {
            if let Some(l) = load.get_mut(n.as_str()) {
                if *l < cap {
                    *l += 1;
                    out.insert(g, n);
                    break;
                }
            }
        }
    }
    out
}

type Move = (String, Option<String>, Option<String>);

fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<Move> {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter_map(|g| {
            let (a, b) = (before.get(g), after.get(g));
            (a != b).then(|| (g.clone(), a.cloned(), b.cloned()))
        })
        .collect()
}

/// One step from `current` towards `target` (a later [`reduce`] decision) at a bounded
/// pace, for a joining node to receive its groups gradually rather than all at once.
///
/// The step keeps every group that `current` places on a node of `nodes` (the live ones)
/// except at most `max_moves` per kind, which move to their `target` node; every other
/// group (new, or on a dead node) takes its `target` node at once: only moves between
/// live nodes are paced. Groups absent from `target` are dropped. The moves made are the
/// first in the order of the most loaded source node first, then group name, so the same
/// inputs give the same step. Returns the step's assignment (epoch `current.epoch + 1`)
/// and whether moves remain (`false`: the step is `target`). `max_moves == 0`: no limit.
pub fn pace(
    current: &Placement,
    target: &Placement,
    nodes: &BTreeSet<String>,
    max_moves: usize,
) -> (Placement, bool) {
    let (producer, more_p) = pace_kind(
        &current.producer_groups,
        &target.producer_groups,
        nodes,
        max_moves,
    );
    let (consumer, more_c) = pace_kind(
        &current.consumer_groups,
        &target.consumer_groups,
        nodes,
        max_moves,
    );
    let step = Placement {
        epoch: current.epoch.saturating_add(1),
        producer_groups: producer,
        consumer_groups: consumer,
    };
    (step, more_p || more_c)
}

fn pace_kind(
    current: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
    nodes: &BTreeSet<String>,
    max_moves: usize,
) -> (BTreeMap<String, String>, bool) {
    let budget = if max_moves == 0 {
        usize::MAX
    } else {
        max_moves
    };
    let mut out = BTreeMap::new();
    let mut paced: Vec<(usize, &String, &String)> = Vec::new();
    let load = loads(current);
    for (g, to) in target {
        match current.get(g) {
            Some(from) if from != to && nodes.contains(from) => {
                paced.push((load.get(from).copied().unwrap_or(0), g, to));
                out.insert(g.clone(), from.clone());
            }
            _ => {
                out.insert(g.clone(), to.clone());
            }
        }
    }
    paced.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let more = paced.len() > budget;
    for (_, g, to) in paced.into_iter().take(budget) {
        out.insert(g.clone(), to.clone());
    }
    (out, more)
}

/// What changed from `before` (None: nothing placed yet) to `after`.
pub fn moves_between(before: Option<&Placement>, after: &Placement) -> Moves {
    let empty = Placement::default();
    let b = before.unwrap_or(&empty);
    Moves {
        producer: diff(&b.producer_groups, &after.producer_groups),
        consumer: diff(&b.consumer_groups, &after.consumer_groups),
    }
}

/// Number of groups of each node in one assignment (nodes without groups omitted).
pub fn loads(assignment: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in assignment.values() {
        *out.entry(n.clone()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests;
