//! The shared cluster catalog: the topics and subscriptions every node of a cluster must
//! have, stored in the registry without a lease (they outlive every process).
//!
//! Owns the catalog's types ([`CatalogKind`], [`CatalogEntry`], [`CatalogEvent`],
//! [`CatalogWatch`]) and the watch bookkeeping both registry implementations share
//! ([`CatalogTracker`]): what a watcher has told its consumer so far, and the events that
//! bring the consumer from that view to a fresh snapshot after a broken watch. Values are
//! opaque JSON to the registry; nodes give them meaning (`TopicConfig`,
//! `SubscriptionSpec` of meshd-core) and validate them before writing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What a catalog entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    /// A schema with all its versions; the value is its `SchemaCatalogEntry`. First in
    /// the order: applied before the topics that bind it, deleted after them.
    Schema,
    /// A topic; the value is its `TopicConfig`.
    Topic,
    /// A subscription; the value is its `SubscriptionSpec`.
    Subscription,
}

impl CatalogKind {
    /// The key directory: `schemas`, `topics` or `subscriptions`.
    pub fn dir(self) -> &'static str {
        match self {
            CatalogKind::Schema => "schemas",
            CatalogKind::Topic => "topics",
            CatalogKind::Subscription => "subscriptions",
        }
    }
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Topic or subscription.
    pub kind: CatalogKind,
    /// Its name.
    pub name: String,
    /// Its definition (JSON).
    pub value: serde_json::Value,
}

/// A change of the catalog, as [`Registry::watch_catalog`](super::Registry::watch_catalog)
/// reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogEvent {
    /// An entry was created or changed.
    Put(CatalogEntry),
    /// An entry was deleted.
    Delete(CatalogKind, String),
    /// Everything before this event is the complete current catalog: sent after the
    /// initial snapshot and after every re-synchronisation.
    Synced,
}

/// A stream of catalog changes. Dropping it stops the watch.
#[derive(Debug)]
pub struct CatalogWatch {
    rx: mpsc::Receiver<CatalogEvent>,
}

impl CatalogWatch {
    pub(crate) fn new(rx: mpsc::Receiver<CatalogEvent>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the watch ended.
    pub async fn recv(&mut self) -> Option<CatalogEvent> {
        self.rx.recv().await
    }
}

/// The catalog as the consumer of one watch knows it.
#[derive(Debug, Default)]
pub(crate) struct CatalogTracker {
    known: BTreeMap<(CatalogKind, String), serde_json::Value>,
}

impl CatalogTracker {
    /// Events turning the consumer's view into `snapshot`, ending with `Synced`. Topics
    /// come before subscriptions so a consumer can apply them in order.
    pub(crate) fn resync(&mut self, snapshot: Vec<CatalogEntry>) -> Vec<CatalogEvent> {
        let fresh: BTreeMap<(CatalogKind, String), serde_json::Value> = snapshot
            .into_iter()
            .map(|e| ((e.kind, e.name), e.value))
            .collect();
        let mut events = Vec::new();
        // Deletes: subscriptions first (a topic can go only once nothing reads it).
        let mut gone: Vec<&(CatalogKind, String)> = self
            .known
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .collect();
        gone.sort_by_key(|(k, n)| (std::cmp::Reverse(*k), n.clone()));
        for (kind, name) in gone {
            events.push(CatalogEvent::Delete(*kind, name.clone()));
        }
        for ((kind, name), value) in &fresh {
            if self.known.get(&(*kind, name.clone())) != Some(value) {
                events.push(CatalogEvent::Put(CatalogEntry {
                    kind: *kind,
                    name: name.clone(),
                    value: value.clone(),
                }));
            }
        }
        events.push(CatalogEvent::Synced);
        self.known = fresh;
        events
    }

    /// Records a put; `None` when the consumer already has this exact value.
    pub(crate) fn put(&mut self, entry: CatalogEntry) -> Option<CatalogEvent> {
        let key = (entry.kind, entry.name.clone());
        if self.known.get(&key) == Some(&entry.value) {
            return None;
        }
        self.known.insert(key, entry.value.clone());
        Some(CatalogEvent::Put(entry))
    }

    /// Records a delete; `None` when the entry was unknown.
    pub(crate) fn delete(&mut self, kind: CatalogKind, name: String) -> Option<CatalogEvent> {
        self.known
            .remove(&(kind, name.clone()))
            .map(|_| CatalogEvent::Delete(kind, name))
    }
}

/// Sends events in order; `false` once the consumer went away.
pub(crate) async fn forward(tx: &mpsc::Sender<CatalogEvent>, events: Vec<CatalogEvent>) -> bool {
    for e in events {
        if tx.send(e).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(kind: CatalogKind, name: &str, v: serde_json::Value) -> CatalogEntry {
        CatalogEntry {
            kind,
            name: name.into(),
            value: v,
        }
    }

    #[test]
    fn resync_orders_topics_first_and_deletes_subscriptions_first() {
        let mut t = CatalogTracker::default();
        let ev = t.resync(vec![
            e(CatalogKind::Subscription, "s", json!({"topic": "t"})),
            e(CatalogKind::Topic, "t", json!({})),
        ]);
        assert_eq!(
            ev,
            vec![
                CatalogEvent::Put(e(CatalogKind::Topic, "t", json!({}))),
                CatalogEvent::Put(e(CatalogKind::Subscription, "s", json!({"topic": "t"}))),
                CatalogEvent::Synced
            ]
        );
        assert_eq!(t.put(e(CatalogKind::Topic, "t", json!({}))), None);
        let ev = t.resync(vec![]);
        assert_eq!(
            ev,
            vec![
                CatalogEvent::Delete(CatalogKind::Subscription, "s".into()),
                CatalogEvent::Delete(CatalogKind::Topic, "t".into()),
                CatalogEvent::Synced
            ]
        );
        assert_eq!(t.delete(CatalogKind::Topic, "t".into()), None);
    }
}
