//! meshd-chaos: the multi-process, multi-namespace chaos harness and failover drills.
//!
//! Will own: building meshes of real `meshd` processes in network namespaces, the
//! userspace WAN link emulator (delay, jitter, loss, cuts), the canary workload and the
//! checker that counts lost, duplicated and reordered events.
//!
//! Must not touch: any crate's internals; it drives the `meshd` binary from outside.
#![forbid(unsafe_code)]
