//! A minimal Pulsar consumer over a tokio `TcpStream` that reads a topic from its first
//! message to the last one present when the read starts, using our own frame codec
//! ([`super::codec`]) so it works with brokers that omit the payload checksum.
//!
//! Protocol: CONNECT → CONNECTED; SUBSCRIBE (exclusive, non-durable, from the earliest
//! message) → SUCCESS; GET_LAST_MESSAGE_ID → its response; FLOW permits; MESSAGE frames
//! until the last message id is reached; PING is answered with PONG. The connection is
//! dropped at the end, which removes the non-durable subscription. Plain TCP only.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pulsar::proto::{
    base_command::Type, command_subscribe::InitialPosition, command_subscribe::SubType,
    BaseCommand, CommandConnect, CommandFlow, CommandGetLastMessageId, CommandPong,
    CommandSubscribe, MessageMetadata,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{decode_frame, encode_command, FrameError};

/// A message read back.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// (ledger id, entry id).
    pub id: (u64, u64),
    /// Its metadata.
    pub metadata: MessageMetadata,
    /// Its payload.
    pub payload: Bytes,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Connecting or talking to the broker failed.
    #[error("broker connection: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent something we could not decode.
    #[error("broker frame: {0}")]
    Frame(#[from] FrameError),
    /// The broker answered with an error or out of protocol.
    #[error("broker said: {0}")]
    Broker(String),
    /// The read took longer than allowed.
    #[error("read timed out")]
    Timeout,
}

const CONSUMER_ID: u64 = 1;
const PERMITS: u32 = 1000;

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Longest wait for the broker's next bytes.
    idle: Duration,
}

impl Conn {
    async fn send(&mut self, cmd: &BaseCommand) -> Result<(), ReadError> {
        self.stream.write_all(&encode_command(cmd)).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<super::codec::Frame, ReadError> {
        loop {
            if let Some((frame, used)) = decode_frame(&self.buf)? {
                self.buf.advance(used);
                if frame.command.r#type == Type::Ping as i32 {
                    self.send(&BaseCommand {
                        r#type: Type::Pong as i32,
                        pong: Some(CommandPong {}),
                        ..Default::default()
                    })
                    .await?;
                    continue;
                }
                return Ok(frame);
            }
            let n = tokio::time::timeout(self.idle, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| ReadError::Timeout)??;
            if n == 0 {
                return Err(ReadError::Broker(if self.buf.is_empty() {
                    "connection closed".into()
                } else {
                    "connection closed inside a frame".into()
                }));
            }
        }
    }

    /// Waits for the answer to `request_id`, failing on ERROR.
    async fn expect(&mut self, want: Type) -> Result<BaseCommand, ReadError> {
        loop {
            let f = self.next().await?;
            let t = f.command.r#type;
            if t == want as i32 {
                return Ok(f.command);
            }
            if t == Type::Error as i32 {
                let msg = f
                    .command
                    .error
                    .map(|e| e.message)
                    .unwrap_or_else(|| "error".into());
                return Err(ReadError::Broker(msg));
            }
            // Anything else (e.g. ACTIVE_CONSUMER_CHANGE) is not for us here.
        }
    }
}

/// Reads every message of `topic` present when the read starts. `addr` is `host:port`;
/// `proxy_to` the broker to ask a Pulsar proxy at `addr` to forward to. Fails with
/// [`ReadError::Timeout`] when connecting, or waiting for any answer, takes longer than
/// `idle` (a long topic may take longer in total).
pub async fn read_all(
    addr: &str,
    proxy_to: Option<String>,
    topic: &str,
    idle: Duration,
) -> Result<Vec<RawMessage>, ReadError> {
    let stream = tokio::time::timeout(idle, TcpStream::connect(addr))
        .await
        .map_err(|_| ReadError::Timeout)??;
    stream.set_nodelay(true)?;
    let mut c = Conn {
        stream,
        buf: BytesMut::with_capacity(64 * 1024),
        idle,
    };
    c.send(&BaseCommand {
        r#type: Type::Connect as i32,
        connect: Some(CommandConnect {
            client_version: concat!("meshd-", env!("CARGO_PKG_VERSION")).into(),
            protocol_version: Some(21),
            proxy_to_broker_url: proxy_to,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    c.expect(Type::Connected).await?;
    let subscription = format!("meshd-reader-{:016x}", rand::random::<u64>());
    c.send(&BaseCommand {
        r#type: Type::Subscribe as i32,
        subscribe: Some(CommandSubscribe {
            topic: topic.to_string(),
            subscription,
            sub_type: SubType::Exclusive as i32,
            consumer_id: CONSUMER_ID,
            request_id: 1,
            durable: Some(false),
            initial_position: Some(InitialPosition::Earliest as i32),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    c.expect(Type::Success).await?;
    c.send(&BaseCommand {
        r#type: Type::GetLastMessageId as i32,
        get_last_message_id: Some(CommandGetLastMessageId {
            consumer_id: CONSUMER_ID,
            request_id: 2,
        }),
        ..Default::default()
    })
    .await?;
    let last = match c.expect(Type::GetLastMessageIdResponse).await {
        Ok(last) => last,
        // pulsar-lite answers an empty topic with an ERROR instead of an id of -1.
        Err(ReadError::Broker(msg)) if msg.contains("has no messages") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let last = last
        .get_last_message_id_response
        .map(|r| (r.last_message_id.ledger_id, r.last_message_id.entry_id))
        .ok_or_else(|| ReadError::Broker("empty last message id response".into()))?;
    let mut out = Vec::new();
    // An entry id of -1 (as u64) means an empty topic.
    if last.1 == u64::MAX || i64::try_from(last.0).is_err() {
        return Ok(out);
    }
    let flow = |permits| BaseCommand {
        r#type: Type::Flow as i32,
        flow: Some(CommandFlow {
            consumer_id: CONSUMER_ID,
            message_permits: permits,
        }),
        ..Default::default()
    };
    c.send(&flow(PERMITS)).await?;
    let mut since_flow = 0u32;
    loop {
        let f = c.next().await?;
        if f.command.r#type == Type::Error as i32 {
            return Err(ReadError::Broker(
                f.command.error.map(|e| e.message).unwrap_or_default(),
            ));
        }
        let (Some(cmd), Some(part)) = (f.command.message, f.message) else {
            continue;
        };
        let id = (cmd.message_id.ledger_id, cmd.message_id.entry_id);
        let done = id >= last;
        out.push(RawMessage {
            id,
            metadata: part.metadata,
            payload: part.payload,
        });
        if done {
            return Ok(out);
        }
        since_flow += 1;
        if since_flow >= PERMITS / 2 {
            c.send(&flow(since_flow)).await?;
            since_flow = 0;
        }
    }
}
