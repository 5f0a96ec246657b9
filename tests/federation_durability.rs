//! Federation durability and honesty, with real processes and the link emulator
//! (meshd-linkemu) between the bridges:
//! - the receiver's duplicate window survives a restart of its bridge (events in flight
//!   when it died are re-sent and dropped, none is stored twice);
//! - a link that is connected but makes no progress is reported stalled (state, metric,
//!   log line), never lag 0, and recovers;
//! - a link removed by a topology reload drains: the batch in flight is acknowledged
//!   before the link closes, so nothing is sent twice when it comes back.

mod common;
mod federation_support;

use std::time::Duration;

use common::{eventually, stored_count};
use federation_support::*;
use meshd_linkemu::{LinkConfig, LinkEmulator};
use serde_json::{json, Value};

fn events(range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| {
            common::event(
                &format!("e{i:05}"),
                "t",
                Some(&format!("k{}", i % 5)),
                json!({"i": i, "pad": "x".repeat(300)}),
            )
        })
        .collect()
}

/// Waits until the log file contains `needle`; panics with the log when it does not.
async fn wait_log(log: &std::path::Path, needle: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if t.contains(needle) {
            return t;
        }
        if std::time::Instant::now() > deadline {
            panic!("{needle:?} not logged within {secs}s; log:\n{t}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn stored_at_least(c: &reqwest::Client, node: &common::Meshd, n: u64, secs: u64) {
    eventually(
        &format!("{} stored {n} events", node.url),
        Duration::from_secs(secs),
        || async { (stored_count(c, &node.url, "orders").await >= n).then_some(()) },
    )
    .await;
}

async fn caught_up(c: &reqwest::Client, a: &common::Meshd, secs: u64) {
    eventually(
        "a's cursor to b caught up",
        Duration::from_secs(secs),
        || async {
            let l = link(c, a, "b").await;
            (l["state"] == "connected" && l["lag_events"] == 0).then_some(())
        },
    )
    .await;
}

/// Two clusters; a dials b through an emulator with `config`.
fn mesh_with_emulator(config: LinkConfig) -> (MeshFiles, LinkEmulator) {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &["b"]);
    let emu =
        LinkEmulator::start(files.advertised["b"], files.bind["b"], config).expect("emulator");
    (files, emu)
}

async fn setup(c: &reqwest::Client, a: &common::Meshd, b: &common::Meshd) {
    topic(c, a, "orders", 1).await;
    topic(c, b, "orders", 1).await;
    pull_subscription(c, b, "p", "orders").await;
    wait_connected(c, a, "b").await;
    wait_interest(c, a, "b", "b", "orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_receiver_keeps_its_window_and_is_not_sent_what_it_holds() {
    // 250 ms each way: an ack is on the wire for a quarter of a second.
    let (files, emu) = mesh_with_emulator(LinkConfig::with_delay(Duration::from_millis(250)));
    let c = common::client();
    let log = files.dir.path().join("ab.log");
    let a = files.start_args("a", &[], Some(&log));
    let mut b = files.start_args("b", &[], Some(&log));
    setup(&c, &a, &b).await;

    publish_batch(&c, &a, "orders", &events(0..100)).await;
    stored_at_least(&c, &b, 100, 20).await;
    caught_up(&c, &a, 20).await;

    // 100 more at a time: as soon as b stored them, cut the link, so that their ack (on
    // the wire for 250 ms) is lost. Whether the cut beat the ack is visible at a: its
    // cursor still lags after three round trips. If the ack won the race, heal and retry.
    let mut total = 100usize;
    let mut lost = false;
    for _ in 0..4 {
        publish_batch(&c, &a, "orders", &events(total..total + 100)).await;
        total += 100;
        stored_at_least(&c, &b, total as u64, 20).await;
        emu.set_cut(true);
        // Observing that no ack arrives needs time to pass: 1.5 s = 3 round trips.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if link(&c, &a, "b").await["lag_events"].as_u64().unwrap_or(0) > 0 {
            lost = true;
            break;
        }
        emu.set_cut(false);
        caught_up(&c, &a, 20).await;
    }
    assert!(lost, "could not cut the link while an ack was in flight");
    let sent_before = link(&c, &a, "b").await["events_sent"].as_u64().unwrap();
    b.kill9();
    let b = files.start_args("b", &[], Some(&log));
    let m = mesh(&c, &b).await;
    assert!(
        m["dedup_window"].as_u64().unwrap_or(0) >= total as u64,
        "the restarted bridge remembers the stored events: {m}"
    );
    emu.set_cut(false);

    // a's durable cursor is before the lost ack, but b tells a what it holds (its origin
    // marks, persisted with its events): a moves past them without sending them again.
    caught_up(&c, &a, 30).await;
    assert_eq!(
        stored_count(&c, &b.url, "orders").await,
        total as u64,
        "no event stored twice"
    );
    let la = link(&c, &a, "b").await;
    assert_eq!(
        la["events_sent"].as_u64(),
        Some(sent_before),
        "events b held were sent again: {la}\nlog:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(link(&c, &b, "a").await["duplicates"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_does_not_advance_is_stalled_then_recovers() {
    let (files, emu) = mesh_with_emulator(LinkConfig::default());
    let c = common::client();
    let log = files.dir.path().join("a.log");
    let a = files.start_args("a", &["--bridge-stall-after-ms", "800"], Some(&log));
    let b = files.start("b");
    setup(&c, &a, &b).await;
    publish_batch(&c, &a, "orders", &events(0..10)).await;
    stored_at_least(&c, &b, 10, 15).await;
    caught_up(&c, &a, 15).await;

    // Data packets are dropped; QUIC keep-alives and acks (small) still pass, so the
    // connection stays up while nothing advances.
    emu.set_max_datagram(Some(160));
    publish_batch(&c, &a, "orders", &events(10..60)).await;
    let l = eventually(
        "a reports the link stalled",
        Duration::from_secs(15),
        || async {
            let l = link(&c, &a, "b").await;
            (l["state"] == "stalled").then_some(l)
        },
    )
    .await;
    assert_eq!(l["stalled"], true, "{l}");
    assert_eq!(
        l["lag_events"], 50,
        "lag is the 50 unacknowledged events, not 0: {l}"
    );
    let metrics = common::get_text(&c, &a.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_federation_link_stalled{peer=\"b\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_federation_link_lag_events{peer=\"b\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_federation_link_up{peer=\"b\"} 1"),
        "still connected: {metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("link stalled"), "a logged the stall: {text}");
    assert_eq!(stored_count(&c, &b.url, "orders").await, 10);
    assert!(emu.counters().dropped_size > 0);

    // Data passes again: QUIC retransmits, the cursor moves, the stall clears.
    emu.set_max_datagram(None);
    stored_at_least(&c, &b, 60, 30).await;
    caught_up(&c, &a, 30).await;
    let l = link(&c, &a, "b").await;
    assert_eq!(l["stalled"], false, "{l}");
    assert_eq!(stored_count(&c, &b.url, "orders").await, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_link_drains_its_batches_in_flight() {
    // 400 ms each way: the ack of the last batch is still travelling when a reloads.
    let (mut files, _emu) = mesh_with_emulator(LinkConfig::with_delay(Duration::from_millis(400)));
    let c = common::client();
    let log = files.dir.path().join("a.log");
    let a = files.start_args("a", &[], Some(&log));
    let b = files.start("b");
    setup(&c, &a, &b).await;
    publish_batch(&c, &a, "orders", &events(0..100)).await;
    stored_at_least(&c, &b, 100, 20).await;
    caught_up(&c, &a, 20).await;

    publish_batch(&c, &a, "orders", &events(100..150)).await;
    stored_at_least(&c, &b, 150, 20).await;
    // Remove b from a's topology and reload at once.
    let saved = (files.advertised.clone(), files.links.clone());
    files.advertised.remove("b");
    files.links.clear();
    files.write_topology();
    sighup(&a);
    let text = wait_log(&log, "link drained", 15).await;
    assert!(
        text.contains("link drained: 1 batches in flight were acknowledged"),
        "the batch in flight was acknowledged before the close: {text}"
    );
    assert!(!text.contains("drain timed out"), "{text}");
    eventually(
        "the link is gone from a",
        Duration::from_secs(10),
        || async { link(&c, &a, "b").await.is_null().then_some(()) },
    )
    .await;

    // b comes back: a resumes after the drained batch, nothing is sent twice.
    (files.advertised, files.links) = saved;
    files.write_topology();
    sighup(&a);
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    publish_batch(&c, &a, "orders", &events(150..151)).await;
    stored_at_least(&c, &b, 151, 20).await;
    caught_up(&c, &a, 20).await;
    let lb = link(&c, &b, "a").await;
    assert_eq!(lb["duplicates"], 0, "{lb}");
    assert_eq!(lb["events_received"], 151, "{lb}");
    assert_eq!(stored_count(&c, &b.url, "orders").await, 151);
}
