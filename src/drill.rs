//! `meshd drill`: CLI wiring for the failover drills of `meshd_chaos::drill` (run against a
//! live mesh by URL, through its admin APIs). Prints the report as text or `--json`; exits
//! 2 when canaries were lost or reordered.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use meshd_chaos::drill::{self, DrillOptions};

/// Options of `meshd drill`.
#[derive(Args)]
pub struct DrillArgs {
    #[command(subcommand)]
    command: DrillCommand,
}

/// Where the mesh is, and how the drill reports.
#[derive(Args, Clone)]
pub struct Common {
    /// A cluster's node URL, `CLUSTER=http://host:port` (repeat for every cluster to
    /// watch; canaries are published and checked in each).
    #[arg(long = "url", value_name = "CLUSTER=URL", required = true, value_parser = drill::parse_node, env = "MESHD_DRILL_URLS", value_delimiter = ',')]
    urls: Vec<(String, String)>,
    /// Run even when the mesh is degraded.
    #[arg(long)]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Canary partition keys per cluster.
    #[arg(long, default_value_t = 2)]
    keys: usize,
    /// Longest wait for every canary after the restore (e.g. 120s).
    #[arg(long, default_value = "120s", value_parser = drill::parse_duration)]
    recovery_timeout: Duration,
}

/// Node URLs for drills that are not available yet (accepted so scripts keep one shape).
#[derive(Args, Clone)]
pub struct Target {
    /// A cluster's node URL, `CLUSTER=http://host:port` (repeatable).
    #[arg(long = "url", value_name = "CLUSTER=URL", value_parser = drill::parse_node, value_delimiter = ',')]
    urls: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum DrillCommand {
    /// Pause replication both ways on the link between two clusters, then resume it.
    LinkPartition {
        /// The two clusters of the link.
        #[arg(long, num_args = 2, value_names = ["X", "Y"], required = true)]
        between: Vec<String>,
        /// How long the partition lasts (e.g. 30s, 2m).
        #[arg(long = "for", default_value = "30s", value_parser = drill::parse_duration)]
        hold: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Resume every paused link on the given nodes (after a drill that was killed).
    Restore {
        #[command(flatten)]
        target: Target,
    },
    /// Fence one runtime node of a cluster and watch its groups move (not available yet).
    NodeFailover {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The node id.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Fence one proxy of a cluster (not available yet).
    ProxyFailover {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        target: Target,
    },
    /// Make the scheduler leader step down (not available yet).
    SchedulerFailover {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        target: Target,
    },
    /// Drain a whole cluster and bring it back (not available yet).
    Evacuate {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        target: Target,
    },
}

fn options(common: &Common) -> DrillOptions {
    let nodes: BTreeMap<String, String> = common.urls.iter().cloned().collect();
    let mut o = DrillOptions::new(nodes);
    o.force = common.force;
    o.keys_per_cluster = common.keys.max(1);
    o.recovery_timeout = common.recovery_timeout;
    o
}

/// Runs a drill.
pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let (report, json) = match args.command {
        DrillCommand::LinkPartition {
            between,
            hold,
            common,
        } => {
            let [a, b] = <[String; 2]>::try_from(between)
                .map_err(|_| anyhow::anyhow!("--between takes exactly two clusters"))?;
            let opts = options(&common);
            eprintln!(
                "drill link-partition {a}<->{b} for {hold:?} (Ctrl-C restores the link at once)"
            );
            let interrupt = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let report = drill::link_partition(&opts, &a, &b, hold, interrupt)
                .await
                .context("drill link-partition")?;
            (report, common.json)
        }
        DrillCommand::Restore { target } => {
            let nodes: BTreeMap<String, String> = target.urls.into_iter().collect();
            if nodes.is_empty() {
                anyhow::bail!("give the nodes to restore with --url CLUSTER=URL");
            }
            let resumed = drill::restore(&nodes).await.context("drill restore")?;
            if resumed.is_empty() {
                println!("no paused links");
            } else {
                println!("resumed {}", resumed.join(", "));
            }
            return Ok(());
        }
        DrillCommand::NodeFailover { .. } => {
            return Err(drill::not_available("node-failover").into())
        }
        DrillCommand::ProxyFailover { .. } => {
            return Err(drill::not_available("proxy-failover").into())
        }
        DrillCommand::SchedulerFailover { .. } => {
            return Err(drill::not_available("scheduler-failover").into())
        }
        DrillCommand::Evacuate { .. } => return Err(drill::not_available("evacuate").into()),
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if !report.ok() {
        std::process::exit(2);
    }
    Ok(())
}
