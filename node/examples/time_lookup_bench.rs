//! Time → offset on the embedded store: `offset_at_time` (binary search, one record
//! header per step, in one read snapshot) against its peer, a scan that reads the
//! partition from the start in chunks until the first record at or after the time (what
//! a store without the search would do), for the same random times.
//!
//! `cargo run --release -p meshd-node --example time_lookup_bench -- [records] [lookups]`
//! (defaults: 1 000 000 records of 256 bytes in one partition, 20 lookups).

use std::time::Instant;

use bytes::Bytes;
use meshd_core::api::TopicConfig;
use meshd_node::store::embedded::{EmbeddedOptions, EmbeddedStore};
use meshd_node::store::{AppendRecord, EventStore, FsyncPolicy};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let lookups: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let tmp = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Never,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(tmp.path(), options).expect("open store");
    store
        .create_topic("t", &TopicConfig::default())
        .await
        .expect("topic");
    let payload = Bytes::from(vec![b'x'; 256]);
    // Ten records per ms of store time.
    let mut i = 0;
    while i < records {
        let n = (records - i).min(10_000);
        let batch = (i..i + n)
            .map(|k| AppendRecord {
                partition: 0,
                timestamp_ms: 1_000_000 + k / 10,
                payload: payload.clone(),
            })
            .collect();
        store.append("t", batch).await.expect("append");
        i += n;
    }
    println!("records={records} payload=256B lookups={lookups}");
    // Spread the times over the log (a fixed sequence: both sides get the same ones).
    let times: Vec<u64> = (0..lookups)
        .map(|k| 1_000_000 + (k * 7919 + 13) % lookups * (records / 10) / lookups)
        .collect();

    let started = Instant::now();
    let mut found = Vec::new();
    for t in &times {
        found.push(store.offset_at_time("t", 0, *t).await.expect("search"));
    }
    let search = started.elapsed() / lookups as u32;

    let started = Instant::now();
    for (t, want) in times.iter().zip(&found) {
        let mut from = 0;
        let got = 'scan: loop {
            let chunk = store.read("t", 0, from, 4096).await.expect("read");
            let Some(last) = chunk.last() else {
                break records;
            };
            for r in &chunk {
                if r.timestamp_ms >= *t {
                    break 'scan r.offset;
                }
            }
            from = last.offset + 1;
        };
        assert_eq!(got, *want, "scan and search agree");
    }
    let scan = started.elapsed() / lookups as u32;
    println!(
        "search/scan time ratio {:.5}; offset_at_time {:?} per lookup; scan {:?} per lookup",
        search.as_secs_f64() / scan.as_secs_f64(),
        search,
        scan
    );
    store.close().await.expect("close");
}
