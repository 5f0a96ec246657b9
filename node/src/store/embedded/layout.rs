//! The on-disk layout of the embedded store: redb table definitions and the record codec
//! (our own CRC32 over offset, timestamp and payload).
//!
//! Tables (all in one redb file, so they commit together):
//! - `info`: `&str -> u64` — format version, the next topic id and the sequence number
//!   of the last group commit logged to the write-ahead tail (`wal.rs`).
//! - `topics`: topic name -> JSON [`TopicRow`] (numeric id + [`TopicConfig`]).
//! - `bounds`: `(topic id, partition) -> (start, end, payload bytes)`.
//! - `records`: `(topic id, partition, offset) -> [crc32 LE u32][timestamp LE u64][payload]`.
//! - `offsets`: `(topic id, group, partition) -> committed offset`.
//! - `meta`: `&str -> bytes`, the metadata namespace.
//!
//! Topics get a fresh numeric id at creation that is never reused, so deleting a topic and
//! creating it again can never mix old records or offsets into the new one.

use bytes::Bytes;
use meshd_core::api::TopicConfig;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Version of this layout, stored in `info`.
pub(crate) const FORMAT_VERSION: u64 = 1;
/// Key of the format version in `info`.
pub(crate) const INFO_FORMAT: &str = "format_version";
/// Key of the next topic id in `info`.
pub(crate) const INFO_NEXT_TOPIC_ID: &str = "next_topic_id";
/// Key in `info` of the sequence number of the last group commit written to the
/// write-ahead tail (`wal.rs`); a commit holding it holds that group commit too.
pub(crate) const INFO_WAL_SEQ: &str = "wal_seq";

pub(crate) const INFO: TableDefinition<&str, u64> = TableDefinition::new("info");
pub(crate) const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
pub(crate) const BOUNDS: TableDefinition<(u64, u32), (u64, u64, u64)> =
    TableDefinition::new("bounds");
pub(crate) const RECORDS: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("records");
pub(crate) const OFFSETS: TableDefinition<(u64, &str, u32), u64> = TableDefinition::new("offsets");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A row of the `topics` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopicRow {
    /// Numeric id used in the keys of the other tables.
    pub id: u64,
    /// The topic's configuration.
    pub config: TopicConfig,
}

/// Bytes of a record value before the payload: crc32 (4) + timestamp (8).
pub(crate) const RECORD_HEADER: usize = 12;

fn checksum(offset: u64, timestamp_ms: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&offset.to_le_bytes());
    h.update(&timestamp_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Encodes a record value.
pub(crate) fn encode_record(offset: u64, timestamp_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEADER + payload.len());
    v.extend_from_slice(&checksum(offset, timestamp_ms, payload).to_le_bytes());
    v.extend_from_slice(&timestamp_ms.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The timestamp and payload length of a record value without checking it (retention,
/// the time search).
pub(crate) fn peek_record(value: &[u8]) -> Option<(u64, u64)> {
    let ts = value.get(4..RECORD_HEADER)?;
    let ts = u64::from_le_bytes(ts.try_into().ok()?);
    Some((ts, (value.len() - RECORD_HEADER) as u64))
}

/// Why a stored record value is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CorruptRecord {
    /// Shorter than the header.
    #[error("record is {0} bytes, shorter than its {RECORD_HEADER}-byte header")]
    Short(usize),
    /// The checksum over offset, timestamp and payload does not match.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored in the record.
        stored: u32,
        /// Computed now.
        computed: u32,
    },
}

/// Decodes and verifies a record value stored at `offset`: `(timestamp, payload)`, or why
/// it is corrupt.
pub(crate) fn decode_record(offset: u64, value: &[u8]) -> Result<(u64, Bytes), CorruptRecord> {
    if value.len() < RECORD_HEADER {
        return Err(CorruptRecord::Short(value.len()));
    }
    let (head, payload) = value.split_at(RECORD_HEADER);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&head[..4]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&head[4..]);
    let stored = u32::from_le_bytes(crc);
    let ts = u64::from_le_bytes(ts);
    let computed = checksum(offset, ts, payload);
    if stored != computed {
        return Err(CorruptRecord::Checksum { stored, computed });
    }
    Ok((ts, Bytes::copy_from_slice(payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_corruption() {
        let v = encode_record(7, 1234, b"hello");
        assert_eq!(
            decode_record(7, &v).unwrap(),
            (1234, Bytes::from_static(b"hello"))
        );
        assert_eq!(peek_record(&v), Some((1234, 5)));
        // The offset is covered: the same bytes at another offset are corrupt.
        assert!(decode_record(8, &v).is_err());
        let mut bad = v.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode_record(7, &bad)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(decode_record(7, &v[..5])
            .unwrap_err()
            .to_string()
            .contains("shorter"));
        assert_eq!(peek_record(&v[..5]), None);
        let empty = encode_record(0, 0, b"");
        assert_eq!(decode_record(0, &empty).unwrap(), (0, Bytes::new()));
    }
}
