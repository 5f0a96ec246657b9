//! The log as an operator reads it, with real processes: a healthy start and a clean
//! SIGTERM stop log nothing above INFO (a node with its bridge, a region of three
//! schedulers, a node and a proxy), a log written to a file has no colour codes,
//! `--log-format json` writes one JSON object per line, the proxy logs each refused request
//! (never a token's secret), and a duplicate dropped by a bridge is counted and logged.

mod common;
mod federation_support;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Meshd};
use federation_support::*;
use serde_json::{json, Value};

/// Lines of a log at WARN or ERROR (text or JSON format).
fn loud_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("\"level\":\"WARN\"")
                || l.contains("\"level\":\"ERROR\"")
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Asserts a log is quiet (nothing above INFO) and free of ANSI escapes.
fn assert_quiet_plain(what: &str, log: &str) {
    assert!(
        loud_lines(log).is_empty(),
        "{what} logged above INFO:\n{}",
        loud_lines(log).join("\n")
    );
    assert!(
        !log.contains('\u{1b}'),
        "{what}: colour codes in a log file:\n{log}"
    );
}

/// Waits until the file contains `needle`.
async fn wait_log(log: &Path, needle: &str) -> String {
    eventually(
        &format!("{needle:?} in {}", log.display()),
        Duration::from_secs(20),
        || async move {
            let t = read(log);
            t.contains(needle).then_some(t)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_bridges_start_and_stop_quietly_and_log_plain_text() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let logs = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let start = |cluster: &str, log: &Path| files.start_filtered(cluster, &[], Some(log), "info");
    let mut a = start("a", &log_a);
    let mut b = start("b", &log_b);
    let c = common::client();
    topic(&c, &a, "orders", 1).await;
    topic(&c, &b, "orders", 1).await;
    pull_subscription(&c, &b, "p", "orders").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    publish_batch(
        &c,
        &a,
        "orders",
        &[common::event("e1", "t", None, json!({}))],
    )
    .await;
    eventually("e1 reached b", Duration::from_secs(20), || async {
        (common::stored_count(&c, &b.url, "orders").await == 1).then_some(())
    })
    .await;

    assert!(a.terminate(), "a exits cleanly on SIGTERM");
    assert!(b.terminate(), "b exits cleanly on SIGTERM");
    let (la, lb) = (read(&log_a), read(&log_b));
    assert!(la.contains(" INFO "), "the info lines are there: {la}");
    assert!(la.contains("link connected"), "{la}");
    assert_quiet_plain("node a with its bridge", &la);
    assert_quiet_plain("node b with its bridge", &lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_dropped_by_a_bridge_is_counted_and_logged() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let logs = tempfile::tempdir().unwrap();
    let log_b = logs.path().join("b.log");
    let a = files.start("a");
    let b = files.start_args("b", &[], Some(&log_b));
    let c = common::client();
    topic(&c, &a, "orders", 1).await;
    topic(&c, &b, "orders", 1).await;
    pull_subscription(&c, &b, "p", "orders").await;
    wait_interest(&c, &a, "b", "b", "orders").await;

    // The same (source, id) published twice in a (two acknowledged publishes), then
    // another event: b stores the first and the other one, and drops the repeat.
    let dup = common::event("dup-1", "t", None, json!({"n": 1}));
    publish_batch(&c, &a, "orders", std::slice::from_ref(&dup)).await;
    publish_batch(&c, &a, "orders", &[dup]).await;
    publish_batch(
        &c,
        &a,
        "orders",
        &[common::event("other-1", "t", None, json!({}))],
    )
    .await;
    assert_eq!(common::stored_count(&c, &a.url, "orders").await, 3);
    eventually(
        "b stored the two distinct events",
        Duration::from_secs(20),
        || async { (common::stored_count(&c, &b.url, "orders").await >= 2).then_some(()) },
    )
    .await;
    eventually(
        "a's cursor to b caught up",
        Duration::from_secs(20),
        || async { (link(&c, &a, "b").await["lag_events"] == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        common::stored_count(&c, &b.url, "orders").await,
        2,
        "one delivery of dup-1 in b"
    );
    let pulled = common::pull(&c, &b.url, "p", "t", 10, 0).await;
    let mut ids: Vec<String> = pulled.iter().map(common::id_of).collect();
    ids.sort();
    assert_eq!(ids, ["dup-1", "other-1"]);

    let l = link(&c, &b, "a").await;
    assert_eq!(l["duplicates"], 1, "counted on the link: {l}");
    let metrics = common::get_text(&c, &b.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_federation_link_duplicates_total{peer=\"a\"} 1"),
        "{metrics}"
    );
    let log = wait_log(&log_b, "dropped as a duplicate").await;
    let line = log
        .lines()
        .find(|l| l.contains("dropped as a duplicate"))
        .expect("line");
    assert!(line.contains(" INFO "), "{line}");
    for part in ["peer=a", "topic=orders", "source=\"/test\"", "id=\"dup-1\""] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let mut n = Meshd::spawn_json_logged(dir.path(), &log, "info");
    let c = common::client();
    common::create_topic(&c, &n.url, "orders", json!({})).await;
    assert!(n.terminate());
    let text = read(&log);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{text}");
    for l in &lines {
        assert!(l["timestamp"].is_string(), "{l}");
        assert!(l["level"].is_string(), "{l}");
        assert!(l["message"].is_string(), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "shutdown signal received" && l["level"] == "INFO"),
        "{text}"
    );
    assert!(loud_lines(&text).is_empty(), "{text}");

    // The environment variable does the same; a bad value is refused clearly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["topology", "check", "/nonexistent.toml"])
        .env("MESHD_LOG_FORMAT", "xml")
        .output()
        .expect("run meshd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xml") && err.contains("json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_logs_refused_requests_without_secrets_and_stops_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["proxy", "token", "create", "--scopes", "publish:orders"])
        .arg("--file")
        .arg(&tokens)
        .output()
        .expect("token create");
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (id, secret) = token
        .strip_prefix("mshd_")
        .and_then(|t| t.split_once('_'))
        .expect("token format");
    let node_log = dir.path().join("node.log");
    let proxy_log = dir.path().join("proxy.log");
    let mut n = Meshd::spawn_logged_filter(
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        dir.path(),
        &node_log,
        Some("info"),
    );
    let mut p = Meshd::spawn_logged_filter(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &n.url,
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        dir.path(),
        &proxy_log,
        Some("info"),
    );
    let c = common::client();
    common::create_topic(&c, &n.url, "orders", json!({})).await;
    let body = common::event("e1", "t", None, json!({})).to_string();
    let post = |auth: Option<String>| {
        let mut r = c
            .post(p.at("/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(body.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    };
    assert_eq!(common::status_of(post(None)).await, 401);
    let wrong = format!("mshd_{id}_{}", "0".repeat(64));
    assert_eq!(
        common::status_of(post(Some(format!("Bearer {wrong}")))).await,
        401
    );
    assert_eq!(
        common::status_of(post(Some(format!("Bearer {token}")))).await,
        200
    );
    let forbidden = c
        .put(p.at("/v1/topics/other"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let log = wait_log(&proxy_log, "status=403").await;
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    for l in &refused {
        assert!(l.contains(" INFO "), "4xx at info: {l}");
        assert!(l.contains("peer=127.0.0.1:"), "{l}");
    }
    assert!(
        refused[0].contains("status=401")
            && refused[0].contains("method=POST")
            && refused[0].contains("path=\"/v1/topics/orders/events\"")
            && refused[0].contains("token=\"-\"")
            && refused[0].contains("a token is required"),
        "{}",
        refused[0]
    );
    assert!(
        refused[1].contains("status=401")
            && refused[1].contains(&format!("token=\"{id}\""))
            && refused[1].contains("not valid"),
        "{}",
        refused[1]
    );
    assert!(
        refused[2].contains("status=403")
            && refused[2].contains("method=PUT")
            && refused[2].contains(&format!("token=\"{id}\"")),
        "{}",
        refused[2]
    );
    assert!(!log.contains(secret), "a token secret in the log:\n{log}");
    assert!(!log.contains(&"0".repeat(64)), "{log}");

    assert!(p.terminate(), "the proxy exits cleanly on SIGTERM");
    assert!(n.terminate(), "the node exits cleanly on SIGTERM");
    assert_quiet_plain("proxy", &read(&proxy_log));
    assert_quiet_plain("node", &read(&node_log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_starts_and_stops_without_warnings() {
    region_starts_and_stops_quietly("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_logs_json_in_every_child_with_log_format_json() {
    region_starts_and_stops_quietly("json").await;
}

/// `meshd cluster up` with three schedulers, two nodes (on the pulsar-lite test broker it
/// runs for them) and a proxy, logs in `format`.
async fn region_starts_and_stops_quietly(format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("region");
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
name = "quiet"
data_dir = "{}"
[etcd]
spawn = true
binary = "/usr/bin/etcd"
[scheduler]
members = 3
[nodes]
count = 2
lease_ttl = "2s"
[proxies]
count = 1
no_auth = true
"#,
            data.display()
        ),
    )
    .unwrap();
    let up_log = dir.path().join("up.log");
    let mut up = Meshd::spawn_logged_filter(
        &[
            "cluster",
            "up",
            "--config",
            cfg.to_str().unwrap(),
            "--log-format",
            format,
        ],
        dir.path(),
        &up_log,
        Some("info"),
    );
    eventually("the region is up", Duration::from_secs(60), || {
        let done = up
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "cluster quiet up");
        async move { done.then_some(()) }
    })
    .await;
    // Up means placed: the scheduler leader published a placement.
    eventually("a placement is published", Duration::from_secs(30), || {
        let logs = data.join("logs");
        async move {
            (1..=3)
                .any(|i| {
                    read(&logs.join(format!("scheduler-{i}.log")))
                        .contains("published committed placement")
                })
                .then_some(())
        }
    })
    .await;
    assert!(up.terminate(), "cluster up exits cleanly on SIGTERM");
    assert_quiet_plain("cluster up", &read(&up_log));
    let mut checked = 0;
    for entry in std::fs::read_dir(data.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Not meshd's logs: etcd, and the pulsar-lite test broker the two nodes share.
        if name.starts_with("etcd") || name.starts_with("pulsar-lite") {
            continue;
        }
        let log = read(&path);
        assert_quiet_plain(&name, &log);
        if format == "json" {
            for line in log.lines() {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
                assert!(v["level"].is_string(), "{name}: {line}");
            }
            assert!(log.contains("\"level\":\"INFO\""), "{name}: {log}");
        } else {
            assert!(log.contains(" INFO "), "{name}: {log}");
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "3 schedulers, 2 nodes, 1 proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_keeps_its_keys_private_and_stops_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".meshd-dev");
    let log = dir.path().join("dev.log");
    let mut dev = Meshd::spawn_logged_filter(
        &["dev", "--port", "0", "--data-dir", data.to_str().unwrap()],
        dir.path(),
        &log,
        Some("info"),
    );
    let c = common::client();
    eventually("dev's links connect", Duration::from_secs(20), || async {
        let m = common::try_get_json(&c, &dev.at("/v1/mesh")).await?;
        let links = m["links"].as_array()?;
        (links.len() == 1 && links[0]["state"] == "connected").then_some(())
    })
    .await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let mesh = data.join("mesh");
        for d in [
            data.clone(),
            mesh.clone(),
            mesh.join("ca"),
            mesh.join("certs"),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        for k in [
            mesh.join("ca/ca.key"),
            mesh.join("certs/dev.key"),
            mesh.join("certs/dev-2.key"),
            mesh.join("certs/dev-3.key"),
        ] {
            assert_eq!(mode(&k), 0o600, "{}", k.display());
        }
    }
    assert!(dev.terminate(), "meshd dev exits cleanly on SIGTERM");
    let text = read(&log);
    assert!(text.contains("shutdown signal received"), "{text}");
    assert_quiet_plain("meshd dev", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_logs_a_503_at_warn_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("proxy.log");
    // A node address where nothing listens.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = Meshd::spawn_logged_filter(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &format!("http://{gone}"),
            "--no-auth",
        ],
        dir.path(),
        &log,
        Some("info"),
    );
    let c = common::client();
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(common::event("e1", "t", None, json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let text = wait_log(&log, "request refused").await;
    let line = text
        .lines()
        .find(|l| l.contains("request refused"))
        .expect("line");
    assert!(line.contains(" WARN "), "5xx at warn: {line}");
    for part in [
        "status=503",
        "code=\"upstream_unavailable\"",
        "reason=",
        "method=POST",
        "peer=127.0.0.1:",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }

    // A draining proxy's readiness 503 answers a probe: it is not a failure.
    assert_eq!(
        common::status_of(c.post(p.at("/v1/admin/drain"))).await,
        200
    );
    assert_eq!(common::status_of(c.get(p.at("/readyz"))).await, 503);
    assert_eq!(common::status_of(c.get(p.at("/healthz"))).await, 200);
    let text = wait_log(&log, "drain asked").await;
    assert!(
        !loud_lines(&text).iter().any(|l| l.contains("/readyz")),
        "{text}"
    );
}
