//! `GET /v1/subscriptions/{name}/status`, the `meshd_subscription_*` metrics and `meshd
//! sub status` against the real binary: exact backlog numbers while a pull consumer
//! works through a topic, retries, the last error and dead letters of a failing webhook,
//! an unknown subscription, and a cluster where one node of two delivers.

mod cluster_support;
mod common;

use std::time::Duration;

use common::*;
use meshd_core::api::{ErrorBody, SubscriptionStatus};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

async fn status(c: &reqwest::Client, base: &str, name: &str) -> SubscriptionStatus {
    let r = c
        .get(format!("{base}/v1/subscriptions/{name}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Pulls until exactly `n` events are handed out (one pull may return fewer).
async fn pull_n(c: &reqwest::Client, base: &str, sub: &str, n: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(pull(c, base, sub, "default", n - got.len(), 2000).await);
    }
    got
}

/// The line of a Prometheus metric with these labels, its value parsed.
fn metric(text: &str, name: &str, sub: &str) -> Option<f64> {
    let prefix = format!("{name}{{subscription=\"{sub}\",topic=\"orders\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("a number"))
}

/// Checks the per-partition numbers add up: backlog = end − committed, totals are sums.
fn consistent(s: &SubscriptionStatus) {
    for (p, ps) in &s.partitions {
        assert_eq!(ps.backlog_events, ps.end - ps.committed, "partition {p}");
        if ps.backlog_events == 0 {
            assert_eq!(ps.backlog_seconds, 0.0, "partition {p}");
        }
    }
    let sum: u64 = s.partitions.values().map(|p| p.backlog_events).sum();
    assert_eq!(s.backlog_events, sum);
}

#[tokio::test]
async fn backlog_follows_a_pull_consumer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "orders", json!({"partitions": 3})).await;
    let (code, body) = subscribe(
        &c,
        &m.url,
        json!({"name": "audit", "topic": "orders", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let events: Vec<_> = (0..10)
        .map(|i| {
            let key = format!("k{i}");
            event(
                &format!("e{i}"),
                "order.created",
                Some(&key),
                json!({"n": i}),
            )
        })
        .collect();
    let positions = publish(&c, &m.url, "orders", &events).await;
    // Event id → (partition, offset), from the publish answers.
    let at: std::collections::HashMap<String, (u32, u64)> = positions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let pos = (
                p["partition"].as_u64().unwrap() as u32,
                p["offset"].as_u64().unwrap(),
            );
            (format!("e{i}"), pos)
        })
        .collect();
    // The committed offset of each partition once `acked` are acknowledged: the first
    // offset not acknowledged.
    let expected = |acked: &[serde_json::Value]| {
        let done: std::collections::HashSet<(u32, u64)> =
            acked.iter().map(|e| at[&id_of(e)]).collect();
        (0..3u32)
            .map(|p| {
                let mut o = 0;
                while done.contains(&(p, o)) {
                    o += 1;
                }
                (p, o)
            })
            .collect::<std::collections::BTreeMap<u32, u64>>()
    };

    let s = status(&c, &m.url, "audit").await;
    assert_eq!((s.name.as_str(), s.topic.as_str()), ("audit", "orders"));
    assert_eq!(s.partitions.len(), 3);
    assert_eq!(s.partitions.values().map(|p| p.end).sum::<u64>(), 10);
    assert_eq!(s.backlog_events, 10);
    assert!(s.backlog_seconds >= 0.0);
    assert!(s.delivering);
    assert_eq!(s.active_cluster, s.cluster, "no mesh: delivered here");
    assert_eq!((s.delivered, s.in_flight, s.dead_lettered), (0, 0, 0));
    assert!(s.last_error.is_none());
    consistent(&s);

    // Four pulled and acknowledged: delivered; the committed offsets move at the ack.
    let first = pull_n(&c, &m.url, "audit", 4).await;
    ack(&c, &m.url, "audit", "default", &first).await;
    // Two more handed out, not acknowledged: in flight, still backlog.
    let second = pull_n(&c, &m.url, "audit", 2).await;
    let s = status(&c, &m.url, "audit").await;
    assert_eq!(s.delivered, 4);
    assert_eq!(s.in_flight, 2);
    // The committed offset of a partition stops at its first unacknowledged event (the
    // ones in flight count as backlog until acknowledged).
    let want = expected(&first);
    let committed: std::collections::BTreeMap<u32, u64> = s
        .partitions
        .iter()
        .map(|(p, ps)| (*p, ps.committed))
        .collect();
    assert_eq!(committed, want, "{s:?}");
    assert_eq!(s.backlog_events, 10 - want.values().sum::<u64>());
    assert!(s.backlog_events >= 6, "{s:?}");
    consistent(&s);

    // The rest, acknowledged: no backlog at all.
    ack(&c, &m.url, "audit", "default", &second).await;
    let rest = pull_n(&c, &m.url, "audit", 4).await;
    ack(&c, &m.url, "audit", "default", &rest).await;
    let s = status(&c, &m.url, "audit").await;
    assert_eq!(
        (s.backlog_events, s.delivered, s.in_flight),
        (0, 10, 0),
        "{s:?}"
    );
    assert_eq!(s.backlog_seconds, 0.0);
    assert!(s.partitions.values().all(|p| p.committed == p.end));
    consistent(&s);

    // Two more published: exactly two behind, and the metrics say so.
    publish(
        &c,
        &m.url,
        "orders",
        &[
            event("late1", "order.created", Some("a"), json!({})),
            event("late2", "order.created", Some("b"), json!({})),
        ],
    )
    .await;
    let s = status(&c, &m.url, "audit").await;
    assert_eq!(s.backlog_events, 2);
    consistent(&s);
    let text = get_text(&c, &m.at("/metrics")).await;
    assert_eq!(
        metric(&text, "meshd_subscription_backlog_events", "audit"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "meshd_subscription_delivered_total", "audit"),
        Some(10.0)
    );
    assert_eq!(
        metric(&text, "meshd_subscription_in_flight_events", "audit"),
        Some(0.0)
    );
    assert!(metric(&text, "meshd_subscription_backlog_seconds", "audit").is_some());

    // The CLI: JSON is the same typed status, the table names the numbers.
    let (ok, out, err) = cli(&["--url", &m.url, "sub", "status", "audit", "-o", "json"]);
    assert!(ok, "{err}");
    let from_cli: SubscriptionStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (from_cli.backlog_events, from_cli.delivered),
        (2, 10),
        "{out}"
    );
    let (ok, out, err) = cli(&["--url", &m.url, "sub", "status", "audit"]);
    assert!(ok, "{err}");
    assert!(out.contains("backlog") && out.contains("2 events"), "{out}");
    assert!(out.contains("PARTITION"), "{out}");
}

#[tokio::test]
async fn a_failing_webhook_shows_retries_last_error_and_dead_letters() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let h = flaky_hook(|_| json!({})).await;
    let (m, c) = (&h.meshd, h.client.clone());
    let s = eventually("every event finished", T, || async {
        let s = status(&c, &m.url, "hook").await;
        (s.delivered + s.dead_lettered == 3 && s.backlog_events == 0).then_some(s)
    })
    .await;
    // flaky: 2 failed attempts retried; doomed: 2 retried, the third dead-letters it.
    assert_eq!(
        (s.delivered, s.dead_lettered, s.retried),
        (2, 1, 4),
        "{s:?}"
    );
    assert_eq!(s.in_flight, 0);
    let e = s.last_error.expect("a last error");
    assert!(e.message.starts_with("http 50"), "{e:?}");
    assert!(e.at_ms >= before, "{e:?}");
    let text = get_text(&c, &m.at("/metrics")).await;
    assert_eq!(
        metric(&text, "meshd_subscription_dead_lettered_total", "hook"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "meshd_subscription_retried_total", "hook"),
        Some(4.0)
    );
}

#[tokio::test]
async fn an_unknown_subscription_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    let r = c
        .get(m.at("/v1/subscriptions/nope/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "subscription_not_found");
    let (ok, _, err) = cli(&["--url", &m.url, "sub", "status", "nope"]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
}

/// In a cluster of two nodes (etcd, schedulers, a shared pulsar-lite store, two proxies)
/// one node delivers the group: both nodes and both proxies answer its numbers, naming it.
#[tokio::test]
async fn every_node_and_proxy_of_a_cluster_answers_the_delivering_nodes_numbers() {
    let cl = cluster_support::Cluster::start().await;
    let c = client();
    let p1 = cl.proxies[0].url.clone();
    create_topic(&c, &p1, "orders", json!({"partitions": 2})).await;
    let (code, body) = subscribe(
        &c,
        &p1,
        json!({"name": "audit", "topic": "orders", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert!(code == 201 || code == 200, "{body}");
    let owner = eventually("placement names a node for the group", T, || async {
        cl.owner(&c, "audit").await
    })
    .await;
    let events: Vec<_> = (0..6)
        .map(|i| event(&format!("e{i}"), "order.created", None, json!({"n": i})))
        .collect();
    publish(&c, &p1, "orders", &events).await;
    let got = drain(&c, &p1, "audit", "default", 6).await;
    assert_eq!(got.len(), 6);
    publish(
        &c,
        &p1,
        "orders",
        &[event("late", "order.created", None, json!({}))],
    )
    .await;
    let urls: Vec<String> = cl
        .nodes
        .iter()
        .chain(&cl.proxies)
        .map(|m| m.url.clone())
        .collect();
    for url in &urls {
        let s = eventually("the status of the delivering node", T, || async {
            let r = c
                .get(format!("{url}/v1/subscriptions/audit/status"))
                .send()
                .await
                .ok()?;
            let s: SubscriptionStatus = r.json().await.ok()?;
            // The pull reader may not have stored the last event's end yet.
            (s.backlog_events == 1).then_some(s)
        })
        .await;
        assert_eq!(s.node, owner, "asked {url}: {s:?}");
        assert_eq!(s.cluster, cluster_support::CLUSTER);
        assert!(s.delivering, "asked {url}: {s:?}");
        assert_eq!((s.delivered, s.in_flight), (6, 0), "asked {url}: {s:?}");
    }
}
