//! Memory benchmark (issue 17, item 5): resident memory of a `meshd node` (a separate
//! process, embedded store, fsync=never) per subscription, idle and under load.
//!
//! It creates MEM_TOPICS topics (MEM_PARTITIONS partitions each) and MEM_SUBS subscriptions
//! (MEM_KIND `pull` or `push`; subscription `i` is on topic `i % MEM_TOPICS` with a distinct
//! pattern matching ~1 % of events), reading VmRSS from /proc/<pid>/status:
//! - `base`: after the topics and one warm-up subscription;
//! - `idle`: after the rest, once RSS stopped moving; per subscription = (idle − base) /
//!   (MEM_SUBS − 1);
//! - `load`: the highest RSS seen while MEM_LOAD_SECS of 100-event batches go to every
//!   topic in turn and (pull) 8 tasks pull and ack every subscription in turn, or (push) a
//!   local webhook receiver answers 204; and RSS after the load.
//!
//! Run: `cargo build --release --bench memory` then the binary under target/release/deps
//! (or `cargo bench --bench memory`). BENCH_MESHD_BIN runs another `meshd` binary (the
//! main branch's, for a before/after in one session).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

#[path = "support/mod.rs"]
mod support;
use support::env_u64;
use support::meshd::{connect, create_topic, post, pull_and_ack, start_meshd};

/// Keys of the published events; each subscription matches one (~1 %).
const KEYS: u64 = 100;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// RSS once it stopped moving (two samples a second apart within 0.5 %), at most 20 s.
async fn settled_rss_kb(pid: u32) -> u64 {
    let mut last = rss_kb(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kb(pid);
        if now.abs_diff(last) * 200 <= last {
            return now;
        }
        last = now;
    }
    last
}

fn spec(i: u64, topics: u64, push: Option<&str>) -> serde_json::Value {
    let sink = match push {
        Some(url) => json!({"webhook": {"url": url}}),
        None => json!({"pull": {"ack_deadline_ms": 60_000}}),
    };
    json!({"name": format!("s{i}"), "topic": format!("t{}", i % topics),
        "filter": {"pattern": {"data": {"k": [i % KEYS],
            "n": [{"numeric": ["<", 1_000_000 + i]}]}}},
        "sink": sink})
}

/// Creates subscriptions `range` over 8 connections; returns the seconds it took.
async fn create_subs(
    url: &str,
    range: std::ops::Range<u64>,
    topics: u64,
    push: Option<&str>,
) -> f64 {
    let t0 = Instant::now();
    let addr = url.trim_start_matches("http://").to_string();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (addr, range, push) = (addr.clone(), range.clone(), push.map(str::to_string));
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&addr).await;
            for i in range.filter(|i| i % 8 == w) {
                let body = spec(i, topics, push.as_deref()).to_string();
                let st = post(
                    &mut s,
                    &addr,
                    "/v1/subscriptions",
                    "application/json",
                    Bytes::from(body),
                )
                .await;
                assert!((200..300).contains(&st), "creating subscription s{i}: {st}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed().as_secs_f64()
}

/// A local webhook receiver answering 204; its URL.
async fn receiver(count: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let c = count.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let topics = env_u64("MEM_TOPICS", 1).max(1);
    let subs = env_u64("MEM_SUBS", 1000).max(2);
    let partitions = env_u64("MEM_PARTITIONS", 1) as u32;
    let load_secs = env_u64("MEM_LOAD_SECS", 20);
    let kind = std::env::var("MEM_KIND").unwrap_or_else(|_| "pull".into());
    let delivered = Arc::new(AtomicU64::new(0));
    let hook = match kind.as_str() {
        "push" => Some(receiver(delivered.clone()).await),
        _ => None,
    };

    let dir = tempfile::tempdir().unwrap();
    let (guard, url) = start_meshd(dir.path(), "never", &[]);
    let pid = guard.0.id();
    let boot = settled_rss_kb(pid).await;
    let t0 = Instant::now();
    for t in 0..topics {
        create_topic(&url, &format!("t{t}"), partitions).await;
    }
    let topic_secs = t0.elapsed().as_secs_f64();
    create_subs(&url, 0..1, topics, hook.as_deref()).await;
    let base = settled_rss_kb(pid).await;
    let create_secs = create_subs(&url, 1..subs, topics, hook.as_deref()).await;
    let idle = settled_rss_kb(pid).await;
    let per_sub = (idle.saturating_sub(base)) as f64 / (subs - 1) as f64;
    println!(
        "kind={kind} topics={topics} partitions={partitions} subs={subs} \
         boot_rss={boot}KB base_rss={base}KB idle_rss={idle}KB \
         per_sub_idle={per_sub:.1}KB topics_created_in={topic_secs:.1}s subs_created_in={create_secs:.1}s ({:.0}/s)",
        (subs - 1) as f64 / create_secs
    );
    if load_secs == 0 {
        return;
    }

    // Load: publishers over all topics, pullers over all subscriptions.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let addr = url.trim_start_matches("http://").to_string();
    for c in 0..2u64 {
        let (addr, stop, published) = (addr.clone(), stop.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&addr).await;
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let topic = i % topics;
                let evs: Vec<_> = (0..100u64)
                    .map(|j| {
                        json!({"specversion": "1.0", "id": format!("e{c}-{i}-{j}"), "source": "/bench",
                            "type": "bench.event", "data": {"k": (i * 100 + j) % KEYS, "n": 1,
                            "payload": "x".repeat(200)}})
                    })
                    .collect();
                let body = serde_json::Value::from(evs).to_string();
                let path = format!("/v1/topics/t{topic}/events");
                let st = post(&mut s, &addr, &path, "application/cloudevents-batch+json", Bytes::from(body)).await;
                assert_eq!(st, 200, "publish");
                published.fetch_add(100, Ordering::Relaxed);
                i += 2;
            }
        }));
    }
    if hook.is_none() {
        for w in 0..8u64 {
            let (url, stop, delivered) = (url.clone(), stop.clone(), delivered.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let s = i % subs;
                    i += 8;
                    let got = pull_and_ack(&http, &url, &format!("s{s}"), 100).await;
                    delivered.fetch_add(got, Ordering::Relaxed);
                }
            }));
        }
    }
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(load_secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kb(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let after = settled_rss_kb(pid).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "load: {:.0} ev/s published, {:.0} deliveries/s, peak_rss={peak}KB \
         per_sub_peak={:.1}KB after_rss={after}KB",
        published.load(Ordering::Relaxed) as f64 / secs,
        delivered.load(Ordering::Relaxed) as f64 / secs,
        peak.saturating_sub(base) as f64 / (subs - 1) as f64,
    );
    drop(guard);
}
