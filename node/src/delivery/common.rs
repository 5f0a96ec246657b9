//! What push and pull share: the per-subscription context, the starting cursors, the
//! partition reader (read → decode → filter → transform), progress tracking with debounced
//! offset commits, and dead-lettering.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::AttributesReader;
use meshd_core::api::{CompiledSubscription, StartPosition, TopicConfig};
use meshd_core::codec::decode_event;
use meshd_core::event::partition_key;
use meshd_core::transform::TransformOutput;
use meshd_core::Event;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use super::feed::Feeds;
use super::tracker::OffsetTracker;
use crate::ingest::{append_events, now_ms};
use crate::metrics::Metrics;
use crate::store::{EventStore, StoreError};

/// Records read from the store per batch.
pub const READ_BATCH: usize = 256;
/// How often progress is committed while running.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after a store failure before reading again.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// Everything a subscription's tasks need.
#[derive(Clone)]
pub struct SubCtx {
    /// The subscription.
    pub sub: Arc<CompiledSubscription>,
    /// The store.
    pub store: Arc<dyn EventStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Becomes `true` when the subscription stops.
    pub stop: watch::Receiver<bool>,
    /// The engine's shared partition feeds.
    pub feeds: Arc<Feeds>,
    /// Where delivered, retried and dead-lettered events are recorded.
    pub trace: Arc<crate::trace::TraceLog>,
    /// The subscription's name as the trace table keeps it.
    pub trace_name: Arc<str>,
}

impl SubCtx {
    /// Records a step of `event`'s life (nothing when tracing is off).
    pub fn trace(&self, event: &Event, step: impl FnOnce(Arc<str>) -> crate::trace::Step) {
        if self.trace.enabled() {
            self.trace.record(
                event.source().as_str(),
                event.id(),
                step(self.trace_name.clone()),
            );
        }
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.sub.spec.name
    }

    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.sub.spec.topic
    }

    /// Whether stop was requested.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `d`; `false` when stop came first.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        if *stop.borrow_and_update() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = wait_stop(&mut stop) => false,
        }
    }
}

/// The cursor (next offset to read) `start` names on one partition now: `None` for a
/// partition that [`StartPosition::Offsets`] does not name. A time is looked up in the
/// store ([`EventStore::offset_at_time`]); an offset past the end is taken as the end
/// (the API refuses those before they get here).
pub async fn start_cursor(
    store: &dyn EventStore,
    topic: &str,
    partition: u32,
    start: &StartPosition,
) -> Result<Option<u64>, StoreError> {
    let b = store.bounds(topic, partition).await?;
    Ok(match start {
        StartPosition::Latest => Some(b.end),
        StartPosition::Earliest => Some(b.start),
        StartPosition::Time(t) => Some(store.offset_at_time(topic, partition, t.ms()).await?),
        StartPosition::Offsets(o) => o.get(&partition).map(|o| (*o).min(b.end)),
    })
}

/// The committed offset of `group` on every partition, starting (and committing at once)
/// where `start` says when the group never committed (a partition `start` does not name:
/// at the end); `base` overrides the start position (a BROADCASTING member starts at the
/// subscription's base cursor).
pub async fn starting_cursors(
    store: &dyn EventStore,
    group: &str,
    topic: &str,
    partitions: u32,
    start: &StartPosition,
    base: Option<&HashMap<u32, u64>>,
) -> Result<HashMap<u32, u64>, StoreError> {
    let mut cursors = HashMap::new();
    for p in 0..partitions {
        let at = match store.committed_offset(group, topic, p).await? {
            Some(o) => o,
            None => {
                let o = match base.and_then(|b| b.get(&p)) {
                    Some(o) => *o,
                    None => match start_cursor(store, topic, p, start).await? {
                        Some(o) => o,
                        None => store.bounds(topic, p).await?.end,
                    },
                };
                store.commit_offset(group, topic, p, o).await?;
                o
            }
        };
        cursors.insert(p, at);
    }
    Ok(cursors)
}

/// Number of partitions of the subscribed topic.
pub async fn topic_partitions(store: &dyn EventStore, topic: &str) -> Result<u32, StoreError> {
    match store.topic(topic).await? {
        Some(cfg) => Ok(cfg.partitions.max(1)),
        None => Err(StoreError::TopicNotFound {
            topic: topic.to_string(),
        }),
    }
}

/// Completion tracking and committing for one offset group (all partitions).
pub struct Progress {
    group: String,
    topic: String,
    store: Arc<dyn EventStore>,
    trackers: Mutex<HashMap<u32, OffsetTracker>>,
    /// Woken when an offset completes (or a commit failed): the commit loop sleeps until
    /// then, so an idle offset group never wakes.
    moved: tokio::sync::Notify,
}

impl Progress {
    /// Tracks `group` from `cursors`.
    pub fn new(
        group: String,
        topic: String,
        store: Arc<dyn EventStore>,
        cursors: &HashMap<u32, u64>,
    ) -> Arc<Progress> {
        let trackers = cursors
            .iter()
            .map(|(p, o)| (*p, OffsetTracker::new(*o)))
            .collect();
        Arc::new(Progress {
            group,
            topic,
            store,
            trackers: Mutex::new(trackers),
            moved: tokio::sync::Notify::new(),
        })
    }

    /// The offset group key.
    pub fn group(&self) -> &str {
        &self.group
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<u32, OffsetTracker>) -> R) -> R {
        let mut g = self
            .trackers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut g)
    }

    /// Marks an offset done.
    pub fn complete(&self, partition: u32, offset: u64) {
        self.with(|t| {
            if let Some(t) = t.get_mut(&partition) {
                t.complete(offset);
            }
        });
        self.moved.notify_one();
    }

    /// Marks `[from, to)` done.
    pub fn complete_range(&self, partition: u32, from: u64, to: u64) {
        self.with(|t| {
            if let Some(t) = t.get_mut(&partition) {
                t.complete_range(from, to);
            }
        });
        self.moved.notify_one();
    }

    /// The commit point of every partition (what the next commit writes).
    pub fn commit_points(&self) -> HashMap<u32, u64> {
        self.with(|t| t.iter().map(|(p, tr)| (*p, tr.commit_point())).collect())
    }

    /// The commit point of a partition.
    pub fn commit_point(&self, partition: u32) -> Option<u64> {
        self.with(|t| t.get(&partition).map(OffsetTracker::commit_point))
    }

    /// Commits every partition whose commit point moved.
    pub async fn flush(&self) {
        let moved: Vec<(u32, u64, u64)> = self.with(|t| {
            t.iter_mut()
                .filter_map(|(p, tr)| {
                    let prev = tr.committed();
                    tr.take_commit().map(|o| (*p, o, prev))
                })
                .collect()
        });
        for (p, o, prev) in moved {
            if let Err(e) = self
                .store
                .commit_offset(&self.group, &self.topic, p, o)
                .await
            {
                warn!(group = %self.group, partition = p, error = %e, "offset commit failed; will retry");
                self.with(|t| {
                    if let Some(tr) = t.get_mut(&p) {
                        tr.commit_failed(prev);
                    }
                });
                // The commit loop tries again after its interval.
                self.moved.notify_one();
            } else {
                debug!(group = %self.group, partition = p, offset = o, "committed");
            }
        }
    }
}

/// Where a sink reports an offset finished (delivered or dead-lettered): a subscription's
/// [`Progress`], or a replay (`super::replay::ReplayHandle`).
pub trait Completion: Send + Sync {
    /// `offset` of `partition` is finished.
    fn done(&self, partition: u32, offset: u64);
}

impl Completion for Progress {
    fn done(&self, partition: u32, offset: u64) {
        self.complete(partition, offset);
    }
}

/// Resolves when stop is requested (or the engine went away).
pub async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Commits `progress` at most every [`COMMIT_INTERVAL`], and only after offsets completed
/// (an idle group sleeps), until stop; the final commit is the caller's (after the other
/// tasks ended).
pub async fn commit_loop(ctx: SubCtx, progress: Arc<Progress>) {
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = progress.moved.notified() => {}
            _ = wait_stop(&mut stop) => break,
        }
        // Completions within the interval go in one commit.
        if !ctx.sleep(COMMIT_INTERVAL).await {
            break;
        }
        progress.flush().await;
    }
}

/// A record ready for a sink: decoded, matched and transformed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Store time, ms since the epoch.
    pub timestamp_ms: u64,
    /// The original event (dead-lettering sends it).
    pub event: Event,
    /// What the sink receives.
    pub output: TransformOutput,
}

impl Prepared {
    /// The routing hash: of the partition key, or of the event id without one.
    pub fn route_hash(&self) -> u64 {
        route_hash(&self.event)
    }
}

/// The routing hash of an event: FNV-1a of its partition key, else of its id.
pub fn route_hash(event: &Event) -> u64 {
    match partition_key(event) {
        Some(k) => crate::ingest::fnv1a(k.as_bytes()),
        None => crate::ingest::fnv1a(event.id().as_bytes()),
    }
}

/// Where a reader hands prepared records.
#[async_trait]
pub trait Dispatch: Send + Sync {
    /// Takes one record; returns `false` when the subscription is stopping.
    async fn dispatch(&self, item: Prepared) -> bool;
}

/// Reads one partition from `cursor` until stop, handing matching records to `dispatch`.
/// Filtered-out records, undecodable ones and failed transforms complete here.
///
/// The reader joins the partition's shared [`Feeds`] feed: records from the feed's scan
/// point on come decoded and matched once for every subscription (the feed queues only
/// matching ones; the rest complete as ranges). Records before it, and after a detach (the
/// reader fell [`super::feed::QUEUE_CAP`] records behind), it reads from the store itself.
pub async fn read_partition(
    ctx: SubCtx,
    progress: Arc<Progress>,
    partition: u32,
    mut cursor: u64,
    dispatch: Arc<dyn Dispatch>,
) {
    let topic = ctx.topic().to_string();
    let name = ctx.name().to_string();
    let mut end = match ctx.store.watch_end(&topic, partition) {
        Ok(w) => w,
        Err(e) => {
            error!(subscription = %name, topic = %topic, partition, error = %e, "cannot watch partition; reader stops");
            return;
        }
    };
    let mut reader = loop {
        match ctx
            .feeds
            .join(&topic, partition, ctx.sub.filter.clone())
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                warn!(subscription = %name, topic = %topic, partition, error = %e, "cannot join the partition feed; retrying");
                if !ctx.sleep(STORE_RETRY).await {
                    return;
                }
            }
        }
    };
    let mut detached = false;
    let mut stop = ctx.stop.clone();
    let labels = [ctx.topic(), ctx.name()];
    loop {
        if ctx.stopping() {
            return;
        }
        if detached || cursor < reader.from() {
            // The reader's own part: read the store.
            let limit = if detached { u64::MAX } else { reader.from() };
            end.borrow_and_update();
            let records = match ctx.store.read(&topic, partition, cursor, READ_BATCH).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(subscription = %name, topic = %topic, partition, error = %e, "read failed; retrying");
                    if !ctx.sleep(STORE_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            let own: Vec<_> = records.into_iter().filter(|r| r.offset < limit).collect();
            if own.is_empty() {
                if detached {
                    // Caught up with the store: take the feed again from its scan point
                    // (what lies between is read above on the next turns).
                    reader.rejoin();
                    detached = false;
                } else {
                    // Nothing stored below `from` any more (retention, sparse offsets).
                    progress.complete_range(partition, cursor, limit);
                    cursor = limit;
                }
                continue;
            }
            for r in own {
                if r.offset < cursor {
                    continue;
                }
                if r.offset > cursor {
                    progress.complete_range(partition, cursor, r.offset);
                }
                cursor = r.offset + 1;
                let Some(item) = prepare(
                    &ctx,
                    &progress,
                    r.partition,
                    r.offset,
                    r.timestamp_ms,
                    &r.payload,
                )
                .await
                else {
                    continue;
                };
                if !dispatch.dispatch(item).await {
                    return;
                }
            }
            continue;
        }
        let taken = reader.take();
        let idle = taken.entries.is_empty() && taken.scanned <= cursor;
        for e in taken.entries {
            if e.offset < cursor {
                continue;
            }
            if e.offset > cursor {
                skip_unmatched(&ctx, &progress, partition, cursor, e.offset, &labels);
            }
            cursor = e.offset + 1;
            let Some(item) = transformed(
                &ctx,
                &progress,
                partition,
                e.offset,
                e.timestamp_ms,
                Event::clone(&e.event),
            )
            .await
            else {
                continue;
            };
            if !dispatch.dispatch(item).await {
                return;
            }
        }
        if taken.scanned > cursor {
            skip_unmatched(&ctx, &progress, partition, cursor, taken.scanned, &labels);
            cursor = taken.scanned;
        }
        if taken.detached_at.is_some() {
            debug!(subscription = %name, topic = %topic, partition, offset = cursor, "fell behind the partition feed; reading the store");
            detached = true;
            continue;
        }
        if idle {
            tokio::select! {
                _ = reader.changed() => {}
                _ = wait_stop(&mut stop) => return,
            }
        }
    }
}

/// Completes `[from, to)`: records the feed scanned that do not match (counted as
/// filtered out; in a sparse-offset store the count is an upper bound).
fn skip_unmatched(
    ctx: &SubCtx,
    progress: &Progress,
    partition: u32,
    from: u64,
    to: u64,
    labels: &[&str; 2],
) {
    progress.complete_range(partition, from, to);
    if ctx.sub.filter.is_some() {
        ctx.metrics
            .filtered_out
            .with_label_values(labels)
            .inc_by(to.saturating_sub(from));
    }
}

/// Decodes, filters and transforms one record. `None` when it is done already
/// (filtered out, undecodable, or dead-lettered because the transform failed).
async fn prepare(
    ctx: &SubCtx,
    progress: &Progress,
    partition: u32,
    offset: u64,
    timestamp_ms: u64,
    payload: &[u8],
) -> Option<Prepared> {
    let labels = [ctx.topic(), ctx.name()];
    let event = match decode_event(payload) {
        Ok(e) => e,
        Err(e) => {
            error!(subscription = %ctx.name(), topic = %ctx.topic(), partition, offset, error = %e, "undecodable record skipped");
            ctx.metrics.dead_lettered.with_label_values(&labels).inc();
            progress.complete(partition, offset);
            return None;
        }
    };
    if let Some(f) = &ctx.sub.filter {
        if !f.matches(&event) {
            ctx.metrics.filtered_out.with_label_values(&labels).inc();
            progress.complete(partition, offset);
            return None;
        }
    }
    transformed(ctx, progress, partition, offset, timestamp_ms, event).await
}

/// Transforms one matching record. `None` when it is done already (dead-lettered because
/// the transform failed).
async fn transformed(
    ctx: &SubCtx,
    progress: &Progress,
    partition: u32,
    offset: u64,
    timestamp_ms: u64,
    event: Event,
) -> Option<Prepared> {
    let output = match &ctx.sub.transform {
        None => TransformOutput::Event(event.clone()),
        Some(t) => match t.apply(&event) {
            Ok(o) => o,
            Err(e) => {
                let dl = DeadLetter {
                    reason: format!("transform: {e}"),
                    attempts: 0,
                    status: 0,
                };
                // Boxed: a reader's future stays small (the task holds it while idle).
                if Box::pin(dead_letter(ctx, &event, &dl)).await {
                    progress.complete(partition, offset);
                }
                return None;
            }
        },
    };
    Some(Prepared {
        partition,
        offset,
        timestamp_ms,
        event,
        output,
    })
}

/// Why an event is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Reason (`deadletterreason`).
    pub reason: String,
    /// Attempts made (`deadletterattempts`).
    pub attempts: u32,
    /// Last HTTP status, 0 when none (`deadletterstatus`).
    pub status: u16,
}

impl DeadLetter {
    /// A pulled event handed out `handouts` times and never acknowledged.
    pub fn unacknowledged(handouts: u32) -> DeadLetter {
        DeadLetter {
            reason: format!("not acknowledged after {handouts} deliveries"),
            attempts: handouts,
            status: 0,
        }
    }
}

/// The event as it goes to the dead-letter topic: the original plus the `deadletter*`
/// extension attributes.
pub fn dead_letter_event(event: &Event, subscription: &str, dl: &DeadLetter) -> Event {
    let mut e = event.clone();
    e.set_extension("deadletterreason", dl.reason.clone());
    e.set_extension("deadletterattempts", i64::from(dl.attempts));
    e.set_extension("deadlettersubscription", subscription.to_string());
    e.set_extension("deadletterstatus", i64::from(dl.status));
    e
}

/// Sends an event to the subscription's dead-letter topic (creating it with the default
/// configuration when missing), or drops it when there is none; counts it either way.
/// Store failures are retried until stop; returns `false` when stop came first (the
/// offset then stays incomplete and the event is seen again after a restart).
pub async fn dead_letter(ctx: &SubCtx, event: &Event, dl: &DeadLetter) -> bool {
    let labels = [ctx.topic(), ctx.name()];
    ctx.metrics.last_errors.note(ctx.name(), &dl.reason);
    ctx.trace(event, |subscription| crate::trace::Step::DeadLettered {
        subscription,
        reason: dl.reason.as_str().into(),
    });
    let Some(dlt) = ctx.sub.spec.delivery.dead_letter_topic.clone() else {
        warn!(subscription = %ctx.name(), topic = %ctx.topic(), event_id = %event.id(), reason = %dl.reason, "event dropped: out of attempts and no dead-letter topic");
        ctx.metrics.dead_lettered.with_label_values(&labels).inc();
        return true;
    };
    let out = dead_letter_event(event, ctx.name(), dl);
    loop {
        match append_dead_letter(ctx.store.as_ref(), &dlt, &out).await {
            Ok(()) => {
                warn!(subscription = %ctx.name(), topic = %ctx.topic(), event_id = %event.id(), reason = %dl.reason, dead_letter_topic = %dlt, "event dead-lettered");
                ctx.metrics.dead_lettered.with_label_values(&labels).inc();
                return true;
            }
            Err(e) => {
                error!(subscription = %ctx.name(), dead_letter_topic = %dlt, error = %e, "dead-letter append failed; retrying");
                if !ctx.sleep(STORE_RETRY).await {
                    return false;
                }
            }
        }
    }
}

async fn append_dead_letter(
    store: &dyn EventStore,
    dlt: &str,
    event: &Event,
) -> Result<(), StoreError> {
    let partitions = match store.topic(dlt).await? {
        Some(cfg) => cfg.partitions,
        None => match store.create_topic(dlt, &TopicConfig::default()).await {
            Ok(_) => 1,
            // Someone created it meanwhile with another configuration.
            Err(StoreError::TopicConflict { .. }) => {
                store.topic(dlt).await?.map(|c| c.partitions).unwrap_or(1)
            }
            Err(e) => return Err(e),
        },
    };
    append_events(store, dlt, partitions, std::slice::from_ref(event)).await?;
    Ok(())
}

/// Records delivery latency (store time to acknowledgement).
pub fn observe_latency(ctx: &SubCtx, timestamp_ms: u64) {
    let ms = now_ms().saturating_sub(timestamp_ms);
    ctx.metrics
        .delivery_latency
        .with_label_values(&[ctx.name()])
        .observe(ms as f64 / 1000.0);
}
