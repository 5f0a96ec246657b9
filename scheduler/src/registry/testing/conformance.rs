//! The registry conformance suite, written once and run against every implementation
//! through a [`RegistryFactory`]. [`registry_conformance_tests!`](crate::registry_conformance_tests)
//! expands to one `#[tokio::test]` per case.
//!
//! Every case gets a fresh factory (a fresh cluster store) and talks to it through at
//! least two clients, so what one member does is checked from another client's view.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{timeout, Instant};

use super::eventually;
use crate::registry::{
    CatalogEvent, CatalogKind, CatalogWatch, LeaseConfig, MemberEvent, MemberGroups, MemberId,
    MemberInfo, MemberLoad, MemberState, MemberWatch, Placement, Registry, RegistryError, Role,
    TokenEntry, TokenEvent, TokenWatch,
};

/// Makes clients of one shared cluster store.
#[async_trait]
pub trait RegistryFactory: Send + Sync {
    /// A new client of the store (for etcd: a new connection).
    async fn client(&self) -> Arc<dyn Registry>;
    /// Lease settings for registrations in the tests (short TTL).
    fn lease(&self) -> LeaseConfig;
}

fn node(id: &str) -> MemberInfo {
    MemberInfo::new(Role::Node, id, format!("http://{id}.local:8080"))
}

fn proxy(id: &str) -> MemberInfo {
    MemberInfo::new(Role::Proxy, id, format!("http://{id}.local:8081"))
}

async fn next_event(w: &mut MemberWatch, within: Duration) -> MemberEvent {
    match timeout(within, w.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("member watch ended"),
        Err(_) => panic!("no member event within {within:?}"),
    }
}

/// Reads the snapshot part of a watch (up to `Synced`).
async fn snapshot(w: &mut MemberWatch) -> Vec<MemberInfo> {
    let mut out = Vec::new();
    loop {
        match next_event(w, Duration::from_secs(5)).await {
            MemberEvent::Put(i) => out.push(i),
            MemberEvent::Synced => return out,
            MemberEvent::Delete(id) => panic!("delete of {id} inside the snapshot"),
        }
    }
}

/// Waits for the next event that is not `Synced`.
async fn next_change(w: &mut MemberWatch, within: Duration) -> MemberEvent {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(w, left).await {
            MemberEvent::Synced => continue,
            e => return e,
        }
    }
}

async fn listed(reg: &dyn Registry) -> Vec<MemberId> {
    reg.list_members()
        .await
        .expect("list_members")
        .iter()
        .map(MemberInfo::member_id)
        .collect()
}

/// Register a node and a proxy, list them from another client, deregister one, drop the
/// other's handle: both leave long before their lease would expire.
pub async fn register_list_deregister(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    assert!(b.list_members().await.expect("list").is_empty());
    let n1 = node("n1");
    let p1 = proxy("p1");
    let hn = a.register(n1.clone(), lease).await.expect("register n1");
    let hp = a.register(p1.clone(), lease).await.expect("register p1");
    assert_eq!(hn.id(), &MemberId::node("n1"));
    let members = b.list_members().await.expect("list");
    assert_eq!(members, vec![n1.clone(), p1.clone()]);

    hn.deregister().await.expect("deregister");
    assert_eq!(listed(&*b).await, vec![MemberId::proxy("p1")]);

    let dropped = Instant::now();
    drop(hp);
    assert!(
        eventually(lease.ttl / 2, || async { listed(&*b).await.is_empty() }).await,
        "a dropped handle must revoke its lease, not wait for expiry"
    );
    assert!(dropped.elapsed() < lease.ttl / 2);
}

/// A clean deregister removes the member at once: gone from the list when the call
/// returns, and watchers see the delete well before the TTL.
pub async fn clean_deregister_removes_at_once(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    let mut w = b.watch_members().await.expect("watch");
    assert!(snapshot(&mut w).await.is_empty());
    let info = node("n1");
    let h = a.register(info.clone(), lease).await.expect("register");
    assert_eq!(
        next_change(&mut w, Duration::from_secs(5)).await,
        MemberEvent::Put(info)
    );
    let t = Instant::now();
    h.deregister().await.expect("deregister");
    assert!(listed(&*b).await.is_empty(), "listed after deregister");
    assert_eq!(
        next_change(&mut w, lease.ttl / 2).await,
        MemberEvent::Delete(MemberId::node("n1"))
    );
    assert!(t.elapsed() < lease.ttl / 2, "{:?}", t.elapsed());
}

/// A crashed member (keep-alive stopped, lease not revoked) stays listed until its lease
/// expires, then another client sees it deleted.
pub async fn lease_expires_when_keepalive_stops(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    let mut w = b.watch_members().await.expect("watch");
    assert!(snapshot(&mut w).await.is_empty());
    let h = a.register(node("n1"), lease).await.expect("register");
    assert!(matches!(
        next_change(&mut w, Duration::from_secs(5)).await,
        MemberEvent::Put(ref i) if i.id == "n1"
    ));
    let t = Instant::now();
    h.abandon();
    assert_eq!(
        listed(&*b).await,
        vec![MemberId::node("n1")],
        "an abandoned lease must still be alive right away"
    );
    let within = lease.ttl * 2 + Duration::from_secs(1);
    assert_eq!(
        next_change(&mut w, within).await,
        MemberEvent::Delete(MemberId::node("n1"))
    );
    let waited = t.elapsed();
    // Renewed at most one keep-alive interval before the abandon.
    let earliest = lease
        .ttl
        .saturating_sub(lease.interval() + Duration::from_millis(200));
    assert!(
        waited >= earliest,
        "expired after {waited:?}, ttl {:?}",
        lease.ttl
    );
    assert!(listed(&*b).await.is_empty());
}

/// Keep-alive holds a member well past its TTL, with a steady status.
pub async fn keepalive_holds_member_past_ttl(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    let h = a.register(node("n1"), lease).await.expect("register");
    let status = h.status().borrow().clone();
    assert_eq!(status.state, MemberState::Registered);
    assert_eq!(status.registrations, 1);
    assert!(status.lease_id.is_some());
    let mut w = b.watch_members().await.expect("watch");
    assert_eq!(snapshot(&mut w).await.len(), 1);
    // Observing a period in which nothing may happen: this sleep is the test itself.
    tokio::time::sleep(lease.ttl * 3).await;
    assert_eq!(listed(&*b).await, vec![MemberId::node("n1")]);
    let status = h.status().borrow().clone();
    assert_eq!(status.state, MemberState::Registered);
    assert_eq!(status.registrations, 1);
    assert_eq!(status.lease_losses, 0);
    while let Ok(Some(e)) = timeout(Duration::from_millis(10), w.recv()).await {
        assert!(
            !matches!(e, MemberEvent::Delete(_)),
            "unexpected delete while keep-alive runs"
        );
    }
    h.deregister().await.expect("deregister");
}

/// A watch starts with a snapshot, then reports puts and deletes in order.
pub async fn watch_snapshot_then_ordered_events(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    let ha = a.register(node("a"), lease).await.expect("a");
    let hb = a.register(proxy("b"), lease).await.expect("b");
    let mut w = b.watch_members().await.expect("watch");
    let mut snap: Vec<MemberId> = snapshot(&mut w)
        .await
        .iter()
        .map(MemberInfo::member_id)
        .collect();
    snap.sort();
    assert_eq!(snap, vec![MemberId::node("a"), MemberId::proxy("b")]);

    let hc = a.register(node("c"), lease).await.expect("c");
    let mut a2 = node("a");
    a2.started_at = 7;
    a2.load.connections = 42;
    ha.update(a2.clone()).await.expect("update a");
    hb.deregister().await.expect("deregister b");
    hc.deregister().await.expect("deregister c");

    let d = Duration::from_secs(5);
    assert!(matches!(next_change(&mut w, d).await, MemberEvent::Put(ref i) if i.id == "c"));
    assert_eq!(next_change(&mut w, d).await, MemberEvent::Put(a2));
    assert_eq!(
        next_change(&mut w, d).await,
        MemberEvent::Delete(MemberId::proxy("b"))
    );
    assert_eq!(
        next_change(&mut w, d).await,
        MemberEvent::Delete(MemberId::node("c"))
    );
    ha.deregister().await.expect("deregister a");
    assert_eq!(
        next_change(&mut w, d).await,
        MemberEvent::Delete(MemberId::node("a"))
    );
}

/// Members registering while a watch starts are all seen: the snapshot and the event
/// stream join without a gap.
pub async fn watch_has_no_gap(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for i in 0..20 {
                handles.push(
                    a.register(node(&format!("n{i:02}")), lease)
                        .await
                        .expect("register"),
                );
            }
            handles
        })
    };
    let mut w = b.watch_members().await.expect("watch");
    let handles = writer.await.expect("writer");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 20 {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(&mut w, left).await {
            MemberEvent::Put(i) => {
                seen.insert(i.id);
            }
            MemberEvent::Delete(id) => panic!("unexpected delete of {id}"),
            MemberEvent::Synced => {}
        }
    }
    assert_eq!(seen.len(), 20);
    for h in handles {
        h.deregister().await.expect("deregister");
    }
}

/// Placement is a compare-and-set on the epoch: a wrong expectation is refused, epochs
/// must grow, and of two writers from the same epoch exactly one wins.
pub async fn placement_compare_and_set(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let p = |epoch: u64, node: &str| Placement {
        epoch,
        producer_groups: [("orders".to_string(), node.to_string())].into(),
        consumer_groups: [("billing".to_string(), node.to_string())].into(),
    };
    assert_eq!(a.get_placement().await.expect("get"), None);
    assert_eq!(
        a.put_placement_if(Some(1), &p(2, "n1")).await,
        Err(RegistryError::PlacementConflict {
            expected: Some(1),
            actual: None
        })
    );
    a.put_placement_if(None, &p(1, "n1")).await.expect("first");
    assert_eq!(b.get_placement().await.expect("get"), Some(p(1, "n1")));
    assert_eq!(
        b.put_placement_if(None, &p(2, "n2")).await,
        Err(RegistryError::PlacementConflict {
            expected: None,
            actual: Some(1)
        })
    );
    assert_eq!(
        b.put_placement_if(Some(1), &p(1, "n2")).await,
        Err(RegistryError::PlacementEpochNotIncreasing {
            expected: Some(1),
            new: 1
        })
    );
    b.put_placement_if(Some(1), &p(2, "n2"))
        .await
        .expect("second");
    assert_eq!(a.get_placement().await.expect("get"), Some(p(2, "n2")));

    // Two writers race from epoch 2.
    let (pa, pb) = (p(3, "na"), p(3, "nb"));
    let (ra, rb) = tokio::join!(
        a.put_placement_if(Some(2), &pa),
        b.put_placement_if(Some(2), &pb)
    );
    let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one writer wins: {ra:?} {rb:?}");
    let winner = if ra.is_ok() { "na" } else { "nb" };
    let loser = if ra.is_ok() { rb } else { ra };
    assert_eq!(
        loser,
        Err(RegistryError::PlacementConflict {
            expected: Some(2),
            actual: Some(3)
        })
    );
    assert_eq!(
        a.get_placement().await.expect("get"),
        Some(p(3, winner)),
        "the stored document is the winner's"
    );
}

/// A placement watch holds the latest published document.
pub async fn placement_watch(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let mut rx = b.watch_placement().await.expect("watch");
    assert_eq!(*rx.borrow_and_update(), None);
    let p1 = Placement {
        epoch: 1,
        ..Placement::default()
    };
    a.put_placement_if(None, &p1).await.expect("put 1");
    timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("no placement change seen")
        .expect("watch ended");
    assert_eq!(*rx.borrow_and_update(), Some(p1));
    let p2 = Placement {
        epoch: 2,
        consumer_groups: [("g".to_string(), "n1".to_string())].into(),
        ..Placement::default()
    };
    a.put_placement_if(Some(1), &p2).await.expect("put 2");
    let got = timeout(
        Duration::from_secs(5),
        rx.wait_for(|p| p.as_ref().map(|p| p.epoch) == Some(2)),
    )
    .await
    .expect("epoch 2 not seen")
    .expect("watch ended")
    .clone();
    assert_eq!(got, Some(p2));
}

/// A member updates its load and groups under the same lease; other clients see the new
/// info and group keys; a foreign id is refused; deregistering removes the group keys.
pub async fn update_info(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let lease = f.lease();
    let mut info = node("n1");
    info.groups = MemberGroups {
        producer: ["orders/app".to_string()].into(),
        consumer: ["billing".to_string(), "audit".to_string()].into(),
    };
    let h = a.register(info.clone(), lease).await.expect("register");
    let lease_id = h.status().borrow().lease_id;
    let mut w = b.watch_members().await.expect("watch");
    assert_eq!(snapshot(&mut w).await, vec![info.clone()]);
    let groups = b.list_groups().await.expect("groups");
    assert_eq!(groups.producer.len(), 1);
    assert_eq!(
        groups.producer.get("orders/app"),
        Some(&[MemberId::node("n1")].into())
    );
    assert_eq!(groups.consumer.len(), 2);

    let load = MemberLoad {
        events_per_sec: 1250.5,
        connections: 17,
    };
    h.set_load(load.clone()).await.expect("set_load");
    info.load = load;
    assert_eq!(
        next_change(&mut w, Duration::from_secs(5)).await,
        MemberEvent::Put(info.clone())
    );
    let groups2 = MemberGroups {
        producer: Default::default(),
        consumer: ["billing".to_string(), "search".to_string()].into(),
    };
    h.set_groups(groups2.clone()).await.expect("set_groups");
    info.groups = groups2;
    assert_eq!(
        next_change(&mut w, Duration::from_secs(5)).await,
        MemberEvent::Put(info.clone())
    );
    assert_eq!(b.list_members().await.expect("list"), vec![info.clone()]);
    let groups = b.list_groups().await.expect("groups");
    assert!(groups.producer.is_empty(), "{groups:?}");
    let names: Vec<&String> = groups.consumer.keys().collect();
    assert_eq!(names, ["billing", "search"]);
    assert_eq!(h.status().borrow().lease_id, lease_id, "same lease");

    let other = node("n2");
    assert!(matches!(
        h.update(other).await,
        Err(RegistryError::InvalidConfig(_))
    ));
    h.deregister().await.expect("deregister");
    assert_eq!(
        b.list_groups().await.expect("groups"),
        Default::default(),
        "group keys go with the lease"
    );
}

async fn next_catalog(w: &mut CatalogWatch) -> CatalogEvent {
    match timeout(Duration::from_secs(5), w.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("catalog watch ended"),
        Err(_) => panic!("no catalog event within 5s"),
    }
}

/// Catalog entries written by one client are listed and watched by another: snapshot
/// (topics first), `Synced`, then puts and deletes in order; deleting twice reports
/// `false` the second time; catalog keys are not members.
pub async fn catalog_put_list_delete_watch(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let sub = serde_json::json!({"name": "s/1", "topic": "t1"});
    a.catalog_put(CatalogKind::Subscription, "s/1", &sub)
        .await
        .expect("put sub");
    a.catalog_put(
        CatalogKind::Topic,
        "t1",
        &serde_json::json!({"partitions": 2}),
    )
    .await
    .expect("put topic");
    let listed = b.catalog_list().await.expect("list");
    let names: Vec<(CatalogKind, &str)> =
        listed.iter().map(|e| (e.kind, e.name.as_str())).collect();
    assert_eq!(
        names,
        vec![
            (CatalogKind::Topic, "t1"),
            (CatalogKind::Subscription, "s/1")
        ]
    );
    assert_eq!(listed[1].value, sub);
    let mut w = b.watch_catalog().await.expect("watch");
    match next_catalog(&mut w).await {
        CatalogEvent::Put(e) => assert_eq!((e.kind, e.name.as_str()), (CatalogKind::Topic, "t1")),
        other => panic!("expected the topic first, got {other:?}"),
    }
    match next_catalog(&mut w).await {
        CatalogEvent::Put(e) => assert_eq!(e.kind, CatalogKind::Subscription),
        other => panic!("expected the subscription, got {other:?}"),
    }
    assert_eq!(next_catalog(&mut w).await, CatalogEvent::Synced);
    let sub2 = serde_json::json!({"name": "s/1", "topic": "t1", "group": "g"});
    a.catalog_put(CatalogKind::Subscription, "s/1", &sub2)
        .await
        .expect("replace");
    match next_catalog(&mut w).await {
        CatalogEvent::Put(e) => assert_eq!(e.value, sub2),
        other => panic!("expected the new spec, got {other:?}"),
    }
    assert!(a
        .catalog_delete(CatalogKind::Subscription, "s/1")
        .await
        .expect("delete"));
    assert!(!a
        .catalog_delete(CatalogKind::Subscription, "s/1")
        .await
        .expect("delete again"));
    assert_eq!(
        next_catalog(&mut w).await,
        CatalogEvent::Delete(CatalogKind::Subscription, "s/1".into())
    );
    assert!(b.list_members().await.expect("members").is_empty());
    assert_eq!(b.catalog_list().await.expect("list").len(), 1);
    // Create-if-absent: the first writes, the second gets the existing value.
    let first = serde_json::json!({"name": "c", "v": 1});
    assert_eq!(
        a.catalog_create(CatalogKind::Subscription, "c", &first)
            .await
            .expect("create"),
        None
    );
    assert_eq!(
        b.catalog_create(CatalogKind::Subscription, "c", &serde_json::json!({"v": 2}))
            .await
            .expect("create again"),
        Some(first.clone())
    );
    match next_catalog(&mut w).await {
        CatalogEvent::Put(e) => assert_eq!(e.value, first),
        other => panic!("expected the created entry, got {other:?}"),
    }
}

async fn next_token_event(w: &mut TokenWatch) -> TokenEvent {
    match timeout(Duration::from_secs(5), w.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("token watch ended"),
        Err(_) => panic!("no token event within 5s"),
    }
}

fn token(id: &str, n: u64) -> TokenEntry {
    TokenEntry {
        id: id.into(),
        value: serde_json::json!({"id": id, "hash": format!("h{n}")}),
    }
}

/// Tokens written by one client are listed and watched by another: a whole snapshot
/// first, then creates and deletes in order. Create never overwrites an id (of many
/// racing creators of one id exactly one wins; racing creators of distinct ids all
/// persist); an import happens once (the second gets the first's marker and writes
/// nothing); token keys are neither members nor catalog entries.
pub async fn tokens_create_delete_import_watch(f: &dyn RegistryFactory) {
    let a = f.client().await;
    let b = f.client().await;
    let t1 = token("t1", 1);
    assert!(a.token_create("t1", &t1.value).await.expect("create"));
    assert!(!b
        .token_create("t1", &token("t1", 2).value)
        .await
        .expect("create taken id"));
    assert_eq!(b.token_list().await.expect("list"), vec![t1.clone()]);
    let mut w = b.watch_tokens().await.expect("watch");
    assert_eq!(
        next_token_event(&mut w).await,
        TokenEvent::Snapshot(vec![t1.clone()])
    );
    // Racing creators of one id: exactly one writes.
    let racers: Vec<_> = (0..8u64)
        .map(|n| {
            let reg = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { reg.token_create("same", &token("same", n).value).await })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.expect("join").expect("create"));
    }
    assert_eq!(won, 1, "exactly one creator of an id wins");
    let TokenEvent::Put(e) = next_token_event(&mut w).await else {
        panic!("expected the created token")
    };
    assert_eq!(e.id, "same");
    // Racing creators of distinct ids: none lost.
    let racers: Vec<_> = (0..16u64)
        .map(|n| {
            let reg = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                reg.token_create(&format!("c{n:02}"), &token("c", n).value)
                    .await
            })
        })
        .collect();
    for r in racers {
        assert!(r.await.expect("join").expect("create"));
    }
    for _ in 0..16 {
        assert!(matches!(next_token_event(&mut w).await, TokenEvent::Put(_)));
    }
    assert_eq!(a.token_list().await.expect("list").len(), 18);
    assert!(b.token_delete("t1").await.expect("delete"));
    assert!(!a.token_delete("t1").await.expect("delete again"));
    assert_eq!(
        next_token_event(&mut w).await,
        TokenEvent::Delete("t1".into())
    );
    // Import once.
    let marker = serde_json::json!({"by": "a"});
    assert_eq!(
        a.tokens_import_once(&marker, &[token("i1", 1), token("i2", 2)])
            .await
            .expect("import"),
        None
    );
    assert_eq!(
        b.tokens_import_once(&serde_json::json!({"by": "b"}), &[token("i3", 3)])
            .await
            .expect("import again"),
        Some(marker)
    );
    let ids: Vec<String> = a
        .token_list()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(ids.contains(&"i1".to_string()) && ids.contains(&"i2".to_string()));
    assert!(!ids.contains(&"i3".to_string()), "a second import wrote");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by id: {ids:?}");
    for want in ["i1", "i2"] {
        match next_token_event(&mut w).await {
            TokenEvent::Put(e) => assert_eq!(e.id, want),
            other => panic!("expected the imported {want}, got {other:?}"),
        }
    }
    let too_many: Vec<TokenEntry> = (0..=crate::registry::tokens::MAX_IMPORT as u64)
        .map(|n| token(&format!("x{n}"), n))
        .collect();
    assert!(matches!(
        a.tokens_import_once(&serde_json::json!({}), &too_many)
            .await,
        Err(RegistryError::InvalidConfig(_))
    ));
    assert!(b.list_members().await.expect("members").is_empty());
    assert!(b.catalog_list().await.expect("catalog").is_empty());
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an expression
/// evaluating to a future of a fresh [`RegistryFactory`] (evaluated once per test).
#[macro_export]
macro_rules! registry_conformance_tests {
    ($make:expr) => {
        $crate::registry_conformance_tests!(@cases $make;
            register_list_deregister,
            clean_deregister_removes_at_once,
            lease_expires_when_keepalive_stops,
            keepalive_holds_member_past_ttl,
            watch_snapshot_then_ordered_events,
            watch_has_no_gap,
            placement_compare_and_set,
            placement_watch,
            update_info,
            catalog_put_list_delete_watch,
            tokens_create_delete_import_watch
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $make.await;
                $crate::registry::testing::conformance::$case(&factory).await;
            }
        )*
    };
}
