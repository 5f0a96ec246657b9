//! EventBridge-style replays (`/v1/replays`) against the real binary: 1,000 events
//! published in five time windows; a replay of a middle window re-delivers exactly that
//! window's events, each once, marked `meshdreplay`, to the target only (push and pull,
//! with a filter); live delivery goes on beside it; a cancel on a slow webhook stops it
//! (nothing more arrives after the answer); bad requests answer 4xx and start nothing; a
//! replay running when the node dies reads back as failed (interrupted); and the CLI.

mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_support::Cluster;
use common::*;
use meshd_core::api::format_time_ms;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const WINDOWS: usize = 5;
const PER_WINDOW: usize = 200;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `(status, body)` of a request.
async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Event `i` of window `w`: id `w{w}-{i}`, odd ones `order.paid`, key `k{i % 7}`.
fn window_event(w: usize, i: usize) -> Value {
    let ty = if i % 2 == 0 {
        "order.created"
    } else {
        "order.paid"
    };
    event(
        &format!("w{w}-{i}"),
        ty,
        Some(&format!("k{}", i % 7)),
        json!({"i": i}),
    )
}

fn window_ids(w: usize, keep: impl Fn(usize) -> bool) -> BTreeSet<String> {
    (0..PER_WINDOW)
        .filter(|i| keep(*i))
        .map(|i| format!("w{w}-{i}"))
        .collect()
}

/// Publishes the windows (one batch request of 200 each); returns the boundaries: window
/// `w`'s events are stored in `[b[w], b[w + 1])` (ms since the epoch), because each
/// window is published once the clock passed the previous one's answer.
async fn publish_windows(c: &reqwest::Client, base: &str) -> Vec<u64> {
    let mut bounds = vec![now_ms()];
    for w in 0..WINDOWS {
        let batch: Vec<Value> = (0..PER_WINDOW).map(|i| window_event(w, i)).collect();
        let r = c
            .post(format!("{base}/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let done = now_ms();
        while now_ms() <= done {
            tokio::task::yield_now().await;
        }
        bounds.push(done + 1);
    }
    bounds
}

async fn start_replay(c: &reqwest::Client, base: &str, body: Value) -> Value {
    let (status, s) = answer(c.post(format!("{base}/v1/replays")).json(&body)).await;
    assert_eq!(status, 201, "{body} answered {s}");
    s
}

/// Polls a replay's status until `done` holds.
async fn replay_until(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{base}/v1/replays/{name}");
    eventually(what, T, || {
        let c = c.clone();
        let url = url.clone();
        let done = &done;
        async move {
            let s = get_json(&c, &url).await;
            done(&s).then_some(s)
        }
    })
    .await
}

fn replay_marks(sink: &Sink) -> Vec<(String, Option<String>)> {
    sink.received()
        .iter()
        .map(|r| {
            (
                r.header("ce-id").unwrap_or("").to_string(),
                r.header("ce-meshdreplay").map(str::to_string),
            )
        })
        .collect()
}

fn window_total(status: &Value) -> u64 {
    status["partitions"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["end"].as_u64().unwrap() - p["start"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_redeliver_a_window_to_one_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Meshd::start(dir.path(), &[]);
    let base = node.url.clone();
    let c = client();
    create_topic(&c, &base, "orders", json!({"partitions": 3})).await;
    create_topic(&c, &base, "other", json!({})).await;
    let bounds = publish_windows(&c, &base).await;
    assert_eq!(stored_count(&c, &base, "orders").await, 1000);

    // Every subscription starts at `latest`: whatever they get below is replayed or live.
    let hook = Sink::start(|_, _| 200).await;
    // The slow one accepts the first 50 events of window 1 and keeps refusing the rest.
    let slow =
        Sink::start(
            |id, _| match id.strip_prefix("w1-").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n >= 50 => 503,
                _ => 200,
            },
        )
        .await;
    let subs = [
        json!({"name": "hook", "topic": "orders", "sink": {"webhook": {"url": hook.url}}}),
        json!({"name": "audit", "topic": "orders", "sink": {"pull": {}},
               "filter": {"prefix": {"type": "order."}}}),
        json!({"name": "bystander", "topic": "orders", "sink": {"pull": {}}}),
        json!({"name": "slow", "topic": "orders", "sink": {"webhook": {"url": slow.url}},
               "delivery": {"max_attempts": 1000, "initial_backoff_ms": 20, "max_backoff_ms": 100}}),
        json!({"name": "elsewhere", "topic": "other", "sink": {"pull": {}}}),
        json!({"name": "fanout", "topic": "orders", "mode": "BROADCASTING", "sink": {"pull": {}}}),
    ];
    for s in subs {
        let (status, body) = subscribe(&c, &base, s).await;
        assert_eq!(status, 201, "{body}");
    }
    let t = |i: usize| format_time_ms(bounds[i]);

    // Bad requests: 4xx with the field at fault, nothing started.
    let bad = [
        (
            json!({"topic": "nope", "from": t(2), "to": t(3), "subscription": "hook"}),
            404,
            None,
        ),
        (
            json!({"topic": "orders", "from": t(2), "to": t(3), "subscription": "nope"}),
            404,
            None,
        ),
        (
            json!({"topic": "orders", "from": t(2), "to": t(3), "subscription": "elsewhere"}),
            400,
            Some("subscription"),
        ),
        (
            json!({"topic": "orders", "from": t(3), "to": t(2), "subscription": "hook"}),
            400,
            Some("to"),
        ),
        (
            json!({"topic": "orders", "from": t(3), "to": t(3), "subscription": "hook"}),
            400,
            Some("to"),
        ),
        (
            json!({"topic": "orders", "from": "yesterday", "to": t(3), "subscription": "hook"}),
            400,
            None,
        ),
        (
            json!({"topic": "orders", "from": t(2), "to": t(3), "subscription": "hook", "filter": {"exact": 7}}),
            400,
            None,
        ),
        (
            json!({"topic": "orders", "from": t(2), "to": t(3), "subscription": "hook", "colour": "red"}),
            400,
            None,
        ),
        (
            json!({"topic": "orders", "from": t(2), "to": t(3), "subscription": "hook", "name": "bad name!"}),
            400,
            Some("name"),
        ),
        (
            json!({"topic": "orders", "from": t(2), "to": t(3), "subscription": "fanout"}),
            409,
            None,
        ),
    ];
    for (body, status, field) in bad {
        let (got, answer_body) = answer(c.post(format!("{base}/v1/replays")).json(&body)).await;
        assert_eq!(got, status, "{body} answered {answer_body}");
        assert!(
            !answer_body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{answer_body}"
        );
        if let Some(f) = field {
            assert_eq!(answer_body["error"]["field"], f, "{body}: {answer_body}");
        }
    }
    let (status, garbage) = answer(
        c.post(format!("{base}/v1/replays"))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400, "{garbage}");
    let list = get_json(&c, &format!("{base}/v1/replays")).await;
    assert_eq!(
        list["replays"],
        json!([]),
        "refused replays started nothing"
    );

    // Push: window 2 into `hook`.
    let started = start_replay(
        &c,
        &base,
        json!({"name": "r-push", "topic": "orders", "from": t(2), "to": t(3), "subscription": "hook"}),
    )
    .await;
    assert_eq!(window_total(&started), PER_WINDOW as u64, "{started}");
    let done = replay_until(&c, &base, "r-push", "r-push completed", |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(done["progress"], 1.0, "{done}");
    assert_eq!(done["events_replayed"], PER_WINDOW, "{done}");
    assert_eq!(done["events_scanned"], PER_WINDOW, "{done}");
    for p in done["partitions"].as_object().unwrap().values() {
        assert_eq!(p["next"], p["end"], "{done}");
    }
    let got = replay_marks(&hook);
    assert_eq!(got.len(), PER_WINDOW, "each event once: {got:?}");
    let ids: BTreeSet<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, window_ids(2, |_| true));
    assert!(
        got.iter().all(|(_, m)| m.as_deref() == Some("r-push")),
        "every replayed event carries meshdreplay: {got:?}"
    );

    // Pull with a filter: the paid orders of window 3 into `audit`.
    start_replay(
        &c,
        &base,
        json!({"name": "r-pull", "topic": "orders", "from": t(3), "to": t(4),
               "subscription": "audit", "filter": {"exact": {"type": "order.paid"}}}),
    )
    .await;
    let pulled = drain(&c, &base, "audit", "default", PER_WINDOW / 2).await;
    let ids: Vec<String> = pulled.iter().map(id_of).collect();
    assert_eq!(ids.len(), PER_WINDOW / 2, "each once: {ids:?}");
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        window_ids(3, |i| i % 2 == 1)
    );
    for e in &pulled {
        assert_eq!(e["event"]["meshdreplay"], "r-pull", "{e}");
        assert!(e["ack_id"].as_str().unwrap().starts_with('r'), "{e}");
    }
    let done = replay_until(&c, &base, "r-pull", "r-pull completed", |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(done["events_replayed"], PER_WINDOW / 2, "{done}");
    assert_eq!(done["events_scanned"], PER_WINDOW, "{done}");
    assert_eq!(done["progress"], 1.0);
    let metrics = get_text(&c, &format!("{base}/metrics")).await;
    for (sub, n) in [("hook", PER_WINDOW), ("audit", PER_WINDOW / 2)] {
        let line = format!(
            "meshd_node_events_replayed_total{{subscription=\"{sub}\",topic=\"orders\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // Acking a replayed event again: unknown (it was finished).
    let again = ack(&c, &base, "audit", "default", &pulled[..1]).await;
    assert_eq!(again["acknowledged"], 0, "{again}");

    // Live delivery goes on beside the replays and carries no mark; the bystander gets
    // only the live event.
    publish(
        &c,
        &base,
        "orders",
        &[event("live-1", "order.created", Some("k1"), json!({}))],
    )
    .await;
    let live = eventually("live-1 pushed", T, || async {
        replay_marks(&hook)
            .into_iter()
            .find(|(id, _)| id == "live-1")
    })
    .await;
    assert_eq!(live.1, None, "a live event is not marked");
    let audit_live = drain(&c, &base, "audit", "default", 1).await;
    assert_eq!(audit_live.iter().map(id_of).collect::<Vec<_>>(), ["live-1"]);
    assert!(audit_live[0]["event"].get("meshdreplay").is_none());
    let by = drain(&c, &base, "bystander", "default", 1).await;
    assert_eq!(
        by.iter().map(id_of).collect::<Vec<_>>(),
        ["live-1"],
        "the bystander saw no replayed event"
    );
    assert_eq!(replay_marks(&hook).len(), PER_WINDOW + 1);

    // Cancel midway: `slow` takes 50 of window 1 and refuses the rest.
    start_replay(
        &c,
        &base,
        json!({"name": "r-slow", "topic": "orders", "from": t(1), "to": t(2), "subscription": "slow"}),
    )
    .await;
    let (status, dup) = answer(c.post(format!("{base}/v1/replays")).json(&json!(
        {"name": "r-slow", "topic": "orders", "from": t(1), "to": t(2), "subscription": "hook"})))
    .await;
    assert_eq!(status, 409, "duplicate name: {dup}");
    assert_eq!(dup["error"]["code"], "replay_exists");
    let (status, busy) = answer(c.post(format!("{base}/v1/replays")).json(&json!(
        {"topic": "orders", "from": t(1), "to": t(2), "subscription": "slow"})))
    .await;
    assert_eq!(status, 409, "a second replay into slow: {busy}");
    replay_until(&c, &base, "r-slow", "20 replayed into slow", |s| {
        s["events_replayed"].as_u64() >= Some(20)
    })
    .await;
    let (status, cancelled) = answer(c.post(format!("{base}/v1/replays/r-slow/cancel"))).await;
    assert_eq!(status, 200, "{cancelled}");
    let seen_at_cancel = slow.received().len();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    // Lanes hold keys of several partitions: a refused event may hold up accepted ones
    // behind it, so fewer than 50 may be through; never more than the sink accepted.
    let accepted = slow
        .received()
        .iter()
        .filter(|r| r.header("ce-meshdreplay") == Some("r-slow"))
        .filter_map(|r| {
            r.header("ce-id")?
                .strip_prefix("w1-")?
                .parse::<usize>()
                .ok()
        })
        .filter(|n| *n < 50)
        .collect::<BTreeSet<_>>()
        .len() as u64;
    let replayed = cancelled["events_replayed"].as_u64().unwrap();
    assert!(
        (20..=accepted).contains(&replayed),
        "{replayed} of {accepted}: {cancelled}"
    );
    let progress = cancelled["progress"].as_f64().unwrap();
    assert!(progress < 1.0, "{cancelled}");
    // Nothing more is handed out: the live event published now arrives, and no replayed
    // event came after the cancel's answer.
    publish(
        &c,
        &base,
        "orders",
        &[event("live-2", "order.created", Some("k2"), json!({}))],
    )
    .await;
    eventually("live-2 at slow", T, || async {
        slow.ids().contains(&"live-2".to_string()).then_some(())
    })
    .await;
    let after: Vec<_> = slow.received()[seen_at_cancel..]
        .iter()
        .filter_map(|r| r.header("ce-meshdreplay").map(str::to_string))
        .collect();
    assert!(after.is_empty(), "replayed after the cancel: {after:?}");
    let (status, again) = answer(c.post(format!("{base}/v1/replays/r-slow/cancel"))).await;
    assert_eq!(
        (status, again["error"]["code"].clone()),
        (409, json!("replay_ended"))
    );
    let (status, unknown) = answer(c.get(format!("{base}/v1/replays/nope"))).await;
    assert_eq!(
        (status, unknown["error"]["code"].clone()),
        (404, json!("replay_not_found"))
    );

    // A replay running when the node dies reads back failed (interrupted).
    start_replay(
        &c,
        &base,
        json!({"name": "r-crash", "topic": "orders", "from": t(1), "to": t(2), "subscription": "slow"}),
    )
    .await;
    // The CLI meanwhile: list and status.
    let (ok, out, err) = cli(&["--url", &base, "replay", "list"]);
    assert!(ok, "{err}");
    for name in ["r-push", "r-pull", "r-slow", "r-crash"] {
        assert!(out.contains(name), "{out}");
    }
    let (ok, out, err) = cli(&["--url", &base, "replay", "status", "r-push", "-o", "json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["state"], "completed");
    let (ok, _, err) = cli(&["--url", &base, "replay", "cancel", "r-push"]);
    assert!(!ok, "cancelling an ended replay fails");
    assert!(err.contains("replay_ended"), "{err}");
    node.kill9();
    let node = Meshd::start(dir.path(), &[]);
    let base = node.url.clone();
    let crashed = get_json(&c, &format!("{base}/v1/replays/r-crash")).await;
    assert_eq!(crashed["state"], "failed", "{crashed}");
    assert!(
        crashed["error"].as_str().unwrap().contains("interrupted"),
        "{crashed}"
    );
    let push = get_json(&c, &format!("{base}/v1/replays/r-push")).await;
    assert_eq!(push["state"], "completed", "{push}");
    assert_eq!(push["events_replayed"], PER_WINDOW);
    let cancelled = get_json(&c, &format!("{base}/v1/replays/r-slow")).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");

    // The CLI starts one too (window 4 into hook, a pattern).
    let (ok, out, err) = cli(&[
        "--url",
        &base,
        "replay",
        "start",
        "--name",
        "r-cli",
        "--topic",
        "orders",
        "--subscription",
        "hook",
        "--from",
        &t(4),
        "--to",
        &t(5),
        "--pattern",
        r#"{"type": ["order.created"]}"#,
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["name"], "r-cli");
    replay_until(&c, &base, "r-cli", "r-cli completed", |s| {
        s["state"] == "completed"
    })
    .await;
    let from_cli: BTreeSet<String> = replay_marks(&hook)
        .into_iter()
        .filter(|(_, m)| m.as_deref() == Some("r-cli"))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(from_cli, window_ids(4, |i| i % 2 == 0));
    let (ok, _, err) = cli(&[
        "--url",
        &base,
        "replay",
        "start",
        "--topic",
        "orders",
        "--subscription",
        "hook",
        "--from",
        &t(4),
        "--to",
        &t(3),
    ]);
    assert!(!ok, "from after to is refused");
    assert!(err.contains("to"), "{err}");
}

/// In a cluster (two nodes on a shared Pulsar store, two proxies): the node that does not
/// deliver the subscription forwards the replay to the one that does; the reads and the
/// cancel find it with `?subscription=`, through a node or a proxy; consumers pulling
/// through a proxy get the window marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_node_delivering_the_subscription_replays() {
    let cl = Cluster::start().await;
    let c = client();
    let (p1, p2) = (cl.proxies[0].url.as_str(), cl.proxies[1].url.as_str());
    create_topic(&c, p1, "orders", json!({"partitions": 2})).await;
    let (status, body) = subscribe(
        &c,
        p1,
        json!({"name": "s", "topic": "orders", "sink": {"pull": {}}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let owner = eventually("placement gives group s a node", T, || async {
        cl.owner(&c, "s").await
    })
    .await;
    let mut other = None;
    for n in &cl.nodes {
        if get_json(&c, &n.at("/v1/cluster")).await["node"] != owner.as_str() {
            other = Some(n);
        }
    }
    let other = other.expect("a node that does not own the group");
    let ev = |id: &str| event(id, "order.created", Some(id), json!({}));
    publish(&c, p1, "orders", &[ev("a0"), ev("a1")]).await;
    let after_a = now_ms();
    while now_ms() <= after_a {
        tokio::task::yield_now().await;
    }
    publish(&c, p1, "orders", &[ev("b0"), ev("b1"), ev("b2")]).await;
    let after_b = now_ms();
    while now_ms() <= after_b {
        tokio::task::yield_now().await;
    }
    // The live events first (s started at latest, before them).
    assert_eq!(drain(&c, p1, "s", "c", 5).await.len(), 5);

    let (status, started) = answer(c.post(format!("{}/v1/replays", other.url)).json(&json!({
        "name": "r", "topic": "orders", "subscription": "s",
        "from": format_time_ms(after_a + 1), "to": format_time_ms(after_b + 1)})))
    .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(
        started["node"],
        owner.as_str(),
        "it runs where s is delivered: {started}"
    );
    let pulled = drain(&c, p2, "s", "c", 3).await;
    let got: BTreeSet<String> = pulled.iter().map(id_of).collect();
    assert_eq!(
        got,
        ["b0", "b1", "b2"].iter().map(|s| s.to_string()).collect()
    );
    assert!(
        pulled.iter().all(|e| e["event"]["meshdreplay"] == "r"),
        "{pulled:?}"
    );
    for base in [other.url.as_str(), p1, p2] {
        let url = format!("{base}/v1/replays/r?subscription=s");
        let s = eventually("r completed", T, || async {
            let s = get_json(&c, &url).await;
            (s["state"] == "completed").then_some(s)
        })
        .await;
        assert_eq!(s["events_replayed"], 3, "{base}: {s}");
        let list = get_json(&c, &format!("{base}/v1/replays?subscription=s")).await;
        assert_eq!(list["replays"][0]["name"], "r", "{base}: {list}");
    }
    // Without the subscription a node answers only its own replays.
    let (status, _) = answer(c.get(format!("{}/v1/replays/r", other.url))).await;
    assert_eq!(status, 404);
    let (status, ended) =
        answer(c.post(format!("{}/v1/replays/r/cancel?subscription=s", other.url))).await;
    assert_eq!(
        (status, ended["error"]["code"].clone()),
        (409, json!("replay_ended")),
        "{ended}"
    );
}
