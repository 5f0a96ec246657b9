//! meshd-federation: the bridge between clusters.
//!
//! Owns: one QUIC (quinn + rustls, mTLS) connection per topology link, the versioned
//! handshake, interest propagation (topic + filter), batched replication with durable
//! per-link cursors, loop prevention, duplicate suppression and multi-hop routing.
//!
//! Must not touch: placement, token auth, or the local delivery of events to sinks.
//!
//! # Layout
//! - [`catalog`]: the mesh's topic catalog: lives, merge, conflicts. Sans-IO.
//! - [`schema_catalog`]: the mesh's schema catalog: last writer wins, tombstones. Sans-IO.
//! - [`link`]: handshake checks, event path (loop prevention), duplicate window. Sans-IO.
//! - [`session`]: one connection of a link as a state machine: handshake, sending window,
//!   acks, progress marks, announcements, drain. Frames, store results and time in;
//!   actions out. Sans-IO.
//! - [`intake`]: the receiver's storing round: duplicates, path stamp, order. Sans-IO.
//! - [`interest`]: compiling a peer's interest, building announcements. Sans-IO.
//! - [`cursor`]: the send window and durable cursors of a link. Sans-IO.
//! - [`marks`]: positions in origin terms: receiver marks, where a link starts. Sans-IO.
//! - [`replicas`]: subscription replicas, terms, takeover start positions. Sans-IO.
//! - [`routing`]: which interest is relayed to which neighbour. Sans-IO.
//! - [`progress`]: progress marks instead of empty batches; the receiver's ack. Sans-IO.
//! - [`stats`]: per-link counters, the lag meter, their JSON snapshot.
//! - [`trace`]: trace questions across the mesh: who is asked, timeouts, answers. Sans-IO.
//! - [`bridge`]: the tokio/quinn shell that runs all of the above (it drives a
//!   [`session::LinkSession`] per connection and performs its actions).
//!
//! The frames themselves live in `meshd_core::wire`.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod catalog;
pub mod cursor;
pub mod intake;
pub mod interest;
pub mod link;
pub mod marks;
pub mod progress;
pub mod replicas;
pub mod routing;
pub mod schema_catalog;
pub mod session;
pub mod stats;
pub mod trace;

pub use bridge::{Bridge, BridgeConfig, BridgeError};
