//! The in-process registry for `meshd dev` and tests: etcd's semantics (leases with TTL
//! expiry on tokio time, ordered membership events, watch from a snapshot, compare-and-set
//! placement) over an in-memory store. Clones share one store, so several in-process
//! members of a cluster see each other.
//!
//! State lives behind one short-held mutex (never across an await); membership changes
//! are published on a broadcast channel while the mutex is held, so a watcher that takes
//! its snapshot and subscribes under the mutex misses nothing. A watcher that lags behind
//! the broadcast buffer re-synchronises from a fresh snapshot, as the etcd watcher does
//! after a compaction. Each lease has a small timer task that expires it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::catalog::{self, CatalogTracker};
use super::member::{self, Backoff, LeaseBackend};
use super::tokens::{check_import, TokenEntry, TokenEvent, TokenWatch};
use super::watch::{forward, Tracker};
use super::{
    check_epoch, CatalogEntry, CatalogEvent, CatalogKind, CatalogWatch, GroupKind, GroupReport,
    LeaseConfig, MemberEvent, MemberHandle, MemberId, MemberInfo, MemberWatch, Placement, Registry,
    RegistryError,
};

const EVENT_BUFFER: usize = 1024;
const WATCH_CHANNEL: usize = 256;

/// In-memory [`Registry`]; clone it to give several members the same store.
#[derive(Clone)]
pub struct InProcessRegistry {
    cluster: Arc<str>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InProcessRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessRegistry")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<MemberEvent>,
    catalog_events: broadcast::Sender<CatalogEvent>,
    token_events: broadcast::Sender<TokenEvent>,
    placement: watch::Sender<Option<Placement>>,
}

#[derive(Default)]
struct Inner {
    members: BTreeMap<MemberId, (MemberInfo, i64)>,
    /// (kind, group, member) → lease.
    groups: BTreeMap<(GroupKind, String, MemberId), i64>,
    /// lease → deadline.
    leases: HashMap<i64, Instant>,
    next_lease: i64,
    catalog: BTreeMap<(CatalogKind, String), serde_json::Value>,
    tokens: BTreeMap<String, serde_json::Value>,
    tokens_import: Option<serde_json::Value>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Removes a lease and every key attached to it, publishing the deletes.
    fn drop_lease(&mut self, lease: i64, events: &broadcast::Sender<MemberEvent>) {
        self.leases.remove(&lease);
        let gone: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, (_, l))| *l == lease)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.members.remove(&id);
            let _ = events.send(MemberEvent::Delete(id));
        }
        self.groups.retain(|_, l| *l != lease);
    }

    fn lease_alive(&self, lease: i64) -> bool {
        self.leases
            .get(&lease)
            .is_some_and(|deadline| *deadline > Instant::now())
    }

    fn snapshot(&self) -> Vec<MemberInfo> {
        self.members.values().map(|(i, _)| i.clone()).collect()
    }

    fn catalog_snapshot(&self) -> Vec<CatalogEntry> {
        self.catalog
            .iter()
            .map(|((kind, name), value)| CatalogEntry {
                kind: *kind,
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    }

    fn token_snapshot(&self) -> Vec<TokenEntry> {
        self.tokens
            .iter()
            .map(|(id, value)| TokenEntry {
                id: id.clone(),
                value: value.clone(),
            })
            .collect()
    }
}

impl InProcessRegistry {
    /// An empty store for `cluster`.
    pub fn new(cluster: impl Into<String>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (catalog_events, _) = broadcast::channel(EVENT_BUFFER);
        let (token_events, _) = broadcast::channel(EVENT_BUFFER);
        let (placement, _) = watch::channel(None);
        Self {
            cluster: Arc::from(cluster.into()),
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                events,
                catalog_events,
                token_events,
                placement,
            }),
        }
    }
}

/// Expires `lease` at its deadline unless it was renewed meanwhile.
async fn reap(shared: Weak<Shared>, lease: i64) {
    loop {
        let deadline = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut inner = shared.lock();
            match inner.leases.get(&lease) {
                None => return,
                Some(d) if *d <= Instant::now() => {
                    inner.drop_lease(lease, &shared.events);
                    return;
                }
                Some(d) => *d,
            }
        };
        sleep_until(deadline).await;
    }
}

struct MemoryLease {
    shared: Arc<Shared>,
    ttl: Duration,
}

#[async_trait]
impl LeaseBackend for MemoryLease {
    async fn grant(&mut self, ttl: Duration) -> Result<i64, RegistryError> {
        self.ttl = ttl;
        let id = {
            let mut inner = self.shared.lock();
            inner.next_lease += 1;
            let id = inner.next_lease;
            inner.leases.insert(id, Instant::now() + ttl);
            id
        };
        tokio::spawn(reap(Arc::downgrade(&self.shared), id));
        Ok(id)
    }

    async fn write(
        &mut self,
        lease: i64,
        _prev: Option<&MemberInfo>,
        info: &MemberInfo,
    ) -> Result<(), RegistryError> {
        let mut inner = self.shared.lock();
        if !inner.lease_alive(lease) {
            return Err(RegistryError::LeaseNotFound { lease });
        }
        let id = info.member_id();
        inner.groups.retain(|(kind, group, member), _| {
            member != &id || info.groups.of(*kind).contains(group)
        });
        for kind in [GroupKind::Producer, GroupKind::Consumer] {
            for g in info.groups.of(kind) {
                inner.groups.insert((kind, g.clone(), id.clone()), lease);
            }
        }
        inner.members.insert(id, (info.clone(), lease));
        let _ = self.shared.events.send(MemberEvent::Put(info.clone()));
        Ok(())
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<bool, RegistryError> {
        let mut inner = self.shared.lock();
        if inner.lease_alive(lease) {
            inner.leases.insert(lease, Instant::now() + self.ttl);
            Ok(true)
        } else {
            if inner.leases.contains_key(&lease) {
                inner.drop_lease(lease, &self.shared.events);
            }
            Ok(false)
        }
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), RegistryError> {
        let mut inner = self.shared.lock();
        if !inner.leases.contains_key(&lease) {
            return Err(RegistryError::LeaseNotFound { lease });
        }
        inner.drop_lease(lease, &self.shared.events);
        Ok(())
    }
}

#[async_trait]
impl Registry for InProcessRegistry {
    fn cluster(&self) -> &str {
        &self.cluster
    }

    async fn register(
        &self,
        info: MemberInfo,
        lease: LeaseConfig,
    ) -> Result<MemberHandle, RegistryError> {
        let backend = MemoryLease {
            shared: self.shared.clone(),
            ttl: lease.ttl,
        };
        let backoff = Backoff::new(Duration::from_millis(10), lease.interval());
        member::start(backend, info, lease, backoff).await
    }

    async fn list_members(&self) -> Result<Vec<MemberInfo>, RegistryError> {
        Ok(self.shared.lock().snapshot())
    }

    async fn list_groups(&self) -> Result<GroupReport, RegistryError> {
        let inner = self.shared.lock();
        let mut report = GroupReport::default();
        for (kind, group, member) in inner.groups.keys() {
            report.insert(*kind, group.clone(), member.clone());
        }
        Ok(report)
    }

    async fn watch_members(&self) -> Result<MemberWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tracker = Tracker::default();
            'resync: loop {
                let (snapshot, mut sub) = {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    let inner = shared.lock();
                    (inner.snapshot(), shared.events.subscribe())
                };
                if !forward(&tx, tracker.resync(snapshot)).await {
                    return;
                }
                loop {
                    let event = tokio::select! {
                        _ = tx.closed() => return,
                        e = sub.recv() => e,
                    };
                    let out = match event {
                        Ok(MemberEvent::Put(info)) => Some(tracker.put(info)),
                        Ok(MemberEvent::Delete(id)) => tracker.delete(id),
                        Ok(MemberEvent::Synced) => None,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'resync,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if let Some(e) = out {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(MemberWatch::new(rx))
    }

    async fn get_placement(&self) -> Result<Option<Placement>, RegistryError> {
        Ok(self.shared.placement.borrow().clone())
    }

    async fn put_placement_if(
        &self,
        expected_epoch: Option<u64>,
        new: &Placement,
    ) -> Result<(), RegistryError> {
        check_epoch(expected_epoch, new)?;
        let mut result = Ok(());
        self.shared.placement.send_if_modified(|current| {
            let actual = current.as_ref().map(|p| p.epoch);
            if actual == expected_epoch {
                *current = Some(new.clone());
                true
            } else {
                result = Err(RegistryError::PlacementConflict {
                    expected: expected_epoch,
                    actual,
                });
                false
            }
        });
        result
    }

    async fn watch_placement(&self) -> Result<watch::Receiver<Option<Placement>>, RegistryError> {
        Ok(self.shared.placement.subscribe())
    }

    async fn catalog_put(
        &self,
        kind: CatalogKind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(), RegistryError> {
        let mut inner = self.shared.lock();
        inner
            .catalog
            .insert((kind, name.to_string()), value.clone());
        let _ = self
            .shared
            .catalog_events
            .send(CatalogEvent::Put(CatalogEntry {
                kind,
                name: name.to_string(),
                value: value.clone(),
            }));
        Ok(())
    }

    async fn catalog_create(
        &self,
        kind: CatalogKind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        let mut inner = self.shared.lock();
        if let Some(existing) = inner.catalog.get(&(kind, name.to_string())) {
            return Ok(Some(existing.clone()));
        }
        inner
            .catalog
            .insert((kind, name.to_string()), value.clone());
        let _ = self
            .shared
            .catalog_events
            .send(CatalogEvent::Put(CatalogEntry {
                kind,
                name: name.to_string(),
                value: value.clone(),
            }));
        Ok(None)
    }

    async fn catalog_delete(&self, kind: CatalogKind, name: &str) -> Result<bool, RegistryError> {
        let mut inner = self.shared.lock();
        let existed = inner.catalog.remove(&(kind, name.to_string())).is_some();
        if existed {
            let _ = self
                .shared
                .catalog_events
                .send(CatalogEvent::Delete(kind, name.to_string()));
        }
        Ok(existed)
    }

    async fn catalog_list(&self) -> Result<Vec<CatalogEntry>, RegistryError> {
        Ok(self.shared.lock().catalog_snapshot())
    }

    async fn watch_catalog(&self) -> Result<CatalogWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tracker = CatalogTracker::default();
            'resync: loop {
                let (snapshot, mut sub) = {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    let inner = shared.lock();
                    (inner.catalog_snapshot(), shared.catalog_events.subscribe())
                };
                if !catalog::forward(&tx, tracker.resync(snapshot)).await {
                    return;
                }
                loop {
                    let event = tokio::select! {
                        _ = tx.closed() => return,
                        e = sub.recv() => e,
                    };
                    let out = match event {
                        Ok(CatalogEvent::Put(entry)) => tracker.put(entry),
                        Ok(CatalogEvent::Delete(kind, name)) => tracker.delete(kind, name),
                        Ok(CatalogEvent::Synced) => None,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'resync,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if let Some(e) = out {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(CatalogWatch::new(rx))
    }

    async fn token_create(
        &self,
        id: &str,
        value: &serde_json::Value,
    ) -> Result<bool, RegistryError> {
        let mut inner = self.shared.lock();
        if inner.tokens.contains_key(id) {
            return Ok(false);
        }
        inner.tokens.insert(id.to_string(), value.clone());
        let _ = self.shared.token_events.send(TokenEvent::Put(TokenEntry {
            id: id.to_string(),
            value: value.clone(),
        }));
        Ok(true)
    }

    async fn token_delete(&self, id: &str) -> Result<bool, RegistryError> {
        let mut inner = self.shared.lock();
        let existed = inner.tokens.remove(id).is_some();
        if existed {
            let _ = self
                .shared
                .token_events
                .send(TokenEvent::Delete(id.to_string()));
        }
        Ok(existed)
    }

    async fn token_list(&self) -> Result<Vec<TokenEntry>, RegistryError> {
        Ok(self.shared.lock().token_snapshot())
    }

    async fn tokens_import_once(
        &self,
        marker: &serde_json::Value,
        entries: &[TokenEntry],
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        check_import(entries)?;
        let mut inner = self.shared.lock();
        if let Some(existing) = &inner.tokens_import {
            return Ok(Some(existing.clone()));
        }
        inner.tokens_import = Some(marker.clone());
        for e in entries {
            inner.tokens.insert(e.id.clone(), e.value.clone());
            let _ = self.shared.token_events.send(TokenEvent::Put(e.clone()));
        }
        Ok(None)
    }

    async fn watch_tokens(&self) -> Result<TokenWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            'resync: loop {
                let (snapshot, mut sub) = {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    let inner = shared.lock();
                    (inner.token_snapshot(), shared.token_events.subscribe())
                };
                if tx.send(TokenEvent::Snapshot(snapshot)).await.is_err() {
                    return;
                }
                loop {
                    let event = tokio::select! {
                        _ = tx.closed() => return,
                        e = sub.recv() => e,
                    };
                    match event {
                        Ok(e) => {
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'resync,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(TokenWatch::new(rx))
    }
}

#[cfg(test)]
fn members_of(
    report: &GroupReport,
    kind: GroupKind,
    group: &str,
) -> std::collections::BTreeSet<MemberId> {
    let map = match kind {
        GroupKind::Producer => &report.producer,
        GroupKind::Consumer => &report.consumer,
    };
    map.get(group).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MemberGroups, Role};

    #[tokio::test(start_paused = true)]
    async fn lease_expires_on_paused_time() {
        let reg = InProcessRegistry::new("c");
        let h = reg
            .register(
                MemberInfo::new(Role::Node, "n1", "http://n1"),
                LeaseConfig::with_ttl(Duration::from_secs(3)),
            )
            .await
            .expect("register");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(reg.list_members().await.expect("list").len(), 1);
        h.abandon();
        assert_eq!(reg.list_members().await.expect("list").len(), 1);
        // Renewed at most one keep-alive interval (1 s) ago: gone between 2 s and 3 s.
        let t = Instant::now();
        while !reg.list_members().await.expect("list").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let waited = t.elapsed();
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
        assert!(waited <= Duration::from_millis(3010), "{waited:?}");
    }

    #[tokio::test]
    async fn groups_follow_updates() {
        let reg = InProcessRegistry::new("c");
        let mut info = MemberInfo::new(Role::Node, "n1", "http://n1");
        info.groups = MemberGroups {
            producer: ["p1".to_string()].into(),
            consumer: ["c1".to_string(), "c2".to_string()].into(),
        };
        let h = reg
            .register(info.clone(), LeaseConfig::default())
            .await
            .expect("register");
        let r = reg.list_groups().await.expect("groups");
        assert_eq!(members_of(&r, GroupKind::Consumer, "c2").len(), 1);
        info.groups.consumer.remove("c2");
        h.update(info).await.expect("update");
        let r = reg.list_groups().await.expect("groups");
        assert!(members_of(&r, GroupKind::Consumer, "c2").is_empty());
        assert_eq!(
            members_of(&r, GroupKind::Producer, "p1"),
            [MemberId::node("n1")].into()
        );
    }

    /// A watcher that falls more than the broadcast buffer behind re-synchronises from a
    /// snapshot and still ends at the true membership.
    #[tokio::test]
    async fn lagging_watcher_resyncs() {
        let reg = InProcessRegistry::new("c");
        let mut w = reg.watch_members().await.expect("watch");
        assert_eq!(w.recv().await, Some(MemberEvent::Synced));
        let lease = LeaseConfig::with_ttl(Duration::from_secs(30));
        let mut keep = Vec::new();
        // Far more changes than EVENT_BUFFER + WATCH_CHANNEL, without reading.
        for i in 0..(EVENT_BUFFER + WATCH_CHANNEL + 200) {
            let h = reg
                .register(
                    MemberInfo::new(Role::Node, format!("n{i}"), "http://x"),
                    lease,
                )
                .await
                .expect("register");
            if i % 3 == 0 {
                keep.push(h);
            } else {
                h.deregister().await.expect("deregister");
            }
        }
        let truth: std::collections::BTreeSet<MemberId> = reg
            .list_members()
            .await
            .expect("list")
            .iter()
            .map(MemberInfo::member_id)
            .collect();
        assert_eq!(truth.len(), keep.len());
        let mut view = std::collections::BTreeSet::new();
        let mut resyncs = 0;
        while view != truth || resyncs < 1 {
            match tokio::time::timeout(Duration::from_secs(5), w.recv()).await {
                Ok(Some(MemberEvent::Put(i))) => {
                    view.insert(i.member_id());
                }
                Ok(Some(MemberEvent::Delete(id))) => {
                    view.remove(&id);
                }
                Ok(Some(MemberEvent::Synced)) => resyncs += 1,
                other => panic!(
                    "watch stalled: {other:?}; view {} of {}",
                    view.len(),
                    truth.len()
                ),
            }
        }
        assert_eq!(view, truth);
        assert!(
            resyncs >= 1,
            "the watcher lagged, so it must have re-synchronised"
        );
    }
}
