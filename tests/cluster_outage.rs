//! Registry outages on a real cluster (loopback): etcd (harness), three schedulers, nodes
//! `a` and `b` on one pulsar-lite broker, two proxies; a steady publish load through the
//! proxies and a CLUSTERING webhook subscription whose sink records which node pushed
//! every delivery (the `meshd-node` header). docs/scheduler.md, "Registry outages".
//!
//! 1. The whole registry is lost: etcd killed for 30 s (`MESHD_OUTAGE_SECS` changes it),
//!    then restarted on its data. The nodes serve on their peers' promises: `/readyz`
//!    answers 200 naming the degradation, an admin change through a proxy answers the
//!    node's own 503 `catalog_unavailable`, every acknowledged event is delivered, and the
//!    deliveries never switch back and forth between nodes (two nodes delivering the group
//!    at once would interleave). The longest delivery gap is printed, not asserted.
//! 2. One node cut off from etcd alone: etcd also listens on 127.0.0.2 and 127.0.0.3, node
//!    `a` reaches it on one and `b` on the other, and an nftables rule drops the owner's
//!    address. The others answer "I reach etcd", so the owner stops within its lease, the
//!    other node takes the group over, no overlap, every acknowledged event delivered.
//!    Skipped (with a message) when `nft` is not usable (not root, no nftables).
//!
//! Every process is killed by its guard, also on panic; the nftables table is deleted by
//! its guard.

mod cluster_support;
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::load::{
    assert_no_overlap, deliveries, longest_gap, missing_after, Load, Publisher,
};
use cluster_support::*;
use common::{client, Sink};
use meshd_scheduler::registry::testing::EtcdServer;
use serde_json::{json, Value};

const GROUP: &str = "outage";
const TOPIC: &str = "outage";

/// The topic and the webhook subscription of [`GROUP`] to `sink`, through `proxy`; waits
/// until a node owns the group and deliveries flow. Returns the owner.
async fn subscribe(cl: &Cluster, c: &reqwest::Client, proxy: &str, sink: &Sink) -> String {
    clustering_subscription(
        c,
        proxy,
        TOPIC,
        GROUP,
        json!({"webhook": {"urls": [sink.url]}}),
    )
    .await;
    assert!(
        until(Duration::from_secs(30), || async {
            cl.owner(c, GROUP).await.is_some()
        })
        .await,
        "the group is placed"
    );
    cl.owner(c, GROUP).await.expect("owner")
}

async fn readyz(c: &reqwest::Client, url: &str) -> (u16, Value) {
    match c.get(format!("{url}/readyz")).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_registry_outage_keeps_delivery_going_on_peer_promises() {
    let outage = Duration::from_secs(
        std::env::var("MESHD_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let mut cl = Cluster::start().await;
    let c = client();
    let sink = Sink::start(|_, _| 200).await;
    let proxies: Vec<String> = cl.proxies.iter().map(|p| p.url.clone()).collect();
    let owner = subscribe(&cl, &c, &proxies[0], &sink).await;
    let t0 = Instant::now();
    let publisher = Publisher::start(c.clone(), proxies.clone(), Load::steady(TOPIC));
    assert!(
        until(Duration::from_secs(30), || async { sink.ids().len() >= 50 }).await,
        "deliveries flow before the outage"
    );

    cl.etcd.kill();
    let down = Instant::now();
    eprintln!("etcd killed; owner {owner}");
    // Past every lease deadline (TTL 2 s): the nodes serve on promises and say so.
    tokio::time::sleep(Duration::from_secs(4).min(outage)).await;
    let mut degraded = BTreeMap::new();
    for n in &cl.nodes {
        degraded.insert(n.url.clone(), readyz(&c, &n.url).await);
    }
    // An admin change cannot be written: the proxy passes the node's own answer through.
    let admin = c
        .put(format!("{}/v1/topics/during-outage", proxies[0]))
        .json(&json!({}))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    let admin = match admin {
        Ok(r) => (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or_default(),
        ),
        Err(e) => (0, json!(e.to_string())),
    };
    let during = sink.ids().len();
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let delivered_during = sink.ids().len() - during;
    cl.etcd.restart().await.expect("etcd back");
    let up = Instant::now();
    eprintln!("etcd back after {:?}", up - down);
    // Some load after the outage, then every acknowledged event must arrive.
    let settled = publisher.acked() + 100;
    assert!(
        until(Duration::from_secs(30), || async {
            publisher.acked() >= settled
        })
        .await,
        "publishes acknowledged after the outage"
    );
    let acked = publisher.stop().await;
    let stopped = Instant::now();
    let missing = missing_after(&sink, &acked, Duration::from_secs(60)).await;

    let ds = deliveries(&sink);
    let gap = longest_gap(&ds, down - Duration::from_secs(1), stopped);
    eprintln!(
        "whole-registry outage of {outage:?}: {} acknowledged, {} deliveries ({} while etcd was down after the lease deadlines), longest delivery gap {gap:?} (from 1 s before the kill to the end of publishing)",
        acked.len(),
        ds.len(),
        delivered_during
    );
    for (url, (status, body)) in &degraded {
        assert_eq!(*status, 200, "{url} /readyz during the outage: {body}");
        assert_eq!(
            body["degraded"]["code"], "registry_unreachable",
            "{url} /readyz names the degradation: {body}"
        );
    }
    assert!(
        delivered_during > 0,
        "the group was delivered while etcd was down"
    );
    assert_eq!(
        (admin.0, admin.1["error"]["code"].as_str()),
        (503, Some("catalog_unavailable")),
        "an admin change through the proxy while etcd is down: {}",
        admin.1
    );
    let mut given = 0.0;
    for n in &cl.nodes {
        let text = common::get_text(&c, &format!("{}/metrics", n.url)).await;
        given += text
            .lines()
            .find_map(|l| l.strip_prefix("meshd_node_registry_promises_given_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(given > 0.0, "the nodes counted the promises they gave");
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert_no_overlap(&ds, t0);
}

/// An nftables table dropping loopback traffic to and from one address and port; deleted
/// on drop.
struct Cut {
    table: String,
}

impl Cut {
    fn nft(args: &str) -> Result<(), String> {
        let out = Command::new("nft")
            .args(args.split(' '))
            .output()
            .map_err(|e| format!("running nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Whether nftables can be used here.
    fn usable() -> Result<(), String> {
        Cut::nft("list tables")
    }

    fn new(addr: &str, port: u16) -> Cut {
        let table = format!("meshd_outage_{}", std::process::id());
        let cut = Cut { table };
        let t = &cut.table;
        for cmd in [
            format!("add table inet {t}"),
            format!("add chain inet {t} out {{ type filter hook output priority 0 ; }}"),
            format!("add rule inet {t} out ip daddr {addr} tcp dport {port} drop"),
            format!("add rule inet {t} out ip saddr {addr} tcp sport {port} drop"),
        ] {
            Cut::nft(&cmd).unwrap_or_else(|e| panic!("nft {cmd}: {e}"));
        }
        cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Cut::nft(&format!("delete table inet {}", self.table));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_alone_stops_within_its_lease_and_another_takes_over() {
    if let Err(e) = Cut::usable() {
        eprintln!("SKIPPED: nftables is not usable here ({e}); this test needs root and nft");
        return;
    }
    let alias = |id: &str| if id == "a" { "127.0.0.2" } else { "127.0.0.3" };
    let etcd = EtcdServer::start_with_aliases(&["127.0.0.2", "127.0.0.3"])
        .await
        .expect("etcd");
    let port = etcd.client_port();
    let urls: BTreeMap<&str, String> = ["a", "b"]
        .into_iter()
        .map(|id| {
            (
                id,
                etcd.endpoint_at(alias(id)).replace("http://", "etcd://"),
            )
        })
        .collect();
    let cl = Cluster::start_on(etcd, &|id| urls[id].clone()).await;
    let c = client();
    let sink = Sink::start(|_, _| 200).await;
    let proxies: Vec<String> = cl.proxies.iter().map(|p| p.url.clone()).collect();
    let owner = subscribe(&cl, &c, &proxies[0], &sink).await;
    let other = if owner == "a" { "b" } else { "a" };
    let t0 = Instant::now();
    let publisher = Publisher::start(c.clone(), proxies.clone(), Load::steady(TOPIC));
    assert!(
        until(Duration::from_secs(30), || async { sink.ids().len() >= 50 }).await,
        "deliveries flow before the cut"
    );

    let cut = Cut::new(alias(&owner), port);
    let cut_at = Instant::now();
    let owner_url = &cl.nodes[if owner == "a" { 0 } else { 1 }].url;
    let owned = |url: String| {
        let c = c.clone();
        async move {
            match c.get(format!("{url}/v1/cluster")).send().await {
                Ok(r) => r.json::<Value>().await.ok().and_then(|v| {
                    v["owned_groups"]
                        .as_array()
                        .map(|g| g.iter().any(|x| x == GROUP))
                }),
                Err(_) => None,
            }
        }
    };
    assert!(
        until(Duration::from_secs(30), || async {
            owned(owner_url.clone()).await == Some(false)
        })
        .await,
        "the cut-off owner {owner} stops delivering"
    );
    let stopped_after = cut_at.elapsed();
    let (status, body) = readyz(&c, owner_url).await;
    assert!(
        until(Duration::from_secs(30), || async {
            cl.owner(&c, GROUP).await.as_deref() == Some(other)
        })
        .await,
        "{other} takes the group over"
    );
    let taken_after = cut_at.elapsed();
    // Deliveries from the new owner, then the check window ends before the cut heals.
    let seen = sink.ids().len();
    assert!(
        until(Duration::from_secs(30), || async {
            sink.ids().len() >= seen + 50
        })
        .await,
        "deliveries flow from {other}"
    );
    let ds_cut = deliveries(&sink);
    drop(cut);
    let acked = publisher.stop().await;
    let missing = missing_after(&sink, &acked, Duration::from_secs(60)).await;
    let ds = deliveries(&sink);
    let gap = longest_gap(
        &ds,
        cut_at - Duration::from_secs(1),
        cut_at + taken_after + Duration::from_secs(2),
    );
    eprintln!(
        "node {owner} cut off from etcd: stopped after {stopped_after:?} (lease TTL 2 s), {other} owns the group after {taken_after:?}, longest delivery gap {gap:?}; /readyz of the cut-off node: {status} {body}"
    );
    assert_eq!(status, 503, "the cut-off node is not ready: {body}");
    assert_eq!(body["error"]["code"], "registry_lease_lost", "{body}");
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert_no_overlap(&ds_cut, t0);
}
