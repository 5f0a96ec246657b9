//! Frames of the federation link protocol (`meshd-fed/1`) and their one codec.
//!
//! Owns: the frame types two bridges exchange on a link's QUIC stream and how they are
//! encoded: a 4-byte big-endian length, then the frame in bincode 2 (standard config,
//! through serde). Nothing else in meshd calls bincode, so the format can move (e.g. to
//! wincode, same format) in this file alone.
//!
//! Decoding never panics: a length above [`MAX_FRAME_BYTES`], bytes that are not a frame,
//! or trailing bytes inside a frame are a [`WireError`], and the caller closes the link.

use serde::{Deserialize, Serialize};

/// The link protocol version carried by [`Hello`]. A peer with another version is refused.
/// Version 3 added [`Frame::TraceQuery`] and [`Frame::TraceReply`] (a version-2 peer
/// would close the link on them, so it is refused at the handshake instead); version 4
/// added [`Frame::Schemas`].
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest encoded frame (without its 4-byte length prefix).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The first frame each side sends on a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The mesh name of the sender's topology.
    pub mesh: String,
    /// The sender's cluster.
    pub cluster: String,
    /// The digest of the sender's topology (may differ briefly during a hot reload).
    pub digest: String,
}

/// One interest: events of `topic` matching `filter` are wanted by cluster `dest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InterestEntry {
    /// The cluster whose subscribers want the events.
    pub dest: String,
    /// The topic.
    pub topic: String,
    /// The subscription's filter spec as JSON (`meshd_core::filter::FilterSpec`); `None`
    /// means every event of the topic.
    pub filter: Option<String>,
    /// Where a link that has no position for the topic yet starts for this entry: `None`
    /// asks for the retained history (a subscription starting at `earliest`), `Some(ms)`
    /// for the events stored since then (a `latest` subscription, made at `ms`). A link
    /// that has a cursor, or whose receiver sent [`Frame::Marks`], resumes from there.
    pub since_ms: Option<u64>,
}

/// What a receiver holds of one origin partition: every event of `origin`'s `topic`
/// partition `partition` below offset `next` that reached it is stored there (the highest
/// origin position it stored, plus one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mark {
    /// The cluster the events were published in.
    pub origin: String,
    /// Topic.
    pub topic: String,
    /// The partition in the origin cluster.
    pub partition: u32,
    /// The origin offset after the highest one stored.
    pub next: u64,
}

/// One replicated event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Its offset in the sender's partition.
    pub offset: u64,
    /// Its store time at the sender, ms since the epoch.
    pub timestamp_ms: u64,
    /// The event encoded with `meshd_core::codec::encode_event` (as bytes: one copy,
    /// not a sequence of u8 values; the encoding on the wire is the same).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A batch of events of one partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Sequence number of the batch on this connection (starts at 1, +1 per batch).
    pub seq: u64,
    /// Topic.
    pub topic: String,
    /// The sender's partition.
    pub partition: u32,
    /// The sender's partition count (a receiver creating the topic uses it).
    pub partitions: u32,
    /// The offset after the last offset this batch covers (filtered-out events included):
    /// the sender's cursor once the batch is acknowledged.
    pub next: u64,
    /// The events that passed the interest filters.
    pub events: Vec<WireEvent>,
}

/// One life of a topic in the mesh's catalog: made by `owner` at `created_ms`, with its
/// configuration, or deleted (`config: None`). A topic deleted and made again is a new
/// life. See `meshd_federation::catalog` for how lives merge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Topic.
    pub topic: String,
    /// The cluster that made it; it owns the configuration.
    pub owner: String,
    /// When the owner made it (ms since the epoch).
    pub created_ms: u64,
    /// Its configuration as JSON (`meshd_core::api::TopicConfig`); `None` once deleted.
    pub config: Option<String>,
}

/// A subscription's replica, as the cluster delivering it publishes it to the mesh (its
/// standby clusters act on it; every cluster relays it). See
/// `meshd_federation::replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubReplica {
    /// The cluster where the subscription was made.
    pub home: String,
    /// Its name there.
    pub name: String,
    /// Raised by every takeover: the highest term's `active` cluster delivers.
    pub term: u64,
    /// The cluster delivering in this term.
    pub active: String,
    /// The active cluster's update counter within the term.
    pub seq: u64,
    /// When the subscription was made at home (ms since the epoch).
    pub created_ms: u64,
    /// The subscription spec as JSON; `None` once deleted.
    pub spec: Option<String>,
    /// Its committed positions in origin terms (`Mark.next`: the first undelivered origin
    /// offset of that origin partition).
    pub positions: Vec<Mark>,
}

/// A frame of the link protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Handshake: who I am.
    Hello(Hello),
    /// Handshake refused; the connection closes after it.
    Refuse {
        /// Why, for the peer's log.
        reason: String,
    },
    /// The complete interest the sender wants from this link (replaces the previous one).
    Interest(Vec<InterestEntry>),
    /// Events.
    Batch(Batch),
    /// Every batch up to and including `seq` is durably appended by the receiver.
    Ack {
        /// Highest acknowledged batch sequence number.
        seq: u64,
    },
    /// The receiver's marks for topics it is about to want (sent before the `Interest`
    /// that adds them, and for all wanted topics after the handshake): the sender skips
    /// what the receiver stored already, whichever way it came.
    Marks(Vec<Mark>),
    /// Topic catalog entries (all of them after the handshake, then what changed).
    Catalog(Vec<CatalogEntry>),
    /// Subscription replicas (all after the handshake, then what changed).
    Subscriptions(Vec<SubReplica>),
    /// The sender's wall clock (ms since the epoch), sent first after the handshake: the
    /// receiver reads the peer's `InterestEntry::since_ms` in its own clock with it.
    Clock {
        /// The sender's wall clock when it sent the frame.
        now_ms: u64,
    },
    /// Progress marks: the sender read its partitions up to `next` and nothing in between
    /// is for this peer (all filtered out). Takes a sequence number in the batches' space
    /// and is acknowledged like a batch (cumulatively, once every batch before it is
    /// stored), which moves the sender's cursors. Sent instead of empty batches, at most
    /// one frame per interval, coalescing every partition that advanced meanwhile.
    Progress {
        /// Sequence number (shared with [`Batch::seq`]).
        seq: u64,
        /// The partitions that advanced.
        marks: Vec<ProgressMark>,
    },
    /// Asks the receiver's cluster (and the clusters behind it not asked yet) for an
    /// event's trace records (`GET /v1/trace`).
    TraceQuery(TraceQuery),
    /// The answer to a [`Frame::TraceQuery`].
    TraceReply(TraceReply),
    /// Schema registry entries (all of them after the handshake, then what changed).
    Schemas(Vec<SchemaEntry>),
}

/// One schema of the mesh's schema catalog: its every version as the last writer left
/// them, or deleted (`versions: None`). The entry with the highest (`rev`, `writer`)
/// wins everywhere. See `meshd_federation::schema_catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaEntry {
    /// Schema name.
    pub name: String,
    /// Revision: one more than the revision the writer knew when it changed the schema.
    pub rev: u64,
    /// The cluster that wrote this revision.
    pub writer: String,
    /// The versions as JSON (`meshd_core::api::SchemaCatalogEntry`: serde_json values do
    /// not go through bincode); `None` once deleted.
    pub versions: Option<String>,
}

/// A trace question relayed along links ([`Frame::TraceQuery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceQuery {
    /// Chosen by the asker; the reply carries it.
    pub req: u64,
    /// The event's `source`.
    pub source: String,
    /// The event's `id`.
    pub id: String,
    /// Clusters already asked (or asking): the receiver relays only to others.
    pub asked: Vec<String>,
    /// Relays left after the receiver (0: the receiver answers for itself only).
    pub hops: u32,
    /// Time the receiver has to answer, ms (it relays with less).
    pub timeout_ms: u64,
}

/// Records of one cluster in a [`TraceReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceClusterReply {
    /// The cluster.
    pub cluster: String,
    /// Whether it answered in time.
    pub answered: bool,
    /// Why not (or which of its nodes could not be asked).
    pub error: Option<String>,
    /// Its records as a JSON array of `meshd_core::api::TraceRecord` (the API form; a
    /// flat serde enum does not go through bincode).
    pub records_json: String,
}

/// The answer to a [`TraceQuery`]: the receiver's cluster and those it relayed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReply {
    /// The query's `req`.
    pub req: u64,
    /// One per cluster asked through the receiver (itself first).
    pub clusters: Vec<TraceClusterReply>,
}

/// One partition's progress in a [`Frame::Progress`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressMark {
    /// Topic (its wire name).
    pub topic: String,
    /// The sender's partition.
    pub partition: u32,
    /// The sender's cursor once the frame is acknowledged.
    pub next: u64,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix is above the limit.
    #[error("frame of {len} bytes is above the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame bytes do not decode.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The frame decodes but leaves bytes unread.
    #[error("frame has {0} trailing bytes")]
    Trailing(usize),
    /// A frame could not be encoded (too large).
    #[error("frame cannot be encoded: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes a frame with its length prefix.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let body = bincode::serde::encode_to_vec(frame, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a length prefix before reading the body.
pub fn check_frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(len)
}

/// Decodes a frame body (without its length prefix).
pub fn decode_frame(body: &[u8]) -> Result<Frame, WireError> {
    let (frame, used): (Frame, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(frame)
}

/// A sans-IO frame splitter: push received bytes, pop complete frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut p = [0u8; 4];
        p.copy_from_slice(prefix);
        let len = check_frame_len(p)?;
        let Some(body) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = decode_frame(body)?;
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                mesh: "m".into(),
                cluster: "a".into(),
                digest: "d".into(),
            }),
            Frame::Refuse {
                reason: "no".into(),
            },
            Frame::Interest(vec![InterestEntry {
                dest: "b".into(),
                topic: "t".into(),
                filter: Some("{\"exact\":{\"type\":\"x\"}}".into()),
                since_ms: Some(7),
            }]),
            Frame::Batch(Batch {
                seq: 1,
                topic: "t".into(),
                partition: 0,
                partitions: 1,
                next: 3,
                events: vec![WireEvent {
                    offset: 2,
                    timestamp_ms: 5,
                    payload: b"{}".to_vec(),
                }],
            }),
            Frame::Ack { seq: 9 },
            Frame::Marks(vec![Mark {
                origin: "a".into(),
                topic: "t".into(),
                partition: 1,
                next: 12,
            }]),
            Frame::Catalog(vec![CatalogEntry {
                topic: "t".into(),
                owner: "a".into(),
                created_ms: 5,
                config: Some("{\"partitions\":2}".into()),
            }]),
            Frame::Clock {
                now_ms: 1_764_700_000_000,
            },
            Frame::Subscriptions(vec![SubReplica {
                home: "a".into(),
                name: "s".into(),
                term: 1,
                active: "b".into(),
                seq: 3,
                created_ms: 9,
                spec: Some("{}".into()),
                positions: vec![],
            }]),
            Frame::Progress {
                seq: 10,
                marks: vec![ProgressMark {
                    topic: "t".into(),
                    partition: 3,
                    next: 1000,
                }],
            },
            Frame::TraceQuery(TraceQuery {
                req: 7,
                source: "/shop".into(),
                id: "1".into(),
                asked: vec!["a".into(), "b".into()],
                hops: 7,
                timeout_ms: 1500,
            }),
            Frame::TraceReply(TraceReply {
                req: 7,
                clusters: vec![TraceClusterReply {
                    cluster: "c".into(),
                    answered: true,
                    error: None,
                    records_json: "[]".into(),
                }],
            }),
            Frame::Schemas(vec![SchemaEntry {
                name: "orders".into(),
                rev: 2,
                writer: "b".into(),
                versions: Some("{\"versions\":[]}".into()),
            }]),
        ]
    }

    #[test]
    fn batch_encoding_is_stable() {
        // The batch frame on the wire, byte for byte (unchanged since version 1): a payload is a length and its
        // bytes (peers of other builds must keep understanding each other).
        let f = Frame::Batch(Batch {
            seq: 1,
            topic: "t".into(),
            partition: 0,
            partitions: 1,
            next: 3,
            events: vec![WireEvent {
                offset: 2,
                timestamp_ms: 5,
                payload: vec![0x7b, 0x80, 0xff, 0x7d, 1, 2, 3],
            }],
        });
        let want = [
            0x00, 0x00, 0x00, 0x12, 0x03, 0x01, 0x01, 0x74, 0x00, 0x01, 0x03, 0x01, 0x02, 0x05,
            0x07, 0x7b, 0x80, 0xff, 0x7d, 0x01, 0x02, 0x03,
        ];
        assert_eq!(encode_frame(&f).unwrap(), want);
        assert_eq!(decode_frame(&want[4..]).unwrap(), f);
    }

    #[test]
    fn round_trip_through_the_reader_byte_by_byte() {
        let mut bytes = Vec::new();
        for f in frames() {
            bytes.extend(encode_frame(&f).unwrap());
        }
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        for b in bytes {
            r.push(&[b]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames());
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut r = FrameReader::new();
        r.push(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_frame(), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random garbage of many lengths.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..2000usize {
            let mut body = Vec::with_capacity(n % 200);
            for _ in 0..(n % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.push(x as u8);
            }
            let _ = decode_frame(&body);
            let mut r = FrameReader::new();
            r.push(&body);
            while let Ok(Some(_)) = r.next_frame() {}
        }
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[200, 1, 2]).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut f = encode_frame(&Frame::Ack { seq: 1 }).unwrap();
        f.push(0);
        assert!(matches!(decode_frame(&f[4..]), Err(WireError::Trailing(1))));
    }
}
