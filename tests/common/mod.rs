//! Harness for integration tests: real `meshd` processes on free loopback ports, killed
//! when their guard drops (also on panic), a recording webhook sink, and `eventually`.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

/// Installs the rustls provider reqwest needs (once per process).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A running `meshd node`, killed on drop.
pub struct Meshd {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Lines it printed on stdout after the URL line.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

impl Meshd {
    /// Starts `meshd node` on a free port with its store in `data_dir`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Meshd {
        Meshd::start_env(data_dir, extra, &[])
    }

    /// Like [`Meshd::start`], with environment variables set after the harness's own
    /// (so they override them, e.g. `MESHD_WEBHOOK_ALLOW_LOOPBACK=false`).
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Meshd {
        let mut args = vec![
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        Meshd::spawn_full(&args, data_dir, Stdio::inherit(), None, env)
    }

    /// Spawns `meshd` with any arguments and waits for the URL line (`cluster C node|proxy ID
    /// http://...`).
    pub fn spawn(args: &[&str], data_dir: &Path) -> Meshd {
        Meshd::spawn_with_stderr(args, data_dir, Stdio::inherit())
    }

    /// Like [`Meshd::spawn`], with its stderr (the log) appended to `log`.
    pub fn spawn_logged(args: &[&str], data_dir: &Path, log: &Path) -> Meshd {
        Meshd::spawn_logged_filter(args, data_dir, log, None)
    }

    /// Like [`Meshd::spawn_logged`] with its own log filter (`MESHD_LOG`), e.g. `info`.
    /// `meshd dev` on free ports with its data in `data` (three clusters in a line).
    pub fn spawn_dev(data: &Path) -> Meshd {
        Meshd::spawn(
            &["dev", "--port", "0", "--data-dir", data.to_str().unwrap()],
            data,
        )
    }

    /// A single `meshd node` on a free port writing JSON log lines (filter `filter`) to
    /// `log`, its data under `dir/data`.
    pub fn spawn_json_logged(dir: &Path, log: &Path, filter: &str) -> Meshd {
        Meshd::spawn_logged_filter(
            &[
                "node",
                "--log-format",
                "json",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.join("data").to_str().unwrap(),
            ],
            dir,
            log,
            Some(filter),
        )
    }

    pub fn spawn_logged_filter(
        args: &[&str],
        data_dir: &Path,
        log: &Path,
        filter: Option<&str>,
    ) -> Meshd {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        Meshd::spawn_with_stderr_filter(args, data_dir, Stdio::from(file), filter)
    }

    fn spawn_with_stderr(args: &[&str], data_dir: &Path, stderr: Stdio) -> Meshd {
        Meshd::spawn_with_stderr_filter(args, data_dir, stderr, None)
    }

    fn spawn_with_stderr_filter(
        args: &[&str],
        data_dir: &Path,
        stderr: Stdio,
        filter: Option<&str>,
    ) -> Meshd {
        Meshd::spawn_full(args, data_dir, stderr, filter, &[])
    }

    fn spawn_full(
        args: &[&str],
        data_dir: &Path,
        stderr: Stdio,
        filter: Option<&str>,
        env: &[(&str, &str)],
    ) -> Meshd {
        let filter = filter
            .map(str::to_string)
            .or_else(|| std::env::var("MESHD_LOG").ok())
            .unwrap_or_else(|| "warn".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(args)
            .env("MESHD_LOG", filter)
            // Test sinks listen on loopback (the webhook rules refuse it by default).
            .env("MESHD_WEBHOOK_ALLOW_LOOPBACK", "true")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn meshd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent
                    && line.starts_with("cluster ")
                    && (line.contains(" node ") || line.contains(" proxy "))
                    && line.contains("http://")
                {
                    let url = line.rsplit(' ').next().unwrap_or_default().to_string();
                    let _ = tx.send(url);
                    sent = true;
                } else {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        let mut guard = Meshd {
            child,
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            stdout: lines,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => guard.url = url,
            Err(_) => panic!("meshd did not print its URL within 60s (args {args:?})"),
        }
        guard
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill9();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `url` + path.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The internal token [`internal_token_file`] writes.
pub const INTERNAL_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Writes [`INTERNAL_TOKEN`] to `dir/internal-token` with `mode` (a node refuses a file
/// others may read) and returns its path, for `--internal-token-file`.
pub fn internal_token_file(dir: &Path, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join("internal-token");
    std::fs::write(&p, format!("{INTERNAL_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Runs the `meshd` CLI to completion: (success, stdout trimmed, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(args)
        .output()
        .expect("run meshd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Starts `meshd cluster up --config CFG` in `dir` and waits (up to `timeout`) until one
/// line of its standard output satisfies `ready`; returns the process and its lines so far.
pub async fn cluster_up(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> (Meshd, Vec<String>) {
    let up = Meshd::spawn(
        &["cluster", "up", "--config", cfg.to_str().expect("utf-8")],
        dir,
    );
    let out = up.stdout.clone();
    let lines = eventually("the region is up", timeout, || {
        let lines = out.lock().expect("lines").clone();
        let done = lines.iter().any(|l| ready(l));
        async move { done.then_some(lines) }
    })
    .await;
    (up, lines)
}

/// Creates a token with `scopes` in the proxy tokens file `file` (`meshd proxy token
/// create`) and returns its secret.
pub fn create_token(file: &std::path::Path, scopes: &str) -> String {
    let (ok, out, err) = cli(&[
        "proxy",
        "token",
        "create",
        "--scopes",
        scopes,
        "--file",
        file.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "token create failed: {err}");
    assert!(out.starts_with("mshd_"), "{out}");
    out
}

/// Polls `f` until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-case header name → value.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook sink on a free port that records every request and answers with the status
/// the `behaviour` function picks (given the 1-based count of requests for that ce-id).
pub struct Sink {
    /// Its URL.
    pub url: String,
    /// What it received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts a sink.
    pub async fn start(behaviour: impl Fn(&str, usize) -> u16 + Send + Sync + 'static) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let rec = received.clone();
        let behaviour = Arc::new(behaviour);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let rec = rec.clone();
                let behaviour = behaviour.clone();
                async move {
                    let headers: Vec<(String, String)> = headers
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    let id = headers
                        .iter()
                        .find(|(k, _)| k == "ce-id")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let n = {
                        let mut r = rec.lock().unwrap();
                        r.push(Received {
                            headers,
                            body: body.to_vec(),
                            at: Instant::now(),
                        });
                        r.iter()
                            .filter(|x| x.header("ce-id") == Some(id.as_str()))
                            .count()
                    };
                    StatusCode::from_u16(behaviour(&id, n)).unwrap()
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink {
            url,
            received,
            task,
        }
    }

    /// Snapshot of what was received.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// ce-ids of requests answered (any status), in arrival order.
    pub fn ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_string))
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A structured event with the given id, type and key.
pub fn event(id: &str, ty: &str, key: Option<&str>, data: Value) -> Value {
    let mut e = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/test",
        "type": ty,
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(k) = key {
        e["partitionkey"] = Value::String(k.to_string());
    }
    e
}

/// Creates a topic.
pub async fn create_topic(c: &reqwest::Client, base: &str, topic: &str, body: Value) {
    let r = c
        .put(format!("{base}/v1/topics/{topic}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "create topic: {}",
        r.text().await.unwrap()
    );
}

/// Publishes structured events one per request; returns the positions.
pub async fn publish(c: &reqwest::Client, base: &str, topic: &str, events: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for e in events {
        let r = c
            .post(format!("{base}/v1/topics/{topic}/events"))
            .header("content-type", "application/cloudevents+json")
            .body(e.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "publish answered {body}");
        out.extend(body["positions"].as_array().unwrap().iter().cloned());
    }
    out
}

/// GET `url` and its JSON body (panics on a transport error or a body that is not JSON).
/// `GET url` as JSON, `None` when the request fails or the body is not JSON (for polling
/// something that may not be up yet).
pub async fn try_get_json(c: &reqwest::Client, url: &str) -> Option<Value> {
    c.get(url).send().await.ok()?.json().await.ok()
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url` and its body as text (panics on a transport error).
pub async fn get_text(c: &reqwest::Client, url: &str) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// The end offsets of every partition of a topic, summed.
pub async fn stored_count(c: &reqwest::Client, base: &str, topic: &str) -> u64 {
    let info = get_json(c, &format!("{base}/v1/topics/{topic}")).await;
    info["partitions"]
        .as_object()
        .map(|m| m.values().map(|p| p["end"].as_u64().unwrap()).sum())
        .unwrap_or(0)
}

/// Creates a subscription; returns the status and the body.
pub async fn subscribe(c: &reqwest::Client, base: &str, spec: Value) -> (u16, Value) {
    let r = c
        .post(format!("{base}/v1/subscriptions"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

pub async fn pull(
    c: &reqwest::Client,
    base: &str,
    sub: &str,
    consumer: &str,
    max: usize,
    wait_ms: u64,
) -> Vec<Value> {
    let r: Value = c
        .get(format!(
            "{base}/v1/subscriptions/{sub}/events?max={max}&wait={wait_ms}ms&consumer={consumer}"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["events"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("pull answer: {r}"))
}

pub async fn ack(
    c: &reqwest::Client,
    base: &str,
    sub: &str,
    consumer: &str,
    events: &[Value],
) -> Value {
    let ids: Vec<&Value> = events.iter().map(|e| &e["ack_id"]).collect();
    c.post(format!("{base}/v1/subscriptions/{sub}/ack"))
        .json(&json!({"ack_ids": ids, "consumer": consumer}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Pulls and acks until `n` events were received or the timeout passes.
pub async fn drain(
    c: &reqwest::Client,
    base: &str,
    sub: &str,
    consumer: &str,
    n: usize,
) -> Vec<Value> {
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while all.len() < n && std::time::Instant::now() < deadline {
        let evs = pull(c, base, sub, consumer, 100, 500).await;
        if !evs.is_empty() {
            ack(c, base, sub, consumer, &evs).await;
        }
        all.extend(evs);
    }
    all
}

pub fn id_of(pulled: &Value) -> String {
    pulled["event"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The status of a request's answer.
pub async fn status_of(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.unwrap().status().as_u16()
}

/// A node with topic `orders` and a webhook subscription `hook` (3 attempts, dead-letter
/// topic `orders.dlq`) whose sink fails event `flaky` twice then accepts it, always fails
/// `doomed` (500) and accepts everything else; then publishes `flaky`, `doomed` and `fine`
/// (keys a, b, c), with `data` from `data(i)`.
pub struct FlakyHook {
    pub dir: tempfile::TempDir,
    pub meshd: Meshd,
    pub client: reqwest::Client,
    pub sink: Sink,
}

pub async fn flaky_hook(data: impl Fn(usize) -> Value) -> FlakyHook {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(dir.path(), &[]);
    let c = client();
    let sink = Sink::start(|id, n| match id {
        "flaky" if n <= 2 => 503,
        "doomed" => 500,
        _ => 200,
    })
    .await;
    create_topic(&c, &meshd.url, "orders", serde_json::json!({})).await;
    let (status, body) = subscribe(
        &c,
        &meshd.url,
        serde_json::json!({
            "name": "hook",
            "topic": "orders",
            "sink": {"webhook": {"url": sink.url, "timeout_ms": 2000}},
            "delivery": {"max_attempts": 3, "initial_backoff_ms": 20, "max_backoff_ms": 200,
                          "dead_letter_topic": "orders.dlq"}
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let events: Vec<Value> = ["flaky", "doomed", "fine"]
        .iter()
        .zip(["a", "b", "c"])
        .enumerate()
        .map(|(i, (id, key))| event(id, "order.created", Some(key), data(i)))
        .collect();
    publish(&c, &meshd.url, "orders", &events).await;
    FlakyHook {
        dir,
        meshd,
        client: c,
        sink,
    }
}

/// Reads until the server closes the connection (or `limit` passes); answers what came.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tokio::io::AsyncReadExt::read(s, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(String::from_utf8_lossy(&out).to_string())
}
