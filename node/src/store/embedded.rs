//! The embedded durable log (default event store). STUB: being written.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::FsyncPolicy;

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// When appends are fsynced.
    pub fsync: FsyncPolicy,
    /// The fsync period under [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(100),
        }
    }
}

/// The embedded store.
pub struct EmbeddedStore {}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(
        _dir: &Path,
        _options: EmbeddedOptions,
    ) -> Result<Arc<EmbeddedStore>, super::StoreError> {
        Err(super::StoreError::Unavailable(
            "embedded store not written yet".into(),
        ))
    }
}

#[async_trait::async_trait]
impl super::EventStore for EmbeddedStore {
    async fn create_topic(
        &self,
        _: &str,
        _: &meshd_core::api::TopicConfig,
    ) -> Result<bool, super::StoreError> {
        Err(unavailable())
    }
    async fn delete_topic(&self, _: &str) -> Result<(), super::StoreError> {
        Err(unavailable())
    }
    async fn list_topics(
        &self,
    ) -> Result<Vec<(String, meshd_core::api::TopicConfig)>, super::StoreError> {
        Err(unavailable())
    }
    async fn topic(
        &self,
        _: &str,
    ) -> Result<Option<meshd_core::api::TopicConfig>, super::StoreError> {
        Err(unavailable())
    }
    async fn append(
        &self,
        _: &str,
        _: Vec<super::AppendRecord>,
    ) -> Result<Vec<super::Appended>, super::StoreError> {
        Err(unavailable())
    }
    async fn read(
        &self,
        _: &str,
        _: u32,
        _: u64,
        _: usize,
    ) -> Result<Vec<super::StoredRecord>, super::StoreError> {
        Err(unavailable())
    }
    async fn bounds(&self, _: &str, _: u32) -> Result<super::PartitionBounds, super::StoreError> {
        Err(unavailable())
    }
    fn watch_end(
        &self,
        _: &str,
        _: u32,
    ) -> Result<tokio::sync::watch::Receiver<u64>, super::StoreError> {
        Err(unavailable())
    }
    async fn commit_offset(
        &self,
        _: &str,
        _: &str,
        _: u32,
        _: u64,
    ) -> Result<(), super::StoreError> {
        Err(unavailable())
    }
    async fn committed_offset(
        &self,
        _: &str,
        _: &str,
        _: u32,
    ) -> Result<Option<u64>, super::StoreError> {
        Err(unavailable())
    }
    async fn enforce_retention(&self, _: u64) -> Result<super::RetentionReport, super::StoreError> {
        Err(unavailable())
    }
    async fn put_meta(&self, _: &str, _: &[u8]) -> Result<(), super::StoreError> {
        Err(unavailable())
    }
    async fn delete_meta(&self, _: &str) -> Result<bool, super::StoreError> {
        Err(unavailable())
    }
    async fn list_meta(&self, _: &str) -> Result<Vec<(String, Vec<u8>)>, super::StoreError> {
        Err(unavailable())
    }
    async fn close(&self) -> Result<(), super::StoreError> {
        Ok(())
    }
}

fn unavailable() -> super::StoreError {
    super::StoreError::Unavailable("embedded store not written yet".into())
}
