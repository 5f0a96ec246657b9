//! Our own framing of the Pulsar binary protocol, for the read path only.
//!
//! pulsar-rs 6.9 insists on the magic number `0x0e01` and a CRC32-C checksum after the
//! command of every MESSAGE frame; the protocol makes them optional and pulsar-lite sends
//! frames without them, so a pulsar-rs consumer cannot read from it. This module decodes
//! frames itself, using only the crate's public prost types ([`pulsar::proto`]):
//!
//! ```text
//! simple:  [total u32][cmd_size u32][BaseCommand]
//! payload: [total u32][cmd_size u32][BaseCommand]
//!          ( [0x0e02][bem_size u32][BrokerEntryMetadata] )?   broker entry metadata, skipped
//!          ( [0x0e01][crc32c u32] )?                          checked when present
//!          [meta_size u32][MessageMetadata][payload]
//! ```
//!
//! Every length is checked against the frame: bad input gives a [`FrameError`], never a
//! panic. The checksum covers everything from `meta_size` to the end of the frame.

use bytes::Bytes;
use prost::Message as _;
use pulsar::proto::{BaseCommand, MessageMetadata};

/// Largest frame we accept (Pulsar's default max message size is 5 MiB).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

const MAGIC_CRC32C: u16 = 0x0e01;
const MAGIC_BROKER_ENTRY_METADATA: u16 = 0x0e02;

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The announced frame size is absurd.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A size inside the frame points past its end.
    #[error("frame is malformed: {0}")]
    Malformed(&'static str),
    /// The command or metadata is not valid protobuf.
    #[error("frame has an undecodable {what}: {reason}")]
    Protobuf {
        /// Which part.
        what: &'static str,
        /// The prost error.
        reason: String,
    },
    /// The CRC32-C checksum does not match.
    #[error("frame checksum mismatch: expected {expected:#010x}, computed {computed:#010x}")]
    Checksum {
        /// In the frame.
        expected: u32,
        /// Over the bytes.
        computed: u32,
    },
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The command.
    pub command: BaseCommand,
    /// Metadata and payload, for MESSAGE (and SEND) frames.
    pub message: Option<PayloadPart>,
}

/// The message part of a payload frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadPart {
    /// Message metadata (properties, key, publish time, ...).
    pub metadata: MessageMetadata,
    /// The payload bytes as stored by the producer (maybe compressed).
    pub payload: Bytes,
    /// Whether the frame carried a checksum (it was verified if so).
    pub had_checksum: bool,
    /// Whether broker entry metadata was present (and skipped).
    pub had_broker_entry_metadata: bool,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(FrameError::Malformed(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn peek_u16(&self) -> Option<u16> {
        let b = self.buf.get(self.pos..self.pos + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Decodes one frame from the start of `buf`. `Ok(None)` when `buf` does not hold a whole
/// frame yet (read more); otherwise the frame and how many bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if total > MAX_FRAME {
        return Err(FrameError::TooLarge(total));
    }
    if total < 4 {
        return Err(FrameError::Malformed("frame shorter than its command size"));
    }
    if buf.len() < 4 + total {
        return Ok(None);
    }
    let frame = &buf[4..4 + total];
    let mut c = Cursor { buf: frame, pos: 0 };
    let cmd_size = c.u32("command size")? as usize;
    let cmd_bytes = c.take(cmd_size, "command size past the frame")?;
    let command = BaseCommand::decode(cmd_bytes).map_err(|e| FrameError::Protobuf {
        what: "command",
        reason: e.to_string(),
    })?;
    if c.rest().is_empty() {
        return Ok(Some((
            Frame {
                command,
                message: None,
            },
            4 + total,
        )));
    }
    let mut had_broker_entry_metadata = false;
    if c.peek_u16() == Some(MAGIC_BROKER_ENTRY_METADATA) {
        c.take(2, "broker entry magic")?;
        let n = c.u32("broker entry metadata size")? as usize;
        c.take(n, "broker entry metadata past the frame")?;
        had_broker_entry_metadata = true;
    }
    let mut had_checksum = false;
    if c.peek_u16() == Some(MAGIC_CRC32C) {
        c.take(2, "checksum magic")?;
        let expected = c.u32("checksum")?;
        let computed = crc32c(c.rest());
        if computed != expected {
            return Err(FrameError::Checksum { expected, computed });
        }
        had_checksum = true;
    }
    let meta_size = c.u32("metadata size")? as usize;
    let meta_bytes = c.take(meta_size, "metadata size past the frame")?;
    let metadata = MessageMetadata::decode(meta_bytes).map_err(|e| FrameError::Protobuf {
        what: "message metadata",
        reason: e.to_string(),
    })?;
    let payload = Bytes::copy_from_slice(c.rest());
    Ok(Some((
        Frame {
            command,
            message: Some(PayloadPart {
                metadata,
                payload,
                had_checksum,
                had_broker_entry_metadata,
            }),
        },
        4 + total,
    )))
}

/// Encodes a command-only frame.
pub fn encode_command(command: &BaseCommand) -> Vec<u8> {
    let cmd = command.encode_to_vec();
    let mut out = Vec::with_capacity(8 + cmd.len());
    out.extend_from_slice(&((cmd.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
    out.extend_from_slice(&cmd);
    out
}

/// Encodes a payload frame (as a broker would send MESSAGE): with or without the checksum
/// and optionally with broker entry metadata. Used by tests and by nothing on the wire.
pub fn encode_payload_frame(
    command: &BaseCommand,
    metadata: &MessageMetadata,
    payload: &[u8],
    with_checksum: bool,
    broker_entry_metadata: Option<&[u8]>,
) -> Vec<u8> {
    let cmd = command.encode_to_vec();
    let meta = metadata.encode_to_vec();
    let mut tail = Vec::with_capacity(4 + meta.len() + payload.len());
    tail.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    tail.extend_from_slice(&meta);
    tail.extend_from_slice(payload);
    let mut body = Vec::new();
    body.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
    body.extend_from_slice(&cmd);
    if let Some(bem) = broker_entry_metadata {
        body.extend_from_slice(&MAGIC_BROKER_ENTRY_METADATA.to_be_bytes());
        body.extend_from_slice(&(bem.len() as u32).to_be_bytes());
        body.extend_from_slice(bem);
    }
    if with_checksum {
        body.extend_from_slice(&MAGIC_CRC32C.to_be_bytes());
        body.extend_from_slice(&crc32c(&tail).to_be_bytes());
    }
    body.extend_from_slice(&tail);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            k += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC32-C (Castagnoli), as Pulsar uses for frame checksums.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// A broker's MESSAGE command and its metadata, as the unit tests and the fuzz target
/// (node/tests/fuzz_pulsar.rs) encode them.
#[doc(hidden)]
pub mod samples {
    use pulsar::proto::{
        base_command::Type, BaseCommand, CommandMessage, KeyValue, MessageIdData, MessageMetadata,
    };

    /// A MESSAGE command.
    pub fn message_cmd() -> BaseCommand {
        BaseCommand {
            r#type: Type::Message as i32,
            message: Some(CommandMessage {
                consumer_id: 7,
                message_id: MessageIdData {
                    ledger_id: 3,
                    entry_id: 42,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Its metadata.
    pub fn metadata() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 9,
            publish_time: 1234,
            properties: vec![KeyValue {
                key: "ce_id".into(),
                value: "1".into(),
            }],
            partition_key: Some("k".into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{message_cmd, metadata};
    use super::*;
    use pulsar::proto::{base_command::Type, CommandPing};

    fn check(frame: &[u8], checksum: bool, bem: bool) {
        let (f, used) = decode_frame(frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(f.command, message_cmd());
        let m = f.message.unwrap();
        assert_eq!(m.metadata, metadata());
        assert_eq!(m.payload.as_ref(), b"hello");
        assert_eq!(m.had_checksum, checksum);
        assert_eq!(m.had_broker_entry_metadata, bem);
    }

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4 check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn message_with_checksum() {
        let f = encode_payload_frame(&message_cmd(), &metadata(), b"hello", true, None);
        check(&f, true, false);
    }

    #[test]
    fn message_without_checksum() {
        let f = encode_payload_frame(&message_cmd(), &metadata(), b"hello", false, None);
        check(&f, false, false);
    }

    #[test]
    fn broker_entry_metadata_is_skipped() {
        let bem = [0x08, 0x96, 0x01];
        let f = encode_payload_frame(&message_cmd(), &metadata(), b"hello", true, Some(&bem));
        check(&f, true, true);
        let f = encode_payload_frame(&message_cmd(), &metadata(), b"hello", false, Some(&bem));
        check(&f, false, true);
    }

    #[test]
    fn command_only_and_streams_of_frames() {
        let ping = BaseCommand {
            r#type: Type::Ping as i32,
            ping: Some(CommandPing {}),
            ..Default::default()
        };
        let mut stream = encode_command(&ping);
        stream.extend(encode_payload_frame(
            &message_cmd(),
            &metadata(),
            b"hello",
            false,
            None,
        ));
        let (f, used) = decode_frame(&stream).unwrap().unwrap();
        assert_eq!(f.command, ping);
        assert!(f.message.is_none());
        check(&stream[used..], false, false);
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let mut f = encode_payload_frame(&message_cmd(), &metadata(), b"hello", true, None);
        let last = f.len() - 1;
        f[last] ^= 0xff;
        assert!(matches!(decode_frame(&f), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        let f = encode_payload_frame(&message_cmd(), &metadata(), b"hello", true, None);
        for n in 0..f.len() {
            assert_eq!(decode_frame(&f[..n]), Ok(None), "prefix of {n} bytes");
        }
    }

    #[test]
    fn garbage_is_a_clean_error() {
        // Sizes pointing past the frame.
        let mut f = vec![0, 0, 0, 8, 0, 0, 0, 200, 1, 2, 3, 4];
        assert!(matches!(decode_frame(&f), Err(FrameError::Malformed(_))));
        f = vec![0, 0, 0, 2, 0, 0];
        assert!(matches!(decode_frame(&f), Err(FrameError::Malformed(_))));
        // Absurd total size.
        assert!(matches!(
            decode_frame(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge(_))
        ));
        // Not protobuf.
        let f = [0, 0, 0, 7, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(decode_frame(&f), Err(FrameError::Protobuf { .. })));
        // Metadata size past the end after a valid command.
        let cmd = message_cmd().encode_to_vec();
        let mut body = (cmd.len() as u32).to_be_bytes().to_vec();
        body.extend(&cmd);
        body.extend([0, 0, 1, 0, 1]);
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        assert!(matches!(decode_frame(&f), Err(FrameError::Malformed(_))));
        // Pseudo-random bytes never panic.
        let mut x = 0x1234_5678u32;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode_frame(&bytes);
            let mut framed = (len as u32).to_be_bytes().to_vec();
            framed.extend(&bytes);
            let _ = decode_frame(&framed);
        }
    }
}
