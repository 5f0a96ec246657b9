//! `meshd cluster up --config cluster.toml`: one region as separate processes on this
//! machine: etcd (spawned, or given endpoints), the scheduler's Raft members, the runtime
//! nodes and the proxies, each a child process of this one with its own data directory,
//! port and log file (`DATA/logs/ROLE-ID.log`). Prints each role's line as the roles do
//! themselves (`cluster NAME node ID http://...`, `cluster NAME proxy ID http://...`,
//! `cluster NAME scheduler ID http://...`) plus `child ROLE ID pid N` lines, then
//! `cluster NAME up` and a status table. It then supervises them (restarts with backoff,
//! children die with it; [`crate::cluster_supervisor`]). SIGTERM / Ctrl-C stops the
//! children (proxies, nodes, schedulers, the test broker, etcd, in that order; SIGTERM,
//! then SIGKILL after a grace period).
//!
//! The event store follows the one rule of regions: an embedded store serves one node
//! per cluster (each node's log is private), so `nodes.store = "embedded"` with more than
//! one node is refused. More than one node without a `store` runs a local pulsar-lite
//! broker as a child (`store = "pulsar-lite"` says so explicitly): a test broker for
//! trying a region on one machine; production gives `store = "pulsar://..."` (Apache
//! Pulsar).
//!
//! With a `[mesh]` section the region joins a mesh: one node (`bridge_node`) runs the
//! cluster's federation bridge with the topology and certificates given there.
//!
//! The config file is checked completely before anything starts: unknown keys, missing
//! fields, zero counts, bad values and port clashes are reported together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::cluster_supervisor::{ChildSpec, Procs};

/// `meshd cluster ...`
#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Run a region (etcd, schedulers, nodes, proxies) as child processes until SIGTERM.
    Up {
        /// The region's config file (TOML; see docs/operations.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file without starting anything.
    Check {
        /// The region's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// How `cluster up` starts each child: die with PARENT (PR_SET_PDEATHSIG), then run
    /// PROGRAM in this process.
    #[command(hide = true)]
    ExecChild {
        /// The pid of `cluster up`.
        #[arg(long)]
        parent: u32,
        /// PROGRAM ARGS...
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

impl ClusterArgs {
    /// `cluster exec-child`, run before any runtime starts (it replaces this process):
    /// `Some(error)` when it could not, `None` for every other command.
    pub fn exec_child(&self) -> Option<anyhow::Error> {
        match &self.command {
            ClusterCommand::ExecChild { parent, command } => {
                crate::cluster_supervisor::exec_child(*parent, command).err()
            }
            _ => None,
        }
    }
}

/// A region's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name (the registry key prefix).
    pub name: String,
    /// Where every role keeps its data and logs.
    pub data_dir: PathBuf,
    /// Address the roles listen on.
    #[serde(default = "default_host")]
    pub host: String,
    /// The registry.
    pub etcd: EtcdSection,
    /// The scheduler's Raft group.
    pub scheduler: SchedulerSection,
    /// The runtime nodes.
    pub nodes: NodesSection,
    /// The proxies.
    pub proxies: ProxiesSection,
    /// Joins the region to a mesh: one node runs the cluster's federation bridge.
    #[serde(default)]
    pub mesh: Option<MeshSection>,
}

/// `[mesh]`: the region is one cluster of a mesh. The node `bridge_node` runs the
/// federation bridge of `name` (`meshd node --topology --certs-dir`), binding the
/// cluster's `bridge` address of the topology unless `bridge_listen` is given. The
/// supervisor restarts it like any node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// The mesh topology file (it must name this cluster).
    pub topology: PathBuf,
    /// The directory with `ca.pem` and this cluster's certificate and key (`meshd certs
    /// issue`).
    pub certs_dir: PathBuf,
    /// Which node runs the bridge (1-based).
    #[serde(default = "default_bridge_node")]
    pub bridge_node: u16,
    /// UDP address the bridge binds (default: the cluster's `bridge` in the topology).
    #[serde(default)]
    pub bridge_listen: Option<std::net::SocketAddr>,
}

fn default_bridge_node() -> u16 {
    1
}

impl MeshSection {
    /// Every problem with the mesh settings of cluster `name` with `nodes` nodes: the
    /// topology must load and name the cluster, the certificate must load and be that
    /// cluster's.
    fn problems(&self, name: &str, nodes: u16) -> Vec<String> {
        let mut p = Vec::new();
        if self.bridge_node == 0 || self.bridge_node > nodes {
            p.push(format!(
                "mesh.bridge_node = {} names no node (nodes.count = {nodes})",
                self.bridge_node
            ));
        }
        match meshd_topology::Topology::load(&self.topology) {
            Err(e) => p.push(format!("mesh.topology: {e}")),
            Ok(t) if t.cluster(name).is_none() => p.push(format!(
                "mesh.topology: {} has no cluster named {name:?} (it names {})",
                self.topology.display(),
                t.clusters()
                    .map(|c| c.name.as_str().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Ok(_) => {}
        }
        let paths = meshd_certs::CertPaths::in_dir(&self.certs_dir, name);
        match meshd_certs::Loaded::from_files(&paths, meshd_certs::LoadPolicy::default()) {
            Err(e) => p.push(format!(
                "mesh.certs_dir: cannot load the certificate of cluster {name} from {}: {e}",
                self.certs_dir.display()
            )),
            Ok(l) if l.cluster != name => p.push(format!(
                "mesh.certs_dir: {} is the certificate of cluster {:?}, not {name:?}",
                paths.cert.display(),
                l.cluster
            )),
            Ok(_) => {}
        }
        p
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}

/// `[etcd]`: spawn one, or use given endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Run etcd-server as a child process.
    pub spawn: bool,
    /// The etcd binary (with `spawn`).
    #[serde(default = "default_etcd")]
    pub binary: PathBuf,
    /// Client port of the spawned etcd (0: a free port).
    #[serde(default)]
    pub client_port: u16,
    /// Peer port of the spawned etcd (0: a free port).
    #[serde(default)]
    pub peer_port: u16,
    /// `host:port` endpoints of an existing etcd (without `spawn`).
    #[serde(default)]
    pub endpoints: Vec<String>,
}

fn default_etcd() -> PathBuf {
    PathBuf::from("etcd")
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Raft members (3 recommended).
    pub members: u16,
    /// Member `i` (1-based) listens on `base_port + i - 1` (0: free ports).
    #[serde(default)]
    pub base_port: u16,
}

/// `[nodes]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesSection {
    /// How many runtime nodes (`node-1` ...).
    pub count: u16,
    /// Node `i` listens on `base_port + i - 1` (0: free ports).
    #[serde(default)]
    pub base_port: u16,
    /// `embedded` (a log private to the node: one node only), `pulsar://host:port` (a
    /// shared Pulsar), or `pulsar-lite` (a local test broker run by `cluster up`).
    /// Default: `embedded` for one node, `pulsar-lite` for more.
    #[serde(default)]
    pub store: Option<String>,
    /// Registry lease TTL of each node.
    #[serde(default = "default_ttl")]
    pub lease_ttl: String,
}

/// `nodes.store` naming the test broker `cluster up` runs.
pub const PULSAR_LITE: &str = "pulsar-lite";

/// The store a region's nodes run on, as the config decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionStore {
    /// Each node's embedded log (one node only).
    Embedded,
    /// A local pulsar-lite test broker, run as a child.
    PulsarLite,
    /// A shared store at this `--store` URL.
    Given(String),
}

impl NodesSection {
    /// The store the nodes run on.
    pub fn region_store(&self) -> RegionStore {
        match self.store.as_deref() {
            Some("embedded") => RegionStore::Embedded,
            Some(PULSAR_LITE) => RegionStore::PulsarLite,
            Some(url) => RegionStore::Given(url.to_string()),
            None if self.count <= 1 => RegionStore::Embedded,
            None => RegionStore::PulsarLite,
        }
    }
}

fn default_ttl() -> String {
    "5s".into()
}

/// `[proxies]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxiesSection {
    /// How many proxies (`proxy-1` ...); 0 is allowed.
    pub count: u16,
    /// Proxy `i` listens on `base_port + i - 1` (0: free ports).
    #[serde(default)]
    pub base_port: u16,
    /// Token file (see `meshd proxy token`); required unless `no_auth`.
    #[serde(default)]
    pub tokens: Option<PathBuf>,
    /// Serve without authentication (development only).
    #[serde(default)]
    pub no_auth: bool,
}

impl ClusterConfig {
    /// Reads and checks a config file; every problem is reported at once.
    pub fn load(path: &Path) -> anyhow::Result<ClusterConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: ClusterConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()
            .map_err(|problems| anyhow::anyhow!("{}: {}", path.display(), problems.join("; ")))?;
        Ok(cfg)
    }

    /// Checks values and port clashes.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if meshd_core::api::check_name("cluster", &self.name).is_err() || self.name.is_empty() {
            p.push(format!("name {:?} is not a valid cluster name", self.name));
        }
        if self.scheduler.members == 0 {
            p.push("scheduler.members must be at least 1".into());
        }
        if self.nodes.count == 0 {
            p.push("nodes.count must be at least 1".into());
        }
        if let Err(e) = meshd_core::duration::parse_positive(&self.nodes.lease_ttl) {
            p.push(format!("nodes.lease_ttl: {e}"));
        }
        match self.nodes.region_store() {
            RegionStore::Embedded if self.nodes.count > 1 => p.push(format!(
                "nodes.store = \"embedded\" with nodes.count = {}: an embedded store serves one node \
                 per cluster (each node's log is private, so events published to one node never reach \
                 a group owned by another); give store = \"pulsar://HOST:PORT\" (a shared Pulsar), \
                 leave store out to run a local pulsar-lite test broker, or set count = 1",
                self.nodes.count
            )),
            RegionStore::Given(url) => {
                if let Err(e) = url.parse::<meshd_node::server::StoreKind>() {
                    p.push(format!("nodes.store: {e} (or pulsar-lite)"));
                }
            }
            _ => {}
        }
        if let Some(mesh) = &self.mesh {
            p.extend(mesh.problems(&self.name, self.nodes.count));
        }
        if self.proxies.count > 0 && !self.proxies.no_auth && self.proxies.tokens.is_none() {
            p.push("proxies: give tokens = \"FILE\" or no_auth = true".into());
        }
        if self.etcd.spawn && !self.etcd.endpoints.is_empty() {
            p.push("etcd: give spawn = true or endpoints, not both".into());
        }
        if !self.etcd.spawn && self.etcd.endpoints.is_empty() {
            p.push("etcd: spawn = false needs endpoints = [\"host:port\", ...]".into());
        }
        for e in &self.etcd.endpoints {
            if e.contains("://") || !e.contains(':') {
                p.push(format!("etcd.endpoints: {e:?} is not host:port"));
            }
        }
        // Port clashes among fixed ports.
        let mut used: BTreeMap<u32, String> = BTreeMap::new();
        let mut claim = |port: u32, what: String, p: &mut Vec<String>| {
            if port == 0 {
                return;
            }
            if port > u32::from(u16::MAX) {
                p.push(format!("{what}: port {port} is out of range"));
            } else if let Some(other) = used.get(&port) {
                p.push(format!("port {port} is used by both {other} and {what}"));
            } else {
                used.insert(port, what);
            }
        };
        if self.etcd.spawn {
            claim(self.etcd.client_port.into(), "etcd client".into(), &mut p);
            claim(self.etcd.peer_port.into(), "etcd peer".into(), &mut p);
        }
        let ranges = [
            (
                "scheduler",
                self.scheduler.base_port,
                self.scheduler.members,
            ),
            ("node", self.nodes.base_port, self.nodes.count),
            ("proxy", self.proxies.base_port, self.proxies.count),
        ];
        for (role, base, n) in ranges {
            if base == 0 {
                continue;
            }
            for i in 0..u32::from(n) {
                claim(u32::from(base) + i, format!("{role} {}", i + 1), &mut p);
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }
}

fn port_of(base: u16, i: u16) -> anyhow::Result<u16> {
    if base == 0 {
        return free_port();
    }
    base.checked_add(i)
        .with_context(|| format!("port {base} + {i} is out of range"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The pulsar-lite broker: `$PULSAR_LITE_BINARY`, or the one the Python package
/// `pulsar-lite` ships (`pip install pulsar-lite`).
fn pulsar_lite_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PULSAR_LITE_BINARY") {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import pulsar_lite.binary_finder as b; print(b.find_pulsar_lite_binary())",
        ])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if p.is_file() {
                return Ok(p);
            }
            bail!(
                "the pulsar-lite package names {}, which is not a file",
                p.display()
            )
        }
        _ => bail!(
            "more than one node needs a shared store, and the local test broker is missing: \
             `python3 -m pip install pulsar-lite` (or set PULSAR_LITE_BINARY), or give \
             nodes.store = \"pulsar://HOST:PORT\""
        ),
    }
}

/// Runs a pulsar-lite broker (data in `DATA/pulsar-lite`) and waits until it listens;
/// returns its `pulsar://` URL.
async fn spawn_pulsar_lite(procs: &mut Procs, dir: &Path, host: &str) -> anyhow::Result<String> {
    let binary = pulsar_lite_binary()?;
    let db = dir.join("pulsar-lite");
    std::fs::create_dir_all(&db).with_context(|| format!("creating {}", db.display()))?;
    let addr = format!("{host}:{}", free_port()?);
    let args = vec![
        "--addr".to_string(),
        addr.clone(),
        "--db-path".to_string(),
        db.display().to_string(),
        "--log-level".to_string(),
        "warn".to_string(),
    ];
    procs
        .spawn(
            dir,
            ChildSpec {
                role: "pulsar-lite",
                id: "1".into(),
                program: binary,
                args,
                wait_url: false,
            },
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // A broker is ready when it accepts connections; there is no other signal to await.
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if let Some(p) = procs.last_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "pulsar-lite exited with {status} (see {}/logs/pulsar-lite-1.log)",
                    dir.display()
                );
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("pulsar-lite did not listen on {addr} within 30s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(format!("pulsar://{addr}"))
}

async fn wait_etcd(endpoints: &[String], cluster: &str) -> anyhow::Result<()> {
    use meshd_scheduler::registry::{EtcdConfig, EtcdRegistry, Registry};
    let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reg) = EtcdRegistry::connect(EtcdConfig::new(urls.clone(), cluster)).await {
            if reg.list_members().await.is_ok() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("etcd at {endpoints:?} did not answer within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The region's internal token ([`meshd_core::internal`]): `DATA_DIR/internal-token`, made
/// (mode 0600 from its creation) on the first start and reused after.
fn internal_token_file(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("internal-token");
    if !path.exists() {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    meshd_core::internal::InternalToken::load(&path)?;
    Ok(path)
}

async fn start_all(cfg: &ClusterConfig, procs: &mut Procs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meshd binary")?;
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let host = &cfg.host;
    let endpoints = if cfg.etcd.spawn {
        let client = format!("{host}:{}", port_of(cfg.etcd.client_port, 0)?);
        let peer = format!("http://{host}:{}", port_of(cfg.etcd.peer_port, 0)?);
        let args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://{client}"),
            format!("--advertise-client-urls=http://{client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
        ];
        procs
            .spawn(
                dir,
                ChildSpec {
                    role: "etcd",
                    id: "1".into(),
                    program: cfg.etcd.binary.clone(),
                    args,
                    wait_url: false,
                },
            )
            .await?;
        vec![client]
    } else {
        cfg.etcd.endpoints.clone()
    };
    let token_file = internal_token_file(dir)?;
    println!(
        "cluster {} internal-token {} (nodes take /v1 requests only with it: go through a proxy, or MESHD_TOKEN=$(cat FILE))",
        cfg.name,
        token_file.display()
    );
    wait_etcd(&endpoints, &cfg.name).await?;
    println!("cluster {} etcd {}", cfg.name, endpoints.join(","));
    let registry = format!("etcd://{}", endpoints.join(","));
    let store = match cfg.nodes.region_store() {
        RegionStore::Embedded => "embedded".to_string(),
        RegionStore::Given(url) => url,
        RegionStore::PulsarLite => {
            let url = spawn_pulsar_lite(procs, dir, host).await?;
            println!(
                "cluster {} store {url} (pulsar-lite: a local TEST broker run by cluster up for trying a region on one machine; production gives nodes.store = \"pulsar://...\" of an Apache Pulsar cluster)",
                cfg.name
            );
            url
        }
    };

    let peers: Vec<(u16, String)> = (0..cfg.scheduler.members)
        .map(|i| {
            Ok((
                i + 1,
                format!("{host}:{}", port_of(cfg.scheduler.base_port, i)?),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let peer_arg = peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    for (id, addr) in &peers {
        let args = vec![
            "scheduler".to_string(),
            format!("--id={id}"),
            format!("--listen={addr}"),
            format!("--peers={peer_arg}"),
            format!(
                "--data-dir={}",
                dir.join(format!("scheduler-{id}")).display()
            ),
            format!("--cluster={}", cfg.name),
            format!("--registry={registry}"),
        ];
        procs
            .spawn(
                dir,
                ChildSpec {
                    role: "scheduler",
                    id: id.to_string(),
                    program: exe.clone(),
                    args,
                    wait_url: true,
                },
            )
            .await?;
    }
    let mesh_args = match &cfg.mesh {
        None => Vec::new(),
        Some(m) => {
            let abs = |p: &Path| {
                std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))
            };
            let mut a = vec![
                format!("--topology={}", abs(&m.topology)?.display()),
                format!("--certs-dir={}", abs(&m.certs_dir)?.display()),
            ];
            if let Some(l) = m.bridge_listen {
                a.push(format!("--bridge-listen={l}"));
            }
            a
        }
    };
    for i in 0..cfg.nodes.count {
        let id = format!("node-{}", i + 1);
        let mut args = vec![
            "node".to_string(),
            format!("--listen={host}:{}", port_of(cfg.nodes.base_port, i)?),
            format!("--data-dir={}", dir.join(&id).display()),
            format!("--cluster={}", cfg.name),
            format!("--node-id={id}"),
            format!("--registry={registry}"),
            format!("--lease-ttl={}", cfg.nodes.lease_ttl),
            format!("--store={store}"),
            format!("--internal-token-file={}", token_file.display()),
        ];
        if cfg.mesh.as_ref().map(|m| m.bridge_node) == Some(i + 1) {
            args.extend(mesh_args.iter().cloned());
        }
        procs
            .spawn(
                dir,
                ChildSpec {
                    role: "node",
                    id: id.clone(),
                    program: exe.clone(),
                    args,
                    wait_url: true,
                },
            )
            .await?;
    }
    for i in 0..cfg.proxies.count {
        let id = format!("proxy-{}", i + 1);
        let mut args = vec![
            "proxy".to_string(),
            format!("--listen={host}:{}", port_of(cfg.proxies.base_port, i)?),
            format!("--cluster={}", cfg.name),
            format!("--proxy-id={id}"),
            format!("--registry={registry}"),
            format!("--internal-token-file={}", token_file.display()),
        ];
        if cfg.proxies.no_auth {
            args.push("--no-auth".into());
        }
        if let Some(t) = &cfg.proxies.tokens {
            args.push(format!("--tokens={}", t.display()));
        }
        procs
            .spawn(
                dir,
                ChildSpec {
                    role: "proxy",
                    id: id.clone(),
                    program: exe.clone(),
                    args,
                    wait_url: true,
                },
            )
            .await?;
    }
    Ok(())
}

/// Restarts crashed children until SIGTERM / Ctrl-C; prints the status table on SIGUSR1.
async fn supervise(cfg: &ClusterConfig, procs: &mut Procs) {
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    #[cfg(unix)]
    let mut usr1 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let mut tick = tokio::time::interval(crate::cluster_supervisor::CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let status = async {
            match usr1.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let status = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = &mut shutdown => return,
            _ = status => {
                println!("cluster {} status", cfg.name);
                procs.status_table().print();
            }
            _ = tick.tick() => {
                // A restart waits for the child's URL line (up to 60 s): a stop signal
                // meanwhile ends it (the half-started child is killed on drop).
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = procs.supervise(&cfg.data_dir) => {}
                }
            }
        }
    }
}

/// Runs `meshd cluster`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::ExecChild { .. } => {
            unreachable!("exec-child is handled before the runtime starts")
        }
        ClusterCommand::Check { config } => {
            let cfg = ClusterConfig::load(&config)?;
            let store = match cfg.nodes.region_store() {
                RegionStore::Embedded => "the embedded store".to_string(),
                RegionStore::PulsarLite => "a local pulsar-lite test broker".to_string(),
                RegionStore::Given(url) => url,
            };
            let mesh = match &cfg.mesh {
                Some(m) => format!(
                    "; joins the mesh of {} through node-{}'s bridge",
                    m.topology.display(),
                    m.bridge_node
                ),
                None => String::new(),
            };
            println!(
                "{}: cluster {} with {} scheduler members, {} nodes on {store}, {} proxies{mesh}",
                config.display(),
                cfg.name,
                cfg.scheduler.members,
                cfg.nodes.count,
                cfg.proxies.count
            );
            Ok(())
        }
        ClusterCommand::Up { config } => {
            let cfg = ClusterConfig::load(&config)?;
            let mut procs = Procs::default();
            let started = tokio::select! {
                r = start_all(&cfg, &mut procs) => r,
                _ = crate::shutdown_signal() => Err(anyhow::anyhow!("interrupted while starting")),
            };
            if let Err(e) = started {
                procs.stop_all().await;
                return Err(e);
            }
            println!("cluster {} up", cfg.name);
            procs.status_table().print();
            supervise(&cfg, &mut procs).await;
            procs.stop_all().await;
            println!("cluster {} down", cfg.name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "region-1"
data_dir = "/tmp/r1"
[etcd]
spawn = true
client_port = 2379
peer_port = 2380
[scheduler]
members = 3
base_port = 7800
[nodes]
count = 3
base_port = 7700
lease_ttl = "2s"
[proxies]
count = 2
base_port = 7600
no_auth = true
"#;

    fn parse(s: &str) -> Result<ClusterConfig, String> {
        let cfg: ClusterConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|p| p.join("; "))?;
        Ok(cfg)
    }

    #[test]
    fn the_documented_region_parses() {
        let cfg = parse(GOOD).expect("valid");
        assert_eq!(cfg.nodes.count, 3);
        assert_eq!(cfg.nodes.region_store(), RegionStore::PulsarLite);
        let docs = include_str!("../docs/operations.md");
        let example = docs
            .split("```toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("a toml example in docs/operations.md");
        let cfg = parse(example).expect("the docs' example region is valid");
        assert!(cfg.nodes.count > 1);
        assert_ne!(cfg.nodes.region_store(), RegionStore::Embedded);
    }

    #[test]
    fn the_store_follows_the_node_count() {
        let one = parse(&GOOD.replace("count = 3", "count = 1")).expect("valid");
        assert_eq!(one.nodes.region_store(), RegionStore::Embedded);
        let given = GOOD.replace("lease_ttl", "store = \"pulsar://p:6650\"\nlease_ttl");
        assert_eq!(
            parse(&given).expect("valid").nodes.region_store(),
            RegionStore::Given("pulsar://p:6650".into())
        );
        let lite = GOOD.replace("lease_ttl", "store = \"pulsar-lite\"\nlease_ttl");
        assert_eq!(
            parse(&lite).expect("valid").nodes.region_store(),
            RegionStore::PulsarLite
        );
        let emb1 = GOOD.replace("count = 3", "count = 1\nstore = \"embedded\"");
        assert!(parse(&emb1).is_ok());
        let emb3 = GOOD.replace("count = 3", "count = 3\nstore = \"embedded\"");
        let e = parse(&emb3).unwrap_err();
        assert!(
            e.contains("embedded store serves one node per cluster")
                && e.contains("pulsar://HOST:PORT")
                && e.contains("never reach a group owned by another"),
            "{e}"
        );
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let unknown = GOOD.replace("count = 3", "count = 3\nreplicas = 2");
        assert!(parse(&unknown).unwrap_err().contains("replicas"));
        let missing = GOOD.replace("members = 3\n", "");
        assert!(parse(&missing).unwrap_err().contains("members"));
        let zero = GOOD.replace("count = 3", "count = 0");
        assert!(parse(&zero).unwrap_err().contains("nodes.count"));
        let clash = GOOD.replace("base_port = 7600", "base_port = 7702");
        let e = parse(&clash).unwrap_err();
        assert!(
            e.contains("port 7702 is used by both node 3 and proxy 1"),
            "{e}"
        );
        let etcd_clash = GOOD.replace("client_port = 2379", "client_port = 7801");
        assert!(parse(&etcd_clash).unwrap_err().contains("7801"));
        let ttl = GOOD.replace("\"2s\"", "\"soon\"");
        assert!(parse(&ttl).unwrap_err().contains("lease_ttl"));
        // The one duration syntax: a bare number is refused, fractions work.
        let bare = GOOD.replace("\"2s\"", "\"2\"");
        let e = parse(&bare).unwrap_err();
        assert!(e.contains("lease_ttl") && e.contains("add a unit"), "{e}");
        assert!(parse(&GOOD.replace("\"2s\"", "\"1.5s\"")).is_ok());
        let store = GOOD.replace("lease_ttl", "store = \"kafka://x\"\nlease_ttl");
        assert!(parse(&store).unwrap_err().contains("nodes.store"));
        let auth = GOOD.replace("no_auth = true", "");
        assert!(parse(&auth).unwrap_err().contains("no_auth"));
    }
}
