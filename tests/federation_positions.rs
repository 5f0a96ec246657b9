//! Positions in origin terms across real `meshd node --topology` processes: a reroute
//! sends only what the receiver lacks, and a new subscription elsewhere starts where its
//! `start` says (latest: the origin's events since it was made; earliest: the retained
//! history), not at the origin's oldest event.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish, Sink};
use federation_support::*;
use serde_json::{json, Value};

fn events(from: usize, to: usize) -> Vec<Value> {
    (from..to)
        .map(|i| {
            let key = format!("k{}", i % 7);
            event(&format!("e{i:05}"), "t", Some(&key), json!({ "n": i }))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reroute_sends_only_what_the_receiver_lacks() {
    // a—b—c cost 2, a—c cost 10: c gets a's events through b until b dies; then the direct
    // link must start after what c already holds, not at a's oldest event.
    let files = triangle();
    let c = common::client();
    let sink = Sink::start(|_, _| 200).await;
    let (a, mut b, cc) = start_triangle(
        &c,
        &files,
        3,
        &webhook_subscription("all", "orders", &sink.url),
    )
    .await;
    let before = 3_000;
    for chunk in events(0, before).chunks(500) {
        publish_batch(&c, &a, "orders", chunk).await;
    }
    eventually(
        "c gets the first events through b",
        Duration::from_secs(60),
        || async { (unique_ids(&sink).len() >= before).then_some(()) },
    )
    .await;
    assert_eq!(link(&c, &a, "c").await["events_sent"], 0);

    b.kill9();
    wait_interest(&c, &a, "c", "c", "orders").await;
    let after = 200;
    publish_batch(&c, &a, "orders", &events(before, before + after)).await;
    eventually(
        "c gets the new events over the direct link",
        Duration::from_secs(30),
        || async { (unique_ids(&sink).len() >= before + after).then_some(()) },
    )
    .await;
    let want: Vec<String> = (0..before + after).map(|i| format!("e{i:05}")).collect();
    assert_eq!(unique_ids(&sink), want);
    // Nothing was in flight when b died: the application got every event once.
    assert_eq!(sink.ids().len(), before + after, "events delivered twice");
    let ac = link(&c, &a, "c").await;
    assert_eq!(
        ac["events_sent"], after,
        "the direct link sent old events again: {ac}"
    );
    let ca = link(&c, &cc, "a").await;
    assert_eq!(ca["duplicates"], 0, "{ca}");
    // Per key, the order of publication held across the reroute.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for r in sink.received() {
        let n: u64 = r.header("ce-id").unwrap()[1..].parse().unwrap();
        let key = r.header("ce-partitionkey").unwrap().to_string();
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(prev < n, "key {key}: e{n:05} after e{prev:05}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscription_elsewhere_starts_where_its_start_says() {
    let files = MeshFiles::new(&["a", "c"], &[("a", "c", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let cc = files.start("c");
    for n in [&a, &cc] {
        topic(&c, n, "orders", 1).await;
        topic(&c, n, "history", 1).await;
    }
    // Stored in a before anyone in c wanted them.
    publish_batch(&c, &a, "orders", &events(0, 300)).await;
    publish_batch(&c, &a, "history", &events(0, 50)).await;
    wait_connected(&c, &a, "c").await;

    // latest: only what a stores from now on.
    let latest = Sink::start(|_, _| 200).await;
    subscribe(&c, &cc, "latest", "orders", None, &latest.url).await;
    wait_interest(&c, &a, "c", "c", "orders").await;
    publish(&c, &a.url, "orders", &events(300, 400)).await;
    eventually(
        "c's latest subscription gets the new events",
        Duration::from_secs(20),
        || async { (unique_ids(&latest).len() >= 100).then_some(()) },
    )
    .await;
    // One partition, read in order: an old event would have come before the new ones.
    let want: Vec<String> = (300..400).map(|i| format!("e{i:05}")).collect();
    assert_eq!(
        unique_ids(&latest),
        want,
        "old events replayed into a latest subscription"
    );
    assert_eq!(link(&c, &a, "c").await["events_sent"], 100);

    // earliest: a's retained history.
    let earliest = Sink::start(|_, _| 200).await;
    let r = c
        .post(cc.at("/v1/subscriptions"))
        .json(&json!({
            "name": "earliest", "topic": "history", "start": "earliest",
            "sink": { "webhook": { "url": earliest.url } },
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    eventually(
        "c's earliest subscription gets a's history",
        Duration::from_secs(20),
        || async { (unique_ids(&earliest).len() >= 50).then_some(()) },
    )
    .await;
    let want: Vec<String> = (0..50).map(|i| format!("e{i:05}")).collect();
    assert_eq!(unique_ids(&earliest), want);
}
