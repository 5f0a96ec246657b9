//! `meshd cluster up`: a small region (spawned etcd, one scheduler, two nodes on the local
//! pulsar-lite test broker `cluster up` runs for them, one proxy) starts from a config
//! file, every publish through the proxy is delivered to a webhook, SIGTERM stops every
//! child process; a bad config file, and more than one node on the embedded store, are
//! refused with a clear error and start nothing. As a supervisor: a status table on start
//! and on SIGUSR1, a child killed with SIGKILL is restarted (said on stdout) and ready
//! again, and SIGKILL of `cluster up` kills every child. With a `[mesh]` section the
//! region joins a mesh (one node runs the bridge) and events published in another cluster
//! reach a subscription made through the region's proxy; bad mesh settings are refused.

mod common;
mod federation_support;

use std::time::Duration;

use common::{client, eventually, Sink};
use serde_json::json;

fn config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

/// Runs `meshd cluster CMD --config CFG` to its end.
fn cluster_cmd(cmd: &str, cfg: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["cluster", cmd, "--config"])
        .arg(cfg)
        .output()
        .expect("run meshd")
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn line_value(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_runs_a_region_and_stops_every_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("region");
    let cfg = config(
        dir.path(),
        &format!(
            r#"
name = "up-it"
data_dir = "{}"
[etcd]
spawn = true
binary = "/usr/bin/etcd"
[scheduler]
members = 1
[nodes]
count = 2
lease_ttl = "2s"
[proxies]
count = 1
no_auth = true
"#,
            data.display()
        ),
    );
    let (mut up, lines) = common::cluster_up(&cfg, dir.path(), Duration::from_secs(60), |l| {
        l == "cluster up-it up"
    })
    .await;
    let proxy = line_value(&lines, "cluster up-it proxy proxy-1 ").expect("proxy line");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cluster up-it node node-2 http://")),
        "{lines:?}"
    );
    let pids: Vec<u32> = lines
        .iter()
        .filter(|l| l.starts_with("child "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        6,
        "etcd, pulsar-lite, 1 scheduler, 2 nodes, 1 proxy: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cluster up-it store pulsar://")
                && l.contains("TEST broker")
                && l.contains("Apache Pulsar")),
        "two nodes without a store run on a test broker, said plainly: {lines:?}"
    );
    assert!(pids.iter().all(|p| alive(*p)));

    let c = client();
    let sink = Sink::start(|_, _| 200).await;
    let r = c
        .put(format!("{proxy}/v1/topics/orders"))
        .json(&json!({}))
        .send()
        .await
        .expect("put topic");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    let r = c
        .post(format!("{proxy}/v1/subscriptions"))
        .json(&json!({"name": "billing", "topic": "orders",
                      "sink": {"webhook": {"url": sink.url}}}))
        .send()
        .await
        .expect("subscribe");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    // Under 20 producer groups, so both nodes take publishes: the shared store delivers
    // every one to `billing` whichever node owns it.
    let mut acked = 0;
    for g in 0..20 {
        let r = c
            .post(format!("{proxy}/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .header("meshd-producer-group", format!("pg-{g}"))
            .body(common::event(&format!("e{g}"), "t", None, json!({})).to_string())
            .send()
            .await
            .expect("publish");
        if r.status() == 200 {
            acked += 1;
        }
    }
    assert_eq!(acked, 20, "every publish through the proxy is acknowledged");
    eventually(
        "every publish through the proxy is delivered",
        Duration::from_secs(30),
        || {
            let got: std::collections::BTreeSet<String> = sink.ids().into_iter().collect();
            async move { (got.len() == 20).then_some(()) }
        },
    )
    .await;

    assert!(up.terminate(), "cluster up exits cleanly on SIGTERM");
    for p in &pids {
        assert!(!alive(*p), "child {p} is still running after SIGTERM");
    }
}

#[test]
fn a_bad_config_is_refused_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("region");
    let cfg = config(
        dir.path(),
        &format!(
            r#"
name = "bad"
data_dir = "{}"
colour = "blue"
[etcd]
spawn = true
client_port = 7700
[scheduler]
members = 3
[nodes]
count = 0
base_port = 7700
[proxies]
count = 1
no_auth = true
"#,
            data.display()
        ),
    );
    let out = cluster_cmd("up", &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "unknown key named: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    assert!(!data.exists(), "nothing started, no data dir created");

    // Without the unknown key, every remaining problem is listed at once.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("colour = \"blue\"\n", "")
            .replace("count = 0", "count = 1"),
    )
    .expect("rewrite");
    let out = cluster_cmd("up", &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("port 7700 is used by both etcd client and node 1"),
        "{err}"
    );
    assert!(!data.exists());
}

#[test]
fn more_than_one_node_on_the_embedded_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("region");
    let cfg = config(
        dir.path(),
        &format!(
            r#"
name = "emb"
data_dir = "{}"
[etcd]
spawn = true
[scheduler]
members = 1
[nodes]
count = 3
store = "embedded"
[proxies]
count = 1
no_auth = true
"#,
            data.display()
        ),
    );
    for cmd in ["up", "check"] {
        let out = cluster_cmd(cmd, &cfg);
        assert_eq!(out.status.code(), Some(1), "cluster {cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("nodes.store = \"embedded\" with nodes.count = 3")
                && err.contains("an embedded store serves one node per cluster")
                && err.contains("never reach a group owned by another")
                && err.contains("store = \"pulsar://HOST:PORT\""),
            "cluster {cmd}: {err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).is_empty());
        assert!(!data.exists(), "nothing started, no data dir created");
    }
}

fn pids_of(lines: &[String]) -> Vec<(String, u32)> {
    lines
        .iter()
        .filter(|l| l.starts_with("child ") && l.contains(" pid "))
        .filter_map(|l| {
            let mut w = l.split(' ');
            let who = format!("{} {}", w.nth(1)?, w.next()?);
            let pid = w.nth(1)?.parse().ok()?;
            Some((who, pid))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_restarts_a_crashed_child_and_its_children_die_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_region_config(dir.path(), "sup-it", "");
    let (mut up, lines) = common::cluster_up(&cfg, dir.path(), Duration::from_secs(60), |l| {
        l.starts_with("proxy") && l.contains("proxy-1")
    })
    .await;
    // The status table after `up`: a header and one running row per child.
    let at = lines
        .iter()
        .position(|l| l == "cluster sup-it up")
        .expect("up");
    assert!(lines[at + 1].starts_with("ROLE"), "{lines:?}");
    assert!(lines[at + 1].contains("RESTARTS"), "{lines:?}");
    let pids = pids_of(&lines);
    assert_eq!(pids.len(), 4, "etcd, scheduler, node, proxy: {lines:?}");
    let node_pid = pids
        .iter()
        .find(|(who, _)| who == "node node-1")
        .map(|(_, p)| *p)
        .expect("node pid");
    assert!(lines.iter().any(|l| l.starts_with("node ")
        && l.contains("node-1")
        && l.contains(&node_pid.to_string())
        && l.contains("running")));

    // kill -9 of the node: said, restarted on the same port, ready again.
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &node_pid.to_string()])
        .status()
        .expect("kill")
        .success());
    let lines = eventually("the node is restarted", Duration::from_secs(30), || {
        let lines = up.stdout.lock().expect("lines").clone();
        async move {
            lines
                .iter()
                .any(|l| l.starts_with("child node node-1 pid ") && l.ends_with("(restart 1)"))
                .then_some(lines)
        }
    })
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("child node node-1 exited (signal: 9")
                && l.contains("restarting in")),
        "{lines:?}"
    );
    let c = client();
    eventually(
        "the restarted node is ready",
        Duration::from_secs(30),
        || {
            let r = c.get(up.at("/readyz")).send();
            async move { (r.await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;

    // SIGUSR1: the status table again, with the restart counted.
    assert!(std::process::Command::new("kill")
        .args(["-USR1", &up.pid().to_string()])
        .status()
        .expect("kill")
        .success());
    eventually("a status table on SIGUSR1", Duration::from_secs(10), || {
        let lines = up.stdout.lock().expect("lines").clone();
        async move {
            let at = lines.iter().position(|l| l == "cluster sup-it status")?;
            lines[at..]
                .iter()
                .any(|l| {
                    l.starts_with("node ")
                        && l.contains("running")
                        && l.split_whitespace().nth(5) == Some("1")
                })
                .then_some(())
        }
    })
    .await;

    // cluster up killed with SIGKILL: every child, the restarted one too, dies with it.
    let lines = up.stdout.lock().expect("lines").clone();
    let pids: Vec<u32> = pids_of(&lines).into_iter().map(|(_, p)| p).collect();
    assert_eq!(pids.len(), 5, "{lines:?}");
    up.kill9();
    eventually(
        "every child died with cluster up",
        Duration::from_secs(10),
        || {
            let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
}

/// The config of a region `name` in `dir/region`: spawned etcd, one scheduler, one node,
/// one proxy without auth, then `mesh` (a `[mesh]` section, or nothing).
fn small_region_config(dir: &std::path::Path, name: &str, mesh: &str) -> std::path::PathBuf {
    let data = dir.join("region");
    config(
        dir,
        &format!(
            r#"
name = "{name}"
data_dir = "{}"
[etcd]
spawn = true
binary = "/usr/bin/etcd"
[scheduler]
members = 1
[nodes]
count = 1
lease_ttl = "2s"
[proxies]
count = 1
no_auth = true
{mesh}
"#,
            data.display()
        ),
    )
}

#[test]
fn bad_mesh_settings_are_refused_and_start_nothing() {
    let files =
        federation_support::MeshFiles::new(&["up-x", "other"], &[("up-x", "other", 1)], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    // A topology without the cluster, certificates of no such cluster, no node 2.
    let lonely = dir.path().join("lonely.toml");
    std::fs::write(
        &lonely,
        "[mesh]\nname = \"t\"\n\n[[cluster]]\nname = \"other\"\nregion = \"r\"\ncloud = \"c\"\n\
         bridge = \"127.0.0.1:1\"\nproxy = \"http://127.0.0.1:2\"\n",
    )
    .expect("write topology");
    let cfg = small_region_config(
        dir.path(),
        "up-y",
        &format!(
            "[mesh]\ntopology = \"{}\"\ncerts_dir = \"{}\"\nbridge_node = 2\n",
            lonely.display(),
            files.certs.display()
        ),
    );
    for cmd in ["check", "up"] {
        let out = cluster_cmd(cmd, &cfg);
        assert_eq!(out.status.code(), Some(1), "cluster {cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("mesh.bridge_node = 2 names no node (nodes.count = 1)")
                && err.contains("has no cluster named \"up-y\" (it names other)")
                && err.contains("cannot load the certificate of cluster up-y"),
            "cluster {cmd}: every mesh problem at once: {err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).is_empty());
        assert!(!dir.path().join("region").exists(), "nothing started");
    }
    // The certificate of another cluster under this cluster's file name is refused too.
    std::fs::copy(files.certs.join("up-x.pem"), files.certs.join("up-z.pem")).expect("copy");
    std::fs::copy(files.certs.join("up-x.key"), files.certs.join("up-z.key")).expect("copy");
    let cfg = small_region_config(
        dir.path(),
        "up-z",
        &format!(
            "[mesh]\ntopology = \"{}\"\ncerts_dir = \"{}\"\n",
            files.topology.display(),
            files.certs.display()
        ),
    );
    let out = cluster_cmd("check", &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("has no cluster named \"up-z\"")
            && err.contains("is the certificate of cluster \"up-x\", not \"up-z\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_joins_a_mesh_through_one_nodes_bridge() {
    let files = federation_support::MeshFiles::new(&["up-m", "far"], &[("up-m", "far", 1)], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_region_config(
        dir.path(),
        "up-m",
        &format!(
            "[mesh]\ntopology = \"{}\"\ncerts_dir = \"{}\"\nbridge_listen = \"{}\"\n",
            files.topology.display(),
            files.certs.display(),
            files.bind["up-m"]
        ),
    );
    let check = cluster_cmd("check", &cfg);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && said.contains("joins the mesh of") && said.contains("node-1"),
        "{said} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (mut up, lines) = common::cluster_up(&cfg, dir.path(), Duration::from_secs(60), |l| {
        l == "cluster up-m up"
    })
    .await;
    let proxy = line_value(&lines, "cluster up-m proxy proxy-1 ").expect("proxy line");
    let far = files.start("far");
    let c = client();

    // A topic made in the other cluster reaches the region through the catalog; a
    // subscription made through the region's proxy gets what is published there.
    federation_support::topic(&c, &far, "orders", 1).await;
    let sink = Sink::start(|_, _| 200).await;
    let body = json!({"name": "billing", "topic": "orders", "start": "earliest",
                      "sink": {"webhook": {"url": sink.url}}});
    eventually(
        "a subscription through the region's proxy on the mesh's topic",
        Duration::from_secs(30),
        || {
            let r = c
                .post(format!("{proxy}/v1/subscriptions"))
                .json(&body)
                .send();
            async move { r.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        },
    )
    .await;
    let events: Vec<_> = (0..10)
        .map(|i| common::event(&format!("m{i}"), "t", None, json!({})))
        .collect();
    common::publish(&c, &far.url, "orders", &events).await;
    eventually(
        "events published in the other cluster are delivered in the region",
        Duration::from_secs(30),
        || {
            let got: std::collections::BTreeSet<String> = sink.ids().into_iter().collect();
            async move { (got.len() == 10).then_some(()) }
        },
    )
    .await;
    let r = c
        .get(format!("{proxy}/v1/mesh"))
        .send()
        .await
        .expect("mesh");
    let status = r.status();
    let text = r.text().await.expect("mesh body");
    assert!(status.is_success(), "{status} {text}");
    let mesh: meshd_core::api::MeshStatus = serde_json::from_str(&text).expect("mesh status");
    assert_eq!(mesh.cluster, "up-m");
    assert!(
        mesh.links
            .iter()
            .any(|l| l.peer == "far" && l.state == "connected"),
        "{:?}",
        mesh.links
    );
    assert!(up.terminate(), "cluster up exits cleanly on SIGTERM");
}
