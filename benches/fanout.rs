//! Fan-out benchmark: one topic, 1 / 100 / 1,000 pull subscriptions with distinct patterns
//! each matching ~1 % of events, on meshd (a separate `meshd node` process, embedded store,
//! fsync=never) and on NATS JetStream (a separate `nats-server -js`, file storage) with the
//! same number of filtered pull consumers, in the same run.
//!
//! Per subscription count it publishes BENCH_EVENTS events (100-event requests) while every
//! subscription is pulled and acked until each has received all its events, and reports:
//! end-to-end throughput (events published / time until the last subscription has all its
//! events), the ratio to the 1-subscription run, and the server's CPU per published event
//! (utime + stime of its process over the run, from /proc).
//!
//! Run: `cargo bench --bench fanout` (env: BENCH_EVENTS=20000, BENCH_SUBS=1,100,1000;
//! BENCH_NATS=0 skips JetStream; BENCH_NODE_ARGS adds `meshd node` arguments).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

#[path = "support/mod.rs"]
mod support;
use support::meshd::{pull_and_ack, start_meshd};
use support::{env_u64, start_nats};

/// Distinct keys: each subscription matches one key, so ~1 % of events.
const KEYS: u64 = 100;

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

struct Row {
    system: &'static str,
    subs: u64,
    secs: f64,
    cpu_us_per_event: f64,
}

fn key_of(i: u64) -> u64 {
    (i * 7919) % KEYS
}

async fn meshd_run(subs: u64, events: u64) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let (guard, url) = start_meshd(dir.path(), "never", &[]);
    let pid = guard.0.id();
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{url}/v1/topics/fan"))
        .json(&json!({"partitions": 4}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    for s in 0..subs {
        // Distinct patterns: the key picks ~1 %, the always-true bound makes each unique.
        let spec = json!({"name": format!("s{s}"), "topic": "fan", "start": "earliest",
            "filter": {"pattern": {"data": {"k": [s % KEYS],
                "n": [{"numeric": ["<", 1_000_000 + s]}]}}},
            "sink": {"pull": {"ack_deadline_ms": 60_000}}});
        let r = http
            .post(format!("{url}/v1/subscriptions"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let want = want_per_key(events);
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let publisher = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
                let batch: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        json!({"specversion": "1.0", "id": format!("e{i}"),
                        "source": "/bench", "type": "fan",
                        "datacontenttype": "application/json",
                        "data": {"k": key_of(i), "n": 0, "payload": "x".repeat(200)}})
                    })
                    .collect();
                let r = http
                    .post(format!("{url}/v1/topics/fan/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        })
    };
    // Pull every subscription until it has its events: 16 pullers share the list.
    let done = Arc::new(AtomicU64::new(0));
    let mut pullers = Vec::new();
    let workers = 16.min(subs);
    for w in 0..workers {
        let (http, url, done) = (http.clone(), url.clone(), done.clone());
        let mine: Vec<(u64, u64)> = (0..subs)
            .filter(|s| s % workers == w)
            .map(|s| (s, want.get(&(s % KEYS)).copied().unwrap_or(0)))
            .collect();
        pullers.push(tokio::spawn(async move {
            let mut left: Vec<(u64, u64)> = mine;
            while !left.is_empty() {
                let mut next = Vec::new();
                for (s, need) in left {
                    let got = pull_and_ack(&http, &url, &format!("s{s}"), 1000).await;
                    if got >= need {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        next.push((s, need - got));
                    }
                }
                if !next.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                left = next;
            }
        }));
    }
    let row = finish("meshd", subs, events, (pid, cpu0, t0), publisher, pullers).await;
    drop(guard);
    row
}

/// How many of `events` events carry each key.
fn want_per_key(events: u64) -> HashMap<u64, u64> {
    let mut want: HashMap<u64, u64> = HashMap::new();
    for i in 0..events {
        *want.entry(key_of(i)).or_default() += 1;
    }
    want
}

/// Waits for the publisher and every puller, and measures the run from `started`
/// (server pid, its CPU seconds then, the instant).
async fn finish(
    system: &'static str,
    subs: u64,
    events: u64,
    started: (u32, f64, Instant),
    publisher: tokio::task::JoinHandle<()>,
    pullers: Vec<tokio::task::JoinHandle<()>>,
) -> Row {
    let (pid, cpu0, t0) = started;
    publisher.await.unwrap();
    for p in pullers {
        p.await.unwrap();
    }
    Row {
        system,
        subs,
        secs: t0.elapsed().as_secs_f64(),
        cpu_us_per_event: (cpu_secs(pid) - cpu0) * 1e6 / events as f64,
    }
}

async fn nats_run(subs: u64, events: u64) -> Option<Row> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let dir = tempfile::tempdir().unwrap();
    let (guard, url) = start_nats(dir.path())?;
    let pid = guard.0.id();
    let client = async_nats::connect(&url).await.ok()?;
    let js = jetstream::new(client);
    let st = js
        .get_or_create_stream(stream::Config {
            name: "FAN".into(),
            subjects: vec!["fan.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .ok()?;
    let mut consumers = Vec::new();
    for s in 0..subs {
        let c = st
            .create_consumer(pull::Config {
                durable_name: Some(format!("c{s}")),
                filter_subject: format!("fan.{}", s % KEYS),
                ack_policy: jetstream::consumer::AckPolicy::All,
                ..Default::default()
            })
            .await
            .ok()?;
        consumers.push(c);
    }
    let want = want_per_key(events);
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let payload =
                bytes::Bytes::from(json!({"payload": "x".repeat(200)}).to_string().into_bytes());
            for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
                let mut acks = Vec::new();
                for &i in chunk {
                    acks.push(
                        js.publish(format!("fan.{}", key_of(i)), payload.clone())
                            .await
                            .unwrap(),
                    );
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
        })
    };
    let workers = 16.min(subs) as usize;
    let mut per_worker: Vec<Vec<(jetstream::consumer::PullConsumer, u64)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for (s, c) in consumers.into_iter().enumerate() {
        let need = want.get(&(s as u64 % KEYS)).copied().unwrap_or(0);
        per_worker[s % workers].push((c, need));
    }
    let mut pullers = Vec::new();
    for mine in per_worker {
        pullers.push(tokio::spawn(async move {
            let mut left = mine;
            while !left.is_empty() {
                let mut next = Vec::new();
                for (c, need) in left {
                    let mut got = 0u64;
                    let mut last = None;
                    if let Ok(mut batch) = c
                        .fetch()
                        .max_messages(1000)
                        .expires(Duration::from_millis(10))
                        .messages()
                        .await
                    {
                        while let Some(Ok(m)) = batch.next().await {
                            got += 1;
                            last = Some(m);
                        }
                    }
                    if let Some(m) = last {
                        let _ = m.ack().await;
                    }
                    if got < need {
                        next.push((c, need - got));
                    }
                }
                left = next;
            }
        }));
    }
    let row = finish(
        "NATS JetStream",
        subs,
        events,
        (pid, cpu0, t0),
        publisher,
        pullers,
    )
    .await;
    drop(guard);
    Some(row)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let events = env_u64("BENCH_EVENTS", 20_000);
    let counts: Vec<u64> = std::env::var("BENCH_SUBS")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        for &n in &counts {
            let r = meshd_run(n, events).await;
            eprintln!("meshd {n} subscriptions: {:.2} s", r.secs);
            rows.push(r);
            if std::env::var("BENCH_NATS").as_deref() == Ok("0") {
                continue;
            }
            match nats_run(n, events).await {
                Some(r) => {
                    eprintln!("jetstream {n} consumers: {:.2} s", r.secs);
                    rows.push(r);
                }
                None => eprintln!("nats-server not found or did not start: NATS rows skipped"),
            }
        }
    });
    let base = |system: &str| {
        rows.iter()
            .find(|r| r.system == system)
            .map(|r| events as f64 / r.secs)
            .unwrap_or(f64::NAN)
    };
    println!(
        "| system | subscriptions | events/s end to end | × its 1-subscription rate | meshd ÷ JetStream | CPU µs per published event |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let rate = events as f64 / r.secs;
        let peer = rows
            .iter()
            .find(|p| p.subs == r.subs && p.system != r.system)
            .map(|p| events as f64 / p.secs);
        let vs = match (r.system, peer) {
            ("meshd", Some(p)) => format!("{:.2}", rate / p),
            _ => "".into(),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {} | {:.1} |",
            r.system,
            r.subs,
            rate,
            rate / base(r.system),
            vs,
            r.cpu_us_per_event
        );
    }
}
