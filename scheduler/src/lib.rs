//! meshd-scheduler: placement of producer and consumer groups on runtime nodes.
//!
//! # Layout
//! - [`registry`]: the `Registry` trait (membership under leases, published placement)
//!   with its etcd and in-process implementations; `registry::testing` (feature
//!   `testing`) holds the etcd test harness and the registry conformance suite.
//! - [`membership`]: a runtime node's membership as a pure state machine (placement
//!   fencing, lease deadline, peer promises through a registry outage, catalog sync).
//! - [`placement`]: the pure placement reducer (sticky bounded-load consistent hashing on
//!   `hashring` with virtual nodes).
//! - [`raft`]: the openraft group: redb log store and state machine (committed placement
//!   decisions), HTTP transport between members, membership admin routes.
//! - [`service`]: one scheduler member: Raft + HTTP server (`/healthz`, `/readyz`,
//!   `/metrics`, `/v1/placement`, `/v1/scheduler`) + the leader loop that watches the
//!   registry, commits decisions through Raft and publishes them to the registry.
//!
//! The scheduler leader is the only writer of placement. See docs/scheduler.md.
//!
//! Must not touch: events, the event store, HTTP publishing, or federation links.
#![forbid(unsafe_code)]

pub mod membership;
pub mod placement;
pub mod raft;
pub mod registry;
pub mod service;
