//! Proxy overhead benchmark: publish throughput and latency straight to a `meshd node`
//! against the same through a `meshd proxy` (auth on, one valid token, no rate limit), in
//! the same run, on the same node.
//!
//! Run: `cargo bench --bench proxy` (env: BENCH_SECS=10 per scenario, BENCH_CONNS=32,
//! BENCH_FSYNC=never). Prints a Markdown table for docs/benchmarks.md.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/mod.rs"]
mod support;
use support::{env_u64, Killed};

fn spawn(args: &[&str], role: &str) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(args)
        .env("MESHD_LOG", "warn")
        .env("MESHD_WEBHOOK_ALLOW_LOOPBACK", "true")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn meshd");
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let url = loop {
        let l = lines.next().expect("meshd exited").unwrap();
        if l.starts_with("cluster ") && l.contains(&format!(" {role} ")) && l.contains("http://") {
            break l.rsplit(' ').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), url)
}

struct Result {
    name: &'static str,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(name: &'static str, url: &str, token: Option<&str>, secs: u64, conns: u64) -> Result {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns as usize)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut tasks = Vec::new();
    let target = format!("{url}/v1/topics/bench/events");
    // Warm up the connections.
    for c in 0..conns {
        let (client, target, stop, count, lat) = (
            client.clone(),
            target.clone(),
            stop.clone(),
            count.clone(),
            lat.clone(),
        );
        let token = token.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ev = json!({"specversion": "1.0", "id": format!("{c}-{i}"), "source": format!("/bench/{c}"),
                                "type": "bench", "data": {"n": i}});
                let mut rb = client
                    .post(&target)
                    .header("content-type", "application/cloudevents+json")
                    .body(ev.to_string());
                if let Some(t) = &token {
                    rb = rb.bearer_auth(t);
                }
                let t0 = Instant::now();
                let r = rb.send().await;
                let ok = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    local.push(t0.elapsed().as_nanos() as u64);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat.lock().unwrap().extend(local);
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_count = count.load(Ordering::Relaxed);
    lat.lock().unwrap().clear();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = count.load(Ordering::Relaxed) - start_count;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let mut v = lat.lock().unwrap().clone();
    v.sort_unstable();
    let pct = |p: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1e6
        }
    };
    Result {
        name,
        events_per_sec: n as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("BENCH_SECS", 10);
    let conns = env_u64("BENCH_CONNS", 32);
    let fsync = std::env::var("BENCH_FSYNC").unwrap_or_else(|_| "never".into());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["proxy", "token", "create", "--scopes", "admin:*", "--file"])
        .arg(&tokens)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let data = dir.path().join("node");
    let (_node, node_url) = spawn(
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--fsync",
            &fsync,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "node",
    );
    let (_proxy, proxy_url) = spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &node_url,
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        "proxy",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results = rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .put(format!("{proxy_url}/v1/topics/bench"))
            .bearer_auth(&token)
            .json(&json!({"partitions": 4}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let direct = run("direct to node", &node_url, None, secs, conns).await;
        let proxied = run("through proxy", &proxy_url, Some(&token), secs, conns).await;
        let direct2 = run("direct to node (again)", &node_url, None, secs, conns).await;
        vec![direct, proxied, direct2]
    });
    println!("\nProxy overhead: single-event publishes, {conns} connections, {secs} s each, fsync={fsync}\n");
    println!("| path | events/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} |",
            r.name, r.events_per_sec, r.p50_ms, r.p99_ms
        );
    }
    let base = (results[0].events_per_sec + results[2].events_per_sec) / 2.0;
    let base_p99 = (results[0].p99_ms + results[2].p99_ms) / 2.0;
    println!(
        "\nthroughput through the proxy: {:.1}% of direct; p99 added: {:.3} ms",
        100.0 * results[1].events_per_sec / base,
        results[1].p99_ms - base_p99
    );
}
