//! Failover drills inside one cluster, against a running cluster by URL, through the
//! components' own admin APIs (no root, no process control):
//!
//! - `node-failover`: `POST {node}/v1/admin/drain` on one runtime node (by default the one
//!   the canary consumer group is placed on), watch its groups move, `…/undrain` after;
//! - `proxy-failover`: `POST {proxy}/v1/admin/drain` on one of ≥ 2 proxies, watch the
//!   canary publishers switch to another proxy, `…/undrain` after;
//! - `scheduler-failover`: `POST {leader}/admin/step-down` on the scheduler leader, watch
//!   another member lead a newer term;
//! - `registry-outage`: run the operator's stop command for the cluster's registry (etcd;
//!   e.g. `kill -STOP PID`), keep it down for a while, run the start command, and report
//!   the longest delivery gap and what every node's `/readyz` said meanwhile
//!   (docs/scheduler.md, "Registry outages").
//!
//! Canaries are published through the proxies (each key is its own producer group, so the
//! proxy routes it to the node placement names) and consumed through a proxy from one
//! CLUSTERING pull subscription (the proxy routes pulls to the group's node and names it
//! in the `meshd-node` answer header, so the drill sees which node delivered).
//!
//! Order of a drill: health check (refuse when degraded unless forced) → canaries flowing
//! → fault → detection → hold → stop publishing, wait until every acknowledged canary
//! was delivered → restore (undrain; also at once on interrupt or error) → report.
//! Canaries are all delivered *before* the restore on purpose: with the embedded store
//! each node has its own log, and an undrained node may take the consumer group back,
//! after which events stored on the other node wait until the group returns there.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::canary::{self, Publishers, PullRecorder, SharedChecker, TOPIC};
use crate::checker::{Checker, Report};
use crate::{http, ChaosError};

/// Which fault a cluster drill injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterFault {
    /// Drain a runtime node (by id; default: the node running the canary group).
    NodeDrain(Option<String>),
    /// Crash a runtime node for real: run `kill` with `sh -c` (`{node}` in it is replaced
    /// by the node's id), e.g. `kill -9` of the process its supervisor (`meshd cluster
    /// up`) restarts. Detection is its lease expiring, not a hand-over.
    NodeCrash {
        /// The node id (default: the node running the canary group).
        node: Option<String>,
        /// The kill command.
        kill: String,
    },
    /// Drain a proxy (by URL; default: the first one given).
    ProxyDrain(Option<String>),
    /// Make the scheduler leader step down.
    SchedulerStepDown,
    /// Take the cluster's registry (etcd) away: run `stop` with `sh -c`, keep it down for
    /// `outage`, run `start`. Detection is a node's `/readyz` naming the degradation;
    /// recovery is every node plainly ready again after the start.
    RegistryOutage {
        /// Stops the registry (every member), e.g. `kill -STOP PID`.
        stop: String,
        /// Brings it back, e.g. `kill -CONT PID`.
        start: String,
        /// How long it stays down.
        outage: Duration,
        /// The registry's client URLs (`http://host:2379`), checked before (reachable),
        /// after the stop (not answering) and after the start (answering); may be empty.
        etcd: Vec<String>,
    },
}

impl ClusterFault {
    /// The drill's name.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterFault::NodeDrain(_) | ClusterFault::NodeCrash { .. } => "node-failover",
            ClusterFault::ProxyDrain(_) => "proxy-failover",
            ClusterFault::SchedulerStepDown => "scheduler-failover",
            ClusterFault::RegistryOutage { .. } => "registry-outage",
        }
    }
}

/// Where the cluster is, and how the drill runs.
#[derive(Debug, Clone)]
pub struct ClusterDrillOptions {
    /// Cluster name (checked against the nodes' `/v1/cluster`).
    pub cluster: String,
    /// Proxy URLs (`http://host:port`); canaries go through them.
    pub proxies: Vec<String>,
    /// Node id → URL (for drain, placement and health).
    pub nodes: BTreeMap<String, String>,
    /// Scheduler member URLs (one is enough: the others are found in `/v1/scheduler`).
    pub schedulers: Vec<String>,
    /// Bearer token for the proxies (publish, subscribe and admin scopes on the canary
    /// topic and the drain endpoint), if they check tokens.
    pub token: Option<String>,
    /// Run even when the cluster is degraded.
    pub force: bool,
    /// Canary keys (each its own producer group).
    pub keys: usize,
    /// Pause between acknowledged canaries of one key.
    pub pace: Duration,
    /// How long canaries keep flowing after the fault was detected.
    pub hold: Duration,
    /// Longest wait for detection.
    pub detect_timeout: Duration,
    /// Longest wait for every canary after publishing stopped.
    pub recovery_timeout: Duration,
}

impl ClusterDrillOptions {
    /// Defaults for a cluster.
    pub fn new(cluster: &str, proxies: Vec<String>) -> ClusterDrillOptions {
        ClusterDrillOptions {
            cluster: cluster.to_string(),
            proxies,
            nodes: BTreeMap::new(),
            schedulers: Vec::new(),
            token: None,
            force: false,
            keys: 2,
            pace: Duration::from_millis(20),
            hold: Duration::from_secs(2),
            detect_timeout: Duration::from_secs(30),
            recovery_timeout: Duration::from_secs(60),
        }
    }
}

/// An HTTP client with short timeouts, sending `token` as a bearer token when given.
pub fn client(token: Option<&str>) -> Result<reqwest::Client, ChaosError> {
    crate::init_tls();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| ChaosError::Drill("the token is not a valid header value".into()))?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .default_headers(headers)
        .build()
        .map_err(|e| ChaosError::Http(format!("building the client: {e}")))
}

async fn status_of(c: &reqwest::Client, url: &str) -> Option<u16> {
    c.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// The scheduler status of the first member that answers, with the URL of every member.
async fn scheduler_view(
    c: &reqwest::Client,
    schedulers: &[String],
) -> Option<(Value, BTreeMap<u64, String>)> {
    for s in schedulers {
        if let Ok(v) = http::get_json(c, &format!("{s}/v1/scheduler")).await {
            let members = v["members"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(id, a)| {
                            Some((id.parse::<u64>().ok()?, format!("http://{}", a.as_str()?)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Some((v, members));
        }
    }
    None
}

/// What is wrong with the cluster now (empty: healthy): every proxy and node ready, every
/// node of the cluster and serving (not draining), every scheduler member ready and one
/// leader known.
pub async fn cluster_health(c: &reqwest::Client, o: &ClusterDrillOptions) -> Vec<String> {
    let mut problems = Vec::new();
    for p in &o.proxies {
        if status_of(c, &format!("{p}/readyz")).await != Some(200) {
            problems.push(format!("proxy {p} is not ready"));
        }
    }
    for (id, url) in &o.nodes {
        match http::cluster_status(c, url).await {
            Err(e) => problems.push(format!("node {id}: {e}")),
            Ok(v) => {
                if v.cluster != o.cluster || v.node != *id {
                    problems.push(format!(
                        "node {id}: {url} is node {} of cluster {}",
                        v.node, v.cluster
                    ));
                }
                if v.drain != meshd_core::api::DrainState::Serving {
                    problems.push(format!("node {id} is {:?}", v.drain));
                }
                if !v.ready {
                    problems.push(format!("node {id} is not ready"));
                }
            }
        }
    }
    if !o.schedulers.is_empty() {
        match scheduler_view(c, &o.schedulers).await {
            None => problems.push("no scheduler member answers /v1/scheduler".into()),
            Some((v, members)) => {
                if v["leader"].is_null() {
                    problems.push("the scheduler has no leader".into());
                }
                for (id, url) in members {
                    if status_of(c, &format!("{url}/readyz")).await != Some(200) {
                        problems.push(format!("scheduler member {id} ({url}) is not ready"));
                    }
                }
            }
        }
    }
    problems
}

/// The node the placement gives `group` to, per the nodes' own `/v1/cluster`.
async fn group_owner(
    c: &reqwest::Client,
    nodes: &BTreeMap<String, String>,
    group: &str,
) -> Option<String> {
    for (id, url) in nodes {
        if let Ok(v) = http::cluster_status(c, url).await {
            if v.owned_groups.is_some_and(|g| g.contains(group)) {
                return Some(id.clone());
            }
        }
    }
    None
}

async fn post_admin(c: &reqwest::Client, url: &str) -> Result<Value, ChaosError> {
    let (status, body) = http::send_json(c, reqwest::Method::POST, url, None).await?;
    if (200..300).contains(&status) {
        Ok(body)
    } else if status == 404 {
        Err(ChaosError::Drill(format!(
            "{url}: 404 — this build has no such admin endpoint; upgrade meshd there"
        )))
    } else {
        Err(ChaosError::Drill(format!("POST {url}: {status} {body}")))
    }
}

fn lock(c: &SharedChecker) -> std::sync::MutexGuard<'_, Checker> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn served_json(s: &canary::ServedBy, since: Instant) -> Value {
    let m = s.lock().unwrap_or_else(|p| p.into_inner());
    Value::Object(
        m.iter()
            .map(|(k, (n, first))| {
                (
                    k.clone(),
                    json!({"canaries": n, "first_ms": first.saturating_duration_since(since).as_millis() as u64}),
                )
            })
            .collect(),
    )
}

/// What the fault phase found.
#[derive(Default)]
struct Observed {
    detection: Option<Duration>,
    recovery: Option<Duration>,
    facts: BTreeMap<String, Value>,
    notes: Vec<String>,
    /// The registry-outage stop command ran and the start command did not yet (the
    /// restore runs it then, and only then).
    registry_down: bool,
}

/// Runs one cluster drill. `interrupt` (Ctrl-C) cuts the fault short; the restore always
/// runs.
pub async fn run(
    o: &ClusterDrillOptions,
    fault: ClusterFault,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, ChaosError> {
    let c = client(o.token.as_deref())?;
    let started = Instant::now();
    let mut notes = Vec::new();
    if o.proxies.is_empty() {
        return Err(ChaosError::Drill(
            "give the cluster's proxies with --proxy URL".into(),
        ));
    }
    // What the fault needs.
    match &fault {
        ClusterFault::NodeDrain(_) | ClusterFault::NodeCrash { .. } if o.nodes.len() < 2 => {
            return Err(ChaosError::Drill(
                "node-failover needs at least two nodes (--node-url ID=URL each)".into(),
            ))
        }
        ClusterFault::ProxyDrain(_) if o.proxies.len() < 2 => {
            return Err(ChaosError::Drill(
                "proxy-failover needs at least two proxies (--proxy URL each)".into(),
            ))
        }
        ClusterFault::SchedulerStepDown if o.schedulers.is_empty() => {
            return Err(ChaosError::Drill(
                "scheduler-failover needs a scheduler member URL (--scheduler URL)".into(),
            ))
        }
        ClusterFault::RegistryOutage { .. } if o.nodes.is_empty() => {
            return Err(ChaosError::Drill(
                "registry-outage needs the cluster's nodes (--node-url ID=URL each) to watch their /readyz".into(),
            ))
        }
        ClusterFault::RegistryOutage { stop, start, .. }
            if stop.trim().is_empty() || start.trim().is_empty() =>
        {
            return Err(ChaosError::Drill(
                "registry-outage needs both --stop COMMAND and --start COMMAND".into(),
            ))
        }
        _ => {}
    }
    let problems = cluster_health(&c, o).await;
    if !problems.is_empty() {
        if !o.force {
            return Err(ChaosError::Drill(format!(
                "refusing to run: the cluster is degraded ({}); fix it or pass --force",
                problems.join("; ")
            )));
        }
        notes.push(format!(
            "forced on a degraded cluster: {}",
            problems.join("; ")
        ));
    }
    if let ClusterFault::RegistryOutage { etcd, .. } = &fault {
        for url in etcd {
            if !etcd_answers(&c, url).await {
                return Err(ChaosError::Drill(format!(
                    "the registry at {url} does not answer /health; refusing to run (nothing was changed)"
                )));
            }
        }
    }
    let target_proxy = match &fault {
        ClusterFault::ProxyDrain(p) => Some(
            p.clone()
                .unwrap_or_else(|| o.proxies[0].clone())
                .trim_end_matches('/')
                .to_string(),
        ),
        _ => None,
    };
    if let Some(tp) = &target_proxy {
        if !o.proxies.contains(tp) {
            return Err(ChaosError::Drill(format!(
                "--target {tp} is not one of the --proxy URLs"
            )));
        }
    }
    // Publishers start on the target proxy (key i on proxy i mod n) and rotate on failure;
    // the recorder pulls through a proxy that is not drained.
    let mut publish_urls = o.proxies.clone();
    if let Some(tp) = &target_proxy {
        publish_urls.retain(|p| p != tp);
        publish_urls.insert(0, tp.clone());
    }
    let pull_base = publish_urls
        .iter()
        .find(|p| Some(*p) != target_proxy.as_ref())
        .cloned()
        .unwrap_or_else(|| o.proxies[0].clone());

    let run = canary::run_id();
    let sub = format!("meshd-drill-{run}");
    let entry = &pull_base;
    http::put_topic(&c, entry, TOPIC, 2).await?;
    http::subscribe(
        &c,
        entry,
        &json!({"name": sub, "topic": TOPIC, "group": sub, "mode": "CLUSTERING", "sink": {"pull": {}}}),
    )
    .await?;
    let cleanup = |c: reqwest::Client, entry: String, sub: String| async move {
        http::unsubscribe(&c, &entry, &sub).await
    };

    // Where the scheduler put the canary group.
    let mut owner = None;
    if !o.nodes.is_empty() {
        let deadline = Instant::now() + o.detect_timeout;
        while owner.is_none() {
            owner = group_owner(&c, &o.nodes, &sub).await;
            if owner.is_none() {
                if Instant::now() > deadline {
                    let _ = cleanup(c.clone(), entry.clone(), sub.clone()).await;
                    return Err(ChaosError::Drill(format!(
                        "the scheduler placed the canary group {sub} on no node within {:?}",
                        o.detect_timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let target_node = match &fault {
        ClusterFault::NodeDrain(n) | ClusterFault::NodeCrash { node: n, .. } => {
            let t = n.clone().or_else(|| owner.clone());
            match t {
                Some(t) if o.nodes.contains_key(&t) => Some(t),
                other => {
                    let _ = cleanup(c.clone(), entry.clone(), sub.clone()).await;
                    return Err(ChaosError::Drill(format!(
                        "node {other:?} is not one of the --node-url ids"
                    )));
                }
            }
        }
        _ => None,
    };

    // Keys whose events reach the canary subscriber now (see [`canary_keys`]).
    let keys = match canary_keys(&c, o.keys, &publish_urls, &pull_base, &sub).await {
        Ok(k) => k,
        Err(e) => {
            let _ = cleanup(c.clone(), entry.clone(), sub.clone()).await;
            return Err(e);
        }
    };

    let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
    lock(&checker).expect_cluster(&o.cluster);
    let mut recorder = PullRecorder::start(
        c.clone(),
        &pull_base,
        &sub,
        &o.cluster,
        &run,
        checker.clone(),
    );
    let mut publishers = Publishers::start(
        c.clone(),
        publish_urls.clone(),
        keys,
        &run,
        o.pace,
        checker.clone(),
    );
    // Canaries flow end to end before the fault.
    let warm = Instant::now() + Duration::from_secs(30);
    loop {
        let (acked, delivered) = {
            let k = lock(&checker);
            let r = k.report("warm-up", "cluster");
            (
                r.acknowledged,
                r.clusters.values().map(|c| c.delivered).sum::<u64>(),
            )
        };
        if acked >= 10 && delivered >= 5 {
            break;
        }
        if Instant::now() > warm {
            publishers.stop().await;
            recorder.stop().await;
            let _ = cleanup(c.clone(), entry.clone(), sub.clone()).await;
            return Err(ChaosError::Drill(format!(
                "canaries do not flow before the fault (acknowledged {acked}, delivered {delivered}); aborting without injecting it"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::pin!(interrupt);
    let injected = Instant::now();
    let mut interrupted = false;
    let mut observed = Observed::default();
    let fault_phase = inject_and_watch(
        &c,
        o,
        &fault,
        target_node.as_deref(),
        target_proxy.as_deref(),
        &sub,
        &recorder,
        &publishers,
        injected,
        &mut observed,
    );
    let outcome = tokio::select! {
        r = fault_phase => r,
        () = &mut interrupt => {
            interrupted = true;
            Ok(())
        }
    };
    if outcome.is_err() || interrupted {
        // Restore first, then count.
        let r = restore(
            &c,
            &fault,
            o,
            target_node.as_deref(),
            target_proxy.as_deref(),
            observed.registry_down,
        )
        .await;
        if let Err(e) = r {
            observed.notes.push(format!("restore: {e}"));
        }
    }
    publishers.stop().await;
    let stopped = Instant::now();
    let done = canary::wait_complete(&checker, o.recovery_timeout).await;
    recorder.stop().await;
    let mut restore_note = None;
    if outcome.is_ok() && !interrupted {
        let t = Instant::now();
        match restore(
            &c,
            &fault,
            o,
            target_node.as_deref(),
            target_proxy.as_deref(),
            observed.registry_down,
        )
        .await
        {
            Ok(()) => {
                observed
                    .facts
                    .insert("restore_ms".into(), json!(t.elapsed().as_millis() as u64));
            }
            Err(e) => restore_note = Some(format!("restore: {e}")),
        }
    }
    let mut report = lock(&checker).report(fault.name(), "cluster");
    if let Err(e) = cleanup(c.clone(), entry.clone(), sub.clone()).await {
        report.notes.push(format!("cleanup: {e}"));
    }
    report.detection_ms = observed.detection.map(|d| d.as_millis() as u64);
    report.recovery_ms = observed.recovery.map(|d| d.as_millis() as u64);
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    if done.is_none() {
        report.notes.push(format!(
            "not every acknowledged canary was delivered within {:?} after publishing stopped",
            o.recovery_timeout
        ));
    } else if let Some(d) = done {
        report
            .facts
            .insert("drain_after_stop_ms".into(), json!(d.as_millis() as u64));
    }
    let _ = stopped;
    report.facts.extend(observed.facts);
    report.facts.insert(
        "acked_by".into(),
        served_json(&publishers.acked_by, injected),
    );
    report.facts.insert(
        "delivered_by".into(),
        served_json(&recorder.served_by, injected),
    );
    report.facts.insert(
        "publish_failures".into(),
        json!(publishers
            .failure_kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()),
    );
    report.facts.insert(
        "longest_publish_wait_ms".into(),
        json!(publishers
            .longest_gap_ms
            .load(std::sync::atomic::Ordering::Relaxed)),
    );
    report.notes.extend(notes);
    report.notes.extend(observed.notes);
    if let Some(n) = restore_note {
        report.notes.push(n);
    }
    if interrupted {
        report.notes.push(format!(
            "interrupted after {:?}; restored",
            injected.elapsed()
        ));
    }
    outcome?;
    Ok(report)
}

/// Picks the canary keys: publishes probe canaries (another run id) on candidate keys
/// for a moment and keeps the keys whose latest probes reached the subscriber. Each key is
/// its own producer group; with the embedded store (a log per node) events of a producer
/// group placed on a node that does not run the canary consumer group are delivered only
/// once the group runs there, so such keys would show as lost or reordered through no
/// fault of the drill. With a shared store every candidate qualifies.
pub async fn canary_keys(
    c: &reqwest::Client,
    keys: usize,
    publish_urls: &[String],
    pull_base: &str,
    sub: &str,
) -> Result<Vec<String>, ChaosError> {
    let want = keys.max(1);
    let probe_run = canary::run_id();
    let candidates: Vec<String> = (0..want * 4 + 4)
        .map(|i| format!("{probe_run}k{i}"))
        .collect();
    let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
    lock(&checker).expect_cluster("probe");
    let mut recorder = PullRecorder::start(
        c.clone(),
        pull_base,
        sub,
        "probe",
        &probe_run,
        checker.clone(),
    );
    // Candidate i starts on proxy i mod n, as key j of the run starts on proxy j mod n.
    let mut publishers = Publishers::start(
        c.clone(),
        publish_urls.to_vec(),
        candidates.clone(),
        &probe_run,
        Duration::from_millis(50),
        checker.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chosen = Vec::new();
    // Let the placement of the new producer groups settle before judging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let k = lock(&checker);
        // Key j of the run must come from a candidate that used the same proxy.
        let n = publish_urls.len().max(1);
        let good: Vec<(usize, &String)> = candidates
            .iter()
            .enumerate()
            .filter(|(_, key)| k.tail_delivered("probe", key, 8))
            .collect();
        chosen = Vec::new();
        for j in 0..want {
            if let Some((_, key)) = good
                .iter()
                .find(|(i, key)| i % n == j % n && !chosen.contains(*key))
            {
                chosen.push((*key).clone());
            }
        }
        if chosen.len() == want {
            break;
        }
    }
    publishers.stop().await;
    recorder.stop().await;
    if chosen.is_empty() {
        return Err(ChaosError::Drill(format!(
            "none of {} probe keys reached the canary subscriber; is the consumer group placed and delivering?",
            candidates.len()
        )));
    }
    if chosen.len() < want {
        // With per-node embedded stores a key whose producer group sits on a node that does
        // not own the consumer group never reaches it; run with the keys that do rather
        // than fail the drill (fewer canary keys, same checks).
        eprintln!(
            "note: only {} of {} canary keys reach the subscriber now; running with those",
            chosen.len(),
            want
        );
    }
    Ok(chosen)
}

/// Undoes the fault: undrain the node or proxy (and wait until it is ready again). A
/// scheduler step-down needs no restore (the old leader follows the new one).
async fn restore(
    c: &reqwest::Client,
    fault: &ClusterFault,
    o: &ClusterDrillOptions,
    node: Option<&str>,
    proxy: Option<&str>,
    registry_down: bool,
) -> Result<(), ChaosError> {
    if let ClusterFault::RegistryOutage { start, .. } = fault {
        if registry_down {
            run_shell(start, "start").await?;
        }
        // Every node plainly ready again (no longer serving on promises).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !every_node_plainly_ready(c, o).await {
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout(
                    "every node plainly ready after the registry came back".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return Ok(());
    }
    if let ClusterFault::NodeCrash { .. } = fault {
        // Nothing to undo: its supervisor restarts it; wait for that a while.
        let Some(url) = node.and_then(|n| o.nodes.get(n)) else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while status_of(c, &format!("{url}/readyz")).await != Some(200) {
            if Instant::now() > deadline {
                eprintln!("note: the crashed node {url} was not restarted within 60 s (is it supervised?)");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return Ok(());
    }
    let url = match fault {
        ClusterFault::NodeDrain(_) | ClusterFault::NodeCrash { .. } => {
            node.and_then(|n| o.nodes.get(n)).cloned()
        }
        ClusterFault::ProxyDrain(_) => proxy.map(str::to_string),
        ClusterFault::SchedulerStepDown | ClusterFault::RegistryOutage { .. } => None,
    };
    let Some(url) = url else { return Ok(()) };
    post_admin(c, &format!("{url}/v1/admin/undrain")).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(c, &format!("{url}/readyz")).await != Some(200) {
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout(format!("{url} ready after undrain")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn inject_and_watch(
    c: &reqwest::Client,
    o: &ClusterDrillOptions,
    fault: &ClusterFault,
    node: Option<&str>,
    proxy: Option<&str>,
    group: &str,
    recorder: &PullRecorder,
    publishers: &Publishers,
    injected: Instant,
    obs: &mut Observed,
) -> Result<(), ChaosError> {
    let deadline = injected + o.detect_timeout;
    match fault {
        ClusterFault::NodeDrain(_) | ClusterFault::NodeCrash { .. } => {
            let node = node.unwrap_or_default();
            let url = o.nodes.get(node).cloned().unwrap_or_default();
            obs.facts.insert("target".into(), json!(node));
            if let ClusterFault::NodeCrash { kill, .. } = fault {
                let cmd = kill.replace("{node}", node);
                obs.facts.insert("crash".into(), json!(cmd));
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .status()
                    .await
                    .map_err(|e| ChaosError::Io(format!("running {cmd:?}: {e}")))?;
                if !status.success() {
                    return Err(ChaosError::Drill(format!(
                        "the crash command {cmd:?} failed: {status}"
                    )));
                }
                // The crashed node may come back under its id (its supervisor restarts it)
                // before another node takes the group: the fault is over when canaries are
                // delivered again, by whichever node.
                let counts = || -> BTreeMap<String, u64> {
                    recorder
                        .served_by
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(|(n, (c, _))| (n.clone(), *c))
                        .collect()
                };
                let before = counts();
                loop {
                    let grown = counts()
                        .into_iter()
                        .find(|(n, c)| *c > before.get(n).copied().unwrap_or(0));
                    if let Some((n, _)) = grown {
                        obs.detection = Some(injected.elapsed());
                        obs.recovery = Some(injected.elapsed());
                        obs.facts.insert("served_after_crash_by".into(), json!(n));
                        break;
                    }
                    if Instant::now() > deadline {
                        obs.notes.push(format!(
                            "no canary was delivered within {:?} of the crash",
                            o.detect_timeout
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Ok(());
            } else {
                post_admin(c, &format!("{url}/v1/admin/drain")).await?;
                if status_of(c, &format!("{url}/readyz")).await == Some(503) {
                    obs.facts
                        .insert("target_readyz_while_draining".into(), json!(503));
                }
            }
            // Detection: the group is placed on another node.
            let moved_to = loop {
                let others: BTreeMap<String, String> = o
                    .nodes
                    .iter()
                    .filter(|(id, _)| id.as_str() != node)
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect();
                if let Some(n) = group_owner(c, &others, group).await {
                    break n;
                }
                if Instant::now() > deadline {
                    return Err(ChaosError::Timeout(format!(
                        "the canary group leaving the drained node {node}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            obs.detection = Some(injected.elapsed());
            obs.facts.insert("moved_to".into(), json!(moved_to));
            if let Ok(v) = http::cluster_status(c, &url).await {
                obs.facts
                    .insert("target_drain_state".into(), json!(v.drain));
            }
            // Recovery: the new node delivers canaries.
            loop {
                let first = recorder
                    .served_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&moved_to)
                    .map(|(_, t)| *t);
                if let Some(t) = first {
                    obs.recovery = Some(t.saturating_duration_since(injected));
                    break;
                }
                if Instant::now() > deadline {
                    obs.notes.push(format!(
                        "{moved_to} delivered no canary within {:?} of the drain",
                        o.detect_timeout
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ClusterFault::ProxyDrain(_) => {
            let url = proxy.unwrap_or_default();
            obs.facts.insert("target".into(), json!(url));
            post_admin(c, &format!("{url}/v1/admin/drain")).await?;
            while status_of(c, &format!("{url}/readyz")).await != Some(503) {
                if Instant::now() > deadline {
                    return Err(ChaosError::Timeout(format!("{url}/readyz turning 503")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            obs.detection = Some(injected.elapsed());
            obs.facts
                .insert("target_readyz_while_draining".into(), json!(503));
            // Recovery: every key acknowledged again after the drain (through another
            // proxy once the drained one answered 503).
            let acked_at = lock_acked(publishers);
            loop {
                if lock_acked(publishers) >= acked_at + o.keys.max(1) as u64 * 2 {
                    obs.recovery = Some(injected.elapsed());
                    break;
                }
                if Instant::now() > deadline {
                    obs.notes
                        .push("canaries were not acknowledged again after the drain".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ClusterFault::RegistryOutage {
            stop,
            start,
            outage,
            etcd,
        } => {
            registry_outage(
                c,
                o,
                (stop.as_str(), start.as_str(), *outage, etcd.as_slice()),
                recorder,
                injected,
                obs,
            )
            .await?;
        }
        ClusterFault::SchedulerStepDown => {
            let Some((v, members)) = scheduler_view(c, &o.schedulers).await else {
                return Err(ChaosError::Drill("no scheduler member answers".into()));
            };
            let (Some(leader), Some(term)) = (v["leader"].as_u64(), v["term"].as_u64()) else {
                return Err(ChaosError::Drill("the scheduler has no leader".into()));
            };
            let epoch = v["placement_epoch"].clone();
            let leader_url = members
                .get(&leader)
                .cloned()
                .ok_or_else(|| ChaosError::Drill(format!("leader {leader} has no address")))?;
            obs.facts.insert("old_leader".into(), json!(leader));
            obs.facts.insert("old_term".into(), json!(term));
            post_admin(c, &format!("{leader_url}/admin/step-down")).await?;
            loop {
                if let Some((v, _)) = scheduler_view(c, &o.schedulers).await {
                    let l = v["leader"].as_u64();
                    let t = v["term"].as_u64().unwrap_or(0);
                    if l.is_some_and(|l| l != leader) && t > term {
                        obs.detection = Some(injected.elapsed());
                        obs.facts.insert("new_leader".into(), json!(l));
                        obs.facts.insert("new_term".into(), json!(t));
                        break;
                    }
                }
                if Instant::now() > deadline {
                    return Err(ChaosError::Timeout(
                        "another scheduler member leading".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Recovery: every member agrees on the new leader and still has the placement.
            loop {
                let mut agree = true;
                for url in members.values() {
                    match http::get_json(c, &format!("{url}/v1/scheduler")).await {
                        Ok(v) if v["leader"] == obs.facts["new_leader"] => {}
                        _ => agree = false,
                    }
                }
                if agree {
                    obs.recovery = Some(injected.elapsed());
                    break;
                }
                if Instant::now() > deadline {
                    obs.notes
                        .push("the members did not all follow the new leader".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            obs.facts.insert("placement_epoch_before".into(), epoch);
        }
    }
    tokio::time::sleep(o.hold).await;
    if let ClusterFault::SchedulerStepDown = fault {
        if let Some((v, _)) = scheduler_view(c, &o.schedulers).await {
            obs.facts
                .insert("placement_epoch_after".into(), v["placement_epoch"].clone());
        }
    }
    Ok(())
}

fn lock_acked(p: &Publishers) -> u64 {
    p.acked_by
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|(n, _)| *n)
        .sum()
}

/// Runs `cmd` with `sh -c`; `what` names it in errors.
async fn run_shell(cmd: &str, what: &str) -> Result<(), ChaosError> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
        .map_err(|e| ChaosError::Io(format!("running the {what} command {cmd:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ChaosError::Drill(format!(
            "the {what} command {cmd:?} failed: {status}"
        )))
    }
}

/// What a node's `/readyz` says: `ready`, the degradation's code (`registry_unreachable`:
/// ready, serving on its peers' promises), the error code of a 503 (`registry_lease_lost`,
/// …), or `unreachable`.
pub async fn readyz_state(c: &reqwest::Client, url: &str) -> String {
    let r = match c
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return "unreachable".into(),
    };
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    if status == 200 {
        match serde_json::from_slice::<meshd_core::api::Health>(&body) {
            Ok(meshd_core::api::Health {
                degraded: Some(d), ..
            }) => d.code,
            _ => "ready".into(),
        }
    } else if let Ok(e) = serde_json::from_slice::<meshd_core::api::ErrorBody>(&body) {
        e.error.code
    } else {
        format!("http_{status}")
    }
}

async fn every_node_plainly_ready(c: &reqwest::Client, o: &ClusterDrillOptions) -> bool {
    for url in o.nodes.values() {
        if readyz_state(c, url).await != "ready" {
            return false;
        }
    }
    true
}

/// Whether an etcd member answers `/health` within a second.
async fn etcd_answers(c: &reqwest::Client, url: &str) -> bool {
    c.get(format!("{}/health", url.trim_end_matches('/')))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The registry-outage fault: stop, watch (delivery gap, every node's `/readyz`), start,
/// watch until every node is plainly ready again.
async fn registry_outage(
    c: &reqwest::Client,
    o: &ClusterDrillOptions,
    (stop, start, outage, etcd): (&str, &str, Duration, &[String]),
    recorder: &PullRecorder,
    injected: Instant,
    obs: &mut Observed,
) -> Result<(), ChaosError> {
    obs.facts.insert("stop".into(), json!(stop));
    obs.facts.insert("start".into(), json!(start));
    obs.facts
        .insert("outage_ms".into(), json!(outage.as_millis() as u64));
    let delivered = || -> u64 {
        recorder
            .served_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(n, _)| *n)
            .sum()
    };
    let mut gap = GapWatch::new(delivered(), injected);
    // Per node, every `/readyz` state seen from the stop until it was plainly ready again.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut observe = |id: &str, state: String| {
        let v = seen.entry(id.to_string()).or_default();
        if !v.contains(&state) {
            v.push(state);
        }
    };
    // Whatever the stop command did, the restore runs the start command.
    obs.registry_down = true;
    run_shell(stop, "stop").await?;
    for url in etcd {
        if etcd_answers(c, url).await {
            obs.notes.push(format!(
                "the registry at {url} still answered /health after the stop command"
            ));
        }
    }
    let back_at = injected + outage;
    while Instant::now() < back_at {
        for (id, url) in &o.nodes {
            let state = readyz_state(c, url).await;
            if state != "ready" && obs.detection.is_none() {
                obs.detection = Some(injected.elapsed());
            }
            observe(id, state);
        }
        gap.sample(delivered());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    obs.registry_down = false;
    run_shell(start, "start").await?;
    for url in etcd {
        let deadline = Instant::now() + o.detect_timeout;
        while !etcd_answers(c, url).await {
            if Instant::now() > deadline {
                obs.notes.push(format!(
                    "the registry at {url} did not answer /health within {:?} of the start command",
                    o.detect_timeout
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Recovery: every node plainly ready again.
    let deadline = started + o.detect_timeout;
    loop {
        let mut all = true;
        for (id, url) in &o.nodes {
            let state = readyz_state(c, url).await;
            all &= state == "ready";
            observe(id, state);
        }
        gap.sample(delivered());
        if all {
            obs.recovery = Some(started.elapsed());
            break;
        }
        if Instant::now() > deadline {
            obs.notes.push(format!(
                "not every node was plainly ready within {:?} of the start command",
                o.detect_timeout
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gap.sample(delivered());
    obs.facts
        .insert("longest_delivery_gap_ms".into(), json!(gap.longest_ms()));
    let degraded_all = o.nodes.keys().all(|id| {
        seen.get(id)
            .is_some_and(|s| s.iter().any(|x| x == "registry_unreachable"))
    });
    obs.facts.insert("readyz_seen".into(), json!(seen));
    obs.facts
        .insert("every_node_said_degraded".into(), json!(degraded_all));
    Ok(())
}

/// The longest time without a new delivery, sampled: `sample(count)` with the running
/// delivery count (a gap still open at the last sample counts up to it).
#[derive(Debug, Clone)]
pub struct GapWatch {
    count: u64,
    last_change: Instant,
    longest: Duration,
}

impl GapWatch {
    /// Starts watching at `since` with `count` deliveries so far.
    pub fn new(count: u64, since: Instant) -> GapWatch {
        GapWatch {
            count,
            last_change: since,
            longest: Duration::ZERO,
        }
    }

    /// Records the count now.
    pub fn sample(&mut self, count: u64) {
        self.sample_at(count, Instant::now());
    }

    /// Records the count at `now`.
    pub fn sample_at(&mut self, count: u64, now: Instant) {
        self.longest = self
            .longest
            .max(now.saturating_duration_since(self.last_change));
        if count > self.count {
            self.count = count;
            self.last_change = now;
        }
    }

    /// The longest gap seen (ms).
    pub fn longest_ms(&self) -> u64 {
        self.longest.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_the_longest_time_without_a_new_delivery() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = GapWatch::new(5, t0);
        g.sample_at(6, ms(100));
        g.sample_at(6, ms(400));
        g.sample_at(7, ms(900)); // 800 ms without a new delivery
        g.sample_at(9, ms(1000));
        assert_eq!(g.longest_ms(), 800);
        // A gap still open counts up to the last sample.
        g.sample_at(9, ms(2500));
        assert_eq!(g.longest_ms(), 1500);
    }
}
