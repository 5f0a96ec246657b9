//! Per-link statistics: counters the link task updates, the lag meter, and a JSON snapshot
//! for `GET /v1/mesh`. Lag never lies: it is measured at the source from its end offsets
//! and the link's durable cursor whether or not the link is connected ([`LagMeter`]), so
//! it keeps growing while the link is down; a link that is connected but whose cursor does
//! not move while the source has events for it is reported as `stalled`, not as lag 0.

use std::collections::HashMap;
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
    state: Mutex<StateAndErrors>,
    /// Events sent (after filtering).
    pub events_sent: AtomicU64,
    /// Bytes the link wrote: every frame, length prefixes included (QUIC's own overhead
    /// is not counted).
    pub bytes_sent: AtomicU64,
    /// Batches sent.
    pub batches_sent: AtomicU64,
    /// Progress frames sent (instead of empty batches).
    pub progress_sent: AtomicU64,
    /// Events received.
    pub events_received: AtomicU64,
    /// Bytes the link read: every frame, length prefixes included.
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
            state: Mutex::new(StateAndErrors {
                state: LinkState::Connecting,
                error: None,
                previous: None,
            }),
            events_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            progress_sent: AtomicU64::new(0),
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

    /// Sets the state and, when `error` is given, the last error (kept while the link is
    /// not connected). Connecting anew moves the last error to `previous_error`: a link
    /// that is up shows no error.
    pub fn set_state(&self, state: LinkState, error: Option<String>) {
        self.set_state_at(state, error, wall_ms());
    }

    fn set_state_at(&self, state: LinkState, error: Option<String>, now_ms: u64) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.state = state;
        if let Some(e) = error {
            g.error = Some((e, now_ms));
        }
        if state == LinkState::Connected {
            if let Some((error, at_ms)) = g.error.take() {
                g.previous = Some(PreviousError {
                    error,
                    at_ms,
                    cleared_at_ms: now_ms,
                });
            }
        }
    }

    /// The state.
    pub fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    /// The current error (`None` while connected).
    pub fn last_error(&self) -> Option<String> {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.error.as_ref().map(|(e, _)| e.clone())
    }

    /// Stores a lag measurement; `true` when the link just became stalled.
    pub fn set_lag(&self, lag: Lag) -> bool {
        self.lag_events.store(lag.events, Ordering::Relaxed);
        self.lag_ms.store(lag.ms, Ordering::Relaxed);
        let was = self.stalled.swap(lag.stalled, Ordering::Relaxed);
        lag.stalled && !was
    }

    /// A snapshot, as `GET /v1/mesh` shows the link (`paused` is the bridge's to set).
    pub fn snapshot(&self) -> meshd_core::api::MeshLink {
        let (state, error, previous) = {
            let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (g.state, g.error.clone(), g.previous.clone())
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stalled = self.stalled.load(Ordering::Relaxed);
        let state = if state == LinkState::Connected && stalled {
            "stalled"
        } else {
            state.as_str()
        };
        meshd_core::api::MeshLink {
            peer: self.peer.clone(),
            dialer: self.dialer,
            state: state.to_string(),
            last_error: error.as_ref().map(|e| e.0.clone()),
            last_error_at_ms: error.as_ref().map(|e| e.1),
            previous_error: previous.map(|p| meshd_core::api::MeshLinkPreviousError {
                error: p.error,
                at_ms: p.at_ms,
                cleared_at_ms: p.cleared_at_ms,
            }),
            events_sent: get(&self.events_sent),
            bytes_sent: get(&self.bytes_sent),
            batches_sent: get(&self.batches_sent),
            progress_sent: get(&self.progress_sent),
            events_received: get(&self.events_received),
            bytes_received: get(&self.bytes_received),
            duplicates: get(&self.duplicates),
            connections: get(&self.connections),
            reconnects: get(&self.reconnects),
            lag_events: get(&self.lag_events),
            lag_seconds: get(&self.lag_ms) as f64 / 1000.0,
            rtt_ms: Some(get(&self.rtt_us) as f64 / 1000.0),
            stalled,
            paused: false,
        }
    }
}

/// The link state and its errors.
#[derive(Debug)]
struct StateAndErrors {
    state: LinkState,
    /// The error that keeps the link from being connected, and when (ms since the epoch).
    error: Option<(String, u64)>,
    /// The last error cleared by a connection.
    previous: Option<PreviousError>,
}

/// An error the link recovered from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PreviousError {
    error: String,
    at_ms: u64,
    cleared_at_ms: u64,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the source has for one partition the peer wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// (store topic, partition).
    pub key: (String, u32),
    /// The partition's end offset.
    pub end: u64,
    /// The link's durable cursor (the next offset the peer has not acknowledged), at
    /// least the partition's first retained offset.
    pub cursor: u64,
    /// Store time (ms since the epoch) of the record at the cursor, when `end > cursor`.
    pub oldest_ms: Option<u64>,
}

/// A lag measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// Records past the durable cursor, summed over the partitions the peer wants.
    pub events: u64,
    /// Age of the oldest of them, ms.
    pub ms: u64,
    /// Connected, behind, and the cursor has not moved for the stall threshold.
    pub stalled: bool,
}

/// Turns periodic observations of a link's partitions (source end offsets and durable
/// cursors, taken whether or not the link is connected) into its lag and stall state.
/// Lives as long as the link, not a connection: while the link is down the cursors stand
/// still and the ends grow, so the lag does too. Time is passed in.
#[derive(Debug)]
pub struct LagMeter {
    stall_after: Duration,
    cursors: HashMap<(String, u32), u64>,
    last_events: u64,
    /// When the cursor last moved (or the link was last seen not behind or not connected).
    last_progress: Option<Instant>,
    /// Since when the link is behind (monotonic; for a host whose clock stepped).
    behind_since: Option<Instant>,
    /// Whether the previous observation saw the link connected.
    was_connected: bool,
}

impl LagMeter {
    /// A meter reporting `stalled` after `stall_after` without progress while connected.
    pub fn new(stall_after: Duration) -> LagMeter {
        LagMeter {
            stall_after,
            cursors: HashMap::new(),
            last_events: 0,
            last_progress: None,
            behind_since: None,
            was_connected: false,
        }
    }

    /// One observation at `now` (monotonic) and `wall_ms` (wall clock, ms since the
    /// epoch). `clock_stepped`: the host's wall clock stepped since the store timestamps
    /// were written, so the age is measured on the monotonic clock from when the meter
    /// first saw the link behind instead.
    pub fn observe(
        &mut self,
        now: Instant,
        wall_ms: u64,
        clock_stepped: bool,
        connected: bool,
        parts: &[PartitionLag],
    ) -> Lag {
        let events: u64 = parts.iter().map(|p| p.end.saturating_sub(p.cursor)).sum();
        let mut moved = false;
        for p in parts {
            let prev = self.cursors.insert(p.key.clone(), p.cursor);
            moved |= prev.is_some_and(|c| p.cursor > c);
        }
        if self.cursors.len() > parts.len() {
            let keep: std::collections::HashSet<&(String, u32)> =
                parts.iter().map(|p| &p.key).collect();
            self.cursors.retain(|k, _| keep.contains(k));
        }
        // The stall clock runs only while connected (from the connection on) and behind.
        let connecting = connected && !self.was_connected;
        self.was_connected = connected;
        if !connected || connecting || events == 0 || moved || events < self.last_events {
            self.last_progress = Some(now);
        }
        let last_progress = *self.last_progress.get_or_insert(now);
        self.last_events = events;
        if events == 0 {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(now);
        }
        let ms = if events == 0 {
            0
        } else if clock_stepped {
            self.behind_since
                .map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64)
        } else {
            parts
                .iter()
                .filter_map(|p| p.oldest_ms)
                .min()
                .map_or(0, |o| wall_ms.saturating_sub(o))
        };
        Lag {
            events,
            ms,
            stalled: connected
                && events > 0
                && now.saturating_duration_since(last_progress) > self.stall_after,
        }
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
    let metrics: [Metric; 12] = [
        (
            "events_sent_total",
            "counter",
            "Events sent on the link (after interest filtering).",
            |l| l.events_sent.load(Ordering::Relaxed) as f64,
        ),
        (
            "bytes_sent_total",
            "counter",
            "Bytes written on the link: every frame with its length prefix.",
            |l| l.bytes_sent.load(Ordering::Relaxed) as f64,
        ),
        (
            "progress_sent_total",
            "counter",
            "Progress frames sent on the link (cursor moves without events).",
            |l| l.progress_sent.load(Ordering::Relaxed) as f64,
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
            "Bytes read on the link: every frame with its length prefix.",
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
            "Records of wanted topics past the link's durable cursor (measured also while down).",
            |l| l.lag_events.load(Ordering::Relaxed) as f64,
        ),
        (
            "lag_seconds",
            "gauge",
            "Age of the oldest record past the link's durable cursor.",
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

    fn part(p: u32, end: u64, cursor: u64, oldest_ms: Option<u64>) -> PartitionLag {
        PartitionLag {
            key: ("t".into(), p),
            end,
            cursor,
            oldest_ms,
        }
    }

    #[test]
    fn lag_keeps_growing_while_the_link_is_down() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = LagMeter::new(s(5));
        let wall = 1_000_000u64;
        let l = m.observe(t0, wall, false, true, &[part(0, 10, 10, None)]);
        assert_eq!(l, Lag::default(), "caught up");
        // Cut: the cursor stands, the end grows, the oldest unsent record ages.
        let l = m.observe(
            t0 + s(1),
            wall + 1000,
            false,
            false,
            &[part(0, 2045, 10, Some(wall + 500))],
        );
        assert_eq!((l.events, l.ms, l.stalled), (2035, 500, false));
        let l = m.observe(
            t0 + s(30),
            wall + 30_000,
            false,
            false,
            &[
                part(0, 15_010, 10, Some(wall + 500)),
                part(1, 7, 0, Some(wall + 20_000)),
            ],
        );
        assert_eq!(
            (l.events, l.ms),
            (15_007, 29_500),
            "summed, oldest of all partitions"
        );
        assert!(!l.stalled, "a link that is down is down, not stalled");
        // Reconnected and catching up: no stall while the cursor moves.
        let l = m.observe(
            t0 + s(36),
            wall + 36_000,
            false,
            true,
            &[
                part(0, 15_010, 9_000, Some(wall + 20_000)),
                part(1, 7, 0, Some(wall + 20_000)),
            ],
        );
        assert!(!l.stalled);
        let l = m.observe(
            t0 + s(37),
            wall + 37_000,
            false,
            true,
            &[part(0, 15_010, 15_010, None), part(1, 7, 7, None)],
        );
        assert_eq!(l, Lag::default());
    }

    #[test]
    fn a_connected_link_whose_cursor_stands_is_stalled_after_the_threshold() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = LagMeter::new(s(5));
        let p = [part(0, 50, 0, Some(1))];
        assert!(!m.observe(t0, 10, false, false, &p).stalled);
        // Connected at t0+10: the stall clock starts then, not at the cut.
        assert!(!m.observe(t0 + s(10), 10, false, true, &p).stalled);
        assert!(!m.observe(t0 + s(15), 10, false, true, &p).stalled);
        let l = m.observe(t0 + s(16), 10, false, true, &p);
        assert!(l.stalled);
        assert_eq!(l.events, 50, "a stalled link is never shown as lag 0");
        // The cursor moves: no longer stalled.
        assert!(
            !m.observe(t0 + s(17), 10, false, true, &[part(0, 50, 1, Some(1))])
                .stalled
        );
    }

    #[test]
    fn after_a_clock_step_the_age_is_measured_on_the_monotonic_clock() {
        let t0 = Instant::now();
        let mut m = LagMeter::new(Duration::from_secs(5));
        // Store timestamps a day in the future of the stepped-back wall clock.
        let p = [part(0, 5, 0, Some(86_400_000 + 10))];
        assert_eq!(m.observe(t0, 10, true, false, &p).ms, 0);
        assert_eq!(
            m.observe(t0 + Duration::from_secs(3), 10, true, false, &p)
                .ms,
            3000
        );
        assert_eq!(
            m.observe(
                t0 + Duration::from_secs(4),
                10,
                true,
                false,
                &[part(0, 5, 5, None)]
            )
            .ms,
            0
        );
    }

    #[test]
    fn recovery_clears_the_error_and_keeps_it_as_previous() {
        let s = LinkStats::new("b", true);
        s.set_state_at(LinkState::Down, Some("timed out".into()), 100);
        assert_eq!(s.snapshot().last_error.as_deref(), Some("timed out"));
        assert_eq!(s.snapshot().last_error_at_ms, Some(100));
        // Dialling again keeps it: the link is not healthy yet.
        s.set_state_at(LinkState::Connecting, None, 150);
        assert_eq!(s.last_error().as_deref(), Some("timed out"));
        s.set_state_at(LinkState::Connected, None, 200);
        let v = s.snapshot();
        assert_eq!(v.state, "connected");
        assert!(v.last_error.is_none(), "{v:?}");
        assert!(v.last_error_at_ms.is_none(), "{v:?}");
        assert_eq!(
            serde_json::to_value(&v.previous_error).unwrap(),
            serde_json::json!({"error": "timed out", "at_ms": 100, "cleared_at_ms": 200})
        );
        s.set_state_at(LinkState::Down, Some("reset".into()), 300);
        assert_eq!(s.snapshot().last_error.as_deref(), Some("reset"));
    }

    #[test]
    fn dropped_duplicates_are_counted_even_when_not_logged() {
        let s = LinkStats::new("b", true);
        let t0 = Instant::now();
        assert_eq!(s.duplicate_dropped(t0), Some(0));
        assert_eq!(s.duplicate_dropped(t0), None);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(s.snapshot().duplicates, 2);
        assert!(render_prometheus(&[std::sync::Arc::new(s)])
            .contains("meshd_federation_link_duplicates_total{peer=\"b\"} 2"));
    }
}
