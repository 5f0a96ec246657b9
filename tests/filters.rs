//! `POST /v1/filters/test` and `meshd filter test`: try a filter and transform on an event.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn filters_test_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    let ev = event(
        "1",
        "order.created",
        Some("k"),
        json!({"total": 42, "items": ["a", "b"]}),
    );
    let post = |body: Value| {
        let c = c.clone();
        let url = m.at("/v1/filters/test");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, r) = post(
        json!({"filter": {"exact": {"type": "order.created"}}, "event": ev,
                             "transform": {"partial": {"path": "$.data.total"}}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["matched"], true);
    assert_eq!(r["output"]["event"]["data"], 42);
    let (s, r) = post(json!({"filter": {"prefix": {"type": "invoice."}}, "event": ev})).await;
    assert_eq!((s, &r["matched"]), (200, &json!(false)), "{r}");
    assert!(r.get("output").is_none());
    let (s, r) = post(json!({"pattern": {"type": ["order.created"]}, "event": ev})).await;
    assert_eq!((s, &r["matched"]), (200, &json!(true)), "{r}");
    // Bad inputs name the field.
    let (s, r) = post(json!({"filter": {"exact": {}}, "event": ev})).await;
    assert_eq!(
        (s, &r["error"]["field"]),
        (400, &json!("filter.exact")),
        "{r}"
    );
    let (s, r) = post(json!({"event": {"specversion": "1.0", "id": "1", "type": "t"}})).await;
    assert_eq!(
        (s, &r["error"]["field"]),
        (400, &json!("event.source")),
        "{r}"
    );
    let (s, r) = post(json!({"event": ev, "transform": {"partial": {"path": "$$$"}}})).await;
    assert_eq!(s, 400, "{r}");
    assert!(
        r["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("transform"),
        "{r}"
    );
    let (s, _) =
        post(json!({"event": ev, "filter": {"exact": {"type": "x"}}, "pattern": {"type": ["x"]}}))
            .await;
    assert_eq!(s, 400);
}

#[test]
fn filter_test_cli() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, v: Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let ev = write(
        "e.json",
        event("1", "order.created", None, json!({"total": 42})),
    );
    let yes = write("yes.json", json!({"type": ["order.created"]}));
    let no = write("no.json", json!({"type": ["order.deleted"]}));
    let tr = write("t.json", json!({"data": {}}));
    let run = |pattern: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(["filter", "test", "--pattern"])
            .arg(pattern)
            .arg("--event")
            .arg(&ev)
            .arg("--transform")
            .arg(&tr)
            .output()
            .unwrap()
    };
    let out = run(&yes);
    assert_eq!(out.status.code(), Some(0));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["output"]["json"], json!({"total": 42}), "{r}");
    assert_eq!(run(&no).status.code(), Some(1));
    let bad = write("bad.json", json!({"type": "not-an-array"}));
    let out = run(&bad);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an invalid pattern is an error (anyhow exit 1)"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pattern"));
}
