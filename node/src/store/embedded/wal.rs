//! The write-ahead tail of the embedded store under `fsync=interval`: what makes an
//! acknowledged operation survive a process kill between two durable redb commits.
//!
//! redb keeps a non-durable commit's root in process memory only, so a `kill -9` loses
//! every commit since the last durable one. Under [`FsyncPolicy::Interval`] the writer
//! therefore also `write(2)`s each non-durable group commit's operations to
//! `events.wal` before it acknowledges them. The file is not fsynced: once `write`
//! returns, the bytes are the kernel's, and only a machine crash can lose them (that is
//! the interval's bargain). Every durable redb commit makes the file redundant and
//! empties it.
//!
//! Each group commit is one frame, numbered with a sequence number that the same redb
//! transaction stores in `info` (`wal_seq`):
//!
//! ```text
//! [body length: u32 LE][crc32 of seq + body: u32 LE][seq: u64 LE][body]
//! ```
//!
//! On open the store reads the frames in order, skips those at or below the durable
//! `wal_seq` (written before the last durable commit but not yet truncated away) and
//! replays the following ones while their sequence numbers continue by one. It stops at
//! the first frame that is short, fails its checksum or does not continue the sequence:
//! a torn write (machine crash) or the stale tail of an earlier, truncated generation.
//! Replay applies the operations with the writer's own code, in the order they were
//! first applied, so they land at the same offsets; then one durable commit, then the
//! file is emptied.
//!
//! Only operations that are frequent and deterministic to replay are logged: appends,
//! consumer offsets and metadata. Topic creation and deletion and retention are rare;
//! under `interval` a batch holding one of them is committed durably instead.
//!
//! [`FsyncPolicy::Interval`]: crate::store::FsyncPolicy::Interval

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;

use super::writer::Op;
use crate::store::{AppendRecord, StoreError};

/// Name of the write-ahead tail inside the data directory.
pub const WAL_FILE: &str = "events.wal";

/// Bytes of a frame before its body: length (4) + crc32 (4) + seq (8).
const FRAME_HEADER: usize = 16;

const TAG_APPEND: u8 = 1;
const TAG_COMMIT_OFFSET: u8 = 2;
const TAG_PUT_META: u8 = 3;
const TAG_DELETE_META: u8 = 4;

/// An operation as logged: what replay needs to apply it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoggedOp {
    Append {
        topic: String,
        records: Vec<AppendRecord>,
    },
    CommitOffset {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
    },
    PutMeta {
        key: String,
        value: Vec<u8>,
    },
    DeleteMeta {
        key: String,
    },
}

/// Whether an operation can go to the log (the others make their batch durable).
pub(crate) fn loggable(op: &Op) -> bool {
    matches!(
        op,
        Op::Append { .. } | Op::CommitOffset { .. } | Op::PutMeta { .. } | Op::DeleteMeta { .. }
    )
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Appends the encoding of a loggable operation to a frame body; `false` (and nothing
/// written) for one that is not loggable.
pub(crate) fn encode_op(buf: &mut Vec<u8>, op: &Op) -> bool {
    match op {
        Op::Append { topic, records, .. } => encode_append(buf, topic, records),
        Op::CommitOffset {
            group,
            topic,
            partition,
            offset,
            ..
        } => encode_commit_offset(buf, group, topic, *partition, *offset),
        Op::PutMeta { key, value, .. } => encode_put_meta(buf, key, value),
        Op::DeleteMeta { key, .. } => encode_delete_meta(buf, key),
        _ => return false,
    }
    true
}

fn encode_append(buf: &mut Vec<u8>, topic: &str, records: &[AppendRecord]) {
    buf.push(TAG_APPEND);
    put_str(buf, topic);
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        buf.extend_from_slice(&r.partition.to_le_bytes());
        buf.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        put_bytes(buf, &r.payload);
    }
}

fn encode_commit_offset(buf: &mut Vec<u8>, group: &str, topic: &str, partition: u32, offset: u64) {
    buf.push(TAG_COMMIT_OFFSET);
    put_str(buf, group);
    put_str(buf, topic);
    buf.extend_from_slice(&partition.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
}

fn encode_put_meta(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.push(TAG_PUT_META);
    put_str(buf, key);
    put_bytes(buf, value);
}

fn encode_delete_meta(buf: &mut Vec<u8>, key: &str) {
    buf.push(TAG_DELETE_META);
    put_str(buf, key);
}

/// Reads a frame body front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Decodes a frame body; `None` if it is malformed.
pub(crate) fn decode_body(body: &[u8]) -> Option<Vec<LoggedOp>> {
    let mut c = Cursor(body);
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let op = match c.u8()? {
            TAG_APPEND => {
                let topic = c.string()?;
                let n = c.u32()? as usize;
                let mut records = Vec::with_capacity(n.min(c.0.len() / 16));
                for _ in 0..n {
                    let partition = c.u32()?;
                    let timestamp_ms = c.u64()?;
                    let payload = Bytes::copy_from_slice(c.bytes()?);
                    records.push(AppendRecord {
                        partition,
                        timestamp_ms,
                        payload,
                    });
                }
                LoggedOp::Append { topic, records }
            }
            TAG_COMMIT_OFFSET => LoggedOp::CommitOffset {
                group: c.string()?,
                topic: c.string()?,
                partition: c.u32()?,
                offset: c.u64()?,
            },
            TAG_PUT_META => LoggedOp::PutMeta {
                key: c.string()?,
                value: c.bytes()?.to_vec(),
            },
            TAG_DELETE_META => LoggedOp::DeleteMeta { key: c.string()? },
            _ => return None,
        };
        out.push(op);
    }
    Some(out)
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Turns `buf` (a buffer the writer reuses) into an empty frame: encode the operations
/// into it with [`encode_op`], then [`seal`] it (the body is never copied).
pub(crate) fn start_frame(buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(FRAME_HEADER, 0);
}

/// Fills in the header of a frame made by [`new_frame`] as group commit number `seq`.
pub(crate) fn seal(seq: u64, frame: &mut [u8]) {
    let (head, body) = frame.split_at_mut(FRAME_HEADER);
    head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[4..8].copy_from_slice(&checksum(seq, body).to_le_bytes());
    head[8..].copy_from_slice(&seq.to_le_bytes());
}

/// Frames `body` as group commit number `seq`.
#[cfg(test)]
pub(crate) fn frame(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    start_frame(&mut f);
    f.extend_from_slice(body);
    seal(seq, &mut f);
    f
}

/// What reading the log found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The group commits to replay, in order, with their sequence numbers.
    pub batches: Vec<(u64, Vec<LoggedOp>)>,
    /// Frames skipped because the durable commit already holds them.
    pub skipped: u64,
    /// Why reading stopped before the end of the file, if it did (torn or stale tail).
    pub stopped: Option<String>,
}

/// Parses the frames of `data` that follow the durable sequence number `durable_seq`.
pub(crate) fn parse(data: &[u8], durable_seq: u64) -> Recovered {
    let mut out = Recovered::default();
    let mut pos = 0usize;
    let mut expected = durable_seq + 1;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() < FRAME_HEADER {
            out.stopped = Some(format!(
                "{} bytes at {pos}, shorter than a frame header",
                rest.len()
            ));
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&rest[8..16]);
        let seq = u64::from_le_bytes(seq);
        let Some(body) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
            out.stopped = Some(format!("frame at {pos} ends past the end of the file"));
            break;
        };
        if checksum(seq, body) != crc {
            out.stopped = Some(format!("frame at {pos} fails its checksum"));
            break;
        }
        if seq <= durable_seq && out.batches.is_empty() {
            out.skipped += 1;
        } else if seq == expected {
            let Some(ops) = decode_body(body) else {
                out.stopped = Some(format!("frame {seq} at {pos} does not decode"));
                break;
            };
            out.batches.push((seq, ops));
            expected += 1;
        } else {
            out.stopped = Some(format!(
                "frame at {pos} has sequence number {seq}, expected {expected}"
            ));
            break;
        }
        pos += FRAME_HEADER + len;
    }
    out
}

fn wal_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// The open log file: appended to by the writer thread only.
pub(crate) struct Wal {
    file: File,
    /// Bytes written since the file was last emptied.
    len: u64,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and returns it with its whole content.
    pub(crate) fn open(dir: &Path) -> Result<(Wal, Vec<u8>), StoreError> {
        let path = dir.join(WAL_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| wal_err(&path, "cannot open", e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| wal_err(&path, "cannot read", e))?;
        let len = data.len() as u64;
        Ok((Wal { file, len }, data))
    }

    /// Writes one frame (one `write(2)` for all but huge frames). Not fsynced.
    pub(crate) fn append(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.file.write_all(frame)?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// Empties the log (after a durable commit made it redundant).
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        if self.len > 0 {
            self.file.set_len(0)?;
            self.len = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_op(topic: &str, payloads: &[&str]) -> LoggedOp {
        LoggedOp::Append {
            topic: topic.into(),
            records: payloads
                .iter()
                .enumerate()
                .map(|(i, p)| AppendRecord {
                    partition: i as u32,
                    timestamp_ms: 7 + i as u64,
                    payload: Bytes::copy_from_slice(p.as_bytes()),
                })
                .collect(),
        }
    }

    fn body(ops: &[LoggedOp]) -> Vec<u8> {
        let mut buf = Vec::new();
        for op in ops {
            match op {
                LoggedOp::Append { topic, records } => encode_append(&mut buf, topic, records),
                LoggedOp::CommitOffset {
                    group,
                    topic,
                    partition,
                    offset,
                } => encode_commit_offset(&mut buf, group, topic, *partition, *offset),
                LoggedOp::PutMeta { key, value } => encode_put_meta(&mut buf, key, value),
                LoggedOp::DeleteMeta { key } => encode_delete_meta(&mut buf, key),
            }
        }
        buf
    }

    fn sample() -> Vec<LoggedOp> {
        vec![
            append_op("t", &["a", "", "ccc"]),
            LoggedOp::CommitOffset {
                group: "g".into(),
                topic: "t".into(),
                partition: 2,
                offset: 99,
            },
            LoggedOp::PutMeta {
                key: "k".into(),
                value: vec![0, 1, 2],
            },
            LoggedOp::DeleteMeta { key: "k".into() },
        ]
    }

    #[test]
    fn frames_roundtrip_and_skip_what_is_durable() {
        let ops = sample();
        let mut data = frame(4, &body(&ops[..1]));
        data.extend(frame(5, &body(&ops)));
        data.extend(frame(6, &body(&ops[1..])));
        let r = parse(&data, 4);
        assert_eq!(r.skipped, 1);
        assert_eq!(r.stopped, None);
        assert_eq!(r.batches, vec![(5, ops.clone()), (6, ops[1..].to_vec())]);
        let r = parse(&data, 6);
        assert_eq!((r.skipped, r.batches.len(), r.stopped), (3, 0, None));
    }

    #[test]
    fn a_torn_or_stale_tail_stops_replay_there() {
        let ops = sample();
        let good = frame(1, &body(&ops));
        let next = frame(2, &body(&ops[..2]));
        // Torn: the second frame is cut short anywhere.
        for cut in 1..next.len() {
            let mut data = good.clone();
            data.extend_from_slice(&next[..cut]);
            let r = parse(&data, 0);
            assert_eq!(r.batches, vec![(1, ops.clone())], "cut at {cut}");
            assert!(r.stopped.is_some(), "cut at {cut}");
        }
        // A flipped bit in the second frame's body.
        let mut data = good.clone();
        let mut bad = next.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x10;
        data.extend(bad);
        let r = parse(&data, 0);
        assert_eq!(r.batches.len(), 1);
        assert!(r.stopped.unwrap().contains("checksum"));
        // A stale frame of an older generation after the current ones.
        let mut data = good.clone();
        data.extend(frame(1, &body(&ops[..1])));
        let r = parse(&data, 0);
        assert_eq!(r.batches.len(), 1);
        assert!(r.stopped.unwrap().contains("expected 2"));
        // A gap right after the durable commit replays nothing.
        let r = parse(&frame(3, &body(&ops)), 1);
        assert!(r.batches.is_empty());
        assert!(r.stopped.unwrap().contains("expected 2"));
    }

    #[test]
    fn malformed_bodies_do_not_decode() {
        let b = body(&sample());
        assert_eq!(decode_body(&b).unwrap(), sample());
        for cut in 1..b.len() {
            // Every strict prefix either fails or decodes to fewer operations.
            if let Some(ops) = decode_body(&b[..cut]) {
                assert!(ops.len() < sample().len());
            }
        }
        assert_eq!(decode_body(&[9]), None);
    }
}
