//! The lease table of a pull subscription, sans-IO: ready events, events handed out under
//! an ack deadline, key affinity, redelivery and the "too many handouts" decision.
//!
//! Time is injected (`now`), so every rule is unit-tested without sleeping. The async
//! shell ([`super::pull`]) owns one table per offset group behind a short-held lock.
//!
//! An ack id is `"{partition}.{offset}.{generation}"`; every handout gets a fresh
//! generation, so an ack for a lease that expired (and maybe went to someone else) does not
//! match and is reported as unknown.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cloudevents::AttributesReader;
use meshd_core::api::PulledEvent;
use meshd_core::Event;
use tokio::time::Instant;

/// One event waiting in, or handed out from, a pull subscription.
#[derive(Debug, Clone)]
pub struct PullItem {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Store time (ms since the epoch), for the delivery latency.
    pub timestamp_ms: u64,
    /// The partition key (key affinity); `None` when the event has none.
    pub key: Option<String>,
    /// What the consumer receives.
    pub payload: serde_json::Value,
    /// The original event, for dead-lettering.
    pub original: Event,
    /// How many times it was handed out.
    pub handouts: u32,
}

#[derive(Debug)]
struct Lease {
    consumer: String,
    generation: u64,
    deadline: Instant,
    item: PullItem,
}

/// What [`LeaseTable::take`] handed out, plus what it found expired on the way.
#[derive(Debug, Default)]
pub struct Taken {
    /// The events handed out.
    pub events: Vec<PulledEvent>,
    /// Of those, how many were handed out before (redeliveries).
    pub redelivered: usize,
    /// Items whose lease expired after the last allowed handout: dead-letter them.
    pub dead: Vec<PullItem>,
}

/// The result of an ack.
#[derive(Debug, Default)]
pub struct Acked {
    /// How many ids matched a live lease.
    pub acknowledged: usize,
    /// The ids that did not.
    pub unknown: Vec<String>,
    /// The acknowledged items (their offsets are done).
    pub done: Vec<PullItem>,
    /// Items found expired past their last handout: dead-letter them.
    pub dead: Vec<PullItem>,
}

/// Ready and leased events of one offset group.
#[derive(Debug)]
pub struct LeaseTable {
    ready: BTreeMap<(u32, u64), PullItem>,
    leased: HashMap<(u32, u64), Lease>,
    /// Partition key → (consumer holding leases of that key, how many).
    key_owner: HashMap<String, (String, usize)>,
    next_generation: u64,
    ack_deadline: Duration,
    max_handouts: u32,
    key_affinity: bool,
    /// Whether expired leases handed out again are noted in `retried` (for the trace).
    note_retries: bool,
    /// (source, id, the handout that expired) of leases expired back to ready since the
    /// last [`LeaseTable::take_retried`].
    retried: Vec<(String, String, u32)>,
}

/// Builds an ack id.
pub fn ack_id(partition: u32, offset: u64, generation: u64) -> String {
    format!("{partition}.{offset}.{generation}")
}

/// Parses an ack id; `None` for anything malformed.
pub fn parse_ack_id(id: &str) -> Option<(u32, u64, u64)> {
    let mut parts = id.split('.');
    let p = parts.next()?.parse().ok()?;
    let o = parts.next()?.parse().ok()?;
    let g = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((p, o, g))
}

impl LeaseTable {
    /// An empty table. `max_handouts` is the delivery policy's `max_attempts`;
    /// `key_affinity` is on for CLUSTERING.
    pub fn new(ack_deadline: Duration, max_handouts: u32, key_affinity: bool) -> LeaseTable {
        LeaseTable {
            ready: BTreeMap::new(),
            leased: HashMap::new(),
            key_owner: HashMap::new(),
            next_generation: 1,
            ack_deadline,
            max_handouts: max_handouts.max(1),
            key_affinity,
            note_retries: false,
            retried: Vec::new(),
        }
    }

    /// Notes expired leases that go back to ready (see [`LeaseTable::take_retried`]).
    pub fn note_retries(&mut self, on: bool) {
        self.note_retries = on;
    }

    /// (source, id, attempt) of the leases that expired and went back to ready since the
    /// last call (with [`LeaseTable::note_retries`] on).
    pub fn take_retried(&mut self) -> Vec<(String, String, u32)> {
        std::mem::take(&mut self.retried)
    }

    /// Adds a ready event (a duplicate position replaces nothing).
    pub fn insert(&mut self, item: PullItem) {
        let pos = (item.partition, item.offset);
        if self.leased.contains_key(&pos) {
            return;
        }
        self.ready.entry(pos).or_insert(item);
    }

    /// Events held (ready plus leased): the buffer bound applies to this.
    pub fn len(&self) -> usize {
        self.ready.len() + self.leased.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ready events.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Leased events.
    pub fn leased_len(&self) -> usize {
        self.leased.len()
    }

    /// Events handed out at least once and not finished (leased, or expired and waiting
    /// to be handed out again).
    pub fn outstanding(&self) -> usize {
        self.leased.len() + self.ready.values().filter(|i| i.handouts > 0).count()
    }

    /// The earliest lease deadline, if any lease is out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leased.values().map(|l| l.deadline).min()
    }

    fn release_key(&mut self, key: &Option<String>) {
        if let Some(k) = key {
            if let Some((_, n)) = self.key_owner.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.key_owner.remove(k);
                }
            }
        }
    }

    /// Moves expired leases back to ready, or out for dead-lettering when they were handed
    /// out `max_handouts` times.
    pub fn expire(&mut self, now: Instant) -> Vec<PullItem> {
        let expired: Vec<(u32, u64)> = self
            .leased
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(pos, _)| *pos)
            .collect();
        let mut dead = Vec::new();
        for pos in expired {
            let Some(lease) = self.leased.remove(&pos) else {
                continue;
            };
            self.release_key(&lease.item.key);
            if lease.item.handouts >= self.max_handouts {
                dead.push(lease.item);
            } else {
                if self.note_retries {
                    let e = &lease.item.original;
                    self.retried.push((
                        e.source().to_string(),
                        e.id().to_string(),
                        lease.item.handouts,
                    ));
                }
                self.ready.insert(pos, lease.item);
            }
        }
        dead
    }

    /// Hands out up to `max` ready events to `consumer`, in offset order per partition,
    /// honouring key affinity.
    pub fn take(&mut self, consumer: &str, max: usize, now: Instant) -> Taken {
        let mut taken = Taken {
            dead: self.expire(now),
            ..Taken::default()
        };
        if max == 0 {
            return taken;
        }
        let mut chosen = Vec::new();
        for (pos, item) in &self.ready {
            if chosen.len() >= max {
                break;
            }
            if self.key_affinity {
                if let Some(k) = &item.key {
                    if let Some((owner, _)) = self.key_owner.get(k) {
                        if owner != consumer {
                            continue;
                        }
                    }
                }
            }
            chosen.push(*pos);
            // Later events of this key in this same pass are fine: they go to the same
            // consumer. Record ownership now so the check above sees it.
            if self.key_affinity {
                if let Some(k) = &item.key {
                    self.key_owner
                        .entry(k.clone())
                        .or_insert_with(|| (consumer.to_string(), 0))
                        .1 += 1;
                }
            }
        }
        for pos in chosen {
            let Some(mut item) = self.ready.remove(&pos) else {
                continue;
            };
            if item.handouts > 0 {
                taken.redelivered += 1;
            }
            item.handouts = item.handouts.saturating_add(1);
            let generation = self.next_generation;
            self.next_generation += 1;
            taken.events.push(PulledEvent {
                ack_id: ack_id(pos.0, pos.1, generation),
                delivery_attempt: item.handouts,
                event: item.payload.clone(),
            });
            self.leased.insert(
                pos,
                Lease {
                    consumer: consumer.to_string(),
                    generation,
                    deadline: now + self.ack_deadline,
                    item,
                },
            );
        }
        taken
    }

    /// Acknowledges leases by ack id. Expired leases are swept first, so an ack that comes
    /// after the deadline is unknown.
    pub fn ack(&mut self, ids: Vec<String>, now: Instant) -> Acked {
        let mut acked = Acked {
            dead: self.expire(now),
            ..Acked::default()
        };
        for id in ids {
            let matched = parse_ack_id(&id).and_then(|(p, o, g)| {
                let lease = self.leased.get(&(p, o))?;
                (lease.generation == g).then_some((p, o))
            });
            match matched.and_then(|pos| self.leased.remove(&pos)) {
                Some(lease) => {
                    self.release_key(&lease.item.key);
                    acked.acknowledged += 1;
                    acked.done.push(lease.item);
                }
                None => acked.unknown.push(id),
            }
        }
        acked
    }

    /// The consumer holding a lease on a position (for tests and diagnostics).
    pub fn holder(&self, partition: u32, offset: u64) -> Option<&str> {
        self.leased
            .get(&(partition, offset))
            .map(|l| l.consumer.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn item(partition: u32, offset: u64, key: Option<&str>) -> PullItem {
        let e = EventBuilderV10::new()
            .id(format!("{partition}-{offset}"))
            .source("/t")
            .ty("t")
            .build()
            .unwrap();
        PullItem {
            partition,
            offset,
            timestamp_ms: 0,
            key: key.map(str::to_string),
            payload: serde_json::json!({ "o": offset }),
            original: e,
            handouts: 0,
        }
    }

    const DL: Duration = Duration::from_secs(10);

    #[test]
    fn ack_ids_round_trip_and_reject_garbage() {
        assert_eq!(parse_ack_id(&ack_id(3, 99, 7)), Some((3, 99, 7)));
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "-1.2.3", "1..3", "💥"] {
            assert_eq!(parse_ack_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn take_ack_and_commitable_items() {
        let now = Instant::now();
        let mut t = LeaseTable::new(DL, 3, true);
        for o in 0..5 {
            t.insert(item(0, o, None));
        }
        let got = t.take("a", 3, now);
        assert_eq!(got.events.len(), 3);
        assert!(got.events.iter().all(|e| e.delivery_attempt == 1));
        assert_eq!(got.events[0].event["o"], 0);
        assert_eq!((t.ready_len(), t.leased_len()), (2, 3));
        let ids: Vec<String> = got.events.iter().map(|e| e.ack_id.clone()).collect();
        let acked = t.ack(
            vec![
                ids[0].clone(),
                ids[2].clone(),
                "nope".into(),
                ids[0].clone(),
            ],
            now,
        );
        assert_eq!(acked.acknowledged, 2);
        assert_eq!(acked.unknown, vec!["nope".to_string(), ids[0].clone()]);
        let offs: Vec<u64> = acked.done.iter().map(|i| i.offset).collect();
        assert_eq!(offs, vec![0, 2]);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn expired_leases_are_redelivered_and_old_ack_ids_are_unknown() {
        let now = Instant::now();
        let mut t = LeaseTable::new(DL, 3, true);
        t.insert(item(0, 0, None));
        let first = t.take("a", 10, now);
        assert_eq!(t.next_deadline(), Some(now + DL));
        // Not yet expired: nothing to hand out.
        assert!(t.take("b", 10, now + DL / 2).events.is_empty());
        let second = t.take("b", 10, now + DL);
        assert_eq!(second.events.len(), 1);
        assert_eq!(second.redelivered, 1);
        assert_eq!(second.events[0].delivery_attempt, 2);
        assert_ne!(second.events[0].ack_id, first.events[0].ack_id);
        assert_eq!(t.holder(0, 0), Some("b"));
        let late = t.ack(vec![first.events[0].ack_id.clone()], now + DL);
        assert_eq!(late.acknowledged, 0);
        assert_eq!(late.unknown.len(), 1);
        let ok = t.ack(vec![second.events[0].ack_id.clone()], now + DL);
        assert_eq!(ok.acknowledged, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn dead_after_max_handouts() {
        let now = Instant::now();
        let mut t = LeaseTable::new(DL, 2, false);
        t.insert(item(0, 0, None));
        assert_eq!(t.take("a", 1, now).events.len(), 1);
        assert_eq!(t.take("a", 1, now + DL).events[0].delivery_attempt, 2);
        let third = t.take("a", 1, now + DL * 2);
        assert!(third.events.is_empty());
        assert_eq!(third.dead.len(), 1);
        assert_eq!(third.dead[0].handouts, 2);
        assert!(t.is_empty());
    }

    #[test]
    fn key_affinity_keeps_a_key_with_its_consumer() {
        let now = Instant::now();
        let mut t = LeaseTable::new(DL, 5, true);
        t.insert(item(0, 0, Some("k")));
        t.insert(item(0, 1, Some("k")));
        t.insert(item(0, 2, Some("other")));
        let a = t.take("a", 1, now);
        assert_eq!(a.events[0].event["o"], 0);
        // b must not get offset 1 (key k is leased to a); it gets "other".
        let b = t.take("b", 10, now);
        let offs: Vec<_> = b.events.iter().map(|e| e.event["o"].clone()).collect();
        assert_eq!(offs, vec![serde_json::json!(2)]);
        // a gets the next k event.
        let a2 = t.take("a", 10, now);
        assert_eq!(a2.events[0].event["o"], 1);
        // Once a acknowledged everything of k, anyone may take k again.
        t.ack(
            vec![a.events[0].ack_id.clone(), a2.events[0].ack_id.clone()],
            now,
        );
        t.insert(item(0, 3, Some("k")));
        assert_eq!(t.take("b", 10, now).events[0].event["o"], 3);
    }

    #[test]
    fn broadcasting_tables_have_no_affinity() {
        let now = Instant::now();
        let mut t = LeaseTable::new(DL, 5, false);
        t.insert(item(0, 0, Some("k")));
        t.insert(item(0, 1, Some("k")));
        assert_eq!(t.take("a", 1, now).events.len(), 1);
        assert_eq!(t.take("b", 1, now).events.len(), 1);
    }
}
