//! The client commands as a user runs them: `meshd pub`, `sub ...`, `topic ...`,
//! `mesh status` and `listen` as separate processes against real `meshd node`, `proxy`
//! and `dev` processes; global `--url` / `--token` / `-o`; one-line errors without
//! backtraces; the one duration syntax of `wait` on node and proxy.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Runs `meshd` with `args` to its end. `MESHD_URL`, `MESHD_TOKEN` and `RUST_BACKTRACE`
/// come only from `env` (RUST_BACKTRACE=1 always: errors must not print backtraces).
fn meshd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshd"));
    cmd.args(args)
        .env_remove("MESHD_URL")
        .env_remove("MESHD_TOKEN")
        .env("RUST_BACKTRACE", "1")
        .env("MESHD_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run meshd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `meshd` and asserts it succeeded; returns stdout.
fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = meshd(args, env);
    assert!(
        o.status.success(),
        "meshd {args:?} failed ({:?}):\n{}{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts a failed run printed exactly one line, `error: ...`, and no backtrace, and
/// exited with `code`; returns that line.
fn one_line_error(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr:\n{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("panicked") && !err.contains("Stack"),
        "a backtrace or panic on a user error:\n{err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// The start column of each header word in the first line, and checks that every
/// following line has a cell starting at each of these columns (aligned columns).
fn assert_aligned(table: &str, headers: &[&str]) {
    let mut lines = table.lines();
    let head = lines.next().expect("a header line");
    let cols: Vec<usize> = headers
        .iter()
        .map(|h| head.find(h).unwrap_or_else(|| panic!("{h} in {head:?}")))
        .collect();
    let mut rows = 0;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        rows += 1;
        let chars: Vec<char> = line.chars().collect();
        for (i, &c) in cols.iter().enumerate().skip(1) {
            assert!(
                chars.len() > c && chars[c] != ' ' && chars[c - 1] == ' ',
                "column {} not aligned at {c} in {line:?}\n{table}",
                headers[i]
            );
        }
    }
    assert!(rows > 0, "no rows:\n{table}");
}

/// A process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(dir: &Path) -> Meshd {
    Meshd::start(&dir.join("node"), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pub_processes_give_fifty_distinct_ids() {
    let d = tempfile::tempdir().unwrap();
    let n = node(d.path());
    let url = n.url.as_str();
    ok(&["topic", "create", "ids", "--url", url], &[]);
    ok(
        &[
            "sub", "create", "all", "--topic", "ids", "--pull", "--start", "earliest", "--url", url,
        ],
        &[],
    );
    let mut printed = BTreeSet::new();
    for _ in 0..50 {
        let out = ok(
            &["pub", "--topic", "ids", "--data", "{\"n\":1}", "-o", "json"],
            &[("MESHD_URL", url)],
        );
        let line: Value = serde_json::from_str(out.trim()).expect("one JSON line");
        printed.insert(line["id"].as_str().unwrap().to_string());
    }
    assert_eq!(printed.len(), 50, "pub printed repeated ids");
    let c = client();
    assert_eq!(stored_count(&c, url, "ids").await, 50);
    // What was stored and delivered: 50 distinct ids, the ones pub printed, UUIDv7s.
    let o = meshd(
        &[
            "sub", "pull", "all", "--count", "50", "--wait", "1s", "--url", url,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("waiting for events on subscription all"),
        "{}",
        stderr(&o)
    );
    let delivered: BTreeSet<String> = stdout(&o)
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).expect("one JSON event per line");
            e["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(delivered.len(), 50);
    assert_eq!(delivered, printed);
    for id in &delivered {
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "7", "not a UUIDv7: {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_subscriptions_without_writing_json() {
    let d = tempfile::tempdir().unwrap();
    let n = node(d.path());
    let url = n.url.as_str();
    let env = [("MESHD_URL", url)];

    // Global flags before or after the subcommand, or from the environment.
    let created = ok(
        &[
            "--url",
            url,
            "topic",
            "create",
            "orders",
            "--partitions",
            "4",
            "--max-age",
            "7d",
        ],
        &[],
    );
    assert!(created.contains("created topic orders"), "{created}");
    let again = ok(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "4",
            "--max-age",
            "7d",
            "--url",
            url,
        ],
        &[],
    );
    assert!(again.contains("unchanged"), "{again}");
    ok(&["topic", "create", "audit.log"], &env);

    let table = ok(&["topic", "list"], &env);
    assert_aligned(&table, &["NAME", "PARTITIONS", "MAX AGE", "EVENTS"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("orders ") && l.contains(" 4 ") && l.contains("7days")),
        "{table}"
    );
    let list: Value = serde_json::from_str(&ok(&["-o", "json", "topic", "list"], &env)).unwrap();
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(names.contains(&"orders") && names.contains(&"audit.log"));
    let one: Value =
        serde_json::from_str(&ok(&["topic", "get", "orders", "-o", "json"], &env)).unwrap();
    assert_eq!(one["config"]["retention"]["max_age_secs"], 7 * 24 * 3600);

    // Subscriptions: a pattern from a file, CESQL, a webhook with a dead-letter topic.
    let pattern = d.path().join("pattern.json");
    std::fs::write(&pattern, r#"{"type": ["order.created"]}"#).unwrap();
    let out = ok(
        &[
            "sub",
            "create",
            "billing",
            "--topic",
            "orders",
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--pattern",
            pattern.to_str().unwrap(),
            "--max-attempts",
            "5",
            "--dead-letter-topic",
            "orders.dlq",
            "--mode",
            "broadcasting",
            "--group",
            "money",
        ],
        &env,
    );
    assert!(out.contains("created subscription billing"), "{out}");
    ok(
        &[
            "sub",
            "create",
            "big",
            "--topic",
            "orders",
            "--pull",
            "--cesql",
            "type LIKE 'order.%'",
            "--start",
            "earliest",
        ],
        &env,
    );
    let c = client();
    let spec = get_json(&c, &n.at("/v1/subscriptions/billing")).await;
    assert_eq!(
        spec["filter"],
        json!({"pattern": {"type": ["order.created"]}})
    );
    assert_eq!(spec["sink"]["webhook"]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(spec["delivery"]["max_attempts"], 5);
    assert_eq!(spec["delivery"]["dead_letter_topic"], "orders.dlq");
    assert_eq!(spec["mode"], "BROADCASTING");
    assert_eq!(spec["group"], "money");
    let big = get_json(&c, &n.at("/v1/subscriptions/big")).await;
    assert_eq!(big["filter"], json!({"cesql": "type LIKE 'order.%'"}));
    assert_eq!(big["start"], "earliest");
    assert!(big["sink"]["pull"].is_object(), "{big}");

    let table = ok(&["sub", "list"], &env);
    assert_aligned(
        &table,
        &["NAME", "TOPIC", "GROUP", "MODE", "START", "SINK", "FILTER"],
    );
    assert!(table.contains("BROADCASTING") && table.contains("cesql: type LIKE 'order.%'"));
    let list: Value = serde_json::from_str(&ok(&["sub", "list", "-o", "json"], &env)).unwrap();
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 2, "{list}");
    let got = ok(&["sub", "get", "billing"], &env);
    assert_aligned(&got, &["FIELD", "VALUE"]);
    assert!(got.contains("orders.dlq"), "{got}");
    let got: Value = serde_json::from_str(&ok(&["-o", "json", "sub", "get", "big"], &env)).unwrap();
    assert_eq!(got, big);

    // A bad pattern is refused before anything is sent, naming the field.
    let o = meshd(
        &[
            "sub",
            "create",
            "bad",
            "--topic",
            "orders",
            "--pattern",
            "{\"type\": 5}",
        ],
        &env,
    );
    let line = one_line_error(&o, 2);
    assert!(line.contains("filter"), "{line}");
    assert_eq!(
        get_json(&c, &n.at("/v1/subscriptions")).await["subscriptions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Delete; then a 4xx is one line with the API's code and message.
    assert!(ok(&["sub", "delete", "billing"], &env).contains("deleted subscription billing"));
    let o = meshd(&["sub", "get", "billing"], &env);
    let line = one_line_error(&o, 1);
    assert!(
        line.contains("404") && line.contains("subscription_not_found"),
        "{line}"
    );
    let o = meshd(&["topic", "delete", "orders"], &env);
    let line = one_line_error(&o, 1);
    assert!(
        line.contains("409") && line.contains("topic_in_use"),
        "{line}"
    );

    // The older form still creates a pull subscription and reads it.
    let c2 = c.clone();
    let base = n.url.clone();
    let publisher = tokio::spawn(async move {
        eventually(
            "the follow subscription exists",
            Duration::from_secs(20),
            || {
                let c2 = c2.clone();
                let base = base.clone();
                async move {
                    let r = c2
                        .get(format!("{base}/v1/subscriptions/follow"))
                        .send()
                        .await
                        .ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await;
        publish(
            &c2,
            &base,
            "audit.log",
            &[event("follow-1", "x", None, json!(1))],
        )
        .await;
    });
    let out = ok(
        &[
            "sub",
            "--subscription",
            "follow",
            "--topic",
            "audit.log",
            "--count",
            "1",
            "--wait",
            "1s",
        ],
        &env,
    );
    publisher.await.unwrap();
    let e: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(e["id"], "follow-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_what_a_real_subscription_pushes() {
    let d = tempfile::tempdir().unwrap();
    let n = node(d.path());
    let env = [("MESHD_URL", n.url.as_str())];
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["listen", "--port", "0"])
        .env("MESHD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let _guard = Guard(child);
    let first = BufReader::new(err).lines().next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    ok(&["topic", "create", "orders"], &env);
    ok(
        &[
            "sub",
            "create",
            "hook",
            "--topic",
            "orders",
            "--webhook",
            &format!("{url}/hook"),
        ],
        &env,
    );
    let published = ok(
        &[
            "pub",
            "--topic",
            "orders",
            "--type",
            "order.created",
            "--key",
            "customer-1",
            "--data",
            "{\"total\":42}",
            "-o",
            "json",
        ],
        &env,
    );
    let id = serde_json::from_str::<Value>(published.trim()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("meshd listen printed the pushed event");
    let e: Value = serde_json::from_str(&line).expect("one JSON line");
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["type"], "order.created");
    assert_eq!(e["partitionkey"], "customer-1");
    assert_eq!(e["data"], json!({"total": 42}));
    // Answered 200: the node does not push it again.
    let c = client();
    eventually("the push is acknowledged", Duration::from_secs(20), || {
        let c = c.clone();
        let metrics = n.at("/metrics");
        async move {
            let m = get_text(&c, &metrics).await;
            m.lines()
                .any(|l| {
                    l.starts_with("meshd_node_events_delivered_total")
                        && l.contains("\"hook\"")
                        && l.ends_with(" 1")
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_status_on_dev_and_on_a_node_without_a_bridge() {
    let d = tempfile::tempdir().unwrap();
    let n = node(d.path());
    let o = meshd(&["mesh", "status", "--url", &n.url], &[]);
    let line = one_line_error(&o, 1);
    assert!(line.contains("runs no federation bridge"), "{line}");

    let data = d.path().join("dev");
    let dev = Meshd::spawn_dev(&data);
    let env = [("MESHD_URL", dev.url.as_str())];
    let status = eventually("dev's links connected", Duration::from_secs(30), || async {
        let v: Value = serde_json::from_str(&ok(&["mesh", "status", "-o", "json"], &env)).ok()?;
        let links = v["links"].as_array()?;
        (!links.is_empty() && links.iter().all(|l| l["state"] == "connected")).then_some(v)
    })
    .await;
    assert_eq!(status["cluster"], "dev");
    let table = ok(&["mesh", "status"], &env);
    assert!(table.starts_with("cluster dev in mesh "), "{table}");
    let links = table
        .split("\n\n")
        .find(|s| s.starts_with("PEER"))
        .unwrap_or_else(|| panic!("no links table:\n{table}"));
    assert_aligned(links, &["PEER", "STATE", "LAG EVENTS", "RTT", "SENT"]);
    // dev's topology is a chain: dev links to dev-2, which links to dev-3.
    assert!(
        links.contains("dev-2") && links.contains("connected"),
        "{links}"
    );
    let clusters = table
        .split("\n\n")
        .find(|s| s.starts_with("CLUSTER"))
        .unwrap_or_else(|| panic!("no clusters table:\n{table}"));
    assert_aligned(clusters, &["CLUSTER", "REGION", "CLOUD", "BRIDGE"]);
    assert!(clusters.contains("dev-3"), "{clusters}");
}

#[test]
fn user_errors_are_one_line_without_a_backtrace() {
    // A bad flag: clap's usage error, exit 2.
    let o = meshd(&["topic", "list", "--no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("backtrace"), "{}", stderr(&o));
    // A bad duration flag says what to write.
    let o = meshd(&["sub", "pull", "x", "--wait", "5"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("add a unit"), "{}", stderr(&o));
    // Nothing listens: one line with the cause, exit 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = meshd(&["topic", "list", "--url", &url], &[]);
    let line = one_line_error(&o, 1);
    assert!(
        line.contains(&url) && line.contains("onnection refused"),
        "{line}"
    );
    // A URL without a scheme is a usage error.
    let o = meshd(&["topic", "list", "--url", "localhost:7700"], &[]);
    let line = one_line_error(&o, 2);
    assert!(line.contains("http://"), "{line}");
    // --url on a command that talks to no node is a mistake, not ignored.
    let o = meshd(&["listen", "--port", "0", "--url", &url], &[]);
    one_line_error(&o, 2);
    // A zero long-poll wait would spin.
    let o = meshd(&["sub", "pull", "x", "--wait", "0s"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // --id with --count 2 would repeat an id.
    let o = meshd(&["pub", "--topic", "t", "--id", "a", "--count", "2"], &[]);
    one_line_error(&o, 2);
}

fn tokens(dir: &Path, scopes: &str) -> (std::path::PathBuf, String) {
    let file = dir.join("tokens.json");
    let token = create_token(&file, scopes);
    (file, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_through_a_proxy_with_auth() {
    let d = tempfile::tempdir().unwrap();
    let n = node(d.path());
    let (file, admin) = tokens(d.path(), "admin:*");
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &n.url,
            "--tokens",
            file.to_str().unwrap(),
        ],
        d.path(),
    );
    let url = p.url.as_str();
    // Without a token: 401, one line with the API's code.
    let o = meshd(&["topic", "list", "--url", url], &[]);
    let line = one_line_error(&o, 1);
    assert!(
        line.contains("401") && line.contains("unauthorized"),
        "{line}"
    );
    let o = meshd(&["pub", "--topic", "orders", "--url", url], &[]);
    one_line_error(&o, 1);
    // With MESHD_TOKEN (and MESHD_URL): every command.
    let env = [("MESHD_URL", url), ("MESHD_TOKEN", admin.as_str())];
    ok(&["topic", "create", "orders"], &env);
    assert!(ok(&["topic", "list"], &env).contains("orders"));
    ok(
        &[
            "sub", "create", "audit", "--topic", "orders", "--start", "earliest",
        ],
        &env,
    );
    ok(&["pub", "--topic", "orders", "--id", "through-proxy"], &env);
    let out = ok(
        &["sub", "pull", "audit", "--count", "1", "--wait", "2s"],
        &env,
    );
    let e: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(e["id"], "through-proxy");
    // --token on the command line, in either position.
    ok(&["--token", &admin, "sub", "list", "--url", url], &[]);
    ok(
        &["sub", "get", "audit", "--url", url, "--token", &admin],
        &[],
    );
    // A wrong token: 401 too.
    let o = meshd(&["topic", "list", "--url", url, "--token", "mshd_0_0"], &[]);
    one_line_error(&o, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_wait_takes_one_duration_syntax_on_node_and_proxy() {
    let d = tempfile::tempdir().unwrap();
    let n = node(d.path());
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &n.url,
            "--no-auth",
            // A pull's deadline is this plus its wait: a wait the proxy misreads (it
            // read 1.5s as 0) cuts the pull at 0.5 s.
            "--deadline-ms",
            "500",
        ],
        d.path(),
    );
    let env = [("MESHD_URL", n.url.as_str())];
    ok(&["topic", "create", "t"], &env);
    ok(&["sub", "create", "s", "--topic", "t", "--pull"], &env);
    let c = client();
    // A fractional wait through the proxy waits its whole time and answers 200.
    let started = Instant::now();
    let r = c
        .get(p.at("/v1/subscriptions/s/events?max=1&wait=1.5s"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        waited >= Duration::from_millis(1200),
        "waited only {waited:?}"
    );
    // Bad values: 400 naming `wait`, on the node and through the proxy.
    for base in [&n.url, &p.url] {
        for bad in ["5", "soon", "61s", "-1s", "1.5"] {
            let r = c
                .get(format!("{base}/v1/subscriptions/s/events?wait={bad}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "wait={bad} on {base}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["field"], "wait", "wait={bad} on {base}: {v}");
            assert_eq!(v["error"]["code"], "invalid_query", "{v}");
        }
    }
    let r = c
        .get(n.at("/v1/subscriptions/s/events?wait=5"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("add a unit"),
        "{v}"
    );
}
