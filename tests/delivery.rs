//! Subscriptions and delivery against the real binary: webhook push with retries and
//! dead-lettering to a real local HTTP sink, filters, pull with ack deadlines,
//! CLUSTERING vs BROADCASTING, and subscriptions surviving a restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn webhook_retries_then_dead_letters() {
    let h = flaky_hook(|i| json!({ "n": i + 1 })).await;
    let (m, c, sink) = (&h.meshd, h.client.clone(), &h.sink);
    // The flaky one arrives three times (two failures, one success), the fine one once.
    eventually("flaky delivered on its third attempt", T, || async {
        let ids = sink.ids();
        (ids.iter().filter(|i| *i == "flaky").count() == 3
            && ids.iter().filter(|i| *i == "doomed").count() == 3
            && ids.contains(&"fine".to_string()))
        .then_some(())
    })
    .await;
    // Binary mode with the original attributes.
    let got = sink.received();
    let fine = got
        .iter()
        .find(|r| r.header("ce-id") == Some("fine"))
        .unwrap();
    assert_eq!(fine.header("ce-type"), Some("order.created"));
    assert_eq!(fine.header("ce-specversion"), Some("1.0"));
    assert_eq!(fine.header("ce-partitionkey"), Some("c"));
    assert_eq!(
        serde_json::from_slice::<Value>(&fine.body).unwrap(),
        json!({"n": 3})
    );

    // The doomed one is in the dead-letter topic with the reason.
    let (status, body) = subscribe(
        &c,
        &m.url,
        json!({"name": "dlq-reader", "topic": "orders.dlq", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let dead = drain(&c, &m.url, "dlq-reader", "default", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let ev = &dead[0]["event"];
    assert_eq!(ev["id"], "doomed");
    assert_eq!(ev["deadlettersubscription"], "hook");
    assert_eq!(ev["deadletterattempts"], 3);
    assert_eq!(ev["deadletterstatus"], 500);
    assert!(
        ev["deadletterreason"].as_str().unwrap().contains("500"),
        "{ev}"
    );
    // Nothing more is attempted after dead-lettering.
    let before = sink.ids().len();
    tokio::time::sleep(Duration::from_millis(300)).await; // a quiet period, not synchronization
    assert_eq!(sink.ids().len(), before);
    let metrics = common::get_text(&c, &m.at("/metrics")).await;
    assert!(
        metrics.contains(
            "meshd_node_events_dead_lettered_total{subscription=\"hook\",topic=\"orders\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_node_delivery_retries_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn webhook_filter_and_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    let sink = Sink::start(|_, _| 204).await;
    create_topic(&c, &m.url, "orders", json!({"partitions": 3})).await;
    let (status, body) = subscribe(
        &c,
        &m.url,
        json!({
            "name": "created-only",
            "topic": "orders",
            "filter": {"exact": {"type": "order.created"}},
            "sink": {"webhook": {"url": sink.url}},
            "delivery": {"max_in_flight": 8}
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut events = Vec::new();
    for i in 0..60 {
        let ty = if i % 3 == 0 {
            "order.deleted"
        } else {
            "order.created"
        };
        events.push(event(
            &format!("e{i}"),
            ty,
            Some(&format!("k{}", i % 4)),
            json!({"seq": i}),
        ));
    }
    let batch = json!(events);
    let r = c
        .post(m.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = eventually("40 matching events delivered", T, || async {
        let r = sink.received();
        (r.len() >= 40).then_some(r)
    })
    .await;
    assert_eq!(got.len(), 40, "only matching events, each once");
    assert!(got
        .iter()
        .all(|r| r.header("ce-type") == Some("order.created")));
    // Per key, sequence numbers arrive in publish order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in &got {
        let key = r.header("ce-partitionkey").unwrap().to_string();
        let seq = serde_json::from_slice::<Value>(&r.body).unwrap()["seq"]
            .as_i64()
            .unwrap();
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(seq > prev, "key {key}: {seq} after {prev}");
        }
    }
}

#[tokio::test]
async fn pull_ack_and_redelivery_after_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "jobs", json!({})).await;
    let (status, body) = subscribe(
        &c,
        &m.url,
        json!({"name": "workers", "topic": "jobs", "sink": {"pull": {"ack_deadline_ms": 300}}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Nothing yet: a short long-poll returns empty.
    assert!(pull(&c, &m.url, "workers", "w1", 10, 50).await.is_empty());
    // A long poll wakes up when an event arrives.
    let waiter = {
        let c = c.clone();
        let base = m.url.clone();
        tokio::spawn(async move { pull(&c, &base, "workers", "w1", 10, 10_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // let the poll start first
    publish(&c, &m.url, "jobs", &[event("j1", "job", None, json!(1))]).await;
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(id_of(&got[0]), "j1");
    assert_eq!(got[0]["delivery_attempt"], 1);
    // Not acknowledged: handed out again after the deadline, attempt 2.
    let again = eventually("j1 redelivered", T, || async {
        let evs = pull(&c, &m.url, "workers", "w1", 10, 200).await;
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(id_of(&again[0]), "j1");
    assert_eq!(again[0]["delivery_attempt"], 2);
    // The first lease's ack id is stale now.
    let stale = ack(&c, &m.url, "workers", "w1", &got).await;
    assert_eq!(stale["acknowledged"], 0, "{stale}");
    let fresh = ack(&c, &m.url, "workers", "w1", &again).await;
    assert_eq!(fresh["acknowledged"], 1, "{fresh}");
    // Garbage ack ids are reported, not fatal.
    let junk: Value = c
        .post(m.at("/v1/subscriptions/workers/ack"))
        .json(&json!({"ack_ids": ["nonsense", "1:2:3:4:5"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(junk["unknown"].as_array().unwrap().len(), 2, "{junk}");
    // Acknowledged: not handed out again.
    tokio::time::sleep(Duration::from_millis(500)).await; // past the deadline on purpose
    assert!(pull(&c, &m.url, "workers", "w1", 10, 100).await.is_empty());
}

#[tokio::test]
async fn clustering_spreads_and_broadcasting_copies() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "news", json!({"partitions": 2})).await;
    for (name, mode) in [("shared", "CLUSTERING"), ("fanout", "BROADCASTING")] {
        let (status, body) = subscribe(
            &c,
            &m.url,
            json!({"name": name, "topic": "news", "mode": mode, "sink": {"pull": {}}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    // Register both broadcasting members before publishing.
    for member in ["a", "b"] {
        assert!(pull(&c, &m.url, "fanout", member, 1, 0).await.is_empty());
    }
    let events: Vec<Value> = (0..40)
        .map(|i| {
            event(
                &format!("n{i}"),
                "news",
                Some(&format!("k{}", i % 5)),
                json!(i),
            )
        })
        .collect();
    publish(&c, &m.url, "news", &events).await;

    // CLUSTERING: two members pulling in turn split the events; together they get all once.
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    let deadline = std::time::Instant::now() + T;
    while seen.values().map(HashSet::len).sum::<usize>() < 40
        && std::time::Instant::now() < deadline
    {
        for member in ["a", "b"] {
            let evs = pull(&c, &m.url, "shared", member, 7, 100).await;
            if !evs.is_empty() {
                ack(&c, &m.url, "shared", member, &evs).await;
            }
            for e in evs {
                assert!(seen
                    .entry(member.to_string())
                    .or_default()
                    .insert(id_of(&e)));
            }
        }
    }
    let a = seen.get("a").cloned().unwrap_or_default();
    let b = seen.get("b").cloned().unwrap_or_default();
    assert_eq!(a.len() + b.len(), 40, "a={a:?} b={b:?}");
    assert!(a.is_disjoint(&b));
    assert!(!a.is_empty() && !b.is_empty(), "both members got work");

    // BROADCASTING: every member gets every event.
    for member in ["a", "b"] {
        let got: HashSet<String> = drain(&c, &m.url, "fanout", member, 40)
            .await
            .iter()
            .map(id_of)
            .collect();
        assert_eq!(got.len(), 40, "member {member}");
    }
}

#[tokio::test]
async fn subscription_validation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "orders", json!({})).await;
    let bad = [
        (
            json!({"name": "x", "topic": "nope", "sink": {"pull": {}}}),
            404,
            None,
        ),
        (
            json!({"name": "x", "topic": "orders", "sink": {"webhook": {"url": "ftp://x"}}}),
            400,
            Some("sink.webhook.url"),
        ),
        (
            json!({"name": "x", "topic": "orders", "sink": {"pull": {}}, "filter": {"exact": {}}}),
            400,
            Some("filter.exact"),
        ),
        (
            json!({"name": "x", "topic": "orders", "sink": {"pull": {}}, "filter": {"regex": "a"}}),
            400,
            Some("filter"),
        ),
        (
            json!({"name": "x", "topic": "orders", "sink": {"pull": {}}, "mode": "SOMETIMES"}),
            400,
            Some("mode"),
        ),
        (
            json!({"name": "x", "topic": "orders", "sink": {"pull": {}}, "delivery": {"max_attempts": 0}}),
            400,
            Some("delivery.max_attempts"),
        ),
        (
            json!({"name": "bad name", "topic": "orders", "sink": {"pull": {}}}),
            400,
            Some("name"),
        ),
        (json!({"topic": "orders", "sink": {"pull": {}}}), 400, None),
    ];
    for (spec, status, field) in bad {
        let (got, body) = subscribe(&c, &m.url, spec.clone()).await;
        assert_eq!(got, status, "{spec}: {body}");
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "{spec}: {body}");
        }
    }
    let list: Value = common::get_json(&c, &m.at("/v1/subscriptions")).await;
    assert_eq!(
        list["subscriptions"].as_array().unwrap().len(),
        0,
        "bad specs changed nothing"
    );

    let spec = json!({"name": "keeper", "topic": "orders", "sink": {"pull": {}}});
    assert_eq!(subscribe(&c, &m.url, spec.clone()).await.0, 201);
    assert_eq!(
        subscribe(&c, &m.url, spec).await.0,
        200,
        "identical create is idempotent"
    );
    let other =
        json!({"name": "keeper", "topic": "orders", "sink": {"pull": {"ack_deadline_ms": 1000}}});
    assert_eq!(subscribe(&c, &m.url, other).await.0, 409);
    // A topic with subscriptions cannot be deleted.
    assert_eq!(status_of(c.delete(m.at("/v1/topics/orders"))).await, 409);

    publish(
        &c,
        &m.url,
        "orders",
        &[event("before", "t", None, json!(1))],
    )
    .await;
    assert!(m.terminate(), "clean shutdown on SIGTERM");
    let m2 = Meshd::start(dir.path(), &[]);
    let got = c
        .get(m2.at("/v1/subscriptions/keeper"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200, "the subscription survived the restart");
    publish(
        &c,
        &m2.url,
        "orders",
        &[event("after", "t", None, json!(2))],
    )
    .await;
    let ids: Vec<String> = drain(&c, &m2.url, "keeper", "default", 2)
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec!["before", "after"]);
    assert_eq!(
        status_of(c.delete(m2.at("/v1/subscriptions/keeper"))).await,
        204
    );
    assert_eq!(
        status_of(c.get(m2.at("/v1/subscriptions/keeper"))).await,
        404
    );
    assert_eq!(
        status_of(c.get(m2.at("/v1/subscriptions/keeper/events"))).await,
        404
    );
}
