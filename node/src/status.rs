//! Where a subscription's delivery stands: `GET /v1/subscriptions/{name}/status` and the
//! `meshd_subscription_*` metrics ([`crate::metrics::render_subscriptions`]).
//!
//! Per partition: the head (the store's end offset) and the committed offset — the live
//! commit point where delivery runs on this node (completed offsets not yet written to the
//! store count), the store's otherwise; the backlog is their difference and its age the
//! age of the first undelivered record (one record read per partition with a backlog).
//! No log scan. Counters and the in-flight gauge are the node's delivery metrics, so they
//! count since the node started.

use std::collections::BTreeMap;

use meshd_core::api::{
    GroupMode, PartitionStatus, Sink, StartPosition, SubscriptionSpec, SubscriptionStatus,
};

use crate::ingest::now_ms;
use crate::server::{Node, NodeError};
use crate::store::StoreError;

/// The status of subscription `name` as this node sees it (its own numbers: the caller
/// forwards to the node delivering the group, see [`Node::group_owner`]), with the
/// cluster delivering it.
pub async fn subscription_status(node: &Node, name: &str) -> Result<SubscriptionStatus, NodeError> {
    let mut s = numbers(node, name).await?;
    s.active_cluster = active_cluster(node, name);
    Ok(s)
}

/// The cluster delivering `name`: this one, or (a subscription with standby clusters)
/// the one its replica names active. Builds the mesh status: not for every scrape.
fn active_cluster(node: &Node, name: &str) -> String {
    let me = &node.config.cluster;
    node.mesh_status()
        .and_then(|m| {
            m.subscription_replicas
                .into_iter()
                .find(|r| r.name == name && (r.home == *me || r.active == *me))
                .map(|r| r.active)
        })
        .unwrap_or_else(|| me.clone())
}

/// This node's numbers for `name` (`active_cluster` is this cluster).
async fn numbers(node: &Node, name: &str) -> Result<SubscriptionStatus, NodeError> {
    let spec = node.subscription(name)?;
    let running = node.delivery.is_running(name).await;
    let live = if running {
        node.delivery.commit_points(name).await
    } else {
        None
    };
    let topic = &spec.topic;
    let count = node.store.topic(topic).await?.map_or(0, |c| c.partitions);
    let now = now_ms();
    let mut partitions = BTreeMap::new();
    for p in 0..count {
        let b = match node.store.bounds(topic, p).await {
            Ok(b) => b,
            // Deleted meanwhile: nothing to show.
            Err(StoreError::TopicNotFound { .. }) | Err(StoreError::PartitionNotFound { .. }) => {
                break
            }
            Err(e) => return Err(e.into()),
        };
        let committed = match live.as_ref().and_then(|l| l.get(&p)) {
            Some(at) => Some(*at),
            None => stored_committed(node, &spec, p).await?,
        };
        // Never committed (not started anywhere yet; starting pins the cursors at once):
        // where it will start (a time start is resolved when it starts: until then the
        // whole partition counts).
        let committed = committed.unwrap_or(match &spec.start {
            StartPosition::Earliest | StartPosition::Time(_) => b.start,
            StartPosition::Latest => b.end,
            StartPosition::Offsets(o) => o.get(&p).copied().unwrap_or(b.end),
        });
        let from = committed.max(b.start);
        let backlog = b.end.saturating_sub(from);
        let mut age = 0.0;
        if backlog > 0 {
            if let Some(r) = node.store.read(topic, p, from, 1).await?.first() {
                age = now.saturating_sub(r.timestamp_ms) as f64 / 1000.0;
            }
        }
        partitions.insert(
            p,
            PartitionStatus {
                committed,
                end: b.end,
                backlog_events: backlog,
                backlog_seconds: age,
            },
        );
    }
    let me = &node.config.cluster;
    let labels = [topic.as_str(), name];
    let m = &node.metrics;
    Ok(SubscriptionStatus {
        name: spec.name.clone(),
        topic: topic.clone(),
        group: spec.group.clone(),
        mode: spec.mode,
        cluster: me.clone(),
        active_cluster: me.clone(),
        node: node.config.node_id.clone(),
        delivering: running,
        backlog_events: partitions.values().map(|p| p.backlog_events).sum(),
        backlog_seconds: partitions
            .values()
            .map(|p| p.backlog_seconds)
            .fold(0.0, f64::max),
        partitions,
        in_flight: u64::try_from(m.in_flight.with_label_values(&[name]).get()).unwrap_or(0),
        delivered: m.delivered.with_label_values(&labels).get(),
        retried: m.retried.with_label_values(&labels).get(),
        dead_lettered: m.dead_lettered.with_label_values(&labels).get(),
        filtered_out: m.filtered_out.with_label_values(&labels).get(),
        last_error: m.last_errors.get(name),
    })
}

/// The committed offset in the store: the subscription's own, or for a BROADCASTING
/// webhook subscription the lowest of its members' (`{name}/{index}`).
async fn stored_committed(
    node: &Node,
    spec: &SubscriptionSpec,
    partition: u32,
) -> Result<Option<u64>, NodeError> {
    let store = &node.store;
    if let (GroupMode::Broadcasting, Sink::Webhook(w)) = (spec.mode, &spec.sink) {
        let mut lowest: Option<u64> = None;
        for i in 0..w.members().len() {
            let key = format!("{}/{i}", spec.name);
            if let Some(at) = store.committed_offset(&key, &spec.topic, partition).await? {
                lowest = Some(lowest.map_or(at, |l| l.min(at)));
            }
        }
        if lowest.is_some() {
            return Ok(lowest);
        }
    }
    Ok(store
        .committed_offset(&spec.name, &spec.topic, partition)
        .await?)
}

/// The numbers of the subscriptions delivered on this node now (for the metrics: a
/// subscription is reported by the node delivering it, so sums over nodes count it once).
pub async fn delivered_here(node: &Node) -> Vec<SubscriptionStatus> {
    let mut out = Vec::new();
    for name in node.delivery.running().await {
        match numbers(node, &name).await {
            Ok(s) => out.push(s),
            Err(e) => tracing::debug!(subscription = %name, "no status for the metrics: {e}"),
        }
    }
    out
}
