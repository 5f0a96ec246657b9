//! Turning validated events into store appends: partition choice, encoding, one atomic
//! append per request. Used by the publish API and by dead-lettering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meshd_core::api::Position;
use meshd_core::codec::encode_event;
use meshd_core::event::partition_key;
use meshd_core::Event;

use crate::store::{AppendRecord, EventStore, StoreError};

/// Spreads key-less events over partitions.
static ROUND_ROBIN: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The partition of an event: a stable hash of its partition key, or round-robin.
pub fn partition_for(event: &Event, partitions: u32) -> u32 {
    partition_for_key(partition_key(event), partitions)
}

/// [`partition_for`] given the event's partition key (for callers holding raw records).
pub fn partition_for_key(key: Option<&str>, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    match key {
        Some(key) => (fnv1a(key.as_bytes()) % u64::from(partitions)) as u32,
        None => (ROUND_ROBIN.fetch_add(1, Ordering::Relaxed) % u64::from(partitions)) as u32,
    }
}

/// FNV-1a 64: stable across processes and versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Appends events to a topic in one atomic, durable append; returns their positions in
/// request order.
pub async fn append_events(
    store: &dyn EventStore,
    topic: &str,
    partitions: u32,
    events: &[Event],
) -> Result<Vec<Position>, StoreError> {
    let ts = now_ms();
    let records = events
        .iter()
        .map(|e| AppendRecord {
            partition: partition_for(e, partitions),
            timestamp_ms: ts,
            payload: Bytes::from(encode_event(e)),
        })
        .collect();
    let appended = store.append(topic, records).await?;
    Ok(appended
        .into_iter()
        .map(|a| Position {
            partition: a.partition,
            offset: a.offset,
        })
        .collect())
}
