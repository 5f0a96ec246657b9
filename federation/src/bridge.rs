//! The bridge: the tokio shell around the sans-IO link pieces. Owns the QUIC endpoint
//! (one per cluster, both accepting and dialling), one task per topology link (dial or
//! wait, handshake, replicate, reconnect with exponential backoff), the topology reload
//! loop and the status shown at `GET /v1/mesh`.
//!
//! A session on a link runs one bidirectional stream carrying length-prefixed frames in
//! both directions. Its protocol is a [`LinkSession`] (sans-IO, see [`crate::session`]);
//! this file is its shell: a reader task turns bytes into frames, the session task feeds
//! them to the machine, reads the node's store where the machine says and performs the
//! machine's [`Action`]s; beside it a storer (two stages: check and stamp, then append) stores the peer's
//! batches and hands back cumulative acks, and a committer writes the link cursor from
//! the peer's acks, so neither a store append nor a cursor commit holds up the pump.
//! Events are routed on their stored bytes ([`RawEvent`]), never re-serialized.
//!
//! Must not touch: delivery to subscribers (the node's), the store's internals (only the
//! `EventStore` trait), topology parsing (meshd-topology).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meshd_certs::{AllowedClusters, CertPaths, ReloadingCerts};
use meshd_core::api::{self, StartPosition, TopicConfig};
use meshd_core::codec::RawEvent;
use meshd_core::wire::{
    check_frame_len, decode_frame, encode_frame, Batch, Frame, Hello, InterestEntry, WireError,
    PROTOCOL_VERSION,
};
use meshd_node::ingest::{now_ms, partition_for_key};
use meshd_node::server::{HoldScope, HoldScopeFn, Node, NodeError};
use meshd_node::store::{AppendRecord, EventStore};
use meshd_topology::Topology;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::mpsc;

use crate::catalog::{Action as CatalogAction, Catalog};
use crate::cursor::cursor_group;
use crate::intake::{Admit, Pending, Received, Round};
use crate::interest::{announcement, LocalInterest};
use crate::link::{DedupKey, DedupWindow, ORIGIN_EXT};
use crate::marks::{self, Marks, OriginPos, Start};
use crate::progress::PROGRESS_EVERY;
use crate::replicas::{auto_failover, Auto, Delivery, Event as ReplicaEvent, Replicas, StartScan};
pub use crate::routing::relay_topic;
use crate::routing::{Routes, RELAY_PREFIX};
use crate::schema_catalog::{Action as SchemaAction, SchemaCatalog};
use crate::session::{Action, LinkSession, Now, Outgoing, ReadAt, SessionConfig, SessionEnd};
use crate::stats::{LagMeter, LinkState, LinkStats, PartitionLag};
use crate::trace::{relay_timeout, MAX_HOPS};
use meshd_core::event::POS_EXT;
use meshd_core::wire::{TraceClusterReply, TraceQuery, TraceReply};
use meshd_node::trace::Step;

/// Settings of a bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// This cluster.
    pub cluster: String,
    /// The topology file (watched for changes).
    pub topology_path: PathBuf,
    /// Directory with `ca.pem`, `CLUSTER.pem`, `CLUSTER.key`.
    pub certs_dir: PathBuf,
    /// UDP address to bind; default: this cluster's `bridge` address in the topology.
    pub listen: Option<SocketAddr>,
    /// How often the topology file and certificates are checked for changes.
    pub reload_interval: Duration,
    /// Most events per batch.
    pub batch_max: usize,
    /// Most unacknowledged batches per link.
    pub window: usize,
    /// A link behind and not advancing for this long is reported stalled.
    pub stall_after: Duration,
    /// At most one progress frame (cursor moves over records the peer does not want)
    /// per this interval.
    pub progress_every: Duration,
    /// Received (source, id) pairs remembered for duplicate suppression.
    pub dedup_window: usize,
    /// How long a link removed from the topology may take to finish its batches in flight
    /// before it is closed anyway.
    pub drain_timeout: Duration,
    /// Automatic failover of subscriptions with standby clusters: a standby takes one over
    /// when its active cluster has been unreachable this long (`None`: only by operator).
    pub failover_after: Option<Duration>,
}

impl BridgeConfig {
    /// Defaults for `cluster`.
    pub fn new(cluster: &str, topology_path: PathBuf, certs_dir: PathBuf) -> BridgeConfig {
        BridgeConfig {
            cluster: cluster.to_string(),
            topology_path,
            certs_dir,
            listen: None,
            reload_interval: Duration::from_secs(1),
            batch_max: 1024,
            window: 32,
            stall_after: Duration::from_secs(5),
            progress_every: PROGRESS_EVERY,
            dedup_window: 100_000,
            drain_timeout: Duration::from_secs(10),
            failover_after: None,
        }
    }
}

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The topology file is missing or invalid.
    #[error(transparent)]
    Topology(#[from] meshd_topology::LoadError),
    /// This cluster is not in the topology.
    #[error("cluster {cluster:?} is not in the topology; add it or fix --cluster")]
    NotInTopology {
        /// The cluster.
        cluster: String,
    },
    /// The cluster certificate names another cluster than the one the node runs as.
    #[error("the certificate {file} is for cluster {found:?}, but this node runs as cluster {expected:?}: use {expected}'s certificate (meshd certs issue --cluster {expected}) or start the node with --cluster {found}")]
    WrongCluster {
        /// The cluster the node runs as.
        expected: String,
        /// The cluster the certificate names.
        found: String,
        /// The certificate file.
        file: String,
    },
    /// Certificates could not be loaded.
    #[error(transparent)]
    Certs(#[from] meshd_certs::CertError),
    /// The bridge address does not resolve.
    #[error("bridge address {addr} does not resolve: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The UDP socket could not be bound.
    #[error("binding the bridge on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Why dialling a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The peer is not in the topology (any more).
    #[error("cluster {peer:?} is not in the topology")]
    NotInTopology {
        /// The peer.
        peer: String,
    },
    /// The peer's bridge address does not resolve.
    #[error("resolving {addr}: {source}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The peer's bridge address resolves to no address.
    #[error("{addr} resolves to nothing")]
    NoAddress {
        /// The address.
        addr: String,
    },
    /// The TLS client configuration could not be made.
    #[error(transparent)]
    Certs(#[from] meshd_certs::CertError),
    /// The TLS configuration has no cipher suite QUIC can use.
    #[error("TLS configuration for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The connection could not be started.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The connection failed.
    #[error("connecting to {addr}: {source}")]
    Connection {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectionError,
    },
    /// The peer did not answer in time.
    #[error("connecting to {addr}: timed out")]
    TimedOut {
        /// The peer's address.
        addr: SocketAddr,
    },
}

/// Why a link session ended: the protocol's reasons ([`SessionEnd`]) and the shell's
/// (the stream, the store, the storer). Its text is the link's `last_error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The protocol ended the session.
    #[error(transparent)]
    Session(#[from] SessionEnd),
    /// The dialer could not open the stream.
    #[error("opening the stream: {0}")]
    OpenStream(quinn::ConnectionError),
    /// The acceptor got no stream.
    #[error("accepting the stream: {0}")]
    AcceptStream(quinn::ConnectionError),
    /// Reading a frame failed (the connection is gone); the text carries quinn's cause.
    #[error("reading a frame: {}", api::error_chain(.0))]
    Read(quinn::ReadExactError),
    /// Writing a frame failed.
    #[error("writing a frame: {}", api::error_chain(.0))]
    Write(quinn::WriteError),
    /// A frame could not be encoded, or a received one decoded.
    #[error(transparent)]
    Frame(#[from] WireError),
    /// Reading the store for the peer failed.
    #[error(transparent)]
    Store(#[from] meshd_node::store::StoreError),
    /// Storing the peer's events failed.
    #[error(transparent)]
    Storing(#[from] StoreRoundError),
    /// The frame reader ended.
    #[error("reader stopped")]
    ReaderStopped,
    /// The storer ended.
    #[error("the storer stopped")]
    StorerStopped,
    /// The link was removed while a new connection was awaited.
    #[error("link removed")]
    Removed,
}

impl LinkError {
    /// Whether the session ended because its link was removed from the topology.
    pub fn is_removal(&self) -> bool {
        matches!(self, LinkError::Session(e) if e.is_removal())
    }
}

/// Why storing events received from a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreRoundError {
    /// The peer sent bytes that are not an event.
    #[error("peer sent an undecodable event at offset {offset}: {source}")]
    Undecodable {
        /// Its offset at the peer.
        offset: u64,
        /// Why.
        source: meshd_core::codec::RawEventError,
    },
    /// The topic for the replicated events could not be made.
    #[error("creating topic {topic:?} for replicated events: {source}")]
    CreateTopic {
        /// The store topic.
        topic: String,
        /// Why.
        source: NodeError,
    },
    /// The topic could not be looked up.
    #[error("topic {topic:?}: {source}")]
    Topic {
        /// The store topic.
        topic: String,
        /// Why.
        source: NodeError,
    },
    /// The append failed.
    #[error("appending replicated events: {0}")]
    Append(meshd_node::store::StoreError),
    /// The storer's second stage ended.
    #[error("the storer stopped")]
    Stopped,
}

struct LinkHandle {
    stats: Arc<LinkStats>,
    incoming: mpsc::Sender<quinn::Connection>,
    drain: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    config: BridgeConfig,
    node: Arc<Node>,
    topology: RwLock<Arc<Topology>>,
    certs: Arc<ReloadingCerts>,
    allowed: Arc<AllowedClusters>,
    endpoint: quinn::Endpoint,
    links: Mutex<BTreeMap<String, LinkHandle>>,
    /// Links removed from the topology that are still finishing their batches in flight.
    draining: Mutex<Vec<Arc<LinkStats>>>,
    learned: Mutex<BTreeMap<String, Vec<InterestEntry>>>,
    down: Mutex<HashSet<String>>,
    dedup: Mutex<DedupWindow>,
    /// Woken whenever reserved duplicate-window keys are stored or released.
    dedup_resolved: tokio::sync::Notify,
    /// Peers this bridge sends no batches to (admin pause, for drills).
    paused: Mutex<HashSet<String>>,
    /// Wall clock (ms) and monotonic clock when the bridge started (see `clock_stepped`).
    started: (u64, Instant),
    /// Set by [`Bridge::shutdown`]: links ending now end because of it, not a fault.
    stopping: std::sync::atomic::AtomicBool,
    /// What this cluster stored of each origin partition (see [`crate::marks`]);
    /// persisted by [`persist_loop`].
    marks: Mutex<Marks>,
    /// The mesh's topic catalog as this cluster knows it (see [`crate::catalog`]).
    catalog: Mutex<Catalog>,
    /// The local topics as the catalog task last listed them.
    local_topics: Mutex<BTreeMap<String, TopicConfig>>,
    /// The mesh's schema catalog (see [`crate::schema_catalog`]); kept in step with the
    /// node's schema registry by the catalog task.
    schemas: Mutex<SchemaCatalog>,
    /// Catalog actions from sessions (merges of what peers sent), for the catalog task.
    catalog_actions: mpsc::UnboundedSender<CatalogAction>,
    /// Subscription replicas known here (see [`crate::replicas`]).
    replicas: Mutex<Replicas>,
    /// Replica changes from sessions, for the replica task: (fencing events, keys to persist).
    replica_events: mpsc::UnboundedSender<ReplicaChange>,
    /// Serializes takeovers with the replica task's work on local subscriptions.
    replica_gate: tokio::sync::Mutex<()>,
    /// The links' durable cursors as this bridge committed or read them (`None`: read,
    /// none exists), by (cursor group, topic, partition): the lag meters read them here
    /// instead of the store. Only this bridge writes the `__bridge/*` groups.
    committed: Mutex<HashMap<(String, String, u32), Option<u64>>>,
    /// Control frames to each connected peer's session (trace questions and answers),
    /// with the session's id.
    control: Mutex<HashMap<String, (u64, mpsc::Sender<Frame>)>>,
    /// Trace questions sent and not answered yet, by request id.
    trace_pending: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<TraceReply>>>,
    /// The next request or session id.
    next_id: std::sync::atomic::AtomicU64,
}

/// What a merge of a peer's replicas asks of the replica task: fencing events and the
/// (home, name) keys to persist.
type ReplicaChange = (Vec<ReplicaEvent>, Vec<(String, String)>);

/// The QUIC close of a bridge that stops cleanly: code 0 and this reason. The peer sees
/// it instead of a broken stream, and reports a peer that went away on purpose as such.
const STOPPING_REASON: &[u8] = b"bridge stopping";

/// Whether `conn` was closed by its peer's clean shutdown.
fn closed_by_stopping_peer(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(0) && c.reason.as_ref() == STOPPING_REASON
    )
}

/// A running bridge.
pub struct Bridge {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _cert_watcher: meshd_certs::Watcher,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bridge's UDP socket, with large kernel buffers (asked for 8 MiB each way; the
/// kernel caps them at `net.core.rmem_max`/`wmem_max`, raise those on busy links): a
/// window of batches arriving at once must not overflow the socket (the drops would read
/// as congestion and slow the link down).
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        // As quinn does: accept IPv4-mapped peers on a v6 socket where possible.
        let _ = s.set_only_v6(false);
    }
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Room for a window of full batches in flight on a long link (the defaults assume
    // ~100 ms at ~100 Mbit/s).
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        4_000,
    ))));
    Arc::new(t)
}

impl Bridge {
    /// Loads the topology and certificates, binds the endpoint and starts the links.
    pub async fn start(config: BridgeConfig, node: Arc<Node>) -> Result<Bridge, BridgeError> {
        let path = config.topology_path.clone();
        let topology = tokio::task::spawn_blocking(move || Topology::load(path))
            .await
            .map_err(|e| BridgeError::Tls(format!("topology load task: {e}")))??;
        let Some(me) = topology.cluster(&config.cluster) else {
            return Err(BridgeError::NotInTopology {
                cluster: config.cluster.clone(),
            });
        };
        let addr = match config.listen {
            Some(a) => a,
            None => {
                let text = me.bridge.to_string();
                let found = tokio::net::lookup_host(text.as_str())
                    .await
                    .map_err(|e| BridgeError::Resolve {
                        addr: text.clone(),
                        reason: e.to_string(),
                    })?
                    .next();
                found.ok_or_else(|| BridgeError::Resolve {
                    addr: text.clone(),
                    reason: "no address".into(),
                })?
            }
        };
        let paths = CertPaths::in_dir(&config.certs_dir, &config.cluster);
        let cert_file = paths.cert.display().to_string();
        let certs = ReloadingCerts::open(paths)?;
        if certs.cluster() != config.cluster {
            return Err(BridgeError::WrongCluster {
                expected: config.cluster.clone(),
                found: certs.cluster(),
                file: cert_file,
            });
        }
        let allowed = AllowedClusters::new(topology.clusters().map(|c| c.name.to_string()));
        let tls = meshd_certs::server_config(certs.clone(), allowed.clone())?;
        let quic = QuicServerConfig::try_from(Arc::new(tls))
            .map_err(|e| BridgeError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport());
        let socket = bind_udp(addr).map_err(|source| BridgeError::Bind { addr, source })?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| BridgeError::Bind { addr, source })?;
        let cert_watcher = certs.watch(config.reload_interval);
        let dedup = restore_dedup(&node, &config.cluster, config.dedup_window).await;
        let marks = restore_marks(&node, &config.cluster).await;
        let catalog = restore_catalog(&node, &config.cluster).await;
        let schemas = restore_schemas(&node, &config.cluster).await;
        let (catalog_actions, catalog_rx) = mpsc::unbounded_channel();
        let replicas = restore_replicas(&node, &config.cluster).await;
        let (replica_events, replica_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            marks: Mutex::new(marks),
            catalog: Mutex::new(catalog),
            local_topics: Mutex::new(BTreeMap::new()),
            schemas: Mutex::new(schemas),
            catalog_actions,
            replicas: Mutex::new(replicas),
            replica_events,
            replica_gate: tokio::sync::Mutex::new(()),
            dedup: Mutex::new(dedup),
            dedup_resolved: tokio::sync::Notify::new(),
            draining: Mutex::new(Vec::new()),
            config,
            node,
            topology: RwLock::new(Arc::new(topology)),
            certs,
            allowed,
            endpoint,
            links: Mutex::new(BTreeMap::new()),
            learned: Mutex::new(BTreeMap::new()),
            down: Mutex::new(HashSet::new()),
            paused: Mutex::new(HashSet::new()),
            started: (now_ms(), Instant::now()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            committed: Mutex::new(HashMap::new()),
            control: Mutex::new(HashMap::new()),
            trace_pending: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        });
        shared.reconcile_links();
        let tasks = vec![
            tokio::spawn(accept_loop(shared.clone())),
            tokio::spawn(reload_loop(shared.clone())),
            tokio::spawn(persist_loop(shared.clone())),
            tokio::spawn(catalog_loop(shared.clone(), catalog_rx)),
            tokio::spawn(replica_loop(shared.clone(), replica_rx)),
        ];
        tracing::info!(
            cluster = %shared.config.cluster,
            addr = %shared.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "federation bridge listening"
        );
        Ok(Bridge {
            shared,
            tasks,
            _cert_watcher: cert_watcher,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addr().ok()
    }

    /// Re-reads the topology file now (what SIGHUP does).
    pub async fn reload(&self) {
        self.shared.clone().reload(true).await;
    }

    /// The mesh as `GET /v1/mesh` shows it.
    pub fn status(&self) -> meshd_core::api::MeshStatus {
        self.shared.status()
    }

    /// A closure returning [`Bridge::status`], for the node's `/v1/mesh`.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> meshd_core::api::MeshStatus + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || shared.status())
    }

    /// A closure rendering the link metrics as Prometheus text, for the node's `/metrics`.
    pub fn metrics_fn(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || {
            let mut links: Vec<Arc<LinkStats>> = lock(&shared.links)
                .values()
                .map(|l| l.stats.clone())
                .collect();
            links.extend(lock(&shared.draining).iter().cloned());
            let mut text = crate::stats::render_prometheus(&links);
            let (topics, conflicts, orphans) = {
                let c = lock(&shared.catalog);
                (c.live_topics(), c.conflicts().len(), c.orphans().len())
            };
            let schemas = lock(&shared.schemas).live();
            text.push_str(&format!(
                "# HELP meshd_federation_catalog_topics Topics with a live life in the mesh catalog.\n\
                 # TYPE meshd_federation_catalog_topics gauge\n\
                 meshd_federation_catalog_topics {topics}\n\
                 # HELP meshd_federation_catalog_conflicts Topics made concurrently elsewhere or whose local copy differs from the owner's configuration.\n\
                 # TYPE meshd_federation_catalog_conflicts gauge\n\
                 meshd_federation_catalog_conflicts {conflicts}\n\
                 # HELP meshd_federation_catalog_orphans Local copies of deleted topics kept while subscriptions read them.\n\
                 # TYPE meshd_federation_catalog_orphans gauge\n\
                 meshd_federation_catalog_orphans {orphans}\n\
                 # HELP meshd_federation_catalog_schemas Schemas live (not deleted) in the mesh's schema catalog.\n\
                 # TYPE meshd_federation_catalog_schemas gauge\n\
                 meshd_federation_catalog_schemas {schemas}\n"
            ));
            text
        })
    }

    /// Stops (`pause`) or restarts sending replication batches to `peer`; the link stays
    /// connected and acknowledgements still flow, so nothing is lost, only delayed.
    /// Answers whether the state changed; `Err` when the topology has no link to `peer`.
    pub fn set_link_paused(
        &self,
        peer: &str,
        pause: bool,
    ) -> Result<bool, meshd_node::server::NoSuchLink> {
        self.shared.set_paused(peer, pause)
    }

    /// A closure taking a subscription over from another cluster, for the node's
    /// `POST /v1/mesh/failover`.
    pub fn failover_fn(&self) -> meshd_node::server::MeshFailoverFn {
        let shared = self.shared.clone();
        Arc::new(move |req| {
            let shared = shared.clone();
            Box::pin(async move { takeover(&shared, req).await })
        })
    }

    /// A closure asking the other clusters of the mesh for an event's trace, for the
    /// node's `GET /v1/trace`.
    pub fn trace_fn(&self) -> meshd_node::server::MeshTraceFn {
        let shared = self.shared.clone();
        Arc::new(move |source, id, timeout| {
            let shared = shared.clone();
            Box::pin(async move {
                let replies = ask_mesh(&shared, &source, &id, &[], MAX_HOPS, timeout).await;
                let clusters: Vec<String> = shared
                    .topology()
                    .clusters()
                    .map(|c| c.name.to_string())
                    .collect();
                crate::trace::complete(shared.me(), &clusters, replies, timeout)
            })
        })
    }

    /// A closure calling [`Bridge::set_link_paused`], for the node's admin endpoints.
    pub fn link_admin_fn(&self) -> meshd_node::server::MeshLinkAdminFn {
        let shared = self.shared.clone();
        Arc::new(move |peer, pause| shared.set_paused(peer, pause))
    }

    /// Closes every link and the endpoint.
    pub async fn shutdown(&self) {
        // Close the connections first, with the clean-stop reason: aborting the link
        // tasks first would drop their streams, and the peers would read a stream that
        // "finished early" (a fault) before the close.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared
            .endpoint
            .close(quinn::VarInt::from_u32(0), STOPPING_REASON);
        for t in &self.tasks {
            t.abort();
        }
        let links = std::mem::take(&mut *lock(&self.shared.links));
        for (_, l) in links {
            l.task.abort();
        }
        lock(&self.shared.draining).clear();
        self.shared.endpoint.wait_idle().await;
        persist_marks(&self.shared).await;
    }
}

impl Shared {
    /// The interest of this cluster's own subscriptions: a `latest` subscription wants
    /// what is stored since it was made, an `earliest` one the retained history.
    fn local_interest(&self) -> Vec<LocalInterest> {
        let node = &self.node;
        node.list_subscriptions()
            .into_iter()
            .map(|s| {
                let since_ms = match &s.start {
                    // Offsets are positions in this cluster's store: the retained history
                    // is wanted (the positions pick from it).
                    StartPosition::Earliest | StartPosition::Offsets(_) => None,
                    StartPosition::Latest => {
                        Some(node.subscription_created_ms(&s.name).unwrap_or_else(now_ms))
                    }
                    StartPosition::Time(t) => Some(t.ms()),
                };
                LocalInterest {
                    topic: s.topic,
                    filter: s.filter,
                    since_ms,
                }
            })
            .collect()
    }

    /// Notes a durable cursor this bridge committed (for the lag meters).
    fn remember_cursor(&self, group: &str, topic: &str, partition: u32, next: u64) {
        lock(&self.committed).insert(
            (group.to_string(), topic.to_string(), partition),
            Some(next),
        );
    }

    /// A link's durable cursor: as last committed here, else read from the store (and
    /// remembered). A remembered cursor past the partition's end (the topic was deleted
    /// and created again) is read again.
    async fn durable_cursor(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        end: u64,
    ) -> Result<Option<u64>, meshd_node::store::StoreError> {
        let key = (group.to_string(), topic.to_string(), partition);
        match lock(&self.committed).get(&key).copied() {
            Some(Some(c)) if c <= end => return Ok(Some(c)),
            Some(None) => return Ok(None),
            _ => {}
        }
        let c = self
            .node
            .store
            .committed_offset(group, topic, partition)
            .await?;
        lock(&self.committed).insert(key, c);
        Ok(c)
    }

    /// Has this host's wall clock stepped (by more than 2 s) since the bridge started?
    fn clock_stepped(&self) -> bool {
        let (wall, mono) = self.started;
        let wall_elapsed = now_ms() as i128 - wall as i128;
        (wall_elapsed - mono.elapsed().as_millis() as i128).abs() > 2_000
    }

    fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn me(&self) -> &str {
        &self.config.cluster
    }

    fn set_paused(&self, peer: &str, pause: bool) -> Result<bool, meshd_node::server::NoSuchLink> {
        if !lock(&self.links).contains_key(peer) {
            return Err(meshd_node::server::NoSuchLink {
                from: self.me().to_string(),
                peer: peer.to_string(),
            });
        }
        let mut paused = lock(&self.paused);
        let changed = if pause {
            paused.insert(peer.to_string())
        } else {
            paused.remove(peer)
        };
        if changed {
            tracing::warn!(cluster = %self.me(), peer, pause, "link pause changed by an admin request");
        }
        Ok(changed)
    }

    fn status(&self) -> meshd_core::api::MeshStatus {
        use meshd_core::api::{
            MeshCatalog, MeshCluster, MeshPolicy, MeshStatus, MeshSubscriptionReplica,
        };
        let topo = self.topology();
        let paused = lock(&self.paused).clone();
        let mut links: Vec<meshd_core::api::MeshLink> = lock(&self.links)
            .iter()
            .map(|(peer, l)| {
                let mut v = l.stats.snapshot();
                v.paused = paused.contains(peer);
                v
            })
            .collect();
        links.extend(lock(&self.draining).iter().map(|s| s.snapshot()));
        let clusters: Vec<MeshCluster> = topo
            .clusters()
            .map(|c| MeshCluster {
                name: c.name.to_string(),
                region: Some(c.region.clone()),
                cloud: Some(c.cloud.clone()),
                bridge: Some(c.bridge.to_string()),
            })
            .collect();
        let down = lock(&self.down).clone();
        let routes = Routes::new(&topo, self.me(), &down);
        let paths: BTreeMap<String, Option<Vec<String>>> = topo
            .clusters()
            .filter(|c| c.name.as_str() != self.me())
            .map(|c| (c.name.to_string(), routes.path(c.name.as_str())))
            .collect();
        let catalog = {
            let c = lock(&self.catalog);
            MeshCatalog {
                topics: c.live_topics() as u64,
                conflicts: c.conflicts(),
                orphans: c.orphans(),
            }
        };
        let (duplicates, dedup_window) = {
            let d = lock(&self.dedup);
            (d.duplicates(), d.len() as u64)
        };
        MeshStatus {
            cluster: self.me().to_string(),
            mesh: topo.mesh().to_string(),
            digest: topo.digest().to_string(),
            clusters,
            links,
            routes: paths,
            duplicates,
            dedup_window,
            learned_interest: lock(&self.learned).clone(),
            catalog,
            subscription_replicas: lock(&self.replicas)
                .all()
                .into_iter()
                .map(|r| MeshSubscriptionReplica {
                    home: r.home,
                    name: r.name,
                    term: r.term,
                    active: r.active,
                    deleted: r.spec.is_none(),
                    positions: r.positions,
                })
                .collect(),
            // The replication policies (who may receive which topics), for drills that
            // move subscriptions between clusters.
            policies: topo
                .policies()
                .map(|p| MeshPolicy {
                    topics: p.topics.to_string(),
                    clusters: p.clusters.iter().map(|c| c.to_string()).collect(),
                })
                .collect(),
        }
    }

    /// Starts tasks for new links and stops those no longer in the topology.
    fn reconcile_links(self: &Arc<Self>) {
        let topo = self.topology();
        let wanted: BTreeMap<String, ()> = topo
            .neighbors(self.me())
            .into_iter()
            .map(|(n, _)| (n.to_string(), ()))
            .collect();
        let mut links = lock(&self.links);
        let existing: Vec<String> = links.keys().cloned().collect();
        for peer in existing {
            if !wanted.contains_key(&peer) {
                if let Some(l) = links.remove(&peer) {
                    self.drain_link(peer.clone(), l);
                }
                // Its cursors no longer hold retention (a stale cursor would hold forever).
                self.node.release_retention(&cursor_group(&peer));
                lock(&self.learned).remove(&peer);
                lock(&self.down).remove(&peer);
            }
        }
        for peer in wanted.keys() {
            if links.contains_key(peer) {
                continue;
            }
            let dialer = self.me() < peer.as_str();
            let stats = Arc::new(LinkStats::new(peer, dialer));
            let (tx, rx) = mpsc::channel(4);
            let (drain, drain_rx) = tokio::sync::watch::channel(false);
            lock(&self.down).insert(peer.clone());
            let task = tokio::spawn(run_link(
                self.clone(),
                peer.clone(),
                stats.clone(),
                rx,
                drain_rx,
            ));
            tracing::info!(cluster = %self.me(), peer, dialer, "link added");
            // Age retention keeps what this link has not sent yet (guarantee 3).
            self.node
                .hold_retention(&cursor_group(peer), self.retention_scope(peer));
            links.insert(
                peer.clone(),
                LinkHandle {
                    stats,
                    incoming: tx,
                    drain,
                    task,
                },
            );
        }
    }

    /// What the retention hold of the link to `peer` covers: the topics (and their relay
    /// topics) in the interest the peer last announced; before it announced any since
    /// start, whatever has a durable cursor (see `SessionState::durable`).
    fn retention_scope(self: &Arc<Self>, peer: &str) -> HoldScopeFn {
        let shared = Arc::downgrade(self);
        let peer = peer.to_string();
        Arc::new(move |topic: &str| {
            let Some(shared) = shared.upgrade() else {
                return HoldScope::Unknown;
            };
            let wire = topic.strip_prefix(RELAY_PREFIX).unwrap_or(topic);
            let learned = lock(&shared.learned);
            let scope = match learned.get(&peer) {
                None => HoldScope::Unknown,
                Some(entries) if entries.iter().any(|e| e.topic == wire) => HoldScope::Wanted,
                Some(_) => HoldScope::NotWanted,
            };
            scope
        })
    }

    /// Asks a removed link to drain (no new batches, wait for the acks of those in
    /// flight, then close) and closes it anyway after `drain_timeout`.
    fn drain_link(self: &Arc<Self>, peer: String, l: LinkHandle) {
        let _ = l.drain.send(true);
        lock(&self.draining).push(l.stats.clone());
        let shared = self.clone();
        let limit = self.config.drain_timeout + Duration::from_secs(1);
        let mut task = l.task;
        let stats = l.stats;
        // Keep the handle's channel open while draining (its closing means "removed now").
        let incoming = l.incoming;
        tokio::spawn(async move {
            let _incoming = incoming;
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(cluster = %shared.me(), peer, "link drain did not finish in time, closed");
            }
            lock(&shared.draining).retain(|s| !Arc::ptr_eq(s, &stats));
        });
    }

    async fn reload(self: Arc<Self>, forced: bool) {
        let path = self.config.topology_path.clone();
        let loaded = tokio::task::spawn_blocking(move || Topology::load(path)).await;
        let new = match loaded {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                if forced {
                    tracing::error!(cluster = %self.me(), "topology reload refused, keeping the current topology: {e}");
                }
                return;
            }
            Err(e) => {
                tracing::error!("topology reload task failed: {e}");
                return;
            }
        };
        let old = self.topology();
        if *old == new {
            return;
        }
        if new.cluster(self.me()).is_none() {
            tracing::error!(cluster = %self.me(), "topology reload refused: this cluster is not in the new file; keeping the current topology");
            return;
        }
        let diff = Topology::diff(&old, &new);
        tracing::info!(cluster = %self.me(), digest = %new.digest(), ?diff, "topology reloaded");
        self.allowed.set(new.clusters().map(|c| c.name.to_string()));
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        self.reconcile_links();
    }
}

async fn reload_loop(shared: Arc<Shared>) {
    let mut last_bad: Option<String> = None;
    loop {
        tokio::time::sleep(shared.config.reload_interval).await;
        // Log a bad file once per distinct content, not every poll.
        let text = tokio::fs::read_to_string(&shared.config.topology_path).await;
        match text.as_ref().map(|t| Topology::parse(t)) {
            Ok(Ok(t)) => {
                last_bad = None;
                if *shared.topology() != t {
                    shared.clone().reload(true).await;
                }
            }
            Ok(Err(errors)) => {
                let key = text.unwrap_or_default();
                if last_bad.as_deref() != Some(key.as_str()) {
                    tracing::error!(cluster = %shared.me(), "topology file changed but is invalid, keeping the current topology: {errors}");
                    last_bad = Some(key);
                }
            }
            Err(e) => {
                let key = format!("io:{e}");
                if last_bad.as_deref() != Some(key.as_str()) {
                    tracing::error!(cluster = %shared.me(), "topology file unreadable, keeping the current topology: {e}");
                    last_bad = Some(key);
                }
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cluster = %shared.me(), %remote, "refused a federation connection: {e}");
                    return;
                }
            };
            let peer = conn
                .peer_identity()
                .and_then(|i| {
                    i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .and_then(|chain| meshd_certs::peer_cluster(&chain).ok());
            let Some(peer) = peer else {
                tracing::warn!(cluster = %shared.me(), %remote, "refused a federation connection: no cluster identity");
                conn.close(quinn::VarInt::from_u32(1), b"no cluster identity");
                return;
            };
            let tx = lock(&shared.links).get(&peer).map(|l| l.incoming.clone());
            match tx {
                Some(tx) if shared.me() > peer.as_str() => {
                    let _ = tx.send(conn).await;
                }
                Some(_) => {
                    tracing::warn!(cluster = %shared.me(), %remote, peer, "refused a federation connection: on this link this cluster dials");
                    conn.close(
                        quinn::VarInt::from_u32(2),
                        b"on this link the other side dials",
                    );
                }
                None => {
                    tracing::warn!(cluster = %shared.me(), %remote, peer, "refused a federation connection: no link with this cluster in the topology");
                    conn.close(
                        quinn::VarInt::from_u32(3),
                        b"no link with this cluster in the topology",
                    );
                }
            }
        });
    }
}

async fn dial(shared: &Shared, peer: &str) -> Result<quinn::Connection, DialError> {
    let topo = shared.topology();
    let cluster = topo.cluster(peer).ok_or_else(|| DialError::NotInTopology {
        peer: peer.to_string(),
    })?;
    let text = cluster.bridge.to_string();
    let addr = tokio::net::lookup_host(&text)
        .await
        .map_err(|source| DialError::Resolve {
            addr: text.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| DialError::NoAddress { addr: text.clone() })?;
    let tls = meshd_certs::client_config(shared.certs.clone(), peer)?;
    let quic = QuicClientConfig::try_from(Arc::new(tls))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport());
    let connecting = shared
        .endpoint
        .connect_with(client, addr, &meshd_certs::server_name(peer))
        .map_err(|source| DialError::Connect { addr, source })?;
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(source)) => Err(DialError::Connection { addr, source }),
        Err(_) => Err(DialError::TimedOut { addr }),
    }
}

async fn run_link(
    shared: Arc<Shared>,
    peer: String,
    stats: Arc<LinkStats>,
    mut incoming: mpsc::Receiver<quinn::Connection>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let dialer = shared.me() < peer.as_str();
    // The lag is measured beside the sessions, connected or not (see `measure_lag`).
    let meter = tokio::spawn(measure_lag(shared.clone(), peer.clone(), stats.clone()));
    let _meter = AbortOnDrop(meter);
    let store_gate = Arc::new(tokio::sync::Mutex::new(()));
    let mut backoff = Duration::from_millis(100);
    let mut next: Option<quinn::Connection> = None;
    loop {
        if *drain.borrow() {
            // Removed while not connected: nothing in flight to finish.
            tracing::info!(cluster = %shared.me(), peer, "link removed from the topology while not connected, closed");
            return;
        }
        let conn = if let Some(c) = next.take() {
            c
        } else if dialer {
            stats.set_state(LinkState::Connecting, None);
            match dial(&shared, &peer).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cluster = %shared.me(), peer, "link down, retrying in {backoff:?}: {e}");
                    stats.set_state(LinkState::Down, Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        r = drain.changed() => if r.is_err() { return },
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(3));
                    continue;
                }
            }
        } else {
            tokio::select! {
                c = incoming.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                r = drain.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
            }
        };
        let started = Instant::now();
        let result = session(
            &shared,
            &peer,
            &stats,
            conn.clone(),
            &mut incoming,
            &mut drain,
            dialer,
            store_gate.clone(),
        )
        .await;
        // A session replaced by a new connection of the same peer is not a link down: the
        // routes (and the interest they steer) must not flap to another path meanwhile.
        if result.is_err() || *drain.borrow() {
            lock(&shared.down).insert(peer.clone());
        }
        stats.stalled.store(false, Ordering::Relaxed);
        if *drain.borrow() {
            let reason = match &result {
                Ok(_) => "link removed from the topology".to_string(),
                Err(e) => e.to_string(),
            };
            if result.as_ref().is_err_and(|e| !e.is_removal()) {
                tracing::warn!(cluster = %shared.me(), peer, "link ended while draining: {reason}");
            }
            conn.close(quinn::VarInt::from_u32(0), reason.as_bytes());
            stats.set_state(LinkState::Down, Some(reason));
            return;
        }
        match result {
            Ok(replacement) => {
                conn.close(quinn::VarInt::from_u32(0), b"replaced by a new connection");
                next = Some(replacement);
                continue;
            }
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    // This bridge is stopping: the session ended because of it.
                    return;
                }
                if closed_by_stopping_peer(&conn) {
                    tracing::info!(cluster = %shared.me(), peer, "link closed: the peer's bridge is stopping");
                    stats.set_state(LinkState::Down, Some("the peer's bridge stopped".into()));
                } else {
                    let e = e.to_string();
                    tracing::warn!(cluster = %shared.me(), peer, "link session ended: {e}");
                    conn.close(quinn::VarInt::from_u32(4), e.as_bytes());
                    stats.set_state(LinkState::Down, Some(e));
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        if dialer {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(3));
        }
    }
}

/// Aborts a task when dropped (a link's helper tasks end with the link).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a link's lag is measured.
const LAG_EVERY: Duration = Duration::from_millis(250);

/// Measures a link's lag for as long as the link exists, connected or not: records of the
/// topics the peer wants past the link's durable cursor (the store's committed offsets of
/// `__bridge/{peer}`), and the age of the oldest of them. The peer's interest is the last
/// it announced (kept while the link is down); before it announced any since this bridge
/// started, every partition with a durable cursor counts. So a cut link shows its backlog
/// growing, and a connected link whose cursor stands still is reported stalled.
async fn measure_lag(shared: Arc<Shared>, peer: String, stats: Arc<LinkStats>) {
    let mut meter = LagMeter::new(shared.config.stall_after);
    let mut tick = tokio::time::interval(LAG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(parts) = lag_parts(&shared, &peer).await else {
            continue;
        };
        let connected = stats.state() == LinkState::Connected;
        let lag = meter.observe(
            Instant::now(),
            now_ms(),
            shared.clock_stepped(),
            connected,
            &parts,
        );
        if stats.set_lag(lag) {
            tracing::warn!(cluster = %shared.me(), peer, lag = lag.events, "link stalled: connected, behind, and not advancing");
        }
    }
}

/// The partitions the link to `peer` owes events of, with their ends and durable cursors;
/// `None` when the store could not be read (the last measurement stands).
async fn lag_parts(shared: &Shared, peer: &str) -> Option<Vec<PartitionLag>> {
    let store = &shared.node.store;
    let group = cursor_group(peer);
    let wanted: Option<Vec<String>> = lock(&shared.learned).get(peer).map(|entries| {
        let mut t: Vec<String> = entries.iter().map(|e| e.topic.clone()).collect();
        t.sort();
        t.dedup();
        t
    });
    // Unknown interest (not announced since start): topics the link has cursors in.
    let known = wanted.is_some();
    let topics: Vec<String> = match wanted {
        Some(t) => t.iter().flat_map(|t| [t.clone(), relay_topic(t)]).collect(),
        None => store
            .list_topics()
            .await
            .ok()?
            .into_iter()
            .map(|(t, _)| t)
            .collect(),
    };
    let mut parts = Vec::new();
    for topic in topics {
        let Ok(Some(cfg)) = store.topic(&topic).await else {
            continue;
        };
        for p in 0..cfg.partitions {
            let b = store.bounds(&topic, p).await.ok()?;
            let committed = shared.durable_cursor(&group, &topic, p, b.end).await.ok()?;
            // A wanted partition without a cursor yet owes everything it retains.
            let cursor = match committed {
                Some(c) => c.max(b.start),
                None if known => b.start,
                None => continue,
            };
            let oldest_ms = if b.end > cursor {
                store
                    .read(&topic, p, cursor, 1)
                    .await
                    .ok()
                    .and_then(|r| r.first().map(|r| r.timestamp_ms))
            } else {
                None
            };
            parts.push(PartitionLag {
                key: (topic.clone(), p),
                end: b.end,
                cursor,
                oldest_ms,
            });
        }
    }
    Some(parts)
}

/// Reads one frame; `body` is a buffer reused across frames (a fresh zeroed buffer per
/// batch frame showed up as ~12% of a receiving bridge in page clearing and allocation).
async fn read_frame(
    recv: &mut quinn::RecvStream,
    body: &mut Vec<u8>,
    stats: &LinkStats,
) -> Result<Frame, LinkError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(LinkError::Read)?;
    let len = check_frame_len(prefix)?;
    body.resize(len, 0);
    recv.read_exact(&mut body[..len])
        .await
        .map_err(LinkError::Read)?;
    stats
        .bytes_received
        .fetch_add(4 + len as u64, Ordering::Relaxed);
    Ok(decode_frame(&body[..len])?)
}

/// Writes one frame; every byte written (length prefix included) counts in `bytes_sent`.
async fn write_frame(
    send: &mut quinn::SendStream,
    stats: &LinkStats,
    frame: &Frame,
) -> Result<usize, LinkError> {
    let bytes = encode_frame(frame)?;
    send.write_all(&bytes).await.map_err(LinkError::Write)?;
    stats
        .bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(bytes.len())
}

/// Runs one connection until it fails (`Err`) or the peer connects anew (`Ok(new)`):
/// the tokio/quinn shell of a [`LinkSession`]. It feeds the machine the frames read,
/// the storer's acks, the drain signal, the announcements and the time, reads the store
/// where the machine says, and performs the machine's actions ([`Driver::flush`]).
#[allow(clippy::too_many_arguments)]
async fn session(
    shared: &Arc<Shared>,
    peer: &str,
    stats: &Arc<LinkStats>,
    conn: quinn::Connection,
    incoming: &mut mpsc::Receiver<quinn::Connection>,
    drain: &mut tokio::sync::watch::Receiver<bool>,
    dialer: bool,
    store_gate: Arc<tokio::sync::Mutex<()>>,
) -> Result<quinn::Connection, LinkError> {
    let topo = shared.topology();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        mesh: topo.mesh().to_string(),
        cluster: shared.me().to_string(),
        digest: topo.digest(),
    };
    let config = SessionConfig {
        window: shared.config.window,
        progress_every: shared.config.progress_every,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        drain_timeout: shared.config.drain_timeout,
    };
    let machine = LinkSession::new(config, hello, peer, dialer, Instant::now());
    let deadline = machine.poll_timeout().unwrap_or_else(Instant::now);
    let deadline = tokio::time::Instant::from_std(deadline);
    let stream = async {
        if dialer {
            conn.open_bi().await.map_err(LinkError::OpenStream)
        } else {
            conn.accept_bi().await.map_err(LinkError::AcceptStream)
        }
    };
    let (send, mut recv) = match tokio::time::timeout_at(deadline, stream).await {
        Ok(s) => s?,
        Err(_) => return Err(SessionEnd::HandshakeTimeout.into()),
    };
    let mut d = Driver {
        shared: shared.clone(),
        peer: peer.to_string(),
        stats: stats.clone(),
        send,
        m: machine,
        to_storer: None,
        cursors: None,
        control: None,
        refused: false,
    };
    let handshake = async {
        d.flush().await?;
        let mut body = Vec::new();
        while !d.m.is_open() {
            let frame = read_frame(&mut recv, &mut body, stats).await?;
            d.m.on_frame(now(), frame);
            d.flush().await?;
        }
        Ok::<_, LinkError>(())
    };
    if tokio::time::timeout_at(deadline, handshake).await.is_err() {
        d.m.handle_timeout(Instant::now().max(deadline.into_std()));
        d.flush().await?;
        return Err(SessionEnd::HandshakeTimeout.into());
    }

    let (tx, mut rx) = mpsc::channel::<Result<Frame, LinkError>>(64);
    let reader_stats = stats.clone();
    let reader = tokio::spawn(async move {
        let mut body = Vec::new();
        loop {
            let r = read_frame(&mut recv, &mut body, &reader_stats).await;
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    let (control, mut control_rx) = mpsc::channel::<Frame>(64);
    let session_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.control).insert(peer.to_string(), (session_id, control.clone()));
    let _control = ControlGuard {
        shared: shared.clone(),
        peer: peer.to_string(),
        id: session_id,
    };
    let (cursors, acked) = tokio::sync::watch::channel(BTreeMap::new());
    tokio::spawn(commit_cursors(shared.clone(), cursor_group(peer), acked));
    let (to_storer, batches) = mpsc::channel::<Batch>(shared.config.window.max(1) * 2);
    let (ack_tx, mut stored) = mpsc::channel::<Result<u64, StoreRoundError>>(64);
    tokio::spawn(storer(
        shared.clone(),
        peer.to_string(),
        stats.clone(),
        store_gate,
        batches,
        ack_tx,
    ));
    d.to_storer = Some(to_storer);
    d.cursors = Some(cursors);
    d.control = Some(control);
    if *drain.borrow() {
        d.start_drain();
    }
    // New records wake the pump at once (a watch per interested partition); the tick is
    // only a fallback for partitions not watched yet.
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut watchers = Watchers::new(wake.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slow = tokio::time::interval(Duration::from_millis(100));
    slow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let step: Result<(), LinkError> = tokio::select! {
            f = rx.recv() => {
                match f {
                    None => Err(LinkError::ReaderStopped),
                    Some(Err(e)) => Err(e),
                    Some(Ok(frame)) => {
                        let acked = matches!(frame, Frame::Ack { .. });
                        d.m.on_frame(now(), frame);
                        match d.flush().await {
                            // An ack frees the window: send the next batches now.
                            Ok(()) if acked => d.pump(&mut watchers).await,
                            r => r,
                        }
                    }
                }
            }
            _ = wake.notified() => d.pump(&mut watchers).await,
            _ = tick.tick() => {
                match d.pump(&mut watchers).await {
                    Ok(()) => {
                        d.m.set_rtt(conn.rtt());
                        d.m.handle_timeout(Instant::now());
                        d.flush().await
                    }
                    e => e,
                }
            }
            r = drain.changed(), if !d.m.is_draining() => {
                if r.is_err() || *drain.borrow() {
                    d.start_drain();
                }
                Ok(())
            }
            _ = slow.tick() => {
                stats
                    .rtt_us
                    .store(conn.rtt().as_micros() as u64, Ordering::Relaxed);
                if let Some(unlogged) = stats.duplicates_unlogged(Instant::now()) {
                    tracing::info!(cluster = %shared.me(), peer, unlogged, "more received events dropped as duplicates (not logged one by one)");
                }
                d.announce();
                d.flush().await
            }
            a = stored.recv() => {
                match a {
                    Some(Ok(seq)) => {
                        d.m.on_stored(seq);
                        d.flush().await
                    }
                    Some(Err(e)) => Err(e.into()),
                    None => Err(LinkError::StorerStopped),
                }
            }
            c = incoming.recv() => {
                match c {
                    Some(c) => break Ok(c),
                    None => Err(LinkError::Removed),
                }
            }
            Some(f) = control_rx.recv() => write_frame(&mut d.send, stats, &f).await.map(|_| ()),
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    reader.abort();
    result
}

/// The wall clock and the monotonic clock, for the machine.
fn now() -> Now {
    Now {
        at: Instant::now(),
        wall_ms: now_ms(),
    }
}

/// How long the handshake (stream opened, hellos exchanged) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Tasks that wake a session's pump when a watched partition grows; aborted on drop.
struct Watchers {
    wake: Arc<tokio::sync::Notify>,
    tasks: HashMap<(String, u32), tokio::task::JoinHandle<()>>,
}

impl Watchers {
    fn new(wake: Arc<tokio::sync::Notify>) -> Watchers {
        Watchers {
            wake,
            tasks: HashMap::new(),
        }
    }

    /// Watches (topic, partition) unless already watched.
    fn ensure(&mut self, store: &Arc<dyn EventStore>, topic: &str, partition: u32) {
        let key = (topic.to_string(), partition);
        if self.tasks.get(&key).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(mut rx) = store.watch_end(topic, partition) else {
            return;
        };
        let wake = self.wake.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                wake.notify_one();
            }
        });
        self.tasks.insert(key, task);
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

/// Unregisters a session's control channel when the session ends (unless a newer session
/// of the peer replaced it already).
struct ControlGuard {
    shared: Arc<Shared>,
    peer: String,
    id: u64,
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let mut c = lock(&self.shared.control);
        if c.get(&self.peer).is_some_and(|(id, _)| *id == self.id) {
            c.remove(&self.peer);
        }
    }
}

/// Performs a [`LinkSession`]'s actions on one connection: the stream, the storer, the
/// cursor committer and the bridge's shared state.
struct Driver {
    shared: Arc<Shared>,
    peer: String,
    stats: Arc<LinkStats>,
    send: quinn::SendStream,
    m: LinkSession,
    /// Received batches go to the storer (see [`storer`]); set after the handshake.
    to_storer: Option<mpsc::Sender<Batch>>,
    /// Acknowledged positions for the cursor committer (see [`commit_cursors`]).
    cursors: Option<tokio::sync::watch::Sender<BTreeMap<(String, u32), u64>>>,
    /// Control frames to write on this connection (trace answers).
    control: Option<mpsc::Sender<Frame>>,
    /// A refuse frame was written (the close waits until the peer has read it).
    refused: bool,
}

impl Driver {
    /// Performs every queued action, in order.
    async fn flush(&mut self) -> Result<(), LinkError> {
        while let Some(action) = self.m.poll_action() {
            self.perform(action).await?;
        }
        Ok(())
    }

    async fn perform(&mut self, action: Action) -> Result<(), LinkError> {
        let (shared, peer, stats) = (&self.shared, self.peer.as_str(), &self.stats);
        match action {
            Action::Send(frame) => {
                if let Frame::Refuse { .. } = frame {
                    // Best effort: the link is refused either way.
                    self.refused = write_frame(&mut self.send, stats, &frame).await.is_ok();
                    return Ok(());
                }
                write_frame(&mut self.send, stats, &frame).await?;
                match &frame {
                    Frame::Batch(b) => {
                        stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                        stats
                            .events_sent
                            .fetch_add(b.events.len() as u64, Ordering::Relaxed);
                    }
                    Frame::Progress { .. } => {
                        stats.progress_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            Action::Store(batch) => {
                let to_storer = self.to_storer.as_ref().ok_or(LinkError::StorerStopped)?;
                // Waits only when the storer is a whole window behind (back-pressure).
                to_storer
                    .send(batch)
                    .await
                    .map_err(|_| LinkError::StorerStopped)?;
            }
            Action::CommitCursors(commits) => {
                if let Some(cursors) = &self.cursors {
                    cursors.send_modify(|m| {
                        for c in &commits {
                            m.insert((c.topic.clone(), c.partition), c.next);
                        }
                    });
                }
            }
            Action::AnchorCursor(c) => {
                let group = cursor_group(peer);
                match shared
                    .node
                    .store
                    .commit_offset(&group, &c.topic, c.partition, c.next)
                    .await
                {
                    Ok(()) => shared.remember_cursor(&group, &c.topic, c.partition, c.next),
                    Err(e) => {
                        tracing::warn!(cluster = %shared.me(), peer, topic = %c.topic, partition = c.partition, "anchoring the link cursor failed: {e}");
                    }
                }
            }
            Action::LearnInterest(entries) => {
                lock(&shared.learned).insert(peer.to_string(), entries);
            }
            Action::MergeCatalog(entries) => {
                let local = lock(&shared.local_topics).clone();
                let (actions, bad) = lock(&shared.catalog).merge(entries, &local);
                for b in bad {
                    tracing::warn!(cluster = %shared.me(), peer, "ignoring a catalog entry: {b}");
                }
                for a in actions {
                    let _ = shared.catalog_actions.send(a);
                }
            }
            Action::MergeSchemas(entries) => {
                // Applied to the registry by the catalog task's next tick.
                for b in lock(&shared.schemas).merge(entries) {
                    tracing::warn!(cluster = %shared.me(), peer, "ignoring a schema catalog entry: {b}");
                }
            }
            Action::MergeReplicas(replicas) => {
                let (events, changed) = lock(&shared.replicas).merge(replicas);
                if !events.is_empty() || !changed.is_empty() {
                    let _ = shared.replica_events.send((events, changed));
                }
            }
            Action::AnswerTrace(q) => {
                // Answered beside the session (it reads the store and may wait for
                // relayed answers); the answer goes out through the control channel.
                if let Some(control) = self.control.clone() {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let req = q.req;
                        let clusters = answer_query(&shared, q).await;
                        let _ = control
                            .send(Frame::TraceReply(TraceReply { req, clusters }))
                            .await;
                    });
                }
            }
            Action::TraceAnswered(r) => {
                if let Some(tx) = lock(&shared.trace_pending).remove(&r.req) {
                    let _ = tx.send(r);
                }
            }
            Action::Connected { .. } => {
                let n = stats.connections.fetch_add(1, Ordering::Relaxed);
                if n > 0 {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                stats.set_state(LinkState::Connected, None);
                lock(&shared.down).remove(peer);
                tracing::info!(cluster = %shared.me(), peer, "link connected");
            }
            Action::Close(end) => {
                if self.refused {
                    // Let the peer read the refusal before the connection closes.
                    let _ = self.send.finish();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), self.send.stopped()).await;
                }
                return Err(end.into());
            }
        }
        Ok(())
    }

    fn start_drain(&mut self) {
        self.m.start_drain(Instant::now());
        self.stats.set_state(LinkState::Draining, None);
    }

    /// Reads the store partitions the peer wants where the machine says, and feeds it the
    /// records (it sends batches, or leaves progress marks), until the window is full or
    /// everything is sent.
    async fn pump(&mut self, watchers: &mut Watchers) -> Result<(), LinkError> {
        let shared = self.shared.clone();
        let paused = lock(&shared.paused).contains(&self.peer);
        self.m.set_paused(paused);
        if !self.m.may_send() {
            return Ok(());
        }
        let store = &shared.node.store;
        let topo = shared.topology();
        let may_receive = |t: &str, d: &str| topo.may_receive(t, d);
        let log = &shared.node.trace;
        for (topic, wire) in self.m.wanted() {
            let Ok(Some(cfg)) = store.topic(&topic).await else {
                continue;
            };
            let names = log
                .enabled()
                .then(|| (log.intern(&self.peer), log.intern(&wire)));
            let forwarded = |raw: &RawEvent<'_>| {
                if let Some((peer, topic)) = &names {
                    let step = Step::Forwarded {
                        peer: peer.clone(),
                        topic: topic.clone(),
                    };
                    log.record(raw.source(), raw.id(), step);
                }
            };
            let out = Outgoing {
                may_receive: &may_receive,
                forwarded: names
                    .is_some()
                    .then_some(&forwarded as &(dyn Fn(&RawEvent<'_>) + Sync)),
            };
            for p in 0..cfg.partitions {
                watchers.ensure(store, &topic, p);
                loop {
                    let pos = match self.m.read_at(&topic, p) {
                        ReadAt::Blocked => break,
                        ReadAt::NeedStart => {
                            self.resolve_start(&topic, &wire, p).await?;
                            self.flush().await?;
                            continue;
                        }
                        ReadAt::At(pos) => pos,
                    };
                    let end = store.bounds(&topic, p).await?.end;
                    if pos >= end {
                        break;
                    }
                    let records = store.read(&topic, p, pos, shared.config.batch_max).await?;
                    let more = self.m.on_records(
                        Instant::now(),
                        &topic,
                        &wire,
                        p,
                        cfg.partitions,
                        end,
                        &records,
                        &out,
                    );
                    self.flush().await?;
                    if !more {
                        break;
                    }
                }
            }
        }
        self.m.flush_progress(Instant::now());
        self.flush().await
    }

    /// Reads where the link starts in (store topic, partition) and tells the machine.
    async fn resolve_start(&mut self, topic: &str, wire: &str, p: u32) -> Result<(), LinkError> {
        let store = &self.shared.node.store;
        let group = cursor_group(&self.peer);
        let b = store.bounds(topic, p).await?;
        let cursor = self.shared.durable_cursor(&group, topic, p, b.end).await?;
        let start = match self.m.start_for(wire, cursor, (b.start, b.end)) {
            Start::At(o) => o,
            Start::Since(ms) => store.offset_at_time(topic, p, ms).await?,
        };
        self.m.set_start(topic, p, start, cursor);
        Ok(())
    }

    /// Offers the machine what this cluster announces: the catalog first (all of it on a
    /// new connection, then what changed), so topics are known on the other side before
    /// events or interest need them; then the schemas; then the subscription replicas;
    /// then the interest.
    fn announce(&mut self) {
        let shared = self.shared.clone();
        let peer = self.peer.as_str();
        let (gen, changed) = changes(&*lock(&shared.catalog), self.m.catalog_sent());
        if let Some(changed) = changed {
            self.m.announce_catalog(gen, changed, CATALOG_CHUNK);
        }
        let (gen, changed) = changes(&*lock(&shared.schemas), self.m.schemas_sent());
        if let Some(changed) = changed {
            self.m.announce_schemas(gen, changed, CATALOG_CHUNK);
        }
        let (gen, changed) = changes(&*lock(&shared.replicas), self.m.replicas_sent());
        if let Some(changed) = changed {
            self.m.announce_replicas(gen, changed, CATALOG_CHUNK);
        }
        let local = shared.local_interest();
        let topo = shared.topology();
        let down = lock(&shared.down).clone();
        let routes = Routes::new(&topo, shared.me(), &down);
        let all_up = Routes::new(&topo, shared.me(), &HashSet::new());
        let learned = lock(&shared.learned).clone();
        let set = announcement(shared.me(), peer, &local, &learned, |n, d| {
            // With the known-down links excluded; when that leaves no path at all, keep the
            // interest (events wait in this cluster's store instead of being skipped).
            routes.relays(n, d) || (routes.path(d).is_none() && all_up.relays(n, d))
        });
        self.m
            .announce_interest(set, |topics| lock(&shared.marks).for_topics(topics));
    }
}

/// Asks this cluster's connected neighbours not in `asked` for the trace of
/// `(source, id)` (each relays on with `hops - 1`), waiting at most `timeout`; answers
/// what came back, plus a not-answered entry for each neighbour whose link is down or
/// that did not answer in time.
async fn ask_mesh(
    shared: &Arc<Shared>,
    source: &str,
    id: &str,
    asked: &[String],
    hops: u32,
    timeout: Duration,
) -> Vec<TraceClusterReply> {
    let neighbours: Vec<String> = lock(&shared.links).keys().cloned().collect();
    let control = lock(&shared.control).clone();
    let connected: Vec<String> = control.keys().cloned().collect();
    let plan = crate::trace::plan(shared.me(), &neighbours, &connected, asked);
    let mut out: Vec<TraceClusterReply> = plan
        .down
        .iter()
        .map(|n| crate::trace::not_answered(n, format!("the link from {} is down", shared.me())))
        .collect();
    let relay = relay_timeout(timeout);
    let mut waits = Vec::new();
    for n in &plan.ask {
        let Some((_, tx)) = control.get(n) else {
            continue;
        };
        let req = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        lock(&shared.trace_pending).insert(req, reply_tx);
        let q = TraceQuery {
            req,
            source: source.to_string(),
            id: id.to_string(),
            asked: plan.asked.clone(),
            hops,
            timeout_ms: relay.as_millis() as u64,
        };
        let sent = tx.try_send(Frame::TraceQuery(q)).is_ok();
        waits.push((n.clone(), req, sent, reply_rx));
    }
    // Every question is out: waiting for each in turn against one deadline waits no
    // longer than waiting for all at once.
    let deadline = tokio::time::Instant::now() + timeout;
    for (n, req, sent, rx) in waits {
        let r = if sent {
            tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        lock(&shared.trace_pending).remove(&req);
        match r {
            Some(reply) => out.extend(reply.clusters),
            None => out.push(crate::trace::not_answered(
                &n,
                format!("no answer within {} ms", timeout.as_millis()),
            )),
        }
    }
    out
}

/// Answers a peer's trace question: this cluster's records, and (hops left) those of the
/// clusters behind it that the question did not reach yet.
async fn answer_query(shared: &Arc<Shared>, q: TraceQuery) -> Vec<TraceClusterReply> {
    let timeout = Duration::from_millis(q.timeout_ms.clamp(1, 60_000));
    let mine = shared
        .node
        .trace_cluster(&q.source, &q.id, false, relay_timeout(timeout));
    let relayed = async {
        if q.hops == 0 {
            Vec::new()
        } else {
            ask_mesh(
                shared,
                &q.source,
                &q.id,
                &q.asked,
                q.hops - 1,
                relay_timeout(timeout),
            )
            .await
        }
    };
    let ((records, errors), relayed) = tokio::join!(mine, relayed);
    let mut out = vec![crate::trace::answered(shared.me(), &records, &errors)];
    out.extend(relayed);
    out
}

/// Rebuilds the duplicate window from the store: the newest replicated events (those
/// whose origin is another cluster) of every partition, at most `capacity` per partition,
/// newest `capacity` overall. The window is thereby exactly as durable as the events it
/// protects: an event is remembered iff it is stored.
async fn restore_dedup(node: &Node, me: &str, capacity: usize) -> DedupWindow {
    let mut window = DedupWindow::new(capacity);
    let store = &node.store;
    let started = Instant::now();
    let topics = match store.list_topics().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(cluster = %me, "duplicate window not restored: listing topics: {e}");
            return window;
        }
    };
    let mut keys: Vec<(u64, DedupKey)> = Vec::new();
    for (topic, cfg) in topics {
        for p in 0..cfg.partitions {
            let Ok(b) = store.bounds(&topic, p).await else {
                continue;
            };
            let mut pos = b.end.saturating_sub(window.capacity() as u64).max(b.start);
            while pos < b.end {
                let Ok(records) = store.read(&topic, p, pos, 1024).await else {
                    break;
                };
                let Some(last) = records.last() else { break };
                pos = last.offset + 1;
                for r in &records {
                    let Ok(raw) = RawEvent::parse(&r.payload) else {
                        continue;
                    };
                    if raw.extension(ORIGIN_EXT).is_some_and(|o| o != me) {
                        keys.push((r.timestamp_ms, DedupWindow::key(&raw)));
                    }
                }
            }
        }
    }
    let n = window.restore(keys);
    if n > 0 {
        tracing::info!(cluster = %me, keys = n, elapsed = ?started.elapsed(), "duplicate window restored from the store");
    }
    window
}

/// Most catalog entries (or subscription replicas) in one frame.
const CATALOG_CHUNK: usize = 1_000;

/// A set gossiped to every neighbour by generation (the catalog, the replicas).
trait Gossiped {
    type Entry: Clone;
    fn generation(&self) -> u64;
    fn changed_since(&self, gen: u64) -> Vec<Self::Entry>;
}

impl Gossiped for Catalog {
    type Entry = meshd_core::wire::CatalogEntry;
    fn generation(&self) -> u64 {
        Catalog::generation(self)
    }
    fn changed_since(&self, gen: u64) -> Vec<Self::Entry> {
        Catalog::changed_since(self, gen)
    }
}

impl Gossiped for SchemaCatalog {
    type Entry = meshd_core::wire::SchemaEntry;
    fn generation(&self) -> u64 {
        SchemaCatalog::generation(self)
    }
    fn changed_since(&self, gen: u64) -> Vec<Self::Entry> {
        SchemaCatalog::changed_since(self, gen)
    }
}

impl Gossiped for Replicas {
    type Entry = meshd_core::wire::SubReplica;
    fn generation(&self) -> u64 {
        Replicas::generation(self)
    }
    fn changed_since(&self, gen: u64) -> Vec<Self::Entry> {
        Replicas::changed_since(self, gen)
    }
}

/// The current generation and, if it moved past `sent`, what changed since.
fn changes<G: Gossiped>(set: &G, sent: u64) -> (u64, Option<Vec<G::Entry>>) {
    let gen = set.generation();
    (gen, (gen > sent).then(|| set.changed_since(sent)))
}

/// Reads the persisted catalog.
async fn restore_catalog(node: &Node, me: &str) -> Catalog {
    match node.store.list_meta(crate::catalog::META_PREFIX).await {
        Ok(entries) => {
            let (catalog, bad) = Catalog::restore(me, entries);
            for key in bad {
                tracing::warn!(cluster = %me, key, "ignoring an unreadable catalog entry (peers send it again)");
            }
            catalog
        }
        Err(e) => {
            tracing::error!(cluster = %me, "topic catalog not restored (peers send it again): {e}");
            Catalog::new(me)
        }
    }
}

/// Reads the persisted schema catalog.
async fn restore_schemas(node: &Node, me: &str) -> SchemaCatalog {
    match node
        .store
        .list_meta(crate::schema_catalog::META_PREFIX)
        .await
    {
        Ok(entries) => {
            let (catalog, bad) = SchemaCatalog::restore(me, entries);
            for key in bad {
                tracing::warn!(cluster = %me, key, "ignoring an unreadable schema catalog entry (peers send it again)");
            }
            catalog
        }
        Err(e) => {
            tracing::error!(cluster = %me, "schema catalog not restored (peers send it again): {e}");
            SchemaCatalog::new(me)
        }
    }
}

/// The node's schema registry as the schema catalog reads it: each schema's digest,
/// computed again only when the registry changed.
#[derive(Default)]
struct RegistryView {
    changes: Option<u64>,
    digests: BTreeMap<String, String>,
}

/// One tick of the schema catalog: changes made here become entries, entries that came
/// from peers are applied to the registry (and the cluster catalog).
async fn schemas_tick(shared: &Shared, view: &mut RegistryView, failing: &mut HashSet<String>) {
    let registry = &shared.node.schemas;
    if view.changes != Some(registry.changes()) {
        let (changes, entries) = registry.entries();
        view.digests = entries
            .iter()
            .map(|(n, v)| (n.clone(), crate::schema_catalog::digest(Some(v))))
            .collect();
        view.changes = Some(changes);
    }
    let todo =
        lock(&shared.schemas).observe(&view.digests, |name| registry.entries().1.remove(name));
    let me = shared.me();
    for a in todo {
        let (name, versions, digest) = match a {
            SchemaAction::Persist { key, value } => {
                if let Err(e) = shared.node.store.put_meta(&key, &value).await {
                    tracing::warn!(cluster = %me, key, "persisting a schema catalog entry failed (peers send it again): {e}");
                }
                continue;
            }
            SchemaAction::Apply {
                name,
                versions,
                digest,
            } => (name, Some(versions), digest),
            SchemaAction::Remove { name } => (name, None, crate::schema_catalog::ABSENT.into()),
        };
        let deleted = versions.is_none();
        let key = format!("schema {name}");
        match registry
            .replicate(
                &*shared.node.store,
                shared.node.catalog_sink(),
                &name,
                versions,
            )
            .await
        {
            Ok(()) => {
                failing.remove(&key);
                lock(&shared.schemas).applied(&name, &digest);
                tracing::info!(cluster = %me, schema = %name, deleted, "schema applied from the mesh catalog");
            }
            Err(e) => {
                if failing.insert(key) {
                    tracing::warn!(cluster = %me, schema = %name, "applying a schema of the mesh catalog failed (retried): {e}");
                }
            }
        }
    }
}

/// Keeps the catalog and this cluster's topics in step: every 250 ms it lists the local
/// topics (new ones become lives owned here, deleted ones end theirs, the owners' topics
/// this cluster may receive are made), and it carries out what merges of peers' entries
/// asked for. The schema catalog is kept in step with the schema registry on the same
/// tick ([`schemas_tick`]).
async fn catalog_loop(shared: Arc<Shared>, mut actions: mpsc::UnboundedReceiver<CatalogAction>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: HashSet<String> = HashSet::new();
    let mut first = true;
    let mut registry = RegistryView::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                // Schemas first: a topic that binds them finds them made.
                schemas_tick(&shared, &mut registry, &mut failing).await;
                let local: BTreeMap<String, TopicConfig> = match shared.node.store.list_topics().await {
                    Ok(t) => t.into_iter().collect(),
                    Err(e) => {
                        if failing.insert(String::new()) {
                            tracing::warn!(cluster = %shared.me(), "listing topics for the catalog failed (retried): {e}");
                        }
                        continue;
                    }
                };
                failing.remove("");
                *lock(&shared.local_topics) = local.clone();
                let topo = shared.topology();
                let me = shared.me().to_string();
                let todo = {
                    let mut c = lock(&shared.catalog);
                    if first {
                        c.adopt_orphans(&local);
                        first = false;
                    }
                    c.observe(&local, now_ms(), |topic, cfg| {
                        topo.may_receive(topic, &me)
                            && (cfg.replicate_to.is_empty() || cfg.replicate_to.contains(&me))
                    })
                };
                for a in todo {
                    run_catalog_action(&shared, a, &mut failing).await;
                }
            }
            a = actions.recv() => match a {
                Some(a) => run_catalog_action(&shared, a, &mut failing).await,
                None => return,
            },
        }
    }
}

async fn run_catalog_action(shared: &Shared, action: CatalogAction, failing: &mut HashSet<String>) {
    let me = shared.me();
    match action {
        CatalogAction::Create { topic, config } => {
            let owner = lock(&shared.catalog)
                .effective(&topic)
                .map(|(o, _)| o.to_string())
                .unwrap_or_default();
            match shared.node.admin_create_topic(&topic, config).await {
                Ok(_) => {
                    failing.remove(&topic);
                    tracing::info!(cluster = %me, topic, owner, "topic made from the mesh catalog");
                }
                Err(e) => {
                    if failing.insert(topic.clone()) {
                        tracing::warn!(cluster = %me, topic, owner, "making a topic of the mesh catalog failed (retried): {e}");
                    }
                }
            }
        }
        CatalogAction::Delete { topic } => match shared.node.admin_delete_topic(&topic).await {
            Ok(()) | Err(NodeError::TopicNotFound { .. }) => {
                failing.remove(&topic);
                lock(&shared.catalog).delete_result(&topic, true);
                tracing::info!(cluster = %me, topic, "topic deleted: its owner deleted it");
            }
            Err(e) => {
                lock(&shared.catalog).delete_result(&topic, false);
                if failing.insert(topic.clone()) {
                    tracing::info!(cluster = %me, topic, "the owner deleted this topic; the local copy is kept until it can go: {e}");
                }
            }
        },
        CatalogAction::Persist { key, value } => {
            if let Err(e) = shared.node.store.put_meta(&key, &value).await {
                tracing::warn!(cluster = %me, key, "persisting a catalog entry failed (peers send it again): {e}");
            }
        }
        CatalogAction::ForgetMarks { topic } => {
            let keys = lock(&shared.marks).forget_topic(&topic);
            for key in keys {
                let _ = shared.node.store.delete_meta(&key).await;
            }
        }
    }
}

/// Reads the persisted subscription replicas.
async fn restore_replicas(node: &Node, me: &str) -> Replicas {
    match node.store.list_meta(crate::replicas::META_PREFIX).await {
        Ok(entries) => {
            let (replicas, bad) = Replicas::restore(me, entries);
            for key in bad {
                tracing::warn!(cluster = %me, key, "ignoring an unreadable subscription replica (peers send it again)");
            }
            replicas
        }
        Err(e) => {
            tracing::error!(cluster = %me, "subscription replicas not restored (peers send them again): {e}");
            Replicas::new(me)
        }
    }
}

/// How far back from its committed offset a subscription's positions are first read
/// (an origin whose last delivered event is older counts as having none).
const POSITION_SCAN_BACK: u64 = 100_000;

/// Positions of one delivered subscription, read incrementally from its committed
/// offsets.
struct PositionScan {
    marks: Marks,
    scanned: HashMap<u32, u64>,
}

/// Publishes the positions of the subscriptions this cluster delivers for standbys every
/// 500 ms, stops delivering what another cluster took over (a restarted home first of
/// all), and persists replicas.
async fn replica_loop(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<ReplicaChange>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scans: HashMap<(String, String), PositionScan> = HashMap::new();
    let mut first = true;
    let mut reach = Reachability::default();
    let mut self_fenced: std::collections::BTreeSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let _gate = shared.replica_gate.lock().await;
                if first {
                    first = false;
                    fence_restarted(&shared).await;
                }
                if let Some(after) = shared.config.failover_after {
                    reach.observe(&shared);
                    automatic_failover(&shared, &reach, &mut self_fenced, after).await;
                }
                publish_positions(&shared, &mut scans).await;
            }
            e = events.recv() => {
                let Some((fenced, changed)) = e else { return };
                let _gate = shared.replica_gate.lock().await;
                for ReplicaEvent::Fenced { home, name, active } in fenced {
                    scans.remove(&(home.clone(), name.clone()));
                    self_fenced.remove(&name);
                    let stopped = shared.node.pause_delivery(&name).await;
                    tracing::info!(cluster = %shared.me(), home, subscription = %name, active, stopped, "subscription taken over by another cluster: not delivered here");
                }
                persist_replicas(&shared, &changed).await;
            }
        }
    }
}

/// Since when each other cluster has been reachable (a route exists) or not, as this
/// bridge sees it.
#[derive(Default)]
struct Reachability {
    since: HashMap<String, (bool, Instant)>,
}

impl Reachability {
    fn observe(&mut self, shared: &Shared) {
        let topo = shared.topology();
        let down = lock(&shared.down).clone();
        let routes = Routes::new(&topo, shared.me(), &down);
        for c in topo.clusters() {
            let name = c.name.as_str();
            if name == shared.me() {
                continue;
            }
            let up = routes.path(name).is_some();
            match self.since.get(name) {
                Some((was, _)) if *was == up => {}
                _ => {
                    self.since.insert(name.to_string(), (up, Instant::now()));
                }
            }
        }
    }

    fn get(&self, cluster: &str) -> (bool, u64) {
        match self.since.get(cluster) {
            Some((up, at)) => (*up, at.elapsed().as_millis() as u64),
            // Not in the topology (any more): unreachable, since forever.
            None => (false, u64::MAX),
        }
    }
}

/// How long a cluster must be reachable again before a subscription stopped because it
/// was cut off is delivered again (its replicas arrive meanwhile: a higher term fences).
const REJOIN_MS: u64 = 2_000;

async fn automatic_failover(
    shared: &Shared,
    reach: &Reachability,
    self_fenced: &mut std::collections::BTreeSet<String>,
    after: Duration,
) {
    let me = shared.me().to_string();
    let actions = {
        let replicas = lock(&shared.replicas);
        let delivering: Vec<(String, String, Vec<String>)> = shared
            .node
            .list_subscriptions()
            .into_iter()
            .filter(|s| !s.standby.is_empty())
            .filter_map(|s| match replicas.delivery_of(&s) {
                Delivery::Here { home, .. } => Some((home, s.name, s.standby)),
                Delivery::Elsewhere { .. } => None,
            })
            .collect();
        auto_failover(
            &replicas,
            &delivering,
            self_fenced,
            &|c| reach.get(c),
            after.as_millis() as u64,
            REJOIN_MS,
        )
    };
    for a in actions {
        match a {
            Auto::Takeover { home, name } => {
                let req = api::FailoverRequest {
                    subscription: name.clone(),
                    home: home.clone(),
                };
                match takeover_locked(shared, req, true).await {
                    Ok(t) => {
                        tracing::warn!(cluster = %me, home, subscription = %name, term = t.term, "automatic failover: the cluster delivering this subscription is unreachable; delivered here now")
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %me, home, subscription = %name, "automatic failover failed (retried): {e}")
                    }
                }
            }
            Auto::SelfFence { name } => {
                shared.node.pause_delivery(&name).await;
                self_fenced.insert(name.clone());
                tracing::warn!(cluster = %me, subscription = %name, "cut off from every standby of this subscription: delivery stopped here (a standby may take it over)");
            }
            Auto::Unfence { name } => {
                self_fenced.remove(&name);
                let taken_over = shared.node.subscription(&name).is_ok_and(|spec| {
                    matches!(
                        lock(&shared.replicas).delivery_of(&spec),
                        Delivery::Elsewhere { .. }
                    )
                });
                if !taken_over {
                    match shared.node.resume_delivery(&name).await {
                        Ok(()) => {
                            tracing::info!(cluster = %me, subscription = %name, "a standby is reachable again: delivered here again")
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %me, subscription = %name, "resuming delivery failed: {e}")
                        }
                    }
                }
            }
        }
    }
}

/// After a restart: the node started every subscription; those another cluster took over
/// meanwhile (by the persisted replicas) stop at once.
async fn fence_restarted(shared: &Shared) {
    let me = shared.me().to_string();
    let fenced: Vec<(String, String)> = {
        let r = lock(&shared.replicas);
        shared
            .node
            .list_subscriptions()
            .into_iter()
            .filter(|s| !s.standby.is_empty())
            .filter_map(|s| match r.delivery_of(&s) {
                Delivery::Elsewhere { active } => Some((s.name, active)),
                Delivery::Here { .. } => None,
            })
            .collect()
    };
    for (name, active) in fenced {
        if shared.node.pause_delivery(&name).await {
            tracing::info!(cluster = %me, subscription = %name, active, "subscription delivered by another cluster since a takeover: not delivered here");
        }
    }
}

async fn persist_replicas(shared: &Shared, keys: &[(String, String)]) {
    for (home, name) in keys {
        let entry = lock(&shared.replicas).persist_entry(home, name);
        if let Some((key, value)) = entry {
            if let Err(e) = shared.node.store.put_meta(&key, &value).await {
                tracing::warn!(cluster = %shared.me(), key, "persisting a subscription replica failed: {e}");
            }
        }
    }
}

/// Publishes spec and positions of every subscription with standby clusters that this
/// cluster delivers (made here and not taken over, or taken over here).
async fn publish_positions(shared: &Shared, scans: &mut HashMap<(String, String), PositionScan>) {
    let me = shared.me().to_string();
    let local: BTreeMap<String, api::SubscriptionSpec> = shared
        .node
        .list_subscriptions()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let (known, keys) = {
        let replicas = lock(&shared.replicas);
        let keys: Vec<(String, String, u64)> = local
            .values()
            .filter(|s| !s.standby.is_empty())
            .filter_map(|s| match replicas.delivery_of(s) {
                Delivery::Here { home, created_ms } => {
                    let created = if home == me {
                        shared.node.subscription_created_ms(&s.name)
                    } else {
                        created_ms
                    };
                    Some((home, s.name.clone(), created.unwrap_or(0)))
                }
                Delivery::Elsewhere { .. } => None,
            })
            .collect();
        (replicas.all(), keys)
    };
    let mut deleted = Vec::new();
    for r in &known {
        if r.active == me && r.spec.is_some() && !local.contains_key(&r.name) {
            deleted.push((r.home.clone(), r.name.clone(), r.created_ms));
        }
    }
    let mut changed = Vec::new();
    for (home, name, created) in deleted {
        if lock(&shared.replicas).publish(&home, &name, created, None, Vec::new()) {
            changed.push((home.clone(), name.clone()));
            scans.remove(&(home, name));
        }
    }
    for (home, name, created) in keys {
        let Some(spec) = local.get(&name) else {
            continue;
        };
        let scan = scans
            .entry((home.clone(), name.clone()))
            .or_insert_with(|| PositionScan {
                marks: Marks::default(),
                scanned: HashMap::new(),
            });
        read_positions(shared, scan, spec).await;
        let positions = scan.marks.for_topics([spec.topic.as_str()]);
        let json = serde_json::to_string(spec).expect("a spec serializes");
        if lock(&shared.replicas).publish(&home, &name, created, Some(json), positions) {
            changed.push((home, name));
        }
    }
    persist_replicas(shared, &changed).await;
}

/// The origin position of a stored record of `partition` (its own when it has none).
fn origin_of(
    raw: &RawEvent<'_>,
    me: &str,
    partition: u32,
    offset: u64,
) -> Option<(String, OriginPos)> {
    match raw.extension(ORIGIN_EXT) {
        Some(origin) => raw
            .extension(POS_EXT)
            .and_then(OriginPos::parse)
            .map(|pos| (origin.to_string(), pos)),
        None => Some((me.to_string(), OriginPos { partition, offset })),
    }
}

/// Reads a subscription's delivered events since the last call (up to its committed
/// offsets) into its positions.
async fn read_positions(shared: &Shared, scan: &mut PositionScan, spec: &api::SubscriptionSpec) {
    let store = &shared.node.store;
    let Ok(Some(cfg)) = store.topic(&spec.topic).await else {
        return;
    };
    for p in 0..cfg.partitions {
        let Ok(Some(committed)) = store.committed_offset(&spec.name, &spec.topic, p).await else {
            continue;
        };
        let Ok(b) = store.bounds(&spec.topic, p).await else {
            continue;
        };
        let mut pos = scan
            .scanned
            .get(&p)
            .copied()
            .unwrap_or_else(|| committed.saturating_sub(POSITION_SCAN_BACK))
            .max(b.start);
        while pos < committed {
            let want = (committed - pos).min(1024) as usize;
            let Ok(records) = store.read(&spec.topic, p, pos, want).await else {
                break;
            };
            let Some(last) = records.last() else { break };
            let next = last.offset + 1;
            for r in records.iter().filter(|r| r.offset < committed) {
                let Ok(raw) = RawEvent::parse(&r.payload) else {
                    continue;
                };
                if let Some((origin, op)) = origin_of(&raw, shared.me(), p, r.offset) {
                    scan.marks.observe(&origin, &spec.topic, op);
                }
            }
            pos = next.min(committed);
        }
        scan.scanned.insert(p, pos);
    }
}

fn failover_error(e: crate::replicas::TakeoverError) -> api::FailoverError {
    use crate::replicas::TakeoverError as T;
    let code = match &e {
        T::Unknown { .. } => "unknown_subscription",
        T::Deleted { .. } => "deleted",
        T::NotStandby { .. } => "not_standby",
        T::AlreadyActive { .. } => "already_active",
        T::BadSpec { .. } => "bad_replica",
    };
    api::FailoverError {
        code,
        message: e.to_string(),
    }
}

fn unavailable(message: String) -> api::FailoverError {
    api::FailoverError {
        code: "store_unavailable",
        message,
    }
}

/// Takes a subscription over here: finds in each local partition the oldest event its
/// replicated positions do not cover, commits the group there, starts delivery, then
/// raises the term (the previous active cluster stops when it hears of it).
async fn takeover(
    shared: &Shared,
    req: api::FailoverRequest,
) -> Result<api::FailoverResponse, api::FailoverError> {
    let _gate = shared.replica_gate.lock().await;
    takeover_locked(shared, req, false).await
}

/// [`takeover`] with the replica gate held by the caller.
///
/// While the cluster delivering it is reachable, a takeover waits until this cluster holds
/// every event the replicated positions cover (an event delivered there and not yet stored
/// here would be delivered again when it arrives): `not_caught_up`, retry. When it is
/// unreachable (`lost`, or no route), it proceeds with what is here.
async fn takeover_locked(
    shared: &Shared,
    req: api::FailoverRequest,
    lost: bool,
) -> Result<api::FailoverResponse, api::FailoverError> {
    let me = shared.me().to_string();
    let plan = lock(&shared.replicas)
        .check_takeover(&req.home, &req.subscription)
        .map_err(failover_error)?;
    let active = lock(&shared.replicas)
        .get(&req.home, &req.subscription)
        .map(|r| r.active.clone())
        .unwrap_or_default();
    let reachable = {
        let topo = shared.topology();
        let down = lock(&shared.down).clone();
        Routes::new(&topo, &me, &down).path(&active).is_some()
    };
    if !lost && reachable {
        let marks = lock(&shared.marks);
        let behind: Vec<String> = plan
            .positions
            .iter()
            .filter(|((origin, _), _)| *origin != me)
            .filter_map(|((origin, p), next)| {
                let held = marks.next(origin, &plan.spec.topic, *p).unwrap_or(0);
                (held < *next).then(|| format!("{origin} partition {p}: {held} of {next}"))
            })
            .collect();
        if !behind.is_empty() {
            return Err(api::FailoverError {
                code: "not_caught_up",
                message: format!(
                    "{active} still delivers {:?} and this cluster has not stored every event it delivered yet ({}); retry in a moment",
                    req.subscription,
                    behind.join(", ")
                ),
            });
        }
    }
    let spec = plan.spec.clone();
    let existing = shared.node.subscription(&spec.name).ok();
    if let Some(existing) = &existing {
        if existing != &spec {
            return Err(api::FailoverError {
                code: "subscription_conflict",
                message: format!(
                    "a different subscription named {:?} exists in this cluster: delete or rename it first",
                    spec.name
                ),
            });
        }
    }
    let store = &shared.node.store;
    let cfg = store
        .topic(&spec.topic)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .ok_or_else(|| api::FailoverError {
            code: "topic_not_found",
            message: format!(
                "topic {:?} does not exist in this cluster (the mesh catalog makes it where the replication policy allows)",
                spec.topic
            ),
        })?;
    let mut start = BTreeMap::new();
    for p in 0..cfg.partitions {
        let b = store
            .bounds(&spec.topic, p)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut scan = StartScan::new(&me, p, b.end, &plan.positions, plan.created_ms);
        let mut upper = b.end;
        'scan: while upper > b.start {
            let from = upper.saturating_sub(1024).max(b.start);
            let records = store
                .read(&spec.topic, p, from, (upper - from) as usize)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            for r in records.iter().rev().filter(|r| r.offset < upper) {
                let origin = RawEvent::parse(&r.payload)
                    .ok()
                    .and_then(|raw| origin_of(&raw, &me, p, r.offset));
                let origin = origin
                    .as_ref()
                    .filter(|(o, _)| *o != me)
                    .map(|(o, pos)| (o.as_str(), *pos));
                if !scan.feed(r.offset, origin, r.timestamp_ms) {
                    break 'scan;
                }
            }
            upper = from;
        }
        let at = scan.result();
        store
            .commit_offset(&spec.name, &spec.topic, p, at)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        start.insert(p, at);
    }
    let started = if existing.is_some() {
        shared.node.resume_delivery(&spec.name).await
    } else {
        shared
            .node
            .admin_create_subscription(spec.clone())
            .await
            .map(|_| ())
    };
    started.map_err(|e| api::FailoverError {
        code: "takeover_failed",
        message: format!("starting delivery: {e}"),
    })?;
    let t = lock(&shared.replicas)
        .takeover(&req.home, &req.subscription)
        .map_err(failover_error)?;
    persist_replicas(shared, &[(req.home.clone(), req.subscription.clone())]).await;
    tracing::info!(cluster = %me, home = %req.home, subscription = %req.subscription, term = t.term, ?start, "subscription taken over: delivered here");
    Ok(api::FailoverResponse {
        subscription: req.subscription,
        home: req.home,
        active: me,
        term: t.term,
        start,
    })
}

/// Reads the persisted marks.
async fn restore_marks(node: &Node, me: &str) -> Marks {
    match node.store.list_meta(marks::META_PREFIX).await {
        Ok(entries) => {
            let (marks, bad) = Marks::restore(entries);
            for key in bad {
                tracing::warn!(cluster = %me, key, "ignoring an unreadable origin mark (the link cursors and the duplicate window still hold)");
            }
            marks
        }
        Err(e) => {
            tracing::error!(cluster = %me, "origin marks not restored (links resume from their cursors): {e}");
            Marks::default()
        }
    }
}

/// Persists changed marks every 200 ms. A mark is
/// written after the events it covers are durable, so it may trail them (a crash then
/// costs some events sent again, dropped by the duplicate window), never lead them.
async fn persist_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        persist_marks(&shared).await;
    }
}

async fn persist_marks(shared: &Shared) {
    let dirty = lock(&shared.marks).take_dirty();
    let mut failed = Vec::new();
    for (key, value) in dirty {
        if let Err(e) = shared.node.store.put_meta(&key, &value).await {
            tracing::warn!(cluster = %shared.me(), key, "persisting an origin mark failed (retried): {e}");
            failed.push(key);
        }
    }
    if !failed.is_empty() {
        lock(&shared.marks).redirty(&failed);
    }
}

/// Stores the batches a peer sends, in arrival order, and reports the highest sequence
/// number stored (the cumulative ack) to the session. It runs beside the session, so the
/// link keeps reading while a store append (and its fsync) is under way, and it takes
/// every batch queued meanwhile into one round: one append per topic per round, so the
/// fsync cost is shared by as many batches as arrived during the previous one.
///
/// `gate` is held for the storer's whole life: a reconnected session's storer starts only
/// after the previous one has finished the batches it had taken (so an event reserved in
/// the duplicate window by the old storer is stored, or released, before the new session
/// can see it as a duplicate and acknowledge it).
async fn storer(
    shared: Arc<Shared>,
    peer: String,
    stats: Arc<LinkStats>,
    gate: Arc<tokio::sync::Mutex<()>>,
    mut batches: mpsc::Receiver<Batch>,
    acks: mpsc::Sender<Result<u64, StoreRoundError>>,
) {
    let _gate = gate.lock_owned().await;
    // Two stages: this one checks and stamps round N+1 while the next one waits for the
    // store to take round N (same order; one append per topic per round).
    // (the seq to acknowledge once stored, or None for a part flushed early; the round)
    let (ready_tx, mut ready_rx) = mpsc::channel::<Ready>(2);
    let owner = NEXT_STORER.fetch_add(1, Ordering::Relaxed);
    let prepare = async {
        // Owned here: dropped when this stage ends, which ends the next stage.
        let ready_tx = ready_tx;
        while let Some(first) = batches.recv().await {
            let mut round = vec![first];
            while round.len() < STORE_ROUND_MAX {
                match batches.try_recv() {
                    Ok(b) => round.push(b),
                    Err(_) => break,
                }
            }
            let seq = round.last().map_or(0, |b| b.seq);
            let prepared = prepare_round(&shared, &stats, round, owner, &ready_tx).await;
            let failed = prepared.is_err();
            if ready_tx.send((Some(seq), prepared)).await.is_err() || failed {
                return;
            }
        }
    };
    let store = async {
        let mut failed = false;
        while let Some((seq, prepared)) = ready_rx.recv().await {
            let result = match prepared {
                // After a failure, rounds prepared meanwhile are dropped unstored: their
                // keys are released so the peer's resend is taken.
                Ok(groups) if failed => {
                    release_round(&shared, &groups);
                    continue;
                }
                Ok(groups) => store_round(&shared, &peer, groups).await,
                Err(e) => Err(e),
            };
            let was_ok = result.is_ok();
            // A part flushed early is acknowledged with the rest of its round.
            if was_ok && seq.is_none() {
                continue;
            }
            failed |= !was_ok;
            // A closed ack channel means the session ended: the queued batches are still
            // stored (they are reserved in the duplicate window), only not acknowledged.
            let _ = acks.send(result.map(|()| seq.unwrap_or(0))).await;
        }
    };
    tokio::join!(prepare, store);
}

/// Commits a link's durable cursor (the peer's acks) to the store, beside the session:
/// a commit is a store write (an fsync under `--fsync always`) and must not hold up the
/// pump. Acks arriving during a commit coalesce into the next one, so the committed cursor
/// trails the acks by at most one commit; after a crash the peer gets those events again
/// and drops them as duplicates. When the session ends, the last acks are still committed.
async fn commit_cursors(
    shared: Arc<Shared>,
    group: String,
    mut acked: tokio::sync::watch::Receiver<BTreeMap<(String, u32), u64>>,
) {
    let mut done: BTreeMap<(String, u32), u64> = BTreeMap::new();
    loop {
        let open = acked.changed().await.is_ok();
        let now = acked.borrow_and_update().clone();
        for (key, next) in now {
            if done.get(&key) == Some(&next) {
                continue;
            }
            let (topic, p) = (&key.0, key.1);
            match shared
                .node
                .store
                .commit_offset(&group, topic, p, next)
                .await
            {
                Ok(()) => {
                    shared.remember_cursor(&group, topic, p, next);
                    done.insert(key, next);
                }
                Err(e) => {
                    tracing::warn!(cluster = %shared.me(), group, topic, partition = p, "committing the link cursor failed (retried with the next ack): {e}");
                }
            }
        }
        if !open {
            return;
        }
    }
}

/// Owner ids of storers in the duplicate window.
static NEXT_STORER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Most batches one storer round takes.
const STORE_ROUND_MAX: usize = 256;

/// A prepared round for the storer's second stage: the seq to acknowledge once it is
/// stored (`None` for a part flushed early), and the round (or why it failed).
type Ready = (Option<u64>, Result<Vec<Pending>, StoreRoundError>);

/// Makes a round of batches ready to append ([`Round`]: duplicate check with the keys
/// reserved in the duplicate window for `owner`, path stamp, grouped by topic in arrival
/// order). At an event another link's storer holds, what was prepared so far goes to
/// `flush` (stored without an ack) and this waits until that key is stored or released
/// (see [`crate::intake`]).
async fn prepare_round(
    shared: &Arc<Shared>,
    stats: &LinkStats,
    batches: Vec<Batch>,
    owner: u64,
    flush: &mpsc::Sender<Ready>,
) -> Result<Vec<Pending>, StoreRoundError> {
    let me = shared.me();
    let log = &shared.node.trace;
    let mut round = Round::new(me, owner);
    let mut failure = None;
    'batches: for b in batches {
        for we in b.events {
            stats.events_received.fetch_add(1, Ordering::Relaxed);
            let raw = match RawEvent::parse(&we.payload) {
                Ok(r) => r,
                Err(source) => {
                    failure = Some(StoreRoundError::Undecodable {
                        offset: we.offset,
                        source,
                    });
                    break 'batches;
                }
            };
            let traced = log.enabled();
            let admit = |round: &mut Round| {
                let mut dedup = lock(&shared.dedup);
                round.admit(
                    &mut dedup,
                    &b.topic,
                    b.partitions,
                    &raw,
                    &we.payload,
                    traced,
                )
            };
            let fresh = loop {
                // Fast path: no waiter registered unless the key is held by another link.
                match admit(&mut round) {
                    Admit::Fresh => break true,
                    Admit::Duplicate => break false,
                    Admit::HeldElsewhere => {}
                }
                let resolved = shared.dedup_resolved.notified();
                tokio::pin!(resolved);
                resolved.as_mut().enable();
                match admit(&mut round) {
                    Admit::Fresh => break true,
                    Admit::Duplicate => break false,
                    Admit::HeldElsewhere => {}
                }
                if round.has_records() && flush.send((None, Ok(round.take()))).await.is_err() {
                    return Err(StoreRoundError::Stopped);
                }
                // Woken by any commit or release; the timeout only bounds a missed wake.
                let _ = tokio::time::timeout(Duration::from_millis(100), resolved).await;
            };
            if traced {
                let (peer, topic) = (log.intern(&stats.peer), log.intern(&b.topic));
                let step = if fresh {
                    let origin = raw.extension(ORIGIN_EXT).unwrap_or(&stats.peer);
                    Step::Received {
                        peer,
                        topic,
                        origin: log.intern(origin),
                    }
                } else {
                    Step::Duplicate { peer, topic }
                };
                log.record(raw.source(), raw.id(), step);
            }
            tracing::trace!(cluster = %me, peer = %stats.peer, topic = %b.topic, source = raw.source(), id = raw.id(), traceparent = raw.extension("traceparent"), fresh, "received");
            if !fresh {
                // Expected after a reconnect or a reroute (events sent again), a sign of
                // reused ids otherwise: say which, at most once a second per link.
                if let Some(unlogged) = stats.duplicate_dropped(Instant::now()) {
                    tracing::info!(
                        cluster = %me,
                        peer = %stats.peer,
                        topic = %b.topic,
                        source = raw.source(),
                        id = raw.id(),
                        unlogged,
                        "received event dropped as a duplicate: its (source, id) is stored here already"
                    );
                }
            }
        }
    }
    let pending = round.take();
    if let Some(e) = failure {
        release_round(shared, &pending);
        return Err(e);
    }
    Ok(pending)
}

/// Forgets the reservations of a round that will not be stored.
fn release_round(shared: &Shared, round: &[Pending]) {
    Round::release(&mut lock(&shared.dedup), round);
    shared.dedup_resolved.notify_waiters();
}

/// Appends a prepared round, one append per topic, and remembers the stored events' keys
/// in the duplicate window (or releases them).
async fn store_round(
    shared: &Arc<Shared>,
    peer: &str,
    round: Vec<Pending>,
) -> Result<(), StoreRoundError> {
    let mut first_error = None;
    for g in round {
        if g.records.is_empty() {
            continue;
        }
        let stored = store_received(shared, peer, &g.topic, g.partitions, g.records).await;
        {
            let mut d = lock(&shared.dedup);
            match stored {
                Ok(()) => d.commit(&g.keys),
                Err(e) => {
                    d.release(&g.keys);
                    first_error.get_or_insert(e);
                }
            }
        }
        shared.dedup_resolved.notify_waiters();
    }
    first_error.map_or(Ok(()), Err)
}

/// Stores events received from `peer` (creating the topic, or the relay topic, as needed).
async fn store_received(
    shared: &Arc<Shared>,
    peer: &str,
    topic: &str,
    topic_partitions: u32,
    records: Vec<Received>,
) -> Result<(), StoreRoundError> {
    let me = shared.me();
    let node = &shared.node;
    // A cluster the replication policy does not allow to receive the topic only relays:
    // it keeps the events in the internal relay topic, which no local subscription reads.
    let store_topic = if shared.topology().may_receive(topic, me) {
        topic.to_string()
    } else {
        relay_topic(topic)
    };
    let partitions = match node.partitions_for_publish(&store_topic).await {
        Ok(p) => p,
        Err(NodeError::TopicNotFound { .. }) => {
            let cfg = TopicConfig {
                partitions: topic_partitions.max(1),
                ..TopicConfig::default()
            };
            node.create_topic(&store_topic, cfg)
                .await
                .map_err(|source| StoreRoundError::CreateTopic {
                    topic: store_topic.clone(),
                    source,
                })?;
            tracing::info!(cluster = %me, peer, topic = %store_topic, "created topic for replicated events");
            topic_partitions.max(1)
        }
        Err(source) => {
            return Err(StoreRoundError::Topic {
                topic: store_topic,
                source,
            })
        }
    };
    let ts = now_ms();
    // Each origin partition goes to the same partition here (when the topic has it), so
    // origin order holds hop by hop and the mark of what is stored is exact.
    let mut observed: Vec<(String, OriginPos)> = Vec::new();
    let mut traced: Vec<Option<(String, String)>> = Vec::new();
    let records = records
        .into_iter()
        .map(|mut r| {
            if node.trace.enabled() {
                traced.push(r.traced.take());
            }
            let fallback = partition_for_key(r.key.as_deref(), partitions);
            let pos = r.origin.as_ref().map(|(_, pos)| *pos);
            let (partition, exact) = marks::receive_partition(pos, partitions, fallback);
            if exact {
                if let Some(o) = r.origin {
                    observed.push(o);
                }
            }
            AppendRecord {
                partition,
                timestamp_ms: ts,
                payload: r.payload.into(),
            }
        })
        .collect();
    // Readable before durable: the peer keeps these until our ack, which is sent only
    // after this returns (durable), so local subscribers start while the fsync runs.
    let appended = node
        .store
        .append_visible_early(&store_topic, records)
        .await
        .map_err(StoreRoundError::Append)?;
    if !traced.is_empty() {
        let topic = node.trace.intern(&store_topic);
        for (key, a) in traced.into_iter().zip(&appended) {
            if let Some((source, id)) = key {
                node.trace.record(
                    &source,
                    &id,
                    Step::Stored {
                        topic: topic.clone(),
                        partition: a.partition,
                        offset: a.offset,
                    },
                );
            }
        }
    }
    // Durable now: what this cluster holds moves on (persisted a moment later).
    let mut marks = lock(&shared.marks);
    for (origin, pos) in observed {
        marks.observe(&origin, topic, pos);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meshd_core::api::error_chain;

    /// quinn's "connection lost" says why only in its source: a link's `last_error`
    /// must carry it.
    #[test]
    fn a_lost_connection_says_why() {
        let e = quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::TimedOut,
        ));
        let text = error_chain(&e);
        assert!(text.contains("connection lost"), "{text}");
        assert!(text.ends_with(": timed out"), "{text}");
        // No cause repeated.
        assert_eq!(text.matches("connection lost").count(), 1, "{text}");
    }
}
