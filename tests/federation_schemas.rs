//! The schema registry across real `meshd node --topology` processes: a schema put in one
//! cluster reaches every cluster (through a relay too), a topic replicated with bindings
//! validates in every cluster with the same answer, a new version made elsewhere comes
//! back, a delete reaches every cluster, and all of it survives a restart.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, get_json, publish};
use federation_support::*;
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

async fn put_schema(c: &reqwest::Client, node: &common::Meshd, name: &str, doc: &Value) -> Value {
    let r = c
        .put(node.at(&format!("/v1/schemas/{name}")))
        .json(doc)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status.is_success(), "put schema {name}: {body}");
    body
}

/// The versions `node` has of schema `name` (empty when it has none).
async fn versions(c: &reqwest::Client, node: &common::Meshd, name: &str) -> Vec<u64> {
    let list = get_json(c, &node.at("/v1/schemas")).await;
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

async fn wait_versions(c: &reqwest::Client, node: &common::Meshd, name: &str, want: &[u64]) {
    eventually(
        &format!("{} has schema {name} versions {want:?}", node.url),
        Duration::from_secs(20),
        || async { (versions(c, node, name).await == want).then_some(()) },
    )
    .await;
}

/// Publishes one event and answers the status and body.
async fn try_publish(
    c: &reqwest::Client,
    node: &common::Meshd,
    topic: &str,
    e: &Value,
) -> (u16, Value) {
    let r = c
        .post(node.at(&format!("/v1/topics/{topic}/events")))
        .header("content-type", "application/cloudevents+json")
        .body(e.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_replicate_across_the_mesh_validate_everywhere_and_survive_a_restart() {
    // A line: c learns of a's schema through b.
    let files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let mut b = files.start("b");
    let cc = files.start("c");

    // A schema put in a, a topic bound to it in a: both reach c.
    put_schema(&c, &a, "orders", &order_v1()).await;
    put_schema(&c, &a, "audit", &json!({"type": "object"})).await;
    common::create_topic(
        &c,
        &a.url,
        "shop",
        json!({"partitions": 2, "schemas": {"order.created": "orders"}, "validate": true}),
    )
    .await;
    wait_versions(&c, &cc, "orders", &[1]).await;
    wait_topic(&c, &cc, "shop", 2).await;
    let shown = get_json(&c, &cc.at("/v1/schemas/orders")).await;
    assert_eq!(shown["schema"], order_v1(), "{shown}");
    assert_eq!(shown["uri"], "meshd:schemas/orders/v1");

    // An invalid event is refused in c exactly as in a; a valid one is stored and
    // stamped with the version's URI.
    let bad = event(
        "bad1",
        "order.created",
        None,
        json!({"id": "x", "amount": -3}),
    );
    let (sa, body_a) = try_publish(&c, &a, "shop", &bad).await;
    let (sc, body_c) = try_publish(&c, &cc, "shop", &bad).await;
    assert_eq!((sa, sc), (400, 400), "a: {body_a}\nc: {body_c}");
    assert_eq!(body_c["error"]["code"], "schema_violation", "{body_c}");
    assert_eq!(body_c["error"], body_a["error"]);
    publish(
        &c,
        &cc.url,
        "shop",
        &[event(
            "ok1",
            "order.created",
            Some("k"),
            json!({"id": "x", "amount": 3}),
        )],
    )
    .await;

    // A new version made in b reaches a and c; c then checks against it.
    let mut v2 = order_v1();
    v2["properties"]["note"] = json!({"type": "string", "maxLength": 3});
    let made = put_schema(&c, &b, "orders", &v2).await;
    assert_eq!(made["version"], 2, "{made}");
    wait_versions(&c, &a, "orders", &[1, 2]).await;
    wait_versions(&c, &cc, "orders", &[1, 2]).await;
    let long_note = event(
        "bad2",
        "order.created",
        None,
        json!({"id": "x", "amount": 1, "note": "too long"}),
    );
    let (s, body) = try_publish(&c, &cc, "shop", &long_note).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["field"], "/data/note", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(schema orders v2, rule maxLength)"),
        "{body}"
    );

    // Deleted in c (not where it was made): deleted everywhere.
    let r = c.delete(cc.at("/v1/schemas/audit")).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    wait_versions(&c, &a, "audit", &[]).await;
    wait_versions(&c, &b, "audit", &[]).await;

    // b goes down; a makes v3 and registers audit again meanwhile.
    assert!(b.terminate());
    let mut v3 = v2.clone();
    v3["properties"]["channel"] = json!({"type": "string"});
    put_schema(&c, &a, "orders", &v3).await;
    put_schema(
        &c,
        &a,
        "audit",
        &json!({"type": "object", "title": "again"}),
    )
    .await;
    // b restarts alone: what it had is kept (and enforced).
    let (mut a, mut cc) = (a, cc);
    assert!(a.terminate() && cc.terminate());
    let b = files.start("b");
    assert_eq!(versions(&c, &b, "orders").await, vec![1, 2]);
    assert!(versions(&c, &b, "audit").await.is_empty());
    let (s, body) = try_publish(&c, &b, "shop", &long_note).await;
    assert_eq!(s, 400, "{body}");
    // The others come back: b and c catch up with a.
    let a = files.start("a");
    let cc = files.start("c");
    wait_versions(&c, &b, "orders", &[1, 2, 3]).await;
    wait_versions(&c, &cc, "orders", &[1, 2, 3]).await;
    wait_versions(&c, &cc, "audit", &[1]).await;
    let again = get_json(&c, &cc.at("/v1/schemas/audit")).await;
    assert_eq!(again["schema"]["title"], "again", "{again}");

    // Nothing keeps changing once in step: the mesh's schema catalog holds the two
    // schemas everywhere, and a's versions are the ones it made.
    for n in [&a, &b, &cc] {
        let metrics = common::get_text(&c, &n.at("/metrics")).await;
        assert!(
            metrics.contains("meshd_federation_catalog_schemas 2"),
            "{}",
            metrics
                .lines()
                .filter(|l| l.contains("catalog"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let v3_at_c = get_json(&c, &cc.at("/v1/schemas/orders?version=3")).await;
    assert_eq!(v3_at_c["schema"], v3);
}
