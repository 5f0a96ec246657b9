//! The mesh's topic catalog across real `meshd node --topology` processes: a topic made
//! in one cluster is made in every cluster the policy allows (through relays too), a
//! subscription anywhere needs no manual step, a delete at the owner reaches the copies
//! (a copy still read by subscriptions is kept until they go), and concurrent makes with
//! different configurations resolve the same way everywhere and are shown.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish};
use federation_support::*;
use serde_json::{json, Value};

async fn wait_no_topic(c: &reqwest::Client, node: &common::Meshd, topic: &str) {
    eventually(
        &format!("topic {topic} gone"),
        Duration::from_secs(15),
        || async {
            topic_partitions(c, node, topic)
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_made_in_one_cluster_reaches_the_mesh_and_its_delete_follows() {
    // A line: c learns of a's topic through b.
    let files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    let cc = files.start("c");
    topic(&c, &a, "orders", 3).await;
    wait_topic(&c, &b, "orders", 3).await;
    wait_topic(&c, &cc, "orders", 3).await;

    // A subscription in c works with no manual step, and gets a's events.
    pull_subscription(&c, &cc, "pc", "orders").await;
    wait_interest(&c, &a, "b", "c", "orders").await;
    let events: Vec<Value> = (0..30)
        .map(|i| event(&format!("e{i:02}"), "t", Some(&format!("k{i}")), json!({})))
        .collect();
    publish(&c, &a.url, "orders", &events).await;
    let pulled = common::drain(&c, &cc.url, "pc", "x", 30).await;
    assert_eq!(pulled.len(), 30);

    // The owner is a, everywhere, and nothing is in conflict.
    for n in [&a, &b, &cc] {
        let m = mesh(&c, n).await;
        assert_eq!(m["catalog"]["conflicts"], json!([]), "{m}");
        assert!(m["catalog"]["topics"].as_u64().unwrap() >= 1, "{m}");
    }

    // Deleted at its owner: b's copy goes; c's copy is kept while its subscription
    // reads it, and goes once that subscription is deleted.
    let r = c.delete(a.at("/v1/topics/orders")).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    wait_no_topic(&c, &b, "orders").await;
    eventually(
        "c keeps its copy as an orphan",
        Duration::from_secs(15),
        || async {
            let m = mesh(&c, &cc).await;
            (m["catalog"]["orphans"] == json!(["orders"])).then_some(())
        },
    )
    .await;
    assert_eq!(topic_partitions(&c, &cc, "orders").await, Some(3));
    let r = c
        .delete(cc.at("/v1/subscriptions/pc"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_no_topic(&c, &cc, "orders").await;
    // Not made again anywhere (a copy deleted by the catalog is not a new topic).
    assert_eq!(topic_partitions(&c, &a, "orders").await, None);
    assert_eq!(topic_partitions(&c, &b, "orders").await, None);

    // Made again at a: a new life, made everywhere again.
    topic(&c, &a, "orders", 2).await;
    wait_topic(&c, &b, "orders", 2).await;
    wait_topic(&c, &cc, "orders", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_makes_resolve_the_same_everywhere_and_are_shown() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    // Made in both, with different partition counts, before they talk.
    topic(&c, &a, "dup", 2).await;
    topic(&c, &b, "dup", 4).await;
    wait_connected(&c, &a, "b").await;
    let owner = |m: &Value| m["catalog"]["conflicts"][0]["owner"].clone();
    let (ma, mb) = eventually(
        "both show the conflict",
        Duration::from_secs(15),
        || async {
            let ma = mesh(&c, &a).await;
            let mb = mesh(&c, &b).await;
            let shown = |m: &Value| {
                m["catalog"]["conflicts"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
            };
            (shown(&ma) && shown(&mb)).then_some((ma, mb))
        },
    )
    .await;
    assert_eq!(owner(&ma), owner(&mb), "a: {ma}\nb: {mb}");
    let metrics = c
        .get(a.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("meshd_federation_catalog_conflicts 1"),
        "{metrics}"
    );
    // Each side kept serving its own copy as it was.
    assert_eq!(topic_partitions(&c, &a, "dup").await, Some(2));
    assert_eq!(topic_partitions(&c, &b, "dup").await, Some(4));
}
