//! meshd-federation: the bridge between clusters.
//!
//! Will own: one QUIC (quinn + rustls, mTLS) connection per topology link, the versioned
//! handshake, interest propagation (topic + filter), batched replication with durable
//! per-link cursors, loop prevention, duplicate suppression and multi-hop routing.
//!
//! Must not touch: placement, token auth, or the local delivery of events to sinks.
#![forbid(unsafe_code)]
