//! Replication sequences without sockets: clusters as in-memory logs, links as senders
//! with durable cursors, driven through the sans-IO pieces the bridge uses (origin marks,
//! where a link starts, which partition a receiver stores in, which events a sender skips).
//! Each scenario checks what went over the wire and that every receiver ends up with every
//! event exactly once, in origin order per partition.

use std::collections::{BTreeMap, HashMap};

use meshd_federation::marks::{
    receive_partition, start_position, Marks, OriginPos, PeerMarks, Start,
};

const TOPIC: &str = "t";
const PARTITIONS: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
struct Event {
    origin: String,
    pos: OriginPos,
}

struct Cluster {
    name: String,
    parts: Vec<Vec<Event>>,
    marks: Marks,
}

impl Cluster {
    fn new(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            parts: vec![Vec::new(); PARTITIONS as usize],
            marks: Marks::default(),
        }
    }

    /// A local publish to partition `p`.
    fn publish(&mut self, p: u32) {
        let offset = self.parts[p as usize].len() as u64;
        let name = self.name.clone();
        self.parts[p as usize].push(Event {
            origin: name,
            pos: OriginPos {
                partition: p,
                offset,
            },
        });
    }

    /// Stores a replicated event as the bridge's storer does.
    fn receive(&mut self, e: Event) {
        let (p, exact) = receive_partition(Some(e.pos), PARTITIONS, 0);
        assert!(exact);
        self.marks.observe(&e.origin, TOPIC, e.pos);
        self.parts[p as usize].push(e);
    }

    fn all(&self) -> Vec<(String, u32, u64)> {
        let mut v: Vec<_> = self
            .parts
            .iter()
            .flatten()
            .map(|e| (e.origin.clone(), e.pos.partition, e.pos.offset))
            .collect();
        v.sort();
        v
    }
}

/// One direction of a link: the sender's durable cursors (acknowledged positions).
#[derive(Default)]
struct Link {
    cursor: HashMap<u32, u64>,
    sent: u64,
}

impl Link {
    /// A session: the receiver's marks arrive first, then the sender reads every
    /// partition from its cursor (or the start the interest asks for) and sends what the
    /// receiver lacks; `ack` says whether the acks come back (a cut drops them).
    fn session(&mut self, from: &Cluster, to: &mut Cluster, since_history: bool, ack: bool) {
        let mut peer = PeerMarks::default();
        peer.update(to.marks.for_topics([TOPIC]));
        for p in 0..PARTITIONS {
            let log = &from.parts[p as usize];
            let end = log.len() as u64;
            let since = if since_history { None } else { Some(u64::MAX) };
            let start = match start_position(self.cursor.get(&p).copied(), (0, end), since) {
                Start::At(o) => o,
                // Nothing is stored "since the end of time": a latest interest without a
                // cursor starts at the end.
                Start::Since(_) => end,
            };
            for e in log.iter().skip(start as usize) {
                let own_end = (e.origin == from.name).then_some(end);
                if e.origin == to.name || peer.holds(&e.origin, TOPIC, e.pos, own_end) {
                    continue;
                }
                self.sent += 1;
                to.receive(e.clone());
            }
            if ack {
                self.cursor.insert(p, end);
            }
        }
    }
}

fn exactly_once(c: &Cluster, want: &[&Cluster]) {
    let mut expected: Vec<(String, u32, u64)> = want
        .iter()
        .flat_map(|w| {
            w.parts
                .iter()
                .flatten()
                .filter(|e| e.origin == w.name)
                .map(|e| (e.origin.clone(), e.pos.partition, e.pos.offset))
                .collect::<Vec<_>>()
        })
        .collect();
    expected.sort();
    assert_eq!(
        c.all(),
        expected,
        "{} holds every event exactly once",
        c.name
    );
    // Origin order per partition.
    for part in &c.parts {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for e in part {
            if let Some(prev) = last.insert(&e.origin, e.pos.offset) {
                assert!(prev < e.pos.offset, "{}: {e:?} after offset {prev}", c.name);
            }
        }
    }
}

#[test]
fn a_reroute_sends_only_what_the_receiver_lacks() {
    let (mut a, mut b, mut c) = (Cluster::new("a"), Cluster::new("b"), Cluster::new("c"));
    for i in 0..3_000u32 {
        a.publish(i % PARTITIONS);
    }
    // a → b → c.
    let (mut ab, mut bc, mut ac) = (Link::default(), Link::default(), Link::default());
    ab.session(&a, &mut b, true, true);
    bc.session(&b, &mut c, true, true);
    assert_eq!((ab.sent, bc.sent), (3_000, 3_000));
    // b is lost: the direct link, which never carried the topic, starts at a's history
    // and skips all of it.
    for i in 0..200u32 {
        a.publish(i % PARTITIONS);
    }
    ac.session(&a, &mut c, true, true);
    assert_eq!(ac.sent, 200, "only the new events crossed the new link");
    exactly_once(&c, &[&a]);
}

#[test]
fn a_lost_ack_is_not_sent_again_after_a_reconnect() {
    let (mut a, mut b) = (Cluster::new("a"), Cluster::new("b"));
    let mut ab = Link::default();
    for i in 0..100u32 {
        a.publish(i % PARTITIONS);
    }
    ab.session(&a, &mut b, true, true);
    for i in 0..50u32 {
        a.publish(i % PARTITIONS);
    }
    // Stored by b, the acks lost on the wire.
    ab.session(&a, &mut b, true, false);
    assert_eq!(ab.sent, 150);
    // Reconnect: the cursor is behind, b's marks say what it has.
    ab.session(&a, &mut b, true, true);
    assert_eq!(ab.sent, 150, "nothing sent twice");
    exactly_once(&b, &[&a]);
}

#[test]
fn relayed_and_own_events_interleaved_survive_a_change_of_path() {
    // a and b both publish; c first gets everything through b (a's relayed), then b's
    // link to c is cut with some of it unsent, and c catches up: a's from a directly,
    // b's when b's link returns. Nothing lost, nothing twice, origin order kept.
    let (mut a, mut b, mut c) = (Cluster::new("a"), Cluster::new("b"), Cluster::new("c"));
    let (mut ab, mut bc, mut ac) = (Link::default(), Link::default(), Link::default());
    for round in 0..5u32 {
        for i in 0..40u32 {
            a.publish((i + round) % PARTITIONS);
            b.publish(i % PARTITIONS);
        }
        ab.session(&a, &mut b, true, true);
        if round < 3 {
            bc.session(&b, &mut c, true, true);
        }
    }
    // b → c is down for rounds 3 and 4: c lacks a's and b's last events. a's direct link
    // (no cursor yet) sends only a's events c lacks.
    let before = ac.sent;
    ac.session(&a, &mut c, true, true);
    let a_missing = ac.sent - before;
    assert_eq!(a_missing, 80, "a's events of the two rounds c missed");
    // b's link returns: its cursor resumes; a's events relayed by b are skipped (held).
    let before = bc.sent;
    bc.session(&b, &mut c, true, true);
    assert_eq!(bc.sent - before, 80, "only b's own missing events");
    exactly_once(&c, &[&a, &b]);
}

#[test]
fn a_latest_interest_without_a_cursor_starts_at_the_end() {
    let (mut a, mut c) = (Cluster::new("a"), Cluster::new("c"));
    for i in 0..300u32 {
        a.publish(i % PARTITIONS);
    }
    let mut ac = Link::default();
    ac.session(&a, &mut c, false, true);
    assert_eq!(
        ac.sent, 0,
        "old events are not replayed into a latest subscription"
    );
    for i in 0..100u32 {
        a.publish(i % PARTITIONS);
    }
    ac.session(&a, &mut c, false, true);
    assert_eq!(ac.sent, 100);
}
