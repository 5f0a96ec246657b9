//! Federation under faults, with real processes: a partition of a link under load (a
//! userspace UDP forwarder that drops everything, then forwards again) and restarts of the
//! source bridge, both before and in the middle of a stream.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish, Sink};
use federation_support::*;
use serde_json::json;

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    let mut v: Vec<String> = range.map(|i| format!("e{i:05}")).collect();
    v.sort();
    v
}

async fn publish_range(c: &reqwest::Client, url: &str, range: std::ops::Range<usize>) {
    let events: Vec<_> = range
        .map(|i| {
            event(
                &format!("e{i:05}"),
                "t",
                Some(&format!("k{}", i % 7)),
                json!({"i": i}),
            )
        })
        .collect();
    for chunk in events.chunks(20) {
        publish(c, url, "orders", chunk).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_under_load_then_heal_loses_nothing() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &["b"]);
    // a dials b through the forwarder.
    let fwd = UdpForwarder::start(files.advertised["b"], files.bind["b"]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    topic(&c, &a, "orders", 2).await;
    topic(&c, &b, "orders", 2).await;
    let sink = Sink::start(|_, _| 200).await;
    subscribe(&c, &b, "all", "orders", None, &sink.url).await;
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;

    publish_range(&c, &a.url, 0..200).await;
    eventually("some events crossed", Duration::from_secs(15), || async {
        (!sink.ids().is_empty()).then_some(())
    })
    .await;
    fwd.cut();
    // Keep publishing while the link is cut, long enough for QUIC to declare it dead.
    publish_range(&c, &a.url, 200..400).await;
    eventually("a sees the link down", Duration::from_secs(15), || async {
        let l = link(&c, &a, "b").await;
        (l["state"] != "connected" && l["state"] != "stalled").then_some(())
    })
    .await;
    let during = unique_ids(&sink).len();
    assert!(
        during < 400,
        "the cut did not hold: {during} events arrived"
    );
    publish_range(&c, &a.url, 400..500).await;
    fwd.restore();
    eventually(
        "all 500 events arrive after the heal",
        Duration::from_secs(25),
        || async { (unique_ids(&sink).len() >= 500).then_some(()) },
    )
    .await;
    assert_eq!(unique_ids(&sink), ids(0..500), "no loss");
    let l = link(&c, &a, "b").await;
    assert!(l["reconnects"].as_u64().unwrap() >= 1, "{l}");
    // Duplicates are counted (possibly zero if no ack was lost in the cut).
    let lb = link(&c, &b, "a").await;
    assert!(lb["duplicates"].is_u64(), "{lb}");
    eprintln!(
        "partition: {} deliveries for 500 events, receiver dropped {} duplicates",
        sink.ids().len(),
        lb["duplicates"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_bridge_restart_resumes_from_its_cursor() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let mut a = files.start("a");
    let b = files.start("b");
    topic(&c, &a, "orders", 1).await;
    topic(&c, &b, "orders", 1).await;
    let sink = Sink::start(|_, _| 200).await;
    subscribe(&c, &b, "all", "orders", None, &sink.url).await;
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;

    // 1. Everything replicated and acknowledged, then a restarts: nothing is sent again.
    publish_range(&c, &a.url, 0..300).await;
    eventually("first 300 arrive", Duration::from_secs(15), || async {
        (unique_ids(&sink).len() >= 300).then_some(())
    })
    .await;
    eventually("a's cursor caught up", Duration::from_secs(10), || async {
        (link(&c, &a, "b").await["lag_events"] == 0).then_some(())
    })
    .await;
    a.kill9();
    let a = files.start("a");
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    publish_range(&c, &a.url, 300..400).await;
    eventually("next 100 arrive", Duration::from_secs(15), || async {
        (unique_ids(&sink).len() >= 400).then_some(())
    })
    .await;
    let lb = link(&c, &b, "a").await;
    assert_eq!(
        lb["duplicates"], 0,
        "resumed from the durable cursor, not from the start: {lb}"
    );
    assert_eq!(lb["events_received"], 400, "{lb}");

    // 2. a killed in the middle of a stream: after the restart nothing is lost.
    let mut a = a;
    publish_range(&c, &a.url, 400..1400).await;
    eventually(
        "the stream is under way",
        Duration::from_secs(15),
        || async { (unique_ids(&sink).len() > 400).then_some(()) },
    )
    .await;
    a.kill9();
    let a = files.start("a");
    eventually(
        "all 1400 arrive after the restart",
        Duration::from_secs(25),
        || async { (unique_ids(&sink).len() >= 1400).then_some(()) },
    )
    .await;
    assert_eq!(unique_ids(&sink), ids(0..1400));
    let lb = link(&c, &b, "a").await;
    eprintln!(
        "restart mid-stream: receiver got {} events for 1400, dropped {} duplicates",
        lb["events_received"], lb["duplicates"]
    );
    drop(a);
}
