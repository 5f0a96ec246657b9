//! Answering `GET /v1/trace`: this node's records, the computed `matched` /
//! `not_matched` records, the other nodes of the cluster, and the other clusters (through
//! the federation bridge's [`MeshTraceFn`]).

use std::time::{Duration, Instant};

use cloudevents::AttributesReader;
use meshd_core::api::{TraceAnswer, TraceClusterAnswer, TraceKind, TraceRecord};
use meshd_core::codec::decode_event;

use super::{GroupOwner, MeshTraceFn, Node, PeerError};
use crate::trace::{sort_records, to_records, Step};

/// Time a trace query allows by default.
pub const DEFAULT_TRACE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most time a trace query may ask for.
pub const MAX_TRACE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most `stored` records of one event read back for `matched` / `not_matched` (an id
/// reused many times must not turn one query into many reads).
const MAX_MATCH_READS: usize = 16;

impl Node {
    /// Attaches the federation bridge's mesh-wide trace query (once).
    pub fn set_mesh_trace(&self, f: MeshTraceFn) {
        let _ = self.mesh_trace.set(f);
    }

    /// This node's records of `(source, id)`, with a `matched` or `not_matched` record per
    /// subscription of the topic for each `stored` one (the event read back from the
    /// store and tested with each subscription's filter, at the time it was stored).
    pub async fn trace_local(&self, source: &str, id: &str) -> Vec<TraceRecord> {
        let steps = self.trace.lookup(source, id);
        let stored: Vec<(u64, String, u32, u64)> = steps
            .iter()
            .filter_map(|(at, s)| match s {
                Step::Stored {
                    topic,
                    partition,
                    offset,
                } => Some((*at, topic.to_string(), *partition, *offset)),
                _ => None,
            })
            .take(MAX_MATCH_READS)
            .collect();
        let (cluster, node) = (&self.config.cluster, &self.config.node_id);
        let mut records = to_records(cluster, node, steps);
        for (at_ms, topic, partition, offset) in stored {
            let subs: Vec<_> = self
                .read_subs()
                .values()
                .filter(|s| s.spec.topic == topic)
                .cloned()
                .collect();
            if subs.is_empty() {
                continue;
            }
            let event = match self.store.read(&topic, partition, offset, 1).await {
                Ok(r) => r
                    .into_iter()
                    .find(|r| r.offset == offset)
                    .and_then(|r| decode_event(&r.payload).ok()),
                Err(e) => {
                    tracing::debug!(
                        topic,
                        partition,
                        offset,
                        "trace: reading the event back failed: {e}"
                    );
                    None
                }
            };
            // Gone by retention, or the offset now holds another event: nothing to say.
            let Some(event) = event.filter(|e| e.source().as_str() == source && e.id() == id)
            else {
                continue;
            };
            for sub in subs {
                let matched = sub.filter.as_ref().is_none_or(|f| f.matches(&event));
                let subscription = sub.spec.name.clone();
                records.push(TraceRecord {
                    cluster: cluster.clone(),
                    node: node.clone(),
                    at_ms,
                    kind: if matched {
                        TraceKind::Matched { subscription }
                    } else {
                        TraceKind::NotMatched { subscription }
                    },
                });
            }
        }
        records
    }

    /// This cluster's records: this node's, and (unless `forwarded`: a peer node asked)
    /// those of the other nodes of its cluster, each asked within `timeout`. Also answers
    /// which nodes could not be asked.
    pub async fn trace_cluster(
        &self,
        source: &str,
        id: &str,
        forwarded: bool,
        timeout: Duration,
    ) -> (Vec<TraceRecord>, Vec<String>) {
        let mut records = self.trace_local(source, id).await;
        let mut errors = Vec::new();
        if forwarded {
            return (records, errors);
        }
        let Some(locator) = self.group_locator.get() else {
            return (records, errors);
        };
        let peers: Vec<GroupOwner> = locator
            .members()
            .await
            .into_iter()
            .filter(|m| m.node != self.config.node_id)
            .collect();
        let asks = peers.iter().map(|p| self.ask_node(p, source, id, timeout));
        for (peer, r) in peers.iter().zip(futures::future::join_all(asks).await) {
            match r {
                Ok(answer) => records.extend(answer.records),
                Err(e) => errors.push(format!("node {}: {e}", peer.node)),
            }
        }
        (records, errors)
    }

    async fn ask_node(
        &self,
        peer: &GroupOwner,
        source: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<TraceAnswer, PeerError> {
        let base = format!("{}/v1/trace", peer.url.trim_end_matches('/'));
        let mut url = url::Url::parse(&base).map_err(|source| PeerError::Url {
            url: peer.url.clone(),
            source,
        })?;
        url.query_pairs_mut()
            .append_pair("source", source)
            .append_pair("id", id)
            .append_pair("timeout_ms", &timeout.as_millis().to_string());
        let resp = self
            .peer_request(reqwest::Method::GET, url, timeout)?
            .send()
            .await
            .map_err(PeerError::Request)?;
        if !resp.status().is_success() {
            return Err(PeerError::Status(resp.status().as_u16()));
        }
        resp.json().await.map_err(PeerError::Request)
    }

    /// The whole answer of `GET /v1/trace`: this cluster first, then every other cluster
    /// of the mesh the bridge asked (unless `forwarded`: then this cluster alone is
    /// asked by one of its nodes, or by a bridge, and answers its own records). Records
    /// sorted by time.
    pub async fn trace(
        &self,
        source: &str,
        id: &str,
        forwarded: bool,
        timeout: Duration,
    ) -> TraceAnswer {
        let started = Instant::now();
        let mesh = if forwarded {
            None
        } else {
            self.mesh_trace.get().cloned()
        };
        // The cluster's nodes and the other clusters are asked at once.
        let mesh_query = async {
            match mesh {
                Some(f) => f(source.to_string(), id.to_string(), timeout).await,
                None => Vec::new(),
            }
        };
        // Nodes of this cluster answer a little before the deadline (their answer must
        // still travel back).
        let node_timeout = timeout.mul_f64(0.8).max(Duration::from_millis(50));
        let ((mut records, errors), others) = tokio::join!(
            self.trace_cluster(source, id, forwarded, node_timeout),
            mesh_query
        );
        let mine = TraceClusterAnswer {
            cluster: self.config.cluster.clone(),
            answered: true,
            records: records.len() as u64,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        };
        let mut clusters = vec![mine];
        for other in others {
            records.extend(other.records);
            clusters.push(other.answer);
        }
        sort_records(&mut records);
        tracing::debug!(
            source,
            id,
            records = records.len(),
            clusters = clusters.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "trace answered"
        );
        TraceAnswer {
            source: source.to_string(),
            id: id.to_string(),
            records,
            clusters,
        }
    }
}
