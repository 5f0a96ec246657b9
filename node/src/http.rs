//! The node's HTTP API (`/v1`), health and metrics endpoints.
//!
//! Handlers are thin: they read and bound the request, call [`crate::server::Node`], and
//! map every failure to the one JSON error body with the right status, in one place
//! ([`ApiError`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use cloudevents::AttributesReader;
use meshd_core::api::{
    AckRequest, DiscoveredQuery, ErrorBody, FilterTestRequest, InvalidField, PublishResponse,
    PullResponse, ReplayRequest, SchemaGetQuery, SchemaPutQuery, StartPosition, StartTime,
    SubscriptionSpec, TopicConfig,
};
use meshd_core::event::{self, EventError, Mode};
use serde::Deserialize;

use crate::console;
use crate::delivery::{DeliveryError, WebhookTargetError};
use crate::drill_reports::{DrillReportError, DrillReports};
use crate::ingest;
use crate::schemas::{Refusal, SchemaError};
use crate::server::{BrowseFrom, Node, NodeError};
use crate::store::StoreError;

/// An error answer: status plus the JSON error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl ApiError {
    /// Builds an error answer.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::new(code, message, None),
            retry_after: None,
        }
    }

    fn field(mut self, field: impl Into<String>) -> ApiError {
        self.body.error.field = Some(field.into());
        self
    }

    /// The HTTP status (other transports map it: [`crate::grpc`]).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error body (code, message, field).
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // A 413 or 408 is answered before the rest of the body is read, so the connection
        // cannot carry another request: say so, or a client reuses it and finds it closed.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE
            || self.status == StatusCode::REQUEST_TIMEOUT
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::new(e.code, e.message, e.field),
            retry_after: None,
        }
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.message).field(e.field)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::TopicNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "topic_not_found", e.to_string())
            }
            StoreError::TopicConflict { differences, .. } => {
                let a = ApiError::new(StatusCode::CONFLICT, "topic_conflict", e.to_string());
                // One differing setting is the field at fault.
                match differences.as_slice() {
                    [one] => a.field(one.setting),
                    _ => a,
                }
            }
            StoreError::Unavailable(_) => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                );
                a.retry_after = Some(1);
                a
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                e.to_string(),
            ),
        }
    }
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::NotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "subscription_not_found",
                e.to_string(),
            ),
            DeliveryError::NotPull { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "not_a_pull_subscription",
                e.to_string(),
            ),
            DeliveryError::TooManyConsumers { .. } => {
                ApiError::new(StatusCode::CONFLICT, "too_many_consumers", e.to_string())
            }
            DeliveryError::ReplayRefused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "replay_refused", e.to_string())
            }
            DeliveryError::Store(s) => s.into(),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Store(s) => s.into(),
            NodeError::Delivery(d) => d.into(),
            NodeError::Invalid(f) => f.into(),
            NodeError::SubscriptionNotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "subscription_not_found",
                e.to_string(),
            ),
            NodeError::SubscriptionConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "subscription_conflict", e.to_string())
            }
            NodeError::TopicInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "topic_in_use", e.to_string())
            }
            NodeError::TopicNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "topic_not_found", e.to_string())
                    .field("topic")
            }
            NodeError::CatalogUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_unavailable",
                e.to_string(),
            ),
            NodeError::WebhookTarget(t) => match t {
                WebhookTargetError::Denied { .. } => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "webhook_target_forbidden",
                    t.to_string(),
                ),
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_webhook_target",
                    t.to_string(),
                ),
            }
            .field("sink.webhook.url"),
            NodeError::OwnerUnreachable { .. } => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "owner_unreachable",
                    e.to_string(),
                );
                a.retry_after = Some(1);
                a
            }
            NodeError::ReplayNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "replay_not_found", e.to_string())
            }
            NodeError::ReplayExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "replay_exists", e.to_string()).field("name")
            }
            NodeError::ReplayEnded { .. } => {
                ApiError::new(StatusCode::CONFLICT, "replay_ended", e.to_string())
            }
            NodeError::NotPlacedHere { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "group_not_placed_here",
                e.to_string(),
            ),
        }
    }
}

impl From<crate::discovery::DiscoveryError> for ApiError {
    fn from(e: crate::discovery::DiscoveryError) -> Self {
        use crate::discovery::DiscoveryError;
        match e {
            DiscoveryError::Invalid(f) => f.into(),
            DiscoveryError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "discovered_not_found", e.to_string())
            }
        }
    }
}

impl From<SchemaError> for ApiError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Invalid(f) => f.into(),
            SchemaError::Store(s) => s.into(),
            SchemaError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "schema_not_found", e.to_string())
            }
            SchemaError::VersionNotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "schema_version_not_found",
                e.to_string(),
            )
            .field("version"),
            SchemaError::BadSchema { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_schema", e.to_string())
            }
            SchemaError::Incompatible { ref violation, .. } => {
                let path = violation.path.clone();
                let a = ApiError::new(StatusCode::CONFLICT, "schema_incompatible", e.to_string());
                if path.is_empty() {
                    a
                } else {
                    a.field(path)
                }
            }
            SchemaError::InUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "schema_in_use", e.to_string())
            }
            SchemaError::Limit(_) => {
                ApiError::new(StatusCode::CONFLICT, "schema_limit", e.to_string())
            }
            SchemaError::CatalogUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.code, r.message).field(r.field)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A query string of type `T`, or 400 `invalid_query` naming what is wrong with it.
fn query_of<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

/// `201 Created` with `body` when `created`, else `200 OK` (an idempotent repeat).
fn created_or_ok(created: bool, body: &impl serde::Serialize) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Header a proxy sets on a publish naming its producer group; the node reports the
/// groups it has seen to the registry.
pub const PRODUCER_GROUP_HEADER: &str = "meshd-producer-group";

/// Every route of a node: its path and handlers. `/openapi.json` documents each one with
/// each of its methods (`node/tests/openapi.rs` compares them both ways).
fn routes() -> Vec<(&'static str, MethodRouter<Arc<Node>>)> {
    vec![
        ("/", get(console::root)),
        ("/ui", get(console::ui_no_slash)),
        ("/ui/", get(console::index)),
        ("/ui/console.js", get(console::script)),
        ("/ui/console.css", get(console::style)),
        ("/openapi.json", get(console::openapi)),
        ("/v1/topics", get(list_topics)),
        (
            "/v1/topics/{topic}",
            get(get_topic).put(put_topic).delete(delete_topic),
        ),
        ("/v1/topics/{topic}/events", post(publish).get(browse)),
        (
            "/v1/subscriptions",
            get(list_subscriptions).post(create_subscription),
        ),
        (
            "/v1/subscriptions/{name}",
            get(get_subscription).delete(delete_subscription),
        ),
        ("/v1/subscriptions/{name}/events", get(pull)),
        ("/v1/subscriptions/{name}/ack", post(ack)),
        ("/v1/subscriptions/{name}/status", get(subscription_status)),
        ("/v1/subscriptions/{name}/seek", post(seek)),
        ("/v1/replays", post(start_replay).get(list_replays)),
        ("/v1/replays/{name}", get(replay_status)),
        ("/v1/replays/{name}/cancel", post(cancel_replay)),
        ("/v1/filters/test", post(filter_test)),
        ("/v1/trace", get(trace)),
        ("/v1/schemas", get(list_schemas)),
        ("/v1/topics/{topic}/discovered", get(discovered)),
        (
            "/v1/schemas/{name}",
            get(get_schema).put(put_schema).delete(delete_schema),
        ),
        ("/v1/cluster", get(cluster_status)),
        ("/v1/cluster/promise", post(cluster_promise)),
        ("/v1/mesh", get(mesh_status)),
        ("/v1/mesh/links/{peer}/{action}", post(mesh_link_admin)),
        ("/v1/mesh/failover", post(mesh_failover)),
        ("/v1/admin/drain", post(drain)),
        ("/v1/admin/undrain", post(undrain)),
        (
            "/v1/drills/reports",
            get(list_drill_reports).post(store_drill_report),
        ),
        ("/metrics", get(metrics)),
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
    ]
}

/// The paths of every route of a node, as the router has them (`{param}` for a path
/// parameter).
pub fn route_paths() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// Builds the router of a node.
pub fn router(node: Arc<Node>) -> Router {
    let mut router = Router::new();
    for (path, handlers) in routes() {
        router = router.route(path, handlers);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_internal_token,
        ))
        .with_state(node)
}

/// With an internal token configured, `/v1` requests without it get 401 (health, readiness
/// and metrics stay open).
async fn require_internal_token(
    State(node): State<Arc<Node>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &node.config.internal_token {
        if req.uri().path().starts_with("/v1/") || req.uri().path() == "/v1" {
            let h = req.headers();
            let admitted = token.admits(
                h.get(meshd_core::internal::HEADER).map(|v| v.as_bytes()),
                h.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            );
            if !admitted {
                node.metrics.unauthenticated.inc();
                tracing::info!(method = %req.method(), path = %req.uri().path(), "refused: no internal token");
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "internal_token_required",
                    "this node takes requests from its cluster's proxies (or with the cluster's internal token); send them through a proxy",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see docs/api.md",
    )
}

/// Reads a body of at most `limit` bytes within the node's body read timeout: over the
/// limit answers 413 without reading the rest, too slow answers 408.
async fn read_body(node: &Node, headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    meshd_listener::read_body(headers, body, limit, node.config.listener.body_read_timeout)
        .await
        .map_err(|e| match e {
            meshd_listener::BodyError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                e.to_string(),
            ),
            meshd_listener::BodyError::Timeout { .. } => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                e.to_string(),
            ),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string()),
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", inner.to_string());
        if path == "." || path.is_empty() {
            err
        } else {
            err.field(path)
        }
    })
}

/// A JSON request body of at most `limit` bytes, parsed as `T` (415 without a JSON
/// content type, 413 past the limit, 400 naming the field that does not parse).
async fn json_body<T: serde::de::DeserializeOwned>(
    node: &Node,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<T> {
    require_json(headers)?;
    let bytes = read_body(node, headers, body, limit).await?;
    parse_json(&bytes)
}

fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(()),
        Some(ct) if event::media_type(ct) == "application/json" => Ok(()),
        Some(ct) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("this endpoint takes application/json, not {ct:?}"),
        )),
    }
}

async fn publish(
    State(node): State<Arc<Node>>,
    Path(topic): Path<String>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let group = req
        .headers()
        .get(PRODUCER_GROUP_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .map(str::to_string);
    let result = publish_inner(&node, &topic, req).await;
    count_publish(&node, &topic, group.as_deref(), started, &result);
    match result {
        Ok(resp) => (StatusCode::OK, Json(resp)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Counts a publish (HTTP or gRPC) in the node's metrics, its producer group and the log.
pub(crate) fn count_publish(
    node: &Node,
    topic: &str,
    group: Option<&str>,
    started: Instant,
    result: &ApiResult<PublishResponse>,
) {
    match result {
        Ok(resp) => {
            let n = resp.positions.len() as u64;
            node.note_publish(group, n);
            node.metrics.published.with_label_values(&[topic]).inc_by(n);
            node.metrics.stored.with_label_values(&[topic]).inc_by(n);
            node.metrics
                .publish_latency
                .with_label_values(&[topic])
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => {
            node.metrics
                .publish_rejected
                .with_label_values(&[&e.body.error.code])
                .inc();
            tracing::debug!(topic = %topic, code = %e.body.error.code, "publish refused: {}", e.body.error.message);
        }
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(topic = %topic))]
async fn publish_inner(node: &Arc<Node>, topic: &str, req: Request) -> ApiResult<PublishResponse> {
    let _permit = node.publish_permit().await;
    refuse_if_draining(node)?;
    let (parts, body) = req.into_parts();
    let mode = mode_of(&parts.headers)?;
    let partitions = node.partitions_for_publish(topic).await?;
    let bytes = read_body(node, &parts.headers, body, node.config.max_body_bytes).await?;
    let events = match mode {
        Mode::Binary => {
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()));
            vec![event::parse_binary(headers, ct, &bytes)?]
        }
        Mode::Structured => vec![event::parse_structured(&bytes)?],
        Mode::Batch => event::parse_batch(&bytes)?,
    };
    store_published(node, topic, partitions, events, matches!(mode, Mode::Batch)).await
}

/// 503 `draining` while the node drains (checked under the publish permit).
pub(crate) fn refuse_if_draining(node: &Node) -> ApiResult<()> {
    if node.is_draining() {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is draining and takes no publishes; publish to another node (a proxy retries the next one)",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    Ok(())
}

/// The part of a publish after parsing, shared by HTTP and gRPC: [`check_published`],
/// then [`append_published`]. The caller holds the publish permit.
pub(crate) async fn store_published(
    node: &Arc<Node>,
    topic: &str,
    partitions: u32,
    events: Vec<meshd_core::Event>,
    batch: bool,
) -> ApiResult<PublishResponse> {
    let events = check_published(node, topic, events, batch)?;
    let positions = append_published(node, topic, partitions, &events).await?;
    Ok(PublishResponse { positions })
}

/// Mesh extensions stripped, schemas checked (a refused `batch` is refused whole).
pub(crate) fn check_published(
    node: &Node,
    topic: &str,
    events: Vec<meshd_core::Event>,
    batch: bool,
) -> ApiResult<Vec<meshd_core::Event>> {
    let mut events: Vec<_> = events
        .into_iter()
        .map(event::strip_mesh_extensions)
        .collect();
    if let Some(bindings) = node.validated_bindings(topic) {
        node.schemas.check_events(&bindings, &mut events, batch)?;
    }
    Ok(events)
}

/// One durable, atomic append of checked events, traced; their positions in order.
pub(crate) async fn append_published(
    node: &Node,
    topic: &str,
    partitions: u32,
    events: &[meshd_core::Event],
) -> ApiResult<Vec<meshd_core::api::Position>> {
    let positions = ingest::append_events(&*node.store, topic, partitions, events).await?;
    if node.discovers(topic) {
        node.discovery.offer(topic, events);
    }
    let traced = node.trace.enabled().then(|| node.trace.intern(topic));
    for (e, p) in events.iter().zip(&positions) {
        if let Some(topic) = &traced {
            node.trace.record(
                e.source().as_str(),
                e.id(),
                crate::trace::Step::Stored {
                    topic: topic.clone(),
                    partition: p.partition,
                    offset: p.offset,
                },
            );
        }
        let traceparent = meshd_core::event::attribute_string(e, "traceparent");
        tracing::trace!(event_id = %e.id(), traceparent = traceparent.as_deref(), partition = p.partition, offset = p.offset, "stored");
    }
    Ok(positions)
}

async fn put_topic(
    State(node): State<Arc<Node>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require_json(&headers)?;
    let bytes = read_body(&node, &headers, body, 64 * 1024).await?;
    let config: TopicConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
        TopicConfig::default()
    } else {
        parse_json(&bytes)?
    };
    // No schema the topic binds is deleted until it exists.
    let schemas = node.schemas.lock_changes().await;
    node.schemas.check_bindings(&config.schemas)?;
    let created = node.admin_create_topic(&topic, config).await?;
    drop(schemas);
    let info = node.topic_info(&topic).await?;
    Ok(created_or_ok(created, &info))
}

async fn get_topic(
    State(node): State<Arc<Node>>,
    Path(topic): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(node.topic_info(&topic).await?).into_response())
}

async fn list_topics(State(node): State<Arc<Node>>) -> ApiResult<Response> {
    Ok(Json(meshd_core::api::TopicList {
        topics: node.list_topics().await?,
    })
    .into_response())
}

async fn delete_topic(
    State(node): State<Arc<Node>>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    node.admin_delete_topic(&topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_subscription(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let spec: SubscriptionSpec = json_body(&node, &headers, body, 256 * 1024).await?;
    let (created, spec) = node.admin_create_subscription(spec).await?;
    Ok(created_or_ok(created, &spec))
}

async fn list_subscriptions(State(node): State<Arc<Node>>) -> ApiResult<Response> {
    Ok(Json(meshd_core::api::SubscriptionList {
        subscriptions: node.list_subscriptions(),
    })
    .into_response())
}

async fn get_subscription(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(node.subscription(&name)?).into_response())
}

async fn delete_subscription(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    node.admin_delete_subscription(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Header a node sets when it asks another node of its cluster (the node delivering a
/// subscription for its status, every node for its trace records): the node asked
/// answers with its own numbers and never forwards again.
pub const FORWARDED_HEADER: &str = "meshd-forwarded-by";

/// How long a node waits for the node delivering a subscription to answer its status.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /v1/subscriptions/{name}/status`: the numbers of the node delivering it. A node
/// whose cluster places the subscription's group on another node asks that node.
async fn subscription_status(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // Unknown here is unknown in the cluster (every node applies the catalog).
    node.subscription(&name)?;
    if !headers.contains_key(FORWARDED_HEADER) {
        if let Some(owner) = node.group_owner(&name).await {
            let status = forward_status(&node, &owner, &name).await?;
            return Ok(Json(status).into_response());
        }
    }
    Ok(Json(crate::status::subscription_status(&node, &name).await?).into_response())
}

/// Asks `owner` for the status of `name` (with the cluster's internal token).
async fn forward_status(
    node: &Node,
    owner: &crate::server::GroupOwner,
    name: &str,
) -> Result<meshd_core::api::SubscriptionStatus, NodeError> {
    let unreachable = |error: String| NodeError::OwnerUnreachable {
        name: name.to_string(),
        node: owner.node.clone(),
        error,
    };
    let url = format!(
        "{}/v1/subscriptions/{name}/status",
        owner.url.trim_end_matches('/')
    );
    let resp = node
        .peer_request(reqwest::Method::GET, &url, FORWARD_TIMEOUT)
        .map_err(|e| unreachable(e.to_string()))?
        .send()
        .await
        .map_err(|e| unreachable(meshd_core::api::error_chain(&e)))?;
    match resp.status().as_u16() {
        200 => resp
            .json()
            .await
            .map_err(|e| unreachable(meshd_core::api::error_chain(&e))),
        404 => Err(NodeError::SubscriptionNotFound {
            name: name.to_string(),
        }),
        s => Err(unreachable(format!("it answered {s}"))),
    }
}

/// Query of a pull.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullQuery {
    /// Most events to return (1..=1000, default 100).
    max: Option<usize>,
    /// Longest wait when no event is ready: a duration of at most 60s (`5s`, `1.5s`,
    /// `500ms`; `meshd_core::duration`), default 0.
    wait: Option<String>,
    /// The member pulling (default "default").
    consumer: Option<String>,
}

/// Longest `wait` of a pull.
const MAX_PULL_WAIT: Duration = Duration::from_secs(60);

async fn pull(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    let max = q.max.unwrap_or(100);
    if max == 0 || max > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "max must be from 1 to 1000",
        )
        .field("max"));
    }
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => meshd_core::duration::parse_at_most(w, MAX_PULL_WAIT).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("wait: {e}"),
            )
            .field("wait")
        })?,
    };
    let consumer = q.consumer.unwrap_or_else(|| "default".to_string());
    meshd_core::api::check_name("consumer", &consumer)?;
    node.check_served(&name)?;
    let events = node.delivery.pull(&name, &consumer, max, wait).await?;
    Ok(Json(PullResponse { events }).into_response())
}

async fn ack(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: AckRequest = json_body(&node, &headers, body, 1024 * 1024).await?;
    let consumer = req.consumer.unwrap_or_else(|| "default".to_string());
    node.check_served(&name)?;
    let resp = node.delivery.ack(&name, &consumer, req.ack_ids).await?;
    Ok(Json(resp).into_response())
}

/// `POST /v1/subscriptions/{name}/seek`: the body is a start position (`{"time": ...}`,
/// `{"offsets": {...}}`, `"earliest"` or `"latest"`).
async fn seek(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let start: StartPosition = json_body(&node, &headers, body, 64 * 1024).await?;
    Ok(Json(node.seek_subscription(&name, start).await?).into_response())
}

/// `POST /v1/replays`: starts a replay on the node delivering the target subscription (a
/// node whose cluster places the subscription's group elsewhere forwards it there).
async fn start_replay(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: ReplayRequest = json_body(&node, &headers, body, 256 * 1024).await?;
    if !headers.contains_key(FORWARDED_HEADER) {
        // Checked here first: an unknown subscription is unknown in the cluster.
        node.subscription(&req.subscription)?;
        if let Some(owner) = node.group_owner(&req.subscription).await {
            let (status, body) = forward(
                &node,
                &owner,
                reqwest::Method::POST,
                "/v1/replays",
                Some(&req),
            )
            .await?;
            return Ok((status, body).into_response());
        }
    }
    let status = node.start_replay(req).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

/// Query of the replay reads: `subscription` names the target, so a node of a cluster
/// asks the node delivering it (where the replay runs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    subscription: Option<String>,
}

/// The node to forward a replay call to: the one delivering `subscription`, when that is
/// another node.
async fn replay_owner(
    node: &Node,
    headers: &HeaderMap,
    subscription: Option<&str>,
) -> Option<crate::server::GroupOwner> {
    if headers.contains_key(FORWARDED_HEADER) {
        return None;
    }
    node.group_owner(subscription?).await
}

async fn list_replays(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    if let Some(owner) = replay_owner(&node, &headers, q.subscription.as_deref()).await {
        let path = format!(
            "/v1/replays?subscription={}",
            q.subscription.unwrap_or_default()
        );
        let (status, body) =
            forward::<()>(&node, &owner, reqwest::Method::GET, &path, None).await?;
        return Ok((status, body).into_response());
    }
    let mut list = node.list_replays();
    if let Some(s) = &q.subscription {
        list.replays.retain(|r| &r.subscription == s);
    }
    Ok(Json(list).into_response())
}

async fn replay_status(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    if let Ok(s) = node.replay_status(&name) {
        return Ok(Json(s).into_response());
    }
    if let Some(owner) = replay_owner(&node, &headers, q.subscription.as_deref()).await {
        let (status, body) = forward::<()>(
            &node,
            &owner,
            reqwest::Method::GET,
            &format!("/v1/replays/{name}"),
            None,
        )
        .await?;
        return Ok((status, body).into_response());
    }
    Ok(Json(node.replay_status(&name)?).into_response())
}

async fn cancel_replay(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    if node.replay_status(&name).is_err() {
        if let Some(owner) = replay_owner(&node, &headers, q.subscription.as_deref()).await {
            let (status, body) = forward::<()>(
                &node,
                &owner,
                reqwest::Method::POST,
                &format!("/v1/replays/{name}/cancel"),
                None,
            )
            .await?;
            return Ok((status, body).into_response());
        }
    }
    Ok(Json(node.cancel_replay(&name).await?).into_response())
}

/// Sends a request to `owner` (with the cluster's internal token and
/// [`FORWARDED_HEADER`], so it answers itself) and hands its answer back as it is.
async fn forward<B: serde::Serialize>(
    node: &Node,
    owner: &crate::server::GroupOwner,
    method: reqwest::Method,
    path: &str,
    body: Option<&B>,
) -> Result<(StatusCode, Response), NodeError> {
    let unreachable = |error: String| NodeError::OwnerUnreachable {
        name: path.to_string(),
        node: owner.node.clone(),
        error,
    };
    let url = format!("{}{path}", owner.url.trim_end_matches('/'));
    let mut req = node
        .peer_request(method, &url, FORWARD_TIMEOUT)
        .map_err(|e| unreachable(e.to_string()))?;
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| unreachable(meshd_core::api::error_chain(&e)))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| unreachable(meshd_core::api::error_chain(&e)))?;
    let mut out = Response::new(Body::from(bytes));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok((status, out))
}

/// Query of `GET /v1/topics/{topic}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrowseQuery {
    /// The partition (may be left out when the topic has one).
    partition: Option<u32>,
    /// The first offset wanted.
    from: Option<u64>,
    /// The first store time wanted (RFC 3339).
    from_time: Option<String>,
    /// Most events (1 to `MAX_BROWSE_LIMIT`, default 100).
    limit: Option<usize>,
}

async fn browse(
    State(node): State<Arc<Node>>,
    Path(topic): Path<String>,
    query: Result<Query<BrowseQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    let from = match (q.from, q.from_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "give from (an offset) or from_time (a time), not both",
            )
            .field("from_time"))
        }
        (Some(o), None) => BrowseFrom::Offset(o),
        (None, Some(t)) => BrowseFrom::Time(
            StartTime::parse(&t)
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string())
                        .field("from_time")
                })?
                .ms(),
        ),
        (None, None) => BrowseFrom::Start,
    };
    let limit = q.limit.unwrap_or(100);
    let answer = node
        .browse_topic(&topic, q.partition, from, limit)
        .await
        .map_err(|e| match e {
            NodeError::Invalid(f) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", f.message).field(f.field)
            }
            other => other.into(),
        })?;
    Ok(Json(answer).into_response())
}

/// Query of `GET /v1/trace` (all as text, so each bad value gets its own message).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceQuery {
    /// The event's `source`.
    source: Option<String>,
    /// The event's `id`.
    id: Option<String>,
    /// Time allowed to the other nodes and clusters, ms (default 2000, at most 30000).
    timeout_ms: Option<String>,
}

/// `GET /v1/trace?source=S&id=ID[&timeout_ms=N]`: an event's life across the mesh.
async fn trace(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    query: Result<Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    let required = |v: Option<String>, name: &str| match v {
        Some(v) if !v.is_empty() && v.len() <= 4096 => Ok(v),
        Some(v) if !v.is_empty() => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("{name} is {} bytes long; at most 4096", v.len()),
        )
        .field(name.to_string())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("{name} is required: GET /v1/trace?source=SOURCE&id=ID"),
        )
        .field(name.to_string())),
    };
    let source = required(q.source, "source")?;
    let id = required(q.id, "id")?;
    let max = crate::server::MAX_TRACE_TIMEOUT;
    let timeout = match q.timeout_ms.as_deref() {
        None => crate::server::DEFAULT_TRACE_TIMEOUT,
        Some(t) => match t.parse::<u64>() {
            Ok(ms) if ms >= 1 && u128::from(ms) <= max.as_millis() => Duration::from_millis(ms),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "timeout_ms must be a whole number of milliseconds from 1 to {}, not {t:?}",
                        max.as_millis()
                    ),
                )
                .field("timeout_ms"))
            }
        },
    };
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    Ok(Json(node.trace(&source, &id, forwarded, timeout).await).into_response())
}

async fn filter_test(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: FilterTestRequest = json_body(&node, &headers, body, 1024 * 1024).await?;
    let filter = req.filter_spec()?;
    let raw = serde_json::to_vec(&req.event).expect("a JSON value serializes");
    let event = event::parse_structured(&raw).map_err(|e| {
        let field = match &e.field {
            Some(f) => format!("event.{f}"),
            None => "event".to_string(),
        };
        ApiError::from(e).field(field)
    })?;
    let result = meshd_core::tryout::test_filter(filter.as_ref(), req.transform.as_ref(), &event)
        .map_err(|e| {
        let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string());
        match e.field() {
            Some(f) => err.field(f),
            None => err,
        }
    })?;
    Ok(Json(result).into_response())
}

/// `PUT /v1/schemas/{name}?compatibility=`: the body is the JSON Schema document; 201 with
/// the new version, 200 when the latest version is this document already.
async fn put_schema(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    query: Result<Query<SchemaPutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    require_json(&headers)?;
    let bytes = read_body(&node, &headers, body, crate::schemas::MAX_SCHEMA_BYTES).await?;
    let doc: serde_json::Value = parse_json(&bytes)?;
    let (created, info) = node
        .schemas
        .put(
            &*node.store,
            node.catalog_sink(),
            &name,
            doc,
            q.compatibility,
        )
        .await?;
    Ok(created_or_ok(created, &info))
}

/// `GET /v1/schemas/{name}?version=`: the latest version, or the one asked.
async fn get_schema(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    query: Result<Query<SchemaGetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    Ok(Json(node.schemas.get(&name, q.version)?).into_response())
}

/// `GET /v1/topics/{topic}/discovered[?source=&type=]`: the schemas discovery inferred.
async fn discovered(
    State(node): State<Arc<Node>>,
    Path(topic): Path<String>,
    query: Result<Query<DiscoveredQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_of(query)?;
    let info = node.topic_info(&topic).await?;
    if !info.config.discover {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "discovery_off",
            format!("topic {topic:?} does not discover schemas; discovery is set when a topic is created (\"discover\": true)"),
        ));
    }
    let list = node
        .discovery
        .list(&topic, q.source.as_deref(), q.ty.as_deref())?;
    Ok(Json(list).into_response())
}

async fn list_schemas(State(node): State<Arc<Node>>) -> Response {
    Json(node.schemas.list()).into_response()
}

/// `DELETE /v1/schemas/{name}`: every version; 409 while a topic binds it.
async fn delete_schema(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    node.schemas
        .delete(&*node.store, node.catalog_sink(), &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cluster_status(State(node): State<Arc<Node>>) -> Response {
    Json(node.status()).into_response()
}

/// A peer node asks whether this node reaches the registry (docs/scheduler.md, "Registry
/// outages"); the answer may carry a promise.
async fn cluster_promise(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let req: meshd_core::api::PromiseRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body is not a promise request ({{\"from\": NODE}}): {e}"),
        )
    })?;
    match node.promise(&req.from) {
        Some(answer) => Ok(Json(answer).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_cluster_member",
            "this node is not a member of a cluster (start it with --registry)",
        )),
    }
}

async fn mesh_status(State(node): State<Arc<Node>>) -> ApiResult<Response> {
    match node.mesh_status() {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_mesh",
            "this node runs no federation bridge (start it with --topology and --certs-dir)",
        )),
    }
}

/// `POST /v1/mesh/links/{peer}/pause|resume`: stop or restart sending replication
/// batches to one peer (drills; the link stays connected, cursors stay durable).
async fn mesh_link_admin(
    State(node): State<Arc<Node>>,
    Path((peer, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    let pause = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "link actions are pause and resume",
            ))
        }
    };
    match node.mesh_link_admin(&peer, pause) {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_mesh",
            "this node runs no federation bridge (start it with --topology and --certs-dir)",
        )),
        Some(Err(e)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_link", e.to_string()).field("peer"))
        }
        Some(Ok(changed)) => Ok(Json(meshd_core::api::LinkAdminAnswer {
            peer,
            paused: pause,
            changed,
        })
        .into_response()),
    }
}

/// `POST /v1/mesh/failover`: this cluster takes a subscription over from the cluster
/// delivering it (a standby when its home is lost, or the home taking it back).
async fn mesh_failover(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let req: meshd_core::api::FailoverRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body is not a failover request ({{\"subscription\": NAME, \"home\": CLUSTER}}): {e}"),
        )
    })?;
    match node.mesh_failover(req).await {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_mesh",
            "this node runs no federation bridge (start it with --topology and --certs-dir)",
        )),
        Some(Err(e)) => {
            let status = match e.code {
                "unknown_subscription" => StatusCode::NOT_FOUND,
                "already_active" | "subscription_conflict" | "not_caught_up" => {
                    StatusCode::CONFLICT
                }
                "not_standby" | "deleted" => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err(ApiError::new(status, e.code, e.message))
        }
        Some(Ok(answer)) => Ok(Json(answer).into_response()),
    }
}

/// `POST /v1/admin/drain`: stop taking publishes and hand the node's groups over (a
/// node in a cluster delivers its backlog, stops delivery and leaves the registry). Like
/// the node's other admin endpoints it is not authenticated here: nodes sit behind the
/// proxies, which hold the tokens. Answers the drain state at once; `GET /v1/cluster`
/// shows when it is `drained`.
async fn drain(State(node): State<Arc<Node>>) -> Response {
    let state = node.set_draining(true);
    tracing::info!(node = %node.config.node_id, ?state, "drain asked");
    Json(meshd_core::api::NodeDrainAnswer {
        node: node.config.node_id.clone(),
        drain: state,
    })
    .into_response()
}

/// `POST /v1/admin/undrain`: take publishes again and rejoin the cluster.
async fn undrain(State(node): State<Arc<Node>>) -> Response {
    let state = node.set_draining(false);
    tracing::info!(node = %node.config.node_id, ?state, "undrain asked");
    Json(meshd_core::api::NodeDrainAnswer {
        node: node.config.node_id.clone(),
        drain: state,
    })
    .into_response()
}

impl From<DrillReportError> for ApiError {
    fn from(e: DrillReportError) -> Self {
        match &e {
            DrillReportError::Invalid { field, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string()).field(*field)
            }
            DrillReportError::Io { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "drill_reports_unavailable",
                e.to_string(),
            ),
        }
    }
}

/// `POST /v1/drills/reports`: keep a drill's report (`meshd drill` posts it to the nodes
/// it drilled); the node keeps the last 20 in its data dir.
async fn store_drill_report(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let report: meshd_core::api::DrillReport =
        json_body(&node, &headers, body, 1024 * 1024).await?;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let store = DrillReports::new(&node.config.data_dir);
    let stored = tokio::task::spawn_blocking(move || store.store(at_ms, report))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "drill_reports_unavailable",
                e.to_string(),
            )
        })??;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// `GET /v1/drills/reports`: the last drill reports, newest first.
async fn list_drill_reports(State(node): State<Arc<Node>>) -> ApiResult<Response> {
    let store = DrillReports::new(&node.config.data_dir);
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "drill_reports_unavailable",
                e.to_string(),
            )
        })??;
    Ok(Json(list).into_response())
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut text = node.metrics.render();
    text.push_str(&crate::metrics::render_subscriptions(
        &crate::status::delivered_here(&node).await,
    ));
    text.push_str(&node.trace.render_metrics());
    if let Some(mesh) = node.mesh_metrics() {
        text.push_str(&mesh);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn healthz() -> Response {
    Json(meshd_core::api::Health::plain("ok")).into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() && node.is_serving_on_promises() {
        Json(meshd_core::api::Health {
            status: "ready".into(),
            degraded: Some(meshd_core::api::Degraded {
                code: "registry_unreachable".into(),
                message: "the node cannot reach the cluster's registry (etcd); it keeps \
                    delivering its consumer groups on its peers' promises that none of them \
                    starts a group meanwhile (docs/scheduler.md, \"Registry outages\")"
                    .into(),
            }),
        })
        .into_response()
    } else if node.is_ready() {
        Json(meshd_core::api::Health::plain("ready")).into_response()
    } else if node.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new(
                "draining",
                "the node is drained (POST /v1/admin/undrain brings it back)",
                None,
            )),
        )
            .into_response()
    } else if node.is_lease_lost() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new(
                "registry_lease_lost",
                "the node cannot reach the cluster's registry (etcd) and its lease is lost: \
                 it delivers no consumer group until it registers again",
                None,
            )),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new(
                "not_ready",
                "the node is starting or stopping",
                None,
            )),
        )
            .into_response()
    }
}

fn mode_of(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    event::detect_mode(ct, headers.contains_key("ce-specversion")).map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    })
}
