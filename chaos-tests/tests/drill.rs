//! `meshd drill` against real processes: two clusters on loopback (drills need no root),
//! the real `meshd drill` CLI, its JSON report, its refusal on a degraded mesh, the restore
//! on Ctrl-C, the link admin endpoints it uses, and the `evacuate` drill (a whole cluster
//! drained through its node and proxy admin APIs, its webhook subscribers handed off to
//! stand-ins in the other cluster, then everything restored).

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use meshd_chaos::checker::contiguous_from_zero;
use meshd_chaos::mesh::meshd_bin;
use meshd_chaos::{drill, http, Checker, Mesh, MeshOptions};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn loopback_mesh() -> Option<Mesh> {
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.force_loopback = true;
    match Mesh::start(opts).await {
        Ok(m) => Some(m),
        Err(meshd_chaos::ChaosError::NoBinary(p)) => {
            eprintln!(
                "SKIPPED: no meshd binary at {} (cargo build --bin meshd)",
                p.display()
            );
            None
        }
        Err(e) => panic!("building the mesh: {e}"),
    }
}

fn drill_cmd(mesh: &Mesh, args: &[&str]) -> Command {
    let mut cmd = Command::new(meshd_bin().expect("binary"));
    cmd.arg("drill").args(args);
    for c in mesh.cluster_names() {
        cmd.arg("--url")
            .arg(format!("{c}={}", mesh.node_url(&c).expect("url")));
    }
    cmd.env("MESHD_LOG", "warn");
    cmd
}

/// Ctrl-C to a running drill: it must exit successfully, say it was interrupted and report
/// nothing lost.
async fn interrupt(child: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(stdout.contains("lost 0"), "{stdout}");
}

async fn wait_healthy(mesh: &Mesh) {
    let c = http::client().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ok = true;
        for n in mesh.cluster_names() {
            let m = http::mesh(&c, &mesh.node_url(&n).unwrap()).await.unwrap();
            ok &= http::links_healthy(&m).is_ok();
        }
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "mesh never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_partition_drill_reports_nothing_lost_and_restores() {
    let _serial = SERIAL.lock().await;
    let Some(mesh) = loopback_mesh().await else {
        return;
    };
    wait_healthy(&mesh).await;
    let cmd = drill_cmd(
        &mesh,
        &[
            "link-partition",
            "--between",
            "a",
            "b",
            "--for",
            "7s",
            "--json",
            "--recovery-timeout",
            "60s",
        ],
    );
    let report = drill::run_json_report(cmd).await.expect("drill");
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.reordered, 0, "{report}");
    assert!(report.acknowledged > 0, "{report}");
    assert_eq!(report.clusters.len(), 2, "{report}");
    let detection = report.detection_ms.expect("the stall was detected");
    assert!(detection < 7000, "{report}");
    assert!(report.recovery_ms.is_some(), "{report}");
    // The links are resumed and the drill's subscriptions are gone.
    let c = http::client().unwrap();
    for n in mesh.cluster_names() {
        let url = mesh.node_url(&n).unwrap();
        let m = http::mesh(&c, &url).await.unwrap();
        assert!(m.links.iter().all(|l| !l.paused), "{m:?}");
    }
    assert_no_drill_subscriptions(&c, &mesh).await;
}

/// No cluster of the mesh keeps a subscription the drill created.
async fn assert_no_drill_subscriptions(c: &reqwest::Client, mesh: &Mesh) {
    for n in mesh.cluster_names() {
        let url = mesh.node_url(&n).unwrap();
        let subs = http::get_json(c, &format!("{url}/v1/subscriptions"))
            .await
            .unwrap();
        assert!(!subs.to_string().contains("meshd-drill-"), "{subs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_restores_the_link_on_ctrl_c() {
    let _serial = SERIAL.lock().await;
    let Some(mesh) = loopback_mesh().await else {
        return;
    };
    wait_healthy(&mesh).await;
    let child = drill_cmd(
        &mesh,
        &["link-partition", "--between", "a", "b", "--for", "10m"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn drill");
    let c = http::client().unwrap();
    let a = mesh.node_url("a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let l = http::link(&c, &a, "b").await.unwrap().expect("a link a->b");
        if l.paused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drill never paused the link: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    interrupt(child).await;
    for (n, peer) in [("a", "b"), ("b", "a")] {
        let l = http::link(&c, &mesh.node_url(n).unwrap(), peer)
            .await
            .unwrap()
            .expect("the link");
        assert!(!l.paused, "{n}->{peer} still paused: {l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_refuses_a_degraded_mesh_and_restores_links_by_hand() {
    let _serial = SERIAL.lock().await;
    let Some(mut mesh) = loopback_mesh().await else {
        return;
    };
    wait_healthy(&mesh).await;
    // The admin endpoints: unknown peer and unknown action are 404 with a code.
    let c = http::client().unwrap();
    let a = mesh.node_url("a").unwrap();
    let (s, body) = http::send_json(
        &c,
        reqwest::Method::POST,
        &format!("{a}/v1/mesh/links/zz/pause"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("no_such_link")),
        "{body}"
    );
    let (s, _) = http::send_json(
        &c,
        reqwest::Method::POST,
        &format!("{a}/v1/mesh/links/b/explode"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 404);
    let (s, body) = http::send_json(
        &c,
        reqwest::Method::POST,
        &format!("{a}/v1/mesh/links/b/pause"),
        None,
    )
    .await
    .unwrap();
    assert_eq!((s, body["changed"].as_bool()), (200, Some(true)), "{body}");
    let (s, body) = http::send_json(
        &c,
        reqwest::Method::POST,
        &format!("{a}/v1/mesh/links/b/resume"),
        None,
    )
    .await
    .unwrap();
    assert_eq!((s, body["changed"].as_bool()), (200, Some(true)), "{body}");

    // `drill restore` resumes a link left paused (a drill killed with SIGKILL).
    http::send_json(
        &c,
        reqwest::Method::POST,
        &format!("{a}/v1/mesh/links/b/pause"),
        None,
    )
    .await
    .unwrap();
    let out = drill_cmd(&mesh, &["restore"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("resumed a->b"), "{stdout}");
    assert!(!http::link(&c, &a, "b").await.unwrap().expect("a->b").paused);

    mesh.kill_node("b").unwrap();
    let out = drill_cmd(
        &mesh,
        &["link-partition", "--between", "a", "b", "--for", "2s"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing to run"), "{stderr}");

    let out = drill_cmd(&mesh, &["evacuate", "--cluster", "a", "--for", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing to run"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evacuate_drill_drains_a_cluster_moves_its_clients_and_restores_it() {
    let _serial = SERIAL.lock().await;
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.force_loopback = true;
    opts.proxies = 1;
    let mesh = match Mesh::start(opts).await {
        Ok(m) => m,
        Err(meshd_chaos::ChaosError::NoBinary(p)) => {
            eprintln!("SKIPPED: no meshd binary at {}", p.display());
            return;
        }
        Err(e) => panic!("building the mesh: {e}"),
    };
    wait_healthy(&mesh).await;
    let (a_proxy, b_proxy) = (
        mesh.proxy_urls("a")[0].clone(),
        mesh.proxy_urls("b")[0].clone(),
    );
    let b_node = mesh.node_url("b").unwrap();
    let cmd = drill_cmd(
        &mesh,
        &[
            "evacuate",
            "--cluster",
            "b",
            "--for",
            "4s",
            "--proxy",
            &format!("a={a_proxy}"),
            "--proxy",
            &format!("b={b_proxy}"),
            "--json",
            "--recovery-timeout",
            "30s",
        ],
    );
    // While the drill holds b drained, b's proxy and node refuse (seen from outside).
    let c = http::client().unwrap();
    let watch = {
        let (c, b_proxy, b_node) = (c.clone(), b_proxy.clone(), b_node.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                let p = c
                    .get(format!("{b_proxy}/readyz"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                let n = c
                    .get(format!("{b_node}/readyz"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                if matches!((p, n), (Ok(503), Ok(503))) {
                    let (s, body) = http::send_json(
                        &c,
                        reqwest::Method::POST,
                        &format!("{b_proxy}/v1/topics/meshd-canary/events"),
                        Some(&serde_json::json!({})),
                    )
                    .await
                    .unwrap();
                    return Some((s, body));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        })
    };
    let report = drill::run_json_report(cmd).await.expect("drill");
    println!("{report}");
    let (s, body) = watch
        .await
        .unwrap()
        .expect("b was never drained (readyz 503 on proxy and node)");
    assert_eq!(s, 503, "{body}");
    assert!(body.to_string().contains("draining"), "{body}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.reordered, 0, "{report}");
    assert!(report.acknowledged > 0, "{report}");
    assert_eq!(report.clusters.len(), 2, "{report}");
    assert!(report.detection_ms.is_some(), "{report}");
    assert!(report.recovery_ms.is_some(), "{report}");
    // Both of b's components were drained and answered 503 during the hold, 200 after.
    let drained = report.facts["drained"].as_array().unwrap();
    assert_eq!(drained.len(), 2, "{report}");
    for t in drained {
        assert_eq!(t["readyz_in_hold"], 503, "{report}");
        assert_eq!(t["readyz_after"], 200, "{report}");
    }
    // b's clients were refused by b and served by a's proxy.
    let refusals = report.facts["x_moved_publish_refusals"].to_string();
    assert!(refusals.contains("503 draining"), "{report}");
    let moved: u64 = report.facts["x_moved_publishes_acked_by"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(moved > 0, "{report}");
    // Everything is back: b's node and proxy serve, and the drill's subscriptions are gone.
    for url in [&b_proxy, &b_node] {
        assert!(
            http::ready(&c, url).await,
            "{url} not ready after the drill"
        );
    }
    assert_no_drill_subscriptions(&c, &mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evacuate_drill_undrains_on_ctrl_c_and_restore_undrains_by_hand() {
    let _serial = SERIAL.lock().await;
    let Some(mesh) = loopback_mesh().await else {
        return;
    };
    wait_healthy(&mesh).await;
    let c = http::client().unwrap();
    let a = mesh.node_url("a").unwrap();
    let b = mesh.node_url("b").unwrap();
    // a webhook subscriber of a: the drill gives it a stand-in in b.
    let app = AppSink::start().await;
    http::put_topic(&c, &a, "meshd-canary", 2).await.unwrap();
    http::subscribe(
        &c,
        &a,
        &json!({"name": "app-hook", "topic": "meshd-canary",
                "sink": {"webhook": {"url": app.url}}}),
    )
    .await
    .unwrap();
    let child = drill_cmd(&mesh, &["evacuate", "--cluster", "a", "--for", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drill");
    let deadline = Instant::now() + Duration::from_secs(40);
    while http::ready(&c, &a).await
        || !http::subscription_names(&c, &b)
            .await
            .unwrap()
            .contains(&"evac.a.app-hook".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "the drill never drained a with a stand-in in b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    interrupt(child).await;
    assert!(http::ready(&c, &a).await, "a still drained after Ctrl-C");
    let left = http::subscription_names(&c, &b).await.unwrap();
    assert!(
        !left.iter().any(|n| n.starts_with("evac.")),
        "stand-ins left after Ctrl-C: {left:?}"
    );
    assert!(http::subscription_names(&c, &a)
        .await
        .unwrap()
        .contains(&"app-hook".to_string()));

    // A drill killed with SIGKILL leaves stand-ins: `drill restore --url` deletes them.
    http::subscribe(
        &c,
        &b,
        &json!({"name": "evac.a.leftover", "topic": "meshd-canary", "sink": {"pull": {}}}),
    )
    .await
    .unwrap();
    let out = drill_cmd(&mesh, &["restore"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("deleted stand-ins b:evac.a.leftover"),
        "{stdout}"
    );
    assert!(!http::subscription_names(&c, &b)
        .await
        .unwrap()
        .contains(&"evac.a.leftover".to_string()));

    // A drill killed with SIGKILL leaves a drained: `drill restore --undrain` repairs it.
    let (s, _) = http::send_json(
        &c,
        reqwest::Method::POST,
        &format!("{a}/v1/admin/drain"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    assert!(!http::ready(&c, &a).await);
    // A mesh with a drained cluster is degraded: another evacuate refuses.
    let out = drill_cmd(&mesh, &["evacuate", "--cluster", "b", "--for", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to run") && stderr.contains("readyz"),
        "{stderr}"
    );
    let out = Command::new(meshd_bin().expect("binary"))
        .args(["drill", "restore", "--undrain", &a])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("undrained {a}")), "{stdout}");
    assert!(http::ready(&c, &a).await, "a still drained after restore");
}

/// One canary a test webhook received: its run, key, seq, the clusters it was stored in
/// (`ce-meshdpath`, absent in the cluster it was published to) and when it came.
#[derive(Debug, Clone)]
struct Hit {
    run: String,
    key: String,
    seq: u64,
    path: Option<String>,
    at: Instant,
}

/// An application's webhook endpoint, recording every canary in arrival order.
struct AppSink {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AppSink {
    async fn start() -> AppSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let h = h.clone();
                async move {
                    let get = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    if let (Some(run), Some(key), Some(seq)) = (
                        get("ce-chaosrun"),
                        get("ce-chaoskey"),
                        get("ce-chaosseq").and_then(|s| s.parse::<u64>().ok()),
                    ) {
                        h.lock().unwrap().push(Hit {
                            run,
                            key,
                            seq,
                            path: get("ce-meshdpath"),
                            at: Instant::now(),
                        });
                    }
                    StatusCode::OK
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AppSink {
            url: format!("http://{addr}/hook"),
            hits,
            task,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for AppSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sum over keys of the seqs received without a gap from 0.
fn contiguous(hits: &[Hit]) -> u64 {
    contiguous_from_zero(hits.iter().map(|h| (h.key.as_str(), h.seq)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evacuate_hands_webhook_subscribers_off_to_stand_ins_and_deletes_them() {
    let _serial = SERIAL.lock().await;
    let Some(mesh) = loopback_mesh().await else {
        return;
    };
    wait_healthy(&mesh).await;
    let c = http::client().unwrap();
    let (a, b) = (mesh.node_url("a").unwrap(), mesh.node_url("b").unwrap());
    // b's applications: one webhook subscriber, one pull subscriber of the canary topic.
    let app = AppSink::start().await;
    http::put_topic(&c, &b, "meshd-canary", 2).await.unwrap();
    http::subscribe(
        &c,
        &b,
        &json!({"name": "app-hook", "topic": "meshd-canary",
                "filter": {"prefix": {"type": "meshd."}},
                "sink": {"webhook": {"url": app.url, "timeout_ms": 2000}},
                "delivery": {"initial_backoff_ms": 50, "max_backoff_ms": 1000}}),
    )
    .await
    .unwrap();
    http::subscribe(
        &c,
        &b,
        &json!({"name": "app-pull", "topic": "meshd-canary", "sink": {"pull": {}}}),
    )
    .await
    .unwrap();
    let cmd = drill_cmd(
        &mesh,
        &[
            "evacuate",
            "--cluster",
            "b",
            "--for",
            "5s",
            "--canary-webhook",
            "127.0.0.1",
            "--json",
            "--recovery-timeout",
            "40s",
        ],
    );
    // From outside: when b is drained (readyz 503) and back, and the stand-ins in a then.
    let watch = {
        let (c, a, b) = (c.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while http::ready(&c, &b).await {
                assert!(Instant::now() < deadline, "b was never drained");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drained = Instant::now();
            let stand_ins: Vec<String> = http::subscription_names(&c, &a)
                .await
                .unwrap()
                .into_iter()
                .filter(|n| n.starts_with("evac.b."))
                .collect();
            while !http::ready(&c, &b).await {
                assert!(Instant::now() < deadline, "b was never undrained");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (drained, Instant::now(), stand_ins)
        })
    };
    let report = drill::run_json_report(cmd).await.expect("drill");
    println!("{report}");
    let (drained, back, stand_ins) = watch.await.unwrap();
    // While b was drained, a held a stand-in for each of b's webhook subscriptions (the
    // app's and the drill's canary subscriber), none for the pull one.
    assert!(
        stand_ins.contains(&"evac.b.app-hook".to_string()),
        "{stand_ins:?}"
    );
    assert!(
        stand_ins
            .iter()
            .any(|n| n.starts_with("evac.b.meshd-drill-")),
        "{stand_ins:?}"
    );
    assert_eq!(stand_ins.len(), 2, "{stand_ins:?}");
    // The drill's canaries: nothing lost or reordered anywhere, and b's (webhook) canary
    // subscriber got canaries published after the drain began, during the hold.
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.reordered, 0, "{report}");
    assert!(report.recovery_ms.is_some(), "{report}");
    let new_in_hold = report.facts["x_new_canaries_delivered_while_drained"]
        .as_u64()
        .unwrap();
    assert!(new_in_hold > 0, "{report}");
    let subs = report.facts["x_subscriptions"].as_array().unwrap();
    let by_name = |n: &str| {
        subs.iter()
            .find(|s| s["subscription"] == n)
            .unwrap_or_else(|| panic!("{n} not in the report: {report}"))
    };
    let hook = by_name("app-hook");
    assert_eq!(hook["handed_off"], true, "{report}");
    assert_eq!(hook["stand_in_cluster"], "a", "{report}");
    assert_eq!(hook["stand_in"], "evac.b.app-hook", "{report}");
    assert_eq!(hook["start"], "earliest", "{report}");
    assert_eq!(hook["stand_in_deleted"], true, "{report}");
    // Every other cluster learned the stand-in's interest (topic and filter) before the
    // drain.
    assert!(
        !report.notes.iter().any(|n| n.contains("interest")),
        "{report}"
    );
    assert!(
        hook["delivered_by_stand_in"].as_u64().unwrap()
            > hook["delivered_before_drain"].as_u64().unwrap(),
        "{report}"
    );
    let pull = by_name("app-pull");
    assert_eq!(pull["handed_off"], false, "{report}");
    assert!(
        pull["reason"].as_str().unwrap().contains("pull"),
        "{report}"
    );
    assert!(
        report.facts["x_not_handed_off"]
            .to_string()
            .contains("app-pull"),
        "{report}"
    );
    // b's application webhook: every acknowledged canary arrives, first deliveries in
    // order per key (duplicates allowed), and while b was drained it got canaries out of
    // a's store (published in a: no path there, or stored in a last), i.e. from the
    // stand-in: b's own copies carry the path `a,b`.
    let deadline = Instant::now() + Duration::from_secs(30);
    while contiguous(&app.hits()) < report.acknowledged {
        assert!(
            Instant::now() < deadline,
            "app-hook has {} of {} canaries",
            contiguous(&app.hits()),
            report.acknowledged
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = app.hits();
    let runs: std::collections::BTreeSet<&str> = hits.iter().map(|h| h.run.as_str()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let mut checker = Checker::new();
    for h in &hits {
        checker.delivered("b", &h.key, h.seq);
    }
    let app_report = checker.report("app-hook", "mesh");
    assert_eq!(app_report.reordered, 0, "{app_report}");
    let from_a = |h: &Hit| match &h.path {
        Some(p) => p.rsplit(',').next() == Some("a"),
        None => !h.key.starts_with("b-k"),
    };
    let in_hold: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.at >= drained && h.at <= back)
        .collect();
    let by_stand_in = in_hold.iter().filter(|h| from_a(h)).count();
    println!(
        "app-hook: {} deliveries ({} duplicates), {} while b was drained, {} of them from a's stand-in",
        app_report.clusters["b"].deliveries,
        app_report.duplicated,
        in_hold.len(),
        by_stand_in
    );
    assert!(
        by_stand_in > 0,
        "no delivery from the stand-in during the hold"
    );
    // Restored: no stand-in left in a, b serves, b's subscriptions are untouched.
    let left = http::subscription_names(&c, &a).await.unwrap();
    assert!(!left.iter().any(|n| n.starts_with("evac.")), "{left:?}");
    assert!(http::ready(&c, &b).await);
    let b_subs = http::subscription_names(&c, &b).await.unwrap();
    assert!(
        b_subs.contains(&"app-hook".to_string()) && b_subs.contains(&"app-pull".to_string()),
        "{b_subs:?}"
    );
}
