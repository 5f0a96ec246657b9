//! Proxy overhead benchmark: publish throughput and latency straight to a `meshd node`
//! against the same through a `meshd proxy` (auth on, one valid token, no rate limit), in
//! the same run, on the same node.
//!
//! Run: `cargo bench --bench proxy` (env: BENCH_SECS=10 per scenario, BENCH_CONNS=32,
//! BENCH_FSYNC=never, BENCH_RATE=2000 for the fixed-rate rows, BENCH_BASELINE_MESHD=path of
//! another `meshd` binary whose proxy runs in the same run against the same node, e.g.
//! main's, for a before/after). Prints Markdown tables for docs/benchmarks.md.
//!
//! Two loads: saturated (each connection sends its next publish when the last is
//! answered) and a fixed rate (each connection sends on a timer, BENCH_RATE events/s in
//! all), where the latency is the added cost of a hop at a realistic load and the proxy's
//! CPU (utime + stime from /proc) per request is its cost.

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
    name: String,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Microseconds of the proxy's CPU per request (proxied rows only).
    cpu_us: Option<f64>,
}

/// CPU time (user + system) a process used so far, in microseconds (Linux /proc).
fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks * 10_000.0)
}

async fn run(
    name: String,
    url: &str,
    token: Option<&str>,
    secs: u64,
    conns: u64,
    rate: Option<u64>,
    proxy_pid: Option<u32>,
) -> Result {
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
            // At a fixed rate each connection sends every conns/rate seconds.
            let mut tick = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(conns as f64 / r as f64));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
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
    let cpu0 = proxy_pid.and_then(cpu_us);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = count.load(Ordering::Relaxed) - start_count;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = proxy_pid.and_then(cpu_us);
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
        cpu_us: match (cpu0, cpu1) {
            (Some(a), Some(b)) if n > 0 => Some((b - a) / n as f64),
            _ => None,
        },
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
    let proxy_args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--nodes",
        &node_url,
        "--tokens",
        tokens.to_str().unwrap(),
    ];
    let (proxy, proxy_url) = spawn(&proxy_args, "proxy");
    let proxy_pid = proxy.0.id();
    // The same proxy from another build (e.g. main), against the same node.
    let baseline = std::env::var("BENCH_BASELINE_MESHD").ok().map(|bin| {
        let mut child = Command::new(&bin)
            .args(proxy_args)
            .env("MESHD_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the baseline meshd");
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let url = loop {
            let l = lines.next().expect("baseline meshd exited").unwrap();
            if l.starts_with("cluster ") && l.contains(" proxy ") && l.contains("http://") {
                break l.rsplit(' ').next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let pid = child.id();
        (Killed(child), url, pid)
    });
    let rate = env_u64("BENCH_RATE", 2000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (saturated, fixed) = rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .put(format!("{proxy_url}/v1/topics/bench"))
            .bearer_auth(&token)
            .json(&json!({"partitions": 4}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut out = Vec::new();
        for fixed in [None, Some(rate)] {
            let mut rows = Vec::new();
            let d = |n: &str| n.to_string();
            rows.push(
                run(
                    d("direct to node"),
                    &node_url,
                    None,
                    secs,
                    conns,
                    fixed,
                    None,
                )
                .await,
            );
            rows.push(
                run(
                    d("through proxy"),
                    &proxy_url,
                    Some(&token),
                    secs,
                    conns,
                    fixed,
                    Some(proxy_pid),
                )
                .await,
            );
            if let Some((_, url, pid)) = &baseline {
                rows.push(
                    run(
                        d("through baseline proxy"),
                        url,
                        Some(&token),
                        secs,
                        conns,
                        fixed,
                        Some(*pid),
                    )
                    .await,
                );
            }
            rows.push(
                run(
                    d("direct to node (again)"),
                    &node_url,
                    None,
                    secs,
                    conns,
                    fixed,
                    None,
                )
                .await,
            );
            out.push(rows);
        }
        let fixed = out.pop().unwrap();
        (out.pop().unwrap(), fixed)
    });
    drop(baseline);
    for (title, results) in [
        (format!("saturated, {conns} connections"), &saturated),
        (
            format!("fixed rate {rate} events/s, {conns} connections"),
            &fixed,
        ),
    ] {
        println!(
            "\nProxy overhead: single-event publishes, {title}, {secs} s each, fsync={fsync}\n"
        );
        println!("| path | events/s | p50 ms | p99 ms | proxy CPU µs/request |");
        println!("|---|---|---|---|---|");
        for r in results.iter() {
            println!(
                "| {} | {:.0} | {:.3} | {:.3} | {} |",
                r.name,
                r.events_per_sec,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us
                    .map(|c| format!("{c:.0}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        let last = results.len() - 1;
        let base = (results[0].events_per_sec + results[last].events_per_sec) / 2.0;
        let base_p50 = (results[0].p50_ms + results[last].p50_ms) / 2.0;
        let base_p99 = (results[0].p99_ms + results[last].p99_ms) / 2.0;
        for r in &results[1..last] {
            println!(
                "\n{}: {:.2}x direct throughput; p50 added {:.3} ms, p99 added {:.3} ms",
                r.name,
                r.events_per_sec / base,
                r.p50_ms - base_p50,
                r.p99_ms - base_p99
            );
        }
    }
}
