//! `meshd node --registry`: real node processes in a real etcd (and real `meshd scheduler`
//! processes for placement). Proves: nodes register and leave (at once on SIGTERM, after
//! the lease TTL on SIGKILL), keep serving publishes while etcd is frozen and register
//! again when it returns; topics and subscriptions are shared through the registry's
//! catalog (bad input changes nothing); exactly the placed node delivers a consumer group
//! and, after it is killed, another node delivers within a bound (measured). Nodes that
//! run at the same time share one pulsar-lite broker (a cluster with more than one node
//! runs on a shared store); a node alone in its cluster may use the embedded store.
//! Every process is killed by its guard, also on panic.

mod cluster_support;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::broker::Broker;
use cluster_support::{etcd_arg, scheduler_group, ProcGuard};
use common::{client, create_topic, eventually, subscribe, Meshd, Sink};
use meshd_scheduler::registry::testing::EtcdServer;
use meshd_scheduler::registry::{
    CatalogKind, EtcdConfig, EtcdRegistry, MemberEvent, MemberInfo, Placement, Registry, Role,
};
use serde_json::{json, Value};

const TTL: &str = "2s";

async fn registry(etcd: &EtcdServer, cluster: &str) -> Arc<dyn Registry> {
    Arc::new(
        EtcdRegistry::connect(EtcdConfig::new(vec![etcd.endpoint()], cluster))
            .await
            .expect("registry client"),
    )
}

/// Node `id` of `cluster` on `store` (`embedded`, or a `pulsar://` URL).
fn node(dir: &Path, etcd: &EtcdServer, cluster: &str, id: &str, store: &str) -> Meshd {
    let reg = etcd_arg(etcd);
    Meshd::start(
        &dir.join(id),
        &[
            "--registry",
            &reg,
            "--cluster",
            cluster,
            "--node-id",
            id,
            "--lease-ttl",
            TTL,
            "--store",
            store,
        ],
    )
}

async fn member_ids(reg: &Arc<dyn Registry>) -> BTreeSet<String> {
    reg.list_members()
        .await
        .map(|m| {
            m.into_iter()
                .filter(|i| i.role == Role::Node)
                .map(|i| i.id)
                .collect()
        })
        .unwrap_or_default()
}

async fn member(reg: &Arc<dyn Registry>, id: &str) -> Option<MemberInfo> {
    reg.list_members()
        .await
        .ok()?
        .into_iter()
        .find(|i| i.role == Role::Node && i.id == id)
}

async fn publish_one(c: &reqwest::Client, base: &str, topic: &str, id: &str) -> u16 {
    c.post(format!("{base}/v1/topics/{topic}/events"))
        .header("content-type", "application/cloudevents+json")
        .header("meshd-producer-group", "pg-1")
        .body(common::event(id, "t", None, json!({})).to_string())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_leave_and_survive_an_etcd_freeze() {
    let etcd = EtcdServer::start().await.expect("etcd");
    let reg = registry(&etcd, "reg-it").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client();

    let broker = Broker::start();
    let mut a = node(dir.path(), &etcd, "reg-it", "a", &broker.url());
    let mut b = node(dir.path(), &etcd, "reg-it", "b", &broker.url());
    // Registered before the URL line is printed.
    let members = member_ids(&reg).await;
    assert_eq!(members, ["a".to_string(), "b".to_string()].into());
    let info = member(&reg, "a").await.expect("a registered");
    assert_eq!(info.http_addr, a.url);

    // Groups: producer groups seen in the proxy header are reported.
    create_topic(&c, &a.url, "orders", json!({})).await;
    assert_eq!(publish_one(&c, &a.url, "orders", "e1").await, 200);
    eventually(
        "a reports producer group pg-1",
        Duration::from_secs(5),
        || {
            let reg = reg.clone();
            async move {
                member(&reg, "a")
                    .await
                    .filter(|m| m.groups.producer.contains("pg-1"))
            }
        },
    )
    .await;

    // Clean shutdown: gone at once (well under the TTL).
    let t = Instant::now();
    assert!(a.terminate(), "node a exits cleanly on SIGTERM");
    assert!(!member_ids(&reg).await.contains("a"), "a left on SIGTERM");
    assert!(t.elapsed() < Duration::from_secs(5));

    // kill -9: gone only when the lease expires (after about the TTL).
    b.kill9();
    let killed = Instant::now();
    assert!(
        member_ids(&reg).await.contains("b"),
        "lease still held right after kill -9"
    );
    eventually("b's lease expires", Duration::from_secs(10), || {
        let reg = reg.clone();
        async move { (!member_ids(&reg).await.contains("b")).then_some(()) }
    })
    .await;
    let gone_after = killed.elapsed();
    eprintln!("kill -9 → member gone after {gone_after:?} (TTL {TTL})");
    assert!(gone_after >= Duration::from_millis(500), "{gone_after:?}");

    // etcd frozen for longer than the TTL: the node keeps serving publishes, and is
    // registered again after etcd returns.
    // Alone in the cluster now: a node on the embedded store (its offsets count events).
    let n = node(dir.path(), &etcd, "reg-it", "n", "embedded");
    create_topic(&c, &n.url, "t2", json!({})).await;
    let mut watch = reg.watch_members().await.expect("watch members");
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), watch.recv()).await {
        if ev == MemberEvent::Synced {
            break;
        }
    }
    etcd.pause().expect("SIGSTOP etcd");
    let frozen = Instant::now();
    let mut ok = 0;
    while frozen.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            publish_one(&c, &n.url, "t2", &format!("f{ok}")).await,
            200,
            "publishes succeed while etcd is frozen"
        );
        ok += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok >= 10, "{ok}");
    etcd.resume().expect("SIGCONT etcd");
    let back = Instant::now();
    eventually(
        "n registered again after etcd returns",
        Duration::from_secs(15),
        || {
            let reg = reg.clone();
            async move { member(&reg, "n").await }
        },
    )
    .await;
    eprintln!("re-registered {:?} after SIGCONT", back.elapsed());
    // The observer saw the lease go (expired during the freeze) and the node come back.
    let mut left = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(15), watch.recv())
            .await
            .expect("member events after SIGCONT")
            .expect("watch open");
        match ev {
            MemberEvent::Delete(id) if id.id == "n" => left = true,
            MemberEvent::Put(info) if info.id == "n" && left => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no delete + put of n seen");
    }
    assert_eq!(common::stored_count(&c, &n.url, "t2").await, ok as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_subscriptions_are_shared_through_the_catalog() {
    let etcd = EtcdServer::start().await.expect("etcd");
    let reg = registry(&etcd, "cat-it").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client();
    let broker = Broker::start();
    let a = node(dir.path(), &etcd, "cat-it", "a", &broker.url());
    let b = node(dir.path(), &etcd, "cat-it", "b", &broker.url());

    create_topic(&c, &a.url, "orders", json!({"partitions": 2})).await;
    let (status, _) = subscribe(
        &c,
        &a.url,
        json!({"name": "billing", "topic": "orders", "sink": {"pull": {}}}),
    )
    .await;
    assert_eq!(status, 201);
    let on_b = eventually("b has the subscription", Duration::from_secs(10), || {
        let c = c.clone();
        let url = b.at("/v1/subscriptions/billing");
        async move {
            let r = c.get(url).send().await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await;
    assert_eq!(on_b["topic"], "orders");
    let topic: Value = c
        .get(b.at("/v1/topics/orders"))
        .send()
        .await
        .expect("get topic")
        .json()
        .await
        .expect("json");
    assert_eq!(topic["config"]["partitions"], 2);

    // The same spec again on another node: 200; another spec under the name: 409.
    let (status, _) = subscribe(
        &c,
        &b.url,
        json!({"name": "billing", "topic": "orders", "sink": {"pull": {}}}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = subscribe(
        &c,
        &b.url,
        json!({"name": "billing", "topic": "orders", "group": "other", "sink": {"pull": {}}}),
    )
    .await;
    assert_eq!(status, 409);

    // Bad input: 400, and nothing reaches the catalog.
    let before = reg.catalog_list().await.expect("catalog");
    let (status, body) = subscribe(
        &c,
        &b.url,
        json!({"name": "bad", "topic": "orders", "sink": {"webhook": {"url": "not a url"}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = subscribe(
        &c,
        &b.url,
        json!({"name": "ghost", "topic": "missing", "sink": {"pull": {}}}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(reg.catalog_list().await.expect("catalog"), before);

    // A node started later catches up; a delete through b reaches a.
    let late = node(dir.path(), &etcd, "cat-it", "late", &broker.url());
    eventually(
        "the late node has the subscription",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let url = late.at("/v1/subscriptions/billing");
            async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
    let r = c
        .delete(b.at("/v1/subscriptions/billing"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    eventually("a drops the subscription", Duration::from_secs(10), || {
        let c = c.clone();
        let url = a.at("/v1/subscriptions/billing");
        async move { (c.get(url).send().await.ok()?.status() == 404).then_some(()) }
    })
    .await;
    let kinds: Vec<CatalogKind> = reg
        .catalog_list()
        .await
        .expect("catalog")
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec![CatalogKind::Topic]);
}

/// Schemas travel through the catalog like topics: a version put on one node is served
/// and enforced by the others (a node started later too); a refused version and a refused
/// delete reach no node.
#[tokio::test]
async fn schemas_are_shared_through_the_catalog() {
    let etcd = EtcdServer::start().await.expect("etcd");
    let reg = registry(&etcd, "sch-it").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client();
    let broker = Broker::start();
    let a = node(dir.path(), &etcd, "sch-it", "a", &broker.url());
    let b = node(dir.path(), &etcd, "sch-it", "b", &broker.url());
    let doc = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]});
    let r = c
        .put(a.at("/v1/schemas/counts"))
        .json(&doc)
        .send()
        .await
        .expect("put schema");
    assert_eq!(r.status(), 201);
    let on_b = eventually("b has the schema", Duration::from_secs(10), || {
        let c = c.clone();
        let url = b.at("/v1/schemas/counts");
        async move {
            let r = c.get(url).send().await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await;
    assert_eq!(on_b["schema"], doc);
    assert_eq!(on_b["uri"], "meshd:schemas/counts/v1");

    // A breaking version through b: 409, and the catalog keeps one version.
    let mut breaking = doc.clone();
    breaking["required"] = json!(["n", "m"]);
    let r = c
        .put(b.at("/v1/schemas/counts"))
        .json(&breaking)
        .send()
        .await
        .expect("put schema");
    assert_eq!(r.status(), 409);
    let entry = reg
        .catalog_list()
        .await
        .expect("catalog")
        .into_iter()
        .find(|e| e.kind == CatalogKind::Schema)
        .expect("schema in the catalog");
    assert_eq!(entry.value["versions"].as_array().map(Vec::len), Some(1));

    // A topic made on a validates on b.
    create_topic(
        &c,
        &a.url,
        "counted",
        json!({"schemas": {"count": "counts"}, "validate": true}),
    )
    .await;
    let bad = common::event("c1", "count", None, json!({"n": -1}));
    let status = eventually("b validates the topic", Duration::from_secs(10), || {
        let c = c.clone();
        let url = b.at("/v1/topics/counted/events");
        let body = bad.to_string();
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/cloudevents+json")
                .body(body)
                .send()
                .await
                .ok()?;
            (r.status() != 404).then_some(r.status().as_u16())
        }
    })
    .await;
    assert_eq!(status, 400);

    // Delete is refused while bound; after the topic goes, it reaches every node.
    let r = c
        .delete(b.at("/v1/schemas/counts"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 409);
    let late = node(dir.path(), &etcd, "sch-it", "late", &broker.url());
    eventually(
        "the late node has the schema",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let url = late.at("/v1/schemas/counts");
            async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
    let r = c
        .delete(a.at("/v1/topics/counted"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let r = c
        .delete(b.at("/v1/schemas/counts"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    for n in [&a, &late] {
        eventually(
            "the schema is gone everywhere",
            Duration::from_secs(10),
            || {
                let c = c.clone();
                let url = n.at("/v1/schemas/counts");
                async move { (c.get(url).send().await.ok()?.status() == 404).then_some(()) }
            },
        )
        .await;
    }
}

/// Which nodes delivered the markers with ids starting with `prefix`.
fn deliverers(sink: &Sink, prefix: &str) -> BTreeSet<String> {
    sink.received()
        .iter()
        .filter(|r| r.header("ce-id").is_some_and(|id| id.starts_with(prefix)))
        .filter_map(|r| r.header("meshd-node").map(str::to_string))
        .collect()
}

async fn placed_on(reg: &Arc<dyn Registry>, group: &str) -> Option<(u64, String)> {
    let p: Placement = reg.get_placement().await.ok()??;
    p.consumer_groups.get(group).map(|n| (p.epoch, n.clone()))
}

/// A cluster of three nodes and one scheduler with a CLUSTERING webhook subscription;
/// returns the guards, the sink and the group's node.
struct Region {
    _etcd: EtcdServer,
    broker: Broker,
    reg: Arc<dyn Registry>,
    _scheds: Vec<ProcGuard>,
    nodes: BTreeMap<String, Meshd>,
    sink: Sink,
    _dir: tempfile::TempDir,
}

impl Region {
    async fn start(cluster: &str) -> Region {
        let etcd = EtcdServer::start().await.expect("etcd");
        let reg = registry(&etcd, cluster).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (scheds, _) = scheduler_group(dir.path(), &etcd, cluster, 1);
        let broker = Broker::start();
        let mut nodes = BTreeMap::new();
        for id in ["n1", "n2", "n3"] {
            nodes.insert(
                id.to_string(),
                node(dir.path(), &etcd, cluster, id, &broker.url()),
            );
        }
        let c = client();
        let sink = Sink::start(|_, _| 200).await;
        let first = nodes.values().next().expect("a node").url.clone();
        create_topic(&c, &first, "orders", json!({})).await;
        let (status, body) = subscribe(
            &c,
            &first,
            json!({"name": "billing", "topic": "orders", "mode": "CLUSTERING",
                   "sink": {"webhook": {"url": sink.url}}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        for n in nodes.values() {
            eventually(
                "every node has the subscription",
                Duration::from_secs(10),
                || {
                    let c = c.clone();
                    let url = n.at("/v1/subscriptions/billing");
                    async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
                },
            )
            .await;
        }
        Region {
            _etcd: etcd,
            broker,
            reg,
            _scheds: scheds,
            nodes,
            sink,
            _dir: dir,
        }
    }

    async fn placed(&self) -> (u64, String) {
        let reg = self.reg.clone();
        let live: BTreeSet<String> = self.nodes.keys().cloned().collect();
        eventually(
            "billing placed on a live node",
            Duration::from_secs(20),
            || {
                let reg = reg.clone();
                let live = live.clone();
                async move {
                    placed_on(&reg, "billing")
                        .await
                        .filter(|(_, n)| live.contains(n))
                }
            },
        )
        .await
    }

    /// Publishes marker `id` to every live node.
    async fn mark(&self, c: &reqwest::Client, id: &str) {
        for n in self.nodes.values() {
            let _ = publish_one(c, &n.url, "orders", id).await;
        }
    }

    /// Publishes markers to every live node every 100 ms until a node other than `not`
    /// delivers anything after `since`; returns that node and when its first delivery
    /// arrived.
    async fn wait_new_deliverer(
        &self,
        c: &reqwest::Client,
        prefix: &str,
        not: &str,
        since: Instant,
    ) -> (String, Instant) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut i = 0;
        loop {
            self.mark(c, &format!("{prefix}-{i}")).await;
            i += 1;
            let got = self
                .sink
                .received()
                .into_iter()
                .find(|r| r.at >= since && r.header("meshd-node").is_some_and(|n| n != not));
            if let Some(r) = got {
                return (r.header("meshd-node").unwrap_or_default().to_string(), r.at);
            }
            assert!(
                Instant::now() < deadline,
                "no other node took over the group within 20s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Kills the node `billing` is placed on; returns the failover time (kill → first
/// delivery by another node) and checks only the new owner delivers afterwards.
async fn fail_over_once(region: &mut Region, c: &reqwest::Client, round: usize) -> Duration {
    let (epoch, owner) = region.placed().await;
    // Only the owner delivers: markers published to every node arrive from one node.
    let prefix = format!("r{round}-before");
    region.mark(c, &prefix).await;
    eventually(
        "the owner delivers the markers",
        Duration::from_secs(10),
        || {
            let d = deliverers(&region.sink, &prefix);
            async move { (!d.is_empty()).then_some(()) }
        },
    )
    .await;
    let owner_copy = owner.clone();
    let d = deliverers(&region.sink, &prefix);
    assert_eq!(
        d,
        [owner_copy].into(),
        "only the placed node (epoch {epoch}) delivers"
    );

    let mut victim = region.nodes.remove(&owner).expect("owner is live");
    victim.kill9();
    let killed = Instant::now();
    let (new_owner, at) = region
        .wait_new_deliverer(c, &format!("r{round}-after"), &owner, killed)
        .await;
    let failover = at.saturating_duration_since(killed);
    // Once it delivers, nobody else does: markers go to the new owner only.
    let prefix = format!("r{round}-settled");
    region.mark(c, &prefix).await;
    eventually("the new owner delivers", Duration::from_secs(10), || {
        let d = deliverers(&region.sink, &prefix);
        async move { (!d.is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deliverers(&region.sink, &prefix),
        [new_owner.clone()].into()
    );
    // Bring a node back under the killed id (fresh data dir: another process).
    let dir = victim.data_dir.clone();
    drop(victim);
    let parent = dir.parent().expect("parent").to_path_buf();
    let reg = etcd_arg(&region._etcd);
    region.nodes.insert(
        owner.clone(),
        restart_node(&parent, &reg, &owner, round, &region.broker.url()),
    );
    failover
}

fn restart_node(parent: &Path, reg: &str, id: &str, round: usize, store: &str) -> Meshd {
    Meshd::start(
        &parent.join(format!("{id}-r{round}")),
        &[
            "--registry",
            reg,
            "--cluster",
            "fo-it",
            "--node-id",
            id,
            "--lease-ttl",
            TTL,
            "--store",
            store,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_placed_node_delivers_and_another_takes_over_after_kill9() {
    let mut region = Region::start("fo-it").await;
    let c = client();
    let failover = fail_over_once(&mut region, &c, 0).await;
    eprintln!("failover (kill -9 → delivering on another node): {failover:?}");
    // 2 s lease: expiry ≤ 2 s after the last renewal, then re-placement and start.
    assert!(
        failover < Duration::from_secs(6),
        "failover took {failover:?}"
    );
}

/// Failover benchmark: 10 rounds, 2 s lease. Run with
/// `cargo test --test cluster_nodes failover_time_bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run on demand"]
async fn failover_time_bench() {
    let mut region = Region::start("fo-it").await;
    let c = client();
    let mut times = Vec::new();
    for round in 0..10 {
        let t = fail_over_once(&mut region, &c, round).await;
        eprintln!("round {round}: {t:?}");
        times.push(t);
    }
    times.sort();
    let median = (times[4] + times[5]) / 2;
    let max = times[9];
    eprintln!(
        "FAILOVER lease={TTL} runs=10 median={median:?} max={max:?} min={:?} all={times:?}",
        times[0]
    );
}

/// Placement written by the test itself (no scheduler): a newer epoch moving the group
/// stops the old owner at once and starts the new one; losing the registry session
/// (etcd frozen past the TTL) stops the owner's delivery, and it resumes after etcd
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_epoch_and_a_lost_lease_stop_delivery() {
    let etcd = EtcdServer::start().await.expect("etcd");
    let reg = registry(&etcd, "fence-it").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client();
    let broker = Broker::start();
    let mut n1 = node(dir.path(), &etcd, "fence-it", "n1", &broker.url());
    let n2 = node(dir.path(), &etcd, "fence-it", "n2", &broker.url());
    let sink = Sink::start(|_, _| 200).await;
    create_topic(&c, &n1.url, "orders", json!({})).await;
    let (status, body) = subscribe(
        &c,
        &n1.url,
        json!({"name": "billing", "topic": "orders", "group": "bg",
               "sink": {"webhook": {"url": sink.url}}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for n in [&n1, &n2] {
        eventually(
            "the subscription everywhere",
            Duration::from_secs(10),
            || {
                let c = c.clone();
                let url = n.at("/v1/subscriptions/billing");
                async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
            },
        )
        .await;
    }
    let both = [n1.url.clone(), n2.url.clone()];
    let mark = |prefix: String| {
        let c = c.clone();
        let urls = both.clone();
        async move {
            for u in &urls {
                assert_eq!(publish_one(&c, u, "orders", &prefix).await, 200);
            }
        }
    };
    // No placement yet: nobody delivers.
    mark("none".into()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.received().is_empty(), "delivered before any placement");

    let place = |epoch: u64, owner: &str| Placement {
        epoch,
        producer_groups: BTreeMap::new(),
        consumer_groups: [("bg".to_string(), owner.to_string())].into(),
    };
    reg.put_placement_if(None, &place(1, "n1"))
        .await
        .expect("epoch 1");
    mark("e1".into()).await;
    eventually("n1 delivers under epoch 1", Duration::from_secs(10), || {
        let d = deliverers(&sink, "e1");
        async move { (!d.is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliverers(&sink, ""), ["n1".to_string()].into());

    // Epoch 2 moves the group to n2.
    let moved = Instant::now();
    reg.put_placement_if(Some(1), &place(2, "n2"))
        .await
        .expect("epoch 2");
    // n1 delivered everything stored before the move (the store is shared): n2 shows
    // with the next events.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while !deliverers(&sink, "").contains("n2") {
        assert!(Instant::now() < deadline, "n2 delivers under epoch 2");
        mark(format!("m2-{i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("group moved by epoch 2 in {:?}", moved.elapsed());
    let switched = Instant::now();
    mark("e2".into()).await;
    eventually("e2 markers delivered", Duration::from_secs(10), || {
        let d = deliverers(&sink, "e2");
        async move { (!d.is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late_n1 = sink
        .received()
        .iter()
        .filter(|r| r.at > switched && r.header("meshd-node") == Some("n1"))
        .count();
    assert_eq!(
        late_n1, 0,
        "n1 delivered after epoch 2 moved the group away"
    );
    assert_eq!(deliverers(&sink, "e2"), ["n2".to_string()].into());

    // Registry session lost: n2 stops delivering within about one TTL. Its only peer is
    // gone (killed just before), so no promise carries it past its lease deadline
    // (docs/scheduler.md, "Registry outages"; tests/cluster_outage.rs covers promises).
    n1.kill9();
    etcd.pause().expect("SIGSTOP etcd");
    let frozen = Instant::now();
    // Awaited rather than slept: n2 gives its groups up once its lease counts as lost
    // (no renewal acknowledged for a TTL; the keep-alive in flight times out first).
    let owned = |url: String| {
        let c = c.clone();
        async move {
            let v = common::try_get_json(&c, &format!("{url}/v1/cluster")).await?;
            v["owned_groups"].as_array().map(Vec::len)
        }
    };
    eventually(
        "n2 stops delivering after its lease is lost",
        Duration::from_secs(6),
        || {
            let o = owned(n2.url.clone());
            async move { (o.await == Some(0)).then_some(()) }
        },
    )
    .await;
    let stopped = frozen.elapsed();
    eprintln!("n2 stopped its groups {stopped:?} after the freeze (TTL {TTL})");
    assert!(
        stopped >= Duration::from_secs(1),
        "not before the lease could expire: {stopped:?}"
    );
    let count_before = sink.received().len();
    assert_eq!(publish_one(&c, &n2.url, "orders", "frozen").await, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        deliverers(&sink, "frozen"),
        BTreeSet::new(),
        "a node without a registry session delivered ({:?} after the freeze)",
        frozen.elapsed()
    );
    assert_eq!(sink.received().len(), count_before);
    etcd.resume().expect("SIGCONT etcd");
    eventually(
        "delivery resumes after etcd returns",
        Duration::from_secs(15),
        || {
            let d = deliverers(&sink, "frozen");
            async move { d.contains("n2").then_some(()) }
        },
    )
    .await;
    assert_eq!(deliverers(&sink, "frozen"), ["n2".to_string()].into());
}
