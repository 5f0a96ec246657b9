//! Kill -9 during a publish + push storm, on a real region: etcd, pulsar-lite, one
//! `meshd scheduler`, three `meshd node --store pulsar://` processes sharing ONE Pulsar
//! namespace, two `meshd proxy` processes over the registry.
//!
//! Publishers (several producer groups, per-key sequence numbers in a `seq` extension)
//! publish through the proxies, retry a failure with the same event id and record only
//! 2xx-acknowledged events; a CLUSTERING webhook subscription pushes to a recording sink
//! (which refuses the first push of every 17th seq with 503, so webhook retries run
//! during the storm too; refused pushes are not counted as deliveries).
//! Mid-storm the node that owns the consumer group is killed with SIGKILL, and shortly
//! after one of the two proxies (its clients switch to the other). Proves:
//! - the group moves to another node within a bound (kill → first push by another node,
//!   measured and printed);
//! - every acknowledged event is delivered (lost == 0), eventually and within a bound;
//! - duplicates are counted and bounded (redeliveries from the committed offset plus
//!   publishes retried after an unknown outcome);
//! - per partition key, first deliveries arrive in sequence order (at-least-once may repeat
//!   an older seq later; that is a duplicate, not a reorder).
//!
//! Every process is killed by its guard, also on panic. Node and proxy logs go to files
//! in the test's temp dir. `--nocapture` prints one `STORM` line with the numbers.
//! Knobs for heavier runs: `MESHD_STORM_GROUPS` (publishers, default 6),
//! `MESHD_STORM_BATCH` (events per request, default 1), `MESHD_STORM_KEEP=1` (keep the
//! temp dir with the logs; `MESHD_LOG` sets the processes' log filter).

mod cluster_support;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::{broker, etcd_arg, scheduler_group};
use common::{client, eventually, Meshd, Sink};
use meshd_scheduler::registry::testing::EtcdServer;
use meshd_scheduler::registry::{EtcdConfig, EtcdRegistry, Placement, Registry};
use serde_json::json;

const CLUSTER: &str = "storm-it";
const TTL: &str = "2s";
const TOPIC: &str = "storm";
const SUB: &str = "billing";
/// Producer groups (one publisher task each; `MESHD_STORM_GROUPS` overrides) and keys
/// per group.
const GROUPS: usize = 6;
const KEYS_PER_GROUP: usize = 2;

/// Events per publish request (`MESHD_STORM_BATCH`; 1: structured mode, more: batch mode).
fn batch() -> usize {
    std::env::var("MESHD_STORM_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

fn groups() -> usize {
    std::env::var("MESHD_STORM_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(GROUPS)
}

/// Lines of the node logs in `dir` that contain `needle`.
fn log_lines(dir: &Path, needle: &str) -> usize {
    ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            std::fs::read_to_string(dir.join(format!("{id}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .sum()
}

fn node(dir: &Path, etcd: &EtcdServer, store: &str, id: &str) -> Meshd {
    let data = dir.join(id);
    std::fs::create_dir_all(&data).expect("node dir");
    let args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--registry",
        &etcd_arg(etcd),
        "--cluster",
        CLUSTER,
        "--node-id",
        id,
        "--lease-ttl",
        TTL,
        "--store",
        store,
    ];
    Meshd::spawn_logged(&args, &data, &dir.join(format!("{id}.log")))
}

fn proxy(dir: &Path, etcd: &EtcdServer, id: &str) -> Meshd {
    let args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--cluster",
        CLUSTER,
        "--proxy-id",
        id,
        "--registry",
        &etcd_arg(etcd),
        "--no-auth",
        "--deadline-ms",
        "8000",
    ];
    Meshd::spawn_logged(&args, dir, &dir.join(format!("{id}.log")))
}

/// One acknowledged publish.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    key: String,
    seq: u64,
    at: Instant,
}

/// What the publishers share.
#[derive(Default)]
struct Book {
    acked: Mutex<Vec<Acked>>,
    latencies: Mutex<Vec<Duration>>,
    /// Failed attempts (non-2xx or transport errors) that were retried.
    retries: AtomicUsize,
    /// Times a publisher switched proxy after a transport error.
    switches: AtomicUsize,
    stop: AtomicBool,
}

/// Publishes events of producer group `g` (keys `g{g}-k{j}`, seq per key) until stopped,
/// one at a time; each is retried with the same id until a 2xx, switching proxy on a
/// transport error.
async fn publisher(g: usize, proxies: Arc<Vec<String>>, book: Arc<Book>) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let per_request = batch();
    let mut which = g % proxies.len();
    let mut seqs = [0u64; KEYS_PER_GROUP];
    let mut n = 0usize;
    while !book.stop.load(Ordering::Relaxed) {
        let mut events = Vec::with_capacity(per_request);
        let mut meta = Vec::with_capacity(per_request);
        for _ in 0..per_request {
            let j = n % KEYS_PER_GROUP;
            n += 1;
            let key = format!("g{g}-k{j}");
            let seq = seqs[j];
            seqs[j] += 1;
            let id = format!("{key}-{seq}");
            let mut ev = common::event(&id, "storm", Some(&key), json!({"n": n}));
            ev["seq"] = json!(seq);
            events.push(ev);
            meta.push((id, key, seq));
        }
        let (content_type, body) = if per_request == 1 {
            ("application/cloudevents+json", events[0].to_string())
        } else {
            (
                "application/cloudevents-batch+json",
                serde_json::Value::Array(events).to_string(),
            )
        };
        let t0 = Instant::now();
        loop {
            let r = c
                .post(format!("{}/v1/topics/{TOPIC}/events", proxies[which]))
                .header("content-type", content_type)
                .header("meshd-producer-group", format!("pg-{g}"))
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => break,
                Ok(_) => {
                    book.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    book.retries.fetch_add(1, Ordering::Relaxed);
                    book.switches.fetch_add(1, Ordering::Relaxed);
                    which = (which + 1) % proxies.len();
                }
            }
            // Retry pacing for a client that got an error (not a synchronization).
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "publish of {:?} not acknowledged within 30 s",
                meta.first()
            );
        }
        book.latencies.lock().expect("lat").push(t0.elapsed());
        let at = Instant::now();
        book.acked
            .lock()
            .expect("acked")
            .extend(
                meta.into_iter()
                    .map(|(id, key, seq)| Acked { id, key, seq, at }),
            );
    }
}

/// One push the sink recorded.
#[derive(Debug)]
struct Push {
    id: String,
    key: String,
    seq: u64,
    node: String,
    at: Instant,
}

/// Whether the sink refuses (503) the `n`th push of `id`: the first push of every 17th
/// seq, so webhook retries happen throughout the storm.
fn refused(id: &str, n: usize) -> bool {
    let seq: u64 = id
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    n == 1 && seq % 17 == 5
}

/// The pushes the sink accepted (2xx), in arrival order.
fn pushes(sink: &Sink) -> Vec<Push> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    sink.received()
        .iter()
        .filter_map(|r| {
            let id = r.header("ce-id")?;
            let n = count.entry(id.to_string()).or_default();
            *n += 1;
            if refused(id, *n) {
                return None;
            }
            Some(Push {
                id: r.header("ce-id")?.to_string(),
                key: r.header("ce-partitionkey")?.to_string(),
                seq: r.header("ce-seq")?.parse().ok()?,
                node: r.header("meshd-node").unwrap_or_default().to_string(),
                at: r.at,
            })
        })
        .collect()
}

async fn placed_on(reg: &Arc<dyn Registry>, group: &str) -> Option<(u64, String)> {
    let p: Placement = reg.get_placement().await.ok()??;
    p.consumer_groups.get(group).map(|n| (p.epoch, n.clone()))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_the_owner_and_a_proxy_during_a_storm_loses_no_acknowledged_event() {
    let started = Instant::now();
    let etcd = EtcdServer::start().await.expect("etcd");
    let b = broker::Broker::start();
    let store = b.url();
    let reg: Arc<dyn Registry> = Arc::new(
        EtcdRegistry::connect(EtcdConfig::new(vec![etcd.endpoint()], CLUSTER))
            .await
            .expect("registry client"),
    );
    let mut dir = tempfile::tempdir().expect("tempdir");
    // MESHD_STORM_KEEP=1 keeps the logs and data (path printed) for a look afterwards.
    if std::env::var_os("MESHD_STORM_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let (_scheds, _) = scheduler_group(dir.path(), &etcd, CLUSTER, 3);
    let mut nodes: BTreeMap<String, Meshd> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| (id.to_string(), node(dir.path(), &etcd, &store, id)))
        .collect();
    let mut p1 = proxy(dir.path(), &etcd, "p1");
    let p2 = proxy(dir.path(), &etcd, "p2");
    let c = client();
    let sink = Sink::start(|id, n| if refused(id, n) { 503 } else { 200 }).await;

    // Topic and subscription through a proxy (admin goes to the nodes and the catalog).
    let r = c
        .put(p1.at(&format!("/v1/topics/{TOPIC}")))
        .json(&json!({"partitions": 4}))
        .send()
        .await
        .expect("put topic");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    let r = c
        .post(p1.at("/v1/subscriptions"))
        .json(
            &json!({"name": SUB, "topic": TOPIC, "group": SUB, "mode": "CLUSTERING",
                      "sink": {"webhook": {"url": sink.url}}}),
        )
        .send()
        .await
        .expect("subscribe");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    for n in nodes.values() {
        eventually(
            "every node has the subscription",
            Duration::from_secs(15),
            || {
                let c = c.clone();
                let url = n.at(&format!("/v1/subscriptions/{SUB}"));
                async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
            },
        )
        .await;
    }
    let live: BTreeSet<String> = nodes.keys().cloned().collect();
    let (epoch, owner) = eventually("the group is placed", Duration::from_secs(20), || {
        let reg = reg.clone();
        let live = live.clone();
        async move { placed_on(&reg, SUB).await.filter(|(_, n)| live.contains(n)) }
    })
    .await;
    eprintln!(
        "setup {:?}; {SUB} on {owner} (epoch {epoch})",
        started.elapsed()
    );

    // The storm.
    let book = Arc::new(Book::default());
    let proxies = Arc::new(vec![p1.url.clone(), p2.url.clone()]);
    let tasks: Vec<_> = (0..groups())
        .map(|g| tokio::spawn(publisher(g, proxies.clone(), book.clone())))
        .collect();
    // Let the owner deliver for a while before the kill.
    eventually(
        "the owner pushes the storm",
        Duration::from_secs(15),
        || {
            let n = pushes(&sink).iter().filter(|p| p.node == owner).count();
            async move { (n >= 200).then_some(()) }
        },
    )
    .await;
    let mut victim = nodes.remove(&owner).expect("owner is live");
    victim.kill9();
    let killed = Instant::now();
    let acked_at_kill = book.acked.lock().expect("acked").len();
    // A proxy dies too; its clients switch to the other one.
    eventually(
        "publishing goes on after the node kill",
        Duration::from_secs(15),
        || {
            let n = book.acked.lock().expect("acked").len();
            async move { (n >= acked_at_kill + 50).then_some(()) }
        },
    )
    .await;
    p1.kill9();
    let proxy_killed = Instant::now();
    // Another node takes the group over.
    let (new_owner, first_at) = eventually(
        "another node pushes after the kill",
        Duration::from_secs(20),
        || {
            let got = pushes(&sink)
                .into_iter()
                .find(|p| p.at >= killed && p.node != owner)
                .map(|p| (p.node, p.at));
            async move { got }
        },
    )
    .await;
    let failover = first_at.saturating_duration_since(killed);
    // Publishing continues through p2 after the proxy kill, and the new owner pushes
    // the storm for a while.
    let acked_at_failover = book.acked.lock().expect("acked").len();
    eventually(
        "publishing goes on through p2",
        Duration::from_secs(15),
        || {
            let n = book.acked.lock().expect("acked").len();
            async move { (n >= acked_at_failover + 300).then_some(()) }
        },
    )
    .await;
    book.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("publisher");
    }
    let stopped = Instant::now();
    let acked = book.acked.lock().expect("acked").clone();
    let acked_ids: BTreeSet<String> = acked.iter().map(|a| a.id.clone()).collect();
    assert_eq!(acked_ids.len(), acked.len(), "ids are unique");

    // Every acknowledged event is delivered, within a bound.
    eventually(
        "every acknowledged event delivered",
        Duration::from_secs(30),
        || {
            let seen: BTreeSet<String> = pushes(&sink).into_iter().map(|p| p.id).collect();
            let missing = acked_ids.difference(&seen).count();
            async move { (missing == 0).then_some(()) }
        },
    )
    .await;
    let drain_time = stopped.elapsed();
    let all = pushes(&sink);
    let seen: BTreeSet<&str> = all.iter().map(|p| p.id.as_str()).collect();
    let lost: Vec<&String> = acked_ids
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // Duplicates: pushes of an id already pushed. Split into redeliveries by another node
    // of what the victim had pushed (from its committed offset) and the rest (publishes
    // retried after an unknown outcome are stored twice, webhook retries).
    let mut first: BTreeMap<&str, &Push> = BTreeMap::new();
    // Redeliveries count ids (an id stored twice by a retried publish may be pushed
    // again twice; the second is a publish duplicate).
    let mut dups = 0usize;
    let mut redelivered_ids: BTreeSet<&str> = BTreeSet::new();
    for p in &all {
        match first.get(p.id.as_str()) {
            None => {
                first.insert(&p.id, p);
            }
            Some(f) => {
                dups += 1;
                if f.node == owner && p.node != owner {
                    redelivered_ids.insert(&p.id);
                }
            }
        }
    }
    let redelivered = redelivered_ids.len();
    // Unacknowledged ids that were delivered (an attempt stored, then the client gave up):
    // none, because every publish was retried to success.
    let unknown = seen.iter().filter(|id| !acked_ids.contains(**id)).count();
    assert_eq!(unknown, 0, "delivered ids no publisher issued");

    // Per key: first deliveries in sequence order.
    let mut last_first: BTreeMap<&str, u64> = BTreeMap::new();
    let mut reorders = Vec::new();
    let mut firsts_seen: BTreeSet<&str> = BTreeSet::new();
    for p in &all {
        if !firsts_seen.insert(p.id.as_str()) {
            continue;
        }
        if let Some(prev) = last_first.insert(&p.key, p.seq) {
            if p.seq <= prev {
                reorders.push(format!("{}: {} after {}", p.key, p.seq, prev));
            }
        }
    }
    // And each key's seqs are all there, 0..n (no gap among acknowledged ones).
    let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in &acked {
        per_key.entry(&a.key).or_default().push(a.seq);
    }
    for (k, seqs) in &per_key {
        let want: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, &want, "{k}: acknowledged seqs in publish order");
    }

    // Bound on redeliveries: what the victim pushed after its last committed offset. It
    // commits every 50 ms, and a commit to Pulsar takes at most the store's operation
    // timeout (5 s): the victim's pushes in the last 5 s before the kill. Printed too:
    // its pushes in the last second (normally the redeliveries are far fewer).
    let victim_pushed_within = |window: Duration| {
        all.iter()
            .filter(|p| p.node == owner && p.at <= killed && killed.duration_since(p.at) < window)
            .count()
    };
    let victim_last_second = victim_pushed_within(Duration::from_secs(1));
    let victim_commit_window = victim_pushed_within(Duration::from_millis(5050));
    // Acknowledgement → first accepted push, per event: acknowledged before the kill, and
    // acknowledged after the new owner's first push (it catches up a backlog then).
    let ack_to_push = |pick: &dyn Fn(&Acked) -> bool| {
        let mut v: Vec<Duration> = acked
            .iter()
            .filter(|a| pick(a))
            .filter_map(|a| Some(first.get(a.id.as_str())?.at.saturating_duration_since(a.at)))
            .collect();
        v.sort();
        v
    };
    let e2e = ack_to_push(&|a| a.at < killed);
    let e2e_after = ack_to_push(&|a| a.at > first_at);
    let tailer_late = log_lines(
        dir.path(),
        "did not deliver the records before this store's own",
    );
    let out_of_order = log_lines(dir.path(), "record delivered out of order");
    let mut lat = book.latencies.lock().expect("lat").clone();
    lat.sort();
    let after_kill_new = all
        .iter()
        .filter(|p| p.at >= killed && p.node == owner)
        .count();
    eprintln!(
        "STORM acked={} pushes={} distinct_delivered={} lost={} duplicates={dups} \
         (redelivered_by_new_owner={redelivered}, other={}) victim_pushes_last_1s={victim_last_second} \
         failover={failover:?} (new owner {new_owner}) drain_after_stop={drain_time:?} \
         publish_retries={} proxy_switches={} publish_latency p50={:?} p99={:?} max={:?} \
         acked_at_node_kill={acked_at_kill} tailer_late_reads={tailer_late} \
         tail_cache_restarts={out_of_order} proxy_killed_after_node={:?} reorders={} ack_to_push before_kill p50={:?} p99={:?} max={:?} \
         after_takeover p50={:?} p99={:?} max={:?} total={:?}",
        acked.len(),
        all.len(),
        seen.len(),
        lost.len(),
        dups - redelivered,
        book.retries.load(Ordering::Relaxed),
        book.switches.load(Ordering::Relaxed),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        proxy_killed.duration_since(killed),
        reorders.len(),
        pct(&e2e, 0.5),
        pct(&e2e, 0.99),
        e2e.last().copied().unwrap_or_default(),
        pct(&e2e_after, 0.5),
        pct(&e2e_after, 0.99),
        e2e_after.last().copied().unwrap_or_default(),
        started.elapsed(),
    );
    assert_eq!(after_kill_new, 0, "the killed node pushed after SIGKILL");
    // Once the new owner pushes, no other node does (placement fencing).
    let others: BTreeSet<&str> = all
        .iter()
        .filter(|p| p.at > first_at && p.node != new_owner)
        .map(|p| p.node.as_str())
        .collect();
    assert!(
        others.is_empty(),
        "{others:?} pushed after {new_owner} took over"
    );
    assert!(reorders.is_empty(), "per-key reorders: {reorders:?}");
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?} (lease {TTL})"
    );
    assert!(
        redelivered <= victim_commit_window,
        "{redelivered} redeliveries; the victim pushed {victim_commit_window} in its last 5 s"
    );
    // A retried request may have been stored whole before its answer was lost.
    assert!(
        dups <= redelivered + book.retries.load(Ordering::Relaxed) * batch() + 64,
        "{dups} duplicates"
    );
    assert!(
        book.switches.load(Ordering::Relaxed) >= 1,
        "no client switched proxy"
    );
    drop(p2);
    drop(nodes);
}
