//! The node's cluster seams in process: the placement gate starts and stops delivery of a
//! group, pull on a group placed elsewhere is refused, a gated subscription pins its start
//! cursor at creation, and admin changes go to the catalog only after validation (bad
//! input and an unavailable catalog change nothing).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use meshd_core::api::{SubscriptionSpec, TopicConfig};
use meshd_node::server::{CatalogError, CatalogSink, Node, NodeConfig, NodeError};

#[derive(Default)]
struct FakeCatalog {
    writes: Mutex<Vec<String>>,
    down: std::sync::atomic::AtomicBool,
}

impl FakeCatalog {
    fn write(&self, what: String) -> Result<(), CatalogError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CatalogError::Registry("etcd unreachable".into()));
        }
        self.writes.lock().expect("lock").push(what);
        Ok(())
    }
}

#[async_trait]
impl CatalogSink for FakeCatalog {
    async fn put_topic(&self, name: &str, _: &TopicConfig) -> Result<(), CatalogError> {
        self.write(format!("put topic {name}"))
    }
    async fn delete_topic(&self, name: &str) -> Result<(), CatalogError> {
        self.write(format!("delete topic {name}"))
    }
    async fn create_subscription(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Option<SubscriptionSpec>, CatalogError> {
        self.write(format!("put sub {}", spec.name)).map(|_| None)
    }
    async fn delete_subscription(&self, name: &str) -> Result<(), CatalogError> {
        self.write(format!("delete sub {name}"))
    }
    async fn put_schema(
        &self,
        name: &str,
        _: &meshd_core::api::SchemaCatalogEntry,
    ) -> Result<(), CatalogError> {
        self.write(format!("put schema {name}"))
    }
    async fn delete_schema(&self, name: &str) -> Result<(), CatalogError> {
        self.write(format!("delete schema {name}"))
    }
}

fn spec(json: serde_json::Value) -> SubscriptionSpec {
    serde_json::from_value(json).expect("spec")
}

#[tokio::test]
async fn the_gate_and_the_catalog_seams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NodeConfig::new(dir.path());
    cfg.placement_gated = true;
    let node = Node::open(cfg).await.expect("open");
    let catalog = Arc::new(FakeCatalog::default());
    node.set_catalog(catalog.clone());

    assert!(node
        .admin_create_topic("orders", TopicConfig::default())
        .await
        .expect("topic"));
    // Events before the subscription exists are not part of it (start: latest).
    node.store
        .append(
            "orders",
            vec![meshd_node::store::AppendRecord {
                partition: 0,
                timestamp_ms: 1,
                payload: bytes::Bytes::from_static(b"x"),
            }],
        )
        .await
        .expect("append");
    let (created, _) = node
        .admin_create_subscription(spec(serde_json::json!({
            "name": "billing", "topic": "orders", "group": "bg", "sink": {"pull": {}}
        })))
        .await
        .expect("subscription");
    assert!(created);
    assert_eq!(
        *catalog.writes.lock().expect("lock"),
        vec![
            "put topic orders".to_string(),
            "put sub billing".to_string()
        ]
    );
    // Gated and not placed here: nothing runs, pull is refused, the start is pinned.
    assert!(node.delivery.running().await.is_empty());
    assert!(matches!(
        node.check_served("billing"),
        Err(NodeError::NotPlacedHere { .. })
    ));
    assert_eq!(
        node.store
            .committed_offset("billing", "orders", 0)
            .await
            .expect("offset"),
        Some(1)
    );
    assert_eq!(node.consumer_groups(), ["bg".to_string()].into());

    node.set_owned_groups(Some(["bg".to_string()].into())).await;
    assert_eq!(node.delivery.running().await, vec!["billing".to_string()]);
    assert!(node.check_served("billing").is_ok());
    node.set_owned_groups(Some(BTreeSet::new())).await;
    assert!(node.delivery.running().await.is_empty());
    node.set_owned_groups(None).await;
    assert_eq!(node.delivery.running().await, vec!["billing".to_string()]);

    // Bad input: refused before the catalog; catalog down: 503-class error, nothing local.
    let before = catalog.writes.lock().expect("lock").len();
    let bad = node
        .admin_create_subscription(spec(serde_json::json!({
            "name": "bad", "topic": "orders", "sink": {"webhook": {"url": "nope"}}
        })))
        .await;
    assert!(matches!(bad, Err(NodeError::Invalid(_))), "{bad:?}");
    let missing = node
        .admin_create_subscription(spec(serde_json::json!({
            "name": "ghost", "topic": "nope", "sink": {"pull": {}}
        })))
        .await;
    assert!(matches!(missing, Err(NodeError::TopicNotFound { .. })));
    assert_eq!(catalog.writes.lock().expect("lock").len(), before);
    catalog
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let down = node
        .admin_create_subscription(spec(serde_json::json!({
            "name": "audit", "topic": "orders", "sink": {"pull": {}}
        })))
        .await;
    assert!(matches!(down, Err(NodeError::CatalogUnavailable(_))));
    assert!(
        node.subscription("audit").is_err(),
        "nothing created locally"
    );
    assert!(matches!(
        node.admin_delete_subscription("billing").await,
        Err(NodeError::CatalogUnavailable(_))
    ));
    assert!(
        node.subscription("billing").is_ok(),
        "nothing deleted locally"
    );

    // Applying what the catalog holds is idempotent.
    catalog
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let s = node.subscription("billing").expect("spec");
    node.apply_subscription(s.clone()).await.expect("same spec");
    node.apply_topic("orders", TopicConfig::default())
        .await
        .expect("same topic");
    let mut changed = s.clone();
    changed.group = "other".into();
    node.apply_subscription(changed).await.expect("replaced");
    assert_eq!(node.subscription("billing").expect("spec").group, "other");
    node.shutdown().await;
}

/// Runs `req` through the node's HTTP router; the status and body of the answer.
async fn call_router(
    node: Arc<Node>,
    req: axum::http::Request<axum::body::Body>,
) -> (u16, axum::body::Bytes) {
    use tower::ServiceExt as _;
    let r = meshd_node::http::router(node)
        .oneshot(req)
        .await
        .expect("answer");
    let status = r.status().as_u16();
    let body = axum::body::to_bytes(r.into_body(), 1 << 16)
        .await
        .expect("body");
    (status, body)
}

/// `/readyz` tells the truth: a node whose registry lease is lost (it delivers nothing and
/// no proxy lists it) answers 503 `registry_lease_lost`, and ready again once it holds a
/// lease.
#[tokio::test]
async fn readyz_is_not_ready_while_the_lease_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NodeConfig::new(dir.path());
    cfg.placement_gated = true;
    let node = Node::open(cfg).await.expect("open");
    let probe = |node: Arc<Node>| async move {
        let req = axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .expect("request");
        let (status, body) = call_router(node, req).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(probe(node.clone()).await.0, 200);
    node.set_lease_lost(true);
    let (status, body) = probe(node.clone()).await;
    assert_eq!(status, 503);
    assert!(body.contains("registry_lease_lost"), "{body}");
    node.set_lease_lost(false);
    assert_eq!(probe(node.clone()).await.0, 200);
    node.shutdown().await;
}

/// A node serving on its peers' promises stays ready and says why; the promise endpoint
/// takes the internal token like every `/v1` route, answers 404 on a node that is no
/// cluster member, and passes the membership's answer through.
#[tokio::test]
async fn promises_and_degraded_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NodeConfig::new(dir.path());
    cfg.placement_gated = true;
    cfg.internal_token =
        Some(meshd_core::internal::InternalToken::new("0123456789abcdef0123").expect("token"));
    let node = Node::open(cfg).await.expect("open");
    let call = |node: Arc<Node>, req: axum::http::Request<axum::body::Body>| async move {
        let (status, body) = call_router(node, req).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (status, v)
    };
    let ask = |token: Option<&str>| {
        let mut b = axum::http::Request::post("/v1/cluster/promise")
            .header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header(meshd_core::internal::HEADER, t);
        }
        b.body(axum::body::Body::from(r#"{"from": "a"}"#))
            .expect("request")
    };
    let readyz = || {
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let (s, v) = call(node.clone(), ask(None)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("internal_token_required"))
    );
    let (s, v) = call(node.clone(), ask(Some("0123456789abcdef0123"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_a_cluster_member"))
    );
    node.set_promise(Arc::new(|from: &str| meshd_core::api::PromiseAnswer {
        node: format!("asked-by-{from}"),
        reaches_registry: false,
        promise_ms: Some(2000),
    }));
    let (s, v) = call(node.clone(), ask(Some("0123456789abcdef0123"))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        serde_json::from_value::<meshd_core::api::PromiseAnswer>(v).expect("answer"),
        meshd_core::api::PromiseAnswer {
            node: "asked-by-a".into(),
            reaches_registry: false,
            promise_ms: Some(2000)
        }
    );
    let bad = axum::http::Request::post("/v1/cluster/promise")
        .header(meshd_core::internal::HEADER, "0123456789abcdef0123")
        .body(axum::body::Body::from("{}"))
        .expect("request");
    assert_eq!(call(node.clone(), bad).await.0, 400);

    let (s, v) = call(node.clone(), readyz()).await;
    assert_eq!((s, v.get("degraded").is_none()), (200, true), "{v}");
    node.set_serving_on_promises(true);
    let (s, v) = call(node.clone(), readyz()).await;
    assert_eq!(s, 200);
    assert_eq!(v["degraded"]["code"], "registry_unreachable", "{v}");
    node.set_serving_on_promises(false);
    node.set_lease_lost(true);
    assert_eq!(call(node.clone(), readyz()).await.0, 503);
    node.shutdown().await;
}
