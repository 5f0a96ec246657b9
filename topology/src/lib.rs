//! meshd-topology: the mesh topology file.
//!
//! Will own: parsing and validating the TOML topology (clusters, links with costs,
//! replication policies), diffs between two versions for hot reload, and the routing
//! table (cheapest paths between clusters).
//!
//! Must not touch: sockets, certificates or any running state; it is pure data.
#![forbid(unsafe_code)]
