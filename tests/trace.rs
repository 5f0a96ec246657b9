//! `GET /v1/trace` and `meshd trace` on real processes: an event's whole life across the
//! line a—b—c asked from either end, a stopped cluster listed as not answering, retried
//! and dead-lettered deliveries, the pull path, bad queries, and a cluster of two nodes
//! where each node and proxy answers what both nodes recorded.

mod cluster_support;
mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish, Sink};
use federation_support::*;
use meshd_core::api::{TraceAnswer, TraceKind};
use serde_json::json;

async fn trace(c: &reqwest::Client, base: &str, source: &str, id: &str) -> TraceAnswer {
    let r = c
        .get(format!(
            "{base}/v1/trace?source={source}&id={id}&timeout_ms=3000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The (cluster, kind, detail) of each record, for comparing lives.
fn steps(t: &TraceAnswer) -> Vec<(String, String)> {
    t.records
        .iter()
        .map(|r| {
            let what = match &r.kind {
                TraceKind::Stored { topic, .. } => format!("stored {topic}"),
                TraceKind::Forwarded { peer, .. } => format!("forwarded to {peer}"),
                TraceKind::Received { peer, origin, .. } => {
                    format!("received from {peer} origin {origin}")
                }
                TraceKind::Duplicate { peer, .. } => format!("duplicate from {peer}"),
                TraceKind::Matched { subscription } => format!("matched {subscription}"),
                TraceKind::NotMatched { subscription } => format!("not_matched {subscription}"),
                TraceKind::Delivered {
                    subscription,
                    attempt,
                    status,
                    ..
                } => format!("delivered {subscription} attempt {attempt} status {status:?}"),
                TraceKind::Retried {
                    subscription,
                    attempt,
                    ..
                } => format!("retried {subscription} attempt {attempt}"),
                TraceKind::DeadLettered { subscription, .. } => {
                    format!("dead_lettered {subscription}")
                }
            };
            (r.cluster.clone(), what)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_life_across_a_line_is_answered_from_either_end() {
    let files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    let mut cc = files.start("c");
    for n in [&a, &b, &cc] {
        topic(&c, n, "orders", 1).await;
    }
    let sink = Sink::start(|_, _| 200).await;
    subscribe(
        &c,
        &cc,
        "billing",
        "orders",
        Some(json!({"exact": {"type": "order.created"}})),
        &sink.url,
    )
    .await;
    subscribe(
        &c,
        &cc,
        "refunds",
        "orders",
        Some(json!({"exact": {"type": "order.refunded"}})),
        &sink.url,
    )
    .await;
    wait_connected(&c, &b, "a").await;
    wait_connected(&c, &b, "c").await;
    wait_interest(&c, &a, "b", "c", "orders").await;

    let mut e = event("t1", "order.created", Some("k"), json!({"total": 42}));
    e["traceparent"] = json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    publish(&c, &a.url, "orders", &[e]).await;
    eventually("c's webhook got t1", Duration::from_secs(20), || async {
        sink.ids().contains(&"t1".to_string()).then_some(())
    })
    .await;

    let want: Vec<(String, String)> = [
        ("a", "stored orders"),
        ("a", "forwarded to b"),
        ("b", "received from a origin a"),
        ("b", "stored orders"),
        ("b", "forwarded to c"),
        ("c", "received from b origin a"),
        ("c", "stored orders"),
        ("c", "matched billing"),
        ("c", "not_matched refunds"),
        ("c", "delivered billing attempt 1 status Some(200)"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect();
    for (name, node) in [("a", &a), ("c", &cc)] {
        // The delivered record is made once the webhook's answer is read.
        let t = eventually(
            &format!("the whole life of t1, asked in {name}"),
            Duration::from_secs(10),
            || async {
                let t = trace(&c, &node.url, "/test", "t1").await;
                (steps(&t).len() >= want.len()).then_some(t)
            },
        )
        .await;
        let mut got = steps(&t);
        got.sort();
        let mut w = want.clone();
        w.sort();
        assert_eq!(got, w, "asked in {name}: {t:#?}");
        assert!(
            t.records.windows(2).all(|p| p[0].at_ms <= p[1].at_ms),
            "records sorted by time: {t:#?}"
        );
        assert_eq!(t.clusters[0].cluster, name, "the answering cluster first");
        let mut clusters: Vec<_> = t
            .clusters
            .iter()
            .map(|c| (c.cluster.as_str(), c.answered))
            .collect();
        clusters.sort();
        assert_eq!(clusters, [("a", true), ("b", true), ("c", true)]);
        assert_eq!(
            t.clusters.iter().map(|c| c.records).sum::<u64>(),
            t.records.len() as u64
        );
    }
    // An event nobody published: every cluster answers, with nothing.
    let none = trace(&c, &b.url, "/test", "never").await;
    assert!(none.records.is_empty());
    assert!(none.clusters.iter().all(|c| c.answered));

    // The CLI: JSON is the API's answer, the table names each step.
    let (ok, out, err) = common::cli(&[
        "--url", &a.url, "trace", "t1", "--source", "/test", "-o", "json",
    ]);
    assert!(ok, "{err}");
    let parsed: TraceAnswer = serde_json::from_str(&out).unwrap();
    assert_eq!(steps(&parsed).len(), want.len());
    let (ok, out, err) = common::cli(&["--url", &a.url, "trace", "t1", "--source", "/test"]);
    assert!(ok, "{err}");
    for word in [
        "stored",
        "forwarded",
        "received",
        "matched",
        "not_matched",
        "delivered",
    ] {
        assert!(out.contains(word), "{word} missing from:\n{out}");
    }

    // c stops: a still answers, in time, and lists c as not answering.
    assert!(cc.terminate());
    let t = trace(&c, &a.url, "/test", "t1").await;
    let c_answer = t.clusters.iter().find(|x| x.cluster == "c").unwrap();
    assert!(!c_answer.answered, "{t:#?}");
    assert!(c_answer.error.is_some(), "{t:#?}");
    assert!(t.clusters.iter().any(|x| x.cluster == "b" && x.answered));
    assert!(steps(&t).iter().all(|(cl, _)| cl != "c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_dead_letters_are_traced_and_bad_queries_refused() {
    let h = common::flaky_hook(|i| json!({"i": i})).await;
    let base = h.meshd.url.clone();
    let c = &h.client;
    let doomed = eventually("doomed dead-lettered", Duration::from_secs(20), || async {
        let t = trace(c, &base, "/test", "doomed").await;
        steps(&t)
            .iter()
            .any(|(_, s)| s.starts_with("dead_lettered"))
            .then_some(t)
    })
    .await;
    let s: Vec<String> = steps(&doomed).into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        s,
        [
            "stored orders",
            "matched hook",
            "retried hook attempt 1",
            "retried hook attempt 2",
            "dead_lettered hook"
        ],
        "{doomed:#?}"
    );
    let flaky = eventually("flaky delivered", Duration::from_secs(20), || async {
        let t = trace(c, &base, "/test", "flaky").await;
        steps(&t)
            .iter()
            .any(|(_, s)| s.starts_with("delivered"))
            .then_some(t)
    })
    .await;
    let s: Vec<String> = steps(&flaky).into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        s,
        [
            "stored orders",
            "matched hook",
            "retried hook attempt 1",
            "retried hook attempt 2",
            "delivered hook attempt 3 status Some(200)",
        ],
        "{flaky:#?}"
    );
    if let TraceKind::Retried { error, .. } = &flaky.records[2].kind {
        assert_eq!(error, "http 503");
    }
    // A node without a bridge answers for its own cluster only.
    assert_eq!(flaky.clusters.len(), 1);

    // The pull path: handed out, not acknowledged within the deadline (retried), handed
    // out again and acknowledged (delivered, attempt 2, no status).
    let (status, body) = common::subscribe(
        c,
        &base,
        json!({"name": "reader", "topic": "orders", "start": "earliest",
               "filter": {"exact": {"id": "fine"}},
               "sink": {"pull": {"ack_deadline_ms": 100}},
               "delivery": {"max_attempts": 3}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let first = common::pull(c, &base, "reader", "x", 10, 5000).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let again = eventually("fine handed out again", Duration::from_secs(10), || async {
        let e = common::pull(c, &base, "reader", "x", 10, 1000).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(again[0]["delivery_attempt"], 2, "{again:?}");
    let acked = common::ack(c, &base, "reader", "x", &again).await;
    assert_eq!(acked["acknowledged"], 1, "{acked}");
    let fine = trace(c, &base, "/test", "fine").await;
    let s: Vec<String> = steps(&fine).into_iter().map(|(_, s)| s).collect();
    for want in [
        "matched reader",
        "retried reader attempt 1",
        "delivered reader attempt 2 status None",
        "delivered hook attempt 1 status Some(200)",
    ] {
        assert!(s.iter().any(|x| x == want), "{want} missing: {fine:#?}");
    }
    let flaky = trace(c, &base, "/test", "flaky").await;
    assert!(
        steps(&flaky).iter().any(|(_, s)| s == "not_matched reader"),
        "{flaky:#?}"
    );

    for (query, field) in [
        ("source=/test", "id"),
        ("id=flaky", "source"),
        ("source=/test&id=", "id"),
        ("source=/test&id=flaky&timeout_ms=999999", "timeout_ms"),
        ("source=/test&id=flaky&timeout_ms=0", "timeout_ms"),
        ("source=/test&id=flaky&timeout_ms=2s", "timeout_ms"),
    ] {
        let r = c
            .get(format!("{base}/v1/trace?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
    let r = c
        .get(format!("{base}/v1/trace?source=/test&id=x&garbage=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
}

/// In a cluster of two nodes on a shared store (etcd, schedulers, pulsar-lite, two
/// proxies): every node and proxy answers the records of both nodes, the delivery named
/// by the node placement gives the group to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_and_proxy_of_a_cluster_answers_the_whole_clusters_records() {
    let cl = cluster_support::Cluster::start().await;
    let c = common::client();
    let p1 = cl.proxies[0].url.clone();
    common::create_topic(&c, &p1, "orders", json!({"partitions": 2})).await;
    let (code, body) = common::subscribe(
        &c,
        &p1,
        json!({"name": "audit", "topic": "orders", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert!(code == 201 || code == 200, "{body}");
    let owner = eventually(
        "placement names a node for the group",
        Duration::from_secs(30),
        || async { cl.owner(&c, "audit").await },
    )
    .await;
    publish(
        &c,
        &p1,
        "orders",
        &[event("e1", "order.created", None, json!({}))],
    )
    .await;
    let got = common::drain(&c, &p1, "audit", "default", 1).await;
    assert_eq!(got.len(), 1);
    let urls: Vec<String> = cl
        .nodes
        .iter()
        .chain(&cl.proxies)
        .map(|m| m.url.clone())
        .collect();
    for url in &urls {
        let t = trace(&c, url, "/test", "e1").await;
        let delivered: Vec<_> = t
            .records
            .iter()
            .filter(|r| matches!(r.kind, TraceKind::Delivered { .. }))
            .collect();
        assert_eq!(delivered.len(), 1, "asked {url}: {t:#?}");
        assert_eq!(delivered[0].node, owner, "asked {url}: {t:#?}");
        let s: Vec<String> = steps(&t).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            s,
            [
                "stored orders",
                "matched audit",
                "delivered audit attempt 1 status None"
            ],
            "asked {url}: {t:#?}"
        );
        assert_eq!(t.clusters.len(), 1, "{t:#?}");
        assert_eq!(t.clusters[0].cluster, cluster_support::CLUSTER);
        assert!(
            t.clusters[0].answered && t.clusters[0].error.is_none(),
            "{t:#?}"
        );
    }
}

/// An event with the CloudEvents distributed-tracing extension: its `traceparent` is a
/// field of the publish's `stored` log event and of the delivery span (seen in the JSON
/// log around a retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traceparent_of_an_event_is_on_its_spans() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let n = common::Meshd::spawn_json_logged(
        dir.path(),
        &log,
        "warn,meshd_node::http=trace,meshd_node::delivery=debug",
    );
    let c = common::client();
    let sink = Sink::start(|_, n| if n == 1 { 503 } else { 200 }).await;
    common::create_topic(&c, &n.url, "orders", json!({})).await;
    let (status, body) = common::subscribe(
        &c,
        &n.url,
        json!({"name": "hook", "topic": "orders", "sink": {"webhook": {"url": sink.url}},
               "delivery": {"initial_backoff_ms": 10, "max_backoff_ms": 50}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut e = event("tp1", "order.created", None, json!({}));
    e["traceparent"] = json!(tp);
    publish(&c, &n.url, "orders", &[e]).await;
    eventually(
        "delivered on the second attempt",
        Duration::from_secs(20),
        || async { (sink.received().len() >= 2).then_some(()) },
    )
    .await;
    let text = eventually("the retry logged", Duration::from_secs(10), || async {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("retrying").then_some(t)
    })
    .await;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "stored" && l["traceparent"] == tp),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("retrying"))
            && l["span"]["name"] == "deliver"
            && l["span"]["traceparent"] == tp),
        "{text}"
    );
}
