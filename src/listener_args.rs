//! The listener flags `meshd node` and `meshd proxy` share (same names, same defaults).

use std::time::Duration;

use meshd_listener::ListenerConfig;

/// Limits of an HTTP listener (see docs/operations.md, "Slow and hostile clients").
#[derive(clap::Args, Clone, Debug)]
pub struct ListenerArgs {
    /// Most request headers (431 past it).
    #[arg(long, default_value_t = meshd_listener::DEFAULT_MAX_HEADERS)]
    pub max_headers: usize,
    /// Largest request head in bytes, at least 8192 (431 past it).
    #[arg(long, default_value_t = meshd_listener::DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Time to receive a request head, ms (connection closed past it; also closes a
    /// keep-alive connection idle that long).
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Time to receive the body once the head arrived, ms (408 past it).
    #[arg(long, default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Most connections open at once (further ones: 503 and closed); lowered to what the
    /// file-descriptor limit allows.
    #[arg(long, default_value_t = meshd_listener::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most connections open at once from one client IP address.
    #[arg(long, default_value_t = meshd_listener::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
}

impl ListenerArgs {
    /// The listener settings (checked by the node or proxy that uses them).
    pub fn config(&self) -> ListenerConfig {
        ListenerConfig {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_timeout_ms),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}
