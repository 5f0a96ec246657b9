//! The scheduler's openraft group, three members in-process on loopback ports with real
//! HTTP between them: election, committed decisions, leader loss with no decision lost,
//! restart of a member from its redb data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use meshd_scheduler::raft::{raft_routes, NodeId, RaftMember, RaftTiming, Request};
use meshd_scheduler::registry::Placement;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    member: RaftMember,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Running {
    async fn start(id: NodeId, listener: TcpListener, dir: PathBuf) -> Self {
        let member = RaftMember::start(id, &dir, RaftTiming::default())
            .await
            .expect("member starts");
        let app = raft_routes(member.raft.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            member,
            stop: Some(tx),
            server,
        }
    }

    async fn stop(mut self) {
        let _ = self.member.raft.shutdown().await;
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn wait_leader(members: &[&RaftMember], within: Duration) -> NodeId {
    let deadline = tokio::time::Instant::now() + within;
    let mut rx = members[0].raft.metrics();
    loop {
        // A leader all given members agree on.
        let leaders: Vec<Option<NodeId>> = members
            .iter()
            .map(|m| m.raft.metrics().borrow().current_leader)
            .collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) && members.iter().any(|m| m.id == *l) {
                return *l;
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no agreed leader within {within:?}: {leaders:?}"
        );
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
    }
}

async fn wait_epoch(m: &RaftMember, epoch: u64, within: Duration) {
    let mut rx = m.sm.subscribe();
    let ok = tokio::time::timeout(
        within,
        rx.wait_for(|s| s.placement.as_ref().map(|p| p.epoch) == Some(epoch)),
    )
    .await;
    assert!(
        matches!(ok, Ok(Ok(_))),
        "member {} did not apply epoch {epoch}: {:?}",
        m.id,
        m.sm.current().placement
    );
}

fn decision(epoch: u64) -> Request {
    Request::Place {
        placement: Placement {
            epoch,
            producer_groups: BTreeMap::from([(format!("pg-{epoch}"), "n1".to_string())]),
            consumer_groups: BTreeMap::new(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_commit_fail_over_and_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.insert(id, l.local_addr().expect("addr").to_string());
        listeners.insert(id, l);
    }
    let mut running = BTreeMap::new();
    for (id, l) in listeners {
        running.insert(
            id,
            Running::start(id, l, tmp.path().join(format!("m{id}"))).await,
        );
    }
    running[&1]
        .member
        .initialize_if_new(&addrs)
        .await
        .expect("initialise");

    let all: Vec<&RaftMember> = running.values().map(|r| &r.member).collect();
    let leader = wait_leader(&all, Duration::from_secs(10)).await;

    // Commit decisions through the leader; every member applies them.
    for epoch in 1..=5 {
        let resp = running[&leader]
            .member
            .raft
            .client_write(decision(epoch))
            .await
            .expect("committed");
        assert!(resp.data.accepted);
    }
    // A stale epoch is refused by the state machine.
    let stale = running[&leader]
        .member
        .raft
        .client_write(decision(3))
        .await
        .expect("committed");
    assert!(!stale.data.accepted);
    assert_eq!(stale.data.epoch, Some(5));
    for r in running.values() {
        wait_epoch(&r.member, 5, Duration::from_secs(5)).await;
    }

    // Kill the leader: the two others elect a new one and lose nothing.
    let old = running.remove(&leader).expect("leader runs");
    old.stop().await;
    let rest: Vec<&RaftMember> = running.values().map(|r| &r.member).collect();
    let new_leader = wait_leader(&rest, Duration::from_secs(15)).await;
    assert_ne!(new_leader, leader);
    let sm = running[&new_leader].member.sm.current();
    assert_eq!(sm.placement.map(|p| p.epoch), Some(5), "no decision lost");
    assert_eq!(sm.decisions, 5);
    for epoch in 6..=7 {
        running[&new_leader]
            .member
            .raft
            .client_write(decision(epoch))
            .await
            .expect("committed after failover");
    }

    // Restart the old leader from its redb data on its old port: it keeps its state and
    // catches up with the decisions it missed.
    let l = TcpListener::bind(&addrs[&leader]).await.expect("rebind");
    let back = Running::start(leader, l, tmp.path().join(format!("m{leader}"))).await;
    let before = back.member.sm.current();
    assert!(
        before.placement.as_ref().map(|p| p.epoch) >= Some(5),
        "restart kept the applied state: {before:?}"
    );
    wait_epoch(&back.member, 7, Duration::from_secs(10)).await;
    assert_eq!(back.member.sm.current().decisions, 7);
    running.insert(leader, back);

    // Membership change through the admin endpoints: a fourth member joins as a learner,
    // becomes a voter, and receives every decision.
    let cur: Vec<&RaftMember> = running.values().map(|r| &r.member).collect();
    let leader_now = wait_leader(&cur, Duration::from_secs(10)).await;
    let l4 = TcpListener::bind("127.0.0.1:0").await.expect("bind 4");
    let addr4 = l4.local_addr().expect("addr").to_string();
    let fourth = Running::start(4, l4, tmp.path().join("m4")).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{}", addrs[&leader_now]);
    let r = http
        .post(format!("{base}/admin/add-learner"))
        .json(&serde_json::json!({ "id": 4, "addr": addr4 }))
        .send()
        .await
        .expect("add-learner");
    assert!(r.status().is_success(), "add-learner: {:?}", r.text().await);
    let r = http
        .post(format!("{base}/admin/change-membership"))
        .json(&serde_json::json!({ "voters": [1, 2, 3, 4] }))
        .send()
        .await
        .expect("change-membership");
    assert!(
        r.status().is_success(),
        "change-membership: {:?}",
        r.text().await
    );
    wait_epoch(&fourth.member, 7, Duration::from_secs(10)).await;
    let voters: Vec<NodeId> = fourth
        .member
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    running.insert(4, fourth);

    for (_, r) in running {
        r.stop().await;
    }
}
