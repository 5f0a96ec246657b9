//! Trace records: what happened to an event on this node, kept for a while in memory so
//! `GET /v1/trace` can answer an event's life (docs/api.md, "Trace").
//!
//! Owns: the record table ([`TraceLog`]): compact records keyed by the event's
//! `(source, id)`, kept for the retention time (`meshd node --trace-retention`) and at
//! most [`TraceLog::capacity`] records (the oldest go first), in shards behind short
//! locks; topic, subscription and peer names are interned (`Arc<str>`), so a record costs
//! the event id plus a few words. No I/O: time is passed in (`now_ms`), so retention and
//! eviction are tested without sleeping. A restart forgets every record.
//!
//! `matched` / `not_matched` are not recorded here: the node computes them when asked
//! (`Node::trace_local`), from the `stored` records and the subscriptions of the topic.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshd_core::api::{TraceKind, TraceRecord};

/// Default of `meshd node --trace-retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// Default cap on the records a node keeps: about 150 bytes each with the event id, so
/// about 75 MB when full.
pub const DEFAULT_CAPACITY: usize = 500_000;

/// Shards of the table (a record locks one).
const SHARDS: usize = 16;

/// Most names interned; past it names are allocated per record (never unbounded).
const MAX_INTERNED: usize = 65_536;

/// What happened, compactly (the API's [`TraceKind`] without `matched` / `not_matched`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Appended to a topic's log.
    Stored {
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
    },
    /// Sent to a peer cluster on its link.
    Forwarded {
        /// Peer cluster.
        peer: Arc<str>,
        /// Topic.
        topic: Arc<str>,
    },
    /// Received from a peer cluster.
    Received {
        /// Peer cluster.
        peer: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Where it was published.
        origin: Arc<str>,
    },
    /// Received and dropped: already stored here.
    Duplicate {
        /// Peer cluster.
        peer: Arc<str>,
        /// Topic.
        topic: Arc<str>,
    },
    /// Accepted by a sink.
    Delivered {
        /// Subscription.
        subscription: Arc<str>,
        /// Which attempt (1 = the first).
        attempt: u32,
        /// HTTP status (push).
        status: Option<u16>,
        /// Store time to acceptance, ms.
        latency_ms: u64,
    },
    /// An attempt failed and will be retried.
    Retried {
        /// Subscription.
        subscription: Arc<str>,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: Box<str>,
    },
    /// Out of attempts.
    DeadLettered {
        /// Subscription.
        subscription: Arc<str>,
        /// Why.
        reason: Box<str>,
    },
}

impl Step {
    /// The API form.
    pub fn to_kind(&self) -> TraceKind {
        match self {
            Step::Stored {
                topic,
                partition,
                offset,
            } => TraceKind::Stored {
                topic: topic.to_string(),
                partition: *partition,
                offset: *offset,
            },
            Step::Forwarded { peer, topic } => TraceKind::Forwarded {
                peer: peer.to_string(),
                topic: topic.to_string(),
            },
            Step::Received {
                peer,
                topic,
                origin,
            } => TraceKind::Received {
                peer: peer.to_string(),
                topic: topic.to_string(),
                origin: origin.to_string(),
            },
            Step::Duplicate { peer, topic } => TraceKind::Duplicate {
                peer: peer.to_string(),
                topic: topic.to_string(),
            },
            Step::Delivered {
                subscription,
                attempt,
                status,
                latency_ms,
            } => TraceKind::Delivered {
                subscription: subscription.to_string(),
                attempt: *attempt,
                status: *status,
                latency_ms: *latency_ms,
            },
            Step::Retried {
                subscription,
                attempt,
                error,
            } => TraceKind::Retried {
                subscription: subscription.to_string(),
                attempt: *attempt,
                error: error.to_string(),
            },
            Step::DeadLettered {
                subscription,
                reason,
            } => TraceKind::DeadLettered {
                subscription: subscription.to_string(),
                reason: reason.to_string(),
            },
        }
    }
}

/// One kept record.
#[derive(Debug)]
struct Entry {
    at_ms: u64,
    hash: u64,
    /// The sequence number of the previous record with the same key hash (`NONE`).
    prev: u64,
    source: Arc<str>,
    id: Box<str>,
    step: Step,
}

/// No previous record.
const NONE: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Shard {
    /// In insertion order (time order up to clock steps); `entries[i]` has sequence
    /// number `base + i`.
    entries: VecDeque<Entry>,
    base: u64,
    /// Key hash → sequence number of its newest record; older ones are chained through
    /// [`Entry::prev`] (no allocation per key beyond the map slot).
    index: HashMap<u64, u64>,
}

impl Shard {
    fn pop_front(&mut self) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        let seq = self.base;
        self.base += 1;
        // Older records go first: when the newest of its key goes, the key is gone.
        if self.index.get(&e.hash) == Some(&seq) {
            self.index.remove(&e.hash);
        }
    }

    fn expire(&mut self, now_ms: u64, retention_ms: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.at_ms.saturating_add(retention_ms) < now_ms)
        {
            self.pop_front();
        }
    }

    fn get(&self, seq: u64) -> Option<&Entry> {
        seq.checked_sub(self.base)
            .and_then(|i| self.entries.get(i as usize))
    }
}

/// The record table of a node. Cheap to share (`Arc`); disabled when the retention is 0.
#[derive(Debug)]
pub struct TraceLog {
    retention_ms: u64,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
    names: RwLock<HashSet<Arc<str>>>,
    /// Records evicted by the cap before their retention ended.
    evicted: AtomicU64,
}

impl Default for TraceLog {
    fn default() -> Self {
        TraceLog::new(DEFAULT_RETENTION, DEFAULT_CAPACITY)
    }
}

impl TraceLog {
    /// A table keeping records for `retention` (zero: tracing off) and at most about
    /// `capacity` of them (rounded up to a multiple of the shard count).
    pub fn new(retention: Duration, capacity: usize) -> TraceLog {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        TraceLog {
            retention_ms,
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            names: RwLock::new(HashSet::new()),
            evicted: AtomicU64::new(0),
        }
    }

    /// A table that records nothing.
    pub fn off() -> TraceLog {
        TraceLog::new(Duration::ZERO, 1)
    }

    /// Whether records are kept (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.retention_ms > 0
    }

    /// How long records are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_millis(self.retention_ms)
    }

    /// Most records kept.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// The shared copy of a name (topic, subscription, peer cluster).
    pub fn intern(&self, name: &str) -> Arc<str> {
        if let Some(n) = self
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return n.clone();
        }
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if names.len() < MAX_INTERNED {
            names.insert(n.clone());
        }
        n
    }

    fn key_hash(&self, source: &str, id: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        source.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The high bits pick the shard (the map inside uses the whole hash).
        let i = (hash >> 56) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `step` for the event `(source, id)` at `now_ms`: expired records of its
    /// shard go first, then the oldest while the shard is full.
    pub fn record_at(&self, now_ms: u64, source: &str, id: &str, step: Step) {
        if !self.enabled() {
            return;
        }
        let hash = self.key_hash(source, id);
        let source = self.intern(source);
        let mut shard = self.shard(hash);
        shard.expire(now_ms, self.retention_ms);
        while shard.entries.len() >= self.per_shard {
            shard.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let seq = shard.base + shard.entries.len() as u64;
        let prev = shard.index.insert(hash, seq).unwrap_or(NONE);
        shard.entries.push_back(Entry {
            at_ms: now_ms,
            hash,
            prev,
            source,
            id: id.into(),
            step,
        });
    }

    /// [`TraceLog::record_at`] now.
    pub fn record(&self, source: &str, id: &str, step: Step) {
        if self.enabled() {
            self.record_at(crate::ingest::now_ms(), source, id, step);
        }
    }

    /// The records of `(source, id)` not older than the retention at `now_ms`, oldest
    /// first: `(at_ms, step)`.
    pub fn lookup_at(&self, now_ms: u64, source: &str, id: &str) -> Vec<(u64, Step)> {
        if !self.enabled() {
            return Vec::new();
        }
        let hash = self.key_hash(source, id);
        let mut shard = self.shard(hash);
        shard.expire(now_ms, self.retention_ms);
        let mut out = Vec::new();
        let mut next = shard.index.get(&hash).copied();
        while let Some(e) = next.and_then(|seq| shard.get(seq)) {
            if &*e.source == source && &*e.id == id {
                out.push((e.at_ms, e.step.clone()));
            }
            next = (e.prev != NONE).then_some(e.prev);
        }
        out.reverse();
        out
    }

    /// [`TraceLog::lookup_at`] now.
    pub fn lookup(&self, source: &str, id: &str) -> Vec<(u64, Step)> {
        self.lookup_at(crate::ingest::now_ms(), source, id)
    }

    /// Records kept now (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    /// Records evicted by the cap before their retention ended (a cap too small for the
    /// retention at this event rate).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The node's trace metrics as Prometheus text.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP meshd_node_trace_records Trace records kept in memory for GET /v1/trace.\n\
             # TYPE meshd_node_trace_records gauge\n\
             meshd_node_trace_records {}\n\
             # HELP meshd_node_trace_evicted_total Trace records evicted by --trace-capacity before --trace-retention ended.\n\
             # TYPE meshd_node_trace_evicted_total counter\n\
             meshd_node_trace_evicted_total {}\n",
            self.len(),
            self.evicted()
        )
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The API records of `steps` on `cluster`/`node`.
pub fn to_records(cluster: &str, node: &str, steps: Vec<(u64, Step)>) -> Vec<TraceRecord> {
    steps
        .into_iter()
        .map(|(at_ms, s)| TraceRecord {
            cluster: cluster.to_string(),
            node: node.to_string(),
            at_ms,
            kind: s.to_kind(),
        })
        .collect()
}

/// Sorts records by time, then cluster, then node (the order of [`TraceAnswer`]).
///
/// [`TraceAnswer`]: meshd_core::api::TraceAnswer
pub fn sort_records(records: &mut [TraceRecord]) {
    records.sort_by(|a, b| {
        (a.at_ms, &a.cluster, &a.node)
            .cmp(&(b.at_ms, &b.cluster, &b.node))
            .then_with(|| kind_rank(&a.kind).cmp(&kind_rank(&b.kind)))
    });
}

/// Within one millisecond, the order of an event's life.
fn kind_rank(k: &TraceKind) -> u8 {
    match k {
        TraceKind::Received { .. } => 0,
        TraceKind::Duplicate { .. } => 1,
        TraceKind::Stored { .. } => 2,
        TraceKind::Matched { .. } | TraceKind::NotMatched { .. } => 3,
        TraceKind::Forwarded { .. } => 4,
        TraceKind::Retried { .. } => 5,
        TraceKind::Delivered { .. } => 6,
        TraceKind::DeadLettered { .. } => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(log: &TraceLog, offset: u64) -> Step {
        Step::Stored {
            topic: log.intern("orders"),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn records_are_found_by_source_and_id_oldest_first() {
        let log = TraceLog::new(Duration::from_secs(60), 1000);
        log.record_at(10, "/shop", "1", stored(&log, 7));
        log.record_at(11, "/shop", "2", stored(&log, 8));
        log.record_at(
            12,
            "/shop",
            "1",
            Step::Forwarded {
                peer: log.intern("b"),
                topic: log.intern("orders"),
            },
        );
        log.record_at(13, "/other", "1", stored(&log, 9));
        let got = log.lookup_at(20, "/shop", "1");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (10, stored(&log, 7)));
        assert!(matches!(got[1], (12, Step::Forwarded { .. })));
        assert_eq!(
            log.lookup_at(20, "/other", "1"),
            vec![(13, stored(&log, 9))]
        );
        assert!(log.lookup_at(20, "/shop", "3").is_empty());
    }

    #[test]
    fn records_older_than_the_retention_are_forgotten() {
        let log = TraceLog::new(Duration::from_millis(1000), 1000);
        log.record_at(1_000, "/s", "old", stored(&log, 1));
        log.record_at(1_900, "/s", "new", stored(&log, 2));
        assert_eq!(log.lookup_at(2_000, "/s", "old").len(), 1);
        // 1 ms past the retention of the first, within that of the second.
        assert!(log.lookup_at(2_001, "/s", "old").is_empty());
        assert_eq!(log.lookup_at(2_001, "/s", "new").len(), 1);
        assert!(log.lookup_at(2_901, "/s", "new").is_empty());
    }

    #[test]
    fn past_the_cap_the_oldest_records_are_evicted_first() {
        let log = TraceLog::new(Duration::from_secs(3600), SHARDS * 4);
        assert_eq!(log.capacity(), SHARDS * 4);
        let n = SHARDS as u64 * 40;
        for i in 0..n {
            log.record_at(1_000 + i, "/s", &i.to_string(), stored(&log, i));
        }
        assert!(log.len() <= log.capacity(), "{} kept", log.len());
        assert_eq!(log.evicted(), n - log.len() as u64);
        assert!(log
            .render_metrics()
            .contains(&format!("meshd_node_trace_records {}\n", log.len())));
        let kept: Vec<u64> = (0..n)
            .filter(|i| !log.lookup_at(1_000 + n, "/s", &i.to_string()).is_empty())
            .collect();
        assert_eq!(kept.len(), log.len());
        // Every shard keeps its newest: nothing older than the newest evicted record
        // of the same shard survives, and the very newest record is always kept.
        assert!(kept.contains(&(n - 1)));
        assert!(!kept.contains(&0));
        assert!(kept.len() >= SHARDS * 2, "only {} kept", kept.len());
    }

    #[test]
    fn a_zero_retention_records_nothing() {
        let log = TraceLog::off();
        assert!(!log.enabled());
        log.record_at(1, "/s", "1", stored(&log, 1));
        assert!(log.is_empty());
        assert!(log.lookup_at(1, "/s", "1").is_empty());
    }

    #[test]
    fn names_are_interned_once() {
        let log = TraceLog::default();
        let a = log.intern("orders");
        let b = log.intern("orders");
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn records_sort_by_time_then_life_order() {
        let r = |at_ms, kind| TraceRecord {
            cluster: "a".into(),
            node: "n".into(),
            at_ms,
            kind,
        };
        let mut v = vec![
            r(
                5,
                TraceKind::Forwarded {
                    peer: "b".into(),
                    topic: "t".into(),
                },
            ),
            r(
                5,
                TraceKind::Stored {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                },
            ),
            r(
                4,
                TraceKind::Received {
                    peer: "b".into(),
                    topic: "t".into(),
                    origin: "c".into(),
                },
            ),
        ];
        sort_records(&mut v);
        assert_eq!(v[0].at_ms, 4);
        assert!(matches!(v[1].kind, TraceKind::Stored { .. }));
        assert!(matches!(v[2].kind, TraceKind::Forwarded { .. }));
    }
}
