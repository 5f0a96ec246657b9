//! meshd-core: the shared vocabulary of meshd.
//!
//! Owns: the CloudEvent model (through `cloudevents-sdk`) and its validation and HTTP
//! binding parsing ([`event`]), the storage/wire encoding of events ([`codec`]), the HTTP
//! API types and error bodies ([`api`]), and the filter and transform languages
//! ([`filter`], [`pattern`], [`cesql`], [`transform`]).
//!
//! Must not touch: sockets, files, clocks or any async runtime. Everything here is pure
//! functions and data so that node/, proxy/ and federation/ can share it and tests can
//! drive it directly.
//!
//! # Layout
//! - [`event`]: parse binary, structured and batch CloudEvents; validate them per spec.
//! - [`codec`]: how an event is encoded in the store and on the wire.
//! - [`duration`]: the one duration syntax of flags, config files and query parameters.
//! - [`api`]: request/response bodies of the `/v1` HTTP API and the error body.
//! - [`filter`]: the filter spec a subscription carries, compiled once into a [`filter::Filter`].
//! - [`pattern`]: EventBridge-style JSON event patterns.
//! - [`cesql`]: CloudEvents SQL (CESQL v1) expressions.
//! - [`transform`]: what a sink receives (original event, data, JSONPath, templates).
//! - [`wire`]: frames of the federation link protocol and their codec.
#![forbid(unsafe_code)]

pub mod api;
pub mod cesql;
pub mod codec;
pub mod duration;
pub mod egress;
pub mod event;
pub mod filter;
pub mod internal;
pub mod pattern;
pub mod transform;
pub mod tryout;
pub mod wire;

pub use cloudevents::Event;
