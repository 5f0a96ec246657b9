//! The state of one replay, sans-IO: its window per partition, which offsets are handled,
//! its counters and its state (starting → running → completed, or cancelling →
//! cancelled, or failed). Time is injected (`now_ms`); the async shell
//! ([`super::replay`]) feeds it what the readers and the sink did, and the node persists
//! [`ReplayRun::status`].
//!
//! ```text
//! starting --begin--> running --all offsets handled--> completed
//!    |                   |--cancel--> cancelling --ended--> cancelled
//!    +---------+---------+--fail / node restart--> failed
//! ```

use std::collections::BTreeMap;

use meshd_core::api::{format_time_ms, ReplayPartition, ReplayRequest, ReplayState, ReplayStatus};

use super::tracker::OffsetTracker;

#[derive(Debug, Clone)]
struct Window {
    start: u64,
    end: u64,
    done: OffsetTracker,
}

/// One replay's state.
#[derive(Debug, Clone)]
pub struct ReplayRun {
    name: String,
    request: ReplayRequest,
    node: String,
    state: ReplayState,
    windows: BTreeMap<u32, Window>,
    scanned: u64,
    replayed: u64,
    error: Option<String>,
    created_ms: u64,
    ended_ms: Option<u64>,
}

impl ReplayRun {
    /// A replay accepted at `now_ms` on `node` (state starting).
    pub fn new(name: String, request: ReplayRequest, node: String, now_ms: u64) -> ReplayRun {
        ReplayRun {
            name,
            request,
            node,
            state: ReplayState::Starting,
            windows: BTreeMap::new(),
            scanned: 0,
            replayed: 0,
            error: None,
            created_ms: now_ms,
            ended_ms: None,
        }
    }

    /// The replay's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Events finished at the sink so far.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Where it is.
    pub fn state(&self) -> ReplayState {
        self.state
    }

    /// The window's offsets `[start, end)` per partition are known: running, or completed
    /// at once when every window is empty. Ignored unless starting.
    pub fn begin(&mut self, windows: BTreeMap<u32, (u64, u64)>, now_ms: u64) {
        if self.state != ReplayState::Starting {
            return;
        }
        self.windows = windows
            .into_iter()
            .map(|(p, (start, end))| {
                (
                    p,
                    Window {
                        start,
                        end: end.max(start),
                        done: OffsetTracker::new(start),
                    },
                )
            })
            .collect();
        self.state = ReplayState::Running;
        self.check_done(now_ms);
    }

    /// `n` records of the window were read.
    pub fn scanned(&mut self, n: u64) {
        self.scanned = self.scanned.saturating_add(n);
    }

    /// Offset `offset` of `partition` is handled; `replayed`: it went to the sink
    /// (delivered or dead-lettered), not filtered out. Ignored once the replay ended or
    /// outside the window (and counted once per offset).
    pub fn complete(&mut self, partition: u32, offset: u64, replayed: bool, now_ms: u64) {
        self.complete_range(
            partition,
            offset,
            offset.saturating_add(1),
            replayed,
            now_ms,
        );
    }

    /// Offsets `[from, to)` of `partition` are handled (filtered out, or no record there).
    pub fn complete_range(
        &mut self,
        partition: u32,
        from: u64,
        to: u64,
        replayed: bool,
        now_ms: u64,
    ) {
        if !matches!(self.state, ReplayState::Running | ReplayState::Cancelling) {
            return;
        }
        let Some(w) = self.windows.get_mut(&partition) else {
            return;
        };
        let (from, to) = (from.max(w.start), to.min(w.end));
        if from >= to {
            return;
        }
        if replayed {
            // Count an offset once: only when it was not handled before.
            let fresh = !w.done.is_done(from);
            w.done.complete_range(from, to);
            if fresh {
                self.replayed = self.replayed.saturating_add(to - from);
            }
        } else {
            w.done.complete_range(from, to);
        }
        if self.state == ReplayState::Running {
            self.check_done(now_ms);
        }
    }

    fn check_done(&mut self, now_ms: u64) {
        if self
            .windows
            .values()
            .all(|w| w.done.commit_point() >= w.end)
        {
            self.state = ReplayState::Completed;
            self.ended_ms = Some(now_ms);
        }
    }

    /// Cancel asked: nothing more is handed out. `false` when it had ended already.
    pub fn cancel(&mut self) -> bool {
        match self.state {
            ReplayState::Starting | ReplayState::Running => {
                self.state = ReplayState::Cancelling;
                true
            }
            ReplayState::Cancelling => true,
            _ => false,
        }
    }

    /// The delivery tasks ended (after a cancel, or because the subscription stopped
    /// here). A replay that was not completed is cancelled (cancel asked) or failed with
    /// `why`.
    pub fn ended(&mut self, why: &str, now_ms: u64) {
        match self.state {
            ReplayState::Cancelling => {
                self.state = ReplayState::Cancelled;
                self.ended_ms = Some(now_ms);
            }
            ReplayState::Starting | ReplayState::Running => self.fail(why.to_string(), now_ms),
            _ => {}
        }
    }

    /// Failed with `error` (ignored once ended).
    pub fn fail(&mut self, error: String, now_ms: u64) {
        if self.state.is_terminal() {
            return;
        }
        self.state = ReplayState::Failed;
        self.error = Some(error);
        self.ended_ms = Some(now_ms);
    }

    /// Share of the window's offsets handled (1 when completed or the window is empty).
    pub fn progress(&self) -> f64 {
        if self.state == ReplayState::Completed {
            return 1.0;
        }
        let total: u64 = self.windows.values().map(|w| w.end - w.start).sum();
        if total == 0 {
            return if self.state == ReplayState::Starting {
                0.0
            } else {
                1.0
            };
        }
        let done: u64 = self
            .windows
            .values()
            .map(|w| w.done.commit_point().min(w.end) - w.start)
            .sum();
        done as f64 / total as f64
    }

    /// The status as the API answers it.
    pub fn status(&self) -> ReplayStatus {
        ReplayStatus {
            name: self.name.clone(),
            topic: self.request.topic.clone(),
            subscription: self.request.subscription.clone(),
            from: self.request.from.as_str().to_string(),
            to: self.request.to.as_str().to_string(),
            filter: self.request.filter.clone(),
            state: self.state,
            node: self.node.clone(),
            partitions: self
                .windows
                .iter()
                .map(|(p, w)| {
                    (
                        *p,
                        ReplayPartition {
                            start: w.start,
                            end: w.end,
                            next: w.done.commit_point().min(w.end),
                        },
                    )
                })
                .collect(),
            events_scanned: self.scanned,
            events_replayed: self.replayed,
            progress: self.progress(),
            error: self.error.clone(),
            created: format_time_ms(self.created_ms),
            ended: self.ended_ms.map(format_time_ms),
        }
    }
}

/// A persisted status read back at node start: a replay that had not ended was
/// interrupted by the restart (its delivery did not survive it) and is failed, saying how
/// far it got. Ended ones are returned unchanged.
pub fn interrupted(mut status: ReplayStatus, now_ms: u64) -> ReplayStatus {
    if status.state.is_terminal() {
        return status;
    }
    status.error = Some(format!(
        "interrupted: the node restarted while the replay was {} ({} events replayed, progress {:.3} when last saved); start a new replay for the rest",
        status.state.as_str(),
        status.events_replayed,
        status.progress
    ));
    status.state = ReplayState::Failed;
    status.ended = Some(format_time_ms(now_ms));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_core::api::StartTime;

    fn run() -> ReplayRun {
        let req = ReplayRequest {
            name: Some("r1".into()),
            topic: "orders".into(),
            from: StartTime::parse("2026-12-03T10:00:00Z").unwrap(),
            to: StartTime::parse("2026-12-03T11:00:00Z").unwrap(),
            filter: None,
            subscription: "audit".into(),
        };
        ReplayRun::new("r1".into(), req, "node-1".into(), 1000)
    }

    #[test]
    fn runs_to_completion_counting_each_offset_once() {
        let mut r = run();
        assert_eq!(r.state(), ReplayState::Starting);
        assert_eq!(r.progress(), 0.0);
        r.begin(BTreeMap::from([(0, (10, 14)), (1, (5, 5))]), 1001);
        assert_eq!(r.state(), ReplayState::Running);
        r.scanned(4);
        r.complete(0, 11, true, 1002);
        r.complete(0, 11, true, 1002);
        assert_eq!(r.status().partitions[&0].next, 10, "a gap at 10 holds next");
        assert_eq!(r.progress(), 0.0);
        r.complete_range(0, 10, 11, false, 1003);
        assert_eq!(r.status().partitions[&0].next, 12);
        assert_eq!(r.progress(), 0.5);
        r.complete(0, 12, true, 1004);
        r.complete(0, 99, true, 1004);
        assert_eq!(r.state(), ReplayState::Running);
        r.complete(0, 13, true, 1005);
        assert_eq!(r.state(), ReplayState::Completed);
        let s = r.status();
        assert_eq!(
            s.events_replayed, 3,
            "11, 12, 13; the duplicate and 99 not counted"
        );
        assert_eq!(s.events_scanned, 4);
        assert_eq!(s.progress, 1.0);
        assert_eq!(s.ended.as_deref(), Some("1970-01-01T00:00:01.005Z"));
        // Ended: nothing moves it any more.
        r.fail("late".into(), 2000);
        r.cancel();
        assert_eq!(r.state(), ReplayState::Completed);
        assert!(r.status().error.is_none());
    }

    #[test]
    fn an_empty_window_completes_at_begin() {
        let mut r = run();
        r.begin(BTreeMap::from([(0, (7, 7))]), 1001);
        assert_eq!(r.state(), ReplayState::Completed);
        assert_eq!(r.progress(), 1.0);
    }

    #[test]
    fn cancel_then_end_is_cancelled_and_stops_counting() {
        let mut r = run();
        r.begin(BTreeMap::from([(0, (0, 10))]), 1001);
        r.complete_range(0, 0, 3, true, 1002);
        assert!(r.cancel());
        assert_eq!(r.state(), ReplayState::Cancelling);
        // An event finishing while the tasks stop still counts (it was handed out).
        r.complete(0, 3, true, 1003);
        r.ended("subscription stopped", 1004);
        assert_eq!(r.state(), ReplayState::Cancelled);
        r.complete(0, 4, true, 1005);
        let s = r.status();
        assert_eq!(s.events_replayed, 4);
        assert_eq!(s.partitions[&0].next, 4);
        assert!((s.progress - 0.4).abs() < 1e-9);
        assert!(!r.cancel(), "cancelled already");
    }

    #[test]
    fn ending_without_cancel_fails_with_the_reason() {
        let mut r = run();
        r.begin(BTreeMap::from([(0, (0, 10))]), 1001);
        r.ended("subscription audit stopped on this node", 1002);
        assert_eq!(r.state(), ReplayState::Failed);
        assert_eq!(
            r.status().error.as_deref(),
            Some("subscription audit stopped on this node")
        );
    }

    #[test]
    fn a_restart_fails_what_had_not_ended() {
        let mut r = run();
        r.begin(BTreeMap::from([(0, (0, 10))]), 1001);
        r.complete_range(0, 0, 5, true, 1002);
        let s = interrupted(r.status(), 5000);
        assert_eq!(s.state, ReplayState::Failed);
        assert!(s.error.as_deref().unwrap().contains("interrupted"), "{s:?}");
        assert!(s.error.as_deref().unwrap().contains("5 events"), "{s:?}");
        assert_eq!(s.partitions[&0].next, 5, "how far it got stays visible");
        let mut done = run();
        done.begin(BTreeMap::new(), 1001);
        let d = done.status();
        assert_eq!(interrupted(d.clone(), 5000), d);
    }
}
