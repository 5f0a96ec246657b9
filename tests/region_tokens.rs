//! Tokens of a region with real processes: etcd (harness), one node and three `meshd
//! proxy`s run with `--registry etcd://… --tokens FILE`. Proves:
//! - the bootstrap file is imported once (three proxies started at the same time) and its
//!   token works on every proxy;
//! - a token created through proxy A publishes through B; revoked through B, it is
//!   refused by A and C within 1 s (measured, several rounds);
//! - concurrent creates through two proxies lose none, and every proxy accepts them all;
//! - `meshd proxy token create|list|revoke --registry` works on the same set;
//! - etcd down: issued tokens keep working, create/revoke answer 503
//!   `token_registry_unavailable`, one WARN per proxy; etcd back: revocations work again
//!   and reach the other proxies (no proxy restarted).
//!
//! Every process is killed by its guard, also on panic.

mod cluster_support;
mod common;

use std::time::{Duration, Instant};

use cluster_support::{etcd_arg, proxy_with};
use common::*;
use meshd_scheduler::registry::testing::EtcdServer;
use serde_json::{json, Value};

const CLUSTER: &str = "region";

/// The status of `GET /v1/topics/t` with `token`: 401 when the proxy does not accept the
/// token, the node's answer (200) when it does.
async fn status_with(c: &reqwest::Client, base: &str, token: &str) -> u16 {
    c.get(format!("{base}/v1/topics/t"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn create_via(
    c: &reqwest::Client,
    base: &str,
    admin: &str,
    scopes: &[&str],
) -> (String, String) {
    let r = c
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(admin)
        .json(&json!({"scopes": scopes, "description": "test"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.expect("json");
    (
        v["id"].as_str().expect("id").to_string(),
        v["token"].as_str().expect("token").to_string(),
    )
}

/// Polls until `base` answers 401 to `token`; the time from `since`.
async fn refused_after(c: &reqwest::Client, base: &str, token: &str, since: Instant) -> Duration {
    eventually(
        "the revoked token refused",
        Duration::from_secs(10),
        || async { (status_with(c, base, token).await == 401).then(|| since.elapsed()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_of_a_region_live_in_etcd() {
    let mut etcd = EtcdServer::start().await.expect("etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "cluster-admin,admin:*");
    let node = Meshd::start(&d.path().join("n1"), &[]);
    let c = client();
    create_topic(&c, &node.url, "t", json!({})).await;

    // Three proxies started at once, each with the bootstrap file.
    let dir = d.path();
    let file_arg = format!("--tokens={}", file.display());
    let nodes_arg = format!("--nodes={}", node.url);
    let mut proxies: Vec<Meshd> = std::thread::scope(|s| {
        let handles: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|id| {
                let (etcd, file_arg, nodes_arg) = (&etcd, &file_arg, &nodes_arg);
                s.spawn(move || {
                    proxy_with(
                        dir,
                        etcd,
                        CLUSTER,
                        id,
                        &[file_arg.as_str(), nodes_arg.as_str()],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("proxy"))
            .collect()
    });
    let (a, b, pc) = (
        proxies[0].url.clone(),
        proxies[1].url.clone(),
        proxies[2].url.clone(),
    );
    for p in [&a, &b, &pc] {
        assert_eq!(
            status_with(&c, p, &admin).await,
            200,
            "bootstrap token on {p}"
        );
    }
    let listed = |v: Value| -> Vec<String> {
        v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect()
    };
    let get_list = |base: String| {
        let c = c.clone();
        let admin = admin.clone();
        async move {
            let r = c
                .get(format!("{base}/v1/tokens"))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("list");
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    assert_eq!(
        listed(get_list(pc.clone()).await).len(),
        1,
        "the file was imported once, its one token"
    );

    // Create through A, use through B; revoke through B, refused by A and C within 1 s.
    let mut worst = Duration::ZERO;
    let mut seen_on_b = Vec::new();
    let mut revoked_on = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (id, token) = create_via(&c, &a, &admin, &["publish:t", "subscribe:t"]).await;
        assert_eq!(status_with(&c, &a, &token).await, 200, "A accepts at once");
        let on_b = eventually(
            "B accepts the token A created",
            Duration::from_secs(5),
            || async { (status_with(&c, &b, &token).await == 200).then(|| started.elapsed()) },
        )
        .await;
        seen_on_b.push(on_b);
        let published = c
            .post(format!("{b}/v1/topics/t/events"))
            .bearer_auth(&token)
            .header("content-type", "application/cloudevents+json")
            .body(event(&id, "t", None, json!(1)).to_string())
            .send()
            .await
            .expect("publish");
        assert!(published.status().is_success(), "{}", published.status());
        let since = Instant::now();
        let r = c
            .delete(format!("{b}/v1/tokens/{id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("revoke");
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(
            status_with(&c, &b, &token).await,
            401,
            "B refuses once it answered"
        );
        for p in [&a, &pc] {
            let t = refused_after(&c, p, &token, since).await;
            worst = worst.max(t);
            revoked_on.push(t);
        }
    }
    eprintln!("region tokens: create on A → accepted on B after {seen_on_b:?}; revoke on B → refused on A and C after {revoked_on:?} (worst {worst:?})");
    assert!(
        worst < Duration::from_secs(1),
        "a revocation took {worst:?}"
    );

    // Bad input changes nothing.
    let before = listed(get_list(a.clone()).await).len();
    for body in [
        json!({"scopes": ["write:t"]}),
        json!({"scopes": []}),
        json!({"scopes": ["publish:t*"]}),
        json!({"nope": 1}),
    ] {
        let r = c
            .post(format!("{a}/v1/tokens"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status().as_u16(), 400, "{body}");
    }
    let r = c
        .delete(format!("{a}/v1/tokens/0000000000000000"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(listed(get_list(b.clone()).await).len(), before);

    // Concurrent creates through two proxies: none lost, every proxy accepts every one.
    let creates: Vec<_> = (0..20)
        .map(|i| {
            let base = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (c, admin) = (c.clone(), admin.clone());
            tokio::spawn(async move { create_via(&c, &base, &admin, &["publish:t"]).await })
        })
        .collect();
    let mut made = Vec::new();
    for h in creates {
        made.push(h.await.expect("create task"));
    }
    let ids: std::collections::BTreeSet<&String> = made.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 20);
    eventually(
        "C lists every created token",
        Duration::from_secs(5),
        || async {
            let on_c = listed(get_list(pc.clone()).await);
            ids.iter().all(|id| on_c.contains(id)).then_some(())
        },
    )
    .await;
    for (_, token) in &made {
        assert_eq!(status_with(&c, &pc, token).await, 200);
    }

    // The CLI on the registry sees and changes the same set.
    let reg = etcd_arg(&etcd);
    let (ok, out, err) = cli(&[
        "proxy",
        "token",
        "list",
        "--registry",
        &reg,
        "--cluster",
        CLUSTER,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 21, "{out}");
    let (ok, cli_token, err) = cli(&[
        "proxy",
        "token",
        "create",
        "--scopes",
        "publish:t",
        "--registry",
        &reg,
        "--cluster",
        CLUSTER,
    ]);
    assert!(ok && cli_token.starts_with("mshd_"), "{err}");
    eventually(
        "A accepts the CLI's token",
        Duration::from_secs(5),
        || async { (status_with(&c, &a, &cli_token).await == 200).then_some(()) },
    )
    .await;
    let cli_id = cli_token.split('_').nth(1).expect("id").to_string();
    let since = Instant::now();
    let (ok, _, err) = cli(&[
        "proxy",
        "token",
        "revoke",
        &cli_id,
        "--registry",
        &reg,
        "--cluster",
        CLUSTER,
    ]);
    assert!(ok, "{err}");
    refused_after(&c, &a, &cli_token, since).await;
    let (ok, _, err) = cli(&["proxy", "token", "list", "--cluster", CLUSTER]);
    assert!(!ok && err.contains("--file"), "no target: {err}");

    // A healthy start and run logs nothing at WARN or above (the filter is `warn`).
    for id in ["a", "b", "c"] {
        let text = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
        assert!(text.trim().is_empty(), "{id} logged: {text}");
    }

    let metric = |base: String, name: &'static str| {
        let c = c.clone();
        async move {
            let text = get_text(&c, &format!("{base}/metrics")).await;
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<i64>().ok())
        }
    };
    eventually("gauges up to date", Duration::from_secs(5), || async {
        (metric(a.clone(), "meshd_proxy_token_registry_up").await == Some(1)
            && metric(a.clone(), "meshd_proxy_tokens").await == Some(21))
        .then_some(())
    })
    .await;

    // etcd down: issued tokens keep working; writes answer 503 with a clear code.
    etcd.kill();
    let (_, keep) = &made[0];
    for p in [&a, &b, &pc] {
        assert_eq!(
            status_with(&c, p, keep).await,
            200,
            "issued tokens keep working"
        );
    }
    let r = c
        .post(format!("{a}/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"scopes": ["publish:t"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "token_registry_unavailable", "{v}");
    let (victim_id, victim) = &made[1];
    let r = c
        .delete(format!("{b}/v1/tokens/{victim_id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        status_with(&c, &a, victim).await,
        200,
        "nothing was revoked"
    );
    // Each proxy says so once, at WARN.
    for id in ["a", "b", "c"] {
        let log = dir.join(format!("{id}.log"));
        eventually(
            "the proxy logs the outage",
            Duration::from_secs(20),
            || async {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                (text.matches("the registry is unreachable").count() == 1).then_some(())
            },
        )
        .await;
    }

    eventually(
        "the gauge shows the outage",
        Duration::from_secs(5),
        || async {
            (metric(a.clone(), "meshd_proxy_token_registry_up").await == Some(0)).then_some(())
        },
    )
    .await;

    // etcd back: the revocation goes through and reaches the other proxies.
    etcd.restart().await.expect("etcd restart");
    let since = eventually("revoke accepted again", Duration::from_secs(20), || async {
        let at = Instant::now();
        let r = c
            .delete(format!("{b}/v1/tokens/{victim_id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 204).then_some(at)
    })
    .await;
    let after_outage = refused_after(&c, &a, victim, since)
        .await
        .max(refused_after(&c, &pc, victim, since).await);
    eprintln!("region tokens: after etcd came back, a revocation through B refused by A and C after {after_outage:?}");
    for id in ["a", "b", "c"] {
        let text = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
        assert_eq!(
            text.matches("the registry is unreachable").count(),
            1,
            "{id}: {text}"
        );
    }
    for p in &mut proxies {
        assert!(p.terminate(), "clean stop");
    }
}

/// A proxy of a region does not start without the region's tokens (never with none, nor
/// with a file's possibly revoked ones), and says why.
#[test]
fn a_proxy_without_etcd_does_not_start() {
    let d = tempfile::tempdir().expect("tempdir");
    let file = d.path().join("tokens.json");
    create_token(&file, "cluster-admin");
    let dead = format!("etcd://127.0.0.1:{}", cluster_support::free_port());
    let started = Instant::now();
    let (ok, _, err) = cli(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        &dead,
        "--cluster",
        CLUSTER,
        "--tokens",
        file.to_str().expect("utf-8"),
    ]);
    assert!(!ok, "started without etcd");
    assert!(err.contains("etcd"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
