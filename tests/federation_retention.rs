//! Age retention and federation, with real processes (guarantee 3: a partition between
//! clusters delays replication and never loses events): a link's durable cursor holds
//! age retention of what the link has not sent yet, a topic no peer wants is trimmed as
//! usual, and a link removed from the topology releases its hold.
//!
//! Retention runs every second (`--retention-interval-secs 1`) on topics kept 2 s. The
//! partition scenario runs with a's node on the embedded store and on Pulsar (a real
//! `pulsar-lite` broker).

#[path = "../node/tests/store_pulsar_common/mod.rs"]
mod broker;
mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish, Meshd, Sink};
use federation_support::*;
use serde_json::{json, Value};

const RETENTION: &[&str] = &["--retention-interval-secs", "1"];
const WAIT: Duration = Duration::from_secs(15);

async fn publish_ids(
    c: &reqwest::Client,
    node: &Meshd,
    topic: &str,
    range: std::ops::Range<usize>,
) {
    let events: Vec<_> = range
        .map(|i| {
            event(
                &format!("e{i:05}"),
                "t",
                Some(&format!("k{}", i % 5)),
                json!({ "i": i }),
            )
        })
        .collect();
    for chunk in events.chunks(20) {
        publish(c, &node.url, topic, chunk).await;
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    let mut v: Vec<String> = range.map(|i| format!("e{i:05}")).collect();
    v.sort();
    v
}

/// (records still stored, records ever appended) of a topic, over its partitions.
async fn kept(c: &reqwest::Client, node: &Meshd, topic: &str) -> (u64, u64) {
    let info: Value = common::get_json(c, &node.at(&format!("/v1/topics/{topic}"))).await;
    let parts = info["partitions"].as_object().expect("partitions");
    let end: u64 = parts.values().map(|p| p["end"].as_u64().unwrap()).sum();
    let start: u64 = parts.values().map(|p| p["start"].as_u64().unwrap()).sum();
    (end - start, end)
}

/// A metric of the node (0 when absent).
async fn metric(c: &reqwest::Client, node: &Meshd, name: &str) -> f64 {
    let text = common::get_text(c, &node.at("/metrics")).await;
    text.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// The 50 unsent events of `orders` are kept (exactly, where offsets are dense).
fn check_kept((kept, end): (u64, u64), dense: bool) {
    if dense {
        assert_eq!((kept, end), (50, 60));
    } else {
        assert!(kept > 0 && end > 0, "kept {kept} below {end}");
    }
}

async fn aged_topic(c: &reqwest::Client, node: &Meshd, topic: &str, partitions: u32) {
    common::create_topic(
        c,
        &node.url,
        topic,
        json!({ "partitions": partitions, "retention": { "max_age_secs": 2 } }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_longer_than_retention_with_a_restart_loses_nothing() {
    partition_scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_longer_than_retention_loses_nothing_on_pulsar() {
    let broker = broker::Broker::start();
    partition_scenario(Some(&broker.url())).await;
}

/// a–b, b subscribes to a's `orders` (kept 2 s); the link is cut for longer than that
/// while a takes events, a restarts in the middle; after the heal every event reaches b.
/// `pulsar`: a's node uses that broker (offsets are sparse there: counts are checked as
/// "some kept" instead of exact numbers).
async fn partition_scenario(pulsar: Option<&str>) {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 1)], &["b"]);
    // a dials b through the forwarder.
    let fwd = UdpForwarder::start(files.advertised["b"], files.bind["b"]);
    let c = common::client();
    let mut a_args: Vec<&str> = RETENTION.to_vec();
    if let Some(url) = pulsar {
        a_args.extend(["--store", url]);
    }
    let dense = pulsar.is_none();
    let mut a = files.start_args("a", &a_args, None);
    let b = files.start_args("b", RETENTION, None);
    aged_topic(&c, &a, "orders", 2).await;
    // The control: kept 2 s too, wanted by no peer.
    aged_topic(&c, &a, "local", 1).await;
    topic(&c, &b, "orders", 2).await;
    let sink = Sink::start(|_, _| 200).await;
    subscribe(&c, &b, "all", "orders", None, &sink.url).await;
    wait_connected(&c, &a, "b").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    let cluster: Value = common::get_json(&c, &a.at("/v1/cluster")).await;
    assert_eq!(
        cluster["retention_holds"],
        json!(["__bridge/b"]),
        "{cluster}"
    );

    publish_ids(&c, &a, "orders", 0..10).await;
    eventually("the first 10 arrive", Duration::from_secs(15), || async {
        (unique_ids(&sink).len() >= 10).then_some(())
    })
    .await;
    eventually("a's cursor caught up", Duration::from_secs(10), || async {
        (link(&c, &a, "b").await["lag_events"] == 0).then_some(())
    })
    .await;

    fwd.cut();
    let cut_at = std::time::Instant::now();
    publish_ids(&c, &a, "orders", 10..60).await;
    publish_ids(&c, &a, "local", 0..20).await;
    // The control was published after the cut events: once retention has trimmed it, a
    // pass ran with every cut event past its age.
    eventually(
        "retention trims the topic no peer wants",
        Duration::from_secs(20),
        || async { (kept(&c, &a, "local").await.0 == 0).then_some(()) },
    )
    .await;
    let held = || async {
        (metric(&c, &a, "meshd_node_retention_held_partitions").await >= 1.0).then_some(())
    };
    eventually("a retention pass holds the unsent events", WAIT, held).await;
    // Exactly the 50 unsent events are kept: the 10 replicated ones were trimmed.
    check_kept(kept(&c, &a, "orders").await, dense);
    assert!(
        unique_ids(&sink).len() < 60,
        "the cut did not hold: {} events arrived",
        unique_ids(&sink).len()
    );
    eventually("a sees the link down", Duration::from_secs(15), || async {
        let l = link(&c, &a, "b").await;
        (l["state"] != "connected" && l["state"] != "stalled").then_some(())
    })
    .await;

    // a restarts during the partition (as after a crash, or a clock fixed by a restart):
    // it no longer knows b's interest; its durable cursors hold (retention also runs as
    // the node starts).
    a.kill9();
    let a = files.start_args("a", &a_args, None);
    let held = || async {
        (metric(&c, &a, "meshd_node_retention_held_partitions").await >= 1.0).then_some(())
    };
    eventually("after the restart a retention pass holds them", WAIT, held).await;
    check_kept(kept(&c, &a, "orders").await, dense);

    fwd.restore();
    eventually(
        "all 60 events arrive after the heal",
        Duration::from_secs(25),
        || async { (unique_ids(&sink).len() >= 60).then_some(()) },
    )
    .await;
    let partition = cut_at.elapsed();
    assert!(partition > Duration::from_secs(2), "{partition:?}");
    assert_eq!(unique_ids(&sink), ids(0..60), "no loss");
    // Once sent, the held events are trimmed like any other.
    eventually(
        "retention trims what the link has sent",
        Duration::from_secs(20),
        || async { (kept(&c, &a, "orders").await.0 == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        metric(&c, &a, "meshd_node_retention_held_records_dropped_total").await,
        0.0
    );
    eprintln!(
        "partition of {partition:?} over a 2 s retention ({}): 60 of 60 events arrived",
        if dense { "embedded" } else { "pulsar" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_removed_from_the_topology_releases_its_hold() {
    let mut files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("a", "c", 1)], &[]);
    let c = common::client();
    let a = files.start_args("a", RETENTION, None);
    let _b = files.start_args("b", RETENTION, None);
    let mut cc = files.start_args("c", RETENTION, None);
    aged_topic(&c, &a, "orders", 1).await;
    topic(&c, &cc, "orders", 1).await;
    pull_subscription(&c, &cc, "pull", "orders").await;
    wait_connected(&c, &a, "c").await;
    wait_interest(&c, &a, "c", "c", "orders").await;

    // c goes away for good: what a has not sent it yet is held past its age.
    cc.kill9();
    eventually("a sees the link down", Duration::from_secs(15), || async {
        let l = link(&c, &a, "c").await;
        (l["state"] != "connected" && l["state"] != "stalled").then_some(())
    })
    .await;
    publish_ids(&c, &a, "orders", 0..30).await;
    let published = std::time::Instant::now();
    eventually(
        "a retention pass holds the expired events",
        Duration::from_secs(20),
        || async {
            (published.elapsed() > Duration::from_secs(3)
                && metric(&c, &a, "meshd_node_retention_held_partitions").await >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(kept(&c, &a, "orders").await, (30, 30));

    // c leaves the topology: the link goes, and with it the hold.
    files.advertised.remove("c");
    files.links = vec![("a".into(), "b".into(), 1)];
    files.write_topology();
    eventually(
        "a dropped its link to c",
        Duration::from_secs(15),
        || async { link(&c, &a, "c").await.is_null().then_some(()) },
    )
    .await;
    eventually(
        "retention trims what only c wanted",
        Duration::from_secs(20),
        || async { (kept(&c, &a, "orders").await == (0, 30)).then_some(()) },
    )
    .await;
    let cluster: Value = common::get_json(&c, &a.at("/v1/cluster")).await;
    assert_eq!(
        cluster["retention_holds"],
        json!(["__bridge/b"]),
        "{cluster}"
    );
    // Released, not dropped past a hold.
    assert_eq!(
        metric(&c, &a, "meshd_node_retention_held_records_dropped_total").await,
        0.0
    );
}
