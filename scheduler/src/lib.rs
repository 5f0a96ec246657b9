//! meshd-scheduler: placement of producer and consumer groups on runtime nodes.
//!
//! # Layout
//! - [`registry`]: the `Registry` trait (membership under leases, published placement)
//!   with its etcd and in-process implementations; `registry::testing` (feature
//!   `testing`) holds the etcd test harness and the registry conformance suite.
//!
//! Will also own: the openraft group (log store, state machine) and the bounded-load
//! consistent-hashing placement algorithm. It is the only writer of placement.
//!
//! Must not touch: events, the event store, HTTP publishing, or federation links.
#![forbid(unsafe_code)]

pub mod placement;
pub mod raft;
pub mod registry;
pub mod service;
