//! The single writer of the embedded store: every mutation goes through one std thread
//! that drains its queue, applies everything queued (bounded by a byte/operation budget)
//! in ONE redb write transaction, commits once and only then acknowledges every caller
//! (group commit). It owns the authoritative in-memory state (topic ids, partition bounds
//! and byte totals) and publishes it to [`Shared`] after each successful commit, so the
//! watches move only once the data is committed.
//!
//! An operation that is rejected (unknown topic, bad partition, conflicting config) is
//! validated before it writes anything, so it changes nothing and does not disturb the
//! other operations of its batch. A storage failure aborts the whole transaction: every
//! operation of the batch fails with [`StoreError::Io`], and the state is reloaded from
//! the last commit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use meshd_core::api::TopicConfig;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use tokio::sync::{oneshot, watch};

use super::layout::{
    encode_record, peek_record, TopicRow, BOUNDS, FORMAT_VERSION, INFO, INFO_FORMAT,
    INFO_NEXT_TOPIC_ID, INFO_WAL_SEQ, META, OFFSETS, RECORDS, TOPICS,
};
use super::wal::{self, LoggedOp, Wal};
use super::{EmbeddedOptions, EmbeddedTuning};
use crate::store::{
    retention_verdict, AppendRecord, Appended, FsyncPolicy, RetentionHolds, RetentionReport,
    StoreError, Verdict,
};

/// Where a caller waits for the result of its operation.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A mutation queued to the writer.
pub(crate) enum Op {
    CreateTopic {
        topic: String,
        config: TopicConfig,
        reply: Reply<bool>,
    },
    DeleteTopic {
        topic: String,
        reply: Reply<()>,
    },
    Append {
        topic: String,
        records: Vec<AppendRecord>,
        /// May be readable before it is durable (see `EventStore::append_visible_early`).
        early_visible: bool,
        reply: Reply<Vec<Appended>>,
    },
    CommitOffset {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
        reply: Reply<()>,
    },
    Retention {
        now_ms: u64,
        holds: RetentionHolds,
        reply: Reply<RetentionReport>,
    },
    PutMeta {
        key: String,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    DeleteMeta {
        key: String,
        reply: Reply<bool>,
    },
    /// Commit durably, acknowledge, stop.
    Close {
        reply: Reply<()>,
    },
}

impl Op {
    /// Bytes this operation adds to a batch (for the batch budget).
    fn weight(&self) -> usize {
        match self {
            Op::Append { records, .. } => records.iter().map(|r| r.payload.len() + 32).sum(),
            Op::PutMeta { key, value, .. } => key.len() + value.len(),
            _ => 64,
        }
    }
}

/// Counters exposed by [`super::EmbeddedStore::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
    pub batches_failed: AtomicU64,
    pub appends: AtomicU64,
    pub records_appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub records_removed: AtomicU64,
}

/// What readers see of a partition: its start and a watch of its end.
pub(crate) struct PartView {
    pub start: AtomicU64,
    pub end: watch::Sender<u64>,
}

/// What readers see of a topic (only committed state).
pub(crate) struct TopicView {
    pub id: u64,
    pub config: TopicConfig,
    pub parts: Vec<PartView>,
}

impl TopicView {
    fn new(t: &TopicState) -> TopicView {
        TopicView {
            id: t.id,
            config: t.config.clone(),
            parts: t
                .parts
                .iter()
                .map(|p| PartView {
                    start: AtomicU64::new(p.start),
                    end: watch::channel(p.end).0,
                })
                .collect(),
        }
    }
}

/// Committed state shared between the writer (sole updater) and readers.
#[derive(Default)]
pub(crate) struct Shared {
    pub topics: RwLock<HashMap<String, Arc<TopicView>>>,
}

impl Shared {
    pub(crate) fn from_state(state: &State) -> Shared {
        let topics = state
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), Arc::new(TopicView::new(t))))
            .collect();
        Shared {
            topics: RwLock::new(topics),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PartState {
    pub start: u64,
    pub end: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct TopicState {
    pub id: u64,
    pub config: TopicConfig,
    pub parts: Vec<PartState>,
}

/// The writer's authoritative state (mirrors the `topics`, `bounds` and `info` tables).
#[derive(Debug, Default)]
pub(crate) struct State {
    pub topics: HashMap<String, TopicState>,
    pub next_topic_id: u64,
    /// Sequence number of the last group commit logged to the write-ahead tail.
    pub wal_seq: u64,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Creates the tables if missing, checks the format version and loads the state.
pub(crate) fn init_and_load(db: &Database) -> Result<State, StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut info = txn.open_table(INFO).map_err(db_err)?;
        let version = info.get(INFO_FORMAT).map_err(db_err)?.map(|g| g.value());
        match version {
            None => {
                info.insert(INFO_FORMAT, FORMAT_VERSION).map_err(db_err)?;
                info.insert(INFO_NEXT_TOPIC_ID, 1).map_err(db_err)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Io(format!(
                "store format version {other} is not supported (this build reads {FORMAT_VERSION})"
            )))
            }
        }
        txn.open_table(TOPICS).map_err(db_err)?;
        txn.open_table(BOUNDS).map_err(db_err)?;
        txn.open_table(RECORDS).map_err(db_err)?;
        txn.open_table(OFFSETS).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    load_state(db)
}

/// Loads the state from the last commit.
pub(crate) fn load_state(db: &Database) -> Result<State, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let info = txn.open_table(INFO).map_err(db_err)?;
    let next_topic_id = info
        .get(INFO_NEXT_TOPIC_ID)
        .map_err(db_err)?
        .map(|g| g.value())
        .unwrap_or(1);
    let wal_seq = info
        .get(INFO_WAL_SEQ)
        .map_err(db_err)?
        .map(|g| g.value())
        .unwrap_or(0);
    let topics_table = txn.open_table(TOPICS).map_err(db_err)?;
    let bounds = txn.open_table(BOUNDS).map_err(db_err)?;
    let records = txn.open_table(RECORDS).map_err(db_err)?;
    let mut topics = HashMap::new();
    for entry in topics_table.range::<&str>(..).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let name = k.value().to_string();
        let row: TopicRow = serde_json::from_slice(v.value()).map_err(|e| {
            StoreError::Io(format!(
                "topic {name:?} has an unreadable configuration: {e}"
            ))
        })?;
        let mut parts = Vec::with_capacity(row.config.partitions as usize);
        for p in 0..row.config.partitions {
            let (start, end, bytes) = bounds
                .get((row.id, p))
                .map_err(db_err)?
                .map(|g| g.value())
                .unwrap_or((0, 0, 0));
            // Cheap consistency check: the first and last stored offsets match the bounds.
            let mut range = records
                .range((row.id, p, 0)..=(row.id, p, u64::MAX))
                .map_err(db_err)?;
            let first = range
                .next()
                .transpose()
                .map_err(db_err)?
                .map(|(k, _)| k.value().2);
            let last = range
                .next_back()
                .transpose()
                .map_err(db_err)?
                .map(|(k, _)| k.value().2)
                .or(first);
            let expected = if start < end {
                Some((start, end - 1))
            } else {
                None
            };
            if first.zip(last) != expected {
                tracing::error!(
                    topic = %name, partition = p, start, end, ?first, ?last,
                    "stored records do not match the partition bounds"
                );
            }
            parts.push(PartState { start, end, bytes });
        }
        topics.insert(
            name,
            TopicState {
                id: row.id,
                config: row.config,
                parts,
            },
        );
    }
    Ok(State {
        topics,
        next_topic_id,
        wal_seq,
    })
}

/// Why an operation did not apply.
enum ApplyError {
    /// Rejected before writing anything; the batch goes on.
    Reject(StoreError),
    /// The storage failed; the whole batch is aborted.
    Db(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ApplyError {
            fn from(e: $t) -> Self {
                ApplyError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A finished operation waiting for the commit before it is acknowledged.
enum Outcome {
    Bool(Reply<bool>, Result<bool, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Appended(Reply<Vec<Appended>>, Result<Vec<Appended>, StoreError>),
    Retention(Reply<RetentionReport>, Result<RetentionReport, StoreError>),
}

fn failed<T>(r: Result<T, StoreError>, msg: &str) -> Result<T, StoreError> {
    match r {
        Ok(_) => Err(StoreError::Io(msg.to_string())),
        Err(e) => Err(e),
    }
}

impl Outcome {
    fn send(self) {
        // A caller that stopped waiting is not an error.
        match self {
            Outcome::Bool(r, v) => drop(r.send(v)),
            Outcome::Unit(r, v) => drop(r.send(v)),
            Outcome::Appended(r, v) => drop(r.send(v)),
            Outcome::Retention(r, v) => drop(r.send(v)),
        }
    }

    fn fail(self, msg: &str) {
        match self {
            Outcome::Bool(r, v) => drop(r.send(failed(v, msg))),
            Outcome::Unit(r, v) => drop(r.send(failed(v, msg))),
            Outcome::Appended(r, v) => drop(r.send(failed(v, msg))),
            Outcome::Retention(r, v) => drop(r.send(failed(v, msg))),
        }
    }
}

fn reject_op(op: Op, err: impl Fn() -> StoreError) {
    match op {
        Op::CreateTopic { reply, .. } => drop(reply.send(Err(err()))),
        Op::DeleteTopic { reply, .. }
        | Op::CommitOffset { reply, .. }
        | Op::PutMeta { reply, .. }
        | Op::Close { reply } => drop(reply.send(Err(err()))),
        Op::Append { reply, .. } => drop(reply.send(Err(err()))),
        Op::Retention { reply, .. } => drop(reply.send(Err(err()))),
        Op::DeleteMeta { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    info: Table<'t, &'static str, u64>,
    topics: Table<'t, &'static str, &'static [u8]>,
    records: Table<'t, (u64, u32, u64), &'static [u8]>,
    offsets: Table<'t, (u64, &'static str, u32), u64>,
    meta: Table<'t, &'static str, &'static [u8]>,
    bounds: Table<'t, (u64, u32), (u64, u64, u64)>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, ApplyError> {
        Ok(Tables {
            info: txn.open_table(INFO)?,
            topics: txn.open_table(TOPICS)?,
            records: txn.open_table(RECORDS)?,
            offsets: txn.open_table(OFFSETS)?,
            meta: txn.open_table(META)?,
            bounds: txn.open_table(BOUNDS)?,
        })
    }
}

/// Per-batch bookkeeping.
#[derive(Default)]
struct BatchEffects {
    /// Bounds rows to write at the end of the batch (latest value wins).
    dirty: HashMap<(u64, u32), PartState>,
    /// Topics whose reader view must be refreshed after the commit.
    changed: HashSet<String>,
    /// Whether an offset or metadata write happened (topic changes are in `changed`).
    wrote: bool,
    records: u64,
    bytes: u64,
    appends: u64,
    removed: u64,
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub db: Arc<Database>,
    pub rx: Receiver<Op>,
    pub state: State,
    pub shared: Arc<Shared>,
    pub options: EmbeddedOptions,
    pub tuning: EmbeddedTuning,
    pub counters: Arc<Counters>,
    /// The write-ahead tail: every non-durable group commit under `Interval` is written
    /// to it before its callers are acknowledged; emptied by every durable commit.
    wal: Wal,
    /// The frame being written to `wal` (reused: no fresh allocation per group commit).
    frame: Vec<u8>,
    last_durable: Instant,
    /// Payload bytes committed non-durably since the last durable commit.
    unsynced_bytes: u64,
    /// Whether a non-durable commit is waiting for a durable one.
    unsynced: bool,
    /// Set after a failure that left the state unknown: every later operation fails.
    broken: Option<String>,
}

impl Writer {
    /// A writer over the loaded `state`; readers get its view through `shared`.
    pub(crate) fn new(
        db: Arc<Database>,
        rx: Receiver<Op>,
        state: State,
        options: EmbeddedOptions,
        tuning: EmbeddedTuning,
        counters: Arc<Counters>,
        wal: Wal,
    ) -> Writer {
        Writer {
            db,
            rx,
            shared: Arc::new(Shared::from_state(&state)),
            state,
            options,
            tuning,
            counters,
            wal,
            frame: Vec::new(),
            last_durable: Instant::now(),
            unsynced_bytes: 0,
            unsynced: false,
            broken: None,
        }
    }

    /// The loop: runs until a `Close` op or until every sender is gone.
    pub(crate) fn run(mut self) {
        loop {
            let first = match self.next_op() {
                Some(op) => op,
                None => {
                    if self.unsynced {
                        if let Err(e) = self.sync() {
                            tracing::error!(error = %e, "final durable commit failed");
                        }
                    }
                    return;
                }
            };
            let mut batch = vec![first];
            let mut weight = batch[0].weight();
            while !matches!(batch.last(), Some(Op::Close { .. }))
                && weight < self.tuning.batch_max_bytes
                && batch.len() < self.tuning.batch_max_ops
            {
                match self.rx.try_recv() {
                    Ok(op) => {
                        weight += op.weight();
                        batch.push(op);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let close = match batch.last() {
                Some(Op::Close { .. }) => batch.pop(),
                _ => None,
            };
            if !batch.is_empty() {
                self.commit_batch(batch, close.is_some());
            }
            if let Some(Op::Close { reply }) = close {
                let result = if let Some(b) = &self.broken {
                    Err(StoreError::Io(b.clone()))
                } else if self.unsynced {
                    self.sync()
                } else {
                    Ok(())
                };
                drop(reply.send(result));
                return;
            }
        }
    }

    /// Waits for the next operation; under `Interval`, makes the pending durable commit
    /// when its deadline passes first. `None` when every sender is gone.
    fn next_op(&mut self) -> Option<Op> {
        loop {
            if self.unsynced && self.options.fsync == FsyncPolicy::Interval {
                let deadline = self.last_durable + self.options.fsync_interval;
                let wait = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(op) => return Some(op),
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.sync() {
                            tracing::error!(error = %e, "periodic durable commit failed");
                            // Try again at the next deadline rather than spinning.
                            self.last_durable = Instant::now();
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return None,
                }
            } else {
                return self.rx.recv().ok();
            }
        }
    }

    fn wants_durable(&self) -> bool {
        match self.options.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval => {
                self.last_durable.elapsed() >= self.options.fsync_interval
                    || self.unsynced_bytes >= self.tuning.checkpoint_bytes
            }
            FsyncPolicy::Never => self.unsynced_bytes >= self.tuning.checkpoint_bytes,
        }
    }

    /// One durable commit of whatever was committed non-durably.
    fn sync(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.made_durable();
        Ok(())
    }

    /// Bookkeeping after a durable commit: nothing is pending, and the write-ahead tail
    /// is redundant (a tail left behind is harmless: its frames are at or below the
    /// durable `wal_seq`, and recovery skips them).
    fn made_durable(&mut self) {
        self.last_durable = Instant::now();
        self.unsynced = false;
        self.unsynced_bytes = 0;
        if let Err(e) = self.wal.clear() {
            tracing::warn!(error = %e, "cannot empty the write-ahead tail after a durable commit");
        }
    }

    /// Whether non-durable group commits go to the write-ahead tail before their ack.
    fn logs_to_wal(&self) -> bool {
        self.options.fsync == FsyncPolicy::Interval
    }

    /// Replays the write-ahead tail read at open (`data`) on top of the last durable
    /// commit, in one durable commit, and empties the tail. Runs before the writer
    /// thread starts.
    pub(crate) fn recover(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let found = wal::parse(data, self.state.wal_seq);
        if let Some(why) = &found.stopped {
            tracing::warn!(
                reason = %why, replayed = found.batches.len(),
                "the write-ahead tail ends early (torn by a machine crash, or stale): \
                 replaying the group commits before that point"
            );
        }
        let Some(&(last_seq, _)) = found.batches.last() else {
            if !data.is_empty() {
                self.wal.clear().map_err(db_err)?;
            }
            return Ok(());
        };
        let mut ops = Vec::new();
        let mut waits = Vec::new();
        for (_, batch) in found.batches {
            for op in batch {
                let (op, wait) = replay_op(op);
                ops.push(op);
                waits.push(wait);
            }
        }
        let replayed = ops.len();
        if !self.commit_batch_as(ops, true, Some(last_seq)) {
            return Err(StoreError::Io(
                "replaying the write-ahead tail failed; nothing was changed".into(),
            ));
        }
        let rejected = waits
            .iter_mut()
            .map(ReplayWait::outcome)
            .filter(|o| *o != Some(true))
            .count();
        if rejected > 0 {
            tracing::warn!(
                rejected,
                "operations of the write-ahead tail were refused on replay"
            );
        }
        tracing::info!(
            operations = replayed,
            group_commits = last_seq - self.state.wal_seq,
            "replayed the write-ahead tail after an unclean stop"
        );
        self.state.wal_seq = last_seq;
        Ok(())
    }

    fn commit_batch(&mut self, ops: Vec<Op>, force_durable: bool) {
        self.commit_batch_as(ops, force_durable, None);
    }

    /// Commits one batch; `replayed`: the batch replays the write-ahead tail up to this
    /// sequence number (durable, and not logged again). `false` if the storage failed.
    fn commit_batch_as(
        &mut self,
        ops: Vec<Op>,
        force_durable: bool,
        replayed: Option<u64>,
    ) -> bool {
        if let Some(b) = &self.broken {
            let msg = format!("event store stopped after a storage failure: {b}");
            for op in ops {
                reject_op(op, || StoreError::Unavailable(msg.clone()));
            }
            return false;
        }
        let log = self.logs_to_wal();
        // Only appends, offsets and metadata are logged; a batch with anything else
        // (topic changes, retention: rare) is made durable instead.
        let durable =
            force_durable || self.wants_durable() || (log && !ops.iter().all(wal::loggable));
        // The write-ahead frame of a non-durable batch, encoded before the ops are consumed.
        let logged = log && !durable;
        if logged {
            wal::start_frame(&mut self.frame);
            for op in &ops {
                wal::encode_op(&mut self.frame, op);
            }
        }
        let seq = match (logged, replayed) {
            (_, Some(seq)) => Some(seq),
            (true, None) => Some(self.state.wal_seq + 1),
            (false, None) => None,
        };
        // A batch of early-visible appends only: commit it non-durably, make it readable,
        // then make it durable, then answer (readers start while the fsync runs).
        let early = durable
            && !force_durable
            && ops.iter().all(|o| {
                matches!(
                    o,
                    Op::Append {
                        early_visible: true,
                        ..
                    }
                )
            });
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut fx = BatchEffects::default();
        let result = self.write_batch(ops, durable && !early, seq, &mut outcomes, &mut fx);
        let result = match (result, seq) {
            (Ok(true), Some(seq)) if logged => {
                // Committed in this process only: hand it to the kernel before the ack.
                self.state.wal_seq = seq;
                wal::seal(seq, &mut self.frame);
                let written = self.wal.append(&self.frame);
                // Keep a reasonable buffer, not the largest batch ever seen.
                self.frame.truncate(0);
                self.frame.shrink_to(1 << 20);
                match written {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the write-ahead tail; committing durably instead");
                        self.unsynced = true;
                        match self.sync() {
                            Ok(()) => Ok(true),
                            Err(e) => {
                                // Committed in this process but on no disk: refuse what
                                // follows rather than acknowledge on top of it.
                                let msg = format!(
                                    "neither the write-ahead tail nor a durable commit could be written: {e}"
                                );
                                self.broken = Some(msg.clone());
                                Err(msg)
                            }
                        }
                    }
                }
            }
            (result, _) => result,
        };
        let result = match result {
            Ok(true) if early => {
                self.unsynced = true;
                self.publish(&fx.changed);
                match self.sync() {
                    Ok(()) => Ok(true),
                    Err(e) => Err(format!("durable commit after an early-visible append: {e}")),
                }
            }
            other => other,
        };
        match result {
            Ok(false) => {
                for o in outcomes {
                    o.send();
                }
                true
            }
            Ok(true) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .records_appended
                    .fetch_add(fx.records, Ordering::Relaxed);
                self.counters
                    .bytes_appended
                    .fetch_add(fx.bytes, Ordering::Relaxed);
                self.counters
                    .appends
                    .fetch_add(fx.appends, Ordering::Relaxed);
                self.counters
                    .records_removed
                    .fetch_add(fx.removed, Ordering::Relaxed);
                // An early-visible batch was published before its fsync, and `sync` did
                // the durable bookkeeping (and counted its own commit and fsync).
                if !early {
                    if durable {
                        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                        self.made_durable();
                    } else {
                        self.unsynced = true;
                        self.unsynced_bytes += fx.bytes;
                    }
                    self.publish(&fx.changed);
                }
                for o in outcomes {
                    o.send();
                }
                true
            }
            Err(msg) => {
                self.counters.batches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %msg, "event store write failed; batch aborted");
                let msg = format!("write failed, nothing of this request was stored: {msg}");
                for o in outcomes {
                    o.fail(&msg);
                }
                match load_state(&self.db) {
                    Ok(s) => self.state = s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload the store state; refusing writes");
                        self.broken = Some(e.to_string());
                    }
                }
                false
            }
        }
    }

    /// Applies the operations in one transaction and commits it. On error every op that
    /// was not yet turned into an outcome is failed here; the caller fails the outcomes.
    fn write_batch(
        &mut self,
        ops: Vec<Op>,
        durable: bool,
        wal_seq: Option<u64>,
        outcomes: &mut Vec<Outcome>,
        fx: &mut BatchEffects,
    ) -> Result<bool, String> {
        let mut txn = match self.db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                for op in ops {
                    reject_op(op, || StoreError::Io(msg.clone()));
                }
                return Err(msg);
            }
        };
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let mut fatal: Option<String> = txn.set_durability(durability).err().map(|e| e.to_string());
        if fatal.is_none() {
            match Tables::open(&txn) {
                Ok(mut t) => {
                    let mut ops = ops.into_iter();
                    for op in ops.by_ref() {
                        let (outcome, err) = self.apply(&mut t, op, fx);
                        outcomes.push(outcome);
                        if let Some(e) = err {
                            fatal = Some(e);
                            break;
                        }
                    }
                    let msg = "batch aborted by an earlier storage failure";
                    for op in ops {
                        reject_op(op, || StoreError::Io(msg.to_string()));
                    }
                    if fatal.is_none() {
                        for (&(id, p), s) in &fx.dirty {
                            if let Err(e) = t.bounds.insert((id, p), (s.start, s.end, s.bytes)) {
                                fatal = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    if let (None, Some(seq)) = (&fatal, wal_seq) {
                        if let Err(e) = t.info.insert(INFO_WAL_SEQ, seq) {
                            fatal = Some(e.to_string());
                        }
                    }
                }
                Err(e) => {
                    let msg = match e {
                        ApplyError::Db(m) => m,
                        ApplyError::Reject(e) => e.to_string(),
                    };
                    fatal = Some(msg.clone());
                    for op in ops {
                        reject_op(op, || StoreError::Io(msg.clone()));
                    }
                }
            }
        } else {
            let msg = fatal.clone().unwrap_or_default();
            for op in ops {
                reject_op(op, || StoreError::Io(msg.clone()));
            }
        }
        if let Some(e) = fatal {
            if let Err(abort) = txn.abort() {
                tracing::warn!(error = %abort, "aborting the failed write transaction failed");
            }
            return Err(e);
        }
        if !fx.wrote && fx.changed.is_empty() {
            // Only rejections (or retention with nothing to remove): no commit, no fsync.
            if let Err(e) = txn.abort() {
                tracing::warn!(error = %e, "aborting an empty write transaction failed");
            }
            return Ok(false);
        }
        txn.commit().map(|()| true).map_err(|e| e.to_string())
    }

    /// Applies one op; returns its outcome and, if the storage failed, why.
    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        op: Op,
        fx: &mut BatchEffects,
    ) -> (Outcome, Option<String>) {
        fn split<T>(r: Result<T, ApplyError>) -> (Result<T, StoreError>, Option<String>) {
            match r {
                Ok(v) => (Ok(v), None),
                Err(ApplyError::Reject(e)) => (Err(e), None),
                Err(ApplyError::Db(e)) => (Err(StoreError::Io(e.clone())), Some(e)),
            }
        }
        match op {
            Op::CreateTopic {
                topic,
                config,
                reply,
            } => {
                let (r, e) = split(self.create_topic(t, &topic, config, fx));
                (Outcome::Bool(reply, r), e)
            }
            Op::DeleteTopic { topic, reply } => {
                let (r, e) = split(self.delete_topic(t, &topic, fx));
                (Outcome::Unit(reply, r), e)
            }
            Op::Append {
                topic,
                records,
                reply,
                ..
            } => {
                let (r, e) = split(self.append(t, &topic, &records, fx));
                (Outcome::Appended(reply, r), e)
            }
            Op::CommitOffset {
                group,
                topic,
                partition,
                offset,
                reply,
            } => {
                let (r, e) = split(self.commit_offset(t, &group, &topic, partition, offset));
                fx.wrote |= r.is_ok();
                (Outcome::Unit(reply, r), e)
            }
            Op::Retention {
                now_ms,
                holds,
                reply,
            } => {
                let (r, e) = split(self.retention(t, now_ms, &holds, fx));
                (Outcome::Retention(reply, r), e)
            }
            Op::PutMeta { key, value, reply } => {
                let r = t
                    .meta
                    .insert(key.as_str(), value.as_slice())
                    .map(|_| ())
                    .map_err(ApplyError::from);
                let (r, e) = split(r);
                fx.wrote |= r.is_ok();
                (Outcome::Unit(reply, r), e)
            }
            Op::DeleteMeta { key, reply } => {
                let r = t
                    .meta
                    .remove(key.as_str())
                    .map(|old| old.is_some())
                    .map_err(ApplyError::from);
                let (r, e) = split(r);
                fx.wrote |= r.is_ok();
                (Outcome::Bool(reply, r), e)
            }
            Op::Close { reply } => {
                // Never reached: the loop takes Close out of the batch.
                (Outcome::Unit(reply, Ok(())), None)
            }
        }
    }

    fn create_topic(
        &mut self,
        t: &mut Tables<'_>,
        topic: &str,
        config: TopicConfig,
        fx: &mut BatchEffects,
    ) -> Result<bool, ApplyError> {
        if let Some(existing) = self.state.topics.get(topic) {
            return if existing.config == config {
                Ok(false)
            } else {
                Err(ApplyError::Reject(StoreError::TopicConflict {
                    topic: topic.to_string(),
                    differences: existing.config.differences(&config),
                }))
            };
        }
        config.validate().map_err(|e| {
            ApplyError::Reject(StoreError::Io(format!(
                "invalid configuration for topic {topic:?}: {e}"
            )))
        })?;
        let id = self.state.next_topic_id.max(1);
        let row = TopicRow { id, config };
        let json = serde_json::to_vec(&row)
            .map_err(|e| ApplyError::Db(format!("cannot encode the topic configuration: {e}")))?;
        t.info.insert(INFO_NEXT_TOPIC_ID, id + 1)?;
        t.topics.insert(topic, json.as_slice())?;
        let parts = vec![PartState::default(); row.config.partitions as usize];
        for p in 0..row.config.partitions {
            fx.dirty.insert((id, p), PartState::default());
        }
        self.state.next_topic_id = id + 1;
        self.state.topics.insert(
            topic.to_string(),
            TopicState {
                id,
                config: row.config,
                parts,
            },
        );
        fx.changed.insert(topic.to_string());
        Ok(true)
    }

    fn delete_topic(
        &mut self,
        t: &mut Tables<'_>,
        topic: &str,
        fx: &mut BatchEffects,
    ) -> Result<(), ApplyError> {
        let Some(ts) = self.state.topics.get(topic) else {
            return Err(ApplyError::Reject(StoreError::TopicNotFound {
                topic: topic.to_string(),
            }));
        };
        let id = ts.id;
        t.topics.remove(topic)?;
        t.records
            .retain_in((id, 0u32, 0u64)..=(id, u32::MAX, u64::MAX), |_, _| false)?;
        t.bounds
            .retain_in((id, 0u32)..=(id, u32::MAX), |_, _| false)?;
        t.offsets
            .retain_in((id, "", 0u32)..(id.saturating_add(1), "", 0u32), |_, _| {
                false
            })?;
        fx.dirty.retain(|k, _| k.0 != id);
        self.state.topics.remove(topic);
        fx.changed.insert(topic.to_string());
        Ok(())
    }

    fn append(
        &mut self,
        t: &mut Tables<'_>,
        topic: &str,
        records: &[AppendRecord],
        fx: &mut BatchEffects,
    ) -> Result<Vec<Appended>, ApplyError> {
        let Some(ts) = self.state.topics.get_mut(topic) else {
            return Err(ApplyError::Reject(StoreError::TopicNotFound {
                topic: topic.to_string(),
            }));
        };
        if let Some(bad) = records
            .iter()
            .find(|r| r.partition as usize >= ts.parts.len())
        {
            return Err(ApplyError::Reject(StoreError::PartitionNotFound {
                topic: topic.to_string(),
                partition: bad.partition,
            }));
        }
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Some(p) = ts.parts.get_mut(r.partition as usize) else {
                continue; // checked above
            };
            let offset = p.end;
            let value = encode_record(offset, r.timestamp_ms, &r.payload);
            t.records
                .insert((ts.id, r.partition, offset), value.as_slice())?;
            p.end += 1;
            p.bytes += r.payload.len() as u64;
            fx.dirty.insert((ts.id, r.partition), *p);
            fx.records += 1;
            fx.bytes += r.payload.len() as u64;
            out.push(Appended {
                partition: r.partition,
                offset,
            });
        }
        fx.appends += 1;
        fx.changed.insert(topic.to_string());
        Ok(out)
    }

    fn commit_offset(
        &mut self,
        t: &mut Tables<'_>,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ApplyError> {
        let Some(ts) = self.state.topics.get(topic) else {
            return Err(ApplyError::Reject(StoreError::TopicNotFound {
                topic: topic.to_string(),
            }));
        };
        if partition as usize >= ts.parts.len() {
            return Err(ApplyError::Reject(StoreError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
            }));
        }
        t.offsets.insert((ts.id, group, partition), offset)?;
        Ok(())
    }

    fn retention(
        &mut self,
        t: &mut Tables<'_>,
        now_ms: u64,
        holds: &RetentionHolds,
        fx: &mut BatchEffects,
    ) -> Result<RetentionReport, ApplyError> {
        let mut report = RetentionReport::default();
        for (name, ts) in self.state.topics.iter_mut() {
            let retention = &ts.config.retention;
            if retention.max_age_secs.is_none() && retention.max_bytes.is_none() {
                continue;
            }
            let max_age_ms = retention.max_age_secs.map(|s| s.saturating_mul(1000));
            let max_bytes = retention.max_bytes;
            for (pi, p) in ts.parts.iter_mut().enumerate() {
                let pi = pi as u32;
                if p.start >= p.end {
                    continue;
                }
                let held_from = holds.held_from(name, pi);
                let mut new_start = p.start;
                let mut removed_bytes = 0u64;
                let mut held_dropped = 0u64;
                for entry in t.records.range((ts.id, pi, p.start)..(ts.id, pi, p.end))? {
                    let (k, v) = entry?;
                    let offset = k.value().2;
                    let Some((stamp, len)) = peek_record(v.value()) else {
                        tracing::warn!(topic = %name, partition = pi, offset,
                            "record too short to apply retention; stopping here");
                        break;
                    };
                    let over = max_bytes.is_some_and(|m| p.bytes.saturating_sub(removed_bytes) > m);
                    match retention_verdict(
                        now_ms,
                        offset,
                        stamp,
                        over,
                        max_age_ms,
                        held_from,
                        holds.max_hold_ms,
                    ) {
                        Verdict::Remove { held } => {
                            held_dropped += u64::from(held);
                            new_start = offset + 1;
                            removed_bytes += len;
                        }
                        Verdict::Keep { held } => {
                            report.held_partitions += u64::from(held);
                            break;
                        }
                    }
                }
                if new_start == p.start {
                    continue;
                }
                t.records
                    .retain_in((ts.id, pi, p.start)..(ts.id, pi, new_start), |_, _| false)?;
                report.records += new_start - p.start;
                report.bytes += removed_bytes;
                report.held_dropped += held_dropped;
                fx.removed += new_start - p.start;
                p.start = new_start;
                p.bytes = p.bytes.saturating_sub(removed_bytes);
                fx.dirty.insert((ts.id, pi), *p);
                fx.changed.insert(name.clone());
            }
        }
        Ok(report)
    }

    /// Makes the committed state visible to readers and wakes the watches.
    fn publish(&self, changed: &HashSet<String>) {
        if changed.is_empty() {
            return;
        }
        let mut views = self
            .shared
            .topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for name in changed {
            match self.state.topics.get(name) {
                None => {
                    views.remove(name);
                }
                Some(ts) => match views.get(name) {
                    Some(view) if view.id == ts.id => {
                        for (pv, ps) in view.parts.iter().zip(&ts.parts) {
                            pv.start.store(ps.start, Ordering::Release);
                            pv.end.send_if_modified(|end| {
                                if *end != ps.end {
                                    *end = ps.end;
                                    true
                                } else {
                                    false
                                }
                            });
                        }
                    }
                    _ => {
                        views.insert(name.clone(), Arc::new(TopicView::new(ts)));
                    }
                },
            }
        }
    }
}

/// Where replay learns how an operation it applied again turned out.
pub(crate) enum ReplayWait {
    Appended(oneshot::Receiver<Result<Vec<Appended>, StoreError>>),
    Unit(oneshot::Receiver<Result<(), StoreError>>),
    Bool(oneshot::Receiver<Result<bool, StoreError>>),
}

impl ReplayWait {
    /// `Some(true)` if the operation succeeded, `Some(false)` if it was refused or
    /// failed, `None` if it was never answered.
    pub(crate) fn outcome(&mut self) -> Option<bool> {
        match self {
            ReplayWait::Appended(r) => r.try_recv().ok().map(|v| v.is_ok()),
            ReplayWait::Unit(r) => r.try_recv().ok().map(|v| v.is_ok()),
            ReplayWait::Bool(r) => r.try_recv().ok().map(|v| v.is_ok()),
        }
    }
}

/// The writer operation that applies a logged one again.
fn replay_op(op: LoggedOp) -> (Op, ReplayWait) {
    match op {
        LoggedOp::Append { topic, records } => {
            let (reply, rx) = oneshot::channel();
            let op = Op::Append {
                topic,
                records,
                early_visible: false,
                reply,
            };
            (op, ReplayWait::Appended(rx))
        }
        LoggedOp::CommitOffset {
            group,
            topic,
            partition,
            offset,
        } => {
            let (reply, rx) = oneshot::channel();
            let op = Op::CommitOffset {
                group,
                topic,
                partition,
                offset,
                reply,
            };
            (op, ReplayWait::Unit(rx))
        }
        LoggedOp::PutMeta { key, value } => {
            let (reply, rx) = oneshot::channel();
            (Op::PutMeta { key, value, reply }, ReplayWait::Unit(rx))
        }
        LoggedOp::DeleteMeta { key } => {
            let (reply, rx) = oneshot::channel();
            (Op::DeleteMeta { key, reply }, ReplayWait::Bool(rx))
        }
    }
}
