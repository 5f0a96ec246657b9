//! Token auth through a real `meshd proxy`: tokens made by the CLI (`meshd proxy token
//! create|list|revoke`) and the admin API (`/v1/tokens`); the matrix of missing, wrong,
//! out-of-scope and good tokens; revocation through the file and the API.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn cli(args: &[&str]) -> (bool, String, String) {
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

fn create_token(file: &Path, scopes: &str) -> String {
    let (ok, out, err) = cli(&[
        "proxy",
        "token",
        "create",
        "--scopes",
        scopes,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "token create failed: {err}");
    assert!(out.starts_with("mshd_"), "{out}");
    out
}

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
    // The file holds hashes only.
    let stored = std::fs::read_to_string(&file).unwrap();
    for t in [&admin, &publisher, &subscriber] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!stored.contains(secret), "a secret is stored in the file");
    }
    let (ok, listed, _) = cli(&["proxy", "token", "list", "--file", file.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(listed.lines().count(), 3, "{listed}");
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

    // Token admin API: admin:* only.
    let r = c
        .get(p.at("/v1/tokens"))
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.get(p.at("/v1/tokens")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = c
        .get(p.at("/v1/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(!v.to_string().contains("hash"), "{v}");
    let r = c
        .post(p.at("/v1/tokens"))
        .bearer_auth(&admin)
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
        .bearer_auth(&admin)
        .json(&json!({"scopes": ["fly:*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .delete(p.at(&format!("/v1/tokens/{api_id}")))
        .bearer_auth(&admin)
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
        .bearer_auth(&admin)
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
