//! Driving a `meshd node` process from a bench: start it, publish to it over keep-alive
//! HTTP/1.1 connections (closed loop, or open loop at a fixed rate), measure push
//! latency through a webhook, and start a `pulsar-lite` broker for it.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{free_port, unix_nanos, Killed};

/// Latency samples in nanoseconds.
#[derive(Default)]
pub struct Hist(Mutex<Vec<u64>>);

impl Hist {
    pub fn add(&self, nanos: u64) {
        self.0.lock().unwrap().push(nanos);
    }

    /// The `p` quantile in milliseconds (NaN without samples).
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.lock().unwrap().clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i] as f64 / 1e6
    }

    /// The largest sample in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.0.lock().unwrap().iter().copied().max().unwrap_or(0) as f64 / 1e6
    }

    /// Samples at or above `ms` milliseconds.
    pub fn at_least(&self, ms: f64) -> usize {
        let bound = (ms * 1e6) as u64;
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n >= bound)
            .count()
    }
}

/// Starts `meshd node` (the binary of this build) on a free port with its data in `dir`;
/// returns its guard and base URL.
/// Extra `meshd node` arguments every node a bench starts gets: `BENCH_NODE_ARGS`
/// (whitespace-separated, e.g. `--trace-retention 0`).
pub fn node_args_from_env() -> Vec<String> {
    std::env::var("BENCH_NODE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub fn start_meshd(dir: &std::path::Path, fsync: &str, extra: &[&str]) -> (Killed, String) {
    // BENCH_MESHD_BIN: another build (e.g. the main branch's) for a before/after.
    let bin =
        std::env::var("BENCH_MESHD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_meshd").into());
    let mut child = Command::new(bin)
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
        .args(node_args_from_env())
        .env(
            "MESHD_LOG",
            std::env::var("MESHD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn meshd");
    let url = super::node_url(&mut child);
    (Killed(child), url)
}

/// One keep-alive HTTP/1.1 connection.
pub async fn connect(addr: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// POSTs `body` and returns the status.
pub async fn post(
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

/// A ≈300-byte JSON CloudEvent with a partition key and a send stamp in its data.
pub fn event_body(id: u64, key: u64) -> serde_json::Value {
    let data = if WIDE_EVENTS.load(Ordering::Relaxed) {
        wide_data(id)
    } else {
        json!({"ts": unix_nanos(), "payload": "x".repeat(200)})
    };
    json!({
        "specversion": "1.0", "id": format!("e-{id}"), "source": "/bench", "type": "bench.event",
        "partitionkey": format!("k{key}"), "datacontenttype": "application/json",
        "data": data
    })
}

/// Set: [`event_body`] carries [`wide_data`] (20 fields, valid under [`wide_schema`])
/// instead of the default `{ts, payload}`.
pub static WIDE_EVENTS: AtomicBool = AtomicBool::new(false);

/// A typical 20-field order event (≈600 bytes of JSON), valid under [`wide_schema`].
pub fn wide_data(id: u64) -> serde_json::Value {
    json!({
        "ts": unix_nanos(), "order_id": format!("o-{id}"), "customer_id": format!("c-{}", id % 977),
        "email": "someone@example.com", "status": "created", "currency": "EUR",
        "amount": 129.95, "tax": 24.69, "items": 3, "coupon": null,
        "express": false, "channel": "web", "country": "DE", "zip": "10115",
        "created_at": "2026-12-03T10:00:00Z", "notes": "leave at the door",
        "address": {"street": "Hauptstr. 1", "city": "Berlin", "country": "DE"},
        "tags": ["new", "promo"], "score": 0.87, "version": 2
    })
}

/// The JSON Schema (2020-12) of [`wide_data`]: 20 properties of the usual kinds (strings
/// with formats, patterns and enums, bounded numbers, a nested object, an array).
pub fn wide_schema() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "ts": {"type": "integer", "minimum": 0},
            "order_id": {"type": "string", "pattern": "^o-[0-9]+$"},
            "customer_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "email": {"type": "string", "format": "email"},
            "status": {"enum": ["created", "paid", "shipped", "cancelled"]},
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "amount": {"type": "number", "minimum": 0},
            "tax": {"type": "number", "minimum": 0},
            "items": {"type": "integer", "minimum": 1, "maximum": 1000},
            "coupon": {"type": ["string", "null"]},
            "express": {"type": "boolean"},
            "channel": {"enum": ["web", "app", "store"]},
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "zip": {"type": "string", "maxLength": 10},
            "created_at": {"type": "string", "format": "date-time"},
            "notes": {"type": "string", "maxLength": 500},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "city": {"type": "string"},
                    "country": {"type": "string", "pattern": "^[A-Z]{2}$"}
                },
                "required": ["street", "city", "country"]
            },
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "version": {"type": "integer"}
        },
        "required": ["ts", "order_id", "customer_id", "status", "currency", "amount", "items", "created_at", "address", "version"],
        "additionalProperties": false
    })
}

/// What a publish load measured.
pub struct Load {
    /// Acknowledged (200) events per second.
    pub events_per_sec: f64,
    /// Request latencies of acknowledged requests (open loop: from the scheduled send).
    pub hist: Arc<Hist>,
    /// Requests answered with anything but 200.
    pub errors: u64,
}

/// Publishes `batch`-event requests to `topic` over `conns` connections for `secs`:
/// as fast as answers come back (`rate` None) or at `rate` requests per second in total,
/// each latency then counted from the request's scheduled time (so queueing shows).
pub async fn publish_load(
    url: &str,
    topic: &str,
    batch: u64,
    conns: u64,
    secs: u64,
    rate: Option<f64>,
) -> Load {
    let addr = url.trim_start_matches("http://").to_string();
    let path = format!("/v1/topics/{topic}/events");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Hist::default());
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, path, stop, count, errors, hist) = (
            addr.clone(),
            path.clone(),
            stop.clone(),
            count.clone(),
            errors.clone(),
            hist.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&addr).await;
            let mut tick = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(conns as f64 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
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
                let started = match tick.as_mut() {
                    Some(t) => t.tick().await.into_std(),
                    None => Instant::now(),
                };
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let st = post(&mut s, &addr, &path, ct, Bytes::from(body)).await;
                if st == 200 {
                    hist.add(started.elapsed().as_nanos() as u64);
                    count.fetch_add(batch, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
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
    Load {
        events_per_sec: count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        hist,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Closed-loop publishes to topic `bench` (see [`publish_load`]): rate and latencies.
pub async fn meshd_publish(url: &str, batch: u64, conns: u64, secs: u64) -> (f64, Arc<Hist>) {
    let load = publish_load(url, "bench", batch, conns, secs, None).await;
    assert_eq!(load.errors, 0, "publishes failed");
    (load.events_per_sec, load.hist)
}

/// Creates `topic` with `partitions` partitions.
/// Pulls what subscription `sub` has ready now (at most `max`, no wait) and acknowledges
/// it; the number of events received.
pub async fn pull_and_ack(http: &reqwest::Client, url: &str, sub: &str, max: u64) -> u64 {
    let r: serde_json::Value = http
        .get(format!(
            "{url}/v1/subscriptions/{sub}/events?max={max}&wait=0s"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = r["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["ack_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !ids.is_empty() {
        http.post(format!("{url}/v1/subscriptions/{sub}/ack"))
            .json(&json!({"ack_ids": ids}))
            .send()
            .await
            .unwrap();
    }
    ids.len() as u64
}

pub async fn create_topic(url: &str, topic: &str, partitions: u32) {
    let addr = url.trim_start_matches("http://").to_string();
    let mut s = connect(&addr).await;
    let put = hyper::Request::put(format!("/v1/topics/{topic}"))
        .header("host", &addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"partitions":{partitions}}}"#
        ))))
        .unwrap();
    s.ready().await.unwrap();
    let status = s.send_request(put).await.unwrap().status();
    assert!(status.is_success(), "creating topic {topic}: {status}");
}

/// Publishes one event at a time at `rate` to `topic` (created here) with a webhook
/// subscription, and measures event creation → webhook receipt.
pub async fn meshd_push_latency(url: &str, rate: u64, secs: u64, topic: &str) -> Arc<Hist> {
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

/// Starts a `pulsar-lite` broker (PyPI `pulsar-lite`; `$PULSAR_LITE_BINARY` or the
/// binary its package ships) on a free port with its data under `dir`; `None` when it is
/// missing or does not start.
pub fn start_pulsar_lite(dir: &std::path::Path) -> Option<(Killed, String)> {
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
    if !super::wait_port(port, Duration::from_secs(10)) {
        return None;
    }
    Some((guard, format!("pulsar://127.0.0.1:{port}")))
}
