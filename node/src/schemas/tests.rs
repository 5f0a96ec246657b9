//! Registry and binding tests over an embedded store in a temporary directory (no sockets).

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudevents::event::{AttributesReader, Data};
use meshd_core::api::{Compatibility, TopicConfig};
use meshd_core::event::parse_structured;
use meshd_core::Event;
use serde_json::{json, Value};

use super::*;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

async fn store(dir: &tempfile::TempDir) -> Arc<EmbeddedStore> {
    EmbeddedStore::open_async(dir.path().join("store"), EmbeddedOptions::default())
        .await
        .unwrap()
}

fn order_v1() -> Value {
    json!({
        "type": "object",
        "properties": {"id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
        "required": ["id", "amount"]
    })
}

fn event(ty: &str, data: Value, extra: Value) -> Event {
    let mut body =
        json!({"specversion": "1.0", "id": "e1", "source": "/t", "type": ty, "data": data});
    if let Value::Object(m) = extra {
        body.as_object_mut().unwrap().extend(m);
    }
    parse_structured(&serde_json::to_vec(&body).unwrap()).unwrap()
}

fn orders_bound() -> BTreeMap<String, String> {
    [("order.created".to_string(), "orders".to_string())].into()
}

#[tokio::test]
async fn versions_are_made_once_per_document_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    let (new, v1) = reg
        .put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    assert!(new);
    assert_eq!(
        (v1.version, v1.uri.as_str()),
        (1, "meshd:schemas/orders/v1")
    );
    assert_eq!(v1.compatibility, Compatibility::Backward);
    let (again, same) = reg
        .put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    assert!(!again);
    assert_eq!(same.version, 1);
    let mut v2doc = order_v1();
    v2doc["properties"]["note"] = json!({"type": "string"});
    let (new, v2) = reg
        .put(&*s, None, "orders", v2doc.clone(), None)
        .await
        .unwrap();
    assert!(new);
    assert_eq!(v2.version, 2);
    drop(reg);
    s.close().await.unwrap();
    drop(s);

    let s = store(&dir).await;
    let reg = SchemaRegistry::load(&*s).await.unwrap();
    assert_eq!(reg.get("orders", None).unwrap().schema, v2doc);
    assert_eq!(reg.get("orders", Some(1)).unwrap().schema, order_v1());
    let list = reg.list();
    assert_eq!(list.schemas.len(), 1);
    assert_eq!(list.schemas[0].versions, vec![1, 2]);
    assert!(matches!(
        reg.get("orders", Some(3)),
        Err(SchemaError::VersionNotFound { version: 3, .. })
    ));
}

#[tokio::test]
async fn an_incompatible_version_is_refused_naming_the_rule_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    reg.put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    let mut stricter = order_v1();
    stricter["required"] = json!(["id", "amount", "customer"]);
    let err = reg
        .put(&*s, None, "orders", stricter.clone(), None)
        .await
        .unwrap_err();
    match &err {
        SchemaError::Incompatible { violation, .. } => {
            assert_eq!(violation.rule, "required-added")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reg.list().schemas[0].versions, vec![1]);
    assert_eq!(s.list_meta(SCHEMA_PREFIX).await.unwrap().len(), 1);
    // Mode none lets it through and is kept for later versions.
    let (_, v2) = reg
        .put(&*s, None, "orders", stricter, Some(Compatibility::None))
        .await
        .unwrap();
    assert_eq!((v2.version, v2.compatibility), (2, Compatibility::None));
}

#[tokio::test]
async fn hostile_documents_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    for doc in [
        json!("a string"),
        json!({"type": "no-such-type"}),
        json!({"minimum": "zero"}),
        json!({"$ref": "https://example.com/schema.json"}),
        json!({"$ref": "file:///etc/passwd"}),
        json!({"$ref": "other.json"}),
        json!({"$schema": "https://example.com/my-meta", "type": "object"}),
    ] {
        let err = reg
            .put(&*s, None, "x", doc.clone(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchemaError::BadSchema { .. }),
            "{doc}: {err:?}"
        );
    }
    assert!(reg.list().schemas.is_empty());
    assert!(s.list_meta(SCHEMA_PREFIX).await.unwrap().is_empty());
    // A local $ref resolves.
    let local = json!({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"});
    reg.put(&*s, None, "local", local, None).await.unwrap();
    let bad_name = reg
        .put(&*s, None, "../x", order_v1(), None)
        .await
        .unwrap_err();
    assert!(matches!(bad_name, SchemaError::Invalid(_)));
}

#[tokio::test]
async fn a_bound_schema_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    reg.put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    let config = TopicConfig {
        schemas: orders_bound(),
        validate: true,
        ..TopicConfig::default()
    };
    s.create_topic("shop", &config).await.unwrap();
    match reg.delete(&*s, None, "orders").await {
        Err(SchemaError::InUse { topics, .. }) => assert_eq!(topics, ["shop"]),
        other => panic!("{other:?}"),
    }
    assert!(reg.exists("orders"));
    s.delete_topic("shop").await.unwrap();
    reg.delete(&*s, None, "orders").await.unwrap();
    assert!(!reg.exists("orders"));
    assert!(s.list_meta(SCHEMA_PREFIX).await.unwrap().is_empty());
    assert!(reg
        .check_bindings(&orders_bound())
        .is_err_and(|e| e.field == "schemas.order.created"));
}

#[tokio::test]
async fn events_of_bound_types_are_checked_and_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    reg.put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    let b = orders_bound();

    let mut ok = vec![event(
        "order.created",
        json!({"id": "a", "amount": 3}),
        json!({}),
    )];
    reg.check_events(&b, &mut ok, false).unwrap();
    assert_eq!(
        ok[0].dataschema().map(|u| u.as_str()),
        Some("meshd:schemas/orders/v1")
    );

    let mut bad = vec![event(
        "order.created",
        json!({"id": "a", "amount": -3}),
        json!({}),
    )];
    let r = reg.check_events(&b, &mut bad, false).unwrap_err();
    assert_eq!(
        (r.code, r.field.as_str()),
        ("schema_violation", "/data/amount")
    );
    assert!(
        r.message
            .starts_with("/data/amount: -3 is less than the minimum of 0"),
        "{}",
        r.message
    );
    assert!(r.message.contains("rule minimum"), "{}", r.message);
    assert!(bad[0].dataschema().is_none());

    // In a batch the index leads the field, and nothing is stamped.
    let mut batch = vec![
        event("order.created", json!({"id": "a", "amount": 1}), json!({})),
        event("other", json!("anything"), json!({})),
        event("order.created", json!({"amount": 1}), json!({})),
    ];
    let r = reg.check_events(&b, &mut batch, true).unwrap_err();
    assert_eq!((r.code, r.field.as_str()), ("schema_violation", "[2]/data"));
    assert!(r.message.contains("required"), "{}", r.message);
    assert!(batch.iter().all(|e| e.dataschema().is_none()));

    // A bound schema this node lacks refuses its type (never lets it through).
    let lacking: BTreeMap<String, String> =
        [("order.created".to_string(), "ghost".to_string())].into();
    let mut e = vec![event(
        "order.created",
        json!({"id": "a", "amount": 1}),
        json!({}),
    )];
    let r = reg.check_events(&lacking, &mut e, false).unwrap_err();
    assert_eq!((r.code, r.field.as_str()), ("schema_not_found", "type"));

    // Unbound types pass untouched.
    let mut other = vec![event("other", json!({"amount": -1}), json!({}))];
    reg.check_events(&b, &mut other, false).unwrap();
    assert!(other[0].dataschema().is_none());
}

#[tokio::test]
async fn dataschema_names_a_version_of_the_bound_schema_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    reg.put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    let mut v2 = order_v1();
    v2["properties"]["amount"]["minimum"] = json!(-10);
    reg.put(&*s, None, "orders", v2, None).await.unwrap();
    let b = orders_bound();

    // -3 passes v2 but not v1: the pinned version is the one checked.
    let data = json!({"id": "a", "amount": -3});
    let mut latest = vec![event("order.created", data.clone(), json!({}))];
    reg.check_events(&b, &mut latest, false).unwrap();
    assert_eq!(
        latest[0].dataschema().map(|u| u.as_str()),
        Some("meshd:schemas/orders/v2")
    );
    let pin = json!({"dataschema": "meshd:schemas/orders/v1"});
    let mut pinned = vec![event("order.created", data.clone(), pin)];
    let r = reg.check_events(&b, &mut pinned, false).unwrap_err();
    assert!(r.message.contains("schema orders v1"), "{}", r.message);

    for foreign in [
        "https://example.com/orders.json",
        "meshd:schemas/other/v1",
        "meshd:schemas/orders/v9",
    ] {
        let mut e = vec![event(
            "order.created",
            data.clone(),
            json!({ "dataschema": foreign }),
        )];
        let r = reg.check_events(&b, &mut e, false).unwrap_err();
        assert_eq!(
            (r.code, r.field.as_str()),
            ("dataschema_mismatch", "dataschema")
        );
    }
}

#[tokio::test]
async fn non_json_data_of_a_bound_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let reg = SchemaRegistry::new();
    reg.put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    let mut e = event("order.created", json!(null), json!({}));
    e.set_data("text/plain", Data::String("not json".into()));
    let r = reg
        .check_events(&orders_bound(), &mut [e], false)
        .unwrap_err();
    assert_eq!((r.code, r.field.as_str()), ("data_not_json", "data"));
    // JSON carried as bytes is read as JSON.
    let mut e = event("order.created", json!(null), json!({}));
    e.set_data(
        "application/json",
        Data::Binary(br#"{"id":"a","amount":1}"#.to_vec()),
    );
    reg.check_events(&orders_bound(), &mut [e], false).unwrap();
}

#[tokio::test]
async fn replicated_versions_read_back_exactly_and_count_as_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    let writer = SchemaRegistry::new();
    writer
        .put(&*s, None, "orders", order_v1(), None)
        .await
        .unwrap();
    let mut v2 = order_v1();
    v2["properties"]["note"] = json!({"type": "string"});
    writer.put(&*s, None, "orders", v2, None).await.unwrap();
    let entry = writer.entries().1.remove("orders").unwrap();

    // Another cluster's registry takes the versions as they are (the mesh compares
    // what it reads back with what it applied: they must be equal, or it would take the
    // apply for a change of its own).
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = store(&dir2).await;
    let reader = SchemaRegistry::new();
    let before = reader.changes();
    reader
        .replicate(&*s2, None, "orders", Some(entry.clone()))
        .await
        .unwrap();
    assert!(reader.changes() > before);
    assert_eq!(reader.entries().1.remove("orders").unwrap(), entry);
    // And after reopening the store.
    let reopened = SchemaRegistry::load(&*s2).await.unwrap();
    assert_eq!(reopened.entries().1.remove("orders").unwrap(), entry);

    // A version that does not compile changes nothing.
    let mut bad = entry.clone();
    bad.versions[1].schema = json!({"type": 12});
    assert!(reader
        .replicate(&*s2, None, "orders", Some(bad))
        .await
        .is_err());
    assert_eq!(reader.entries().1.remove("orders").unwrap(), entry);

    // Deleted through the mesh.
    reader.replicate(&*s2, None, "orders", None).await.unwrap();
    assert!(reader.entries().1.is_empty());
    assert!(SchemaRegistry::load(&*s2)
        .await
        .unwrap()
        .entries()
        .1
        .is_empty());
}
