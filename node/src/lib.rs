//! meshd-node: the runtime node of a cluster.
//!
//! Owns: the publish path (HTTP ingest, validation, durable append), the [`store::EventStore`]
//! seam with its embedded durable log, subscriptions (persisted in the store's metadata),
//! and delivery to sinks (webhook push with retries and dead-lettering, pull with ack
//! deadlines), plus the node's HTTP API, metrics and health endpoints.
//!
//! Must not touch: placement (scheduler/ decides it), auth and rate limits (proxy/), and
//! links to other clusters (federation/).
//!
//! # Layout
//! - [`store`]: the `EventStore` trait and [`store::embedded`], the default log.
//! - [`ingest`]: partition choice and encoding of published events.
//! - [`delivery`]: push and pull delivery engines.
//! - [`metrics`]: the node's Prometheus metrics.
//! - [`http`]: the `/v1` HTTP API, `/metrics`, `/healthz`, `/readyz`.
//! - [`grpc`]: the gRPC API (`meshd.v1.EventMesh`) on its own address.
//! - [`console`]: the web console (`/ui/`) and `/openapi.json`, embedded.
//! - [`drill_reports`]: the last drill reports a node keeps.
//! - [`server`]: a node assembled, with start-up recovery and clean shutdown.
//! - [`status`]: where a subscription's delivery stands (backlog, counters, last error).
//! - [`trace`]: what happened to an event on this node, for `GET /v1/trace`.
//! - [`schemas`]: the schema registry and the check of published events against it.
#![forbid(unsafe_code)]

pub mod console;
pub mod delivery;
pub mod discovery;
pub mod drill_reports;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod schemas;
pub mod server;
pub mod status;
pub mod store;
pub mod trace;
