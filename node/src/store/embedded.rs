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
