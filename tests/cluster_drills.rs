//! The control-plane drills end to end with real processes: etcd (harness), three
//! `meshd scheduler` members, two `meshd node`s on one pulsar-lite broker and two
//! `meshd proxy`s in one cluster,
//! and the `meshd drill` CLI run against them with `--json`. Proves:
//! - node drain: publishes answer 503 `draining`, readyz 503, the node leaves the
//!   registry once its backlog is delivered (`/v1/cluster` shows `drained`), undrain
//!   brings it back (ready, registered, publishes accepted);
//! - proxy drain: every API request 503 `draining`, readyz 503, the proxy leaves the
//!   registry; undrain restores it;
//! - `meshd drill node-failover`: the canary group moves to the other node, which
//!   delivers canaries (seen in the proxy's `meshd-node` header); no acknowledged canary
//!   lost, none reordered;
//! - `meshd drill proxy-failover`: publishers switch proxies; lost 0, reordered 0;
//! - `meshd drill scheduler-failover`: another member leads a newer term; lost 0.
//! - `meshd drill registry-outage` (another cluster): etcd frozen with SIGSTOP for 10 s
//!   by the drill's `--stop`/`--start` commands; every node's `/readyz` said
//!   `registry_unreachable`, lost 0, reordered 0, etcd answers again afterwards. The
//!   longest delivery gap is printed, not asserted. An `--etcd` URL that does not answer
//!   makes it refuse before running the stop command.
//!
//! Every process is killed by its guard, also on panic.

mod cluster_support;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::*;
use common::client;
use meshd_scheduler::registry::Role;
use serde_json::{json, Value};

/// Runs `meshd drill ARGS --json`; returns the exit code and the JSON report.
async fn drill(args: Vec<String>) -> (i32, Value, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshd"))
            .arg("drill")
            .args(&args)
            .arg("--json")
            .env("MESHD_LOG", "warn")
            .output()
            .expect("run meshd drill")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        format!("{stdout}\n{stderr}"),
    )
}

fn assert_clean(code: i32, report: &Value, out: &str) {
    assert_eq!(code, 0, "drill failed: {out}");
    assert!(report["acknowledged"].as_u64().unwrap_or(0) >= 10, "{out}");
    assert_eq!(report["lost"], 0, "{out}");
    assert_eq!(report["reordered"], 0, "{out}");
    assert!(report["recovery_ms"].is_u64(), "{out}");
    assert!(report["detection_ms"].is_u64(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_apis_and_the_three_control_plane_drills() {
    let cl = Cluster::start().await;
    let reg = cl.reg.clone();
    let c = client();
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let (p1, p2) = (&cl.proxies[0], &cl.proxies[1]);
    let sched_urls = cl.scheduler_urls.clone();

    // --- node drain API: 503 draining, readyz, leaves the registry, undrain comes back.
    let r = c
        .put(format!("{}/v1/topics/t", p1.url))
        .json(&json!({"partitions": 1}))
        .send()
        .await
        .expect("put topic");
    assert!(r.status().is_success(), "{}", r.status());
    assert!(
        until(Duration::from_secs(10), || async {
            publish(&c, &b.url, "warm").await.0 == 200
        })
        .await
    );
    let r: Value = c
        .post(format!("{}/v1/admin/drain", b.url))
        .send()
        .await
        .expect("drain")
        .json()
        .await
        .expect("json");
    assert_eq!(r["drain"], "draining", "{r}");
    let (s, body) = publish(&c, &b.url, "refused").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "draining", "{body}");
    assert_eq!(status(&c, &format!("{}/readyz", b.url)).await, 503);
    assert!(
        until(Duration::from_secs(15), || async {
            let v: Value = c
                .get(format!("{}/v1/cluster", b.url))
                .send()
                .await
                .expect("cluster")
                .json()
                .await
                .expect("json");
            v["drain"] == "drained" && !members(&reg, Role::Node).await.contains(&"b".into())
        })
        .await,
        "b drained and out of the registry"
    );
    // The proxy sends publishes to the node still serving.
    let (s, body) = publish(&c, &p1.url, "via-proxy").await;
    assert_eq!(s, 200, "{body}");
    c.post(format!("{}/v1/admin/undrain", b.url))
        .send()
        .await
        .expect("undrain");
    assert!(
        until(Duration::from_secs(15), || async {
            status(&c, &format!("{}/readyz", b.url)).await == 200
                && members(&reg, Role::Node).await.contains(&"b".into())
        })
        .await,
        "b back after undrain"
    );
    assert_eq!(publish(&c, &b.url, "back").await.0, 200);

    // --- proxy drain API.
    let r = c
        .post(format!("{}/v1/admin/drain", p2.url))
        .send()
        .await
        .expect("drain proxy");
    assert_eq!(r.status().as_u16(), 200);
    let (s, body) = publish(&c, &p2.url, "p2-refused").await;
    assert_eq!((s, body["error"]["code"].clone()), (503, json!("draining")));
    assert_eq!(status(&c, &format!("{}/readyz", p2.url)).await, 503);
    assert!(
        until(Duration::from_secs(10), || async {
            !members(&reg, Role::Proxy).await.contains(&"p2".into())
        })
        .await,
        "p2 out of the registry"
    );
    c.post(format!("{}/v1/admin/undrain", p2.url))
        .send()
        .await
        .expect("undrain proxy");
    assert_eq!(status(&c, &format!("{}/readyz", p2.url)).await, 200);
    assert_eq!(publish(&c, &p2.url, "p2-back").await.0, 200);
    assert!(
        until(Duration::from_secs(10), || async {
            members(&reg, Role::Proxy).await.contains(&"p2".into())
        })
        .await,
        "p2 registered again"
    );

    let common_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--cluster",
                CLUSTER,
                "--proxy",
                &p1.url,
                "--proxy",
                &p2.url,
                "--node-url",
                &format!("a={}", a.url),
                "--node-url",
                &format!("b={}", b.url),
                "--scheduler",
                &sched_urls[0],
                "--hold",
                "1s",
                "--recovery-timeout",
                "30s",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        v
    };

    // --- node-failover drill.
    let started = Instant::now();
    let (code, report, out) = drill(common_args(&["node-failover"])).await;
    assert_clean(code, &report, &out);
    let facts = &report["facts"];
    let (target, moved_to) = (facts["target"].clone(), facts["moved_to"].clone());
    assert!(target.is_string() && moved_to.is_string(), "{out}");
    assert_ne!(target, moved_to, "{out}");
    let moved = moved_to.as_str().unwrap_or_default();
    assert!(
        facts["delivered_by"][moved]["canaries"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the new node delivered canaries: {out}"
    );
    assert!(facts["restore_ms"].is_u64(), "{out}");
    eprintln!(
        "node-failover: {:?} {}",
        started.elapsed(),
        serde_json::to_string(&report).unwrap_or_default()
    );
    // Restored: both nodes registered and ready.
    assert!(
        until(Duration::from_secs(10), || async {
            members(&reg, Role::Node).await.len() == 2
        })
        .await
    );

    // --- proxy-failover drill.
    let (code, report, out) = drill(common_args(&["proxy-failover"])).await;
    assert_clean(code, &report, &out);
    assert_eq!(report["facts"]["target"], p1.url.as_str(), "{out}");
    assert_eq!(
        report["facts"]["target_readyz_while_draining"], 503,
        "{out}"
    );
    assert_eq!(
        status(&c, &format!("{}/readyz", p1.url)).await,
        200,
        "restored"
    );
    eprintln!(
        "proxy-failover: {}",
        serde_json::to_string(&report).unwrap_or_default()
    );

    // --- scheduler-failover drill.
    let (code, report, out) = drill(common_args(&["scheduler-failover"])).await;
    assert_clean(code, &report, &out);
    let facts = &report["facts"];
    assert!(facts["new_leader"].is_u64(), "{out}");
    assert_ne!(facts["new_leader"], facts["old_leader"], "{out}");
    assert!(
        facts["new_term"].as_u64() > facts["old_term"].as_u64(),
        "{out}"
    );
    eprintln!(
        "scheduler-failover: {}",
        serde_json::to_string(&report).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_drill_freezes_etcd_and_reports_the_degradation() {
    let cl = Cluster::start().await;
    let c = client();
    let pid = cl.etcd.pid().expect("etcd pid");
    let etcd_url = cl.etcd.endpoint();
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    // Bad input changes nothing: an --etcd that does not answer refuses before the stop.
    let marker = cl.dir.path().join("stopped");
    let (code, _, out) = drill(
        [
            "registry-outage",
            "--cluster",
            CLUSTER,
            "--proxy",
            &cl.proxies[0].url,
            "--node-url",
            &format!("a={}", a.url),
            "--stop",
            &format!("touch {}", marker.display()),
            "--start",
            "true",
            "--etcd",
            &format!("http://127.0.0.1:{}", free_port()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not answer /health"), "{out}");
    assert!(!marker.exists(), "the stop command ran: {out}");

    let args: Vec<String> = [
        "registry-outage",
        "--cluster",
        CLUSTER,
        "--proxy",
        &cl.proxies[0].url,
        "--proxy",
        &cl.proxies[1].url,
        "--node-url",
        &format!("a={}", a.url),
        "--node-url",
        &format!("b={}", b.url),
        "--stop",
        &format!("kill -STOP {pid}"),
        "--start",
        &format!("kill -CONT {pid}"),
        "--for",
        "10s",
        "--etcd",
        &etcd_url,
        "--hold",
        "1s",
        "--recovery-timeout",
        "60s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, report, out) = drill(args).await;
    eprintln!(
        "registry-outage: {}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    assert_clean(code, &report, &out);
    let facts = &report["facts"];
    assert_eq!(facts["every_node_said_degraded"], true, "{out}");
    for n in ["a", "b"] {
        let seen = facts["readyz_seen"][n]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            seen.contains(&json!("registry_unreachable")),
            "node {n} /readyz during the outage: {out}"
        );
    }
    assert!(facts["longest_delivery_gap_ms"].is_u64(), "{out}");
    // The start command ran: etcd answers and both nodes are plainly ready.
    assert_eq!(status(&c, &format!("{etcd_url}/health")).await, 200);
    for n in [a, b] {
        let (s, body) = match c.get(format!("{}/readyz", n.url)).send().await {
            Ok(r) => (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            ),
            Err(_) => (0, Value::Null),
        };
        assert_eq!((s, body["degraded"].is_null()), (200, true), "{body}");
    }
}
