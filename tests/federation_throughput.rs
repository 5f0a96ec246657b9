//! A rough replication throughput measurement (ignored by default; run with
//! `cargo test --test federation_throughput -- --ignored --nocapture`).

mod common;
mod federation_support;

use std::time::{Duration, Instant};

use common::{event, eventually, publish};
use federation_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn replication_throughput_one_link() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    topic(&c, &a, "orders", 1).await;
    topic(&c, &b, "orders", 1).await;
    // A pull subscription in b creates the interest without webhook costs.
    let r = c
        .post(b.at("/v1/subscriptions"))
        .json(&json!({"name": "p", "topic": "orders", "group": "p", "sink": {"pull": {}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    let total = 2_000usize;
    let events: Vec<_> = (0..total)
        .map(|i| event(&format!("e{i}"), "t", None, json!({"i": i})))
        .collect();
    let start = Instant::now();
    for chunk in events.chunks(1000) {
        publish(&c, &a.url, "orders", chunk).await;
    }
    let published = start.elapsed();
    eventually("b stored everything", Duration::from_secs(120), || async {
        (common::stored_count(&c, &b.url, "orders").await >= total as u64).then_some(())
    })
    .await;
    let all = start.elapsed();
    eprintln!(
        "published {total} in {published:?}; replicated and stored in b after {all:?} ({:.0} events/s end to end)",
        total as f64 / all.as_secs_f64()
    );
}
