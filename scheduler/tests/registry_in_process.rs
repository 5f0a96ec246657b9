//! The registry conformance suite on the in-process registry.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meshd_scheduler::registry::testing::conformance::RegistryFactory;
use meshd_scheduler::registry::{InProcessRegistry, LeaseConfig, Registry};

struct InProcess {
    store: InProcessRegistry,
}

#[async_trait]
impl RegistryFactory for InProcess {
    async fn client(&self) -> Arc<dyn Registry> {
        Arc::new(self.store.clone())
    }

    fn lease(&self) -> LeaseConfig {
        LeaseConfig::with_ttl(Duration::from_millis(900))
    }
}

async fn factory() -> InProcess {
    InProcess {
        store: InProcessRegistry::new("test"),
    }
}

meshd_scheduler::registry_conformance_tests!(factory());
