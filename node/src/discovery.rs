//! Schema discovery's shell: stored events of topics with `discover: true` are handed,
//! off the publish path, to a task that runs the inference
//! ([`crate::schemas::discover`]). The publisher only clones each event's `data` into a
//! bounded queue; when the queue is full (the task falls behind) the event is skipped
//! and counted, never waited for.

use std::sync::{Arc, Mutex};

use cloudevents::event::{AttributesReader, Data};
use meshd_core::api::{DiscoveredList, DiscoveredSchema, DiscoveredVersion, InvalidField};
use meshd_core::Event;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::schemas::discover::{Discovered, Discoveries, Observed};

/// Events queued for inference at most (past it they are skipped).
pub const QUEUE: usize = 4096;

struct Sample {
    topic: Arc<str>,
    source: String,
    ty: String,
    data: Option<Data>,
}

/// Why a discovered schema cannot be shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The query is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Nothing was discovered for this (source, type).
    #[error(
        "nothing discovered on topic {topic:?} for source {event_source:?} and type {ty:?} (yet)"
    )]
    NotFound {
        /// Topic.
        topic: String,
        /// Source asked.
        event_source: String,
        /// Type asked.
        ty: String,
    },
}

#[derive(Default)]
struct State {
    found: Mutex<Discoveries>,
    /// Skipped events by topic: queue full, data not JSON, too many (source, type).
    skipped: Mutex<std::collections::HashMap<String, u64>>,
}

impl State {
    fn skip(&self, topic: &str) {
        *self
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_string())
            .or_default() += 1;
    }
}

/// The node's schema discovery.
pub struct Discovery {
    queue: mpsc::Sender<Sample>,
    state: Arc<State>,
}

impl Discovery {
    /// Starts the inference task (it ends when the [`Discovery`] is dropped).
    pub fn start() -> Discovery {
        let (queue, mut rx) = mpsc::channel::<Sample>(QUEUE);
        let state = Arc::new(State::default());
        let task_state = state.clone();
        tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                task_state.infer(s);
            }
        });
        Discovery { queue, state }
    }

    /// Offers stored events of a discovering topic (never waits).
    pub fn offer(&self, topic: &str, events: &[Event]) {
        let topic: Arc<str> = Arc::from(topic);
        for e in events {
            let sample = Sample {
                topic: topic.clone(),
                source: e.source().to_string(),
                ty: e.ty().to_string(),
                data: e.data().cloned(),
            };
            if self.queue.try_send(sample).is_err() {
                self.state.skip(&topic);
            }
        }
    }

    /// Forgets what was discovered on a topic (deleted).
    pub fn forget(&self, topic: &str) {
        self.state
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(topic);
        self.state
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// `GET /v1/topics/{topic}/discovered[?source=&type=]`: every (source, type) with its
    /// latest version, or one with every version.
    pub fn list(
        &self,
        topic: &str,
        source: Option<&str>,
        ty: Option<&str>,
    ) -> Result<DiscoveredList, DiscoveryError> {
        let one = match (source, ty) {
            (Some(s), Some(t)) => Some((s, t)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(InvalidField {
                    field: "type".into(),
                    message: "give type with source (or neither, to list them all)".into(),
                }
                .into())
            }
            (None, Some(_)) => {
                return Err(InvalidField {
                    field: "source".into(),
                    message: "give source with type (or neither, to list them all)".into(),
                }
                .into())
            }
        };
        let skipped = self
            .state
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied()
            .unwrap_or(0);
        let found = self.state.found.lock().unwrap_or_else(|p| p.into_inner());
        let all = found.topic(topic);
        let schemas = match one {
            None => all
                .map(|keys| {
                    keys.iter()
                        .map(|((s, t), d)| summary(s, t, d, false))
                        .collect()
                })
                .unwrap_or_default(),
            Some((s, t)) => {
                let d = all
                    .and_then(|keys| keys.get(&(s.to_string(), t.to_string())))
                    .ok_or_else(|| DiscoveryError::NotFound {
                        topic: topic.to_string(),
                        event_source: s.to_string(),
                        ty: t.to_string(),
                    })?;
                vec![summary(s, t, d, true)]
            }
        };
        Ok(DiscoveredList {
            topic: topic.to_string(),
            schemas,
            skipped,
        })
    }
}

fn summary(source: &str, ty: &str, d: &Discovered, versions: bool) -> DiscoveredSchema {
    let latest = d.versions.last();
    DiscoveredSchema {
        source: source.to_string(),
        ty: ty.to_string(),
        events: d.events,
        last_ms: d.last_ms,
        latest: latest.map_or(0, |v| v.version),
        schema: latest.map_or(Value::Null, |v| v.schema.clone()),
        versions: if versions {
            d.versions
                .iter()
                .map(|v| DiscoveredVersion {
                    version: v.version,
                    created_ms: v.created_ms,
                    schema: v.schema.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

impl State {
    fn infer(&self, s: Sample) {
        let parsed;
        let data: &Value = match &s.data {
            None => &Value::Null,
            Some(Data::Json(v)) => v,
            Some(Data::String(text)) => match serde_json::from_str(text) {
                Ok(v) => {
                    parsed = v;
                    &parsed
                }
                Err(_) => return self.skip(&s.topic),
            },
            Some(Data::Binary(b)) => match serde_json::from_slice(b) {
                Ok(v) => {
                    parsed = v;
                    &parsed
                }
                Err(_) => return self.skip(&s.topic),
            },
        };
        let observed = self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(&s.topic, &s.source, &s.ty, data, crate::ingest::now_ms());
        match observed {
            Observed::TooManyKeys => self.skip(&s.topic),
            Observed::NewVersion => {
                tracing::debug!(topic = %s.topic, source = %s.source, ty = %s.ty, "discovered a new schema version");
            }
            Observed::Known => {}
        }
    }
}
