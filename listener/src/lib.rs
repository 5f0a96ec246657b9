//! meshd-listener: the HTTP/1.1 accept loop that the node and the proxy share.
//!
//! Owns what protects a listener from slow and hostile clients, in one place:
//! - the request head: at most [`ListenerConfig::max_header_bytes`] bytes and
//!   [`ListenerConfig::max_headers`] headers (431 past them), sent within
//!   [`ListenerConfig::header_read_timeout`] (the connection is closed past it; the same
//!   timer closes a keep-alive connection idle that long);
//! - the body: [`read_body`] reads it under a size limit (413) and
//!   [`ListenerConfig::body_read_timeout`] (408), both answered with `Connection: close`
//!   by the caller;
//! - the connections: at most [`ListenerConfig::max_connections`] open, at most
//!   [`ListenerConfig::max_connections_per_ip`] from one client address; one over is
//!   answered `503` at once and closed, counted in `<prefix>_connections_refused_total`;
//! - the process: [`raise_fd_limit`] lifts the `RLIMIT_NOFILE` soft limit to the hard
//!   limit, and the connection limit is kept below the descriptors the process may open.
//!
//! Must not know: routes, auth, or anything about events.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;

/// Default of [`ListenerConfig::max_header_bytes`]: 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default of [`ListenerConfig::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default of both read timeouts: 10 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ListenerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of [`ListenerConfig::max_connections_per_ip`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
/// File descriptors kept free of connections (store files, upstream and registry
/// connections, the federation bridge).
pub const FD_RESERVE: u64 = 256;

/// Limits of one HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Largest request head in bytes, at least 8192 (431 past it).
    pub max_header_bytes: usize,
    /// Most request headers (431 past it).
    pub max_headers: usize,
    /// Time a client has to send a request head, counted from the end of the previous
    /// request on a keep-alive connection (the connection is closed past it).
    pub header_read_timeout: Duration,
    /// Time a client has to send the body once the head arrived (408 past it).
    pub body_read_timeout: Duration,
    /// Most connections open at once (further ones: 503 and closed).
    pub max_connections: usize,
    /// Most connections open at once from one client IP address.
    pub max_connections_per_ip: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_READ_TIMEOUT,
            body_read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

impl ListenerConfig {
    /// Every problem with the settings (empty: valid).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_header_bytes < 8192 {
            problems.push("max header bytes must be at least 8192".to_string());
        }
        if self.max_headers == 0 {
            problems.push("max headers must be above zero".to_string());
        }
        if self.max_connections == 0 {
            problems.push("max connections must be above zero".to_string());
        }
        if self.max_connections_per_ip == 0 {
            problems.push("max connections per IP must be above zero".to_string());
        }
        for (name, d) in [
            ("header read timeout", self.header_read_timeout),
            ("body read timeout", self.body_read_timeout),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be above zero"));
            }
        }
        problems
    }

    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ListenerError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ListenerError::InvalidConfig(problems.join("; ")))
        }
    }
}

/// Errors of a listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Invalid settings.
    #[error("invalid listener configuration: {0}")]
    InvalidConfig(String),
}

/// Why a connection was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// [`ListenerConfig::max_connections`] reached.
    MaxConnections,
    /// [`ListenerConfig::max_connections_per_ip`] reached for the client's address.
    MaxConnectionsPerIp,
}

impl Refused {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The connection metrics of one listener: `<prefix>_open_connections` and
/// `<prefix>_connections_refused_total{reason}` (`prefix`: `meshd_node`, `meshd_proxy`).
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections refused, by [`Refused`] reason.
    pub refused: IntCounterVec,
}

impl ConnMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> Result<ConnMetrics, prometheus::Error> {
        let open = IntGauge::new(
            format!("{prefix}_open_connections"),
            "HTTP connections open now",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_connections_refused_total"),
                "HTTP connections refused by a connection limit, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(ConnMetrics { open, refused })
    }
}

/// Raises the `RLIMIT_NOFILE` soft limit to the hard limit (where the platform has one);
/// answers the soft limit in force afterwards.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The soft `RLIMIT_NOFILE` limit now (`None`: unknown or unlimited).
fn fd_limit() -> Option<u64> {
    let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
    (soft != rlimit::INFINITY).then_some(soft)
}

/// `max_connections`, lowered to what the file-descriptor limit allows (with
/// [`FD_RESERVE`] kept free).
pub fn effective_max_connections(max_connections: usize) -> usize {
    match fd_limit() {
        Some(fds) => {
            let room =
                usize::try_from(fds.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
            max_connections.min(room)
        }
        None => max_connections,
    }
}

/// Open connections, in total and per client address.
#[derive(Debug)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Admission of connections under the two limits; [`Slot`]s give their place back on drop.
#[derive(Debug, Clone)]
struct Admission {
    max: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
    open: IntGauge,
}

/// One admitted connection's place.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    admission: Admission,
}

impl Admission {
    fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max {
            return Err(Refused::MaxConnections);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::MaxConnectionsPerIp);
        }
        *n += 1;
        c.total += 1;
        self.open.inc();
        Ok(Slot {
            ip,
            admission: self.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        self.admission.open.dec();
    }
}

/// What a refused connection is told before it is closed.
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 96\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"connection limit reached; try again later\"}}\n";

/// Serves HTTP/1.1 on `listener` under `config` until `shutdown` resolves; then stops
/// accepting, lets each connection finish its request in flight and closes it, waiting at
/// most `grace` for them.
///
/// `service(peer)` makes the service of one connection (the client's address passed in).
pub async fn serve<F, S, B>(
    listener: TcpListener,
    config: &ListenerConfig,
    metrics: ConnMetrics,
    service: F,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = effective_max_connections(config.max_connections);
    if max < config.max_connections {
        tracing::info!(
            configured = config.max_connections,
            effective = max,
            "the connection limit is lowered to what the file-descriptor limit allows"
        );
    }
    let admission = Admission {
        max,
        max_per_ip: config.max_connections_per_ip,
        counts: Arc::new(Mutex::new(Counts {
            total: 0,
            per_ip: HashMap::new(),
        })),
        open: metrics.open.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let mut accept_errors: u64 = 0;
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning; say it
                    // once per burst, not once per attempt.
                    if accept_errors % 100 == 0 {
                        tracing::warn!(error = %e, "accept failed");
                    }
                    accept_errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        accept_errors = 0;
        let slot = match admission.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                metrics.refused.with_label_values(&[why.as_str()]).inc();
                tracing::debug!(%peer, reason = why.as_str(), "connection refused");
                // The socket buffer of a fresh connection is empty: the answer fits without
                // waiting. Then it is closed (dropped) at once.
                let _ = stream.try_write(REFUSED_RESPONSE);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = service(peer);
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Larger than the limit (answer 413 with `Connection: close`).
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not complete within the body read timeout (answer 408 with `Connection: close`).
    #[error("the request body did not arrive within {}", fmt_duration(*.timeout))]
    Timeout {
        /// The timeout.
        timeout: Duration,
    },
    /// The connection failed or the framing is invalid (answer 400).
    #[error("could not read the body: {0}")]
    Unreadable(String),
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout`. A `Content-Length`
/// over the limit (in `headers`) is refused before anything is read.
pub async fn read_body<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > u64::try_from(limit).unwrap_or(u64::MAX) {
            return Err(BodyError::TooLarge { limit });
        }
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyError::Timeout { timeout }),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge { limit })
        }
        Ok(Err(e)) => Err(BodyError::Unreadable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: usize) -> Admission {
        Admission {
            max,
            max_per_ip: per_ip,
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                per_ip: HashMap::new(),
            })),
            open: IntGauge::new("t_open", "t").expect("gauge"),
        }
    }

    #[test]
    fn admission_counts_total_and_per_ip_and_gives_back_on_drop() {
        let a = admission(3, 2);
        let ip1: IpAddr = [127, 0, 0, 1].into();
        let ip2: IpAddr = [127, 0, 0, 2].into();
        let s1 = a.admit(ip1).expect("first");
        let _s2 = a.admit(ip1).expect("second");
        assert_eq!(a.admit(ip1).err(), Some(Refused::MaxConnectionsPerIp));
        let _s3 = a.admit(ip2).expect("other ip");
        assert_eq!(a.admit(ip2).err(), Some(Refused::MaxConnections));
        assert_eq!(a.open.get(), 3);
        drop(s1);
        assert_eq!(a.open.get(), 2);
        let _s4 = a.admit(ip1).expect("a place again");
    }

    #[test]
    fn config_problems_are_reported_together() {
        let c = ListenerConfig {
            max_header_bytes: 100,
            max_connections: 0,
            body_read_timeout: Duration::ZERO,
            ..ListenerConfig::default()
        };
        let p = c.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(ListenerConfig::default().validate().is_ok());
    }

    #[test]
    fn refused_response_length_is_right() {
        let text = std::str::from_utf8(REFUSED_RESPONSE).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[tokio::test]
    async fn body_limits() {
        let h = http::HeaderMap::new();
        let ok = read_body(
            &h,
            http_body_util::Full::new(Bytes::from_static(b"abc")),
            3,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(ok.ok(), Some(Bytes::from_static(b"abc")));
        let big = read_body(
            &h,
            http_body_util::Full::new(Bytes::from_static(b"abcd")),
            3,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(big, Err(BodyError::TooLarge { limit: 3 })));
        let mut declared = http::HeaderMap::new();
        declared.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(10));
        let early = read_body(
            &declared,
            http_body_util::Empty::<Bytes>::new(),
            3,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(early, Err(BodyError::TooLarge { .. })));
    }
}
