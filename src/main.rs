//! The `meshd` binary: CLI wiring only. One binary, one subcommand per role, plus small
//! client commands. Everything with logic lives in the crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meshd_node::server::{Node, NodeConfig, StoreKind};
use meshd_node::store::FsyncPolicy;

mod certs_cmd;
mod client;
mod cluster_cmd;
mod cluster_supervisor;
mod dev;
mod drill;
mod filter_cmd;
mod listen;
mod listener_args;
mod logging;
mod node_cluster;
mod proxy_cmd;
mod scheduler_cmd;
mod schema_cmd;
mod table;
mod topology_cmd;

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "A geo-replicated, multi-cluster CloudEvents mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: client::GlobalArgs,
    #[command(flatten)]
    log: logging::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a complete local cluster in one process on loopback, on embedded defaults.
    Dev(dev::DevArgs),
    /// Run one runtime node (HTTP API + embedded store + delivery).
    Node(Box<NodeArgs>),
    /// Run one member of the scheduler's Raft group (placement of groups on nodes).
    Scheduler(scheduler_cmd::SchedulerArgs),
    /// Run a region (etcd, schedulers, nodes, proxies) as child processes of this one.
    Cluster(cluster_cmd::ClusterArgs),
    /// Run the stateless HTTP proxy in front of the nodes, or manage its tokens.
    Proxy(proxy_cmd::ProxyArgs),
    /// Publish events.
    Pub(client::PubArgs),
    /// Manage subscriptions (create, list, get, delete) and pull events from them.
    Sub(client::SubArgs),
    /// Manage topics (create, list, get, delete).
    Topic(client::TopicArgs),
    /// Re-deliver stored events of a time window to a subscription (start, list, status,
    /// cancel).
    Replay(client::ReplayArgs),
    /// Manage the schema registry (put, get, list, delete) and see discovered schemas.
    Schema(schema_cmd::SchemaArgs),
    /// The mesh as a node's federation bridge sees it (`meshd mesh status`).
    Mesh(client::MeshArgs),
    /// An event's life across the mesh: stored, forwarded, received, matched, delivered
    /// (`meshd trace ID --source S`).
    Trace(client::TraceArgs),
    /// A webhook receiver that prints every pushed event as one JSON line.
    Listen(listen::ListenArgs),
    /// Try filters and transforms offline.
    Filter(filter_cmd::FilterArgs),
    /// Check a mesh topology file.
    Topology(topology_cmd::TopologyArgs),
    /// Mesh CA and cluster certificates for federation links.
    Certs(certs_cmd::CertsArgs),
    /// Rehearse a failure on a running mesh (through its admin APIs) and report canary
    /// events lost, duplicated and reordered per cluster.
    Drill(drill::DrillArgs),
}

/// Options of a runtime node.
#[derive(clap::Args, Clone)]
pub struct NodeArgs {
    /// Address to serve HTTP on (port 0: any free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address to serve the gRPC API on (`meshd.v1.EventMesh`, port 0: any free port; the
    /// address is printed). Without it the node serves no gRPC. See docs/api.md#grpc.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// Where the embedded store keeps its files.
    #[arg(long, default_value = "./meshd-data")]
    data_dir: PathBuf,
    /// Cluster name.
    #[arg(long, default_value = "local")]
    cluster: String,
    /// Node id within the cluster.
    #[arg(long, default_value = "node-1")]
    node_id: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
    #[command(flatten)]
    listener: listener_args::ListenerArgs,
    #[command(flatten)]
    bridge: BridgeArgs,
    /// Join a cluster: `etcd://HOST:PORT[,HOST:PORT...]`. The node registers under a
    /// lease, shares topics and subscriptions through the registry's catalog and delivers
    /// only the consumer groups placement gives it. Without it: a single node.
    #[arg(long)]
    registry: Option<String>,
    /// Time to live of the node's registry lease (`2s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = positive_duration_arg)]
    lease_ttl: Duration,
    /// URL other members use to reach this node (default: http://LISTEN-ADDRESS).
    #[arg(long)]
    advertise_url: Option<String>,
    /// The cluster's internal token (a file of mode 0600): every /v1 request must carry it,
    /// as proxies started with the same file do. Without it the API is open to whoever
    /// reaches --listen (keep it on loopback or a private network). See docs/security.md.
    #[arg(long, env = "MESHD_INTERNAL_TOKEN_FILE")]
    internal_token_file: Option<PathBuf>,
}

/// Options of the federation bridge that runs beside a node.
#[derive(clap::Args, Clone)]
pub struct BridgeArgs {
    /// Mesh topology file: runs the federation bridge of --cluster beside the node (the
    /// file is watched; SIGHUP reloads it too).
    #[arg(long, requires = "certs_dir")]
    topology: Option<PathBuf>,
    /// Directory with ca.pem, CLUSTER.pem and CLUSTER.key (see `meshd certs`).
    #[arg(long, requires = "topology")]
    certs_dir: Option<PathBuf>,
    /// UDP address the bridge binds (default: this cluster's `bridge` in the topology).
    #[arg(long)]
    bridge_listen: Option<SocketAddr>,
    /// A link behind and not advancing for this many milliseconds is reported stalled.
    #[arg(long, default_value_t = 5000)]
    bridge_stall_after_ms: u64,
    /// How long a link removed from the topology may take to finish its batches in
    /// flight, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    bridge_drain_timeout_ms: u64,
    /// Take subscriptions with this cluster as standby over automatically when the cluster
    /// delivering them has been unreachable this long (e.g. 10s); without it, only
    /// `meshd mesh failover` moves them.
    #[arg(long, value_parser = meshd_core::duration::parse_positive)]
    failover_after: Option<Duration>,
}

/// Starts the bridge for `node` when `args` ask for one, and attaches its status.
pub async fn start_bridge(
    args: &BridgeArgs,
    cluster: &str,
    node: &std::sync::Arc<Node>,
) -> anyhow::Result<Option<std::sync::Arc<meshd_federation::Bridge>>> {
    let (Some(topology), Some(certs)) = (&args.topology, &args.certs_dir) else {
        return Ok(None);
    };
    let mut config = meshd_federation::BridgeConfig::new(cluster, topology.clone(), certs.clone());
    config.listen = args.bridge_listen;
    config.stall_after = Duration::from_millis(args.bridge_stall_after_ms.max(1));
    config.drain_timeout = Duration::from_millis(args.bridge_drain_timeout_ms);
    config.failover_after = args.failover_after;
    let bridge = meshd_federation::Bridge::start(config, node.clone())
        .await
        .with_context(|| format!("starting the federation bridge of cluster {cluster}"))?;
    let bridge = std::sync::Arc::new(bridge);
    watch_topology_components(node.clone(), topology.clone());
    node.set_mesh_status(bridge.status_fn());
    node.set_mesh_metrics(bridge.metrics_fn());
    node.set_mesh_link_admin(bridge.link_admin_fn());
    node.set_mesh_failover(bridge.failover_fn());
    node.set_mesh_trace(bridge.trace_fn());
    #[cfg(unix)]
    {
        let b = bridge.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the topology");
                b.reload().await;
            }
        });
    }
    Ok(Some(bridge))
}

/// Options of the embedded store and the publish path.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// When publishes are fsynced: always (before every ack, group-committed), interval
    /// (written to the OS before the ack, fsynced every --fsync-interval-ms), never.
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
    /// fsync period under --fsync interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    fsync_interval_ms: u64,
    /// Largest publish request body, in bytes (413 past it).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Create topics on first publish instead of answering 404.
    #[arg(long)]
    auto_create_topics: bool,
    /// How often retention runs, in seconds.
    #[arg(long, default_value_t = 30)]
    retention_interval_secs: u64,
    /// How long past its topic's max_age_secs a record a federation link has not sent yet
    /// may be kept, in seconds (a peer gone for good must not fill the disk); past it the
    /// record is removed anyway and counted in
    /// meshd_node_retention_held_records_dropped_total.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    link_retention_hold_max_secs: u64,
    /// How long an event's trace records are kept in memory for GET /v1/trace (`0`:
    /// tracing off). A restart forgets them.
    #[arg(long, env = "MESHD_TRACE_RETENTION", default_value = "1h", value_parser = duration_arg)]
    trace_retention: Duration,
    /// Most trace records kept (the oldest are evicted first).
    #[arg(long, default_value_t = meshd_node::trace::DEFAULT_CAPACITY)]
    trace_capacity: usize,
    /// The event store: `embedded` (a durable log in the data directory) or
    /// `pulsar://host:port` (a Pulsar-protocol broker).
    #[arg(long, default_value = "embedded")]
    store: StoreKind,
    /// Pulsar tenant (with --store pulsar://...).
    #[arg(long, default_value = "public")]
    pulsar_tenant: String,
    /// Pulsar namespace (with --store pulsar://...).
    #[arg(long, default_value = "default")]
    pulsar_namespace: String,
}

impl StoreArgs {
    fn node_config(&self, data_dir: PathBuf, cluster: &str, node_id: &str) -> NodeConfig {
        let mut c = NodeConfig::new(data_dir);
        c.cluster = cluster.to_string();
        c.node_id = node_id.to_string();
        c.fsync = self.fsync;
        c.fsync_interval = Duration::from_millis(self.fsync_interval_ms.max(1));
        c.max_body_bytes = self.max_body_bytes;
        c.auto_create_topics = self.auto_create_topics;
        c.retention_interval = Duration::from_secs(self.retention_interval_secs.max(1));
        c.retention_hold_max = Some(Duration::from_secs(self.link_retention_hold_max_secs));
        c.trace_retention = self.trace_retention;
        c.trace_capacity = self.trace_capacity;
        c.store = match &self.store {
            StoreKind::Pulsar(p) => {
                let mut p = p.clone();
                p.tenant = self.pulsar_tenant.clone();
                p.namespace = self.pulsar_namespace.clone();
                StoreKind::Pulsar(p)
            }
            other => other.clone(),
        };
        c
    }
}

/// Where webhook subscriptions may push (docs/security.md, "Webhook targets"). The mesh's
/// own components, link-local and metadata addresses are refused whatever these say.
#[derive(clap::Args, Clone, Default)]
pub struct WebhookArgs {
    /// Allow webhook targets on loopback and on this host's own addresses (`meshd dev`
    /// always does).
    #[arg(long, env = "MESHD_WEBHOOK_ALLOW_LOOPBACK")]
    webhook_allow_loopback: bool,
    /// Allow webhook targets in private ranges (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// fc00::/7).
    #[arg(long, env = "MESHD_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// Webhook targets always allowed: CIDRs, addresses or host names (`*.example.com`);
    /// repeat the flag or separate with commas.
    #[arg(long, env = "MESHD_WEBHOOK_ALLOW", value_delimiter = ',')]
    webhook_allow: Vec<meshd_core::egress::TargetRule>,
    /// Webhook targets always denied (same forms as --webhook-allow; deny wins).
    #[arg(long, env = "MESHD_WEBHOOK_DENY", value_delimiter = ',')]
    webhook_deny: Vec<meshd_core::egress::TargetRule>,
}

impl WebhookArgs {
    /// The rules these flags give.
    pub fn rules(&self) -> meshd_core::egress::EgressRules {
        meshd_core::egress::EgressRules {
            allow_loopback: self.webhook_allow_loopback,
            allow_private: self.webhook_allow_private,
            allow: self.webhook_allow.clone(),
            deny: self.webhook_deny.clone(),
        }
    }
}

/// Tells `node`'s webhook guard the components a topology file names (every cluster's
/// bridge and proxy), now and on every change of the file (checked every 10 s).
pub fn watch_topology_components(node: std::sync::Arc<Node>, topology: PathBuf) {
    tokio::spawn(async move {
        let mut last: Option<Vec<String>> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let path = topology.clone();
            let loaded =
                tokio::task::spawn_blocking(move || meshd_topology::Topology::load(path)).await;
            let Ok(Ok(t)) = loaded else { continue };
            let urls: Vec<String> = t
                .clusters()
                .flat_map(|c| [c.bridge.to_string(), c.proxy.to_string()])
                .collect();
            if last.as_ref() != Some(&urls) {
                node.set_mesh_components("topology", &urls).await;
                last = Some(urls);
            }
        }
    });
}

/// mimalloc: the event path allocates per event (frames, payloads, keys) from many tokio
/// worker threads; glibc's allocator spent ~17% of a replication run in malloc/free and
/// chunk consolidation (perf, see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A duration flag, in the one syntax of `meshd_core::duration` (`10s`, `1.5s`, `500ms`).
pub fn duration_arg(s: &str) -> Result<Duration, meshd_core::duration::DurationError> {
    meshd_core::duration::parse(s)
}

/// A duration flag that must be longer than zero.
pub fn positive_duration_arg(s: &str) -> Result<Duration, meshd_core::duration::DurationError> {
    meshd_core::duration::parse_positive(s)
}

fn main() -> std::process::ExitCode {
    // reqwest is built without a default crypto provider: install ring once, first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A usage error prints clap's message and exits 2 (0 for --help and --version).
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    logging::init(&cli.log);
    match run(cli) {
        Ok(code) => code,
        // One line, with the causes, never a backtrace (also with RUST_BACKTRACE set):
        // these are the user's errors to read, not the program's.
        Err(e) => {
            eprintln!("error: {}", meshd_core::api::error_chain(e.as_ref()));
            if e.downcast_ref::<client::UsageError>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let verdict = |ok: bool| {
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    let global = cli.global;
    let client_command = matches!(
        cli.command,
        Command::Pub(_)
            | Command::Sub(_)
            | Command::Topic(_)
            | Command::Replay(_)
            | Command::Schema(_)
            | Command::Mesh(_)
            | Command::Trace(_)
            | Command::Drill(_)
    );
    if !client_command && !global.urls.is_empty() {
        return Err(client::UsageError(
            "--url is an option of the client commands (pub, sub, topic, replay, schema, mesh, drill); this command does not talk to a node"
                .into(),
        )
        .into());
    }
    match cli.command {
        Command::Filter(args) => return Ok(verdict(filter_cmd::run(args)?)),
        Command::Topology(args) => return Ok(verdict(topology_cmd::run(args)?)),
        Command::Certs(args) => return certs_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Cluster(ref args) => {
            if let Some(e) = args.exec_child() {
                return Err(e);
            }
        }
        _ => {}
    }
    // Every connection is a file descriptor: a listener needs more than the usual soft
    // limit of 1024. Lift it to the hard limit (the connection limits stay below it).
    match meshd_listener::raise_fd_limit() {
        Ok(n) => tracing::debug!(limit = n, "file-descriptor limit raised"),
        Err(e) => tracing::warn!(error = %e, "the file-descriptor limit could not be raised"),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Node(args) => run_node(*args).await,
            Command::Scheduler(args) => scheduler_cmd::run(args).await,
            Command::Proxy(args) => proxy_cmd::run(args).await,
            Command::Cluster(args) => cluster_cmd::run(args).await,
            Command::Pub(args) => client::publish(&global, args).await,
            Command::Sub(args) => client::subscription(&global, args).await,
            Command::Topic(args) => client::topic(&global, args).await,
            Command::Replay(args) => client::replay(&global, args).await,
            Command::Schema(args) => schema_cmd::run(&global, args).await,
            Command::Mesh(args) => client::mesh(&global, args).await,
            Command::Trace(args) => client::trace(&global, args).await,
            Command::Listen(args) => listen::run(args).await,
            Command::Drill(args) => drill::run(&global, args).await,
            Command::Filter(_) | Command::Topology(_) | Command::Certs(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let mut config = args
        .store
        .node_config(args.data_dir.clone(), &args.cluster, &args.node_id);
    config.webhook = args.webhook.rules();
    if let Some(path) = &args.internal_token_file {
        config.internal_token = Some(meshd_core::internal::InternalToken::load(path)?);
    } else if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the node's API is open to every client that reaches this address: give it --internal-token-file and reach it through proxies, or listen on loopback (docs/security.md)");
    }
    config.listener = args.listener.config();
    config
        .listener
        .validate()
        .context("the listener flags of the node")?;
    let registry = match &args.registry {
        Some(spec) => {
            meshd_scheduler::registry::LeaseConfig::with_ttl(args.lease_ttl)
                .validate()
                .context("--lease-ttl")?;
            config.placement_gated = true;
            let registry = scheduler_cmd::connect_registry(spec, &args.cluster).await?;
            node_cluster::precheck_store(registry.as_ref(), &args.node_id, &config.store).await?;
            Some(registry)
        }
        None => None,
    };
    let node = Node::open(config)
        .await
        .with_context(|| format!("opening the node's store in {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let grpc_listener = match args.grpc_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a} (--grpc-listen)"))?,
        ),
        None => None,
    };
    if let Some(spec) = &args.registry {
        // etcd's endpoints are components the webhooks must not reach.
        let endpoints: Vec<String> = spec
            .trim_start_matches("etcd://")
            .split(',')
            .map(str::to_string)
            .collect();
        node.set_mesh_components("etcd", &endpoints).await;
    }
    let bridge = start_bridge(&args.bridge, &args.cluster, &node).await?;
    if let Some(b) = &bridge {
        if let Some(udp) = b.local_addr() {
            println!("cluster {} bridge quic://{udp}", args.cluster);
        }
    }
    let url = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let member = match registry {
        Some(registry) => Some(
            node_cluster::ClusterMember::join(
                node.clone(),
                registry,
                &url,
                meshd_scheduler::registry::LeaseConfig::with_ttl(args.lease_ttl),
            )
            .await?,
        ),
        None => None,
    };
    println!(
        "cluster {} node {} http://{addr}",
        args.cluster, args.node_id
    );
    let (grpc_stop, grpc) = match grpc_listener {
        Some(l) => {
            println!(
                "cluster {} node {} grpc {}",
                args.cluster,
                args.node_id,
                l.local_addr()?
            );
            let (stop, server) = spawn_grpc(node.clone(), l);
            (Some(stop), Some(server))
        }
        None => (None, None),
    };
    let leaving = member.clone();
    let stopping_bridge = bridge.clone();
    let (conflict_tx, conflict_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let conflict = async {
            match &leaving {
                Some(m) => m.conflict().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown_signal() => {}
            c = conflict => {
                let _ = conflict_tx.send(c);
            }
        }
        // Leave first: the lease goes at once and the groups move while we drain.
        if let Some(m) = leaving {
            m.leave().await;
        }
        // The bridge stops while the store is still open (it writes its last marks).
        if let Some(b) = stopping_bridge {
            b.shutdown().await;
        }
        if let Some(stop) = grpc_stop {
            let _ = stop.send(());
        }
    };
    node.serve(listener, shutdown).await?;
    if let Some(server) = grpc {
        server.await??;
    }
    if let Ok(conflict) = conflict_rx.await {
        return Err(conflict.into());
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Serves the gRPC API of `node` on `listener` until the returned sender fires (or is
/// dropped).
pub fn spawn_grpc(
    node: std::sync::Arc<Node>,
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), meshd_node::grpc::GrpcError>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meshd_node::grpc::serve(node, listener, async move {
        let _ = stop_rx.await;
    }));
    (stop_tx, server)
}
