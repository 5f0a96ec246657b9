//! Federation across real `meshd node --topology` processes on loopback: interest
//! filtering at the source, exact delivery per filter, per-link counters, and multi-hop
//! delivery through an intermediate cluster without loops.

mod common;
mod federation_support;

use std::time::Duration;

use common::{event, eventually, publish, Sink};
use federation_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_a_each_subscriber_gets_exactly_its_matching_events() {
    let files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("a", "c", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    let cc = files.start("c");
    for n in [&a, &b, &cc] {
        topic(&c, n, "orders", 2).await;
        topic(&c, n, "quiet", 1).await;
    }
    let sink_b = Sink::start(|_, _| 200).await;
    let sink_c = Sink::start(|_, _| 200).await;
    subscribe(
        &c,
        &b,
        "b-created",
        "orders",
        Some(json!({"exact": {"type": "created"}})),
        &sink_b.url,
    )
    .await;
    subscribe(
        &c,
        &cc,
        "c-paid",
        "orders",
        Some(json!({"exact": {"type": "paid"}})),
        &sink_c.url,
    )
    .await;
    wait_connected(&c, &a, "b").await;
    wait_connected(&c, &a, "c").await;
    wait_interest(&c, &a, "b", "b", "orders").await;
    wait_interest(&c, &a, "c", "c", "orders").await;

    let mut events = Vec::new();
    for i in 0..60 {
        let ty = ["created", "paid", "shipped"][i % 3];
        events.push(event(
            &format!("e{i}"),
            ty,
            Some(&format!("k{}", i % 5)),
            json!({"i": i}),
        ));
    }
    publish(&c, &a.url, "orders", &events).await;
    let quiet: Vec<_> = (0..20)
        .map(|i| event(&format!("q{i}"), "created", None, json!({})))
        .collect();
    publish(&c, &a.url, "quiet", &quiet).await;

    let want_b: Vec<String> = (0..60)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("e{i}"))
        .collect();
    let want_c: Vec<String> = (0..60)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("e{i}"))
        .collect();
    eventually(
        "b gets the created events",
        Duration::from_secs(20),
        || async { (unique_ids(&sink_b).len() >= want_b.len()).then_some(()) },
    )
    .await;
    eventually(
        "c gets the paid events",
        Duration::from_secs(20),
        || async { (unique_ids(&sink_c).len() >= want_c.len()).then_some(()) },
    )
    .await;
    let mut wb = want_b.clone();
    wb.sort();
    let mut wc = want_c.clone();
    wc.sort();
    assert_eq!(unique_ids(&sink_b), wb);
    assert_eq!(unique_ids(&sink_c), wc);
    // The events carry their origin.
    let r = sink_b.received();
    assert_eq!(r[0].header("ce-meshdorigin"), Some("a"));
    assert_eq!(r[0].header("ce-meshdpath"), Some("a,b"));

    // Filter at the source: only the matching events crossed each link, and nothing of
    // the topic nobody subscribed to.
    eventually("link counters settle", Duration::from_secs(10), || async {
        let lb = link(&c, &a, "b").await;
        let lc = link(&c, &a, "c").await;
        (lb["events_sent"] == 20
            && lc["events_sent"] == 20
            && lb["lag_events"] == 0
            && lc["lag_events"] == 0)
            .then_some(())
    })
    .await;
    let lb = link(&c, &a, "b").await;
    assert_eq!(lb["events_received"], 0, "nothing flows back: {lb}");
    let bq = c
        .get(b.at("/v1/topics/quiet"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        bq["partitions"]["0"]["end"], 0,
        "no quiet event reached b: {bq}"
    );
    // Nothing loops back to a.
    let la_from_b = link(&c, &b, "a").await;
    assert_eq!(la_from_b["events_sent"], 0, "{la_from_b}");
    let metrics = common::get_text(&c, &a.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_federation_link_events_sent_total{peer=\"b\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("meshd_federation_link_up{peer=\"c\"} 1"));
    let m = mesh(&c, &a).await;
    assert_eq!(m["mesh"], "test");
    assert_eq!(m["clusters"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_topology_delivers_through_the_middle_cluster() {
    let files = MeshFiles::new(&["a", "b", "c"], &[("a", "b", 1), ("b", "c", 1)], &[]);
    let c = common::client();
    let a = files.start("a");
    let b = files.start("b");
    let cc = files.start("c");
    for n in [&a, &b, &cc] {
        topic(&c, n, "orders", 1).await;
    }
    let sink_c = Sink::start(|_, _| 200).await;
    subscribe(&c, &cc, "c-all", "orders", None, &sink_c.url).await;
    wait_connected(&c, &b, "a").await;
    wait_connected(&c, &b, "c").await;
    // c's interest is relayed by b to a.
    wait_interest(&c, &a, "b", "c", "orders").await;
    let events: Vec<_> = (0..50)
        .map(|i| event(&format!("e{i}"), "t", Some("k"), json!({"i": i})))
        .collect();
    publish(&c, &a.url, "orders", &events).await;
    eventually(
        "c gets a's events through b",
        Duration::from_secs(20),
        || async { (unique_ids(&sink_c).len() >= 50).then_some(()) },
    )
    .await;
    // Order per partition key holds across two links.
    let ids = sink_c.ids();
    let want: Vec<String> = (0..50).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, want);
    let r = sink_c.received();
    assert_eq!(r[0].header("ce-meshdpath"), Some("a,b,c"));
    // b stored them but never sent them back to a; c never sent them back to b.
    let ba = link(&c, &b, "a").await;
    assert_eq!(ba["events_sent"], 0, "{ba}");
    let cb = link(&c, &cc, "b").await;
    assert_eq!(cb["events_sent"], 0, "{cb}");
    let m = mesh(&c, &a).await;
    assert_eq!(m["routes"]["c"], json!(["a", "b", "c"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_takes_the_cheapest_path_and_reroutes_when_a_cluster_dies() {
    // a—b—c cost 2, a—c cost 10: a reaches c through b until b dies.
    let files = triangle();
    let c = common::client();
    let sink = Sink::start(|_, _| 200).await;
    let (a, mut b, _cc) = start_triangle(
        &c,
        &files,
        1,
        &webhook_subscription("all", "orders", &sink.url),
    )
    .await;
    let first: Vec<_> = (0..30)
        .map(|i| event(&format!("e{i:03}"), "t", None, json!({})))
        .collect();
    publish(&c, &a.url, "orders", &first).await;
    eventually(
        "c gets the first events",
        Duration::from_secs(15),
        || async { (unique_ids(&sink).len() >= 30).then_some(()) },
    )
    .await;
    let paths: Vec<String> = sink
        .received()
        .iter()
        .map(|r| {
            format!(
                "{:?} {:?}",
                r.header("ce-meshdpath"),
                r.header("ce-meshdpos")
            )
        })
        .collect();
    assert!(
        sink.received()
            .iter()
            .all(|r| r.header("ce-meshdpath") == Some("a,b,c")),
        "{paths:?}"
    );
    assert_eq!(
        link(&c, &a, "c").await["events_sent"],
        0,
        "the expensive direct link stayed idle"
    );

    b.kill9();
    // c notices b is gone and announces its interest to a directly.
    wait_interest(&c, &a, "c", "c", "orders").await;
    let second: Vec<_> = (30..60)
        .map(|i| event(&format!("e{i:03}"), "t", None, json!({})))
        .collect();
    publish(&c, &a.url, "orders", &second).await;
    eventually(
        "c gets the rest over the direct link",
        Duration::from_secs(15),
        || async { (unique_ids(&sink).len() >= 60).then_some(()) },
    )
    .await;
    let mut want: Vec<String> = (0..60).map(|i| format!("e{i:03}")).collect();
    want.sort();
    assert_eq!(unique_ids(&sink), want);
    let late = sink
        .received()
        .into_iter()
        .find(|r| r.header("ce-id") == Some("e059"))
        .unwrap();
    assert_eq!(late.header("ce-meshdpath"), Some("a,c"));
}
