//! `/openapi.json` documents every route of the node, and only those: the router's paths and
//! the document's paths are compared both ways, and every documented method is answered by
//! the router while every other method is refused with 405. A new route without docs (or
//! docs of a route that is gone) fails here.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use meshd_node::server::{Node, NodeConfig};
use tower::ServiceExt;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn document() -> serde_json::Value {
    serde_json::from_str(meshd_node::console::OPENAPI_JSON).expect("openapi.json is JSON")
}

/// A concrete path for a templated one (`{topic}` → `x`; a link action must be one).
fn concrete(path: &str) -> String {
    path.replace("{action}", "pause")
        .split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(node: &Arc<Node>, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let resp = meshd_node::http::router(node.clone())
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_router() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let routed: BTreeSet<String> = meshd_node::http::route_paths()
        .into_iter()
        .map(str::to_string)
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let gone: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from node/console/openapi.json: {undocumented:?}"
    );
    assert!(
        gone.is_empty(),
        "openapi.json documents paths the router does not serve: {gone:?}"
    );
}

#[test]
fn every_schema_reference_resolves() {
    let doc = document();
    let text = serde_json::to_string(&doc).unwrap();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref to {name}");
    }
}

#[tokio::test]
async fn documented_methods_are_served_and_others_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(NodeConfig::new(dir.path()))
        .await
        .expect("open node");
    let doc = document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = concrete(path);
        for method in METHODS {
            let (status, body) = call(&node, method, &url).await;
            let code = body["error"]["code"].as_str().unwrap_or_default();
            if item.get(method).is_some() {
                assert!(
                    code != "not_found" && code != "method_not_allowed",
                    "{method} {path} is documented but the router answered {status} {code}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented but the router answered {status} {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn drill_reports_are_kept_and_bad_ones_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(NodeConfig::new(dir.path()))
        .await
        .expect("open node");
    let post = |body: String| {
        let node = node.clone();
        async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/drills/reports")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            meshd_node::http::router(node)
                .oneshot(req)
                .await
                .unwrap()
                .status()
        }
    };
    let good = r#"{"scenario": "link-partition", "mode": "mesh", "acknowledged": 4,
        "keys": 2, "lost": 0, "duplicated": 0, "reordered": 0, "clusters": {},
        "detection_ms": 12, "recovery_ms": 30, "duration_ms": 900, "notes": []}"#;
    assert_eq!(post(good.to_string()).await, StatusCode::CREATED);
    assert_eq!(
        post(r#"{"scenario": 1}"#.to_string()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(good.replace("link-partition", "")).await,
        StatusCode::BAD_REQUEST
    );
    let (status, list) = call(&node, "get", "/v1/drills/reports").await;
    assert_eq!(status, StatusCode::OK);
    let reports = list["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), 1, "the refused reports changed nothing");
    assert_eq!(reports[0]["report"]["scenario"], "link-partition");
    assert_eq!(reports[0]["report"]["detection_ms"], 12);
}

#[tokio::test]
async fn the_console_and_the_document_need_no_token_and_carry_a_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NodeConfig::new(dir.path());
    cfg.internal_token =
        Some(meshd_core::internal::InternalToken::new("0123456789abcdef0123456789").unwrap());
    let node = Node::open(cfg).await.expect("open node");
    for path in ["/ui/", "/ui/console.js", "/ui/console.css", "/openapi.json"] {
        let resp = meshd_node::http::router(node.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    }
    let (status, _) = call(&node, "get", "/v1/drills/reports").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the API still needs it");
    let resp = meshd_node::http::router(node.clone())
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.status().is_redirection());
    assert_eq!(resp.headers()["location"], "/ui/");
}
