//! Publish benchmark: meshd (a separate `meshd node` process, embedded store) against NATS
//! JetStream (a separate `nats-server -js` process, file storage) in the same run.
//!
//! Measures: publish throughput for single-event requests and 100-event batches, publish
//! latency, and publish→push latency (meshd webhook; JetStream consumer). Results are
//! printed as a Markdown table for docs/benchmarks.md.
//!
//! Run: `cargo bench --bench publish` (env: BENCH_SECS=10 per scenario, BENCH_CONNS=64).
//! Needs `nats-server` on PATH for the peer (Debian package nats-server); without it the
//! NATS rows are skipped with a note.
//!
//! `BENCH_MODE=pulsar cargo bench --bench publish` instead compares meshd's two stores in
//! one run: `meshd node` with the embedded store (fsync=always) and `meshd node --store
//! pulsar://...` against a `pulsar-lite` broker (PyPI `pulsar-lite`, binary found like the
//! tests do, or `$PULSAR_LITE_BINARY`) started on a free port with a temporary data dir.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

#[derive(Default)]
struct Hist(Mutex<Vec<u64>>);
impl Hist {
    fn add(&self, nanos: u64) {
        self.0.lock().unwrap().push(nanos);
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.lock().unwrap().clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i] as f64 / 1e6
    }
}

#[path = "support/mod.rs"]
mod support;
use support::{env_u64, free_port, unix_nanos, Killed};

struct Row {
    system: String,
    scenario: String,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn start_meshd(dir: &std::path::Path, fsync: &str, extra: &[&str]) -> (Killed, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .env("MESHD_WEBHOOK_ALLOW_LOOPBACK", "true")
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--fsync",
            fsync,
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("MESHD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn meshd");
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let url = loop {
        let l = lines.next().expect("meshd exited").unwrap();
        if l.starts_with("cluster ") && l.contains(" node ") && l.contains("http://") {
            break l.rsplit(' ').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), url)
}

/// One keep-alive HTTP/1.1 connection.
async fn connect(addr: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
    ct: &str,
    body: Bytes,
) -> u16 {
    sender.ready().await.unwrap();
    let req = hyper::Request::post(path)
        .header("host", host)
        .header("content-type", ct)
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

fn event_body(id: u64, key: u64) -> serde_json::Value {
    json!({
        "specversion": "1.0", "id": format!("e-{id}"), "source": "/bench", "type": "bench.event",
        "partitionkey": format!("k{key}"), "datacontenttype": "application/json",
        "data": {"ts": unix_nanos(), "payload": "x".repeat(200)}
    })
}

async fn meshd_publish(url: &str, batch: u64, conns: u64, secs: u64) -> (f64, Arc<Hist>) {
    let addr = url.trim_start_matches("http://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Hist::default());
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, stop, count, hist) = (addr.clone(), stop.clone(), count.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&addr).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (ct, body) = if batch == 1 {
                    (
                        "application/cloudevents+json",
                        event_body(c * 1_000_000_000 + i, c).to_string(),
                    )
                } else {
                    let evs: Vec<_> = (0..batch)
                        .map(|j| event_body(c * 1_000_000_000 + i * batch + j, c))
                        .collect();
                    (
                        "application/cloudevents-batch+json",
                        serde_json::Value::from(evs).to_string(),
                    )
                };
                let t = Instant::now();
                let st = post(
                    &mut s,
                    &addr,
                    "/v1/topics/bench/events",
                    ct,
                    Bytes::from(body),
                )
                .await;
                assert_eq!(st, 200);
                hist.add(t.elapsed().as_nanos() as u64);
                count.fetch_add(batch, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, hist)
}

async fn meshd_push_latency(url: &str, rate: u64, secs: u64, topic: &str) -> Arc<Hist> {
    let hist = Arc::new(Hist::default());
    let h = hist.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let h = h.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    if let Some(ts) = v["ts"].as_u64() {
                        h.add(unix_nanos().saturating_sub(ts));
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let addr = url.trim_start_matches("http://").to_string();
    let mut s = connect(&addr).await;
    let sub = json!({"name": format!("latency-{topic}"), "topic": topic, "sink": {"webhook": {"url": sink}}, "delivery": {"max_in_flight": 64}});
    let put = hyper::Request::put(format!("/v1/topics/{topic}"))
        .header("host", &addr)
        .body(Full::new(Bytes::new()))
        .unwrap();
    s.ready().await.unwrap();
    let _ = s
        .send_request(put)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    assert_eq!(
        post(
            &mut s,
            &addr,
            "/v1/subscriptions",
            "application/json",
            Bytes::from(sub.to_string())
        )
        .await,
        201
    );
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0;
    while Instant::now() < end {
        tick.tick().await;
        let body = event_body(i, i % 16).to_string();
        assert_eq!(
            post(
                &mut s,
                &addr,
                &format!("/v1/topics/{topic}/events"),
                "application/cloudevents+json",
                Bytes::from(body)
            )
            .await,
            200
        );
        i += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let the tail arrive
    server.abort();
    hist
}

fn start_nats(dir: &std::path::Path) -> Option<(Killed, String)> {
    let port = free_port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((guard, format!("nats://127.0.0.1:{port}")))
}

async fn nats_publish(
    url: &str,
    window: u64,
    conns: u64,
    secs: u64,
    stream: &str,
) -> (f64, Arc<Hist>) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![format!("{stream}.>")],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Hist::default());
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (js, stop, count, hist, stream) = (
            js.clone(),
            stop.clone(),
            count.clone(),
            hist.clone(),
            stream.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut acks = Vec::with_capacity(window as usize);
                for j in 0..window {
                    let body = event_body(c * 1_000_000_000 + i * window + j, c).to_string();
                    acks.push(
                        js.publish(format!("{stream}.k{c}"), body.into())
                            .await
                            .unwrap(),
                    );
                }
                for a in acks {
                    a.await.unwrap();
                }
                hist.add(t.elapsed().as_nanos() as u64);
                count.fetch_add(window, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, hist)
}

async fn nats_push_latency(url: &str, rate: u64, secs: u64) -> Arc<Hist> {
    use futures::StreamExt;
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "LAT".into(),
            subjects: vec!["lat.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("lat".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let hist = Arc::new(Hist::default());
    let h = hist.clone();
    let reader = tokio::spawn(async move {
        let mut msgs = consumer.messages().await.unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                if let Some(ts) = v["data"]["ts"].as_u64() {
                    h.add(unix_nanos().saturating_sub(ts));
                }
            }
            let _ = m.ack().await;
        }
    });
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0;
    while Instant::now() < end {
        tick.tick().await;
        let body = event_body(i, i % 16).to_string();
        js.publish(format!("lat.k{}", i % 16), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        i += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    hist
}

fn start_pulsar_lite(dir: &std::path::Path) -> Option<(Killed, String)> {
    let binary = match std::env::var("PULSAR_LITE_BINARY") {
        Ok(b) => b,
        Err(_) => {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import pulsar_lite.binary_finder as b; print(b.find_pulsar_lite_binary())",
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let port = free_port();
    let db = dir.join("db");
    std::fs::create_dir_all(&db).ok()?;
    let child = Command::new(binary)
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--db-path")
        .arg(&db)
        .args(["--log-level", "warn"])
        .current_dir(&db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((guard, format!("pulsar://127.0.0.1:{port}")))
}

async fn create_bench_topic(url: &str) {
    let addr = url.trim_start_matches("http://").to_string();
    let mut s = connect(&addr).await;
    let put = hyper::Request::put("/v1/topics/bench")
        .header("host", &addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(r#"{"partitions":4}"#)))
        .unwrap();
    s.ready().await.unwrap();
    let _ = s
        .send_request(put)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
}

/// Embedded store (fsync=always) against the Pulsar store (pulsar-lite), same run.
async fn stores(secs: u64, conns: u64, rows: &mut Vec<Row>) {
    let pdir = tempfile::tempdir().unwrap();
    let Some((_broker, purl)) = start_pulsar_lite(pdir.path()) else {
        eprintln!("pulsar-lite not found or did not start (pip install pulsar-lite)");
        return;
    };
    for (system, extra) in [
        ("meshd, embedded store (fsync=always)", vec![]),
        (
            "meshd, Pulsar store (pulsar-lite)",
            vec!["--store", purl.as_str()],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_m, url) = start_meshd(dir.path(), "always", &extra);
        create_bench_topic(&url).await;
        for (batch, c) in [(1, conns), (100, conns.min(16))] {
            let (rate, hist) = meshd_publish(&url, batch, c, secs).await;
            rows.push(Row {
                system: system.into(),
                scenario: format!("publish, {batch}-event requests, {c} connections"),
                events_per_sec: rate,
                p50_ms: hist.pct(0.5),
                p99_ms: hist.pct(0.99),
            });
            eprintln!("{system} batch={batch}: {rate:.0} ev/s");
        }
        for rate in [100, 1000] {
            let hist = meshd_push_latency(&url, rate, secs, &format!("lat{rate}")).await;
            rows.push(Row {
                system: system.into(),
                scenario: format!("publish→webhook latency at {rate} ev/s"),
                events_per_sec: rate as f64,
                p50_ms: hist.pct(0.5),
                p99_ms: hist.pct(0.99),
            });
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("BENCH_SECS", 10);
    let conns = env_u64("BENCH_CONNS", 64);
    if std::env::var("BENCH_MODE").as_deref() == Ok("pulsar") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        rt.block_on(stores(secs, conns, &mut rows));
        println!("| system | scenario | events/s | p50 ms | p99 ms |");
        println!("|---|---|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} |",
                r.system, r.scenario, r.events_per_sec, r.p50_ms, r.p99_ms
            );
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        for fsync in ["always", "never"] {
            let dir = tempfile::tempdir().unwrap();
            let (_m, url) = start_meshd(dir.path(), fsync, &[]);
            let addr = url.trim_start_matches("http://").to_string();
            let mut s = connect(&addr).await;
            let put = hyper::Request::put("/v1/topics/bench")
                .header("host", &addr)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(r#"{"partitions":4}"#)))
                .unwrap();
            s.ready().await.unwrap();
            let _ = s
                .send_request(put)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await;
            for (batch, c) in [(1, conns), (100, conns.min(16))] {
                let (rate, hist) = meshd_publish(&url, batch, c, secs).await;
                rows.push(Row {
                    system: format!("meshd (fsync={fsync})"),
                    scenario: format!("publish, {batch}-event requests, {c} connections"),
                    events_per_sec: rate,
                    p50_ms: hist.pct(0.5),
                    p99_ms: hist.pct(0.99),
                });
                eprintln!("meshd fsync={fsync} batch={batch}: {rate:.0} ev/s");
            }
            if fsync == "always" {
                let hist = meshd_push_latency(&url, 1000, secs, "lat").await;
                rows.push(Row {
                    system: "meshd (fsync=always)".into(),
                    scenario: "publish→webhook latency at 1k ev/s".into(),
                    events_per_sec: 1000.0,
                    p50_ms: hist.pct(0.5),
                    p99_ms: hist.pct(0.99),
                });
            }
        }
        let ndir = tempfile::tempdir().unwrap();
        match start_nats(ndir.path()) {
            None => eprintln!("nats-server not found or did not start: NATS rows skipped"),
            Some((_n, url)) => {
                for (window, c, stream) in [(1, conns, "B1"), (100, conns.min(16), "B100")] {
                    let (rate, hist) = nats_publish(&url, window, c, secs, stream).await;
                    rows.push(Row {
                        system: "NATS JetStream (file, default sync)".into(),
                        scenario: format!("publish, {window} in flight per task, {c} tasks"),
                        events_per_sec: rate,
                        p50_ms: hist.pct(0.5),
                        p99_ms: hist.pct(0.99),
                    });
                    eprintln!("nats window={window}: {rate:.0} ev/s");
                }
                let hist = nats_push_latency(&url, 1000, secs).await;
                rows.push(Row {
                    system: "NATS JetStream (file, default sync)".into(),
                    scenario: "publish→consumer latency at 1k ev/s".into(),
                    events_per_sec: 1000.0,
                    p50_ms: hist.pct(0.5),
                    p99_ms: hist.pct(0.99),
                });
            }
        }
    });
    println!("| system | scenario | events/s | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} |",
            r.system, r.scenario, r.events_per_sec, r.p50_ms, r.p99_ms
        );
    }
}
