//! The event store seam: where events live once a publish is acknowledged.
//!
//! [`EventStore`] is implemented by the embedded durable log ([`embedded`], the default)
//! and by the Pulsar backend ([`pulsar`], docs/pulsar.md).
//!
//! Offsets are per (topic, partition) and strictly increase in append order. They are
//! *dense* (0, 1, 2, ...) only in the embedded store; the Pulsar store derives them from
//! broker message ids, so they may jump (several nodes write one partition; a broker
//! rolls its ledger over). Callers therefore never compute offsets by arithmetic: the
//! next offset to read after a record is `record.offset + 1`, `read(from)` returns the
//! records with offset `>= from`, and `end - start` is not a record count. A consumer
//! group's committed offset is the *next* offset it will read (Kafka convention), so
//! "nothing consumed yet" is the partition's start.
//!
//! # Retention holds
//! Age retention may be *held* ([`RetentionHolds`]): the caller (the node, for the
//! federation bridge's link cursors) names per (topic, partition) the lowest offset that
//! something still has to read, and [`EventStore::enforce_retention_held`] never moves a
//! partition's start past it because of age — unless the record is older than the topic's
//! `max_age_secs` plus [`RetentionHolds::max_hold_ms`] (a peer gone for good must not fill
//! the disk). Size retention (`max_bytes`) passes holds: the disk comes first. Every held
//! record removed anyway is counted in [`RetentionReport::held_dropped`]; the decision is
//! one function ([`retention_verdict`]) shared by both stores.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use meshd_core::api::TopicConfig;
use tokio::sync::watch;

pub mod conformance;
pub mod embedded;
pub mod pulsar;

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRecord {
    /// The partition it goes to (the caller picks it from the partition key).
    pub partition: u32,
    /// Publish time, milliseconds since the Unix epoch (retention by age uses it).
    pub timestamp_ms: u64,
    /// The encoded event ([`meshd_core::codec`]).
    pub payload: Bytes,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Publish time, ms since the epoch.
    pub timestamp_ms: u64,
    /// The encoded event.
    pub payload: Bytes,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// First retained and next offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionBounds {
    /// The first offset still stored (moves forward with retention).
    pub start: u64,
    /// The offset after the last record: every record appended later gets an offset
    /// `>= end` (exactly `end` in the dense embedded store).
    pub end: u64,
}

/// When an append is acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync (group-committed) before every acknowledgement. Survives machine crashes.
    #[default]
    Always,
    /// fsync at least every `interval`; acknowledged writes of the last interval can be
    /// lost on a machine crash, never on a process crash (the embedded store writes
    /// each group commit to its write-ahead tail before the ack). See [`embedded`].
    Interval,
    /// Never fsync explicitly (the embedded store still makes a durable commit on close and
    /// every few MiB); a crash loses what was acknowledged since. See [`embedded`].
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "fsync must be always, interval or never, not {other:?}"
            )),
        }
    }
}

/// What retention removed in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Records removed.
    pub records: u64,
    /// Payload bytes removed.
    pub bytes: u64,
    /// Of `records`, those a hold still needed (removed by size, or older than the
    /// longest hold): events a link cursor had not sent yet are gone.
    pub held_dropped: u64,
    /// Partitions where a hold kept age-expired records in this pass.
    pub held_partitions: u64,
}

/// The lowest offsets that must survive age retention, per (topic, partition), and how
/// long past its topic's `max_age_secs` a held record may stay at most.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionHolds {
    held: HashMap<String, HashMap<u32, u64>>,
    /// A held record older than `max_age_secs` plus this is removed anyway (and counted
    /// in [`RetentionReport::held_dropped`]); `None`: holds never expire.
    pub max_hold_ms: Option<u64>,
}

impl RetentionHolds {
    /// No holds; `max_hold_ms` as given.
    pub fn new(max_hold_ms: Option<u64>) -> RetentionHolds {
        RetentionHolds {
            held: HashMap::new(),
            max_hold_ms,
        }
    }

    /// Holds (topic, partition) from `offset` on (the lowest of several holds wins).
    pub fn hold(&mut self, topic: &str, partition: u32, offset: u64) {
        let e = self
            .held
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_insert(offset);
        *e = (*e).min(offset);
    }

    /// The lowest held offset of (topic, partition), if it is held.
    pub fn held_from(&self, topic: &str, partition: u32) -> Option<u64> {
        self.held.get(topic)?.get(&partition).copied()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// What retention does with the oldest remaining record of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Remove it and go on with the next; `held`: a hold still needed it.
    Remove {
        /// A hold still needed it.
        held: bool,
    },
    /// Keep it and stop (retention removes a prefix); `held`: it is age-expired and kept
    /// only because of a hold.
    Keep {
        /// Kept only because of a hold.
        held: bool,
    },
}

/// The retention decision for a record at `offset` stamped `timestamp_ms`, shared by the
/// stores: `over_size` when the partition is still above `max_bytes`, `max_age_ms` the
/// topic's age limit, `held_from` the partition's lowest held offset.
pub fn retention_verdict(
    now_ms: u64,
    offset: u64,
    timestamp_ms: u64,
    over_size: bool,
    max_age_ms: Option<u64>,
    held_from: Option<u64>,
    max_hold_ms: Option<u64>,
) -> Verdict {
    let held = held_from.is_some_and(|h| offset >= h);
    if over_size {
        return Verdict::Remove { held };
    }
    let Some(age) = max_age_ms else {
        return Verdict::Keep { held: false };
    };
    if timestamp_ms >= now_ms.saturating_sub(age) {
        return Verdict::Keep { held: false };
    }
    if !held {
        return Verdict::Remove { held: false };
    }
    let hard = max_hold_ms.map(|m| now_ms.saturating_sub(age.saturating_add(m)));
    if hard.is_some_and(|h| timestamp_ms < h) {
        Verdict::Remove { held: true }
    } else {
        Verdict::Keep { held: true }
    }
}

/// Failures of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such topic.
    #[error("topic {topic:?} does not exist")]
    TopicNotFound {
        /// The topic.
        topic: String,
    },
    /// Creating a topic that exists with another configuration.
    #[error("{}", meshd_core::api::topic_conflict_message(.topic, .differences))]
    TopicConflict {
        /// The topic.
        topic: String,
        /// Where the existing topic's configuration differs from the one asked for.
        differences: Vec<meshd_core::api::SettingDifference>,
    },
    /// Partition out of range.
    #[error("topic {topic:?} has no partition {partition}")]
    PartitionNotFound {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// A stored record failed its checksum or could not be decoded.
    #[error("corrupt record in {topic:?}/{partition} at offset {offset}: {reason}")]
    Corrupt {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The backend is not reachable (Pulsar down, store closed).
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// Any other I/O or backend failure.
    #[error("event store I/O error: {0}")]
    Io(String),
}

/// A durable, ordered, partitioned log of events plus consumer offsets and a small
/// metadata namespace (subscriptions).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Creates a topic. Returns `true` when created, `false` when it already existed with
    /// the same configuration; [`StoreError::TopicConflict`] when it exists differently.
    async fn create_topic(&self, topic: &str, config: &TopicConfig) -> Result<bool, StoreError>;

    /// Deletes a topic, its records and the offsets committed on it.
    async fn delete_topic(&self, topic: &str) -> Result<(), StoreError>;

    /// All topics with their configuration, sorted by name.
    async fn list_topics(&self) -> Result<Vec<(String, TopicConfig)>, StoreError>;

    /// One topic's configuration.
    async fn topic(&self, topic: &str) -> Result<Option<TopicConfig>, StoreError>;

    /// Appends records in the given order within each partition and returns their
    /// offsets. Returns when they are durable under the store's fsync policy (and
    /// readable); concurrent appends are group-committed (one fsync for many). A call
    /// that fails validation (unknown topic or partition) stores nothing. The embedded
    /// store is all-or-nothing for any failure; the Pulsar store is not when the broker
    /// fails mid-call (a prefix may be stored; see docs/pulsar.md).
    async fn append(
        &self,
        topic: &str,
        records: Vec<AppendRecord>,
    ) -> Result<Vec<Appended>, StoreError>;

    /// [`EventStore::append`] for records that someone else keeps until this call returns
    /// (a federation peer resends whatever it did not get an ack for): the records may
    /// become readable (and so be delivered) before they are durable; the call still
    /// returns only once they are durable under the fsync policy. If the process dies in
    /// between, the records are gone from this log and are sent again: delivered twice,
    /// never lost. Never use it for a client's publish (a reader could see an event the
    /// publisher was never told is stored). Default: [`EventStore::append`].
    async fn append_visible_early(
        &self,
        topic: &str,
        records: Vec<AppendRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append(topic, records).await
    }

    /// Reads up to `max` records of a partition with offsets `>= from` (from the partition
    /// start if `from` is below it), in offset order. Returns fewer (maybe none) at the
    /// end of the log.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// First retained and next offsets of a partition.
    async fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds, StoreError>;

    /// A watch of the partition's end offset: it changes after every durable append (in
    /// the Pulsar store: by any node sharing the namespace), so readers can wait for new
    /// records without polling.
    fn watch_end(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>, StoreError>;

    /// Stores a consumer group's committed offset (the next offset to read).
    async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), StoreError>;

    /// A consumer group's committed offset, if it ever committed one.
    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, StoreError>;

    /// Removes records past each topic's retention (age relative to `now_ms`, size per
    /// partition). Never removes the last record's offset position: `end` is unchanged.
    /// Same as [`EventStore::enforce_retention_held`] without holds.
    async fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport, StoreError> {
        self.enforce_retention_held(now_ms, &RetentionHolds::default())
            .await
    }

    /// Retention under `holds` (module docs, "Retention holds"): age never moves a
    /// partition's start past its lowest held offset, except for records older than the
    /// topic's `max_age_secs` plus `holds.max_hold_ms`; size retention passes holds.
    async fn enforce_retention_held(
        &self,
        now_ms: u64,
        holds: &RetentionHolds,
    ) -> Result<RetentionReport, StoreError>;

    /// Puts a metadata value (durably).
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Deletes a metadata value; `false` when it was absent.
    async fn delete_meta(&self, key: &str) -> Result<bool, StoreError>;

    /// All metadata entries whose key starts with `prefix`, sorted by key.
    async fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Flushes and stops background work; later calls may fail with `Unavailable`.
    async fn close(&self) -> Result<(), StoreError>;
}
