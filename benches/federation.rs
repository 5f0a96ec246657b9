//! Cross-cluster benchmark: two meshd clusters (separate `meshd node --topology` processes,
//! release build) joined by one QUIC link that runs through a userspace link emulator
//! (meshd-linkemu), against a NATS supercluster (two `nats-server` processes joined by
//! gateways, whose gateway TCP connections run through the TCP emulator) in the same run.
//!
//! Measures, per emulated one-way delay:
//! - publish→delivery latency: an event published over HTTP in cluster A (ack after fsync)
//!   until a webhook subscribed in cluster B receives it (p50/p99), and its overhead over
//!   the link's one-way delay; for NATS: publish in server A until a subscriber of server
//!   B receives it.
//! - replication throughput of the link: a backlog of N events already stored in A is
//!   replicated and stored in B (timed from the moment B subscribes); for NATS, N events
//!   published in A as fast as the client can until B's subscriber received them.
//!
//! Run: `cargo bench --bench federation` (env: BENCH_SECS=5 per latency scenario,
//! BENCH_RATE=500 events/s, BENCH_EVENTS=200000 for throughput, BENCH_FSYNC=always).
//! Without `nats-server` on PATH the NATS rows are skipped with a note.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd_linkemu::{LinkConfig, LinkEmulator, TcpLinkEmulator};
use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;
use support::{env_u64, free_port, unix_nanos, Killed};

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[derive(Default)]
struct Hist(Mutex<Vec<u64>>);
impl Hist {
    fn add(&self, nanos: u64) {
        self.0.lock().unwrap().push(nanos);
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
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

struct Row {
    system: &'static str,
    link: String,
    scenario: String,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    one_way_ms: f64,
}

/// ≈300-byte structured CloudEvent carrying its send time. `tag` keeps ids unique across
/// scenarios: receivers drop duplicates by (source, id) across all topics.
fn event_body(tag: &str, id: u64) -> Value {
    json!({
        "specversion": "1.0", "id": format!("{tag}-{id}"), "source": "/bench", "type": "bench.event",
        "partitionkey": format!("k{}", id % 16), "datacontenttype": "application/json",
        "data": {"ts": unix_nanos(), "payload": "x".repeat(200)}
    })
}

// ---------------------------------------------------------------------------- meshd

struct Mesh {
    _dir: tempfile::TempDir,
    _a: Killed,
    _b: Killed,
    a: String,
    b: String,
    emu: LinkEmulator,
}

fn spawn_node(
    dir: &Path,
    cluster: &str,
    topo: &Path,
    certs: &Path,
    bind: SocketAddr,
) -> (Killed, String) {
    use std::io::BufRead;
    // BENCH_FSYNC_<CLUSTER> (e.g. BENCH_FSYNC_B) overrides BENCH_FSYNC for one cluster:
    // to see what one side's fsync costs.
    let fsync = std::env::var(format!("BENCH_FSYNC_{}", cluster.to_uppercase()))
        .or_else(|_| std::env::var("BENCH_FSYNC"))
        .unwrap_or_else(|_| "always".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .env("MESHD_WEBHOOK_ALLOW_LOOPBACK", "true")
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--fsync",
            &fsync,
            "--cluster",
            cluster,
        ])
        .arg("--data-dir")
        .arg(dir.join(format!("data-{cluster}")))
        .arg("--topology")
        .arg(topo)
        .arg("--certs-dir")
        .arg(certs)
        .args(["--bridge-listen", &bind.to_string()])
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

/// Clusters a and b; a dials b through the emulator.
fn start_mesh() -> Mesh {
    use meshd_certs::{ClusterCertRequest, Validity};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let certs = dir.path().join("certs");
    meshd_certs::init_ca_dir(&ca, "bench", Validity::days_from_now(2).unwrap(), false).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(ca.join("ca.pem"), certs.join("ca.pem")).unwrap();
    for c in ["a", "b"] {
        meshd_certs::issue_to_dir(
            &ca,
            &ClusterCertRequest {
                cluster: c.into(),
                extra_sans: vec![],
                validity: Validity::days_from_now(2).unwrap(),
            },
            &certs,
        )
        .unwrap();
    }
    let (bind_a, bind_b) = (free_udp(), free_udp());
    let emu = LinkEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        bind_b,
        LinkConfig::default(),
    )
    .unwrap();
    let topo = dir.path().join("mesh.toml");
    std::fs::write(
        &topo,
        format!(
            "[mesh]\nname = \"bench\"\n\n[[cluster]]\nname = \"a\"\nregion = \"r1\"\ncloud = \"local\"\nbridge = \"{bind_a}\"\nproxy = \"http://127.0.0.1:40001\"\n\n[[cluster]]\nname = \"b\"\nregion = \"r2\"\ncloud = \"local\"\nbridge = \"{}\"\nproxy = \"http://127.0.0.1:40002\"\n\n[[link]]\nbetween = [\"a\", \"b\"]\ncost = 20\n",
            emu.local_addr()
        ),
    )
    .unwrap();
    let (ka, a) = spawn_node(dir.path(), "a", &topo, &certs, bind_a);
    let (kb, b) = spawn_node(dir.path(), "b", &topo, &certs, bind_b);
    Mesh {
        _dir: dir,
        _a: ka,
        _b: kb,
        a,
        b,
        emu,
    }
}

async fn put_topic(c: &reqwest::Client, base: &str, topic: &str, partitions: u32) {
    let r = c
        .put(format!("{base}/v1/topics/{topic}"))
        .json(&json!({"partitions": partitions}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn subscribe(c: &reqwest::Client, base: &str, body: Value) {
    let r = c
        .post(format!("{base}/v1/subscriptions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn mesh_status(c: &reqwest::Client, base: &str) -> Value {
    c.get(format!("{base}/v1/mesh"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_interest(c: &reqwest::Client, a: &str, topic: &str) {
    wait_for(
        &format!("a learned b's interest in {topic}"),
        30,
        || async {
            let m = mesh_status(c, a).await;
            m["learned_interest"]["b"]
                .as_array()
                .is_some_and(|v| v.iter().any(|e| e["topic"] == topic))
        },
    )
    .await;
}

async fn stored(c: &reqwest::Client, base: &str, topic: &str) -> u64 {
    let info: Value = c
        .get(format!("{base}/v1/topics/{topic}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    info["partitions"]
        .as_object()
        .map(|m| m.values().filter_map(|p| p["end"].as_u64()).sum())
        .unwrap_or(0)
}

/// A webhook recording publish→receive latencies of events whose id starts with "e-".
async fn latency_sink() -> (String, Arc<Hist>, tokio::task::JoinHandle<()>) {
    let hist = Arc::new(Hist::default());
    let h = hist.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: bytes::Bytes| {
            let h = h.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    if let Some(ts) = v["ts"].as_u64() {
                        h.add(unix_nanos().saturating_sub(ts));
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hist, task)
}

async fn meshd_latency(
    c: &reqwest::Client,
    m: &Mesh,
    topic: &str,
    rate: u64,
    secs: u64,
) -> Arc<Hist> {
    put_topic(c, &m.a, topic, 1).await;
    put_topic(c, &m.b, topic, 1).await;
    let (sink, hist, task) = latency_sink().await;
    subscribe(
        c,
        &m.b,
        json!({"name": topic, "topic": topic, "group": topic, "sink": {"webhook": {"url": sink}},
               "delivery": {"max_in_flight": 64}}),
    )
    .await;
    wait_interest(c, &m.a, topic).await;
    // Warm-up: 20 events through the whole path, then reset.
    let url = format!("{}/v1/topics/{topic}/events", m.a);
    for i in 0..20 {
        publish_one(c, &url, event_body(&format!("{topic}-warm"), i)).await;
    }
    wait_for("warm-up events delivered", 30, || async {
        hist.len() >= 20
    })
    .await;
    hist.0.lock().unwrap().clear();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        publish_one(c, &url, event_body(topic, n)).await;
        n += 1;
    }
    let expect = n as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while hist.len() < expect && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if hist.len() < expect {
        eprintln!("warning: {topic}: {} of {expect} delivered", hist.len());
    }
    task.abort();
    hist
}

async fn publish_one(c: &reqwest::Client, url: &str, ev: Value) {
    let r = c
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .body(ev.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Stores `total` events in A's `topic` (no interest yet), then subscribes in B and times
/// until B stored all of them. Returns (events/s, seconds).
async fn meshd_throughput(c: &reqwest::Client, m: &Mesh, topic: &str, total: u64) -> (f64, f64) {
    put_topic(c, &m.a, topic, 4).await;
    put_topic(c, &m.b, topic, 4).await;
    let batch = 1000u64;
    let conns = 4u64;
    let mut tasks = Vec::new();
    for t in 0..conns {
        let (c, url, tag) = (
            c.clone(),
            format!("{}/v1/topics/{topic}/events", m.a),
            topic.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t * batch;
            while i < total {
                let n = batch.min(total - i);
                let evs: Vec<Value> = (i..i + n).map(|j| event_body(&tag, j)).collect();
                let r = c
                    .post(&url)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(Value::from(evs).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                i += batch * conns;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stored(c, &m.a, topic).await, total);
    let start = Instant::now();
    subscribe(
        c,
        &m.b,
        json!({"name": topic, "topic": topic, "group": topic, "sink": {"pull": {}}}),
    )
    .await;
    let deadline = start + Duration::from_secs(180);
    loop {
        let n = stored(c, &m.b, topic).await;
        if n >= total {
            break;
        }
        assert!(Instant::now() < deadline, "throughput: b stored only {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    (total as f64 / secs, secs)
}

// ----------------------------------------------------------------------------- NATS

struct Nats {
    _dir: tempfile::TempDir,
    _servers: Vec<Killed>,
    a: String,
    b: String,
    emus: Vec<TcpLinkEmulator>,
}

fn start_nats() -> Option<Nats> {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, ga, gb) = (free_port(), free_port(), free_port(), free_port());
    let emu_to_b = TcpLinkEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        format!("127.0.0.1:{gb}").parse().unwrap(),
        LinkConfig::default(),
    )
    .ok()?;
    let emu_to_a = TcpLinkEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        format!("127.0.0.1:{ga}").parse().unwrap(),
        LinkConfig::default(),
    )
    .ok()?;
    let conf = |name: &str, port: u16, gw: u16, other: &str, other_url: SocketAddr| {
        format!(
            "listen: 127.0.0.1:{port}\nserver_name: {name}\ngateway {{\n  name: {name}\n  listen: 127.0.0.1:{gw}\n  gateways: [ {{ name: {other}, url: \"nats://{other_url}\" }} ]\n}}\n"
        )
    };
    let fa = dir.path().join("a.conf");
    let fb = dir.path().join("b.conf");
    std::fs::write(&fa, conf("A", pa, ga, "B", emu_to_b.local_addr())).ok()?;
    std::fs::write(&fb, conf("B", pb, gb, "A", emu_to_a.local_addr())).ok()?;
    let mut servers = Vec::new();
    for (f, port) in [(&fa, pa), (&fb, pb)] {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(f)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        servers.push(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Some(Nats {
        _dir: dir,
        _servers: servers,
        a: format!("nats://127.0.0.1:{pa}"),
        b: format!("nats://127.0.0.1:{pb}"),
        emus: vec![emu_to_b, emu_to_a],
    })
}

/// Subscribes in B and waits until probes published in A arrive (gateways connected and
/// B's interest known in A).
async fn nats_pair(n: &Nats, subject: &str) -> (async_nats::Client, async_nats::Subscriber) {
    use futures::StreamExt;
    let a = async_nats::connect(&n.a).await.unwrap();
    let b = async_nats::connect(&n.b).await.unwrap();
    let mut sub = b.subscribe(subject.to_string()).await.unwrap();
    b.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.publish(subject.to_string(), "probe".into())
            .await
            .unwrap();
        a.flush().await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break;
        }
        assert!(Instant::now() < deadline, "NATS gateways did not connect");
    }
    // Drain stray probes.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {}
    (a, sub)
}

async fn nats_latency(n: &Nats, subject: &str, rate: u64, secs: u64) -> Arc<Hist> {
    use futures::StreamExt;
    let (a, mut sub) = nats_pair(n, subject).await;
    let hist = Arc::new(Hist::default());
    let h = hist.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                if let Some(ts) = v["data"]["ts"].as_u64() {
                    h.add(unix_nanos().saturating_sub(ts));
                }
            }
        }
    });
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        a.publish(
            subject.to_string(),
            event_body(subject, i).to_string().into(),
        )
        .await
        .unwrap();
        a.flush().await.unwrap();
        i += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while hist.len() < i as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    hist
}

async fn nats_throughput(n: &Nats, subject: &str, total: u64) -> (f64, f64, u64) {
    use futures::StreamExt;
    let (a, mut sub) = nats_pair(n, subject).await;
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let g = got.clone();
    let reader = tokio::spawn(async move {
        while let Some(_m) = sub.next().await {
            if g.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= total {
                return Instant::now();
            }
        }
        Instant::now()
    });
    let body: bytes::Bytes = event_body(subject, 0).to_string().into();
    let start = Instant::now();
    for _ in 0..total {
        a.publish(subject.to_string(), body.clone()).await.unwrap();
    }
    a.flush().await.unwrap();
    let end = match tokio::time::timeout(Duration::from_secs(60), reader).await {
        Ok(Ok(t)) => t,
        _ => Instant::now(),
    };
    let received = got.load(std::sync::atomic::Ordering::Relaxed);
    let secs = (end - start).as_secs_f64();
    (received as f64 / secs, secs, received)
}

// ----------------------------------------------------------------------------- main

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("BENCH_SECS", 5);
    let rate = env_u64("BENCH_RATE", 500);
    let total = env_u64("BENCH_EVENTS", 200_000);
    // BENCH_ONLY=latency|throughput runs one kind of row; BENCH_NATS=0 skips the peer.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let latency_rows = only != "throughput";
    let throughput_rows = only != "latency";
    let nats_rows = std::env::var("BENCH_NATS").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<Row> = Vec::new();
    // (name, one-way delay, jitter)
    let links: [(&str, u64, u64); 3] = [
        ("loopback", 0, 0),
        ("WAN 20 ms RTT", 10, 0),
        ("WAN 20 ms RTT ±2 ms jitter", 10, 2),
    ];
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let m = start_mesh();
        wait_for("the a–b link connected", 30, || async {
            let s = mesh_status(&c, &m.a).await;
            s["links"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["state"] == "connected"))
        })
        .await;
        // Local reference: publish→webhook within cluster a.
        if latency_rows {
            let (sink, hist, task) = latency_sink().await;
            put_topic(&c, &m.a, "local", 1).await;
            subscribe(&c, &m.a, json!({"name": "local", "topic": "local", "group": "local",
                "sink": {"webhook": {"url": sink}}, "delivery": {"max_in_flight": 64}})).await;
            let url = format!("{}/v1/topics/local/events", m.a);
            let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
            let mut tick = tokio::time::interval(interval);
            let end = Instant::now() + Duration::from_secs(secs);
            let mut i = 0;
            while Instant::now() < end {
                tick.tick().await;
                publish_one(&c, &url, event_body("local", i)).await;
                i += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            task.abort();
            eprintln!("meshd same cluster: p50 {:.3} p99 {:.3} ms ({} samples)", hist.pct(0.5), hist.pct(0.99), hist.len());
            rows.push(Row { system: "meshd", link: "same cluster".into(), scenario: format!("publish→webhook at {rate} ev/s"),
                events_per_sec: rate as f64, p50_ms: hist.pct(0.5), p99_ms: hist.pct(0.99), one_way_ms: 0.0 });
        }
        for (k, (name, delay, jitter)) in links.iter().enumerate() {
            m.emu.set_config(LinkConfig {
                delay: Duration::from_millis(*delay),
                jitter: Duration::from_millis(*jitter),
                ..LinkConfig::default()
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            if latency_rows {
                let hist = meshd_latency(&c, &m, &format!("lat{k}"), rate, secs).await;
                eprintln!("meshd {name}: p50 {:.3} p99 {:.3} ms ({} samples)", hist.pct(0.5), hist.pct(0.99), hist.len());
                rows.push(Row { system: "meshd", link: name.to_string(), scenario: format!("publish in A → webhook in B at {rate} ev/s"),
                    events_per_sec: rate as f64, p50_ms: hist.pct(0.5), p99_ms: hist.pct(0.99), one_way_ms: *delay as f64 });
            }
            if *jitter == 0 && throughput_rows {
                let (eps, s) = meshd_throughput(&c, &m, &format!("thr{k}"), total).await;
                eprintln!("meshd {name}: {total} events replicated in {s:.2}s = {eps:.0} ev/s");
                rows.push(Row { system: "meshd", link: name.to_string(), scenario: format!("replicate a {total}-event backlog A→B (stored in B)"),
                    events_per_sec: eps, p50_ms: f64::NAN, p99_ms: f64::NAN, one_way_ms: *delay as f64 });
            }
        }
        let link_status = mesh_status(&c, &m.a).await["links"].clone();
        eprintln!("meshd link a→b at the end: {link_status}");
        eprintln!("emulator: {:?}", m.emu.counters());
        drop(m);

        match if nats_rows { start_nats() } else { None } {
            None if !nats_rows => eprintln!("BENCH_NATS=0: NATS rows skipped"),
            None => eprintln!("nats-server not found or did not start: NATS rows skipped"),
            Some(n) => {
                for (k, (name, delay, jitter)) in links.iter().enumerate() {
                    for e in &n.emus {
                        e.set_config(LinkConfig {
                            delay: Duration::from_millis(*delay),
                            jitter: Duration::from_millis(*jitter),
                            ..LinkConfig::default()
                        });
                    }
                    if latency_rows {
                        let hist = nats_latency(&n, &format!("lat{k}"), rate, secs).await;
                        eprintln!("nats {name}: p50 {:.3} p99 {:.3} ms ({} samples)", hist.pct(0.5), hist.pct(0.99), hist.len());
                        rows.push(Row { system: "NATS 2.9 gateways (core, no JetStream)", link: name.to_string(), scenario: format!("publish in A → subscriber in B at {rate} ev/s"),
                            events_per_sec: rate as f64, p50_ms: hist.pct(0.5), p99_ms: hist.pct(0.99), one_way_ms: *delay as f64 });
                    }
                    if *jitter == 0 && throughput_rows {
                        let (eps, s, got) = nats_throughput(&n, &format!("thr{k}"), total).await;
                        eprintln!("nats {name}: {got}/{total} received in {s:.2}s = {eps:.0} ev/s");
                        rows.push(Row { system: "NATS 2.9 gateways (core, no JetStream)", link: name.to_string(),
                            scenario: format!("publish {total} in A as fast as possible, received in B ({got} arrived)"),
                            events_per_sec: eps, p50_ms: f64::NAN, p99_ms: f64::NAN, one_way_ms: *delay as f64 });
                    }
                }
            }
        }
    });
    println!("| system | link | scenario | events/s | p50 ms | p99 ms | p99 − one-way delay ms |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let fmt = |x: f64| {
        if x.is_nan() {
            "–".to_string()
        } else {
            format!("{x:.3}")
        }
    };
    for r in &rows {
        let over = if r.p99_ms.is_nan() {
            f64::NAN
        } else {
            r.p99_ms - r.one_way_ms
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} |",
            r.system,
            r.link,
            r.scenario,
            r.events_per_sec,
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            fmt(over)
        );
    }
    // Ratios meshd / NATS on the same link and scenario kind.
    type Pair<'a> = (Option<&'a Row>, Option<&'a Row>);
    let mut by: BTreeMap<(String, bool), Pair> = BTreeMap::new();
    for r in &rows {
        let key = (r.link.clone(), r.p50_ms.is_nan());
        let e = by.entry(key).or_default();
        if r.system == "meshd" {
            e.0 = Some(r)
        } else {
            e.1 = Some(r)
        }
    }
    println!();
    println!("| link | measure | meshd | NATS | meshd/NATS |");
    println!("|---|---|---:|---:|---:|");
    for ((link, thr), (m, n)) in by {
        let (Some(m), Some(n)) = (m, n) else { continue };
        if thr {
            println!(
                "| {link} | throughput ev/s | {:.0} | {:.0} | {:.2} |",
                m.events_per_sec,
                n.events_per_sec,
                m.events_per_sec / n.events_per_sec
            );
        } else {
            println!(
                "| {link} | p99 latency ms | {:.3} | {:.3} | {:.2} |",
                m.p99_ms,
                n.p99_ms,
                m.p99_ms / n.p99_ms
            );
        }
    }
}
