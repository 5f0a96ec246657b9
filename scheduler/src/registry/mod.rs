//! The cluster registry: who is alive in a cluster, what they report, and the published
//! placement.
//!
//! Owns the [`Registry`] trait and its two implementations: [`EtcdRegistry`] (production,
//! over `etcd-client`) and [`InProcessRegistry`] (`meshd dev`, tests). Both pass the same
//! conformance suite (`testing::conformance`, feature `testing`).
//!
//! # Key layout
//!
//! Every key of a cluster lives under `/meshd/{cluster}/` (see [`keys`]):
//!
//! ```text
//! /meshd/{cluster}/nodes/{id}                          MemberInfo JSON   (member's lease)
//! /meshd/{cluster}/proxies/{id}                        MemberInfo JSON   (member's lease)
//! /meshd/{cluster}/groups/producer/{group}/{role}:{id} {"role","id"}     (member's lease)
//! /meshd/{cluster}/groups/consumer/{group}/{role}:{id} {"role","id"}     (member's lease)
//! /meshd/{cluster}/placement/current                   Placement JSON    (no lease)
//! /meshd/{cluster}/catalog/topics/{topic}              TopicConfig JSON  (no lease)
//! /meshd/{cluster}/catalog/subscriptions/{name}        SubscriptionSpec JSON (no lease)
//! /meshd/{cluster}/tokens/{id}                         proxy token record JSON (no lease)
//! /meshd/{cluster}/tokens-import                       import marker JSON (no lease)
//! ```
//!
//! Variable segments escape `%` as `%25` and `/` as `%2F`.
//!
//! # Semantics
//!
//! - [`Registry::register`] writes a member's keys under a fresh lease and returns a
//!   [`MemberHandle`] whose background task keeps the lease alive. Dropping the handle or
//!   calling [`MemberHandle::deregister`] revokes the lease, so the member's keys go at
//!   once; a crashed process (simulated by [`MemberHandle::abandon`]) disappears when its
//!   lease expires.
//! - A member that cannot confirm its lease for a whole TTL (registry unreachable) counts
//!   the lease as lost, keeps running, and re-registers under a new lease as soon as the
//!   registry answers again. [`MemberHandle::status`] reports this.
//! - [`Registry::watch_members`] yields the current members first (a snapshot, then
//!   [`MemberEvent::Synced`]), then every change in order. If the underlying watch breaks
//!   (connection lost, history compacted), it re-lists and emits the difference, so a
//!   consumer never misses the net effect of a change.
//! - Placement is one JSON document per cluster with an epoch;
//!   [`Registry::put_placement_if`] is a compare-and-set on the epoch.
//! - The catalog ([`catalog`]) holds the topics and subscriptions every node of the
//!   cluster must have. Entries carry no lease. [`Registry::watch_catalog`] works like
//!   `watch_members`: a snapshot (topics before subscriptions), `Synced`, then every
//!   change in order, re-listing after a broken watch. Values are opaque JSON here;
//!   writers (nodes) validate before they write. [`Registry::catalog_create`] is an
//!   atomic create-if-absent (subscriptions), [`Registry::catalog_put`] an upsert (topics).
//! - Tokens ([`tokens`]) are the proxies' API tokens of the cluster (hashes, never
//!   secrets). [`Registry::token_create`] is an atomic create-if-absent,
//!   [`Registry::tokens_import_once`] writes a token file's records and a marker in one
//!   transaction unless the marker exists (so an import happens once per cluster, whatever
//!   the number of proxies racing), and [`Registry::watch_tokens`] sends whole snapshots
//!   after every break so a consumer never misses a revocation.

pub mod catalog;
pub mod etcd;
pub mod keys;
mod member;
pub mod memory;
pub mod store_shape;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch as tokio_watch};

pub use catalog::{CatalogEntry, CatalogEvent, CatalogKind, CatalogWatch};
pub use etcd::{EtcdConfig, EtcdRegistry};
pub use member::{MemberHandle, MemberState, MemberStatus};
pub use memory::InProcessRegistry;
pub use store_shape::{MemberStore, StoreConflict};
pub use tokens::{TokenEntry, TokenEvent, TokenWatch};

/// The kind of a registered member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A runtime node (node/).
    Node,
    /// A proxy (proxy/).
    Proxy,
}

impl Role {
    /// `node` or `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Proxy => "proxy",
        }
    }

    /// Parses `node` or `proxy`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "node" => Some(Role::Node),
            "proxy" => Some(Role::Proxy),
            _ => None,
        }
    }
}

/// Identity of a member: its role and its id (unique per role in a cluster).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// Node or proxy.
    pub role: Role,
    /// The member's id.
    pub id: String,
}

impl MemberId {
    /// A node's identity.
    pub fn node(id: impl Into<String>) -> Self {
        Self {
            role: Role::Node,
            id: id.into(),
        }
    }

    /// A proxy's identity.
    pub fn proxy(id: impl Into<String>) -> Self {
        Self {
            role: Role::Proxy,
            id: id.into(),
        }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.id)
    }
}

/// Producer or consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// A producer group.
    Producer,
    /// A consumer group.
    Consumer,
}

/// The groups a member reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberGroups {
    /// Producer groups the member currently serves.
    pub producer: BTreeSet<String>,
    /// Consumer groups the member currently serves.
    pub consumer: BTreeSet<String>,
}

impl MemberGroups {
    /// The groups of one kind.
    pub fn of(&self, kind: GroupKind) -> &BTreeSet<String> {
        match kind {
            GroupKind::Producer => &self.producer,
            GroupKind::Consumer => &self.consumer,
        }
    }
}

/// What a node delivers, reported after it carried out a placement: the newest placement
/// epoch it has applied and the consumer groups it delivers now. Written only after the
/// groups it no longer delivers have stopped (progress committed), so a node taking a
/// group over waits for it (docs/scheduler.md, "Hand-over between live nodes").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryReport {
    /// The newest placement epoch applied (None: none yet).
    pub epoch: Option<u64>,
    /// The consumer groups delivered now.
    pub groups: BTreeSet<String>,
}

/// The load a member reports (informational for placement and operators).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberLoad {
    /// Events accepted per second, recent average.
    pub events_per_sec: f64,
    /// Open client connections or push loops.
    pub connections: u64,
}

/// What a member publishes about itself (the JSON value of its member key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's id, unique per role in the cluster.
    pub id: String,
    /// Node or proxy.
    pub role: Role,
    /// Base URL of the member's HTTP API, e.g. `http://10.0.0.5:8080`.
    pub http_addr: String,
    /// Reported load.
    #[serde(default)]
    pub load: MemberLoad,
    /// Reported producer and consumer groups.
    #[serde(default)]
    pub groups: MemberGroups,
    /// When the member process started, Unix milliseconds.
    pub started_at: u64,
    /// The event store a node runs on (None: proxies, and nodes of older versions); see
    /// [`store_shape`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<MemberStore>,
    /// The node runs its cluster's federation bridge (`--topology`): proxies send
    /// `/v1/mesh` requests to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bridge: bool,
    /// What a node delivers (None: proxies, and nodes of older versions, which no node
    /// waits for in a hand-over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivering: Option<DeliveryReport>,
}

impl MemberInfo {
    /// A member with no load and no groups, started now.
    pub fn new(role: Role, id: impl Into<String>, http_addr: impl Into<String>) -> Self {
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            id: id.into(),
            role,
            http_addr: http_addr.into(),
            load: MemberLoad::default(),
            groups: MemberGroups::default(),
            started_at,
            store: None,
            bridge: false,
            delivering: None,
        }
    }

    /// The member's identity.
    pub fn member_id(&self) -> MemberId {
        MemberId {
            role: self.role,
            id: self.id.clone(),
        }
    }
}

/// A change of membership, as [`Registry::watch_members`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// A member registered or updated its info.
    Put(MemberInfo),
    /// A member left (deregistered, or its lease expired).
    Delete(MemberId),
    /// Everything before this event is the complete current membership: sent after the
    /// initial snapshot and after every re-synchronisation.
    Synced,
}

/// The placement document of a cluster: which node serves which group. Written only by
/// the scheduler leader through [`Registry::put_placement_if`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Strictly increasing with every published placement; nodes fence on it.
    pub epoch: u64,
    /// Producer group → node id.
    #[serde(default)]
    pub producer_groups: BTreeMap<String, String>,
    /// Consumer group → node id.
    #[serde(default)]
    pub consumer_groups: BTreeMap<String, String>,
}

/// Which members report which groups (read from the group keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupReport {
    /// Producer group → members reporting it.
    pub producer: BTreeMap<String, BTreeSet<MemberId>>,
    /// Consumer group → members reporting it.
    pub consumer: BTreeMap<String, BTreeSet<MemberId>>,
}

impl GroupReport {
    fn insert(&mut self, kind: GroupKind, group: String, member: MemberId) {
        let map = match kind {
            GroupKind::Producer => &mut self.producer,
            GroupKind::Consumer => &mut self.consumer,
        };
        map.entry(group).or_default().insert(member);
    }
}

/// Lease settings of one registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Time to live of the lease; a member that stops renewing disappears after it.
    /// etcd rounds it up to whole seconds (and to its own minimum).
    pub ttl: Duration,
    /// Keep-alive period; defaults to a third of the TTL.
    pub keep_alive_interval: Option<Duration>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            keep_alive_interval: None,
        }
    }
}

impl LeaseConfig {
    /// A lease with this TTL and the default keep-alive period.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            keep_alive_interval: None,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.ttl < Duration::from_millis(100) {
            return Err(RegistryError::InvalidConfig(format!(
                "lease ttl {:?} is below the 100ms minimum",
                self.ttl
            )));
        }
        if let Some(i) = self.keep_alive_interval {
            if i.is_zero() || i >= self.ttl {
                return Err(RegistryError::InvalidConfig(format!(
                    "keep-alive interval {i:?} must be above zero and below the ttl {:?}",
                    self.ttl
                )));
            }
        }
        Ok(())
    }

    /// The keep-alive period: [`LeaseConfig::keep_alive_interval`] or a third of the TTL.
    pub fn interval(&self) -> Duration {
        self.keep_alive_interval.unwrap_or(self.ttl / 3)
    }

    /// How long before the TTL (counted on the member's monotonic clock from the send of
    /// its last acknowledged keep-alive) a member gives its lease up as lost: a tenth of
    /// the TTL, at least 100 ms and at most 1 s. It covers clock-rate drift between the
    /// member and etcd and the time the member takes to stop what the lease guards.
    pub fn safety_margin(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// Errors of registry operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry (etcd) could not be reached or refused the call; retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A call did not complete within the configured timeout; retry later.
    #[error("registry call `{op}` timed out after {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The placement epoch is not the expected one: another writer published first.
    /// Re-read the placement and decide again.
    #[error("placement epoch conflict: expected {expected:?}, found {actual:?}")]
    PlacementConflict {
        /// The epoch the writer expected (None: no placement yet).
        expected: Option<u64>,
        /// The epoch found (None: no placement).
        actual: Option<u64>,
    },
    /// A new placement must carry an epoch above the one it replaces.
    #[error("placement epoch {new} is not above the expected epoch {expected:?}")]
    PlacementEpochNotIncreasing {
        /// The expected current epoch.
        expected: Option<u64>,
        /// The new document's epoch.
        new: u64,
    },
    /// The member's lease is not currently held (lost, being re-registered); the info was
    /// kept and is written again on re-registration.
    #[error("member {member} holds no lease right now; it will be written on re-registration")]
    NotRegistered {
        /// The member.
        member: String,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease {lease} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease id.
        lease: i64,
    },
    /// The member's background task is gone (deregistered or abandoned).
    #[error("member {member} is no longer registered")]
    MemberStopped {
        /// The member.
        member: String,
    },
    /// A stored value could not be decoded.
    #[error("undecodable value at key {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Invalid settings.
    #[error("invalid registry configuration: {0}")]
    InvalidConfig(String),
}

/// A stream of membership changes; see [`Registry::watch_members`]. Dropping it stops the
/// watch.
#[derive(Debug)]
pub struct MemberWatch {
    rx: mpsc::Receiver<MemberEvent>,
}

impl MemberWatch {
    pub(crate) fn new(rx: mpsc::Receiver<MemberEvent>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the watch ended (the registry was dropped).
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        self.rx.recv().await
    }

    /// The underlying channel.
    pub fn into_inner(self) -> mpsc::Receiver<MemberEvent> {
        self.rx
    }
}

/// The membership source and placement store of one cluster.
///
/// Object safe: roles hold an `Arc<dyn Registry>` and do not know which implementation
/// they talk to.
#[async_trait]
pub trait Registry: Send + Sync {
    /// The cluster this registry view serves.
    fn cluster(&self) -> &str;

    /// Registers a member under a fresh lease and keeps the lease alive in the background
    /// until the handle is dropped or deregistered. Fails if the registry cannot be
    /// reached now.
    async fn register(
        &self,
        info: MemberInfo,
        lease: LeaseConfig,
    ) -> Result<MemberHandle, RegistryError>;

    /// The members registered now, sorted by (role, id).
    async fn list_members(&self) -> Result<Vec<MemberInfo>, RegistryError>;

    /// Which members report which groups now.
    async fn list_groups(&self) -> Result<GroupReport, RegistryError>;

    /// Watches membership: a snapshot of current members as `Put`s, then `Synced`, then
    /// every change in order.
    async fn watch_members(&self) -> Result<MemberWatch, RegistryError>;

    /// The published placement, if any.
    async fn get_placement(&self) -> Result<Option<Placement>, RegistryError>;

    /// Publishes `new` if the current placement's epoch is `expected_epoch` (`None`: no
    /// placement yet). `new.epoch` must be above `expected_epoch`.
    async fn put_placement_if(
        &self,
        expected_epoch: Option<u64>,
        new: &Placement,
    ) -> Result<(), RegistryError>;

    /// Watches the placement: the receiver always holds the latest published document.
    async fn watch_placement(
        &self,
    ) -> Result<tokio_watch::Receiver<Option<Placement>>, RegistryError>;

    /// Creates or replaces a catalog entry (no lease). The value is stored as given.
    async fn catalog_put(
        &self,
        kind: CatalogKind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(), RegistryError>;

    /// Creates a catalog entry only if there is none: `Ok(None)` when written,
    /// `Ok(Some(existing))` (nothing written) when the name is taken. Atomic: of two
    /// racing creators exactly one writes.
    async fn catalog_create(
        &self,
        kind: CatalogKind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, RegistryError>;

    /// Deletes a catalog entry; `false` when there was none.
    async fn catalog_delete(&self, kind: CatalogKind, name: &str) -> Result<bool, RegistryError>;

    /// Every catalog entry now: topics first, then subscriptions, each sorted by name.
    async fn catalog_list(&self) -> Result<Vec<CatalogEntry>, RegistryError>;

    /// Watches the catalog: a snapshot as `Put`s (topics first), then `Synced`, then every
    /// change in order.
    async fn watch_catalog(&self) -> Result<CatalogWatch, RegistryError>;

    /// Stores a token record under `id` only if there is none: `true` when written,
    /// `false` (nothing written) when the id is taken. Atomic.
    async fn token_create(
        &self,
        id: &str,
        value: &serde_json::Value,
    ) -> Result<bool, RegistryError>;

    /// Deletes a token record; `false` when there was none.
    async fn token_delete(&self, id: &str) -> Result<bool, RegistryError>;

    /// Every token record now, sorted by id.
    async fn token_list(&self) -> Result<Vec<TokenEntry>, RegistryError>;

    /// Imports token records once per cluster: if no import marker exists, writes
    /// `marker` and every entry (replacing a record of the same id) in one transaction and
    /// answers `Ok(None)`; otherwise writes nothing and answers `Ok(Some(existing
    /// marker))`. At most [`tokens::MAX_IMPORT`] entries.
    async fn tokens_import_once(
        &self,
        marker: &serde_json::Value,
        entries: &[TokenEntry],
    ) -> Result<Option<serde_json::Value>, RegistryError>;

    /// Watches the tokens: a [`TokenEvent::Snapshot`], then every change in order; after a
    /// break, [`TokenEvent::Interrupted`] and, once the registry answers, a new snapshot.
    async fn watch_tokens(&self) -> Result<TokenWatch, RegistryError>;
}

/// Checks the epoch rule of [`Registry::put_placement_if`].
pub(crate) fn check_epoch(expected: Option<u64>, new: &Placement) -> Result<(), RegistryError> {
    match expected {
        Some(e) if new.epoch <= e => Err(RegistryError::PlacementEpochNotIncreasing {
            expected,
            new: new.epoch,
        }),
        _ => Ok(()),
    }
}
