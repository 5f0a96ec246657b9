//! Positions in origin terms (sans-IO): what a receiver holds of each origin partition,
//! and where a link starts for a partition it has no position for.
//!
//! Every replicated event carries its origin position (`meshdorigin` and `meshdpos` =
//! `PARTITION:OFFSET`, stamped when it first leaves its origin). A receiver stores an event
//! of origin partition `p` in its own partition `p` (when the topic has that many; the
//! catalog gives every cluster the origin's partition count), so each origin partition
//! flows through exactly one partition of every cluster on its way, in origin order. It
//! keeps, per (origin, topic, origin partition), the highest origin offset it stored
//! ([`Marks`], persisted in the store's metadata a moment after the events themselves: a
//! mark may trail its events, never lead them). Before it asks a neighbour for a topic it
//! sends its marks for it ([`meshd_core::wire::Frame::Marks`]); the neighbour
//! ([`PeerMarks`]) starts its own events right after the mark and skips relayed events
//! the receiver already holds. A reroute, a re-added link or a new subscriber cluster
//! therefore carries only what the receiver lacks; the duplicate window is a safety net.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshd_core::wire::{InterestEntry, Mark};

/// The store metadata prefix of persisted marks: `fed/marks/{origin}/{topic}`, value the
/// JSON map `{partition: next}`.
pub const META_PREFIX: &str = "fed/marks/";

/// An origin position: partition and offset in the origin cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OriginPos {
    /// Partition in the origin cluster.
    pub partition: u32,
    /// Offset in that partition.
    pub offset: u64,
}

impl OriginPos {
    /// Parses `PARTITION:OFFSET`; `None` for anything else.
    pub fn parse(text: &str) -> Option<OriginPos> {
        let (p, o) = text.split_once(':')?;
        if p.is_empty() || o.is_empty() || !p.bytes().chain(o.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(OriginPos {
            partition: p.parse().ok()?,
            offset: o.parse().ok()?,
        })
    }
}

impl std::fmt::Display for OriginPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// The partition a receiver stores a replicated event in: its origin partition when the
/// local topic has it (origin order is then kept hop by hop, and the mark is exact), else
/// `fallback` (the partition key's partition) and no mark.
pub fn receive_partition(pos: Option<OriginPos>, partitions: u32, fallback: u32) -> (u32, bool) {
    match pos {
        Some(p) if p.partition < partitions => (p.partition, true),
        _ => (fallback, false),
    }
}

/// A receiver's marks: per (origin, topic, origin partition) the origin offset after the
/// highest one stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Marks {
    by_topic: BTreeMap<(String, String), BTreeMap<u32, u64>>,
    dirty: BTreeSet<(String, String)>,
}

impl Marks {
    /// Notes a stored event at `pos` of `origin`'s `topic`. Returns whether the mark moved.
    pub fn observe(&mut self, origin: &str, topic: &str, pos: OriginPos) -> bool {
        let key = (origin.to_string(), topic.to_string());
        let parts = self.by_topic.entry(key.clone()).or_default();
        let next = parts.entry(pos.partition).or_insert(0);
        if pos.offset < *next {
            return false;
        }
        *next = pos.offset + 1;
        self.dirty.insert(key);
        true
    }

    /// The mark of one origin partition.
    pub fn next(&self, origin: &str, topic: &str, partition: u32) -> Option<u64> {
        self.by_topic
            .get(&(origin.to_string(), topic.to_string()))?
            .get(&partition)
            .copied()
    }

    /// Every mark of the given topics, to send before asking for them.
    pub fn for_topics<'t>(&self, topics: impl IntoIterator<Item = &'t str>) -> Vec<Mark> {
        let topics: BTreeSet<&str> = topics.into_iter().collect();
        let mut out = Vec::new();
        for ((origin, topic), parts) in &self.by_topic {
            if !topics.contains(topic.as_str()) {
                continue;
            }
            for (p, next) in parts {
                out.push(Mark {
                    origin: origin.clone(),
                    topic: topic.clone(),
                    partition: *p,
                    next: *next,
                });
            }
        }
        out
    }

    /// The metadata entries changed since the last call (key, value), to persist.
    pub fn take_dirty(&mut self) -> Vec<(String, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|key| {
                let parts = self.by_topic.get(&key)?;
                let value = serde_json::to_vec(parts).expect("a map of numbers serializes");
                Some((meta_key(&key.0, &key.1), value))
            })
            .collect()
    }

    /// Puts entries back as dirty after a failed persist.
    pub fn redirty(&mut self, keys: &[String]) {
        for k in keys {
            if let Some(key) = parse_meta_key(k) {
                self.dirty.insert(key);
            }
        }
    }

    /// Forgets the marks of a topic (it was deleted here: a recreated topic starts anew).
    pub fn forget_topic(&mut self, topic: &str) -> Vec<String> {
        let keys: Vec<(String, String)> = self
            .by_topic
            .keys()
            .filter(|(_, t)| t == topic)
            .cloned()
            .collect();
        keys.into_iter()
            .map(|k| {
                self.by_topic.remove(&k);
                self.dirty.remove(&k);
                meta_key(&k.0, &k.1)
            })
            .collect()
    }

    /// Rebuilds marks from persisted entries; unreadable entries are returned apart.
    pub fn restore(entries: Vec<(String, Vec<u8>)>) -> (Marks, Vec<String>) {
        let mut marks = Marks::default();
        let mut bad = Vec::new();
        for (k, v) in entries {
            match (
                parse_meta_key(&k),
                serde_json::from_slice::<BTreeMap<u32, u64>>(&v),
            ) {
                (Some(key), Ok(parts)) => {
                    marks.by_topic.insert(key, parts);
                }
                _ => bad.push(k),
            }
        }
        (marks, bad)
    }

    /// How many (origin, topic) entries are held.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Whether no mark is held.
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

// Cluster names cannot contain '/', topic names can: the origin comes first.
fn meta_key(origin: &str, topic: &str) -> String {
    format!("{META_PREFIX}{origin}/{topic}")
}

fn parse_meta_key(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(META_PREFIX)?;
    let (origin, topic) = rest.split_once('/')?;
    if origin.is_empty() || topic.is_empty() {
        return None;
    }
    Some((origin.to_string(), topic.to_string()))
}

/// A sender's copy of its peer's marks (this connection only).
#[derive(Debug, Default)]
pub struct PeerMarks {
    next: HashMap<(String, String, u32), u64>,
}

impl PeerMarks {
    /// Takes marks the peer sent (a mark never moves back).
    pub fn update(&mut self, marks: Vec<Mark>) {
        for m in marks {
            let e = self
                .next
                .entry((m.origin, m.topic, m.partition))
                .or_insert(0);
            *e = (*e).max(m.next);
        }
    }

    /// The peer's mark of one origin partition.
    pub fn next(&self, origin: &str, topic: &str, partition: u32) -> Option<u64> {
        self.next
            .get(&(origin.to_string(), topic.to_string(), partition))
            .copied()
    }

    /// Does the peer hold the event at `pos` of `origin`'s `topic` already?
    /// `own_end`: for the sender's own events, its partition's end offset: a mark beyond
    /// it is from an earlier life of the topic (deleted and made anew here) and is ignored.
    pub fn holds(&self, origin: &str, topic: &str, pos: OriginPos, own_end: Option<u64>) -> bool {
        self.next(origin, topic, pos.partition)
            .is_some_and(|n| pos.offset < n && own_end.is_none_or(|end| n <= end))
    }
}

/// Where a link starts reading one of its own partitions the first time it looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this offset.
    At(u64),
    /// At the first record stored at or after this time (ms since the epoch).
    Since(u64),
}

/// Decides a link's start in one partition of the sender: its durable cursor if any
/// (the partition start if retention passed it); without a cursor, what the interest
/// asks for (`since`: `None` the retained history, `Some(ms)` the events stored since
/// then). The peer's marks do not move the start: a partition holds the sender's own
/// events and other origins' side by side, and a mark speaks for one origin only. The
/// sender reads from here and skips, event by event, what the peer holds
/// ([`PeerMarks::holds`]), so only what the peer lacks goes on the wire.
pub fn start_position(cursor: Option<u64>, bounds: (u64, u64), since: Option<u64>) -> Start {
    let (start, _end) = bounds;
    match (cursor, since) {
        (Some(c), _) => Start::At(c.max(start)),
        (None, None) => Start::At(start),
        (None, Some(ms)) => Start::Since(ms),
    }
}

/// A peer's `since_ms` in this cluster's clock, given the peer's clock minus this one's
/// (`peer_offset_ms`, measured from its `Clock` frame): clusters' clocks may differ, and
/// the sender compares `since` with its own store timestamps.
pub fn since_in_local_clock(since_ms: u64, peer_offset_ms: i64) -> u64 {
    (i128::from(since_ms) - i128::from(peer_offset_ms)).clamp(0, i128::from(u64::MAX)) as u64
}

/// What the entries for one topic ask of a link without a position: the retained history
/// if any entry wants it (`None`), else the earliest `since` of them. `None` also when no
/// entry is for the topic.
pub fn since_for(entries: &[InterestEntry], topic: &str) -> Option<u64> {
    let mut since: Option<u64> = None;
    for e in entries.iter().filter(|e| e.topic == topic) {
        match e.since_ms {
            None => return None,
            Some(ms) => since = Some(since.map_or(ms, |s| s.min(ms))),
        }
    }
    since
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: u32, o: u64) -> OriginPos {
        OriginPos {
            partition: p,
            offset: o,
        }
    }

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(OriginPos::parse("3:1024"), Some(pos(3, 1024)));
        assert_eq!(pos(3, 1024).to_string(), "3:1024");
        for bad in [
            "",
            ":",
            "3:",
            ":4",
            "a:1",
            "1:b",
            "-1:2",
            "1:2:3",
            "1: 2",
            "99999999999:1",
        ] {
            assert_eq!(OriginPos::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_origin_partition_maps_to_the_same_partition_when_it_exists() {
        assert_eq!(receive_partition(Some(pos(2, 9)), 4, 0), (2, true));
        assert_eq!(receive_partition(Some(pos(5, 9)), 4, 1), (1, false));
        assert_eq!(receive_partition(None, 4, 3), (3, false));
    }

    #[test]
    fn marks_only_move_forward_and_persist_what_changed() {
        let mut m = Marks::default();
        assert!(m.observe("a", "t/x", pos(0, 5)));
        assert!(!m.observe("a", "t/x", pos(0, 3)));
        assert!(m.observe("a", "t/x", pos(1, 0)));
        assert!(m.observe("b", "u", pos(0, 7)));
        assert_eq!(m.next("a", "t/x", 0), Some(6));
        assert_eq!(m.next("a", "t/x", 1), Some(1));
        let dirty = m.take_dirty();
        assert_eq!(dirty.len(), 2);
        assert!(m.take_dirty().is_empty());
        let (restored, bad) = Marks::restore(dirty.clone());
        assert!(bad.is_empty());
        assert_eq!(restored.next("a", "t/x", 0), Some(6));
        assert_eq!(restored.next("b", "u", 0), Some(8));
        assert_eq!(
            m.for_topics(["t/x"]),
            vec![
                Mark {
                    origin: "a".into(),
                    topic: "t/x".into(),
                    partition: 0,
                    next: 6
                },
                Mark {
                    origin: "a".into(),
                    topic: "t/x".into(),
                    partition: 1,
                    next: 1
                }
            ]
        );
        // A failed persist is retried with the next.
        m.redirty(&[dirty[0].0.clone()]);
        assert_eq!(m.take_dirty().len(), 1);
        let (_, bad) = Marks::restore(vec![
            ("fed/marks/nope".into(), b"{}".to_vec()),
            ("fed/marks/a/t".into(), b"[1]".to_vec()),
        ]);
        assert_eq!(bad.len(), 2);
        assert_eq!(m.forget_topic("t/x").len(), 1);
        assert_eq!(m.next("a", "t/x", 0), None);
        assert_eq!(m.next("b", "u", 0), Some(8));
    }

    #[test]
    fn a_sender_skips_what_the_peer_holds() {
        let mut pm = PeerMarks::default();
        pm.update(vec![Mark {
            origin: "a".into(),
            topic: "t".into(),
            partition: 1,
            next: 10,
        }]);
        // A stale mark never moves back.
        pm.update(vec![Mark {
            origin: "a".into(),
            topic: "t".into(),
            partition: 1,
            next: 4,
        }]);
        assert!(pm.holds("a", "t", pos(1, 9), None));
        assert!(!pm.holds("a", "t", pos(1, 10), None));
        assert!(!pm.holds("a", "t", pos(0, 0), None));
        assert!(!pm.holds("b", "t", pos(1, 0), None));
        // The sender's own events: a mark beyond its end is from an earlier topic.
        assert!(pm.holds("a", "t", pos(1, 9), Some(10)));
        assert!(!pm.holds("a", "t", pos(1, 9), Some(9)));
    }

    #[test]
    fn a_link_starts_at_its_cursor_or_where_the_interest_asks() {
        assert_eq!(start_position(Some(70), (0, 100), None), Start::At(70));
        assert_eq!(start_position(Some(70), (0, 100), Some(5)), Start::At(70));
        // Trimmed below the cursor: from the start.
        assert_eq!(start_position(Some(10), (20, 100), None), Start::At(20));
        // No cursor: history or since.
        assert_eq!(start_position(None, (5, 100), None), Start::At(5));
        assert_eq!(
            start_position(None, (5, 100), Some(1_000)),
            Start::Since(1_000)
        );
    }

    #[test]
    fn a_since_is_read_in_the_local_clock() {
        // The peer's clock is 2 h ahead: its "since 12:00" is 10:00 here.
        let two_h = 7_200_000;
        assert_eq!(
            since_in_local_clock(50_000_000, two_h),
            50_000_000 - 7_200_000
        );
        // Behind: later here.
        assert_eq!(since_in_local_clock(50_000_000, -1_000), 50_001_000);
        // Never below 0 or above the range.
        assert_eq!(since_in_local_clock(5, 10), 0);
        assert_eq!(since_in_local_clock(u64::MAX, -10), u64::MAX);
    }

    #[test]
    fn history_wins_over_since() {
        let e = |topic: &str, since_ms| InterestEntry {
            dest: "c".into(),
            topic: topic.into(),
            filter: None,
            since_ms,
        };
        assert_eq!(
            since_for(&[e("t", Some(5)), e("t", Some(3)), e("u", None)], "t"),
            Some(3)
        );
        assert_eq!(since_for(&[e("t", Some(5)), e("t", None)], "t"), None);
        assert_eq!(since_for(&[], "t"), None);
    }
}
