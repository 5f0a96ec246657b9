//! Pull delivery: the async shell around [`LeaseTable`].
//!
//! Per offset group (the subscription for CLUSTERING, each consumer id for BROADCASTING)
//! one reader task per partition fills the table with ready events (at most
//! [`MAX_BUFFERED`] held at once), a commit task commits the acknowledged prefix, and a
//! dead-letter task handles events that ran out of handouts. `pull` long-polls on a
//! `Notify` woken by new ready events and by lease deadlines; it never sleeps in a loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meshd_core::api::{AckResponse, GroupMode, PulledEvent};
use meshd_core::transform::TransformOutput;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info_span, Instrument};

use super::common::{
    commit_loop, dead_letter, observe_latency, read_partition, starting_cursors, wait_stop,
    DeadLetter, Dispatch, Prepared, Progress, SubCtx,
};
use super::lease::{Acked, LeaseTable, PullItem, Taken};
use super::DeliveryError;
use crate::ingest::now_ms;
use crate::store::StoreError;
use crate::trace::Step;

/// Most events held (ready plus leased) per offset group.
pub const MAX_BUFFERED: usize = 10_000;
/// Most BROADCASTING consumers per subscription (each has its own tasks).
pub const MAX_CONSUMERS: usize = 1_000;
/// Most events one pull hands out.
pub const MAX_PULL: usize = 10_000;

/// One offset group of a pull subscription.
pub struct PullGroup {
    table: Mutex<LeaseTable>,
    progress: Arc<Progress>,
    /// Woken when events become ready.
    ready: Notify,
    /// Woken when the table has room again.
    space: Notify,
    /// Woken when leases are handed out (the sweeper recomputes its next deadline).
    leased: Notify,
    /// Boxed: an unbounded channel allocates its first block of 32 slots at creation, and
    /// an idle group should not hold 32 inline events' worth of memory.
    dead_tx: mpsc::UnboundedSender<Box<PullItem>>,
}

impl PullGroup {
    fn with<R>(&self, f: impl FnOnce(&mut LeaseTable) -> R) -> R {
        let mut g = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut g)
    }

    /// The group's progress (commit points).
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
}

/// Most replayed events held (ready plus leased) by a pull subscription's replay table.
pub const MAX_REPLAY_BUFFERED: usize = 1_000;

/// Prefix of the ack ids of replayed events (`r{partition}.{offset}.{generation}`).
pub const REPLAY_ACK_PREFIX: char = 'r';

/// The replay attached to a pull subscription: its own lease table (positions of the
/// replay window collide with live ones), finished offsets go to the replay.
struct ReplaySlot {
    table: LeaseTable,
    handle: Arc<super::replay::ReplayHandle>,
}

/// A running pull subscription.
pub struct PullSub {
    ctx: SubCtx,
    partitions: u32,
    /// The subscription's base cursor (BROADCASTING members start there).
    base: HashMap<u32, u64>,
    /// Key "" for CLUSTERING, the consumer id for BROADCASTING.
    groups: tokio::sync::Mutex<HashMap<String, Arc<PullGroup>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    replay: Mutex<Option<ReplaySlot>>,
    /// Woken when the replay table has room again.
    replay_space: Notify,
}

impl PullSub {
    /// Starts a pull subscription (the CLUSTERING group at once; BROADCASTING members on
    /// their first pull).
    pub async fn start(ctx: SubCtx, partitions: u32) -> Result<Arc<PullSub>, StoreError> {
        let spec = &ctx.sub.spec;
        let base = starting_cursors(
            ctx.store.as_ref(),
            &spec.name,
            &spec.topic,
            partitions,
            &spec.start,
            None,
        )
        .await?;
        let sub = Arc::new(PullSub {
            ctx: ctx.clone(),
            partitions,
            base,
            groups: tokio::sync::Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            replay: Mutex::new(None),
            replay_space: Notify::new(),
        });
        if spec.mode == GroupMode::Clustering {
            sub.group("").await.map_err(|e| match e {
                DeliveryError::Store(s) => s,
                other => StoreError::Io(other.to_string()),
            })?;
        }
        Ok(sub)
    }

    fn clustering(&self) -> bool {
        self.ctx.sub.spec.mode == GroupMode::Clustering
    }

    /// The group serving `consumer`, created on first use for BROADCASTING.
    async fn group(&self, consumer: &str) -> Result<Arc<PullGroup>, DeliveryError> {
        let key = if self.clustering() { "" } else { consumer };
        let mut groups = self.groups.lock().await;
        if let Some(g) = groups.get(key) {
            return Ok(g.clone());
        }
        if groups.len() >= MAX_CONSUMERS {
            return Err(DeliveryError::TooManyConsumers {
                name: self.ctx.name().to_string(),
                max: MAX_CONSUMERS,
            });
        }
        let spec = &self.ctx.sub.spec;
        let (group_key, base) = if self.clustering() {
            (spec.name.clone(), None)
        } else {
            (format!("{}/{consumer}", spec.name), Some(&self.base))
        };
        let cursors = starting_cursors(
            self.ctx.store.as_ref(),
            &group_key,
            &spec.topic,
            self.partitions,
            &spec.start,
            base,
        )
        .await?;
        let progress = Progress::new(
            group_key.clone(),
            spec.topic.clone(),
            self.ctx.store.clone(),
            &cursors,
        );
        let ack_deadline = match &spec.sink {
            meshd_core::api::Sink::Pull(p) => Duration::from_millis(p.ack_deadline_ms),
            meshd_core::api::Sink::Webhook(_) => Duration::from_secs(30),
        };
        let (dead_tx, dead_rx) = mpsc::unbounded_channel();
        let mut table =
            LeaseTable::new(ack_deadline, spec.delivery.max_attempts, self.clustering());
        table.note_retries(self.ctx.trace.enabled());
        let group = Arc::new(PullGroup {
            table: Mutex::new(table),
            progress: progress.clone(),
            ready: Notify::new(),
            space: Notify::new(),
            leased: Notify::new(),
            dead_tx,
        });
        let span =
            info_span!("pull", subscription = %spec.name, topic = %spec.topic, group = %group_key);
        let mut tasks = Vec::new();
        let dispatch: Arc<dyn Dispatch> = Arc::new(TableDispatch {
            ctx: self.ctx.clone(),
            group: group.clone(),
        });
        for (p, cursor) in &cursors {
            tasks.push(tokio::spawn(
                read_partition(
                    self.ctx.clone(),
                    progress.clone(),
                    *p,
                    *cursor,
                    dispatch.clone(),
                )
                .instrument(span.clone()),
            ));
        }
        tasks.push(tokio::spawn(
            commit_loop(self.ctx.clone(), progress).instrument(span.clone()),
        ));
        tasks.push(tokio::spawn(
            dead_letter_loop(self.ctx.clone(), group.clone(), dead_rx).instrument(span.clone()),
        ));
        tasks.push(tokio::spawn(
            sweep_loop(self.ctx.clone(), group.clone()).instrument(span),
        ));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        groups.insert(key.to_string(), group.clone());
        Ok(group)
    }

    /// Hands out up to `max` events to `consumer`, waiting up to `wait` for some.
    pub async fn pull(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PulledEvent>, DeliveryError> {
        let group = self.group(consumer).await?;
        let max = max.min(MAX_PULL);
        if max == 0 {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let deadline = start
            .checked_add(wait)
            .unwrap_or_else(|| start + Duration::from_secs(86_400));
        let mut stop = self.ctx.stop.clone();
        loop {
            let notified = group.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let (mut taken, mut next_lease, retried) = group.with(|t| {
                (
                    t.take(consumer, max, now),
                    t.next_deadline(),
                    t.take_retried(),
                )
            });
            trace_retried(&self.ctx, retried);
            self.account_taken(&group, &taken);
            if self.clustering() {
                let (replayed, replay_lease) =
                    self.take_replay(consumer, max - taken.events.len(), now);
                taken.events.extend(replayed);
                next_lease = match (next_lease, replay_lease) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            if !taken.events.is_empty() {
                group.leased.notify_one();
                debug!(subscription = %self.ctx.name(), topic = %self.ctx.topic(), consumer, events = taken.events.len(), redelivered = taken.redelivered, "handed out");
            }
            if !taken.events.is_empty() || now >= deadline || *stop.borrow_and_update() {
                return Ok(taken.events);
            }
            let wake = next_lease.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = wait_stop(&mut stop) => return Ok(Vec::new()),
            }
        }
    }

    /// Hands out up to `max` replayed events (after the live ones: a pull serves the
    /// live events first and fills the rest with replayed ones). Their ack ids carry
    /// [`REPLAY_ACK_PREFIX`]. Returns them and the replay table's next lease deadline.
    fn take_replay(
        &self,
        consumer: &str,
        max: usize,
        now: Instant,
    ) -> (Vec<PulledEvent>, Option<Instant>) {
        let mut slot = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = slot.as_mut() else {
            return (Vec::new(), None);
        };
        let mut taken = s.table.take(consumer, max, now);
        for e in &mut taken.events {
            e.ack_id = format!("{REPLAY_ACK_PREFIX}{}", e.ack_id);
        }
        let next = s.table.next_deadline();
        let handle = s.handle.clone();
        drop(slot);
        if taken.redelivered > 0 {
            self.ctx
                .metrics
                .redelivered
                .with_label_values(&[self.ctx.topic(), self.ctx.name()])
                .inc_by(taken.redelivered as u64);
        }
        self.dead_letter_replayed(handle, taken.dead);
        (taken.events, next)
    }

    /// Dead-letters replayed events that ran out of handouts, then marks them done.
    fn dead_letter_replayed(&self, handle: Arc<super::replay::ReplayHandle>, dead: Vec<PullItem>) {
        if dead.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            for item in dead {
                let dl = DeadLetter::unacknowledged(item.handouts);
                // Boxed: the dead-letter path's state is held only while it runs.
                if !Box::pin(dead_letter(&ctx, &item.original, &dl)).await {
                    return;
                }
                super::common::Completion::done(handle.as_ref(), item.partition, item.offset);
            }
        });
    }

    /// Attaches a replay (CLUSTERING only; one at a time): returns the dispatch its
    /// readers feed and the group woken when replayed events are ready. `None` when the
    /// subscription is BROADCASTING or a replay is attached already.
    pub async fn attach_replay(
        self: &Arc<Self>,
        handle: Arc<super::replay::ReplayHandle>,
    ) -> Result<Option<Arc<dyn Dispatch>>, DeliveryError> {
        if !self.clustering() {
            return Ok(None);
        }
        let group = self.group("").await?;
        let ack_deadline = match &self.ctx.sub.spec.sink {
            meshd_core::api::Sink::Pull(p) => Duration::from_millis(p.ack_deadline_ms),
            meshd_core::api::Sink::Webhook(_) => Duration::from_secs(30),
        };
        let mut slot = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(None);
        }
        *slot = Some(ReplaySlot {
            table: LeaseTable::new(ack_deadline, self.ctx.sub.spec.delivery.max_attempts, true),
            handle,
        });
        Ok(Some(Arc::new(ReplayDispatch {
            sub: self.clone(),
            group,
        })))
    }

    /// Takes the replay table off (its events are handed out no more; acks of them
    /// answer unknown).
    pub fn detach_replay(&self) {
        let gone = self.replay.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = gone {
            let outstanding = s.table.outstanding();
            debug!(subscription = %self.ctx.name(), outstanding, "replay detached");
        }
        self.replay_space.notify_waiters();
    }

    /// The replay attached, if any.
    pub fn replay_handle(&self) -> Option<Arc<super::replay::ReplayHandle>> {
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.handle.clone())
    }

    /// Acknowledges replayed events (ids without the prefix); returns how many matched
    /// and the unknown ids (with the prefix).
    fn ack_replay(&self, ids: Vec<String>, now: Instant) -> (usize, Vec<String>) {
        if ids.is_empty() {
            return (0, Vec::new());
        }
        let mut slot = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = slot.as_mut() else {
            let unknown = ids
                .into_iter()
                .map(|i| format!("{REPLAY_ACK_PREFIX}{i}"))
                .collect();
            return (0, unknown);
        };
        let acked = s.table.ack(ids, now);
        let handle = s.handle.clone();
        drop(slot);
        let labels = [self.ctx.topic(), self.ctx.name()];
        for item in &acked.done {
            super::common::Completion::done(handle.as_ref(), item.partition, item.offset);
            self.ctx.metrics.delivered.with_label_values(&labels).inc();
        }
        self.dead_letter_replayed(handle, acked.dead);
        self.replay_space.notify_waiters();
        let unknown = acked
            .unknown
            .into_iter()
            .map(|i| format!("{REPLAY_ACK_PREFIX}{i}"))
            .collect();
        (acked.acknowledged, unknown)
    }

    fn account_taken(&self, group: &PullGroup, taken: &Taken) {
        let labels = [self.ctx.topic(), self.ctx.name()];
        let fresh = taken.events.len().saturating_sub(taken.redelivered);
        if taken.redelivered > 0 {
            self.ctx
                .metrics
                .redelivered
                .with_label_values(&labels)
                .inc_by(taken.redelivered as u64);
        }
        if fresh > 0 {
            self.ctx
                .metrics
                .in_flight
                .with_label_values(&[self.ctx.name()])
                .add(fresh as i64);
        }
        for item in &taken.dead {
            let _ = group.dead_tx.send(Box::new(item.clone()));
        }
    }

    /// Acknowledges handed-out events.
    pub async fn ack(&self, consumer: &str, ack_ids: Vec<String>) -> AckResponse {
        let (replayed, ack_ids): (Vec<String>, Vec<String>) = ack_ids
            .into_iter()
            .partition(|i| i.starts_with(REPLAY_ACK_PREFIX));
        let replayed = replayed
            .into_iter()
            .map(|i| i[REPLAY_ACK_PREFIX.len_utf8()..].to_string())
            .collect();
        let (r_acked, r_unknown) = self.ack_replay(replayed, Instant::now());
        let mut resp = self.ack_live(consumer, ack_ids).await;
        resp.acknowledged += r_acked;
        resp.unknown.extend(r_unknown);
        resp
    }

    async fn ack_live(&self, consumer: &str, ack_ids: Vec<String>) -> AckResponse {
        if ack_ids.is_empty() {
            return AckResponse {
                acknowledged: 0,
                unknown: Vec::new(),
            };
        }
        let group = if self.clustering() {
            self.groups.lock().await.get("").cloned()
        } else {
            self.groups.lock().await.get(consumer).cloned()
        };
        let Some(group) = group else {
            return AckResponse {
                acknowledged: 0,
                unknown: ack_ids,
            };
        };
        let now = Instant::now();
        let acked: Acked = group.with(|t| t.ack(ack_ids, now));
        let labels = [self.ctx.topic(), self.ctx.name()];
        for item in &acked.done {
            group.progress.complete(item.partition, item.offset);
            self.ctx.metrics.delivered.with_label_values(&labels).inc();
            observe_latency(&self.ctx, item.timestamp_ms);
            self.ctx
                .trace(&item.original, |subscription| Step::Delivered {
                    subscription,
                    attempt: item.handouts,
                    status: None,
                    latency_ms: now_ms().saturating_sub(item.timestamp_ms),
                });
        }
        if !acked.done.is_empty() {
            self.ctx
                .metrics
                .in_flight
                .with_label_values(&[self.ctx.name()])
                .sub(acked.done.len() as i64);
        }
        for item in acked.dead {
            let _ = group.dead_tx.send(Box::new(item));
        }
        group.space.notify_waiters();
        AckResponse {
            acknowledged: acked.acknowledged,
            unknown: acked.unknown,
        }
    }

    /// Takes the tasks (to await them on stop).
    pub fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the handed-out-but-unfinished events off the in-flight gauge (on stop: they
    /// are redelivered after a restart).
    pub async fn release_in_flight(&self) {
        let outstanding: usize = self
            .groups
            .lock()
            .await
            .values()
            .map(|g| g.with(|t| t.outstanding()))
            .sum();
        self.ctx
            .metrics
            .in_flight
            .with_label_values(&[self.ctx.name()])
            .sub(outstanding as i64);
    }

    /// Every group's progress (for the final commit).
    pub async fn progress(&self) -> Vec<Arc<Progress>> {
        self.groups
            .lock()
            .await
            .values()
            .map(|g| g.progress.clone())
            .collect()
    }
}

/// The JSON a pull consumer receives for a transform output.
pub fn pulled_payload(output: &TransformOutput) -> Result<serde_json::Value, String> {
    match output {
        TransformOutput::Event(e) => serde_json::to_value(e).map_err(|e| e.to_string()),
        TransformOutput::Raw { content_type, body } => {
            let body = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
            });
            Ok(serde_json::json!({ "contenttype": content_type, "body": body }))
        }
    }
}

/// Puts prepared records into a group's table, waiting for room.
struct TableDispatch {
    ctx: SubCtx,
    group: Arc<PullGroup>,
}

#[async_trait]
impl Dispatch for TableDispatch {
    async fn dispatch(&self, item: Prepared) -> bool {
        let payload = match pulled_payload(&item.output) {
            Ok(p) => p,
            Err(e) => {
                let dl = DeadLetter {
                    reason: format!("encode: {e}"),
                    attempts: 0,
                    status: 0,
                };
                if dead_letter(&self.ctx, &item.event, &dl).await {
                    self.group.progress.complete(item.partition, item.offset);
                }
                return !self.ctx.stopping();
            }
        };
        let mut pending = Some(pull_item(item, payload));
        let mut stop = self.ctx.stop.clone();
        loop {
            let space = self.group.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let inserted = self.group.with(|t| {
                if t.len() < MAX_BUFFERED {
                    if let Some(i) = pending.take() {
                        t.insert(i);
                    }
                    true
                } else {
                    false
                }
            });
            if inserted {
                self.group.ready.notify_waiters();
                return true;
            }
            tokio::select! {
                _ = space => {}
                _ = wait_stop(&mut stop) => return false,
            }
        }
    }
}

/// Records the leases that expired and go back to ready (handed out again later).
fn trace_retried(ctx: &SubCtx, retried: Vec<(String, String, u32)>) {
    for (source, id, attempt) in retried {
        ctx.trace.record(
            &source,
            &id,
            Step::Retried {
                subscription: ctx.trace_name.clone(),
                attempt,
                error: "not acknowledged within the ack deadline".into(),
            },
        );
    }
}

/// Puts replayed events into the replay table, waiting for room.
struct ReplayDispatch {
    sub: Arc<PullSub>,
    group: Arc<PullGroup>,
}

#[async_trait]
impl Dispatch for ReplayDispatch {
    async fn dispatch(&self, item: Prepared) -> bool {
        let ctx = &self.sub.ctx;
        let Some(handle) = self.sub.replay_handle() else {
            return false;
        };
        let payload = match pulled_payload(&item.output) {
            Ok(p) => p,
            Err(e) => {
                let dl = DeadLetter {
                    reason: format!("encode: {e}"),
                    attempts: 0,
                    status: 0,
                };
                if dead_letter(ctx, &item.event, &dl).await {
                    super::common::Completion::done(handle.as_ref(), item.partition, item.offset);
                }
                return true;
            }
        };
        let mut pending = Some(pull_item(item, payload));
        let mut replay_stop = handle.stop_watch();
        loop {
            let space = self.sub.replay_space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let inserted = {
                let mut slot = self.sub.replay.lock().unwrap_or_else(|p| p.into_inner());
                match slot.as_mut() {
                    None => return false,
                    Some(s) if s.table.len() < MAX_REPLAY_BUFFERED => {
                        if let Some(i) = pending.take() {
                            s.table.insert(i);
                        }
                        true
                    }
                    Some(_) => false,
                }
            };
            if inserted {
                self.group.ready.notify_waiters();
                return true;
            }
            tokio::select! {
                _ = space => {}
                _ = wait_stop(&mut replay_stop) => return false,
            }
        }
    }
}

/// Expires leases at their deadline even when nobody pulls or acks: expired events go back
/// to ready (waking long polls) or, past their last handout, to dead-lettering.
async fn sweep_loop(ctx: SubCtx, group: Arc<PullGroup>) {
    let mut stop = ctx.stop.clone();
    loop {
        let next = group.with(|t| t.next_deadline());
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = due => {}
            _ = group.leased.notified() => continue,
            _ = wait_stop(&mut stop) => return,
        }
        let (dead, requeued, retried) = group.with(|t| {
            let before = t.ready_len();
            let dead = t.expire(Instant::now());
            (dead, t.ready_len() > before, t.take_retried())
        });
        trace_retried(&ctx, retried);
        for item in dead {
            let _ = group.dead_tx.send(Box::new(item));
        }
        if requeued {
            group.ready.notify_waiters();
        }
    }
}

/// Dead-letters events that ran out of handouts, then marks them done.
async fn dead_letter_loop(
    ctx: SubCtx,
    group: Arc<PullGroup>,
    mut rx: mpsc::UnboundedReceiver<Box<PullItem>>,
) {
    let mut stop = ctx.stop.clone();
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = wait_stop(&mut stop) => None,
        };
        let Some(item) = item else { return };
        let dl = DeadLetter::unacknowledged(item.handouts);
        // Boxed: the dead-letter path's state is held only while it runs.
        if !Box::pin(dead_letter(&ctx, &item.original, &dl)).await {
            return;
        }
        group.progress.complete(item.partition, item.offset);
        ctx.metrics.in_flight.with_label_values(&[ctx.name()]).dec();
        group.space.notify_waiters();
    }
}

/// A prepared record as the lease table holds it, never handed out yet.
fn pull_item(item: Prepared, payload: serde_json::Value) -> PullItem {
    PullItem {
        partition: item.partition,
        offset: item.offset,
        timestamp_ms: item.timestamp_ms,
        key: meshd_core::event::partition_key(&item.event).map(str::to_string),
        payload,
        original: item.event,
        handouts: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_payloads_keep_json_and_fall_back_to_text() {
        let json = pulled_payload(&TransformOutput::Raw {
            content_type: "application/json".into(),
            body: br#"{"a":1}"#.to_vec(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"contenttype": "application/json", "body": {"a": 1}})
        );
        let text = pulled_payload(&TransformOutput::Raw {
            content_type: "text/plain".into(),
            body: b"hello \xff".to_vec(),
        })
        .unwrap();
        assert_eq!(text["body"], "hello \u{fffd}");
    }
}
