//! Subscriber hand-off for the `evacuate` drill ([`crate::evacuate`]): before cluster X is
//! drained, every push (webhook) subscription of X whose topic another cluster Y may
//! receive gets a *stand-in* in Y — the same topic, group mode, filter, transform, sink
//! and delivery settings, named `evac.X.<name>` — and on restore the stand-ins are deleted
//! before X is undrained. Only public node APIs are used: `GET /v1/subscriptions`,
//! `GET|PUT /v1/topics/{topic}`, `POST|DELETE /v1/subscriptions[/{name}]`, `GET /v1/mesh`
//! (links and replication `policies`) and `GET /metrics` (the stand-in's counters).
//!
//! Owns: the plan (which subscription goes to which cluster, or why it does not), the
//! stand-in spec, the replication-policy check, creating and deleting stand-ins, and
//! reading a stand-in's delivery counters.
//!
//! Where a stand-in starts, and why that loses nothing:
//! - The node API offers two start positions, `latest` (what Y stores after the stand-in
//!   exists) and `earliest` (everything Y still retains of the topic). There is no start by
//!   time or by X's offsets, and X's offsets mean nothing in Y's store (each cluster has
//!   its own log), so "what X last delivered" cannot be translated into a position in Y.
//! - Loss is excluded by X itself, whatever the stand-in does: X's subscription is not
//!   touched, X keeps its committed offsets, and after the undrain X resumes from them, so
//!   every event X stored is delivered by X eventually (duplicates of what the stand-in
//!   delivered are counted, not lost). The stand-in's job is to deliver *during* the drain,
//!   in order per partition key for first deliveries.
//! - Order: the subscriber sees two in-order streams per key, X's and the stand-in's. A
//!   first delivery can only come out of order if the stand-in starts *ahead* of what X
//!   has delivered (the stand-in delivers seq n+1 while X has not yet delivered n, and X
//!   delivers n later, or after the undrain). With `latest` that happens whenever X lags
//!   behind Y at the moment the stand-in is created (replication into X, or X's delivery
//!   backlog), which is normal under load. With `earliest` the stand-in starts at the
//!   oldest event Y retains, which X delivered long ago (unless X lags by more than Y's
//!   retention), so the stand-in's first deliveries are always the continuation of X's
//!   and nothing is reordered. Hence the default is `earliest`; the price is duplicates:
//!   the stand-in re-delivers what Y retains of the topic (matching the filter), which is
//!   bounded by the topic's retention in Y and counted. `latest` is offered for topics
//!   with a long retention where the duplicates would hurt more than a late first
//!   delivery (at-least-once still holds: X re-delivers on the undrain).
//! - Coverage: Y only stores a topic it has interest in. The stand-in *is* that interest:
//!   once every other cluster learned it (the drill waits for `/v1/mesh`
//!   `learned_interest` to show it, up to 30 s, before draining X), every event published
//!   anywhere reaches Y and the stand-in. Events published before that and not yet stored
//!   in X when X stopped delivering are delivered by X after the undrain: late, not lost.
//! - The stand-in's consumer group is `evac.X.<run>.<group>` (a fresh group per drill run,
//!   so the start position applies and no cursor of an earlier drill is reused), never a
//!   group of Y's own subscribers.
//!
//! Pull subscriptions are not handed off: their consumers pull from X's URL, and a stand-in
//! in Y would have no consumer. They are reported as such; their events wait in X.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::{http, ChaosError};

/// Prefix of stand-in subscription names: `evac.{cluster}.{name}`.
pub const STAND_IN_PREFIX: &str = "evac.";

/// Where a stand-in starts reading in its cluster (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StandInStart {
    /// Everything the stand-in's cluster retains of the topic (no reorder; duplicates).
    #[default]
    Earliest,
    /// Only what is stored after the stand-in exists (fewer duplicates; a first delivery
    /// may come late, after the undrain).
    Latest,
}

impl StandInStart {
    /// The node API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            StandInStart::Earliest => "earliest",
            StandInStart::Latest => "latest",
        }
    }

    /// Parses `earliest` or `latest`.
    pub fn parse(s: &str) -> Result<StandInStart, String> {
        match s {
            "earliest" => Ok(StandInStart::Earliest),
            "latest" => Ok(StandInStart::Latest),
            _ => Err(format!("{s:?}: expected earliest or latest")),
        }
    }
}

/// One subscription of the evacuated cluster, and what the drill did with it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandOff {
    /// The subscription in X.
    pub subscription: String,
    /// Its topic.
    pub topic: String,
    /// `webhook` or `pull`.
    pub sink: String,
    /// Whether a stand-in serves it while X is drained.
    pub handed_off: bool,
    /// Why not (when not handed off, or when creating the stand-in failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The cluster of the stand-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stand_in_cluster: Option<String>,
    /// The stand-in's name there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stand_in: Option<String>,
    /// Its start position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The drill created the topic in the stand-in's cluster (and deletes it after).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub topic_created: bool,
    /// Events the stand-in delivered (its `meshd_node_events_delivered_total`, read from
    /// the stand-in cluster's node just before the stand-in was deleted); None when not
    /// observable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_by_stand_in: Option<u64>,
    /// Of those, delivered before X was drained (between the stand-in's creation and the
    /// first drain call: the replay from `earliest` starts there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_before_drain: Option<u64>,
    /// Failed push attempts of the stand-in (retried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stand_in_retries: Option<u64>,
    /// Events the stand-in gave up on (dead-lettered in the stand-in's cluster; X still
    /// delivers them after the undrain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stand_in_dead_lettered: Option<u64>,
    /// Why the stand-in's counters are missing, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_note: Option<String>,
    /// The stand-in was deleted on restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stand_in_deleted: Option<bool>,
    /// The node URL of the stand-in's cluster.
    #[serde(skip)]
    pub(crate) peer_url: String,
    /// Creating the stand-in was attempted (so restore deletes it, even when the answer
    /// was lost).
    #[serde(skip)]
    pub(crate) attempted: bool,
    /// The stand-in's spec, to create.
    #[serde(skip)]
    pub(crate) spec: Value,
    /// X's topic config, to create the topic in the stand-in's cluster if needed.
    #[serde(skip)]
    pub(crate) topic_config: Value,
}

/// The stand-in name of `name` of cluster `x` (None when longer than a name may be).
pub fn stand_in_name(x: &str, name: &str) -> Option<String> {
    let n = format!("{STAND_IN_PREFIX}{x}.{name}");
    (n.len() <= 200).then_some(n)
}

/// Specificity of a policy pattern matching `topic` (the topology's rule: `*`, `PREFIX.*`
/// or an exact name; exact beats a longer prefix beats a shorter prefix beats `*`), None
/// when it does not match.
fn pattern_matches(pattern: &str, topic: &str) -> Option<(u8, usize)> {
    if pattern == "*" {
        return Some((0, 0));
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        // `prefix` keeps its dot: `orders.`.
        return (prefix.ends_with('.') && topic.len() > prefix.len() && topic.starts_with(prefix))
            .then_some((1, prefix.len()));
    }
    (pattern == topic).then_some((2, topic.len()))
}

/// May `cluster` receive `topic` under the replication `policies` of `GET /v1/mesh`
/// (`[{"topics": "orders.*", "clusters": ["eu"]}]`)? The most specific matching policy
/// decides; no matching policy: yes.
pub fn policy_allows(policies: &[meshd_core::api::MeshPolicy], topic: &str, cluster: &str) -> bool {
    let best = policies
        .iter()
        .filter_map(|p| pattern_matches(&p.topics, topic).map(|s| (s, p)))
        .max_by_key(|(s, _)| *s);
    match best {
        None => true,
        Some((_, p)) => p.clusters.iter().any(|c| c == cluster),
    }
}

/// Whether the topic's own `replicate_to` (when not empty) names `cluster`.
fn replicate_to_allows(topic_config: &Value, cluster: &str) -> bool {
    match topic_config["replicate_to"].as_array() {
        Some(list) if !list.is_empty() => list.iter().any(|c| c == cluster),
        _ => true,
    }
}

/// The stand-in spec for `spec` (a subscription of X as `GET /v1/subscriptions` shows it).
pub fn stand_in_spec(
    x: &str,
    run: &str,
    spec: &Value,
    start: StandInStart,
) -> Result<Value, String> {
    let name = spec["name"].as_str().ok_or("subscription without a name")?;
    let group = spec["group"]
        .as_str()
        .filter(|g| !g.is_empty())
        .unwrap_or(name);
    let stand_in = stand_in_name(x, name).ok_or("the stand-in name would be too long")?;
    let group = format!("{STAND_IN_PREFIX}{x}.{run}.{group}");
    if group.len() > 200 {
        return Err("the stand-in group would be too long".into());
    }
    let mut s = spec.clone();
    let Some(o) = s.as_object_mut() else {
        return Err("subscription is not a JSON object".into());
    };
    o.insert("name".into(), json!(stand_in));
    o.insert("group".into(), json!(group));
    o.insert("start".into(), json!(start.as_str()));
    Ok(s)
}

fn sink_kind(spec: &Value) -> &'static str {
    if spec["sink"].get("webhook").is_some() {
        "webhook"
    } else if spec["sink"].get("pull").is_some() {
        "pull"
    } else {
        "unknown"
    }
}

/// Which clusters can take X's subscribers: X's links that are connected and not paused,
/// to clusters the drill has a ready node URL for (sorted by name; `to` alone when given).
async fn candidates(
    c: &reqwest::Client,
    nodes: &BTreeMap<String, String>,
    x: &str,
    x_mesh: &meshd_core::api::MeshStatus,
    to: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in &x_mesh.links {
        let peer = l.peer.as_str();
        if peer == x || to.is_some_and(|t| t != peer) {
            continue;
        }
        if l.state != "connected" || l.paused {
            continue;
        }
        let Some(url) = nodes.get(peer) else {
            continue;
        };
        if http::ready(c, url).await {
            out.push((peer.to_string(), url.clone()));
        }
    }
    out.sort();
    out
}

/// Reads X's subscriptions and decides, for each, the stand-in (cluster, spec) or why
/// there is none. Creates nothing.
pub async fn plan(
    c: &reqwest::Client,
    nodes: &BTreeMap<String, String>,
    x: &str,
    run: &str,
    to: Option<&str>,
    start: StandInStart,
) -> Result<Vec<HandOff>, ChaosError> {
    let Some(x_url) = nodes.get(x) else {
        return Err(ChaosError::NoCluster(x.to_string()));
    };
    let subs = http::get_json(c, &format!("{x_url}/v1/subscriptions")).await?;
    let x_mesh = http::mesh(c, x_url).await?;
    let peers = candidates(c, nodes, x, &x_mesh, to).await;
    let policies = &x_mesh.policies;
    let mut out = Vec::new();
    for spec in subs["subscriptions"].as_array().into_iter().flatten() {
        let name = spec["name"].as_str().unwrap_or_default().to_string();
        let topic = spec["topic"].as_str().unwrap_or_default().to_string();
        let mut h = HandOff {
            subscription: name.clone(),
            topic: topic.clone(),
            sink: sink_kind(spec).to_string(),
            ..HandOff::default()
        };
        let why_not = if name.starts_with(STAND_IN_PREFIX) {
            Some("a stand-in itself (of an earlier evacuate drill?)".to_string())
        } else if h.sink == "pull" && name == format!("meshd-drill-{run}") {
            Some("the drill's own canary subscriber, a pull subscription (give --canary-webhook IP to make it a webhook, handed off like the others)".to_string())
        } else if h.sink == "pull" {
            Some(format!(
                "pull subscription: its consumers pull from {x}'s URL, so a stand-in elsewhere would have no consumer; its events wait in {x} until it is back"
            ))
        } else if h.sink != "webhook" {
            Some("unknown sink kind".to_string())
        } else {
            None
        };
        if let Some(r) = why_not {
            h.reason = Some(r);
            out.push(h);
            continue;
        }
        let topic_info = http::get_json(c, &format!("{x_url}/v1/topics/{topic}")).await;
        let topic_config = match &topic_info {
            Ok(t) => t["config"].clone(),
            Err(_) => Value::Null,
        };
        let mut refused = Vec::new();
        let mut chosen = None;
        for (peer, url) in &peers {
            match policy_allows(policies, &topic, peer) {
                false => refused.push(format!("the replication policy keeps {topic} from {peer}")),
                true if !replicate_to_allows(&topic_config, peer) => {
                    refused.push(format!("{topic}'s replicate_to does not name {peer}"))
                }
                true => {
                    chosen = Some((peer.clone(), url.clone()));
                    break;
                }
            }
        }
        match chosen {
            None => {
                h.reason = Some(if peers.is_empty() {
                    format!(
                        "no linked, healthy cluster to take it (X's connected links to clusters given with --url{})",
                        to.map(|t| format!(", limited to --to {t}")).unwrap_or_default()
                    )
                } else {
                    refused.join("; ")
                });
            }
            Some((peer, url)) => match stand_in_spec(x, run, spec, start) {
                Err(e) => h.reason = Some(e),
                Ok(s) => {
                    h.handed_off = true;
                    h.stand_in = s["name"].as_str().map(str::to_string);
                    h.stand_in_cluster = Some(peer);
                    h.start = Some(start.as_str().to_string());
                    h.peer_url = url;
                    h.spec = s;
                    h.topic_config = topic_config;
                }
            },
        }
        out.push(h);
    }
    Ok(out)
}

/// Creates the stand-in of `h` (and its topic in the stand-in's cluster when missing).
/// On failure `h` says why and is no longer `handed_off`.
pub async fn create(c: &reqwest::Client, h: &mut HandOff) {
    if !h.handed_off {
        return;
    }
    h.attempted = true;
    if let Err(e) = try_create(c, h).await {
        h.handed_off = false;
        h.reason = Some(format!("creating the stand-in failed: {e}"));
    }
}

async fn try_create(c: &reqwest::Client, h: &mut HandOff) -> Result<(), ChaosError> {
    let url = h.peer_url.clone();
    let topic_url = format!("{url}/v1/topics/{}", h.topic);
    let (status, _) = http::send_json(c, reqwest::Method::GET, &topic_url, None).await?;
    if status == 404 {
        let body = if h.topic_config.is_object() {
            h.topic_config.clone()
        } else {
            json!({})
        };
        let (status, answer) =
            http::send_json(c, reqwest::Method::PUT, &topic_url, Some(&body)).await?;
        match status {
            201 => h.topic_created = true,
            200 | 409 => {}
            _ => {
                return Err(ChaosError::Http(format!(
                    "PUT {topic_url}: {status} {answer}"
                )))
            }
        }
    }
    let (status, answer) = http::send_json(
        c,
        reqwest::Method::POST,
        &format!("{url}/v1/subscriptions"),
        Some(&h.spec),
    )
    .await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ChaosError::Http(format!(
            "POST {url}/v1/subscriptions: {status} {answer}"
        )))
    }
}

/// Waits until every cluster in `nodes` but the stand-in's own learned its interest (the
/// stand-in's topic and filter, for the stand-in's cluster) from `/v1/mesh`. False after
/// `timeout`.
pub async fn wait_interest(
    c: &reqwest::Client,
    nodes: &BTreeMap<String, String>,
    h: &HandOff,
    timeout: Duration,
) -> bool {
    let Some(dest) = h.stand_in_cluster.as_deref() else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    for (name, url) in nodes {
        if name == dest {
            continue;
        }
        loop {
            if let Ok(m) = http::mesh(c, url).await {
                let known = m.learned_interest.values().flatten().any(|e| {
                    e.dest == dest
                        && e.topic == h.topic
                        && same_filter(e.filter.as_deref(), &h.spec["filter"])
                });
                if known {
                    break;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    true
}

/// Whether an interest entry's filter (`/v1/mesh` shows it as a JSON string, or null) is
/// the subscription's filter (a JSON object, or absent).
fn same_filter(announced: Option<&str>, spec: &Value) -> bool {
    match announced {
        Some(s) => serde_json::from_str::<Value>(s).is_ok_and(|v| v == *spec),
        None => spec.is_null(),
    }
}

/// Sum of the Prometheus samples of `metric` with label `subscription="{sub}"` (None when
/// there is none).
pub fn metric_sum(text: &str, metric: &str, sub: &str) -> Option<u64> {
    let label = format!("subscription=\"{sub}\"");
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !rest.starts_with('{') || !rest.contains(&label) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0) += v as u64;
        }
    }
    found
}

/// Reads the stand-in's counters from its cluster's node.
pub async fn read_stats(c: &reqwest::Client, h: &mut HandOff) {
    let Some(name) = h.stand_in.clone().filter(|_| h.attempted) else {
        return;
    };
    // In a cluster, the stand-in's consumer group runs on the node placement names; the
    // drill only knows one node URL per cluster.
    if let Ok(status) = http::cluster_status(c, &h.peer_url).await {
        if let Some(owned) = status.owned_groups {
            if !h.spec["group"].as_str().is_some_and(|g| owned.contains(g)) {
                h.stats_note = Some(format!(
                    "the stand-in's group runs on another node of {} than {} (its counters are not observable from the drill's URL)",
                    h.stand_in_cluster.as_deref().unwrap_or("?"),
                    h.peer_url
                ));
                return;
            }
        }
    }
    let text = match c.get(format!("{}/metrics", h.peer_url)).send().await {
        Ok(r) => r.text().await.ok(),
        Err(_) => None,
    };
    let Some(text) = text else {
        h.stats_note = Some(format!("{}/metrics did not answer", h.peer_url));
        return;
    };
    h.delivered_by_stand_in =
        Some(metric_sum(&text, "meshd_node_events_delivered_total", &name).unwrap_or(0));
    h.stand_in_retries =
        Some(metric_sum(&text, "meshd_node_delivery_retries_total", &name).unwrap_or(0));
    h.stand_in_dead_lettered =
        Some(metric_sum(&text, "meshd_node_events_dead_lettered_total", &name).unwrap_or(0));
}

/// Deletes the stand-in of `h` (and the topic the drill created for it); an error message
/// when that failed.
pub async fn remove(c: &reqwest::Client, h: &mut HandOff) -> Option<String> {
    let name = h.stand_in.clone()?;
    if !h.attempted {
        return None;
    }
    let r = http::unsubscribe(c, &h.peer_url, &name).await;
    h.stand_in_deleted = Some(r.is_ok());
    if let Err(e) = r {
        return Some(format!("deleting stand-in {name}: {e}"));
    }
    if h.topic_created {
        let url = format!("{}/v1/topics/{}", h.peer_url, h.topic);
        match http::send_json(c, reqwest::Method::DELETE, &url, None).await {
            Ok((s, _)) if (200..300).contains(&s) || s == 404 => {}
            Ok((s, b)) => {
                return Some(format!(
                    "deleting topic {url} (created by the drill): {s} {b}"
                ))
            }
            Err(e) => return Some(format!("deleting topic {url} (created by the drill): {e}")),
        }
    }
    None
}

/// Deletes every stand-in (`evac.*` subscription) on the given nodes (after an evacuate
/// drill that could not restore, e.g. one killed with SIGKILL). Returns `cluster:name`
/// of those deleted.
pub async fn remove_stand_ins(nodes: &BTreeMap<String, String>) -> Result<Vec<String>, ChaosError> {
    let c = http::client()?;
    let mut done = Vec::new();
    for (cluster, url) in nodes {
        let subs = http::get_json(&c, &format!("{url}/v1/subscriptions")).await?;
        for s in subs["subscriptions"].as_array().into_iter().flatten() {
            if let Some(name) = s["name"]
                .as_str()
                .filter(|n| n.starts_with(STAND_IN_PREFIX))
            {
                http::unsubscribe(&c, url, name).await?;
                done.push(format!("{cluster}:{name}"));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_pick_the_most_specific_pattern() {
        let p: Vec<meshd_core::api::MeshPolicy> = serde_json::from_value(json!([
            {"topics": "*", "clusters": ["a"]},
            {"topics": "orders.*", "clusters": ["a", "b"]},
            {"topics": "orders.eu.*", "clusters": []},
            {"topics": "orders.eu.audit", "clusters": ["c"]},
        ]))
        .unwrap();
        assert!(policy_allows(&p, "billing", "a"));
        assert!(!policy_allows(&p, "billing", "b"));
        assert!(policy_allows(&p, "orders.us", "b"));
        // `orders.*` does not cover `orders` itself: `*` decides.
        assert!(!policy_allows(&p, "orders", "b"));
        assert!(!policy_allows(&p, "orders.eu.x", "a"));
        assert!(policy_allows(&p, "orders.eu.audit", "c"));
        assert!(policy_allows(&[], "anything", "z"));
    }

    #[test]
    fn stand_in_copies_everything_but_name_group_and_start() {
        let spec = json!({
            "name": "billing", "topic": "orders", "group": "bill", "mode": "BROADCASTING",
            "filter": {"exact": {"type": "x"}}, "transform": {"original": {}},
            "sink": {"webhook": {"url": "http://h/hook", "timeout_ms": 100}},
            "delivery": {"max_attempts": 3}, "start": "latest"
        });
        let s = stand_in_spec("eu", "r1", &spec, StandInStart::Earliest).unwrap();
        assert_eq!(s["name"], "evac.eu.billing");
        assert_eq!(s["group"], "evac.eu.r1.bill");
        assert_eq!(s["start"], "earliest");
        for k in ["topic", "mode", "filter", "transform", "sink", "delivery"] {
            assert_eq!(s[k], spec[k], "{k}");
        }
        let long = json!({"name": "x".repeat(199), "topic": "t", "sink": {"webhook": {}}});
        assert!(stand_in_spec("eu", "r1", &long, StandInStart::Latest).is_err());
        assert!(stand_in_spec("eu", "r1", &json!({"topic": "t"}), StandInStart::Latest).is_err());
        assert_eq!(sink_kind(&json!({"sink": {"pull": {}}})), "pull");
        assert!(replicate_to_allows(&json!({"replicate_to": []}), "a"));
        assert!(!replicate_to_allows(&json!({"replicate_to": ["b"]}), "a"));
        assert_eq!(StandInStart::parse("latest"), Ok(StandInStart::Latest));
        assert!(StandInStart::parse("now").is_err());
    }

    #[test]
    fn announced_filters_compare_with_the_spec() {
        let spec = json!({"exact": {"type": "created"}});
        assert!(same_filter(
            Some("{\"exact\":{\"type\":\"created\"}}"),
            &spec
        ));
        assert!(!same_filter(Some("{\"exact\":{\"type\":\"x\"}}"), &spec));
        assert!(same_filter(None, &Value::Null));
        assert!(!same_filter(None, &spec));
    }

    #[test]
    fn metrics_are_summed_per_subscription() {
        let text = "# HELP x\n\
            meshd_node_events_delivered_total{subscription=\"evac.b.s\",topic=\"t\"} 7\n\
            meshd_node_events_delivered_total{subscription=\"evac.b.s2\",topic=\"t\"} 100\n\
            meshd_node_events_delivered_total{subscription=\"evac.b.s\",topic=\"u\"} 3\n\
            meshd_node_events_delivered_totally{subscription=\"evac.b.s\"} 1000\n";
        assert_eq!(
            metric_sum(text, "meshd_node_events_delivered_total", "evac.b.s"),
            Some(10)
        );
        assert_eq!(
            metric_sum(text, "meshd_node_events_delivered_total", "nope"),
            None
        );
    }
}
