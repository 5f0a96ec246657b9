//! Per-link statistics: counters the link task updates and a JSON snapshot for
//! `GET /v1/mesh`. Lag never lies: a link that is connected but whose cursor does not move
//! while the source has events for it is reported as `stalled`, not as lag 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a link may log a dropped duplicate.
pub const DUPLICATE_LOG_EVERY: Duration = Duration::from_secs(1);

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
    /// Rate limit of the log lines about dropped duplicates.
    duplicate_log: Mutex<LogLimiter>,
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
            duplicate_log: Mutex::new(LogLimiter::new(DUPLICATE_LOG_EVERY)),
        }
    }

    /// Counts a received event dropped as a duplicate. `Some(n)` when it is to be logged
    /// now, `n` being the duplicates dropped since the last line and not logged; `None`
    /// when its line is suppressed (at most one per [`DUPLICATE_LOG_EVERY`]).
    pub fn duplicate_dropped(&self, now: Instant) -> Option<u64> {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
        self.duplicate_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(now)
    }

    /// The duplicates dropped but not logged yet, once a line is due again (so the end
    /// of a burst is reported too, not only when the next duplicate comes).
    pub fn duplicates_unlogged(&self, now: Instant) -> Option<u64> {
        self.duplicate_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush(now)
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

/// At most one log line per interval: the events not logged meanwhile are counted and
/// reported with the next line (or by [`LogLimiter::flush`]). Time is passed in.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing one line per `every`.
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One event at `now`: `Some(n)` when it may be logged, `n` being the events
    /// suppressed since the last line; `None` when it is suppressed (and counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// `Some(n)` when `n > 0` events were suppressed and a line is due again at `now`
    /// (the line reporting them counts as the interval's line).
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if self.suppressed == 0 || !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_allows_one_line_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(l.flush(t0), None, "nothing suppressed yet");
        assert_eq!(l.admit(t0), Some(0), "the first is logged");
        assert_eq!(l.admit(t0 + ms(10)), None);
        assert_eq!(l.admit(t0 + ms(999)), None);
        assert_eq!(l.flush(t0 + ms(999)), None, "not due yet");
        assert_eq!(
            l.admit(t0 + ms(1000)),
            Some(2),
            "the next line reports the two suppressed"
        );
        assert_eq!(l.admit(t0 + ms(1500)), None);
        assert_eq!(l.flush(t0 + ms(1999)), None);
        assert_eq!(
            l.flush(t0 + ms(2000)),
            Some(1),
            "the end of a burst is reported"
        );
        assert_eq!(l.flush(t0 + ms(5000)), None, "and only once");
        assert_eq!(
            l.admit(t0 + ms(2500)),
            None,
            "the flush line counts as a line"
        );
        assert_eq!(l.admit(t0 + ms(3000)), Some(1));
    }

    #[test]
    fn dropped_duplicates_are_counted_even_when_not_logged() {
        let s = LinkStats::new("b", true);
        let t0 = Instant::now();
        assert_eq!(s.duplicate_dropped(t0), Some(0));
        assert_eq!(s.duplicate_dropped(t0), None);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(s.snapshot()["duplicates"], 2);
        assert!(render_prometheus(&[std::sync::Arc::new(s)])
            .contains("meshd_federation_link_duplicates_total{peer=\"b\"} 2"));
    }
}
