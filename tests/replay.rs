//! Start at a time or offsets, seek a live subscription, browse a topic's stored events:
//! against the real binary, on the embedded store and on Pulsar (a real `pulsar-lite`
//! broker), with the same scenario; hostile positions and queries answer 400 naming the
//! field and change nothing; in a cluster of two nodes a seek through a proxy reaches the
//! node delivering the subscription (another node refuses it); and the CLI's `topic
//! events`, `sub seek`, `--start-time`.

mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_support::{broker, Cluster};
use common::*;
use meshd_core::api::format_time_ms;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events.iter().map(id_of).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// `(status, body)` of a request.
async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Asserts a 400 naming `field`.
async fn refused(req: reqwest::RequestBuilder, field: &str, what: &str) {
    let (status, body) = answer(req).await;
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(body["error"]["field"], field, "{what}: {body}");
    assert!(
        !body["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{what}: {body}"
    );
}

/// Every stored event of a partition, paging with `limit=3` and `next`.
async fn browse_all(c: &reqwest::Client, base: &str, partition: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let q = match from {
            None => format!("partition={partition}&limit=3"),
            Some(f) => format!("partition={partition}&limit=3&from={f}"),
        };
        let (status, page) = answer(c.get(format!("{base}/v1/topics/orders/events?{q}"))).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            assert_eq!(page["next"], page["end"], "an empty page is at the end");
            return out;
        }
        for e in &events {
            assert_eq!(e["partition"], partition);
            assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
        }
        assert_eq!(
            page["next"].as_u64().unwrap(),
            events.last().unwrap()["offset"].as_u64().unwrap() + 1
        );
        from = page["next"].as_u64();
        out.extend(events);
    }
}

/// The ids of browsed events.
fn browsed_ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// The whole scenario on one node (any store). Offsets are taken from what the node
/// answered, never computed (they are sparse on Pulsar).
async fn scenario(base: &str) {
    let c = client();
    create_topic(&c, base, "orders", json!({"partitions": 2})).await;
    let ev = |id: &str| event(id, "order.created", Some(id), json!({}));
    // Batch A, then (once the clock has moved past A's store times) batch B.
    let a_pos = publish(
        &c,
        base,
        "orders",
        &[ev("a0"), ev("a1"), ev("a2"), ev("a3")],
    )
    .await;
    let after_a = now_ms();
    while now_ms() <= after_a {
        tokio::task::yield_now().await;
    }
    let since = format_time_ms(after_a + 1);
    publish(
        &c,
        base,
        "orders",
        &[ev("b0"), ev("b1"), ev("b2"), ev("b3")],
    )
    .await;
    let all = set(&["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]);
    let b = set(&["b0", "b1", "b2", "b3"]);

    // Browse: every event once, in pages; from a time: exactly B.
    let (p0, p1) = (browse_all(&c, base, 0).await, browse_all(&c, base, 1).await);
    let mut seen = browsed_ids(&p0);
    seen.extend(browsed_ids(&p1));
    assert_eq!(seen, all);
    assert_eq!(p0.len() + p1.len(), 8, "each event once");
    let mut from_b = BTreeSet::new();
    for p in 0..2 {
        let page = get_json(
            &c,
            &format!("{base}/v1/topics/orders/events?partition={p}&from_time={since}"),
        )
        .await;
        from_b.extend(browsed_ids(page["events"].as_array().unwrap()));
    }
    assert_eq!(from_b, b, "from_time gives the events stored since");

    // Hostile browse queries: 400 naming the field.
    let end0 = get_json(&c, &format!("{base}/v1/topics/orders")).await["partitions"]["0"]["end"]
        .as_u64()
        .unwrap();
    let url = |q: &str| format!("{base}/v1/topics/orders/events?{q}");
    for (q, field) in [
        ("", "partition"),
        ("partition=7", "partition"),
        ("partition=0&limit=100000", "limit"),
        ("partition=0&limit=0", "limit"),
        (
            "partition=0&from=0&from_time=2026-01-01T00:00:00Z",
            "from_time",
        ),
        ("partition=0&from_time=yesterday", "from_time"),
        (&format!("partition=0&from={}", end0 + 1), "from"),
    ] {
        refused(c.get(url(q)), field, q).await;
    }
    let (status, _) = answer(c.get(url("partition=0&limit=99999999999999999999999"))).await;
    assert_eq!(status, 400, "a limit that is no number");
    let (status, body) = answer(c.get(format!("{base}/v1/topics/nope/events"))).await;
    assert_eq!(status, 404, "{body}");

    // A subscription starting at a time gets B only.
    let (status, body) = subscribe(
        &c,
        base,
        json!({"name": "since", "topic": "orders", "sink": {"pull": {}}, "start": {"time": since}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["start"]["time"], since, "kept as written");
    assert_eq!(ids(&drain(&c, base, "since", "c", 4).await), b);

    // Hostile starts: 400 naming the field, nothing created.
    let future = format_time_ms(now_ms() + 3_600_000);
    for (start, field) in [
        (json!({"time": "yesterday"}), "start.time"),
        (json!({"time": future}), "start.time"),
        (json!({"offsets": {}}), "start.offsets"),
        (json!({"offsets": {"9": 0}}), "start.offsets.9"),
        (json!({"offsets": {"0": end0 + 1}}), "start.offsets.0"),
        (json!("middle"), "start"),
    ] {
        let spec = json!({"name": "bad", "topic": "orders", "sink": {"pull": {}}, "start": start});
        refused(
            c.post(format!("{base}/v1/subscriptions")).json(&spec),
            field,
            &start.to_string(),
        )
        .await;
    }
    let (status, _) = answer(c.get(format!("{base}/v1/subscriptions/bad"))).await;
    assert_eq!(status, 404, "a refused subscription is not created");

    // Seek a live pull subscription: to a time, then to offsets on one partition.
    let (status, body) = subscribe(
        &c,
        base,
        json!({"name": "s", "topic": "orders", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(ids(&drain(&c, base, "s", "c", 8).await), all);
    let seek = |body: Value| {
        c.post(format!("{base}/v1/subscriptions/s/seek"))
            .json(&body)
    };
    let (status, moved) = answer(seek(json!({"time": since}))).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["subscription"], "s");
    assert_eq!(moved["positions"].as_object().unwrap().len(), 2, "{moved}");
    assert_eq!(ids(&drain(&c, base, "s", "c", 4).await), b, "B again");
    let a0 = &a_pos[0];
    let (p, o) = (
        a0["partition"].as_u64().unwrap(),
        a0["offset"].as_u64().unwrap(),
    );
    let (status, moved) = answer(seek(json!({"offsets": {p.to_string(): o}}))).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["positions"][p.to_string()], o);
    let from_a0: BTreeSet<String> = if p == 0 { &p0 } else { &p1 }
        .iter()
        .filter(|e| e["offset"].as_u64().unwrap() >= o)
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    assert!(from_a0.contains("a0"));
    assert_eq!(
        ids(&drain(&c, base, "s", "c", from_a0.len()).await),
        from_a0,
        "partition {p} again from a0's offset"
    );

    // Hostile seeks: 400 naming the field (404 for no such subscription); nothing moves:
    // the next event pulled is a new one.
    for (body, field) in [
        (json!({"time": "soon"}), "time"),
        (json!({"time": future}), "time"),
        (json!({"offsets": {"9": 0}}), "offsets.9"),
        (json!({"offsets": {"0": end0 + 1}}), "offsets.0"),
    ] {
        refused(seek(body.clone()), field, &body.to_string()).await;
    }
    let (status, body) = answer(seek(json!("sideways"))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = answer(
        c.post(format!("{base}/v1/subscriptions/nope/seek"))
            .json(&json!("earliest")),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "subscription_not_found");
    publish(&c, base, "orders", &[ev("c0")]).await;
    assert_eq!(ids(&drain(&c, base, "s", "c", 1).await), set(&["c0"]));

    // Seek a webhook subscription: its receiver gets B again.
    let sink = Sink::start(|_, _| 200).await;
    let (status, body) = subscribe(
        &c,
        base,
        json!({"name": "hook", "topic": "orders", "start": "earliest",
               "sink": {"webhook": {"url": sink.url}}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    eventually("the webhook got all 9", T, || async {
        (sink.ids().iter().collect::<BTreeSet<_>>().len() == 9).then_some(())
    })
    .await;
    let (status, moved) = answer(
        c.post(format!("{base}/v1/subscriptions/hook/seek"))
            .json(&json!({"time": since})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    eventually("the webhook got B twice", T, || async {
        let got = sink.ids();
        b.iter()
            .all(|id| got.iter().filter(|g| *g == id).count() >= 2)
            .then_some(())
    })
    .await;
    let got = sink.ids();
    for id in ["a0", "a1", "a2", "a3"] {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "{id} is before the time: not again"
        );
    }
}

#[tokio::test]
async fn seek_start_and_browse_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    scenario(&m.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_start_and_browse_on_pulsar() {
    let b = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &["--store", &b.url()]);
    scenario(&m.url).await;
}

#[tokio::test]
async fn cli_browses_seeks_and_starts_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    let url = m.url.as_str();
    let (ok, _, err) = cli(&["--url", url, "topic", "create", "orders"]);
    assert!(ok, "{err}");
    publish(
        &c,
        url,
        "orders",
        &[
            event("x0", "t", None, json!({})),
            event("x1", "t", None, json!({})),
        ],
    )
    .await;
    let after = now_ms();
    while now_ms() <= after {
        tokio::task::yield_now().await;
    }
    let since = format_time_ms(after + 1);
    publish(&c, url, "orders", &[event("y0", "t", None, json!({}))]).await;

    let (ok, out, err) = cli(&["--url", url, "topic", "events", "orders"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("x0") && out.contains("x1") && out.contains("y0"),
        "{out}"
    );
    let (ok, out, err) = cli(&[
        "--url",
        url,
        "-o",
        "json",
        "topic",
        "events",
        "orders",
        "--from-time",
        &since,
    ]);
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["events"][0]["event"]["id"], "y0");
    let (ok, _, err) = cli(&["--url", url, "topic", "events", "orders", "--limit", "5000"]);
    assert!(!ok, "a limit past 1000 is refused");
    assert!(err.contains("5000"), "{err}");

    let (ok, out, err) = cli(&[
        "--url",
        url,
        "sub",
        "create",
        "late",
        "--topic",
        "orders",
        "--pull",
        "--start-time",
        &since,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("created"), "{out}");
    assert_eq!(
        ids(&drain(&c, url, "late", "default", 1).await),
        set(&["y0"])
    );
    let (ok, out, err) = cli(&["--url", url, "sub", "get", "late"]);
    assert!(ok, "{err}");
    assert!(out.contains(&since), "{out}");

    let (ok, out, err) = cli(&["--url", url, "sub", "seek", "late", "--offset", "0:0"]);
    assert!(ok, "{err}");
    assert!(out.contains("moved"), "{out}");
    assert_eq!(
        ids(&drain(&c, url, "late", "default", 3).await),
        set(&["x0", "x1", "y0"])
    );
    for bad in [
        &["--offset", "zero"][..],
        &["--time", "soon"],
        &["--offset", "3:0"],
    ] {
        let mut args = vec!["--url", url, "sub", "seek", "late"];
        args.extend_from_slice(bad);
        let (ok, _, err) = cli(&args);
        assert!(!ok, "{bad:?} is refused");
        assert!(!err.is_empty());
    }
    let (ok, _, _) = cli(&["--url", url, "sub", "seek", "late"]);
    assert!(!ok, "a seek needs a position");
}

/// A cluster of two nodes on one Pulsar store behind two proxies: a seek through either
/// proxy goes to the node placement gave the subscription's group (and its consumers,
/// pulling through a proxy, see the events again); the other node answers 503
/// `group_not_placed_here` and nothing moves; browsing works through a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_owner_node_seeks() {
    let cl = Cluster::start().await;
    let c = client();
    let (p1, p2) = (cl.proxies[0].url.as_str(), cl.proxies[1].url.as_str());
    create_topic(&c, p1, "orders", json!({"partitions": 2})).await;
    let ev = |id: &str| event(id, "order.created", Some(id), json!({}));
    publish(&c, p1, "orders", &[ev("a0"), ev("a1")]).await;
    let after_a = now_ms();
    while now_ms() <= after_a {
        tokio::task::yield_now().await;
    }
    let since = format_time_ms(after_a + 1);
    publish(&c, p1, "orders", &[ev("b0"), ev("b1")]).await;
    let (status, body) = subscribe(
        &c,
        p1,
        json!({"name": "s", "topic": "orders", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let owner = eventually("placement gives group s a node", T, || async {
        cl.owner(&c, "s").await
    })
    .await;
    assert_eq!(
        ids(&drain(&c, p1, "s", "c", 4).await),
        set(&["a0", "a1", "b0", "b1"])
    );

    let mut other = None;
    for n in &cl.nodes {
        if get_json(&c, &n.at("/v1/cluster")).await["node"] != owner.as_str() {
            other = Some(n);
        }
    }
    let other = other.expect("a node that does not own the group");
    let (status, body) = answer(
        c.post(format!("{}/v1/subscriptions/s/seek", other.url))
            .json(&json!("earliest")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "group_not_placed_here");
    publish(&c, p1, "orders", &[ev("c0")]).await;
    assert_eq!(
        ids(&drain(&c, p2, "s", "c", 1).await),
        set(&["c0"]),
        "the refused seek moved nothing"
    );

    let (status, moved) = answer(
        c.post(format!("{p2}/v1/subscriptions/s/seek"))
            .json(&json!({"time": since})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        ids(&drain(&c, p1, "s", "c", 3).await),
        set(&["b0", "b1", "c0"]),
        "from the time again, through a proxy"
    );
    let page = get_json(
        &c,
        &format!("{p2}/v1/topics/orders/events?partition=0&from_time={since}"),
    )
    .await;
    assert!(page["events"].is_array(), "{page}");
}
