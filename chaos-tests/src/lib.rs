//! meshd-chaos: the multi-process, multi-namespace chaos harness and failover drills.
//!
//! Owns: building meshes of real `meshd` processes, each cluster in its own network
//! namespace when the machine allows it (else on loopback) ([`net`], [`mesh`]); the small
//! userspace UDP link emulator for delay/jitter/loss/cuts ([`emu`]); the canary workload
//! ([`canary`]) and the checker that counts lost, duplicated and reordered events by
//! sequence number ([`checker`]); scenario plumbing ([`scenario`]); control-plane chaos
//! plumbing for a cluster run as a real cluster ([`control_plane`]); and the drills an
//! operator runs against a live mesh through its admin APIs ([`drill`], [`cluster_drill`],
//! [`evacuate`] with its subscriber hand-off [`handoff`]).
//!
//! Must not touch: any crate's internals; it drives the `meshd` binary from outside.
#![forbid(unsafe_code)]

pub mod canary;
pub mod checker;
pub mod cluster_drill;
pub mod consumer_failover;
pub mod control_plane;
pub mod drill;
pub mod emu;
pub mod evacuate;
pub mod handoff;
pub mod http;
pub mod mesh;
pub mod net;
pub mod scenario;

pub use checker::{Checker, ClusterReport, Report};
pub use emu::{LinkEmulator, LinkShape};
pub use mesh::{Mesh, MeshOptions, Mode};

use std::path::PathBuf;

/// Errors of the harness and the drills.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// The `meshd` binary is not where it was looked for.
    #[error("meshd binary not found at {0} (run `cargo build --bin meshd` or set MESHD_BIN)")]
    NoBinary(PathBuf),
    /// A faked clock was asked for and libfaketime is not installed.
    #[error("libfaketime not found (apt-get install faketime, or set MESHD_FAKETIME_LIB)")]
    NoFaketime,
    /// A process did not come up.
    #[error("{name} did not start; its log: {log}")]
    Start {
        /// Which process.
        name: String,
        /// Its log file.
        log: PathBuf,
    },
    /// No such cluster (or process) in this mesh.
    #[error("no cluster or process {0:?} in this mesh")]
    NoCluster(String),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
    /// An HTTP call failed or answered an error.
    #[error("{0}")]
    Http(String),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// Network namespaces or nftables.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The link emulator.
    #[error(transparent)]
    Emu(#[from] emu::EmuError),
    /// A drill refused to run or could not proceed.
    #[error("{0}")]
    Drill(String),
}

/// Installs the rustls provider reqwest needs (once per process; later calls do nothing).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
