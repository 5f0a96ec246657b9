//! The `meshd.v1.EventMesh` calls: thin tokio shells over the HTTP API's functions.
//!
//! - `Publish` and each request of `PublishStream`: the protobuf events converted by
//!   [`meshd_proto::convert::to_event`], then the HTTP publish path's shared half (publish
//!   permit, drain check, topic lookup, [`crate::http::store_published`]) and its metrics
//!   ([`crate::http::count_publish`]).
//! - `PublishStream` answers every request in order, so a producer keeps many in flight;
//!   the requests that arrived while the previous append was being made are stored by one
//!   append (in stream order); a refused request gets an ack carrying the error.
//! - `Subscribe`: [`super::session::Session`] keeps the credits; the shell long-polls
//!   [`crate::delivery::Delivery::pull`] while credits remain and acknowledges through
//!   [`crate::delivery::Delivery::ack`], the same leases, ack deadlines and redelivery as
//!   `GET /v1/subscriptions/{name}/events` and `POST .../ack`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use meshd_core::api::{InvalidField, PulledEvent};
use meshd_core::event::{EventError, MAX_BATCH_EVENTS};
use meshd_core::Event;
use meshd_proto::v1::event_mesh_server::EventMesh as EventMeshApi;
use meshd_proto::v1::{
    publish_request, received_event, AckResult, Error as PbError, Position as PbPosition,
    PublishAck, PublishRequest, PublishResponse, RawOutput, ReceivedEvent, SubscribeRequest,
    SubscribeResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::session::{Session, SessionError};
use super::{fix_decode_status, status_of};
use crate::http::{self, ApiError};
use crate::server::Node;

/// How long one pull of a `Subscribe` stream waits for events before it is asked again
/// (a new request of the client interrupts it at once).
const SUBSCRIBE_PULL_WAIT: Duration = Duration::from_secs(30);
/// Answers a stream may have queued for a slow client before the node waits for it.
const STREAM_QUEUE: usize = 64;

/// The gRPC service of a node.
pub struct EventMesh {
    node: Arc<Node>,
}

impl EventMesh {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> EventMesh {
        EventMesh { node }
    }
}

/// The producer group a proxy names in the metadata (as in HTTP).
fn producer_group<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(http::PRODUCER_GROUP_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .map(str::to_string)
}

/// An [`EventError`] of one event of the request, its field under `prefix`.
fn at(prefix: &str, mut e: EventError) -> ApiError {
    e.field = Some(match e.field {
        Some(f) => format!("{prefix}.{f}"),
        None => prefix.to_string(),
    });
    e.into()
}

/// The events of a request (and whether it is a batch: all or nothing).
fn events_of(events: Option<publish_request::Events>) -> Result<(Vec<Event>, bool), ApiError> {
    match events {
        None => Err(InvalidField {
            field: "events".into(),
            message: "set event (one CloudEvent) or batch (a CloudEventBatch)".into(),
        }
        .into()),
        Some(publish_request::Events::Event(e)) => Ok((
            vec![meshd_proto::convert::to_event(e).map_err(|e| at("event", e))?],
            false,
        )),
        Some(publish_request::Events::Batch(b)) => {
            if b.events.is_empty() || b.events.len() > MAX_BATCH_EVENTS {
                return Err(InvalidField {
                    field: "batch.events".into(),
                    message: format!(
                        "a batch holds 1 to {MAX_BATCH_EVENTS} events, this one has {}",
                        b.events.len()
                    ),
                }
                .into());
            }
            let events = b
                .events
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    meshd_proto::convert::to_event(e)
                        .map_err(|e| at(&format!("batch.events[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((events, true))
        }
    }
}

/// Most requests of a stream stored by one append.
const MAX_COALESCED: usize = 256;

/// The events of one request, checked and ready to append.
async fn prepare(
    node: &Arc<Node>,
    req: PublishRequest,
) -> Result<(String, u32, Vec<Event>), ApiError> {
    if req.topic.is_empty() {
        return Err(InvalidField {
            field: "topic".into(),
            message: "name the topic to publish to".into(),
        }
        .into());
    }
    http::refuse_if_draining(node)?;
    let partitions = node.partitions_for_publish(&req.topic).await?;
    let (events, batch) = events_of(req.events)?;
    let events = http::check_published(node, &req.topic, events, batch)?;
    Ok((req.topic, partitions, events))
}

type Stored = Result<Vec<meshd_core::api::Position>, ApiError>;

/// Accepted requests of one topic waiting for their common append.
struct Pending {
    topic: String,
    partitions: u32,
    events: Vec<Event>,
    /// (request index, number of events) in order.
    members: Vec<(usize, usize)>,
}

/// One atomic append for every request of `p`; each gets its own positions (or the
/// append's error: then none of them is stored).
async fn flush(node: &Node, p: Pending, results: &mut [Option<Stored>]) {
    match http::append_published(node, &p.topic, p.partitions, &p.events).await {
        Ok(positions) => {
            let mut rest = positions.into_iter();
            for (i, n) in p.members {
                results[i] = Some(Ok(rest.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            for (i, _) in p.members {
                results[i] = Some(Err(e.clone()));
            }
        }
    }
}

/// Publishes requests (one for `Publish`; those that arrived together on a
/// `PublishStream`): each is checked on its own, and a refused one gets its error;
/// consecutive accepted ones of one topic are stored by one atomic append, so the
/// stored order is the request order. One result per request, in order, each counted
/// in the node's metrics as an HTTP publish is.
async fn publish_run(
    node: &Arc<Node>,
    reqs: Vec<PublishRequest>,
    group: Option<&str>,
) -> Vec<Result<Vec<PbPosition>, ApiError>> {
    let started = Instant::now();
    let topics: Vec<String> = reqs.iter().map(|r| r.topic.clone()).collect();
    let mut results: Vec<Option<Stored>> = (0..reqs.len()).map(|_| None).collect();
    {
        let _permit = node.publish_permit().await;
        let mut pending: Option<Pending> = None;
        for (i, req) in reqs.into_iter().enumerate() {
            match prepare(node, req).await {
                Err(e) => results[i] = Some(Err(e)),
                Ok((topic, partitions, events)) => {
                    if let Some(p) = pending.take_if(|p| p.topic != topic) {
                        flush(node, p, &mut results).await;
                    }
                    let p = pending.get_or_insert_with(|| Pending {
                        topic,
                        partitions,
                        events: Vec::new(),
                        members: Vec::new(),
                    });
                    p.members.push((i, events.len()));
                    p.events.extend(events);
                }
            }
        }
        if let Some(p) = pending {
            flush(node, p, &mut results).await;
        }
    }
    results
        .into_iter()
        .zip(topics)
        .map(|(r, topic)| {
            let r = r
                .unwrap_or_else(|| unreachable!("every request is answered"))
                .map(|positions| meshd_core::api::PublishResponse { positions });
            http::count_publish(node, &topic, group, started, &r);
            r.map(|resp| {
                resp.positions
                    .into_iter()
                    .map(|p| PbPosition {
                        partition: p.partition,
                        offset: p.offset,
                    })
                    .collect()
            })
        })
        .collect()
}

fn ack_of(sequence: u64, result: Result<Vec<PbPosition>, ApiError>) -> PublishAck {
    match result {
        Ok(positions) => PublishAck {
            sequence,
            positions,
            error: None,
        },
        Err(e) => {
            let detail = &e.body().error;
            PublishAck {
                sequence,
                positions: Vec::new(),
                error: Some(PbError {
                    code: status_of(&e).code() as i32,
                    reason: detail.code.clone(),
                    field: detail.field.clone().unwrap_or_default(),
                    message: detail.message.clone(),
                }),
            }
        }
    }
}

/// A pulled event as the stream sends it: the CloudEvent, or a transform's raw output.
fn received(p: PulledEvent) -> ReceivedEvent {
    let payload = match meshd_proto::convert::from_structured_json(&p.event) {
        Some(e) => received_event::Payload::Event(e),
        None => {
            let content_type = p.event["contenttype"].as_str().unwrap_or("").to_string();
            let body = match &p.event["body"] {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            received_event::Payload::Raw(RawOutput { content_type, body })
        }
    };
    ReceivedEvent {
        ack_id: p.ack_id,
        delivery_attempt: p.delivery_attempt,
        payload: Some(payload),
    }
}

fn session_status(e: &SessionError) -> Status {
    status_of(&ApiError::from(InvalidField {
        field: e.field().into(),
        message: e.to_string(),
    }))
}

/// Serves one `Subscribe` stream after its first request was checked.
async fn subscribe_loop(
    node: Arc<Node>,
    mut session: Session,
    mut inbound: Streaming<SubscribeRequest>,
    first_acks: Vec<String>,
    tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
) {
    let mut pending_acks = Some(first_acks).filter(|a| !a.is_empty());
    loop {
        if let Some(ack_ids) = pending_acks.take() {
            let answer = match node
                .delivery
                .ack(session.subscription(), session.consumer(), ack_ids)
                .await
            {
                Ok(r) => Ok(SubscribeResponse {
                    events: Vec::new(),
                    acked: Some(AckResult {
                        acknowledged: r.acknowledged as u32,
                        unknown: r.unknown,
                    }),
                }),
                Err(e) => Err(status_of(&e.into())),
            };
            let failed = answer.is_err();
            if tx.send(answer).await.is_err() || failed {
                return;
            }
        }
        let want = session.want();
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => match session.on_request(req) {
                    Ok(acks) => pending_acks = Some(acks).filter(|a| !a.is_empty()),
                    Err(e) => {
                        let _ = tx.send(Err(session_status(&e))).await;
                        return;
                    }
                },
                // The client closed its side (or the stream broke): done. Leased events
                // not acknowledged are handed out again after their ack deadline.
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(fix_decode_status(status))).await;
                    return;
                }
            },
            // Cancel-safe: a pull takes its events from the lease table and returns them
            // in the same poll, so an interrupted pull has taken none.
            pulled = node.delivery.pull(session.subscription(), session.consumer(), want, SUBSCRIBE_PULL_WAIT), if want > 0 => {
                match pulled {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => {
                        session.handed_out(events.len());
                        let answer = SubscribeResponse {
                            events: events.into_iter().map(received).collect(),
                            acked: None,
                        };
                        if tx.send(Ok(answer)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status_of(&e.into()))).await;
                        return;
                    }
                }
            }
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl EventMeshApi for EventMesh {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let group = producer_group(&request);
        let req = request.into_inner();
        let span = tracing::debug_span!("grpc_publish", topic = %req.topic);
        let result = publish_run(&self.node, vec![req], group.as_deref())
            .instrument(span)
            .await
            .pop()
            .unwrap_or_else(|| unreachable!("one result per request"));
        let positions = result.map_err(|e| status_of(&e))?;
        Ok(Response::new(PublishResponse { positions }))
    }

    type PublishStreamStream = ReceiverStream<Result<PublishAck, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let group = producer_group(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let node = self.node.clone();
        tokio::spawn(
            async move {
                let mut sequence = 0u64;
                while let Some(first) = inbound.next().await {
                    // Whatever else has arrived already is stored with it (one append):
                    // many in flight cost one durable write, not one each.
                    let mut msgs = vec![first];
                    while msgs.len() < MAX_COALESCED {
                        match inbound.next().now_or_never() {
                            Some(Some(m)) => msgs.push(m),
                            _ => break,
                        }
                    }
                    let mut reqs = Vec::with_capacity(msgs.len());
                    let mut broken = None;
                    for m in msgs {
                        match m {
                            Ok(r) => reqs.push(r),
                            Err(status) => {
                                broken = Some(fix_decode_status(status));
                                break;
                            }
                        }
                    }
                    for result in publish_run(&node, reqs, group.as_deref()).await {
                        if tx.send(Ok(ack_of(sequence, result))).await.is_err() {
                            return;
                        }
                        sequence += 1;
                    }
                    if let Some(status) = broken {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
            .instrument(tracing::debug_span!("grpc_publish_stream")),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = match inbound.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return Err(session_status(&SessionError::NoSubscription)),
            Err(status) => return Err(fix_decode_status(status)),
        };
        let mut session = Session::start(&first).map_err(|e| session_status(&e))?;
        let node = self.node.clone();
        let check = async {
            meshd_core::api::check_name("consumer", session.consumer())?;
            node.check_served(session.subscription())?;
            // Not found, or not a pull subscription: refused before the stream starts.
            node.delivery
                .pull(
                    session.subscription(),
                    session.consumer(),
                    0,
                    Duration::ZERO,
                )
                .await?;
            Ok::<(), ApiError>(())
        };
        check.await.map_err(|e| status_of(&e))?;
        let first_acks = session.on_request(first).map_err(|e| session_status(&e))?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let span = tracing::debug_span!("grpc_subscribe", subscription = %session.subscription(), consumer = %session.consumer());
        tokio::spawn(subscribe_loop(node, session, inbound, first_acks, tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
