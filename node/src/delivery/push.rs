//! Webhook push: CloudEvents binary-mode POSTs with retries, lanes and members.
//!
//! Per offset group (the subscription for CLUSTERING, each member URL for BROADCASTING):
//! one reader task per partition feeds `max_in_flight` lanes; an event's lane is chosen by
//! the hash of its partition key (or id), and each lane delivers one event at a time, in
//! order, so per-key order holds and a retrying event holds up only its own lane (and,
//! once that lane's queue of `LANE_QUEUE` events is full, the readers feeding it). Each subscription has
//! its own tasks, so a slow webhook slows only its own subscription.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::AttributesReader;
use meshd_core::api::{GroupMode, WebhookSink};
use meshd_core::event::to_binary_http;
use meshd_core::transform::TransformOutput;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info_span, Instrument};

use super::backoff::{parse_retry_after, retry_delay, should_give_up};
use super::common::{
    commit_loop, dead_letter, observe_latency, read_partition, starting_cursors, wait_stop,
    Completion, DeadLetter, Dispatch, Prepared, Progress, SubCtx,
};
use super::DeliveryOptions;
use crate::ingest::now_ms;
use crate::store::StoreError;
use crate::trace::Step;

/// Events queued per lane before the readers feeding it wait.
const LANE_QUEUE: usize = 128;

/// A started push subscription: its tasks and the progress of each offset group.
pub struct PushRunning {
    /// Reader, lane and commit tasks.
    pub tasks: Vec<JoinHandle<()>>,
    /// One per offset group.
    pub progress: Vec<Arc<Progress>>,
    /// The lane tasks of each offset group (spawned on first use; take them on stop).
    pub lanes: Vec<Arc<LaneTasks>>,
}

/// What a push is made with: the HTTP client (`None` when it could not be built) and the
/// target guard.
#[derive(Clone)]
pub struct PushClient {
    /// The client (its resolver checks with `guard`).
    pub http: Option<reqwest::Client>,
    /// The webhook target guard.
    pub guard: Arc<super::WebhookGuard>,
}

/// Starts every task of a webhook subscription.
pub async fn start(
    ctx: SubCtx,
    sink: &WebhookSink,
    partitions: u32,
    client: PushClient,
    options: DeliveryOptions,
) -> Result<PushRunning, StoreError> {
    let spec = &ctx.sub.spec;
    let members = sink.members();
    let groups: Vec<(String, Vec<String>)> = match spec.mode {
        GroupMode::Clustering => vec![(spec.name.clone(), members)],
        GroupMode::Broadcasting => members
            .into_iter()
            .enumerate()
            .map(|(i, u)| (format!("{}/{i}", spec.name), vec![u]))
            .collect(),
    };
    let base = match spec.mode {
        GroupMode::Clustering => None,
        GroupMode::Broadcasting => Some(
            starting_cursors(
                ctx.store.as_ref(),
                &spec.name,
                &spec.topic,
                partitions,
                &spec.start,
                None,
            )
            .await?,
        ),
    };
    let mut running = PushRunning {
        tasks: Vec::new(),
        progress: Vec::new(),
        lanes: Vec::new(),
    };
    let timeout = Duration::from_millis(sink.timeout_ms);
    for (group, urls) in groups {
        let cursors = starting_cursors(
            ctx.store.as_ref(),
            &group,
            &spec.topic,
            partitions,
            &spec.start,
            base.as_ref(),
        )
        .await?;
        let progress = Progress::new(
            group.clone(),
            spec.topic.clone(),
            ctx.store.clone(),
            &cursors,
        );
        let span =
            info_span!("push", subscription = %spec.name, topic = %spec.topic, group = %group);
        let lanes = LaneDispatch::new(
            Lane {
                ctx: ctx.clone(),
                progress: progress.clone(),
                client: client.clone(),
                urls: Arc::new(urls),
                timeout,
                options,
                replay: false,
            },
            span.clone(),
        );
        running.lanes.push(lanes.tasks.clone());
        let dispatch: Arc<dyn Dispatch> = Arc::new(lanes);
        for (p, cursor) in &cursors {
            running.tasks.push(tokio::spawn(
                read_partition(ctx.clone(), progress.clone(), *p, *cursor, dispatch.clone())
                    .instrument(span.clone()),
            ));
        }
        running.tasks.push(tokio::spawn(
            commit_loop(ctx.clone(), progress.clone()).instrument(span),
        ));
        running.progress.push(progress);
    }
    Ok(running)
}

/// Starts the lanes of a replay into a CLUSTERING webhook subscription: the same lanes,
/// delivery policy (retries, dead letters) and member URLs as the subscription's own, fed
/// by the returned dispatch; finished offsets go to `completion`. The lanes end when
/// every clone of the dispatch is dropped (after their queues are delivered) or on
/// `ctx`'s stop.
pub fn start_replay_lanes(
    ctx: SubCtx,
    sink: &WebhookSink,
    client: PushClient,
    options: DeliveryOptions,
    completion: Arc<dyn Completion>,
) -> (Arc<dyn Dispatch>, Vec<JoinHandle<()>>) {
    let spec = &ctx.sub.spec;
    let span = info_span!("replay_push", subscription = %spec.name, topic = %spec.topic);
    let lanes = LaneDispatch::new(
        Lane {
            ctx: ctx.clone(),
            progress: completion,
            client,
            urls: Arc::new(sink.members()),
            timeout: Duration::from_millis(sink.timeout_ms),
            options,
            replay: true,
        },
        span,
    );
    // A replay's lanes run from the start: the replay awaits them to know it ended.
    for i in 0..lanes.lanes.len() {
        lanes.lane(i);
    }
    let tasks = lanes.tasks.take();
    (Arc::new(lanes), tasks)
}

/// The lane tasks an offset group spawned so far; `None` once taken on stop (no lane is
/// spawned after that).
pub struct LaneTasks(std::sync::Mutex<Option<Vec<JoinHandle<()>>>>);

impl LaneTasks {
    fn new() -> Arc<LaneTasks> {
        Arc::new(LaneTasks(std::sync::Mutex::new(Some(Vec::new()))))
    }

    /// How many lanes were spawned (0 once taken).
    #[cfg(test)]
    pub fn spawned(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// Takes the spawned lanes (to await them on stop); no lane is spawned afterwards.
    pub fn take(&self) -> Vec<JoinHandle<()>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }
}

/// Routes records to lanes by key hash. A lane (its task and queue) is spawned on its
/// first record, so an idle subscription holds none of its `max_in_flight` lanes.
struct LaneDispatch {
    /// What each lane is spawned from.
    template: Lane,
    span: tracing::Span,
    /// Queues are boxed records: a channel allocates its first block of 32 slots when
    /// created.
    lanes: Vec<OnceLock<mpsc::Sender<Box<Prepared>>>>,
    tasks: Arc<LaneTasks>,
}

impl LaneDispatch {
    fn new(template: Lane, span: tracing::Span) -> LaneDispatch {
        let n = template.ctx.sub.spec.delivery.max_in_flight.max(1) as usize;
        LaneDispatch {
            template,
            span,
            lanes: (0..n).map(|_| OnceLock::new()).collect(),
            tasks: LaneTasks::new(),
        }
    }

    /// Lane `i`'s queue, spawning the lane first if needed; `None` once stopping.
    fn lane(&self, i: usize) -> Option<&mpsc::Sender<Box<Prepared>>> {
        let slot = self.lanes.get(i)?;
        if let Some(tx) = slot.get() {
            return Some(tx);
        }
        let mut tasks = self.tasks.0.lock().unwrap_or_else(|p| p.into_inner());
        let tasks = tasks.as_mut()?;
        Some(slot.get_or_init(|| {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            let lane = self.template.clone();
            tasks.push(tokio::spawn(lane.run(rx).instrument(self.span.clone())));
            tx
        }))
    }
}

#[async_trait]
impl Dispatch for LaneDispatch {
    async fn dispatch(&self, item: Prepared) -> bool {
        let n = self.lanes.len() as u64;
        let Some(lane) = self.lane((item.route_hash() % n.max(1)) as usize) else {
            return false;
        };
        let ctx = &self.template.ctx;
        let gauge = ctx.metrics.in_flight.with_label_values(&[ctx.name()]);
        gauge.inc();
        let mut stop = ctx.stop.clone();
        let sent = tokio::select! {
            r = lane.send(Box::new(item)) => r.is_ok(),
            _ = wait_stop(&mut stop) => false,
        };
        if !sent {
            gauge.dec();
        }
        sent
    }
}

/// How one delivery ended.
#[derive(Debug)]
enum Outcome {
    Delivered { attempt: u32, status: u16 },
    Failed(DeadLetter),
    Stopped,
}

/// One attempt's result.
enum Attempt {
    Status(u16, Option<Duration>),
    Timeout,
    Error(String),
    /// The target guard refused the URL or every address its name resolved to.
    Refused(super::WebhookTargetError),
}

/// The guard's refusal inside a client error (the resolver's error travels in its chain).
fn refusal_in(e: &reqwest::Error) -> Option<super::WebhookTargetError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<super::WebhookTargetError>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[derive(Clone)]
struct Lane {
    ctx: SubCtx,
    progress: Arc<dyn Completion>,
    client: PushClient,
    urls: Arc<Vec<String>>,
    timeout: Duration,
    options: DeliveryOptions,
    /// A replay's lane: no delivery latency is observed (store time to now means nothing
    /// for an event stored long ago).
    replay: bool,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Box<Prepared>>) {
        let labels = [self.ctx.topic(), self.ctx.name()];
        let gauge = self
            .ctx
            .metrics
            .in_flight
            .with_label_values(&[self.ctx.name()]);
        let mut stop = self.ctx.stop.clone();
        loop {
            let item = tokio::select! {
                i = rx.recv() => i,
                _ = wait_stop(&mut stop) => None,
            };
            let Some(item) = item else { break };
            let n = self.urls.len() as u64;
            let Some(url) = self.urls.get((item.route_hash() % n.max(1)) as usize) else {
                break;
            };
            let traceparent = meshd_core::event::attribute_string(&item.event, "traceparent");
            let span = info_span!("deliver", event_id = %item.event.id(), traceparent = traceparent.as_deref(), partition = item.partition, offset = item.offset, url = %url);
            // Boxed: the delivery's state (HTTP request, retries) is held only while it
            // runs, not by every idle lane.
            let outcome = Box::pin(self.deliver(url, &item)).instrument(span).await;
            let done = match outcome {
                Outcome::Delivered { attempt, status } => {
                    self.ctx.metrics.delivered.with_label_values(&labels).inc();
                    if !self.replay {
                        observe_latency(&self.ctx, item.timestamp_ms);
                    }
                    self.ctx.trace(&item.event, |subscription| Step::Delivered {
                        subscription,
                        attempt,
                        status: Some(status),
                        latency_ms: now_ms().saturating_sub(item.timestamp_ms),
                    });
                    true
                }
                Outcome::Failed(dl) => Box::pin(dead_letter(&self.ctx, &item.event, &dl)).await,
                Outcome::Stopped => false,
            };
            gauge.dec();
            if done {
                self.progress.done(item.partition, item.offset);
            } else {
                break;
            }
        }
        // Stopping: whatever is queued stays uncommitted and is delivered after a restart.
        rx.close();
        while rx.try_recv().is_ok() {
            gauge.dec();
        }
    }

    async fn deliver(&self, url: &str, item: &Prepared) -> Outcome {
        let policy = &self.ctx.sub.spec.delivery;
        let first = Instant::now();
        let mut attempts: u32 = 0;
        let mut stop = self.ctx.stop.clone();
        loop {
            attempts = attempts.saturating_add(1);
            let attempt = tokio::select! {
                a = self.attempt(url, &item.output) => a,
                _ = wait_stop(&mut stop) => return Outcome::Stopped,
            };
            let (what, status, retry_after) = match attempt {
                Attempt::Status(s, _) if (200..300).contains(&s) => {
                    return Outcome::Delivered {
                        attempt: attempts,
                        status: s,
                    }
                }
                Attempt::Status(s, ra) => (format!("http {s}"), s, ra),
                Attempt::Timeout => ("timeout".to_string(), 0, None),
                Attempt::Error(e) => (format!("connection error: {e}"), 0, None),
                Attempt::Refused(e) => {
                    // Retrying cannot change the rules: dead-letter at once, with the reason.
                    self.ctx
                        .metrics
                        .webhook_refused
                        .with_label_values(&[e.label()])
                        .inc();
                    tracing::info!(error = %e, "webhook target refused; dead-lettering");
                    return Outcome::Failed(DeadLetter {
                        reason: e.to_string(),
                        attempts,
                        status: 0,
                    });
                }
            };
            let jitter = if self.options.full_jitter {
                rand::random::<f64>()
            } else {
                1.0
            };
            let delay = retry_delay(policy, attempts, retry_after, jitter);
            if should_give_up(policy, attempts, first.elapsed(), delay) {
                return Outcome::Failed(DeadLetter {
                    reason: format!("{what} after {attempts} attempts"),
                    attempts,
                    status,
                });
            }
            self.ctx
                .metrics
                .retried
                .with_label_values(&[self.ctx.topic(), self.ctx.name()])
                .inc();
            self.ctx.metrics.last_errors.note(
                self.ctx.name(),
                &format!("{what} (attempt {attempts}, retrying)"),
            );
            self.ctx.trace(&item.event, |subscription| Step::Retried {
                subscription,
                attempt: attempts,
                error: what.as_str().into(),
            });
            debug!(attempt = attempts, failure = %what, delay_ms = delay.as_millis() as u64, "delivery failed; retrying");
            if !self.ctx.sleep(delay).await {
                return Outcome::Stopped;
            }
        }
    }

    async fn attempt(&self, url: &str, output: &TransformOutput) -> Attempt {
        let Some(client) = &self.client.http else {
            return Attempt::Error("no HTTP client (TLS provider missing)".into());
        };
        if let Err(e) = self.client.guard.check_push(url) {
            return Attempt::Refused(e);
        }
        let mut req = client.post(url).timeout(self.timeout);
        match output {
            TransformOutput::Event(e) => {
                let (headers, body) = to_binary_http(e);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                req = req.body(body);
            }
            TransformOutput::Raw { content_type, body } => {
                req = req
                    .header(http::header::CONTENT_TYPE, content_type.as_str())
                    .body(body.clone());
            }
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = if status == 429 || status == 503 {
                    resp.headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, now_ms()))
                } else {
                    None
                };
                Attempt::Status(status, retry_after)
            }
            Err(e) if e.is_timeout() => Attempt::Timeout,
            Err(e) => match refusal_in(&e) {
                Some(refused) => Attempt::Refused(refused),
                None => Attempt::Error(meshd_core::api::error_chain(&e)),
            },
        }
    }
}
