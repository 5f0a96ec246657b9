//! Interoperability with a CloudEvents client no one here wrote: the official Python SDK
//! (PyPI `cloudevents`) publishes in binary, structured and batch modes; the events come
//! back intact through a pull subscription.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn python_sdk_publishes_in_all_three_modes() {
    let check = Command::new("python3")
        .args(["-c", "import cloudevents.core.bindings.http"])
        .status()
        .expect("python3 must be installed");
    assert!(
        check.success(),
        "the Python cloudevents SDK (2.x) is missing: run scripts/test.sh, which installs it (pip install cloudevents)"
    );
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "sdk", json!({"partitions": 2})).await;
    let r = c
        .post(m.at("/v1/subscriptions"))
        .json(&json!({"name": "reader", "topic": "sdk", "sink": {"pull": {}}, "start": "earliest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/publish_with_sdk.py");
    let out = Command::new("python3")
        .args([script, &m.url, "sdk"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 4, "{results:?}");
    for r in &results[..3] {
        assert_eq!(r["status"], 200, "{r}");
    }
    assert_eq!(results[3]["status"], 400);
    assert_eq!(results[3]["body"]["error"]["field"], "source");

    let got: Vec<Value> = drain(&c, &m.url, "reader", "default", 5)
        .await
        .into_iter()
        .map(|e| e["event"].clone())
        .collect();
    let mut ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "sdk-batch-0",
            "sdk-batch-1",
            "sdk-batch-2",
            "sdk-binary-0",
            "sdk-structured-0"
        ]
    );
    for e in &got {
        assert_eq!(e["type"], "com.example.sdk");
        assert_eq!(e["source"], "/python-sdk");
        assert!(e["subject"].as_str().unwrap().starts_with("item-"));
        assert!(e["partitionkey"].as_str().unwrap().starts_with("key-"));
        assert!(e["time"].is_string(), "the SDK sets time: {e}");
        assert_eq!(e["data"]["text"], "héllo \"quoted\"", "{e}");
    }
}
