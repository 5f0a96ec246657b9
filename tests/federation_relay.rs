//! Replication policy on a relay: in the line A—B—C with a policy letting only C receive
//! `orders`, B passes A's events on to C without storing them in its own `orders` topic
//! (they wait in B's internal `__relay.orders` topic), and B's own subscriber gets nothing.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, stored_count};
use federation_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_not_allowed_by_the_policy_only_passes_events_on() {
    let files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)], &[]);
    let mut text = std::fs::read_to_string(&files.topology).unwrap();
    text.push_str("\n[[policy]]\ntopics = \"orders\"\nclusters = [\"c\"]\n");
    std::fs::write(&files.topology, text).unwrap();
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    let cc = files.start("c");
    for n in [&a, &b, &cc] {
        topic(&c, n, "orders", 1).await;
    }
    // b has its own subscriber on orders: the policy says b may not receive them.
    pull_subscription(&c, &b, "pb", "orders").await;
    pull_subscription(&c, &cc, "pc", "orders").await;
    wait_connected(&c, &a, "b").await;
    wait_connected(&c, &b, "c").await;
    wait_interest(&c, &a, "b", "c", "orders").await;

    let events: Vec<_> = (0..20)
        .map(|i| event(&format!("e{i:02}"), "t", Some("k"), json!({"i": i})))
        .collect();
    publish_batch(&c, &a, "orders", &events).await;
    eventually(
        "c stored a's 20 events",
        Duration::from_secs(20),
        || async { (stored_count(&c, &cc.url, "orders").await >= 20).then_some(()) },
    )
    .await;
    let pulled = common::drain(&c, &cc.url, "pc", "x", 20).await;
    assert_eq!(pulled.len(), 20);
    assert_eq!(pulled[0]["event"]["meshdpath"], "a,b,c", "{}", pulled[0]);

    assert_eq!(
        stored_count(&c, &b.url, "orders").await,
        0,
        "the relay did not store the events in its own topic"
    );
    assert_eq!(
        stored_count(&c, &b.url, "__relay.orders").await,
        20,
        "the relay kept them in its relay topic for its cursor to c"
    );
    let la = link(&c, &a, "b").await;
    assert_eq!(la["events_sent"], 20, "sent once, for c only: {la}");
    assert!(common::pull(&c, &b.url, "pb", "x", 10, 100)
        .await
        .is_empty());
    // b's relay cursor to c caught up.
    eventually(
        "b's link to c caught up",
        Duration::from_secs(10),
        || async { (link(&c, &b, "c").await["lag_events"] == 0).then_some(()) },
    )
    .await;
}

/// A client cannot steer loop prevention: mesh extensions on a published event (set by
/// hand, or copied by a consumer that republishes what it received) are removed at
/// publish, so the event is a new event of the cluster it was published in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_mesh_extensions_are_replaced_not_trusted() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    topic(&c, &a, "orders", 1).await;
    topic(&c, &b, "orders", 1).await;
    pull_subscription(&c, &b, "pb", "orders").await;
    pull_subscription(&c, &a, "pa", "orders").await;
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;

    // The path says b already has it, the origin says it is b's.
    let mut spoofed = event("s1", "t", Some("k"), json!({"i": 1}));
    spoofed["meshdpath"] = json!("b");
    spoofed["meshdorigin"] = json!("b");
    publish_batch(&c, &a, "orders", &[spoofed]).await;
    let pulled = common::drain(&c, &b.url, "pb", "x", 1).await;
    assert_eq!(pulled.len(), 1, "b got the event despite the copied path");
    assert_eq!(pulled[0]["event"]["meshdpath"], "a,b", "{}", pulled[0]);
    assert_eq!(pulled[0]["event"]["meshdorigin"], "a", "{}", pulled[0]);
    // In a itself the event carries no mesh extensions.
    let local = common::drain(&c, &a.url, "pa", "x", 1).await;
    assert!(local[0]["event"].get("meshdpath").is_none(), "{}", local[0]);
    assert!(
        local[0]["event"].get("meshdorigin").is_none(),
        "{}",
        local[0]
    );
}
