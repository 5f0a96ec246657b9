//! The registry against a real etcd (`/usr/bin/etcd`, started per test on free loopback
//! ports): the conformance suite, the raw key layout, and etcd being unreachable for
//! longer than a lease TTL (paused with SIGSTOP, or killed and restarted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions};
use meshd_scheduler::registry::testing::conformance::RegistryFactory;
use meshd_scheduler::registry::testing::{eventually, EtcdServer};
use meshd_scheduler::registry::{
    EtcdConfig, EtcdRegistry, LeaseConfig, MemberEvent, MemberGroups, MemberHandle, MemberId,
    MemberInfo, MemberLoad, MemberState, MemberStatus, MemberWatch, Registry, RegistryError, Role,
};
use tokio::time::{timeout, Instant};

static CLUSTER: AtomicU64 = AtomicU64::new(0);

fn config(server: &EtcdServer, cluster: &str) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(vec![server.endpoint()], cluster);
    cfg.op_timeout = Duration::from_millis(500);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg
}

struct Etcd {
    server: EtcdServer,
    cluster: String,
}

#[async_trait]
impl RegistryFactory for Etcd {
    async fn client(&self) -> Arc<dyn Registry> {
        Arc::new(
            EtcdRegistry::connect(config(&self.server, &self.cluster))
                .await
                .expect("connect"),
        )
    }

    fn lease(&self) -> LeaseConfig {
        LeaseConfig::with_ttl(Duration::from_secs(1))
    }
}

async fn etcd() -> Etcd {
    Etcd {
        server: EtcdServer::start().await.expect("start etcd"),
        cluster: format!("c{}", CLUSTER.fetch_add(1, Ordering::Relaxed)),
    }
}

mod conformance {
    meshd_scheduler::registry_conformance_tests!(super::etcd());
}

/// The keys in etcd are the documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_layout_in_etcd() {
    let server = EtcdServer::start().await.expect("etcd");
    let reg = EtcdRegistry::connect(config(&server, "eu-1"))
        .await
        .expect("connect");
    let mut info = MemberInfo::new(Role::Node, "n1", "http://127.0.0.1:8080");
    info.groups = MemberGroups {
        producer: ["orders/app".to_string()].into(),
        consumer: ["billing".to_string()].into(),
    };
    let h = reg
        .register(info.clone(), LeaseConfig::with_ttl(Duration::from_secs(2)))
        .await
        .expect("register");
    let p = reg
        .register(
            MemberInfo::new(Role::Proxy, "p1", "http://127.0.0.1:8081"),
            LeaseConfig::with_ttl(Duration::from_secs(2)),
        )
        .await
        .expect("register proxy");
    reg.put_placement_if(
        None,
        &meshd_scheduler::registry::Placement {
            epoch: 1,
            ..Default::default()
        },
    )
    .await
    .expect("placement");

    let mut raw = Client::connect([server.endpoint()], None)
        .await
        .expect("raw");
    let resp = raw
        .get("/meshd/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let keys: Vec<&str> = resp
        .kvs()
        .iter()
        .map(|kv| kv.key_str().expect("utf8"))
        .collect();
    assert_eq!(
        keys,
        [
            "/meshd/eu-1/groups/consumer/billing/node:n1",
            "/meshd/eu-1/groups/producer/orders%2Fapp/node:n1",
            "/meshd/eu-1/nodes/n1",
            "/meshd/eu-1/placement/current",
            "/meshd/eu-1/proxies/p1",
        ]
    );
    let lease = h.status().borrow().lease_id.expect("lease");
    for kv in resp.kvs() {
        let key = kv.key_str().expect("utf8");
        if key.contains("n1") {
            assert_eq!(kv.lease(), lease, "{key} is on the member's lease");
        }
        if key.ends_with("placement/current") {
            assert_eq!(kv.lease(), 0, "placement has no lease");
        }
    }
    let stored: MemberInfo =
        serde_json::from_slice(resp.kvs()[2].value()).expect("member info json");
    assert_eq!(stored, info);
    h.deregister().await.expect("deregister");
    p.deregister().await.expect("deregister");
}

async fn wait_status(
    h: &MemberHandle,
    within: Duration,
    what: &str,
    pred: impl Fn(&MemberStatus) -> bool,
) -> MemberStatus {
    let mut rx = h.status();
    let result = timeout(within, async {
        rx.wait_for(|s| pred(s)).await.map(|s| s.clone())
    })
    .await;
    match result {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("status channel closed while waiting for {what}"),
        Err(_) => panic!(
            "status never reached {what} within {within:?}; last {:?}",
            h.status().borrow()
        ),
    }
}

/// A member (1 s lease) and an observer client watching it.
struct Outage {
    member: MemberHandle,
    observer: EtcdRegistry,
    watch: MemberWatch,
}

async fn setup(server: &EtcdServer, cluster: &str) -> Outage {
    let reg = EtcdRegistry::connect(config(server, cluster))
        .await
        .expect("connect");
    let observer = EtcdRegistry::connect(config(server, cluster))
        .await
        .expect("connect observer");
    let member = reg
        .register(
            MemberInfo::new(Role::Node, "n1", "http://127.0.0.1:8080"),
            LeaseConfig::with_ttl(Duration::from_secs(1)),
        )
        .await
        .expect("register");
    let mut watch = observer.watch_members().await.expect("watch");
    loop {
        match timeout(Duration::from_secs(5), watch.recv()).await {
            Ok(Some(MemberEvent::Synced)) => break,
            Ok(Some(_)) => {}
            other => panic!("no snapshot: {other:?}"),
        }
    }
    Outage {
        member,
        observer,
        watch,
    }
}

const LOAD: MemberLoad = MemberLoad {
    events_per_sec: 99.0,
    connections: 3,
};

/// After etcd became unreachable at `started`: the member notices the lost lease, keeps
/// working (an update is kept), and `bring_back` restores etcd after `outage`.
async fn lose_lease(o: &Outage, started: Instant) {
    let lost = wait_status(&o.member, Duration::from_secs(10), "lease lost", |s| {
        s.lease_losses >= 1
    })
    .await;
    let lost_after = started.elapsed();
    assert_eq!(lost.state, MemberState::Lost, "{lost:?}");
    assert!(lost.keep_alive_failures >= 1, "{lost:?}");
    assert_eq!(lost.lease_id, None);
    // Last acknowledged keep-alive at most one interval (~333 ms) before the outage.
    assert!(lost_after >= Duration::from_millis(600), "{lost_after:?}");
    // The member keeps running: the update is kept for re-registration.
    assert!(matches!(
        o.member.set_load(LOAD).await,
        Err(RegistryError::NotRegistered { .. })
    ));
}

/// After etcd is back: the member re-registers under a new lease, with the info updated
/// during the outage, and the observer's watch (which broke or stalled) reports it.
async fn recover(o: &mut Outage, first_lease: Option<i64>, back: Instant) -> Duration {
    let st = wait_status(&o.member, Duration::from_secs(15), "re-registered", |s| {
        s.registrations >= 2 && s.state == MemberState::Registered
    })
    .await;
    let took = back.elapsed();
    assert_eq!(st.lease_losses, 1, "{st:?}");
    assert!(
        st.lease_id.is_some() && st.lease_id != first_lease,
        "{st:?}"
    );
    let listed = o
        .observer
        .list_members()
        .await
        .expect("list after recovery");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "n1");
    assert_eq!(listed[0].load, LOAD, "the update made during the outage");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, o.watch.recv()).await {
            Ok(Some(MemberEvent::Put(i))) if i.id == "n1" && i.load == LOAD => break,
            Ok(Some(_)) => {}
            other => panic!("observer watch did not report the re-registration: {other:?}"),
        }
    }
    took
}

/// etcd frozen (SIGSTOP) for 2 s with a 1 s lease: the member counts the lease lost,
/// keeps running, and re-registers by itself once etcd answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_reregisters_after_etcd_pause() {
    let server = EtcdServer::start().await.expect("etcd");
    let mut o = setup(&server, "pause").await;
    let first_lease = o.member.status().borrow().lease_id;
    let started = Instant::now();
    server.pause().expect("SIGSTOP");
    lose_lease(&o, started).await;
    // The fault lasts 2 s (twice the TTL); this sleep is the outage, not a synchronisation.
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    server.resume().expect("SIGCONT");
    let took = recover(&mut o, first_lease, Instant::now()).await;
    eprintln!("re-registered {took:?} after SIGCONT");
    o.member.deregister().await.expect("deregister");
    assert!(o.observer.list_members().await.expect("list").is_empty());
}

/// etcd killed and restarted on the same data dir and ports after 2 s: same recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_reregisters_after_etcd_restart() {
    let mut server = EtcdServer::start().await.expect("etcd");
    let mut o = setup(&server, "restart").await;
    let first_lease = o.member.status().borrow().lease_id;
    let started = Instant::now();
    server.kill();
    lose_lease(&o, started).await;
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    server.restart().await.expect("restart etcd");
    let took = recover(&mut o, first_lease, Instant::now()).await;
    eprintln!("re-registered {took:?} after etcd answered again");
    o.member.deregister().await.expect("deregister");
}

/// A second client sees a crashed member disappear when its lease expires; the crashed
/// member's lease is not renewed by anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_client_sees_expiry() {
    let server = EtcdServer::start().await.expect("etcd");
    let mut o = setup(&server, "expiry").await;
    let t = Instant::now();
    o.member.abandon();
    let deadline = Duration::from_secs(4);
    loop {
        match timeout(deadline, o.watch.recv()).await {
            Ok(Some(MemberEvent::Delete(id))) => {
                assert_eq!(id, MemberId::node("n1"));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no delete: {other:?}"),
        }
    }
    let waited = t.elapsed();
    eprintln!("crashed member gone after {waited:?} (ttl 1 s)");
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(
        eventually(Duration::from_secs(1), || async {
            o.observer.list_members().await.map(|m| m.is_empty()) == Ok(true)
        })
        .await
    );
}

/// An idle watch keeps its stream: the client's HTTP/2 pings stay within etcd's default
/// ping policy (pings every 500 ms made etcd drop the connection every ~2 s, each time
/// forcing a re-list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_is_not_dropped() {
    let server = EtcdServer::start().await.expect("etcd");
    let reg = EtcdRegistry::connect(EtcdConfig::new(vec![server.endpoint()], "idle"))
        .await
        .expect("connect");
    let mut w = reg.watch_members().await.expect("watch");
    let mut synced = 0;
    let end = Instant::now() + Duration::from_secs(4);
    while let Ok(Some(e)) = tokio::time::timeout_at(end, w.recv()).await {
        if e == MemberEvent::Synced {
            synced += 1;
        }
    }
    assert_eq!(synced, 1, "the watch re-listed: its stream was dropped");
}

/// With etcd down, calls fail within their timeout with a retryable error; the same
/// client works again once etcd is back (it reconnects by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_etcd_is_down_and_recover() {
    let mut server = EtcdServer::start().await.expect("etcd");
    let reg = EtcdRegistry::connect(config(&server, "down"))
        .await
        .expect("connect");
    reg.list_members().await.expect("list while up");
    server.kill();
    let info = MemberInfo::new(Role::Node, "n1", "http://127.0.0.1:8080");
    let lease = LeaseConfig::with_ttl(Duration::from_secs(1));
    let t = Instant::now();
    let err = reg
        .register(info.clone(), lease)
        .await
        .expect_err("etcd is down");
    assert!(
        matches!(
            err,
            RegistryError::Unavailable(_) | RegistryError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(reg.get_placement().await.is_err());
    server.restart().await.expect("restart");
    let mut handle = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.is_none() && Instant::now() < deadline {
        handle = reg.register(info.clone(), lease).await.ok();
        if handle.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let handle = handle.expect("register after etcd came back");
    assert_eq!(reg.list_members().await.expect("list"), vec![info]);
    handle.deregister().await.expect("deregister");
}

/// A lease revoked behind the member's back (an operator's `etcdctl lease revoke`, or
/// etcd expiring it) is noticed from etcd's answer at the next keep-alive, not after a
/// TTL of silence: the member re-registers under a new lease and observers see it return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_reregisters_after_server_side_revoke() {
    let server = EtcdServer::start().await.expect("etcd");
    let mut o = setup(&server, "revoked").await;
    let first = o.member.status().borrow().lease_id.expect("lease");
    let mut raw = Client::connect([server.endpoint()], None)
        .await
        .expect("raw");
    let t = Instant::now();
    raw.lease_revoke(first).await.expect("revoke");
    let st = wait_status(&o.member, Duration::from_secs(5), "re-registered", |s| {
        s.registrations >= 2 && s.state == MemberState::Registered
    })
    .await;
    let took = t.elapsed();
    eprintln!("re-registered {took:?} after a server-side revoke (interval 333 ms)");
    assert_eq!(st.lease_losses, 1);
    assert_eq!(st.keep_alive_failures, 0, "etcd answered; nothing failed");
    assert!(st.lease_id.is_some_and(|l| l != first), "{st:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let d = Duration::from_secs(5);
    let mut events = Vec::new();
    while events.len() < 2 {
        match timeout(d, o.watch.recv()).await {
            Ok(Some(MemberEvent::Synced)) => {}
            Ok(Some(e)) => events.push(e),
            other => panic!("watch: {other:?}"),
        }
    }
    assert_eq!(events[0], MemberEvent::Delete(MemberId::node("n1")));
    assert!(matches!(&events[1], MemberEvent::Put(i) if i.id == "n1"));
    o.member.deregister().await.expect("deregister");
}
