//! The embedded durable log: the default [`EventStore`] of meshd, one redb database file
//! (`events.redb`) in the data directory, plus a write-ahead tail (`events.wal`, see
//! `wal.rs`) that holds what `fsync=interval` acknowledged since the last durable commit.
//!
//! Owns: records, partition bounds and byte totals, topic configurations, consumer
//! offsets and the metadata namespace — all in the same database, so one commit moves
//! them together and a crash can never leave them out of step. The table layout and the
//! record codec are in `layout.rs`; the group-commit writer in `writer.rs`.
//!
//! # How it works
//! - **Writes** (appends, topic changes, offsets, metadata, retention) are queued to ONE
//!   writer thread. It takes everything queued (up to [`EmbeddedTuning::batch_max_bytes`] /
//!   [`EmbeddedTuning::batch_max_ops`]), applies it in one redb write transaction,
//!   commits once, moves the partition watches, and only then acknowledges every caller
//!   (group commit: one fsync for many appends). Each operation is all-or-nothing:
//!   rejected operations are validated before they write anything, and a storage
//!   failure aborts the whole transaction.
//! - **Reads** go to `spawn_blocking` and run in a redb read snapshot; `bounds`,
//!   `topic`, `list_topics` and `watch_end` answer from memory without blocking.
//! - **Watches** (`watch_end`) move after the commit of each append, before its caller is
//!   acknowledged. A watch ends (`changed()` fails) when its topic is deleted or the
//!   store closes; a recreated topic has new watches.
//! - **Records** carry our own CRC32 over (offset, timestamp, payload); a read that meets
//!   a bad checksum, or a hole between `start` and `end`, fails with
//!   [`StoreError::Corrupt`] rather than returning a torn record.
//!
//! # What each fsync policy guarantees
//! redb 4 offers two durabilities: `Immediate` (the commit is fsynced before `commit`
//! returns) and `None` (the commit is visible in this process at once but its root lives
//! only in this process's memory until a later `Immediate` commit; the older `Eventual`
//! level, "written but not fsynced", no longer exists). Hence:
//!
//! - [`FsyncPolicy::Always`]: every group commit is `Immediate`. An acknowledged
//!   operation survives a process kill (`kill -9`) and a machine crash or power loss (as
//!   far as the disk honours fsync). This is the default and what guarantee 1 of the
//!   design needs.
//! - [`FsyncPolicy::Interval`]: group commits are `None`, and each one's operations are
//!   written (`write(2)`, no fsync) to the write-ahead tail `events.wal` before any of
//!   them is acknowledged. A durable commit is made at least every `fsync_interval` (by
//!   a timer, also when idle) and whenever [`EmbeddedTuning::checkpoint_bytes`] of
//!   payload were committed since the last one; it empties the tail. A batch holding a
//!   topic creation or deletion or a retention pass is committed durably at once (those
//!   are not logged). A **process kill loses nothing acknowledged**: the kernel has the
//!   tail, and the next open replays it past the last durable commit (same offsets,
//!   checksummed frames). A **machine crash or power loss** loses what was acknowledged
//!   since the last durable commit (at most about one interval): the tail is not
//!   fsynced, and replay stops at its first torn frame; the store reopens consistent
//!   (records, bounds, offsets and metadata of one instant).
//! - [`FsyncPolicy::Never`]: like `Interval` without the timer and without the tail
//!   (nothing per commit reaches the kernel): durable commits happen
//!   only on [`EventStore::close`], when the last handle is dropped (best effort), and
//!   every `checkpoint_bytes` of payload (redb cannot reuse pages freed by non-durable
//!   commits, so the file would otherwise only grow). A process kill loses everything
//!   since the last durable commit.
//!
//! Whatever the mode, a non-empty tail left by an `interval` run is replayed at open.
//! In every mode, what reopens is a state that existed at one commit: never a torn record,
//! never bounds that disagree with the records. After an unclean stop redb repairs the
//! file at open, which reads the whole database (time grows with its size).
//!
//! # Not here
//! Event encoding ([`meshd_core::codec`]), partition choice (`ingest`), and deciding when
//! retention runs (the node calls [`EventStore::enforce_retention`] periodically).

pub(crate) mod layout;
pub(crate) mod wal;
pub(crate) mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meshd_core::api::TopicConfig;
use redb::{Database, ReadableDatabase};
use tokio::sync::{oneshot, watch};

use self::layout::{decode_record, peek_record, BOUNDS, META, OFFSETS, RECORDS};
use self::writer::{Counters, Op, Reply, Shared, TopicView, Writer};
use super::{
    AppendRecord, Appended, EventStore, FsyncPolicy, PartitionBounds, RetentionHolds,
    RetentionReport, StoreError, StoredRecord,
};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "events.redb";

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// When appends are fsynced (see the module docs for what each policy guarantees).
    pub fsync: FsyncPolicy,
    /// The fsync period under [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(100),
        }
    }
}

/// Tuning knobs of the embedded store; the defaults suit a node and `meshd dev`.
#[derive(Debug, Clone)]
pub struct EmbeddedTuning {
    /// Memory redb may use to cache pages (redb's own default is 1 GiB, too much when a
    /// dev mesh runs several stores in one process).
    pub cache_size: usize,
    /// A group commit stops taking queued operations past this many payload bytes.
    pub batch_max_bytes: usize,
    /// A group commit stops taking queued operations past this many operations.
    pub batch_max_ops: usize,
    /// Under `Interval` and `Never`: make a durable commit once this many payload bytes
    /// were committed non-durably.
    pub checkpoint_bytes: u64,
}

impl Default for EmbeddedTuning {
    fn default() -> Self {
        EmbeddedTuning {
            cache_size: 64 * 1024 * 1024,
            batch_max_bytes: 8 * 1024 * 1024,
            batch_max_ops: 4096,
            checkpoint_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Counters of an embedded store since it was opened (the node turns them into metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// redb write transactions committed (group commits plus periodic durable commits).
    pub commits: u64,
    /// Commits made durable with an fsync.
    pub fsyncs: u64,
    /// Group commits that failed and were rolled back.
    pub batches_failed: u64,
    /// `append` calls committed.
    pub appends: u64,
    /// Records appended.
    pub records_appended: u64,
    /// Payload bytes appended.
    pub bytes_appended: u64,
    /// Records removed by retention.
    pub records_removed: u64,
}

/// The embedded store. Cheap to share behind its `Arc`; dropping the last handle stops
/// the writer after a final durable commit (prefer [`EventStore::close`], which waits).
pub struct EmbeddedStore {
    dir: PathBuf,
    options: EmbeddedOptions,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    sender: Mutex<Option<Sender<Op>>>,
    db: RwLock<Option<Arc<Database>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the embedded event store is closed".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedStore {
    async fn append_with(
        &self,
        topic: &str,
        records: Vec<AppendRecord>,
        early_visible: bool,
    ) -> Result<Vec<Appended>, StoreError> {
        // Cheap early rejection; the writer checks again against its own state.
        let view = self.view(topic)?;
        for r in &records {
            Self::partition_of(&view, topic, r.partition)?;
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let topic = topic.to_string();
        self.call(|reply| Op::Append {
            topic,
            records,
            early_visible,
            reply,
        })
        .await
    }

    /// Opens (or creates) the store in `dir`, recovering topics, bounds, offsets and
    /// metadata of the last durable commit. Blocking (redb may repair the file after a
    /// crash): call it from `spawn_blocking` or before the runtime is busy.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Arc<EmbeddedStore>, StoreError> {
        Self::open_tuned(dir, options, EmbeddedTuning::default())
    }

    /// [`EmbeddedStore::open`] on the blocking pool, for callers inside the runtime.
    pub async fn open_async(
        dir: PathBuf,
        options: EmbeddedOptions,
    ) -> Result<Arc<EmbeddedStore>, StoreError> {
        tokio::task::spawn_blocking(move || Self::open(&dir, options))
            .await
            .map_err(|e| StoreError::Io(format!("opening the store failed: {e}")))?
    }

    /// [`EmbeddedStore::open`] with explicit tuning.
    pub fn open_tuned(
        dir: &Path,
        options: EmbeddedOptions,
        tuning: EmbeddedTuning,
    ) -> Result<Arc<EmbeddedStore>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(tuning.cache_size)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                    "{} is already open (another store or process uses this data directory)",
                    path.display()
                )),
                other => StoreError::Io(format!("cannot open {}: {other}", path.display())),
            })?;
        Self::start(dir, db, options, tuning)
    }

    /// Starts the store on an opened database (tests pass one with a faulty backend).
    fn start(
        dir: &Path,
        db: Database,
        options: EmbeddedOptions,
        tuning: EmbeddedTuning,
    ) -> Result<Arc<EmbeddedStore>, StoreError> {
        let state = writer::init_and_load(&db)?;
        let (wal, tail) = wal::Wal::open(dir)?;
        let counters = Arc::new(Counters::default());
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = Writer::new(
            db.clone(),
            rx,
            state,
            options.clone(),
            tuning,
            counters.clone(),
            wal,
        );
        w.recover(&tail)?;
        let shared = w.shared.clone();
        let handle = std::thread::Builder::new()
            .name("meshd-store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::Io(format!("cannot start the store writer thread: {e}")))?;
        Ok(Arc::new(EmbeddedStore {
            dir: dir.to_path_buf(),
            options,
            shared,
            counters,
            sender: Mutex::new(Some(tx)),
            db: RwLock::new(Some(db)),
            writer: Mutex::new(Some(handle)),
            closed: AtomicBool::new(false),
        }))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            batches_failed: c.batches_failed.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            records_appended: c.records_appended.load(Ordering::Relaxed),
            bytes_appended: c.bytes_appended.load(Ordering::Relaxed),
            records_removed: c.records_removed.load(Ordering::Relaxed),
        }
    }

    fn view(&self, topic: &str) -> Result<Arc<TopicView>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let topics = self.shared.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .get(topic)
            .cloned()
            .ok_or_else(|| StoreError::TopicNotFound {
                topic: topic.to_string(),
            })
    }

    fn partition_of(view: &TopicView, topic: &str, partition: u32) -> Result<usize, StoreError> {
        let i = partition as usize;
        if i < view.parts.len() {
            Ok(i)
        } else {
            Err(StoreError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
            })
        }
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(closed)
    }

    /// Queues an operation to the writer and waits for its acknowledgement.
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let sender = lock(&self.sender);
            let sender = sender.as_ref().ok_or_else(closed)?;
            sender.send(make(tx)).map_err(|_| closed())?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the embedded store's writer stopped".into()))?
    }

    /// Runs a read on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Io(format!("store read task failed: {e}")))?
    }
}

fn read_records(
    db: &Database,
    topic: &str,
    id: u64,
    partition: u32,
    from: u64,
    max: usize,
) -> Result<Vec<StoredRecord>, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    let bounds = txn.open_table(BOUNDS).map_err(io)?;
    let Some((start, end, _)) = bounds.get((id, partition)).map_err(io)?.map(|g| g.value()) else {
        // Deleted since the caller looked it up.
        return Err(StoreError::TopicNotFound {
            topic: topic.to_string(),
        });
    };
    let from = from.max(start);
    if from >= end {
        return Ok(Vec::new());
    }
    let upto = end.min(from.saturating_add(max as u64));
    let corrupt = |offset: u64, reason: String| StoreError::Corrupt {
        topic: topic.to_string(),
        partition,
        offset,
        reason,
    };
    let records = txn.open_table(RECORDS).map_err(io)?;
    let mut out = Vec::with_capacity(((upto - from) as usize).min(4096));
    let mut expected = from;
    for entry in records
        .range((id, partition, from)..(id, partition, upto))
        .map_err(io)?
    {
        let (k, v) = entry.map_err(io)?;
        let offset = k.value().2;
        if offset != expected {
            return Err(corrupt(
                expected,
                "record missing below the partition end".into(),
            ));
        }
        let (timestamp_ms, payload) =
            decode_record(offset, v.value()).map_err(|r| corrupt(offset, r.to_string()))?;
        out.push(StoredRecord {
            partition,
            offset,
            timestamp_ms,
            payload,
        });
        expected += 1;
    }
    if expected != upto {
        return Err(corrupt(
            expected,
            "record missing below the partition end".into(),
        ));
    }
    Ok(out)
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn create_topic(&self, topic: &str, config: &TopicConfig) -> Result<bool, StoreError> {
        let (topic, config) = (topic.to_string(), config.clone());
        self.call(|reply| Op::CreateTopic {
            topic,
            config,
            reply,
        })
        .await
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), StoreError> {
        let topic = topic.to_string();
        self.call(|reply| Op::DeleteTopic { topic, reply }).await
    }

    async fn list_topics(&self) -> Result<Vec<(String, TopicConfig)>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let topics = self.shared.topics.read().unwrap_or_else(|p| p.into_inner());
        let sorted: BTreeMap<&String, &TopicConfig> =
            topics.iter().map(|(k, v)| (k, &v.config)).collect();
        Ok(sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn topic(&self, topic: &str) -> Result<Option<TopicConfig>, StoreError> {
        match self.view(topic) {
            Ok(v) => Ok(Some(v.config.clone())),
            Err(StoreError::TopicNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<AppendRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_with(topic, records, false).await
    }

    async fn append_visible_early(
        &self,
        topic: &str,
        records: Vec<AppendRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_with(topic, records, true).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let view = self.view(topic)?;
        let p = Self::partition_of(&view, topic, partition)?;
        if max == 0 || from >= *view.parts[p].end.borrow() {
            return Ok(Vec::new());
        }
        let (topic, id) = (topic.to_string(), view.id);
        self.blocking(move |db| read_records(db, &topic, id, partition, from, max))
            .await
    }

    /// The trait's binary search, in one read snapshot and reading only the timestamp in
    /// each probed record's header.
    async fn offset_at_time(
        &self,
        topic: &str,
        partition: u32,
        time_ms: u64,
    ) -> Result<u64, StoreError> {
        let view = self.view(topic)?;
        Self::partition_of(&view, topic, partition)?;
        let (topic, id) = (topic.to_string(), view.id);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io)?;
            let bounds = txn.open_table(BOUNDS).map_err(io)?;
            let Some((start, end, _)) = bounds.get((id, partition)).map_err(io)?.map(|g| g.value())
            else {
                return Err(StoreError::TopicNotFound { topic });
            };
            let records = txn.open_table(RECORDS).map_err(io)?;
            let mut search = super::by_time::TimeSearch::new(start, end, time_ms);
            while let Some(o) = search.probe() {
                let first = records
                    .range((id, partition, o)..(id, partition, end))
                    .map_err(io)?
                    .next()
                    .transpose()
                    .map_err(io)?;
                let first = match first {
                    None => None,
                    Some((k, v)) => {
                        let offset = k.value().2;
                        let (ts, _) =
                            peek_record(v.value()).ok_or_else(|| StoreError::Corrupt {
                                topic: topic.clone(),
                                partition,
                                offset,
                                reason: "record shorter than its header".into(),
                            })?;
                        Some((offset, ts))
                    }
                };
                search.answer(first);
            }
            Ok(search.result())
        })
        .await
    }

    async fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds, StoreError> {
        let view = self.view(topic)?;
        let p = &view.parts[Self::partition_of(&view, topic, partition)?];
        // start first: it never passes end, and end only grows.
        let start = p.start.load(Ordering::Acquire);
        let end = *p.end.borrow();
        Ok(PartitionBounds { start, end })
    }

    fn watch_end(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>, StoreError> {
        let view = self.view(topic)?;
        let p = Self::partition_of(&view, topic, partition)?;
        Ok(view.parts[p].end.subscribe())
    }

    async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), StoreError> {
        let view = self.view(topic)?;
        Self::partition_of(&view, topic, partition)?;
        let (group, topic) = (group.to_string(), topic.to_string());
        self.call(|reply| Op::CommitOffset {
            group,
            topic,
            partition,
            offset,
            reply,
        })
        .await
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, StoreError> {
        let view = self.view(topic)?;
        Self::partition_of(&view, topic, partition)?;
        let (group, id) = (group.to_string(), view.id);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io)?;
            let offsets = txn.open_table(OFFSETS).map_err(io)?;
            let v = offsets
                .get((id, group.as_str(), partition))
                .map_err(io)?
                .map(|g| g.value());
            Ok(v)
        })
        .await
    }

    async fn enforce_retention_held(
        &self,
        now_ms: u64,
        holds: &RetentionHolds,
    ) -> Result<RetentionReport, StoreError> {
        let holds = holds.clone();
        self.call(|reply| Op::Retention {
            now_ms,
            holds,
            reply,
        })
        .await
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.call(|reply| Op::PutMeta { key, value, reply }).await
    }

    async fn delete_meta(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.call(|reply| Op::DeleteMeta { key, reply }).await
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io)?;
            let meta = txn.open_table(META).map_err(io)?;
            let mut out = Vec::new();
            for entry in meta.range(prefix.as_str()..).map_err(io)? {
                let (k, v) = entry.map_err(io)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                out.push((key.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let Some(sender) = lock(&self.sender).take() else {
            return Ok(());
        };
        self.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let result = match sender.send(Op::Close { reply: tx }) {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the embedded store's writer stopped before closing".into(),
                ))
            }),
            Err(_) => Err(StoreError::Unavailable(
                "the embedded store's writer stopped before closing".into(),
            )),
        };
        drop(sender);
        // Wake watchers: their senders go away with the views.
        self.shared
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let handle = lock(&self.writer).take();
        let db = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        let released = tokio::task::spawn_blocking(move || release(handle, db))
            .await
            .map_err(|e| StoreError::Io(format!("closing the store failed: {e}")))?;
        result.and(released)
    }
}

/// Joins the writer and closes the database once in-flight reads let go of it, so the
/// directory can be opened again as soon as `close` returns.
fn release(handle: Option<JoinHandle<()>>, db: Option<Arc<Database>>) -> Result<(), StoreError> {
    if let Some(h) = handle {
        if h.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }
    let Some(mut db) = db else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return db.close().map_err(io),
            Err(still_shared) => {
                if Instant::now() > deadline {
                    tracing::warn!(
                        "store reads still running at close; the file closes after them"
                    );
                    return Ok(());
                }
                db = still_shared;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests;
