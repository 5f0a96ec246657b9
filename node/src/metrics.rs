//! The node's Prometheus metrics, named `meshd_node_<what>_<unit>`, and the per
//! subscription metrics `meshd_subscription_<what>_<unit>` ([`render_subscriptions`]).
//!
//! One [`Metrics`] per node, owned by its own registry (so several nodes in one process,
//! as `meshd dev` runs them, do not collide). Code increments the typed fields; no metric
//! names are spelled anywhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meshd_core::api::{SubscriptionError, SubscriptionStatus};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 50µs to 10s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// All metrics of one node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Events accepted by publish requests, per topic.
    pub published: IntCounterVec,
    /// Events durably stored, per topic.
    pub stored: IntCounterVec,
    /// Publish requests refused, per reason code.
    pub publish_rejected: IntCounterVec,
    /// Events delivered (acknowledged by the sink), per topic and subscription.
    pub delivered: IntCounterVec,
    /// Events a replay finished at the sink (acknowledged or dead-lettered), per topic and
    /// subscription (they count in `delivered` / `dead_lettered` too).
    pub replayed: IntCounterVec,
    /// Delivery attempts that failed and will be retried.
    pub retried: IntCounterVec,
    /// Events sent to the dead-letter topic (or dropped without one), per subscription.
    pub dead_lettered: IntCounterVec,
    /// Webhook targets refused by the target rules (at create or at push), per rule.
    pub webhook_refused: IntCounterVec,
    /// `/v1` requests refused for want of the cluster's internal token.
    pub unauthenticated: prometheus::IntCounter,
    /// Events skipped by the subscription's filter.
    pub filtered_out: IntCounterVec,
    /// Pulled events handed out again after their ack deadline.
    pub redelivered: IntCounterVec,
    /// Publish latency: request received to durable, per topic.
    pub publish_latency: HistogramVec,
    /// Publish-to-delivery latency (store time to sink acknowledgement), per subscription.
    pub delivery_latency: HistogramVec,
    /// Events in flight per subscription.
    pub in_flight: IntGaugeVec,
    /// Group commits (fsync batches) of the embedded store.
    pub store_commits: IntCounterVec,
    /// Records removed by retention.
    pub retention_removed: IntCounter,
    /// Records removed by retention although a retention hold (a federation link cursor)
    /// still needed them: by size, or older than the longest hold.
    pub retention_held_dropped: IntCounter,
    /// Partitions where, in the last retention pass, a hold kept age-expired records.
    pub retention_held_partitions: IntGauge,
    /// Promises given to peer nodes while the registry was unreachable
    /// (docs/scheduler.md, "Registry outages").
    pub registry_promises_given: IntCounter,
    /// Peer questions this node sent while its registry keep-alives failed, by answer
    /// (`promise`, `reaches_registry`, `no_answer`).
    pub registry_promise_answers: IntCounterVec,
    /// 1 while the node delivers past its lease deadline on its peers' promises.
    pub registry_serving_on_promises: IntGauge,
    /// Open and refused HTTP connections (`meshd_node_open_connections`,
    /// `meshd_node_connections_refused_total`).
    pub connections: meshd_listener::ConnMetrics,
    /// The last delivery failure per subscription.
    pub last_errors: LastErrors,
}

/// The last delivery failure of each subscription (a retried attempt or a dead letter),
/// with its time, for `GET /v1/subscriptions/{name}/status`.
#[derive(Clone, Default)]
pub struct LastErrors(Arc<Mutex<HashMap<String, SubscriptionError>>>);

impl LastErrors {
    /// Records a failure of `subscription` now.
    pub fn note(&self, subscription: &str, message: &str) {
        let e = SubscriptionError {
            message: message.to_string(),
            at_ms: crate::ingest::now_ms(),
        };
        self.map().insert(subscription.to_string(), e);
    }

    /// The last failure of `subscription`.
    pub fn get(&self, subscription: &str) -> Option<SubscriptionError> {
        self.map().get(subscription).cloned()
    }

    /// Forgets a deleted subscription.
    pub fn forget(&self, subscription: &str) {
        self.map().remove(subscription);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SubscriptionError>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Metrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "meshd_node_delivery_in_flight_events",
                "Events in flight per subscription",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let retention_held_partitions = IntGauge::new(
            "meshd_node_retention_held_partitions",
            "Partitions where the last retention pass kept age-expired records for a hold",
        )
        .expect("valid metric");
        registry
            .register(Box::new(retention_held_partitions.clone()))
            .expect("unique metric");
        let registry_serving_on_promises = IntGauge::new(
            "meshd_node_registry_serving_on_promises",
            "1 while the node delivers past its registry lease deadline on its peers' promises",
        )
        .expect("valid metric");
        registry
            .register(Box::new(registry_serving_on_promises.clone()))
            .expect("unique metric");
        let connections =
            meshd_listener::ConnMetrics::register(&registry, "meshd_node").expect("unique metric");
        Metrics {
            registry_serving_on_promises,
            registry_promises_given: plain_counter(
                "meshd_node_registry_promises_given_total",
                "Promises given to peer nodes while the registry was unreachable",
            ),
            registry_promise_answers: counter(
                "meshd_node_registry_promise_answers_total",
                "Answers of peer nodes asked for a promise while registry keep-alives failed",
                &["answer"],
            ),
            connections,
            last_errors: LastErrors::default(),
            retention_removed: plain_counter(
                "meshd_node_retention_removed_records_total",
                "Records removed by retention",
            ),
            retention_held_dropped: plain_counter(
                "meshd_node_retention_held_records_dropped_total",
                "Records removed by retention although a retention hold still needed them",
            ),
            retention_held_partitions,
            published: counter(
                "meshd_node_events_published_total",
                "Events accepted by publish requests",
                &["topic"],
            ),
            stored: counter(
                "meshd_node_events_stored_total",
                "Events durably stored",
                &["topic"],
            ),
            publish_rejected: counter(
                "meshd_node_publish_rejected_total",
                "Publish requests refused",
                &["code"],
            ),
            delivered: counter(
                "meshd_node_events_delivered_total",
                "Events acknowledged by a sink",
                &["topic", "subscription"],
            ),
            replayed: counter(
                "meshd_node_events_replayed_total",
                "Events a replay finished at the sink (acknowledged or dead-lettered)",
                &["topic", "subscription"],
            ),
            retried: counter(
                "meshd_node_delivery_retries_total",
                "Failed delivery attempts that will be retried",
                &["topic", "subscription"],
            ),
            dead_lettered: counter(
                "meshd_node_events_dead_lettered_total",
                "Events that ran out of attempts",
                &["topic", "subscription"],
            ),
            unauthenticated: plain_counter(
                "meshd_node_requests_unauthenticated_total",
                "API requests refused for want of the cluster's internal token",
            ),
            webhook_refused: counter(
                "meshd_node_webhook_targets_refused_total",
                "Webhook targets refused by the target rules, at create or at push",
                &["reason"],
            ),
            filtered_out: counter(
                "meshd_node_events_filtered_out_total",
                "Events skipped by a subscription filter",
                &["topic", "subscription"],
            ),
            redelivered: counter(
                "meshd_node_events_redelivered_total",
                "Pulled events handed out again after the ack deadline",
                &["topic", "subscription"],
            ),
            publish_latency: histogram(
                "meshd_node_publish_latency_seconds",
                "Publish request to durable",
                &["topic"],
            ),
            delivery_latency: histogram(
                "meshd_node_delivery_latency_seconds",
                "Store time to sink acknowledgement",
                &["subscription"],
            ),
            store_commits: counter(
                "meshd_node_store_commits_total",
                "Group commits of the embedded store",
                &["fsync"],
            ),
            in_flight,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// The per subscription metrics of the subscriptions delivered here, as Prometheus text:
/// gauges `meshd_subscription_backlog_events`, `meshd_subscription_backlog_seconds`,
/// `meshd_subscription_in_flight_events`, and counters
/// `meshd_subscription_delivered_total`, `meshd_subscription_retried_total`,
/// `meshd_subscription_dead_lettered_total` (since the node started), each labelled with
/// `subscription` and `topic`. Built per scrape from statuses that cost a few offset
/// lookups per partition (no log scan).
pub fn render_subscriptions(statuses: &[SubscriptionStatus]) -> String {
    let registry = Registry::new();
    let labels = &["subscription", "topic"];
    let gauge = |name: &str, help: &str| {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    };
    let counter = |name: &str, help: &str| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        c
    };
    let backlog = gauge(
        "meshd_subscription_backlog_events",
        "Events stored and not yet delivered (committed), all partitions",
    );
    let age = gauge(
        "meshd_subscription_backlog_seconds",
        "Age of the oldest undelivered event",
    );
    let in_flight = gauge(
        "meshd_subscription_in_flight_events",
        "Events handed to the sink and not finished",
    );
    let delivered = counter(
        "meshd_subscription_delivered_total",
        "Events acknowledged by the sink",
    );
    let retried = counter(
        "meshd_subscription_retried_total",
        "Failed delivery attempts that were retried",
    );
    let dead = counter(
        "meshd_subscription_dead_lettered_total",
        "Events that ran out of attempts",
    );
    for s in statuses {
        let l = [s.name.as_str(), s.topic.as_str()];
        backlog.with_label_values(&l).set(s.backlog_events as f64);
        age.with_label_values(&l).set(s.backlog_seconds);
        in_flight.with_label_values(&l).set(s.in_flight as f64);
        delivered.with_label_values(&l).inc_by(s.delivered);
        retried.with_label_values(&l).inc_by(s.retried);
        dead.with_label_values(&l).inc_by(s.dead_lettered);
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
