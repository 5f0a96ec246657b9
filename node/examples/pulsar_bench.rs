//! Append throughput and latency of the Pulsar store (against a `pulsar-lite` broker this
//! example starts) versus the embedded store (fsync always), in the same run.
//!
//! `cargo run --release -p meshd-node --example pulsar_bench [N]` (N records per case,
//! default 2000). Needs `pip install pulsar-lite` (or `PULSAR_LITE_BINARY`).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshd_core::api::TopicConfig;
use meshd_node::store::embedded::{EmbeddedOptions, EmbeddedStore};
use meshd_node::store::pulsar::{PulsarConfig, PulsarStore};
use meshd_node::store::{AppendRecord, EventStore};

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(dir: &std::path::Path) -> (Broker, String) {
    let bin = std::env::var("PULSAR_LITE_BINARY").unwrap_or_else(|_| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import pulsar_lite.binary_finder as b; print(b.find_pulsar_lite_binary())",
            ])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "pulsar-lite is missing: pip install pulsar-lite"
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(bin)
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "error",
        ])
        .arg("--db-path")
        .arg(dir)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pulsar-lite");
    let broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pulsar-lite did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, format!("pulsar://127.0.0.1:{port}"))
}

fn event_payload(i: usize) -> Bytes {
    let e = serde_json::json!({
        "specversion": "1.0", "id": format!("e{i}"), "source": "/bench", "type": "bench.event",
        "datacontenttype": "application/json", "partitionkey": format!("k{}", i % 16),
        "data": {"n": i, "pad": "x".repeat(200)}
    });
    Bytes::from(serde_json::to_vec(&e).expect("json"))
}

async fn run_case(
    store: Arc<dyn EventStore>,
    topic: &str,
    n: usize,
    tasks: usize,
    batch: usize,
) -> (f64, Duration) {
    store
        .create_topic(
            topic,
            &TopicConfig {
                partitions: 4,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create topic");
    let per_task = n / tasks;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let topic = topic.to_string();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while i < per_task {
                let recs: Vec<AppendRecord> = (0..batch.min(per_task - i))
                    .map(|k| AppendRecord {
                        partition: ((t + i + k) % 4) as u32,
                        timestamp_ms: 1,
                        payload: event_payload(i + k),
                    })
                    .collect();
                i += recs.len();
                let s = Instant::now();
                store.append(&topic, recs).await.expect("append");
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("task"));
    }
    let elapsed = started.elapsed();
    lat.sort();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
    ((per_task * tasks) as f64 / elapsed.as_secs_f64(), p50)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).expect("dir");
    let (_broker, url) = start_broker(&broker_dir);
    let pulsar: Arc<dyn EventStore> = Arc::new(
        PulsarStore::open(PulsarConfig::new(url))
            .await
            .expect("open the Pulsar store"),
    );
    let embedded: Arc<dyn EventStore> =
        EmbeddedStore::open_async(dir.path().join("embedded"), EmbeddedOptions::default())
            .await
            .expect("open the embedded store");
    println!("{n} records of ~330 bytes per case, 4 partitions");
    println!(
        "{:<10} {:<28} {:>12} {:>14}",
        "store", "case", "records/s", "p50 per call"
    );
    let cases = [
        ("1 task, 1 record/call", 1, 1),
        ("16 tasks, 1 record/call", 16, 1),
        ("4 tasks, 100 records/call", 4, 100),
    ];
    for (ci, (name, tasks, batch)) in cases.iter().enumerate() {
        for (label, store) in [("embedded", &embedded), ("pulsar", &pulsar)] {
            let (rate, p50) =
                run_case(store.clone(), &format!("bench{ci}"), n, *tasks, *batch).await;
            println!(
                "{label:<10} {name:<28} {rate:>12.0} {:>11.2} ms",
                p50.as_secs_f64() * 1e3
            );
        }
    }
    pulsar.close().await.expect("close");
    embedded.close().await.expect("close");
}
