//! meshd-certs: the mesh certificate authority and mTLS configuration.
//!
//! Will own: creating a mesh CA, issuing per-cluster bridge certificates (cluster name in
//! the SAN) with rcgen, building rustls client/server configs that verify peers against
//! the mesh CA and the topology, and reloading rotated certificate files.
//!
//! Must not touch: QUIC connections themselves (federation/ owns them) or the topology.
#![forbid(unsafe_code)]
