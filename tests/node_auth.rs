//! The proxy → node hop (issue: nodes were an unauthenticated open API). A node started
//! with the cluster's internal token refuses every /v1 request without it (health, readiness
//! and metrics stay open); a proxy with the same token file serves clients as before, and a
//! client cannot smuggle its own internal-token header through the proxy. A token file
//! others may read is refused at start.

mod common;

use std::process::Command;

use common::{client, event, internal_token_file as token_file, Meshd, INTERNAL_TOKEN as TOKEN};
use serde_json::{json, Value};

async fn status(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn nodes_with_an_internal_token_take_requests_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let tok = token_file(dir.path(), 0o600);
    let tok = tok.to_str().unwrap();
    let node = Meshd::start(&dir.path().join("n"), &["--internal-token-file", tok]);
    let proxy = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "c1",
            "--nodes",
            &node.url,
            "--no-auth",
            "--internal-token-file",
            tok,
        ],
        dir.path(),
    );
    let c = client();
    let sub = json!({"name": "s", "topic": "orders", "sink": {"pull": {}}});
    // Directly, without the token: every API call refused, nothing changed.
    for (what, req) in [
        (
            "create topic",
            c.put(node.at("/v1/topics/orders")).json(&json!({})),
        ),
        ("list topics", c.get(node.at("/v1/topics"))),
        ("subscribe", c.post(node.at("/v1/subscriptions")).json(&sub)),
        ("drain", c.post(node.at("/v1/admin/drain"))),
        (
            "wrong token",
            c.post(node.at("/v1/admin/drain"))
                .header("meshd-internal-token", "0123456789abcdef0123456789abcdeX"),
        ),
        (
            "wrong bearer",
            c.get(node.at("/v1/topics"))
                .bearer_auth("not-the-token-at-all"),
        ),
    ] {
        let (s, body) = status(req).await;
        assert_eq!(s, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "internal_token_required", "{what}");
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(status(c.get(node.at(open))).await.0, 200, "{open}");
    }
    // Nothing was created or drained by the refused calls.
    let (s, topics) = status(c.get(node.at("/v1/topics")).bearer_auth(TOKEN)).await;
    assert_eq!(s, 200);
    assert_eq!(topics["topics"], json!([]), "{topics}");
    // Through the proxy (which adds the token), even with a forged header from the client.
    let (s, body) = status(
        c.put(proxy.at("/v1/topics/orders"))
            .header("meshd-internal-token", "forged-forged-forged-forged")
            .json(&json!({})),
    )
    .await;
    assert!(s == 200 || s == 201, "{s} {body}");
    let (s, body) = status(c.post(proxy.at("/v1/subscriptions")).json(&sub)).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = status(
        c.post(proxy.at("/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event("e1", "t", None, json!({})).to_string()),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");
    let metrics = common::get_text(&c, &node.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_node_requests_unauthenticated_total 6"),
        "{metrics}"
    );
}

#[test]
fn a_token_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = token_file(dir.path(), 0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["node", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("n"))
        .arg("--internal-token-file")
        .arg(&tok)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may be read by other users"), "{err}");
}
