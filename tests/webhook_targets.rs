//! Webhook targets (issue: a webhook could call the mesh's own API). Real `meshd node`
//! processes: a subscription aimed at the node's own API, a metadata address or (on a
//! node without loopback allowed) any loopback sink is refused with 403 and nothing is
//! created; a subscription whose target becomes refused later dead-letters at push time
//! with the reason; a sink that redirects to the node's admin API is not followed.

mod common;

use std::time::Duration;

use common::{client, create_topic, drain, event, eventually, publish, subscribe, Meshd, Sink};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

fn hook(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "topic": "orders.a",
        "sink": {"webhook": {"url": url, "timeout_ms": 2000}},
        "delivery": {"max_attempts": 1, "dead_letter_topic": "orders.dlq"}
    })
}

async fn names(c: &reqwest::Client, base: &str) -> Vec<String> {
    let v = common::get_json(c, &format!("{base}/v1/subscriptions")).await;
    v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn webhooks_cannot_reach_the_mesh_or_metadata() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback sinks allowed (as in `meshd dev`): the node itself must still be refused.
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "orders.a", json!({})).await;
    let port = m.url.rsplit(':').next().unwrap().to_string();
    for target in [
        format!("http://127.0.0.1:{port}/v1/subscriptions"),
        format!("http://localhost:{port}/v1/admin/drain"),
        format!("http://127.0.0.2:{port}/v1/subscriptions"),
        format!("http://[::ffff:127.0.0.1]:{port}/v1/subscriptions"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://0.0.0.0:9/".to_string(),
    ] {
        let (status, body) = subscribe(&c, &m.url, hook("evil", &target)).await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(body["error"]["code"], "webhook_target_forbidden", "{body}");
        assert_eq!(body["error"]["field"], "sink.webhook.url", "{body}");
        // One of several member URLs is enough to refuse.
        let mut spec = hook("evil2", "http://127.0.0.1:9/ok");
        spec["sink"]["webhook"]["urls"] = json!([target]);
        let (status, _) = subscribe(&c, &m.url, spec).await;
        assert_eq!(status, 403, "{target}");
    }
    let (status, body) = subscribe(&c, &m.url, hook("bad", "http://no-such-host.invalid/x")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_webhook_target", "{body}");
    assert!(names(&c, &m.url).await.is_empty(), "nothing was created");
    let metrics = common::get_text(&c, &m.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_node_webhook_targets_refused_total{reason=\"component\"}"),
        "{metrics}"
    );

    // An ordinary loopback sink still works.
    let sink = Sink::start(|_, _| 200).await;
    let (status, body) = subscribe(&c, &m.url, hook("fine", &sink.url)).await;
    assert_eq!(status, 201, "{body}");
    publish(&c, &m.url, "orders.a", &[event("e1", "t", None, json!({}))]).await;
    eventually("delivered to the allowed sink", T, || async {
        sink.ids().contains(&"e1".to_string()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn production_default_refuses_loopback_and_push_time_checks_again() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(|_, _| 200).await;
    {
        // Created while loopback sinks are allowed...
        let mut m = Meshd::start(dir.path(), &[]);
        let c = client();
        create_topic(&c, &m.url, "orders.a", json!({})).await;
        let (status, body) = subscribe(&c, &m.url, hook("hook", &sink.url)).await;
        assert_eq!(status, 201, "{body}");
        publish(
            &c,
            &m.url,
            "orders.a",
            &[event("before", "t", None, json!({}))],
        )
        .await;
        eventually("delivered while allowed", T, || async {
            sink.ids().contains(&"before".to_string()).then_some(())
        })
        .await;
        assert!(m.terminate(), "clean stop (commits the delivered offset)");
    }
    // ...then the node restarts with the default rules (loopback refused).
    let m = Meshd::start_env(
        dir.path(),
        &[],
        &[("MESHD_WEBHOOK_ALLOW_LOOPBACK", "false")],
    );
    let c = client();
    let (status, body) = subscribe(&c, &m.url, hook("new", &sink.url)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{body}"
    );
    publish(
        &c,
        &m.url,
        "orders.a",
        &[event("after", "t", None, json!({}))],
    )
    .await;
    let (status, body) = subscribe(
        &c,
        &m.url,
        json!({"name": "dlq", "topic": "orders.dlq", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let dead = drain(&c, &m.url, "dlq", "default", 1).await;
    assert_eq!(dead[0]["event"]["id"], "after", "{dead:?}");
    let reason = dead[0]["event"]["deadletterreason"].as_str().unwrap();
    assert!(
        reason.contains("refused") && reason.contains("loopback"),
        "{reason}"
    );
    assert!(!sink.ids().contains(&"after".to_string()));
}

#[tokio::test]
async fn redirects_to_the_node_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let m = Meshd::start(dir.path(), &[]);
    let c = client();
    create_topic(&c, &m.url, "orders.a", json!({})).await;
    // A sink that answers 307 to the node's drain endpoint.
    let drain_url = m.at("/v1/admin/drain");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let to = drain_url.clone();
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [("location", to)],
                )
            }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (status, body) = subscribe(&c, &m.url, hook("redir", &redirector)).await;
    assert_eq!(status, 201, "{body}");
    publish(&c, &m.url, "orders.a", &[event("r1", "t", None, json!({}))]).await;
    let (status, _) = subscribe(
        &c,
        &m.url,
        json!({"name": "dlq", "topic": "orders.dlq", "sink": {"pull": {}}, "start": "earliest"}),
    )
    .await;
    assert_eq!(status, 201);
    let dead = drain(&c, &m.url, "dlq", "default", 1).await;
    assert_eq!(dead[0]["event"]["deadletterstatus"], 307, "{dead:?}");
    // The node was not drained: it still accepts publishes.
    publish(&c, &m.url, "orders.a", &[event("r2", "t", None, json!({}))]).await;
    let ready = c.get(m.at("/readyz")).send().await.unwrap().status();
    assert_eq!(ready, 200);
    server.abort();
}
