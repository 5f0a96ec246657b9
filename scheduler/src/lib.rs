//! meshd-scheduler: placement of producer and consumer groups on runtime nodes.
//!
//! Will own: the `Registry` trait with its etcd and in-process implementations, the
//! openraft group (log store, state machine) and the bounded-load consistent-hashing
//! placement algorithm. It is the only writer of placement.
//!
//! Must not touch: events, the event store, HTTP publishing, or federation links.
#![forbid(unsafe_code)]
