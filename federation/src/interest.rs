//! Interest: which events each direction of a link wants (sans-IO).
//!
//! A cluster announces to each neighbour the complete set of [`InterestEntry`]s it wants
//! from that neighbour: every local subscription (topic + filter, destination itself) and
//! the interest it relays for clusters behind it (see [`crate::routing`]). The neighbour
//! compiles the set once ([`PeerInterest`]) and forwards only the events that match some
//! entry (filter at the source), whose destination may receive the topic under the
//! topology's replication policy and is not already on the event's path.

use std::collections::{BTreeMap, BTreeSet};

use meshd_core::filter::{Filter, FilterSpec};
use meshd_core::wire::InterestEntry;
use meshd_core::Event;

/// One compiled interest entry.
struct Compiled {
    dest: String,
    filter: Option<Filter>,
}

/// The interest a peer announced, compiled for matching.
#[derive(Default)]
pub struct PeerInterest {
    by_topic: BTreeMap<String, Vec<Compiled>>,
    entries: Vec<InterestEntry>,
}

impl std::fmt::Debug for PeerInterest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerInterest")
            .field("entries", &self.entries)
            .finish()
    }
}

/// An entry that could not be compiled (skipped; the rest of the set is used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// The entry.
    pub entry: InterestEntry,
    /// Why.
    pub reason: String,
}

impl PeerInterest {
    /// Compiles an announced set. Entries whose filter does not parse or compile are
    /// returned apart and match nothing.
    pub fn compile(entries: Vec<InterestEntry>) -> (PeerInterest, Vec<BadEntry>) {
        let mut by_topic: BTreeMap<String, Vec<Compiled>> = BTreeMap::new();
        let mut bad = Vec::new();
        for e in &entries {
            let filter = match &e.filter {
                None => None,
                Some(json) => {
                    let spec: Result<FilterSpec, String> =
                        serde_json::from_str(json).map_err(|err| err.to_string());
                    match spec.and_then(|s| Filter::compile(&s).map_err(|err| err.to_string())) {
                        Ok(f) => Some(f),
                        Err(reason) => {
                            bad.push(BadEntry {
                                entry: e.clone(),
                                reason,
                            });
                            continue;
                        }
                    }
                }
            };
            by_topic.entry(e.topic.clone()).or_default().push(Compiled {
                dest: e.dest.clone(),
                filter,
            });
        }
        (PeerInterest { by_topic, entries }, bad)
    }

    /// The topics with any interest.
    pub fn topics(&self) -> impl Iterator<Item = &String> {
        self.by_topic.keys()
    }

    /// The announced entries.
    pub fn entries(&self) -> &[InterestEntry] {
        &self.entries
    }

    /// Is the topic wanted at all?
    pub fn wants_topic(&self, topic: &str) -> bool {
        self.by_topic.contains_key(topic)
    }

    /// Does some entry want this event? `path` is the clusters the event has been stored
    /// in; `may_receive(topic, dest)` is the topology's replication policy.
    pub fn wants(
        &self,
        topic: &str,
        event: &Event,
        path: &[String],
        may_receive: impl Fn(&str, &str) -> bool,
    ) -> bool {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        self.wants_with(topic, &path, may_receive, |f| f.matches(event))
    }

    /// [`PeerInterest::wants`] for a caller that has not decoded the event: entries
    /// without a filter are tried first, and `matches` is called only for an eligible
    /// entry with a filter (so an event wanted unfiltered is never decoded).
    pub fn wants_with(
        &self,
        topic: &str,
        path: &[&str],
        may_receive: impl Fn(&str, &str) -> bool,
        mut matches: impl FnMut(&Filter) -> bool,
    ) -> bool {
        let Some(list) = self.by_topic.get(topic) else {
            return false;
        };
        let eligible =
            |c: &&Compiled| !path.contains(&c.dest.as_str()) && may_receive(topic, &c.dest);
        if list.iter().filter(eligible).any(|c| c.filter.is_none()) {
            return true;
        }
        list.iter()
            .filter(eligible)
            .any(|c| c.filter.as_ref().is_some_and(&mut matches))
    }
}

/// A local subscription's interest: topic, filter, and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalInterest {
    /// Topic.
    pub topic: String,
    /// Filter.
    pub filter: Option<FilterSpec>,
    /// `None`: the retained history (`start: earliest`); `Some(ms)`: events stored since
    /// then (`start: latest`, made at `ms`). See [`InterestEntry::since_ms`].
    pub since_ms: Option<u64>,
}

/// The set to announce to `neighbor`: local interest (destination `me`, when
/// `relays(neighbor, me)`: the direct link is the neighbour's route to us) and the interest
/// learned from other neighbours that we relay to `neighbor` (`relays(neighbor, dest)`).
/// Sorted and without duplicates, so two announcements compare equal when they mean the
/// same.
pub fn announcement(
    me: &str,
    neighbor: &str,
    local: &[LocalInterest],
    learned: &BTreeMap<String, Vec<InterestEntry>>,
    relays: impl Fn(&str, &str) -> bool,
) -> Vec<InterestEntry> {
    let mut out = BTreeSet::new();
    let local = if relays(neighbor, me) { local } else { &[] };
    for l in local {
        out.insert(InterestEntry {
            dest: me.to_string(),
            topic: l.topic.clone(),
            filter: l
                .filter
                .as_ref()
                .and_then(|f| serde_json::to_string(f).ok()),
            since_ms: l.since_ms,
        });
    }
    for (from, entries) in learned {
        if from == neighbor {
            continue;
        }
        for e in entries {
            if e.dest != neighbor && e.dest != me && relays(neighbor, &e.dest) {
                out.insert(e.clone());
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn ev(ty: &str) -> Event {
        EventBuilderV10::new()
            .id("1")
            .source("s")
            .ty(ty)
            .build()
            .unwrap()
    }

    fn entry(dest: &str, topic: &str, ty: Option<&str>) -> InterestEntry {
        InterestEntry {
            dest: dest.into(),
            topic: topic.into(),
            filter: ty.map(|t| format!("{{\"exact\":{{\"type\":\"{t}\"}}}}")),
            since_ms: None,
        }
    }

    #[test]
    fn filters_at_the_source_and_respects_path_and_policy() {
        let (pi, bad) = PeerInterest::compile(vec![
            entry("b", "orders", Some("created")),
            entry("c", "orders", Some("paid")),
        ]);
        assert!(bad.is_empty());
        let yes = |_: &str, _: &str| true;
        assert!(pi.wants("orders", &ev("created"), &[], yes));
        assert!(pi.wants("orders", &ev("paid"), &[], yes));
        assert!(!pi.wants("orders", &ev("other"), &[], yes));
        assert!(!pi.wants("payments", &ev("created"), &[], yes));
        // c is already on the path: c's interest does not pull it again
        assert!(!pi.wants("orders", &ev("paid"), &["a".into(), "c".into()], yes));
        // policy forbids c
        assert!(!pi.wants("orders", &ev("paid"), &[], |_, d| d != "c"));
    }

    #[test]
    fn a_bad_filter_is_reported_and_matches_nothing() {
        let mut e = entry("b", "t", None);
        e.filter = Some("{not json".into());
        let (pi, bad) = PeerInterest::compile(vec![e]);
        assert_eq!(bad.len(), 1);
        assert!(!pi.wants("t", &ev("x"), &[], |_, _| true));
    }

    #[test]
    fn announcement_merges_local_and_relayed_interest() {
        let local = vec![LocalInterest {
            topic: "t".into(),
            filter: None,
            since_ms: None,
        }];
        let mut learned = BTreeMap::new();
        learned.insert(
            "c".to_string(),
            vec![entry("c", "t", Some("x")), entry("d", "u", None)],
        );
        learned.insert("a".to_string(), vec![entry("a", "t", None)]);
        // relay c's interest to a, but not d's
        let got = announcement("b", "a", &local, &learned, |_, d| d == "c" || d == "b");
        assert_eq!(got, vec![entry("b", "t", None), entry("c", "t", Some("x"))]);
        // a route to b that does not use the direct link: b's own interest is not announced
        let got = announcement("b", "a", &local, &learned, |_, d| d == "c");
        assert_eq!(got, vec![entry("c", "t", Some("x"))]);
        // a's own interest never goes back to a; an empty local set and nothing learned is empty
        assert!(announcement("b", "a", &[], &BTreeMap::new(), |_, _| true).is_empty());
    }
}
