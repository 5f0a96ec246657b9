//! A minimal Pulsar consumer over a tokio `TcpStream`, using our own frame codec
//! ([`super::codec`]) so it works with brokers that omit the payload checksum.
//!
//! [`Subscription`] is one non-durable, exclusive subscription on one topic, starting at
//! the earliest message, the latest, or a given message id (`start_message_id` of
//! CommandSubscribe). Protocol: CONNECT → CONNECTED; SUBSCRIBE → SUCCESS; optionally
//! GET_LAST_MESSAGE_ID → its response (asked before any FLOW so no MESSAGE frame can be
//! in between); then FLOW permits and MESSAGE frames, PING answered with PONG. The
//! store uses it three ways: reading a range below its tail cache (start at an id, stop
//! at a bound), tailing a partition or the metadata topic forever (new messages from
//! any writer), and [`read_all`] (earliest to the last id present at the start). The
//! connection is dropped at the end, which removes the non-durable subscription. Plain
//! TCP only.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pulsar::proto::{
    base_command::Type, command_subscribe::InitialPosition, command_subscribe::SubType,
    BaseCommand, CommandConnect, CommandFlow, CommandGetLastMessageId, CommandPing, CommandPong,
    CommandSubscribe, MessageIdData, MessageMetadata,
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

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first message of the topic.
    Earliest,
    /// After the last message present when subscribing.
    Latest,
    /// At this (ledger, entry) message id, as the broker positions a non-durable cursor
    /// on `start_message_id` (callers filter: a broker may start at or after it).
    At(u64, u64),
}

const CONSUMER_ID: u64 = 1;
const PERMITS: u32 = 1000;

/// Where to connect: `host:port`, and the broker a Pulsar proxy there must forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// `proxy_to_broker_url` when `addr` is a proxy.
    pub proxy_to: Option<String>,
}

/// One non-durable subscription (see the module docs).
pub struct Subscription {
    stream: TcpStream,
    buf: BytesMut,
    /// Longest wait for the broker's next bytes during the handshake and bounded reads.
    idle: Duration,
    flowed: bool,
    since_flow: u32,
}

impl Subscription {
    async fn send(&mut self, cmd: &BaseCommand) -> Result<(), ReadError> {
        self.stream.write_all(&encode_command(cmd)).await?;
        Ok(())
    }

    /// The next frame; `wait` bounds the wait for bytes (None: forever).
    async fn next(&mut self, wait: Option<Duration>) -> Result<super::codec::Frame, ReadError> {
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
            let n = match wait {
                Some(w) => tokio::time::timeout(w, self.stream.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| ReadError::Timeout)??,
                None => self.stream.read_buf(&mut self.buf).await?,
            };
            if n == 0 {
                return Err(ReadError::Broker(if self.buf.is_empty() {
                    "connection closed".into()
                } else {
                    "connection closed inside a frame".into()
                }));
            }
        }
    }

    /// Waits for a command of type `want`, failing on ERROR.
    async fn expect(&mut self, want: Type) -> Result<BaseCommand, ReadError> {
        loop {
            let f = self.next(Some(self.idle)).await?;
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

    /// Connects and subscribes to `topic` from `start`. Fails with
    /// [`ReadError::Timeout`] when connecting or any answer takes longer than `idle`.
    pub async fn open(
        target: &Target,
        topic: &str,
        start: Start,
        idle: Duration,
    ) -> Result<Subscription, ReadError> {
        let stream = tokio::time::timeout(idle, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| ReadError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut c = Subscription {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            idle,
            flowed: false,
            since_flow: 0,
        };
        c.send(&BaseCommand {
            r#type: Type::Connect as i32,
            connect: Some(CommandConnect {
                client_version: concat!("meshd-", env!("CARGO_PKG_VERSION")).into(),
                protocol_version: Some(21),
                proxy_to_broker_url: target.proxy_to.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        c.expect(Type::Connected).await?;
        let (initial, start_id) = match start {
            Start::Earliest => (InitialPosition::Earliest, None),
            Start::Latest => (InitialPosition::Latest, None),
            Start::At(ledger_id, entry_id) => (
                InitialPosition::Earliest,
                Some(MessageIdData {
                    ledger_id,
                    entry_id,
                    ..Default::default()
                }),
            ),
        };
        c.send(&BaseCommand {
            r#type: Type::Subscribe as i32,
            subscribe: Some(CommandSubscribe {
                topic: topic.to_string(),
                subscription: format!("meshd-reader-{:016x}", rand::random::<u64>()),
                sub_type: SubType::Exclusive as i32,
                consumer_id: CONSUMER_ID,
                request_id: 1,
                durable: Some(false),
                initial_position: Some(initial as i32),
                start_message_id: start_id,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        c.expect(Type::Success).await?;
        Ok(c)
    }

    /// The id of the topic's last message, `None` when it has none. Only before the first
    /// [`Subscription::next_message`] (no MESSAGE frame may arrive in between).
    pub async fn last_message_id(&mut self) -> Result<Option<(u64, u64)>, ReadError> {
        if self.flowed {
            return Err(ReadError::Broker(
                "last message id asked after messages were requested".into(),
            ));
        }
        self.send(&BaseCommand {
            r#type: Type::GetLastMessageId as i32,
            get_last_message_id: Some(CommandGetLastMessageId {
                consumer_id: CONSUMER_ID,
                request_id: 2,
            }),
            ..Default::default()
        })
        .await?;
        let last = match self.expect(Type::GetLastMessageIdResponse).await {
            Ok(last) => last,
            // pulsar-lite answers an empty topic with an ERROR instead of an id of -1.
            Err(ReadError::Broker(msg)) if msg.contains("has no messages") => return Ok(None),
            Err(e) => return Err(e),
        };
        let last = last
            .get_last_message_id_response
            .map(|r| (r.last_message_id.ledger_id, r.last_message_id.entry_id))
            .ok_or_else(|| ReadError::Broker("empty last message id response".into()))?;
        // An entry id of -1 (as u64) means an empty topic.
        if last.1 == u64::MAX || i64::try_from(last.0).is_err() {
            return Ok(None);
        }
        Ok(Some(last))
    }

    fn flow(permits: u32) -> BaseCommand {
        BaseCommand {
            r#type: Type::Flow as i32,
            flow: Some(CommandFlow {
                consumer_id: CONSUMER_ID,
                message_permits: permits,
            }),
            ..Default::default()
        }
    }

    /// Grants the broker `n` more permits. A FLOW also makes a broker dispatch again:
    /// tailers send one when a writer waits for a record they have not received.
    pub async fn add_permits(&mut self, n: u32) -> Result<(), ReadError> {
        self.flowed = true;
        self.send(&Self::flow(n)).await
    }

    /// Sends a PING (liveness check of an idle connection; the PONG is skipped).
    pub async fn ping(&mut self) -> Result<(), ReadError> {
        self.send(&BaseCommand {
            r#type: Type::Ping as i32,
            ping: Some(CommandPing {}),
            ..Default::default()
        })
        .await
    }

    /// The next message. `wait`: how long to wait for it (`None`: forever — a tail; the
    /// connection is then checked with a PING after every 30 s of silence and fails when
    /// the broker stays silent for another 30 s or closes it).
    pub async fn next_message(&mut self, wait: Option<Duration>) -> Result<RawMessage, ReadError> {
        if !self.flowed {
            self.send(&Self::flow(PERMITS)).await?;
            self.flowed = true;
        }
        let mut pinged = false;
        loop {
            let w = wait.unwrap_or(Duration::from_secs(30));
            let f = match self.next(Some(w)).await {
                Ok(f) => f,
                Err(ReadError::Timeout) if wait.is_none() && !pinged => {
                    self.send(&BaseCommand {
                        r#type: Type::Ping as i32,
                        ping: Some(CommandPing {}),
                        ..Default::default()
                    })
                    .await?;
                    pinged = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            pinged = false;
            if f.command.r#type == Type::Error as i32 {
                return Err(ReadError::Broker(
                    f.command.error.map(|e| e.message).unwrap_or_default(),
                ));
            }
            if f.command.r#type == Type::CloseConsumer as i32 {
                return Err(ReadError::Broker("the broker closed the consumer".into()));
            }
            let (Some(cmd), Some(part)) = (f.command.message, f.message) else {
                continue;
            };
            self.since_flow += 1;
            if self.since_flow >= PERMITS / 2 {
                let n = self.since_flow;
                self.send(&Self::flow(n)).await?;
                self.since_flow = 0;
            }
            return Ok(RawMessage {
                id: (cmd.message_id.ledger_id, cmd.message_id.entry_id),
                metadata: part.metadata,
                payload: part.payload,
            });
        }
    }
}

/// Reads every message of `topic` present when the read starts. Fails with
/// [`ReadError::Timeout`] when connecting, or waiting for any answer, takes longer than
/// `idle` (a long topic may take longer in total).
pub async fn read_all(
    target: &Target,
    topic: &str,
    idle: Duration,
) -> Result<Vec<RawMessage>, ReadError> {
    let mut s = Subscription::open(target, topic, Start::Earliest, idle).await?;
    let Some(last) = s.last_message_id().await? else {
        return Ok(Vec::new());
    };
    let mut out: Vec<RawMessage> = Vec::new();
    loop {
        let m = s.next_message(Some(idle)).await?;
        // pulsar-lite sometimes delivers a message again after a FLOW.
        if out.last().is_some_and(|p| m.id <= p.id) {
            continue;
        }
        let done = m.id >= last;
        out.push(m);
        if done {
            return Ok(out);
        }
    }
}
