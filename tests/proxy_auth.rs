//! Token auth through a real `meshd proxy`: tokens made by the CLI (`meshd proxy token
//! create|list|revoke`) and the admin API (`/v1/tokens`); the matrix of missing, wrong,
//! out-of-scope and good tokens; revocation through the file and the API.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn publish_status(
    c: &reqwest::Client,
    base: &str,
    topic: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut r = c
        .post(format!("{base}/v1/topics/{topic}/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event("e", "t", None, json!(1)).to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let www = r.headers().get("www-authenticate").is_some();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status == 401 {
        assert!(www, "401 without WWW-Authenticate");
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_matrix_and_token_management() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "admin:*");
    let publisher = create_token(&file, "publish:orders.*");
    let subscriber = create_token(&file, "subscribe:orders.*");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is private");
    }
    let operator = create_token(&file, "cluster-admin");
    // The file holds hashes only.
    let stored = std::fs::read_to_string(&file).unwrap();
    for t in [&admin, &publisher, &subscriber, &operator] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!stored.contains(secret), "a secret is stored in the file");
    }
    let (ok, listed, _) = cli(&["proxy", "token", "list", "--file", file.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(listed.contains("publish:orders.*"));
    let (ok, _, err) = cli(&[
        "proxy",
        "token",
        "create",
        "--scopes",
        "write:x",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("invalid scope"), "{err}");

    let n = Meshd::start(&d.path().join("n1"), &[]);
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
    let c = client();

    // Topic admin: only admin.
    for (token, want) in [
        (None, 401),
        (Some("mshd_0000000000000000_00"), 401),
        (Some("Basic abc"), 401),
        (Some(publisher.as_str()), 403),
        (Some(admin.as_str()), 201),
    ] {
        let mut r = c.put(p.at("/v1/topics/orders.eu")).json(&json!({}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "PUT topic with {token:?}");
        if want >= 400 {
            let v: Value = r.json().await.unwrap();
            assert!(v["error"]["code"].is_string(), "{v}");
        }
    }
    c.put(p.at("/v1/topics/billing"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    // Publish matrix.
    let mut wrong = publisher.clone();
    wrong.pop();
    wrong.push(if publisher.ends_with('0') { '1' } else { '0' });
    assert_eq!(publish_status(&c, &p.url, "orders.eu", None).await.0, 401);
    assert_eq!(
        publish_status(&c, &p.url, "orders.eu", Some(&wrong))
            .await
            .0,
        401
    );
    let (s, v) = publish_status(&c, &p.url, "billing", Some(&publisher)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert_eq!(
        publish_status(&c, &p.url, "orders.eu", Some(&subscriber))
            .await
            .0,
        403
    );
    let (s, v) = publish_status(&c, &p.url, "orders.eu", Some(&publisher)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        publish_status(&c, &p.url, "billing", Some(&admin)).await.0,
        200
    );

    // Subscriptions: subscribe scope on the topic.
    let spec =
        json!({"name": "eu", "topic": "orders.eu", "sink": {"pull": {}}, "start": "earliest"});
    let r = c
        .post(p.at("/v1/subscriptions"))
        .bearer_auth(&publisher)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(p.at("/v1/subscriptions"))
        .bearer_auth(&subscriber)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(p.at("/v1/subscriptions/eu/events?max=10&wait=1s"))
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(p.at("/v1/subscriptions/eu/events?max=10&wait=1s"))
        .bearer_auth(&subscriber)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"].as_array().map(Vec::len), Some(1), "{v}");

    // Token admin API: cluster-admin only (admin:* manages topics, not tokens).
    let r = c
        .get(p.at("/v1/tokens"))
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(p.at("/v1/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cluster-admin"),
        "{v}"
    );
    let r = c.get(p.at("/v1/tokens")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = c
        .get(p.at("/v1/tokens"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(4), "{v}");
    assert!(!v.to_string().contains("hash"), "{v}");
    let r = c
        .post(p.at("/v1/tokens"))
        .bearer_auth(&operator)
        .json(&json!({"scopes": ["publish:billing"], "description": "api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let api_token = created["token"].as_str().unwrap().to_string();
    let api_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        publish_status(&c, &p.url, "billing", Some(&api_token))
            .await
            .0,
        200
    );
    let r = c
        .post(p.at("/v1/tokens"))
        .bearer_auth(&operator)
        .json(&json!({"scopes": ["fly:*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .delete(p.at(&format!("/v1/tokens/{api_id}")))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        publish_status(&c, &p.url, "billing", Some(&api_token))
            .await
            .0,
        401
    );
    let r = c
        .delete(p.at(&format!("/v1/tokens/{api_id}")))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Revocation through the CLI on the file: the proxy reloads it.
    let pub_id = publisher.split('_').nth(1).unwrap().to_string();
    let (ok, _, err) = cli(&[
        "proxy",
        "token",
        "revoke",
        &pub_id,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    eventually("the proxy sees the revocation", Duration::from_secs(10), || {
        let (c, url, t) = (c.clone(), p.url.clone(), publisher.clone());
        async move { (publish_status(&c, &url, "orders.eu", Some(&t)).await.0 == 401).then_some(()) }
    })
    .await;

    let metrics = common::get_text(&c, &p.at("/metrics")).await;
    for reason in ["missing", "invalid", "forbidden"] {
        assert!(
            metrics.contains(&format!(
                "meshd_proxy_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[test]
fn proxy_refuses_to_start_without_tokens_or_no_auth() {
    let (ok, _, err) = cli(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--nodes",
        "http://127.0.0.1:1",
    ]);
    assert!(!ok);
    assert!(err.contains("--tokens"), "{err}");
}

/// A node and a proxy over it, with the token file `file`.
fn node_and_proxy(dir: &Path, file: &Path) -> (Meshd, Meshd) {
    let n = Meshd::start(&dir.join("n1"), &[]);
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
        dir,
    );
    (n, p)
}

async fn put_topic(c: &reqwest::Client, p: &Meshd, token: &str, topic: &str) {
    let r = c
        .put(p.at(&format!("/v1/topics/{topic}")))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "PUT {topic}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_operations_need_cluster_admin_not_a_topic_admin() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let orders_admin = create_token(&file, "admin:orders.*");
    let all_topics_admin = create_token(&file, "admin:*");
    let operator = create_token(&file, "cluster-admin");
    let (_n, p) = node_and_proxy(d.path(), &file);
    let c = client();
    for token in [&orders_admin, &all_topics_admin] {
        let r = c
            .post(p.at("/v1/admin/drain"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cluster-admin"),
            "{v}"
        );
    }
    // Nothing was drained: a topic admin still works on its topics.
    put_topic(&c, &p, &orders_admin, "orders.a").await;
    // cluster-admin is no topic scope.
    let r = c
        .put(p.at("/v1/topics/orders.b"))
        .bearer_auth(&operator)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(p.at("/v1/admin/drain"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(p.at("/v1/topics/orders.c"))
        .bearer_auth(&orders_admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "drained");
    let r = c
        .post(p.at("/v1/admin/undrain"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    put_topic(&c, &p, &orders_admin, "orders.c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_topic_needs_publish_scope_on_it() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "admin:*");
    // The docs' example token: nothing on payments.
    let shop = create_token(&file, "publish:orders.*,subscribe:orders.*");
    let orders_admin = create_token(&file, "admin:orders.*");
    let (_n, p) = node_and_proxy(d.path(), &file);
    let c = client();
    for t in ["orders.a", "payments"] {
        put_topic(&c, &p, &admin, t).await;
    }
    let spec = |name: &str, dlt: &str| {
        json!({"name": name, "topic": "orders.a", "sink": {"pull": {}},
               "delivery": {"dead_letter_topic": dlt}})
    };
    let create = |token: String, body: Value| {
        let c = c.clone();
        let url = p.at("/v1/subscriptions");
        async move {
            let r = c
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // payments: no publish scope on it.
    let (s, v) = create(shop.clone(), spec("steal", "payments")).await;
    assert_eq!(s, 403, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("payments") && msg.contains("dead-letter"),
        "{v}"
    );
    // Nothing was created.
    let r = c
        .get(p.at("/v1/subscriptions/steal"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A dead-letter topic in scope but missing: creating it needs admin on it.
    let (s, v) = create(shop.clone(), spec("s1", "orders.dlq")).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not exist"),
        "{v}"
    );
    let r = c
        .get(p.at("/v1/topics/orders.dlq"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no topic was created");
    // Once it exists, publish scope is enough.
    put_topic(&c, &p, &admin, "orders.dlq").await;
    let (s, v) = create(shop.clone(), spec("s1", "orders.dlq")).await;
    assert_eq!(s, 201, "{v}");
    // admin on the pattern may name a missing one (the node creates it).
    let (s, v) = create(orders_admin.clone(), spec("s2", "orders.dlq2")).await;
    assert_eq!(s, 201, "{v}");
    // A name that is no topic name is refused as such.
    let (s, v) = create(shop.clone(), spec("s3", "../admin/drain")).await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_token_creates_all_persist() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let operator = create_token(&file, "cluster-admin");
    let (_n, p) = node_and_proxy(d.path(), &file);
    let c = client();
    let creates = (0..50).map(|i| {
        let (c, url, t) = (c.clone(), p.at("/v1/tokens"), operator.clone());
        async move {
            let r = c
                .post(url)
                .bearer_auth(t)
                .json(&json!({"scopes": [format!("publish:t{i}")], "description": format!("c{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "create {i}");
            let v: Value = r.json().await.unwrap();
            v["token"].as_str().unwrap().to_string()
        }
    });
    let tokens = futures::future::join_all(creates).await;
    // Every one is in the file (none lost to a concurrent read-modify-write) ...
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["tokens"].as_array().map(Vec::len), Some(51));
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("tokens.tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // ... and every one authenticates.
    for t in &tokens {
        let r = c
            .get(p.at("/v1/cluster"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401);
    }
    // Concurrent revocations too.
    let list: Value = c
        .get(p.at("/v1/tokens"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["description"]
                .as_str()
                .is_some_and(|d| d.starts_with('c'))
        })
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 50);
    let revokes = ids.iter().map(|id| {
        let (c, url, t) = (
            c.clone(),
            p.at(&format!("/v1/tokens/{id}")),
            operator.clone(),
        );
        async move { c.delete(url).bearer_auth(t).send().await.unwrap().status() }
    });
    for s in futures::future::join_all(revokes).await {
        assert_eq!(s, 204);
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["tokens"].as_array().map(Vec::len), Some(1));
}

/// Browsing a topic's stored events takes the scope reading them through a subscription
/// takes (`subscribe` on the topic), and so does moving a subscription (`seek`): a
/// publisher, or a subscriber of other topics, is refused (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browse_and_seek_need_the_subscribe_scope() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "admin:*");
    let publisher = create_token(&file, "publish:orders.*");
    let subscriber = create_token(&file, "subscribe:orders.*");
    let elsewhere = create_token(&file, "subscribe:billing.*");
    let (_n, p) = node_and_proxy(d.path(), &file);
    let c = client();
    put_topic(&c, &p, &admin, "orders.eu").await;
    let (status, body) = publish_status(&c, &p.url, "orders.eu", Some(&publisher)).await;
    assert_eq!(status, 200, "{body}");
    let r = c
        .post(p.at("/v1/subscriptions"))
        .bearer_auth(&subscriber)
        .json(
            &json!({"name": "s", "topic": "orders.eu", "sink": {"pull": {}}, "start": "earliest"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let browse = p.at("/v1/topics/orders.eu/events");
    let seek = p.at("/v1/subscriptions/s/seek");
    for (token, want) in [
        (None, 401),
        (Some(&publisher), 403),
        (Some(&elsewhere), 403),
        (Some(&subscriber), 200),
        (Some(&admin), 200),
    ] {
        let mut b = c.get(&browse);
        let mut s = c.post(&seek).json(&json!({"offsets": {"0": 0}}));
        if let Some(t) = token {
            b = b.bearer_auth(t);
            s = s.bearer_auth(t);
        }
        let r = b.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "browse with {token:?}");
        if want == 200 {
            let page: Value = r.json().await.unwrap();
            assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
        }
        assert_eq!(status_of(s).await, want, "seek with {token:?}");
    }
}

/// A trace may name every topic and subscription the event met: it takes what listing
/// topics and subscriptions takes, an `admin` scope (on any topics); `subscribe` is not
/// enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trace_needs_an_admin_scope() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "admin:*");
    let orders_admin = create_token(&file, "admin:orders.*");
    let subscriber = create_token(&file, "subscribe:*");
    let (_n, p) = node_and_proxy(d.path(), &file);
    let c = client();
    put_topic(&c, &p, &admin, "orders.eu").await;
    let (status, body) = publish_status(&c, &p.url, "orders.eu", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let trace = p.at("/v1/trace?source=/test&id=e");
    for (token, want) in [
        (None, 401),
        (Some(&subscriber), 403),
        (Some(&orders_admin), 200),
        (Some(&admin), 200),
    ] {
        let mut r = c.get(&trace);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "trace with {token:?}");
        if want == 200 {
            let t: meshd_core::api::TraceAnswer = r.json().await.unwrap();
            assert_eq!(t.records.len(), 1, "the publish's stored record: {t:?}");
        }
    }
}
