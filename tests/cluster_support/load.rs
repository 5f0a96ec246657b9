//! A steady publish load through a cluster's proxies and what webhook sinks saw of it:
//! which node pushed every delivery, when, and how long after its publish. Shared by the
//! registry-outage and the rejoin tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::until;
use crate::common::{self, Sink};

/// The shape of a load: `tasks` publishers, each sending one event every `period` (the
/// next only after the previous answered), through the proxies in turn, with producer
/// group `pg-{n % producer_groups}` (0: no header, the proxy derives the group).
#[derive(Debug, Clone)]
pub struct Load {
    pub topic: String,
    pub tasks: usize,
    pub period: Duration,
    pub producer_groups: usize,
}

impl Load {
    /// One publisher, one event every 20 ms, no producer-group header.
    pub fn steady(topic: &str) -> Load {
        Load {
            topic: topic.to_string(),
            tasks: 1,
            period: Duration::from_millis(20),
            producer_groups: 0,
        }
    }
}

/// One acknowledged publish: id, when it was sent, when it was acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub sent: Instant,
    pub acked: Instant,
}

/// Publishes a [`Load`]; keeps the acknowledged publishes.
pub struct Publisher {
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    pub fn start(c: reqwest::Client, proxies: Vec<String>, load: Load) -> Publisher {
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..load.tasks.max(1))
            .map(|task| {
                let (a, s, c, proxies, load) = (
                    acked.clone(),
                    stop.clone(),
                    c.clone(),
                    proxies.clone(),
                    load.clone(),
                );
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut tick = tokio::time::interval(load.period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !s.load(Ordering::SeqCst) {
                        tick.tick().await;
                        n += 1;
                        let id = if load.tasks > 1 {
                            format!("o-{task}-{n}")
                        } else {
                            format!("o-{n}")
                        };
                        let proxy = &proxies[(n as usize + task) % proxies.len()];
                        let mut req = c
                            .post(format!("{proxy}/v1/topics/{}/events", load.topic))
                            .header("content-type", "application/cloudevents+json")
                            .timeout(Duration::from_secs(5))
                            .body(
                                common::event(&id, "o", Some(&format!("k{}", n % 8)), json!({}))
                                    .to_string(),
                            );
                        if load.producer_groups > 0 {
                            let g = (n as usize + task) % load.producer_groups;
                            req = req.header("meshd-producer-group", format!("pg-{g}"));
                        }
                        let sent = Instant::now();
                        let r = req.send().await;
                        if r.is_ok_and(|r| r.status().is_success()) {
                            a.lock().unwrap().push(Acked {
                                id,
                                sent,
                                acked: Instant::now(),
                            });
                        }
                    }
                })
            })
            .collect();
        Publisher { acked, stop, tasks }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops publishing; the acknowledged ids.
    pub async fn stop(self) -> Vec<String> {
        self.stop_timed().await.into_iter().map(|a| a.id).collect()
    }

    /// Stops publishing; the acknowledged publishes with their times.
    pub async fn stop_timed(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.acked.lock().unwrap().clone()
    }
}

/// One delivery as the sink saw it: when, which node pushed it, the event id.
pub struct Delivery {
    pub at: Instant,
    pub node: String,
    pub id: String,
}

pub fn deliveries(sink: &Sink) -> Vec<Delivery> {
    sink.received()
        .into_iter()
        .map(|r| Delivery {
            at: r.at,
            node: r.header("meshd-node").unwrap_or("?").to_string(),
            id: r.header("ce-id").unwrap_or("").to_string(),
        })
        .collect()
}

/// The deliveries' runs by node, in arrival order: (node, deliveries, first, last).
pub fn runs(ds: &[Delivery]) -> Vec<(String, usize, Instant, Instant)> {
    let mut out: Vec<(String, usize, Instant, Instant)> = Vec::new();
    for d in ds {
        match out.last_mut() {
            Some(r) if r.0 == d.node => {
                r.1 += 1;
                r.3 = d.at;
            }
            _ => out.push((d.node.clone(), 1, d.at, d.at)),
        }
    }
    out
}

/// The runs of [`runs`] as text, times relative to `t0`.
pub fn show_runs(ds: &[Delivery], t0: Instant) -> Vec<String> {
    runs(ds)
        .iter()
        .map(|(n, k, a, b)| {
            format!(
                "{n}×{k} [{:.2}s..{:.2}s]",
                a.duration_since(t0).as_secs_f64(),
                b.duration_since(t0).as_secs_f64()
            )
        })
        .collect()
}

/// Two nodes pushing the group at the same time interleave their deliveries: a node
/// that delivers again after another node delivered means an overlap (for tests that
/// never hand the group back).
pub fn assert_no_overlap(ds: &[Delivery], t0: Instant) {
    let shown = show_runs(ds, t0);
    eprintln!("delivery runs by node: {}", shown.join(", "));
    let mut seen = BTreeSet::new();
    for (n, ..) in runs(ds) {
        assert!(
            seen.insert(n.clone()),
            "node {n} delivered the group again after another node did: two nodes delivered it at once; runs: {shown:?}"
        );
    }
}

/// The longest time between two deliveries of new events within `[from, to]`.
pub fn longest_gap(ds: &[Delivery], from: Instant, to: Instant) -> Duration {
    let mut seen = BTreeSet::new();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for d in ds {
        if d.at < from || d.at > to || !seen.insert(d.id.clone()) {
            continue;
        }
        gap = gap.max(d.at - last);
        last = d.at;
    }
    gap.max(to.saturating_duration_since(last))
}

/// Waits until every acknowledged id reached the sink; returns the ones missing.
pub async fn missing_after(sink: &Sink, acked: &[String], within: Duration) -> Vec<String> {
    let missing = || {
        let got: BTreeSet<String> = sink.ids().into_iter().collect();
        acked
            .iter()
            .filter(|i| !got.contains(*i))
            .cloned()
            .collect::<Vec<_>>()
    };
    until(within, || {
        let done = missing().is_empty();
        async move { done }
    })
    .await;
    missing()
}

/// What happened in one time window (see [`windows`]).
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Start, relative to the first window.
    pub at: Duration,
    /// Publishes acknowledged in it.
    pub acked: usize,
    /// First deliveries (per group) in it.
    pub delivered: usize,
    /// Worst end-to-end latency (publish sent to delivery) of those deliveries.
    pub worst: Duration,
    /// Worst publish latency (sent to acknowledged) of those publishes.
    pub worst_publish: Duration,
}

/// The [`Window`]s of length `window` from `from` to `to`; `deliveries` holds every
/// sink's deliveries (one sink per group).
pub fn windows(
    acked: &[Acked],
    deliveries: &[Vec<Delivery>],
    from: Instant,
    to: Instant,
    window: Duration,
) -> Vec<Window> {
    let slots = (to.saturating_duration_since(from).as_nanos() / window.as_nanos()) as usize;
    let mut out: Vec<Window> = (0..slots)
        .map(|i| Window {
            at: window * i as u32,
            ..Window::default()
        })
        .collect();
    let slot = |t: Instant| -> Option<usize> {
        let i = (t.checked_duration_since(from)?.as_nanos() / window.as_nanos()) as usize;
        (i < slots).then_some(i)
    };
    let sent: BTreeMap<&str, Instant> = acked.iter().map(|a| (a.id.as_str(), a.sent)).collect();
    for a in acked {
        if let Some(i) = slot(a.acked) {
            out[i].acked += 1;
            out[i].worst_publish = out[i].worst_publish.max(a.acked - a.sent);
        }
    }
    for ds in deliveries {
        let mut seen = BTreeSet::new();
        for d in ds {
            if !seen.insert(d.id.as_str()) {
                continue;
            }
            let Some(i) = slot(d.at) else { continue };
            out[i].delivered += 1;
            if let Some(s) = sent.get(d.id.as_str()) {
                out[i].worst = out[i].worst.max(d.at.saturating_duration_since(*s));
            }
        }
    }
    out
}
