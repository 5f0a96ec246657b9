//! meshd-proxy: the stateless HTTP front door of a cluster.
//!
//! Will own: token auth (scoped, hashed, constant-time), rate limits (`governor`),
//! routing of producer groups by placement with failover to the next node, and request
//! protection (body/header limits, slow-client timeouts).
//!
//! Must not touch: the event store, placement decisions (read them, never write them),
//! or federation. It holds no state that matters: any proxy may be killed at any time.
#![forbid(unsafe_code)]
