//! A runtime node assembled: store + delivery + subscriptions + HTTP, with a designed
//! start-up (recover topics and subscriptions from the store) and shutdown (stop taking
//! requests, commit delivery progress, close the store).
//!
//! Cluster seams (used by `meshd node --registry`, wired in the binary; a node without a
//! registry uses none of them and behaves as a single node):
//! - the placement gate ([`Node::set_owned_groups`], [`NodeConfig::placement_gated`]):
//!   which consumer groups this node may deliver; subscriptions of other groups are kept
//!   but their push loops and pull serving are stopped;
//! - the shared catalog ([`CatalogSink`], [`Node::set_catalog`]): admin changes made
//!   through the HTTP API are validated here, then written to the cluster catalog, then
//!   applied locally; changes seen in the catalog are applied with
//!   [`Node::apply_topic`] / [`Node::apply_subscription`] and the `delete_*` methods;
//! - what the node reports: producer groups seen ([`Node::note_producer_group`],
//!   [`Node::producer_groups`]), consumer groups ([`Node::consumer_groups`]) and load
//!   counters ([`Node::published_total`], [`Node::serving_count`]);
//! - drain ([`Node::set_draining`], [`Node::drain_watch`], [`Node::backlog_marks`],
//!   [`Node::backlog_before`]): a draining
//!   node refuses publishes (503 `draining`) and is not ready; the cluster member hands its
//!   groups over (delivers its backlog, stops delivery, leaves the registry) and marks it
//!   [`DrainState::Drained`]; undrain makes it serve and rejoin.
//! - retention holds ([`Node::hold_retention`], [`Node::release_retention`]): consumer
//!   groups whose committed offsets age retention must not pass (the federation bridge
//!   registers one per topology link, `__bridge/{peer}`, so a partition only delays
//!   replication); see [`Node::retention_holds_now`] for what a hold covers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshd_core::api::{
    check_name, CompiledSubscription, InvalidField, PartitionOffsets, StartPosition,
    SubscriptionSpec, TopicConfig, TopicInfo,
};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use crate::delivery::{Delivery, DeliveryError};
use crate::ingest::now_ms;
use crate::metrics::Metrics;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::pulsar::{PulsarConfig, PulsarStore};
use crate::store::{EventStore, FsyncPolicy, RetentionHolds, StoreError};
use crate::trace::TraceLog;

mod replay;
mod replays;
mod trace_query;
pub use replay::{BrowseFrom, BROWSE_MAX_BYTES, START_TIME_SKEW};
pub use replays::{ReplayEntry, REPLAY_PREFIX};
pub use trace_query::{DEFAULT_TRACE_TIMEOUT, MAX_TRACE_TIMEOUT};

const SUBSCRIPTION_PREFIX: &str = "subscriptions/";
/// Store metadata: when each subscription was made (ms since the epoch, as text). A
/// `latest` subscription in another cluster's topic wants that cluster's events stored
/// since then (the federation's interest carries it).
const SUBSCRIPTION_CREATED_PREFIX: &str = "subscription-created/";

/// How long a stopping node waits for requests in flight (a pull waits up to 60 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(65);

/// Configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The cluster this node belongs to.
    pub cluster: String,
    /// This node's id within the cluster.
    pub node_id: String,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// When appends are fsynced.
    pub fsync: FsyncPolicy,
    /// Period of fsync under `FsyncPolicy::Interval`.
    pub fsync_interval: Duration,
    /// Largest publish request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// Header size and count, read timeouts and connection limits of the HTTP listener
    /// (the same mechanism and defaults as a proxy's).
    pub listener: meshd_listener::ListenerConfig,
    /// Create a topic on first publish instead of answering 404.
    pub auto_create_topics: bool,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Which event store the node uses.
    pub store: StoreKind,
    /// Deliver no consumer group until [`Node::set_owned_groups`] names it (a node of a
    /// cluster with a registry: placement decides). `false`: deliver every subscription.
    pub placement_gated: bool,
    /// How long past its topic's `max_age_secs` a record may be kept for a retention hold
    /// (a link that has not sent it yet) at most; `None`: as long as the hold lasts.
    pub retention_hold_max: Option<Duration>,
    /// Where webhook subscriptions may push (see [`meshd_core::egress`]); the default
    /// allows public addresses only.
    pub webhook: meshd_core::egress::EgressRules,
    /// The cluster's internal token: when set, every `/v1` request must carry it (see
    /// [`meshd_core::internal`]); `None`: the API is open to whoever reaches the port.
    pub internal_token: Option<meshd_core::internal::InternalToken>,
    /// How long trace records are kept (`Duration::ZERO`: tracing off); see
    /// [`crate::trace`].
    pub trace_retention: Duration,
    /// Most trace records kept (the oldest are evicted first).
    pub trace_capacity: usize,
}

/// Default of [`NodeConfig::retention_hold_max`]: 7 days.
pub const DEFAULT_RETENTION_HOLD_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a retention hold covers on one topic (answered by the holder, see
/// [`Node::hold_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldScope {
    /// The holder still has to read this topic: held from the group's committed offset,
    /// or from the partition start where the group committed none.
    Wanted,
    /// The holder does not know (e.g. a link whose peer has not told its interest since
    /// start): held from the group's committed offset where there is one, else not held.
    Unknown,
    /// The holder does not need this topic: not held.
    NotWanted,
}

/// Answers [`HoldScope`] for a topic name.
pub type HoldScopeFn = Arc<dyn Fn(&str) -> HoldScope + Send + Sync>;

/// Which event store a node uses (`store = "embedded" | "pulsar://host:port"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// The embedded durable log in `data_dir` (default).
    #[default]
    Embedded,
    /// A Pulsar-protocol broker ([`crate::store::pulsar`]).
    Pulsar(PulsarConfig),
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "embedded" {
            return Ok(StoreKind::Embedded);
        }
        match s.strip_prefix("pulsar://") {
            Some(rest) if !rest.is_empty() && !rest.contains('/') => {
                Ok(StoreKind::Pulsar(PulsarConfig::new(s)))
            }
            _ => Err(format!(
                "store must be embedded or pulsar://host:port, not {s:?}"
            )),
        }
    }
}

impl NodeConfig {
    /// Defaults for a node keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            cluster: "local".into(),
            node_id: "node-1".into(),
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(100),
            max_body_bytes: 4 * 1024 * 1024,
            listener: meshd_listener::ListenerConfig::default(),
            auto_create_topics: false,
            retention_interval: Duration::from_secs(30),
            store: StoreKind::Embedded,
            placement_gated: false,
            retention_hold_max: Some(DEFAULT_RETENTION_HOLD_MAX),
            webhook: meshd_core::egress::EgressRules::default(),
            internal_token: None,
            trace_retention: crate::trace::DEFAULT_RETENTION,
            trace_capacity: crate::trace::DEFAULT_CAPACITY,
        }
    }
}

/// Why the cluster catalog could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The registry refused or did not answer.
    #[error("the registry did not take the change: {0}")]
    Registry(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The entry could not be encoded.
    #[error("encoding the catalog entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The cluster catalog as a node writes to it (implemented over the registry by the
/// binary).
#[async_trait::async_trait]
pub trait CatalogSink: Send + Sync {
    /// Creates or replaces a topic.
    async fn put_topic(&self, name: &str, config: &TopicConfig) -> Result<(), CatalogError>;
    /// Deletes a topic.
    async fn delete_topic(&self, name: &str) -> Result<(), CatalogError>;
    /// Creates a subscription (the spec with defaults filled in) unless the name is taken:
    /// `Ok(None)` when written, `Ok(Some(existing))` when not (nothing written).
    async fn create_subscription(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Option<SubscriptionSpec>, CatalogError>;
    /// Deletes a subscription.
    async fn delete_subscription(&self, name: &str) -> Result<(), CatalogError>;
    /// Creates or replaces a schema (every version).
    async fn put_schema(
        &self,
        name: &str,
        entry: &meshd_core::api::SchemaCatalogEntry,
    ) -> Result<(), CatalogError>;
    /// Deletes a schema.
    async fn delete_schema(&self, name: &str) -> Result<(), CatalogError>;
}

/// Most producer groups a node remembers (older ones are dropped first).
const MAX_PRODUCER_GROUPS: usize = 10_000;

/// Why asking another node of this cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The HTTP client for the cluster's other nodes could not be built.
    #[error("building the HTTP client for the cluster's other nodes: {}", meshd_core::api::error_chain(.0))]
    Client(#[source] reqwest::Error),
    /// The node's registered URL is not a URL.
    #[error("bad node URL {url:?}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        source: url::ParseError,
    },
    /// The request failed (connect, timeout, reading the answer).
    #[error("{}", meshd_core::api::error_chain(.0))]
    Request(#[source] reqwest::Error),
    /// The node answered with an error status.
    #[error("it answered {0}")]
    Status(u16),
}

/// Failures of node operations (mapped to HTTP answers in `http.rs`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Delivery failed.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No such subscription.
    #[error("subscription {name:?} does not exist")]
    SubscriptionNotFound {
        /// Name.
        name: String,
    },
    /// A subscription with this name exists with another spec.
    #[error("subscription {name:?} already exists with another spec; delete it first")]
    SubscriptionConflict {
        /// Name.
        name: String,
    },
    /// A topic still has subscriptions.
    #[error("topic {topic:?} still has subscriptions {subscriptions:?}; delete them first")]
    TopicInUse {
        /// Topic.
        topic: String,
        /// Its subscriptions.
        subscriptions: Vec<String>,
    },
    /// A subscription names a topic that does not exist.
    #[error("topic {topic:?} does not exist; create it with PUT /v1/topics/{topic}")]
    TopicNotFound {
        /// Topic.
        topic: String,
    },
    /// The cluster catalog could not be written; nothing was changed.
    #[error("the cluster catalog is unavailable: {0}")]
    CatalogUnavailable(#[source] CatalogError),
    /// A webhook target is refused by the node's target rules.
    #[error(transparent)]
    WebhookTarget(#[from] crate::delivery::WebhookTargetError),
    /// The node delivering a subscription's group could not be asked.
    #[error("node {node:?} delivers subscription {name:?} and could not be asked: {error}")]
    OwnerUnreachable {
        /// Subscription.
        name: String,
        /// The node delivering it.
        node: String,
        /// Why.
        error: String,
    },
    /// No replay of this name.
    #[error("replay {name:?} does not exist; see GET /v1/replays")]
    ReplayNotFound {
        /// Name.
        name: String,
    },
    /// A replay of this name exists.
    #[error("replay {name:?} exists; pick another name (or leave name out to get one)")]
    ReplayExists {
        /// Name.
        name: String,
    },
    /// The replay ended; it cannot be cancelled.
    #[error("replay {name:?} is {state} already; nothing to cancel")]
    ReplayEnded {
        /// Name.
        name: String,
        /// Its state.
        state: &'static str,
    },
    /// The subscription's consumer group is placed on another node of the cluster.
    #[error("consumer group {group:?} of subscription {name:?} is not served by this node; use the node placement names (or a proxy)")]
    NotPlacedHere {
        /// Subscription.
        name: String,
        /// Its consumer group.
        group: String,
    },
}

/// A running node.
pub struct Node {
    /// Its configuration.
    pub config: NodeConfig,
    /// Its event store.
    pub store: Arc<dyn EventStore>,
    /// Its delivery engine.
    pub delivery: Delivery,
    /// Its metrics.
    pub metrics: Metrics,
    /// What happened to events here (`GET /v1/trace`).
    pub trace: Arc<TraceLog>,
    /// Its schema registry (docs/api.md, "Schemas").
    pub schemas: crate::schemas::SchemaRegistry,
    /// Schema discovery of topics with `discover: true` (docs/api.md, "Schema discovery").
    pub discovery: crate::discovery::Discovery,
    topics: RwLock<HashMap<String, TopicConfig>>,
    subscriptions: RwLock<BTreeMap<String, Arc<CompiledSubscription>>>,
    /// When each subscription was made (see [`SUBSCRIPTION_CREATED_PREFIX`]).
    subscriptions_created: std::sync::Mutex<HashMap<String, u64>>,
    admin: Mutex<()>,
    ready: AtomicBool,
    /// Set by the cluster membership while the node's registry lease is lost (it delivers
    /// no consumer group and is not a listed member): `/readyz` then answers 503.
    lease_lost: AtomicBool,
    mesh: std::sync::OnceLock<MeshStatusFn>,
    mesh_metrics: std::sync::OnceLock<MeshMetricsFn>,
    mesh_link_admin: std::sync::OnceLock<MeshLinkAdminFn>,
    promise: std::sync::OnceLock<PromiseFn>,
    /// Past its lease deadline, delivering on its peers' promises (`/readyz` says so).
    serving_on_promises: AtomicBool,
    mesh_failover: std::sync::OnceLock<MeshFailoverFn>,
    mesh_trace: std::sync::OnceLock<MeshTraceFn>,
    group_locator: std::sync::OnceLock<Arc<dyn GroupLocator>>,
    /// Consumer groups this node may deliver; `None`: all (no placement).
    owned: RwLock<Option<BTreeSet<String>>>,
    catalog: std::sync::OnceLock<Arc<dyn CatalogSink>>,
    /// One HTTP client for asking the cluster's other nodes (status, replays, traces
    /// forwarded to them): its connections are reused. Built on first use (building it
    /// needs the process's rustls provider, which the binary installs at start).
    peer_http: std::sync::OnceLock<reqwest::Client>,
    producer_groups: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    published: AtomicU64,
    /// Held shared by every publish from its drain check to its answer; a drain takes it
    /// exclusively (see [`Node::publish_permit`], [`Node::backlog_marks`]).
    publish_gate: tokio::sync::RwLock<()>,
    drain: watch::Sender<DrainState>,
    retention_holds: std::sync::Mutex<BTreeMap<String, HoldScopeFn>>,
    /// Replays this node ran or runs, by name.
    replays: std::sync::Mutex<BTreeMap<String, ReplayEntry>>,
}

/// Where a node is in a drain (`POST /v1/admin/drain|undrain`); the API type.
pub use meshd_core::api::DrainState;

/// The node of this cluster that delivers a consumer group, and its HTTP base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOwner {
    /// Node id.
    pub node: String,
    /// Base URL of its HTTP API.
    pub url: String,
}

/// Finds which node delivers a consumer group (a cluster member answers from the
/// registry's placement; a node without one delivers everything itself).
#[async_trait::async_trait]
pub trait GroupLocator: Send + Sync {
    /// The node placement gives `group` to, if any.
    async fn owner(&self, group: &str) -> Option<GroupOwner>;

    /// Every runtime node of the cluster (this one included), for questions every node
    /// answers for itself (`GET /v1/trace`). Default: none known.
    async fn members(&self) -> Vec<GroupOwner> {
        Vec::new()
    }
}

/// Extra Prometheus text appended to `/metrics` by the federation bridge.
pub type MeshMetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers a peer's `POST /v1/cluster/promise` (set by cluster membership).
pub type PromiseFn = Arc<dyn Fn(&str) -> meshd_core::api::PromiseAnswer + Send + Sync>;

/// Pauses (`true`) or resumes (`false`) replication to a peer cluster, for the admin
/// endpoints `POST /v1/mesh/links/{peer}/pause|resume` (drills). Answers whether the state
/// changed; `Err` when there is no link to that peer.
pub type MeshLinkAdminFn = Arc<dyn Fn(&str, bool) -> Result<bool, NoSuchLink> + Send + Sync>;

/// A link admin request named a peer this cluster has no link to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no link from {from} to {peer:?}")]
pub struct NoSuchLink {
    /// This cluster.
    pub from: String,
    /// The peer named.
    pub peer: String,
}

/// The federation bridge's takeover of a subscription from another cluster, for
/// `POST /v1/mesh/failover`.
pub type MeshFailoverFn = Arc<
    dyn Fn(
            meshd_core::api::FailoverRequest,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<
                            meshd_core::api::FailoverResponse,
                            meshd_core::api::FailoverError,
                        >,
                    > + Send,
            >,
        > + Send
        + Sync,
>;

/// Asks the other clusters of the mesh for an event's trace records (the federation
/// bridge, see [`Node::set_mesh_trace`]): `(source, id, time allowed)` → one answer per
/// cluster other than this one.
pub type MeshTraceFn = Arc<
    dyn Fn(
            String,
            String,
            Duration,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<ClusterTrace>> + Send>>
        + Send
        + Sync,
>;

/// One cluster's part of a trace: whether it answered, and its records.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTrace {
    /// The cluster (and whether it answered, why not, how many records).
    pub answer: meshd_core::api::TraceClusterAnswer,
    /// Its records.
    pub records: Vec<meshd_core::api::TraceRecord>,
}

/// What `GET /v1/mesh` shows, provided by the federation bridge when one runs beside the
/// node (see [`Node::set_mesh_status`]).
pub type MeshStatusFn = Arc<dyn Fn() -> meshd_core::api::MeshStatus + Send + Sync>;

impl Node {
    /// Opens a node on the store `config.store` names: the embedded store in
    /// `config.data_dir` (default) or Pulsar.
    pub async fn open(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        if let StoreKind::Pulsar(pulsar) = &config.store {
            let store = Arc::new(PulsarStore::open(pulsar.clone()).await?);
            return Node::with_store(config, store).await;
        }
        let dir = config.data_dir.join("store");
        #[allow(clippy::needless_update)] // more options may exist than the node sets
        let options = EmbeddedOptions {
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            ..EmbeddedOptions::default()
        };
        let store = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
            EmbeddedStore::open(&dir, options)
        })
        .await
        .map_err(|e| StoreError::Io(format!("store open task failed: {e}")))??;
        Node::with_store(config, store).await
    }

    /// Assembles a node over any store; recovers topics and subscriptions.
    pub async fn with_store(
        config: NodeConfig,
        store: Arc<dyn EventStore>,
    ) -> Result<Arc<Node>, NodeError> {
        let metrics = Metrics::new();
        let guard = crate::delivery::WebhookGuard::new(config.webhook.clone());
        let trace = Arc::new(TraceLog::new(config.trace_retention, config.trace_capacity));
        let delivery = Delivery::for_node(
            store.clone(),
            metrics.clone(),
            &config.node_id,
            guard,
            trace.clone(),
        );
        let topics = store.list_topics().await?.into_iter().collect();
        let schemas = crate::schemas::SchemaRegistry::load(&*store).await?;
        let owned = config.placement_gated.then(BTreeSet::new);
        let node = Arc::new(Node {
            config,
            store,
            delivery,
            metrics,
            trace,
            schemas,
            discovery: crate::discovery::Discovery::start(),
            topics: RwLock::new(topics),
            subscriptions: RwLock::new(BTreeMap::new()),
            subscriptions_created: std::sync::Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
            ready: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
            mesh: std::sync::OnceLock::new(),
            mesh_metrics: std::sync::OnceLock::new(),
            mesh_link_admin: std::sync::OnceLock::new(),
            promise: std::sync::OnceLock::new(),
            serving_on_promises: AtomicBool::new(false),
            mesh_failover: std::sync::OnceLock::new(),
            mesh_trace: std::sync::OnceLock::new(),
            group_locator: std::sync::OnceLock::new(),
            owned: RwLock::new(owned),
            catalog: std::sync::OnceLock::new(),
            peer_http: std::sync::OnceLock::new(),
            producer_groups: std::sync::Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            publish_gate: tokio::sync::RwLock::new(()),
            drain: watch::Sender::new(DrainState::Serving),
            retention_holds: std::sync::Mutex::new(BTreeMap::new()),
            replays: std::sync::Mutex::new(BTreeMap::new()),
        });
        let mut created: HashMap<String, u64> = HashMap::new();
        for (key, value) in node.store.list_meta(SUBSCRIPTION_CREATED_PREFIX).await? {
            let name = key.trim_start_matches(SUBSCRIPTION_CREATED_PREFIX);
            if let Some(ms) = std::str::from_utf8(&value)
                .ok()
                .and_then(|t| t.parse().ok())
            {
                created.insert(name.to_string(), ms);
            }
        }
        for (key, value) in node.store.list_meta(SUBSCRIPTION_PREFIX).await? {
            let spec: SubscriptionSpec = match serde_json::from_slice(&value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(key, "stored subscription is unreadable, skipped: {e}");
                    continue;
                }
            };
            match spec.compile() {
                Ok(sub) => {
                    let sub = Arc::new(sub);
                    if node.should_run(&sub.spec) {
                        node.delivery.start(sub.clone()).await?;
                    }
                    let name = sub.spec.name.clone();
                    // Made by a release that did not record it: from now on.
                    let at = match created.get(&name) {
                        Some(at) => *at,
                        None => node.record_subscription_created(&name).await?,
                    };
                    node.created_map().insert(name.clone(), at);
                    node.write_subs().insert(name, sub);
                }
                Err(e) => {
                    tracing::error!(key, "stored subscription no longer compiles, skipped: {e}")
                }
            }
        }
        node.recover_replays().await?;
        node.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            cluster = %node.config.cluster,
            node = %node.config.node_id,
            topics = node.read_topics().len(),
            subscriptions = node.read_subs().len(),
            "node recovered"
        );
        Ok(node)
    }

    fn hold_table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HoldScopeFn>> {
        self.retention_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TopicConfig>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_topics(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TopicConfig>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_subs(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<CompiledSubscription>>> {
        self.subscriptions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_subs(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<CompiledSubscription>>> {
        self.subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches the federation bridge's status (once; later calls are ignored).
    pub fn set_mesh_status(&self, status: MeshStatusFn) {
        let _ = self.mesh.set(status);
    }

    /// A request to another node of this cluster, answered within `timeout`: with the
    /// cluster's internal token and [`crate::http::FORWARDED_HEADER`] (so that node
    /// answers itself and never forwards again).
    pub(crate) fn peer_request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
        timeout: std::time::Duration,
    ) -> Result<reqwest::RequestBuilder, PeerError> {
        let client = match self.peer_http.get() {
            Some(c) => c,
            None => {
                let built = reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .map_err(PeerError::Client)?;
                self.peer_http.get_or_init(|| built)
            }
        };
        let req = client
            .request(method, url)
            .timeout(timeout)
            .header(crate::http::FORWARDED_HEADER, self.config.node_id.as_str());
        Ok(match &self.config.internal_token {
            Some(t) => req.header(meshd_core::internal::HEADER, t.expose()),
            None => req,
        })
    }

    /// Whether a federation bridge is attached (`--topology`).
    pub fn runs_bridge(&self) -> bool {
        self.mesh.get().is_some()
    }

    /// The federation bridge's status, when a bridge is attached.
    pub fn mesh_status(&self) -> Option<meshd_core::api::MeshStatus> {
        self.mesh.get().map(|f| f())
    }

    /// Attaches the lookup of the node delivering a consumer group (once).
    pub fn set_group_locator(&self, locator: Arc<dyn GroupLocator>) {
        let _ = self.group_locator.set(locator);
    }

    /// The other node of this cluster that delivers subscription `name`'s group, when
    /// placement gives it to another node than this one (`None`: this node delivers it, or
    /// nobody is known to).
    pub async fn group_owner(&self, name: &str) -> Option<GroupOwner> {
        let group = {
            let subs = self.read_subs();
            let sub = subs.get(name)?;
            if self.should_run(&sub.spec) {
                return None;
            }
            sub.spec.group.clone()
        };
        let owner = self.group_locator.get()?.owner(&group).await?;
        (owner.node != self.config.node_id).then_some(owner)
    }

    /// Attaches the federation bridge's metrics (Prometheus text; once).
    pub fn set_mesh_metrics(&self, render: MeshMetricsFn) {
        let _ = self.mesh_metrics.set(render);
    }

    /// The federation bridge's metrics as Prometheus text, when a bridge is attached.
    pub fn mesh_metrics(&self) -> Option<String> {
        self.mesh_metrics.get().map(|f| f())
    }

    /// Attaches the bridge's link pause/resume (once).
    pub fn set_mesh_failover(&self, f: MeshFailoverFn) {
        let _ = self.mesh_failover.set(f);
    }

    /// Takes a subscription over from another cluster (`None`: no bridge runs).
    pub async fn mesh_failover(
        &self,
        req: meshd_core::api::FailoverRequest,
    ) -> Option<Result<meshd_core::api::FailoverResponse, meshd_core::api::FailoverError>> {
        let f = self.mesh_failover.get()?.clone();
        Some(f(req).await)
    }

    /// Stops delivering a subscription here (its definition and positions stay): another
    /// cluster delivers it. `false` when it was not delivering.
    pub async fn pause_delivery(&self, name: &str) -> bool {
        self.delivery.stop(name).await
    }

    /// Delivers a subscription again from its committed positions (where this node runs
    /// its group).
    pub async fn resume_delivery(&self, name: &str) -> Result<(), NodeError> {
        let sub = self.compiled_subscription(name)?;
        if self.should_run(&sub.spec) {
            self.delivery.start(sub).await?;
        }
        Ok(())
    }

    /// Attaches the bridge's link admin (pause/resume) for its endpoints.
    pub fn set_mesh_link_admin(&self, admin: MeshLinkAdminFn) {
        let _ = self.mesh_link_admin.set(admin);
    }

    /// Pauses or resumes replication to `peer`; `None` when no bridge is attached.
    pub fn mesh_link_admin(&self, peer: &str, pause: bool) -> Option<Result<bool, NoSuchLink>> {
        self.mesh_link_admin.get().map(|f| f(peer, pause))
    }

    /// Whether the node takes traffic (started, not stopping, not draining, lease held).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining() && !self.is_lease_lost()
    }

    /// Records whether the node's registry lease is lost (cluster membership calls this).
    pub fn set_lease_lost(&self, lost: bool) {
        self.lease_lost.store(lost, Ordering::SeqCst);
    }

    /// Records whether the node delivers past its lease deadline on its peers' promises
    /// (a whole-registry outage): it stays ready, `/readyz` names the degradation.
    pub fn set_serving_on_promises(&self, on: bool) {
        self.serving_on_promises.store(on, Ordering::SeqCst);
        self.metrics.registry_serving_on_promises.set(i64::from(on));
    }

    /// Whether the node delivers on its peers' promises (registry unreachable).
    pub fn is_serving_on_promises(&self) -> bool {
        self.serving_on_promises.load(Ordering::SeqCst)
    }

    /// Attaches the answerer of peers' promise requests (once).
    pub fn set_promise(&self, f: PromiseFn) {
        let _ = self.promise.set(f);
    }

    /// A peer's promise request; `None` when the node is no cluster member.
    pub fn promise(&self, from: &str) -> Option<meshd_core::api::PromiseAnswer> {
        self.promise.get().map(|f| f(from))
    }

    /// Whether the node's registry lease is lost: it cannot reach the registry, delivers
    /// nothing, and no proxy lists it.
    pub fn is_lease_lost(&self) -> bool {
        self.lease_lost.load(Ordering::SeqCst)
    }

    /// Whether a drain was asked for (draining or drained).
    pub fn is_draining(&self) -> bool {
        *self.drain.borrow() != DrainState::Serving
    }

    /// The drain state.
    pub fn drain_state(&self) -> DrainState {
        *self.drain.borrow()
    }

    /// Starts a drain (`true`: Serving → Draining) or ends one (`false`: → Serving).
    /// Answers the state after the call. Without a cluster member nothing hands groups
    /// over: the node just refuses publishes and stays `Draining`.
    pub fn set_draining(&self, on: bool) -> DrainState {
        self.drain.send_if_modified(|s| {
            let next = match (on, *s) {
                (true, DrainState::Serving) => DrainState::Draining,
                (true, other) => other,
                (false, _) => DrainState::Serving,
            };
            let changed = next != *s;
            *s = next;
            changed
        });
        self.drain_state()
    }

    /// Marks a drain finished (Draining → Drained); the cluster member calls it once the
    /// groups are handed over.
    pub fn mark_drained(&self) {
        self.drain.send_if_modified(|s| {
            let changed = *s == DrainState::Draining;
            if changed {
                *s = DrainState::Drained;
            }
            changed
        });
    }

    /// A watch of the drain state.
    pub fn drain_watch(&self) -> watch::Receiver<DrainState> {
        self.drain.subscribe()
    }

    /// Events stored here and not yet delivered (committed) by the CLUSTERING
    /// subscriptions whose delivery runs on this node now. BROADCASTING subscriptions are
    /// not counted (their members have separate cursors).
    pub async fn backlog(&self) -> Result<u64, NodeError> {
        let marks = self.backlog_marks().await?;
        self.backlog_before(&marks).await
    }

    /// Where the backlog ends now: per CLUSTERING subscription whose delivery runs on this
    /// node (name, topic) and partition, the store's end offset. A drain delivers up to
    /// these marks ([`Node::backlog_before`]), not what arrives afterwards (events a
    /// federation bridge keeps storing here would otherwise hold the drain for its whole
    /// timeout).
    pub async fn backlog_marks(&self) -> Result<BTreeMap<(String, String, u32), u64>, NodeError> {
        // Wait for the publishes that passed the drain check before the drain began: the
        // marks must cover every event this node acknowledged (with the embedded store
        // no other node has it); publishes after this see the drain and are refused.
        drop(self.publish_gate.write().await);
        let running: BTreeSet<String> = self.delivery.running().await.into_iter().collect();
        let subs: Vec<Arc<CompiledSubscription>> = self
            .read_subs()
            .values()
            .filter(|s| running.contains(&s.spec.name))
            .filter(|s| s.spec.mode == meshd_core::api::GroupMode::Clustering)
            .cloned()
            .collect();
        let mut marks = BTreeMap::new();
        for sub in subs {
            let Some(cfg) = self.store.topic(&sub.spec.topic).await? else {
                continue;
            };
            for p in 0..cfg.partitions {
                let b = self.store.bounds(&sub.spec.topic, p).await?;
                marks.insert((sub.spec.name.clone(), sub.spec.topic.clone(), p), b.end);
            }
        }
        Ok(marks)
    }

    /// A publish holds this from its drain check until it is answered (see
    /// [`Node::backlog_marks`]).
    pub async fn publish_permit(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.publish_gate.read().await
    }

    /// Events before `marks` ([`Node::backlog_marks`]) not committed yet; subscriptions
    /// deleted since count nothing.
    pub async fn backlog_before(
        &self,
        marks: &BTreeMap<(String, String, u32), u64>,
    ) -> Result<u64, NodeError> {
        let names: BTreeSet<String> = self.read_subs().keys().cloned().collect();
        let mut total = 0u64;
        for ((name, topic, p), end) in marks {
            if !names.contains(name) {
                continue;
            }
            let b = self.store.bounds(topic, *p).await?;
            let at = self
                .store
                .committed_offset(name, topic, *p)
                .await?
                .unwrap_or(b.start)
                .max(b.start);
            total = total.saturating_add(end.saturating_sub(at));
        }
        Ok(total)
    }

    /// A topic's configuration from the node's cache, else from the store: another node
    /// sharing the store (several `--store pulsar://...` nodes on one namespace) may
    /// have created it, and the cache then learns it.
    async fn topic_config(&self, topic: &str) -> Result<Option<TopicConfig>, NodeError> {
        let cached = self.read_topics().get(topic).cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let stored = self.store.topic(topic).await?;
        if let Some(c) = &stored {
            self.write_topics().insert(topic.to_string(), c.clone());
        }
        Ok(stored)
    }

    /// The schemas bound to a topic's event types when it validates on publish (`None`:
    /// nothing to check). Read from the cache [`Node::partitions_for_publish`] filled.
    pub fn validated_bindings(&self, topic: &str) -> Option<BTreeMap<String, String>> {
        self.read_topics()
            .get(topic)
            .filter(|c| c.validate && !c.schemas.is_empty())
            .map(|c| c.schemas.clone())
    }

    /// Whether a topic discovers schemas (from the cache [`Node::partitions_for_publish`]
    /// filled).
    pub fn discovers(&self, topic: &str) -> bool {
        self.read_topics().get(topic).is_some_and(|c| c.discover)
    }

    /// The partition count of a topic for a publish; creates it when auto-create is on.
    pub async fn partitions_for_publish(&self, topic: &str) -> Result<u32, NodeError> {
        if let Some(cfg) = self.topic_config(topic).await? {
            return Ok(cfg.partitions);
        }
        if self.config.auto_create_topics {
            self.create_topic(topic, TopicConfig::default()).await?;
            return Ok(1);
        }
        Err(NodeError::TopicNotFound {
            topic: topic.to_string(),
        })
    }

    /// Creates a topic; `true` when new, `false` when it existed identically.
    pub async fn create_topic(&self, topic: &str, config: TopicConfig) -> Result<bool, NodeError> {
        check_name("topic", topic)?;
        config.validate()?;
        let _guard = self.admin.lock().await;
        self.store_topic(topic, config).await
    }

    /// Creates a topic in the store and the cache; the caller holds the admin lock.
    async fn store_topic(&self, topic: &str, config: TopicConfig) -> Result<bool, NodeError> {
        let created = self.store.create_topic(topic, &config).await?;
        self.write_topics().insert(topic.to_string(), config);
        if created {
            tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, topic, "topic created");
        }
        Ok(created)
    }

    /// A topic with its partition offsets.
    pub async fn topic_info(&self, topic: &str) -> Result<TopicInfo, NodeError> {
        let config = self
            .topic_config(topic)
            .await?
            .ok_or_else(|| NodeError::TopicNotFound {
                topic: topic.to_string(),
            })?;
        let mut partitions = BTreeMap::new();
        for p in 0..config.partitions {
            let b = self.store.bounds(topic, p).await?;
            partitions.insert(
                p,
                PartitionOffsets {
                    start: b.start,
                    end: b.end,
                },
            );
        }
        Ok(TopicInfo {
            name: topic.to_string(),
            config,
            partitions,
        })
    }

    /// All topics.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, NodeError> {
        // The store's list: it includes topics other nodes on a shared store created.
        let stored = self.store.list_topics().await?;
        let names: Vec<String> = stored.iter().map(|(n, _)| n.clone()).collect();
        {
            let mut cache = self.write_topics();
            for (n, c) in stored {
                cache.insert(n, c);
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.topic_info(&n).await?);
        }
        Ok(out)
    }

    /// Deletes a topic that no subscription reads.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), NodeError> {
        let _guard = self.admin.lock().await;
        self.check_topic_deletable(topic).await?;
        self.store.delete_topic(topic).await?;
        self.write_topics().remove(topic);
        self.discovery.forget(topic);
        tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, topic, "topic deleted");
        Ok(())
    }

    async fn check_topic_deletable(&self, topic: &str) -> Result<(), NodeError> {
        // Ask the store too: on a shared store another node may have created it.
        if self.topic_config(topic).await?.is_none() {
            return Err(NodeError::TopicNotFound {
                topic: topic.to_string(),
            });
        }
        let users: Vec<String> = self
            .read_subs()
            .values()
            .filter(|s| {
                s.spec.topic == topic || s.spec.delivery.dead_letter_topic.as_deref() == Some(topic)
            })
            .map(|s| s.spec.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(NodeError::TopicInUse {
                topic: topic.to_string(),
                subscriptions: users,
            });
        }
        Ok(())
    }

    /// Creates a subscription (idempotent for an identical spec). Returns whether it was
    /// new and the stored spec with defaults filled in.
    pub async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<(bool, SubscriptionSpec), NodeError> {
        let sub = spec.compile()?;
        let name = sub.spec.name.clone();
        let _guard = self.admin.lock().await;
        if let Some(existing) = self.read_subs().get(&name) {
            return if existing.spec == sub.spec {
                Ok((false, existing.spec.clone()))
            } else {
                Err(NodeError::SubscriptionConflict { name })
            };
        }
        if self.topic_config(&sub.spec.topic).await?.is_none() {
            return Err(NodeError::TopicNotFound {
                topic: sub.spec.topic.clone(),
            });
        }
        self.check_webhook_targets(&sub.spec).await?;
        if let Some(dlt) = &sub.spec.delivery.dead_letter_topic {
            if self.topic_config(dlt).await?.is_none() {
                self.store_topic(dlt, TopicConfig::default()).await?;
            }
        }
        let bytes = serde_json::to_vec(&sub.spec).expect("a spec serializes");
        let created = self.record_subscription_created(&name).await?;
        self.store
            .put_meta(&format!("{SUBSCRIPTION_PREFIX}{name}"), &bytes)
            .await?;
        let sub = Arc::new(sub);
        let start = if self.should_run(&sub.spec) {
            self.delivery.start(sub.clone()).await
        } else {
            self.delivery.pin_start(&sub).await
        };
        if let Err(e) = start {
            let _ = self
                .store
                .delete_meta(&format!("{SUBSCRIPTION_PREFIX}{name}"))
                .await;
            let _ = self
                .store
                .delete_meta(&format!("{SUBSCRIPTION_CREATED_PREFIX}{name}"))
                .await;
            return Err(e.into());
        }
        self.created_map().insert(name.clone(), created);
        self.write_subs().insert(name.clone(), sub.clone());
        tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, subscription = %name, topic = %sub.spec.topic, "subscription created");
        Ok((true, sub.spec.clone()))
    }

    /// Refuses a webhook subscription whose targets the node's rules do not allow (each
    /// member URL, resolved now; the push checks again at every connection).
    async fn check_webhook_targets(&self, spec: &SubscriptionSpec) -> Result<(), NodeError> {
        if let meshd_core::api::Sink::Webhook(w) = &spec.sink {
            for url in w.members() {
                if let Err(e) = self.delivery.guard().check_url(&url).await {
                    self.metrics
                        .webhook_refused
                        .with_label_values(&[e.label()])
                        .inc();
                    tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, subscription = %spec.name, "webhook target refused: {e}");
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// The webhook target guard (its rules and the mesh components it knows).
    pub fn webhook_guard(&self) -> &Arc<crate::delivery::WebhookGuard> {
        self.delivery.guard()
    }

    /// Tells the webhook guard the mesh components at `urls` (absolute URLs or
    /// `host:port`), replacing what `source` said before.
    pub async fn set_mesh_components(&self, source: &str, urls: &[String]) {
        let guard = self.delivery.guard();
        let components = crate::delivery::guard::components_of(guard, urls).await;
        guard.set_components(source, components);
    }

    /// When a subscription was made (ms since the epoch): a `latest` subscription starts
    /// at the events stored since then, here and, through the federation, at their origin.
    pub fn subscription_created_ms(&self, name: &str) -> Option<u64> {
        self.created_map().get(name).copied()
    }

    fn created_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.subscriptions_created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records now as the time `name` was made (durably).
    async fn record_subscription_created(&self, name: &str) -> Result<u64, NodeError> {
        let at = crate::ingest::now_ms();
        self.store
            .put_meta(
                &format!("{SUBSCRIPTION_CREATED_PREFIX}{name}"),
                at.to_string().as_bytes(),
            )
            .await?;
        Ok(at)
    }

    /// All subscriptions' specs.
    pub fn list_subscriptions(&self) -> Vec<SubscriptionSpec> {
        self.read_subs().values().map(|s| s.spec.clone()).collect()
    }

    /// One subscription's spec.
    pub fn subscription(&self, name: &str) -> Result<SubscriptionSpec, NodeError> {
        self.compiled_subscription(name).map(|s| s.spec.clone())
    }

    /// One subscription, compiled.
    pub(crate) fn compiled_subscription(
        &self,
        name: &str,
    ) -> Result<Arc<CompiledSubscription>, NodeError> {
        self.read_subs()
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::SubscriptionNotFound {
                name: name.to_string(),
            })
    }

    /// Deletes a subscription and stops its delivery.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), NodeError> {
        let _guard = self.admin.lock().await;
        if !self.read_subs().contains_key(name) {
            return Err(NodeError::SubscriptionNotFound {
                name: name.to_string(),
            });
        }
        self.delivery.stop(name).await;
        self.store
            .delete_meta(&format!("{SUBSCRIPTION_PREFIX}{name}"))
            .await?;
        let _ = self
            .store
            .delete_meta(&format!("{SUBSCRIPTION_CREATED_PREFIX}{name}"))
            .await;
        self.created_map().remove(name);
        self.metrics.last_errors.forget(name);
        self.write_subs().remove(name);
        tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, subscription = %name, "subscription deleted");
        Ok(())
    }

    /// Attaches the cluster catalog (once): admin changes through the HTTP API are then
    /// written there after validation and before they are applied locally.
    pub fn set_catalog(&self, catalog: Arc<dyn CatalogSink>) {
        let _ = self.catalog.set(catalog);
    }

    fn catalog(&self) -> Option<&Arc<dyn CatalogSink>> {
        self.catalog.get()
    }

    /// The cluster catalog, when the node has one (schema changes are written there).
    pub fn catalog_sink(&self) -> Option<&Arc<dyn CatalogSink>> {
        self.catalog.get()
    }

    /// `PUT /v1/topics/{topic}`: validates, writes the catalog (if any), creates locally.
    pub async fn admin_create_topic(
        &self,
        topic: &str,
        config: TopicConfig,
    ) -> Result<bool, NodeError> {
        check_name("topic", topic)?;
        config.validate()?;
        if let Some(c) = self.catalog() {
            // The catalog watch may apply the topic before we do: "new" is decided now.
            let existed = self.read_topics().contains_key(topic);
            c.put_topic(topic, &config)
                .await
                .map_err(NodeError::CatalogUnavailable)?;
            let created = self.create_topic(topic, config).await?;
            return Ok(created || !existed);
        }
        self.create_topic(topic, config).await
    }

    /// `DELETE /v1/topics/{topic}`: checks, deletes from the catalog (if any), then locally.
    pub async fn admin_delete_topic(&self, topic: &str) -> Result<(), NodeError> {
        if let Some(c) = self.catalog() {
            self.check_topic_deletable(topic).await?;
            c.delete_topic(topic)
                .await
                .map_err(NodeError::CatalogUnavailable)?;
            // The catalog watch may have deleted it locally already.
            return match self.delete_topic(topic).await {
                Err(NodeError::TopicNotFound { .. }) => Ok(()),
                other => other,
            };
        }
        self.delete_topic(topic).await
    }

    /// `POST /v1/subscriptions`: validates (compiles, checks the topic and conflicts),
    /// writes the catalog (if any), creates locally.
    pub async fn admin_create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<(bool, SubscriptionSpec), NodeError> {
        // Where it starts is checked against the topic now (the catalog path writes the
        // spec before it is created here, so before that).
        if !matches!(spec.start, StartPosition::Latest | StartPosition::Earliest) {
            check_name("topic", &spec.topic)?;
            if self.topic_config(&spec.topic).await?.is_none() {
                return Err(NodeError::TopicNotFound {
                    topic: spec.topic.clone(),
                });
            }
            self.check_start(&spec.topic, &spec.start, "start").await?;
        }
        if let Some(c) = self.catalog() {
            let sub = spec.clone().compile()?;
            if let Some(existing) = self.read_subs().get(&sub.spec.name) {
                if existing.spec == sub.spec {
                    return Ok((false, existing.spec.clone()));
                }
                return Err(NodeError::SubscriptionConflict {
                    name: sub.spec.name.clone(),
                });
            }
            if !self.read_topics().contains_key(&sub.spec.topic) {
                return Err(NodeError::TopicNotFound {
                    topic: sub.spec.topic.clone(),
                });
            }
            if let Some(dlt) = &sub.spec.delivery.dead_letter_topic {
                if !self.read_topics().contains_key(dlt) {
                    let cfg = TopicConfig::default();
                    c.put_topic(dlt, &cfg)
                        .await
                        .map_err(NodeError::CatalogUnavailable)?;
                }
            }
            let existing = c
                .create_subscription(&sub.spec)
                .await
                .map_err(NodeError::CatalogUnavailable)?;
            return match existing {
                // Taken in the catalog (another node was first): same spec, apply it here
                // too; another spec is a conflict.
                Some(e) if e == sub.spec => {
                    self.apply_subscription(e.clone()).await?;
                    Ok((false, e))
                }
                Some(_) => Err(NodeError::SubscriptionConflict {
                    name: sub.spec.name.clone(),
                }),
                None => {
                    // The catalog watch may apply it before we do; it is new either way.
                    let (_, spec) = self.create_subscription(spec).await?;
                    Ok((true, spec))
                }
            };
        }
        self.create_subscription(spec).await
    }

    /// `DELETE /v1/subscriptions/{name}`: deletes from the catalog (if any), then locally.
    pub async fn admin_delete_subscription(&self, name: &str) -> Result<(), NodeError> {
        if let Some(c) = self.catalog() {
            if !self.read_subs().contains_key(name) {
                return Err(NodeError::SubscriptionNotFound {
                    name: name.to_string(),
                });
            }
            c.delete_subscription(name)
                .await
                .map_err(NodeError::CatalogUnavailable)?;
            // The catalog watch may have deleted it locally already.
            return match self.delete_subscription(name).await {
                Err(NodeError::SubscriptionNotFound { .. }) => Ok(()),
                other => other,
            };
        }
        self.delete_subscription(name).await
    }

    /// Applies a topic seen in the catalog (idempotent).
    pub async fn apply_topic(&self, topic: &str, config: TopicConfig) -> Result<(), NodeError> {
        if self.read_topics().get(topic) == Some(&config) {
            return Ok(());
        }
        self.create_topic(topic, config).await.map(|_| ())
    }

    /// Applies a subscription seen in the catalog (idempotent): creates it, or replaces
    /// a local one with another spec.
    pub async fn apply_subscription(&self, spec: SubscriptionSpec) -> Result<(), NodeError> {
        let sub = spec.clone().compile()?;
        let existing = self.read_subs().get(&sub.spec.name).map(|s| s.spec.clone());
        match existing {
            Some(e) if e == sub.spec => return Ok(()),
            Some(_) => self.delete_subscription(&sub.spec.name).await?,
            None => {}
        }
        self.create_subscription(spec).await.map(|_| ())
    }

    /// Whether placement lets this node deliver `spec`'s consumer group.
    fn should_run(&self, spec: &SubscriptionSpec) -> bool {
        match &*self.owned.read().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(owned) => owned.contains(&spec.group),
        }
    }

    /// Sets the consumer groups this node may deliver (`None`: all) and starts or stops
    /// delivery to match at once: push loops and pull serving of groups no longer owned
    /// stop (their progress is committed), newly owned ones start from the committed
    /// offsets in the store.
    pub async fn set_owned_groups(&self, owned: Option<BTreeSet<String>>) {
        let _guard = self.admin.lock().await;
        *self.owned.write().unwrap_or_else(|p| p.into_inner()) = owned;
        let running: BTreeSet<String> = self.delivery.running().await.into_iter().collect();
        let subs: Vec<Arc<CompiledSubscription>> = self.read_subs().values().cloned().collect();
        let mut stops = Vec::new();
        let mut starts = Vec::new();
        for sub in subs {
            let want = self.should_run(&sub.spec);
            let is = running.contains(&sub.spec.name);
            if is && !want {
                stops.push(sub.spec.name.clone());
            } else if want && !is {
                starts.push(sub);
            }
        }
        let stopping = stops.iter().map(|n| self.delivery.stop(n));
        futures::future::join_all(stopping).await;
        for n in &stops {
            tracing::info!(node = %self.config.node_id, subscription = %n, "delivery stopped: group not placed here");
        }
        for sub in starts {
            match self.delivery.start(sub.clone()).await {
                Ok(()) => {
                    tracing::info!(node = %self.config.node_id, subscription = %sub.spec.name, group = %sub.spec.group, "delivery started: group placed here")
                }
                Err(e) => {
                    tracing::warn!(subscription = %sub.spec.name, "starting delivery failed: {e}")
                }
            }
        }
    }

    /// Fails with [`NodeError::NotPlacedHere`] when `name` exists but its group is placed
    /// elsewhere (pull and ack then go to the owning node).
    pub fn check_served(&self, name: &str) -> Result<(), NodeError> {
        if let Some(sub) = self.read_subs().get(name) {
            if !self.should_run(&sub.spec) {
                return Err(NodeError::NotPlacedHere {
                    name: name.to_string(),
                    group: sub.spec.group.clone(),
                });
            }
        }
        Ok(())
    }

    /// The consumer groups of this node's subscriptions.
    pub fn consumer_groups(&self) -> BTreeSet<String> {
        self.read_subs()
            .values()
            .map(|s| s.spec.group.clone())
            .collect()
    }

    /// Records a publish for producer group `group` (the proxy's `meshd-producer-group`
    /// header) and counts published events.
    pub fn note_publish(&self, group: Option<&str>, events: u64) {
        self.published.fetch_add(events, Ordering::Relaxed);
        if let Some(g) = group {
            self.note_producer_group(g);
        }
    }

    /// Records that a producer group published here now.
    pub fn note_producer_group(&self, group: &str) {
        let mut groups = self
            .producer_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if groups.len() >= MAX_PRODUCER_GROUPS && !groups.contains_key(group) {
            if let Some(oldest) = groups
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                groups.remove(&oldest);
            }
        }
        groups.insert(group.to_string(), std::time::Instant::now());
    }

    /// Producer groups that published here within `idle`; older ones are forgotten.
    pub fn producer_groups(&self, idle: Duration) -> BTreeSet<String> {
        let mut groups = self
            .producer_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        groups.retain(|_, t| t.elapsed() <= idle);
        groups.keys().cloned().collect()
    }

    /// Events accepted by the publish API since start.
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Subscriptions whose delivery runs on this node now.
    pub async fn serving_count(&self) -> usize {
        self.delivery.running().await.len()
    }

    /// The node's status as `GET /v1/cluster` shows it.
    pub fn status(&self) -> meshd_core::api::ClusterStatus {
        meshd_core::api::ClusterStatus {
            cluster: self.config.cluster.clone(),
            node: self.config.node_id.clone(),
            ready: self.is_ready(),
            drain: self.drain_state(),
            topics: self.read_topics().len(),
            subscriptions: self.read_subs().len(),
            fsync: self.config.fsync,
            retention_holds: self.retention_hold_groups(),
            owned_groups: self.owned.read().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Holds age retention for consumer group `group` (replacing an earlier hold of the
    /// same group): on every topic `scope` says is [`HoldScope::Wanted`] or
    /// [`HoldScope::Unknown`], retention by age keeps the records from the group's
    /// committed offset on (see [`Node::retention_holds_now`]). The federation bridge holds
    /// `__bridge/{peer}` for every link of the topology and releases it when the link is
    /// removed; `scope` must not call back into the node.
    pub fn hold_retention(&self, group: &str, scope: HoldScopeFn) {
        let mut holds = self.hold_table();
        if holds.insert(group.to_string(), scope).is_none() {
            tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, group, "retention hold added");
        }
    }

    /// Releases the retention hold of `group`; `false` when there was none.
    pub fn release_retention(&self, group: &str) -> bool {
        let released = self.hold_table().remove(group).is_some();
        if released {
            tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, group, "retention hold released");
        }
        released
    }

    /// The consumer groups holding retention now, sorted.
    pub fn retention_hold_groups(&self) -> Vec<String> {
        self.hold_table().keys().cloned().collect()
    }

    /// The holds the next retention pass applies: for every topic with a retention and
    /// every hold group whose scope is not [`HoldScope::NotWanted`], per partition the
    /// group's committed offset, or (scope [`HoldScope::Wanted`], nothing committed) the
    /// partition start — a link cursor that committed nothing means "nothing sent yet".
    /// The lowest hold of a partition wins.
    pub async fn retention_holds_now(&self) -> Result<RetentionHolds, NodeError> {
        let max_hold_ms = self
            .config
            .retention_hold_max
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut holds = RetentionHolds::new(max_hold_ms);
        let holders: Vec<(String, HoldScopeFn)> = self
            .hold_table()
            .iter()
            .map(|(g, f)| (g.clone(), f.clone()))
            .collect();
        if holders.is_empty() {
            return Ok(holds);
        }
        for (topic, cfg) in self.store.list_topics().await? {
            let r = &cfg.retention;
            if r.max_age_secs.is_none() && r.max_bytes.is_none() {
                continue;
            }
            for (group, scope) in &holders {
                let scope = scope(&topic);
                if scope == HoldScope::NotWanted {
                    continue;
                }
                for p in 0..cfg.partitions {
                    match self.store.committed_offset(group, &topic, p).await {
                        Ok(Some(o)) => holds.hold(&topic, p, o),
                        Ok(None) if scope == HoldScope::Wanted => holds.hold(&topic, p, 0),
                        Ok(None) => {}
                        // Deleted since it was listed: nothing to hold.
                        Err(StoreError::TopicNotFound { .. })
                        | Err(StoreError::PartitionNotFound { .. }) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(holds)
    }

    /// Runs retention now, under the retention holds.
    pub async fn run_retention(&self) -> Result<(), NodeError> {
        let holds = self.retention_holds_now().await?;
        let report = self.store.enforce_retention_held(now_ms(), &holds).await?;
        self.metrics.retention_removed.inc_by(report.records);
        self.metrics
            .retention_held_dropped
            .inc_by(report.held_dropped);
        self.metrics
            .retention_held_partitions
            .set(i64::try_from(report.held_partitions).unwrap_or(i64::MAX));
        if report.held_dropped > 0 {
            tracing::warn!(
                cluster = %self.config.cluster,
                node = %self.config.node_id,
                records = report.held_dropped,
                "retention removed records a federation link had not replicated yet (size limit or longest hold passed): they will never reach that peer"
            );
        }
        if report.records > 0 {
            tracing::info!(
                records = report.records,
                bytes = report.bytes,
                "retention removed records"
            );
        }
        if report.held_partitions > 0 {
            tracing::debug!(
                partitions = report.held_partitions,
                "retention held back by federation link cursors"
            );
        }
        Ok(())
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then stops cleanly: stop
    /// accepting, finish in-flight requests, commit delivery progress, close the store.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let retention = {
            let node = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(node.config.retention_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = node.run_retention().await {
                        tracing::warn!("retention failed: {e}");
                    }
                }
            })
        };
        if let Ok(addr) = listener.local_addr() {
            // This node is a component the webhooks must not reach.
            let guard = self.delivery.guard();
            let mut c = meshd_core::egress::Components::default();
            c.add_addr(addr, guard.is_local(addr.ip()));
            guard.set_components("self", c);
        }
        let app = crate::http::router(self.clone());
        meshd_listener::serve(
            listener,
            &self.config.listener,
            self.metrics.connections.clone(),
            move |_peer| hyper_util::service::TowerToHyperService::new(app.clone()),
            shutdown,
            SHUTDOWN_GRACE,
        )
        .await;
        retention.abort();
        self.shutdown().await;
        Ok(())
    }

    /// Stops delivery and closes the store.
    pub async fn shutdown(&self) {
        if !self.ready.swap(false, Ordering::SeqCst) {
            return;
        }
        self.delivery.shutdown().await;
        self.save_replays().await;
        if let Err(e) = self.store.close().await {
            tracing::warn!("closing the store: {e}");
        }
        tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, "node stopped");
    }
}

#[cfg(test)]
mod store_kind_tests {
    use super::StoreKind;

    #[test]
    fn parses_embedded_and_pulsar_urls() {
        assert_eq!("embedded".parse::<StoreKind>(), Ok(StoreKind::Embedded));
        match "pulsar://127.0.0.1:6650".parse::<StoreKind>() {
            Ok(StoreKind::Pulsar(c)) => {
                assert_eq!(c.url, "pulsar://127.0.0.1:6650");
                assert_eq!(
                    (c.tenant.as_str(), c.namespace.as_str()),
                    ("public", "default")
                );
            }
            other => panic!("{other:?}"),
        }
        for bad in ["", "pulsar://", "kafka://x:1", "pulsar://h:1/x", "Embedded"] {
            assert!(bad.parse::<StoreKind>().is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod retention_hold_tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use meshd_core::api::{Retention, TopicConfig};

    use super::{HoldScope, Node, NodeConfig};
    use crate::ingest::now_ms;
    use crate::store::{AppendRecord, EventStore};

    fn aged(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            retention: Retention {
                max_age_secs: Some(1),
                max_bytes: None,
            },
            ..TopicConfig::default()
        }
    }

    /// Appends `n` records stamped `timestamp_ms`.
    async fn fill(store: &Arc<dyn EventStore>, topic: &str, partition: u32, n: u64, ts: u64) {
        let records = (0..n)
            .map(|_| AppendRecord {
                partition,
                timestamp_ms: ts,
                payload: Bytes::from_static(b"x"),
            })
            .collect();
        store.append(topic, records).await.unwrap();
    }

    /// Which partitions a hold covers: `Wanted` holds from the committed offset or from
    /// the start, `Unknown` only from a committed offset, `NotWanted` never; the lowest
    /// hold wins; a released hold holds nothing; every record is far past its age.
    #[tokio::test]
    async fn holds_follow_scope_and_committed_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(NodeConfig::new(dir.path())).await.unwrap();
        for t in ["wanted", "unknown", "unwanted", "forever"] {
            let cfg = if t == "forever" {
                TopicConfig {
                    partitions: 2,
                    ..TopicConfig::default()
                }
            } else {
                aged(2)
            };
            node.create_topic(t, cfg).await.unwrap();
            for p in 0..2 {
                // 10 s old: past the 1 s age, well within the longest hold.
                fill(&node.store, t, p, 5, now_ms() - 10_000).await;
            }
        }
        let s = &node.store;
        s.commit_offset("__bridge/x", "wanted", 0, 3).await.unwrap();
        s.commit_offset("__bridge/y", "wanted", 0, 2).await.unwrap();
        s.commit_offset("__bridge/x", "unknown", 1, 4)
            .await
            .unwrap();
        s.commit_offset("__bridge/x", "unwanted", 0, 1)
            .await
            .unwrap();
        let scope = |t: &str| match t {
            "wanted" => HoldScope::Wanted,
            "unknown" => HoldScope::Unknown,
            _ => HoldScope::NotWanted,
        };
        node.hold_retention("__bridge/x", Arc::new(scope));
        node.hold_retention("__bridge/y", Arc::new(|_: &str| HoldScope::Unknown));
        assert_eq!(
            node.retention_hold_groups(),
            vec!["__bridge/x".to_string(), "__bridge/y".to_string()]
        );
        let holds = node.retention_holds_now().await.unwrap();
        assert_eq!(holds.held_from("wanted", 0), Some(2), "lowest hold wins");
        assert_eq!(holds.held_from("wanted", 1), Some(0), "nothing sent: start");
        assert_eq!(holds.held_from("unknown", 0), None);
        assert_eq!(holds.held_from("unknown", 1), Some(4));
        assert_eq!(holds.held_from("unwanted", 0), None);
        assert_eq!(holds.held_from("forever", 0), None, "no retention, no hold");

        node.run_retention().await.unwrap();
        let start = |t: &'static str, p: u32| {
            let s = node.store.clone();
            async move { s.bounds(t, p).await.unwrap().start }
        };
        assert_eq!(start("wanted", 0).await, 2);
        assert_eq!(start("wanted", 1).await, 0);
        assert_eq!(start("unknown", 0).await, 5);
        assert_eq!(start("unknown", 1).await, 4);
        assert_eq!(start("unwanted", 0).await, 5);
        assert_eq!(node.metrics.retention_held_partitions.get(), 3);
        assert_eq!(node.metrics.retention_held_dropped.get(), 0);

        assert!(node.release_retention("__bridge/x"));
        assert!(!node.release_retention("__bridge/x"));
        node.run_retention().await.unwrap();
        assert_eq!(start("wanted", 0).await, 2, "y still holds it");
        assert_eq!(start("wanted", 1).await, 5);
        assert_eq!(start("unknown", 1).await, 5);
        assert!(node.release_retention("__bridge/y"));
        node.run_retention().await.unwrap();
        assert_eq!(start("wanted", 0).await, 5);
        assert_eq!(node.metrics.retention_held_partitions.get(), 0);
        // Every record of the six aged partitions, none of "forever".
        assert_eq!(node.metrics.retention_removed.get(), 30);
        node.shutdown().await;
    }

    /// A held record older than max_age + the longest hold goes anyway, counted.
    #[tokio::test]
    async fn the_longest_hold_bounds_a_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::new(dir.path());
        cfg.retention_hold_max = Some(std::time::Duration::from_secs(3600));
        let node = Node::open(cfg).await.unwrap();
        node.create_topic("t", aged(1)).await.unwrap();
        fill(&node.store, "t", 0, 3, 1).await; // stamped 1 ms after the epoch
        node.hold_retention("__bridge/x", Arc::new(|_: &str| HoldScope::Wanted));
        node.run_retention().await.unwrap();
        assert_eq!(node.store.bounds("t", 0).await.unwrap().start, 3);
        assert_eq!(node.metrics.retention_held_dropped.get(), 3);
        node.shutdown().await;
    }
}
