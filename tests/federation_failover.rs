//! Cross-cluster consumer failover with real `meshd node --topology` processes: a
//! subscription with a standby cluster has its definition and positions replicated there;
//! when its home is killed, the standby takes it over and continues where the home's
//! consumers left off; the restarted home does not deliver it (fenced by the higher term)
//! until it takes it back, continuing from the standby's positions.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, id_of, stored_count};
use federation_support::*;
use serde_json::{json, Value};

/// Pulls and acknowledges exactly `n` events.
async fn take(c: &reqwest::Client, node: &common::Meshd, sub: &str, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "pulled {} of {n}",
            got.len()
        );
        let evs = common::pull(c, &node.url, sub, "x", n - got.len(), 500).await;
        if !evs.is_empty() {
            common::ack(c, &node.url, sub, "x", &evs).await;
        }
        got.extend(evs.iter().map(id_of));
    }
    got
}

fn ids(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("e{i:04}")).collect()
}

async fn failover(c: &reqwest::Client, node: &common::Meshd, home: &str) -> (u16, Value) {
    let r = c
        .post(node.at("/v1/mesh/failover"))
        .json(&json!({"subscription": "s", "home": home}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn replica_position(c: &reqwest::Client, node: &common::Meshd, origin: &str) -> Option<u64> {
    let m = mesh(c, node).await;
    m["subscription_replicas"]
        .as_array()?
        .iter()
        .find(|r| r["home"] == "a" && r["name"] == "s")?["positions"]
        .as_array()?
        .iter()
        .find(|p| p["origin"] == origin && p["partition"] == 0)?["next"]
        .as_u64()
}

/// Clusters a and b (started with `args`), topic `orders` made in a with `partitions`
/// partitions (the catalog makes it in b), pull subscription `s` in a with standby b, and
/// a subscription in b so that b stores a's events (its copy is what it delivers from).
async fn home_and_standby(
    files: &MeshFiles,
    c: &reqwest::Client,
    args: &[&str],
    partitions: u32,
) -> (common::Meshd, common::Meshd) {
    let a = files.start_args("a", args, None);
    let b = files.start_args("b", args, None);
    topic(c, &a, "orders", partitions).await;
    wait_topic(c, &b, "orders", u64::from(partitions)).await;
    let r = c
        .post(a.at("/v1/subscriptions"))
        .json(&json!({
            "name": "s", "topic": "orders", "start": "earliest",
            "sink": {"pull": {}}, "standby": ["b"],
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    pull_subscription(c, &b, "keep", "orders").await;
    wait_connected(c, &a, "b").await;
    wait_interest(c, &a, "b", "b", "orders").await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_where_the_home_left_off_and_hands_back() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let (mut a, b) = home_and_standby(&files, &c, &[], 1).await;

    let events: Vec<Value> = (0..200)
        .map(|i| event(&format!("e{i:04}"), "t", None, json!({ "i": i })))
        .collect();
    publish_batch(&c, &a, "orders", &events).await;
    eventually("b stored a's events", Duration::from_secs(20), || async {
        (stored_count(&c, &b.url, "orders").await >= 200).then_some(())
    })
    .await;
    assert_eq!(take(&c, &a, "s", 120).await, ids(0, 120));
    eventually(
        "b has a's positions for s",
        Duration::from_secs(20),
        || async { (replica_position(&c, &b, "a").await == Some(120)).then_some(()) },
    )
    .await;

    // Only a standby (or the home) may take over; not while the home delivers it itself.
    let (status, body) = failover(&c, &a, "a").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = failover(&c, &b, "nope").await;
    assert_eq!(status, 404, "{body}");

    a.kill9();
    let (status, body) = failover(&c, &b, "a").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["term"], 1, "{body}");
    assert_eq!(body["active"], "b", "{body}");
    // b continues exactly where a's consumers left off.
    assert_eq!(take(&c, &b, "s", 80).await, ids(120, 200));
    assert!(common::pull(&c, &b.url, "s", "x", 10, 300).await.is_empty());
    // New events published at b are delivered there.
    let more: Vec<Value> = (200..210)
        .map(|i| event(&format!("e{i:04}"), "t", None, json!({ "i": i })))
        .collect();
    publish_batch(&c, &b, "orders", &more).await;
    assert_eq!(take(&c, &b, "s", 10).await, ids(200, 210));

    // a comes back: it knows (persisted, and from b) that b delivers s: it does not.
    let a = files.start("a");
    wait_connected(&c, &a, "b").await;
    eventually("a hears of term 1", Duration::from_secs(20), || async {
        let m = mesh(&c, &a).await;
        let r = m["subscription_replicas"].as_array().and_then(|a| {
            a.iter()
                .find(|r| r["home"] == "a" && r["name"] == "s")
                .cloned()
        })?;
        (r["term"] == 1 && r["active"] == "b").then_some(())
    })
    .await;
    let r = c
        .get(a.at("/v1/subscriptions/s/events?max=10&wait=300ms&consumer=x"))
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["events"].as_array().is_none_or(|e| e.is_empty()),
        "the fenced home delivered: {answer}"
    );
    // Both clusters' status of s names b as the cluster delivering it.
    for (node, delivering) in [(&a, false), (&b, true)] {
        let s: meshd_core::api::SubscriptionStatus = c
            .get(node.at("/v1/subscriptions/s/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(s.active_cluster, "b", "{s:?}");
        assert_eq!(s.delivering, delivering, "{s:?}");
    }

    // a takes it back from b's positions (b delivered its own e0200..e0209, stored at
    // its offsets 200..209, and a's up to e0199).
    eventually("a has b's positions", Duration::from_secs(20), || async {
        (replica_position(&c, &a, "b").await == Some(210)).then_some(())
    })
    .await;
    // Until a stored what b delivered, it is told to retry (409 not_caught_up).
    let body = eventually("a takes s back", Duration::from_secs(20), || async {
        let (status, body) = failover(&c, &a, "a").await;
        if status == 409 {
            assert_eq!(body["error"]["code"], "not_caught_up", "{body}");
            return None;
        }
        assert_eq!(status, 200, "{body}");
        Some(body)
    })
    .await;
    assert_eq!(body["term"], 2, "{body}");
    let last: Vec<Value> = (210..215)
        .map(|i| event(&format!("e{i:04}"), "t", None, json!({ "i": i })))
        .collect();
    publish_batch(&c, &a, "orders", &last).await;
    assert_eq!(take(&c, &a, "s", 5).await, ids(210, 215));
    eventually("b is fenced", Duration::from_secs(20), || async {
        let r = c
            .get(b.at("/v1/subscriptions/s/events?max=10&wait=0ms&consumer=x"))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["events"]
            .as_array()
            .is_none_or(|e| e.is_empty())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_by_itself_when_the_home_is_lost() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let (mut a, b) = home_and_standby(&files, &c, &["--failover-after", "2s"], 2).await;
    // Keys spread the events over both partitions.
    let events: Vec<Value> = (0..100)
        .map(|i| {
            let key = format!("k{}", i % 5);
            event(&format!("e{i:04}"), "t", Some(&key), json!({ "i": i }))
        })
        .collect();
    publish_batch(&c, &a, "orders", &events).await;
    eventually("b stored a's events", Duration::from_secs(20), || async {
        (stored_count(&c, &b.url, "orders").await >= 100).then_some(())
    })
    .await;
    let mut delivered_at_a = take(&c, &a, "s", 60).await;
    eventually("b has a's positions", Duration::from_secs(20), || async {
        let m = mesh(&c, &b).await;
        let r = m["subscription_replicas"]
            .as_array()?
            .iter()
            .find(|r| r["home"] == "a" && r["name"] == "s")?
            .clone();
        let total: u64 = r["positions"]
            .as_array()?
            .iter()
            .map(|p| p["next"].as_u64().unwrap_or(0))
            .sum();
        // Each partition's next is one past the last delivered origin offset.
        (total >= 60).then_some(())
    })
    .await;

    let killed = std::time::Instant::now();
    a.kill9();
    // No operator: b declares a lost (link down, then 2 s) and takes over.
    let rest = eventually(
        "b delivers s by itself",
        Duration::from_secs(40),
        || async {
            // Until the takeover, s does not exist in b (404).
            let r = common::try_get_json(
                &c,
                &b.at("/v1/subscriptions/s/events?max=100&wait=500ms&consumer=x"),
            )
            .await?;
            let evs = r["events"].as_array()?.clone();
            (!evs.is_empty()).then_some(evs)
        },
    )
    .await;
    eprintln!(
        "automatic takeover: first event at b {:?} after the kill",
        killed.elapsed()
    );
    common::ack(&c, &b.url, "s", "x", &rest).await;
    let mut at_b: Vec<String> = rest.iter().map(id_of).collect();
    if at_b.len() < 40 {
        at_b.extend(take(&c, &b, "s", 40 - at_b.len()).await);
    }
    assert!(common::pull(&c, &b.url, "s", "x", 10, 300).await.is_empty());
    // Every event delivered exactly once across the two clusters, per key in order.
    delivered_at_a.extend(at_b);
    let mut sorted = delivered_at_a.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ids(0, 100),
        "lost or duplicated: {delivered_at_a:?}"
    );
    let m = mesh(&c, &b).await;
    let r = m["subscription_replicas"][0].clone();
    assert_eq!(r["active"], "b", "{m}");
    assert_eq!(r["term"], 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_failover_drill_crashes_the_home_and_counts() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    wait_connected(&c, &a, "b").await;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"));
    cmd.args([
        "--url",
        &format!("a={}", a.url),
        "--url",
        &format!("b={}", b.url),
        "drill",
        "consumer-failover",
        "--home",
        "a",
        "--standby",
        "b",
        "--kill",
        &format!("kill -9 {}", a.pid()),
        "--events",
        "400",
        "--rate",
        "400",
        "--json",
        "--recovery-timeout",
        "60s",
    ])
    .env("MESHD_LOG", "warn");
    let report = meshd_chaos::drill::run_json_report(cmd)
        .await
        .expect("drill");
    println!("{report}");
    // a's node is gone for real (the drill's kill command).
    assert!(
        common::try_get_json(&c, &a.at("/healthz")).await.is_none(),
        "a still answers"
    );
    assert_eq!(report.acknowledged, 400, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.reordered, 0, "{report}");
    assert!(report.facts["takeover_ms"].is_u64(), "{report}");
    assert!(report.recovery_ms.is_some(), "{report}");
    let m = mesh(&c, &b).await;
    let r = m["subscription_replicas"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "meshd-drill-cf").cloned())
        .expect("the drill's subscription is replicated");
    assert_eq!(r["active"], "b", "{m}");
    // The drill posted its report to the nodes it drilled; b (alive) keeps it.
    let kept: meshd_core::api::DrillReportList =
        serde_json::from_value(common::get_json(&c, &b.at("/v1/drills/reports")).await)
            .expect("a drill report list");
    assert_eq!(kept.reports.len(), 1, "{kept:?}");
    assert_eq!(kept.reports[0].report, report);
}
