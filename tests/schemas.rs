//! The schema registry against the real binary: versions, compatibility, binding and
//! validation on publish (single, binary, batch: a failing batch stores nothing), hostile
//! schema documents, kill -9 and restart, and the `meshd schema` CLI.

mod common;

use common::*;
use serde_json::{json, Value};

fn order_v1() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "amount": {"type": "number", "minimum": 0}
        },
        "required": ["id", "amount"]
    })
}

async fn put_schema(c: &reqwest::Client, base: &str, name: &str, body: &str) -> (u16, Value) {
    let r = c
        .put(format!("{base}/v1/schemas/{name}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(c: &reqwest::Client, url: &str, ct: &str, body: String) -> (u16, Value) {
    let r = c
        .post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn versions(list: &Value, name: &str) -> Vec<u64> {
    list["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| {
            s["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn schemas_version_bind_validate_and_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Meshd::start(dir.path(), &[]);
    let c = client();

    // Versions: new, idempotent, compatible, incompatible (409 naming the rule).
    let (s, v1) = put_schema(&c, &m.url, "orders", &order_v1().to_string()).await;
    assert_eq!(s, 201, "{v1}");
    assert_eq!(v1["uri"], "meshd:schemas/orders/v1");
    assert_eq!(v1["compatibility"], "backward");
    let (s, same) = put_schema(&c, &m.url, "orders", &order_v1().to_string()).await;
    assert_eq!((s, same["version"].as_u64()), (200, Some(1)));
    let mut v2 = order_v1();
    v2["properties"]["note"] = json!({"type": "string"});
    let (s, body) = put_schema(&c, &m.url, "orders", &v2.to_string()).await;
    assert_eq!((s, body["version"].as_u64()), (201, Some(2)), "{body}");
    let mut breaking = v2.clone();
    breaking["properties"]["amount"]["type"] = json!("integer");
    let (s, body) = put_schema(&c, &m.url, "orders", &breaking.to_string()).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "schema_incompatible");
    assert_eq!(body["error"]["field"], "/properties/amount");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rule type-narrowed"),
        "{body}"
    );
    let v1_again = get_json(&c, &m.at("/v1/schemas/orders?version=1")).await;
    assert_eq!(v1_again["schema"], order_v1());
    assert_eq!(
        versions(&get_json(&c, &m.at("/v1/schemas")).await, "orders"),
        [1, 2]
    );

    // Binding: unknown schemas are refused; then a validating topic.
    let r = c
        .put(m.at("/v1/topics/shop"))
        .json(&json!({"schemas": {"order.created": "nope"}, "validate": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "schemas.order.created");
    create_topic(
        &c,
        &m.url,
        "shop",
        json!({"schemas": {"order.created": "orders"}, "validate": true}),
    )
    .await;
    let events_url = m.at("/v1/topics/shop/events");

    // A valid event is stored with dataschema set to the latest version's URI.
    publish(
        &c,
        &m.url,
        "shop",
        &[event(
            "ok1",
            "order.created",
            None,
            json!({"id": "a", "amount": 3}),
        )],
    )
    .await;
    let page = get_json(&c, &events_url).await;
    assert_eq!(
        page["events"][0]["event"]["dataschema"],
        "meshd:schemas/orders/v2"
    );

    // A failing event: 400 with the pointer and the rule, nothing stored.
    let bad = event(
        "bad1",
        "order.created",
        None,
        json!({"id": "a", "amount": -3}),
    );
    let (s, body) = post(
        &c,
        &events_url,
        "application/cloudevents+json",
        bad.to_string(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "schema_violation");
    assert_eq!(body["error"]["field"], "/data/amount");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("/data/amount: -3 is less than the minimum of 0"),
        "{msg}"
    );
    assert!(msg.contains("rule minimum"), "{msg}");

    // Binary mode, and data that is not JSON.
    let r = c
        .post(&events_url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin1")
        .header("ce-source", "/bin")
        .header("ce-type", "order.created")
        .header("content-type", "application/json")
        .body(r#"{"id":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "schema_violation");
    let r = c
        .post(&events_url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "txt1")
        .header("ce-source", "/bin")
        .header("ce-type", "order.created")
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "data_not_json");

    // A batch with one failing event stores nothing.
    let batch = json!([
        event("b1", "order.created", None, json!({"id": "x", "amount": 1})),
        event(
            "b2",
            "order.created",
            None,
            json!({"id": "y", "amount": "ten"})
        ),
        event("b3", "unbound.type", None, json!("free")),
    ]);
    let (s, body) = post(
        &c,
        &events_url,
        "application/cloudevents-batch+json",
        batch.to_string(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["field"], "[1]/data/amount");
    assert_eq!(stored_count(&c, &m.url, "shop").await, 1);

    // A dataschema naming something else than a version of the bound schema is refused.
    let mut foreign = event("f1", "order.created", None, json!({"id": "a", "amount": 1}));
    foreign["dataschema"] = json!("https://example.com/orders.json");
    let (s, body) = post(
        &c,
        &events_url,
        "application/cloudevents+json",
        foreign.to_string(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("dataschema_mismatch"))
    );

    // Unbound types pass.
    publish(
        &c,
        &m.url,
        "shop",
        &[event("u1", "unbound.type", None, json!({"amount": -1}))],
    )
    .await;
    assert_eq!(stored_count(&c, &m.url, "shop").await, 2);

    // A bound schema cannot be deleted.
    let r = c.delete(m.at("/v1/schemas/orders")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "schema_in_use");

    // kill -9 and restart: the versions and the validation are still there.
    m.kill9();
    let m = Meshd::start(dir.path(), &[]);
    assert_eq!(
        versions(&get_json(&c, &m.at("/v1/schemas")).await, "orders"),
        [1, 2]
    );
    let (s, body) = post(
        &c,
        &m.at("/v1/topics/shop/events"),
        "application/cloudevents+json",
        bad.to_string(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("schema_violation"))
    );
    assert_eq!(stored_count(&c, &m.url, "shop").await, 2);
}

#[tokio::test]
async fn hostile_schemas_change_nothing_and_fetch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    // A listener a remote $ref would hit if the node fetched it.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/schema.json", trap.local_addr().unwrap());

    let huge = json!({
        "type": "object",
        "description": "x".repeat(300 * 1024),
    });
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_body"),
        ("[1, 2]".into(), 400, "invalid_schema"),
        (
            json!({"type": "nonsense"}).to_string(),
            400,
            "invalid_schema",
        ),
        (json!({"$ref": trap_url}).to_string(), 400, "invalid_schema"),
        (
            json!({"properties": {"a": {"$ref": "file:///etc/passwd"}}}).to_string(),
            400,
            "invalid_schema",
        ),
        (huge.to_string(), 413, "body_too_large"),
    ];
    for (body, status, code) in &cases {
        let (s, answer) = put_schema(&c, &m.url, "evil", body).await;
        assert_eq!(s, *status, "{answer}");
        assert_eq!(answer["error"]["code"], *code, "{answer}");
    }
    let r = c
        .put(m.at("/v1/schemas/ok?compatibility=sometimes"))
        .json(&order_v1())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the node connected to the $ref URL"
    );
    let list = get_json(&c, &m.at("/v1/schemas")).await;
    assert_eq!(list["schemas"], json!([]), "{list}");
    let r = c.get(m.at("/v1/schemas/evil")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn schema_cli_puts_gets_lists_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let url = m.url.as_str();
    let file = dir.path().join("orders.json");
    std::fs::write(&file, order_v1().to_string()).unwrap();
    let (ok, out, err) = cli(&[
        "schema",
        "put",
        "orders",
        "--schema",
        file.to_str().unwrap(),
        "--url",
        url,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("registered schema orders version 1"),
        "{out}"
    );
    let (ok, out, err) = cli(&["schema", "list", "--url", url, "-o", "json"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(versions(&list, "orders"), [1]);
    let (ok, out, err) = cli(&[
        "schema",
        "get",
        "orders",
        "--version",
        "1",
        "--url",
        url,
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["schema"], order_v1());
    // A breaking version fails with the rule named, exit code non-zero.
    let mut breaking = order_v1();
    breaking["required"] = json!(["id", "amount", "customer"]);
    let (ok, _, err) = cli(&[
        "schema",
        "put",
        "orders",
        "--schema",
        &breaking.to_string(),
        "--url",
        url,
    ]);
    assert!(!ok);
    assert!(err.contains("required-added"), "{err}");
    // Bound by a topic made with the CLI: delete is refused until the topic goes.
    let (ok, _, err) = cli(&[
        "topic",
        "create",
        "shop",
        "--schema",
        "order.created=orders",
        "--validate",
        "--url",
        url,
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["schema", "delete", "orders", "--url", url]);
    assert!(!ok);
    assert!(err.contains("schema_in_use"), "{err}");
    let (ok, _, err) = cli(&["topic", "delete", "shop", "--url", url]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["schema", "delete", "orders", "--url", url]);
    assert!(ok, "{err}");
    assert_eq!(out, "deleted schema orders");
    let (ok, out, _) = cli(&["schema", "list", "--url", url]);
    assert!(ok);
    assert_eq!(out, "no schemas");
}

/// Through a proxy over two nodes with no registry: a schema write reaches every node
/// (like a topic write), reads and validating publishes work through it.
#[tokio::test]
async fn schemas_through_a_proxy_reach_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let a = Meshd::start(
        &dir.path().join("a"),
        &["--cluster", "c1", "--node-id", "a"],
    );
    let b = Meshd::start(
        &dir.path().join("b"),
        &["--cluster", "c1", "--node-id", "b"],
    );
    let nodes = format!("{},{}", a.url, b.url);
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "c1",
            "--nodes",
            &nodes,
            "--no-auth",
        ],
        dir.path(),
    );
    let c = client();
    let (s, body) = put_schema(&c, &p.url, "orders", &order_v1().to_string()).await;
    assert!(s == 201 || s == 200, "{s} {body}");
    for n in [&a, &b] {
        let got = get_json(&c, &n.at("/v1/schemas/orders")).await;
        assert_eq!(got["version"], 1, "{got}");
    }
    let list = get_json(&c, &p.at("/v1/schemas")).await;
    assert_eq!(versions(&list, "orders"), [1]);
    create_topic(
        &c,
        &p.url,
        "shop",
        json!({"schemas": {"order.created": "orders"}, "validate": true}),
    )
    .await;
    let bad = event(
        "p1",
        "order.created",
        None,
        json!({"id": "a", "amount": -3}),
    );
    let (s, body) = post(
        &c,
        &p.at("/v1/topics/shop/events"),
        "application/cloudevents+json",
        bad.to_string(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (400, Some("/data/amount"))
    );
}

/// Schema discovery against the real binary: a topic created with `discover` infers a
/// schema per (source, type) from what it stores, a new shape makes a new version and a
/// known one does not, the inferred document is adopted into the registry as it is shown
/// (and then validates those events), through the API and the CLI.
#[tokio::test]
async fn discovery_infers_versions_per_source_and_type_and_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    let url = m.url.as_str();
    let (ok, _, err) = cli(&["topic", "create", "disc", "--discover", "--url", url]);
    assert!(ok, "{err}");
    create_topic(&c, url, "plain", json!({})).await;

    let order = |id: &str, source: &str, data: Value| {
        let mut e = event(id, "order.created", None, data);
        e["source"] = json!(source);
        e
    };
    let first = [
        order(
            "1",
            "/shop",
            json!({"id": "a", "amount": 3, "lines": [{"sku": "x", "qty": 1}]}),
        ),
        order(
            "2",
            "/shop",
            json!({"id": "b", "amount": 4.5, "lines": [], "note": "hi"}),
        ),
        order("3", "/other", json!({"ok": true})),
    ];
    publish(&c, url, "disc", &first).await;
    publish(&c, url, "plain", &first).await;
    let discovered = format!("{url}/v1/topics/disc/discovered");
    let wait_events = |source: &'static str, n: u64| {
        let (c, discovered) = (c.clone(), discovered.clone());
        async move {
            eventually(
                &format!("{n} events of {source} inferred"),
                std::time::Duration::from_secs(10),
                || async {
                    let list = get_json(&c, &discovered).await;
                    list["schemas"]
                        .as_array()?
                        .iter()
                        .find(|s| s["source"] == source)
                        .filter(|s| s["events"] == n)
                        .cloned()
                },
            )
            .await
        }
    };
    let shop = wait_events("/shop", 2).await;
    assert_eq!(shop["type"], "order.created");
    // The second event widened `amount` and added `note`: a second version.
    assert_eq!(shop["latest"], 2, "{shop}");
    assert_eq!(
        shop["schema"],
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "amount": {"type": "number"},
                "lines": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"qty": {"type": "integer"}, "sku": {"type": "string"}},
                    "required": ["qty", "sku"]
                }},
                "note": {"type": "string"}
            },
            "required": ["amount", "id", "lines"]
        })
    );
    wait_events("/other", 1).await;

    // A known shape makes no version; a new one does, and one (source, type) shows all.
    publish(
        &c,
        url,
        "disc",
        &[order(
            "4",
            "/shop",
            json!({"id": "c", "amount": 1, "lines": []}),
        )],
    )
    .await;
    wait_events("/shop", 3).await;
    publish(
        &c,
        url,
        "disc",
        &[order(
            "5",
            "/shop",
            json!({"id": "d", "amount": 1, "lines": [], "channel": "web"}),
        )],
    )
    .await;
    let shop = wait_events("/shop", 4).await;
    assert_eq!(shop["latest"], 3, "{shop}");
    let one = get_json(
        &c,
        &format!("{discovered}?source=%2Fshop&type=order.created"),
    )
    .await;
    let versions = one["schemas"][0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{one}");
    assert!(versions[2]["schema"]["properties"]["channel"].is_object());
    assert!(versions[1]["schema"]["properties"].get("channel").is_none());
    assert!(versions[0]["schema"]["properties"].get("note").is_none());

    // Bad asks get clear errors.
    let r = c
        .get(format!("{discovered}?source=%2Fshop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{discovered}?source=%2Fnone&type=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "discovered_not_found");
    let r = c
        .get(format!("{url}/v1/topics/plain/discovered"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "discovery_off");

    // The CLI lists them, and adopts one into the registry as shown.
    let (ok, out, err) = cli(&["schema", "discovered", "disc", "--url", url]);
    assert!(ok, "{err}");
    assert!(out.contains("/shop") && out.contains("/other"), "{out}");
    let (ok, out, err) = cli(&[
        "schema",
        "discovered",
        "disc",
        "--source",
        "/shop",
        "--type",
        "order.created",
        "--adopt",
        "orders",
        "--url",
        url,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("registered schema orders version 1"),
        "{out}"
    );
    let adopted = get_json(&c, &format!("{url}/v1/schemas/orders")).await;
    assert_eq!(adopted["schema"], shop["schema"]);
    // The adopted schema accepts what was seen and refuses what breaks it.
    create_topic(
        &c,
        url,
        "checked",
        json!({"schemas": {"order.created": "orders"}, "validate": true}),
    )
    .await;
    publish(&c, url, "checked", &first[..2]).await;
    let (s, body) = post(
        &c,
        &format!("{url}/v1/topics/checked/events"),
        "application/cloudevents+json",
        order("6", "/shop", json!({"id": 7, "amount": 1, "lines": []})).to_string(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["field"], "/data/id");

    // A deleted topic forgets what it discovered.
    let r = c
        .delete(format!("{url}/v1/topics/disc"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (ok, _, _) = cli(&["topic", "create", "disc", "--discover", "--url", url]);
    assert!(ok);
    let list = get_json(&c, &discovered).await;
    assert_eq!(list["schemas"], json!([]), "{list}");
}
