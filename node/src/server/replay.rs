//! Steering by position and time: where a subscription starts (checked against the
//! topic before anything is stored), moving a live subscription (`seek`), and browsing
//! a topic's stored events. The time → offset lookup is the store's
//! ([`crate::store::EventStore::offset_at_time`]); moving delivery is the engine's
//! ([`crate::delivery::Delivery::seek`]).

use std::time::Duration;

use meshd_core::api::{
    format_time_ms, BrowseResponse, BrowsedEvent, InvalidField, SeekResponse, StartPosition,
    MAX_BROWSE_LIMIT,
};
use meshd_core::codec::decode_event;

use super::{Node, NodeError};
use crate::ingest::now_ms;

/// How far in the future a start time may lie (clocks of client and node disagree a
/// little); a time past it names no stored event yet and is refused.
pub const START_TIME_SKEW: Duration = Duration::from_secs(60);

/// Most payload bytes one browse answer carries; past it the page ends early (`next`
/// says where to go on).
pub const BROWSE_MAX_BYTES: usize = 4 << 20;

/// Where a browse starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowseFrom {
    /// The partition's first retained event.
    Start,
    /// This offset (the first event at or after it).
    Offset(u64),
    /// The first event stored at or after this time (ms since the epoch).
    Time(u64),
}

fn invalid(field: String, message: String) -> NodeError {
    NodeError::Invalid(InvalidField { field, message })
}

fn path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

impl Node {
    /// The partition count of an existing topic (404 `topic_not_found` otherwise).
    pub(super) async fn partitions_of(&self, topic: &str) -> Result<u32, NodeError> {
        self.topic_config(topic)
            .await?
            .map(|c| c.partitions.max(1))
            .ok_or_else(|| NodeError::TopicNotFound {
                topic: topic.to_string(),
            })
    }

    /// Checks a start position against `topic` as it is now: every partition named
    /// exists, no offset lies past its partition's end, a time is not in the future.
    /// `prefix` is the position's path in the request body (`start`, or empty for a seek).
    pub async fn check_start(
        &self,
        topic: &str,
        start: &StartPosition,
        prefix: &str,
    ) -> Result<(), NodeError> {
        start.validate(prefix)?;
        match start {
            StartPosition::Latest | StartPosition::Earliest => {}
            StartPosition::Time(t) => {
                let limit = now_ms().saturating_add(START_TIME_SKEW.as_millis() as u64);
                if t.ms() > limit {
                    return Err(invalid(
                        path(prefix, "time"),
                        format!(
                            "{} is in the future; give a time at or before now (\"latest\" starts at the next event)",
                            t.as_str()
                        ),
                    ));
                }
            }
            StartPosition::Offsets(offsets) => {
                let partitions = self.partitions_of(topic).await?;
                for (p, o) in offsets {
                    let field = path(prefix, &format!("offsets.{p}"));
                    if *p >= partitions {
                        return Err(invalid(
                            field,
                            format!(
                                "topic {topic} has no partition {p}: it has {partitions} (0 to {})",
                                partitions - 1
                            ),
                        ));
                    }
                    let b = self.store.bounds(topic, *p).await?;
                    if *o > b.end {
                        return Err(invalid(
                            field,
                            format!(
                                "offset {o} is past the end of partition {p} of {topic} (the next event gets {}); see GET /v1/topics/{topic}",
                                b.end
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/subscriptions/{name}/seek`: moves a subscription this node delivers (or
    /// may deliver) to `start`; its consumers see the events from there again. Checked
    /// first (unknown subscription 404, group placed elsewhere 503, a bad position 400):
    /// a refused seek changes nothing.
    pub async fn seek_subscription(
        &self,
        name: &str,
        start: StartPosition,
    ) -> Result<SeekResponse, NodeError> {
        let _guard = self.admin.lock().await;
        let sub = self.compiled_subscription(name)?;
        self.check_served(name)?;
        self.check_start(&sub.spec.topic, &start, "").await?;
        let positions = self.delivery.seek(sub, &start).await?;
        tracing::info!(cluster = %self.config.cluster, node = %self.config.node_id, subscription = %name, to = %start.describe(), "subscription seek");
        Ok(SeekResponse {
            subscription: name.to_string(),
            positions,
        })
    }

    /// `GET /v1/topics/{topic}/events`: up to `limit` stored events of one partition
    /// (the only one, or `partition`), from `from`; at most [`BROWSE_MAX_BYTES`] of
    /// payload per page.
    pub async fn browse_topic(
        &self,
        topic: &str,
        partition: Option<u32>,
        from: BrowseFrom,
        limit: usize,
    ) -> Result<BrowseResponse, NodeError> {
        if limit == 0 || limit > MAX_BROWSE_LIMIT {
            return Err(invalid(
                "limit".into(),
                format!("must be from 1 to {MAX_BROWSE_LIMIT}"),
            ));
        }
        let partitions = self.partitions_of(topic).await?;
        let partition = match partition {
            Some(p) if p < partitions => p,
            Some(p) => {
                return Err(invalid(
                    "partition".into(),
                    format!(
                        "topic {topic} has no partition {p}: it has {partitions} (0 to {})",
                        partitions - 1
                    ),
                ))
            }
            None if partitions == 1 => 0,
            None => {
                return Err(invalid(
                    "partition".into(),
                    format!("topic {topic} has {partitions} partitions; name one with partition=P (0 to {})", partitions - 1),
                ))
            }
        };
        let b = self.store.bounds(topic, partition).await?;
        let at = match from {
            BrowseFrom::Start => b.start,
            BrowseFrom::Offset(o) if o > b.end => {
                return Err(invalid(
                    "from".into(),
                    format!(
                        "offset {o} is past the end of partition {partition} of {topic} (the next event gets {})",
                        b.end
                    ),
                ))
            }
            BrowseFrom::Offset(o) => o.max(b.start),
            BrowseFrom::Time(ms) => self.store.offset_at_time(topic, partition, ms).await?,
        };
        let records = self.store.read(topic, partition, at, limit).await?;
        let mut events = Vec::with_capacity(records.len());
        let mut bytes = 0usize;
        let mut next = at;
        for r in records {
            if !events.is_empty() && bytes + r.payload.len() > BROWSE_MAX_BYTES {
                break;
            }
            bytes += r.payload.len();
            next = r.offset + 1;
            let (event, error) = match decode_event(&r.payload)
                .map_err(|e| e.to_string())
                .and_then(|e| serde_json::to_value(&e).map_err(|e| e.to_string()))
            {
                Ok(v) => (v, None),
                Err(e) => (serde_json::Value::Null, Some(e)),
            };
            events.push(BrowsedEvent {
                partition,
                offset: r.offset,
                time: format_time_ms(r.timestamp_ms),
                event,
                error,
            });
        }
        Ok(BrowseResponse {
            topic: topic.to_string(),
            partition,
            events,
            next,
            end: b.end.max(next),
        })
    }
}
