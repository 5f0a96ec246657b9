//! Delivery of stored events to subscriptions: webhook push and pull, at least once.
//!
//! Owns: reading each subscribed partition from its committed offset, filtering and
//! transforming, pushing to webhooks (retries with backoff, lanes for per-key order,
//! CLUSTERING/BROADCASTING members) or handing events out to pull consumers under ack
//! deadlines, dead-lettering, and committing the contiguous completed prefix of offsets.
//! Persisting subscriptions is the API layer's job: it calls [`Delivery::start`] at boot
//! and on create and [`Delivery::stop`] on delete.
//!
//! # Layout
//! - [`backoff`]: retry timing (pure).
//! - [`tracker`]: completed offsets → commit point (pure).
//! - [`lease`]: the pull lease table (pure, injected time).
//! - [`common`]: context, start cursors, the partition reader, commits, dead-lettering.
//! - [`push`]: webhook lanes.
//! - [`guard`]: which addresses a webhook may reach (checked at create and at connect).
//! - [`pull`]: pull groups, long polls and acks.
//!
//! # Offsets
//! An offset group commits "the next offset to read" per (group key, topic, partition).
//! The key is the subscription name for CLUSTERING and `"{name}/{member}"` for each
//! BROADCASTING member (webhook URL index, or pull consumer id), whose first cursor is the
//! subscription's base cursor committed under the name. A committed offset never passes an
//! incomplete one, so a restart may deliver duplicates but never skips an event.

pub mod backoff;
pub mod common;
pub mod feed;
pub mod guard;
pub mod lease;
pub mod pull;
pub mod push;
pub mod replay;
pub mod replay_run;
pub mod tracker;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use meshd_core::api::{
    AckResponse, CompiledSubscription, GroupMode, PulledEvent, Sink, StartPosition,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::store::{EventStore, StoreError};
use crate::trace::TraceLog;
use common::{topic_partitions, Progress, SubCtx};
pub use guard::{WebhookGuard, WebhookTargetError};
use pull::PullSub;

/// Header naming the node that made a webhook push (`meshd-node: {node id}`), so a
/// receiver (and the cluster tests) can tell which node of a cluster delivered.
pub const NODE_HEADER: &str = "meshd-node";

/// How long `stop` waits for a subscription's tasks before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Failures of delivery calls made by the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No such subscription.
    #[error("subscription {name:?} does not exist")]
    NotFound {
        /// Name.
        name: String,
    },
    /// Pull/ack on a subscription whose sink is a webhook.
    #[error("subscription {name:?} pushes to a webhook; pull and ack work only on pull sinks")]
    NotPull {
        /// Name.
        name: String,
    },
    /// A BROADCASTING pull subscription has as many consumers as it may track.
    #[error("subscription {name:?} already has {max} consumers; reuse a consumer id")]
    TooManyConsumers {
        /// Name.
        name: String,
        /// The bound.
        max: usize,
    },
    /// A replay cannot go to this subscription (BROADCASTING, or one runs already).
    #[error("{message}")]
    ReplayRefused {
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tunables of the engine (defaults are what production uses).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOptions {
    /// Full jitter on retry delays (`false`: sleep the whole backoff ceiling; tests use it
    /// to observe the exponential growth).
    pub full_jitter: bool,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions { full_jitter: true }
    }
}

enum Kind {
    Push,
    Pull(Arc<PullSub>),
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Push lanes spawned on first use, per offset group.
    lanes: Vec<Arc<push::LaneTasks>>,
    progress: Vec<Arc<Progress>>,
    kind: Kind,
}

/// Runs every subscription of a node.
pub struct Delivery {
    store: Arc<dyn EventStore>,
    metrics: Metrics,
    client: Option<reqwest::Client>,
    guard: Arc<WebhookGuard>,
    options: DeliveryOptions,
    subs: tokio::sync::Mutex<HashMap<String, Running>>,
    feeds: Arc<feed::Feeds>,
    /// The replay running into each subscription (at most one).
    replays: std::sync::Mutex<HashMap<String, Arc<replay::ReplayHandle>>>,
    trace: Arc<TraceLog>,
}

impl Delivery {
    /// Creates the delivery engine (webhooks on loopback allowed: for tests of the engine).
    pub fn new(store: Arc<dyn EventStore>, metrics: Metrics) -> Delivery {
        Delivery::with_options(store, metrics, DeliveryOptions::default())
    }

    /// Creates the delivery engine with explicit tunables (webhooks on loopback allowed).
    pub fn with_options(
        store: Arc<dyn EventStore>,
        metrics: Metrics,
        options: DeliveryOptions,
    ) -> Delivery {
        let guard = WebhookGuard::new(meshd_core::egress::EgressRules {
            allow_loopback: true,
            ..Default::default()
        });
        Delivery::build(
            store,
            metrics,
            options,
            None,
            guard,
            Arc::new(TraceLog::off()),
        )
    }

    /// Creates the delivery engine of node `node_id`: every webhook push carries the
    /// [`NODE_HEADER`] header with the id, and goes only where `guard` allows; delivered,
    /// retried and dead-lettered events are recorded in `trace`.
    pub fn for_node(
        store: Arc<dyn EventStore>,
        metrics: Metrics,
        node_id: &str,
        guard: Arc<WebhookGuard>,
        trace: Arc<TraceLog>,
    ) -> Delivery {
        Delivery::build(
            store,
            metrics,
            DeliveryOptions::default(),
            Some(node_id),
            guard,
            trace,
        )
    }

    fn build(
        store: Arc<dyn EventStore>,
        metrics: Metrics,
        options: DeliveryOptions,
        node_id: Option<&str>,
        guard: Arc<WebhookGuard>,
        trace: Arc<TraceLog>,
    ) -> Delivery {
        // reqwest is built without a default TLS provider; install ring unless the binary
        // already installed one (then this is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = http::HeaderMap::new();
        if let Some(v) = node_id.and_then(|id| http::HeaderValue::from_str(id).ok()) {
            headers.insert(NODE_HEADER, v);
        }
        let client = match reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(60))
            .default_headers(headers)
            // The target was checked, not where it redirects; and no proxy from the
            // environment stands between the check and the connection.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(guard::GuardedResolver::new(guard.clone())))
            .build()
        {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "HTTP client unavailable; webhook deliveries will fail and retry");
                None
            }
        };
        Delivery {
            feeds: feed::Feeds::new(store.clone()),
            store,
            metrics,
            client,
            guard,
            options,
            subs: tokio::sync::Mutex::new(HashMap::new()),
            replays: std::sync::Mutex::new(HashMap::new()),
            trace,
        }
    }

    /// Starts (or restarts with a new spec) a subscription.
    pub async fn start(&self, sub: Arc<CompiledSubscription>) -> Result<(), DeliveryError> {
        let mut subs = self.subs.lock().await;
        if let Some(old) = subs.remove(&sub.spec.name) {
            self.abandon_replay(
                &sub.spec.name,
                "the subscription was restarted on this node",
            )
            .await;
            stop_running(old).await;
        }
        self.start_locked(&mut subs, sub).await
    }

    /// Starts a subscription that is not running (`subs` is the locked table).
    async fn start_locked(
        &self,
        subs: &mut HashMap<String, Running>,
        sub: Arc<CompiledSubscription>,
    ) -> Result<(), DeliveryError> {
        let name = sub.spec.name.clone();
        let partitions = topic_partitions(self.store.as_ref(), &sub.spec.topic).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = SubCtx {
            sub: sub.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            stop: stop_rx,
            feeds: self.feeds.clone(),
            trace: self.trace.clone(),
            trace_name: self.trace.intern(&sub.spec.name),
        };
        let running = match &sub.spec.sink {
            Sink::Webhook(w) => {
                let client = push::PushClient {
                    http: self.client.clone(),
                    guard: self.guard.clone(),
                };
                match push::start(ctx, w, partitions, client, self.options).await {
                    Ok(r) => Running {
                        stop: stop_tx,
                        tasks: r.tasks,
                        lanes: r.lanes,
                        progress: r.progress,
                        kind: Kind::Push,
                    },
                    Err(e) => {
                        let _ = stop_tx.send(true);
                        return Err(e.into());
                    }
                }
            }
            Sink::Pull(_) => match PullSub::start(ctx, partitions).await {
                Ok(p) => Running {
                    stop: stop_tx,
                    tasks: Vec::new(),
                    lanes: Vec::new(),
                    progress: Vec::new(),
                    kind: Kind::Pull(p),
                },
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(e.into());
                }
            },
        };
        info!(subscription = %name, topic = %sub.spec.topic, partitions, "subscription started");
        subs.insert(name, running);
        Ok(())
    }

    /// Fixes where a subscription that is not started here yet begins: commits its base
    /// cursor (per its `start` position, now) unless one is committed already. A node that
    /// creates a subscription whose group is placed elsewhere calls this, so the group
    /// starts from the subscription's creation wherever and whenever it is first run.
    pub async fn pin_start(&self, sub: &CompiledSubscription) -> Result<(), DeliveryError> {
        let partitions = topic_partitions(self.store.as_ref(), &sub.spec.topic).await?;
        common::starting_cursors(
            self.store.as_ref(),
            &sub.spec.name,
            &sub.spec.topic,
            partitions,
            &sub.spec.start,
            None,
        )
        .await?;
        Ok(())
    }

    /// Moves a subscription to `start` (a seek): resolves the new cursor of every
    /// partition `start` names first (nothing changes when that fails), stops the
    /// subscription if it runs here (handed-out pull events are released, their ack ids
    /// become unknown), commits the cursors for the subscription and each of its
    /// BROADCASTING members, and starts it again (when it was running), so its consumers
    /// see the events from there again. Returns every partition's cursor now.
    ///
    /// BROADCASTING pull members that have not pulled since this node started are not
    /// known here and keep their own positions.
    pub async fn seek(
        &self,
        sub: Arc<CompiledSubscription>,
        start: &StartPosition,
    ) -> Result<BTreeMap<u32, u64>, DeliveryError> {
        let spec = &sub.spec;
        let store = self.store.as_ref();
        let partitions = topic_partitions(store, &spec.topic).await?;
        let mut targets = BTreeMap::new();
        for p in 0..partitions {
            if let Some(o) = common::start_cursor(store, &spec.topic, p, start).await? {
                targets.insert(p, o);
            }
        }
        let mut subs = self.subs.lock().await;
        let mut groups: BTreeSet<String> = BTreeSet::from([spec.name.clone()]);
        if let Sink::Webhook(w) = &spec.sink {
            if spec.mode == GroupMode::Broadcasting {
                groups.extend((0..w.members().len()).map(|i| format!("{}/{i}", spec.name)));
            }
        }
        let running = subs.remove(&spec.name);
        let was_running = running.is_some();
        if let Some(r) = running {
            if let Kind::Pull(p) = &r.kind {
                groups.extend(p.progress().await.iter().map(|g| g.group().to_string()));
            }
            self.abandon_replay(&spec.name, "the subscription was moved (seek)")
                .await;
            stop_running(r).await;
        }
        let mut committed = Ok(());
        'groups: for g in &groups {
            for (p, o) in &targets {
                if let Err(e) = store.commit_offset(g, &spec.topic, *p, *o).await {
                    committed = Err(e);
                    break 'groups;
                }
            }
        }
        if was_running {
            self.start_locked(&mut subs, sub.clone()).await?;
        }
        committed?;
        info!(subscription = %spec.name, topic = %spec.topic, to = %start.describe(), groups = groups.len(), restarted = was_running, "subscription moved (seek)");
        let mut positions = BTreeMap::new();
        for p in 0..partitions {
            let at = match targets.get(&p) {
                Some(o) => Some(*o),
                None => store.committed_offset(&spec.name, &spec.topic, p).await?,
            };
            if let Some(o) = at {
                positions.insert(p, o);
            }
        }
        Ok(positions)
    }

    /// Stops the replay into `name` (if any) and waits until it handed out its last
    /// event; it fails with `why` unless it ended already.
    async fn abandon_replay(&self, name: &str, why: &str) {
        let handle = self
            .replays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(h) = handle {
            h.abandon(why);
            h.wait_finished().await;
        }
    }

    /// Starts `handle`'s replay of `windows` (offsets `[start, end)` per partition) into
    /// the running subscription `sub`, with the replay's own `filter` on top of the
    /// subscription's. Refused (nothing started) when the subscription does not run here,
    /// is BROADCASTING, or has a replay running.
    pub async fn start_replay(
        &self,
        sub: Arc<CompiledSubscription>,
        handle: Arc<replay::ReplayHandle>,
        filter: Option<meshd_core::filter::Filter>,
        windows: BTreeMap<u32, (u64, u64)>,
    ) -> Result<(), DeliveryError> {
        let name = sub.spec.name.clone();
        if sub.spec.mode != GroupMode::Clustering {
            return Err(DeliveryError::ReplayRefused {
                message: format!("subscription {name:?} is BROADCASTING; replays go to CLUSTERING subscriptions only"),
            });
        }
        let subs = self.subs.lock().await;
        let Some(running) = subs.get(&name) else {
            return Err(DeliveryError::NotFound { name });
        };
        {
            let replays = self.replays.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = replays.get(&name) {
                if !other.status().state.is_terminal() {
                    return Err(DeliveryError::ReplayRefused {
                        message: format!(
                            "replay {:?} runs into subscription {name:?}; cancel it or wait for it to end (one replay per subscription at a time)",
                            other.status().name
                        ),
                    });
                }
            }
        }
        let ctx = SubCtx {
            sub: sub.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            stop: handle.stop_watch(),
            feeds: self.feeds.clone(),
            trace: self.trace.clone(),
            trace_name: self.trace.intern(&sub.spec.name),
        };
        handle.with(|r| r.begin(windows.clone(), crate::ingest::now_ms()));
        let (dispatch, sink_tasks, detach): (_, _, Box<dyn FnOnce() + Send>) =
            match (&running.kind, &sub.spec.sink) {
                (Kind::Pull(p), _) => match p.attach_replay(handle.clone()).await? {
                    Some(d) => {
                        let p = p.clone();
                        (d, Vec::new(), Box::new(move || p.detach_replay()))
                    }
                    None => {
                        return Err(DeliveryError::ReplayRefused {
                            message: format!("subscription {name:?} has a replay attached"),
                        });
                    }
                },
                (Kind::Push, Sink::Webhook(w)) => {
                    let client = push::PushClient {
                        http: self.client.clone(),
                        guard: self.guard.clone(),
                    };
                    let (d, tasks) = push::start_replay_lanes(
                        ctx.clone(),
                        w,
                        client,
                        self.options,
                        handle.clone(),
                    );
                    (d, tasks, Box::new(|| {}))
                }
                (Kind::Push, Sink::Pull(_)) => {
                    return Err(DeliveryError::NotFound { name });
                }
            };
        self.replays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), handle.clone());
        drop(subs);
        info!(subscription = %name, windows = ?windows, "replay started");
        replay::run(ctx, handle, filter, windows, dispatch, sink_tasks, detach);
        Ok(())
    }

    /// The webhook target guard.
    pub fn guard(&self) -> &Arc<WebhookGuard> {
        &self.guard
    }

    /// Stops a subscription; `false` when it was not running.
    pub async fn stop(&self, name: &str) -> bool {
        let running = self.subs.lock().await.remove(name);
        match running {
            Some(r) => {
                self.abandon_replay(name, "the subscription stopped on this node")
                    .await;
                stop_running(r).await;
                info!(subscription = %name, "subscription stopped");
                true
            }
            None => false,
        }
    }

    async fn pull_sub(&self, name: &str) -> Result<Arc<PullSub>, DeliveryError> {
        let subs = self.subs.lock().await;
        match subs.get(name) {
            None => Err(DeliveryError::NotFound { name: name.into() }),
            Some(Running {
                kind: Kind::Pull(p),
                ..
            }) => Ok(p.clone()),
            Some(_) => Err(DeliveryError::NotPull { name: name.into() }),
        }
    }

    /// Long-polls a pull subscription for up to `max` events, waiting up to `wait`.
    pub async fn pull(
        &self,
        name: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PulledEvent>, DeliveryError> {
        self.pull_sub(name).await?.pull(consumer, max, wait).await
    }

    /// Acknowledges pulled events.
    pub async fn ack(
        &self,
        name: &str,
        consumer: &str,
        ack_ids: Vec<String>,
    ) -> Result<AckResponse, DeliveryError> {
        Ok(self.pull_sub(name).await?.ack(consumer, ack_ids).await)
    }

    /// Whether a subscription's delivery runs here.
    pub async fn is_running(&self, name: &str) -> bool {
        self.subs.lock().await.contains_key(name)
    }

    /// Per partition, where a subscription running here would commit now (completed
    /// offsets not yet written to the store included): the lowest over its offset groups
    /// (BROADCASTING members each have one). `None` when it does not run here or no
    /// group tracks progress yet (a BROADCASTING pull subscription before its first pull).
    pub async fn commit_points(&self, name: &str) -> Option<BTreeMap<u32, u64>> {
        let (mut progress, pull) = {
            let subs = self.subs.lock().await;
            let r = subs.get(name)?;
            match &r.kind {
                Kind::Push => (r.progress.clone(), None),
                Kind::Pull(p) => (Vec::new(), Some(p.clone())),
            }
        };
        if let Some(p) = pull {
            progress = p.progress().await;
        }
        let mut points: Option<BTreeMap<u32, u64>> = None;
        for p in progress {
            let mine = p.commit_points();
            let all = points.get_or_insert_with(|| mine.iter().map(|(k, v)| (*k, *v)).collect());
            for (part, at) in mine {
                let e = all.entry(part).or_insert(at);
                *e = (*e).min(at);
            }
        }
        points
    }

    /// How many push lanes a running subscription has spawned (they start on first use).
    #[cfg(test)]
    async fn lanes_spawned(&self, name: &str) -> usize {
        let subs = self.subs.lock().await;
        subs.get(name)
            .map_or(0, |r| r.lanes.iter().map(|l| l.spawned()).sum())
    }

    /// Names of the running subscriptions, sorted.
    pub async fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.subs.lock().await.keys().cloned().collect();
        v.sort();
        v
    }

    /// Stops every subscription, committing what was acknowledged.
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.subs.lock().await.keys().cloned().collect();
        for n in names {
            self.abandon_replay(&n, "the node stopped").await;
        }
        let all: Vec<Running> = self.subs.lock().await.drain().map(|(_, r)| r).collect();
        for r in all {
            stop_running(r).await;
        }
    }
}

/// Signals stop, waits for the tasks (aborting stragglers) and commits the final progress.
async fn stop_running(r: Running) {
    let _ = r.stop.send(true);
    let mut tasks = r.tasks;
    for l in &r.lanes {
        tasks.extend(l.take());
    }
    let mut progress = r.progress;
    if let Kind::Pull(p) = &r.kind {
        tasks.extend(p.take_tasks());
        progress.extend(p.progress().await);
        p.release_in_flight().await;
    }
    for mut t in tasks {
        if tokio::time::timeout(STOP_GRACE, &mut t).await.is_err() {
            t.abort();
        }
    }
    for p in progress {
        p.flush().await;
    }
}
