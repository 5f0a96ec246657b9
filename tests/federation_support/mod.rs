//! Harness for federation tests: a generated mesh CA and certificates, a topology file on
//! free loopback ports, `meshd node --topology` processes, a cut-able UDP forwarder, and
//! small HTTP helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshd_certs::{ClusterCertRequest, Validity};
use serde_json::{json, Value};

use crate::common::{self, Meshd};

/// A free UDP port on loopback (bound and released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

/// A mesh on disk: CA, per-cluster certificates, topology.
pub struct MeshFiles {
    pub dir: tempfile::TempDir,
    pub topology: PathBuf,
    pub certs: PathBuf,
    pub ca: PathBuf,
    /// The address each cluster's bridge binds.
    pub bind: BTreeMap<String, SocketAddr>,
    /// The address written in the topology (a forwarder may sit in between).
    pub advertised: BTreeMap<String, SocketAddr>,
    pub links: Vec<(String, String, u32)>,
}

impl MeshFiles {
    /// Clusters and links; `via_proxy` lists clusters whose advertised bridge address is
    /// a separate port (for a [`UdpForwarder`] to the bound one).
    pub fn new(clusters: &[&str], links: &[(&str, &str, u32)], via_proxy: &[&str]) -> MeshFiles {
        common::init();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        let certs = dir.path().join("certs");
        meshd_certs::init_ca_dir(&ca, "test", Validity::days_from_now(30).unwrap(), false)
            .expect("ca");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(ca.join("ca.pem"), certs.join("ca.pem")).expect("copy ca.pem");
        let mut bind = BTreeMap::new();
        let mut advertised = BTreeMap::new();
        for c in clusters {
            issue(&ca, c, &certs, Validity::days_from_now(30).unwrap());
            let b: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
            let a: SocketAddr = if via_proxy.contains(c) {
                format!("127.0.0.1:{}", free_udp_port()).parse().unwrap()
            } else {
                b
            };
            bind.insert(c.to_string(), b);
            advertised.insert(c.to_string(), a);
        }
        let topology = dir.path().join("mesh.toml");
        let m = MeshFiles {
            dir,
            topology,
            certs,
            ca,
            bind,
            advertised,
            links: links
                .iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
                .collect(),
        };
        m.write_topology();
        m
    }

    /// Writes the topology file from the current clusters and links.
    pub fn write_topology(&self) {
        let mut s = String::from("[mesh]\nname = \"test\"\n");
        for (i, (c, addr)) in self.advertised.iter().enumerate() {
            s.push_str(&format!(
                "\n[[cluster]]\nname = \"{c}\"\nregion = \"r{i}\"\ncloud = \"local\"\nbridge = \"{addr}\"\nproxy = \"http://127.0.0.1:{}\"\n",
                40000 + i
            ));
        }
        for (a, b, cost) in &self.links {
            s.push_str(&format!(
                "\n[[link]]\nbetween = [\"{a}\", \"{b}\"]\ncost = {cost}\n"
            ));
        }
        std::fs::write(&self.topology, s).expect("write topology");
    }

    /// The data dir of a cluster's node.
    pub fn data_dir(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(format!("data-{cluster}"))
    }

    /// Starts the node + bridge of a cluster with its certificates from `certs_dir`,
    /// its topology from `topology`, its log appended to `log` when given.
    pub fn start_custom(
        &self,
        cluster: &str,
        certs_dir: &Path,
        topology: &Path,
        log: Option<&Path>,
    ) -> Meshd {
        let data = self.data_dir(cluster);
        let bind = self.bind[cluster].to_string();
        let args = [
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster",
            cluster,
            "--topology",
            topology.to_str().unwrap(),
            "--certs-dir",
            certs_dir.to_str().unwrap(),
            "--bridge-listen",
            &bind,
        ];
        match log {
            Some(l) => Meshd::spawn_logged(&args, &data, l),
            None => Meshd::spawn(&args, &data),
        }
    }

    /// Starts the node + bridge of a cluster with extra `meshd node` arguments, its log
    /// (federation at info level) appended to `log` when given.
    pub fn start_args(&self, cluster: &str, extra: &[&str], log: Option<&Path>) -> Meshd {
        self.start_filtered(cluster, extra, log, "warn,meshd_federation=info")
    }

    /// [`MeshFiles::start_args`] with the log filter `filter` (`MESHD_LOG` syntax).
    pub fn start_filtered(
        &self,
        cluster: &str,
        extra: &[&str],
        log: Option<&Path>,
        filter: &str,
    ) -> Meshd {
        let data = self.data_dir(cluster);
        let bind = self.bind[cluster].to_string();
        let mut args = vec![
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster",
            cluster,
            "--topology",
            self.topology.to_str().unwrap(),
            "--certs-dir",
            self.certs.to_str().unwrap(),
            "--bridge-listen",
            &bind,
        ];
        args.extend_from_slice(extra);
        match log {
            Some(l) => Meshd::spawn_logged_filter(&args, &data, l, Some(filter)),
            None => Meshd::spawn(&args, &data),
        }
    }

    /// Starts the node + bridge of a cluster with its certificates from `certs_dir`.
    pub fn start_with_certs(&self, cluster: &str, certs_dir: &Path) -> Meshd {
        let data = self.data_dir(cluster);
        let bind = self.bind[cluster].to_string();
        let args = [
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster",
            cluster,
            "--topology",
            self.topology.to_str().unwrap(),
            "--certs-dir",
            certs_dir.to_str().unwrap(),
            "--bridge-listen",
            &bind,
        ];
        Meshd::spawn(&args, &data)
    }

    /// Starts the node + bridge of a cluster.
    pub fn start(&self, cluster: &str) -> Meshd {
        self.start_with_certs(cluster, &self.certs.clone())
    }
}

/// Issues a cluster certificate into `out`.
pub fn issue(ca: &Path, cluster: &str, out: &Path, validity: Validity) {
    meshd_certs::issue_to_dir(
        ca,
        &ClusterCertRequest {
            cluster: cluster.to_string(),
            extra_sans: vec![],
            validity,
        },
        out,
    )
    .expect("issue");
}

/// Creates a topic with `partitions` partitions.
pub async fn topic(c: &reqwest::Client, node: &Meshd, topic: &str, partitions: u32) {
    common::create_topic(c, &node.url, topic, json!({ "partitions": partitions })).await;
}

/// A topic's partition count in `node`, `None` when it does not exist.
pub async fn topic_partitions(
    c: &reqwest::Client,
    node: &common::Meshd,
    topic: &str,
) -> Option<u64> {
    let r = c
        .get(node.at(&format!("/v1/topics/{topic}")))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    let v: Value = r.json().await.unwrap();
    v["config"]["partitions"].as_u64()
}

/// Waits until `node` has `topic` with `partitions` partitions (the mesh catalog makes it).
pub async fn wait_topic(c: &reqwest::Client, node: &common::Meshd, topic: &str, partitions: u64) {
    common::eventually(
        &format!("topic {topic} with {partitions} partitions"),
        Duration::from_secs(15),
        || async { (topic_partitions(c, node, topic).await == Some(partitions)).then_some(()) },
    )
    .await;
}

/// The triangle a—b—c (cost 2) with an expensive direct link a—c (cost 10): a reaches c
/// through b until b is gone.
pub fn triangle() -> MeshFiles {
    MeshFiles::new(
        &["a", "b", "c"],
        &[("a", "b", 1), ("b", "c", 1), ("a", "c", 10)],
        &[],
    )
}

/// Starts the clusters of a [`triangle`], makes topic `orders` (`partitions`) in each and
/// `subscription` (a subscription body) in c, and waits until c's interest reaches a
/// through b only (until c's route through b is up, c asks a directly).
pub async fn start_triangle(
    c: &reqwest::Client,
    files: &MeshFiles,
    partitions: u32,
    subscription: &Value,
) -> (Meshd, Meshd, Meshd) {
    let a = files.start("a");
    let b = files.start("b");
    let cc = files.start("c");
    for n in [&a, &b, &cc] {
        topic(c, n, "orders", partitions).await;
    }
    post_subscription(c, &cc, subscription).await;
    wait_connected(c, &a, "b").await;
    wait_connected(c, &a, "c").await;
    wait_connected(c, &b, "c").await;
    wait_interest(c, &a, "b", "c", "orders").await;
    wait_no_interest(c, &a, "c", "orders").await;
    (a, b, cc)
}

/// The body of a CLUSTERING webhook subscription named `name` on `topic`.
pub fn webhook_subscription(name: &str, topic: &str, url: &str) -> Value {
    json!({
        "name": name, "topic": topic, "group": name, "mode": "CLUSTERING",
        "sink": { "webhook": { "url": url } },
    })
}

/// Creates a webhook subscription with an optional filter.
pub async fn subscribe(
    c: &reqwest::Client,
    node: &Meshd,
    name: &str,
    topic: &str,
    filter: Option<Value>,
    sink: &str,
) {
    let mut body = webhook_subscription(name, topic, sink);
    if let Some(f) = filter {
        body["filter"] = f;
    }
    post_subscription(c, node, &body).await;
}

/// Creates the subscription `body` on `node`; panics with the answer unless it succeeds.
pub async fn post_subscription(c: &reqwest::Client, node: &Meshd, body: &Value) {
    let r = c
        .post(node.at("/v1/subscriptions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "subscribe: {}",
        r.text().await.unwrap()
    );
}

/// `GET /v1/mesh`.
pub async fn mesh(c: &reqwest::Client, node: &Meshd) -> Value {
    common::get_json(c, &node.at("/v1/mesh")).await
}

/// One link's snapshot from `/v1/mesh`.
pub async fn link(c: &reqwest::Client, node: &Meshd, peer: &str) -> Value {
    let m = mesh(c, node).await;
    m["links"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["peer"] == peer).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until the link to `peer` is connected.
pub async fn wait_connected(c: &reqwest::Client, node: &Meshd, peer: &str) {
    common::eventually(
        &format!("link to {peer} connected"),
        Duration::from_secs(15),
        || async {
            let l = link(c, node, peer).await;
            (l["state"] == "connected").then_some(())
        },
    )
    .await;
}

/// Waits until the interest `node` learned from `peer` names `dest` on `topic`.
pub async fn wait_interest(c: &reqwest::Client, node: &Meshd, peer: &str, dest: &str, topic: &str) {
    common::eventually(
        &format!("interest of {dest} on {topic} learned from {peer}"),
        Duration::from_secs(15),
        || async {
            let m = mesh(c, node).await;
            let found = m["learned_interest"][peer]
                .as_array()
                .map(|a| a.iter().any(|e| e["dest"] == dest && e["topic"] == topic))
                .unwrap_or(false);
            found.then_some(())
        },
    )
    .await;
}

/// Waits until `node` has learned no interest from `peer` on `topic` (e.g. a route
/// change moved it to another link).
pub async fn wait_no_interest(c: &reqwest::Client, node: &Meshd, peer: &str, topic: &str) {
    common::eventually(
        &format!("no interest on {topic} learned from {peer}"),
        Duration::from_secs(15),
        || async {
            let m = mesh(c, node).await;
            let found = m["learned_interest"][peer]
                .as_array()
                .map(|a| a.iter().any(|e| e["topic"] == topic))
                .unwrap_or(false);
            (!found).then_some(())
        },
    )
    .await;
}

/// A userspace UDP forwarder between one client-facing port and one server address,
/// able to drop everything (cut) and forward again (restore). One upstream socket per
/// client address.
pub struct UdpForwarder {
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpForwarder {
    /// Listens on `listen`, forwards to `to`.
    pub fn start(listen: SocketAddr, to: SocketAddr) -> UdpForwarder {
        let front = UdpSocket::bind(listen).expect("bind forwarder");
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let uplinks: Arc<Mutex<BTreeMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let mut threads = Vec::new();
        let front = Arc::new(front);
        {
            let (cut, stop, forwarded, uplinks, front) = (
                cut.clone(),
                stop.clone(),
                forwarded.clone(),
                uplinks.clone(),
                front.clone(),
            );
            let mut spawned = Vec::new();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let up = {
                        let mut u = uplinks.lock().unwrap();
                        if let Some(s) = u.get(&from) {
                            s.clone()
                        } else {
                            let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                            u.insert(from, s.clone());
                            // back path: server → client
                            let (s2, front2, cut2, stop2, fw2) = (
                                s.clone(),
                                front.clone(),
                                cut.clone(),
                                stop.clone(),
                                forwarded.clone(),
                            );
                            spawned.push(std::thread::spawn(move || {
                                let mut buf = vec![0u8; 65536];
                                while !stop2.load(Ordering::Relaxed) {
                                    let Ok((n, _)) = s2.recv_from(&mut buf) else {
                                        continue;
                                    };
                                    if cut2.load(Ordering::Relaxed) {
                                        continue;
                                    }
                                    let _ = front2.send_to(&buf[..n], from);
                                    fw2.fetch_add(1, Ordering::Relaxed);
                                }
                            }));
                            s
                        }
                    };
                    let _ = up.send_to(&buf[..n], to);
                    forwarded.fetch_add(1, Ordering::Relaxed);
                }
                for t in spawned {
                    let _ = t.join();
                }
            }));
        }
        UdpForwarder {
            cut,
            stop,
            forwarded,
            threads,
        }
    }

    /// Drops every datagram in both directions from now on.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for UdpForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Publishes `events` in one batch request (`application/cloudevents-batch+json`).
pub async fn publish_batch(c: &reqwest::Client, node: &Meshd, topic: &str, events: &[Value]) {
    let r = c
        .post(node.at(&format!("/v1/topics/{topic}/events")))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::from(events.to_vec()).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "batch publish: {}", r.text().await.unwrap());
}

/// A pull subscription (creates interest without a webhook).
pub async fn pull_subscription(c: &reqwest::Client, node: &Meshd, name: &str, topic: &str) {
    let r = c
        .post(node.at("/v1/subscriptions"))
        .json(&json!({"name": name, "topic": topic, "group": name, "sink": {"pull": {}}}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "subscribe: {}",
        r.text().await.unwrap()
    );
}

/// Sends SIGHUP (the bridge reloads its topology at once).
pub fn sighup(node: &Meshd) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -HUP failed");
}

/// ce-ids the sink received, deduplicated, sorted.
pub fn unique_ids(sink: &common::Sink) -> Vec<String> {
    let mut ids = sink.ids();
    ids.sort();
    ids.dedup();
    ids
}
