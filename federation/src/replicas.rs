//! Subscription replicas and cross-cluster takeover (sans-IO).
//!
//! A subscription made with `standby` clusters is published to the mesh by the cluster
//! delivering it (its *active* cluster; at first its home): its spec and its committed
//! positions in origin terms (per origin partition, the first undelivered origin offset),
//! refreshed every 500 ms while they change. Every cluster keeps the replicas it hears of
//! and relays them; a standby can take the subscription over.
//!
//! # Terms and fencing
//! Each replica has a *term*; only the active cluster of the highest term delivers. A
//! takeover raises the term and names the new active cluster; the previous active cluster
//! stops delivering as soon as it hears of the higher term ([`Event::Fenced`]), and a home
//! that restarts fences itself from its persisted replicas before its links are up. There
//! is no quorum spanning clusters: a takeover is an operator's decision (`POST
//! /v1/mesh/failover` at the standby) made when the active cluster is lost or cut off; if
//! it is alive but cut off, it keeps delivering until the partition heals and it hears of
//! the higher term. Taking a subscription back works the same way, from any cluster named
//! by it (home or standby).
//!
//! # Where a takeover starts
//! [`StartScan`] walks the new active cluster's partition backwards from its end and finds
//! the oldest event not yet delivered by the replicated positions (events of an origin the
//! positions do not know count as undelivered if stored after the subscription was made).
//! Delivery starts there; delivered events interleaved after it are delivered again, so the
//! duplicates are bounded by what arrived during one position interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshd_core::api::SubscriptionSpec;
use meshd_core::wire::{Mark, SubReplica};

use crate::marks::OriginPos;

/// The store metadata prefix of persisted replicas: `fed/subs/{home}/{name}`.
pub const META_PREFIX: &str = "fed/subs/";

/// What a merge tells the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This cluster was delivering `name` (made at `home`) and a higher term names another
    /// cluster: stop delivering it here.
    Fenced {
        /// Home cluster.
        home: String,
        /// Subscription name.
        name: String,
        /// The cluster now delivering.
        active: String,
    },
}

/// Who delivers a local subscription ([`Replicas::delivery_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// This cluster, for the subscription made in `home` (made here and never taken over,
    /// or taken over here); `created_ms` from its replica when there is one.
    Here {
        /// Where it was made.
        home: String,
        /// When, by its replica.
        created_ms: Option<u64>,
    },
    /// Another cluster took it over: it is not delivered here.
    Elsewhere {
        /// The cluster delivering it.
        active: String,
    },
}

/// Why a takeover cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeoverError {
    /// No replica of that subscription reached this cluster.
    #[error("no replica of subscription {name:?} of cluster {home:?} is known here (is this cluster one of its standby clusters, and did the replica arrive?)")]
    Unknown {
        /// Home.
        home: String,
        /// Name.
        name: String,
    },
    /// It was deleted at home.
    #[error("subscription {name:?} of cluster {home:?} was deleted")]
    Deleted {
        /// Home.
        home: String,
        /// Name.
        name: String,
    },
    /// This cluster is neither its home nor one of its standby clusters.
    #[error("cluster {me:?} is not a standby of subscription {name:?} (standby: {standby:?})")]
    NotStandby {
        /// This cluster.
        me: String,
        /// Name.
        name: String,
        /// Its standby clusters.
        standby: Vec<String>,
    },
    /// This cluster delivers it already.
    #[error("subscription {name:?} is delivered here already (term {term})")]
    AlreadyActive {
        /// Name.
        name: String,
        /// Current term.
        term: u64,
    },
    /// The replicated spec does not parse.
    #[error("the replicated spec of {name:?} is unreadable: {reason}")]
    BadSpec {
        /// Name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What a takeover needs to start delivery here.
#[derive(Debug, Clone, PartialEq)]
pub struct Takeover {
    /// The spec.
    pub spec: SubscriptionSpec,
    /// The replicated positions, by (origin, origin partition).
    pub positions: HashMap<(String, u32), u64>,
    /// When it was made at home.
    pub created_ms: u64,
    /// The new term.
    pub term: u64,
}

#[derive(Debug, Clone)]
struct Held {
    replica: SubReplica,
    gen: u64,
}

/// The replicas one cluster knows.
#[derive(Debug)]
pub struct Replicas {
    me: String,
    by_key: BTreeMap<(String, String), Held>,
    gen: u64,
}

fn newer(a: &SubReplica, b: &SubReplica) -> bool {
    (a.term, a.seq) > (b.term, b.seq)
}

impl Replicas {
    /// No replicas, for cluster `me`.
    pub fn new(me: &str) -> Replicas {
        Replicas {
            me: me.to_string(),
            by_key: BTreeMap::new(),
            gen: 0,
        }
    }

    /// Rebuilds from persisted replicas; unreadable entries are returned apart.
    pub fn restore(me: &str, persisted: Vec<(String, Vec<u8>)>) -> (Replicas, Vec<String>) {
        let mut r = Replicas::new(me);
        let mut bad = Vec::new();
        for (key, value) in persisted {
            match serde_json::from_slice::<SubReplica>(&value) {
                Ok(rep) => {
                    r.put(rep);
                }
                Err(_) => bad.push(key),
            }
        }
        (r, bad)
    }

    fn put(&mut self, replica: SubReplica) {
        self.gen += 1;
        let key = (replica.home.clone(), replica.name.clone());
        self.by_key.insert(
            key,
            Held {
                replica,
                gen: self.gen,
            },
        );
    }

    /// The current generation (see [`Replicas::changed_since`]).
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Replicas changed after generation `gen` (all for 0).
    pub fn changed_since(&self, gen: u64) -> Vec<SubReplica> {
        self.by_key
            .values()
            .filter(|h| h.gen > gen)
            .map(|h| h.replica.clone())
            .collect()
    }

    /// Every replica known.
    pub fn all(&self) -> Vec<SubReplica> {
        self.by_key.values().map(|h| h.replica.clone()).collect()
    }

    /// The replica of (home, name).
    pub fn get(&self, home: &str, name: &str) -> Option<&SubReplica> {
        self.by_key
            .get(&(home.to_string(), name.to_string()))
            .map(|h| &h.replica)
    }

    /// Who delivers a local subscription with standby clusters, by the replicas known here:
    /// its replica is the one of that name made here, or one this cluster is a standby of.
    pub fn delivery_of(&self, spec: &SubscriptionSpec) -> Delivery {
        let replica = self.by_key.values().map(|h| &h.replica).find(|r| {
            r.name == spec.name && (r.home == self.me || spec.standby.contains(&self.me))
        });
        match replica {
            Some(r) if r.active != self.me && r.spec.is_some() => Delivery::Elsewhere {
                active: r.active.clone(),
            },
            Some(r) => Delivery::Here {
                home: r.home.clone(),
                created_ms: Some(r.created_ms),
            },
            None => Delivery::Here {
                home: self.me.clone(),
                created_ms: None,
            },
        }
    }

    /// Does another cluster deliver this subscription by the replicas known here? A home
    /// whose subscription was taken over must not deliver it.
    pub fn fenced_here(&self, home: &str, name: &str) -> bool {
        self.get(home, name)
            .is_some_and(|r| r.active != self.me && r.spec.is_some())
    }

    /// The metadata entry persisting (home, name).
    pub fn persist_entry(&self, home: &str, name: &str) -> Option<(String, Vec<u8>)> {
        let r = self.get(home, name)?;
        Some((
            format!("{META_PREFIX}{home}/{name}"),
            serde_json::to_vec(r).expect("a replica serializes"),
        ))
    }

    /// Takes replicas a peer sent. Returns what the shell must do and the keys changed.
    pub fn merge(&mut self, incoming: Vec<SubReplica>) -> (Vec<Event>, Vec<(String, String)>) {
        let mut events = Vec::new();
        let mut changed = BTreeSet::new();
        for r in incoming {
            if r.home.is_empty() || r.name.is_empty() || r.active.is_empty() {
                continue;
            }
            let key = (r.home.clone(), r.name.clone());
            let old = self.by_key.get(&key).map(|h| h.replica.clone());
            if old.as_ref().is_some_and(|o| !newer(&r, o)) {
                continue;
            }
            // A replica about this cluster's own delivery is written here: another cluster's
            // copy can only win with a higher term (a takeover).
            if old
                .as_ref()
                .is_some_and(|o| o.active == self.me && r.term <= o.term)
            {
                continue;
            }
            let was_active_here = old.as_ref().is_some_and(|o| o.active == self.me)
                || (old.is_none() && r.home == self.me);
            if was_active_here && r.active != self.me && r.spec.is_some() {
                events.push(Event::Fenced {
                    home: r.home.clone(),
                    name: r.name.clone(),
                    active: r.active.clone(),
                });
            }
            changed.insert(key);
            self.put(r);
        }
        (events, changed.into_iter().collect())
    }

    /// Publishes this cluster's delivery state of a subscription it delivers: `spec`
    /// (`None`: deleted) and positions. A subscription made here and never replicated
    /// starts at term 0. Returns whether the replica changed (to persist and send); does
    /// nothing when another cluster is active.
    pub fn publish(
        &mut self,
        home: &str,
        name: &str,
        created_ms: u64,
        spec: Option<String>,
        positions: Vec<Mark>,
    ) -> bool {
        let me = self.me.clone();
        let next = match self.get(home, name) {
            None if home == me => SubReplica {
                home: home.to_string(),
                name: name.to_string(),
                term: 0,
                active: me,
                seq: 0,
                created_ms,
                spec,
                positions,
            },
            None => return false,
            Some(r) if r.active != me => return false,
            Some(r) => {
                if r.spec == spec && r.positions == positions {
                    return false;
                }
                SubReplica {
                    seq: r.seq + 1,
                    spec,
                    positions,
                    ..r.clone()
                }
            }
        };
        self.put(next);
        true
    }

    /// Makes this cluster the active one for (home, name) in a new term.
    pub fn takeover(&mut self, home: &str, name: &str) -> Result<Takeover, TakeoverError> {
        let t = self.check_takeover(home, name)?;
        let r = self.get(home, name).cloned().expect("checked");
        self.put(SubReplica {
            term: t.term,
            active: self.me.clone(),
            seq: 0,
            ..r
        });
        Ok(t)
    }

    /// What [`Replicas::takeover`] would do, changing nothing.
    pub fn check_takeover(&self, home: &str, name: &str) -> Result<Takeover, TakeoverError> {
        let r = self
            .get(home, name)
            .cloned()
            .ok_or_else(|| TakeoverError::Unknown {
                home: home.to_string(),
                name: name.to_string(),
            })?;
        let Some(spec_json) = &r.spec else {
            return Err(TakeoverError::Deleted {
                home: home.to_string(),
                name: name.to_string(),
            });
        };
        let spec: SubscriptionSpec =
            serde_json::from_str(spec_json).map_err(|e| TakeoverError::BadSpec {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        if r.home != self.me && !spec.standby.contains(&self.me) {
            return Err(TakeoverError::NotStandby {
                me: self.me.clone(),
                name: name.to_string(),
                standby: spec.standby.clone(),
            });
        }
        if r.active == self.me {
            return Err(TakeoverError::AlreadyActive {
                name: name.to_string(),
                term: r.term,
            });
        }
        let positions = r
            .positions
            .iter()
            .map(|m| ((m.origin.clone(), m.partition), m.next))
            .collect();
        let term = r.term + 1;
        Ok(Takeover {
            spec,
            positions,
            created_ms: r.created_ms,
            term,
        })
    }
}

/// What automatic failover asks of the shell (see [`auto_failover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auto {
    /// Take (home, name) over here: its active cluster is lost.
    Takeover {
        /// Home.
        home: String,
        /// Name.
        name: String,
    },
    /// Stop delivering `name` here: this cluster is cut off from every cluster that could
    /// take it over, which may be doing so.
    SelfFence {
        /// Name.
        name: String,
    },
    /// Deliver `name` again: a cluster that could take it over is reachable again (and
    /// has been for a while, so its replicas arrived: a higher term fences instead).
    Unfence {
        /// Name.
        name: String,
    },
}

/// Reachability of another cluster as this one sees it: reachable or not, and for how
/// long (ms).
pub type Reach<'a> = &'a dyn Fn(&str) -> (bool, u64);

/// Automatic failover with `after_ms`: a standby takes a subscription over when its
/// active cluster has been unreachable for `after_ms` and so has every standby listed
/// before it; the active cluster stops delivering when every other cluster named by the
/// subscription (home and standbys) has been unreachable for half of that (so it has
/// stopped before anyone takes over, as long as both sides see the cut within
/// `after_ms / 2` of each other), and delivers again once one of them has been reachable
/// for `rejoin_ms`. `self_fenced`: the subscriptions this cluster stopped so.
pub fn auto_failover(
    replicas: &Replicas,
    delivering: &[(String, String, Vec<String>)],
    self_fenced: &BTreeSet<String>,
    reach: Reach<'_>,
    after_ms: u64,
    rejoin_ms: u64,
) -> Vec<Auto> {
    let me = replicas.me.as_str();
    let lost = |c: &str| {
        let (up, for_ms) = reach(c);
        !up && for_ms >= after_ms
    };
    let mut out = Vec::new();
    for r in replicas.all() {
        let Some(spec) = r.spec.as_deref() else {
            continue;
        };
        if r.active == me {
            continue;
        }
        let Ok(spec) = serde_json::from_str::<SubscriptionSpec>(spec) else {
            continue;
        };
        let Some(rank) = spec.standby.iter().position(|c| c == me) else {
            continue;
        };
        if lost(&r.active)
            && spec.standby[..rank]
                .iter()
                .all(|c| c == &r.active || lost(c))
        {
            out.push(Auto::Takeover {
                home: r.home.clone(),
                name: r.name.clone(),
            });
        }
    }
    for (home, name, standby) in delivering {
        let others: Vec<&str> = std::iter::once(home.as_str())
            .chain(standby.iter().map(String::as_str))
            .filter(|c| *c != me)
            .collect();
        if others.is_empty() {
            continue;
        }
        if self_fenced.contains(name) {
            let back = others.iter().any(|c| {
                let (up, for_ms) = reach(c);
                up && for_ms >= rejoin_ms
            });
            if back {
                out.push(Auto::Unfence { name: name.clone() });
            }
        } else {
            let cut = others.iter().all(|c| {
                let (up, for_ms) = reach(c);
                !up && for_ms >= after_ms / 2
            });
            if cut {
                out.push(Auto::SelfFence { name: name.clone() });
            }
        }
    }
    out
}

/// Finds where a takeover starts in one partition of the new active cluster, fed its
/// events from the newest backwards ([`StartScan::feed`]) until it says stop.
#[derive(Debug)]
pub struct StartScan {
    me: String,
    partition: u32,
    positions: HashMap<(String, u32), u64>,
    created_ms: u64,
    /// Origins with a position in this partition not yet seen delivered.
    pending: BTreeSet<String>,
    start: Option<u64>,
    end: u64,
}

impl StartScan {
    /// A scan of `partition` (end offset `end`) for positions of a subscription made at
    /// `created_ms`, in cluster `me`.
    pub fn new(
        me: &str,
        partition: u32,
        end: u64,
        positions: &HashMap<(String, u32), u64>,
        created_ms: u64,
    ) -> StartScan {
        let pending = positions
            .keys()
            .filter(|(_, p)| *p == partition)
            .map(|(o, _)| o.clone())
            .collect();
        StartScan {
            me: me.to_string(),
            partition,
            positions: positions.clone(),
            created_ms,
            pending,
            start: None,
            end,
        }
    }

    /// The event at local `offset` (origin `None`: this cluster's own, at `offset` of this
    /// partition), stored at `timestamp_ms`. Returns whether to go on (to older events).
    pub fn feed(
        &mut self,
        offset: u64,
        origin: Option<(&str, OriginPos)>,
        timestamp_ms: u64,
    ) -> bool {
        let (origin, pos) = match origin {
            Some((o, pos)) => (o.to_string(), pos),
            None => (
                self.me.clone(),
                OriginPos {
                    partition: self.partition,
                    offset,
                },
            ),
        };
        let delivered = match self.positions.get(&(origin.clone(), pos.partition)) {
            Some(next) => pos.offset < *next,
            None => timestamp_ms < self.created_ms,
        };
        if delivered {
            self.pending.remove(&origin);
        } else {
            self.start = Some(offset);
        }
        !(self.pending.is_empty() && timestamp_ms < self.created_ms)
    }

    /// Where delivery starts (the end when everything is delivered).
    pub fn result(&self) -> u64 {
        self.start.unwrap_or(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(standby: &[&str]) -> String {
        serde_json::json!({
            "name": "s", "topic": "t", "sink": {"pull": {}},
            "standby": standby,
        })
        .to_string()
    }

    fn mark(origin: &str, p: u32, next: u64) -> Mark {
        Mark {
            origin: origin.into(),
            topic: "t".into(),
            partition: p,
            next,
        }
    }

    #[test]
    fn a_standby_takes_over_and_the_home_is_fenced() {
        let mut a = Replicas::new("a");
        let mut b = Replicas::new("b");
        let mut c = Replicas::new("c");
        assert!(a.publish("a", "s", 5, Some(spec(&["b"])), vec![mark("a", 0, 10)]));
        assert!(!a.publish("a", "s", 5, Some(spec(&["b"])), vec![mark("a", 0, 10)]));
        assert!(a.publish("a", "s", 5, Some(spec(&["b"])), vec![mark("a", 0, 12)]));
        // Relayed through c to b.
        let (ev, changed) = c.merge(a.changed_since(0));
        assert!(ev.is_empty());
        assert_eq!(changed.len(), 1);
        b.merge(c.changed_since(0));
        assert_eq!(b.get("a", "s").unwrap().positions, vec![mark("a", 0, 12)]);
        // b publishes nothing for a subscription it does not deliver.
        assert!(!b.publish("a", "s", 5, Some(spec(&["b"])), vec![]));
        // c is not a standby.
        assert!(matches!(
            c.takeover("a", "s"),
            Err(TakeoverError::NotStandby { .. })
        ));
        let t = b.takeover("a", "s").unwrap();
        assert_eq!(t.term, 1);
        assert_eq!(t.positions[&("a".to_string(), 0)], 12);
        assert!(matches!(
            b.takeover("a", "s"),
            Err(TakeoverError::AlreadyActive { .. })
        ));
        // b now publishes its positions.
        assert!(b.publish("a", "s", 5, Some(spec(&["b"])), vec![mark("a", 0, 20)]));
        // A late update from a (term 0) does not undo the takeover anywhere.
        a.publish("a", "s", 5, Some(spec(&["b"])), vec![mark("a", 0, 13)]);
        let (ev, _) = b.merge(a.changed_since(0));
        assert!(ev.is_empty());
        assert_eq!(b.get("a", "s").unwrap().active, "b");
        // a hears of term 1: fenced.
        let (ev, _) = a.merge(b.changed_since(0));
        assert_eq!(
            ev,
            vec![Event::Fenced {
                home: "a".into(),
                name: "s".into(),
                active: "b".into()
            }]
        );
        assert!(a.fenced_here("a", "s"));
        let local: SubscriptionSpec = serde_json::from_str(&spec(&["b"])).unwrap();
        assert_eq!(
            a.delivery_of(&local),
            Delivery::Elsewhere { active: "b".into() }
        );
        assert_eq!(
            b.delivery_of(&local),
            Delivery::Here {
                home: "a".into(),
                created_ms: Some(5)
            }
        );
        assert!(!a.publish("a", "s", 5, Some(spec(&["b"])), vec![]));
        // a takes it back (term 2); b is fenced in turn.
        let t = a.takeover("a", "s").unwrap();
        assert_eq!(t.term, 2);
        assert_eq!(t.positions[&("a".to_string(), 0)], 20);
        let (ev, _) = b.merge(a.changed_since(0));
        assert_eq!(ev.len(), 1);
        assert!(b.fenced_here("a", "s"));
    }

    #[test]
    fn a_restarted_home_is_fenced_by_its_persisted_replicas() {
        let mut a = Replicas::new("a");
        a.publish("a", "s", 5, Some(spec(&["b"])), vec![]);
        let mut b = Replicas::new("b");
        b.merge(a.changed_since(0));
        b.takeover("a", "s").unwrap();
        a.merge(b.changed_since(0));
        let (k, v) = a.persist_entry("a", "s").unwrap();
        let (restored, bad) =
            Replicas::restore("a", vec![(k, v), ("fed/subs/x".into(), b"{".to_vec())]);
        assert_eq!(bad.len(), 1);
        assert!(restored.fenced_here("a", "s"));
    }

    #[test]
    fn deleted_and_unknown_subscriptions_cannot_be_taken_over() {
        let mut a = Replicas::new("a");
        let mut b = Replicas::new("b");
        assert!(matches!(
            b.takeover("a", "s"),
            Err(TakeoverError::Unknown { .. })
        ));
        a.publish("a", "s", 5, Some(spec(&["b"])), vec![]);
        a.publish("a", "s", 5, None, vec![]);
        b.merge(a.changed_since(0));
        assert!(matches!(
            b.takeover("a", "s"),
            Err(TakeoverError::Deleted { .. })
        ));
        assert!(!b.fenced_here("a", "s"));
    }

    #[test]
    fn automatic_failover_takes_over_in_standby_order_and_the_cut_off_side_stops_first() {
        let mut a = Replicas::new("a");
        a.publish("a", "s", 5, Some(spec(&["b", "c"])), vec![]);
        let mut b = Replicas::new("b");
        let mut c = Replicas::new("c");
        b.merge(a.changed_since(0));
        c.merge(a.changed_since(0));
        let none = BTreeSet::new();
        // (reachable, for how long) per cluster.
        let view = |m: &'static [(&'static str, bool, u64)]| {
            move |x: &str| {
                m.iter()
                    .find(|(n, _, _)| *n == x)
                    .map(|(_, up, ms)| (*up, *ms))
                    .unwrap_or((true, 0))
            }
        };
        // a down for 3 s of 5: nobody moves yet.
        let r = view(&[("a", false, 3_000)]);
        assert!(auto_failover(&b, &[], &none, &r, 5_000, 2_000).is_empty());
        // a lost: b (first standby) takes over; c waits while b is reachable.
        let r = view(&[("a", false, 6_000)]);
        assert_eq!(
            auto_failover(&b, &[], &none, &r, 5_000, 2_000),
            vec![Auto::Takeover {
                home: "a".into(),
                name: "s".into()
            }]
        );
        assert!(auto_failover(&c, &[], &none, &r, 5_000, 2_000).is_empty());
        // b lost too: c takes over.
        let r = view(&[("a", false, 6_000), ("b", false, 6_000)]);
        assert_eq!(auto_failover(&c, &[], &none, &r, 5_000, 2_000).len(), 1);
        // a cut off from b and c for half the time: it stops first.
        let delivering = vec![(
            "a".to_string(),
            "s".to_string(),
            vec!["b".to_string(), "c".to_string()],
        )];
        let r = view(&[("b", false, 2_600), ("c", false, 2_600)]);
        assert_eq!(
            auto_failover(&a, &delivering, &none, &r, 5_000, 2_000),
            vec![Auto::SelfFence { name: "s".into() }]
        );
        // Only one of them cut: it goes on.
        let r = view(&[("b", false, 9_000)]);
        assert!(auto_failover(&a, &delivering, &none, &r, 5_000, 2_000).is_empty());
        // Back for long enough: deliver again (if no higher term fenced it meanwhile).
        let fenced: BTreeSet<String> = ["s".to_string()].into();
        let r = view(&[("b", true, 500), ("c", false, 9_000)]);
        assert!(auto_failover(&a, &delivering, &fenced, &r, 5_000, 2_000).is_empty());
        let r = view(&[("b", true, 2_500), ("c", false, 9_000)]);
        assert_eq!(
            auto_failover(&a, &delivering, &fenced, &r, 5_000, 2_000),
            vec![Auto::Unfence { name: "s".into() }]
        );
    }

    #[test]
    fn a_takeover_starts_at_the_oldest_undelivered_event() {
        // Partition 0 of b: own events (origin b) interleaved with a's, newest last.
        // (local offset, origin, origin offset, timestamp)
        let log: Vec<(u64, Option<&str>, u64, u64)> = vec![
            (0, Some("a"), 0, 100),
            (1, None, 1, 101),
            (2, Some("a"), 1, 102),
            (3, Some("a"), 2, 103),
            (4, None, 4, 104),
            (5, Some("a"), 3, 105),
            (6, None, 6, 106),
        ];
        let run = |positions: &[(&str, u64)], created_ms: u64| {
            let positions: HashMap<(String, u32), u64> = positions
                .iter()
                .map(|(o, n)| ((o.to_string(), 0), *n))
                .collect();
            let mut scan = StartScan::new("b", 0, 7, &positions, created_ms);
            let mut read = 0;
            for (off, origin, ooff, ts) in log.iter().rev() {
                read += 1;
                let o = origin.map(|o| {
                    (
                        o,
                        OriginPos {
                            partition: 0,
                            offset: *ooff,
                        },
                    )
                });
                if !scan.feed(*off, o, *ts) {
                    break;
                }
            }
            (scan.result(), read)
        };
        // a's events delivered up to origin offset 2 (next 3), b's up to 4 (next 5).
        assert_eq!(run(&[("a", 3), ("b", 5)], 0).0, 5);
        // Nothing of b's own delivered since the subscription was made at 101.
        assert_eq!(run(&[("a", 3)], 101).0, 1);
        // Everything delivered: the end; the scan stops as soon as it knows.
        let (start, read) = run(&[("a", 4), ("b", 7)], 106);
        assert_eq!(start, 7);
        assert_eq!(read, 2);
    }
}
