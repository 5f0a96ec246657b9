//! The store conformance suite against the Pulsar backend and a real `pulsar-lite`
//! broker, plus Pulsar-specific behaviour.

mod store_pulsar_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cloudevents::{EventBuilder, EventBuilderV10};
use meshd_core::api::TopicConfig;
use meshd_node::store::conformance::{self, StoreHarness};
use meshd_node::store::pulsar::{PulsarConfig, PulsarStore};
use meshd_node::store::{AppendRecord, EventStore, StoreError};
use store_pulsar_common::Broker;

struct Harness {
    url: String,
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self, location: &str) -> Arc<dyn EventStore> {
        // One namespace per location: empty at first, the same data when reopened.
        let mut cfg = PulsarConfig::new(&self.url);
        cfg.namespace = format!("conf-{location}");
        Arc::new(PulsarStore::open(cfg).await.expect("open the Pulsar store"))
    }

    fn dense_offsets(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let broker = Broker::start();
    let h = Harness { url: broker.url() };
    conformance::run_all(&h).await;
}

fn config(url: &str, namespace: &str) -> PulsarConfig {
    let mut cfg = PulsarConfig::new(url);
    cfg.namespace = namespace.to_string();
    cfg.op_timeout = Duration::from_secs(2);
    cfg
}

fn rec(partition: u32, payload: &[u8]) -> AppendRecord {
    AppendRecord {
        partition,
        timestamp_ms: 1,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn one_partition() -> TopicConfig {
    TopicConfig::default()
}

/// Broker killed: appends fail with `Unavailable` within the operation timeout, reads
/// keep being served; broker back on the same data: appends work again and everything
/// acknowledged before is there for a store opened afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_fails_fast_and_loses_nothing() {
    let mut broker = Broker::start();
    let cfg = config(&broker.url(), "outage");
    let s = PulsarStore::open(cfg.clone()).await.unwrap();
    s.create_topic("t", &one_partition()).await.unwrap();
    let ab = s
        .append("t", vec![rec(0, b"a"), rec(0, b"b")])
        .await
        .unwrap();

    broker.kill();
    let started = Instant::now();
    let err = s.append("t", vec![rec(0, b"lost")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < cfg.op_timeout + Duration::from_secs(2),
        "append failed only after {:?}",
        started.elapsed()
    );
    let err = s.commit_offset("g", "t", 0, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(s.read("t", 0, 0, 10).await.unwrap().len(), 2, "reads go on");
    assert_eq!(s.bounds("t", 0).await.unwrap().end, ab[1].offset + 1);

    broker.restart();
    // The client reconnects on its own; retry as a publisher would after a 503.
    let deadline = Instant::now() + Duration::from_secs(30);
    let appended = loop {
        match s.append("t", vec![rec(0, b"c")]).await {
            Ok(a) => break a,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "appends did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(appended[0].offset > ab[1].offset);
    let all = s.read("t", 0, 0, 10).await.unwrap();
    assert_eq!(all.len(), 3, "the failed append left nothing: {all:?}");
    let next = appended[0].offset + 1;
    s.commit_offset("g", "t", 0, next).await.unwrap();
    s.close().await.unwrap();

    let again = PulsarStore::open(cfg).await.unwrap();
    let got: Vec<Vec<u8>> = again
        .read("t", 0, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.payload.to_vec())
        .collect();
    assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(
        again.committed_offset("g", "t", 0).await.unwrap(),
        Some(next)
    );
    again.close().await.unwrap();
}

/// Opening with the broker down fails with `Unavailable`, in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_without_broker_is_unavailable() {
    let port = store_pulsar_common::free_port();
    let started = Instant::now();
    let err = PulsarStore::open(config(&format!("pulsar://127.0.0.1:{port}"), "x"))
        .await
        .err()
        .expect("no broker there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// A second store on the same namespace (a node taking over) sees the topics, records
/// and the committed offsets of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_resumes_from_committed_offsets() {
    let broker = Broker::start();
    let cfg = config(&broker.url(), "takeover");
    let a = PulsarStore::open(cfg.clone()).await.unwrap();
    a.create_topic(
        "t",
        &TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let w = a
        .append("t", vec![rec(0, b"x"), rec(1, b"y"), rec(0, b"z")])
        .await
        .unwrap();
    let committed = w[0].offset + 1;
    a.commit_offset("billing", "t", 0, committed).await.unwrap();
    a.put_meta("subscriptions/billing", b"{}").await.unwrap();
    // The first node dies without closing.
    drop(a);
    let b = PulsarStore::open(cfg).await.unwrap();
    assert_eq!(
        b.committed_offset("billing", "t", 0).await.unwrap(),
        Some(committed)
    );
    let next = b.read("t", 0, committed, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload.as_ref(), b"z");
    assert_eq!(b.list_meta("subscriptions/").await.unwrap().len(), 1);
    b.close().await.unwrap();
}

/// Events meshd wrote are read by the official Python `pulsar-client` with the
/// CloudEvents attributes as properties, the data as payload and the partition key as
/// the message key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pulsar_client_reads_cloudevents() {
    let broker = Broker::start();
    let cfg = config(&broker.url(), "interop");
    let s = PulsarStore::open(cfg.clone()).await.unwrap();
    s.create_topic("orders", &one_partition()).await.unwrap();
    let events: Vec<AppendRecord> = (0..3)
        .map(|i| {
            let e = EventBuilderV10::new()
                .id(format!("e{i}"))
                .source("/shop")
                .ty("order.created")
                .extension("partitionkey", format!("cust-{i}"))
                .data("application/json", serde_json::json!({"n": i}))
                .build()
                .unwrap();
            rec(0, &meshd_core::codec::encode_event(&e))
        })
        .collect();
    s.append("orders", events).await.unwrap();
    s.close().await.unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/store_pulsar_interop.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(broker.url())
        .arg(cfg.partition_topic("orders", 0))
        .arg("3")
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Python pulsar-client could not read the topic (is `pip install pulsar-client` \
         done?): {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("MSG "))
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, m) in lines.iter().enumerate() {
        let p = &m["properties"];
        assert_eq!(p["ce_id"], format!("e{i}"));
        assert_eq!(p["ce_source"], "/shop");
        assert_eq!(p["ce_type"], "order.created");
        assert_eq!(p["ce_specversion"], "1.0");
        assert_eq!(p["ce_datacontenttype"], "application/json");
        assert_eq!(p["ce_partitionkey"], format!("cust-{i}"));
        assert!(p["meshd-ts"].is_string(), "{p}");
        assert!(
            p.get("meshd-offset").is_none(),
            "offsets come from message ids"
        );
        assert_eq!(m["key"], format!("cust-{i}"));
        let data: serde_json::Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, serde_json::json!({"n": i}));
    }
}

/// A topic deleted and created again under the same name starts empty, also after a
/// reopen, although the old messages are still in the Pulsar topic (incarnations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_topic_does_not_resurrect_old_records() {
    let broker = Broker::start();
    let cfg = config(&broker.url(), "recreate");
    let s = PulsarStore::open(cfg.clone()).await.unwrap();
    s.create_topic("t", &one_partition()).await.unwrap();
    s.append("t", vec![rec(0, b"old-0"), rec(0, b"old-1")])
        .await
        .unwrap();
    s.commit_offset("g", "t", 0, 2).await.unwrap();
    let old_end = s.bounds("t", 0).await.unwrap().end;
    s.delete_topic("t").await.unwrap();
    s.create_topic("t", &one_partition()).await.unwrap();
    let b = s.bounds("t", 0).await.unwrap();
    assert_eq!(b.start, b.end, "empty");
    assert!(b.start >= old_end, "starts after the old messages");
    let a = s.append("t", vec![rec(0, b"new-0")]).await.unwrap();
    assert!(a[0].offset >= old_end);
    s.close().await.unwrap();

    let s = PulsarStore::open(cfg).await.unwrap();
    let got: Vec<Vec<u8>> = s
        .read("t", 0, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.payload.to_vec())
        .collect();
    assert_eq!(got, vec![b"new-0".to_vec()]);
    assert_eq!(s.committed_offset("g", "t", 0).await.unwrap(), None);
    s.close().await.unwrap();
}
