//! Control-plane chaos plumbing for a cluster that runs as a real cluster (etcd members,
//! scheduler members, several nodes, proxies; see [`crate::MeshOptions::control_plane`]):
//! who leads the scheduler and etcd, which node owns a consumer group, and a canary load
//! inside the cluster ([`ClusterLoad`]: publishers through the proxies, a CLUSTERING pull
//! subscriber through a proxy, keys chosen with [`crate::cluster_drill::canary_keys`]).
//!
//! The cluster's nodes share one store (pulsar-lite; a cluster with more than one node
//! never runs on embedded stores), so whichever node acknowledged a canary, the consumer
//! group's owner delivers it: [`ClusterLoad::finish`] only waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::canary::{self, Publishers, PullRecorder, SharedChecker, TOPIC};
use crate::checker::{Checker, Report};
use crate::{http, ChaosError};

/// The scheduler leader's id and term, asked of `urls` in turn (the first that knows).
pub async fn scheduler_leader(c: &reqwest::Client, urls: &[String]) -> Option<(u64, u64)> {
    for u in urls {
        if let Ok(v) = http::get_json(c, &format!("{u}/v1/scheduler")).await {
            if let (Some(l), Some(t)) = (v["leader"].as_u64(), v["term"].as_u64()) {
                return Some((l, t));
            }
        }
    }
    None
}

/// `POST {url}/v3/maintenance/status` of one etcd member (its JSON gateway).
pub async fn etcd_status(c: &reqwest::Client, url: &str) -> Option<Value> {
    let (status, v) = http::send_json(
        c,
        reqwest::Method::POST,
        &format!("{url}/v3/maintenance/status"),
        Some(&json!({})),
    )
    .await
    .ok()?;
    (status == 200).then_some(v)
}

/// The index in `urls` of the etcd leader, as the members in `ask` (indexes into `urls`)
/// see it; None when none of them knows a leader among `urls`.
pub async fn etcd_leader(c: &reqwest::Client, urls: &[String], ask: &[usize]) -> Option<usize> {
    let mut ids = Vec::new();
    let mut leader = None;
    for (k, u) in urls.iter().enumerate() {
        let st = etcd_status(c, u).await;
        let id = st
            .as_ref()
            .and_then(|v| v["header"]["member_id"].as_str().map(str::to_string));
        if ask.contains(&k) {
            if let Some(l) = st.as_ref().and_then(|v| v["leader"].as_str()) {
                leader.get_or_insert_with(|| l.to_string());
            }
        }
        ids.push(id);
    }
    let leader = leader?;
    ids.iter()
        .position(|id| id.as_deref() == Some(leader.as_str()))
}

/// The node (id) whose `/v1/cluster` lists `group` as owned.
pub async fn group_owner(
    c: &reqwest::Client,
    nodes: &[(String, String)],
    group: &str,
) -> Option<(String, String)> {
    for (id, url) in nodes {
        if let Ok(v) = http::cluster_status(c, url).await {
            if v.owned_groups.is_some_and(|g| g.contains(group)) {
                return Some((id.clone(), url.clone()));
            }
        }
    }
    None
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How many runtime nodes of `cluster` are registered in etcd now (keys under
/// `/meshd/{cluster}/nodes/`, which live as long as the node's lease), asked of the etcd
/// member at `etcd_url` through its JSON gateway; None when it does not answer.
pub async fn registered_nodes(c: &reqwest::Client, etcd_url: &str, cluster: &str) -> Option<u64> {
    let prefix = format!("/meshd/{cluster}/nodes/");
    let end = format!("/meshd/{cluster}/nodes0");
    let (status, v) = http::send_json(
        c,
        reqwest::Method::POST,
        &format!("{etcd_url}/v3/kv/range"),
        Some(
            &json!({"key": base64(prefix.as_bytes()), "range_end": base64(end.as_bytes()),
            "count_only": true}),
        ),
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    // int64 fields are strings in the gateway's JSON; 0 is left out.
    Some(
        v["count"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["count"].as_u64())
            .unwrap_or(0),
    )
}

/// Creates the canary topic and a CLUSTERING pull subscription `name` through `base`.
pub async fn canary_subscription(
    c: &reqwest::Client,
    base: &str,
    name: &str,
) -> Result<(), ChaosError> {
    http::put_topic(c, base, TOPIC, 2).await?;
    http::subscribe(
        c,
        base,
        &json!({"name": name, "topic": TOPIC, "group": name, "mode": "CLUSTERING",
            "sink": {"pull": {}}}),
    )
    .await
}

/// Deletes subscription `name` through the first of `bases` that answers.
pub async fn delete_subscription(
    c: &reqwest::Client,
    bases: &[String],
    name: &str,
) -> Result<(), ChaosError> {
    let mut last = ChaosError::Http("no proxy given".into());
    for b in bases {
        match http::unsubscribe(c, b, name).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Canary load inside one cluster.
pub struct ClusterLoad {
    sub: String,
    cluster: String,
    /// What was acknowledged and delivered.
    pub checker: SharedChecker,
    publishers: Publishers,
    recorder: PullRecorder,
    started: Instant,
}

impl ClusterLoad {
    /// Subscribes `sub` (pull, through `pull`), picks keys that reach it, starts
    /// publishers through `publish` and the recorder, and waits until 20 canaries were
    /// acknowledged.
    pub async fn start(
        c: &reqwest::Client,
        cluster: &str,
        publish: Vec<String>,
        pull: &str,
        sub: &str,
        keys: usize,
        pace: Duration,
    ) -> Result<ClusterLoad, ChaosError> {
        canary_subscription(c, pull, sub).await?;
        let keys = crate::cluster_drill::canary_keys(c, keys, &publish, pull, sub).await?;
        let run = canary::run_id();
        let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
        canary::lock(&checker).expect_cluster(cluster);
        let recorder = PullRecorder::start(c.clone(), pull, sub, cluster, &run, checker.clone());
        let publishers = Publishers::start(c.clone(), publish, keys, &run, pace, checker.clone());
        let load = ClusterLoad {
            sub: sub.to_string(),
            cluster: cluster.to_string(),
            checker,
            publishers,
            recorder,
            started: Instant::now(),
        };
        load.wait_progress(20, Duration::from_secs(20)).await?;
        Ok(load)
    }

    /// Acknowledged canaries so far.
    pub fn acked(&self) -> u64 {
        canary::lock(&self.checker).acknowledged()
    }

    /// Waits until `n` more canaries than now are acknowledged.
    pub async fn wait_progress(&self, n: u64, timeout: Duration) -> Result<(), ChaosError> {
        let target = self.acked() + n;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout(format!(
                    "{n} more acknowledged canaries in {}",
                    self.cluster
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops publishing, waits for every acknowledged canary, deletes the subscription and
    /// reports. `recovery_ms` is from `fault_at` until every canary arrived (None: not
    /// complete within `recovery_timeout`).
    pub async fn finish(
        mut self,
        c: &reqwest::Client,
        proxies: &[String],
        scenario: &str,
        mode: &str,
        fault_at: Instant,
        recovery_timeout: Duration,
    ) -> Report {
        let mut notes = Vec::new();
        self.publishers.stop().await;
        let done = canary::wait_complete(&self.checker, recovery_timeout).await;
        self.recorder.stop().await;
        if let Err(e) = delete_subscription(c, proxies, &self.sub).await {
            notes.push(format!("deleting {}: {e}", self.sub));
        }
        let mut r = canary::lock(&self.checker).report(scenario, mode);
        r.recovery_ms = done.map(|_| fault_at.elapsed().as_millis() as u64);
        r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        r.facts.insert(
            "longest_publish_wait_ms".into(),
            json!(self
                .publishers
                .longest_gap_ms
                .load(std::sync::atomic::Ordering::Relaxed)),
        );
        r.facts.insert(
            "publish_failures".into(),
            json!(self
                .publishers
                .failure_kinds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()),
        );
        let served = |s: &canary::ServedBy| -> Value {
            let m = s.lock().unwrap_or_else(|p| p.into_inner());
            Value::Object(m.iter().map(|(k, (n, _))| (k.clone(), json!(n))).collect())
        };
        r.facts
            .insert("acked_by".into(), served(&self.publishers.acked_by));
        r.facts
            .insert("delivered_by".into(), served(&self.recorder.served_by));
        if done.is_none() {
            notes.push(format!("not complete after {recovery_timeout:?}"));
        }
        r.notes.extend(notes);
        r
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(b"/meshd/a/nodes/"), "L21lc2hkL2Evbm9kZXMv");
    }
}
