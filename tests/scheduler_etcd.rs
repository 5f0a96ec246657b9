//! Three `meshd scheduler` processes over a real etcd: they place the groups of the
//! registered nodes; the leader is killed with SIGKILL right after a node leaves (during
//! the rebalance) and a new leader finishes it, so the placement in etcd reflects the
//! live nodes. Every process is killed at the end by its guard.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use meshd_scheduler::registry::testing::EtcdServer;
use meshd_scheduler::registry::{
    EtcdConfig, EtcdRegistry, LeaseConfig, MemberInfo, Placement, Registry, Role,
};
use meshd_scheduler::service::SchedulerStatus;
use tokio::sync::watch;

/// A child process killed (SIGKILL) and reaped on drop.
struct ProcGuard(Child);

impl ProcGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn status(http: &reqwest::Client, addr: &str) -> Option<SchedulerStatus> {
    http.get(format!("http://{addr}/v1/scheduler"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn wait_placement(
    rx: &mut watch::Receiver<Option<Placement>>,
    what: &str,
    f: impl Fn(&Placement) -> bool,
) -> Placement {
    let got = match tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|p| p.as_ref().is_some_and(&f)),
    )
    .await
    {
        Ok(Ok(p)) => p.clone(),
        _ => None,
    };
    match got {
        Some(p) => p,
        None => panic!("placement never reached: {what}; last: {:?}", *rx.borrow()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_during_a_rebalance_lets_a_new_leader_finish_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let registry: Arc<dyn Registry> = Arc::new(
        EtcdRegistry::connect(EtcdConfig::new(vec![etcd.endpoint()], "sched-it"))
            .await
            .expect("registry"),
    );
    let tmp = tempfile::tempdir().expect("tempdir");

    let peers: BTreeMap<u64, String> = (1..=3u64)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let peer_arg = peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let etcd_arg = etcd.endpoint().replace("http://", "etcd://");
    let mut procs: BTreeMap<u64, ProcGuard> = BTreeMap::new();
    for (id, addr) in &peers {
        let child = Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(["scheduler", "--id", &id.to_string(), "--listen", addr])
            .args(["--peers", &peer_arg, "--cluster", "sched-it"])
            .args(["--registry", &etcd_arg])
            .arg("--data-dir")
            .arg(tmp.path().join(format!("s{id}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn meshd scheduler");
        procs.insert(*id, ProcGuard(child));
    }

    // Four nodes with 40 consumer groups each reported by all of them.
    let groups: BTreeSet<String> = (0..40).map(|i| format!("cg-{i}")).collect();
    let lease = LeaseConfig::with_ttl(Duration::from_secs(2));
    let mut handles = BTreeMap::new();
    for n in ["n1", "n2", "n3", "n4"] {
        let mut info = MemberInfo::new(Role::Node, n, format!("http://{n}"));
        info.groups.consumer = groups.clone();
        handles.insert(n, registry.register(info, lease).await.expect("register"));
    }
    let mut rx = registry.watch_placement().await.expect("watch placement");
    let full = wait_placement(&mut rx, "40 groups on 4 nodes", |p| {
        p.consumer_groups.len() == 40
            && p.consumer_groups.values().collect::<BTreeSet<_>>().len() == 4
    })
    .await;

    // Find the leader through the API.
    let http = reqwest::Client::new();
    let mut leader = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leader.is_none() {
        for addr in peers.values() {
            if let Some(s) = status(&http, addr).await {
                leader = leader.or(s.leader);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduler reports a leader"
        );
        if leader.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let leader = leader.expect("leader");

    // n4 leaves, and the leader dies at once (SIGKILL), mid-rebalance.
    handles
        .remove("n4")
        .expect("n4")
        .deregister()
        .await
        .expect("deregister");
    let killed_at = tokio::time::Instant::now();
    procs.get_mut(&leader).expect("leader proc").kill();

    // A new leader finishes the rebalance: etcd's placement reflects the live nodes.
    let done = wait_placement(&mut rx, "no group on n4", |p| {
        p.epoch > full.epoch
            && p.consumer_groups.len() == 40
            && p.consumer_groups.values().all(|n| n != "n4")
    })
    .await;
    println!(
        "leader {leader} killed; rebalance finished by its successor in {:?}",
        killed_at.elapsed()
    );
    for (g, n) in &full.consumer_groups {
        if n != "n4" {
            assert_eq!(
                done.consumer_groups.get(g),
                Some(n),
                "{g} moved off live {n}"
            );
        }
    }
    let mut new_leader = None;
    for (id, addr) in &peers {
        if *id == leader {
            continue;
        }
        if let Some(s) = status(&http, addr).await {
            new_leader = new_leader.or(s.leader);
            assert!(
                s.placement_epoch >= Some(done.epoch),
                "member {id} committed the decision"
            );
        }
    }
    assert!(
        new_leader.is_some_and(|l| l != leader),
        "a new leader took over"
    );

    drop(procs);
    drop(etcd);
}
