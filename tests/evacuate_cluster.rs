//! `meshd drill evacuate` against a cluster whose node is a real cluster member: clusters
//! `a` (a standalone node) and `b` (etcd from the harness, one `meshd scheduler`, node
//! `b1` with `--registry`), linked by their bridges on loopback. Unlike a standalone node,
//! a drained cluster member stops delivering once its backlog is committed
//! (`/v1/cluster` shows `drained`), so whatever b's webhook subscriber receives while b is
//! drained comes from somewhere else. Proves:
//! - the drill hands b's webhook subscriptions (the application's and its own canary
//!   subscriber) to stand-ins in `a`, which deliver during the drain: every push b's
//!   application received while b was `drained` came from a's node (`meshd-node`), and
//!   canaries published after the drain began reached b's canary subscriber during the
//!   hold;
//! - a webhook subscription whose topic the replication policy keeps in b gets no
//!   stand-in, and the report says why (the policy as `GET /v1/mesh` shows it);
//! - nothing acknowledged is lost and first deliveries keep their order per key, for the
//!   drill's canaries and for the application (duplicates: what the stand-in delivered,
//!   again from b after the undrain);
//! - after the drill the stand-ins are gone and b delivers again from its own offsets.
//!
//! - over a 100 ms RTT link (emulated), the drill's wait before the drain ends once b's
//!   own canaries reached every cluster (`x_canaries_settled_ms`), while a's are still in
//!   flight (it used to wait until no canary of any cluster was in flight: 13 s here, up to
//!   its 30 s limit).
//!
//! Every process is killed by its guard, also on panic.

mod cluster_support;
mod common;
mod federation_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::{etcd_arg, scheduler_group, until};
use common::{client, Sink};
use federation_support::{wait_connected, MeshFiles};
use meshd_chaos::checker::contiguous_from_zero;
use meshd_chaos::{http, Checker};
use meshd_linkemu::{LinkConfig, LinkEmulator};
use meshd_scheduler::registry::testing::EtcdServer;
use serde_json::{json, Value};

async fn cluster_status(c: &reqwest::Client, url: &str) -> Value {
    match c.get(format!("{url}/v1/cluster")).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// A canary push the application received: key, seq, the node that pushed, when.
struct Hit {
    key: String,
    seq: u64,
    node: String,
    at: Instant,
}

fn hits(sink: &Sink) -> Vec<Hit> {
    sink.received()
        .iter()
        .filter_map(|r| {
            Some(Hit {
                key: r.header("ce-chaoskey")?.to_string(),
                seq: r.header("ce-chaosseq")?.parse().ok()?,
                node: r.header("meshd-node").unwrap_or("?").to_string(),
                at: r.at,
            })
        })
        .collect()
}

/// Sum over keys of the seqs received without a gap from 0.
fn contiguous(hits: &[Hit]) -> u64 {
    contiguous_from_zero(hits.iter().map(|h| (h.key.as_str(), h.seq)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evacuating_a_cluster_member_hands_its_webhook_subscribers_to_the_other_cluster() {
    // a dials b through a 100 ms RTT link (the emulator listens on b's advertised address):
    // long enough that some of a's canaries (one per key every 50 ms) are always in flight.
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &["b"]);
    let _wan = LinkEmulator::start(
        files.advertised["b"],
        files.bind["b"],
        LinkConfig::with_delay(Duration::from_millis(50)),
    )
    .expect("link emulator");
    // Topics `private.*` stay in b: a subscription of one gets no stand-in.
    let mut topology = std::fs::read_to_string(&files.topology).unwrap();
    topology.push_str("\n[[policy]]\ntopics = \"private.*\"\nclusters = [\"b\"]\n");
    std::fs::write(&files.topology, topology).unwrap();
    let etcd = EtcdServer::start().await.expect("etcd");
    let dir = files.dir.path().to_path_buf();
    let (_schedulers, scheduler_urls) = scheduler_group(&dir, &etcd, "b", 1);
    let a = files.start_args("a", &["--node-id", "a1"], Some(&dir.join("a.log")));
    let b = files.start_args(
        "b",
        &[
            "--registry",
            &etcd_arg(&etcd),
            "--node-id",
            "b1",
            "--lease-ttl",
            "2s",
        ],
        Some(&dir.join("b.log")),
    );
    let c = client();
    wait_connected(&c, &a, "b").await;
    wait_connected(&c, &b, "a").await;
    assert!(
        until(Duration::from_secs(30), || async {
            let mut ok = true;
            for u in scheduler_urls.iter().chain([&a.url, &b.url]) {
                ok &= cluster_support::status(&c, &format!("{u}/readyz")).await == 200;
            }
            ok
        })
        .await,
        "scheduler and nodes ready"
    );
    // b's application: a webhook subscriber of the canary topic, placed on b1.
    let app = Sink::start(|_, _| 200).await;
    common::create_topic(&c, &b.url, "meshd-canary", json!({"partitions": 2})).await;
    let (s, body) = common::subscribe(
        &c,
        &b.url,
        json!({"name": "app-hook", "topic": "meshd-canary",
               "sink": {"webhook": {"url": app.url, "timeout_ms": 2000}},
               "delivery": {"initial_backoff_ms": 50, "max_backoff_ms": 1000}}),
    )
    .await;
    assert!(s == 201 || s == 200, "{s} {body}");
    common::create_topic(&c, &b.url, "private.audit", json!({})).await;
    let (s, body) = common::subscribe(
        &c,
        &b.url,
        json!({"name": "private-hook", "topic": "private.audit",
               "sink": {"webhook": {"url": app.url}}}),
    )
    .await;
    assert!(s == 201 || s == 200, "{s} {body}");
    assert!(
        until(Duration::from_secs(20), || async {
            let m: Value = common::get_json(&c, &format!("{}/v1/mesh", a.url)).await;
            m["policies"] == json!([{"topics": "private.*", "clusters": ["b"]}])
        })
        .await,
        "a's /v1/mesh shows the policy"
    );
    assert!(
        until(Duration::from_secs(20), || async {
            cluster_status(&c, &b.url).await["owned_groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "app-hook"))
        })
        .await,
        "app-hook placed on b1"
    );

    // From outside: when b1 is `drained` (delivery stopped) and when it serves again.
    let watch = {
        let (c, b) = (c.clone(), b.url.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while cluster_status(&c, &b).await["drain"] != "drained" {
                assert!(Instant::now() < deadline, "b1 never reached `drained`");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drained = Instant::now();
            // The window ends when the last status request that still answered `drained`
            // was sent: b1 undrains (and may push again at once) after that answer, and a
            // later poll that sees `serving` can come well after it on a loaded machine.
            let mut still_drained = drained;
            loop {
                let asked = Instant::now();
                if cluster_status(&c, &b).await["drain"] == "serving" {
                    break;
                }
                still_drained = asked;
                assert!(Instant::now() < deadline, "b1 never served again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (drained, still_drained)
        })
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshd"));
    cmd.args([
        "drill",
        "evacuate",
        "--cluster",
        "b",
        "--url",
        &format!("a={}", a.url),
        "--url",
        &format!("b={}", b.url),
        "--for",
        "6s",
        "--canary-webhook",
        "127.0.0.1",
        "--json",
        "--recovery-timeout",
        "60s",
    ])
    .env("MESHD_LOG", "warn");
    let report = meshd_chaos::drill::run_json_report(cmd)
        .await
        .expect("drill");
    println!("{report}");
    let (drained, serving) = watch.await.unwrap();

    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.reordered, 0, "{report}");
    assert!(report.recovery_ms.is_some(), "{report}");
    // Before the drain the drill waited for b's canaries only, not for a's (a keeps
    // publishing, and over this link some of a's are always in flight): it settled while
    // a's were still on their way (a wait for every canary only ends when none is), and
    // did not time out.
    assert!(
        report.facts["x_canaries_settled_ms"].is_u64(),
        "b's canaries settled before the drain: {report}"
    );
    assert!(
        report.facts["other_canaries_in_flight_at_settle"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(
        !report.notes.iter().any(|n| n.contains("within 30 s")),
        "{report}"
    );
    // The drill's canary subscriber in b (a webhook) got canaries published after the
    // drain began, while b was drained: only the stand-in in a can have pushed them.
    assert!(
        report.facts["x_new_canaries_delivered_while_drained"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    let subs = report.facts["x_subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 3, "{report}");
    let (private, subs): (Vec<&Value>, Vec<&Value>) = subs
        .iter()
        .partition(|s| s["subscription"] == "private-hook");
    assert_eq!(private[0]["handed_off"], false, "{report}");
    assert!(
        private[0]["reason"]
            .as_str()
            .unwrap()
            .contains("replication policy keeps private.audit from a"),
        "{report}"
    );
    for s in subs {
        assert_eq!(s["handed_off"], true, "{report}");
        assert_eq!(s["stand_in_cluster"], "a", "{report}");
        assert_eq!(s["stand_in_deleted"], true, "{report}");
        // The stand-in delivered after the drain began, not only before.
        assert!(
            s["delivered_by_stand_in"].as_u64().unwrap()
                > s["delivered_before_drain"].as_u64().unwrap(),
            "{report}"
        );
    }
    assert!(report.facts["x_delivers_again_ms"].is_u64(), "{report}");
    assert_eq!(
        report.facts["drained"][0]["drain_state_in_hold"], "drained",
        "{report}"
    );

    // The application: while b1 was drained every push came from a's node, and there were
    // some; afterwards it has every acknowledged canary, first deliveries in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    while contiguous(&hits(&app)) < report.acknowledged {
        assert!(
            Instant::now() < deadline,
            "app-hook has {} of {} canaries",
            contiguous(&hits(&app)),
            report.acknowledged
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = hits(&app);
    let in_hold: Vec<&Hit> = all
        .iter()
        .filter(|h| h.at > drained && h.at < serving)
        .collect();
    let nodes: BTreeSet<&str> = in_hold.iter().map(|h| h.node.as_str()).collect();
    let mut checker = Checker::new();
    for h in &all {
        checker.delivered("b", &h.key, h.seq);
    }
    let app_report = checker.report("app-hook", "cluster");
    println!(
        "app-hook: {} deliveries ({} duplicates), {} while b1 was drained (by {nodes:?}); b1 drained for {:?}",
        app_report.clusters["b"].deliveries,
        app_report.duplicated,
        in_hold.len(),
        serving.duration_since(drained)
    );
    assert!(
        !in_hold.is_empty(),
        "nothing delivered while b1 was drained"
    );
    assert_eq!(nodes, BTreeSet::from(["a1"]), "pushes while b1 was drained");
    assert_eq!(app_report.reordered, 0, "{app_report}");
    // After: b1 delivers again (its own pushes after the undrain), no stand-in is left.
    assert!(
        all.iter().any(|h| h.at > serving && h.node == "b1"),
        "b1 did not deliver after the undrain"
    );
    let left = http::subscription_names(&c, &a.url).await.unwrap();
    assert!(!left.iter().any(|n| n.starts_with("evac.")), "{left:?}");
    assert!(http::subscription_names(&c, &b.url)
        .await
        .unwrap()
        .contains(&"app-hook".to_string()));
}
