//! The `evacuate` drill: drain a whole cluster X through its components' admin APIs
//! (`POST /v1/admin/drain` on each of X's nodes and proxies), keep canaries flowing among
//! the other clusters, move X's publishers to another cluster, hold, undrain everything
//! (always: also on interrupt and on error), and wait until X's subscribers have every
//! canary acknowledged anywhere.
//!
//! What "served by other clusters" means here, concretely:
//! - X's *publishers* are served by another cluster: after the drain they get 503
//!   `draining` from X and move to the next entry URL, another cluster's proxy or node.
//! - X's *push (webhook) subscribers* are served by another cluster: before the drain the
//!   drill reads X's subscriptions and gives each webhook subscription whose topic a
//!   linked, healthy cluster Y may receive (the topology's replication policy, shown in
//!   `GET /v1/mesh` as `policies`, and the topic's `replicate_to`) a stand-in in Y
//!   (`evac.X.<name>`: same topic, mode, filter, transform, sink, delivery settings; see
//!   [`crate::handoff`] for where it starts and why that loses nothing and reorders
//!   nothing). The stand-in is Y's interest in the topic, so the mesh replicates the topic
//!   to Y by itself; the drill waits until the other clusters learned that interest, then
//!   drains X. On restore (always: also on interrupt and on error) the stand-ins are
//!   deleted first, then X is undrained and resumes from its own committed offsets (what
//!   the stand-ins delivered meanwhile comes again: counted duplicates).
//! - X's *pull subscribers* are not handed off (their consumers pull from X's URL): the
//!   report lists them under `x_subscriptions` with `handed_off: false` and the reason, and
//!   what was published for them while X was drained waits in X's store (written by X's
//!   bridge) or in the peers' outbound streams, and is delivered when X serves again.
//!
//! The drill's own canary subscriber in X is a pull subscription unless
//! `DrillOptions::push_canary` names X (`--canary-webhook IP`): then it is a webhook on the
//! operator's machine, handed off like any other, and the canary numbers show X's
//! subscriber served during the drain (`x_new_canaries_delivered_while_drained`: distinct
//! canaries published after the drain began that X's subscriber received during the hold).
//! A drained standalone node (no cluster member) only refuses publishes and keeps
//! delivering; a node in a cluster also stops delivery once what it had stored when the
//! drain began is delivered (`drain_state_in_hold: drained`), and then only stand-ins
//! deliver.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::canary::{self, Publishers};
use crate::checker::Report;
use crate::drill::{self, DrillOptions};
use crate::handoff::{self, HandOff, StandInStart};
use crate::{http, ChaosError};

/// Settings of `evacuate`.
#[derive(Debug, Clone)]
pub struct EvacuateOptions {
    /// The mesh (node URL per cluster, and `publish` entries per cluster).
    pub drill: DrillOptions,
    /// The cluster to evacuate (one of `drill.nodes`).
    pub cluster: String,
    /// More of X's admin URLs to drain (its other nodes and its proxies) besides its node
    /// in `drill.nodes` and its entry in `drill.publish`.
    pub drain: Vec<String>,
    /// How long X stays drained.
    pub hold: Duration,
    /// Bearer token for proxies' admin endpoints.
    pub token: Option<String>,
    /// The cluster that takes X's push subscribers (default: the first linked, healthy
    /// cluster, by name, that the replication policy allows for the topic).
    pub to: Option<String>,
    /// Where stand-ins start reading (see [`crate::handoff`]).
    pub stand_in_start: StandInStart,
}

impl EvacuateOptions {
    /// Defaults for evacuating `cluster` of the mesh `drill`.
    pub fn new(drill: DrillOptions, cluster: &str) -> EvacuateOptions {
        EvacuateOptions {
            drill,
            cluster: cluster.to_string(),
            drain: Vec::new(),
            hold: Duration::from_secs(30),
            token: None,
            to: None,
            stand_in_start: StandInStart::default(),
        }
    }
}

/// A component of X drained by the drill, as the drill saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Target {
    url: String,
    /// Answer of `POST /v1/admin/drain`.
    drain_answer: serde_json::Value,
    /// `readyz` status seen at the end of the hold (503 while drained).
    readyz_in_hold: Option<u16>,
    /// A node's `GET /v1/cluster` `drain` at the end of the hold (`drained`: a cluster
    /// member that stopped delivering; `draining` on a standalone node, which keeps
    /// delivering); None for a proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_state_in_hold: Option<meshd_core::api::DrainState>,
    /// `readyz` status after the undrain.
    readyz_after: Option<u16>,
}

async fn admin(
    c: &reqwest::Client,
    url: &str,
    action: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, ChaosError> {
    let mut req = c.post(format!("{url}/v1/admin/{action}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req
        .send()
        .await
        .map_err(|e| ChaosError::Drill(format!("{action} {url}: {e}")))?;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if status == 200 {
        Ok(body)
    } else {
        Err(ChaosError::Drill(format!(
            "{action} {url}: {status} {body}"
        )))
    }
}

/// Undrains every given node or proxy (after an `evacuate` drill that could not restore,
/// e.g. one killed with SIGKILL). Returns the URLs undrained.
pub async fn undrain(urls: &[String], token: Option<&str>) -> Result<Vec<String>, ChaosError> {
    let c = http::client()?;
    let mut done = Vec::new();
    for u in urls {
        let u = u.trim_end_matches('/');
        admin(&c, u, "undrain", token).await?;
        done.push(u.to_string());
    }
    Ok(done)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| v.to_string())
}

async fn readyz(c: &reqwest::Client, url: &str) -> Option<u16> {
    c.get(format!("{url}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `evacuate`: see the module docs. Detection is from the first drain call until every
/// drained component's `readyz` answers 503; recovery is from the undrain until X's
/// subscribers delivered a canary again (`facts.x_delivers_again_ms`) and until every
/// cluster had every acknowledged canary (`recovery_ms`).
pub async fn evacuate(
    opts: &EvacuateOptions,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, ChaosError> {
    let c = http::client()?;
    let d = &opts.drill;
    let x = opts.cluster.as_str();
    let Some(x_node) = d.nodes.get(x).cloned() else {
        return Err(ChaosError::Drill(format!(
            "--cluster {x}: give its node URL with --url {x}=URL"
        )));
    };
    let others: Vec<String> = d.nodes.keys().filter(|n| *n != x).cloned().collect();
    if others.is_empty() {
        return Err(ChaosError::Drill(format!(
            "evacuating {x} needs at least one other cluster (--url OTHER=URL)"
        )));
    }
    // X's components to drain: its node, its publish entry (a proxy), the extra ones.
    let mut targets: Vec<String> = vec![x_node.clone()];
    for u in d.publish.get(x).into_iter().chain(opts.drain.iter()) {
        let u = u.trim_end_matches('/').to_string();
        if !targets.contains(&u) {
            targets.push(u);
        }
    }
    // Where X's clients go while X is drained: the other clusters' entries.
    let fallback: Vec<String> = others
        .iter()
        .filter_map(|o| d.publish.get(o).or_else(|| d.nodes.get(o)).cloned())
        .collect();
    let x_entry = d.publish.get(x).unwrap_or(&x_node).clone();
    let mut notes = Vec::new();
    let mut problems = drill::health(&c, &d.nodes).await;
    // Every component to drain and every entry clients move to is ready (none is
    // drained already by someone else).
    for u in targets.iter().chain(fallback.iter()) {
        if !d.nodes.values().any(|n| n == u) && readyz(&c, u).await != Some(200) {
            problems.push(format!("{u}/readyz is not ready"));
        }
    }
    if !problems.is_empty() {
        if !d.force {
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

    let started = Instant::now();
    let run = canary::run_id();
    let mut canaries = drill::start_canaries(&c, d, &run).await?;
    let warm = Instant::now() + Duration::from_secs(30);
    while canaries.acked() < 10 || !canary::lock(&canaries.checker).flowing() {
        if Instant::now() > warm {
            let r = canaries
                .finish(&c, "evacuate", Instant::now(), Duration::ZERO)
                .await;
            return Err(ChaosError::Drill(format!(
                "canaries do not flow before the drain; aborting without draining\n{r}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // X's clients stop, and what they published reaches every cluster before the drain:
    // a key that moves to another cluster mid-stream could otherwise overtake its own
    // earlier events that are still being replicated out of X.
    for (name, p) in &mut canaries.publishers {
        if name == x {
            p.stop().await;
        }
    }
    // Only X's canaries matter here: the other clusters keep publishing, so theirs are
    // always in flight somewhere (waiting for those made the drill wait its full 30 s
    // over 20 ms links).
    let x_canary_keys = drill::canary_keys(x, d.keys_per_cluster);
    let settle_started = Instant::now();
    let quiet = settle_started + Duration::from_secs(30);
    let mut settled = None;
    let mut others_in_flight = 0;
    loop {
        {
            let ch = canary::lock(&canaries.checker);
            if ch.complete_for(&x_canary_keys) {
                settled = Some(settle_started.elapsed());
                others_in_flight = ch.missing_outside(&x_canary_keys);
                break;
            }
        }
        if Instant::now() > quiet {
            notes.push(format!("{x}'s canaries from before the drain had not reached every cluster within 30 s; drained anyway"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // X's subscriptions and where each one goes (only reads: nothing to undo yet).
    let mut hand_offs: Vec<HandOff> = match handoff::plan(
        &c,
        &d.nodes,
        x,
        &run,
        opts.to.as_deref(),
        opts.stand_in_start,
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            let r = canaries
                .finish(&c, "evacuate", Instant::now(), Duration::ZERO)
                .await;
            return Err(ChaosError::Drill(format!(
                "reading {x}'s subscriptions: {e}; aborting without draining\n{r}"
            )));
        }
    };

    tokio::pin!(interrupt);
    let mut interrupted = false;
    let mut injected = Instant::now();
    let mut detection = None;
    let mut report_targets: BTreeMap<String, Target> = BTreeMap::new();
    let mut moved: Option<Publishers> = None;
    let x_keys: Vec<String> = (0..d.keys_per_cluster)
        .map(|k| format!("{x}-moved-k{k}"))
        .collect();
    let token = opts.token.as_deref();
    let (mut x_delivered_at_drain, mut acked_at_drain) = (0u64, 0u64);
    let mut marks = BTreeMap::new();
    let mut in_hold = (0u64, 0u64);
    let mut new_in_hold = 0u64;
    let mut interest_notes = Vec::new();
    let fault = async {
        // Stand-ins first: X's push subscribers are served from the moment X stops.
        for h in hand_offs.iter_mut() {
            handoff::create(&c, h).await;
        }
        for h in hand_offs.iter().filter(|h| h.handed_off) {
            if !handoff::wait_interest(&c, &d.nodes, h, Duration::from_secs(30)).await {
                interest_notes.push(format!(
                    "not every cluster showed {}'s interest in {} (stand-in {}) within 30 s; drained anyway (what it misses, {x} delivers after the undrain)",
                    h.stand_in_cluster.as_deref().unwrap_or("?"),
                    h.topic,
                    h.stand_in.as_deref().unwrap_or("?")
                ));
            }
        }
        for h in hand_offs.iter_mut().filter(|h| h.handed_off) {
            handoff::read_stats(&c, h).await;
            h.delivered_before_drain = h.delivered_by_stand_in.take();
        }
        injected = Instant::now();
        {
            let ch = canary::lock(&canaries.checker);
            x_delivered_at_drain = ch.delivered_in(x);
            acked_at_drain = ch.acknowledged();
            marks = ch.highest_acked();
        }
        for t in &targets {
            let answer = admin(&c, t, "drain", token).await?;
            report_targets.insert(
                t.clone(),
                Target {
                    url: t.clone(),
                    drain_answer: answer,
                    ..Target::default()
                },
            );
        }
        // X's clients come back, aimed at X first: X refuses (503 draining) and they
        // move on to another cluster's entry.
        let mut urls = vec![x_entry.clone()];
        urls.extend(fallback.iter().cloned());
        // (Key i starts at entry i mod entries: some keys try X first and are refused.)
        let p = Publishers::start(
            c.clone(),
            urls,
            x_keys.clone(),
            &run,
            d.pace,
            canaries.checker.clone(),
        );
        moved = Some(p);
        loop {
            if detection.is_none() {
                let mut all = true;
                for t in &targets {
                    all &= readyz(&c, t).await == Some(503);
                }
                if all {
                    detection = Some(injected.elapsed());
                }
            }
            if injected.elapsed() >= opts.hold {
                {
                    let ch = canary::lock(&canaries.checker);
                    in_hold = (
                        ch.acknowledged().saturating_sub(acked_at_drain),
                        ch.delivered_in(x).saturating_sub(x_delivered_at_drain),
                    );
                    new_in_hold = ch.delivered_after(x, &marks);
                }
                for t in &targets {
                    let s = readyz(&c, t).await;
                    let state = http::cluster_status(&c, t).await.ok().map(|v| v.drain);
                    if let Some(rt) = report_targets.get_mut(t) {
                        rt.readyz_in_hold = s;
                        rt.drain_state_in_hold = state;
                    }
                }
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
    // Always delete the stand-ins, then undrain every target, whatever happened above
    // (also ones whose drain call failed: undrain of a serving component changes nothing).
    let mut undrain_errors = Vec::new();
    for h in hand_offs.iter_mut() {
        handoff::read_stats(&c, h).await;
        if let Some(e) = handoff::remove(&c, h).await {
            undrain_errors.push(e);
        }
    }
    for t in &targets {
        if let Err(e) = admin(&c, t, "undrain", token).await {
            undrain_errors.push(e.to_string());
        }
    }
    let restored = Instant::now();
    let delivered_before = canary::lock(&canaries.checker).delivered_in(x);
    // X serves again: every target ready, and X's subscribers deliver a new canary.
    let mut back = None;
    let mut again = None;
    let until = restored + d.recovery_timeout;
    // (The wait for every canary below shares this deadline.)
    while (back.is_none() || again.is_none()) && Instant::now() < until {
        if back.is_none() {
            let mut all = true;
            for t in &targets {
                all &= readyz(&c, t).await == Some(200);
            }
            if all {
                back = Some(restored.elapsed());
            }
        }
        if again.is_none() && canary::lock(&canaries.checker).delivered_in(x) > delivered_before {
            again = Some(restored.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in &targets {
        let s = readyz(&c, t).await;
        if let Some(rt) = report_targets.get_mut(t) {
            rt.readyz_after = s;
        }
    }
    let (moved_acked, moved_failures) = match moved.as_mut() {
        Some(p) => {
            p.stop().await;
            let by = p
                .acked_by
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.0))
                .collect::<BTreeMap<_, _>>();
            let kinds = p
                .failure_kinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            (json!(by), json!(kinds))
        }
        None => (json!({}), json!({})),
    };
    let mut report = canaries
        .finish(
            &c,
            &format!("evacuate {x}"),
            restored,
            until.saturating_duration_since(Instant::now()),
        )
        .await;
    report.detection_ms = detection.map(|v| v.as_millis() as u64);
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    let f = &mut report.facts;
    f.insert("cluster".into(), json!(x));
    f.insert(
        "drained".into(),
        json!(report_targets.values().collect::<Vec<_>>()),
    );
    f.insert("x_clients_moved_to".into(), json!(fallback));
    f.insert(
        "x_canaries_settled_ms".into(),
        json!(settled.map(|v| v.as_millis() as u64)),
    );
    f.insert(
        "other_canaries_in_flight_at_settle".into(),
        json!(others_in_flight),
    );
    f.insert("acked_while_drained".into(), json!(in_hold.0));
    f.insert("x_deliveries_while_drained".into(), json!(in_hold.1));
    f.insert(
        "x_new_canaries_delivered_while_drained".into(),
        json!(new_in_hold),
    );
    f.insert("x_subscriptions".into(), json!(hand_offs));
    let not_handed: Vec<String> = hand_offs
        .iter()
        .filter(|h| !h.handed_off)
        .map(|h| {
            format!(
                "{} ({}, topic {}): {}",
                h.subscription,
                h.sink,
                h.topic,
                h.reason.as_deref().unwrap_or("?")
            )
        })
        .collect();
    f.insert("x_not_handed_off".into(), json!(not_handed));
    for h in hand_offs.iter().filter(|h| h.handed_off) {
        notes.push(format!(
            "handed off {} (topic {}) to {} as {} (start {}): {} delivered by the stand-in ({} of them before the drain), {} retried, {} dead-lettered; stand-in deleted: {}",
            h.subscription,
            h.topic,
            h.stand_in_cluster.as_deref().unwrap_or("?"),
            h.stand_in.as_deref().unwrap_or("?"),
            h.start.as_deref().unwrap_or("?"),
            opt(h.delivered_by_stand_in),
            opt(h.delivered_before_drain),
            opt(h.stand_in_retries),
            opt(h.stand_in_dead_lettered),
            h.stand_in_deleted.map_or("n/a", |d| if d { "yes" } else { "NO" }),
        ));
    }
    for n in &not_handed {
        notes.push(format!("NOT handed off: {n}"));
    }
    notes.extend(interest_notes);
    f.insert("x_moved_publishes_acked_by".into(), moved_acked);
    f.insert("x_moved_publish_refusals".into(), moved_failures);
    f.insert(
        "x_ready_again_ms".into(),
        json!(back.map(|v| v.as_millis() as u64)),
    );
    f.insert(
        "x_delivers_again_ms".into(),
        json!(again.map(|v| v.as_millis() as u64)),
    );
    let stand_ins = hand_offs.iter().filter(|h| h.handed_off).count();
    let x_stopped = report_targets
        .values()
        .any(|t| t.drain_state_in_hold == Some(meshd_core::api::DrainState::Drained));
    if in_hold.1 > 0 {
        notes.push(format!(
            "{x}'s subscribers got {} deliveries while it was drained ({} of canaries published after the drain began) from {stand_ins} stand-in(s) in other clusters{}",
            in_hold.1,
            new_in_hold,
            if x_stopped {
                format!("; {x}'s node had stopped delivering (drain state `drained`)")
            } else {
                format!("; {x}'s node was not `drained` at the end of the hold (a node without a cluster member only refuses publishes and keeps delivering; a cluster member delivers what it had stored first, up to 30 s)")
            }
        ));
    }
    if detection.is_none() {
        notes.push(format!(
            "not every drained component of {x} answered readyz 503 during the hold"
        ));
    }
    if interrupted {
        notes.push(format!(
            "interrupted after {:?}; {x} was undrained",
            injected.elapsed()
        ));
    }
    report.notes.extend(notes);
    report.notes.extend(undrain_errors.iter().cloned());
    outcome?;
    if let Some(e) = undrain_errors.into_iter().next() {
        return Err(ChaosError::Drill(format!("undrain failed: {e}\n{report}")));
    }
    Ok(report)
}
