//! The gRPC API (`meshd.v1.EventMesh`) driven by a client no one here wrote: Python
//! `grpcio` with stubs generated at test time from the shipped .proto files
//! (`tests/grpc/grpc_client.py`), against a real `meshd node --grpc-listen` / `meshd dev`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/grpc_client.py");

/// Fails clearly when the Python packages are missing (scripts/test.sh installs them).
fn require_grpcio() {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_tools, grpc_reflection.v1alpha.reflection_pb2_grpc",
        ])
        .status()
        .expect("python3 must be installed")
        .success();
    assert!(
        ok,
        "Python grpcio, grpcio-tools and grpcio-reflection are missing: run scripts/test.sh, which installs them"
    );
}

/// Runs a scenario of the Python client; returns its JSON lines keyed by `step` (the
/// script stops itself after 120 s, so a hang cannot outlive the test).
fn python(args: &[&str], token: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT).args(args);
    if let Some(t) = token {
        cmd.env("MESHD_TEST_TOKEN", t);
    }
    let out = cmd.output().expect("run python3");
    assert!(
        out.status.success(),
        "grpc_client.py {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn step<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {lines:?}"))
}

/// The address of the `... grpc HOST:PORT` line a node or `meshd dev` prints.
async fn grpc_address(m: &Meshd) -> String {
    eventually("the grpc address line", Duration::from_secs(30), || async {
        m.stdout
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with("cluster ") && l.contains(" grpc "))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    })
    .await
}

async fn node_with_grpc(dir: &Path, extra: &[&str]) -> (Meshd, String) {
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let m = Meshd::start(dir, &args);
    let addr = grpc_address(&m).await;
    (m, addr)
}

async fn pull_subscription(c: &reqwest::Client, base: &str, name: &str, topic: &str) {
    let (status, body) = subscribe(
        c,
        base,
        json!({"name": name, "topic": topic, "sink": {"pull": {"ack_deadline_ms": 1000}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn grpcio_publishes_one_a_batch_and_a_stream_and_subscribes_with_acks_and_redelivery() {
    require_grpcio();
    let dir = tempfile::tempdir().unwrap();
    let (m, addr) = node_with_grpc(dir.path(), &[]).await;
    let c = client();
    create_topic(&c, &m.url, "orders", json!({"partitions": 2})).await;
    pull_subscription(&c, &m.url, "audit", "orders").await;

    let lines = python(&["publish_subscribe", &addr, "orders", "audit"], None);
    assert_eq!(step(&lines, "publish_one")["positions"], 1);
    assert_eq!(step(&lines, "publish_batch")["positions"], 3);
    let stream = step(&lines, "publish_stream");
    assert_eq!(stream["acks"], 100);
    assert_eq!(stream["sequences"], true, "acks in request order");
    assert_eq!(stream["errors"], 0);
    // The refused request of a stream is answered with its error; the others are stored.
    assert_eq!(
        step(&lines, "stream_with_bad")["errors"],
        json!([null, [3, "event.source", "missing_attribute"], null])
    );
    let sub = step(&lines, "subscribed");
    assert_eq!(sub["events"], 106);
    assert_eq!(sub["first_attempt"], 1);
    let first = &sub["first"];
    assert_eq!(first["data_kind"], "binary_data");
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(
        first["data"],
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    assert_eq!(first["attributes"]["subject"], json!(["ce_string", "one"]));
    assert_eq!(
        first["attributes"]["partitionkey"],
        json!(["ce_string", "key-0"])
    );
    // The one left unacknowledged came again after its ack deadline, as a second attempt.
    let again = step(&lines, "redelivered");
    assert_eq!(again["id"], "g-1");
    assert_eq!(again["attempt"], 2);
    assert_eq!(
        step(&lines, "acked"),
        &json!({"step": "acked", "acknowledged": 1, "unknown": []})
    );
    assert_eq!(stored_count(&c, &m.url, "orders").await, 106);
    // The stream's events are stored in stream order (several requests share an append).
    let mut streamed = Vec::new();
    for partition in 0..2 {
        let page = get_json(
            &c,
            &m.at(&format!(
                "/v1/topics/orders/events?partition={partition}&limit=1000"
            )),
        )
        .await;
        let ids: Vec<u64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["event"]["id"].as_str()?.strip_prefix("g-")?.parse().ok())
            .filter(|n| (100..200).contains(n))
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: {ids:?}"
        );
        streamed.extend(ids);
    }
    assert_eq!(streamed.len(), 100);
    // Everything was acknowledged: an HTTP pull of the same subscription finds nothing.
    assert!(pull(&c, &m.url, "audit", "default", 10, 0).await.is_empty());
}

#[tokio::test]
async fn refusals_have_grpc_codes_naming_the_field_and_store_nothing() {
    require_grpcio();
    let dir = tempfile::tempdir().unwrap();
    let (m, addr) = node_with_grpc(dir.path(), &[]).await;
    let c = client();
    create_topic(&c, &m.url, "orders", json!({"partitions": 1})).await;

    let lines = python(&["errors", &addr, "orders", "audit"], None);
    let expect = [
        ("missing_source", "INVALID_ARGUMENT", Some("event.source")),
        (
            "bad_extension",
            "INVALID_ARGUMENT",
            Some("event.attributes[\"Bad-Name\"]"),
        ),
        (
            "bad_batch",
            "INVALID_ARGUMENT",
            Some("batch.events[1].type"),
        ),
        ("no_events", "INVALID_ARGUMENT", Some("events")),
        ("unknown_topic", "NOT_FOUND", Some("topic")),
        ("oversize", "RESOURCE_EXHAUSTED", None),
        ("oversize_stream", "RESOURCE_EXHAUSTED", None),
        ("unknown_subscription", "NOT_FOUND", None),
        ("no_subscription", "INVALID_ARGUMENT", Some("subscription")),
        ("garbage", "INVALID_ARGUMENT", None),
    ];
    for (name, code, field) in expect {
        let l = step(&lines, name);
        assert_eq!(l["code"], code, "{l}");
        if let Some(f) = field {
            assert_eq!(l["field"], f, "{l}");
            assert!(
                l["message"].as_str().unwrap().starts_with(f),
                "the message names the field: {l}"
            );
        }
    }
    assert!(step(&lines, "oversize")["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
    // Not one of them stored anything (the bad batch neither its good first event).
    assert_eq!(stored_count(&c, &m.url, "orders").await, 0);
}

#[tokio::test]
async fn without_the_internal_token_calls_are_unauthenticated_and_store_nothing() {
    require_grpcio();
    let dir = tempfile::tempdir().unwrap();
    let tok = internal_token_file(dir.path(), 0o600);
    let (m, addr) = node_with_grpc(
        &dir.path().join("n"),
        &["--internal-token-file", tok.to_str().unwrap()],
    )
    .await;
    let c = client();
    let r = c
        .put(m.at("/v1/topics/orders"))
        .header("authorization", format!("Bearer {INTERNAL_TOKEN}"))
        .json(&json!({"partitions": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let none = python(&["unauthenticated", &addr, "orders"], None);
    assert_eq!(step(&none, "call")["code"], "UNAUTHENTICATED");
    let wrong = python(
        &["unauthenticated", &addr, "orders"],
        Some("wrong-token-wrong-token-wrong"),
    );
    assert_eq!(step(&wrong, "call")["code"], "UNAUTHENTICATED");
    let info = c
        .get(m.at("/v1/topics/orders"))
        .header("authorization", format!("Bearer {INTERNAL_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(info["partitions"]["0"]["end"], 0, "nothing stored: {info}");

    let right = python(&["unauthenticated", &addr, "orders"], Some(INTERNAL_TOKEN));
    assert_eq!(step(&right, "call")["code"], "OK");
}

/// An event published over HTTP (binary mode) and one published over gRPC with the same
/// attributes and bytes are the same events, received over HTTP pull and over gRPC
/// Subscribe.
#[tokio::test]
async fn events_published_over_grpc_and_http_are_the_same_events_both_ways() {
    require_grpcio();
    let dir = tempfile::tempdir().unwrap();
    let (m, addr) = node_with_grpc(dir.path(), &[]).await;
    let c = client();
    create_topic(&c, &m.url, "same", json!({"partitions": 1})).await;
    pull_subscription(&c, &m.url, "via-http", "same").await;
    pull_subscription(&c, &m.url, "via-grpc", "same").await;

    // Every byte value, and bytes that are no UTF-8.
    let data: Vec<u8> = (0..=255u8).rev().chain([0xc3, 0x28, 0xff]).collect();
    let r = c
        .post(m.at("/v1/topics/same/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "http-1")
        .header("ce-source", "/same")
        .header("ce-type", "com.example.same")
        .header("ce-subject", "both-ways")
        .header("ce-partitionkey", "k1")
        .header("ce-tenant", "acme")
        .header("ce-time", "2026-12-03T10:00:00.123Z")
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let published = python(&["publish_same", &addr, "same", "grpc-1", &b64], None);
    assert_eq!(step(&published, "published")["positions"], 1);

    // HTTP pull: both events, equal but for the id, the data byte-exact.
    let mut over_http: Vec<Value> = drain(&c, &m.url, "via-http", "default", 2)
        .await
        .into_iter()
        .map(|p| p["event"].clone())
        .collect();
    assert_eq!(over_http.len(), 2, "{over_http:?}");
    over_http.sort_by_key(|e| e["id"].as_str().unwrap().to_string());
    for e in &over_http {
        assert_eq!(e["data_base64"], b64, "{e}");
    }
    let without_id = |e: &Value| {
        let mut e = e.clone();
        e.as_object_mut().unwrap().remove("id");
        e
    };
    assert_eq!(without_id(&over_http[0]), without_id(&over_http[1]));
    assert_eq!(over_http[0]["tenant"], "acme");
    assert_eq!(over_http[0]["time"], "2026-12-03T10:00:00.123Z");

    // gRPC Subscribe: the same two, attributes typed the same, binary_data byte-exact.
    let received = python(&["receive", &addr, "via-grpc", "2"], None);
    let mut over_grpc: Vec<Value> = received
        .iter()
        .filter(|l| l["step"] == "received")
        .map(|l| l["event"].clone())
        .collect();
    assert_eq!(over_grpc.len(), 2, "{received:?}");
    over_grpc.sort_by_key(|e| e["id"].as_str().unwrap().to_string());
    assert_eq!(over_grpc[0]["id"], "grpc-1");
    assert_eq!(over_grpc[1]["id"], "http-1");
    assert_eq!(without_id(&over_grpc[0]), without_id(&over_grpc[1]));
    let e = &over_grpc[0];
    assert_eq!(e["data_kind"], "binary_data");
    assert_eq!(e["data"], b64);
    assert_eq!(
        e["attributes"],
        json!({
            "datacontenttype": ["ce_string", "application/octet-stream"],
            "subject": ["ce_string", "both-ways"],
            "partitionkey": ["ce_string", "k1"],
            "tenant": ["ce_string", "acme"],
            "time": ["ce_timestamp", "2026-12-03T10:00:00.123Z"],
        })
    );
}

/// `meshd dev` prints its gRPC address and serves reflection there: a generic client
/// lists the service.
#[tokio::test]
async fn meshd_dev_prints_its_grpc_address_and_reflection_lists_the_service() {
    require_grpcio();
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::spawn(
        &[
            "dev",
            "--port",
            "0",
            "--clusters",
            "1",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        dir.path(),
    );
    let addr = grpc_address(&m).await;
    let lines = python(&["reflection", &addr], None);
    let r = step(&lines, "reflection");
    assert!(
        r["services"]
            .as_array()
            .unwrap()
            .contains(&json!("meshd.v1.EventMesh")),
        "{r}"
    );
    assert_eq!(r["files"], 1, "the file defining the service: {r}");
}
