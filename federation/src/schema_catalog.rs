//! The mesh's schema catalog (sans-IO): schemas registered, changed or deleted in one
//! cluster reach every cluster, gossiped on the links like the topic catalog
//! ([`crate::catalog`]), and concurrent changes resolve the same way everywhere.
//!
//! # Model
//! Each schema has one entry: its every version as the last writer left them, or a
//! tombstone once deleted. An entry carries a revision `rev` and its `writer` cluster; the
//! entry with the highest (`rev`, `writer`) wins (last writer wins, ties broken by the
//! cluster name), so every cluster that has seen the same entries holds the same one,
//! whatever the order they came in, and gossip can re-send anything. A write here takes
//! the revision after the one this cluster holds, so a change made after seeing another
//! one always beats it; two changes made concurrently are ordered by writer name, and the
//! loser's registry is set to the winner's versions.
//!
//! # What a cluster does
//! Every tick the shell hands [`SchemaCatalog::observe`] a digest of each schema of the
//! local registry. Per schema the catalog remembers the digest its registry had when it
//! last matched the catalog (`synced`), so it tells the two ways they can differ apart:
//! - the registry changed since (a `PUT` or `DELETE /v1/schemas` here): a new revision
//!   written here, persisted and gossiped;
//! - the registry is as it was and the entry changed (a peer's write came in): the shell
//!   applies the entry ([`Action::Apply`]) or removes the schema ([`Action::Remove`]).
//!
//! A delete travels as a tombstone, so a schema deleted in one cluster is deleted in every
//! cluster (bindings are not checked there: a topic binding it then refuses its events
//! with `schema_not_found` until the schema is registered again).

use std::collections::{BTreeMap, BTreeSet};

use meshd_core::api::{check_name, SchemaCatalogEntry};
use meshd_core::wire::SchemaEntry;
use serde::{Deserialize, Serialize};

/// The store metadata prefix of persisted entries: `fed/schemas/{name}`.
pub const META_PREFIX: &str = "fed/schemas/";

/// The digest standing for "no such schema here".
pub const ABSENT: &str = "-";

/// The digest of a registry's versions of one schema (`None`: it has none).
pub fn digest(versions: Option<&SchemaCatalogEntry>) -> String {
    use sha2::Digest;
    match versions {
        None => ABSENT.to_string(),
        Some(v) => {
            let bytes = serde_json::to_vec(v).expect("schema versions serialize");
            let hash = sha2::Sha256::digest(&bytes);
            hash.iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make the local registry's versions of `name` exactly these; once done, report
    /// with [`SchemaCatalog::applied`].
    Apply {
        /// Schema.
        name: String,
        /// The winning entry's versions.
        versions: SchemaCatalogEntry,
        /// Their digest (for [`SchemaCatalog::applied`]).
        digest: String,
    },
    /// Delete `name` from the local registry; once done, report with
    /// [`SchemaCatalog::applied`] and [`ABSENT`].
    Remove {
        /// Schema.
        name: String,
    },
    /// Persist one entry (`META_PREFIX` + name, JSON value).
    Persist {
        /// Metadata key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
}

/// Why an incoming entry was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEntry {
    /// The name is not a valid schema name.
    #[error("schema {name:?}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The writer is not a cluster name.
    #[error("schema {name:?}: writer {writer:?} is not a cluster name")]
    Writer {
        /// Schema.
        name: String,
        /// The writer given.
        writer: String,
    },
    /// The versions do not parse or are not numbered 1.. upwards.
    #[error("schema {name:?}: bad versions: {reason}")]
    Versions {
        /// Schema.
        name: String,
        /// Why.
        reason: String,
    },
}

/// One schema's entry with what this cluster knows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    rev: u64,
    writer: String,
    versions: Option<SchemaCatalogEntry>,
    /// Digest of `versions`.
    #[serde(skip)]
    digest: String,
    /// The local registry's digest when it last matched the catalog (`None`: never).
    synced: Option<String>,
    /// The generation this entry last changed in (for sending deltas).
    #[serde(skip)]
    gen: u64,
    /// Changed since last persisted.
    #[serde(skip)]
    dirty: bool,
}

impl Slot {
    fn wire(&self, name: &str) -> SchemaEntry {
        SchemaEntry {
            name: name.to_string(),
            rev: self.rev,
            writer: self.writer.clone(),
            versions: self
                .versions
                .as_ref()
                .map(|v| serde_json::to_string(v).expect("schema versions serialize")),
        }
    }
}

/// One cluster's schema catalog.
#[derive(Debug)]
pub struct SchemaCatalog {
    me: String,
    slots: BTreeMap<String, Slot>,
    gen: u64,
}

impl SchemaCatalog {
    /// An empty catalog of cluster `me`.
    pub fn new(me: &str) -> SchemaCatalog {
        SchemaCatalog {
            me: me.to_string(),
            slots: BTreeMap::new(),
            gen: 0,
        }
    }

    /// Rebuilds from persisted entries; unreadable ones are returned apart.
    pub fn restore(me: &str, persisted: Vec<(String, Vec<u8>)>) -> (SchemaCatalog, Vec<String>) {
        let mut c = SchemaCatalog::new(me);
        let mut bad = Vec::new();
        for (key, value) in persisted {
            let name = key.strip_prefix(META_PREFIX).unwrap_or(&key).to_string();
            match serde_json::from_slice::<Slot>(&value) {
                Ok(mut slot) if check_name("schema", &name).is_ok() => {
                    c.gen += 1;
                    slot.digest = digest(slot.versions.as_ref());
                    slot.gen = c.gen;
                    c.slots.insert(name, slot);
                }
                _ => bad.push(key),
            }
        }
        (c, bad)
    }

    /// The current generation: [`SchemaCatalog::changed_since`] a generation gives what
    /// changed.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Every entry changed after generation `gen` (all of them for 0).
    pub fn changed_since(&self, gen: u64) -> Vec<SchemaEntry> {
        self.slots
            .iter()
            .filter(|(_, s)| s.gen > gen)
            .map(|(n, s)| s.wire(n))
            .collect()
    }

    /// The winning entry of a schema: (rev, writer, versions or `None` once deleted).
    pub fn entry(&self, name: &str) -> Option<(u64, &str, Option<&SchemaCatalogEntry>)> {
        self.slots
            .get(name)
            .map(|s| (s.rev, s.writer.as_str(), s.versions.as_ref()))
    }

    /// How many schemas are live (not deleted) in the catalog.
    pub fn live(&self) -> usize {
        self.slots.values().filter(|s| s.versions.is_some()).count()
    }

    fn check(e: &SchemaEntry) -> Result<Option<SchemaCatalogEntry>, BadEntry> {
        check_name("schema", &e.name).map_err(|err| BadEntry::Name {
            name: e.name.clone(),
            reason: err.to_string(),
        })?;
        if check_name("cluster", &e.writer).is_err() {
            return Err(BadEntry::Writer {
                name: e.name.clone(),
                writer: e.writer.clone(),
            });
        }
        let Some(json) = &e.versions else {
            return Ok(None);
        };
        let bad = |reason: String| BadEntry::Versions {
            name: e.name.clone(),
            reason,
        };
        let versions: SchemaCatalogEntry =
            serde_json::from_str(json).map_err(|err| bad(err.to_string()))?;
        if versions.versions.is_empty() {
            return Err(bad("no versions (a deleted schema has none at all)".into()));
        }
        let mut last = 0;
        for v in &versions.versions {
            if v.version <= last || v.name != e.name {
                return Err(bad(format!(
                    "version {} of {:?} out of order or misnamed",
                    v.version, v.name
                )));
            }
            last = v.version;
        }
        Ok(Some(versions))
    }

    fn persist(&self, name: &str) -> Action {
        let slot = &self.slots[name];
        Action::Persist {
            key: format!("{META_PREFIX}{name}"),
            value: serde_json::to_vec(slot).expect("a schema entry serializes"),
        }
    }

    /// Takes entries a peer sent: each replaces the one held when its (rev, writer) is
    /// higher. Returns the entries ignored; the next [`SchemaCatalog::observe`] persists
    /// and applies what changed.
    pub fn merge(&mut self, entries: Vec<SchemaEntry>) -> Vec<BadEntry> {
        let mut bad = Vec::new();
        for e in entries {
            let versions = match Self::check(&e) {
                Ok(v) => v,
                Err(b) => {
                    bad.push(b);
                    continue;
                }
            };
            let newer = match self.slots.get(&e.name) {
                None => true,
                Some(s) => (e.rev, e.writer.as_str()) > (s.rev, s.writer.as_str()),
            };
            if !newer {
                continue;
            }
            self.gen += 1;
            let synced = self.slots.get(&e.name).and_then(|s| s.synced.clone());
            self.slots.insert(
                e.name,
                Slot {
                    rev: e.rev,
                    writer: e.writer,
                    digest: digest(versions.as_ref()),
                    versions,
                    synced,
                    gen: self.gen,
                    dirty: true,
                },
            );
        }
        bad
    }

    /// The outcome of an [`Action::Apply`] or [`Action::Remove`]: the registry now holds
    /// the versions of `digest`. Until reported, the registry is taken as unchanged here
    /// (an apply that failed is asked for again, never taken for a change made here).
    pub fn applied(&mut self, name: &str, digest: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            if slot.synced.as_deref() != Some(digest) {
                slot.synced = Some(digest.to_string());
                slot.dirty = true;
            }
        }
    }

    /// Compares the catalog with the local registry: `local` holds every schema it has
    /// with the digest of its versions ([`digest`]); `versions(name)` reads one schema's
    /// versions (called only for schemas changed here). Returns what to do.
    pub fn observe(
        &mut self,
        local: &BTreeMap<String, String>,
        versions: impl Fn(&str) -> Option<SchemaCatalogEntry>,
    ) -> Vec<Action> {
        let names: BTreeSet<String> = local.keys().chain(self.slots.keys()).cloned().collect();
        let mut actions = Vec::new();
        for name in names {
            let here = local.get(&name).map(String::as_str).unwrap_or(ABSENT);
            let (rev, synced) = match self.slots.get_mut(&name) {
                Some(slot) if slot.digest == here => {
                    // In step: remember it.
                    if slot.synced.as_deref() != Some(here) || slot.dirty {
                        slot.synced = Some(here.to_string());
                        slot.dirty = false;
                        actions.push(self.persist(&name));
                    }
                    continue;
                }
                Some(slot) => (slot.rev, slot.synced.clone()),
                None => (0, None),
            };
            // The registry is as it was when last in step (or never had it, and has not
            // now): the entry moved, apply it.
            let unchanged_here = match &synced {
                Some(s) => s == here,
                None => here == ABSENT,
            };
            if unchanged_here {
                if self.slots[&name].dirty {
                    actions.push(self.persist(&name));
                    self.slots.get_mut(&name).expect("held").dirty = false;
                }
                let slot = &self.slots[&name];
                actions.push(match &slot.versions {
                    Some(v) => Action::Apply {
                        name: name.clone(),
                        versions: v.clone(),
                        digest: slot.digest.clone(),
                    },
                    None => Action::Remove { name: name.clone() },
                });
                continue;
            }
            // Changed here: a new revision written by this cluster.
            let current = if here == ABSENT {
                None
            } else {
                match versions(&name) {
                    Some(v) => Some(v),
                    // Gone between the listing and now: seen next tick.
                    None => continue,
                }
            };
            let digest = digest(current.as_ref());
            self.gen += 1;
            self.slots.insert(
                name.clone(),
                Slot {
                    rev: rev + 1,
                    writer: self.me.clone(),
                    versions: current,
                    synced: Some(digest.clone()),
                    digest,
                    gen: self.gen,
                    dirty: false,
                },
            );
            actions.push(self.persist(&name));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_core::api::{Compatibility, SchemaVersionInfo};
    use serde_json::json;

    fn versions(name: &str, props: &[&str]) -> SchemaCatalogEntry {
        SchemaCatalogEntry {
            versions: props
                .iter()
                .enumerate()
                .map(|(i, p)| SchemaVersionInfo {
                    name: name.to_string(),
                    version: i as u32 + 1,
                    uri: meshd_core::api::schema_uri(name, i as u32 + 1),
                    compatibility: Compatibility::None,
                    created_ms: 1_000 + i as u64,
                    schema: json!({"type": "object", "properties": {*p: {"type": "string"}}}),
                })
                .collect(),
        }
    }

    /// A cluster: its catalog and its registry (name -> versions).
    struct Cluster {
        cat: SchemaCatalog,
        reg: BTreeMap<String, SchemaCatalogEntry>,
        persisted: BTreeMap<String, Vec<u8>>,
    }

    impl Cluster {
        fn new(me: &str) -> Cluster {
            Cluster {
                cat: SchemaCatalog::new(me),
                reg: BTreeMap::new(),
                persisted: BTreeMap::new(),
            }
        }

        /// One observe tick, its actions carried out; returns them.
        fn tick(&mut self) -> Vec<Action> {
            self.tick_failing(false)
        }

        /// One observe tick; applies fail when `fail`.
        fn tick_failing(&mut self, fail: bool) -> Vec<Action> {
            let local = self
                .reg
                .iter()
                .map(|(n, v)| (n.clone(), digest(Some(v))))
                .collect();
            let reg = self.reg.clone();
            let actions = self.cat.observe(&local, |n| reg.get(n).cloned());
            for a in &actions {
                if fail && !matches!(a, Action::Persist { .. }) {
                    continue;
                }
                self.run(a);
            }
            actions
        }

        fn run(&mut self, a: &Action) {
            match a {
                Action::Apply {
                    name,
                    versions,
                    digest,
                } => {
                    self.reg.insert(name.clone(), versions.clone());
                    self.cat.applied(name, digest);
                }
                Action::Remove { name } => {
                    self.reg.remove(name);
                    self.cat.applied(name, ABSENT);
                }
                Action::Persist { key, value } => {
                    self.persisted.insert(key.clone(), value.clone());
                }
            }
        }

        /// Takes everything `from` has (as a link would).
        fn gossip_from(&mut self, from: &Cluster) {
            let bad = self.cat.merge(from.cat.changed_since(0));
            assert!(bad.is_empty(), "{bad:?}");
        }
    }

    fn applies(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Apply { .. } | Action::Remove { .. }))
            .count()
    }

    #[test]
    fn a_schema_put_in_one_cluster_reaches_the_others_and_a_new_version_comes_back() {
        let mut a = Cluster::new("a");
        let mut b = Cluster::new("b");
        a.reg.insert("orders".into(), versions("orders", &["id"]));
        a.tick();
        assert_eq!(a.cat.entry("orders").unwrap().0, 1);
        // Observing again changes nothing.
        assert!(a.tick().is_empty());

        b.gossip_from(&a);
        // An apply that fails is asked for again, not taken for a change made in b.
        assert_eq!(applies(&b.tick_failing(true)), 1);
        assert_eq!(applies(&b.tick_failing(true)), 1);
        assert_eq!(b.cat.entry("orders").unwrap().1, "a");
        assert_eq!(applies(&b.tick()), 1);
        assert_eq!(b.reg["orders"], versions("orders", &["id"]));
        // Applied: in step, b writes nothing of its own.
        let gen = b.cat.generation();
        b.tick();
        assert_eq!(b.cat.generation(), gen);
        assert_eq!(b.cat.entry("orders").unwrap().1, "a");

        // A new version made in b goes back to a.
        b.reg
            .insert("orders".into(), versions("orders", &["id", "note"]));
        b.tick();
        assert_eq!(b.cat.entry("orders").unwrap().0, 2);
        assert_eq!(b.cat.entry("orders").unwrap().1, "b");
        a.gossip_from(&b);
        a.tick();
        assert_eq!(a.reg["orders"].versions.len(), 2);
        a.tick();
        // Merging the same again changes nothing.
        let gen = a.cat.generation();
        assert!(a.cat.merge(b.cat.changed_since(0)).is_empty());
        assert_eq!(a.cat.generation(), gen);
        assert!(a.tick().is_empty());
    }

    #[test]
    fn a_delete_reaches_every_cluster_and_a_register_again_comes_back() {
        let mut a = Cluster::new("a");
        let mut b = Cluster::new("b");
        let mut c = Cluster::new("c");
        a.reg.insert("s".into(), versions("s", &["x"]));
        a.tick();
        b.gossip_from(&a);
        b.tick();
        c.gossip_from(&b);
        c.tick();
        assert!(c.reg.contains_key("s"));

        // Deleted in c (not its writer): deleted in b and a.
        c.reg.remove("s");
        c.tick();
        assert_eq!(c.cat.entry("s").unwrap().2, None);
        b.gossip_from(&c);
        b.tick();
        a.gossip_from(&b);
        let acts = a.tick();
        assert!(
            acts.contains(&Action::Remove { name: "s".into() }),
            "a removes it: {acts:?}"
        );
        assert!(a.reg.is_empty() && b.reg.is_empty());
        // The tombstone is no write of a or b: they stay quiet.
        let gen = a.cat.generation();
        a.tick();
        assert_eq!(a.cat.generation(), gen);

        // Registered again in a: a newer revision, live everywhere.
        a.reg.insert("s".into(), versions("s", &["y"]));
        a.tick();
        assert_eq!(a.cat.entry("s").unwrap().0, 3);
        c.gossip_from(&a);
        c.tick();
        assert_eq!(c.reg["s"], versions("s", &["y"]));
    }

    #[test]
    fn concurrent_changes_resolve_the_same_everywhere() {
        let mut a = Cluster::new("a");
        let mut b = Cluster::new("b");
        a.reg.insert("s".into(), versions("s", &["x"]));
        a.tick();
        b.gossip_from(&a);
        b.tick();
        // Both make a v2 before they talk again.
        a.reg.insert("s".into(), versions("s", &["x", "from-a"]));
        b.reg.insert("s".into(), versions("s", &["x", "from-b"]));
        a.tick();
        b.tick();
        a.gossip_from(&b);
        b.gossip_from(&a);
        a.tick();
        b.tick();
        // Same revision: the higher writer name wins, in both.
        assert_eq!(a.reg["s"], versions("s", &["x", "from-b"]));
        assert_eq!(b.reg["s"], versions("s", &["x", "from-b"]));
        // A third cluster agrees whatever the order of arrival.
        for order in [[&a, &b], [&b, &a]] {
            let mut c = Cluster::new("c");
            for from in order {
                c.gossip_from(from);
            }
            c.tick();
            assert_eq!(c.reg["s"], versions("s", &["x", "from-b"]));
        }
        // A schema registered before the mesh knew it is written, not removed.
        let mut d = Cluster::new("d");
        d.reg.insert("old".into(), versions("old", &["x"]));
        d.gossip_from(&a);
        d.tick();
        assert!(d.reg.contains_key("old"));
        assert_eq!(d.cat.entry("old").unwrap().1, "d");
    }

    #[test]
    fn entries_survive_a_restart_and_a_change_made_while_down_is_written() {
        let mut a = Cluster::new("a");
        let mut b = Cluster::new("b");
        a.reg.insert("s".into(), versions("s", &["x"]));
        a.tick();
        b.gossip_from(&a);
        b.tick();
        b.tick();
        // b restarts: its registry persisted, its catalog restored.
        let (cat, bad) = SchemaCatalog::restore("b", b.persisted.clone().into_iter().collect());
        assert!(bad.is_empty());
        b.cat = cat;
        let gen = b.cat.generation();
        assert!(b.tick().is_empty(), "in step after a restart");
        assert_eq!(b.cat.generation(), gen);
        // A change made in the registry before the catalog saw it (a crash between):
        // written after the restart.
        b.reg.insert("s".into(), versions("s", &["x", "y"]));
        let (cat, _) = SchemaCatalog::restore("b", b.persisted.clone().into_iter().collect());
        b.cat = cat;
        b.tick();
        assert_eq!(b.cat.entry("s").unwrap().1, "b");
        assert_eq!(b.cat.entry("s").unwrap().0, 2);
    }

    #[test]
    fn bad_entries_are_ignored_and_named() {
        let mut a = SchemaCatalog::new("a");
        let e = |name: &str, writer: &str, versions: Option<String>| SchemaEntry {
            name: name.into(),
            rev: 1,
            writer: writer.into(),
            versions,
        };
        let good = serde_json::to_string(&versions("ok", &["x"])).unwrap();
        let misnamed = serde_json::to_string(&versions("other", &["x"])).unwrap();
        let bad = a.merge(vec![
            e("bad name", "b", None),
            e("s", "", None),
            e("s", "b", Some("{not json".into())),
            e("s", "b", Some("{\"versions\":[]}".into())),
            e("s", "b", Some(misnamed)),
            e("ok", "b", Some(good)),
        ]);
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert_eq!(a.live(), 1);
        // Applied and persisted at the next observe.
        let acts = a.observe(&BTreeMap::new(), |_| None);
        assert_eq!(acts.len(), 2, "{acts:?}");
    }
}
