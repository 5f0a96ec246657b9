//! The Pulsar backend of [`EventStore`]: events live in a Pulsar-protocol broker, the
//! node keeps an in-memory read cache rebuilt from the broker when the store opens.
//!
//! Layout (tenant and namespace configurable, `public/default` by default):
//! - partition `p` of topic `t` is the non-partitioned persistent topic
//!   `persistent://{tenant}/{namespace}/{t}-p{p}`; one message per record, written by one
//!   producer per partition, carrying its dense offset as the `meshd-offset` property
//!   (see [`mapping`] for the properties and the payload);
//! - topic configurations, committed offsets, retention starts and the metadata
//!   namespace are keyed messages (`meshd-op` = `put` | `del`) on
//!   `persistent://{tenant}/{namespace}/__meshd_meta`, replayed in order at open.
//!
//! Writes are acknowledged only after the broker acknowledged every message of the call.
//! Reads are served from memory, so they keep working while the broker is away; appends
//! and metadata writes fail with [`StoreError::Unavailable`] within
//! [`PulsarConfig::op_timeout`]. Messages are read back with our own consumer
//! ([`reader`], [`codec`]) because pulsar-rs cannot consume from brokers that omit the
//! payload checksum. docs/pulsar.md has the design and its limits (one writing store per
//! namespace; records of an append that failed half-way may reappear after a restart).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meshd_core::api::TopicConfig;
use pulsar::producer::Message;
use pulsar::{ConnectionRetryOptions, OperationRetryOptions, Producer, Pulsar, TokioExecutor};
use tokio::sync::watch;

use super::{
    AppendRecord, Appended, EventStore, PartitionBounds, RetentionReport, StoreError, StoredRecord,
};

pub mod codec;
pub mod mapping;
pub mod reader;

/// Where and how to reach Pulsar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulsarConfig {
    /// `pulsar://host:port`.
    pub url: String,
    /// Pulsar tenant.
    pub tenant: String,
    /// Pulsar namespace.
    pub namespace: String,
    /// Upper bound for one broker operation (an append, a metadata write, one answer
    /// while reading a topic at open). Appends fail with `Unavailable` after it.
    pub op_timeout: Duration,
}

impl PulsarConfig {
    /// A configuration with `public/default` and a 5 s operation timeout.
    pub fn new(url: impl Into<String>) -> Self {
        PulsarConfig {
            url: url.into(),
            tenant: "public".into(),
            namespace: "default".into(),
            op_timeout: Duration::from_secs(5),
        }
    }

    fn topic_name(&self, name: &str) -> String {
        format!("persistent://{}/{}/{}", self.tenant, self.namespace, name)
    }

    /// The Pulsar topic holding partition `partition` of `topic`.
    pub fn partition_topic(&self, topic: &str, partition: u32) -> String {
        self.topic_name(&format!("{topic}-p{partition}"))
    }

    /// The metadata topic.
    pub fn meta_topic(&self) -> String {
        self.topic_name("__meshd_meta")
    }
}

const P_META_OP: &str = "meshd-op";

#[derive(serde::Serialize, serde::Deserialize)]
struct TopicRecord {
    config: TopicConfig,
    incarnation: String,
}

struct PartLog {
    start: u64,
    records: VecDeque<StoredRecord>,
    bytes: u64,
}

impl PartLog {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
}

struct Part {
    log: Mutex<PartLog>,
    end_tx: watch::Sender<u64>,
}

struct TopicState {
    name: String,
    config: TopicConfig,
    incarnation: String,
    parts: Vec<Part>,
    /// Held for the whole of an append: offsets are assigned and messages sent in order.
    producers: tokio::sync::Mutex<Vec<Option<Producer<TokioExecutor>>>>,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, Arc<TopicState>>,
    /// (incarnation, partition, group) → committed offset.
    offsets: HashMap<(String, u32, String), u64>,
    kv: BTreeMap<String, Vec<u8>>,
    closed: bool,
}

/// The Pulsar event store.
pub struct PulsarStore {
    cfg: PulsarConfig,
    client: Pulsar<TokioExecutor>,
    state: Mutex<State>,
    /// Serialises metadata writes (and topic creation/deletion) through one producer.
    meta: tokio::sync::Mutex<Option<Producer<TokioExecutor>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn props(m: &pulsar::proto::MessageMetadata) -> HashMap<String, String> {
    m.properties
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

fn offset_key(incarnation: &str, partition: u32, group: &str) -> String {
    format!("offset/{incarnation}/{partition}/{group}")
}

fn start_key(incarnation: &str, partition: u32) -> String {
    format!("start/{incarnation}/{partition}")
}

impl PulsarStore {
    /// Connects to the broker and rebuilds the state from the metadata topic and every
    /// partition topic. Fails with `Unavailable` when the broker cannot be reached.
    pub async fn open(cfg: PulsarConfig) -> Result<Self, StoreError> {
        for (what, v) in [("tenant", &cfg.tenant), ("namespace", &cfg.namespace)] {
            if v.is_empty() || v.contains('/') {
                return Err(StoreError::Io(format!(
                    "Pulsar {what} {v:?} must be non-empty and without '/'"
                )));
            }
        }
        let t = cfg.op_timeout;
        let client = tokio::time::timeout(
            t,
            Pulsar::builder(cfg.url.clone(), TokioExecutor)
                .with_connection_retry_options(ConnectionRetryOptions {
                    min_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    max_retries: 3,
                    connection_timeout: Duration::from_secs(2),
                    keep_alive: Duration::from_secs(10),
                    connection_max_idle: Duration::from_secs(60),
                })
                .with_operation_retry_options(OperationRetryOptions {
                    operation_timeout: t,
                    retry_delay: Duration::from_millis(200),
                    max_retries: Some(3),
                })
                .build(),
        )
        .await
        .map_err(|_| unavailable(format!("connecting to {} timed out", cfg.url)))?
        .map_err(unavailable)?;
        let store = PulsarStore {
            cfg,
            client,
            state: Mutex::new(State::default()),
            meta: tokio::sync::Mutex::new(None),
        };
        store.rebuild().await?;
        Ok(store)
    }

    async fn read_topic(&self, topic: &str) -> Result<Vec<reader::RawMessage>, StoreError> {
        // Each topic is looked up: in a cluster, topics live on different brokers.
        let addr = tokio::time::timeout(self.cfg.op_timeout, self.client.lookup_topic(topic))
            .await
            .map_err(|_| unavailable(format!("looking up {topic} timed out")))?
            .map_err(|e| unavailable(format!("looking up {topic}: {e}")))?;
        let host = addr
            .url
            .host_str()
            .ok_or_else(|| unavailable(format!("broker address {} has no host", addr.url)))?;
        let target = format!("{host}:{}", addr.url.port().unwrap_or(6650));
        let proxy_to = addr.proxy.then(|| addr.broker_url.clone());
        let target = reader::Target {
            addr: target,
            proxy_to,
        };
        reader::read_all(&target, topic, self.cfg.op_timeout)
            .await
            .map_err(|e| unavailable(format!("reading {topic}: {e}")))
    }

    async fn rebuild(&self) -> Result<(), StoreError> {
        let mut meta: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for m in self.read_topic(&self.cfg.meta_topic()).await? {
            let Some(key) = m.metadata.partition_key.clone() else {
                continue;
            };
            let p = props(&m.metadata);
            match p.get(P_META_OP).map(String::as_str) {
                Some("put") => {
                    meta.insert(key, m.payload.to_vec());
                }
                Some("del") => {
                    meta.remove(&key);
                }
                _ => {}
            }
        }
        let mut state = State::default();
        let mut starts: HashMap<(String, u32), u64> = HashMap::new();
        let mut topic_records = Vec::new();
        for (k, v) in &meta {
            if let Some(name) = k.strip_prefix("topic/") {
                let rec: TopicRecord = serde_json::from_slice(v)
                    .map_err(|e| StoreError::Io(format!("bad topic record for {name:?}: {e}")))?;
                topic_records.push((name.to_string(), rec));
            } else if let Some(rest) = k.strip_prefix("offset/") {
                let mut it = rest.splitn(3, '/');
                if let (Some(inc), Some(p), Some(g)) = (it.next(), it.next(), it.next()) {
                    if let (Ok(p), Some(o)) = (p.parse(), parse_u64(v)) {
                        state.offsets.insert((inc.to_string(), p, g.to_string()), o);
                    }
                }
            } else if let Some(rest) = k.strip_prefix("start/") {
                if let Some((inc, p)) = rest.split_once('/') {
                    if let (Ok(p), Some(o)) = (p.parse(), parse_u64(v)) {
                        starts.insert((inc.to_string(), p), o);
                    }
                }
            } else if let Some(user) = k.strip_prefix("kv/") {
                state.kv.insert(user.to_string(), v.clone());
            }
        }
        let live: std::collections::HashSet<String> = topic_records
            .iter()
            .map(|(_, r)| r.incarnation.clone())
            .collect();
        state.offsets.retain(|(inc, _, _), _| live.contains(inc));
        for (name, rec) in topic_records {
            let mut raw = Vec::new();
            for p in 0..rec.config.partitions {
                raw.push(self.rebuild_partition(&name, &rec.incarnation, p).await?);
            }
            drop_incomplete_appends(&mut raw);
            let mut parts = Vec::new();
            for (p, records) in raw.into_iter().enumerate() {
                let start = starts
                    .get(&(rec.incarnation.clone(), p as u32))
                    .copied()
                    .unwrap_or(0);
                let log = part_log(records.into_iter().map(|(r, _)| r).collect(), start);
                let (end_tx, _) = watch::channel(log.end());
                parts.push(Part {
                    log: Mutex::new(log),
                    end_tx,
                });
            }
            let n = parts.len();
            state.topics.insert(
                name.clone(),
                Arc::new(TopicState {
                    name,
                    config: rec.config,
                    incarnation: rec.incarnation,
                    parts,
                    producers: tokio::sync::Mutex::new((0..n).map(|_| None).collect()),
                }),
            );
        }
        *lock(&self.state) = state;
        Ok(())
    }

    async fn rebuild_partition(
        &self,
        topic: &str,
        incarnation: &str,
        partition: u32,
    ) -> Result<Vec<(StoredRecord, Option<AppendTag>)>, StoreError> {
        let name = self.cfg.partition_topic(topic, partition);
        let mut records: Vec<(StoredRecord, Option<AppendTag>)> = Vec::new();
        for m in self.read_topic(&name).await? {
            let p = props(&m.metadata);
            if p.get(mapping::P_INCARNATION).map(String::as_str) != Some(incarnation) {
                continue;
            }
            let (Some(offset), Some(ts)) = (
                p.get(mapping::P_OFFSET).and_then(|s| s.parse::<u64>().ok()),
                p.get(mapping::P_TS).and_then(|s| s.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let unsupported = if m.metadata.compression.unwrap_or(0) != 0 {
                Some("compressed")
            } else if m.metadata.num_messages_in_batch.unwrap_or(1) != 1 {
                Some("batched")
            } else {
                None
            };
            if let Some(what) = unsupported {
                // meshd's producers neither batch nor compress; someone else wrote this.
                return Err(StoreError::Corrupt {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    reason: format!("{what} message in a meshd partition topic"),
                });
            }
            let len = records.len() as u64;
            if offset > len {
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    expected = len,
                    "gap in the Pulsar partition topic; message skipped"
                );
                continue;
            }
            // A later message with an offset already seen was written after an append
            // that failed half-way: it replaces that one and what followed it.
            records.truncate(offset as usize);
            let payload =
                mapping::from_message(&p, m.payload).map_err(|reason| StoreError::Corrupt {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    reason,
                })?;
            let tag = p.get(mapping::P_APPEND).and_then(|t| {
                let (id, count) = t.split_once(':')?;
                Some((id.to_string(), count.parse().ok()?))
            });
            records.push((
                StoredRecord {
                    partition,
                    offset,
                    timestamp_ms: ts,
                    payload,
                },
                tag,
            ));
        }
        Ok(records)
    }

    fn topic_state(&self, topic: &str) -> Result<Arc<TopicState>, StoreError> {
        let s = lock(&self.state);
        if s.closed {
            return Err(unavailable("store closed"));
        }
        s.topics
            .get(topic)
            .cloned()
            .ok_or_else(|| StoreError::TopicNotFound {
                topic: topic.to_string(),
            })
    }

    fn part(t: &TopicState, partition: u32) -> Result<&Part, StoreError> {
        t.parts
            .get(partition as usize)
            .ok_or_else(|| StoreError::PartitionNotFound {
                topic: t.name.clone(),
                partition,
            })
    }

    async fn producer(&self, topic: String) -> Result<Producer<TokioExecutor>, StoreError> {
        tokio::time::timeout(
            self.cfg.op_timeout,
            self.client.producer().with_topic(topic).build(),
        )
        .await
        .map_err(|_| unavailable("creating a producer timed out"))?
        .map_err(unavailable)
    }

    /// Writes metadata entries (`None` deletes) and waits for the broker's receipts. The
    /// caller holds the `meta` lock.
    async fn write_meta(
        &self,
        slot: &mut Option<Producer<TokioExecutor>>,
        entries: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.cfg.op_timeout;
        let work = async {
            if slot.is_none() {
                *slot = Some(self.producer(self.cfg.meta_topic()).await?);
            }
            let Some(producer) = slot.as_mut() else {
                return Err(unavailable("no metadata producer"));
            };
            let mut receipts = Vec::new();
            for (key, value) in entries {
                let op = if value.is_some() { "put" } else { "del" };
                let msg = Message {
                    payload: value.unwrap_or_default(),
                    properties: HashMap::from([(P_META_OP.to_string(), op.to_string())]),
                    partition_key: Some(key),
                    ..Default::default()
                };
                receipts.push(producer.send_non_blocking(msg).await.map_err(unavailable)?);
            }
            for r in receipts {
                r.await.map_err(unavailable)?;
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(unavailable("metadata write timed out")),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if lock(&self.state).closed {
            return Err(unavailable("store closed"));
        }
        Ok(())
    }
}

/// (append id, number of records in that append call).
type AppendTag = (String, u64);

/// Removes the records of appends that did not reach the broker whole (the call failed
/// half-way and was answered with an error). Such records are always at the end of their
/// partition: the next append to a partition reuses the offsets of a failed one and
/// replaces its records when the log is rebuilt.
fn drop_incomplete_appends(parts: &mut [Vec<(StoredRecord, Option<AppendTag>)>]) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    for part in parts.iter() {
        for (_, tag) in part {
            if let Some((id, _)) = tag {
                *seen.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for part in parts.iter_mut() {
        while let Some((r, Some((id, count)))) = part.last() {
            if seen.get(id).copied().unwrap_or(0) >= *count {
                break;
            }
            tracing::warn!(
                partition = r.partition,
                offset = r.offset,
                "dropping a record of an append that failed half-way"
            );
            part.pop();
        }
    }
}

/// The in-memory log of a partition from its rebuilt records and retention start.
fn part_log(records: Vec<StoredRecord>, start: u64) -> PartLog {
    let end = (records.len() as u64).max(start);
    let kept: VecDeque<StoredRecord> = records.into_iter().filter(|r| r.offset >= start).collect();
    let bytes = kept.iter().map(|r| r.payload.len() as u64).sum();
    PartLog {
        start: end - kept.len() as u64,
        records: kept,
        bytes,
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[async_trait]
impl EventStore for PulsarStore {
    async fn create_topic(&self, topic: &str, config: &TopicConfig) -> Result<bool, StoreError> {
        let mut meta = self.meta.lock().await;
        self.check_open()?;
        if let Some(t) = lock(&self.state).topics.get(topic) {
            return if &t.config == config {
                Ok(false)
            } else {
                Err(StoreError::TopicConflict {
                    topic: topic.to_string(),
                })
            };
        }
        let rec = TopicRecord {
            config: config.clone(),
            incarnation: format!("{:016x}", rand::random::<u64>()),
        };
        let value = serde_json::to_vec(&rec).map_err(|e| StoreError::Io(e.to_string()))?;
        self.write_meta(&mut meta, vec![(format!("topic/{topic}"), Some(value))])
            .await?;
        let n = config.partitions as usize;
        let parts = (0..n)
            .map(|_| Part {
                log: Mutex::new(PartLog {
                    start: 0,
                    records: VecDeque::new(),
                    bytes: 0,
                }),
                end_tx: watch::channel(0).0,
            })
            .collect();
        lock(&self.state).topics.insert(
            topic.to_string(),
            Arc::new(TopicState {
                name: topic.to_string(),
                config: rec.config,
                incarnation: rec.incarnation,
                parts,
                producers: tokio::sync::Mutex::new((0..n).map(|_| None).collect()),
            }),
        );
        Ok(true)
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), StoreError> {
        let mut meta = self.meta.lock().await;
        let t = self.topic_state(topic)?;
        self.write_meta(&mut meta, vec![(format!("topic/{topic}"), None)])
            .await?;
        {
            let mut s = lock(&self.state);
            s.topics.remove(topic);
            s.offsets.retain(|(inc, _, _), _| inc != &t.incarnation);
        }
        let mut producers = t.producers.lock().await;
        for p in producers.iter_mut().filter_map(Option::take) {
            let mut p = p;
            let _ = tokio::time::timeout(self.cfg.op_timeout, p.close()).await;
        }
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<(String, TopicConfig)>, StoreError> {
        let s = lock(&self.state);
        if s.closed {
            return Err(unavailable("store closed"));
        }
        Ok(s.topics
            .iter()
            .map(|(k, v)| (k.clone(), v.config.clone()))
            .collect())
    }

    async fn topic(&self, topic: &str) -> Result<Option<TopicConfig>, StoreError> {
        match self.topic_state(topic) {
            Ok(t) => Ok(Some(t.config.clone())),
            Err(StoreError::TopicNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<AppendRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        let t = self.topic_state(topic)?;
        for r in &records {
            Self::part(&t, r.partition)?;
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<mapping::MessageParts> = records
            .iter()
            .map(|r| mapping::to_message(&r.payload))
            .collect();
        let mut producers = t.producers.lock().await;
        // Deleted (or recreated) while we waited?
        match lock(&self.state).topics.get(topic) {
            Some(cur) if Arc::ptr_eq(cur, &t) => {}
            _ => {
                return Err(StoreError::TopicNotFound {
                    topic: topic.to_string(),
                })
            }
        }
        let mut next: HashMap<u32, u64> = HashMap::new();
        let mut appended = Vec::with_capacity(records.len());
        for r in &records {
            let n = match next.get(&r.partition) {
                Some(n) => *n,
                None => lock(&Self::part(&t, r.partition)?.log).end(),
            };
            next.insert(r.partition, n + 1);
            appended.push(Appended {
                partition: r.partition,
                offset: n,
            });
        }
        let tag = format!("{:016x}:{}", rand::random::<u64>(), records.len());
        let work = async {
            let mut receipts = Vec::with_capacity(records.len());
            for ((r, a), m) in records.iter().zip(&appended).zip(parts) {
                let slot = producers
                    .get_mut(r.partition as usize)
                    .ok_or_else(|| StoreError::Io("producer slot missing".into()))?;
                if slot.is_none() {
                    *slot = Some(
                        self.producer(self.cfg.partition_topic(topic, r.partition))
                            .await?,
                    );
                }
                let Some(producer) = slot.as_mut() else {
                    return Err(unavailable("no producer"));
                };
                let mut properties = m.properties;
                properties.insert(mapping::P_OFFSET.into(), a.offset.to_string());
                properties.insert(mapping::P_TS.into(), r.timestamp_ms.to_string());
                properties.insert(mapping::P_INCARNATION.into(), t.incarnation.clone());
                properties.insert(mapping::P_APPEND.into(), tag.clone());
                let msg = Message {
                    payload: m.payload,
                    properties,
                    partition_key: m.key,
                    ..Default::default()
                };
                receipts.push(producer.send_non_blocking(msg).await.map_err(unavailable)?);
            }
            for r in receipts {
                r.await.map_err(unavailable)?;
            }
            Ok(())
        };
        match tokio::time::timeout(self.cfg.op_timeout, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(unavailable(format!(
                    "Pulsar did not acknowledge the append within {:?}",
                    self.cfg.op_timeout
                )))
            }
        }
        let mut touched = Vec::new();
        for (r, a) in records.into_iter().zip(&appended) {
            let part = Self::part(&t, r.partition)?;
            let mut log = lock(&part.log);
            log.bytes += r.payload.len() as u64;
            log.records.push_back(StoredRecord {
                partition: r.partition,
                offset: a.offset,
                timestamp_ms: r.timestamp_ms,
                payload: r.payload,
            });
            if !touched.contains(&r.partition) {
                touched.push(r.partition);
            }
        }
        for p in touched {
            let part = Self::part(&t, p)?;
            let end = lock(&part.log).end();
            part.end_tx.send_replace(end);
        }
        drop(producers);
        Ok(appended)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let t = self.topic_state(topic)?;
        let part = Self::part(&t, partition)?;
        let log = lock(&part.log);
        let skip = from.saturating_sub(log.start);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        Ok(log.records.iter().skip(skip).take(max).cloned().collect())
    }

    async fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds, StoreError> {
        let t = self.topic_state(topic)?;
        let log = lock(&Self::part(&t, partition)?.log);
        Ok(PartitionBounds {
            start: log.start,
            end: log.end(),
        })
    }

    fn watch_end(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>, StoreError> {
        let t = self.topic_state(topic)?;
        Ok(Self::part(&t, partition)?.end_tx.subscribe())
    }

    async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), StoreError> {
        let mut meta = self.meta.lock().await;
        let t = self.topic_state(topic)?;
        Self::part(&t, partition)?;
        self.write_meta(
            &mut meta,
            vec![(
                offset_key(&t.incarnation, partition, group),
                Some(offset.to_string().into_bytes()),
            )],
        )
        .await?;
        lock(&self.state).offsets.insert(
            (t.incarnation.clone(), partition, group.to_string()),
            offset,
        );
        Ok(())
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, StoreError> {
        let t = self.topic_state(topic)?;
        Self::part(&t, partition)?;
        Ok(lock(&self.state)
            .offsets
            .get(&(t.incarnation.clone(), partition, group.to_string()))
            .copied())
    }

    async fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport, StoreError> {
        let mut meta = self.meta.lock().await;
        self.check_open()?;
        let topics: Vec<Arc<TopicState>> = lock(&self.state).topics.values().cloned().collect();
        let mut report = RetentionReport::default();
        for t in topics {
            let retention = &t.config.retention;
            if retention.max_age_secs.is_none() && retention.max_bytes.is_none() {
                continue;
            }
            let cutoff = retention
                .max_age_secs
                .map(|s| now_ms.saturating_sub(s.saturating_mul(1000)));
            for (pi, part) in t.parts.iter().enumerate() {
                let (new_start, removed_bytes) = {
                    let log = lock(&part.log);
                    let mut removed = 0u64;
                    let mut new_start = log.start;
                    for r in &log.records {
                        let expired = cutoff.is_some_and(|c| r.timestamp_ms < c);
                        let over = retention
                            .max_bytes
                            .is_some_and(|m| log.bytes.saturating_sub(removed) > m);
                        if !(expired || over) {
                            break;
                        }
                        removed += r.payload.len() as u64;
                        new_start = r.offset + 1;
                    }
                    (new_start, removed)
                };
                let pi = pi as u32;
                let old_start = lock(&part.log).start;
                if new_start == old_start {
                    continue;
                }
                self.write_meta(
                    &mut meta,
                    vec![(
                        start_key(&t.incarnation, pi),
                        Some(new_start.to_string().into_bytes()),
                    )],
                )
                .await?;
                let mut log = lock(&part.log);
                while log.start < new_start {
                    let Some(r) = log.records.pop_front() else {
                        break;
                    };
                    log.bytes = log.bytes.saturating_sub(r.payload.len() as u64);
                    log.start += 1;
                }
                report.records += new_start - old_start;
                report.bytes += removed_bytes;
            }
        }
        Ok(report)
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut meta = self.meta.lock().await;
        self.check_open()?;
        self.write_meta(&mut meta, vec![(format!("kv/{key}"), Some(value.to_vec()))])
            .await?;
        lock(&self.state).kv.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    async fn delete_meta(&self, key: &str) -> Result<bool, StoreError> {
        let mut meta = self.meta.lock().await;
        self.check_open()?;
        if !lock(&self.state).kv.contains_key(key) {
            return Ok(false);
        }
        self.write_meta(&mut meta, vec![(format!("kv/{key}"), None)])
            .await?;
        lock(&self.state).kv.remove(key);
        Ok(true)
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let s = lock(&self.state);
        if s.closed {
            return Err(unavailable("store closed"));
        }
        Ok(s.kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn close(&self) -> Result<(), StoreError> {
        let mut meta = self.meta.lock().await;
        let topics: Vec<Arc<TopicState>> = {
            let mut s = lock(&self.state);
            s.closed = true;
            s.topics.values().cloned().collect()
        };
        if let Some(mut p) = meta.take() {
            let _ = tokio::time::timeout(self.cfg.op_timeout, p.close()).await;
        }
        for t in topics {
            let mut producers = t.producers.lock().await;
            for mut p in producers.iter_mut().filter_map(Option::take) {
                let _ = tokio::time::timeout(self.cfg.op_timeout, p.close()).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(
        partition: u32,
        offset: u64,
        tag: Option<(&str, u64)>,
    ) -> (StoredRecord, Option<AppendTag>) {
        (
            StoredRecord {
                partition,
                offset,
                timestamp_ms: 0,
                payload: bytes::Bytes::from(format!("{partition}/{offset}")),
            },
            tag.map(|(id, n)| (id.to_string(), n)),
        )
    }

    #[test]
    fn half_written_appends_are_dropped_from_the_tails() {
        // "a" (2 records over p0 and p1) made it whole; "b" reached p1 only; "c" wrote one
        // of its two records to p0; untagged records are kept.
        let mut parts = vec![
            vec![
                r(0, 0, Some(("a", 2))),
                r(0, 1, None),
                r(0, 2, Some(("c", 2))),
            ],
            vec![r(1, 0, Some(("a", 2))), r(1, 1, Some(("b", 2)))],
            vec![],
        ];
        drop_incomplete_appends(&mut parts);
        let offsets: Vec<Vec<u64>> = parts
            .iter()
            .map(|p| p.iter().map(|(r, _)| r.offset).collect())
            .collect();
        assert_eq!(offsets, vec![vec![0, 1], vec![0], vec![]]);
    }

    #[test]
    fn part_log_applies_the_retention_start() {
        let records: Vec<StoredRecord> = (0..4).map(|o| r(0, o, None).0).collect();
        let log = part_log(records.clone(), 2);
        assert_eq!((log.start, log.end(), log.bytes), (2, 4, 6));
        // A start past what was rebuilt keeps the end where it was.
        let log = part_log(records, 9);
        assert_eq!((log.start, log.end(), log.records.len()), (9, 9, 0));
    }
}
