//! A runtime node's membership in its cluster as a pure state machine: which consumer
//! groups the node may deliver, given the placement it has seen, the state of its
//! registry lease, the promises its peers gave it, and the time. No I/O: the node's thin
//! async shell (`src/node_cluster.rs` of the binary) feeds it events and carries out the
//! [`Action`]s it returns; tests drive it with explicit instants.
//!
//! The rules (docs/scheduler.md, "Registry outages"):
//!
//! - **Epoch fencing.** The newest placement seen wins; an older epoch never replaces it.
//! - **Lease.** With `t_ack` the send time of the last keep-alive the registry
//!   acknowledged, the node delivers the groups placement gives it until
//!   `t_ack + TTL − margin` ([`LeaseConfig::safety_margin`]).
//! - **Peer promises.** When no keep-alive was acknowledged for a keep-alive period plus
//!   the margin, the node asks the other nodes it knows ([`Action::AskPeers`]). A peer that
//!   cannot reach the registry either answers with a promise ([`Membership::promise`]):
//!   it starts no group it is not delivering yet until TTL after its answer, on its own
//!   clock. Past its lease deadline the node keeps delivering the groups it was
//!   delivering (never a new one, never one it stopped) only while it holds, from every
//!   peer it asked, a promise whose validity — `sent + TTL − margin`, counted from when
//!   it *sent* the question — has not passed.
//! - **Bound by its promises.** A node starts a group it is not delivering only while its
//!   lease is held, after a placement read since its lease was last regained, and not
//!   before every promise it gave has run out.
//! - **Hand-over between live nodes.** A group placed here that this node is not
//!   delivering starts only once every other node that could deliver it has said it does
//!   not: each node reports, after carrying out a placement, the newest epoch it applied
//!   and the groups it delivers ([`Action::Report`], [`DeliveryReport`]); a group placed
//!   here by epoch `e` starts when every other node member known, and every node the
//!   placement names, reports an epoch `>= e` without the group
//!   ([`Membership::peer_reports`]). A node whose member key is gone (lease expired or
//!   revoked) is not waited for: the lease rule stopped it. Nodes that report nothing
//!   (older versions) are not waited for.
//! - **Catalog sync** is in [`catalog`].

pub mod catalog;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::registry::{DeliveryReport, LeaseConfig, Placement};

/// The groups `placement` gives to `node_id`.
pub fn owned_by(placement: Option<&Placement>, node_id: &str) -> BTreeSet<String> {
    placement
        .map(|p| {
            p.consumer_groups
                .iter()
                .filter(|(_, n)| n.as_str() == node_id)
                .map(|(g, _)| g.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The node's registry lease as its member task reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// A lease is held; `last_ack` is when the last keep-alive (or registration) the
    /// registry acknowledged was sent.
    Held {
        /// Send time of the last acknowledged keep-alive.
        last_ack: Instant,
    },
    /// The lease was given up as lost; re-registration is being retried.
    Lost,
    /// Deregistered (drain, shutdown) or the member task ended: deliver nothing.
    Gone,
}

/// A peer's answer to "can you reach the registry?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAnswer {
    /// It cannot, and promised to start no new group for this long after its answer
    /// (its lease TTL).
    Promise(Duration),
    /// It reaches the registry (no promise).
    ReachesRegistry,
    /// No answer in time, or an error.
    NoAnswer,
}

/// A node the machine asks for a promise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Node id.
    pub id: String,
    /// Its HTTP URL.
    pub url: String,
}

/// What the node tells probes about its membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Lease held (or within its deadline).
    Registered,
    /// Past the lease deadline, delivering its groups on its peers' promises.
    ServingOnPromises,
    /// No lease and no promises: delivers nothing.
    LeaseLost,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start delivering this consumer group.
    Start(String),
    /// Stop delivering this consumer group (progress committed).
    Stop(String),
    /// Ask these peers for a promise now; report each answer with
    /// [`Membership::peer_answer`] and the instant the question was sent.
    AskPeers(Vec<Peer>),
    /// Read the placement afresh from the registry and report it with
    /// [`Membership::placement_read`] (after a lease was regained).
    ReadPlacement,
    /// The health changed.
    Health(Health),
    /// Write this report to the registry (the node's member info) once the starts and
    /// stops returned with it are carried out: never before a stopped group has stopped.
    Report(DeliveryReport),
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership {
    me: String,
    lease_cfg: LeaseConfig,
    /// The newest placement seen.
    current: Option<Placement>,
    lease: Lease,
    /// A lease was regained: the placement must be read afresh before anything starts.
    reread: bool,
    /// The other node members known (id → URL).
    peers: BTreeMap<String, String>,
    /// The peers whose promises an extension needs, fixed when keep-alives went stale.
    asked: Option<BTreeMap<String, String>>,
    /// Per asked peer: until when (own clock) its last promise holds.
    promises: BTreeMap<String, Instant>,
    /// When the next round of questions is due.
    next_ask: Option<Instant>,
    /// Until when the node must start no new group (promises it gave).
    promised_until: Option<Instant>,
    delivering: BTreeSet<String>,
    health: Health,
    /// The other node members' reports (id → report; None: a node reporting nothing).
    reports: BTreeMap<String, Option<DeliveryReport>>,
    /// Groups placed here that wait for their previous owner to report it stopped them.
    waiting: BTreeSet<String>,
    /// The last report returned in [`Action::Report`].
    reported: Option<DeliveryReport>,
}

impl Membership {
    /// A machine for node `me` with a lease of `lease` just granted at `now`.
    pub fn new(me: impl Into<String>, lease: LeaseConfig, now: Instant) -> Membership {
        Membership {
            me: me.into(),
            lease_cfg: lease,
            current: None,
            lease: Lease::Held { last_ack: now },
            reread: false,
            peers: BTreeMap::new(),
            asked: None,
            promises: BTreeMap::new(),
            next_ask: None,
            promised_until: None,
            delivering: BTreeSet::new(),
            health: Health::Registered,
            reports: BTreeMap::new(),
            waiting: BTreeSet::new(),
            reported: None,
        }
    }

    /// Groups placed here that wait for another node to report it stopped them.
    pub fn waiting(&self) -> &BTreeSet<String> {
        &self.waiting
    }

    /// The other node members' delivery reports now (id → report, None for a node that
    /// reports none; the node itself is ignored). Call it on every member change.
    pub fn peer_reports(
        &mut self,
        reports: BTreeMap<String, Option<DeliveryReport>>,
        now: Instant,
    ) -> Vec<Action> {
        self.reports = reports
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .collect();
        self.reconcile(now)
    }

    /// Whether every other node that could deliver `group` reports, at the current
    /// epoch or a newer one, that it does not.
    fn handed_over(&self, group: &str) -> bool {
        let Some(current) = self.current.as_ref() else {
            return false;
        };
        let named = current
            .consumer_groups
            .values()
            .chain(current.producer_groups.values());
        let mut others: BTreeSet<&str> = self.reports.keys().map(String::as_str).collect();
        others.extend(named.map(String::as_str).filter(|n| *n != self.me));
        others.into_iter().all(|n| match self.reports.get(n) {
            // An older node: nothing to wait for.
            Some(None) => true,
            Some(Some(r)) => r.epoch >= Some(current.epoch) && !r.groups.contains(group),
            // Named by the placement but not a member this node knows (yet): its member
            // key may not have reached this node's view; wait.
            None => false,
        })
    }

    /// The groups being delivered.
    pub fn delivering(&self) -> &BTreeSet<String> {
        &self.delivering
    }

    /// The newest placement epoch seen.
    pub fn epoch(&self) -> Option<u64> {
        self.current.as_ref().map(|p| p.epoch)
    }

    /// The health now.
    pub fn health(&self) -> Health {
        self.health
    }

    fn ttl(&self) -> Duration {
        self.lease_cfg.ttl
    }

    fn margin(&self) -> Duration {
        self.lease_cfg.safety_margin()
    }

    /// When keep-alives count as failing: no acknowledgement for a period plus the margin.
    fn stale_at(&self, last_ack: Instant) -> Instant {
        last_ack + self.lease_cfg.interval() + self.margin()
    }

    /// The lease deadline: the registry keeps the lease at least until TTL after
    /// `last_ack`; the node stops the margin before.
    fn deadline(&self, last_ack: Instant) -> Instant {
        last_ack + self.ttl().saturating_sub(self.margin())
    }

    /// How often the peers are asked again while keep-alives fail.
    fn ask_period(&self) -> Duration {
        (self.lease_cfg.interval() / 2).max(Duration::from_millis(50))
    }

    /// Whether the node reaches the registry now (last acknowledgement is recent).
    pub fn reaches_registry(&self, now: Instant) -> bool {
        matches!(self.lease, Lease::Held { last_ack } if now < self.stale_at(last_ack))
    }

    fn lease_ok(&self, now: Instant) -> bool {
        matches!(self.lease, Lease::Held { last_ack } if now < self.deadline(last_ack))
    }

    /// Whether every asked peer's promise holds at `now` (and at least one was asked).
    fn extended(&self, now: Instant) -> bool {
        match &self.asked {
            Some(asked) if !asked.is_empty() => asked
                .keys()
                .all(|p| self.promises.get(p).is_some_and(|until| now < *until)),
            _ => false,
        }
    }

    /// A placement seen on the watch.
    pub fn placement(&mut self, p: Placement, now: Instant) -> Vec<Action> {
        self.see(p);
        self.reconcile(now)
    }

    fn see(&mut self, p: Placement) {
        if self.current.as_ref().is_none_or(|c| p.epoch >= c.epoch) {
            self.current = Some(p);
        } else {
            tracing::warn!(
                epoch = p.epoch,
                "ignoring a placement older than one already seen"
            );
        }
    }

    /// The answer to [`Action::ReadPlacement`] (`None`: no placement published yet).
    pub fn placement_read(&mut self, p: Option<Placement>, now: Instant) -> Vec<Action> {
        if let Some(p) = p {
            self.see(p);
        }
        self.reread = false;
        self.reconcile(now)
    }

    /// The lease state changed (or a keep-alive was acknowledged).
    pub fn lease(&mut self, lease: Lease, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let regained =
            matches!(lease, Lease::Held { .. }) && matches!(self.lease, Lease::Lost | Lease::Gone);
        self.lease = lease;
        if regained {
            // The old lease may have expired and the placement moved meanwhile: the
            // watch may lag, so read it afresh before starting anything.
            self.reread = true;
            out.push(Action::ReadPlacement);
        }
        out.extend(self.reconcile(now));
        out
    }

    /// The other node members now (id → URL; the node itself is ignored).
    pub fn peers(&mut self, peers: BTreeMap<String, String>, now: Instant) -> Vec<Action> {
        self.peers = peers.into_iter().filter(|(id, _)| *id != self.me).collect();
        self.reconcile(now)
    }

    /// A peer's answer to a question sent at `sent`.
    pub fn peer_answer(
        &mut self,
        peer: &str,
        sent: Instant,
        answer: PeerAnswer,
        now: Instant,
    ) -> Vec<Action> {
        let asked = self.asked.as_ref().is_some_and(|a| a.contains_key(peer));
        match answer {
            PeerAnswer::Promise(lasts) if asked => {
                // The peer answered after `sent`, so its promise runs at least until
                // `sent + lasts` in real time; the margin covers clock-rate drift and the
                // time stopping takes.
                let until = sent + lasts.saturating_sub(self.margin());
                let e = self.promises.entry(peer.to_string()).or_insert(until);
                *e = (*e).max(until);
            }
            // No new promise: the ones it gave still bind it until they run out, and the
            // extension ends with them.
            _ => {}
        }
        self.reconcile(now)
    }

    /// A peer asks whether this node reaches the registry. `Some(d)`: it does not, and
    /// promises (recorded here) to start no group it is not delivering for `d` (its TTL)
    /// from `now`; `None`: it reaches the registry (no promise).
    pub fn promise(&mut self, now: Instant) -> Option<Duration> {
        if self.reaches_registry(now) {
            return None;
        }
        let until = now + self.ttl();
        self.promised_until = Some(self.promised_until.map_or(until, |u| u.max(until)));
        Some(self.ttl())
    }

    /// Time passed: deadlines, promise expiries, question rounds.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.reconcile(now)
    }

    /// The next instant [`Membership::tick`] must be called at (`None`: only on events).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut at: Vec<Instant> = Vec::new();
        if let Lease::Held { last_ack } = self.lease {
            at.push(self.stale_at(last_ack));
            at.push(self.deadline(last_ack));
        }
        at.extend(self.next_ask);
        at.extend(self.promises.values().copied());
        at.extend(self.promised_until);
        at.into_iter().filter(|t| *t > now).min()
    }

    fn reconcile(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        // Questions while keep-alives fail (also past the deadline), until the lease is
        // back and the placement read again: the promises carry the groups over the gap.
        let failing =
            !matches!(self.lease, Lease::Gone) && (self.reread || !self.reaches_registry(now));
        if failing {
            if self.asked.is_none() {
                self.asked = Some(self.peers.clone());
                self.promises.clear();
                self.next_ask = Some(now);
            }
            let asked = self.asked.as_ref().expect("set above");
            if !asked.is_empty() && self.next_ask.is_some_and(|t| t <= now) {
                out.push(Action::AskPeers(
                    asked
                        .iter()
                        .map(|(id, url)| Peer {
                            id: id.clone(),
                            url: url.clone(),
                        })
                        .collect(),
                ));
                self.next_ask = Some(now + self.ask_period());
            }
        } else {
            self.asked = None;
            self.promises.clear();
            self.next_ask = None;
        }
        if self.promised_until.is_some_and(|u| u <= now) {
            self.promised_until = None;
        }

        let placed = owned_by(self.current.as_ref(), &self.me);
        let extended = self.extended(now);
        let mut waiting = BTreeSet::new();
        let kept: BTreeSet<String> = self.delivering.intersection(&placed).cloned().collect();
        let (want, health) = if matches!(self.lease, Lease::Gone) {
            (BTreeSet::new(), Health::LeaseLost)
        } else if self.lease_ok(now) && !self.reread {
            let mut want = kept;
            if self.promised_until.is_none() {
                for g in placed.difference(&want.clone()) {
                    if self.handed_over(g) {
                        want.insert(g.clone());
                    } else {
                        waiting.insert(g.clone());
                    }
                }
            }
            (want, Health::Registered)
        } else if extended {
            // Never a new group, never one stopped: only what is being delivered.
            (kept, Health::ServingOnPromises)
        } else if self.lease_ok(now) {
            // Lease regained but the placement not read yet: nothing new, nothing kept
            // that the old lease alone covered.
            (BTreeSet::new(), Health::Registered)
        } else {
            (BTreeSet::new(), Health::LeaseLost)
        };
        for g in self.delivering.difference(&want) {
            out.push(Action::Stop(g.clone()));
        }
        for g in want.difference(&self.delivering) {
            out.push(Action::Start(g.clone()));
        }
        self.delivering = want;
        self.waiting = waiting;
        if health != self.health {
            self.health = health;
            out.push(Action::Health(health));
        }
        let report = DeliveryReport {
            epoch: self.epoch(),
            groups: self.delivering.clone(),
        };
        if self.reported.as_ref() != Some(&report) {
            self.reported = Some(report.clone());
            out.push(Action::Report(report));
        }
        out
    }
}
