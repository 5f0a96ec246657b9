//! `meshd topology check FILE`: validate a topology file and explain it. On success prints
//! a summary line and every cluster's routing table (exit 0); on failure prints every
//! problem as `FILE:LINE:COL: message` (exit 1).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context as _;
use meshd_topology::{RoutingTable, Topology};

/// `meshd topology`
#[derive(clap::Args)]
pub struct TopologyArgs {
    #[command(subcommand)]
    action: TopologyAction,
}

#[derive(clap::Subcommand)]
enum TopologyAction {
    /// Validate a topology file; print its digest and routing tables, or every problem.
    Check {
        /// The topology file (TOML).
        file: PathBuf,
    },
}

/// Runs the command; `Ok(true)` when the file is valid.
pub fn run(args: TopologyArgs) -> anyhow::Result<bool> {
    match args.action {
        TopologyAction::Check { file } => check(&file),
    }
}

fn check(file: &PathBuf) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading topology file {}", file.display()))?;
    match Topology::parse(&text) {
        Ok(t) => {
            print!("{}", explain(&t));
            Ok(true)
        }
        Err(errors) => {
            let shown = file.display().to_string();
            eprint!("{}", errors.render(&shown));
            eprintln!("{shown}: {} problem(s)", errors.len());
            Ok(false)
        }
    }
}

/// The summary line and one routing table per cluster.
fn explain(t: &Topology) -> String {
    let mut out = format!(
        "ok: mesh {}, {} clusters, {} links, digest {}\n",
        t.mesh(),
        t.cluster_count(),
        t.link_count(),
        t.digest()
    );
    let none = HashSet::new();
    let w = t
        .clusters()
        .map(|c| c.name.as_str().len())
        .max()
        .unwrap_or(0);
    for c in t.clusters() {
        let table = RoutingTable::build(t, &c.name, &none);
        out.push_str(&format!("\nroutes from {}:\n", c.name));
        let mut any = false;
        for (dest, route) in table.routes() {
            any = true;
            let next = route.path.get(1).map(|n| n.as_str()).unwrap_or("-");
            let via: Vec<&str> = route.path.iter().map(|n| n.as_str()).collect();
            out.push_str(&format!(
                "  {dest:<w$}  next hop {next:<w$}  cost {:>6}  path {}\n",
                route.cost,
                via.join(" > ")
            ));
        }
        if !any {
            out.push_str("  (no other clusters)\n");
        }
    }
    out
}
