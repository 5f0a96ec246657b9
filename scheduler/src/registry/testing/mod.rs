//! Test support for registries (feature `testing`): a real etcd process on free loopback
//! ports ([`EtcdServer`]), the conformance suite every [`Registry`](super::Registry)
//! implementation must pass ([`conformance`]), and an await-a-condition helper.
//!
//! This is test code: it panics with a clear message when an expectation fails.

pub mod conformance;
mod etcd_server;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub use etcd_server::{EtcdServer, HarnessError};

/// Polls `check` every 20 ms until it returns true or `within` elapses; returns whether
/// it became true. Use for state that offers nothing to await.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
