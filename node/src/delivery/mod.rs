//! Delivery of stored events to subscriptions: webhook push and pull. STUB: being written.

use std::sync::Arc;
use std::time::Duration;

use meshd_core::api::{AckResponse, CompiledSubscription, PulledEvent};

use crate::metrics::Metrics;
use crate::store::{EventStore, StoreError};

/// Failures of delivery calls made by the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No such subscription.
    #[error("subscription {name:?} does not exist")]
    NotFound {
        /// Name.
        name: String,
    },
    /// Pull/ack on a subscription whose sink is a webhook.
    #[error("subscription {name:?} pushes to a webhook; pull and ack work only on pull sinks")]
    NotPull {
        /// Name.
        name: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs every subscription of a node.
pub struct Delivery {
    _store: Arc<dyn EventStore>,
    _metrics: Metrics,
}

impl Delivery {
    /// Creates the delivery engine.
    pub fn new(store: Arc<dyn EventStore>, metrics: Metrics) -> Delivery {
        Delivery {
            _store: store,
            _metrics: metrics,
        }
    }

    /// Starts (or restarts with a new spec) a subscription.
    pub async fn start(&self, _sub: Arc<CompiledSubscription>) -> Result<(), DeliveryError> {
        Ok(())
    }

    /// Stops a subscription; `false` when it was not running.
    pub async fn stop(&self, _name: &str) -> bool {
        false
    }

    /// Long-polls a pull subscription for up to `max` events, waiting up to `wait`.
    pub async fn pull(
        &self,
        name: &str,
        _consumer: &str,
        _max: usize,
        _wait: Duration,
    ) -> Result<Vec<PulledEvent>, DeliveryError> {
        Err(DeliveryError::NotFound { name: name.into() })
    }

    /// Acknowledges pulled events.
    pub async fn ack(
        &self,
        name: &str,
        _consumer: &str,
        _ack_ids: Vec<String>,
    ) -> Result<AckResponse, DeliveryError> {
        Err(DeliveryError::NotFound { name: name.into() })
    }

    /// Stops every subscription, committing what was acknowledged.
    pub async fn shutdown(&self) {}
}
