//! Replays, the async shell around [`ReplayRun`]: re-delivers a topic's stored events of
//! a time window (offsets `[start, end)` per partition, found by the store's time search)
//! to one running CLUSTERING subscription, in addition to its live delivery.
//!
//! One reader task per partition reads the window from the store (never the partition
//! feed, never the subscription's cursor), decodes, keeps what passes the replay's filter
//! and the subscription's filter, marks each event with the `meshdreplay` extension,
//! applies the subscription's transform and hands it to:
//! - push: lanes of their own ([`super::push::start_replay_lanes`]) with the
//!   subscription's URLs and delivery policy (retries, dead letters);
//! - pull: the subscription's replay table ([`super::pull::PullSub::attach_replay`]),
//!   which pulls serve after the live events (see there).
//!
//! Finished offsets go to the [`ReplayRun`]; the subscription's committed offsets never
//! move because of a replay. A driver task waits for the run to end (completed) or for
//! stop (cancel, or the subscription stopping on this node), then ends every task and
//! detaches the replay: after [`ReplayHandle::wait_finished`] nothing more is handed out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshd_core::api::{ReplayState, ReplayStatus, REPLAY_EXTENSION};
use meshd_core::codec::decode_event;
use meshd_core::filter::Filter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use super::common::{
    dead_letter, wait_stop, Completion, DeadLetter, Dispatch, Prepared, SubCtx, READ_BATCH,
};
pub use super::replay_run::{interrupted, ReplayRun};
use crate::ingest::now_ms;

/// How long the driver waits for a replay's tasks to stop before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause after a store failure before reading again.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// A replay shared by its tasks and the API.
pub struct ReplayHandle {
    run: Mutex<ReplayRun>,
    state: watch::Sender<ReplayState>,
    stop: watch::Sender<bool>,
    finished: watch::Sender<bool>,
    /// `meshd_node_events_replayed_total` of the target subscription.
    replayed: Option<prometheus::IntCounter>,
}

impl ReplayHandle {
    /// A handle for `run` (not started); `replayed` counts the events it finishes.
    pub fn new(run: ReplayRun, replayed: Option<prometheus::IntCounter>) -> Arc<ReplayHandle> {
        let state = run.state();
        Arc::new(ReplayHandle {
            run: Mutex::new(run),
            state: watch::channel(state).0,
            stop: watch::channel(false).0,
            finished: watch::channel(false).0,
            replayed,
        })
    }

    /// Applies `f` to the run and publishes its state.
    pub fn with<R>(&self, f: impl FnOnce(&mut ReplayRun) -> R) -> R {
        let mut g = self.run.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut g);
        let s = g.state();
        drop(g);
        self.state.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
        r
    }

    /// The status now.
    pub fn status(&self) -> ReplayStatus {
        self.with(|r| r.status())
    }

    /// Watches the state.
    pub fn watch_state(&self) -> watch::Receiver<ReplayState> {
        self.state.subscribe()
    }

    /// Asks the replay to stop handing out events (cancel); `false` when it had ended.
    pub fn cancel(&self) -> bool {
        let asked = self.with(|r| r.cancel());
        let _ = self.stop.send(true);
        asked
    }

    /// Stops the replay's tasks without a cancel (the subscription stops here): it fails
    /// with `why` unless it completed.
    pub fn abandon(&self, why: &str) {
        self.with(|r| r.fail(why.to_string(), now_ms()));
        let _ = self.stop.send(true);
    }

    /// The stop signal the replay's tasks watch.
    pub fn stop_watch(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Resolves once every task of the replay ended and it was detached from the
    /// subscription (at once for a replay that never started).
    pub async fn wait_finished(&self) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    /// Marks the replay's tasks ended.
    pub fn set_finished(&self) {
        self.finished.send_replace(true);
    }
}

impl Completion for ReplayHandle {
    fn done(&self, partition: u32, offset: u64) {
        let counted = self.with(|r| {
            let before = r.replayed();
            r.complete(partition, offset, true, now_ms());
            r.replayed() - before
        });
        if let Some(c) = &self.replayed {
            c.inc_by(counted);
        }
    }
}

/// Reads `[start, end)` of one partition and hands what matches to `dispatch`.
pub async fn read_window(
    ctx: SubCtx,
    handle: Arc<ReplayHandle>,
    filter: Option<Filter>,
    partition: u32,
    start: u64,
    end: u64,
    dispatch: Arc<dyn Dispatch>,
) {
    let topic = ctx.topic().to_string();
    let name = handle.with(|r| r.name().to_string());
    let skip = |from: u64, to: u64| {
        handle.with(|r| r.complete_range(partition, from, to, false, now_ms()));
    };
    let mut cursor = start;
    while cursor < end {
        if ctx.stopping() {
            return;
        }
        let records = match ctx.store.read(&topic, partition, cursor, READ_BATCH).await {
            Ok(r) => r,
            Err(e) => {
                warn!(replay = %name, topic = %topic, partition, error = %e, "replay read failed; retrying");
                if !ctx.sleep(STORE_RETRY).await {
                    return;
                }
                continue;
            }
        };
        if records.is_empty() {
            // Nothing stored from here on below `end` (retention removed it).
            skip(cursor, end);
            return;
        }
        for r in records {
            if r.offset < cursor {
                continue;
            }
            if r.offset >= end {
                skip(cursor, end);
                return;
            }
            if r.offset > cursor {
                skip(cursor, r.offset);
            }
            cursor = r.offset + 1;
            handle.with(|run| run.scanned(1));
            let mut event = match decode_event(&r.payload) {
                Ok(e) => e,
                Err(e) => {
                    warn!(replay = %name, topic = %topic, partition, offset = r.offset, error = %e, "undecodable record skipped by the replay");
                    skip(r.offset, r.offset + 1);
                    continue;
                }
            };
            let wanted = filter.as_ref().is_none_or(|f| f.matches(&event))
                && ctx.sub.filter.as_ref().is_none_or(|f| f.matches(&event));
            if !wanted {
                skip(r.offset, r.offset + 1);
                continue;
            }
            event.set_extension(REPLAY_EXTENSION, name.clone());
            let output = match &ctx.sub.transform {
                None => meshd_core::transform::TransformOutput::Event(event.clone()),
                Some(t) => match t.apply(&event) {
                    Ok(o) => o,
                    Err(e) => {
                        let dl = DeadLetter {
                            reason: format!("transform: {e}"),
                            attempts: 0,
                            status: 0,
                        };
                        if !dead_letter(&ctx, &event, &dl).await {
                            return;
                        }
                        handle.done(partition, r.offset);
                        continue;
                    }
                },
            };
            let item = Prepared {
                partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                event,
                output,
            };
            if !dispatch.dispatch(item).await {
                return;
            }
        }
    }
}

/// Starts the readers of every partition window and the driver that ends the replay.
/// `sink_tasks` are the sink's own tasks (push lanes; none for pull), `dispatch` feeds
/// it, `detach` runs once every task ended (pull: take the replay table off the
/// subscription).
pub fn run(
    ctx: SubCtx,
    handle: Arc<ReplayHandle>,
    filter: Option<Filter>,
    windows: BTreeMap<u32, (u64, u64)>,
    dispatch: Arc<dyn Dispatch>,
    sink_tasks: Vec<JoinHandle<()>>,
    detach: Box<dyn FnOnce() + Send>,
) {
    let span = tracing::info_span!("replay", replay = %handle.with(|r| r.name().to_string()), subscription = %ctx.name(), topic = %ctx.topic());
    let mut readers = Vec::new();
    for (p, (start, end)) in &windows {
        if start < end {
            readers.push(tokio::spawn(
                read_window(
                    ctx.clone(),
                    handle.clone(),
                    filter.clone(),
                    *p,
                    *start,
                    *end,
                    dispatch.clone(),
                )
                .instrument(span.clone()),
            ));
        }
    }
    // The readers hold the only other clones: when they end, push lanes drain and end.
    drop(dispatch);
    let mut stop = ctx.stop.clone();
    let mut state = handle.watch_state();
    tokio::spawn(
        async move {
            tokio::select! {
                _ = state.wait_for(|s| s.is_terminal()) => {}
                _ = wait_stop(&mut stop) => {}
            }
            let _ = handle.stop.send(true);
            for mut t in readers.into_iter().chain(sink_tasks) {
                if tokio::time::timeout(STOP_GRACE, &mut t).await.is_err() {
                    t.abort();
                }
            }
            detach();
            handle.with(|r| r.ended("the replay's delivery stopped", now_ms()));
            let s = handle.status();
            info!(
                state = s.state.as_str(),
                scanned = s.events_scanned,
                replayed = s.events_replayed,
                "replay ended"
            );
            handle.set_finished();
        }
        .instrument(span),
    );
}
