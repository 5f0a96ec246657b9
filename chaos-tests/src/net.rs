//! Network namespaces for chaos runs: one namespace per cluster (`meshd-chaos-PID-N-IDX`),
//! each joined by a veth pair to a Linux bridge in the root namespace that holds the
//! host address `10.77.S.254/24` (where the test process runs its sinks and link
//! emulators); cluster `i` gets `10.77.S.(i+1)`. Link faults are nftables rules inside a
//! cluster's namespace: drop (a partition) or `numgen random mod 100 < P` drop (loss).
//!
//! Everything is removed on drop (also on panic). Namespaces and bridges left behind by a
//! process that no longer runs are removed by [`NetLab::cleanup_stale`].

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Prefix of every namespace this crate creates.
pub const NS_PREFIX: &str = "meshd-chaos-";
const BRIDGE_PREFIX: &str = "mcb";

/// Why the network lab could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Namespaces are not available here (not root, no `ip`, no `nft`, or not permitted).
    #[error("network namespaces are not available: {0}")]
    Unavailable(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// No free 10.77.x.0/24 subnet.
    #[error("no free 10.77.x.0/24 subnet")]
    NoSubnet,
}

fn run(cmd: &[&str]) -> Result<String, NetError> {
    run_input(cmd, None)
}

fn run_input(cmd: &[&str], input: Option<&str>) -> Result<String, NetError> {
    use std::io::Write as _;
    let line = cmd.join(" ");
    let (prog, args) = cmd.split_first().ok_or_else(|| NetError::Command {
        command: String::new(),
        stderr: "empty command".into(),
    })?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command {
            command: line.clone(),
            stderr: e.to_string(),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetError::Command {
        command: line.clone(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A set of cluster namespaces on one bridge; removed on drop.
pub struct NetLab {
    id: String,
    bridge: String,
    subnet: u8,
    namespaces: Vec<String>,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
static SUBNET_LOCK: Mutex<()> = Mutex::new(());

impl NetLab {
    /// Checks that this process may create namespaces and nftables rules (root, `ip`,
    /// `nft`, and a probe namespace that really gets created).
    pub fn available() -> Result<(), NetError> {
        let uid = run(&["id", "-u"]).map_err(|e| NetError::Unavailable(e.to_string()))?;
        if uid.trim() != "0" {
            return Err(NetError::Unavailable(format!(
                "not root (uid {})",
                uid.trim()
            )));
        }
        run(&["nft", "--version"])
            .map_err(|e| NetError::Unavailable(format!("nft missing: {e}")))?;
        let probe = format!(
            "{NS_PREFIX}{}-probe{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &probe])
            .map_err(|e| NetError::Unavailable(format!("ip netns add: {e}")))?;
        let nft = run_input(
            &["ip", "netns", "exec", &probe, "nft", "-f", "-"],
            Some("table inet probe {\n chain c {\n type filter hook output priority 0; policy accept;\n }\n}\n"),
        );
        let _ = run(&["ip", "netns", "del", &probe]);
        nft.map_err(|e| NetError::Unavailable(format!("nft inside a namespace: {e}")))?;
        Ok(())
    }

    /// Removes namespaces and bridges of this crate whose creating process is gone.
    pub fn cleanup_stale() {
        let Ok(list) = run(&["ip", "netns", "list"]) else {
            return;
        };
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
            if pid.is_none_or(|p| !pid_alive(p)) {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
        if let Ok(links) = run(&["ip", "-o", "link", "show", "type", "bridge"]) {
            for line in links.lines() {
                let name = line.split(':').nth(1).map(str::trim).unwrap_or_default();
                let Some(rest) = name.strip_prefix(BRIDGE_PREFIX) else {
                    continue;
                };
                let pid: Option<u32> = rest.split('x').next().and_then(|p| p.parse().ok());
                if pid.is_none_or(|p| !pid_alive(p)) {
                    let _ = run(&["ip", "link", "del", name]);
                }
            }
        }
    }

    /// Creates `clusters` namespaces on a new bridge.
    pub fn new(clusters: usize) -> Result<NetLab, NetError> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{pid}-{n}");
        // Interface names are at most 15 bytes: "mcb" + pid + "x" + n.
        let bridge = format!("{BRIDGE_PREFIX}{pid}x{n}");
        let _guard = SUBNET_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let used = run(&["ip", "-o", "-4", "addr", "show"])?;
        let subnet = (1u8..=250)
            .find(|s| !used.contains(&format!("10.77.{s}.")))
            .ok_or(NetError::NoSubnet)?;
        let mut lab = NetLab {
            id,
            bridge: bridge.clone(),
            subnet,
            namespaces: Vec::new(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.{subnet}.254/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..clusters {
            let ns = format!("{NS_PREFIX}{}-{i}", lab.id);
            run(&["ip", "netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let host = format!("mc{pid}x{n}h{i}");
            let peer = format!("mc{pid}x{n}p{i}");
            run(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ])?;
            run(&["ip", "link", "set", &peer, "netns", &ns])?;
            run(&["ip", "link", "set", &host, "master", &bridge])?;
            run(&["ip", "link", "set", &host, "up"])?;
            let ip = lab.ip(i).to_string();
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &peer,
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &peer, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            run_input(
                &["ip", "netns", "exec", &ns, "nft", "-f", "-"],
                Some(
                    "table inet meshd_chaos {\n chain out {\n  type filter hook output priority 0; policy accept;\n }\n chain in {\n  type filter hook input priority 0; policy accept;\n }\n}\n",
                ),
            )?;
        }
        Ok(lab)
    }

    /// The namespace of cluster `i`.
    pub fn namespace(&self, i: usize) -> Option<&str> {
        self.namespaces.get(i).map(String::as_str)
    }

    /// The address of cluster `i`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, (i as u8).saturating_add(1))
    }

    /// The host (root namespace) address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// In cluster `i`'s namespace, drops UDP to and from `peer` — every datagram
    /// (`percent` = None or Some(100)) or a random share of them.
    pub fn drop_udp(
        &self,
        i: usize,
        peer: SocketAddr,
        percent: Option<u32>,
    ) -> Result<(), NetError> {
        let Some(ns) = self.namespace(i) else {
            return Err(NetError::Command {
                command: format!("drop_udp({i})"),
                stderr: "no such namespace".into(),
            });
        };
        let share = match percent {
            Some(p) if p < 100 => format!("numgen random mod 100 < {p} "),
            _ => String::new(),
        };
        let (ip, port) = (peer.ip(), peer.port());
        let rules = format!(
            "add rule inet meshd_chaos out ip daddr {ip} udp dport {port} {share}drop\nadd rule inet meshd_chaos in ip saddr {ip} udp sport {port} {share}drop\n"
        );
        run_input(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(&rules))?;
        Ok(())
    }

    /// In cluster `i`'s namespace, drops every TCP segment sent to one of `ports` (of any
    /// address: the namespace's own included) — a server there unreachable for its
    /// clients, with connections left open and hanging, as in a partition.
    pub fn drop_tcp_to(&self, i: usize, ports: &[u16]) -> Result<(), NetError> {
        let Some(ns) = self.namespace(i) else {
            return Err(NetError::Command {
                command: format!("drop_tcp_to({i})"),
                stderr: "no such namespace".into(),
            });
        };
        let set = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let rules = format!("add rule inet meshd_chaos out tcp dport {{ {set} }} drop\n");
        run_input(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(&rules))?;
        Ok(())
    }

    /// Removes every fault rule in cluster `i`'s namespace.
    pub fn clear_rules(&self, i: usize) -> Result<(), NetError> {
        let Some(ns) = self.namespace(i) else {
            return Ok(());
        };
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "flush",
            "chain",
            "inet",
            "meshd_chaos",
            "out",
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "flush",
            "chain",
            "inet",
            "meshd_chaos",
            "in",
        ])?;
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..) {
            let _ = run(&["ip", "netns", "del", &ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
