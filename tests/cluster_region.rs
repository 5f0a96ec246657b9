//! The supported shapes of a cluster, run as a user would with real processes:
//!
//! - the docs' example region (docs/operations.md: `meshd cluster up` with etcd, three
//!   schedulers, three nodes on a shared store — the local pulsar-lite test broker — and
//!   two proxies) delivers every acknowledged event: a few thousand events published
//!   through both proxies under many producer groups (so every node takes publishes) all
//!   reach both consumer groups; then `meshd drill node-failover` on it reports 0 lost;
//! - a node on the embedded store refuses to join a cluster with another node, a node on a
//!   shared store refuses a cluster with an embedded node (one-line message, nothing
//!   changed), a node restarted under its own id is not refused, a running embedded node
//!   stops when another node member appears, and two embedded nodes started at once
//!   never both end up serving.

mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::{etcd_arg, members, until, ProcGuard};
use common::{client, eventually, Meshd, Sink};
use meshd_scheduler::registry::testing::EtcdServer;
use meshd_scheduler::registry::{
    EtcdConfig, EtcdRegistry, LeaseConfig, MemberInfo, MemberStore, Registry, Role,
};
use serde_json::{json, Value};

/// The docs' example region, with free ports and its data in `data`.
fn documented_region(data: &Path) -> String {
    let docs = include_str!("../docs/operations.md");
    let example = docs
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a toml example in docs/operations.md");
    let mut t: toml::Table = example.parse().expect("the docs' example parses");
    t.insert("data_dir".into(), data.display().to_string().into());
    for (section, key) in [
        ("etcd", "client_port"),
        ("etcd", "peer_port"),
        ("scheduler", "base_port"),
        ("nodes", "base_port"),
        ("proxies", "base_port"),
    ] {
        t[section]
            .as_table_mut()
            .expect("section")
            .insert(key.into(), 0.into());
    }
    toml::to_string(&t).expect("toml")
}

fn lines_with<'a>(lines: &'a [String], prefix: &str) -> Vec<&'a String> {
    lines.iter().filter(|l| l.starts_with(prefix)).collect()
}

fn url_of(line: &str) -> String {
    line.rsplit(' ').next().unwrap_or_default().to_string()
}

/// `meshd_node_events_published_total` summed over topics, from a node's `/metrics`.
async fn published_total(c: &reqwest::Client, node: &str) -> f64 {
    let text = common::get_text(c, &format!("{node}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with("meshd_node_events_published_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Publishes `per_task * batch` events from each of `tasks` tasks, alternating the
/// proxies, each request under one of `groups` producer groups; a request that is not
/// acknowledged is retried (same ids) up to 5 times. Returns the acknowledged ids.
async fn publish_load(
    proxies: &[String],
    tasks: usize,
    per_task: usize,
    batch: usize,
    groups: usize,
) -> BTreeSet<String> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let proxies = proxies.to_vec();
        handles.push(tokio::spawn(async move {
            let c = client();
            let mut acked = Vec::new();
            for r in 0..per_task {
                let ids: Vec<String> = (0..batch).map(|i| format!("t{t}-r{r}-e{i}")).collect();
                let body: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        common::event(
                            id,
                            "order.created",
                            Some(&format!("k{}", i % 7)),
                            json!({"r": r}),
                        )
                    })
                    .collect();
                let body = serde_json::to_string(&body).expect("json");
                let group = format!("pg-{}", (t * per_task + r) % groups);
                for attempt in 0..5 {
                    let proxy = &proxies[(r + attempt) % proxies.len()];
                    let res = c
                        .post(format!("{proxy}/v1/topics/orders/events"))
                        .header("content-type", "application/cloudevents-batch+json")
                        .header("meshd-producer-group", &group)
                        .body(body.clone())
                        .send()
                        .await;
                    if res.is_ok_and(|r| r.status() == 200) {
                        acked.extend(ids.iter().cloned());
                        break;
                    }
                }
            }
            acked
        }));
    }
    let mut all = BTreeSet::new();
    for h in handles {
        all.extend(h.await.expect("publisher"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_region_delivers_every_acknowledged_event_and_survives_a_node_failover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("region");
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(&cfg, documented_region(&data)).expect("write config");
    let (mut up, lines) = common::cluster_up(&cfg, dir.path(), Duration::from_secs(120), |l| {
        l == "cluster eu-west up"
    })
    .await;
    let store = lines_with(&lines, "cluster eu-west store pulsar://");
    assert_eq!(store.len(), 1, "{lines:?}");
    assert!(
        store[0].contains("TEST broker"),
        "says it is a test broker: {}",
        store[0]
    );
    let proxies: Vec<String> = lines_with(&lines, "cluster eu-west proxy ")
        .into_iter()
        .map(|l| url_of(l))
        .collect();
    // The harness took the first node line as the process's URL line.
    let mut nodes: Vec<(String, String)> = vec![("node-1".into(), up.url.clone())];
    nodes.extend(
        lines_with(&lines, "cluster eu-west node ")
            .into_iter()
            .map(|l| {
                (
                    l.split(' ').nth(3).unwrap_or_default().to_string(),
                    url_of(l),
                )
            }),
    );
    let schedulers: Vec<String> = lines_with(&lines, "cluster eu-west scheduler ")
        .into_iter()
        .map(|l| url_of(l))
        .collect();
    assert_eq!(
        (proxies.len(), nodes.len(), schedulers.len()),
        (2, 3, 3),
        "{lines:?}"
    );

    let c = client();
    let r = c
        .put(format!("{}/v1/topics/orders", proxies[0]))
        .json(&json!({"partitions": 4}))
        .send()
        .await
        .expect("put topic");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    let billing = Sink::start(|_, _| 200).await;
    let audit = Sink::start(|_, _| 200).await;
    for (name, sink) in [("billing", &billing), ("audit", &audit)] {
        let r = c
            .post(format!("{}/v1/subscriptions", proxies[1]))
            .json(&json!({"name": name, "topic": "orders", "group": name,
                          "sink": {"webhook": {"url": sink.url}}}))
            .send()
            .await
            .expect("subscribe");
        assert!(
            r.status().is_success(),
            "{}",
            r.text().await.unwrap_or_default()
        );
    }
    // Both groups placed before the load (a group starts at the end of the topic).
    let token = std::fs::read_to_string(data.join("internal-token")).expect("token");
    let token = token.trim().to_string();
    eventually("both groups placed", Duration::from_secs(30), || {
        let (c, nodes, token) = (c.clone(), nodes.clone(), token.clone());
        async move {
            let mut owned = BTreeSet::new();
            for (_, url) in &nodes {
                if let Ok(r) = c
                    .get(format!("{url}/v1/cluster"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<Value>().await {
                        for g in v["owned_groups"].as_array().into_iter().flatten() {
                            owned.extend(g.as_str().map(str::to_string));
                        }
                    }
                }
            }
            (owned.contains("billing") && owned.contains("audit")).then_some(())
        }
    })
    .await;

    let started = Instant::now();
    let acked = publish_load(&proxies, 4, 75, 10, 32).await;
    let took = started.elapsed();
    assert_eq!(
        acked.len(),
        3000,
        "every publish acknowledged (with retries)"
    );
    for (id, url) in &nodes {
        assert!(
            published_total(&c, url).await > 0.0,
            "node {id} took publishes (producer groups spread over every node)"
        );
    }
    for (name, sink) in [("billing", &billing), ("audit", &audit)] {
        let delivered = until(Duration::from_secs(90), || async {
            sink.ids()
                .into_iter()
                .collect::<BTreeSet<_>>()
                .is_superset(&acked)
        })
        .await;
        let got: BTreeSet<String> = sink.ids().into_iter().collect();
        let undelivered = acked.difference(&got).count();
        assert!(
            delivered,
            "group {name}: {undelivered} of {} acknowledged events never delivered",
            acked.len()
        );
        eprintln!(
            "group {name}: {} acknowledged, 0 undelivered, {} pushes (publishing took {took:?})",
            acked.len(),
            sink.ids().len()
        );
    }

    // The drill on the documented region: nothing lost, with a drain and with a real
    // crash (kill -9 of the canary group's node, restarted by cluster up's supervisor).
    let pids: Vec<(String, String)> = up
        .stdout
        .lock()
        .expect("lines")
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("child node ")?;
            let (id, pid) = rest.split_once(" pid ")?;
            Some((id.to_string(), pid.split(' ').next()?.to_string()))
        })
        .collect();
    assert_eq!(pids.len(), 3, "child pid lines");
    let crash = format!(
        "case {{node}} in {} esac",
        pids.iter()
            .map(|(id, pid)| format!("{id}) kill -9 {pid};;"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for variant in [None, Some(crash)] {
        let mut args: Vec<String> = ["drill", "node-failover", "--cluster", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for p in &proxies {
            args.extend(["--proxy".into(), p.clone()]);
        }
        for (id, url) in &nodes {
            args.extend(["--node-url".into(), format!("{id}={url}")]);
        }
        args.extend(["--scheduler".into(), schedulers[0].clone()]);
        args.extend(
            [
                "--token",
                &token,
                "--hold",
                "2s",
                "--recovery-timeout",
                "60s",
                "--json",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let kind = if variant.is_some() { "crash" } else { "drain" };
        if let Some(cmd) = variant {
            args.extend(["--crash".into(), cmd]);
        }
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_meshd"))
                .args(&args)
                .env("MESHD_LOG", "warn")
                .output()
                .expect("run meshd drill")
        })
        .await
        .expect("join");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{kind} drill failed: {text}");
        assert_eq!(report["lost"], 0, "{kind}: {text}");
        assert_eq!(report["reordered"], 0, "{kind}: {text}");
        assert!(report["acknowledged"].as_u64().unwrap_or(0) >= 10, "{text}");
        eprintln!("node-failover ({kind}) on the documented region: {stdout}");
    }

    assert!(up.terminate(), "cluster up exits cleanly on SIGTERM");
}

/// `meshd node --registry` in `cluster` on `store`, stderr appended to `dir/ID.log`,
/// not waited for.
fn node_cmd(dir: &Path, etcd: &EtcdServer, cluster: &str, id: &str, store: &str) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))
        .expect("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshd"));
    cmd.args(["node", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join(id))
        .args([
            "--registry",
            &etcd_arg(etcd),
            "--cluster",
            cluster,
            "--node-id",
            id,
        ])
        .args(["--lease-ttl", "2s", "--store", store])
        .env("MESHD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd
}

/// Runs a node that must refuse: its exit status and its log.
fn refused(dir: &Path, etcd: &EtcdServer, cluster: &str, id: &str, store: &str) -> String {
    let mut guard = ProcGuard(
        node_cmd(dir, etcd, cluster, id, store)
            .spawn()
            .expect("spawn"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not refuse within 30 s"
        );
        // Polling a child process for its exit: no event to await across processes.
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(1),
        "node {id} refused with exit 1: {log}"
    );
    assert!(
        !dir.join(id).exists(),
        "a refused node {id} opened no data dir"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one line: {log}");
    errors[0].to_string()
}

fn running(p: &mut ProcGuard) -> bool {
    p.0.try_wait().ok().flatten().is_none()
}

async fn registry(etcd: &EtcdServer, cluster: &str) -> Arc<dyn Registry> {
    Arc::new(
        EtcdRegistry::connect(EtcdConfig::new(vec![etcd.endpoint()], cluster))
            .await
            .expect("registry client"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_serves_one_node_per_cluster() {
    let etcd = EtcdServer::start().await.expect("etcd");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let reg = registry(&etcd, "shapes").await;
    let reg_arg = etcd_arg(&etcd);
    let node_args = |id: &str, store: &str| -> Vec<String> {
        [
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            d.join(id).to_str().expect("utf-8"),
            "--registry",
            &reg_arg,
            "--cluster",
            "shapes",
            "--node-id",
            id,
            "--lease-ttl",
            "2s",
            "--store",
            store,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let spawn = |id: &str, store: &str| {
        let args = node_args(id, store);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Meshd::spawn_logged(&args, d, &d.join(format!("{id}.log")))
    };

    // One node on the embedded store: a supported cluster.
    let mut a = spawn("a", "embedded");
    assert!(
        until(Duration::from_secs(10), || async {
            members(&reg, Role::Node).await == ["a"]
        })
        .await
    );
    let info = reg.list_members().await.expect("members");
    assert_eq!(
        serde_json::to_value(&info[0].store).expect("json"),
        json!({"kind": "embedded"})
    );

    // A second node, embedded or on a shared store, is refused with the reason and the fix.
    let e = refused(d, &etcd, "shapes", "b", "embedded");
    assert!(
        e.contains(
            "node b runs on the embedded store and node a is already a member of cluster shapes"
        ) && e.contains("never reach a group owned by another")
            && e.contains("--store pulsar://HOST:PORT"),
        "{e}"
    );
    let e = refused(d, &etcd, "shapes", "c", "pulsar://127.0.0.1:1");
    assert!(
        e.contains("node a of cluster shapes runs on the embedded store, so node c cannot join")
            && e.contains("--store pulsar://HOST:PORT"),
        "{e}"
    );
    assert_eq!(members(&reg, Role::Node).await, ["a"], "nothing changed");
    assert_eq!(
        common::status_of(client().get(a.at("/readyz"))).await,
        200,
        "a still serves"
    );

    // `a` killed and restarted at once (its old lease still alive): the same node, not refused.
    a.kill9();
    let a2 = spawn("a", "embedded");
    assert_eq!(common::status_of(client().get(a2.at("/readyz"))).await, 200);

    // Another node appears while `a` runs on the embedded store (as after a lease lost
    // in a partition): `a` stops, exit 1, saying why.
    let mut z = MemberInfo::new(Role::Node, "z", "http://127.0.0.1:9");
    z.store = Some(MemberStore::Shared {
        url: "pulsar://127.0.0.1:1/public/default".into(),
    });
    let z = reg
        .register(z, LeaseConfig::with_ttl(Duration::from_secs(2)))
        .await
        .expect("register z");
    let pid = a2.pid();
    assert!(
        until(Duration::from_secs(10), || async {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        })
        .await,
        "the embedded node a stops when node z joins"
    );
    let log = std::fs::read_to_string(d.join("a.log")).unwrap_or_default();
    assert!(
        log.contains(
            "node a runs on the embedded store and node z is already a member of cluster shapes"
        ),
        "{log}"
    );
    assert!(
        until(Duration::from_secs(10), || async {
            members(&reg, Role::Node).await == ["z"]
        })
        .await,
        "a left the registry"
    );
    z.deregister().await.expect("deregister z");
    drop(a2);

    // Two embedded nodes started at the same moment, several times: never both serve.
    for round in 0..3 {
        let cluster = format!("race-{round}");
        let reg = registry(&etcd, &cluster).await;
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let mut px = ProcGuard(
            node_cmd(d, &etcd, &cluster, &x, "embedded")
                .spawn()
                .expect("spawn"),
        );
        let mut py = ProcGuard(
            node_cmd(d, &etcd, &cluster, &y, "embedded")
                .spawn()
                .expect("spawn"),
        );
        // Settled: at most one process left, and no registration of the other.
        let settled = until(Duration::from_secs(30), || {
            let alive = usize::from(running(&mut px)) + usize::from(running(&mut py));
            let reg = reg.clone();
            async move { alive <= 1 && members(&reg, Role::Node).await.len() <= 1 }
        })
        .await;
        let alive = [running(&mut px), running(&mut py)];
        assert!(
            settled,
            "round {round}: both racing embedded nodes still run: {alive:?}"
        );
        // Stays settled: the survivor (if any) is the one registered node.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let nodes = members(&reg, Role::Node).await;
        let alive_now = usize::from(running(&mut px)) + usize::from(running(&mut py));
        assert!(
            alive_now <= 1 && nodes.len() <= 1,
            "round {round}: {alive_now} alive, {nodes:?}"
        );
        eprintln!("race round {round}: {alive_now} node(s) left serving: {nodes:?}");
    }
}
