//! The proxy in front of real `meshd node` processes: publishing and admin through it,
//! producer groups spread over nodes and kept on one node, and failover after `kill -9` of
//! a node with no acknowledged event lost (read back from both nodes).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn node(dir: &Path, id: &str) -> Meshd {
    Meshd::start(dir, &["--cluster", "c1", "--node-id", id])
}

fn proxy(dir: &Path, nodes: &[&Meshd], extra: &[&str]) -> Meshd {
    let list = nodes
        .iter()
        .map(|n| n.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--cluster",
        "c1",
        "--nodes",
        &list,
    ];
    args.extend_from_slice(extra);
    Meshd::spawn(&args, dir)
}

/// Publishes one structured event for a producer group; retries 503s with the same id
/// until `deadline`. Returns the node that acknowledged it.
async fn publish_acked(
    c: &reqwest::Client,
    base: &str,
    topic: &str,
    group: &str,
    id: &str,
    deadline: Instant,
) -> String {
    loop {
        let r = c
            .post(format!("{base}/v1/topics/{topic}/events"))
            .header("content-type", "application/cloudevents+json")
            .header("meshd-producer-group", group)
            .body(event(id, "t", None, json!({"g": group})).to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let node = r
            .headers()
            .get("meshd-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let retry_after = r.headers().get("retry-after").is_some();
        let body = r.text().await.unwrap();
        if status == 200 {
            return node;
        }
        assert_eq!(status, 503, "publish {id}: {body}");
        assert!(retry_after, "503 without Retry-After: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["code"].is_string(), "{body}");
        assert!(
            Instant::now() < deadline,
            "publish {id} still failing: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event id stored in `topic` on a node, read with a fresh pull subscription from
/// the earliest offset.
async fn stored_ids(c: &reqwest::Client, base: &str, topic: &str) -> Vec<String> {
    let r = c
        .post(format!("{base}/v1/subscriptions"))
        .json(
            &json!({"name": "audit", "topic": topic, "start": "earliest",
                      "sink": {"pull": {"ack_deadline_ms": 60000}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let want = stored_count(c, base, topic).await as usize;
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.len() < want {
        assert!(Instant::now() < deadline, "pulled {} of {want}", ids.len());
        let url = format!("{base}/v1/subscriptions/audit/events?max=1000&wait=200ms");
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        for e in v["events"].as_array().unwrap() {
            ids.push(e["event"]["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_admin_and_pull_through_the_proxy() {
    let d = tempfile::tempdir().unwrap();
    let n1 = node(&d.path().join("n1"), "n1");
    let mut p = proxy(d.path(), &[&n1], &["--no-auth"]);
    let c = client();
    assert_eq!(c.get(p.at("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(p.at("/readyz")).send().await.unwrap().status(), 200);
    create_topic(&c, &p.url, "orders", json!({"partitions": 2})).await;
    assert_eq!(
        stored_count(&c, &n1.url, "orders").await,
        0,
        "topic on the node"
    );
    let r = c
        .post(p.at("/v1/subscriptions"))
        .json(&json!({"name": "w", "topic": "orders", "sink": {"pull": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Structured, binary and batch publishes.
    let pos = publish(
        &c,
        &p.url,
        "orders",
        &[event("e1", "t", Some("k"), json!(1))],
    )
    .await;
    assert_eq!(pos.len(), 1);
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("ce-id", "e2")
        .header("ce-source", "/bin")
        .header("ce-type", "t")
        .header("ce-specversion", "1.0")
        .header("content-type", "application/json")
        .body("{\"x\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let batch = json!([
        event("e3", "t", None, json!(3)),
        event("e4", "t", None, json!(4))
    ]);
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["positions"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(stored_count(&c, &n1.url, "orders").await, 4);
    // Node validation errors come back unchanged.
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(json!({"id": "x", "source": "/s", "specversion": "1.0"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "missing_attribute", "{v}");
    // Pull and ack through the proxy.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 4 {
        assert!(Instant::now() < deadline, "pulled {} of 4", got.len());
        let url = p.at("/v1/subscriptions/w/events?max=10&wait=500ms");
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        got.extend(v["events"].as_array().unwrap().iter().cloned());
    }
    let ack_ids: Vec<&Value> = got.iter().map(|e| &e["ack_id"]).collect();
    let v: Value = c
        .post(p.at("/v1/subscriptions/w/ack"))
        .json(&json!({"ack_ids": ack_ids}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["acknowledged"], 4, "{v}");
    // Unknown endpoints and methods.
    assert_eq!(c.get(p.at("/v2/x")).send().await.unwrap().status(), 404);
    assert_eq!(
        c.patch(p.at("/v1/topics/orders"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let metrics = common::get_text(&c, &p.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_proxy_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("meshd_proxy_upstream_latency_seconds_bucket"));
    // SIGTERM: a clean exit.
    assert!(p.terminate(), "the proxy did not exit cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_a_node_fails_its_groups_over_without_losing_acknowledged_events() {
    let d = tempfile::tempdir().unwrap();
    let (dir1, dir2) = (d.path().join("n1"), d.path().join("n2"));
    let mut n1 = node(&dir1, "n1");
    let n2 = node(&dir2, "n2");
    let p = proxy(
        d.path(),
        &[&n1, &n2],
        &["--no-auth", "--deadline-ms", "4000"],
    );
    let c = client();
    // Topic admin goes to every node.
    create_topic(&c, &p.url, "orders", json!({"partitions": 2})).await;
    for n in [&n1, &n2] {
        let r = c.get(n.at("/v1/topics/orders")).send().await.unwrap();
        assert_eq!(r.status(), 200, "topic missing on {}", n.url);
    }
    let groups: Vec<String> = (0..16).map(|g| format!("g{g}")).collect();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let far = Instant::now() + Duration::from_secs(30);
    for round in 0..3 {
        for g in &groups {
            let id = format!("{g}-a{round}");
            let node = publish_acked(&c, &p.url, "orders", g, &id, far).await;
            // One group, one node.
            let prev = owner.insert(g.clone(), node.clone());
            assert!(prev.is_none() || prev.as_ref() == Some(&node), "{g} moved");
            acked.insert(id);
        }
    }
    let on_n1: Vec<&String> = owner
        .iter()
        .filter(|(_, n)| **n == n1.url)
        .map(|(g, _)| g)
        .collect();
    let on_n2 = owner.values().filter(|n| **n == n2.url).count();
    assert!(
        !on_n1.is_empty() && on_n2 > 0,
        "groups not spread: {owner:?}"
    );

    n1.kill9();
    let killed_at = Instant::now();
    for round in 0..3 {
        for g in &groups {
            let id = format!("{g}-b{round}");
            let t0 = Instant::now();
            let node =
                publish_acked(&c, &p.url, "orders", g, &id, t0 + Duration::from_secs(10)).await;
            assert_eq!(node, n2.url, "{g} after the kill");
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{id} took {:?}",
                t0.elapsed()
            );
            acked.insert(id);
        }
    }
    eprintln!(
        "failover: 48 publishes after the kill took {:?}",
        killed_at.elapsed()
    );
    let metrics = common::get_text(&c, &p.at("/metrics")).await;
    let retries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshd_proxy_upstream_retries_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(retries >= 1.0, "no upstream retry counted: {metrics}");

    // Read back: restart n1 on its data dir, collect every stored id from both nodes.
    let n1b = node(&dir1, "n1");
    let mut stored: BTreeSet<String> = BTreeSet::new();
    stored.extend(stored_ids(&c, &n1b.url, "orders").await);
    stored.extend(stored_ids(&c, &n2.url, "orders").await);
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(acked.len(), 96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_down_is_a_clean_503() {
    let d = tempfile::tempdir().unwrap();
    let mut n1 = node(&d.path().join("n1"), "n1");
    let p = proxy(d.path(), &[&n1], &["--no-auth", "--deadline-ms", "1000"]);
    let c = client();
    create_topic(&c, &p.url, "orders", json!({})).await;
    n1.kill9();
    let t0 = Instant::now();
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event("x", "t", None, json!(1)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{v}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    let r = c.get(p.at("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}
