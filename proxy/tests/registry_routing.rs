//! Registry-driven routing: a proxy following an in-process registry routes a producer
//! group to the node the placement names, follows a new placement epoch, drops a node that
//! leaves, and registers itself as a proxy member. The nodes are stub HTTP servers that
//! acknowledge every publish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_proxy::{Proxy, ProxyConfig};
use meshd_scheduler::registry::{
    InProcessRegistry, LeaseConfig, MemberInfo, Placement, Registry, Role,
};

async fn stub_node() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/topics/{topic}/events",
        axum::routing::post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"positions":[{"partition":0,"offset":0}]}"#,
            )
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

async fn served_by(c: &reqwest::Client, proxy: &str, group: &str) -> String {
    let r = c
        .post(format!("{proxy}/v1/topics/t/events"))
        .header("content-type", "application/cloudevents+json")
        .header("meshd-producer-group", group)
        .body(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["meshd-node"].to_str().unwrap().to_string()
}

async fn eventually_served_by(c: &reqwest::Client, proxy: &str, group: &str, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = served_by(c, proxy, group).await;
        if got == node {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} still served by {got}, not {node}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_and_membership_drive_routing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url_a, _a) = stub_node().await;
    let (url_b, _b) = stub_node().await;
    let registry = Arc::new(InProcessRegistry::new("c1"));
    let lease = LeaseConfig::with_ttl(Duration::from_secs(5));
    let _ha = registry
        .register(MemberInfo::new(Role::Node, "a", url_a.clone()), lease)
        .await
        .unwrap();
    let hb = registry
        .register(MemberInfo::new(Role::Node, "b", url_b.clone()), lease)
        .await
        .unwrap();

    let mut cfg = ProxyConfig::new("c1", "p1");
    cfg.probe_interval = Duration::from_millis(50);
    let proxy = Proxy::new(cfg, Vec::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let _member = meshd_proxy::follow_registry(&proxy, registry.clone(), &url)
        .await
        .unwrap();
    let routing = proxy.routing();
    tokio::spawn(proxy.serve(listener, std::future::pending()));
    let c = reqwest::Client::new();

    // The proxy registered itself.
    let members = registry.list_members().await.unwrap();
    assert!(members
        .iter()
        .any(|m| m.role == Role::Proxy && m.id == "p1" && m.http_addr == url));

    // Both nodes known; without placement, the ring decides.
    let deadline = Instant::now() + Duration::from_secs(5);
    while routing.nodes().len() < 2 {
        assert!(Instant::now() < deadline, "nodes not learned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = served_by(&c, &url, "g1").await;
    assert!(first == "a" || first == "b");

    // Placement names a node: it wins; a new epoch moves the group.
    let other = if first == "a" { "b" } else { "a" };
    let p1 = Placement {
        epoch: 1,
        producer_groups: [("g1".to_string(), other.to_string())].into(),
        consumer_groups: Default::default(),
    };
    registry.put_placement_if(None, &p1).await.unwrap();
    eventually_served_by(&c, &url, "g1", other).await;
    let p2 = Placement {
        epoch: 2,
        producer_groups: [("g1".to_string(), "b".to_string())].into(),
        consumer_groups: Default::default(),
    };
    registry.put_placement_if(Some(1), &p2).await.unwrap();
    eventually_served_by(&c, &url, "g1", "b").await;
    assert_eq!(routing.placement_epoch(), Some(2));

    // b leaves the cluster: its groups go to a.
    hb.deregister().await.unwrap();
    eventually_served_by(&c, &url, "g1", "a").await;
    assert_eq!(routing.nodes().len(), 1);
}
