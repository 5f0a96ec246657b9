//! The store conformance suite against the Pulsar backend and a real `pulsar-lite`
//! broker, plus Pulsar-specific behaviour.

mod store_pulsar_common;

use std::sync::Arc;

use async_trait::async_trait;
use meshd_node::store::conformance::{self, StoreHarness};
use meshd_node::store::pulsar::{PulsarConfig, PulsarStore};
use meshd_node::store::EventStore;
use store_pulsar_common::Broker;

struct Harness {
    url: String,
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self, location: &str) -> Arc<dyn EventStore> {
        // One namespace per location: empty at first, the same data when reopened.
        let mut cfg = PulsarConfig::new(&self.url);
        cfg.namespace = format!("conf-{location}");
        Arc::new(PulsarStore::open(cfg).await.expect("open the Pulsar store"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let broker = Broker::start();
    let h = Harness { url: broker.url() };
    conformance::run_all(&h).await;
}
