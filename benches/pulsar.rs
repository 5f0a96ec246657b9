//! Pulsar-store benchmark: `meshd node --store pulsar://` against the official Python
//! Pulsar client (`pulsar-client`, async producer) on the same `pulsar-lite` broker, in
//! the same run.
//!
//! Rows, in this order (peer first, then meshd, for each kind of load):
//! - the client, unbatched: `send_async`, one message per entry, 4 producers (one per
//!   topic, as meshd has one per partition), 1000 in flight each;
//! - meshd, 1-event requests over `BENCH_CONNS` (64) keep-alive HTTP/1.1 connections;
//! - the client with its default batching on;
//! - meshd, 100-event requests over 16 connections;
//! - meshd at half the maximum rate just measured (open loop, latency from the scheduled
//!   send), for 1-event and 100-event requests;
//! - meshd publish→webhook latency at 1000 events/s.
//!
//! Then the ratios meshd / client. With `BENCH_LONG_SECS=600` it then publishes 1-event
//! requests at full load for that long and reports errors and the slowest request
//! (an append reaching the 5 s operation timeout answers 503).
//!
//! Run: `cargo bench --bench pulsar` (env: BENCH_SECS=10 per row, BENCH_CONNS=64,
//! BENCH_LONG_SECS=0). Needs `pulsar-lite` and `pulsar-client` (PyPI); the client runs
//! `benches/support/pulsar_peer.py`.

use std::process::Command;

#[path = "support/mod.rs"]
mod support;
use support::env_u64;
use support::meshd::{
    create_topic, meshd_publish, meshd_push_latency, publish_load, start_meshd, start_pulsar_lite,
};

struct Row {
    system: &'static str,
    scenario: String,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The Python client's result for one run.
struct Peer {
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn peer(url: &str, prefix: &str, secs: u64, batched: bool) -> Peer {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/support/pulsar_peer.py"
    );
    let out = Command::new("python3")
        .args([
            script,
            url,
            prefix,
            &secs.to_string(),
            "4",
            if batched { "batched" } else { "unbatched" },
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "pulsar_peer.py gave no result (pip install pulsar-client): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).expect("peer JSON");
    assert_eq!(v["failed"], 0, "the client's sends failed: {line}");
    Peer {
        events_per_sec: v["events_per_sec"].as_f64().unwrap(),
        p50_ms: v["p50_ms"].as_f64().unwrap(),
        p99_ms: v["p99_ms"].as_f64().unwrap(),
    }
}

const CLIENT: &str = "Python pulsar-client 3.x (async producer)";
const MESHD: &str = "meshd node, Pulsar store";

async fn run(secs: u64, conns: u64, long_secs: u64) {
    let pdir = tempfile::tempdir().unwrap();
    let Some((_broker, purl)) = start_pulsar_lite(pdir.path()) else {
        panic!("pulsar-lite not found or did not start (pip install pulsar-lite)");
    };
    let dir = tempfile::tempdir().unwrap();
    let (_node, url) = start_meshd(dir.path(), "always", &["--store", &purl]);
    create_topic(&url, "bench", 4).await;
    let mut rows = Vec::new();

    let p1 = peer(&purl, "peer-unbatched", secs, false);
    eprintln!("client unbatched: {:.0} msg/s", p1.events_per_sec);
    rows.push(Row {
        system: CLIENT,
        scenario: "unbatched, 4 producers, ≤1000 in flight each".into(),
        events_per_sec: p1.events_per_sec,
        p50_ms: p1.p50_ms,
        p99_ms: p1.p99_ms,
    });
    let (single, h) = meshd_publish(&url, 1, conns, secs).await;
    eprintln!("meshd 1-event: {single:.0} ev/s");
    rows.push(Row {
        system: MESHD,
        scenario: format!("1-event requests, {conns} connections"),
        events_per_sec: single,
        p50_ms: h.pct(0.5),
        p99_ms: h.pct(0.99),
    });
    let p2 = peer(&purl, "peer-batched", secs, true);
    eprintln!("client batched: {:.0} msg/s", p2.events_per_sec);
    rows.push(Row {
        system: CLIENT,
        scenario: "batching on (defaults), 4 producers".into(),
        events_per_sec: p2.events_per_sec,
        p50_ms: p2.p50_ms,
        p99_ms: p2.p99_ms,
    });
    let bconns = conns.min(16);
    let (batched, h) = meshd_publish(&url, 100, bconns, secs).await;
    eprintln!("meshd 100-event: {batched:.0} ev/s");
    rows.push(Row {
        system: MESHD,
        scenario: format!("100-event requests, {bconns} connections"),
        events_per_sec: batched,
        p50_ms: h.pct(0.5),
        p99_ms: h.pct(0.99),
    });
    let mut half_errors = 0;
    for (batch, c, max) in [(1u64, conns, single), (100, bconns, batched)] {
        let requests = max / 2.0 / batch as f64;
        let load = publish_load(&url, "bench", batch, c, secs, Some(requests)).await;
        half_errors += load.errors;
        rows.push(Row {
            system: MESHD,
            scenario: format!(
                "{batch}-event requests at half that rate ({:.0} ev/s offered, open loop, {c} connections)",
                max / 2.0
            ),
            events_per_sec: load.events_per_sec,
            p50_ms: load.hist.pct(0.5),
            p99_ms: load.hist.pct(0.99),
        });
    }
    let h = meshd_push_latency(&url, 1000, secs, "lat1000").await;
    rows.push(Row {
        system: MESHD,
        scenario: "publish→webhook latency at 1000 ev/s".into(),
        events_per_sec: 1000.0,
        p50_ms: h.pct(0.5),
        p99_ms: h.pct(0.99),
    });

    println!(
        "ratios meshd / client, same run: 1-event requests {:.2} ({:.0} / {:.0}); 100-event requests {:.2} ({:.0} / {:.0}); errors at half rate: {half_errors}",
        single / p1.events_per_sec,
        single,
        p1.events_per_sec,
        batched / p2.events_per_sec,
        batched,
        p2.events_per_sec
    );
    println!();
    println!("| system | scenario | events/s | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} |",
            r.system, r.scenario, r.events_per_sec, r.p50_ms, r.p99_ms
        );
    }

    if long_secs > 0 {
        eprintln!("long run: {long_secs} s of 1-event requests at full load");
        let load = publish_load(&url, "bench", 1, conns, long_secs, None).await;
        println!();
        println!(
            "long run, {long_secs} s, 1-event requests, {conns} connections: {:.0} ev/s, p50 {:.3} ms, p99 {:.3} ms, p99.99 {:.3} ms, slowest {:.3} ms, requests ≥ 5 s: {}, non-200 answers: {}",
            load.events_per_sec,
            load.hist.pct(0.5),
            load.hist.pct(0.99),
            load.hist.pct(0.9999),
            load.hist.max_ms(),
            load.hist.at_least(5000.0),
            load.errors
        );
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("BENCH_SECS", 10);
    let conns = env_u64("BENCH_CONNS", 64);
    let long_secs = env_u64("BENCH_LONG_SECS", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(secs, conns, long_secs));
}
