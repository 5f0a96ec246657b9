//! Three scheduler members (real Raft over loopback HTTP) over the in-process registry:
//! nodes register with groups → a placement is published with increasing epochs; a node
//! leaves → only its groups move; the leader stops → another leader keeps placing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meshd_scheduler::placement::PlacementConfig;
use meshd_scheduler::raft::RaftTiming;
use meshd_scheduler::registry::{
    InProcessRegistry, LeaseConfig, MemberGroups, MemberInfo, Placement, Registry, Role,
};
use meshd_scheduler::service::{Scheduler, SchedulerConfig, SchedulerStatus};
use tokio::net::TcpListener;
use tokio::sync::watch;

async fn wait_placement(
    rx: &mut watch::Receiver<Option<Placement>>,
    what: &str,
    f: impl Fn(&Placement) -> bool,
) -> Placement {
    let got = match tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|p| p.as_ref().is_some_and(&f)),
    )
    .await
    {
        Ok(Ok(p)) => Some(p.clone().unwrap_or_default()),
        _ => None,
    };
    match got {
        Some(p) => p,
        None => panic!("placement never reached: {what}; last: {:?}", *rx.borrow()),
    }
}

fn groups(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_groups_moves_only_a_dead_nodes_groups_and_survives_leader_loss() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = InProcessRegistry::new("t");
    let shared: Arc<dyn Registry> = Arc::new(registry.clone());

    let mut listeners = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        peers.insert(id, l.local_addr().expect("addr").to_string());
        listeners.insert(id, l);
    }
    let mut schedulers = BTreeMap::new();
    for (id, l) in listeners {
        let cfg = SchedulerConfig {
            id,
            peers: peers.clone(),
            data_dir: tmp.path().join(format!("s{id}")),
            placement: PlacementConfig::default(),
            timing: RaftTiming::default(),
        };
        let s = Scheduler::start(cfg, Arc::clone(&shared), l)
            .await
            .expect("scheduler starts");
        schedulers.insert(id, s);
    }

    // Three nodes; consumer groups reported by nodes, producer groups by a proxy.
    let lease = LeaseConfig::with_ttl(Duration::from_secs(2));
    let consumer = groups("cg", 30);
    let producer = groups("pg", 12);
    let mut handles = BTreeMap::new();
    for n in ["n1", "n2", "n3"] {
        let mut info = MemberInfo::new(Role::Node, n, format!("http://{n}"));
        info.groups = MemberGroups {
            producer: BTreeSet::new(),
            consumer: consumer.clone(),
        };
        handles.insert(n, shared.register(info, lease).await.expect("register"));
    }
    let mut proxy = MemberInfo::new(Role::Proxy, "p1", "http://p1");
    proxy.groups.producer = producer.clone();
    let _proxy = shared.register(proxy, lease).await.expect("register proxy");

    let mut rx = shared.watch_placement().await.expect("watch placement");
    let nodes3: BTreeSet<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    let full = wait_placement(&mut rx, "all groups on 3 nodes", |p| {
        p.consumer_groups.len() == 30
            && p.producer_groups.len() == 12
            && p.consumer_groups.values().collect::<BTreeSet<_>>().len() == 3
            && p.consumer_groups.values().all(|n| nodes3.contains(n))
    })
    .await;
    assert!(full.epoch >= 1);
    let cap = PlacementConfig::default().capacity(30, 3);
    for (n, l) in meshd_scheduler::placement::loads(&full.consumer_groups) {
        assert!(l <= cap, "{n} carries {l} > {cap}");
    }

    // The scheduler API agrees with the registry.
    let leader = schedulers[&1]
        .member()
        .raft
        .metrics()
        .borrow()
        .current_leader
        .expect("a leader");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let status: SchedulerStatus = http
        .get(format!("http://{}/v1/scheduler", peers[&leader]))
        .send()
        .await
        .expect("GET /v1/scheduler")
        .json()
        .await
        .expect("status json");
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.voters, vec![1, 2, 3]);
    let served: Placement = http
        .get(format!("http://{}/v1/placement", peers[&leader]))
        .send()
        .await
        .expect("GET /v1/placement")
        .json()
        .await
        .expect("placement json");
    assert_eq!(served.epoch, full.epoch);
    let metrics = http
        .get(format!("http://{}/metrics", peers[&leader]))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("meshd_scheduler_placement_epoch"));

    // n3 leaves: its groups move, the others stay where they were.
    handles
        .remove("n3")
        .expect("n3")
        .deregister()
        .await
        .expect("deregister");
    let after = wait_placement(&mut rx, "no group on n3", |p| {
        p.epoch > full.epoch
            && p.consumer_groups.len() == 30
            && p.consumer_groups.values().all(|n| n != "n3")
            && p.producer_groups.values().all(|n| n != "n3")
    })
    .await;
    for (g, n) in full
        .consumer_groups
        .iter()
        .chain(full.producer_groups.iter())
    {
        if n != "n3" {
            let now = after
                .consumer_groups
                .get(g)
                .or_else(|| after.producer_groups.get(g));
            assert_eq!(now, Some(n), "group {g} on live node {n} must not move");
        }
    }

    // The leader stops: another one takes over and places the next change.
    let old = schedulers.remove(&leader).expect("leader");
    old.shutdown().await;
    handles
        .remove("n2")
        .expect("n2")
        .deregister()
        .await
        .expect("deregister");
    let last = wait_placement(&mut rx, "everything on n1", |p| {
        p.epoch > after.epoch && p.consumer_groups.values().all(|n| n == "n1")
    })
    .await;
    assert_eq!(last.consumer_groups.len(), 30);
    let new_leader = schedulers
        .values()
        .find_map(|s| s.member().raft.metrics().borrow().current_leader)
        .expect("new leader");
    assert_ne!(new_leader, leader);
    for s in schedulers.values() {
        let mut sm = s.member().sm.subscribe();
        let ok = tokio::time::timeout(
            Duration::from_secs(5),
            sm.wait_for(|st| st.placement.as_ref().map(|p| p.epoch) == Some(last.epoch)),
        )
        .await;
        assert!(
            matches!(ok, Ok(Ok(_))),
            "every live member committed the last decision"
        );
    }

    for (_, s) in schedulers {
        s.shutdown().await;
    }
}

/// A decision committed through Raft but never published (its leader died between commit
/// and publish) is published by the next leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_publishes_a_committed_but_unpublished_decision() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shared: Arc<dyn Registry> = Arc::new(InProcessRegistry::new("t2"));
    let mut listeners = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        peers.insert(id, l.local_addr().expect("addr").to_string());
        listeners.insert(id, l);
    }
    let mut schedulers = BTreeMap::new();
    for (id, l) in listeners {
        let cfg = SchedulerConfig {
            id,
            peers: peers.clone(),
            data_dir: tmp.path().join(format!("s{id}")),
            placement: PlacementConfig::default(),
            timing: RaftTiming::default(),
        };
        schedulers.insert(
            id,
            Scheduler::start(cfg, Arc::clone(&shared), l)
                .await
                .expect("start"),
        );
    }
    // With no members the first leader publishes an empty placement.
    let mut rx = shared.watch_placement().await.expect("watch");
    let first = wait_placement(&mut rx, "first placement", |_| true).await;
    let leader = schedulers[&1]
        .member()
        .raft
        .metrics()
        .borrow()
        .current_leader
        .expect("leader");

    // Commit a decision behind the leader loop's back: committed, not published.
    // Same content as the reducer gives for "no members", so the next leader has nothing
    // to change and must publish exactly this decision.
    let orphan = Placement {
        epoch: first.epoch + 10,
        producer_groups: BTreeMap::new(),
        consumer_groups: BTreeMap::new(),
    };
    let resp = schedulers[&leader]
        .member()
        .raft
        .client_write(meshd_scheduler::raft::Request::Place {
            placement: orphan.clone(),
        })
        .await
        .expect("commit");
    assert!(resp.data.accepted);
    assert_eq!(
        shared.get_placement().await.expect("get").map(|p| p.epoch),
        Some(first.epoch),
        "not published yet"
    );

    schedulers.remove(&leader).expect("leader").shutdown().await;
    let published = wait_placement(&mut rx, "the committed decision", |p| {
        p.epoch >= orphan.epoch
    })
    .await;
    assert_eq!(
        published, orphan,
        "the next leader published the committed decision"
    );
    for (_, s) in schedulers {
        s.shutdown().await;
    }
}

/// A joining node gets its groups in paced steps: one move per placement, the pause
/// apart, and the steps end where one unpaced decision would have gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_receives_its_groups_one_placement_at_a_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shared: Arc<dyn Registry> = Arc::new(InProcessRegistry::new("t3"));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peers = BTreeMap::from([(1u64, l.local_addr().expect("addr").to_string())]);
    let placement = PlacementConfig {
        rebalance_moves: 1,
        rebalance_pause: Duration::from_millis(50),
        ..PlacementConfig::default()
    };
    let cfg = SchedulerConfig {
        id: 1,
        peers,
        data_dir: tmp.path().join("s1"),
        placement,
        timing: RaftTiming::default(),
    };
    let scheduler = Scheduler::start(cfg, Arc::clone(&shared), l)
        .await
        .expect("start");
    let lease = LeaseConfig::with_ttl(Duration::from_secs(2));
    let consumer = groups("cg", 12);
    let node = |id: &str| {
        let mut info = MemberInfo::new(Role::Node, id, format!("http://{id}"));
        info.groups.consumer = consumer.clone();
        info
    };
    let _n1 = shared.register(node("n1"), lease).await.expect("register");
    let _n2 = shared.register(node("n2"), lease).await.expect("register");
    let mut rx = shared.watch_placement().await.expect("watch");
    let two = wait_placement(&mut rx, "12 groups on n1 and n2", |p| {
        p.consumer_groups.len() == 12
            && p.consumer_groups.values().collect::<BTreeSet<_>>().len() == 2
    })
    .await;
    let decisions = |s: &Scheduler| s.member().sm.current().decisions;
    let before = decisions(&scheduler);

    let _n3 = shared.register(node("n3"), lease).await.expect("register");
    // The unpaced decision for the same inputs: where the steps must end.
    let spec = meshd_scheduler::placement::PlacementSpec {
        nodes: ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect(),
        consumer_groups: consumer.clone(),
        ..Default::default()
    };
    let target = match meshd_scheduler::placement::reduce(&placement, &spec, Some(&two)) {
        meshd_scheduler::placement::Decision::Publish { placement, .. } => placement,
        other => panic!("a join moves groups: {other:?}"),
    };
    let moved = two
        .consumer_groups
        .iter()
        .filter(|(g, n)| target.consumer_groups.get(*g) != Some(n))
        .count();
    assert!(moved >= 2, "the join moves several groups ({moved})");
    let last = wait_placement(&mut rx, "the paced steps reach the target", |p| {
        p.consumer_groups == target.consumer_groups
    })
    .await;
    let steps = decisions(&scheduler) - before;
    assert_eq!(
        last.epoch - two.epoch,
        moved as u64,
        "one placement per moved group"
    );
    assert_eq!(
        steps, moved as u64,
        "one committed decision per moved group"
    );
    scheduler.shutdown().await;
}
