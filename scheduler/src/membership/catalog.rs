//! What a node does with the cluster catalog's watch, as a pure state machine: entries
//! wait until the watch has sent its snapshot (`Synced`), then are applied topics first;
//! an entry that could not be applied yet (a subscription whose topic is not there) is
//! retried; a delete of an entry not applied yet cancels it. The shell applies the
//! [`CatalogAction`]s to the node and reports failures with [`CatalogSync::failed`].

use std::collections::BTreeMap;

use crate::registry::{CatalogEvent, CatalogKind};

/// What the shell must apply to the node.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogAction {
    /// Create or update the entry.
    Apply {
        /// Topic or subscription.
        kind: CatalogKind,
        /// Its name.
        name: String,
        /// Its definition.
        value: serde_json::Value,
    },
    /// Delete the entry (absent already is fine).
    Remove {
        /// Topic or subscription.
        kind: CatalogKind,
        /// Its name.
        name: String,
    },
}

/// The catalog sync of one watch.
#[derive(Debug, Default)]
pub struct CatalogSync {
    pending: BTreeMap<(CatalogKind, String), serde_json::Value>,
    synced: bool,
}

impl CatalogSync {
    /// A sync for a new watch (nothing pending, snapshot not complete).
    pub fn new() -> CatalogSync {
        CatalogSync::default()
    }

    /// One watch event; returns what to apply now.
    pub fn event(&mut self, ev: CatalogEvent) -> Vec<CatalogAction> {
        let mut out = Vec::new();
        match ev {
            CatalogEvent::Put(e) => {
                self.pending.insert((e.kind, e.name), e.value);
            }
            CatalogEvent::Delete(kind, name) => {
                self.pending.remove(&(kind, name.clone()));
                if self.synced {
                    out.push(CatalogAction::Remove { kind, name });
                }
            }
            CatalogEvent::Synced => self.synced = true,
        }
        out.extend(self.due());
        out
    }

    /// The pending entries to apply now (topics first), once the snapshot is complete.
    /// Called after every event and on the retry period.
    pub fn due(&mut self) -> Vec<CatalogAction> {
        if !self.synced {
            return Vec::new();
        }
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|((kind, name), value)| CatalogAction::Apply { kind, name, value })
            .collect()
    }

    /// An [`CatalogAction::Apply`] failed: retried on the next [`CatalogSync::due`] unless
    /// a newer value or a delete arrived meanwhile.
    pub fn failed(&mut self, kind: CatalogKind, name: String, value: serde_json::Value) {
        self.pending.entry((kind, name)).or_insert(value);
    }

    /// Whether entries wait to be applied.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::CatalogEntry;
    use serde_json::json;

    fn put(kind: CatalogKind, name: &str) -> CatalogEvent {
        CatalogEvent::Put(CatalogEntry {
            kind,
            name: name.into(),
            value: json!({"n": name}),
        })
    }

    #[test]
    fn waits_for_the_snapshot_then_applies_topics_first_and_retries_failures() {
        let mut s = CatalogSync::new();
        assert!(s.event(put(CatalogKind::Subscription, "s")).is_empty());
        assert!(s.event(put(CatalogKind::Topic, "t")).is_empty());
        // A delete before the snapshot completes cancels a pending entry, removes nothing.
        assert!(s.event(put(CatalogKind::Topic, "gone")).is_empty());
        assert!(s
            .event(CatalogEvent::Delete(CatalogKind::Topic, "gone".into()))
            .is_empty());
        let acts = s.event(CatalogEvent::Synced);
        let names: Vec<(CatalogKind, String)> = acts
            .iter()
            .map(|a| match a {
                CatalogAction::Apply { kind, name, .. } => (*kind, name.clone()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (CatalogKind::Topic, "t".to_string()),
                (CatalogKind::Subscription, "s".to_string())
            ]
        );
        s.failed(CatalogKind::Subscription, "s".into(), json!({"n": "s"}));
        assert!(s.has_pending());
        assert_eq!(s.due().len(), 1);
        assert!(!s.has_pending());
        // After the snapshot a delete is applied at once.
        assert_eq!(
            s.event(CatalogEvent::Delete(CatalogKind::Topic, "t".into())),
            vec![CatalogAction::Remove {
                kind: CatalogKind::Topic,
                name: "t".into()
            }]
        );
    }

    #[test]
    fn a_failed_apply_does_not_override_a_newer_value() {
        let mut s = CatalogSync::new();
        s.event(CatalogEvent::Put(CatalogEntry {
            kind: CatalogKind::Topic,
            name: "t".into(),
            value: json!({"v": 2}),
        }));
        s.failed(CatalogKind::Topic, "t".into(), json!({"v": 1}));
        assert_eq!(
            s.event(CatalogEvent::Synced),
            vec![CatalogAction::Apply {
                kind: CatalogKind::Topic,
                name: "t".into(),
                value: json!({"v": 2})
            }]
        );
    }
}
