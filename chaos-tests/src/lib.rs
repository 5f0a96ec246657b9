//! meshd-chaos: the multi-process, multi-namespace chaos harness and failover drills.
//!
//! Owns: building meshes of real `meshd` processes, each cluster in its own network
//! namespace when the machine allows it (else on loopback) ([`net`], [`mesh`]); the small
//! userspace UDP link emulator for delay/jitter/loss/cuts ([`emu`]); the canary workload
//! ([`canary`]) and the checker that counts lost, duplicated and reordered events by
//! sequence number ([`checker`]); and the drills an operator runs against a live mesh
//! through its admin APIs ([`drill`]).
//!
//! Must not touch: any crate's internals; it drives the `meshd` binary from outside.
#![forbid(unsafe_code)]

pub mod checker;
pub mod emu;

pub use checker::{Checker, ClusterReport, Report};
pub use emu::{LinkEmulator, LinkShape};
