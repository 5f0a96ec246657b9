//! Shared by the cluster drill and chaos tests: real `meshd scheduler|node|proxy`
//! processes of one cluster over the etcd test harness, its nodes sharing one pulsar-lite
//! broker (a cluster with more than one node runs on a shared store), each killed by its
//! guard.
#![allow(dead_code)]

#[path = "../../node/tests/store_pulsar_common/mod.rs"]
pub mod broker;
pub mod load;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_scheduler::registry::testing::EtcdServer;
use meshd_scheduler::registry::{Registry, Role};
use serde_json::{json, Value};

use crate::common::{self, Meshd};

pub const CLUSTER: &str = "drills";

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ProcGuard(pub Child);

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn etcd_arg(etcd: &EtcdServer) -> String {
    etcd.endpoint().replace("http://", "etcd://")
}

/// `n` scheduler members (one Raft group) of [`CLUSTER`]; their guards and HTTP URLs.
pub fn schedulers(dir: &Path, etcd: &EtcdServer, n: u64) -> (Vec<ProcGuard>, Vec<String>) {
    scheduler_group(dir, etcd, CLUSTER, n)
}

/// `n` scheduler members (one Raft group) of `cluster` over the etcd registry, stderr in
/// `dir/sched-{id}.log`; their guards and HTTP URLs.
pub fn scheduler_group(
    dir: &Path,
    etcd: &EtcdServer,
    cluster: &str,
    n: u64,
) -> (Vec<ProcGuard>, Vec<String>) {
    let peers: BTreeMap<u64, String> = (1..=n)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let peer_arg = peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let guards = peers
        .iter()
        .map(|(id, addr)| {
            let log = std::fs::File::create(dir.join(format!("sched-{id}.log"))).expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_meshd"))
                .args(["scheduler", "--id", &id.to_string(), "--listen", addr])
                .args(["--peers", &peer_arg, "--cluster", cluster])
                .args(["--registry", &etcd_arg(etcd)])
                .args(["--heartbeat-ms", "50", "--election-timeout-ms", "300"])
                .arg("--data-dir")
                .arg(dir.join(format!("sched-{id}")))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn meshd scheduler");
            ProcGuard(child)
        })
        .collect();
    (
        guards,
        peers.values().map(|a| format!("http://{a}")).collect(),
    )
}

/// Node `id` of [`CLUSTER`] on `store` (`embedded` for a one-node cluster, or the
/// `pulsar://` URL every node of the cluster shares).
pub fn node(dir: &Path, etcd: &EtcdServer, id: &str, store: &str) -> Meshd {
    node_at(dir, &etcd_arg(etcd), id, store)
}

/// Node `id` of [`CLUSTER`] on `store`, reaching the registry at `reg` (`etcd://...`).
pub fn node_at(dir: &Path, reg: &str, id: &str, store: &str) -> Meshd {
    Meshd::spawn_logged(
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join(id).to_str().expect("utf-8"),
            "--registry",
            reg,
            "--cluster",
            CLUSTER,
            "--node-id",
            id,
            "--lease-ttl",
            "2s",
            "--store",
            store,
        ],
        &dir.join(id),
        &dir.join(format!("{id}.log")),
    )
}

pub fn proxy(dir: &Path, etcd: &EtcdServer, id: &str) -> Meshd {
    proxy_with(dir, etcd, CLUSTER, id, &["--no-auth"])
}

/// A proxy of `cluster` over the etcd registry with `extra` arguments, stderr in
/// `dir/{id}.log`.
pub fn proxy_with(dir: &Path, etcd: &EtcdServer, cluster: &str, id: &str, extra: &[&str]) -> Meshd {
    let reg = etcd_arg(etcd);
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        &reg,
        "--cluster",
        cluster,
        "--proxy-id",
        id,
    ];
    args.extend_from_slice(extra);
    Meshd::spawn_logged(&args, dir, &dir.join(format!("{id}.log")))
}

/// Polls `f` until it holds or `timeout` passes.
pub async fn until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn members(reg: &Arc<dyn Registry>, role: Role) -> Vec<String> {
    reg.list_members()
        .await
        .map(|m| {
            m.into_iter()
                .filter(|i| i.role == role)
                .map(|i| i.id)
                .collect()
        })
        .unwrap_or_default()
}

pub async fn status(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

pub async fn publish(c: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    let r = c
        .post(format!("{base}/v1/topics/t/events"))
        .header("content-type", "application/cloudevents+json")
        .body(common::event(id, "t", None, json!({})).to_string())
        .send()
        .await
        .expect("publish");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A whole cluster: etcd, three schedulers, nodes `a` and `b` on one pulsar-lite broker,
/// proxies `p1` and `p2`.
pub struct Cluster {
    /// Proxies (`p1`, `p2`); dropped first.
    pub proxies: Vec<Meshd>,
    /// Nodes `a`, `b`.
    pub nodes: Vec<Meshd>,
    /// Scheduler members 1..=3 (index = id - 1).
    pub schedulers: Vec<ProcGuard>,
    /// Their URLs.
    pub scheduler_urls: Vec<String>,
    /// A registry client.
    pub reg: Arc<dyn Registry>,
    /// etcd.
    pub etcd: EtcdServer,
    /// The shared store of the nodes.
    pub broker: broker::Broker,
    /// Data and logs.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts everything and waits until proxies are ready and a scheduler leader is known.
    pub async fn start() -> Cluster {
        let etcd = EtcdServer::start().await.expect("etcd");
        let reg = etcd_arg(&etcd);
        Cluster::start_on(etcd, &|_| reg.clone()).await
    }

    /// [`Cluster::start`] on `etcd`, node `id` reaching it at `node_registry(id)`.
    pub async fn start_on(etcd: EtcdServer, node_registry: &dyn Fn(&str) -> String) -> Cluster {
        let reg: Arc<dyn Registry> = Arc::new(
            meshd_scheduler::registry::EtcdRegistry::connect(
                meshd_scheduler::registry::EtcdConfig::new(vec![etcd.endpoint()], CLUSTER),
            )
            .await
            .expect("registry client"),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (schedulers, scheduler_urls) = schedulers(dir.path(), &etcd, 3);
        let broker = broker::Broker::start();
        let store = broker.url();
        let nodes = vec![
            node_at(dir.path(), &node_registry("a"), "a", &store),
            node_at(dir.path(), &node_registry("b"), "b", &store),
        ];
        let proxies = vec![
            proxy(dir.path(), &etcd, "p1"),
            proxy(dir.path(), &etcd, "p2"),
        ];
        let c = common::client();
        for p in &proxies {
            assert!(
                until(Duration::from_secs(20), || async {
                    status(&c, &format!("{}/readyz", p.url)).await == 200
                })
                .await,
                "proxy ready"
            );
        }
        assert!(
            until(Duration::from_secs(30), || async {
                let mut ok = true;
                for s in &scheduler_urls {
                    ok &= status(&c, &format!("{s}/readyz")).await == 200;
                }
                ok
            })
            .await,
            "scheduler leader known"
        );
        Cluster {
            proxies,
            nodes,
            schedulers,
            scheduler_urls,
            reg,
            etcd,
            broker,
            dir,
        }
    }

    /// The current scheduler leader's id and term, asked of the members still listed in
    /// `urls`.
    pub async fn leader(&self, c: &reqwest::Client, urls: &[String]) -> Option<(u64, u64)> {
        for u in urls {
            if let Ok(r) = c.get(format!("{u}/v1/scheduler")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if let (Some(l), Some(t)) = (v["leader"].as_u64(), v["term"].as_u64()) {
                        return Some((l, t));
                    }
                }
            }
        }
        None
    }

    /// The node whose `/v1/cluster` lists `group` as owned.
    pub async fn owner(&self, c: &reqwest::Client, group: &str) -> Option<String> {
        for n in &self.nodes {
            if let Ok(r) = c.get(format!("{}/v1/cluster", n.url)).send().await {
                if let Ok(v) = r.json::<meshd_core::api::ClusterStatus>().await {
                    if v.owned_groups.is_some_and(|g| g.contains(group)) {
                        return Some(v.node);
                    }
                }
            }
        }
        None
    }
}

/// Creates `topic` (2 partitions) and a CLUSTERING subscription `name` with `sink` (a
/// sink body) through `proxy`.
pub async fn clustering_subscription(
    c: &reqwest::Client,
    proxy: &str,
    topic: &str,
    name: &str,
    sink: Value,
) {
    let r = c
        .put(format!("{proxy}/v1/topics/{topic}"))
        .json(&json!({"partitions": 2}))
        .send()
        .await
        .expect("put topic");
    assert!(r.status().is_success(), "{}", r.status());
    let r = c
        .post(format!("{proxy}/v1/subscriptions"))
        .json(&json!({"name": name, "topic": topic, "group": name,
            "mode": "CLUSTERING", "sink": sink}))
        .send()
        .await
        .expect("subscribe");
    assert!(r.status().is_success(), "{}", r.status());
}

/// Creates the canary topic and a CLUSTERING pull subscription `name` through `proxy`.
pub async fn canary_subscription(c: &reqwest::Client, proxy: &str, name: &str) {
    clustering_subscription(
        c,
        proxy,
        meshd_chaos::canary::TOPIC,
        name,
        json!({"pull": {}}),
    )
    .await;
}
