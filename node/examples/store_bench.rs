//! Micro-benchmark of the embedded store's append path: N concurrent callers appending
//! batches of 1 and of 100 records (256-byte payloads) for a few seconds each.
//!
//! `cargo run --release -p meshd-node --example store_bench -- [secs] [callers] [fsync] [dir]`
//! (defaults: 5 s, 32 callers, always, a temp dir).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshd_core::api::TopicConfig;
use meshd_node::store::embedded::{EmbeddedOptions, EmbeddedStore};
use meshd_node::store::{AppendRecord, EventStore, FsyncPolicy};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let callers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);
    let fsync: FsyncPolicy = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(FsyncPolicy::Always);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .get(4)
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let options = EmbeddedOptions {
        fsync,
        fsync_interval: Duration::from_millis(100),
    };
    let store = EmbeddedStore::open(&dir, options).expect("open store");
    let config = TopicConfig {
        partitions: 8,
        ..TopicConfig::default()
    };
    store.create_topic("bench", &config).await.expect("topic");
    println!(
        "fsync={fsync:?} callers={callers} duration={secs}s payload=256B dir={}",
        dir.display()
    );
    for batch in [1usize, 100] {
        run(&store, callers, batch, Duration::from_secs(secs)).await;
    }
    store.close().await.expect("close");
}

async fn run(store: &Arc<EmbeddedStore>, callers: usize, batch: usize, dur: Duration) {
    let before = store.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![b'x'; 256]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (store, stop, payload) = (store.clone(), stop.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let records = (0..batch)
                    .map(|_| AppendRecord {
                        partition: (c % 8) as u32,
                        timestamp_ms: 0,
                        payload: payload.clone(),
                    })
                    .collect();
                let t = Instant::now();
                store.append("bench", records).await.expect("append");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = store.stats();
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let appends = after.appends - before.appends;
    let records = after.records_appended - before.records_appended;
    let commits = (after.commits - before.commits).max(1);
    println!(
        "batch={batch:>3}: {:>9.0} appends/s {:>10.0} records/s {:>7.1} MB/s | commits {} fsyncs {} ({:.1} appends/commit) | latency p50 {:?} p99 {:?}",
        appends as f64 / elapsed,
        records as f64 / elapsed,
        (after.bytes_appended - before.bytes_appended) as f64 / elapsed / 1e6,
        after.commits - before.commits,
        after.fsyncs - before.fsyncs,
        appends as f64 / commits as f64,
        pct(0.5),
        pct(0.99),
    );
}
