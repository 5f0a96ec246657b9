//! Bodies of the `/v1` HTTP API and the one error body every role answers with.
//!
//! Validation of a request body happens here, once, and reports the field at fault.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::filter::{Filter, FilterSpec};
use crate::transform::{Transform, TransformSpec};

/// `{ "error": { "code": "...", "message": "...", "field": "..." } }`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Fixed machine-readable code (never reused for another meaning).
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
    /// The field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: impl Into<String>, message: impl Into<String>, field: Option<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field,
            },
        }
    }
}

/// A request body that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// Path of the field, e.g. `delivery.max_attempts`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        message: message.into(),
    }
}

/// The text of an error followed by its causes (`e: cause: cause…`), for error bodies,
/// logs and link states: many errors (reqwest's, quinn's "connection lost") say why only
/// in their source. A cause whose text is already in the message is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 256;

/// Checks a topic or subscription name: 1..=200 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_name(kind: &str, name: &str) -> Result<(), InvalidField> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            kind,
            format!("{kind} name {name:?} is invalid: use 1 to 200 of A-Z a-z 0-9 . _ - (not starting with .)"),
        ))
    }
}

/// Body of `PUT /v1/topics/{topic}` (all optional) and what `GET /v1/topics` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions; events with the same partition key share one.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// How long and how much to keep.
    #[serde(default)]
    pub retention: Retention,
    /// Which clusters may receive the topic (federation); empty means wherever there is
    /// interest. Stored and shown; enforced by the federation bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicate_to: Vec<String>,
    /// Schemas bound to event types: `{event type -> schema name}` (docs/api.md,
    /// "Schemas"). Checked on publish when `validate` is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, String>,
    /// Validate the `data` of events whose `type` has a bound schema on publish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validate: bool,
    /// Infer a JSON Schema per (source, type) from the events stored (docs/api.md,
    /// "Schema discovery"); `GET /v1/topics/{topic}/discovered` lists them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discover: bool,
}

fn default_partitions() -> u32 {
    1
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            retention: Retention::default(),
            replicate_to: Vec::new(),
            schemas: BTreeMap::new(),
            validate: false,
            discover: false,
        }
    }
}

impl TopicConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(invalid(
                "partitions",
                format!("partitions must be from 1 to {MAX_PARTITIONS}"),
            ));
        }
        if self.retention.max_age_secs == Some(0) {
            return Err(invalid(
                "retention.max_age_secs",
                "must be at least 1 when set",
            ));
        }
        if self.retention.max_bytes == Some(0) {
            return Err(invalid(
                "retention.max_bytes",
                "must be at least 1 when set",
            ));
        }
        if self.schemas.len() > MAX_SCHEMA_BINDINGS {
            return Err(invalid(
                "schemas",
                format!("at most {MAX_SCHEMA_BINDINGS} event types may have a schema"),
            ));
        }
        for (event_type, schema) in &self.schemas {
            if event_type.is_empty() || event_type.len() > 256 {
                return Err(invalid(
                    "schemas",
                    format!("event type {event_type:?} must be 1 to 256 bytes"),
                ));
            }
            check_name("schema", schema).map_err(|e| InvalidField {
                field: format!("schemas.{event_type}"),
                message: e.message,
            })?;
        }
        Ok(())
    }
}

/// Most event types one topic may bind schemas to.
pub const MAX_SCHEMA_BINDINGS: usize = 1000;

/// One setting in which an existing topic differs from the configuration asked for
/// (`PUT /v1/topics/{topic}` on a topic that exists otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDifference {
    /// The setting's path in [`TopicConfig`], e.g. `partitions`, `retention.max_age_secs`.
    pub setting: &'static str,
    /// Its value on the existing topic.
    pub existing: String,
    /// The value asked for.
    pub asked: String,
}

impl TopicConfig {
    /// Every setting in which `self` (an existing topic) differs from `asked`, in the
    /// order of the fields. Unset limits read `unset`; `replicate_to` is a list.
    pub fn differences(&self, asked: &TopicConfig) -> Vec<SettingDifference> {
        fn opt(v: Option<u64>) -> String {
            v.map_or_else(|| "unset".to_string(), |v| v.to_string())
        }
        fn list(v: &[String]) -> String {
            format!("[{}]", v.join(","))
        }
        let mut out = Vec::new();
        let mut diff = |setting, existing: String, asked: String| {
            if existing != asked {
                out.push(SettingDifference {
                    setting,
                    existing,
                    asked,
                });
            }
        };
        diff(
            "partitions",
            self.partitions.to_string(),
            asked.partitions.to_string(),
        );
        diff(
            "retention.max_age_secs",
            opt(self.retention.max_age_secs),
            opt(asked.retention.max_age_secs),
        );
        diff(
            "retention.max_bytes",
            opt(self.retention.max_bytes),
            opt(asked.retention.max_bytes),
        );
        diff(
            "replicate_to",
            list(&self.replicate_to),
            list(&asked.replicate_to),
        );
        fn bindings(v: &BTreeMap<String, String>) -> String {
            let pairs: Vec<String> = v.iter().map(|(t, s)| format!("{t}:{s}")).collect();
            format!("{{{}}}", pairs.join(","))
        }
        diff("schemas", bindings(&self.schemas), bindings(&asked.schemas));
        diff(
            "discover",
            self.discover.to_string(),
            asked.discover.to_string(),
        );
        diff(
            "validate",
            self.validate.to_string(),
            asked.validate.to_string(),
        );
        out
    }
}

/// The message of a topic conflict: `topic orders exists with partitions=4, you asked
/// partitions=1` (several settings joined with `and`).
pub fn topic_conflict_message(topic: &str, differences: &[SettingDifference]) -> String {
    if differences.is_empty() {
        return format!("topic {topic} exists with another configuration");
    }
    let side = |f: fn(&SettingDifference) -> &str| {
        differences
            .iter()
            .map(|d| format!("{}={}", d.setting, f(d)))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    format!(
        "topic {topic} exists with {}, you asked {}",
        side(|d| &d.existing),
        side(|d| &d.asked)
    )
}

/// Retention of a topic: records older than `max_age_secs`, and the oldest records past
/// `max_bytes` per partition, are removed. `None` keeps forever / without bound.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep records at most this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Keep at most this many bytes of records per partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// How a consumer group shares the events of a subscription among its members.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum GroupMode {
    /// Each event goes to one member (events of one partition key to the same member).
    #[default]
    Clustering,
    /// Each event goes to every member.
    Broadcasting,
}

/// Where a subscription starts reading: its `start` at creation, and the body of
/// `POST /v1/subscriptions/{name}/seek`. In JSON `"latest"`, `"earliest"`,
/// `{"time": "2026-12-03T10:00:00Z"}` or `{"offsets": {"0": 42, "3": 7}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// Only events published after the subscription was created (a seek: after now).
    #[default]
    Latest,
    /// Everything the topic still retains.
    Earliest,
    /// On every partition, the first event stored at or after this time (the store's
    /// time of each record, found by a binary search, never a scan of the log).
    Time(StartTime),
    /// The next offset to read, per partition (`record.offset` of the first event
    /// wanted). Partitions not named start at the end (creation) or stay where they are
    /// (seek). An offset below the partition's first retained one starts there.
    Offsets(BTreeMap<u32, u64>),
}

impl StartPosition {
    /// Checks what needs no store: the partitions named in `offsets` (at least one, each
    /// below [`MAX_PARTITIONS`]). `field` is the path of the position in its body (`start`
    /// in a subscription, empty in a seek body).
    pub fn validate(&self, field: &str) -> Result<(), InvalidField> {
        let path = |rest: &str| {
            if field.is_empty() {
                rest.to_string()
            } else {
                format!("{field}.{rest}")
            }
        };
        if let StartPosition::Offsets(offsets) = self {
            if offsets.is_empty() {
                return Err(invalid(
                    path("offsets"),
                    "name at least one partition, e.g. {\"offsets\": {\"0\": 42}}",
                ));
            }
            if let Some(p) = offsets.keys().find(|p| **p >= MAX_PARTITIONS) {
                return Err(invalid(
                    path(&format!("offsets.{p}")),
                    format!("partition {p} does not exist: a topic has at most {MAX_PARTITIONS} partitions"),
                ));
            }
        }
        Ok(())
    }

    /// `latest`, `earliest`, the time, or the offsets as `P:O,P:O` (tables, logs).
    pub fn describe(&self) -> String {
        match self {
            StartPosition::Latest => "latest".into(),
            StartPosition::Earliest => "earliest".into(),
            StartPosition::Time(t) => t.as_str().to_string(),
            StartPosition::Offsets(o) => o
                .iter()
                .map(|(p, o)| format!("{p}:{o}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Why a start time was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartTimeError {
    /// Not RFC 3339.
    #[error("{text:?} is not an RFC 3339 time such as 2026-12-03T10:00:00Z ({source})")]
    NotRfc3339 {
        /// The text given.
        text: String,
        /// The parser's reason.
        source: chrono::ParseError,
    },
    /// Before the Unix epoch.
    #[error("{0:?} is before 1970-01-01T00:00:00Z")]
    BeforeEpoch(String),
}

/// An RFC 3339 time as the client wrote it (kept verbatim, so a stored spec compares equal
/// to the one asked for), with its instant in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartTime {
    text: String,
    ms: u64,
}

impl StartTime {
    /// Parses an RFC 3339 time at or after the Unix epoch (`2026-12-03T10:00:00Z`,
    /// `2026-12-03T11:00:00.250+01:00`).
    pub fn parse(text: &str) -> Result<StartTime, StartTimeError> {
        let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|source| {
            StartTimeError::NotRfc3339 {
                text: text.to_string(),
                source,
            }
        })?;
        let ms = u64::try_from(t.timestamp_millis())
            .map_err(|_| StartTimeError::BeforeEpoch(text.to_string()))?;
        Ok(StartTime {
            text: text.to_string(),
            ms,
        })
    }

    /// The instant, ms since the Unix epoch.
    pub fn ms(&self) -> u64 {
        self.ms
    }

    /// The time as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Serialize for StartTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for StartTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StartTime::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A store time (ms since the epoch) as RFC 3339 UTC with milliseconds, the form the API
/// answers with (`2026-12-03T10:00:00.123Z`).
pub fn format_time_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Answer of `POST /v1/subscriptions/{name}/seek`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeekResponse {
    /// The subscription.
    pub subscription: String,
    /// Where delivery reads next now, per partition (the partitions a seek by `offsets`
    /// did not name keep their committed position).
    pub positions: BTreeMap<u32, u64>,
}

/// Most events one `GET /v1/topics/{topic}/events` returns (`limit`).
pub const MAX_BROWSE_LIMIT: usize = 1000;

/// One stored event as `GET /v1/topics/{topic}/events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrowsedEvent {
    /// Partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// When the store took it (RFC 3339, UTC, ms).
    pub time: String,
    /// The event in structured JSON form (`null` when the record cannot be decoded).
    pub event: serde_json::Value,
    /// Why the record could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `GET /v1/topics/{topic}/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrowseResponse {
    /// The topic.
    pub topic: String,
    /// The partition read.
    pub partition: u32,
    /// Events in offset order.
    pub events: Vec<BrowsedEvent>,
    /// Where the next page starts: pass it as `from` (after the last event returned, or
    /// where this read began when there was none).
    pub next: u64,
    /// The partition's end when read (the offset the next stored event gets, or below).
    pub end: u64,
}

/// Where matching events go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Sink {
    /// Push: CloudEvents binary-mode HTTP POSTs.
    Webhook(WebhookSink),
    /// Pull: the subscriber fetches with `GET .../events` and acknowledges.
    Pull(PullSink),
}

/// A webhook sink. With several `urls`, each URL is one member of the consumer group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    /// The endpoint (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// More endpoints: members of the group (CLUSTERING spreads, BROADCASTING copies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Per-attempt timeout.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

impl WebhookSink {
    /// All member URLs, `url` first.
    pub fn members(&self) -> Vec<String> {
        self.url.iter().chain(self.urls.iter()).cloned().collect()
    }
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}

/// A pull sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PullSink {
    /// An event handed out and not acknowledged within this time is handed out again.
    #[serde(default = "default_ack_deadline_ms")]
    pub ack_deadline_ms: u64,
}

fn default_ack_deadline_ms() -> u64 {
    30_000
}

impl Default for PullSink {
    /// What `{"pull": {}}` means (a derived default would have a 0 ms deadline).
    fn default() -> Self {
        PullSink {
            ack_deadline_ms: default_ack_deadline_ms(),
        }
    }
}

/// Retries and dead-lettering.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryPolicy {
    /// Attempts per event (the first one included) before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Give up on an event this long after its first attempt, whatever the count.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// First retry delay; doubles per attempt, with full jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Upper bound of the retry delay.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Events in flight at once for this subscription (push) — the concurrency bound.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Where events that ran out of attempts go; without one they are dropped (and
    /// counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
}

fn default_max_attempts() -> u32 {
    10
}
fn default_max_age_secs() -> u64 {
    3600
}
fn default_initial_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_max_in_flight() -> u32 {
    16
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: default_max_attempts(),
            max_age_secs: default_max_age_secs(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_in_flight: default_max_in_flight(),
            dead_letter_topic: None,
        }
    }
}

/// Body of `POST /v1/subscriptions`, and what `GET` returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Unique name in the cluster.
    pub name: String,
    /// The topic read.
    pub topic: String,
    /// The consumer group (defaults to the name).
    #[serde(default)]
    pub group: String,
    /// CLUSTERING or BROADCASTING.
    #[serde(default)]
    pub mode: GroupMode,
    /// Which events (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// What the sink receives (absent: the original event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformSpec>,
    /// Where events go.
    pub sink: Sink,
    /// Retries and dead-lettering.
    #[serde(default)]
    pub delivery: DeliveryPolicy,
    /// Where a new subscription starts.
    #[serde(default)]
    pub start: StartPosition,
    /// Clusters that keep a replica of this subscription (its definition and committed
    /// positions, in origin terms) and can take over its delivery if this cluster is lost
    /// (`POST /v1/mesh/failover` there). CLUSTERING subscriptions only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby: Vec<String>,
}

/// Body of `POST /v1/mesh/failover` (on a node of the cluster taking over).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// The subscription's name.
    pub subscription: String,
    /// The cluster where it was made.
    pub home: String,
}

/// Answer of `POST /v1/mesh/failover`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailoverResponse {
    /// The subscription's name.
    pub subscription: String,
    /// The cluster where it was made.
    pub home: String,
    /// The cluster delivering it now (the one asked).
    pub active: String,
    /// The new term (raised by every takeover).
    pub term: u64,
    /// Where delivery started, per partition of the local topic.
    pub start: BTreeMap<u32, u64>,
}

/// Why a failover was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FailoverError {
    /// Error code of the API answer (`no_mesh`, `unknown_subscription`, `not_standby`, ...).
    pub code: &'static str,
    /// Why, for the operator.
    pub message: String,
}

/// Body of `POST /v1/cluster/promise`: a node of the cluster whose registry keep-alives
/// fail asks another node whether it reaches the registry (docs/scheduler.md, "Registry
/// outages"). Sent with the cluster's internal token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PromiseRequest {
    /// The asking node's id.
    pub from: String,
}

/// Answer of `POST /v1/cluster/promise`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromiseAnswer {
    /// The answering node's id.
    pub node: String,
    /// It reaches the registry: no promise is given.
    pub reaches_registry: bool,
    /// When it does not: it promises to start no consumer group it is not delivering now
    /// for this long from its answer (its lease TTL), on its own monotonic clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promise_ms: Option<u64>,
}

/// Most standby clusters of one subscription.
pub const MAX_STANDBY: usize = 8;

/// A subscription whose filter and transform compiled.
#[derive(Debug)]
pub struct CompiledSubscription {
    /// The spec, with defaults filled in.
    pub spec: SubscriptionSpec,
    /// The compiled filter (None: all events).
    pub filter: Option<Filter>,
    /// The compiled transform (None: the original event).
    pub transform: Option<Transform>,
}

impl SubscriptionSpec {
    /// Validates every field and compiles filter and transform once.
    pub fn compile(mut self) -> Result<CompiledSubscription, InvalidField> {
        check_name("name", &self.name)?;
        check_name("topic", &self.topic)?;
        if self.group.is_empty() {
            self.group = self.name.clone();
        }
        check_name("group", &self.group)?;
        let d = &self.delivery;
        if d.max_attempts == 0 || d.max_attempts > 1000 {
            return Err(invalid("delivery.max_attempts", "must be from 1 to 1000"));
        }
        if d.max_in_flight == 0 || d.max_in_flight > 1024 {
            return Err(invalid("delivery.max_in_flight", "must be from 1 to 1024"));
        }
        if d.initial_backoff_ms == 0 || d.initial_backoff_ms > d.max_backoff_ms {
            return Err(invalid(
                "delivery.initial_backoff_ms",
                "must be at least 1 and at most delivery.max_backoff_ms",
            ));
        }
        if d.max_age_secs == 0 {
            return Err(invalid("delivery.max_age_secs", "must be at least 1"));
        }
        self.start.validate("start")?;
        if self.standby.len() > MAX_STANDBY {
            return Err(invalid(
                "standby",
                format!("at most {MAX_STANDBY} standby clusters"),
            ));
        }
        for (i, c) in self.standby.iter().enumerate() {
            check_name("standby", c)?;
            if self.standby[..i].contains(c) {
                return Err(invalid("standby", format!("{c:?} is named twice")));
            }
        }
        if !self.standby.is_empty() && self.mode != GroupMode::Clustering {
            return Err(invalid(
                "standby",
                "only CLUSTERING subscriptions have standby clusters",
            ));
        }
        if let Some(dlt) = &d.dead_letter_topic {
            check_name("delivery.dead_letter_topic", dlt)?;
            if dlt == &self.topic {
                return Err(invalid(
                    "delivery.dead_letter_topic",
                    "the dead-letter topic must differ from the subscribed topic",
                ));
            }
        }
        match &self.sink {
            Sink::Webhook(w) => {
                let members = w.members();
                if members.is_empty() {
                    return Err(invalid("sink.webhook.url", "a webhook sink needs a url"));
                }
                for u in &members {
                    let ok = (u.starts_with("http://") || u.starts_with("https://"))
                        && u.len() > "https://".len()
                        && !u.contains(char::is_whitespace);
                    if !ok {
                        return Err(invalid(
                            "sink.webhook.url",
                            format!("{u:?} is not an http:// or https:// URL"),
                        ));
                    }
                }
                if w.timeout_ms == 0 || w.timeout_ms > 300_000 {
                    return Err(invalid(
                        "sink.webhook.timeout_ms",
                        "must be from 1 to 300000",
                    ));
                }
            }
            Sink::Pull(p) => {
                if p.ack_deadline_ms < 100 || p.ack_deadline_ms > 3_600_000 {
                    return Err(invalid(
                        "sink.pull.ack_deadline_ms",
                        "must be from 100 to 3600000",
                    ));
                }
            }
        }
        let filter = self
            .filter
            .as_ref()
            .map(Filter::compile)
            .transpose()
            .map_err(|e| invalid(format!("filter{}", e.path_suffix()), e.to_string()))?;
        let transform = self
            .transform
            .as_ref()
            .map(Transform::compile)
            .transpose()
            .map_err(|e| invalid(e.field().unwrap_or("transform"), e.to_string()))?;
        Ok(CompiledSubscription {
            spec: self,
            filter,
            transform,
        })
    }
}

/// One stored event's position.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Position {
    /// Partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
}

/// Answer to a publish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishResponse {
    /// Where each event of the request was stored, in request order.
    pub positions: Vec<Position>,
}

/// One event handed out by a pull.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PulledEvent {
    /// Give this back to `POST .../ack`.
    pub ack_id: String,
    /// How many times this event has been handed out (1 the first time).
    pub delivery_attempt: u32,
    /// The event (structured JSON), or the transformed body.
    pub event: serde_json::Value,
}

/// Answer to `GET /v1/subscriptions/{name}/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullResponse {
    /// Events handed out.
    pub events: Vec<PulledEvent>,
}

/// Body of `POST /v1/subscriptions/{name}/ack`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The ack ids of handed-out events.
    pub ack_ids: Vec<String>,
    /// The member acknowledging (BROADCASTING needs it; CLUSTERING ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// Answer to an ack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AckResponse {
    /// How many ack ids matched an event in flight.
    pub acknowledged: usize,
    /// Ack ids that did not (expired and handed to someone else, or unknown).
    pub unknown: Vec<String>,
}

/// A topic as `GET /v1/topics` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Configuration.
    pub config: TopicConfig,
    /// Per partition: first retained and next offset.
    #[serde(default)]
    pub partitions: BTreeMap<u32, PartitionOffsets>,
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PartitionOffsets {
    /// The first offset still retained.
    pub start: u64,
    /// The offset the next event will get.
    pub end: u64,
}

/// How a new version of a schema must relate to the version before it (docs/api.md,
/// "Schemas"): `backward` (the default) means every event valid under the previous version
/// is valid under the new one; `forward` the opposite; `full` both; `none` no check.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    /// Events valid under the previous version stay valid (consumers upgrade first).
    #[default]
    Backward,
    /// Events valid under the new version are valid under the previous one.
    Forward,
    /// Both.
    Full,
    /// No check.
    None,
}

impl Compatibility {
    /// Its name in the API (`backward`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
            Compatibility::None => "none",
        }
    }
}

impl std::str::FromStr for Compatibility {
    type Err = InvalidField;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "backward" => Ok(Compatibility::Backward),
            "forward" => Ok(Compatibility::Forward),
            "full" => Ok(Compatibility::Full),
            "none" => Ok(Compatibility::None),
            _ => Err(invalid(
                "compatibility",
                format!("compatibility must be backward, forward, full or none, not {s:?}"),
            )),
        }
    }
}

/// Query of `PUT /v1/schemas/{name}` (the body is the JSON Schema document itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SchemaPutQuery {
    /// The compatibility mode checked for this version and kept for the next ones;
    /// absent: the mode of the latest version (`backward` for a new schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<Compatibility>,
}

/// Query of `GET /v1/schemas/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SchemaGetQuery {
    /// The version wanted (from 1); absent: the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One version of a schema: the answer of `PUT` and `GET /v1/schemas/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaVersionInfo {
    /// The schema's name.
    pub name: String,
    /// The version (from 1).
    pub version: u32,
    /// Its URI, `meshd:schemas/{name}/v{version}` ([`schema_uri`]): what `dataschema`
    /// of a validated event is set to.
    pub uri: String,
    /// The compatibility mode it was checked under.
    pub compatibility: Compatibility,
    /// When it was registered (ms since the epoch).
    pub created_ms: u64,
    /// The JSON Schema document.
    pub schema: serde_json::Value,
}

/// One schema as `GET /v1/schemas` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchemaSummary {
    /// Name.
    pub name: String,
    /// Its latest version.
    pub latest: u32,
    /// Every version it has, oldest first.
    pub versions: Vec<u32>,
    /// The URI of the latest version.
    pub uri: String,
    /// The compatibility mode of the latest version.
    pub compatibility: Compatibility,
}

/// Answer of `GET /v1/schemas`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SchemaList {
    /// Schemas by name.
    pub schemas: Vec<SchemaSummary>,
}

/// One version of a discovered schema.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiscoveredVersion {
    /// The version (from 1): each new shape seen makes one.
    pub version: u32,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// The inferred JSON Schema document (2020-12): a body for `PUT /v1/schemas/{name}`.
    pub schema: serde_json::Value,
}

/// What schema discovery inferred for one (source, type) of a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiscoveredSchema {
    /// The events' `source`.
    pub source: String,
    /// The events' `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Events observed (on this node since it started).
    pub events: u64,
    /// When the last one was observed (ms since the epoch).
    pub last_ms: u64,
    /// The latest version.
    pub latest: u32,
    /// The latest version's schema document (a body for `PUT /v1/schemas/{name}`).
    pub schema: serde_json::Value,
    /// Every version, oldest first (only when one (source, type) is asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<DiscoveredVersion>,
}

/// Answer of `GET /v1/topics/{topic}/discovered`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DiscoveredList {
    /// The topic.
    pub topic: String,
    /// By (source, type).
    pub schemas: Vec<DiscoveredSchema>,
    /// Events not inferred: sampled out under load, or of a (source, type) past the
    /// per-topic bound.
    pub skipped: u64,
}

/// Query of `GET /v1/topics/{topic}/discovered`: both or neither.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DiscoveredQuery {
    /// Only this `source`.
    pub source: Option<String>,
    /// Only this `type`.
    #[serde(rename = "type")]
    pub ty: Option<String>,
}

/// A schema in a cluster's catalog: every version it has, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaCatalogEntry {
    /// The versions.
    pub versions: Vec<SchemaVersionInfo>,
}

/// The URI scheme of schema versions.
pub const SCHEMA_URI_PREFIX: &str = "meshd:schemas/";

/// The URI of a schema version: `meshd:schemas/{name}/v{version}`.
pub fn schema_uri(name: &str, version: u32) -> String {
    format!("{SCHEMA_URI_PREFIX}{name}/v{version}")
}

/// The schema name and version a [`schema_uri`] names, if it is one.
pub fn parse_schema_uri(uri: &str) -> Option<(&str, u32)> {
    let rest = uri.strip_prefix(SCHEMA_URI_PREFIX)?;
    let (name, version) = rest.rsplit_once("/v")?;
    let version: u32 = version.parse().ok()?;
    (version >= 1 && check_name("schema", name).is_ok()).then_some((name, version))
}

/// Body of `POST /v1/filters/test`: a filter (or a bare `pattern`), an event in structured
/// JSON form, and optionally a transform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterTestRequest {
    /// A filter in any dialect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// Shorthand for `{"filter": {"pattern": ...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<serde_json::Value>,
    /// A transform (absent: the original event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformSpec>,
    /// The event, in CloudEvents structured JSON form.
    pub event: serde_json::Value,
}

impl FilterTestRequest {
    /// The filter to test: `filter`, or `pattern` wrapped; both is an error.
    pub fn filter_spec(&self) -> Result<Option<FilterSpec>, InvalidField> {
        match (&self.filter, &self.pattern) {
            (Some(_), Some(_)) => Err(invalid(
                "pattern",
                "give either filter or pattern, not both",
            )),
            (Some(f), None) => Ok(Some(f.clone())),
            (None, Some(p)) => Ok(Some(FilterSpec::Pattern(p.clone()))),
            (None, None) => Ok(None),
        }
    }
}

/// Answer to `GET /v1/topics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicList {
    /// Every topic, by name.
    pub topics: Vec<TopicInfo>,
}

/// Answer to `GET /v1/subscriptions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscriptionList {
    /// Every subscription, by name.
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// Answer of `GET /v1/subscriptions/{name}/status`: where a subscription's delivery
/// stands, as the node delivering it sees it. Any node (or a proxy) answers it: a node
/// that does not deliver the subscription's group asks the node that does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscriptionStatus {
    /// The subscription.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// CLUSTERING or BROADCASTING.
    pub mode: GroupMode,
    /// The cluster of the node answering.
    pub cluster: String,
    /// The cluster delivering the subscription: `cluster`, or the standby cluster that
    /// took it over (`POST /v1/mesh/failover`; its status there has the numbers).
    #[serde(default)]
    pub active_cluster: String,
    /// The node whose numbers these are: the one delivering the group when one does.
    pub node: String,
    /// Whether `node` delivers the subscription now (`false`: nobody in this cluster
    /// does, e.g. placement has not named a node yet or another cluster took it over).
    pub delivering: bool,
    /// Events stored and not yet delivered (committed), all partitions. Events handed out
    /// and not yet acknowledged count: they are delivered only when acknowledged.
    pub backlog_events: u64,
    /// Age of the oldest undelivered event (0 without backlog), seconds.
    pub backlog_seconds: f64,
    /// Per partition of the topic.
    pub partitions: BTreeMap<u32, PartitionStatus>,
    /// Events handed to the sink and not yet finished (push: being attempted or waiting
    /// for a retry; pull: handed out, not acknowledged).
    pub in_flight: u64,
    /// Events the sink acknowledged, since the node started.
    pub delivered: u64,
    /// Failed attempts that were retried, since the node started.
    pub retried: u64,
    /// Events that ran out of attempts (sent to the dead-letter topic, or dropped without
    /// one), since the node started.
    pub dead_lettered: u64,
    /// Events the filter skipped, since the node started.
    pub filtered_out: u64,
    /// The last delivery failure seen, since the node started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SubscriptionError>,
}

/// One partition of [`SubscriptionStatus`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct PartitionStatus {
    /// The committed offset: the next offset to deliver (everything before it is done).
    /// For BROADCASTING, that of the slowest member.
    pub committed: u64,
    /// The offset the next stored event will get (the head).
    pub end: u64,
    /// `end` − `committed` (from the first retained offset when retention passed the
    /// committed one).
    pub backlog_events: u64,
    /// Age of the oldest undelivered event of the partition, seconds (0 without backlog).
    pub backlog_seconds: f64,
}

/// A delivery failure of [`SubscriptionStatus::last_error`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscriptionError {
    /// What failed (`http 503`, `timeout`, `connection error: ...`, a dead-letter reason).
    pub message: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// Where a node is in a drain (`POST /v1/admin/drain|undrain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Takes publishes and delivers what placement gives it.
    Serving,
    /// Refuses publishes; handing its groups over (delivering its backlog first).
    Draining,
    /// Refuses publishes, delivers nothing, out of the registry.
    Drained,
}

/// When a node's store acknowledges an append relative to fsync (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync (group-committed) before every acknowledgement. Survives machine crashes.
    #[default]
    Always,
    /// fsync at least every interval; acknowledged writes of the last interval can be
    /// lost on a machine crash, never on a process crash (the embedded store writes each
    /// group commit to its write-ahead tail before the ack).
    Interval,
    /// Never fsync explicitly (the embedded store still makes a durable commit on close and
    /// every few MiB); a crash loses what was acknowledged since.
    Never,
}

/// An `--fsync` value that is not a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fsync must be always, interval or never, not {0:?}")]
pub struct UnknownFsyncPolicy(pub String);

impl std::str::FromStr for FsyncPolicy {
    type Err = UnknownFsyncPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(UnknownFsyncPolicy(other.to_string())),
        }
    }
}

/// Answer of `GET /v1/cluster` (a node's view of itself in its cluster).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster.
    pub cluster: String,
    /// This node's id.
    pub node: String,
    /// Whether it takes traffic (`/readyz`).
    pub ready: bool,
    /// Where it is in a drain.
    pub drain: DrainState,
    /// Topics it knows.
    pub topics: usize,
    /// Subscriptions it knows.
    pub subscriptions: usize,
    /// Its store's fsync policy.
    pub fsync: FsyncPolicy,
    /// Consumer groups holding age retention (federation link cursors `__bridge/{peer}`).
    pub retention_holds: Vec<String>,
    /// Consumer groups placement gives this node (`None`: not gated, it delivers all).
    pub owned_groups: Option<std::collections::BTreeSet<String>>,
}

/// Answer of a node's `POST /v1/admin/drain` and `/v1/admin/undrain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeDrainAnswer {
    /// The node.
    pub node: String,
    /// Its drain state after the request.
    pub drain: DrainState,
}

/// Answer of a proxy's `POST /v1/admin/drain` and `/v1/admin/undrain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyDrainAnswer {
    /// The proxy.
    pub proxy: String,
    /// Whether it is draining after the request.
    pub draining: bool,
    /// Whether the request changed that.
    pub changed: bool,
}

/// Answer of `POST /v1/mesh/links/{peer}/pause|resume`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkAdminAnswer {
    /// The peer cluster.
    pub peer: String,
    /// Whether replication to it is paused after the request.
    pub paused: bool,
    /// Whether the request changed that.
    pub changed: bool,
}

/// One token as `GET /v1/tokens` lists it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's id.
    pub id: String,
    /// Its scopes (`publish:orders.*`, ...).
    pub scopes: Vec<String>,
    /// What it is for.
    pub description: String,
    /// When it was made, Unix seconds.
    pub created_at: u64,
}

/// Answer of `GET /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenList {
    /// Every token.
    pub tokens: Vec<TokenInfo>,
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenCreateRequest {
    /// Its scopes.
    pub scopes: Vec<String>,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// Answer of `POST /v1/tokens`: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenCreated {
    /// The token's id (for revoking it).
    pub id: String,
    /// The secret (`mshd_...`).
    pub token: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// What it is for.
    pub description: String,
}

/// What `GET /v1/mesh` answers: the federation bridge builds it, clients and drills read
/// it. See docs/federation.md, "Status and metrics".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshStatus {
    /// This cluster.
    pub cluster: String,
    /// The mesh's name.
    pub mesh: String,
    /// Digest of the topology in force.
    pub digest: String,
    /// Every cluster of the topology.
    pub clusters: Vec<MeshCluster>,
    /// This cluster's links to its peers.
    pub links: Vec<MeshLink>,
    /// Per other cluster, the path events take to it (`None`: unreachable now).
    pub routes: BTreeMap<String, Option<Vec<String>>>,
    /// Duplicates dropped, all links.
    pub duplicates: u64,
    /// Event ids the duplicate filter remembers now.
    pub dedup_window: u64,
    /// Per peer, the interest it told this cluster (who wants which topic, with which
    /// filter, from when).
    pub learned_interest: BTreeMap<String, Vec<crate::wire::InterestEntry>>,
    /// The mesh's topic catalog.
    pub catalog: MeshCatalog,
    /// The replicas of subscriptions with standby clusters known here.
    pub subscription_replicas: Vec<MeshSubscriptionReplica>,
    /// The topology's replication policies (which clusters may receive which topics).
    pub policies: Vec<MeshPolicy>,
}

/// The topic catalog of [`MeshStatus`] (docs/federation.md, "Topic catalog").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshCatalog {
    /// Live topics in the catalog.
    pub topics: u64,
    /// Conflicts and divergences.
    pub conflicts: Vec<CatalogConflict>,
    /// Topics stored here that the catalog does not know.
    pub orphans: Vec<String>,
}

/// A topic conflict or divergence of the mesh catalog ([`MeshCatalog::conflicts`];
/// docs/federation.md, "Topic catalog").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogConflict {
    /// Topic.
    pub topic: String,
    /// The owner of the effective life.
    pub owner: String,
    /// What is wrong.
    pub kind: ConflictKind,
}

/// Kinds of [`CatalogConflict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Other clusters made the topic too, later; their lives lost.
    ConcurrentCreate {
        /// The owners of the other live lives.
        losers: Vec<String>,
    },
    /// The local copy's configuration differs from the owner's.
    Diverged {
        /// The owner's configuration.
        owner_config: TopicConfig,
        /// The local one.
        local_config: TopicConfig,
    },
}

/// One subscription replica of [`MeshStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshSubscriptionReplica {
    /// The cluster where the subscription was made.
    pub home: String,
    /// Its name there.
    pub name: String,
    /// Raised by every takeover.
    pub term: u64,
    /// The cluster delivering it in this term.
    pub active: String,
    /// Deleted at home.
    pub deleted: bool,
    /// Its committed positions in origin terms.
    pub positions: Vec<crate::wire::Mark>,
}

/// One replication policy of [`MeshStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshPolicy {
    /// The topics it covers (a name pattern).
    pub topics: String,
    /// The clusters that may receive them.
    pub clusters: Vec<String>,
}

/// One cluster of [`MeshStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshCluster {
    /// Name.
    pub name: String,
    /// Region label.
    pub region: Option<String>,
    /// Cloud label.
    pub cloud: Option<String>,
    /// The bridge's UDP address.
    pub bridge: Option<String>,
}

/// One link of [`MeshStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshLink {
    /// The peer cluster.
    pub peer: String,
    /// Whether this side dials.
    pub dialer: bool,
    /// `connecting`, `connected`, `down`, `stalled` or `draining`.
    pub state: String,
    /// Why the link is down, with its causes (`None` once it is connected again).
    pub last_error: Option<String>,
    /// When `last_error` happened, ms since the epoch.
    pub last_error_at_ms: Option<u64>,
    /// The last error a connection cleared.
    pub previous_error: Option<MeshLinkPreviousError>,
    /// Events sent.
    pub events_sent: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Connections made.
    pub connections: u64,
    /// Connections made again after one was lost.
    pub reconnects: u64,
    /// Bytes written on the link: every frame with its length prefix.
    pub bytes_sent: u64,
    /// Bytes read on the link: every frame with its length prefix.
    pub bytes_received: u64,
    /// Progress frames sent (cursor moves over records the peer does not want).
    pub progress_sent: u64,
    /// Events received.
    pub events_received: u64,
    /// Duplicates dropped on this link.
    pub duplicates: u64,
    /// Records of interested topics past the durable cursor.
    pub lag_events: u64,
    /// Age of the oldest of them.
    pub lag_seconds: f64,
    /// QUIC's smoothed RTT.
    pub rtt_ms: Option<f64>,
    /// Connected, behind and not advancing.
    pub stalled: bool,
    /// Replication paused by an operator.
    pub paused: bool,
}

/// An error a link recovered from ([`MeshLink::previous_error`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MeshLinkPreviousError {
    /// The error.
    pub error: String,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
    /// When a connection cleared it, ms since the epoch.
    pub cleared_at_ms: u64,
}

/// Body of `GET /healthz` and of a ready `GET /readyz` (a node that is not ready answers
/// 503 with an [`ErrorBody`] naming why).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
    /// Ready, but not as usual: what is degraded (e.g. `registry_unreachable` while a node
    /// delivers on its peers' promises).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
}

/// What [`Health::degraded`] names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Degraded {
    /// A stable code.
    pub code: String,
    /// For people.
    pub message: String,
}

impl Health {
    /// `{"status": status}`.
    pub fn plain(status: &str) -> Health {
        Health {
            status: status.to_string(),
            degraded: None,
        }
    }
}

/// Answer of `GET /v1/trace?source=S&id=ID`: an event's life across the mesh, as the
/// clusters that answered recorded it (docs/api.md, "Trace").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TraceAnswer {
    /// The event's `source`.
    pub source: String,
    /// The event's `id`.
    pub id: String,
    /// Every record found, oldest first (by `at_ms`, then cluster and node).
    pub records: Vec<TraceRecord>,
    /// Every cluster asked (the answering one first) and whether it answered in time.
    pub clusters: Vec<TraceClusterAnswer>,
}

/// One step of an event's life ([`TraceAnswer::records`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceRecord {
    /// The cluster where it happened.
    pub cluster: String,
    /// The node where it happened.
    pub node: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What happened, with its details; serialized flat as `"kind": "stored", ...`.
    #[serde(flatten)]
    pub kind: TraceKind,
}

/// What a [`TraceRecord`] says happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceKind {
    /// Appended to a topic's log (published here, or received from a link and stored).
    Stored {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
    },
    /// Sent to a peer cluster on its link.
    Forwarded {
        /// The peer cluster.
        peer: String,
        /// The topic.
        topic: String,
    },
    /// Received from a peer cluster on its link (a `stored` record follows unless it
    /// was a duplicate).
    Received {
        /// The peer cluster it came from.
        peer: String,
        /// The topic.
        topic: String,
        /// The cluster where it was first published.
        origin: String,
    },
    /// Received from a link and dropped: already stored here.
    Duplicate {
        /// The peer cluster it came from.
        peer: String,
        /// The topic.
        topic: String,
    },
    /// A subscription's filter accepted it.
    Matched {
        /// The subscription.
        subscription: String,
    },
    /// A subscription's filter skipped it.
    NotMatched {
        /// The subscription.
        subscription: String,
    },
    /// Handed to a subscription's sink and accepted (a webhook answered 2xx, a pull
    /// consumer acknowledged it).
    Delivered {
        /// The subscription.
        subscription: String,
        /// Which attempt succeeded (1 = the first).
        attempt: u32,
        /// The webhook's HTTP status (`None` for pull).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// From the event's store time to the sink's acceptance, ms.
        latency_ms: u64,
    },
    /// An attempt failed and will be retried.
    Retried {
        /// The subscription.
        subscription: String,
        /// The attempt that failed (1 = the first).
        attempt: u32,
        /// Why (`http 503`, `timeout`, ...).
        error: String,
    },
    /// Out of attempts: sent to the dead-letter topic (or dropped without one).
    DeadLettered {
        /// The subscription.
        subscription: String,
        /// Why.
        reason: String,
    },
}

/// One cluster asked for a trace ([`TraceAnswer::clusters`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TraceClusterAnswer {
    /// The cluster.
    pub cluster: String,
    /// Whether it answered within the time allowed.
    pub answered: bool,
    /// Records it contributed.
    pub records: u64,
    /// Why it did not answer (`unreachable`, `timeout`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Per-cluster counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillClusterReport {
    /// Distinct acknowledged events received.
    pub delivered: u64,
    /// Every delivery, duplicates included.
    pub deliveries: u64,
    /// Acknowledged events never received (must be 0).
    pub lost: u64,
    /// Deliveries of an event already received.
    pub duplicated: u64,
    /// First deliveries that arrived after a later event of the same key (must be 0).
    pub reordered: u64,
    /// Distinct events received that no publisher saw acknowledged.
    pub unacknowledged: u64,
}

/// The result of one chaos scenario or drill (`meshd drill`, `meshd_chaos`), printable as text ([`std::fmt::Display`]) and JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// Scenario or drill name.
    pub scenario: String,
    /// Where it ran: `netns`, `loopback`, or `mesh` (a drill against a running mesh).
    pub mode: String,
    /// Publishes acknowledged.
    pub acknowledged: u64,
    /// Partition keys used.
    pub keys: u64,
    /// Sum over clusters of `lost`.
    pub lost: u64,
    /// Sum over clusters of `duplicated`.
    pub duplicated: u64,
    /// Sum over clusters of `reordered`.
    pub reordered: u64,
    /// Per cluster.
    pub clusters: BTreeMap<String, DrillClusterReport>,
    /// From the fault until the mesh reported it (ms), when measured.
    pub detection_ms: Option<u64>,
    /// From the repair until every cluster had every acknowledged event (ms).
    pub recovery_ms: Option<u64>,
    /// The whole scenario (ms).
    pub duration_ms: Option<u64>,
    /// Free-form remarks (fallbacks, what was measured how).
    pub notes: Vec<String>,
    /// What a drill observed besides the counts (target, where groups moved, which node
    /// acknowledged and delivered how many canaries, the old and new leader, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, serde_json::Value>,
}

impl DrillReport {
    /// Whether nothing acknowledged was lost and nothing was reordered.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.reordered == 0
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn drill_ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms"))
        .unwrap_or_else(|| "n/a".to_string())
}

impl std::fmt::Display for DrillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scenario {} [{}]: {}",
            self.scenario,
            self.mode,
            if self.ok() { "OK" } else { "FAILED" }
        )?;
        writeln!(
            f,
            "  acknowledged {} over {} keys; lost {}, duplicated {}, reordered {}",
            self.acknowledged, self.keys, self.lost, self.duplicated, self.reordered
        )?;
        writeln!(
            f,
            "  detection {}, recovery {}, duration {}",
            drill_ms(self.detection_ms),
            drill_ms(self.recovery_ms),
            drill_ms(self.duration_ms)
        )?;
        for (name, c) in &self.clusters {
            writeln!(
                f,
                "  cluster {name}: delivered {} ({} deliveries), lost {}, duplicated {}, reordered {}, unacknowledged {}",
                c.delivered, c.deliveries, c.lost, c.duplicated, c.reordered, c.unacknowledged
            )?;
        }
        for (k, v) in &self.facts {
            writeln!(f, "  {k}: {v}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// A drill report as a node keeps it (`POST /v1/drills/reports` stores one; the node keeps
/// the last [`DRILL_REPORTS_KEPT`] in its data dir).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDrillReport {
    /// Its id on this node: the time it was received and the scenario
    /// (`1764770000000-link-partition`).
    pub id: String,
    /// When the node received it, ms since the epoch.
    pub received_at_ms: u64,
    /// The report.
    pub report: DrillReport,
}

/// Answer of `GET /v1/drills/reports`: the reports this node keeps, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DrillReportList {
    /// Newest first.
    pub reports: Vec<StoredDrillReport>,
}

/// How many drill reports a node keeps.
pub const DRILL_REPORTS_KEPT: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_uris_round_trip_and_strangers_are_not_schema_uris() {
        assert_eq!(schema_uri("orders", 3), "meshd:schemas/orders/v3");
        assert_eq!(
            parse_schema_uri("meshd:schemas/orders/v3"),
            Some(("orders", 3))
        );
        assert_eq!(parse_schema_uri("meshd:schemas/orders/v0"), None);
        assert_eq!(parse_schema_uri("meshd:schemas/a/b/v1"), None);
        assert_eq!(parse_schema_uri("https://example.com/orders/v1"), None);
    }

    #[test]
    fn old_topic_configs_read_without_schemas_and_write_back_unchanged() {
        let old = r#"{"partitions":2,"retention":{}}"#;
        let cfg: TopicConfig = serde_json::from_str(old).unwrap();
        assert!(cfg.schemas.is_empty());
        assert!(!cfg.validate);
        let back = serde_json::to_string(&cfg).unwrap();
        assert!(
            !back.contains("schemas") && !back.contains("validate"),
            "{back}"
        );
        let bound = TopicConfig {
            schemas: [("order.created".to_string(), "bad name!".to_string())].into(),
            ..TopicConfig::default()
        };
        assert_eq!(bound.validate().unwrap_err().field, "schemas.order.created");
        let asked = TopicConfig {
            validate: true,
            ..TopicConfig::default()
        };
        assert_eq!(
            topic_conflict_message("t", &TopicConfig::default().differences(&asked)),
            "topic t exists with validate=false, you asked validate=true"
        );
    }

    #[test]
    fn a_topic_conflict_names_each_differing_setting() {
        let existing = TopicConfig {
            partitions: 4,
            ..TopicConfig::default()
        };
        let asked = TopicConfig::default();
        assert_eq!(
            topic_conflict_message("orders", &existing.differences(&asked)),
            "topic orders exists with partitions=4, you asked partitions=1"
        );
        let asked = TopicConfig {
            partitions: 4,
            retention: Retention {
                max_age_secs: Some(3600),
                max_bytes: None,
            },
            replicate_to: vec!["eu".into(), "us".into()],
            ..TopicConfig::default()
        };
        let d = existing.differences(&asked);
        assert_eq!(
            d.iter().map(|d| d.setting).collect::<Vec<_>>(),
            ["retention.max_age_secs", "replicate_to"]
        );
        assert_eq!(
            topic_conflict_message("orders", &d),
            "topic orders exists with retention.max_age_secs=unset and replicate_to=[], \
             you asked retention.max_age_secs=3600 and replicate_to=[eu,us]"
        );
        assert!(existing.differences(&existing).is_empty());
    }

    #[test]
    fn start_positions_parse_from_json_and_roundtrip() {
        let parse = |j: &str| serde_json::from_str::<StartPosition>(j);
        assert_eq!(parse(r#""latest""#).unwrap(), StartPosition::Latest);
        assert_eq!(parse(r#""earliest""#).unwrap(), StartPosition::Earliest);
        let t = parse(r#"{"time": "2026-12-03T11:00:00.250+01:00"}"#).unwrap();
        let StartPosition::Time(st) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(st.ms(), 1_796_292_000_250);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"time":"2026-12-03T11:00:00.250+01:00"}"#,
            "kept as written"
        );
        assert_eq!(format_time_ms(st.ms()), "2026-12-03T10:00:00.250Z");
        let o = parse(r#"{"offsets": {"0": 42, "3": 7}}"#).unwrap();
        assert_eq!(o, StartPosition::Offsets(BTreeMap::from([(0, 42), (3, 7)])));
        assert_eq!(o.describe(), "0:42,3:7");
        assert_eq!(parse(&serde_json::to_string(&o).unwrap()).unwrap(), o);

        let e = parse(r#"{"time": "yesterday"}"#).unwrap_err().to_string();
        assert!(e.contains("not an RFC 3339 time"), "{e}");
        let e = parse(r#"{"time": "1969-12-31T23:59:59Z"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("before 1970"), "{e}");
        assert!(parse(r#"{"offsets": {"x": 1}}"#).is_err());
        assert!(parse(r#"{"offsets": {"0": -1}}"#).is_err());
        assert!(parse(r#""middle""#).is_err());
    }

    #[test]
    fn start_offsets_name_real_partitions() {
        let none = StartPosition::Offsets(BTreeMap::new());
        assert_eq!(none.validate("start").unwrap_err().field, "start.offsets");
        let far = StartPosition::Offsets(BTreeMap::from([(0, 1), (MAX_PARTITIONS, 1)]));
        let e = far.validate("").unwrap_err();
        assert_eq!(e.field, format!("offsets.{MAX_PARTITIONS}"));
        assert!(StartPosition::Earliest.validate("start").is_ok());
    }

    #[test]
    fn trace_records_are_flat_with_a_kind() {
        let r = TraceRecord {
            cluster: "a".into(),
            node: "a-1".into(),
            at_ms: 5,
            kind: TraceKind::Stored {
                topic: "orders".into(),
                partition: 2,
                offset: 9,
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cluster": "a", "node": "a-1", "at_ms": 5,
                "kind": "stored", "topic": "orders", "partition": 2, "offset": 9})
        );
        assert_eq!(serde_json::from_value::<TraceRecord>(v).unwrap(), r);
        let d = serde_json::to_value(TraceKind::DeadLettered {
            subscription: "s".into(),
            reason: "x".into(),
        })
        .unwrap();
        assert_eq!(d["kind"], "dead_lettered");
    }
}

/// Body of `POST /v1/replays`: re-deliver a topic's stored events of a time window to one
/// subscription (EventBridge's StartReplay). Each replayed event carries the CloudEvents
/// extension [`REPLAY_EXTENSION`] with the replay's name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Unique name among the node's replays (absent: generated, `replay-{ms}-{n}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The topic whose stored events are replayed.
    pub topic: String,
    /// Events stored at or after this time (RFC 3339).
    pub from: StartTime,
    /// Events stored before this time (RFC 3339; a time in the future means now).
    pub to: StartTime,
    /// Which events (absent: all); applied on top of the subscription's own filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// The subscription that receives the replayed events (of `topic`, CLUSTERING).
    pub subscription: String,
}

/// The CloudEvents extension attribute a replayed event carries: the replay's name.
pub const REPLAY_EXTENSION: &str = "meshdreplay";

impl ReplayRequest {
    /// Checks what needs no store: names, `from` < `to`, the filter compiles. Returns the
    /// compiled filter.
    pub fn validate(&self) -> Result<Option<Filter>, InvalidField> {
        if let Some(n) = &self.name {
            check_name("name", n)?;
        }
        check_name("topic", &self.topic)?;
        check_name("subscription", &self.subscription)?;
        if self.from.ms() >= self.to.ms() {
            return Err(invalid(
                "to",
                format!(
                    "must be after from ({} is not after {})",
                    self.to.as_str(),
                    self.from.as_str()
                ),
            ));
        }
        self.filter
            .as_ref()
            .map(Filter::compile)
            .transpose()
            .map_err(|e| invalid(format!("filter{}", e.path_suffix()), e.to_string()))
    }
}

/// Where a replay is (EventBridge's replay states).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Accepted; the window's offsets are being looked up.
    Starting,
    /// Events are being re-delivered.
    Running,
    /// Every event of the window was handled (delivered, filtered out or dead-lettered).
    Completed,
    /// Cancel asked; nothing more is handed out.
    Cancelling,
    /// Cancelled before the end.
    Cancelled,
    /// Stopped by an error (or interrupted by a node restart): see `error`.
    Failed,
}

impl ReplayState {
    /// Whether the replay ended (completed, cancelled or failed).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ReplayState::Completed | ReplayState::Cancelled | ReplayState::Failed
        )
    }

    /// The lowercase name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Starting => "starting",
            ReplayState::Running => "running",
            ReplayState::Completed => "completed",
            ReplayState::Cancelling => "cancelling",
            ReplayState::Cancelled => "cancelled",
            ReplayState::Failed => "failed",
        }
    }
}

/// One partition of a [`ReplayStatus`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayPartition {
    /// The first offset of the window (the first record stored at or after `from`).
    pub start: u64,
    /// The end of the window (the first record stored at or after `to`, exclusive).
    pub end: u64,
    /// Every offset below it is handled.
    pub next: u64,
}

/// Answer of `GET /v1/replays/{name}` (and of `POST /v1/replays`, `DELETE`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayStatus {
    /// The replay's name (the value of the `meshdreplay` extension).
    pub name: String,
    /// The topic replayed.
    pub topic: String,
    /// The target subscription.
    pub subscription: String,
    /// The window's start as asked.
    pub from: String,
    /// The window's end as asked.
    pub to: String,
    /// The replay's filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// Where it is.
    pub state: ReplayState,
    /// The node running it.
    pub node: String,
    /// Per partition: the window's offsets and how far it got.
    pub partitions: BTreeMap<u32, ReplayPartition>,
    /// Records of the window read.
    pub events_scanned: u64,
    /// Events handed to the subscription's sink and finished there (delivered, or
    /// dead-lettered after its attempts).
    pub events_replayed: u64,
    /// Share of the window's offsets handled, 0 to 1 (1 when completed).
    pub progress: f64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was accepted (RFC 3339).
    pub created: String,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// Answer of `GET /v1/replays`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayList {
    /// Every replay the node knows, by name.
    pub replays: Vec<ReplayStatus>,
}
