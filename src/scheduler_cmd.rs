//! `meshd scheduler`: one member of the scheduler's Raft group, wired to a registry.
//! Parses the flags, connects the registry, starts [`meshd_scheduler::service::Scheduler`]
//! and stops it on SIGTERM / Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use meshd_scheduler::placement::PlacementConfig;
use meshd_scheduler::raft::RaftTiming;
use meshd_scheduler::registry::{EtcdConfig, EtcdRegistry, InProcessRegistry, Registry};
use meshd_scheduler::service::{Scheduler, SchedulerConfig};

/// Options of a scheduler member.
#[derive(clap::Args, Clone)]
pub struct SchedulerArgs {
    /// This member's Raft id (a positive integer, one of --peers).
    #[arg(long)]
    id: u64,
    /// Address to serve HTTP on (Raft peers, admin, health, /v1): must be this member's
    /// address in --peers.
    #[arg(long)]
    listen: SocketAddr,
    /// The initial members: `1=127.0.0.1:7801,2=127.0.0.1:7802,3=127.0.0.1:7803`.
    #[arg(long)]
    peers: String,
    /// Where the Raft log and state machine (redb) live.
    #[arg(long, default_value = "./meshd-scheduler")]
    data_dir: PathBuf,
    /// Cluster name (the registry key prefix).
    #[arg(long, default_value = "local")]
    cluster: String,
    /// `etcd://HOST:PORT[,HOST:PORT...]` or `memory` (a registry private to this process).
    #[arg(long, default_value = "etcd://127.0.0.1:2379")]
    registry: String,
    /// Allowed overload above the mean number of groups per node.
    #[arg(long, default_value_t = 0.25)]
    epsilon: f64,
    /// Rebalancing pace: at most this many groups of each kind move between live nodes
    /// per placement (a node joining gets its groups gradually); 0 moves them all at once.
    #[arg(long, default_value_t = 1)]
    rebalance_moves: usize,
    /// Pause between two paced placements, in milliseconds.
    #[arg(long, default_value_t = 200)]
    rebalance_pause_ms: u64,
    /// Raft heartbeat period, in milliseconds.
    #[arg(long, default_value_t = 150)]
    heartbeat_ms: u64,
    /// Minimum Raft election timeout, in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 600)]
    election_timeout_ms: u64,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('=') else {
            bail!("peer `{part}` is not ID=HOST:PORT");
        };
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("peer id `{id}` is not a number"))?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            bail!("peer id {id} appears twice");
        }
    }
    if out.is_empty() {
        bail!("--peers names no member");
    }
    Ok(out)
}

/// Connects `etcd://HOST:PORT[,...]` or `memory` for `cluster`.
pub async fn connect_registry(spec: &str, cluster: &str) -> anyhow::Result<Arc<dyn Registry>> {
    if spec == "memory" {
        return Ok(Arc::new(InProcessRegistry::new(cluster)));
    }
    let Some(rest) = spec.strip_prefix("etcd://") else {
        bail!("--registry must be etcd://HOST:PORT[,...] or memory, not `{spec}`");
    };
    let endpoints: Vec<String> = rest
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| format!("http://{e}"))
        .collect();
    let reg = EtcdRegistry::connect(EtcdConfig::new(endpoints, cluster))
        .await
        .with_context(|| format!("connecting to {spec}"))?;
    Ok(Arc::new(reg))
}

/// Runs the member until SIGTERM / Ctrl-C.
pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let peers = parse_peers(&args.peers)?;
    if !peers.contains_key(&args.id) {
        bail!("--id {} is not one of --peers", args.id);
    }
    let registry = connect_registry(&args.registry, &args.cluster).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let cfg = SchedulerConfig {
        id: args.id,
        peers,
        data_dir: args.data_dir.clone(),
        placement: PlacementConfig {
            epsilon: args.epsilon,
            rebalance_moves: args.rebalance_moves,
            rebalance_pause: Duration::from_millis(args.rebalance_pause_ms),
            ..PlacementConfig::default()
        },
        timing: RaftTiming {
            heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
            election_min: Duration::from_millis(args.election_timeout_ms.max(1)),
        },
    };
    let scheduler = Scheduler::start(cfg, registry, listener)
        .await
        .with_context(|| format!("starting scheduler member {}", args.id))?;
    println!(
        "cluster {} scheduler {} http://{}",
        args.cluster,
        args.id,
        scheduler.local_addr()
    );
    crate::shutdown_signal().await;
    scheduler.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_bad_input() {
        let p = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2").expect("parses");
        assert_eq!(p.get(&2).map(String::as_str), Some("127.0.0.1:2"));
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("1").is_err());
        assert!(parse_peers("").is_err());
    }
}
