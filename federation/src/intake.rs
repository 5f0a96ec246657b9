//! The receiving side's storing round (sans-IO): which received events are stored, in
//! which order, grouped how.
//!
//! The bridge's storer takes every batch a peer sent while its previous append ran and
//! makes one [`Round`] of them: each event's (source, id) key is reserved in the duplicate
//! window shared by every link ([`DedupWindow::reserve_for`]), a duplicate is dropped, a
//! fresh event gets this cluster appended to its path and joins its topic's group
//! ([`Pending`]), in arrival order. One append per topic per round follows (shell).
//!
//! An event another link's storer reserved and has not stored yet
//! ([`Admit::HeldElsewhere`]: a reroute delivers the same events over two links) must be
//! stored before anything after it here, or a later event could overtake it in the log.
//! So the shell stores what the round holds so far ([`Round::take`]) and waits until the
//! other storer stored the key (then it is a duplicate here) or released it (then it is
//! taken here), and asks again. No storer waits while holding an unresolved reservation,
//! so two storers cannot wait for each other.

use meshd_core::codec::RawEvent;
use meshd_core::event::POS_EXT;

use crate::link::{received_path, DedupKey, DedupWindow, Reservation, ORIGIN_EXT, PATH_EXT};
use crate::marks::OriginPos;

/// A received event ready to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its partition key.
    pub key: Option<String>,
    /// Its origin and position there (absent for events of older peers).
    pub origin: Option<(String, OriginPos)>,
    /// The event with this cluster on its path.
    pub payload: Vec<u8>,
    /// (source, id) when tracing is on: its `stored` record is made once appended.
    pub traced: Option<(String, String)>,
}

/// Received events of one topic, ready to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The topic (its wire name).
    pub topic: String,
    /// The sender's partition count (used when the topic has to be made here).
    pub partitions: u32,
    /// In arrival order.
    pub records: Vec<Received>,
    /// Their keys in the duplicate window (reserved by the round's owner).
    pub keys: Vec<DedupKey>,
}

/// What [`Round::admit`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Not seen: reserved and added to the round.
    Fresh,
    /// Stored already (or earlier in this round): dropped, counted by the window.
    Duplicate,
    /// Reserved by another link's storer and not stored yet: store what the round holds
    /// ([`Round::take`]), wait until that key is stored or released, then admit again.
    HeldElsewhere,
}

/// One storer round of received events (see the module docs).
#[derive(Debug)]
pub struct Round {
    me: String,
    owner: u64,
    groups: Vec<Pending>,
}

impl Round {
    /// A round of the storer `owner` (its id in the duplicate window) in cluster `me`.
    pub fn new(me: &str, owner: u64) -> Round {
        Round {
            me: me.to_string(),
            owner,
            groups: Vec::new(),
        }
    }

    /// Checks one event received for `topic` (the sender has `partitions` partitions);
    /// `payload` is the event's bytes as received. `trace` keeps its (source, id) for
    /// the event trace.
    pub fn admit(
        &mut self,
        dedup: &mut DedupWindow,
        topic: &str,
        partitions: u32,
        raw: &RawEvent<'_>,
        payload: &[u8],
        trace: bool,
    ) -> Admit {
        let key = DedupWindow::key(raw);
        match dedup.reserve_for(&key, self.owner) {
            Reservation::Fresh => {}
            Reservation::Duplicate => return Admit::Duplicate,
            Reservation::HeldElsewhere => return Admit::HeldElsewhere,
        }
        let payload = match &received_path(raw, &self.me) {
            Some(p) => raw.with_extensions(&[(PATH_EXT, p)]),
            None => payload.to_vec(),
        };
        let i = match self.groups.iter().position(|g| g.topic == topic) {
            Some(i) => i,
            None => {
                self.groups.push(Pending {
                    topic: topic.to_string(),
                    partitions,
                    records: Vec::new(),
                    keys: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        let origin = raw.extension(ORIGIN_EXT).and_then(|o| {
            let pos = raw.extension(POS_EXT).and_then(OriginPos::parse)?;
            Some((o.to_string(), pos))
        });
        let g = &mut self.groups[i];
        g.records.push(Received {
            key: raw.partition_key().map(str::to_string),
            origin,
            payload,
            traced: trace.then(|| (raw.source().to_string(), raw.id().to_string())),
        });
        g.keys.push(key);
        Admit::Fresh
    }

    /// Whether the round holds an event to store.
    pub fn has_records(&self) -> bool {
        self.groups.iter().any(|g| !g.records.is_empty())
    }

    /// What the round holds so far (its keys stay reserved until stored or released);
    /// the round goes on empty.
    pub fn take(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.groups)
    }

    /// Releases the reservations of a round that will not be stored (a re-send of its
    /// events is then admitted).
    pub fn release(dedup: &mut DedupWindow, round: &[Pending]) {
        for g in round {
            dedup.release(&g.keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};
    use meshd_core::codec::encode_event;

    fn bytes(id: &str) -> Vec<u8> {
        let e = EventBuilderV10::new()
            .id(id)
            .source("s")
            .ty("t")
            .build()
            .unwrap();
        let b = encode_event(&e);
        let raw = RawEvent::parse(&b).unwrap();
        raw.with_extensions(&[(ORIGIN_EXT, "a"), (POS_EXT, "0:7"), (PATH_EXT, "a")])
    }

    fn admit(r: &mut Round, w: &mut DedupWindow, topic: &str, id: &str) -> Admit {
        let b = bytes(id);
        let raw = RawEvent::parse(&b).unwrap();
        r.admit(w, topic, 2, &raw, &b, false)
    }

    #[test]
    fn fresh_events_are_grouped_by_topic_in_arrival_order_with_this_cluster_on_their_path() {
        let mut w = DedupWindow::new(100);
        let mut r = Round::new("b", 1);
        assert!(!r.has_records());
        for (t, id) in [("t", "1"), ("u", "2"), ("t", "3")] {
            assert_eq!(admit(&mut r, &mut w, t, id), Admit::Fresh);
        }
        let groups = r.take();
        assert!(!r.has_records(), "taken");
        assert_eq!(groups.len(), 2);
        let ids: Vec<String> = groups[0]
            .records
            .iter()
            .map(|x| RawEvent::parse(&x.payload).unwrap().id().to_string())
            .collect();
        assert_eq!(
            (groups[0].topic.as_str(), ids),
            ("t", vec!["1".into(), "3".into()])
        );
        let rec = &groups[1].records[0];
        let raw = RawEvent::parse(&rec.payload).unwrap();
        assert_eq!(raw.extension(PATH_EXT), Some("a,b"));
        assert_eq!(
            rec.origin,
            Some((
                "a".into(),
                OriginPos {
                    partition: 0,
                    offset: 7
                }
            ))
        );
        assert_eq!(groups[1].partitions, 2);
    }

    #[test]
    fn a_duplicate_is_dropped_and_an_event_held_by_another_link_waits() {
        let mut w = DedupWindow::new(100);
        let mut mine = Round::new("c", 1);
        let mut other = Round::new("c", 2);
        // The same event twice in one round: the second is a duplicate.
        assert_eq!(admit(&mut mine, &mut w, "t", "1"), Admit::Fresh);
        assert_eq!(admit(&mut mine, &mut w, "t", "1"), Admit::Duplicate);
        // Another link delivers it while it is not stored yet: held, not dropped.
        assert_eq!(admit(&mut other, &mut w, "t", "1"), Admit::HeldElsewhere);
        assert!(!other.has_records());
        // Stored: a duplicate for the other link too.
        let stored = mine.take();
        w.commit(&stored[0].keys);
        assert_eq!(admit(&mut other, &mut w, "t", "1"), Admit::Duplicate);
        assert_eq!(w.duplicates(), 2);
        // Released (the append failed): the other link takes it.
        assert_eq!(admit(&mut mine, &mut w, "t", "2"), Admit::Fresh);
        assert_eq!(admit(&mut other, &mut w, "t", "2"), Admit::HeldElsewhere);
        let failed = mine.take();
        Round::release(&mut w, &failed);
        assert_eq!(admit(&mut other, &mut w, "t", "2"), Admit::Fresh);
    }
}
