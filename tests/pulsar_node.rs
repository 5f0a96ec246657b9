//! End to end through `meshd node --store pulsar://...` and a real `pulsar-lite` broker:
//! publish and pull; a node started on another data directory finds topics, events,
//! subscriptions and committed offsets in Pulsar; a broker outage answers 503 with
//! Retry-After quickly and publishing works again once the broker is back. Two nodes on
//! one namespace at once: both publish, a subscription on one delivers what the other
//! published, and a third node takes the group over from the committed offset.

#[path = "../node/tests/store_pulsar_common/mod.rs"]
mod broker;
mod common;

use std::time::{Duration, Instant};

use common::{client, create_topic, event, publish, stored_count, Meshd};
use serde_json::{json, Value};

async fn pull(c: &reqwest::Client, base: &str, sub: &str, max: usize, wait_ms: u64) -> Vec<Value> {
    let r: Value = c
        .get(format!(
            "{base}/v1/subscriptions/{sub}/events?max={max}&wait={wait_ms}ms&consumer=c1"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["events"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("pull answer: {r}"))
}

async fn ack(c: &reqwest::Client, base: &str, sub: &str, events: &[Value]) {
    let ids: Vec<&Value> = events.iter().map(|e| &e["ack_id"]).collect();
    let r = c
        .post(format!("{base}/v1/subscriptions/{sub}/ack"))
        .json(&json!({"ack_ids": ids, "consumer": "c1"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "ack: {}", r.text().await.unwrap());
}

/// Pulls and acks until `n` events arrived (or 30 s passed).
async fn drain(c: &reqwest::Client, base: &str, sub: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids.len() < n && Instant::now() < deadline {
        let evs = pull(c, base, sub, 100, 500).await;
        if !evs.is_empty() {
            ack(c, base, sub, &evs).await;
        }
        ids.extend(
            evs.iter()
                .map(|e| e["event"]["id"].as_str().unwrap_or_default().to_string()),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_on_pulsar_publishes_pulls_and_survives_restarts() {
    let mut b = broker::Broker::start();
    let url = b.url();
    let c = client();
    let dir1 = tempfile::tempdir().unwrap();
    let mut node = Meshd::start(dir1.path(), &["--store", &url]);
    create_topic(&c, &node.url, "orders", json!({"partitions": 2})).await;
    let r = c
        .post(node.at("/v1/subscriptions"))
        .json(&json!({"name": "billing", "topic": "orders", "group": "billing", "sink": {"pull": {}}}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "subscription: {}",
        r.text().await.unwrap()
    );
    let events: Vec<Value> = (0..6)
        .map(|i| {
            event(
                &format!("e{i}"),
                "order.created",
                Some(&format!("k{}", i % 3)),
                json!({"n": i}),
            )
        })
        .collect();
    publish(&c, &node.url, "orders", &events).await;
    let mut got = drain(&c, &node.url, "billing", 6).await;
    got.sort();
    assert_eq!(got, vec!["e0", "e1", "e2", "e3", "e4", "e5"]);
    assert!(node.terminate(), "clean shutdown");

    // Another node with an empty data directory: everything is in Pulsar.
    let dir2 = tempfile::tempdir().unwrap();
    let node = Meshd::start(dir2.path(), &["--store", &url]);
    // Offsets are sparse with Pulsar: count the events through an audit subscription.
    let r = c
        .post(node.at("/v1/subscriptions"))
        .json(&json!({"name": "audit", "topic": "orders", "group": "audit", "start": "earliest", "sink": {"pull": {}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut all = drain(&c, &node.url, "audit", 6).await;
    all.sort();
    assert_eq!(all, vec!["e0", "e1", "e2", "e3", "e4", "e5"]);
    publish(
        &c,
        &node.url,
        "orders",
        &[event("e6", "order.created", Some("k0"), json!({}))],
    )
    .await;
    let got = drain(&c, &node.url, "billing", 1).await;
    assert_eq!(
        got,
        vec!["e6"],
        "the group resumes after its acknowledged events"
    );

    // Broker down: publishing answers 503 with Retry-After, quickly.
    b.kill();
    let started = Instant::now();
    let r = c
        .post(node.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event("down", "order.created", None, json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 took {:?}",
        started.elapsed()
    );
    b.restart();
    // Publishing works again once the client reconnected (retry like a client would).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .post(node.at("/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event("back", "order.created", None, json!({})).to_string())
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
        assert!(Instant::now() < deadline, "publishing did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = drain(&c, &node.url, "billing", 1).await;
    assert_eq!(got, vec!["back"]);
    assert!(stored_count(&c, &node.url, "orders").await >= 8);
}

/// Two nodes on one namespace at the same time (stateless runtime nodes): both publish to
/// one topic; the pull subscription on node A delivers B's events too (A's delivery wakes
/// on B's appends); after A is gone, node C (fresh data dir) takes the group over from
/// the offset A committed and gets only what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_namespace() {
    let b = broker::Broker::start();
    let url = b.url();
    let c = client();
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut node_a = Meshd::start(da.path(), &["--store", &url]);
    let node_b = Meshd::start(db.path(), &["--store", &url]);
    create_topic(&c, &node_a.url, "orders", json!({"partitions": 2})).await;
    let r = c
        .post(node_a.at("/v1/subscriptions"))
        .json(&json!({"name": "billing", "topic": "orders", "group": "billing", "sink": {"pull": {}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let ev = |i: usize| {
        event(
            &format!("e{i}"),
            "order.created",
            Some(&format!("k{i}")),
            json!({}),
        )
    };
    // B learns the topic A created from the store.
    publish(&c, &node_b.url, "orders", &[ev(0), ev(1), ev(2)]).await;
    publish(&c, &node_a.url, "orders", &[ev(3), ev(4), ev(5)]).await;
    let mut got = drain(&c, &node_a.url, "billing", 6).await;
    got.sort();
    assert_eq!(got, vec!["e0", "e1", "e2", "e3", "e4", "e5"]);
    // Let A commit what was acknowledged, then stop it.
    assert!(node_a.terminate(), "clean shutdown");

    let node_c = Meshd::start(dc.path(), &["--store", &url]);
    publish(&c, &node_b.url, "orders", &[ev(6)]).await;
    let got = drain(&c, &node_c.url, "billing", 1).await;
    assert_eq!(got, vec!["e6"], "C resumes after what A acknowledged");
}
