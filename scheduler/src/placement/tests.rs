//! Placement reducer tests: examples plus seeded randomized properties (bound, minimal
//! movement on join and leave, determinism).

use super::*;

/// A small deterministic generator for property cases (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

fn spec(nodes: usize, producers: usize, consumers: usize) -> PlacementSpec {
    PlacementSpec {
        nodes: (0..nodes).map(|i| format!("n{i}")).collect(),
        producer_groups: (0..producers).map(|i| format!("pg-{i}")).collect(),
        consumer_groups: (0..consumers).map(|i| format!("cg-{i}")).collect(),
    }
}

fn publish(d: Decision) -> (Placement, Moves) {
    match d {
        Decision::Publish { placement, moves } => (placement, moves),
        Decision::Unchanged => panic!("expected a new placement"),
    }
}

fn check_bound(cfg: &PlacementConfig, spec: &PlacementSpec, p: &Placement) {
    for (groups, assign) in [
        (&spec.producer_groups, &p.producer_groups),
        (&spec.consumer_groups, &p.consumer_groups),
    ] {
        if spec.nodes.is_empty() {
            assert!(assign.is_empty());
            continue;
        }
        assert_eq!(
            assign.keys().collect::<BTreeSet<_>>(),
            groups.iter().collect::<BTreeSet<_>>(),
            "every group placed exactly once"
        );
        let cap = cfg.capacity(groups.len(), spec.nodes.len());
        for (n, l) in loads(assign) {
            assert!(spec.nodes.contains(&n), "placed on a dead node {n}");
            assert!(l <= cap, "node {n} carries {l} > cap {cap}");
        }
    }
}

#[test]
fn first_placement_covers_every_group_with_epoch_1() {
    let cfg = PlacementConfig::default();
    let s = spec(3, 10, 20);
    let (p, moves) = publish(reduce(&cfg, &s, None));
    assert_eq!(p.epoch, 1);
    assert_eq!(p.producer_groups.len(), 10);
    assert_eq!(p.consumer_groups.len(), 20);
    assert_eq!(moves.moved(), 0, "new groups are not moves");
    check_bound(&cfg, &s, &p);
}

#[test]
fn same_inputs_are_unchanged_and_epoch_only_grows_on_change() {
    let cfg = PlacementConfig::default();
    let s = spec(3, 10, 20);
    let (p, _) = publish(reduce(&cfg, &s, None));
    assert_eq!(reduce(&cfg, &s, Some(&p)), Decision::Unchanged);
    let mut s2 = s.clone();
    s2.consumer_groups.insert("cg-new".into());
    let (p2, _) = publish(reduce(&cfg, &s2, Some(&p)));
    assert_eq!(p2.epoch, 2);
    assert!(p2.consumer_groups.contains_key("cg-new"));
}

#[test]
fn no_nodes_places_nothing() {
    let cfg = PlacementConfig::default();
    let s = spec(0, 5, 5);
    let (p, _) = publish(reduce(&cfg, &s, None));
    assert!(p.producer_groups.is_empty() && p.consumer_groups.is_empty());
}

#[test]
fn config_validation_rejects_bad_values() {
    let bad = PlacementConfig {
        epsilon: -1.0,
        vnodes: 8,
        ..PlacementConfig::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(PlacementError::InvalidEpsilon(_))
    ));
    let nan = PlacementConfig {
        epsilon: f64::NAN,
        vnodes: 8,
        ..PlacementConfig::default()
    };
    assert!(nan.validate().is_err());
    let zero = PlacementConfig {
        epsilon: 0.1,
        vnodes: 0,
        ..PlacementConfig::default()
    };
    assert_eq!(zero.validate(), Err(PlacementError::NoVnodes));
    assert!(PlacementConfig::default().validate().is_ok());
}

#[test]
fn capacity_is_ceil_of_one_plus_eps_times_mean() {
    let cfg = PlacementConfig::default();
    assert_eq!(cfg.capacity(100, 4), 32); // 1.25 * 25 = 31.25
    assert_eq!(cfg.capacity(10, 3), 5); // 1.25 * 3.33 = 4.17
    assert_eq!(cfg.capacity(0, 3), 0);
    assert_eq!(cfg.capacity(5, 0), 0);
    let tight = PlacementConfig {
        epsilon: 0.0,
        vnodes: 16,
        ..PlacementConfig::default()
    };
    assert_eq!(tight.capacity(10, 3), 4);
}

#[test]
fn from_members_takes_nodes_and_all_reported_groups() {
    use crate::registry::MemberInfo;
    let mut n1 = MemberInfo::new(Role::Node, "n1", "http://a");
    n1.groups.consumer.insert("c1".into());
    let mut p1 = MemberInfo::new(Role::Proxy, "p1", "http://b");
    p1.groups.producer.insert("p-g".into());
    let s = PlacementSpec::from_members([&n1, &p1]);
    assert_eq!(s.nodes, BTreeSet::from(["n1".to_string()]));
    assert!(s.producer_groups.contains("p-g"));
    assert!(s.consumer_groups.contains("c1"));
}

#[test]
fn property_bound_holds_and_is_deterministic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for eps in [0.0, 0.1, 0.25, 1.0] {
        let cfg = PlacementConfig {
            epsilon: eps,
            vnodes: 32,
            ..PlacementConfig::default()
        };
        for _ in 0..40 {
            let s = spec(rng.range(1, 12), rng.range(0, 150), rng.range(0, 150));
            let (p, _) = publish(reduce(&cfg, &s, None));
            check_bound(&cfg, &s, &p);
            assert_eq!(reduce(&cfg, &s, None), reduce(&cfg, &s, None));
            // From an arbitrary (skewed) current placement the bound holds too.
            let skewed = Placement {
                epoch: 7,
                producer_groups: s
                    .producer_groups
                    .iter()
                    .map(|g| (g.clone(), "n0".to_string()))
                    .collect(),
                consumer_groups: BTreeMap::new(),
            };
            let (p2, _) = publish(reduce(&cfg, &s, Some(&skewed)));
            assert_eq!(p2.epoch, 8);
            check_bound(&cfg, &s, &p2);
        }
    }
}

#[test]
fn property_leave_moves_only_the_dead_nodes_groups() {
    let cfg = PlacementConfig::default();
    let mut rng = Rng(42);
    for _ in 0..40 {
        let n = rng.range(2, 10);
        let s = spec(n, rng.range(0, 200), rng.range(0, 200));
        let (p, _) = publish(reduce(&cfg, &s, None));
        let dead = format!("n{}", rng.range(0, n - 1));
        let mut s2 = s.clone();
        s2.nodes.remove(&dead);
        let (p2, moves) = publish(reduce(&cfg, &s2, Some(&p)));
        check_bound(&cfg, &s2, &p2);
        let theoretical = p
            .producer_groups
            .values()
            .chain(p.consumer_groups.values())
            .filter(|v| **v == dead)
            .count();
        assert_eq!(
            moves.moved(),
            theoretical,
            "a leave moves exactly the dead node's groups ({n} nodes)"
        );
        for (_, from, _) in moves.producer.iter().chain(moves.consumer.iter()) {
            assert_eq!(from.as_deref(), Some(dead.as_str()));
        }
    }
}

#[test]
fn property_join_moves_only_groups_onto_the_new_node() {
    let cfg = PlacementConfig::default();
    let mut rng = Rng(7);
    for _ in 0..40 {
        let n = rng.range(1, 9);
        let groups = rng.range(20, 300);
        let s = spec(n, groups, groups);
        let (p, _) = publish(reduce(&cfg, &s, None));
        let mut s2 = s.clone();
        s2.nodes.insert("joiner".into());
        let (p2, moves) = publish(reduce(&cfg, &s2, Some(&p)));
        check_bound(&cfg, &s2, &p2);
        // Moves to an old node are only the excess of nodes above the new cap.
        let mut excess = 0;
        for (old, new_groups) in [
            (&p.producer_groups, s2.producer_groups.len()),
            (&p.consumer_groups, s2.consumer_groups.len()),
        ] {
            let cap = cfg.capacity(new_groups, n + 1);
            excess += loads(old)
                .values()
                .map(|l| l.saturating_sub(cap))
                .sum::<usize>();
        }
        let to_joiner = moves
            .producer
            .iter()
            .chain(moves.consumer.iter())
            .filter(|(_, _, to)| to.as_deref() == Some("joiner"))
            .count();
        assert!(
            moves.moved() - to_joiner <= excess,
            "{} moves between old nodes > excess {excess}",
            moves.moved() - to_joiner
        );
        // Theoretical minimum: the joiner's fair share, floor(G / (N+1)) per kind.
        let fair = 2 * (groups / (n + 1));
        assert!(
            moves.moved() <= fair + excess,
            "moved {} > fair share {fair} + excess {excess}",
            moves.moved()
        );
        // And the joiner gets a real share (at least half its fair share).
        if groups / (n + 1) >= 10 {
            assert!(
                to_joiner * 2 >= fair,
                "joiner got only {to_joiner} of {fair}"
            );
        }
    }
}

#[test]
fn join_then_leave_returns_to_a_balanced_placement() {
    let cfg = PlacementConfig::default();
    let s = spec(4, 100, 100);
    let (p, _) = publish(reduce(&cfg, &s, None));
    let mut s2 = s.clone();
    s2.nodes.insert("n9".into());
    let (p2, _) = publish(reduce(&cfg, &s2, Some(&p)));
    let (p3, moves) = publish(reduce(&cfg, &s, Some(&p2)));
    check_bound(&cfg, &s, &p3);
    assert!(moves
        .producer
        .iter()
        .chain(moves.consumer.iter())
        .all(|(_, from, _)| from.as_deref() == Some("n9")));
}

#[test]
fn property_nodes_joining_one_by_one_then_one_leaving_moves_only_its_groups() {
    let cfg = PlacementConfig::default();
    let mut rng = Rng(99);
    for _ in 0..30 {
        let total = rng.range(2, 7);
        let groups = rng.range(5, 120);
        let mut s = spec(1, groups, groups);
        let (mut p, _) = publish(reduce(&cfg, &s, None));
        for i in 1..total {
            s.nodes.insert(format!("n{i}"));
            if let Decision::Publish { placement, .. } = reduce(&cfg, &s, Some(&p)) {
                p = placement;
            }
            check_bound(&cfg, &s, &p);
        }
        let dead = format!("n{}", rng.range(0, total - 1));
        let mut s2 = s.clone();
        s2.nodes.remove(&dead);
        let (p2, moves) = publish(reduce(&cfg, &s2, Some(&p)));
        check_bound(&cfg, &s2, &p2);
        for (g, from, _) in moves.producer.iter().chain(moves.consumer.iter()) {
            assert_eq!(
                from.as_deref(),
                Some(dead.as_str()),
                "{g} moved off a live node"
            );
        }
    }
}

fn moved_between_live(before: &Placement, after: &Placement, nodes: &BTreeSet<String>) -> usize {
    let mut n = 0;
    for (b, a) in [
        (&before.producer_groups, &after.producer_groups),
        (&before.consumer_groups, &after.consumer_groups),
    ] {
        n += a
            .iter()
            .filter(|(g, to)| {
                b.get(*g)
                    .is_some_and(|from| from != *to && nodes.contains(from))
            })
            .count();
    }
    n
}

#[test]
fn a_joining_node_receives_its_groups_at_the_pace_and_ends_at_the_target() {
    let cfg = PlacementConfig::default();
    let two = spec(2, 6, 12);
    let (p0, _) = publish(reduce(&cfg, &two, None));
    let three = spec(3, 6, 12);
    let (target, _) = publish(reduce(&cfg, &three, Some(&p0)));
    let mut current = p0.clone();
    let mut steps = 0;
    loop {
        let (next, more) = pace(&current, &target, &three.nodes, 1);
        steps += 1;
        assert_eq!(next.epoch, current.epoch + 1);
        let per_kind = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            a.iter().filter(|(g, n)| b.get(*g) != Some(n)).count()
        };
        assert!(per_kind(&next.producer_groups, &current.producer_groups) <= 1);
        assert!(per_kind(&next.consumer_groups, &current.consumer_groups) <= 1);
        check_bound(
            &PlacementConfig {
                // Mid-way the sources still carry more than the new cap; never more
                // than before the join.
                epsilon: 1.0,
                ..cfg
            },
            &three,
            &next,
        );
        current = next;
        if !more {
            break;
        }
        assert!(steps < 100, "the pace converges");
    }
    assert_eq!(current.producer_groups, target.producer_groups);
    assert_eq!(current.consumer_groups, target.consumer_groups);
    let total = moved_between_live(&p0, &target, &three.nodes);
    let per_kind_max = total.max(1);
    assert!(
        steps <= per_kind_max,
        "{steps} steps for {total} moves at one per kind"
    );
    assert!(total > 1, "the join moved several groups ({total})");
}

#[test]
fn groups_of_dead_nodes_and_new_groups_are_never_held_back() {
    let cfg = PlacementConfig::default();
    let (p0, _) = publish(reduce(&cfg, &spec(3, 0, 12), None));
    // n2 died and two groups were added: one step places all of them.
    let mut two = spec(2, 0, 14);
    two.nodes.remove("n2");
    let (target, _) = publish(reduce(&cfg, &two, Some(&p0)));
    let (next, more) = pace(&p0, &target, &two.nodes, 1);
    assert!(!more, "nothing between live nodes to pace");
    assert_eq!(next.consumer_groups, target.consumer_groups);
    assert!(loads(&next.consumer_groups).keys().all(|n| n != "n2"));
}

#[test]
fn no_limit_steps_straight_to_the_target_and_the_step_is_deterministic() {
    let cfg = PlacementConfig::default();
    let (p0, _) = publish(reduce(&cfg, &spec(2, 4, 9), None));
    let three = spec(3, 4, 9);
    let (target, _) = publish(reduce(&cfg, &three, Some(&p0)));
    let (next, more) = pace(&p0, &target, &three.nodes, 0);
    assert!(!more);
    assert_eq!(next.consumer_groups, target.consumer_groups);
    assert_eq!(next.producer_groups, target.producer_groups);
    assert_eq!(
        pace(&p0, &target, &three.nodes, 2),
        pace(&p0, &target, &three.nodes, 2)
    );
}
