//! meshd-topology: the mesh topology file.
//!
//! Owns parsing and validating the TOML topology (mesh name, clusters, links with costs,
//! replication policies) into an immutable [`Topology`], its canonical [`Topology::digest`]
//! for the federation handshake, [`Topology::diff`] between two versions for hot reload, the
//! replication decision [`Topology::may_receive`], and the [`RoutingTable`] (cheapest paths
//! between clusters, around failed links). The format is documented in docs/topology.md.
//!
//! Must not touch: sockets, certificates or any running state; it is pure data (the only
//! I/O is [`Topology::load`] reading the file).
//!
//! # Layout
//! - `error.rs`: [`TopologyError`] (one problem with line/column), [`TopologyErrors`] (all
//!   of them), [`LoadError`].
//! - `model.rs`: the validated types, policies and the digest.
//! - `parse.rs`: TOML text → `Topology`, collecting every problem.
//! - `diff.rs`: [`TopologyDiff`].
//! - `routing.rs`: [`RoutingTable`].
#![forbid(unsafe_code)]

mod diff;
mod error;
mod model;
mod parse;
mod routing;

pub use diff::{LinkCostChange, TopologyDiff};
pub use error::{LoadError, SyntaxError, TopologyError, TopologyErrorKind, TopologyErrors};
pub use model::{
    link_key, BridgeAddr, Cluster, ClusterName, Link, Policy, TopicPattern, Topology, MAX_COST,
};
pub use routing::{Route, RoutingTable};
