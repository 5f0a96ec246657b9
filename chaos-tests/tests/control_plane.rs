//! Control-plane chaos with the control plane inside a cluster's network namespace (as
//! root; on loopback otherwise, said in the report): cluster `a` runs a 3-member etcd
//! cluster, 3 scheduler members, 2 nodes (`--registry etcd://...`) on one pulsar-lite
//! broker and 2 proxies, cluster
//! `b` one node, linked through the WAN emulator. Under canary load inside `a` (publishers
//! through both proxies, a CLUSTERING pull subscriber through a proxy), one after the
//! other on one mesh (a few seconds each in the short profile):
//! 1. kill -9 the scheduler leader: another member leads a newer term and places a group
//!    created after the kill; the killed member rejoins;
//! 2. kill -9 the etcd leader: the two others elect a leader, publishes keep being
//!    acknowledged and both nodes stay registered; the member restarts and rejoins;
//! 3. etcd unreachable from its clients (nftables drops TCP to the etcd client ports in
//!    the namespace; SIGSTOP of every member on loopback): publishes keep being
//!    acknowledged, the a–b link stays up, both nodes are registered again after;
//!
//! each with lost 0 and reordered 0, detection and recovery times in the report.

use std::time::{Duration, Instant};

use meshd_chaos::control_plane::{
    canary_subscription, delete_subscription, etcd_leader, group_owner, registered_nodes,
    scheduler_leader, ClusterLoad,
};
use meshd_chaos::scenario::Profile;
use meshd_chaos::{Mesh, MeshOptions, Report};

/// Polls `f` until it holds or `timeout` passes; how long it took.
async fn until<F, Fut>(timeout: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The cluster's nodes share one store, so nothing is lost or reordered by a placement
/// change: every acknowledged canary arrives, in order per key.
fn check(r: &Report) {
    println!("{r}");
    println!("{}", r.to_json());
    assert!(
        r.recovery_ms.is_some(),
        "every acknowledged canary delivered:\n{r}"
    );
    assert_eq!(r.lost, 0, "acknowledged canaries lost:\n{r}");
    assert_eq!(r.reordered, 0, "reordered:\n{r}");
    assert!(r.acknowledged >= 20, "no load:\n{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_in_a_namespace_scheduler_leader_etcd_leader_and_etcd_cut() {
    if meshd_chaos::mesh::etcd_bin().is_none() {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server)");
        return;
    }
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.proxies = 2;
    opts.control_plane = Some("a".into());
    let started = Instant::now();
    let mut mesh = match Mesh::start(opts).await {
        Ok(m) => m,
        Err(meshd_chaos::ChaosError::NoBinary(p)) => {
            eprintln!(
                "SKIPPED: no meshd binary at {} (cargo build --bin meshd)",
                p.display()
            );
            return;
        }
        Err(e) => panic!("building the mesh: {e}"),
    };
    let up = started.elapsed();
    eprintln!(
        "mesh up in {} mode at {} in {up:?}",
        mesh.mode.as_str(),
        mesh.dir().display()
    );
    let c = meshd_chaos::http::client().unwrap();
    let mode = mesh.mode.as_str().to_string();
    let proxies = mesh.proxy_urls("a");
    let nodes = mesh.node_urls("a");
    let scheds = mesh.scheduler_urls("a");
    // The test asks etcd through a second client port the cut leaves open.
    let etcd = mesh.etcd_observer_urls("a").unwrap();
    assert_eq!(
        (proxies.len(), nodes.len(), scheds.len(), etcd.len()),
        (2, 2, 3, 3)
    );
    let load = |name: &'static str| {
        let (c, proxies, profile) = (c.clone(), proxies.clone(), profile.clone());
        async move {
            ClusterLoad::start(
                &c,
                "a",
                proxies.clone(),
                &proxies[1],
                name,
                profile.keys_per_cluster,
                profile.pace,
            )
            .await
            .expect("canary load")
        }
    };

    // 1. kill -9 the scheduler leader.
    let l = load("chaos-sched").await;
    tokio::time::sleep(profile.before).await;
    let (leader, term) = scheduler_leader(&c, &scheds).await.expect("leader");
    let k = usize::try_from(leader - 1).expect("member index");
    mesh.kill_scheduler("a", k).expect("kill");
    let killed = Instant::now();
    let rest: Vec<String> = scheds
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != k)
        .map(|(_, u)| u.clone())
        .collect();
    let elected = until(Duration::from_secs(15), || async {
        matches!(scheduler_leader(&c, &rest).await, Some((l, t)) if l != leader && t > term)
    })
    .await
    .expect("a new scheduler leader");
    // The new leader places: a group created now gets a node.
    canary_subscription(&c, &proxies[0], "after-leader-kill")
        .await
        .expect("subscribe");
    until(Duration::from_secs(15), || async {
        group_owner(&c, &nodes, "after-leader-kill").await.is_some()
    })
    .await
    .expect("a group created after the kill is placed by the new leader");
    let placed = killed.elapsed();
    delete_subscription(&c, &proxies, "after-leader-kill")
        .await
        .expect("unsubscribe");
    tokio::time::sleep(profile.fault.saturating_sub(placed)).await;
    mesh.start_scheduler("a", k).await.expect("member back");
    let mut r = l
        .finish(
            &c,
            &proxies,
            "kill9-scheduler-leader",
            &mode,
            killed,
            profile.recovery_timeout,
        )
        .await;
    r.detection_ms = Some(elected.as_millis() as u64);
    r.facts.insert("old_leader".into(), leader.into());
    r.facts.insert(
        "new_group_placed_ms".into(),
        (placed.as_millis() as u64).into(),
    );
    check(&r);

    // 2. kill -9 the etcd leader, restart it later.
    let l = load("chaos-etcd-leader").await;
    tokio::time::sleep(profile.before).await;
    let k = etcd_leader(&c, &etcd, &[0, 1, 2])
        .await
        .expect("an etcd leader");
    mesh.kill_etcd("a", k).expect("kill etcd");
    let killed = Instant::now();
    let others: Vec<usize> = (0..3).filter(|i| *i != k).collect();
    let elected = until(Duration::from_secs(15), || async {
        matches!(etcd_leader(&c, &etcd, &others).await, Some(j) if j != k)
    })
    .await
    .expect("the other two etcd members elect a leader");
    let acked = l.acked();
    l.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("publishes acknowledged without the old etcd leader");
    assert_eq!(
        registered_nodes(&c, &etcd[others[0]], "a").await,
        Some(2),
        "both nodes stay registered (leases kept alive through the new etcd leader)"
    );
    tokio::time::sleep(profile.fault.saturating_sub(killed.elapsed())).await;
    let during = l.acked() - acked;
    mesh.start_etcd("a", k).await.expect("etcd member back");
    let rejoined = killed.elapsed();
    assert!(
        etcd_leader(&c, &etcd, &[k]).await.is_some(),
        "the restarted member follows a leader"
    );
    let mut r = l
        .finish(
            &c,
            &proxies,
            "kill9-etcd-leader",
            &mode,
            killed,
            profile.recovery_timeout,
        )
        .await;
    r.detection_ms = Some(elected.as_millis() as u64);
    r.facts.insert("killed_etcd_member".into(), (k + 1).into());
    r.facts
        .insert("acked_while_one_member_down".into(), during.into());
    r.facts.insert(
        "member_rejoined_ms".into(),
        (rejoined.as_millis() as u64).into(),
    );
    check(&r);

    // 3. etcd unreachable from its clients for a few seconds.
    let l = load("chaos-etcd-cut").await;
    tokio::time::sleep(profile.before).await;
    let acked = l.acked();
    mesh.etcd_unreachable("a").expect("cut etcd");
    let cut = Instant::now();
    let hold = profile.fault.max(Duration::from_secs(3));
    // The leases (TTL 2 s) expire: the nodes' registrations go (asked of etcd through
    // the port the cut leaves open; on loopback etcd is frozen and cannot be asked).
    let expired = if mesh.mode == meshd_chaos::Mode::Netns {
        until(hold, || async {
            registered_nodes(&c, &etcd[0], "a").await == Some(0)
        })
        .await
    } else {
        None
    };
    tokio::time::sleep(hold.saturating_sub(cut.elapsed())).await;
    let during = l.acked() - acked;
    let link = meshd_chaos::http::link(&c, &nodes[0].1, "b")
        .await
        .expect("a's /v1/mesh")
        .expect("a link to b");
    mesh.etcd_reachable("a").expect("heal etcd");
    let healed = Instant::now();
    assert!(
        during >= 10,
        "publishes kept being acknowledged while etcd was unreachable ({during})"
    );
    assert_eq!(
        link.state, "connected",
        "the a-b link does not depend on etcd: {link:?}"
    );
    let back = until(Duration::from_secs(20), || async {
        registered_nodes(&c, &etcd[0], "a").await == Some(2)
    })
    .await
    .expect("both nodes registered again after the cut");
    let mut r = l
        .finish(
            &c,
            &proxies,
            "etcd-unreachable",
            &mode,
            healed,
            profile.recovery_timeout,
        )
        .await;
    r.detection_ms = expired.map(|d| d.as_millis() as u64);
    r.facts
        .insert("cut_ms".into(), (hold.as_millis() as u64).into());
    r.facts.insert("acked_during_cut".into(), during.into());
    r.facts.insert(
        "registered_again_after_heal_ms".into(),
        (back.as_millis() as u64).into(),
    );
    r.notes.push(
        "detection: time until both nodes' leases had expired in etcd (None: they did not within the cut)"
            .into(),
    );
    check(&r);
    eprintln!("whole control-plane run: {:?}", started.elapsed());
}
