//! The canary workload: publishers that send events with a sequence number per partition
//! key (extension attributes `chaosrun`, `chaoskey`, `chaosseq`; `partitionkey` = the
//! key), one key at a time in order, retrying the same event until it is acknowledged;
//! and recorders in every cluster that feed what arrived into the shared [`Checker`]:
//! a webhook [`Sink`] (harness) or a pull-subscription poller ([`PullRecorder`], drills,
//! which need no inbound connectivity to the operator's machine).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::checker::Checker;
use crate::ChaosError;

/// The topic canaries go to.
pub const TOPIC: &str = "meshd-canary";

/// The shared checker.
pub type SharedChecker = Arc<Mutex<Checker>>;

pub(crate) fn lock(c: &SharedChecker) -> std::sync::MutexGuard<'_, Checker> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// A canary event (structured JSON).
pub fn canary_event(run: &str, key: &str, seq: u64) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{run}-{key}-{seq}"),
        "source": format!("/meshd-chaos/{run}"),
        "type": "meshd.canary",
        "partitionkey": key,
        "chaosrun": run,
        "chaoskey": key,
        "chaosseq": seq.to_string(),
        "datacontenttype": "application/json",
        "data": {"seq": seq},
    })
}

/// A fresh run id (letters and digits), so canaries of earlier runs are ignored.
pub fn run_id() -> String {
    format!("r{:08x}", rand::random::<u32>())
}

/// A webhook sink for cluster `cluster` recording canaries of `run`.
pub struct Sink {
    /// Its URL.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Binds `ip:0` and records into `checker` as `cluster`.
    pub async fn start(
        ip: IpAddr,
        cluster: &str,
        run: &str,
        checker: SharedChecker,
    ) -> Result<Sink, ChaosError> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|e| ChaosError::Io(format!("binding a sink on {ip}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ChaosError::Io(e.to_string()))?;
        let (cluster, run) = (cluster.to_string(), run.to_string());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let (checker, cluster, run) = (checker.clone(), cluster.clone(), run.clone());
                async move {
                    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                    if h("ce-chaosrun") == Some(run.as_str()) {
                        if let (Some(k), Some(s)) = (
                            h("ce-chaoskey"),
                            h("ce-chaosseq").and_then(|s| s.parse::<u64>().ok()),
                        ) {
                            lock(&checker).delivered(&cluster, k, s);
                        }
                    }
                    StatusCode::OK
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink {
            url: format!("http://{addr}/hook"),
            task,
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per node (the `meshd-node` header of a proxy's answer, or `direct`): canaries of the
/// run received from it and when the first one came.
pub type ServedBy = Arc<Mutex<std::collections::BTreeMap<String, (u64, Instant)>>>;

/// Polls a pull subscription and acknowledges, recording canaries of `run` as `cluster`.
pub struct PullRecorder {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Which node served the canaries (through a proxy: its `meshd-node` header).
    pub served_by: ServedBy,
}

impl PullRecorder {
    /// Starts polling `base/v1/subscriptions/{sub}/events`.
    pub fn start(
        c: reqwest::Client,
        base: &str,
        sub: &str,
        cluster: &str,
        run: &str,
        checker: SharedChecker,
    ) -> PullRecorder {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let served_by: ServedBy = Arc::default();
        let served = served_by.clone();
        let (base, sub, cluster, run) = (
            base.to_string(),
            sub.to_string(),
            cluster.to_string(),
            run.to_string(),
        );
        let task = tokio::spawn(async move {
            let url =
                format!("{base}/v1/subscriptions/{sub}/events?max=200&wait=500ms&consumer=drill");
            let ack = format!("{base}/v1/subscriptions/{sub}/ack");
            while !s.load(Ordering::Relaxed) {
                let Ok(r) = c.get(&url).send().await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let node = r
                    .headers()
                    .get("meshd-node")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("direct")
                    .to_string();
                let Ok(v) = r.json::<Value>().await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Some(events) = v["events"].as_array() else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut ids = Vec::new();
                for e in events {
                    ids.push(e["ack_id"].clone());
                    let ev = &e["event"];
                    if ev["chaosrun"] != run.as_str() {
                        continue;
                    }
                    let seq = ev["chaosseq"]
                        .as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .or_else(|| ev["chaosseq"].as_u64());
                    if let (Some(k), Some(seq)) = (ev["chaoskey"].as_str(), seq) {
                        lock(&checker).delivered(&cluster, k, seq);
                        let mut m = served.lock().unwrap_or_else(|p| p.into_inner());
                        m.entry(node.clone()).or_insert((0, Instant::now())).0 += 1;
                    }
                }
                if !ids.is_empty() {
                    let _ = c
                        .post(&ack)
                        .json(&json!({"ack_ids": ids, "consumer": "drill"}))
                        .send()
                        .await;
                }
            }
        });
        PullRecorder {
            stop,
            task: Some(task),
            served_by,
        }
    }

    /// Stops polling (after the request in flight).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for PullRecorder {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Publishers: one task per key, each publishing seq 0, 1, 2, … in order, the next only
/// after the previous was acknowledged (the same event is retried, on the next entry URL,
/// until then).
pub struct Publishers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Failed publish attempts (retried).
    pub failures: Arc<AtomicU64>,
    /// Start of the last run of failures per key, for "time without an ack".
    pub longest_gap_ms: Arc<AtomicU64>,
    /// Per node (the `meshd-node` header of a proxy's answer, or `direct`): canaries it
    /// acknowledged and when the first one was.
    pub acked_by: ServedBy,
    /// Failed attempts by answer (`503 draining`, `connect error`, …).
    pub failure_kinds: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
}

impl Publishers {
    /// Starts one publisher per key in `keys`, sending to `urls` (rotating on failure),
    /// waiting `pace` between acknowledged events.
    pub fn start(
        c: reqwest::Client,
        urls: Vec<String>,
        keys: Vec<String>,
        run: &str,
        pace: Duration,
        checker: SharedChecker,
    ) -> Publishers {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let longest_gap_ms = Arc::new(AtomicU64::new(0));
        let acked_by: ServedBy = Arc::default();
        let failure_kinds: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
        let mut tasks = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let (acked_by, kinds) = (acked_by.clone(), failure_kinds.clone());
            let (c, urls, run, stop, checker, failures, gap) = (
                c.clone(),
                urls.clone(),
                run.to_string(),
                stop.clone(),
                checker.clone(),
                failures.clone(),
                longest_gap_ms.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                let mut which = i % urls.len().max(1);
                let mut tick = tokio::time::interval(pace);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                'events: while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let body = canary_event(&run, &key, seq).to_string();
                    let started = Instant::now();
                    loop {
                        let Some(base) = urls.get(which) else { return };
                        let r = c
                            .post(format!("{base}/v1/topics/{TOPIC}/events"))
                            .header("content-type", "application/cloudevents+json")
                            .header("meshd-producer-group", format!("canary-{key}"))
                            .body(body.clone())
                            .send()
                            .await;
                        if matches!(&r, Ok(r) if r.status().is_success()) {
                            let node = r
                                .as_ref()
                                .ok()
                                .and_then(|r| r.headers().get("meshd-node"))
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("direct")
                                .to_string();
                            acked_by
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(node)
                                .or_insert((0, Instant::now()))
                                .0 += 1;
                            lock(&checker).acked(&key, seq);
                            gap.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            seq += 1;
                            continue 'events;
                        }
                        failures.fetch_add(1, Ordering::Relaxed);
                        let kind = match r {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let code = r
                                    .json::<Value>()
                                    .await
                                    .ok()
                                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                                    .unwrap_or_default();
                                format!("{status} {code}")
                            }
                            Err(e) if e.is_connect() => "connect error".to_string(),
                            Err(_) => "request error".to_string(),
                        };
                        *kinds
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(kind)
                            .or_default() += 1;
                        which = (which + 1) % urls.len().max(1);
                        if stop.load(Ordering::Relaxed) {
                            break 'events;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        Publishers {
            stop,
            tasks,
            failures,
            longest_gap_ms,
            acked_by,
            failure_kinds,
        }
    }

    /// Stops after the publishes in flight (each either acknowledged or abandoned).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Publishers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Waits until every expected cluster received every acknowledged canary; returns the
/// time it took, or None after `timeout`.
pub async fn wait_complete(checker: &SharedChecker, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if lock(checker).complete() {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
