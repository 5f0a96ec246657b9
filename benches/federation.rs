//! Cross-cluster benchmark: two meshd clusters (separate `meshd node --topology` processes,
//! release build) joined by one QUIC link that runs through a userspace link emulator
//! (meshd-linkemu), against two NATS peers in the same run, each a supercluster of two
//! `nats-server` processes joined by gateways whose TCP connections run through the TCP
//! emulator: core NATS (no storage), and JetStream (the durable peer: a stream in cluster A
//! sourced by a stream in cluster B).
//!
//! Measures, per emulated one-way delay:
//! - publish→delivery latency: an event published over HTTP in cluster A (ack after fsync)
//!   until a webhook subscribed in cluster B receives it (p50/p99), and its overhead over
//!   the link's one-way delay; core NATS: publish in A until a subscriber of B receives it;
//!   JetStream: acked publish to A's stream until a consumer of B's sourcing stream gets it.
//! - replication throughput of the link: a backlog of N events already stored in A is
//!   replicated and stored in B (timed from the moment B subscribes; JetStream: from the
//!   moment B's sourcing stream is created); core NATS: N events published in A as fast as
//!   the client can until B's subscriber received them.
//! - reroute cost (meshd): in a triangle, what a's direct link sends again when the
//!   cluster that relayed a's events to c is killed, and what c's application gets twice.
//!
//! Run: `cargo bench --bench federation` (env: BENCH_SECS=5 per latency scenario,
//! BENCH_RATE=500 events/s, BENCH_EVENTS=300000 for throughput, BENCH_REROUTE_EVENTS=150000,
//! BENCH_FSYNC=always, BENCH_ONLY=latency|throughput|reroute, BENCH_NATS=0, BENCH_JS=0).
//! Without `nats-server` on PATH the NATS rows are skipped with a note.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd_linkemu::{LinkConfig, LinkEmulator, TcpLinkEmulator};
use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;
// The federation tests' harness (mesh CA, topology, `meshd node` guards) for the reroute
// scenario.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/federation_support/mod.rs"]
mod federation_support;
use federation_support as fed;
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

/// ≈327-byte structured CloudEvent (JSON as sent, with an id like `thr1-123456`)
/// carrying its send time. `tag` keeps ids unique across scenarios: receivers drop
/// duplicates by (source, id) across all topics.
fn event_body(tag: &str, id: u64) -> Value {
    json!({
        "specversion": "1.0", "id": format!("{tag}-{id}"), "source": "/bench", "type": "bench.event",
        "partitionkey": format!("k{}", id % 16), "datacontenttype": "application/json",
        "data": {"ts": unix_nanos(), "payload": "x".repeat(144)}
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
    let url = support::node_url(&mut child);
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
        // `earliest`: the backlog is history; a `latest` subscription made now would
        // start at a's current end (positions in origin terms) and replicate nothing.
        json!({"name": topic, "topic": topic, "group": topic, "start": "earliest", "sink": {"pull": {}}}),
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

/// Two one-server NATS clusters `A` and `B` joined by gateways through the TCP emulator.
/// With `jetstream`, each server also runs JetStream with its own file store, so the two
/// form one JetStream domain across the supercluster (a meta group of two); a JetStream
/// cluster needs a `cluster` block with routes, so each names its own route port (the
/// server drops the route to itself as a duplicate).
fn start_nats(jetstream: bool) -> Option<Nats> {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, ga, gb) = (free_port(), free_port(), free_port(), free_port());
    let (ra, rb) = (free_port(), free_port());
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
    let store = dir.path().to_path_buf();
    let conf = |name: &str, port: u16, gw: u16, route: u16, other: &str, other_url: SocketAddr| {
        let mut c = format!(
            "listen: 127.0.0.1:{port}\nserver_name: {name}\ngateway {{\n  name: {name}\n  listen: 127.0.0.1:{gw}\n  gateways: [ {{ name: {other}, url: \"nats://{other_url}\" }} ]\n}}\n"
        );
        if jetstream {
            c.push_str(&format!(
                "jetstream {{ store_dir: \"{}\" }}\ncluster {{ name: {name}, listen: 127.0.0.1:{route}, routes: [ \"nats://127.0.0.1:{route}\" ] }}\n",
                store.join(format!("js-{name}")).display()
            ));
        }
        c
    };
    let fa = dir.path().join("a.conf");
    let fb = dir.path().join("b.conf");
    std::fs::write(&fa, conf("A", pa, ga, ra, "B", emu_to_b.local_addr())).ok()?;
    std::fs::write(&fb, conf("B", pb, gb, rb, "A", emu_to_a.local_addr())).ok()?;
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

// ------------------------------------------------------------------- NATS JetStream

/// JetStream contexts on server A (where the source streams live) and server B (where
/// the sourcing streams live).
struct Js {
    a: async_nats::jetstream::Context,
    b: async_nats::jetstream::Context,
}

async fn js_connect(n: &Nats) -> Js {
    let a = async_nats::connect(&n.a).await.unwrap();
    let b = async_nats::connect(&n.b).await.unwrap();
    Js {
        a: async_nats::jetstream::new(a),
        b: async_nats::jetstream::new(b),
    }
}

/// A file-store stream placed in `cluster`; `source` makes it source that stream (which
/// lives in the other cluster, so its messages cross the gateway). Retried until the
/// JetStream meta group (which spans the gateway) has a leader.
async fn js_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    cluster: &str,
    subject: Option<&str>,
    source: Option<&str>,
) -> async_nats::jetstream::stream::Stream {
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: name.to_string(),
        subjects: subject.map(|s| vec![s.to_string()]).unwrap_or_default(),
        storage: stream::StorageType::File,
        placement: Some(stream::Placement {
            cluster: Some(cluster.to_string()),
            tags: vec![],
        }),
        sources: source.map(|s| {
            vec![stream::Source {
                name: s.to_string(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "JetStream stream {name} in {cluster}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn js_count(s: &mut async_nats::jetstream::stream::Stream) -> u64 {
    match s.info().await {
        Ok(i) => i.state.messages,
        Err(_) => 0,
    }
}

/// Publish→delivery latency through JetStream sourcing: each event is published to a
/// stream in A (the publish waits for JetStream's ack, as meshd's waits for its 200) and
/// timed when a consumer of the stream in B that sources it receives it.
async fn js_latency(n: &Nats, tag: &str, rate: u64, secs: u64) -> Arc<Hist> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let js = js_connect(n).await;
    let (src, dst) = (format!("SRC_{tag}"), format!("DST_{tag}"));
    js_stream(&js.a, &src, "A", Some(tag), None).await;
    let dst_stream = js_stream(&js.b, &dst, "B", None, Some(&src)).await;
    let cons: consumer::PullConsumer = dst_stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = cons.messages().await.unwrap();
    let hist = Arc::new(Hist::default());
    let h = hist.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = msgs.next().await {
            let Ok(m) = m else { continue };
            if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                if let Some(ts) = v["data"]["ts"].as_u64() {
                    h.add(unix_nanos().saturating_sub(ts));
                }
            }
        }
    });
    let publish = |i: u64, tag: &str| {
        let js = js.a.clone();
        let (subject, body) = (tag.to_string(), event_body(tag, i).to_string());
        async move {
            js.publish(subject, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    // Warm-up: 20 events through the whole path (source consumer set up), then reset.
    for i in 0..20 {
        publish(1_000_000 + i, tag).await;
    }
    wait_for("JetStream warm-up events sourced", 60, || async {
        hist.len() >= 20
    })
    .await;
    hist.0.lock().unwrap().clear();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        publish(sent, tag).await;
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hist.len() < sent as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if hist.len() < sent as usize {
        eprintln!(
            "warning: JetStream {tag}: {} of {sent} delivered",
            hist.len()
        );
    }
    reader.abort();
    hist
}

/// Stores `total` events in a stream in A (published without waiting for each ack: up
/// to 4096 acks outstanding, so the publisher is not the limit), then creates the stream
/// in B that sources it and times until it holds all of them. Returns (events/s,
/// seconds, events in B at the end).
async fn js_throughput(n: &Nats, tag: &str, total: u64) -> (f64, f64, u64) {
    let js = js_connect(n).await;
    let (src, dst) = (format!("SRC_{tag}"), format!("DST_{tag}"));
    let mut src_stream = js_stream(&js.a, &src, "A", Some(tag), None).await;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..total {
        let body = event_body(tag, i).to_string();
        pending.push_back(js.a.publish(tag.to_string(), body.into()).await.unwrap());
        if pending.len() >= 4096 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    assert_eq!(js_count(&mut src_stream).await, total);
    let start = Instant::now();
    let mut dst_stream = js_stream(&js.b, &dst, "B", None, Some(&src)).await;
    let deadline = start + Duration::from_secs(300);
    let mut got = 0;
    while got < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        got = js_count(&mut dst_stream).await;
    }
    let secs = start.elapsed().as_secs_f64();
    if got < total {
        eprintln!("warning: JetStream {tag}: B sourced only {got} of {total} in {secs:.0}s");
    }
    // Free the disk and the servers' work before the next scenario.
    let _ = js.b.delete_stream(&dst).await;
    let _ = js.a.delete_stream(&src).await;
    (got as f64 / secs, secs, got)
}

// ------------------------------------------------------------------- reroute cost

/// A webhook counting deliveries per `ce-id` (the recording sink of the tests keeps every
/// request and rescans them, too slow for 150,000 events).
type IdCounts = (std::collections::HashSet<String>, u64);

struct CountingSink {
    url: String,
    /// Distinct ids, deliveries.
    ids: Arc<Mutex<IdCounts>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingSink {
    async fn start() -> CountingSink {
        let ids: Arc<Mutex<IdCounts>> = Arc::default();
        let rec = ids.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let rec = rec.clone();
                async move {
                    if let Some(id) = headers.get("ce-id").and_then(|v| v.to_str().ok()) {
                        let mut r = rec.lock().unwrap();
                        r.0.insert(id.to_string());
                        r.1 += 1;
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
        CountingSink { url, ids, task }
    }
    /// (distinct ids, deliveries).
    fn counts(&self) -> (u64, u64) {
        let ids = self.ids.lock().unwrap();
        (ids.0.len() as u64, ids.1)
    }
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Reroute {
    when: &'static str,
    retained: u64,
    after: u64,
    /// Events c held (received from b) when b died.
    via_b: u64,
    /// Events a's direct link to c sent after the reroute.
    direct_sent: u64,
    /// Of those, events c already held.
    sent_again: u64,
    /// Deliveries beyond the first to c's webhook.
    app_duplicates: u64,
    /// Duplicates c's bridge dropped on the direct link.
    dropped: u64,
}

/// Triangle a–b–c (a–b and b–c cost 1, a–c cost 10): `retained` events published in a
/// reach c through b; b is killed with SIGKILL once c's webhook got all of them
/// (`kill_at_stored` None) or once c's store holds `kill_at_stored` (replication in
/// flight); then `after` more are published in a, and the bench waits until c's webhook
/// got every event. Counts what a's direct link to c sent (`events_sent` in a's
/// `/v1/mesh`) against what c lacked, and what the application got twice.
async fn reroute_cost(
    c: &reqwest::Client,
    retained: u64,
    kill_at_stored: Option<u64>,
    after: u64,
    when: &'static str,
) -> Reroute {
    let files = fed::triangle();
    let sink = CountingSink::start().await;
    let mut subscription = fed::webhook_subscription("all", "orders", &sink.url);
    subscription["delivery"] = json!({"max_in_flight": 64});
    let (a, mut b, cc) = fed::start_triangle(c, &files, 4, &subscription).await;
    let publish_range = |from: u64, to: u64| {
        let (c, url) = (c.clone(), a.at("/v1/topics/orders/events"));
        async move {
            let conns = 4u64;
            let batch = 1000u64;
            let mut tasks = Vec::new();
            for t in 0..conns {
                let (c, url) = (c.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = from + t * batch;
                    while i < to {
                        let n = batch.min(to - i);
                        let evs: Vec<Value> = (i..i + n).map(|j| event_body("rr", j)).collect();
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
        }
    };
    publish_range(0, retained).await;
    match kill_at_stored {
        None => {
            wait_for("c's webhook got the retained events", 600, || async {
                sink.counts().0 >= retained
            })
            .await
        }
        Some(k) => {
            wait_for("c stored the events to kill b at", 600, || async {
                stored(c, &cc.url, "orders").await >= k
            })
            .await
        }
    }
    let before = fed::link(c, &a, "c").await["events_sent"]
        .as_u64()
        .unwrap_or(0);
    if before != 0 {
        eprintln!("warning: a's direct link to c sent {before} events before b died");
    }
    b.kill9();
    let via_b = fed::link(c, &cc, "b").await["events_received"]
        .as_u64()
        .unwrap_or(0);
    fed::wait_interest(c, &a, "c", "c", "orders").await;
    publish_range(retained, retained + after).await;
    let total = retained + after;
    wait_for("c's webhook got every event", 600, || async {
        sink.counts().0 >= total
    })
    .await;
    // Let what is still in flight land: the counters are read once they stop moving.
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (
            fed::link(c, &a, "c").await["events_sent"]
                .as_u64()
                .unwrap_or(0),
            sink.counts().1,
        );
        if now == last {
            break;
        }
        last = now;
    }
    let direct_sent = last.0 - before;
    let (_, deliveries) = sink.counts();
    let ca = fed::link(c, &cc, "a").await;
    Reroute {
        when,
        retained,
        after,
        via_b,
        direct_sent,
        sent_again: direct_sent.saturating_sub(total.saturating_sub(via_b)),
        app_duplicates: deliveries - total,
        dropped: ca["duplicates"].as_u64().unwrap_or(0),
    }
}

// ----------------------------------------------------------------------------- main

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("BENCH_SECS", 5);
    let rate = env_u64("BENCH_RATE", 500);
    let total = env_u64("BENCH_EVENTS", 300_000);
    let reroute_events = env_u64("BENCH_REROUTE_EVENTS", 150_000);
    // BENCH_ONLY=latency|throughput|reroute runs one kind of row; BENCH_NATS=0 skips both
    // NATS peers, BENCH_JS=0 only the JetStream one.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let latency_rows = only.is_empty() || only == "latency";
    let throughput_rows = only.is_empty() || only == "throughput";
    let reroute_rows = only.is_empty() || only == "reroute";
    let nats_rows = std::env::var("BENCH_NATS").map_or(true, |v| v != "0");
    let js_rows = nats_rows && std::env::var("BENCH_JS").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<Row> = Vec::new();
    let mut reroutes: Vec<Reroute> = Vec::new();
    // (name, one-way delay, jitter)
    let links: [(&str, u64, u64); 3] = [
        ("loopback", 0, 0),
        ("WAN 20 ms RTT", 10, 0),
        ("WAN 20 ms RTT ±2 ms jitter", 10, 2),
    ];
    let emulate = |emus: &[&TcpLinkEmulator], delay: u64, jitter: u64| {
        for e in emus {
            e.set_config(LinkConfig {
                delay: Duration::from_millis(delay),
                jitter: Duration::from_millis(jitter),
                ..LinkConfig::default()
            });
        }
    };
    eprintln!(
        "start: {} load average {}",
        unix_nanos() / 1_000_000_000,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        if latency_rows || throughput_rows {
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
            rows.push(Row { system: MESHD, link: "same cluster".into(), scenario: format!("publish→webhook at {rate} ev/s"),
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
                rows.push(Row { system: MESHD, link: name.to_string(), scenario: format!("publish in A → webhook in B at {rate} ev/s"),
                    events_per_sec: rate as f64, p50_ms: hist.pct(0.5), p99_ms: hist.pct(0.99), one_way_ms: *delay as f64 });
            }
            if *jitter == 0 && throughput_rows {
                let (eps, s) = meshd_throughput(&c, &m, &format!("thr{k}"), total).await;
                eprintln!("meshd {name}: {total} events replicated in {s:.2}s = {eps:.0} ev/s");
                rows.push(Row { system: MESHD, link: name.to_string(), scenario: format!("replicate a {total}-event backlog A→B (stored in B)"),
                    events_per_sec: eps, p50_ms: f64::NAN, p99_ms: f64::NAN, one_way_ms: *delay as f64 });
            }
        }
        let link_status = mesh_status(&c, &m.a).await["links"].clone();
        eprintln!("meshd link a→b at the end: {link_status}");
        eprintln!("emulator: {:?}", m.emu.counters());
        drop(m);

        match if nats_rows { start_nats(false) } else { None } {
            None if !nats_rows => eprintln!("BENCH_NATS=0: NATS rows skipped"),
            None => eprintln!("nats-server not found or did not start: NATS rows skipped"),
            Some(n) => {
                for (k, (name, delay, jitter)) in links.iter().enumerate() {
                    emulate(&n.emus.iter().collect::<Vec<_>>(), *delay, *jitter);
                    if latency_rows {
                        let hist = nats_latency(&n, &format!("lat{k}"), rate, secs).await;
                        eprintln!("nats {name}: p50 {:.3} p99 {:.3} ms ({} samples)", hist.pct(0.5), hist.pct(0.99), hist.len());
                        rows.push(Row { system: NATS_CORE, link: name.to_string(), scenario: format!("publish in A → subscriber in B at {rate} ev/s"),
                            events_per_sec: rate as f64, p50_ms: hist.pct(0.5), p99_ms: hist.pct(0.99), one_way_ms: *delay as f64 });
                    }
                    if *jitter == 0 && throughput_rows {
                        let (eps, s, got) = nats_throughput(&n, &format!("thr{k}"), total).await;
                        eprintln!("nats {name}: {got}/{total} received in {s:.2}s = {eps:.0} ev/s");
                        rows.push(Row { system: NATS_CORE, link: name.to_string(),
                            scenario: format!("publish {total} in A as fast as possible, received in B ({got} arrived)"),
                            events_per_sec: eps, p50_ms: f64::NAN, p99_ms: f64::NAN, one_way_ms: *delay as f64 });
                    }
                }
            }
        }

        match if js_rows { start_nats(true) } else { None } {
            None if !js_rows => eprintln!("BENCH_NATS=0 or BENCH_JS=0: JetStream rows skipped"),
            None => eprintln!("nats-server with JetStream did not start: JetStream rows skipped"),
            Some(n) => {
                for (k, (name, delay, jitter)) in links.iter().enumerate() {
                    emulate(&n.emus.iter().collect::<Vec<_>>(), *delay, *jitter);
                    if latency_rows {
                        let hist = js_latency(&n, &format!("jslat{k}"), rate, secs).await;
                        eprintln!("jetstream {name}: p50 {:.3} p99 {:.3} ms ({} samples)", hist.pct(0.5), hist.pct(0.99), hist.len());
                        rows.push(Row { system: NATS_JS, link: name.to_string(), scenario: format!("publish (acked) in A → consumer of the sourcing stream in B at {rate} ev/s"),
                            events_per_sec: rate as f64, p50_ms: hist.pct(0.5), p99_ms: hist.pct(0.99), one_way_ms: *delay as f64 });
                    }
                    if *jitter == 0 && throughput_rows {
                        let (eps, s, got) = js_throughput(&n, &format!("jsthr{k}"), total).await;
                        eprintln!("jetstream {name}: {got}/{total} sourced in {s:.2}s = {eps:.0} ev/s");
                        rows.push(Row { system: NATS_JS, link: name.to_string(),
                            scenario: format!("source a {total}-message backlog A→B (stored in B; {got} arrived)"),
                            events_per_sec: eps, p50_ms: f64::NAN, p99_ms: f64::NAN, one_way_ms: *delay as f64 });
                    }
                }
            }
        }
        }

        if reroute_rows {
            let r = reroute_cost(&c, reroute_events, None, 1_000, "after c got every event").await;
            eprintln!("reroute ({}): direct link sent {}, {} again; app duplicates {}", r.when, r.direct_sent, r.sent_again, r.app_duplicates);
            reroutes.push(r);
            let r = reroute_cost(&c, reroute_events, Some(reroute_events / 2), 1_000, "while b→c replicated (c had stored half)").await;
            eprintln!("reroute ({}): direct link sent {}, {} again; app duplicates {}", r.when, r.direct_sent, r.sent_again, r.app_duplicates);
            reroutes.push(r);
        }
    });
    print_results(&rows, &reroutes);
}

const MESHD: &str = "meshd";
const NATS_CORE: &str = "NATS 2.9 gateways (core, no JetStream)";
const NATS_JS: &str = "NATS 2.9 JetStream sourcing (file store)";

fn print_results(rows: &[Row], reroutes: &[Reroute]) {
    let fmt = |x: f64| {
        if x.is_nan() {
            "–".to_string()
        } else {
            format!("{x:.3}")
        }
    };
    // Ratios first: meshd against each peer on the same link and scenario kind.
    println!("| link | measure | peer | meshd | peer's | meshd/peer |");
    println!("|---|---|---|---:|---:|---:|");
    for p in rows.iter().filter(|r| r.system != MESHD) {
        let thr = p.p50_ms.is_nan();
        let Some(m) = rows
            .iter()
            .find(|m| m.system == MESHD && m.link == p.link && m.p50_ms.is_nan() == thr)
        else {
            continue;
        };
        if thr {
            println!(
                "| {} | throughput ev/s | {} | {:.0} | {:.0} | **{:.2}** |",
                p.link,
                p.system,
                m.events_per_sec,
                p.events_per_sec,
                m.events_per_sec / p.events_per_sec
            );
        } else {
            println!(
                "| {} | p99 latency ms | {} | {:.3} | {:.3} | **{:.2}** |",
                p.link,
                p.system,
                m.p99_ms,
                p.p99_ms,
                m.p99_ms / p.p99_ms
            );
        }
    }
    println!();
    println!("| system | link | scenario | events/s | p50 ms | p99 ms | p99 − one-way delay ms |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for r in rows {
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
    if !reroutes.is_empty() {
        println!();
        println!("| b killed | retained in a | published after | c had from b | direct a→c link sent | of which c had (sent again) | delivered twice to c's app | dropped by c's window |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in reroutes {
            println!(
                "| {} | {} | {} | {} | {} | {} ({:.2} % of retained) | {} | {} |",
                r.when,
                r.retained,
                r.after,
                r.via_b,
                r.direct_sent,
                r.sent_again,
                100.0 * r.sent_again as f64 / r.retained as f64,
                r.app_duplicates,
                r.dropped
            );
        }
    }
}
