//! Publish benchmark: meshd (a separate `meshd node` process, embedded store) against NATS
//! JetStream (a separate `nats-server -js` process, file storage) in the same run.
//!
//! Measures: publish throughput for single-event requests and 100-event batches, publish
//! latency, and publish→push latency (meshd webhook; JetStream consumer). Results are
//! printed as a Markdown table for docs/benchmarks.md.
//!
//! Run: `cargo bench --bench publish` (env: BENCH_SECS=10 per scenario, BENCH_CONNS=64,
//! BENCH_FSYNC=always,interval,never: the meshd fsync modes to run, in that order;
//! BENCH_VARIANTS="A;B": run every mode once per variant, each variant being extra
//! `meshd node` arguments, e.g. `BENCH_VARIANTS=";--trace-retention 0"` compares the
//! default with tracing off in one run; BENCH_NATS=0 skips the JetStream rows;
//! BENCH_VALIDATE=off,on,discover: run every mode once per setting, events then carrying
//! a typical 20-field `data` and the topic binding their type to a 20-field JSON Schema
//! with `validate: true` when on, no binding when off, `discover: true` (schema discovery,
//! no binding) when discover: the validation and discovery costs, same events);
//! BENCH_GRPC_WINDOW=1000: single-event publishes in flight on one gRPC `PublishStream`,
//! 0 skips the gRPC rows).
//! Needs `nats-server` on PATH for the peer (Debian package nats-server); without it the
//! NATS rows are skipped with a note.
//!
//! Trace cost: run it twice, `MESHD_TRACE_RETENTION=0` (tracing off in the node it
//! starts) and without (on, the default), and compare the meshd rows.
//!
//! The Pulsar store has its own bench against the official Pulsar client
//! (`cargo bench --bench pulsar`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

#[path = "support/mod.rs"]
mod support;
use support::meshd::{
    connect, event_body, meshd_publish, meshd_push_latency, start_meshd, wide_schema, Hist,
    WIDE_EVENTS,
};
use support::{env_u64, start_nats, unix_nanos};

struct Row {
    system: String,
    scenario: String,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
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

/// Single-event publishes over one gRPC `PublishStream` with `window` in flight for `secs`:
/// acknowledged events per second and latency (send → its ack).
async fn grpc_publish_stream(addr: &str, window: usize, secs: u64) -> (f64, Arc<Hist>) {
    use meshd_proto::cloudevents::cloud_event::cloud_event_attribute_value::Attr;
    use meshd_proto::cloudevents::cloud_event::{CloudEventAttributeValue, Data};
    use meshd_proto::v1::event_mesh_client::EventMeshClient;
    use meshd_proto::v1::PublishRequest;
    let mut client = EventMeshClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(window);
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let sent = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let mut acks = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let producer = {
        let (permits, sent) = (permits.clone(), sent.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                permits.acquire().await.unwrap().forget();
                let mut attributes = std::collections::HashMap::new();
                let s = |v: String| CloudEventAttributeValue {
                    attr: Some(Attr::CeString(v)),
                };
                attributes.insert("partitionkey".to_string(), s(format!("k{}", i % 64)));
                attributes.insert("datacontenttype".to_string(), s("application/json".into()));
                let data = serde_json::json!({"ts": unix_nanos(), "payload": "x".repeat(200)});
                let event = meshd_proto::cloudevents::CloudEvent {
                    id: format!("g-{i}"),
                    source: "/bench".into(),
                    spec_version: "1.0".into(),
                    r#type: "bench.event".into(),
                    attributes,
                    data: Some(Data::TextData(data.to_string())),
                };
                sent.lock().unwrap().push_back(Instant::now());
                let req = PublishRequest {
                    topic: "bench".into(),
                    events: Some(meshd_proto::v1::publish_request::Events::Event(event)),
                };
                if tx.send(req).await.is_err() {
                    break;
                }
                i += 1;
            }
        })
    };
    let hist = Arc::new(Hist::default());
    let mut count = 0u64;
    let mut last = start;
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(ack.error.is_none(), "publish refused: {:?}", ack.error);
        let t = sent
            .lock()
            .unwrap()
            .pop_front()
            .expect("an ack per request");
        hist.add(t.elapsed().as_nanos() as u64);
        count += 1;
        last = Instant::now();
        permits.add_permits(1);
    }
    producer.await.unwrap();
    (count as f64 / (last - start).as_secs_f64(), hist)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("BENCH_SECS", 10);
    let conns = env_u64("BENCH_CONNS", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        let modes = std::env::var("BENCH_FSYNC").unwrap_or_else(|_| "always,interval,never".into());
        let variants = std::env::var("BENCH_VARIANTS").unwrap_or_default();
        let validate = std::env::var("BENCH_VALIDATE").ok();
        WIDE_EVENTS.store(validate.is_some(), Ordering::Relaxed);
        let settings: Vec<Option<String>> = match &validate {
            None => vec![None],
            Some(v) => v.split(',').map(|s| Some(s.trim().to_string())).collect(),
        };
        let runs: Vec<(String, String, Option<String>)> = variants
            .split(';')
            .flat_map(|v| {
                let settings = settings.clone();
                modes
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .flat_map(move |m| {
                        let v = v.trim().to_string();
                        settings
                            .clone()
                            .into_iter()
                            .map(move |on| (v.clone(), m.to_string(), on))
                    })
            })
            .collect();
        for (variant, fsync, validate) in &runs {
            let fsync = fsync.as_str();
            let extra: Vec<&str> = variant.split_whitespace().collect();
            let mut label = format!("fsync={fsync}");
            if !variant.is_empty() {
                label.push_str(&format!(", {variant}"));
            }
            if let Some(setting) = validate {
                label.push_str(match setting.as_str() {
                    "on" => ", 20-field schema, validate=on",
                    "discover" => ", 20-field events, discover=on",
                    _ => ", 20-field events, no schema",
                });
            }
            let grpc_window = env_u64("BENCH_GRPC_WINDOW", 1000) as usize;
            let grpc_addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string();
            let mut extra = extra;
            if grpc_window > 0 {
                extra.extend(["--grpc-listen", grpc_addr.as_str()]);
            }
            let dir = tempfile::tempdir().unwrap();
            let (_m, url) = start_meshd(dir.path(), fsync, &extra);
            let addr = url.trim_start_matches("http://").to_string();
            let mut s = connect(&addr).await;
            let mut topic = serde_json::json!({"partitions": 4});
            if validate.as_deref() == Some("discover") {
                topic["discover"] = serde_json::json!(true);
            }
            if validate.as_deref() == Some("on") {
                let put = hyper::Request::put("/v1/schemas/bench")
                    .header("host", &addr)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(wide_schema().to_string())))
                    .unwrap();
                s.ready().await.unwrap();
                let r = s.send_request(put).await.unwrap();
                assert!(r.status().is_success(), "schema: {}", r.status());
                let _ = r.into_body().collect().await;
                topic["schemas"] = serde_json::json!({"bench.event": "bench"});
                topic["validate"] = serde_json::json!(true);
            }
            let put = hyper::Request::put("/v1/topics/bench")
                .header("host", &addr)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(topic.to_string())))
                .unwrap();
            s.ready().await.unwrap();
            let r = s.send_request(put).await.unwrap();
            assert!(r.status().is_success(), "topic: {}", r.status());
            let _ = r.into_body().collect().await;
            for (batch, c) in [(1, conns), (100, conns.min(16))] {
                let (rate, hist) = meshd_publish(&url, batch, c, secs).await;
                rows.push(Row {
                    system: format!("meshd ({label})"),
                    scenario: format!("publish, {batch}-event requests, {c} connections"),
                    events_per_sec: rate,
                    p50_ms: hist.pct(0.5),
                    p99_ms: hist.pct(0.99),
                });
                eprintln!("meshd {label} batch={batch}: {rate:.0} ev/s");
            }
            if validate.as_deref() == Some("discover") {
                // How much discovery inferred, and skipped (queue full) under this load.
                let mut s = connect(&addr).await;
                let get = hyper::Request::get("/v1/topics/bench/discovered")
                    .header("host", &addr)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                s.ready().await.unwrap();
                let body = s
                    .send_request(get)
                    .await
                    .unwrap()
                    .into_body()
                    .collect()
                    .await;
                let list: serde_json::Value =
                    serde_json::from_slice(&body.unwrap().to_bytes()).unwrap_or_default();
                let inferred: u64 = list["schemas"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s["events"].as_u64()).sum())
                    .unwrap_or(0);
                eprintln!(
                    "meshd {label}: discovery inferred {inferred} events, skipped {}",
                    list["skipped"]
                );
            }
            if grpc_window > 0 {
                let (rate, hist) = grpc_publish_stream(&grpc_addr, grpc_window, secs).await;
                rows.push(Row {
                    system: format!("meshd gRPC ({label})"),
                    scenario: format!(
                        "publish, 1-event requests, 1 PublishStream, {grpc_window} in flight"
                    ),
                    events_per_sec: rate,
                    p50_ms: hist.pct(0.5),
                    p99_ms: hist.pct(0.99),
                });
                eprintln!("meshd gRPC {label} window={grpc_window}: {rate:.0} ev/s");
            }
            if fsync == "always" && validate.is_none() {
                let hist = meshd_push_latency(&url, 1000, secs, "lat").await;
                rows.push(Row {
                    system: format!("meshd ({label})"),
                    scenario: "publish→webhook latency at 1k ev/s".into(),
                    events_per_sec: 1000.0,
                    p50_ms: hist.pct(0.5),
                    p99_ms: hist.pct(0.99),
                });
            }
        }
        let ndir = tempfile::tempdir().unwrap();
        let nats = if std::env::var("BENCH_NATS").as_deref() == Ok("0") {
            None
        } else {
            start_nats(ndir.path())
        };
        match nats {
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
