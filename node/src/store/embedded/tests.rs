//! Tests of the embedded store: the conformance suite, plus what only this backend has
//! (checksums on disk, fsync policies, group commit, close).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableTable};

use super::layout::RECORDS;
use super::*;
use crate::store::conformance::{self, StoreHarness};

struct Harness {
    root: tempfile::TempDir,
    options: EmbeddedOptions,
}

impl Harness {
    fn new(options: EmbeddedOptions) -> Harness {
        Harness {
            root: tempfile::tempdir().unwrap(),
            options,
        }
    }
}

async fn open_at(dir: PathBuf, options: EmbeddedOptions) -> Arc<EmbeddedStore> {
    EmbeddedStore::open_async(dir, options).await.unwrap()
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self, location: &str) -> Arc<dyn EventStore> {
        open_at(self.root.path().join(location), self.options.clone()).await
    }
}

fn rec(partition: u32, payload: &str) -> AppendRecord {
    AppendRecord {
        partition,
        timestamp_ms: 1,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn one_partition() -> TopicConfig {
    TopicConfig::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_fsync_always() {
    conformance::run_all(&Harness::new(EmbeddedOptions::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_fsync_interval() {
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_millis(20),
    };
    conformance::run_all(&Harness::new(options)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_fsync_never() {
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_secs(3600),
    };
    conformance::run_all(&Harness::new(options)).await;
}

/// Rewrites one stored record value behind the store's back.
fn tamper(dir: &Path, key: (u64, u32, u64), f: impl FnOnce(&mut Vec<u8>)) {
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut records = txn.open_table(RECORDS).unwrap();
        let mut value = records.get(key).unwrap().unwrap().value().to_vec();
        f(&mut value);
        records.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn bad_checksum_is_reported_as_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = open_at(dir.clone(), EmbeddedOptions::default()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    s.append(
        "t",
        vec![rec(0, "good"), rec(0, "flipped"), rec(0, "after")],
    )
    .await
    .unwrap();
    let id = s.view("t").unwrap().id;
    s.close().await.unwrap();

    tamper(&dir, (id, 0, 1), |v| {
        let last = v.len() - 1;
        v[last] ^= 0x40;
    });
    let s = open_at(dir.clone(), EmbeddedOptions::default()).await;
    assert_eq!(
        s.read("t", 0, 0, 1).await.unwrap().len(),
        1,
        "records before it read fine"
    );
    let err = s.read("t", 0, 0, 10).await.unwrap_err();
    match err {
        StoreError::Corrupt {
            topic,
            partition,
            offset,
            reason,
        } => {
            assert_eq!((topic.as_str(), partition, offset), ("t", 0, 1));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        s.read("t", 0, 2, 10).await.unwrap().len(),
        1,
        "records after it read fine"
    );
    s.close().await.unwrap();

    // A truncated value is corrupt too, never a short payload.
    tamper(&dir, (id, 0, 2), |v| v.truncate(5));
    let s = open_at(dir, EmbeddedOptions::default()).await;
    let err = s.read("t", 0, 2, 10).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 2, .. }),
        "{err:?}"
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn missing_record_inside_bounds_is_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = open_at(dir.clone(), EmbeddedOptions::default()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    s.append("t", vec![rec(0, "a"), rec(0, "b"), rec(0, "c")])
        .await
        .unwrap();
    let id = s.view("t").unwrap().id;
    s.close().await.unwrap();
    {
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(RECORDS).unwrap().remove((id, 0, 1)).unwrap();
        txn.commit().unwrap();
    }
    let s = open_at(dir, EmbeddedOptions::default()).await;
    let err = s.read("t", 0, 0, 10).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 1, .. }),
        "{err:?}"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_fsyncs() {
    let root = tempfile::tempdir().unwrap();
    let s = open_at(root.path().join("s"), EmbeddedOptions::default()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    let before = s.stats();
    let callers = 32;
    let per_caller = 20;
    let mut tasks = Vec::new();
    for c in 0..callers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_caller {
                s.append("t", vec![rec(0, &format!("{c}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = s.stats();
    let appends = (callers * per_caller) as u64;
    assert_eq!(after.appends - before.appends, appends);
    assert_eq!(after.records_appended - before.records_appended, appends);
    let fsyncs = after.fsyncs - before.fsyncs;
    assert_eq!(
        after.commits - before.commits,
        fsyncs,
        "fsync=always: every commit fsyncs"
    );
    assert!(
        fsyncs < appends,
        "group commit: {fsyncs} fsyncs for {appends} concurrent appends"
    );
    assert_eq!(s.bounds("t", 0).await.unwrap().end, appends);
    s.close().await.unwrap();
}

#[tokio::test]
async fn interval_policy_syncs_when_idle() {
    let root = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_millis(50),
    };
    let s = open_at(root.path().join("s"), options).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    let start = s.stats();
    s.append("t", vec![rec(0, "x")]).await.unwrap();
    // The timer makes a durable commit without further traffic: await it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.stats().fsyncs <= start.fsyncs {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no durable commit within the interval");
    s.close().await.unwrap();
}

#[tokio::test]
async fn never_policy_commits_without_fsync_and_syncs_on_close() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(1),
    };
    let s = open_at(dir.clone(), options.clone()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    for i in 0..5 {
        s.append("t", vec![rec(0, &i.to_string())]).await.unwrap();
    }
    let st = s.stats();
    assert!(st.commits >= 6);
    assert_eq!(st.fsyncs, 0, "no fsync before close");
    s.close().await.unwrap();
    let s = open_at(dir, options).await;
    assert_eq!(
        s.bounds("t", 0).await.unwrap().end,
        5,
        "close made them durable"
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn closed_store_refuses_and_reopens() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = open_at(dir.clone(), EmbeddedOptions::default()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    let mut w = s.watch_end("t", 0).unwrap();
    // Opening the same directory twice is refused.
    let err = EmbeddedStore::open(&dir, EmbeddedOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    s.close().await.unwrap();
    s.close().await.unwrap(); // idempotent
    assert!(
        w.changed().await.is_err(),
        "watchers learn the store closed"
    );
    let err = s.append("t", vec![rec(0, "x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(matches!(
        s.read("t", 0, 0, 1).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.put_meta("k", b"v").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.list_meta("").await,
        Err(StoreError::Unavailable(_))
    ));
    let s = open_at(dir, EmbeddedOptions::default()).await;
    assert!(s.topic("t").await.unwrap().is_some());
    s.close().await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_handle_commits_durably() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_secs(3600),
    };
    let s = open_at(dir.clone(), options.clone()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    s.append("t", vec![rec(0, "kept")]).await.unwrap();
    let handle = s.writer.lock().unwrap().take().unwrap();
    drop(s);
    // The writer sees every sender gone, commits durably and exits: await the thread.
    tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap();
    let s = open_at(dir, options).await;
    assert_eq!(s.bounds("t", 0).await.unwrap().end, 1);
    s.close().await.unwrap();
}

/// What a `kill -9` of the process leaves: the store's files as the kernel has them now
/// (the writer is idle, so nothing is half-written), copied to `to`. `with_wal: false`
/// copies the redb file alone: what redb by itself would reopen at.
fn snapshot_as_killed(from: &Path, to: &Path, with_wal: bool) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join(DB_FILE), to.join(DB_FILE)).unwrap();
    if with_wal {
        std::fs::copy(from.join(wal::WAL_FILE), to.join(wal::WAL_FILE)).unwrap();
    }
}

fn interval_no_timer() -> EmbeddedOptions {
    EmbeddedOptions {
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_secs(3600),
    }
}

/// Appends `n` one-record appends `0..n` to partition 0 of `t`, one call each.
async fn append_numbered(s: &EmbeddedStore, n: u64) {
    for i in 0..n {
        s.append("t", vec![rec(0, &format!("e{i}"))]).await.unwrap();
    }
}

async fn assert_numbered(s: &EmbeddedStore, n: u64) {
    assert_eq!(s.bounds("t", 0).await.unwrap().end, n);
    let got = s.read("t", 0, 0, n as usize + 1).await.unwrap();
    let want: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("e{i}"))).collect();
    let got: Vec<Bytes> = got.into_iter().map(|r| r.payload).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn interval_acknowledged_operations_survive_a_process_kill() {
    let root = tempfile::tempdir().unwrap();
    let (live, killed, bare) = (
        root.path().join("live"),
        root.path().join("killed"),
        root.path().join("bare"),
    );
    let s = open_at(live.clone(), interval_no_timer()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    let fsyncs = s.stats().fsyncs;
    append_numbered(&s, 40).await;
    s.commit_offset("g", "t", 0, 17).await.unwrap();
    s.put_meta("m/a", b"1").await.unwrap();
    s.put_meta("m/b", b"2").await.unwrap();
    assert!(s.delete_meta("m/b").await.unwrap());
    assert_eq!(s.stats().fsyncs, fsyncs, "no fsync within the interval");
    snapshot_as_killed(&live, &killed, true);
    snapshot_as_killed(&live, &bare, false);

    // redb alone reopens at its last durable commit: the appends are not in it.
    let b = open_at(bare, interval_no_timer()).await;
    assert_eq!(b.bounds("t", 0).await.unwrap().end, 0);
    b.close().await.unwrap();

    // With the write-ahead tail everything acknowledged is back, at the same offsets,
    // whatever mode the store restarts in.
    let k = open_at(killed.clone(), EmbeddedOptions::default()).await;
    assert_numbered(&k, 40).await;
    assert_eq!(k.committed_offset("g", "t", 0).await.unwrap(), Some(17));
    assert_eq!(
        k.list_meta("m/").await.unwrap(),
        vec![("m/a".to_string(), b"1".to_vec())]
    );
    // Replay ended in a durable commit and emptied the tail.
    assert_eq!(
        std::fs::metadata(killed.join(wal::WAL_FILE)).unwrap().len(),
        0
    );
    k.append("t", vec![rec(0, "e40")]).await.unwrap();
    assert_numbered(&k, 41).await;
    k.close().await.unwrap();
    s.close().await.unwrap();
    assert_eq!(
        std::fs::metadata(live.join(wal::WAL_FILE)).unwrap().len(),
        0
    );
}

#[tokio::test]
async fn interval_recovery_ignores_a_torn_tail_and_frames_already_durable() {
    let root = tempfile::tempdir().unwrap();
    let live = root.path().join("live");
    let s = open_at(live.clone(), interval_no_timer()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    append_numbered(&s, 10).await;
    let tail_before = std::fs::read(live.join(wal::WAL_FILE)).unwrap();
    assert!(!tail_before.is_empty());

    // A torn last write (a machine crash mid-frame): the complete frames replay.
    let torn = root.path().join("torn");
    snapshot_as_killed(&live, &torn, true);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(torn.join(wal::WAL_FILE))
        .unwrap();
    std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let t = open_at(torn, interval_no_timer()).await;
    assert_numbered(&t, 10).await;
    t.close().await.unwrap();

    // Killed after a durable commit but before the tail was emptied: the redb file
    // already holds the frames, and replay must not apply them twice.
    s.create_topic("u", &one_partition()).await.unwrap(); // durable: not loggable
    assert_eq!(
        std::fs::metadata(live.join(wal::WAL_FILE)).unwrap().len(),
        0,
        "a durable commit empties the tail"
    );
    let stale = root.path().join("stale");
    snapshot_as_killed(&live, &stale, false);
    std::fs::write(stale.join(wal::WAL_FILE), &tail_before).unwrap();
    let st = open_at(stale, interval_no_timer()).await;
    assert_numbered(&st, 10).await;
    assert!(st.topic("u").await.unwrap().is_some());
    st.close().await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test]
async fn invalid_topic_config_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let s = open_at(root.path().join("s"), EmbeddedOptions::default()).await;
    let zero = TopicConfig {
        partitions: 0,
        ..TopicConfig::default()
    };
    assert!(s.create_topic("t", &zero).await.is_err());
    assert_eq!(s.topic("t").await.unwrap(), None);
    s.close().await.unwrap();
}

/// An in-memory redb backend whose writes and syncs fail while `fail` is set.
#[derive(Debug)]
struct FaultyBackend {
    inner: redb::backends::InMemoryBackend,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultyBackend {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            Err(std::io::Error::other("injected disk failure"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

#[tokio::test]
async fn storage_failure_fails_the_whole_batch_and_changes_nothing() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = FaultyBackend {
        inner: redb::backends::InMemoryBackend::new(),
        fail: fail.clone(),
    };
    let db = redb::Builder::new().create_with_backend(backend).unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::start(
        root.path(),
        db,
        EmbeddedOptions::default(),
        EmbeddedTuning::default(),
    )
    .unwrap();
    s.create_topic(
        "t",
        &TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    s.append("t", vec![rec(0, "before")]).await.unwrap();
    s.put_meta("k", b"old").await.unwrap();
    let mut w = s.watch_end("t", 0).unwrap();
    w.borrow_and_update();

    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = s
        .append("t", vec![rec(0, "lost"), rec(1, "lost")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    let err = s.put_meta("k", b"new").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Io(_) | StoreError::Unavailable(_)),
        "{err:?}"
    );
    assert!(s.stats().batches_failed >= 1);
    // Nothing of the failed calls is visible, and the watch did not move.
    assert_eq!(
        s.bounds("t", 0).await.unwrap(),
        PartitionBounds { start: 0, end: 1 }
    );
    assert_eq!(
        s.bounds("t", 1).await.unwrap(),
        PartitionBounds { start: 0, end: 0 }
    );
    assert!(!w.has_changed().unwrap());
    let r = s.read("t", 0, 0, 10).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].payload.as_ref(), b"before");
    assert_eq!(
        s.list_meta("k").await.unwrap(),
        vec![("k".to_string(), b"old".to_vec())]
    );

    // Once the disk works again, the store either goes on at the right offsets or keeps
    // refusing; it never writes past a hole.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    match s.append("t", vec![rec(0, "after")]).await {
        Ok(a) => {
            assert_eq!(a[0].offset, 1, "no hole left by the failed append");
            let r = s.read("t", 0, 0, 10).await.unwrap();
            assert_eq!(r.len(), 2);
        }
        Err(e) => assert!(
            matches!(e, StoreError::Io(_) | StoreError::Unavailable(_)),
            "{e:?}"
        ),
    }
    let _ = s.close().await;
}

#[tokio::test]
async fn operations_that_change_nothing_do_not_commit() {
    let root = tempfile::tempdir().unwrap();
    let s = open_at(root.path().join("s"), EmbeddedOptions::default()).await;
    s.create_topic("t", &one_partition()).await.unwrap();
    s.append("t", vec![rec(0, "x")]).await.unwrap();
    let before = s.stats();
    assert_eq!(
        s.enforce_retention(u64::MAX).await.unwrap(),
        RetentionReport::default()
    );
    assert!(!s.create_topic("t", &one_partition()).await.unwrap());
    assert!(s
        .create_topic(
            "t",
            &TopicConfig {
                partitions: 2,
                ..TopicConfig::default()
            }
        )
        .await
        .is_err());
    assert_eq!(s.stats().commits, before.commits, "no commit, no fsync");
    s.put_meta("k", b"v").await.unwrap();
    assert_eq!(s.stats().commits, before.commits + 1);
    s.close().await.unwrap();
}

/// A backend whose fsync waits while its gate is closed, and counts fsyncs entered.
#[derive(Debug)]
struct GatedBackend {
    inner: redb::backends::InMemoryBackend,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    entered: Arc<std::sync::atomic::AtomicU64>,
}

impl redb::StorageBackend for GatedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (open, cv) = &*self.gate;
        let mut g = open.lock().unwrap();
        while !*g {
            g = cv.wait(g).unwrap();
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_visible_appends_are_readable_during_their_fsync_and_plain_ones_are_not() {
    let gate = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
    let entered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let backend = GatedBackend {
        inner: redb::backends::InMemoryBackend::new(),
        gate: gate.clone(),
        entered: entered.clone(),
    };
    let db = redb::Builder::new().create_with_backend(backend).unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = Arc::new(
        EmbeddedStore::start(
            root.path(),
            db,
            EmbeddedOptions::default(),
            EmbeddedTuning::default(),
        )
        .unwrap(),
    );
    s.create_topic("t", &one_partition()).await.unwrap();
    let set_gate = |open: bool| {
        *gate.0.lock().unwrap() = open;
        gate.1.notify_all();
    };
    // Waits until the writer is inside an fsync it had not entered before.
    let wait_fsync = |before: u64| {
        let entered = entered.clone();
        async move {
            let t0 = std::time::Instant::now();
            while entered.load(std::sync::atomic::Ordering::SeqCst) == before {
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(10),
                    "no fsync"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    };

    // Plain append: while its fsync is held, nothing of it is readable.
    set_gate(false);
    let before = entered.load(std::sync::atomic::Ordering::SeqCst);
    let plain = {
        let s = s.clone();
        tokio::spawn(async move { s.append("t", vec![rec(0, "plain")]).await })
    };
    wait_fsync(before).await;
    assert_eq!(s.bounds("t", 0).await.unwrap().end, 0);
    assert!(!plain.is_finished());
    set_gate(true);
    assert_eq!(plain.await.unwrap().unwrap()[0].offset, 0);
    assert_eq!(s.bounds("t", 0).await.unwrap().end, 1);

    // Early-visible append: readable while its fsync is held; answered only after it.
    let stats_before = s.stats();
    set_gate(false);
    let before = entered.load(std::sync::atomic::Ordering::SeqCst);
    let early = {
        let s = s.clone();
        tokio::spawn(async move { s.append_visible_early("t", vec![rec(0, "early")]).await })
    };
    wait_fsync(before).await;
    let r = s.read("t", 0, 1, 10).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].payload.as_ref(), b"early");
    assert!(!early.is_finished(), "answered before durable");
    set_gate(true);
    assert_eq!(early.await.unwrap().unwrap()[0].offset, 1);
    // Two commits (readable, then durable), one fsync.
    let after = s.stats();
    assert_eq!(after.commits - stats_before.commits, 2);
    assert_eq!(after.fsyncs - stats_before.fsyncs, 1);
}
