//! The proxy's Prometheus metrics (`meshd_proxy_*`).

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of one proxy.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Answered requests by status code.
    pub requests: IntCounterVec,
    /// Requests sent again to another node after a failure.
    pub upstream_retries: IntCounter,
    /// Requests refused by a rate limit, by `kind` (`ip`, `token`).
    pub rate_limited: IntCounterVec,
    /// Authentication/authorization failures by `reason` (`missing`, `invalid`, `forbidden`).
    pub auth_failures: IntCounterVec,
    /// Latency of upstream attempts, seconds.
    pub upstream_latency: Histogram,
    /// Producer groups with sticky state.
    pub producer_groups: IntGauge,
    /// Known nodes not marked down.
    pub live_nodes: IntGauge,
    /// Tokens the proxy accepts now.
    pub tokens: IntGauge,
    /// 1 while the proxy follows the region's tokens in the registry, 0 while it is cut
    /// off from it (authenticating with the last set seen); absent without a registry.
    pub token_registry_up: IntGauge,
    /// Open and refused client connections (`meshd_proxy_open_connections`,
    /// `meshd_proxy_connections_refused_total`).
    pub connections: meshd_listener::ConnMetrics,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("meshd_proxy_requests_total", "Requests answered, by status"),
            &["status"],
        )?;
        let upstream_retries = IntCounter::new(
            "meshd_proxy_upstream_retries_total",
            "Requests sent again to another node after a failure",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "meshd_proxy_rate_limited_total",
                "Requests refused by a rate limit",
            ),
            &["kind"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "meshd_proxy_auth_failures_total",
                "Authentication and authorization failures",
            ),
            &["reason"],
        )?;
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "meshd_proxy_upstream_latency_seconds",
                "Latency of one upstream attempt",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0,
            ]),
        )?;
        let producer_groups = IntGauge::new(
            "meshd_proxy_producer_groups",
            "Producer groups with sticky routing state",
        )?;
        let live_nodes = IntGauge::new("meshd_proxy_live_nodes", "Known nodes not marked down")?;
        let tokens = IntGauge::new("meshd_proxy_tokens", "Tokens the proxy accepts now")?;
        let token_registry_up = IntGauge::new(
            "meshd_proxy_token_registry_up",
            "1 while the proxy follows the region's tokens in the registry, 0 while cut off",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_retries.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(producer_groups.clone()))?;
        registry.register(Box::new(live_nodes.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        let connections = meshd_listener::ConnMetrics::register(&registry, "meshd_proxy")?;
        Ok(Metrics {
            registry,
            requests,
            upstream_retries,
            rate_limited,
            auth_failures,
            upstream_latency,
            producer_groups,
            live_nodes,
            tokens,
            token_registry_up,
            connections,
        })
    }

    /// Registers `meshd_proxy_token_registry_up` (a proxy following a registry's tokens).
    pub fn register_token_registry_up(&self) -> Result<(), prometheus::Error> {
        self.registry
            .register(Box::new(self.token_registry_up.clone()))
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
