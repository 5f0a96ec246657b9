//! Membership watch bookkeeping shared by both implementations: what the watcher has
//! told its consumer so far, and the events that bring the consumer from that view to a
//! fresh snapshot (used at start and after a broken watch).

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::{MemberEvent, MemberId, MemberInfo};

/// The membership as the consumer of one watch knows it.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    known: BTreeMap<MemberId, MemberInfo>,
}

impl Tracker {
    /// Events turning the consumer's view into `snapshot`, ending with `Synced`.
    pub(crate) fn resync(&mut self, snapshot: Vec<MemberInfo>) -> Vec<MemberEvent> {
        let fresh: BTreeMap<MemberId, MemberInfo> = snapshot
            .into_iter()
            .map(|info| (info.member_id(), info))
            .collect();
        let mut events = Vec::new();
        for id in self.known.keys() {
            if !fresh.contains_key(id) {
                events.push(MemberEvent::Delete(id.clone()));
            }
        }
        for (id, info) in &fresh {
            if self.known.get(id) != Some(info) {
                events.push(MemberEvent::Put(info.clone()));
            }
        }
        events.push(MemberEvent::Synced);
        self.known = fresh;
        events
    }

    /// Records a put; returns the event to forward.
    pub(crate) fn put(&mut self, info: MemberInfo) -> MemberEvent {
        self.known.insert(info.member_id(), info.clone());
        MemberEvent::Put(info)
    }

    /// Records a delete; returns the event to forward, `None` if the member was unknown.
    pub(crate) fn delete(&mut self, id: MemberId) -> Option<MemberEvent> {
        self.known.remove(&id).map(|_| MemberEvent::Delete(id))
    }
}

/// Sends events in order; `false` once the consumer went away.
pub(crate) async fn forward(tx: &mpsc::Sender<MemberEvent>, events: Vec<MemberEvent>) -> bool {
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
    use crate::registry::Role;

    #[test]
    fn resync_emits_the_difference() {
        let a = MemberInfo::new(Role::Node, "a", "http://a");
        let b = MemberInfo::new(Role::Node, "b", "http://b");
        let mut t = Tracker::default();
        assert_eq!(
            t.resync(vec![a.clone(), b.clone()]),
            vec![
                MemberEvent::Put(a.clone()),
                MemberEvent::Put(b.clone()),
                MemberEvent::Synced
            ]
        );
        let mut b2 = b.clone();
        b2.load.connections = 3;
        let c = MemberInfo::new(Role::Proxy, "c", "http://c");
        assert_eq!(
            t.resync(vec![b2.clone(), c.clone()]),
            vec![
                MemberEvent::Delete(a.member_id()),
                MemberEvent::Put(b2),
                MemberEvent::Put(c),
                MemberEvent::Synced
            ]
        );
        assert_eq!(t.delete(a.member_id()), None);
    }
}
