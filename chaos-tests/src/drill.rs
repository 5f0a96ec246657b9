//! Failover drills against a running mesh, by URL, through the components' own admin
//! APIs (no root, no process control): check the mesh is healthy (refuse when degraded
//! unless forced), put canary load on it (pull subscriptions in every cluster, so the
//! operator's machine needs no inbound connectivity), inject the failure, measure
//! detection, restore (also when interrupted), wait for every canary everywhere, and
//! report lost / duplicated / reordered per cluster.
//!
//! Here: `link-partition` (pause/resume replication on both ends of a link:
//! `POST /v1/mesh/links/{peer}/pause|resume`). Node, proxy and scheduler failover are in
//! [`crate::cluster_drill`]; evacuation is in [`crate::evacuate`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::canary::{self, Publishers, PullRecorder, SharedChecker, Sink, TOPIC};
use crate::checker::{Checker, Report};
use crate::{http, ChaosError};

/// Settings common to every drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Cluster name → node URL (`http://host:port`), every cluster of the mesh to watch.
    pub nodes: BTreeMap<String, String>,
    /// Run even when the mesh is degraded.
    pub force: bool,
    /// Canary keys per cluster.
    pub keys_per_cluster: usize,
    /// Pause between acknowledged canaries of one key.
    pub pace: Duration,
    /// Longest wait for every canary everywhere after the restore.
    pub recovery_timeout: Duration,
    /// Where each cluster's canary publishers send (cluster → URL, a proxy or a node);
    /// a cluster not named here publishes to its node in `nodes`.
    pub publish: BTreeMap<String, String>,
    /// Clusters whose canary subscriber is a webhook (push) sink bound on this local
    /// address instead of a pull subscription (the cluster's nodes must reach it); the
    /// `evacuate` drill hands push subscriptions off to another cluster.
    pub push_canary: BTreeMap<String, std::net::IpAddr>,
}

impl DrillOptions {
    /// Defaults for `nodes`.
    pub fn new(nodes: BTreeMap<String, String>) -> DrillOptions {
        DrillOptions {
            nodes,
            force: false,
            keys_per_cluster: 2,
            pace: Duration::from_millis(50),
            recovery_timeout: Duration::from_secs(120),
            publish: BTreeMap::new(),
            push_canary: BTreeMap::new(),
        }
    }
}

/// Runs a `meshd drill … --json` command on a blocking thread and parses its report. An
/// unsuccessful exit is an error carrying the drill's stderr and stdout.
pub async fn run_json_report(mut cmd: std::process::Command) -> Result<Report, ChaosError> {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| ChaosError::Io(format!("running the drill: {e}")))?
        .map_err(|e| ChaosError::Io(format!("running the drill: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(ChaosError::Io(format!(
            "drill failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_str(&stdout)
        .map_err(|e| ChaosError::Io(format!("the drill's JSON report: {e}: {stdout}")))
}

/// Parses `NAME=URL`.
pub fn parse_node(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected CLUSTER=URL, e.g. eu=http://10.0.0.5:7700"))?;
    if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{s:?}: expected CLUSTER=http://host:port"));
    }
    Ok((name.to_string(), url.trim_end_matches('/').to_string()))
}

/// What is wrong with the mesh now (empty: healthy): every node ready, its `/v1/mesh`
/// names the cluster it was given as, and every link connected, not stalled, not paused.
pub async fn health(c: &reqwest::Client, nodes: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, url) in nodes {
        if !http::ready(c, url).await {
            problems.push(format!("{name}: {url}/readyz is not ready"));
            continue;
        }
        match http::mesh(c, url).await {
            Err(e) => problems.push(format!("{name}: {e}")),
            Ok(m) => {
                if m.cluster != *name {
                    problems.push(format!(
                        "{name}: {url} is cluster {} (check --node)",
                        m.cluster
                    ));
                }
                if let Err(e) = http::links_healthy(&m) {
                    problems.push(format!("{name}: {e}"));
                }
            }
        }
    }
    problems
}

/// The canary load of a drill against a running mesh: a pull subscription and recorder
/// per cluster (or a webhook subscription and sink, `DrillOptions::push_canary`), one
/// publisher set per cluster (keys `CLUSTER-kN`).
pub(crate) struct Canaries {
    pub(crate) checker: SharedChecker,
    pub(crate) recorders: Vec<PullRecorder>,
    /// Webhook sinks of the push canary subscribers (kept until the canaries are done).
    sinks: Vec<Sink>,
    /// Per cluster, in the order of `DrillOptions::nodes`.
    pub(crate) publishers: Vec<(String, Publishers)>,
    subs: Vec<(String, String)>,
}

/// The partition keys of the canaries published in `cluster` (`keys` of them).
pub fn canary_keys(cluster: &str, keys: usize) -> Vec<String> {
    (0..keys).map(|k| format!("{cluster}-k{k}")).collect()
}

pub(crate) async fn start_canaries(
    c: &reqwest::Client,
    opts: &DrillOptions,
    run: &str,
) -> Result<Canaries, ChaosError> {
    let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
    let sub = format!("meshd-drill-{run}");
    let mut subs = Vec::new();
    let mut recorders = Vec::new();
    let mut sinks = Vec::new();
    for (name, url) in &opts.nodes {
        http::put_topic(c, url, TOPIC, 2).await?;
        let mut spec = json!({"name": sub, "topic": TOPIC, "group": sub, "mode": "CLUSTERING", "sink": {"pull": {}}});
        if let Some(ip) = opts.push_canary.get(name) {
            let s = Sink::start(*ip, name, run, checker.clone()).await?;
            spec["sink"] = json!({"webhook": {"url": s.url, "timeout_ms": 2000}});
            spec["delivery"] = json!({"initial_backoff_ms": 50, "max_backoff_ms": 1000});
            sinks.push(s);
        }
        http::subscribe(c, url, &spec).await?;
        subs.push((url.clone(), sub.clone()));
        checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect_cluster(name);
    }
    let names: Vec<String> = opts.nodes.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, url) in &opts.nodes {
        let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
        while !http::knows_interest(c, url, &others, TOPIC).await? {
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout(format!(
                    "{name} learning the drill's canary interest of {others:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (name, url) in &opts.nodes {
        if opts.push_canary.contains_key(name) {
            continue;
        }
        recorders.push(PullRecorder::start(
            c.clone(),
            url,
            &sub,
            name,
            run,
            checker.clone(),
        ));
    }
    let mut all = Vec::new();
    for (name, url) in &opts.nodes {
        // One publisher set per cluster, publishing to that cluster's node.
        let keys = canary_keys(name, opts.keys_per_cluster);
        let entry = opts.publish.get(name).unwrap_or(url).clone();
        all.push((
            name.clone(),
            Publishers::start(
                c.clone(),
                vec![entry],
                keys,
                run,
                opts.pace,
                checker.clone(),
            ),
        ));
    }
    Ok(Canaries {
        checker,
        recorders,
        sinks,
        publishers: all,
        subs,
    })
}

impl Canaries {
    pub(crate) fn acked(&self) -> u64 {
        self.checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acknowledged()
    }

    pub(crate) async fn finish(
        mut self,
        c: &reqwest::Client,
        scenario: &str,
        restored: Instant,
        timeout: Duration,
    ) -> Report {
        for (_, p) in &mut self.publishers {
            p.stop().await;
        }
        let done = canary::wait_complete(&self.checker, timeout).await;
        for r in &mut self.recorders {
            r.stop().await;
        }
        self.sinks.clear();
        let mut report = self
            .checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(scenario, "mesh");
        match done {
            Some(_) => report.recovery_ms = Some(restored.elapsed().as_millis() as u64),
            None => report.notes.push(format!(
                "not every canary arrived within {timeout:?} of the restore"
            )),
        }
        for (url, sub) in &self.subs {
            if let Err(e) = http::unsubscribe(c, url, sub).await {
                report.notes.push(format!("cleanup: {e}"));
            }
        }
        report
    }
}

async fn set_paused(
    c: &reqwest::Client,
    url: &str,
    peer: &str,
    pause: bool,
) -> Result<(), ChaosError> {
    let action = if pause { "pause" } else { "resume" };
    let (status, body) = http::send_json(
        c,
        reqwest::Method::POST,
        &format!("{url}/v1/mesh/links/{peer}/{action}"),
        None,
    )
    .await?;
    if status == 200 {
        Ok(())
    } else if status == 404 && body["error"]["code"] == "not_found" {
        Err(ChaosError::Drill(format!(
            "{url} has no link admin API (POST /v1/mesh/links/{{peer}}/{action}); upgrade meshd there"
        )))
    } else {
        Err(ChaosError::Drill(format!(
            "{action} {peer} at {url}: {status} {body}"
        )))
    }
}

/// Resumes every paused link on every given node (after a drill that could not restore,
/// e.g. one killed with SIGKILL). Returns the `cluster->peer` links resumed.
pub async fn restore(nodes: &BTreeMap<String, String>) -> Result<Vec<String>, ChaosError> {
    let c = http::client()?;
    let mut resumed = Vec::new();
    for (name, url) in nodes {
        let m = http::mesh(&c, url).await?;
        for l in &m.links {
            if l.paused {
                let peer = l.peer.as_str();
                set_paused(&c, url, peer, false).await?;
                resumed.push(format!("{name}->{peer}"));
            }
        }
    }
    Ok(resumed)
}

/// `link-partition`: pauses replication on both ends of the link `a`–`b` for `hold`
/// (or until `interrupt` resolves), then resumes it. Detection is when `a`'s `/v1/mesh`
/// reports the link stalled (connected, behind, not advancing); recovery is from the
/// resume until every cluster has every acknowledged canary.
pub async fn link_partition(
    opts: &DrillOptions,
    a: &str,
    b: &str,
    hold: Duration,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, ChaosError> {
    let c = http::client()?;
    let (Some(url_a), Some(url_b)) = (opts.nodes.get(a).cloned(), opts.nodes.get(b).cloned())
    else {
        return Err(ChaosError::Drill(format!(
            "--between {a} {b}: give both clusters' node URLs with --node {a}=URL --node {b}=URL"
        )));
    };
    let mut notes = Vec::new();
    let problems = health(&c, &opts.nodes).await;
    if !problems.is_empty() {
        if !opts.force {
            return Err(ChaosError::Drill(format!(
                "refusing to run: the mesh is degraded ({}); fix it or pass --force",
                problems.join("; ")
            )));
        }
        notes.push(format!(
            "forced on a degraded mesh: {}",
            problems.join("; ")
        ));
    }
    let link = http::link(&c, &url_a, b).await?;
    if link.is_none() {
        return Err(ChaosError::Drill(format!("{a} has no link to {b}")));
    }
    // The admin API exists on both ends (a resume of a running link changes nothing).
    set_paused(&c, &url_a, b, false).await?;
    set_paused(&c, &url_b, a, false).await?;
    let started = Instant::now();
    let run = canary::run_id();
    let canaries = start_canaries(&c, opts, &run).await?;
    // Canaries flow end to end before the fault.
    let warm = Instant::now() + Duration::from_secs(30);
    while canaries.acked() < 10
        || !canaries
            .checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flowing()
    {
        if Instant::now() > warm {
            let r = canaries
                .finish(&c, "link-partition", Instant::now(), Duration::ZERO)
                .await;
            return Err(ChaosError::Drill(format!(
                "canaries do not flow before the fault; aborting without injecting it\n{r}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::pin!(interrupt);
    let mut interrupted = false;
    let injected = Instant::now();
    let mut detection = None;
    let fault = async {
        set_paused(&c, &url_a, b, true).await?;
        set_paused(&c, &url_b, a, true).await?;
        loop {
            if detection.is_none() {
                if let Ok(Some(l)) = http::link(&c, &url_a, b).await {
                    if l.state != "connected" {
                        detection = Some(injected.elapsed());
                    }
                }
            }
            if injected.elapsed() >= hold {
                return Ok::<(), ChaosError>(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let outcome = tokio::select! {
        r = fault => r,
        () = &mut interrupt => {
            interrupted = true;
            Ok(())
        }
    };
    // Always restore, whatever happened above.
    let r1 = set_paused(&c, &url_a, b, false).await;
    let r2 = set_paused(&c, &url_b, a, false).await;
    let restored = Instant::now();
    let mut report = canaries
        .finish(
            &c,
            &format!("link-partition {a}<->{b}"),
            restored,
            opts.recovery_timeout,
        )
        .await;
    report.detection_ms = detection.map(|d| d.as_millis() as u64);
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    if detection.is_none() {
        notes.push("the mesh did not report the link stalled during the drill (hold shorter than the bridge's stall_after, 5 s?)".into());
    }
    if interrupted {
        notes.push(format!(
            "interrupted after {:?}; the link was resumed",
            injected.elapsed()
        ));
    }
    report.notes.extend(notes);
    outcome?;
    r1?;
    r2?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_need_a_name_and_an_http_url() {
        assert_eq!(
            parse_node("eu=http://10.0.0.5:7700/"),
            Ok(("eu".to_string(), "http://10.0.0.5:7700".to_string()))
        );
        assert!(parse_node("http://10.0.0.5:7700").is_err());
        assert!(parse_node("=http://x").is_err());
        assert!(parse_node("eu=10.0.0.5:7700").is_err());
    }
}
