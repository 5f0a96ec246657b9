//! EventBridge-style replays (`/v1/replays`): checked here (nothing starts when a check
//! fails), run by the delivery engine ([`crate::delivery::Delivery::start_replay`]),
//! their status persisted in the store's metadata (`replays/{name}`) when they start,
//! about once a second while they run, and when they end. At start a node reads them
//! back: one that had not ended was interrupted by the restart and is marked failed
//! ([`crate::delivery::replay::interrupted`]), never left looking half-done.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshd_core::api::{check_name, InvalidField, ReplayList, ReplayRequest, ReplayStatus};

use super::{Node, NodeError, START_TIME_SKEW};
use crate::delivery::replay::{interrupted, ReplayHandle, ReplayRun};
use crate::ingest::now_ms;

/// Store metadata prefix of replay statuses.
pub const REPLAY_PREFIX: &str = "replays/";

/// How often a running replay's status is saved.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// A replay a node knows: running (or ended) since it started, or read back from the
/// store.
pub enum ReplayEntry {
    /// Started by this process.
    Live(Arc<ReplayHandle>),
    /// Read back at start (ended: completed, cancelled, failed or interrupted).
    Stored(Box<ReplayStatus>),
}

impl ReplayEntry {
    fn status(&self) -> ReplayStatus {
        match self {
            ReplayEntry::Live(h) => h.status(),
            ReplayEntry::Stored(s) => ReplayStatus::clone(s),
        }
    }
}

static GENERATED: AtomicU64 = AtomicU64::new(0);

fn invalid(field: &str, message: String) -> NodeError {
    NodeError::Invalid(InvalidField {
        field: field.to_string(),
        message,
    })
}

impl Node {
    fn replay_table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ReplayEntry>> {
        self.replays.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the saved replays back (at start); those that had not ended are failed as
    /// interrupted, and saved so.
    pub(super) async fn recover_replays(&self) -> Result<(), NodeError> {
        let now = now_ms();
        for (key, value) in self.store.list_meta(REPLAY_PREFIX).await? {
            let status: ReplayStatus = match serde_json::from_slice(&value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(key, "stored replay is unreadable, skipped: {e}");
                    continue;
                }
            };
            let after = interrupted(status.clone(), now);
            if after != status {
                tracing::warn!(replay = %after.name, subscription = %after.subscription, "replay interrupted by the restart; marked failed");
                self.save_replay(&after).await;
            }
            self.replay_table()
                .insert(after.name.clone(), ReplayEntry::Stored(Box::new(after)));
        }
        Ok(())
    }

    async fn save_replay(&self, status: &ReplayStatus) {
        let bytes = match serde_json::to_vec(status) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(replay = %status.name, "encoding the replay status: {e}");
                return;
            }
        };
        if let Err(e) = self
            .store
            .put_meta(&format!("{REPLAY_PREFIX}{}", status.name), &bytes)
            .await
        {
            tracing::warn!(replay = %status.name, "saving the replay status failed: {e}");
        }
    }

    /// `POST /v1/replays`: checks everything first (unknown topic or subscription 404, a
    /// subscription of another topic, a bad window or filter 400, a taken name 409), then
    /// finds each partition's window by the store's time search and starts the replay.
    pub async fn start_replay(
        self: &Arc<Self>,
        req: ReplayRequest,
    ) -> Result<ReplayStatus, NodeError> {
        let filter = req.validate()?;
        let _guard = self.admin.lock().await;
        let name = match &req.name {
            Some(n) => n.clone(),
            None => format!(
                "replay-{}-{}",
                now_ms(),
                GENERATED.fetch_add(1, Ordering::Relaxed)
            ),
        };
        check_name("name", &name)?;
        if self.replay_table().contains_key(&name) {
            return Err(NodeError::ReplayExists { name });
        }
        let partitions = self.partitions_of(&req.topic).await?;
        let sub = self.compiled_subscription(&req.subscription)?;
        if sub.spec.topic != req.topic {
            return Err(invalid(
                "subscription",
                format!(
                    "subscription {} reads topic {}, not {}",
                    req.subscription, sub.spec.topic, req.topic
                ),
            ));
        }
        self.check_served(&req.subscription)?;
        let now = now_ms();
        if req.from.ms() > now.saturating_add(START_TIME_SKEW.as_millis() as u64) {
            return Err(invalid(
                "from",
                format!(
                    "{} is in the future: no stored event lies in the window",
                    req.from.as_str()
                ),
            ));
        }
        let mut windows = BTreeMap::new();
        for p in 0..partitions {
            let start = self
                .store
                .offset_at_time(&req.topic, p, req.from.ms())
                .await?;
            let end = if req.to.ms() >= now {
                // A window ending in the future ends now: at the partition's end.
                self.store.bounds(&req.topic, p).await?.end
            } else {
                self.store
                    .offset_at_time(&req.topic, p, req.to.ms())
                    .await?
            };
            windows.insert(p, (start, end.max(start)));
        }
        let mut request = req.clone();
        request.name = Some(name.clone());
        let run = ReplayRun::new(name.clone(), request, self.config.node_id.clone(), now);
        let counter = self
            .metrics
            .replayed
            .with_label_values(&[&req.topic, &req.subscription]);
        let handle = ReplayHandle::new(run, Some(counter));
        self.delivery
            .start_replay(sub, handle.clone(), filter, windows)
            .await?;
        self.replay_table()
            .insert(name.clone(), ReplayEntry::Live(handle.clone()));
        let status = handle.status();
        self.save_replay(&status).await;
        tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, replay = %name, subscription = %req.subscription, topic = %req.topic, from = %req.from.as_str(), to = %req.to.as_str(), "replay started");
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAVE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = handle.wait_finished() => break,
                    _ = tick.tick() => node.save_replay(&handle.status()).await,
                }
            }
            node.save_replay(&handle.status()).await;
        });
        Ok(status)
    }

    /// `GET /v1/replays`: every replay this node knows, by name.
    pub fn list_replays(&self) -> ReplayList {
        ReplayList {
            replays: self
                .replay_table()
                .values()
                .map(ReplayEntry::status)
                .collect(),
        }
    }

    /// `GET /v1/replays/{name}`.
    pub fn replay_status(&self, name: &str) -> Result<ReplayStatus, NodeError> {
        self.replay_table()
            .get(name)
            .map(ReplayEntry::status)
            .ok_or_else(|| NodeError::ReplayNotFound {
                name: name.to_string(),
            })
    }

    /// `POST /v1/replays/{name}/cancel`: stops the replay and answers once nothing more
    /// is handed out (409 `replay_ended` when it had ended).
    pub async fn cancel_replay(&self, name: &str) -> Result<ReplayStatus, NodeError> {
        let handle = match self.replay_table().get(name) {
            None => {
                return Err(NodeError::ReplayNotFound {
                    name: name.to_string(),
                })
            }
            Some(ReplayEntry::Live(h)) => h.clone(),
            Some(ReplayEntry::Stored(s)) => {
                return Err(NodeError::ReplayEnded {
                    name: name.to_string(),
                    state: s.state.as_str(),
                })
            }
        };
        if !handle.cancel() {
            let state = handle.status().state.as_str();
            return Err(NodeError::ReplayEnded {
                name: name.to_string(),
                state,
            });
        }
        handle.wait_finished().await;
        let status = handle.status();
        self.save_replay(&status).await;
        tracing::info!(replay = %name, state = status.state.as_str(), replayed = status.events_replayed, "replay cancelled");
        Ok(status)
    }

    /// Saves the status of every live replay (at shutdown, after delivery stopped).
    pub(super) async fn save_replays(&self) {
        let live: Vec<Arc<ReplayHandle>> = self
            .replay_table()
            .values()
            .filter_map(|e| match e {
                ReplayEntry::Live(h) => Some(h.clone()),
                ReplayEntry::Stored(_) => None,
            })
            .collect();
        for h in live {
            self.save_replay(&h.status()).await;
        }
    }
}
