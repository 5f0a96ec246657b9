//! Link health with real processes (two clusters, `a` dials `b` through the link emulator):
//! - the lag is measured at the source from its end offsets and the link's durable cursor,
//!   connected or not: during a cut it keeps growing (events and age) with every event
//!   published, in `/v1/mesh` and
//!   `/metrics`; after the heal it returns to 0 and `last_error` is cleared (kept as
//!   `previous_error`);
//! - a link whose peer wants 1 % of a topic sends progress marks instead of empty batches:
//!   its bytes on the wire (measured by the emulator, both directions) are a small fraction
//!   of an unfiltered link's for the same publishing pattern, and `bytes_sent` counts every
//!   byte the link writes.
//!
//! Every process is killed by its guard, also on panic.

mod common;
mod federation_support;

use std::time::Duration;

use common::{eventually, stored_count};
use federation_support::*;
use meshd_linkemu::{LinkConfig, LinkEmulator};
use serde_json::{json, Value};

/// Two clusters; a dials b through an emulator.
fn mesh_with_emulator() -> (MeshFiles, LinkEmulator) {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &["b"]);
    let emu = LinkEmulator::start(
        files.advertised["b"],
        files.bind["b"],
        LinkConfig::default(),
    )
    .expect("emulator");
    (files, emu)
}

fn events(prefix: &str, range: std::ops::Range<usize>, rare_every: usize) -> Vec<Value> {
    range
        .map(|i| {
            let ty = if rare_every > 0 && i % rare_every == 0 {
                "rare"
            } else {
                "common"
            };
            common::event(
                &format!("{prefix}{i:06}"),
                ty,
                Some(&format!("k{}", i % 8)),
                json!({"i": i, "pad": "x".repeat(300)}),
            )
        })
        .collect()
}

/// Polls `node`'s link to b until `f` holds; panics with the last snapshot after `secs`.
async fn until_link(
    c: &reqwest::Client,
    node: &common::Meshd,
    what: &str,
    secs: u64,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let l = link(c, node, "b").await;
        if f(&l) {
            return l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}; the link: {l}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_grows_while_the_link_is_down_and_the_error_clears_on_recovery() {
    let (files, emu) = mesh_with_emulator();
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    topic(&c, &a, "orders", 2).await;
    topic(&c, &b, "orders", 2).await;
    pull_subscription(&c, &b, "p", "orders").await;
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    publish_batch(&c, &a, "orders", &events("e", 0..10, 0)).await;
    until_link(&c, &a, "caught up", 20, |l| {
        l["lag_events"] == 0 && l["state"] == "connected"
    })
    .await;

    emu.set_cut(true);
    // QUIC declares the link dead after its 4 s idle timeout.
    let down = until_link(&c, &a, "a sees the link down", 20, |l| {
        l["state"] != "connected"
    })
    .await;
    publish_batch(&c, &a, "orders", &events("e", 10..110, 0)).await;
    // (Whether the ack of the first 10 beat the cut is a race: they may still count.)
    let l = until_link(
        &c,
        &a,
        "lag counts the 100 events published during the cut",
        10,
        |l| l["lag_events"].as_u64().unwrap_or(0) >= 100,
    )
    .await;
    let during = l["lag_events"].as_u64().unwrap();
    assert!(during == 100 || during == 110, "{l}");
    let first_age = l["lag_seconds"].as_f64().unwrap();
    // The age of the oldest unsent event grows with time while the link stays down.
    let l = until_link(&c, &a, "lag_seconds grows while down", 20, |l| {
        l["lag_seconds"].as_f64().unwrap_or(0.0) >= first_age + 1.5
    })
    .await;
    assert_eq!(l["lag_events"], during, "{l}");
    publish_batch(&c, &a, "orders", &events("e", 110..160, 0)).await;
    let l = until_link(&c, &a, "lag grows with the backlog", 10, |l| {
        l["lag_events"] == during + 50
    })
    .await;
    assert_ne!(l["state"], "connected", "{l}");
    assert!(
        l["last_error"].is_string(),
        "a link that is down says why: {l}"
    );
    assert_eq!(l["stalled"], false, "down is not stalled: {l}");
    let metrics = common::get_text(&c, &a.at("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "meshd_federation_link_lag_events{{peer=\"b\"}} {}",
            during + 50
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_federation_link_up{peer=\"b\"} 0"),
        "{metrics}"
    );
    eprintln!("down: {down}\nduring the cut: {l}");

    emu.set_cut(false);
    let l = until_link(&c, &a, "caught up after the heal", 30, |l| {
        l["state"] == "connected" && l["lag_events"] == 0
    })
    .await;
    assert_eq!(l["lag_seconds"], 0.0, "{l}");
    assert!(
        l["last_error"].is_null(),
        "a healthy link shows no error: {l}"
    );
    assert!(l["last_error_at_ms"].is_null(), "{l}");
    assert!(
        l["previous_error"]["error"].is_string(),
        "the error it recovered from is kept: {l}"
    );
    assert!(
        l["previous_error"]["cleared_at_ms"].as_u64() >= l["previous_error"]["at_ms"].as_u64(),
        "{l}"
    );
    assert_eq!(stored_count(&c, &b.url, "orders").await, 160);
}

/// Publishes `evs` into `topic` of `a` one event per request, 4 requests at a time, the
/// way a stream of independent producers arrives: the source sees many small appends.
async fn trickle(c: &reqwest::Client, a: &common::Meshd, topic: &str, evs: Vec<Value>) {
    let chunks: Vec<Vec<Value>> = evs.chunks(1).map(|c| c.to_vec()).collect();
    let mut lanes: Vec<Vec<Vec<Value>>> = vec![Vec::new(); 4];
    for (i, ch) in chunks.into_iter().enumerate() {
        lanes[i % 4].push(ch);
    }
    let mut tasks = Vec::new();
    for lane in lanes {
        let (c, url) = (c.clone(), a.at(&format!("/v1/topics/{topic}/events")));
        tasks.push(tokio::spawn(async move {
            for ch in lane {
                let r = c
                    .post(&url)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(Value::from(ch).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

struct Phase {
    wire_bytes: u64,
    datagrams: u64,
    bytes_sent: u64,
    bytes_received_by_b: u64,
    batches: u64,
    progress: u64,
    events: u64,
}

/// Runs one phase: publishes `evs` into `topic`, waits until b stored `expect` of them and
/// a's cursor caught up, and returns what crossed the link meanwhile.
async fn phase(
    c: &reqwest::Client,
    a: &common::Meshd,
    b: &common::Meshd,
    emu: &LinkEmulator,
    topic: &str,
    evs: Vec<Value>,
    expect: u64,
) -> Phase {
    let la0 = link(c, a, "b").await;
    let lb0 = link(c, b, "a").await;
    let w0 = emu.counters();
    trickle(c, a, topic, evs).await;
    eventually(
        &format!("b stored {expect} events of {topic}"),
        Duration::from_secs(120),
        || async { (stored_count(c, &b.url, topic).await >= expect).then_some(()) },
    )
    .await;
    until_link(c, a, "a's cursor caught up", 60, |l| l["lag_events"] == 0).await;
    let la = link(c, a, "b").await;
    let lb = link(c, b, "a").await;
    let w = emu.counters();
    let d = |v: &Value, v0: &Value, k: &str| v[k].as_u64().unwrap() - v0[k].as_u64().unwrap();
    Phase {
        wire_bytes: w.bytes - w0.bytes,
        datagrams: w.forwarded - w0.forwarded,
        bytes_sent: d(&la, &la0, "bytes_sent"),
        bytes_received_by_b: d(&lb, &lb0, "bytes_received"),
        batches: d(&la, &la0, "batches_sent"),
        progress: d(&la, &la0, "progress_sent"),
        events: d(&la, &la0, "events_sent"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_percent_link_costs_a_small_fraction_of_an_unfiltered_one() {
    const N: usize = 4000;
    let (files, emu) = mesh_with_emulator();
    let c = common::client();
    let a = files.start_args("a", &["--fsync", "never"], None);
    let b = files.start_args("b", &["--fsync", "never"], None);
    for t in ["all", "few"] {
        topic(&c, &a, t, 4).await;
        topic(&c, &b, t, 4).await;
    }
    pull_subscription(&c, &b, "all", "all").await;
    let r = c
        .post(b.at("/v1/subscriptions"))
        .json(
            &json!({"name": "few", "topic": "few", "group": "few", "sink": {"pull": {}},
                      "filter": {"exact": {"type": "rare"}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "all").await;
    wait_interest(&c, &a, "b", "b", "few").await;

    let all = phase(&c, &a, &b, &emu, "all", events("all", 0..N, 0), N as u64).await;
    // 1 % of the events are wanted.
    let few = phase(
        &c,
        &a,
        &b,
        &emu,
        "few",
        events("few", 0..N, 100),
        (N / 100) as u64,
    )
    .await;
    let ratio = few.wire_bytes as f64 / all.wire_bytes as f64;
    eprintln!(
        "unfiltered: {} B on the wire ({} datagrams), bytes_sent {}, b read {}, {} batches, {} events\n\
         1 % interest: {} B on the wire ({} datagrams), bytes_sent {}, b read {}, {} batches, {} progress frames, {} events\n\
         ratio {:.2} %",
        all.wire_bytes, all.datagrams, all.bytes_sent, all.bytes_received_by_b, all.batches, all.events,
        few.wire_bytes, few.datagrams, few.bytes_sent, few.bytes_received_by_b, few.batches, few.progress, few.events,
        ratio * 100.0
    );
    assert_eq!(all.events, N as u64);
    assert_eq!(
        few.events,
        (N / 100) as u64,
        "only the wanted events crossed"
    );
    assert!(
        few.batches <= few.events,
        "no batch without events: {} batches for {} events",
        few.batches,
        few.events
    );
    assert!(few.progress > 0, "the cursor moved by progress marks");
    // What the link wrote is what the peer read (frames and prefixes), and it is all of
    // the events' bytes plus framing, below what QUIC put on the wire. The two counters
    // are read one after the other while control frames (progress, marks) keep flowing,
    // so one small frame may be in flight at either reading: allow that, no more.
    const IN_FLIGHT: u64 = 512;
    for (name, p) in [("1 %", &few), ("unfiltered", &all)] {
        assert!(
            p.bytes_sent.abs_diff(p.bytes_received_by_b) <= IN_FLIGHT,
            "{name}: sent {} but the peer read {}",
            p.bytes_sent,
            p.bytes_received_by_b
        );
    }
    assert!(all.bytes_sent > (N as u64) * 300 && all.bytes_sent < all.wire_bytes);
    assert!(
        ratio <= 0.03,
        "a 1 % link must cost at most 3 % of an unfiltered one, got {:.2} %",
        ratio * 100.0
    );
}
