//! Per-link statistics: counters the link task updates and a JSON snapshot for
//! `GET /v1/mesh`. Lag never lies: a link that is connected but whose cursor does not move
//! while the source has events for it is reported as `stalled`, not as lag 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; dialling or waiting for the peer to dial.
    Connecting,
    /// Handshake done; replicating.
    Connected,
    /// The last attempt failed; retrying after a backoff.
    Down,
    /// Removed from the topology: no new batches, finishing what is in flight.
    Draining,
}

impl LinkState {
    /// Its name in `/v1/mesh`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down => "down",
            LinkState::Draining => "draining",
        }
    }
}

/// Counters of one link.
#[derive(Debug)]
pub struct LinkStats {
    /// The peer cluster.
    pub peer: String,
    /// Whether this side dials.
    pub dialer: bool,
    state: Mutex<(LinkState, Option<String>)>,
    /// Events sent (after filtering).
    pub events_sent: AtomicU64,
    /// Event payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Batches sent.
    pub batches_sent: AtomicU64,
    /// Events received.
    pub events_received: AtomicU64,
    /// Event payload bytes received.
    pub bytes_received: AtomicU64,
    /// Received events dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Connections established after the first.
    pub reconnects: AtomicU64,
    /// Connections established.
    pub connections: AtomicU64,
    /// Events at the source not yet acknowledged by the peer (topics it is interested in).
    pub lag_events: AtomicU64,
    /// Age of the oldest unacknowledged event, ms.
    pub lag_ms: AtomicU64,
    /// Smoothed RTT from QUIC, µs.
    pub rtt_us: AtomicU64,
    /// Connected, behind, and not advancing.
    pub stalled: AtomicBool,
}

impl LinkStats {
    /// Fresh counters.
    pub fn new(peer: &str, dialer: bool) -> LinkStats {
        LinkStats {
            peer: peer.to_string(),
            dialer,
            state: Mutex::new((LinkState::Connecting, None)),
            events_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            lag_events: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        }
    }

    /// Sets the state and the last error.
    pub fn set_state(&self, state: LinkState, error: Option<String>) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = state;
        if error.is_some() {
            g.1 = error;
        }
    }

    /// The state.
    pub fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// A JSON snapshot.
    pub fn snapshot(&self) -> serde_json::Value {
        let (state, error) = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stalled = self.stalled.load(Ordering::Relaxed);
        serde_json::json!({
            "peer": self.peer,
            "dialer": self.dialer,
            "state": if state == LinkState::Connected && stalled { "stalled" } else { state.as_str() },
            "last_error": error,
            "events_sent": get(&self.events_sent),
            "bytes_sent": get(&self.bytes_sent),
            "batches_sent": get(&self.batches_sent),
            "events_received": get(&self.events_received),
            "bytes_received": get(&self.bytes_received),
            "duplicates": get(&self.duplicates),
            "connections": get(&self.connections),
            "reconnects": get(&self.reconnects),
            "lag_events": get(&self.lag_events),
            "lag_seconds": get(&self.lag_ms) as f64 / 1000.0,
            "rtt_ms": get(&self.rtt_us) as f64 / 1000.0,
            "stalled": stalled,
        })
    }
}

/// Renders link counters as Prometheus text (`meshd_federation_link_*`, label `peer`).
pub fn render_prometheus(links: &[std::sync::Arc<LinkStats>]) -> String {
    use std::fmt::Write as _;
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&LinkStats) -> f64,
    );
    let metrics: [Metric; 11] = [
        (
            "events_sent_total",
            "counter",
            "Events sent on the link (after interest filtering).",
            |l| l.events_sent.load(Ordering::Relaxed) as f64,
        ),
        (
            "bytes_sent_total",
            "counter",
            "Event payload bytes sent on the link.",
            |l| l.bytes_sent.load(Ordering::Relaxed) as f64,
        ),
        (
            "events_received_total",
            "counter",
            "Events received on the link.",
            |l| l.events_received.load(Ordering::Relaxed) as f64,
        ),
        (
            "bytes_received_total",
            "counter",
            "Event payload bytes received on the link.",
            |l| l.bytes_received.load(Ordering::Relaxed) as f64,
        ),
        (
            "duplicates_total",
            "counter",
            "Received events dropped as duplicates.",
            |l| l.duplicates.load(Ordering::Relaxed) as f64,
        ),
        (
            "reconnects_total",
            "counter",
            "Connections established after the first.",
            |l| l.reconnects.load(Ordering::Relaxed) as f64,
        ),
        (
            "lag_events",
            "gauge",
            "Events at the source not yet acknowledged by the peer.",
            |l| l.lag_events.load(Ordering::Relaxed) as f64,
        ),
        (
            "lag_seconds",
            "gauge",
            "Age of the oldest unacknowledged event.",
            |l| l.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        ),
        (
            "rtt_seconds",
            "gauge",
            "QUIC smoothed round-trip time.",
            |l| l.rtt_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "stalled",
            "gauge",
            "1 when connected, behind and not advancing.",
            |l| {
                if l.stalled.load(Ordering::Relaxed) {
                    1.0
                } else {
                    0.0
                }
            },
        ),
        ("up", "gauge", "1 when the link is connected.", |l| {
            if matches!(l.state(), LinkState::Connected | LinkState::Draining) {
                1.0
            } else {
                0.0
            }
        }),
    ];
    let mut out = String::new();
    for (name, kind, help, f) in metrics {
        let _ = writeln!(out, "# HELP meshd_federation_link_{name} {help}");
        let _ = writeln!(out, "# TYPE meshd_federation_link_{name} {kind}");
        for l in links {
            let _ = writeln!(
                out,
                "meshd_federation_link_{name}{{peer=\"{}\"}} {}",
                l.peer,
                f(l)
            );
        }
    }
    out
}
