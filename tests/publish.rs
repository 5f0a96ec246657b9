//! Publish over HTTP against the real binary: the three CloudEvents modes, every bad input
//! (status, error body, and nothing stored), topics, health and metrics.

mod common;

use common::*;
use serde_json::{json, Value};

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error body is JSON");
    assert!(
        body["error"]["code"].is_string(),
        "error body shape: {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "error body shape: {body}"
    );
    (status, body)
}

#[tokio::test]
async fn publish_modes_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &["--max-body-bytes", "2048"]);
    let c = client();
    create_topic(&c, &m.url, "orders", json!({"partitions": 2})).await;
    let url = m.at("/v1/topics/orders/events");

    // Structured.
    let r = c
        .post(&url)
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(event("s1", "order.created", Some("k1"), json!({"n": 1})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["positions"].as_array().unwrap().len(), 1);

    // Binary.
    let r = c
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "b1")
        .header("ce-source", "/bin")
        .header("ce-type", "order.created")
        .header("ce-partitionkey", "k1")
        .header("content-type", "application/json")
        .body(r#"{"n":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Batch.
    let batch = json!([
        event("a1", "t", Some("k2"), json!(1)),
        event("a2", "t", Some("k2"), json!(2)),
        event("a3", "t", None, json!(3)),
    ]);
    let r = c
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let pos = body["positions"].as_array().unwrap();
    assert_eq!(pos.len(), 3);
    // Same key, same partition, increasing offsets.
    assert_eq!(pos[0]["partition"], pos[1]["partition"]);
    assert!(pos[1]["offset"].as_u64() > pos[0]["offset"].as_u64());
    assert_eq!(stored_count(&c, &m.url, "orders").await, 5);

    // Every bad input: status, error body, and nothing stored.
    // (what, headers, body, expected status, expected error field)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "missing source",
            vec![("content-type", "application/cloudevents+json")],
            json!({"specversion":"1.0","id":"x","type":"t"}).to_string(),
            400,
            Some("source"),
        ),
        (
            "bad specversion",
            vec![("content-type", "application/cloudevents+json")],
            json!({"specversion":"0.3","id":"x","source":"/s","type":"t"}).to_string(),
            400,
            Some("specversion"),
        ),
        (
            "bad extension name",
            vec![("content-type", "application/cloudevents+json")],
            json!({"specversion":"1.0","id":"x","source":"/s","type":"t","Bad-Name":"v"}).to_string(),
            400,
            Some("Bad-Name"),
        ),
        (
            "extension of a bad type",
            vec![("content-type", "application/cloudevents+json")],
            json!({"specversion":"1.0","id":"x","source":"/s","type":"t","ext":[1]}).to_string(),
            400,
            Some("ext"),
        ),
        (
            "data and data_base64",
            vec![("content-type", "application/cloudevents+json")],
            json!({"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AA=="}).to_string(),
            400,
            Some("data_base64"),
        ),
        (
            "not JSON",
            vec![("content-type", "application/cloudevents+json")],
            "{not json".to_string(),
            400,
            None,
        ),
        (
            "batch with one bad event",
            vec![("content-type", "application/cloudevents-batch+json")],
            json!([event("ok1", "t", None, json!(1)), {"specversion":"1.0","id":"x","type":"t"}]).to_string(),
            400,
            Some("[1].source"),
        ),
        (
            "binary without ce-type",
            vec![("ce-specversion", "1.0"), ("ce-id", "x"), ("ce-source", "/s")],
            String::new(),
            400,
            Some("type"),
        ),
        (
            "binary with JSON content type and bad JSON",
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "x"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("content-type", "application/json"),
            ],
            "{oops".to_string(),
            400,
            Some("data"),
        ),
        (
            "unknown content type",
            vec![("content-type", "text/plain")],
            "hello".to_string(),
            415,
            None,
        ),
        (
            "unsupported cloudevents format",
            vec![("content-type", "application/cloudevents+avro")],
            "x".to_string(),
            415,
            None,
        ),
        (
            "body over the limit",
            vec![("content-type", "application/cloudevents+json")],
            event("big", "t", None, json!("x".repeat(4096))).to_string(),
            413,
            None,
        ),
    ];
    for (what, headers, body, status, field) in cases {
        let mut req = c.post(&url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        if status == 413 {
            // Answered before the whole body was read: the connection is not reusable.
            assert_eq!(resp.headers()["connection"], "close", "{what}");
        }
        let (got, err) = error_of(resp).await;
        assert_eq!(got, status, "{what}: {err}");
        if let Some(f) = field {
            assert_eq!(err["error"]["field"], f, "{what}: {err}");
        }
        assert_eq!(
            stored_count(&c, &m.url, "orders").await,
            5,
            "{what} stored something"
        );
    }

    // Unknown topic: 404, and the topic is not created.
    let (status, err) = error_of(
        c.post(m.at("/v1/topics/nope/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event("x", "t", None, json!(1)).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"]["code"], "topic_not_found");
    assert_eq!(status_of(c.get(m.at("/v1/topics/nope"))).await, 404);

    // Metrics count what happened.
    let metrics = common::get_text(&c, &m.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_node_events_published_total{topic=\"orders\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_node_publish_rejected_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_node_publish_latency_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(status_of(c.get(m.at("/healthz"))).await, 200);
    assert_eq!(status_of(c.get(m.at("/readyz"))).await, 200);
}

#[tokio::test]
async fn topics_api() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    let r = c.put(m.at("/v1/topics/t1")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = c.put(m.at("/v1/topics/t1")).send().await.unwrap();
    assert_eq!(r.status(), 200, "idempotent create");
    let (status, err) = error_of(
        c.put(m.at("/v1/topics/t1"))
            .json(&json!({"partitions": 4}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "different config conflicts: {err}");
    assert_eq!(err["error"]["code"], "topic_conflict");
    assert_eq!(
        err["error"]["message"],
        "topic t1 exists with partitions=1, you asked partitions=4"
    );
    assert_eq!(err["error"]["field"], "partitions");
    // The README's trap: a topic made with 4 partitions, then `PUT` with no body.
    let r = c
        .put(m.at("/v1/topics/orders"))
        .json(&json!({"partitions": 4, "retention": {"max_age_secs": 3600}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, err) = error_of(c.put(m.at("/v1/topics/orders")).send().await.unwrap()).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        err["error"]["message"],
        "topic orders exists with partitions=4 and retention.max_age_secs=3600, \
         you asked partitions=1 and retention.max_age_secs=unset"
    );
    assert!(
        err["error"].get("field").is_none(),
        "two settings differ: {err}"
    );
    let info: Value = common::get_json(&c, &m.at("/v1/topics/orders")).await;
    assert_eq!(
        info["config"]["partitions"], 4,
        "the conflict changed nothing: {info}"
    );
    assert_eq!(status_of(c.delete(m.at("/v1/topics/orders"))).await, 204);
    for (body, field) in [
        (json!({"partitions": 0}), "partitions"),
        (json!({"partitions": 100000}), "partitions"),
        (
            json!({"retention": {"max_age_secs": 0}}),
            "retention.max_age_secs",
        ),
        (json!({"bogus": 1}), ""),
    ] {
        let (status, err) = error_of(
            c.put(m.at("/v1/topics/t2"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {err}");
        if !field.is_empty() {
            assert_eq!(err["error"]["field"], field, "{err}");
        }
    }
    let (status, _) = error_of(c.put(m.at("/v1/topics/bad%20name")).send().await.unwrap()).await;
    assert_eq!(status, 400);
    let list: Value = common::get_json(&c, &m.at("/v1/topics")).await;
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["t1"]);
    assert_eq!(status_of(c.delete(m.at("/v1/topics/t1"))).await, 204);
    assert_eq!(status_of(c.delete(m.at("/v1/topics/t1"))).await, 404);
    assert_eq!(status_of(c.get(m.at("/v1/nothing"))).await, 404);
}

#[tokio::test]
async fn auto_create_topics_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &["--auto-create-topics"]);
    let c = client();
    publish(&c, &m.url, "fresh", &[event("1", "t", None, json!(1))]).await;
    assert_eq!(stored_count(&c, &m.url, "fresh").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_on_the_node_and_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(&dir.path().join("n"), &[]);
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &m.url,
            "--no-auth",
        ],
        dir.path(),
    );
    let c = client();
    create_topic(&c, &m.url, "orders", json!({})).await;
    let structured =
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","id":"b","data":1}"#.to_string();
    let good = r#"{"specversion":"1.0","id":"g","source":"/s","type":"t"}"#;
    let batch =
        format!(r#"[{good},{{"specversion":"1.0","id":"c","source":"/s","type":"t","type":"u"}}]"#);
    for base in [&m.url, &p.url] {
        let url = format!("{base}/v1/topics/orders/events");
        let r = c
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(structured.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400, "{base}: {body}");
        assert_eq!(body["error"]["code"], "duplicate_key", "{body}");
        assert_eq!(body["error"]["field"], "id", "{body}");
        let r = c
            .post(&url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(batch.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400, "{base}: {body}");
        assert_eq!(body["error"]["code"], "duplicate_key", "{body}");
        assert_eq!(body["error"]["field"], "[1].type", "{body}");
        // `source` twice too (the proxy reads `source` for routing).
        let r = c
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(r#"{"specversion":"1.0","id":"d","source":"/s","type":"t","source":"/x"}"#)
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400, "{base}: {body}");
        assert_eq!(body["error"]["code"], "duplicate_key", "{body}");
    }
    // Nothing was stored, not even the good event of the batch.
    assert_eq!(stored_count(&c, &m.url, "orders").await, 0);
}
