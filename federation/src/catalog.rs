//! The mesh's topic catalog (sans-IO): topics made in one cluster reach every cluster
//! the replication policy allows, deletions follow, and concurrent makes resolve the same
//! way everywhere.
//!
//! # Model
//! A topic has *lives*: a life is made by one cluster (its **owner**) at a time
//! (`created_ms`) with a configuration, and may later be deleted by its owner. A life is
//! identified by (topic, owner, created_ms); within a life, deleted beats live. Lives only
//! ever grow (a set, merged by union), so every cluster that has seen the same entries
//! reaches the same state whatever the order they came in, and gossip can re-send anything.
//!
//! The **effective** life of a topic is its earliest live life, by (created_ms, owner):
//! the first maker owns the configuration. Another live life is a *conflict* (two clusters
//! made the topic concurrently); it is shown (`/v1/mesh`, a metric) until its owner deletes
//! its copy, and the loser keeps serving its local topic as it was. A local copy whose
//! configuration differs from the effective one (partition count above all) is shown as
//! *diverged*: replicated events are then placed by their partition key.
//!
//! # What a cluster does
//! - A local topic with no live life in the catalog is a new life owned here (made through
//!   the API, or made again after a delete).
//! - A life owned here whose topic is gone locally is deleted (the owner deleted it).
//! - An effective life owned elsewhere that this cluster may receive (topology policy and
//!   the topic's `replicate_to`) is made locally with the owner's configuration.
//! - When the last live life of a topic is deleted, the local copy is deleted too; a copy
//!   that local subscriptions still read is kept (an *orphan*, shown) and deleted once they
//!   are gone. Delete a topic at its owner: a copy deleted elsewhere is made again.
//! - Internal topics (names starting with `__`) are not in the catalog.

use std::collections::{BTreeMap, BTreeSet};

use meshd_core::api::{check_name, TopicConfig};
use meshd_core::wire::CatalogEntry;

/// The store metadata prefix of persisted lives: `fed/catalog/{topic}`, value the JSON list
/// of the topic's lives.
pub const META_PREFIX: &str = "fed/catalog/";

/// Most lives kept per topic (the oldest deleted lives are dropped first).
pub const MAX_LIVES: usize = 8;

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make the topic locally with this configuration.
    Create {
        /// Topic.
        topic: String,
        /// The owner's configuration.
        config: TopicConfig,
    },
    /// Delete the local copy (its every life is deleted); report with
    /// [`Catalog::delete_result`].
    Delete {
        /// Topic.
        topic: String,
    },
    /// Persist the topic's lives (`META_PREFIX` + topic, JSON value).
    Persist {
        /// Metadata key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// A life of the topic ended: what receivers hold of it is void.
    ForgetMarks {
        /// Topic.
        topic: String,
    },
}

/// Why an incoming entry was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEntry {
    /// The topic name is not valid.
    #[error("topic {topic:?}: {reason}")]
    Topic {
        /// The name.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The owner is not a cluster name.
    #[error("topic {topic:?}: owner {owner:?} is not a cluster name")]
    Owner {
        /// Topic.
        topic: String,
        /// The owner given.
        owner: String,
    },
    /// The configuration does not parse or is out of range.
    #[error("topic {topic:?}: bad configuration: {reason}")]
    Config {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

pub use meshd_core::api::{CatalogConflict as Conflict, ConflictKind};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LifeId {
    created_ms: u64,
    owner: String,
}

#[derive(Debug, Clone)]
struct Life {
    config: Option<TopicConfig>,
    /// The generation this life last changed in (for sending deltas).
    gen: u64,
}

/// One cluster's catalog.
#[derive(Debug)]
pub struct Catalog {
    me: String,
    topics: BTreeMap<String, BTreeMap<LifeId, Life>>,
    gen: u64,
    /// Local copies waiting to be deleted (their subscriptions still read them).
    orphans: BTreeSet<String>,
    conflicts: BTreeMap<String, Conflict>,
}

fn internal(topic: &str) -> bool {
    topic.starts_with("__")
}

impl Catalog {
    /// An empty catalog of cluster `me`.
    pub fn new(me: &str) -> Catalog {
        Catalog {
            me: me.to_string(),
            topics: BTreeMap::new(),
            gen: 0,
            orphans: BTreeSet::new(),
            conflicts: BTreeMap::new(),
        }
    }

    /// Rebuilds from persisted entries; unreadable ones are returned apart.
    pub fn restore(me: &str, persisted: Vec<(String, Vec<u8>)>) -> (Catalog, Vec<String>) {
        let mut c = Catalog::new(me);
        let mut bad = Vec::new();
        for (key, value) in persisted {
            match serde_json::from_slice::<Vec<CatalogEntry>>(&value) {
                Ok(entries) => {
                    for e in entries {
                        if c.check(&e).is_ok() {
                            c.absorb(e);
                        }
                    }
                }
                Err(_) => bad.push(key),
            }
        }
        (c, bad)
    }

    /// The current generation: [`Catalog::changed_since`] a generation gives what changed.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Every life changed after generation `gen` (all of them for 0).
    pub fn changed_since(&self, gen: u64) -> Vec<CatalogEntry> {
        let mut out = Vec::new();
        for (topic, lives) in &self.topics {
            for (id, life) in lives {
                if life.gen > gen {
                    out.push(entry(topic, id, life));
                }
            }
        }
        out
    }

    /// The effective configuration of a topic (its earliest live life) and its owner.
    pub fn effective(&self, topic: &str) -> Option<(&str, &TopicConfig)> {
        self.topics.get(topic).and_then(|lives| {
            lives
                .iter()
                .find_map(|(id, l)| l.config.as_ref().map(|c| (id.owner.as_str(), c)))
        })
    }

    /// How many topics have a live life.
    pub fn live_topics(&self) -> usize {
        self.topics
            .keys()
            .filter(|t| self.effective(t).is_some())
            .count()
    }

    /// Conflicts and divergences, by topic.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflicts.values().cloned().collect()
    }

    /// Local copies kept after their topic was deleted (subscriptions still read them).
    pub fn orphans(&self) -> Vec<String> {
        self.orphans.iter().cloned().collect()
    }

    fn check(&self, e: &CatalogEntry) -> Result<Option<TopicConfig>, BadEntry> {
        check_name("topic", &e.topic).map_err(|err| BadEntry::Topic {
            topic: e.topic.clone(),
            reason: err.to_string(),
        })?;
        if internal(&e.topic) {
            return Err(BadEntry::Topic {
                topic: e.topic.clone(),
                reason: "internal topics are not in the catalog".into(),
            });
        }
        if check_name("cluster", &e.owner).is_err() {
            return Err(BadEntry::Owner {
                topic: e.topic.clone(),
                owner: e.owner.clone(),
            });
        }
        match &e.config {
            None => Ok(None),
            Some(json) => {
                let config: TopicConfig =
                    serde_json::from_str(json).map_err(|err| BadEntry::Config {
                        topic: e.topic.clone(),
                        reason: err.to_string(),
                    })?;
                config.validate().map_err(|err| BadEntry::Config {
                    topic: e.topic.clone(),
                    reason: err.to_string(),
                })?;
                Ok(Some(config))
            }
        }
    }

    /// Adds one entry; returns whether anything changed. Assumes it was checked.
    fn absorb(&mut self, e: CatalogEntry) -> bool {
        let config = e
            .config
            .as_deref()
            .and_then(|j| serde_json::from_str::<TopicConfig>(j).ok());
        let id = LifeId {
            created_ms: e.created_ms,
            owner: e.owner,
        };
        let next_gen = self.gen + 1;
        let lives = self.topics.entry(e.topic).or_default();
        let changed = match lives.get_mut(&id) {
            None => {
                lives.insert(
                    id,
                    Life {
                        config,
                        gen: next_gen,
                    },
                );
                true
            }
            // Within a life, deleted beats live.
            Some(l) if l.config.is_some() && config.is_none() => {
                l.config = None;
                l.gen = next_gen;
                true
            }
            Some(_) => false,
        };
        if changed {
            self.gen = next_gen;
            // Bound the lives: drop the oldest deleted ones.
            while lives.len() > MAX_LIVES {
                let Some(old) = lives
                    .iter()
                    .find(|(_, l)| l.config.is_none())
                    .map(|(id, _)| id.clone())
                else {
                    break;
                };
                lives.remove(&old);
            }
        }
        changed
    }

    /// Takes entries a peer sent. Returns the actions and the entries ignored.
    pub fn merge(
        &mut self,
        entries: Vec<CatalogEntry>,
        local: &BTreeMap<String, TopicConfig>,
    ) -> (Vec<Action>, Vec<BadEntry>) {
        let mut bad = Vec::new();
        let mut touched = BTreeSet::new();
        let mut ended = BTreeSet::new();
        for e in entries {
            if let Err(b) = self.check(&e) {
                bad.push(b);
                continue;
            }
            let topic = e.topic.clone();
            let was_live = self.effective(&topic).is_some();
            let deletes = e.config.is_none();
            if self.absorb(e) {
                touched.insert(topic.clone());
                if deletes {
                    ended.insert(topic.clone());
                }
                // The last live life ended: the local copy goes too.
                if was_live && self.effective(&topic).is_none() && local.contains_key(&topic) {
                    self.orphans.insert(topic);
                }
            }
        }
        let mut actions = Vec::new();
        for t in &ended {
            actions.push(Action::ForgetMarks { topic: t.clone() });
        }
        for t in &touched {
            actions.push(self.persist(t));
        }
        (actions, bad)
    }

    fn persist(&self, topic: &str) -> Action {
        let lives: Vec<CatalogEntry> = self
            .topics
            .get(topic)
            .map(|l| l.iter().map(|(id, life)| entry(topic, id, life)).collect())
            .unwrap_or_default();
        Action::Persist {
            key: format!("{META_PREFIX}{topic}"),
            value: serde_json::to_vec(&lives).expect("entries serialize"),
        }
    }

    /// Compares the catalog with this cluster's topics (`local`, internal ones included or
    /// not) at `now_ms`; `may_receive(topic, config)` says whether the policy lets this
    /// cluster keep a copy. Returns what to do.
    pub fn observe(
        &mut self,
        local: &BTreeMap<String, TopicConfig>,
        now_ms: u64,
        may_receive: impl Fn(&str, &TopicConfig) -> bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let names: BTreeSet<String> = local
            .keys()
            .chain(self.topics.keys())
            .filter(|t| !internal(t))
            .cloned()
            .collect();
        let me = self.me.clone();
        for topic in names {
            let here = local.get(&topic);
            if self.orphans.contains(&topic) {
                if here.is_some() {
                    actions.push(Action::Delete {
                        topic: topic.clone(),
                    });
                } else {
                    self.orphans.remove(&topic);
                }
                continue;
            }
            let effective = self
                .effective(&topic)
                .map(|(o, c)| (o.to_string(), c.clone()));
            match (here, effective) {
                (Some(cfg), None) => {
                    // Made here (first, or again after a delete): a new life owned here.
                    let json = serde_json::to_string(cfg).expect("a config serializes");
                    let created_ms = self.fresh_created_ms(&topic, now_ms);
                    self.absorb(CatalogEntry {
                        topic: topic.clone(),
                        owner: me.clone(),
                        created_ms,
                        config: Some(json),
                    });
                    actions.push(self.persist(&topic));
                }
                (Some(cfg), Some((owner, owner_cfg))) => {
                    self.note_conflicts(&topic, &owner, &owner_cfg, cfg);
                }
                (None, Some((owner, owner_cfg))) => {
                    let mine_live: Vec<CatalogEntry> = self.topics[&topic]
                        .iter()
                        .filter(|(id, l)| id.owner == me && l.config.is_some())
                        .map(|(id, _)| CatalogEntry {
                            topic: topic.clone(),
                            owner: me.clone(),
                            created_ms: id.created_ms,
                            config: None,
                        })
                        .collect();
                    if !mine_live.is_empty() {
                        // Deleted here by its owner.
                        for e in mine_live {
                            self.absorb(e);
                        }
                        actions.push(self.persist(&topic));
                        actions.push(Action::ForgetMarks {
                            topic: topic.clone(),
                        });
                        self.conflicts.remove(&topic);
                    } else if owner != me && may_receive(&topic, &owner_cfg) {
                        actions.push(Action::Create {
                            topic: topic.clone(),
                            config: owner_cfg,
                        });
                    }
                }
                (None, None) => {
                    self.conflicts.remove(&topic);
                }
            }
        }
        actions
    }

    /// A creation time for a new life here, after every life the topic had (so a topic
    /// made again is a newer life even if the clock went back).
    fn fresh_created_ms(&self, topic: &str, now_ms: u64) -> u64 {
        let newest = self
            .topics
            .get(topic)
            .and_then(|l| l.keys().map(|id| id.created_ms).max());
        match newest {
            Some(n) if n >= now_ms => n + 1,
            _ => now_ms,
        }
    }

    fn note_conflicts(
        &mut self,
        topic: &str,
        owner: &str,
        owner_cfg: &TopicConfig,
        local: &TopicConfig,
    ) {
        // Clusters that made it too with another configuration (the same configuration
        // made twice is no conflict: every copy is alike).
        let losers: Vec<String> = self.topics[topic]
            .iter()
            .filter(|(id, l)| {
                id.owner != owner && l.config.as_ref().is_some_and(|c| c != owner_cfg)
            })
            .map(|(id, _)| id.owner.clone())
            .collect();
        let conflict = if local != owner_cfg {
            Some(ConflictKind::Diverged {
                owner_config: owner_cfg.clone(),
                local_config: local.clone(),
            })
        } else if !losers.is_empty() {
            Some(ConflictKind::ConcurrentCreate { losers })
        } else {
            None
        };
        match conflict {
            Some(kind) => {
                self.conflicts.insert(
                    topic.to_string(),
                    Conflict {
                        topic: topic.to_string(),
                        owner: owner.to_string(),
                        kind,
                    },
                );
            }
            None => {
                self.conflicts.remove(topic);
            }
        }
    }

    /// After a restart (orphans are not persisted): a local topic whose every life is
    /// deleted is a copy kept for its subscriptions, not a topic made again here.
    pub fn adopt_orphans(&mut self, local: &BTreeMap<String, TopicConfig>) {
        for (topic, lives) in &self.topics {
            if !lives.is_empty()
                && lives.values().all(|l| l.config.is_none())
                && local.contains_key(topic)
            {
                self.orphans.insert(topic.clone());
            }
        }
    }

    /// The outcome of an [`Action::Delete`]: `true` when the copy is gone (or was not
    /// there), `false` when it must wait (subscriptions still read it).
    pub fn delete_result(&mut self, topic: &str, gone: bool) {
        if gone {
            self.orphans.remove(topic);
            self.conflicts.remove(topic);
        }
    }
}

fn entry(topic: &str, id: &LifeId, life: &Life) -> CatalogEntry {
    CatalogEntry {
        topic: topic.to_string(),
        owner: id.owner.clone(),
        created_ms: id.created_ms,
        config: life
            .config
            .as_ref()
            .map(|c| serde_json::to_string(c).expect("a config serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            ..TopicConfig::default()
        }
    }

    fn local(topics: &[(&str, u32)]) -> BTreeMap<String, TopicConfig> {
        topics
            .iter()
            .map(|(t, p)| (t.to_string(), cfg(*p)))
            .collect()
    }

    fn yes(_: &str, _: &TopicConfig) -> bool {
        true
    }

    fn persisted(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Persist { .. }))
            .count()
    }

    /// Runs entries from `from` into `to` (as a link would), returning `to`'s actions.
    fn gossip(
        from: &Catalog,
        to: &mut Catalog,
        to_local: &BTreeMap<String, TopicConfig>,
    ) -> Vec<Action> {
        let (actions, bad) = to.merge(from.changed_since(0), to_local);
        assert!(bad.is_empty(), "{bad:?}");
        actions
    }

    #[test]
    fn a_topic_made_in_one_cluster_is_made_in_the_others() {
        let mut a = Catalog::new("a");
        let mut b = Catalog::new("b");
        let a_local = local(&[("orders", 3), ("__relay.x", 1)]);
        let acts = a.observe(&a_local, 1_000, yes);
        assert_eq!(persisted(&acts), 1, "internal topics stay out: {acts:?}");
        assert_eq!(a.effective("orders").unwrap().0, "a");
        // Observing again changes nothing.
        assert!(a.observe(&a_local, 1_001, yes).is_empty());

        let b_local = local(&[]);
        gossip(&a, &mut b, &b_local);
        let acts = b.observe(&b_local, 2_000, yes);
        assert_eq!(
            acts,
            vec![Action::Create {
                topic: "orders".into(),
                config: cfg(3)
            }]
        );
        // Once made, b has a copy of a's life: no life of its own.
        let b_local = local(&[("orders", 3)]);
        assert!(b.observe(&b_local, 2_100, yes).is_empty());
        assert_eq!(b.effective("orders").unwrap().0, "a");
        assert!(b.conflicts().is_empty());
        // Policy: a cluster that may not receive it makes no copy.
        let mut c = Catalog::new("c");
        gossip(&a, &mut c, &local(&[]));
        assert!(c.observe(&local(&[]), 2_000, |_, _| false).is_empty());
    }

    #[test]
    fn a_delete_at_the_owner_reaches_the_copies_and_a_remake_is_a_new_life() {
        let mut a = Catalog::new("a");
        let mut b = Catalog::new("b");
        a.observe(&local(&[("orders", 1)]), 1_000, yes);
        gossip(&a, &mut b, &local(&[]));
        let b_local = local(&[("orders", 1)]);
        b.observe(&b_local, 1_500, yes);
        let gen = a.generation();

        // a deletes it.
        let acts = a.observe(&local(&[]), 2_000, yes);
        assert!(acts.contains(&Action::ForgetMarks {
            topic: "orders".into()
        }));
        let delta = a.changed_since(gen);
        assert_eq!(delta.len(), 1);
        assert_eq!(delta[0].config, None);
        let (acts, _) = b.merge(delta, &b_local);
        assert!(acts.contains(&Action::ForgetMarks {
            topic: "orders".into()
        }));
        // b deletes its copy; while subscriptions read it, it waits and is retried.
        let acts = b.observe(&b_local, 2_100, yes);
        assert_eq!(
            acts,
            vec![Action::Delete {
                topic: "orders".into()
            }]
        );
        b.delete_result("orders", false);
        assert_eq!(b.orphans(), vec!["orders".to_string()]);
        assert_eq!(b.observe(&b_local, 2_200, yes).len(), 1);
        b.delete_result("orders", true);
        assert!(b.observe(&local(&[]), 2_300, yes).is_empty());
        assert!(b.orphans().is_empty());

        // Made again in a: a new life, made again in b.
        a.observe(&local(&[("orders", 2)]), 3_000, yes);
        gossip(&a, &mut b, &local(&[]));
        assert_eq!(
            b.observe(&local(&[]), 3_100, yes),
            vec![Action::Create {
                topic: "orders".into(),
                config: cfg(2)
            }]
        );
        // A remake in the same millisecond as the old life is still a newer life.
        assert!(a.fresh_created_ms("orders", 1_000) > 3_000);
    }

    #[test]
    fn concurrent_makes_resolve_the_same_everywhere() {
        let mut a = Catalog::new("a");
        let mut b = Catalog::new("b");
        // b made it first (earlier time), with another partition count.
        a.observe(&local(&[("orders", 3)]), 2_000, yes);
        b.observe(&local(&[("orders", 5)]), 1_000, yes);
        gossip(&a, &mut b, &local(&[("orders", 5)]));
        gossip(&b, &mut a, &local(&[("orders", 3)]));
        assert_eq!(a.effective("orders").unwrap().0, "b");
        assert_eq!(b.effective("orders").unwrap().0, "b");
        assert_eq!(a.effective("orders").unwrap().1, &cfg(5));
        a.observe(&local(&[("orders", 3)]), 2_500, yes);
        b.observe(&local(&[("orders", 5)]), 2_500, yes);
        // a's copy differs: shown at a; b shows that a lost.
        assert!(matches!(
            a.conflicts()[0].kind,
            ConflictKind::Diverged { .. }
        ));
        assert_eq!(
            b.conflicts()[0].kind,
            ConflictKind::ConcurrentCreate {
                losers: vec!["a".into()]
            }
        );
        // A third cluster, whatever the order of arrival, agrees.
        for order in [[&a, &b], [&b, &a]] {
            let mut c = Catalog::new("c");
            for from in order {
                gossip(from, &mut c, &local(&[]));
            }
            assert_eq!(c.effective("orders").unwrap().0, "b");
        }
        // The same configuration made twice is no conflict.
        let mut d = Catalog::new("d");
        let mut e = Catalog::new("e");
        d.observe(&local(&[("same", 2)]), 1_000, yes);
        e.observe(&local(&[("same", 2)]), 1_001, yes);
        gossip(&e, &mut d, &local(&[("same", 2)]));
        d.observe(&local(&[("same", 2)]), 1_100, yes);
        assert!(d.conflicts().is_empty(), "{:?}", d.conflicts());
        // Merging the same again changes nothing.
        let (acts, _) = a.merge(b.changed_since(0), &local(&[("orders", 3)]));
        assert!(acts.is_empty(), "{acts:?}");
    }

    #[test]
    fn bad_entries_are_ignored_and_named() {
        let mut a = Catalog::new("a");
        let e = |topic: &str, owner: &str, config: Option<&str>| CatalogEntry {
            topic: topic.into(),
            owner: owner.into(),
            created_ms: 1,
            config: config.map(str::to_string),
        };
        let (acts, bad) = a.merge(
            vec![
                e("bad topic", "b", None),
                e("__relay.t", "b", None),
                e("t", "", None),
                e("t", "b", Some("{not json")),
                e("t", "b", Some("{\"partitions\":0}")),
                e("ok", "b", Some("{\"partitions\":2}")),
            ],
            &local(&[]),
        );
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert_eq!(persisted(&acts), 1);
        assert_eq!(a.effective("ok").unwrap().1, &cfg(2));
    }

    #[test]
    fn lives_survive_a_restart_and_stay_bounded() {
        let mut a = Catalog::new("a");
        let mut keys = BTreeMap::new();
        let mut now = 1_000;
        for _ in 0..20 {
            for act in a.observe(&local(&[("t", 1)]), now, yes) {
                if let Action::Persist { key, value } = act {
                    keys.insert(key, value);
                }
            }
            now += 10;
            for act in a.observe(&local(&[]), now, yes) {
                if let Action::Persist { key, value } = act {
                    keys.insert(key, value);
                }
            }
            now += 10;
        }
        assert!(a.topics["t"].len() <= MAX_LIVES);
        let (mut restored, bad) = Catalog::restore("a", keys.into_iter().collect());
        assert!(bad.is_empty());
        assert!(restored.effective("t").is_none());
        assert_eq!(restored.topics["t"].len(), a.topics["t"].len());
        // A copy kept for subscriptions before the restart is still an orphan after it.
        restored.adopt_orphans(&local(&[("t", 1)]));
        assert_eq!(restored.orphans(), vec!["t".to_string()]);
    }
}
