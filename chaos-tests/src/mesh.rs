//! A mesh of real `meshd` processes for chaos runs: per cluster one runtime node with its
//! federation bridge (a cluster is one node today) and optional stateless proxies in front
//! of it (`meshd proxy --nodes`). Certificates come from `meshd certs`, the topology is
//! written here, and every cluster's advertised bridge address is a [`LinkEmulator`] in
//! front of its real one (delay/jitter on every link).
//!
//! Options: one cluster can run as a real cluster ([`MeshOptions::control_plane`]: 3 etcd
//! members, 3 scheduler members, 2 nodes joined through etcd, proxies finding nodes in
//! etcd, all in its namespace; faults: kill/restart a scheduler member or an etcd member,
//! make etcd unreachable), and clusters can run on a faked wall clock
//! ([`MeshOptions::faked_clocks`]: libfaketime, stepped while running with
//! [`Mesh::set_clock`]).
//!
//! With network namespaces ([`Mode::Netns`]) each cluster runs in its own namespace at
//! `10.77.S.(i+1)` and link faults are nftables rules; without them ([`Mode::Loopback`])
//! everything runs on 127.0.0.1 and the emulators do the faults. Processes are killed on
//! drop, before the namespaces are removed.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::emu::{LinkEmulator, LinkShape};
use crate::net::NetLab;
use crate::ChaosError;

/// Where the mesh runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One network namespace per cluster; faults by nftables.
    Netns,
    /// Everything on 127.0.0.1; faults by the userspace emulators.
    Loopback,
}

impl Mode {
    /// `netns` or `loopback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netns => "netns",
            Mode::Loopback => "loopback",
        }
    }
}

/// What mesh to build.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Cluster names (A-Z a-z 0-9 . _ -).
    pub clusters: Vec<String>,
    /// Links (pairs of cluster names).
    pub links: Vec<(String, String)>,
    /// Delay, jitter, loss on every link (each direction).
    pub shape: LinkShape,
    /// Proxies per cluster (0: none).
    pub proxies: usize,
    /// Never use namespaces (also set by `MESHD_CHAOS_LOOPBACK=1`).
    pub force_loopback: bool,
    /// Clusters whose processes run with a faked wall clock: cluster → initial libfaketime
    /// offset (`+2h`, `-3m`, `+1d`). Each such process gets `LD_PRELOAD` of
    /// [`libfaketime`] reading its offset from a file [`Mesh::set_clock`] rewrites (a clock
    /// step, applied within about a second); only `CLOCK_REALTIME` is faked
    /// (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as an NTP step or a wrong clock would.
    pub faked_clocks: BTreeMap<String, String>,
    /// A cluster that runs as a real cluster rather than one node: a 3-member etcd
    /// cluster, 3 scheduler members, a pulsar-lite broker both nodes share (a cluster
    /// with more than one node runs on a shared store), `node-1` (with the bridge) and
    /// `node-2` joined through `--registry etcd://...`, and its proxies finding the nodes
    /// in etcd — all in that cluster's namespace. Needs the `etcd` binary (Debian
    /// `etcd-server`) and pulsar-lite (`pip install pulsar-lite`).
    pub control_plane: Option<String>,
}

impl MeshOptions {
    /// A line of clusters `a - b - c ...` with 10 ms ± 2 ms one-way delay on every link.
    pub fn line(clusters: &[&str]) -> MeshOptions {
        MeshOptions {
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            links: clusters
                .windows(2)
                .map(|w| (w[0].to_string(), w[1].to_string()))
                .collect(),
            shape: LinkShape {
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(2),
                loss_percent: 0,
            },
            proxies: 0,
            force_loopback: false,
            faked_clocks: BTreeMap::new(),
            control_plane: None,
        }
    }
}

/// The path of the `meshd` binary: `$MESHD_BIN`, else `meshd` in the target directory of
/// the running test (`target/debug/deps/x` → `target/debug/meshd`), else
/// `target/debug/meshd` of this workspace. Build it first: `cargo build --bin meshd`
/// (`cargo test --workspace` does).
pub fn meshd_bin() -> Result<PathBuf, ChaosError> {
    if let Some(p) = std::env::var_os("MESHD_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ChaosError::NoBinary(p))
        };
    }
    let beside_test = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.ends_with("deps") {
            dir.parent()?
        } else {
            dir
        };
        Some(dir.join("meshd"))
    });
    if let Some(p) = beside_test.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/meshd");
    if p.is_file() {
        Ok(p)
    } else {
        Err(ChaosError::NoBinary(p))
    }
}

/// The libfaketime preload library (Debian package `faketime`), or `$MESHD_FAKETIME_LIB`;
/// None when it is not installed.
pub fn libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESHD_FAKETIME_LIB") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// The environment that makes a process read its wall clock through libfaketime with the
/// offset in `file` (re-read every second; monotonic clocks untouched).
fn faketime_env(lib: &Path, file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// One process (`meshd`, or another program such as `etcd`), restartable with the same
/// arguments, killed on drop.
pub struct Proc {
    name: String,
    /// The program (None: the `meshd` binary).
    program: Option<PathBuf>,
    args: Vec<String>,
    namespace: Option<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Its HTTP base URL.
    pub url: String,
}

impl Proc {
    fn new(
        name: &str,
        args: Vec<String>,
        namespace: Option<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        url: String,
    ) -> Proc {
        Proc {
            name: name.to_string(),
            program: None,
            args,
            namespace,
            env,
            log,
            child: None,
            url,
        }
    }

    /// Runs `program` instead of `meshd`; it is up once spawned (the caller checks
    /// readiness its own way) and its stdout goes to its log.
    fn with_program(mut self, program: PathBuf) -> Proc {
        self.program = Some(program);
        self
    }

    /// Starts the process and waits for its URL line (a `meshd` process), or only spawns
    /// it (another program).
    pub fn start(&mut self) -> Result<(), ChaosError> {
        if self.child.is_some() {
            return Ok(());
        }
        let bin = match &self.program {
            Some(p) => p.clone(),
            None => meshd_bin()?,
        };
        let mut cmd = match &self.namespace {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ChaosError::Io(format!("opening {}: {e}", self.log.display())))?;
        if self.program.is_some() {
            let out = log
                .try_clone()
                .map_err(|e| ChaosError::Io(format!("log of {}: {e}", self.name)))?;
            let child = cmd
                .args(&self.args)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(|e| ChaosError::Io(format!("spawning {}: {e}", self.name)))?;
            self.child = Some(child);
            return Ok(());
        }
        let mut child = cmd
            .args(&self.args)
            // The harness's sinks live on loopback or on the namespaces' private
            // addresses; the webhook rules refuse both by default.
            .env("MESHD_WEBHOOK_ALLOW_LOOPBACK", "true")
            .env("MESHD_WEBHOOK_ALLOW_PRIVATE", "true")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "MESHD_LOG",
                std::env::var("MESHD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| ChaosError::Io(format!("spawning {}: {e}", self.name)))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChaosError::Io("no stdout".into()));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with("cluster ") && line.contains("http://") {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => {
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ChaosError::Start {
                    name: self.name.clone(),
                    log: self.log.clone(),
                })
            }
        }
    }

    /// Whether it was started and not stopped.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, sig: &str) -> Result<(), ChaosError> {
        let Some(c) = &self.child else {
            return Err(ChaosError::Io(format!("{} is not running", self.name)));
        };
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &c.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(ChaosError::Io(format!("kill -{sig} {}", self.name)))
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL); whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One cluster's processes.
pub struct ClusterProcs {
    /// Its proxies.
    pub proxies: Vec<Proc>,
    /// The runtime node (+ bridge), `node-1`.
    pub node: Proc,
    /// More runtime nodes (`node-2`, ...; a control-plane cluster only).
    pub more_nodes: Vec<Proc>,
    /// Scheduler members 1..=3 (a control-plane cluster only).
    pub schedulers: Vec<Proc>,
    /// etcd members 1..=3 (a control-plane cluster only).
    pub etcd: Vec<Proc>,
    /// The pulsar-lite broker the nodes share and its address (a control-plane cluster
    /// only).
    pub store: Option<(Proc, SocketAddr)>,
}

/// A running mesh. Field order matters: processes drop before emulators and namespaces.
pub struct Mesh {
    clusters: BTreeMap<String, ClusterProcs>,
    emus: BTreeMap<String, LinkEmulator>,
    lab: Option<NetLab>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    index: BTreeMap<String, usize>,
    advertised: BTreeMap<String, SocketAddr>,
    links: Vec<(String, String)>,
    shape: LinkShape,
    /// Per cluster with a faked clock: the preload library and the offset file.
    clock_files: BTreeMap<String, (PathBuf, PathBuf)>,
    /// The control-plane cluster, if any.
    control: Option<ControlPlane>,
    /// Where it runs.
    pub mode: Mode,
    /// Remarks for reports (e.g. why it fell back to loopback).
    pub notes: Vec<String>,
}

/// Where the control plane of the control-plane cluster listens.
struct ControlPlane {
    cluster: String,
    etcd_clients: Vec<SocketAddr>,
    etcd_observers: Vec<SocketAddr>,
    registry: String,
}

/// The control-plane processes of one cluster, not started.
struct ControlPlaneProcs {
    etcd: Vec<Proc>,
    etcd_clients: Vec<SocketAddr>,
    etcd_observers: Vec<SocketAddr>,
    schedulers: Vec<Proc>,
    nodes: Vec<Proc>,
    registry: String,
    /// The pulsar-lite broker and its address.
    store: (Proc, SocketAddr),
}

/// The `etcd` binary: `$MESHD_ETCD_BIN`, else `etcd` on the PATH or `/usr/bin/etcd`.
pub fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESHD_ETCD_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
}

/// The pulsar-lite broker: `$PULSAR_LITE_BINARY`, or the one its Python package ships.
pub fn pulsar_lite_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PULSAR_LITE_BINARY") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import pulsar_lite.binary_finder as b; print(b.find_pulsar_lite_binary())",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|p| p.is_file())
}

/// Three etcd members, three scheduler members, the pulsar-lite broker and `node-2` of
/// cluster `c` at `ip` (fixed ports in a namespace, free loopback ports otherwise).
fn control_plane_procs(
    c: &str,
    ip: IpAddr,
    ns: Option<String>,
    env: &[(String, String)],
    dir: &Path,
    fixed_ports: bool,
) -> Result<ControlPlaneProcs, ChaosError> {
    let etcd = etcd_bin().ok_or_else(|| {
        ChaosError::Io("etcd not found (apt-get install etcd-server, or MESHD_ETCD_BIN)".into())
    })?;
    let pulsar_lite = pulsar_lite_bin().ok_or_else(|| {
        ChaosError::Io(
            "pulsar-lite not found (python3 -m pip install pulsar-lite, or PULSAR_LITE_BINARY)"
                .into(),
        )
    })?;
    let port = |fixed: u16| -> Result<u16, ChaosError> {
        if fixed_ports {
            Ok(fixed)
        } else {
            free_tcp_port()
        }
    };
    let mut clients = Vec::new();
    let mut observers = Vec::new();
    let mut peers = Vec::new();
    for k in 0..3u16 {
        clients.push(SocketAddr::new(ip, port(23790 + k)?));
        observers.push(SocketAddr::new(ip, port(23795 + k)?));
        peers.push(SocketAddr::new(ip, port(23800 + k)?));
    }
    let initial = peers
        .iter()
        .enumerate()
        .map(|(k, p)| format!("etcd-{}=http://{p}", k + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd_procs = Vec::new();
    for k in 0..3 {
        let name = format!("etcd-{}", k + 1);
        let data = dir.join(format!("{c}-{name}"));
        let args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", path_str(&data)?),
            // A second client listener for the test's own look-ups (its JSON gateway
            // dials this same port), left open when the clients' port is cut.
            format!(
                "--listen-client-urls=http://{},http://{}",
                clients[k], observers[k]
            ),
            format!("--advertise-client-urls=http://{}", clients[k]),
            format!("--listen-peer-urls=http://{}", peers[k]),
            format!("--initial-advertise-peer-urls=http://{}", peers[k]),
            format!("--initial-cluster={initial}"),
            "--initial-cluster-state=new".into(),
            "--initial-cluster-token=meshd-chaos".into(),
            // Short raft timers: fast elections, lease minimum below 1 s.
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ];
        etcd_procs.push(
            Proc::new(
                &format!("{c}/{name}"),
                args,
                ns.clone(),
                Vec::new(),
                dir.join(format!("{c}-{name}.log")),
                format!("http://{}", observers[k]),
            )
            .with_program(etcd.clone()),
        );
    }
    let registry = format!(
        "etcd://{}",
        clients
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut sched_addrs = Vec::new();
    for k in 0..3u16 {
        sched_addrs.push(SocketAddr::new(ip, port(7810 + k)?));
    }
    let peer_arg = sched_addrs
        .iter()
        .enumerate()
        .map(|(k, a)| format!("{}={a}", k + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut schedulers = Vec::new();
    for (k, addr) in sched_addrs.iter().enumerate() {
        let id = (k + 1).to_string();
        let data = dir.join(format!("{c}-sched-{id}"));
        let args: Vec<String> = [
            "scheduler",
            "--id",
            &id,
            "--listen",
            &addr.to_string(),
            "--peers",
            &peer_arg,
            "--cluster",
            c,
            "--registry",
            &registry,
            "--heartbeat-ms",
            "50",
            "--election-timeout-ms",
            "300",
            "--data-dir",
            path_str(&data)?,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        schedulers.push(Proc::new(
            &format!("{c}/sched-{id}"),
            args,
            ns.clone(),
            env.to_vec(),
            dir.join(format!("{c}-sched-{id}.log")),
            format!("http://{addr}"),
        ));
    }
    let broker = SocketAddr::new(ip, port(6650)?);
    let db = dir.join(format!("{c}-pulsar-lite"));
    let store = Proc::new(
        &format!("{c}/pulsar-lite"),
        vec![
            "--addr".into(),
            broker.to_string(),
            "--db-path".into(),
            path_str(&db)?.to_string(),
            "--log-level".into(),
            "warn".into(),
        ],
        ns.clone(),
        Vec::new(),
        dir.join(format!("{c}-pulsar-lite.log")),
        format!("pulsar://{broker}"),
    )
    .with_program(pulsar_lite);
    let http2 = SocketAddr::new(ip, port(7701)?);
    let data = dir.join(format!("data-{c}-node-2"));
    let args: Vec<String> = [
        "node",
        "--listen",
        &http2.to_string(),
        "--data-dir",
        path_str(&data)?,
        "--cluster",
        c,
        "--node-id",
        "node-2",
        "--registry",
        &registry,
        "--lease-ttl",
        "2s",
        "--store",
        &format!("pulsar://{broker}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let nodes = vec![Proc::new(
        &format!("{c}/node-2"),
        args,
        ns,
        env.to_vec(),
        dir.join(format!("{c}-node-2.log")),
        format!("http://{http2}"),
    )];
    Ok(ControlPlaneProcs {
        etcd: etcd_procs,
        etcd_clients: clients,
        etcd_observers: observers,
        schedulers,
        nodes,
        registry,
        store: (store, broker),
    })
}

fn free_tcp_port() -> Result<u16, ChaosError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ChaosError::Io(format!("free tcp port: {e}")))
}

fn free_udp_port() -> Result<u16, ChaosError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| ChaosError::Io(format!("free udp port: {e}")))
}

fn meshd_cli(args: &[&str]) -> Result<(), ChaosError> {
    let out = Command::new(meshd_bin()?)
        .args(args)
        .output()
        .map_err(|e| ChaosError::Io(format!("meshd {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Io(format!(
            "meshd {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Writes a libfaketime offset (`+2h`) to `file` atomically (write, then rename), so a
/// process re-reading it never sees it half written.
fn write_clock(file: &Path, offset: &str) -> Result<(), ChaosError> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n"))
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| ChaosError::Io(format!("writing {}: {e}", file.display())))
}

fn path_str(p: &Path) -> Result<&str, ChaosError> {
    p.to_str()
        .ok_or_else(|| ChaosError::Io(format!("not UTF-8: {}", p.display())))
}

impl Mesh {
    /// Builds and starts the mesh (namespaces when possible), waits until every process
    /// is ready. Removes stale namespaces of earlier runs first.
    pub async fn start(opts: MeshOptions) -> Result<Mesh, ChaosError> {
        crate::init_tls();
        let mut notes = Vec::new();
        let want_loopback =
            opts.force_loopback || std::env::var("MESHD_CHAOS_LOOPBACK").is_ok_and(|v| v == "1");
        let lab = if want_loopback {
            notes.push("loopback forced (MESHD_CHAOS_LOOPBACK=1 or option)".to_string());
            None
        } else {
            NetLab::cleanup_stale();
            match NetLab::available().and_then(|()| NetLab::new(opts.clusters.len())) {
                Ok(lab) => Some(lab),
                Err(e) => {
                    notes.push(format!("fell back to loopback: {e}"));
                    None
                }
            }
        };
        let mode = if lab.is_some() {
            Mode::Netns
        } else {
            Mode::Loopback
        };
        let dir = tempfile::Builder::new()
            .prefix("meshd-chaos-")
            .tempdir()
            .map_err(|e| ChaosError::Io(format!("tempdir: {e}")))?;
        let ca = dir.path().join("ca");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).map_err(|e| ChaosError::Io(e.to_string()))?;
        meshd_cli(&[
            "certs",
            "init",
            "--dir",
            path_str(&ca)?,
            "--mesh",
            "chaos",
            "--days",
            "2",
        ])?;
        std::fs::copy(ca.join("ca.pem"), certs.join("ca.pem"))
            .map_err(|e| ChaosError::Io(format!("copying ca.pem: {e}")))?;

        let host_ip: IpAddr = match &lab {
            Some(l) => IpAddr::V4(l.host_ip()),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let mut index = BTreeMap::new();
        let mut bind = BTreeMap::new();
        let mut http = BTreeMap::new();
        let mut proxy_addrs: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        let mut emus = BTreeMap::new();
        let mut advertised = BTreeMap::new();
        for (i, c) in opts.clusters.iter().enumerate() {
            meshd_cli(&[
                "certs",
                "issue",
                "--dir",
                path_str(&ca)?,
                "--cluster",
                c,
                "--out",
                path_str(&certs)?,
                "--days",
                "2",
            ])?;
            index.insert(c.clone(), i);
            let (b, h, p): (SocketAddr, SocketAddr, Vec<SocketAddr>) = match &lab {
                Some(l) => {
                    let ip = IpAddr::V4(l.ip(i));
                    (
                        SocketAddr::new(ip, 7900),
                        SocketAddr::new(ip, 7700),
                        (0..opts.proxies)
                            .map(|k| SocketAddr::new(ip, 7800 + k as u16))
                            .collect(),
                    )
                }
                None => {
                    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
                    let mut p = Vec::new();
                    for _ in 0..opts.proxies {
                        p.push(SocketAddr::new(ip, free_tcp_port()?));
                    }
                    (
                        SocketAddr::new(ip, free_udp_port()?),
                        SocketAddr::new(ip, free_tcp_port()?),
                        p,
                    )
                }
            };
            let emu = LinkEmulator::start(SocketAddr::new(host_ip, 0), b, opts.shape)?;
            advertised.insert(c.clone(), emu.front());
            emus.insert(c.clone(), emu);
            bind.insert(c.clone(), b);
            http.insert(c.clone(), h);
            proxy_addrs.insert(c.clone(), p);
        }
        let topology = dir.path().join("mesh.toml");
        let mut t = String::from("[mesh]\nname = \"chaos\"\n");
        for (i, c) in opts.clusters.iter().enumerate() {
            t.push_str(&format!(
                "\n[[cluster]]\nname = \"{c}\"\nregion = \"r{i}\"\ncloud = \"chaos\"\nbridge = \"{}\"\nproxy = \"http://{}\"\n",
                advertised[c], http[c]
            ));
        }
        for (a, b) in &opts.links {
            t.push_str(&format!(
                "\n[[link]]\nbetween = [\"{a}\", \"{b}\"]\ncost = 1\n"
            ));
        }
        std::fs::write(&topology, t).map_err(|e| ChaosError::Io(format!("topology: {e}")))?;

        // Faked clocks: one offset file per cluster, read by libfaketime in its processes.
        let mut clock_files = BTreeMap::new();
        let mut envs: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        if !opts.faked_clocks.is_empty() {
            let lib = libfaketime().ok_or(ChaosError::NoFaketime)?;
            for (c, offset) in &opts.faked_clocks {
                if !index.contains_key(c) {
                    return Err(ChaosError::NoCluster(c.clone()));
                }
                let file = dir.path().join(format!("clock-{c}"));
                write_clock(&file, offset)?;
                envs.insert(c.clone(), faketime_env(&lib, &file));
                clock_files.insert(c.clone(), (lib.clone(), file));
            }
        }

        let mut clusters = BTreeMap::new();
        for (i, c) in opts.clusters.iter().enumerate() {
            let env = envs.get(c).cloned().unwrap_or_default();
            let ns = lab
                .as_ref()
                .and_then(|l| l.namespace(i))
                .map(str::to_string);
            let data = dir.path().join(format!("data-{c}"));
            let node_args: Vec<String> = [
                "node",
                "--listen",
                &http[c].to_string(),
                "--data-dir",
                path_str(&data)?,
                "--cluster",
                c,
                "--node-id",
                "node-1",
                "--topology",
                path_str(&topology)?,
                "--certs-dir",
                path_str(&certs)?,
                "--bridge-listen",
                &bind[c].to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let node = Proc::new(
                &format!("{c}/node-1"),
                node_args,
                ns.clone(),
                env.clone(),
                dir.path().join(format!("{c}-node-1.log")),
                format!("http://{}", http[c]),
            );
            let mut proxies = Vec::new();
            for (k, addr) in proxy_addrs[c].iter().enumerate() {
                let args: Vec<String> = [
                    "proxy",
                    "--listen",
                    &addr.to_string(),
                    "--cluster",
                    c,
                    "--proxy-id",
                    &format!("proxy-{}", k + 1),
                    "--nodes",
                    &format!("http://{}", http[c]),
                    "--no-auth",
                    "--deadline-ms",
                    "2000",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                proxies.push(Proc::new(
                    &format!("{c}/proxy-{}", k + 1),
                    args,
                    ns.clone(),
                    env.clone(),
                    dir.path().join(format!("{c}-proxy-{}.log", k + 1)),
                    format!("http://{addr}"),
                ));
            }
            clusters.insert(
                c.clone(),
                ClusterProcs {
                    proxies,
                    node,
                    more_nodes: Vec::new(),
                    schedulers: Vec::new(),
                    etcd: Vec::new(),
                    store: None,
                },
            );
        }
        let mut control = None;
        if let Some(c) = &opts.control_plane {
            let i = *index
                .get(c)
                .ok_or_else(|| ChaosError::NoCluster(c.clone()))?;
            let ip = match &lab {
                Some(l) => IpAddr::V4(l.ip(i)),
                None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            };
            let ns = lab
                .as_ref()
                .and_then(|l| l.namespace(i))
                .map(str::to_string);
            let env = envs.get(c).cloned().unwrap_or_default();
            let cp = control_plane_procs(c, ip, ns, &env, dir.path(), lab.is_some())?;
            let procs = clusters
                .get_mut(c)
                .ok_or_else(|| ChaosError::NoCluster(c.clone()))?;
            // node-1 joins the cluster through etcd, on the shared store; the proxies find
            // nodes there.
            procs.node.args.extend([
                "--registry".to_string(),
                cp.registry.clone(),
                "--lease-ttl".to_string(),
                "2s".to_string(),
                "--store".to_string(),
                format!("pulsar://{}", cp.store.1),
            ]);
            for p in &mut procs.proxies {
                if let Some(k) = p.args.iter().position(|a| a == "--nodes") {
                    p.args[k] = "--registry".into();
                    p.args[k + 1] = cp.registry.clone();
                }
            }
            procs.more_nodes = cp.nodes;
            procs.schedulers = cp.schedulers;
            procs.etcd = cp.etcd;
            procs.store = Some(cp.store);
            control = Some(ControlPlane {
                cluster: c.clone(),
                etcd_clients: cp.etcd_clients,
                etcd_observers: cp.etcd_observers,
                registry: cp.registry,
            });
        }
        let dir_path = dir.path().to_path_buf();
        let mut mesh = Mesh {
            clusters,
            emus,
            lab,
            dir: Some(dir),
            dir_path,
            index,
            advertised,
            links: opts.links.clone(),
            shape: opts.shape,
            clock_files,
            control,
            mode,
            notes,
        };
        let names: Vec<String> = mesh.clusters.keys().cloned().collect();
        for c in &names {
            let mut started = Ok(());
            if mesh.control_plane() == Some(c.as_str()) {
                started = mesh.start_control_plane(c).await;
            }
            if started.is_ok() {
                started = mesh.start_node(c).await;
            }
            let more = mesh.clusters.get(c).map_or(0, |p| p.more_nodes.len());
            for k in 0..more {
                if started.is_ok() {
                    started = mesh.start_more_node(c, k).await;
                }
            }
            for k in 0..opts.proxies {
                if started.is_ok() {
                    started = mesh.start_proxy(c, k).await;
                }
            }
            if let Err(e) = started {
                // Keep the logs the error points to.
                mesh.clusters.clear();
                if let Some(d) = mesh.dir.take() {
                    let _ = d.keep();
                }
                return Err(e);
            }
        }
        Ok(mesh)
    }

    /// Cluster names.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// Links as declared.
    pub fn links(&self) -> &[(String, String)] {
        &self.links
    }

    /// The address sinks in the test process should bind (reachable from every cluster).
    pub fn host_ip(&self) -> IpAddr {
        match &self.lab {
            Some(l) => IpAddr::V4(l.host_ip()),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// The directory with logs, data, certs and topology.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    fn procs(&mut self, c: &str) -> Result<&mut ClusterProcs, ChaosError> {
        self.clusters
            .get_mut(c)
            .ok_or_else(|| ChaosError::NoCluster(c.to_string()))
    }

    /// The node URL of cluster `c` (stable across restarts).
    pub fn node_url(&self, c: &str) -> Result<String, ChaosError> {
        self.clusters
            .get(c)
            .map(|p| p.node.url.clone())
            .ok_or_else(|| ChaosError::NoCluster(c.to_string()))
    }

    /// The proxy URLs of cluster `c`.
    pub fn proxy_urls(&self, c: &str) -> Vec<String> {
        self.clusters
            .get(c)
            .map(|p| p.proxies.iter().map(|x| x.url.clone()).collect())
            .unwrap_or_default()
    }

    /// Where clients of cluster `c` publish: its proxies, or its node when it has none.
    pub fn entry_urls(&self, c: &str) -> Vec<String> {
        let p = self.proxy_urls(c);
        if p.is_empty() {
            self.node_url(c).map(|u| vec![u]).unwrap_or_default()
        } else {
            p
        }
    }

    /// Starts (or restarts) the node of `c` and waits until `/readyz` answers 200.
    pub async fn start_node(&mut self, c: &str) -> Result<(), ChaosError> {
        let p = self.procs(c)?;
        tokio::task::block_in_place(|| p.node.start())?;
        let url = p.node.url.clone();
        crate::http::wait_ready(&url, Duration::from_secs(30)).await
    }

    /// `kill -9` of the node of `c`.
    pub fn kill_node(&mut self, c: &str) -> Result<(), ChaosError> {
        self.procs(c)?.node.kill9();
        Ok(())
    }

    /// SIGTERM to the node of `c`; whether it exited cleanly.
    pub fn terminate_node(&mut self, c: &str) -> Result<bool, ChaosError> {
        let p = self.procs(c)?;
        Ok(tokio::task::block_in_place(|| p.node.terminate()))
    }

    /// Starts proxy `k` of `c` and waits until it answers `/readyz`.
    pub async fn start_proxy(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        let p = self.procs(c)?;
        let Some(proxy) = p.proxies.get_mut(k) else {
            return Err(ChaosError::NoCluster(format!("{c}/proxy-{}", k + 1)));
        };
        tokio::task::block_in_place(|| proxy.start())?;
        let url = proxy.url.clone();
        crate::http::wait_ready(&url, Duration::from_secs(30)).await
    }

    /// `kill -9` of proxy `k` of `c`.
    pub fn kill_proxy(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        if let Some(p) = self.procs(c)?.proxies.get_mut(k) {
            p.kill9();
        }
        Ok(())
    }

    /// SIGTERM to proxy `k` of `c`.
    pub fn terminate_proxy(&mut self, c: &str, k: usize) -> Result<bool, ChaosError> {
        let p = self.procs(c)?;
        Ok(match p.proxies.get_mut(k) {
            Some(x) => tokio::task::block_in_place(|| x.terminate()),
            None => true,
        })
    }

    fn idx(&self, c: &str) -> Result<usize, ChaosError> {
        self.index
            .get(c)
            .copied()
            .ok_or_else(|| ChaosError::NoCluster(c.to_string()))
    }

    fn adv(&self, c: &str) -> Result<SocketAddr, ChaosError> {
        self.advertised
            .get(c)
            .copied()
            .ok_or_else(|| ChaosError::NoCluster(c.to_string()))
    }

    fn drop_between(&self, a: &str, b: &str, percent: Option<u32>) -> Result<(), ChaosError> {
        match &self.lab {
            Some(lab) => {
                lab.drop_udp(self.idx(a)?, self.adv(b)?, percent)?;
                lab.drop_udp(self.idx(b)?, self.adv(a)?, percent)?;
            }
            None => {
                for c in [a, b] {
                    let emu = self
                        .emus
                        .get(c)
                        .ok_or_else(|| ChaosError::NoCluster(c.to_string()))?;
                    match percent {
                        None => emu.cut(),
                        Some(p) => emu.set_shape(LinkShape {
                            loss_percent: p,
                            ..self.shape
                        }),
                    }
                }
            }
        }
        Ok(())
    }

    /// Partitions the link `a`–`b` (both directions, every datagram). In loopback mode the
    /// emulators in front of `a` and `b` cut everything into them (all their links).
    pub fn partition(&self, a: &str, b: &str) -> Result<(), ChaosError> {
        self.drop_between(a, b, None)
    }

    /// Drops `percent`% of datagrams between `a` and `b`, each direction.
    pub fn loss(&self, a: &str, b: &str, percent: u32) -> Result<(), ChaosError> {
        self.drop_between(a, b, Some(percent))
    }

    /// Removes every fault on `a` and `b` (rules or emulator state).
    pub fn heal(&self, a: &str, b: &str) -> Result<(), ChaosError> {
        match &self.lab {
            Some(lab) => {
                lab.clear_rules(self.idx(a)?)?;
                lab.clear_rules(self.idx(b)?)?;
            }
            None => {
                for c in [a, b] {
                    if let Some(emu) = self.emus.get(c) {
                        emu.heal();
                        emu.set_shape(self.shape);
                    }
                }
            }
        }
        Ok(())
    }

    /// The control-plane cluster ([`MeshOptions::control_plane`]), if any.
    pub fn control_plane(&self) -> Option<&str> {
        self.control.as_ref().map(|c| c.cluster.as_str())
    }

    fn cp(&self, c: &str) -> Result<&ControlPlane, ChaosError> {
        self.control
            .as_ref()
            .filter(|cp| cp.cluster == c)
            .ok_or_else(|| ChaosError::NoCluster(format!("{c} (not the control-plane cluster)")))
    }

    /// The `--registry` argument of the control-plane cluster `c` (`etcd://a,b,c`).
    pub fn registry(&self, c: &str) -> Result<String, ChaosError> {
        Ok(self.cp(c)?.registry.clone())
    }

    /// The etcd client URLs the cluster's processes use (member k at index k).
    pub fn etcd_urls(&self, c: &str) -> Result<Vec<String>, ChaosError> {
        Ok(self
            .cp(c)?
            .etcd_clients
            .iter()
            .map(|a| format!("http://{a}"))
            .collect())
    }

    /// Second client URLs of the same etcd members, for the test's own look-ups: left
    /// open by [`Mesh::etcd_unreachable`] (member k at index k).
    pub fn etcd_observer_urls(&self, c: &str) -> Result<Vec<String>, ChaosError> {
        Ok(self
            .cp(c)?
            .etcd_observers
            .iter()
            .map(|a| format!("http://{a}"))
            .collect())
    }

    /// Every runtime node of `c`: (node id, URL), `node-1` first.
    pub fn node_urls(&self, c: &str) -> Vec<(String, String)> {
        let Some(p) = self.clusters.get(c) else {
            return Vec::new();
        };
        std::iter::once(&p.node)
            .chain(p.more_nodes.iter())
            .map(|n| {
                let id = n.name.rsplit('/').next().unwrap_or_default().to_string();
                (id, n.url.clone())
            })
            .collect()
    }

    /// The scheduler member URLs of `c` (member id k+1 at index k).
    pub fn scheduler_urls(&self, c: &str) -> Vec<String> {
        self.clusters
            .get(c)
            .map(|p| p.schedulers.iter().map(|s| s.url.clone()).collect())
            .unwrap_or_default()
    }

    /// Starts etcd (waits until every member answers `/health`), the pulsar-lite broker
    /// (waits until it accepts connections), then the scheduler members (waits until one
    /// leads) of the control-plane cluster `c`.
    async fn start_control_plane(&mut self, c: &str) -> Result<(), ChaosError> {
        let broker_log = self.dir_path.join(format!("{c}-pulsar-lite.log"));
        let p = self.procs(c)?;
        for e in &mut p.etcd {
            e.start()?;
        }
        if let Some((broker, addr)) = &mut p.store {
            broker.start()?;
            let addr = *addr;
            let deadline = Instant::now() + Duration::from_secs(30);
            // A broker is ready when it accepts connections; nothing else to await.
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if Instant::now() > deadline {
                    return Err(ChaosError::Start {
                        name: format!("{c}/pulsar-lite"),
                        log: broker_log,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for k in 0..3 {
            self.wait_etcd(c, k).await?;
        }
        for k in 0..self.procs(c)?.schedulers.len() {
            self.start_scheduler(c, k).await?;
        }
        let urls = self.scheduler_urls(c);
        let client = crate::http::client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::control_plane::scheduler_leader(&client, &urls)
            .await
            .is_none()
        {
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout(format!("a scheduler leader in {c}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn wait_etcd(&self, c: &str, k: usize) -> Result<(), ChaosError> {
        let url = self
            .etcd_observer_urls(c)?
            .get(k)
            .cloned()
            .ok_or_else(|| ChaosError::NoCluster(format!("{c}/etcd-{}", k + 1)))?;
        let client = crate::http::client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = crate::http::get_json(&client, &format!("{url}/health")).await {
                if v["health"] == "true" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Start {
                    name: format!("{c}/etcd-{}", k + 1),
                    log: self.dir_path.join(format!("{c}-etcd-{}.log", k + 1)),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (or restarts) etcd member `k` (0-based) of `c` and waits until it answers
    /// `/health` (it has rejoined a cluster with a leader).
    pub async fn start_etcd(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        let p = self.procs(c)?;
        let Some(e) = p.etcd.get_mut(k) else {
            return Err(ChaosError::NoCluster(format!("{c}/etcd-{}", k + 1)));
        };
        e.start()?;
        self.wait_etcd(c, k).await
    }

    /// `kill -9` of etcd member `k` (0-based) of `c`.
    pub fn kill_etcd(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        if let Some(e) = self.procs(c)?.etcd.get_mut(k) {
            e.kill9();
        }
        Ok(())
    }

    /// Makes etcd of the control-plane cluster `c` unreachable for its clients (nodes,
    /// proxies, schedulers) while the members still reach each other: in a namespace an
    /// nftables rule drops TCP to the client ports (connections hang); on loopback every
    /// member is frozen (SIGSTOP). Undo with [`Mesh::etcd_reachable`].
    pub fn etcd_unreachable(&self, c: &str) -> Result<(), ChaosError> {
        let cp = self.cp(c)?;
        match &self.lab {
            Some(lab) => {
                let ports: Vec<u16> = cp.etcd_clients.iter().map(|a| a.port()).collect();
                lab.drop_tcp_to(self.idx(c)?, &ports)?;
            }
            None => {
                for e in &self.clusters[c].etcd {
                    e.signal("STOP")?;
                }
            }
        }
        Ok(())
    }

    /// Undoes [`Mesh::etcd_unreachable`].
    pub fn etcd_reachable(&self, c: &str) -> Result<(), ChaosError> {
        self.cp(c)?;
        match &self.lab {
            Some(lab) => lab.clear_rules(self.idx(c)?)?,
            None => {
                for e in &self.clusters[c].etcd {
                    e.signal("CONT")?;
                }
            }
        }
        Ok(())
    }

    /// Starts (or restarts) scheduler member `k` (0-based; Raft id k+1) of `c` and waits
    /// until it answers `/healthz`.
    pub async fn start_scheduler(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        let p = self.procs(c)?;
        let Some(s) = p.schedulers.get_mut(k) else {
            return Err(ChaosError::NoCluster(format!("{c}/sched-{}", k + 1)));
        };
        tokio::task::block_in_place(|| s.start())?;
        let url = s.url.clone();
        let client = crate::http::client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(client.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success())
        {
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout(format!("{url}/healthz")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// `kill -9` of scheduler member `k` (0-based) of `c`.
    pub fn kill_scheduler(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        if let Some(s) = self.procs(c)?.schedulers.get_mut(k) {
            s.kill9();
        }
        Ok(())
    }

    /// Starts (or restarts) extra node `k` (`node-(k+2)`) of `c` and waits for `/readyz`.
    pub async fn start_more_node(&mut self, c: &str, k: usize) -> Result<(), ChaosError> {
        let p = self.procs(c)?;
        let Some(n) = p.more_nodes.get_mut(k) else {
            return Err(ChaosError::NoCluster(format!("{c}/node-{}", k + 2)));
        };
        tokio::task::block_in_place(|| n.start())?;
        let url = n.url.clone();
        crate::http::wait_ready(&url, Duration::from_secs(30)).await
    }

    /// Steps the faked wall clock of every process of `c` to `offset` from the real clock
    /// (libfaketime syntax: `+2h`, `-3m`, `+1d`); the processes see it within about a
    /// second (they re-read the file every second). Only for clusters started with
    /// [`MeshOptions::faked_clocks`].
    pub fn set_clock(&self, c: &str, offset: &str) -> Result<(), ChaosError> {
        let (_, file) = self
            .clock_files
            .get(c)
            .ok_or_else(|| ChaosError::NoCluster(format!("{c} (no faked clock)")))?;
        write_clock(file, offset)
    }

    /// The wall clock (Unix seconds) a process of cluster `c` sees now: `date +%s` run in
    /// its namespace with its clock environment (faked or not).
    pub fn clock_of(&self, c: &str) -> Result<i64, ChaosError> {
        let i = self.idx(c)?;
        let ns = self.lab.as_ref().and_then(|l| l.namespace(i));
        let mut cmd = match ns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "date", "+%s"]);
                cmd
            }
            None => {
                let mut cmd = Command::new("date");
                cmd.arg("+%s");
                cmd
            }
        };
        if let Some((lib, file)) = self.clock_files.get(c) {
            cmd.envs(faketime_env(lib, file));
        }
        let out = cmd
            .output()
            .map_err(|e| ChaosError::Io(format!("date in {c}: {e}")))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| ChaosError::Io(format!("date in {c}: {e}")))
    }

    /// The tail of a process log (for failure messages).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = self
            .dir_path
            .join(format!("{}.log", name.replace('/', "-")));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Processes first (they may live in the namespaces), then emulators and namespaces
        // (field order). When a test fails, keep the logs and data for a look.
        self.clusters.clear();
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "meshd-chaos: test failed; logs and data kept in {}",
                    d.keep().display()
                );
            }
        }
    }
}
