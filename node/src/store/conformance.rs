//! The conformance suite of [`EventStore`]: one set of behavioural tests that every
//! implementation (the embedded log, the Pulsar backend) must pass.
//!
//! Test support, not production code: the functions panic (assert) on the first
//! behaviour that differs from the trait's contract. A backend provides a
//! [`StoreHarness`] and runs [`run_all`], or calls the test functions one by one to get
//! one test per behaviour. Offsets are checked against what `append` returned; the
//! exact values 0, 1, 2, ... only for stores with dense offsets
//! ([`StoreHarness::dense_offsets`]).
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let harness = MyHarness::new();
//!     meshd_node::store::conformance::run_all(&harness).await;
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use meshd_core::api::{Retention, TopicConfig};

use super::{
    AppendRecord, EventStore, PartitionBounds, RetentionHolds, RetentionReport, StoreError,
};

/// How the suite gets stores.
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// Opens the store kept under `location`: empty the first time a location is used,
    /// and holding the same data when opened again after the previous instance at that
    /// location was closed ([`EventStore::close`]). Each suite test uses its own location.
    async fn open(&self, location: &str) -> Arc<dyn EventStore>;

    /// Whether the store assigns dense offsets (0, 1, 2, ... per partition, as the
    /// embedded log does). Stores that derive offsets elsewhere (the Pulsar store: from
    /// message ids) only promise increasing offsets; the suite then checks everything
    /// relative to the offsets `append` returned.
    fn dense_offsets(&self) -> bool {
        true
    }
}

/// How long the suite waits for an awaited event (a watch change) before failing.
const WAIT: Duration = Duration::from_secs(10);

fn rec(partition: u32, timestamp_ms: u64, payload: &str) -> AppendRecord {
    AppendRecord {
        partition,
        timestamp_ms,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn config(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        ..TopicConfig::default()
    }
}

fn payloads(records: &[super::StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

fn bounds(start: u64, end: u64) -> PartitionBounds {
    PartitionBounds { start, end }
}

/// Runs every test of the suite, each on its own location.
pub async fn run_all(h: &dyn StoreHarness) {
    topics_create_list_delete(h).await;
    append_assigns_offsets_in_order(h).await;
    concurrent_appends_are_contiguous(h).await;
    append_is_atomic(h).await;
    read_ranges(h).await;
    payload_sizes_roundtrip(h).await;
    watch_end_wakes_on_append(h).await;
    offsets_commit_and_load(h).await;
    retention_by_age(h).await;
    retention_by_size(h).await;
    retention_holds(h).await;
    meta_namespace(h).await;
    reopen_recovers_everything(h).await;
    offset_at_time_finds_the_first_record_since(h).await;
}

/// Create (idempotent, conflict on another config), list sorted, get, delete (records,
/// bounds and offsets go), and recreate from offset 0.
pub async fn topics_create_list_delete(h: &dyn StoreHarness) {
    let s = h.open("topics").await;
    assert!(s.list_topics().await.unwrap().is_empty());
    let two = config(2);
    assert!(s.create_topic("beta", &two).await.unwrap());
    assert!(
        !s.create_topic("beta", &two).await.unwrap(),
        "same config again is not a creation"
    );
    let err = s.create_topic("beta", &config(3)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TopicConflict { ref topic, .. } if topic == "beta"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "topic beta exists with partitions=2, you asked partitions=3",
        "the conflict names the setting that differs"
    );
    assert!(s
        .create_topic("alpha", &TopicConfig::default())
        .await
        .unwrap());
    let listed = s.list_topics().await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("alpha".to_string(), TopicConfig::default()),
            ("beta".to_string(), two.clone())
        ]
    );
    assert_eq!(s.topic("beta").await.unwrap(), Some(two.clone()));
    assert_eq!(s.topic("nope").await.unwrap(), None);

    s.append("beta", vec![rec(0, 1, "a"), rec(1, 1, "b")])
        .await
        .unwrap();
    s.commit_offset("g", "beta", 0, 1).await.unwrap();
    s.delete_topic("beta").await.unwrap();
    assert_eq!(s.topic("beta").await.unwrap(), None);
    assert_eq!(
        s.list_topics().await.unwrap(),
        vec![("alpha".to_string(), TopicConfig::default())]
    );
    let not_found = |r: Result<_, StoreError>| matches!(r, Err(StoreError::TopicNotFound { ref topic }) if topic == "beta");
    assert!(not_found(s.delete_topic("beta").await));
    assert!(not_found(s.read("beta", 0, 0, 10).await.map(|_| ())));
    assert!(not_found(s.bounds("beta", 0).await.map(|_| ())));
    assert!(not_found(
        s.append("beta", vec![rec(0, 1, "x")]).await.map(|_| ())
    ));
    assert!(not_found(s.watch_end("beta", 0).map(|_| ())));

    assert!(s.create_topic("beta", &two).await.unwrap(), "recreated");
    let b0 = s.bounds("beta", 0).await.unwrap();
    assert_eq!(b0.start, b0.end, "a recreated topic is empty");
    if h.dense_offsets() {
        assert_eq!(b0, bounds(0, 0));
    }
    assert_eq!(
        s.committed_offset("g", "beta", 0).await.unwrap(),
        None,
        "offsets were deleted"
    );
    assert!(s.read("beta", 0, 0, 10).await.unwrap().is_empty());
    let a = s.append("beta", vec![rec(0, 1, "new")]).await.unwrap();
    assert!(a[0].offset >= b0.end);
    if h.dense_offsets() {
        assert_eq!(a[0].offset, 0);
    }
    assert_eq!(
        payloads(&s.read("beta", 0, 0, 10).await.unwrap()),
        vec!["new"]
    );
    s.close().await.unwrap();
}

/// Offsets start at 0 per partition, grow by one, follow the order of the call.
pub async fn append_assigns_offsets_in_order(h: &dyn StoreHarness) {
    let s = h.open("append-order").await;
    s.create_topic("t", &config(3)).await.unwrap();
    let a = s
        .append(
            "t",
            vec![
                rec(0, 10, "a"),
                rec(1, 11, "b"),
                rec(0, 12, "c"),
                rec(2, 13, "d"),
            ],
        )
        .await
        .unwrap();
    let got: Vec<(u32, u64)> = a.iter().map(|x| (x.partition, x.offset)).collect();
    assert_eq!(
        got.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![0, 1, 0, 2]
    );
    assert!(got[2].1 > got[0].1, "increasing within a partition");
    let e = s.append("t", vec![rec(0, 14, "e")]).await.unwrap();
    assert_eq!(e[0].partition, 0);
    assert!(e[0].offset > got[2].1);
    if h.dense_offsets() {
        assert_eq!(got, vec![(0, 0), (1, 0), (0, 1), (2, 0)]);
        assert_eq!(e[0].offset, 2);
    }
    assert!(s.append("t", Vec::new()).await.unwrap().is_empty());
    assert_eq!(s.bounds("t", 0).await.unwrap().end, e[0].offset + 1);
    assert_eq!(s.bounds("t", 1).await.unwrap().end, got[1].1 + 1);
    assert_eq!(s.bounds("t", 2).await.unwrap().end, got[3].1 + 1);
    if h.dense_offsets() {
        assert_eq!(s.bounds("t", 0).await.unwrap(), bounds(0, 3));
        assert_eq!(s.bounds("t", 1).await.unwrap(), bounds(0, 1));
        assert_eq!(s.bounds("t", 2).await.unwrap(), bounds(0, 1));
    }
    let r = s.read("t", 0, 0, 10).await.unwrap();
    assert_eq!(payloads(&r), vec!["a", "c", "e"]);
    assert_eq!(
        r.iter().map(|x| x.offset).collect::<Vec<_>>(),
        vec![got[0].1, got[2].1, e[0].offset]
    );
    assert_eq!(
        r.iter().map(|x| x.timestamp_ms).collect::<Vec<_>>(),
        vec![10, 12, 14]
    );
    assert!(r.iter().all(|x| x.partition == 0));
    s.close().await.unwrap();
}

/// Many concurrent callers: every record gets a distinct offset (contiguous for dense
/// stores) and each caller's records keep their order within a partition.
pub async fn concurrent_appends_are_contiguous(h: &dyn StoreHarness) {
    let s = h.open("concurrent").await;
    s.create_topic("t", &config(3)).await.unwrap();
    let tasks = 12u32;
    let rounds = 20u32;
    let mut handles = Vec::new();
    let dense = h.dense_offsets();
    for task in 0..tasks {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for round in 0..rounds {
                let p = (task + round) % 3;
                let got = s
                    .append(
                        "t",
                        vec![
                            rec(p, 1, &format!("{task}:{round}:0")),
                            rec(p, 1, &format!("{task}:{round}:1")),
                        ],
                    )
                    .await
                    .unwrap();
                if dense {
                    assert_eq!(
                        got[1].offset,
                        got[0].offset + 1,
                        "one call's records are adjacent"
                    );
                } else {
                    assert!(got[1].offset > got[0].offset, "in call order");
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let mut total = 0u64;
    let mut last_seen: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for p in 0..3 {
        let b = s.bounds("t", p).await.unwrap();
        let r = s.read("t", p, 0, 100_000).await.unwrap();
        if dense {
            assert_eq!(r.len() as u64, b.end);
        }
        assert!(r.last().is_none_or(|x| x.offset + 1 == b.end));
        for (i, x) in r.iter().enumerate() {
            if dense {
                assert_eq!(x.offset, i as u64, "contiguous offsets");
            } else if i > 0 {
                assert!(x.offset > r[i - 1].offset, "increasing offsets");
            }
            let text = String::from_utf8_lossy(&x.payload).into_owned();
            let parts: Vec<u32> = text.split(':').filter_map(|n| n.parse().ok()).collect();
            assert_eq!(parts.len(), 3, "payload {text:?}");
            let key = (parts[1], parts[2]);
            if let Some(prev) = last_seen.insert(parts[0], key) {
                assert!(
                    prev < key,
                    "order of task {} kept: {prev:?} then {key:?}",
                    parts[0]
                );
            }
        }
        total += r.len() as u64;
        // Reset per partition: a task's order is only promised within a partition.
        last_seen.clear();
    }
    assert_eq!(total, u64::from(tasks * rounds * 2));
    s.close().await.unwrap();
}

/// One bad record fails the whole append and nothing of it is stored.
pub async fn append_is_atomic(h: &dyn StoreHarness) {
    let s = h.open("atomic").await;
    s.create_topic("t", &config(2)).await.unwrap();
    let before = s.append("t", vec![rec(1, 1, "before")]).await.unwrap();
    let b0 = s.bounds("t", 0).await.unwrap();
    let err = s
        .append("t", vec![rec(0, 1, "x"), rec(1, 1, "y"), rec(5, 1, "z")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PartitionNotFound { ref topic, partition: 5 } if topic == "t"),
        "{err:?}"
    );
    assert_eq!(s.bounds("t", 0).await.unwrap(), b0);
    assert_eq!(b0.start, b0.end, "still empty");
    assert_eq!(s.bounds("t", 1).await.unwrap().end, before[0].offset + 1);
    if h.dense_offsets() {
        assert_eq!(s.bounds("t", 0).await.unwrap(), bounds(0, 0));
        assert_eq!(s.bounds("t", 1).await.unwrap(), bounds(0, 1));
    }
    assert!(s.read("t", 0, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        payloads(&s.read("t", 1, 0, 10).await.unwrap()),
        vec!["before"]
    );
    let err = s.append("missing", vec![rec(0, 1, "x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::TopicNotFound { .. }), "{err:?}");
    // The store still works after rejections.
    let a = s.append("t", vec![rec(0, 1, "after")]).await.unwrap();
    assert!(a[0].offset >= b0.end);
    if h.dense_offsets() {
        assert_eq!(a[0].offset, 0);
    }
    s.close().await.unwrap();
}

/// Reads from an offset, with a maximum, past the end, and of a bad partition.
pub async fn read_ranges(h: &dyn StoreHarness) {
    let s = h.open("read-ranges").await;
    s.create_topic("t", &config(2)).await.unwrap();
    let records = (0..10).map(|i| rec(0, i, &format!("r{i}"))).collect();
    let a = s.append("t", records).await.unwrap();
    if h.dense_offsets() {
        assert_eq!(a[3].offset, 3);
    }
    let r = s.read("t", 0, a[3].offset, 4).await.unwrap();
    assert_eq!(payloads(&r), vec!["r3", "r4", "r5", "r6"]);
    assert_eq!(r[0].offset, a[3].offset);
    let r = s.read("t", 0, a[2].offset + 1, 1).await.unwrap();
    assert_eq!(payloads(&r), vec!["r3"], "from is the next offset to read");
    let r = s.read("t", 0, a[8].offset, 100).await.unwrap();
    assert_eq!(payloads(&r), vec!["r8", "r9"], "fewer at the end");
    assert!(
        s.read("t", 0, a[9].offset + 1, 100)
            .await
            .unwrap()
            .is_empty(),
        "at the end"
    );
    assert!(
        s.read("t", 0, a[9].offset + 1000, 100)
            .await
            .unwrap()
            .is_empty(),
        "past the end"
    );
    assert!(s.read("t", 0, 0, 0).await.unwrap().is_empty(), "max 0");
    assert!(
        s.read("t", 1, 0, 10).await.unwrap().is_empty(),
        "empty partition"
    );
    let err = s.read("t", 2, 0, 10).await.unwrap_err();
    assert!(
        matches!(err, StoreError::PartitionNotFound { partition: 2, .. }),
        "{err:?}"
    );
    let err = s.bounds("t", 7).await.unwrap_err();
    assert!(
        matches!(err, StoreError::PartitionNotFound { partition: 7, .. }),
        "{err:?}"
    );
    s.close().await.unwrap();
}

/// Empty and large payloads come back byte for byte.
pub async fn payload_sizes_roundtrip(h: &dyn StoreHarness) {
    let s = h.open("payload-sizes").await;
    s.create_topic("t", &config(1)).await.unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let binary = vec![0u8, 255, 0, 1];
    s.append(
        "t",
        vec![
            AppendRecord {
                partition: 0,
                timestamp_ms: 5,
                payload: Bytes::new(),
            },
            AppendRecord {
                partition: 0,
                timestamp_ms: 6,
                payload: Bytes::from(big.clone()),
            },
            AppendRecord {
                partition: 0,
                timestamp_ms: u64::MAX,
                payload: Bytes::from(binary.clone()),
            },
        ],
    )
    .await
    .unwrap();
    let r = s.read("t", 0, 0, 10).await.unwrap();
    assert_eq!(r.len(), 3);
    assert!(r[0].payload.is_empty());
    assert_eq!(r[1].payload.as_ref(), big.as_slice());
    assert_eq!(r[2].payload.as_ref(), binary.as_slice());
    assert_eq!(r[2].timestamp_ms, u64::MAX);
    s.close().await.unwrap();
}

/// `watch_end` starts at the end and changes after an append to its partition only.
pub async fn watch_end_wakes_on_append(h: &dyn StoreHarness) {
    let s = h.open("watch").await;
    s.create_topic("t", &config(2)).await.unwrap();
    let first = s.append("t", vec![rec(0, 1, "a")]).await.unwrap();
    let mut w0 = s.watch_end("t", 0).unwrap();
    let mut w1 = s.watch_end("t", 1).unwrap();
    assert_eq!(*w0.borrow_and_update(), first[0].offset + 1);
    assert_eq!(*w1.borrow_and_update(), s.bounds("t", 1).await.unwrap().end);
    if h.dense_offsets() {
        assert_eq!(*w0.borrow(), 1);
        assert_eq!(*w1.borrow(), 0);
    }
    let writer = {
        let s = s.clone();
        tokio::spawn(async move { s.append("t", vec![rec(0, 2, "b"), rec(0, 3, "c")]).await })
    };
    tokio::time::timeout(WAIT, w0.changed())
        .await
        .expect("watch_end did not change after an append")
        .expect("watch closed");
    let written = writer.await.unwrap().unwrap();
    assert_eq!(written.len(), 2);
    // Once the append returned, the watch shows its end and the records are readable.
    let end = *w0.borrow_and_update();
    assert_eq!(
        end,
        written[1].offset + 1,
        "the watch shows the end after the append"
    );
    assert_eq!(
        s.read("t", 0, first[0].offset + 1, 10).await.unwrap().len(),
        2
    );
    assert!(!w1.has_changed().unwrap(), "other partitions do not wake");
    assert!(matches!(
        s.watch_end("t", 9),
        Err(StoreError::PartitionNotFound { partition: 9, .. })
    ));
    s.close().await.unwrap();
}

/// Committed offsets per (group, topic, partition).
pub async fn offsets_commit_and_load(h: &dyn StoreHarness) {
    let s = h.open("offsets").await;
    s.create_topic("t", &config(2)).await.unwrap();
    assert_eq!(s.committed_offset("g1", "t", 0).await.unwrap(), None);
    s.commit_offset("g1", "t", 0, 5).await.unwrap();
    assert_eq!(s.committed_offset("g1", "t", 0).await.unwrap(), Some(5));
    s.commit_offset("g1", "t", 0, 3).await.unwrap();
    assert_eq!(
        s.committed_offset("g1", "t", 0).await.unwrap(),
        Some(3),
        "overwritten"
    );
    assert_eq!(s.committed_offset("g1", "t", 1).await.unwrap(), None);
    assert_eq!(s.committed_offset("g2", "t", 0).await.unwrap(), None);
    s.commit_offset("g2", "t", 1, 0).await.unwrap();
    assert_eq!(s.committed_offset("g2", "t", 1).await.unwrap(), Some(0));
    let err = s.commit_offset("g1", "missing", 0, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::TopicNotFound { .. }), "{err:?}");
    let err = s.commit_offset("g1", "t", 2, 1).await.unwrap_err();
    assert!(
        matches!(err, StoreError::PartitionNotFound { partition: 2, .. }),
        "{err:?}"
    );
    s.close().await.unwrap();
}

/// Records older than `max_age_secs` go; `start` moves, `end` stays.
pub async fn retention_by_age(h: &dyn StoreHarness) {
    let s = h.open("retention-age").await;
    let aged = TopicConfig {
        partitions: 1,
        retention: Retention {
            max_age_secs: Some(1),
            max_bytes: None,
        },
        ..TopicConfig::default()
    };
    s.create_topic("aged", &aged).await.unwrap();
    s.create_topic("forever", &config(1)).await.unwrap();
    let a = s
        .append(
            "aged",
            vec![
                rec(0, 1000, "aa"),
                rec(0, 2000, "bbb"),
                rec(0, 3000, "c"),
                rec(0, 4000, "d"),
            ],
        )
        .await
        .unwrap();
    s.append("forever", vec![rec(0, 1, "old")]).await.unwrap();
    let forever = s.bounds("forever", 0).await.unwrap();
    if h.dense_offsets() {
        assert_eq!(forever, bounds(0, 1));
    }
    let report = s.enforce_retention(3500).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            records: 2,
            bytes: 5,
            ..RetentionReport::default()
        }
    );
    assert_eq!(
        s.bounds("aged", 0).await.unwrap(),
        bounds(a[2].offset, a[3].offset + 1)
    );
    let r = s.read("aged", 0, 0, 10).await.unwrap();
    assert_eq!(
        payloads(&r),
        vec!["c", "d"],
        "a read below start begins at start"
    );
    assert_eq!(r[0].offset, a[2].offset);
    assert_eq!(
        s.enforce_retention(3500).await.unwrap(),
        RetentionReport::default()
    );
    assert_eq!(s.bounds("forever", 0).await.unwrap(), forever);

    let report = s.enforce_retention(1_000_000).await.unwrap();
    assert_eq!(report.records, 2);
    let end = a[3].offset + 1;
    assert_eq!(
        s.bounds("aged", 0).await.unwrap(),
        bounds(end, end),
        "end never moves back"
    );
    assert!(s.read("aged", 0, 0, 10).await.unwrap().is_empty());
    let a = s
        .append("aged", vec![rec(0, 1_000_000, "e")])
        .await
        .unwrap();
    assert!(a[0].offset >= end);
    if h.dense_offsets() {
        assert_eq!(a[0].offset, 4);
    }
    assert_eq!(
        s.bounds("forever", 0).await.unwrap(),
        forever,
        "no retention, kept"
    );
    s.close().await.unwrap();
}

/// The oldest records go while a partition holds more than `max_bytes` of payload.
pub async fn retention_by_size(h: &dyn StoreHarness) {
    let s = h.open("retention-size").await;
    let sized = TopicConfig {
        partitions: 2,
        retention: Retention {
            max_age_secs: None,
            max_bytes: Some(35),
        },
        ..TopicConfig::default()
    };
    s.create_topic("t", &sized).await.unwrap();
    let p0 = (0..10)
        .map(|i| rec(0, i, &format!("record-{i:03}")))
        .collect();
    let a0 = s.append("t", p0).await.unwrap();
    s.append("t", vec![rec(1, 1, "0123456789"), rec(1, 2, "0123456789")])
        .await
        .unwrap();
    let p1 = s.bounds("t", 1).await.unwrap();
    let report = s.enforce_retention(100).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            records: 7,
            bytes: 70,
            ..RetentionReport::default()
        }
    );
    assert_eq!(
        s.bounds("t", 0).await.unwrap(),
        bounds(a0[7].offset, a0[9].offset + 1)
    );
    assert_eq!(s.bounds("t", 1).await.unwrap(), p1, "under the limit");
    let r = s.read("t", 0, 0, 100).await.unwrap();
    assert_eq!(payloads(&r), vec!["record-007", "record-008", "record-009"]);
    // The byte total follows appends: one more record pushes one out.
    let a10 = s.append("t", vec![rec(0, 1, "record-010")]).await.unwrap();
    let report = s.enforce_retention(100).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            records: 1,
            bytes: 10,
            ..RetentionReport::default()
        }
    );
    assert_eq!(
        s.bounds("t", 0).await.unwrap(),
        bounds(a0[8].offset, a10[0].offset + 1)
    );
    s.close().await.unwrap();
}

/// Holds: age retention stops at the lowest held offset of a partition (other partitions
/// and topics are not affected), a hold from offset 0 keeps the whole partition, a held
/// record older than `max_age` + `max_hold_ms` goes anyway (counted), and size retention
/// passes holds (counted).
pub async fn retention_holds(h: &dyn StoreHarness) {
    let s = h.open("retention-holds").await;
    let aged = TopicConfig {
        partitions: 2,
        retention: Retention {
            max_age_secs: Some(1),
            max_bytes: None,
        },
        ..TopicConfig::default()
    };
    s.create_topic("held", &aged).await.unwrap();
    let a = s
        .append(
            "held",
            vec![
                rec(0, 1000, "a"),
                rec(0, 2000, "b"),
                rec(0, 3000, "c"),
                rec(0, 4000, "d"),
                rec(1, 1000, "x"),
                rec(1, 2000, "y"),
            ],
        )
        .await
        .unwrap();
    let end0 = a[3].offset + 1;
    let end1 = a[5].offset + 1;

    // p0 held from "b", p1 not held: "a", "x", "y" expire, "b" stays.
    let mut holds = RetentionHolds::new(None);
    holds.hold("held", 0, a[1].offset);
    holds.hold("held", 0, a[2].offset); // the lowest hold wins
    assert_eq!(holds.held_from("held", 0), Some(a[1].offset));
    let report = s.enforce_retention_held(3500, &holds).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            records: 3,
            bytes: 3,
            held_dropped: 0,
            held_partitions: 1,
        }
    );
    assert_eq!(
        s.bounds("held", 0).await.unwrap(),
        bounds(a[1].offset, end0)
    );
    assert_eq!(s.bounds("held", 1).await.unwrap(), bounds(end1, end1));
    assert_eq!(
        payloads(&s.read("held", 0, 0, 10).await.unwrap()),
        vec!["b", "c", "d"]
    );

    // The cursor moves on past "b" and "c": the hold follows, "b" goes ("c" is young).
    let mut holds = RetentionHolds::new(None);
    holds.hold("held", 0, a[3].offset);
    let report = s.enforce_retention_held(3500, &holds).await.unwrap();
    assert_eq!((report.records, report.held_partitions), (1, 0));
    assert_eq!(
        s.bounds("held", 0).await.unwrap(),
        bounds(a[2].offset, end0)
    );

    // A hold from 0 (a link that has sent nothing) keeps the whole partition, within the
    // longest hold: at 4500 "c" (3000) is expired but younger than 4500 - 1000 - 1000.
    let mut holds = RetentionHolds::new(Some(1000));
    holds.hold("held", 0, 0);
    let report = s.enforce_retention_held(4500, &holds).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            held_partitions: 1,
            ..RetentionReport::default()
        }
    );
    assert_eq!(
        s.bounds("held", 0).await.unwrap(),
        bounds(a[2].offset, end0)
    );
    // Past max_age + max_hold the held records go anyway, and are counted.
    let report = s.enforce_retention_held(10_000, &holds).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            records: 2,
            bytes: 2,
            held_dropped: 2,
            held_partitions: 0,
        }
    );
    assert_eq!(s.bounds("held", 0).await.unwrap(), bounds(end0, end0));

    // Size passes a hold (the disk comes first), counted.
    let sized = TopicConfig {
        partitions: 1,
        retention: Retention {
            max_age_secs: Some(1),
            max_bytes: Some(2),
        },
        ..TopicConfig::default()
    };
    s.create_topic("sized", &sized).await.unwrap();
    let b = s
        .append(
            "sized",
            vec![rec(0, 9000, "aa"), rec(0, 9000, "bb"), rec(0, 9000, "cc")],
        )
        .await
        .unwrap();
    let mut holds = RetentionHolds::new(None);
    holds.hold("sized", 0, 0);
    let report = s.enforce_retention_held(9500, &holds).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            records: 2,
            bytes: 4,
            held_dropped: 2,
            held_partitions: 0,
        }
    );
    assert_eq!(
        s.bounds("sized", 0).await.unwrap(),
        bounds(b[2].offset, b[2].offset + 1)
    );
    s.close().await.unwrap();
}

/// put/list (by prefix, sorted)/delete of metadata.
pub async fn meta_namespace(h: &dyn StoreHarness) {
    let s = h.open("meta").await;
    assert!(s.list_meta("").await.unwrap().is_empty());
    s.put_meta("sub/b", b"2").await.unwrap();
    s.put_meta("sub/a", b"1").await.unwrap();
    s.put_meta("tok/x", b"").await.unwrap();
    s.put_meta("sua", b"not under sub/").await.unwrap();
    let listed = s.list_meta("sub/").await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("sub/a".to_string(), b"1".to_vec()),
            ("sub/b".to_string(), b"2".to_vec())
        ]
    );
    assert_eq!(s.list_meta("").await.unwrap().len(), 4);
    s.put_meta("sub/a", b"one").await.unwrap();
    assert!(s.delete_meta("sub/b").await.unwrap());
    assert!(!s.delete_meta("sub/b").await.unwrap(), "already gone");
    assert_eq!(
        s.list_meta("sub/").await.unwrap(),
        vec![("sub/a".to_string(), b"one".to_vec())]
    );
    assert_eq!(
        s.list_meta("tok/").await.unwrap(),
        vec![("tok/x".to_string(), Vec::new())]
    );
    assert!(s.list_meta("zzz").await.unwrap().is_empty());
    s.close().await.unwrap();
}

/// Closing and opening the same location again recovers topics, records, bounds moved
/// by retention, offsets and metadata; watches start at the recovered end; appends go on.
pub async fn reopen_recovers_everything(h: &dyn StoreHarness) {
    let sized = TopicConfig {
        partitions: 2,
        retention: Retention {
            max_age_secs: None,
            max_bytes: Some(2),
        },
        ..TopicConfig::default()
    };
    let kept = {
        let s = h.open("reopen").await;
        s.create_topic("a", &config(3)).await.unwrap();
        s.create_topic("b", &sized).await.unwrap();
        s.create_topic("gone", &config(1)).await.unwrap();
        s.append(
            "a",
            vec![rec(0, 1, "a0"), rec(2, 2, "a2"), rec(0, 3, "a0b")],
        )
        .await
        .unwrap();
        s.append("b", vec![rec(1, 1, "x"), rec(1, 2, "y"), rec(1, 3, "z")])
            .await
            .unwrap();
        s.append("gone", vec![rec(0, 1, "g")]).await.unwrap();
        s.delete_topic("gone").await.unwrap();
        assert_eq!(s.enforce_retention(10).await.unwrap().records, 1);
        s.commit_offset("g", "a", 0, 1).await.unwrap();
        s.commit_offset("g", "b", 1, 2).await.unwrap();
        s.put_meta("sub/one", b"{}").await.unwrap();
        let mut kept = Vec::new();
        for (t, p) in [("a", 0), ("a", 1), ("a", 2), ("b", 1)] {
            kept.push(s.bounds(t, p).await.unwrap());
        }
        s.close().await.unwrap();
        kept
    };
    let s = h.open("reopen").await;
    assert_eq!(
        s.list_topics().await.unwrap(),
        vec![
            ("a".to_string(), config(3)),
            ("b".to_string(), sized.clone())
        ]
    );
    let mut now = Vec::new();
    for (t, p) in [("a", 0), ("a", 1), ("a", 2), ("b", 1)] {
        now.push(s.bounds(t, p).await.unwrap());
    }
    assert_eq!(now, kept, "bounds survive the reopen");
    if h.dense_offsets() {
        assert_eq!(
            now,
            vec![bounds(0, 2), bounds(0, 0), bounds(0, 1), bounds(1, 3)]
        );
    }
    assert_eq!(
        payloads(&s.read("a", 0, 0, 10).await.unwrap()),
        vec!["a0", "a0b"]
    );
    assert_eq!(
        payloads(&s.read("b", 1, 0, 10).await.unwrap()),
        vec!["y", "z"]
    );
    assert_eq!(s.read("a", 0, 0, 10).await.unwrap()[1].timestamp_ms, 3);
    assert_eq!(s.committed_offset("g", "a", 0).await.unwrap(), Some(1));
    assert_eq!(s.committed_offset("g", "b", 1).await.unwrap(), Some(2));
    assert_eq!(
        s.list_meta("sub/").await.unwrap(),
        vec![("sub/one".to_string(), b"{}".to_vec())]
    );
    assert_eq!(s.topic("gone").await.unwrap(), None);
    let mut w = s.watch_end("a", 0).unwrap();
    assert_eq!(
        *w.borrow_and_update(),
        kept[0].end,
        "watch starts at the recovered end"
    );
    let a = s.append("a", vec![rec(0, 4, "a0c")]).await.unwrap();
    assert!(a[0].offset >= kept[0].end, "offsets continue after reopen");
    if h.dense_offsets() {
        assert_eq!(a[0].offset, 2, "offsets continue after reopen");
    }
    tokio::time::timeout(WAIT, w.changed())
        .await
        .expect("watch did not change")
        .expect("watch closed");
    assert_eq!(*w.borrow(), a[0].offset + 1);
    s.close().await.unwrap();
}

/// `offset_at_time`: the first record stored at or after a time (equal times: the first
/// of them), the end when all are older, never below the retained start; the same after
/// a reopen (then read from the backend, not from a cache of recent records); unknown
/// topic or partition are errors.
pub async fn offset_at_time_finds_the_first_record_since(h: &dyn StoreHarness) {
    let aged = TopicConfig {
        partitions: 2,
        retention: Retention {
            max_age_secs: Some(1),
            max_bytes: None,
        },
        ..TopicConfig::default()
    };
    let (a, end) = {
        let s = h.open("by-time").await;
        s.create_topic("t", &aged).await.unwrap();
        // 300 records, three per timestamp (ms 10_000, 10_000, 10_000, 10_001, ...).
        let records: Vec<AppendRecord> = (0..300u64)
            .map(|i| rec(0, 10_000 + i / 3, &format!("r{i}")))
            .collect();
        let a = s.append("t", records).await.unwrap();
        let end = s.bounds("t", 0).await.unwrap().end;
        assert_eq!(end, a[299].offset + 1);
        for (time, want) in [
            (0, a[0].offset),
            (10_000, a[0].offset),
            (10_001, a[3].offset),
        ] {
            assert_eq!(
                s.offset_at_time("t", 0, time).await.unwrap(),
                want,
                "{time}"
            );
        }
        assert_eq!(
            s.offset_at_time("t", 0, 10_050).await.unwrap(),
            a[150].offset,
            "the first of equal times"
        );
        assert_eq!(
            s.offset_at_time("t", 0, 10_099).await.unwrap(),
            a[297].offset
        );
        assert_eq!(
            s.offset_at_time("t", 0, 10_100).await.unwrap(),
            end,
            "all older: the end"
        );
        let empty = s.bounds("t", 1).await.unwrap();
        assert_eq!(
            s.offset_at_time("t", 1, 0).await.unwrap(),
            empty.end,
            "an empty partition: its end"
        );
        assert!(matches!(
            s.offset_at_time("t", 2, 0).await,
            Err(StoreError::PartitionNotFound { partition: 2, .. })
        ));
        assert!(matches!(
            s.offset_at_time("nope", 0, 0).await,
            Err(StoreError::TopicNotFound { .. })
        ));
        s.close().await.unwrap();
        (a, end)
    };
    let s = h.open("by-time").await;
    assert_eq!(
        s.offset_at_time("t", 0, 10_050).await.unwrap(),
        a[150].offset,
        "after a reopen"
    );
    assert_eq!(
        s.offset_at_time("t", 0, 10_033).await.unwrap(),
        a[99].offset
    );
    // Retention removed the first 150 (older than 11_050 - 1 s): never below the start.
    let report = s.enforce_retention(11_050).await.unwrap();
    assert_eq!(report.records, 150);
    assert_eq!(s.offset_at_time("t", 0, 0).await.unwrap(), a[150].offset);
    assert_eq!(
        s.offset_at_time("t", 0, 10_070).await.unwrap(),
        a[210].offset
    );
    assert_eq!(s.offset_at_time("t", 0, u64::MAX).await.unwrap(), end);
    s.close().await.unwrap();
}
