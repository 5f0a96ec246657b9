//! The membership machine with explicit instants: no registry, no sockets, no sleeps.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

const TTL: Duration = Duration::from_secs(2);

fn placement(epoch: u64, groups: &[(&str, &str)]) -> Placement {
    Placement {
        epoch,
        producer_groups: BTreeMap::new(),
        consumer_groups: groups
            .iter()
            .map(|(g, n)| (g.to_string(), n.to_string()))
            .collect(),
    }
}

fn peers(ids: &[&str]) -> BTreeMap<String, String> {
    ids.iter()
        .map(|id| (id.to_string(), format!("http://{id}")))
        .collect()
}

/// Reports of nodes that report nothing (not waited for in a hand-over).
fn silent(ids: &[&str]) -> BTreeMap<String, Option<DeliveryReport>> {
    ids.iter().map(|id| (id.to_string(), None)).collect()
}

fn starts(acts: &[Action]) -> Vec<&str> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Start(g) => Some(g.as_str()),
            _ => None,
        })
        .collect()
}

fn stops(acts: &[Action]) -> Vec<&str> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Stop(g) => Some(g.as_str()),
            _ => None,
        })
        .collect()
}

fn asked(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::AskPeers(p) => Some(p.iter().map(|p| p.id.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Node `a` of `a, b, c`, delivering `g1` under epoch 1, lease acknowledged at `t0`.
fn running(t0: Instant) -> Membership {
    let mut m = Membership::new("a", LeaseConfig::with_ttl(TTL), t0);
    m.peers(peers(&["a", "b", "c"]), t0);
    m.peer_reports(silent(&["b", "c"]), t0);
    let acts = m.placement(placement(1, &[("g1", "a"), ("g2", "b")]), t0);
    assert_eq!(starts(&acts), vec!["g1"]);
    m
}

/// Runs the machine's timers from `from` to `to`, answering every question with `answer`
/// (given at the instant it is asked); returns every action.
fn run(
    m: &mut Membership,
    from: Instant,
    to: Instant,
    answer: impl Fn(&str) -> PeerAnswer,
) -> Vec<(Instant, Action)> {
    let mut all = Vec::new();
    let mut now = from;
    loop {
        let acts = m.tick(now);
        let mut more = Vec::new();
        for a in &acts {
            if let Action::AskPeers(ps) = a {
                for p in ps {
                    more.extend(m.peer_answer(&p.id, now, answer(&p.id), now));
                }
            }
        }
        all.extend(acts.into_iter().chain(more).map(|a| (now, a)));
        match m.next_wake(now) {
            Some(t) if t <= to => now = t,
            _ => break,
        }
    }
    all
}

#[test]
fn owned_groups_follow_the_newest_placement() {
    let t0 = Instant::now();
    let mut m = running(t0);
    let acts = m.placement(placement(3, &[("g1", "b"), ("g2", "a")]), t0);
    assert_eq!(stops(&acts), vec!["g1"]);
    assert_eq!(starts(&acts), vec!["g2"]);
    // An older epoch never replaces a newer one (fencing).
    let acts = m.placement(placement(2, &[("g1", "a")]), t0);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(m.epoch(), Some(3));
    assert!(owned_by(None, "a").is_empty());
}

#[test]
fn without_peers_every_group_stops_at_the_lease_deadline() {
    let t0 = Instant::now();
    let mut m = Membership::new("a", LeaseConfig::with_ttl(TTL), t0);
    m.placement(placement(1, &[("g1", "a")]), t0);
    let deadline = t0 + TTL - LeaseConfig::with_ttl(TTL).safety_margin();
    let acts = run(&mut m, t0, t0 + TTL * 10, |_| PeerAnswer::Promise(TTL));
    let stop_at: Vec<Instant> = acts
        .iter()
        .filter(|(_, a)| matches!(a, Action::Stop(_)))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(stop_at, vec![deadline]);
    assert_eq!(m.health(), Health::LeaseLost);
    assert!(acts.iter().all(|(_, a)| !matches!(a, Action::AskPeers(_))));
}

#[test]
fn promises_from_every_peer_carry_the_groups_past_the_deadline() {
    let t0 = Instant::now();
    let mut m = running(t0);
    let acts = run(&mut m, t0, t0 + TTL * 15, |_| PeerAnswer::Promise(TTL));
    assert!(
        acts.iter().all(|(_, a)| !matches!(a, Action::Stop(_))),
        "{acts:?}"
    );
    let asked_peers: std::collections::BTreeSet<String> = acts
        .iter()
        .flat_map(|(_, a)| asked(std::slice::from_ref(a)))
        .collect();
    assert_eq!(asked_peers, ["b".to_string(), "c".to_string()].into());
    assert_eq!(m.health(), Health::ServingOnPromises);
    assert_eq!(m.delivering(), &["g1".to_string()].into());
    // A placement seen meanwhile giving it a new group starts nothing new...
    let now = t0 + TTL * 15;
    let acts = m.placement(placement(2, &[("g1", "a"), ("g3", "a")]), now);
    assert!(starts(&acts).is_empty(), "{acts:?}");
    // ...and a group taken away stops at once.
    let acts = m.placement(placement(3, &[("g3", "a")]), now);
    assert_eq!(stops(&acts), vec!["g1"]);
}

#[test]
fn one_peer_reaching_the_registry_ends_the_extension_at_the_deadline() {
    let t0 = Instant::now();
    let mut m = running(t0);
    let deadline = t0 + TTL - LeaseConfig::with_ttl(TTL).safety_margin();
    let acts = run(&mut m, t0, t0 + TTL * 10, |p| {
        if p == "c" {
            PeerAnswer::ReachesRegistry
        } else {
            PeerAnswer::Promise(TTL)
        }
    });
    let stop: Vec<(Instant, &str)> = acts
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Stop(g) => Some((*t, g.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(stop, vec![(deadline, "g1")]);
    assert_eq!(m.health(), Health::LeaseLost);
}

#[test]
fn a_peer_that_stops_answering_ends_the_extension_when_its_last_promise_runs_out() {
    let t0 = Instant::now();
    let mut m = running(t0);
    let margin = LeaseConfig::with_ttl(TTL).safety_margin();
    // Promises from both until t1; from then on c is silent.
    let t1 = t0 + TTL * 3;
    run(&mut m, t0, t1, |_| PeerAnswer::Promise(TTL));
    assert_eq!(m.health(), Health::ServingOnPromises);
    let acts = run(&mut m, t1, t1 + TTL * 3, |p| {
        if p == "c" {
            PeerAnswer::NoAnswer
        } else {
            PeerAnswer::Promise(TTL)
        }
    });
    let (stop_at, _) = acts
        .iter()
        .find(|(_, a)| matches!(a, Action::Stop(_)))
        .expect("stopped");
    // c's last promise was asked before t1: it covers at most TTL − margin from then.
    assert!(*stop_at <= t1 + TTL - margin, "{stop_at:?}");
    // Promises from c again do not restart a group stopped meanwhile.
    let t2 = t1 + TTL * 3;
    let acts = run(&mut m, t2, t2 + TTL * 3, |_| PeerAnswer::Promise(TTL));
    assert!(starts(&acts.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>()).is_empty());
}

#[test]
fn a_peer_that_promised_starts_a_moved_group_only_after_its_promise_ran_out() {
    let t0 = Instant::now();
    let mut b = Membership::new("b", LeaseConfig::with_ttl(TTL), t0);
    b.placement(placement(1, &[("g1", "a")]), t0);
    // b's keep-alives fail too: it promises.
    let t1 = t0 + TTL;
    b.lease(Lease::Lost, t1);
    assert_eq!(b.promise(t1), Some(TTL));
    // b regains its lease, reads a placement giving it a's group.
    let t2 = t1 + TTL / 4;
    let acts = b.lease(Lease::Held { last_ack: t2 }, t2);
    assert!(acts.contains(&Action::ReadPlacement));
    let acts = b.placement_read(Some(placement(2, &[("g1", "b")])), t2);
    assert!(starts(&acts).is_empty(), "bound by its promise: {acts:?}");
    // Reaching the registry again, it promises nothing more.
    assert_eq!(b.promise(t2), None);
    let end = t1 + TTL;
    assert!(starts(&b.tick(end - Duration::from_millis(1))).is_empty());
    let acts = b.lease(Lease::Held { last_ack: end }, end);
    assert_eq!(starts(&acts), vec!["g1"]);
}

#[test]
fn a_regained_lease_starts_nothing_before_the_placement_is_read_again() {
    let t0 = Instant::now();
    let mut m = Membership::new("a", LeaseConfig::with_ttl(TTL), t0);
    m.peer_reports(silent(&["b"]), t0);
    m.placement(placement(1, &[("g1", "a")]), t0);
    let t1 = t0 + TTL;
    let acts = m.lease(Lease::Lost, t1);
    assert_eq!(stops(&acts), vec!["g1"]);
    assert!(acts.contains(&Action::Health(Health::LeaseLost)));
    let t2 = t1 + TTL;
    let acts = m.lease(Lease::Held { last_ack: t2 }, t2);
    assert_eq!(
        acts,
        vec![Action::ReadPlacement, Action::Health(Health::Registered)]
    );
    // The stale watch placement still names it: nothing starts until the read answers.
    assert!(m.tick(t2).is_empty());
    let acts = m.placement_read(Some(placement(4, &[("g1", "b"), ("g2", "a")])), t2);
    assert_eq!(starts(&acts), vec!["g2"]);
    assert_eq!(m.epoch(), Some(4));
}

#[test]
fn promises_carry_the_groups_until_the_placement_is_read_after_the_outage() {
    let t0 = Instant::now();
    let mut m = running(t0);
    let t1 = t0 + TTL * 5;
    run(&mut m, t0, t1, |_| PeerAnswer::Promise(TTL));
    m.lease(Lease::Lost, t1);
    assert_eq!(m.health(), Health::ServingOnPromises);
    // Back: lease regained, the placement is being read; g1 keeps running meanwhile.
    let acts = m.lease(Lease::Held { last_ack: t1 }, t1);
    assert!(acts.contains(&Action::ReadPlacement));
    assert!(stops(&acts).is_empty(), "{acts:?}");
    let acts = m.placement_read(Some(placement(1, &[("g1", "a"), ("g2", "b")])), t1);
    assert!(
        stops(&acts).is_empty() && starts(&acts).is_empty(),
        "{acts:?}"
    );
    assert_eq!(m.health(), Health::Registered);
}

#[test]
fn a_node_answers_promises_only_while_it_does_not_reach_the_registry() {
    let t0 = Instant::now();
    let cfg = LeaseConfig::with_ttl(TTL);
    let mut m = Membership::new("b", cfg, t0);
    assert_eq!(m.promise(t0), None);
    let stale = t0 + cfg.interval() + cfg.safety_margin();
    assert_eq!(m.promise(stale - Duration::from_millis(1)), None);
    assert_eq!(m.promise(stale), Some(TTL));
    // The promise holds TTL from the answer: a group placed here meanwhile waits.
    m.lease(Lease::Held { last_ack: stale }, stale);
    let acts = m.placement(placement(2, &[("g", "b")]), stale);
    assert!(starts(&acts).is_empty());
    let later = stale + TTL;
    assert!(starts(&m.tick(later - Duration::from_millis(1))).is_empty());
    assert_eq!(
        starts(&m.lease(Lease::Held { last_ack: later }, later)),
        vec!["g"]
    );
}

fn report(epoch: u64, groups: &[&str]) -> Option<DeliveryReport> {
    Some(DeliveryReport {
        epoch: Some(epoch),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
}

fn reports(rs: &[(&str, Option<DeliveryReport>)]) -> BTreeMap<String, Option<DeliveryReport>> {
    rs.iter()
        .map(|(id, r)| (id.to_string(), r.clone()))
        .collect()
}

fn reported(acts: &[Action]) -> Vec<DeliveryReport> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Node `b` of `a, b`: `a` delivers `g1` and `g2` under epoch 1, both reporting it.
fn joined(t0: Instant) -> Membership {
    let mut b = Membership::new("b", LeaseConfig::with_ttl(TTL), t0);
    b.peers(peers(&["a"]), t0);
    b.peer_reports(reports(&[("a", report(1, &["g1", "g2"]))]), t0);
    let acts = b.placement(placement(1, &[("g1", "a"), ("g2", "a")]), t0);
    assert!(starts(&acts).is_empty());
    assert_eq!(reported(&acts), vec![report(1, &[]).unwrap()]);
    b
}

#[test]
fn a_moved_group_starts_only_after_its_previous_owner_reports_it_stopped() {
    let t0 = Instant::now();
    let mut b = joined(t0);
    let t1 = t0 + Duration::from_millis(100);
    // Epoch 2 moves g2 to b; a has not applied it yet: b waits.
    let acts = b.placement(placement(2, &[("g1", "a"), ("g2", "b")]), t1);
    assert!(starts(&acts).is_empty(), "{acts:?}");
    assert_eq!(b.waiting().iter().collect::<Vec<_>>(), vec!["g2"]);
    // b reports the new epoch at once (it delivers nothing yet), so a never waits on it.
    assert_eq!(reported(&acts), vec![report(2, &[]).unwrap()]);
    // a reports epoch 2 but still lists g2 (a stale or reordered report): still waiting.
    let acts = b.peer_reports(reports(&[("a", report(2, &["g1", "g2"]))]), t1);
    assert!(starts(&acts).is_empty(), "{acts:?}");
    // a stopped g2 (report written after the stop): b starts it, and reports it.
    let t2 = t1 + Duration::from_millis(30);
    let acts = b.peer_reports(reports(&[("a", report(2, &["g1"]))]), t2);
    assert_eq!(starts(&acts), vec!["g2"]);
    assert_eq!(reported(&acts), vec![report(2, &["g2"]).unwrap()]);
    assert!(b.waiting().is_empty());
}

#[test]
fn a_report_of_an_older_epoch_does_not_hand_a_group_over() {
    let t0 = Instant::now();
    let mut b = joined(t0);
    let t1 = t0 + Duration::from_millis(100);
    b.placement(placement(3, &[("g1", "a"), ("g2", "b")]), t1);
    // a reports without g2 but at epoch 2: it may have started g2 under epoch 2 since.
    let acts = b.peer_reports(reports(&[("a", report(2, &["g1"]))]), t1);
    assert!(starts(&acts).is_empty(), "{acts:?}");
    let acts = b.peer_reports(reports(&[("a", report(3, &["g1"]))]), t1);
    assert_eq!(starts(&acts), vec!["g2"]);
}

#[test]
fn a_node_named_by_the_placement_but_not_known_yet_is_waited_for() {
    let t0 = Instant::now();
    let mut b = joined(t0);
    let t1 = t0 + Duration::from_millis(100);
    // c joined; b's member view lags behind the placement naming it.
    let p = placement(2, &[("g1", "a"), ("g2", "b"), ("g3", "c")]);
    b.peer_reports(reports(&[("a", report(2, &["g1"]))]), t1);
    let acts = b.placement(p, t1);
    assert!(starts(&acts).is_empty(), "{acts:?}");
    let acts = b.peer_reports(
        reports(&[("a", report(2, &["g1"])), ("c", report(2, &["g3"]))]),
        t1,
    );
    assert_eq!(starts(&acts), vec!["g2"]);
}

#[test]
fn gone_members_and_nodes_reporting_nothing_are_not_waited_for() {
    let t0 = Instant::now();
    let mut b = joined(t0);
    let t1 = t0 + Duration::from_millis(100);
    // a's member key is gone (its lease expired: the lease rule stopped it), c is an
    // older node that reports nothing.
    b.peer_reports(reports(&[("c", None)]), t1);
    let acts = b.placement(placement(2, &[("g1", "b"), ("g2", "b"), ("g3", "c")]), t1);
    assert_eq!(starts(&acts), vec!["g1", "g2"]);
}

#[test]
fn a_group_moving_away_stops_at_once_and_the_report_follows_the_stop() {
    let t0 = Instant::now();
    let mut a = Membership::new("a", LeaseConfig::with_ttl(TTL), t0);
    a.peer_reports(reports(&[("b", report(1, &[]))]), t0);
    let acts = a.placement(placement(1, &[("g1", "a"), ("g2", "a")]), t0);
    assert_eq!(starts(&acts), vec!["g1", "g2"]);
    let t1 = t0 + Duration::from_millis(100);
    // Epoch 2 moves g2 to b: a stops it without waiting for anyone, and its report (to
    // be written after the stop) says so.
    let acts = a.placement(placement(2, &[("g1", "a"), ("g2", "b")]), t1);
    assert_eq!(stops(&acts), vec!["g2"]);
    assert_eq!(reported(&acts), vec![report(2, &["g1"]).unwrap()]);
    // Nothing new to report while nothing changes.
    assert!(reported(&a.tick(t1 + Duration::from_millis(10))).is_empty());
}

/// Two machines, each fed the other's reports as soon as they are written, move a group
/// back and forth: at no step do both deliver it.
#[test]
fn two_nodes_following_the_same_placements_never_deliver_a_group_together() {
    let t0 = Instant::now();
    let cfg = LeaseConfig::with_ttl(TTL);
    let mut a = Membership::new("a", cfg, t0);
    let mut b = Membership::new("b", cfg, t0);
    let mut now = t0;
    // Placements alternate the owner of g; each node sees each placement at a different
    // step (b lags a by one), and reports reach the other one step later.
    let owners = ["a", "b", "a", "b", "b", "a"];
    let mut rep_a = None;
    let mut rep_b = None;
    for (i, owner) in owners.iter().enumerate() {
        let p = placement(i as u64 + 1, &[("g", owner), ("h", "a"), ("k", "b")]);
        for step in 0..3 {
            now += Duration::from_millis(10);
            let (ra, rb) = (rep_a.clone(), rep_b.clone());
            let mut acts_a = Vec::new();
            let mut acts_b = Vec::new();
            if step == 0 {
                acts_a.extend(a.placement(p.clone(), now));
            }
            if step == 1 {
                acts_b.extend(b.placement(p.clone(), now));
            }
            acts_a.extend(a.peer_reports(reports(&[("b", rb)]), now));
            acts_b.extend(b.peer_reports(reports(&[("a", ra)]), now));
            if let Some(r) = reported(&acts_a).pop() {
                rep_a = Some(r);
            }
            if let Some(r) = reported(&acts_b).pop() {
                rep_b = Some(r);
            }
            assert!(
                !(a.delivering().contains("g") && b.delivering().contains("g")),
                "placement {} step {step}: both deliver g",
                i + 1
            );
        }
    }
    // The last placement gives g to a, and a got there.
    assert!(a.delivering().contains("g"));
}
