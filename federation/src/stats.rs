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
}

impl LinkState {
    /// Its name in `/v1/mesh`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down => "down",
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
