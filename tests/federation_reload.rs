//! Hot reload of the topology file: a new link joins without restarts, a removed link is
//! closed, a bad file changes nothing.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish, Sink};
use federation_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_changes_apply_without_restart_and_bad_files_change_nothing() {
    let mut files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)], &[]);
    let c = common::client();
    let log = files.dir.path().join("a.log");
    let a = files.start_custom("a", &files.certs, &files.topology, Some(&log));
    let b = files.start("b");
    let cc = files.start("c");
    wait_connected(&c, &a, "b").await;
    wait_connected(&c, &b, "c").await;
    let digest_before = mesh(&c, &a).await["digest"].clone();

    // A bad file: refused, nothing changes.
    std::fs::write(
        &files.topology,
        "[mesh]\nname = \"test\"\n[[link]]\nbetween = [\"a\", \"nope\"]\n",
    )
    .unwrap();
    eventually(
        "a logged the refused file",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("keeping the current topology")
                .then_some(())
        },
    )
    .await;
    assert_eq!(mesh(&c, &a).await["digest"], digest_before);
    assert_eq!(link(&c, &a, "b").await["state"], "connected");

    // Add a—c, remove b—c.
    files.links = vec![("a".into(), "b".into(), 1), ("a".into(), "c".into(), 1)];
    files.write_topology();
    wait_connected(&c, &a, "c").await;
    eventually(
        "b dropped its link to c",
        Duration::from_secs(10),
        || async { link(&c, &b, "c").await.is_null().then_some(()) },
    )
    .await;
    assert_ne!(mesh(&c, &a).await["digest"], digest_before);
    assert_eq!(mesh(&c, &cc).await["routes"]["b"], json!(["c", "a", "b"]));

    // Traffic takes the new link.
    topic(&c, &a, "orders", 1).await;
    topic(&c, &cc, "orders", 1).await;
    let sink = Sink::start(|_, _| 200).await;
    subscribe(&c, &cc, "all", "orders", None, &sink.url).await;
    wait_interest(&c, &a, "c", "c", "orders").await;
    let events: Vec<_> = (0..20)
        .map(|i| event(&format!("e{i}"), "t", None, json!({})))
        .collect();
    publish(&c, &a.url, "orders", &events).await;
    eventually(
        "c gets a's events over the new link",
        Duration::from_secs(15),
        || async { (unique_ids(&sink).len() >= 20).then_some(()) },
    )
    .await;
    assert_eq!(sink.received()[0].header("ce-meshdpath"), Some("a,c"));
}
