//! The proxy's HTTP server: accept loop with connection-level limits, request
//! classification, auth and rate-limit checks, body reading under a deadline, and
//! forwarding with failover.
//!
//! Failover rule: a request moves to the next candidate node only when it certainly did not
//! reach the node (connect error) or the node answered 503. Other failures after the
//! request was sent (reset, timeout mid-request) are retried only for GET/PUT/DELETE; a
//! POST (publish, ack, subscription create) answers 503 `upstream_outcome_unknown`, since
//! the node may have stored it. A client retrying then may create a duplicate, which
//! at-least-once allows; an acknowledged event is never lost. When every node reached
//! answered 503, the last node's answer is passed through as is (its own code and reason,
//! e.g. `catalog_unavailable`); `upstream_unavailable` means no node could be reached.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use meshd_core::api::ErrorBody;

use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::auth::{self, Action, Authn, Scope, TokenRecord, TokenStore};
use crate::body::{Fault, InBody, SendBody};
use crate::layers::Conn;
use crate::limits::{Limited, Limits, TokenRefusal};
use crate::metrics::Metrics;
use crate::region_tokens::Tokens;
use crate::routing::{Routing, Upstream};
use crate::{ProxyConfig, ProxyError};

/// Header naming the producer group of a publish (else the CloudEvents `source`).
pub const PRODUCER_GROUP_HEADER: &str = "meshd-producer-group";
/// Header lowering the request's deadline, in milliseconds.
pub const TIMEOUT_HEADER: &str = "meshd-timeout-ms";
/// The header the cluster's internal token travels in to the nodes.
const INTERNAL_HEADER: HeaderName = HeaderName::from_static(meshd_core::internal::HEADER);

/// Response header naming the node that answered.
pub const NODE_HEADER: &str = "meshd-node";

/// A running proxy's shared state; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProxyConfig,
    routing: Arc<Routing>,
    tokens: Option<Tokens>,
    limits: Limits,
    metrics: Metrics,
    /// Pooled keep-alive HTTP/1.1 connections to the nodes.
    client: Client<HttpConnector, InBody>,
    /// The cluster's internal token, sent to the nodes.
    internal: Option<HeaderValue>,
    /// Subscription name → (topic, when learned).
    sub_topics: Mutex<HashMap<String, (String, Instant)>>,
    /// Drained: not ready, every API request answers 503 `draining`.
    draining: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("cluster", &self.inner.config.cluster)
            .field("proxy_id", &self.inner.config.proxy_id)
            .finish_non_exhaustive()
    }
}

/// What a request asks for (from its method and path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Health,
    Ready,
    Metrics,
    TokensList,
    TokensCreate,
    TokensRevoke(String),
    Publish(String),
    TopicList,
    TopicWrite(String),
    TopicRead(String),
    /// `GET /v1/topics/{topic}/events`: browse stored events (the subscribe scope).
    TopicBrowse(String),
    SubCreate,
    SubList,
    SubOne(String),
    SubPull(String),
    /// `POST /v1/subscriptions/{name}/seek`: to the node delivering it, like a pull.
    SubSeek(String),
    /// `POST /v1/replays`: to the node delivering the body's `subscription`.
    ReplayStart,
    /// `GET /v1/replays`, `GET /v1/replays/{name}`, `POST /v1/replays/{name}/cancel`: to
    /// the node delivering `?subscription=S` when given (the subscribe scope on its
    /// topic), else to any node (the admin scope).
    Replay,
    Cluster,
    /// `GET /v1/mesh` (`false`), `POST /v1/mesh/links/{peer}/{action}` and
    /// `POST /v1/mesh/failover` (`true`): to the node running the bridge.
    Mesh(bool),
    /// `GET /v1/trace`: an event's trace (any node asks the rest; an admin scope, like
    /// listing topics and subscriptions: the answer may name any topic).
    Trace,
    /// `POST /v1/admin/drain` (`true`) or `/v1/admin/undrain` (`false`).
    Drain(bool),
    /// `PUT` or `DELETE /v1/schemas/{name}`: to every node, like a topic write.
    SchemaWrite,
    /// `GET /v1/schemas[/{name}]`: to any node.
    SchemaRead,
    /// The console and the API's description (`/`, `/ui`, `/ui/...`, `/openapi.json`):
    /// static documents any node serves, to any node, no token needed.
    Console,
    /// `GET /v1/drills/reports`: the last drill reports, from any node (the admin scope).
    DrillReports,
    /// `POST /v1/filters/test`: the pattern sandbox, any node (any valid token).
    FilterTest,
}

/// An answer that is not forwarded: an error (the error of every layer,
/// [`crate::layers`]).
#[derive(Debug)]
pub struct Reject {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
    retry_after: Option<Duration>,
}

impl Reject {
    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code of the answer's body.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Reject {
        Reject {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    fn field(mut self, field: &'static str) -> Reject {
        self.field = Some(field);
        self
    }

    pub(crate) fn retry_after(mut self, d: Duration) -> Reject {
        self.retry_after = Some(d);
        self
    }

    fn into_response(self) -> Response<Body> {
        let body = ErrorBody::new(self.code, self.message, self.field.map(str::to_string));
        let body = serde_json::to_string(&body).expect("an error body serializes");
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if unread_body_status(self.status) {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// Statuses answered before the request body was read to its end (too large, or too
/// slow). The rest of that body is still on the connection, so the connection cannot carry
/// another request: the answer says `Connection: close`, and a client does not put the
/// connection back in its pool only to find it closed on the next request.
fn unread_body_status(status: StatusCode) -> bool {
    status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT
}

pub(crate) fn unavailable(message: impl Into<String>) -> Reject {
    Reject::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unavailable",
        message,
    )
    .retry_after(Duration::from_secs(1))
}

pub(crate) fn classify(method: &Method, path: &str) -> Result<Op, Reject> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = method.clone();
    let not_allowed = || {
        Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{m} is not allowed on {path}"),
        )
    };
    let op = match segs.as_slice() {
        ["healthz"] => (method == Method::GET).then_some(Op::Health),
        [""] | ["ui", ..] | ["openapi.json"] => (method == Method::GET).then_some(Op::Console),
        ["v1", "drills", "reports"] => (method == Method::GET).then_some(Op::DrillReports),
        ["v1", "filters", "test"] => (method == Method::POST).then_some(Op::FilterTest),
        ["readyz"] => (method == Method::GET).then_some(Op::Ready),
        ["metrics"] => (method == Method::GET).then_some(Op::Metrics),
        ["v1", "cluster"] => (method == Method::GET).then_some(Op::Cluster),
        ["v1", "trace"] => (method == Method::GET).then_some(Op::Trace),
        ["v1", "mesh"] => (method == Method::GET).then_some(Op::Mesh(false)),
        ["v1", "mesh", "failover"] | ["v1", "mesh", "links", _, _] => {
            (method == Method::POST).then_some(Op::Mesh(true))
        }
        ["v1", "admin", "drain"] => (method == Method::POST).then_some(Op::Drain(true)),
        ["v1", "admin", "undrain"] => (method == Method::POST).then_some(Op::Drain(false)),
        ["v1", "tokens"] => match *method {
            Method::GET => Some(Op::TokensList),
            Method::POST => Some(Op::TokensCreate),
            _ => None,
        },
        ["v1", "tokens", id] if !id.is_empty() => {
            (method == Method::DELETE).then(|| Op::TokensRevoke((*id).to_string()))
        }
        ["v1", "topics"] => (method == Method::GET).then_some(Op::TopicList),
        ["v1", "topics", t] if !t.is_empty() => match *method {
            Method::GET => Some(Op::TopicRead((*t).to_string())),
            Method::PUT | Method::DELETE => Some(Op::TopicWrite((*t).to_string())),
            _ => None,
        },
        ["v1", "topics", t, "events"] if !t.is_empty() => match *method {
            Method::POST => Some(Op::Publish((*t).to_string())),
            Method::GET => Some(Op::TopicBrowse((*t).to_string())),
            _ => None,
        },
        ["v1", "schemas"] => (method == Method::GET).then_some(Op::SchemaRead),
        ["v1", "schemas", n] if !n.is_empty() => match *method {
            Method::GET => Some(Op::SchemaRead),
            Method::PUT | Method::DELETE => Some(Op::SchemaWrite),
            _ => None,
        },
        ["v1", "subscriptions"] => match *method {
            Method::GET => Some(Op::SubList),
            Method::POST => Some(Op::SubCreate),
            _ => None,
        },
        ["v1", "subscriptions", n] if !n.is_empty() => match *method {
            Method::GET | Method::DELETE => Some(Op::SubOne((*n).to_string())),
            _ => None,
        },
        ["v1", "subscriptions", n, "events"] if !n.is_empty() => {
            (method == Method::GET).then(|| Op::SubPull((*n).to_string()))
        }
        ["v1", "subscriptions", n, "ack"] if !n.is_empty() => {
            (method == Method::POST).then(|| Op::SubPull((*n).to_string()))
        }
        // To the node placement names first, like pull and ack (any node answers it).
        ["v1", "subscriptions", n, "status"] if !n.is_empty() => {
            (method == Method::GET).then(|| Op::SubOne((*n).to_string()))
        }
        ["v1", "subscriptions", n, "seek"] if !n.is_empty() => {
            (method == Method::POST).then(|| Op::SubSeek((*n).to_string()))
        }
        ["v1", "replays"] => match *method {
            Method::GET => Some(Op::Replay),
            Method::POST => Some(Op::ReplayStart),
            _ => None,
        },
        ["v1", "replays", n] if !n.is_empty() => (method == Method::GET).then_some(Op::Replay),
        ["v1", "replays", n, "cancel"] if !n.is_empty() => {
            (method == Method::POST).then_some(Op::Replay)
        }
        _ => {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {path}"),
            ))
        }
    };
    op.ok_or_else(not_allowed)
}

#[derive(Deserialize)]
struct SourceOnly {
    #[serde(default)]
    source: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct SubSpecHead {
    pub(crate) name: Option<String>,
    pub(crate) topic: Option<String>,
    #[serde(default)]
    pub(crate) delivery: Option<DeliveryHead>,
}

#[derive(Deserialize)]
pub(crate) struct DeliveryHead {
    #[serde(default)]
    pub(crate) dead_letter_topic: Option<String>,
}

/// The producer group of a publish and its number of events.
pub(crate) fn producer_group(
    headers: &HeaderMap,
    body: Option<&Bytes>,
    topic: &str,
) -> Result<(String, u32), Reject> {
    let header_group = headers
        .get(PRODUCER_GROUP_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let malformed = |e: serde_json::Error| {
        // `source` twice: the same answer the node gives for any key twice.
        if e.to_string().starts_with("duplicate field") {
            return Reject::new(
                StatusCode::BAD_REQUEST,
                "duplicate_key",
                format!("the event has a key more than once ({e}); which one counts would be ambiguous, so it is refused"),
            );
        }
        Reject::new(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            format!("the body is not valid JSON: {e}"),
        )
    };
    let source_str = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let (source, count) =
        if let (true, Some(body)) = (ct.starts_with("application/cloudevents-batch+json"), body) {
            let events: Vec<SourceOnly> = serde_json::from_slice(body).map_err(malformed)?;
            let n = u32::try_from(events.len()).unwrap_or(u32::MAX);
            (
                events.into_iter().next().and_then(|e| source_str(e.source)),
                n,
            )
        } else if let (true, Some(body)) = (ct.starts_with("application/cloudevents+json"), body) {
            let e: SourceOnly = serde_json::from_slice(body).map_err(malformed)?;
            (source_str(e.source), 1)
        } else {
            (
                headers
                    .get("ce-source")
                    .and_then(|v| v.to_str().ok())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                1,
            )
        };
    let group = header_group
        .or(source)
        .unwrap_or_else(|| format!("topic:{topic}"));
    Ok((group, count))
}

/// The time a trace query gives the mesh (`timeout_ms`, default 2 s, at most 30 s; a bad
/// value is the node's to refuse).
pub(crate) fn trace_timeout(query: Option<&str>) -> Duration {
    let ms = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(2_000)
        .min(30_000);
    Duration::from_millis(ms)
}

/// Longest `wait` of a pull (the node's bound too).
const MAX_PULL_WAIT: Duration = Duration::from_secs(60);

/// `wait` of a pull (absent: 0), in the one duration syntax (`meshd_core::duration`), at
/// most 60 s. A bad value is refused here (400, field `wait`), as the node would.
/// The `subscription` of a replay call's query, if any.
pub(crate) fn replay_subscription(query: Option<&str>) -> Option<String> {
    query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == "subscription" && !v.is_empty()).then(|| percent_decode(v))
    })
}

#[derive(Deserialize)]
pub(crate) struct ReplayHead {
    pub(crate) topic: Option<String>,
    pub(crate) subscription: Option<String>,
}

pub(crate) fn pull_wait(query: Option<&str>) -> Result<Duration, Reject> {
    let Some(raw) = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == "wait").then_some(v)
    }) else {
        return Ok(Duration::ZERO);
    };
    let value = percent_decode(raw);
    meshd_core::duration::parse_at_most(&value, MAX_PULL_WAIT).map_err(|e| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait: {e}"),
        )
        .field("wait")
    })
}

/// Decodes `+` and `%XX` of a query value (a value that is not valid UTF-8 afterwards
/// keeps replacement characters and fails to parse).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

fn is_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// An upstream answer; its body streams from the node (a 503's was read whole).
struct Answer {
    node: Upstream,
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

/// Largest answer the proxy reads whole for itself (a subscription's spec, a node's 503).
const INTERNAL_ANSWER_LIMIT: usize = 1024 * 1024;

/// One request on its way to the nodes.
struct Attempt<'a> {
    method: &'a Method,
    path_q: &'a str,
    headers: &'a HeaderMap,
    body: &'a SendBody,
    fault: &'a Fault,
    peer: SocketAddr,
    retry_uncertain: bool,
    deadline: Instant,
}

enum Failure {
    /// Nothing reached a node; safe to report 503.
    Unavailable(String),
    /// Every node reached answered 503 (and no other reached node acted): the last such
    /// answer, passed to the client as is, so it sees the node's own code and reason
    /// (`catalog_unavailable`, `draining`, ...) rather than the proxy's `upstream_unavailable`.
    Refused(Answer),
    /// A node may have acted on the request; its outcome is unknown.
    Uncertain(String),
    /// The client's body failed (too large, too slow, cut off): no node got all of it.
    Client(meshd_listener::BodyError),
}

fn failure_response(f: Failure) -> Result<Response<Body>, Reject> {
    match f {
        Failure::Unavailable(m) => Err(unavailable(m)),
        Failure::Refused(a) => Ok(answer_response(a)),
        Failure::Client(e) => Err(body_reject(e)),
        Failure::Uncertain(m) => Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_outcome_unknown",
            format!("{m}; the request may or may not have been applied, retrying may duplicate it"),
        )
        .retry_after(Duration::from_secs(1))),
    }
}

/// The answer to a client whose body failed: 413, 408 (both with `Connection: close`)
/// or 400.
pub(crate) fn body_reject(e: meshd_listener::BodyError) -> Reject {
    match e {
        meshd_listener::BodyError::TooLarge { .. } => Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.to_string(),
        ),
        meshd_listener::BodyError::Timeout { .. } => Reject::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            e.to_string(),
        ),
        _ => Reject::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string()),
    }
}

impl Proxy {
    /// A proxy over `nodes` (may be empty when a registry fills the table).
    /// Tokens come from `config.tokens` (the file; `None`: no auth).
    pub fn new(config: ProxyConfig, nodes: Vec<Upstream>) -> Result<Proxy, ProxyError> {
        let tokens = match &config.tokens {
            Some(p) => Some(Tokens::File(TokenStore::open(p)?)),
            None => None,
        };
        Proxy::with_tokens(config, nodes, tokens)
    }

    /// A proxy over `nodes` checking `tokens` (`None`: no auth); `config.tokens` is not
    /// read.
    pub fn with_tokens(
        config: ProxyConfig,
        nodes: Vec<Upstream>,
        tokens: Option<Tokens>,
    ) -> Result<Proxy, ProxyError> {
        config.validate()?;
        let metrics = Metrics::new()?;
        if matches!(tokens, Some(Tokens::Registry(_))) {
            metrics.register_token_registry_up()?;
        }
        let routing = Arc::new(Routing::new());
        routing.set_nodes(nodes);
        let internal = match &config.internal_token {
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose())
                    .map_err(|e| ProxyError::Client(format!("internal token: {e}")))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Below a node's header read timeout (10 s by default), which also closes a
            // keep-alive connection idle that long: the proxy drops an idle connection
            // before the node does, never sends on one the node is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Proxy {
            inner: Arc::new(Inner {
                limits: Limits::new(config.ip_rate, config.token_rate),
                metrics,
                config,
                routing,
                tokens,
                client,
                internal,
                sub_topics: Mutex::new(HashMap::new()),
                draining: tokio::sync::watch::Sender::new(false),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.inner.config
    }

    /// The routing table (to feed it from a registry).
    pub fn routing(&self) -> Arc<Routing> {
        self.inner.routing.clone()
    }

    /// Whether the proxy is drained (`POST /v1/admin/drain`).
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Drains (`true`) or undrains (`false`); answers whether the state changed.
    pub fn set_draining(&self, on: bool) -> bool {
        self.inner.draining.send_if_modified(|d| {
            let changed = *d != on;
            *d = on;
            changed
        })
    }

    /// A watch of the drain flag (the binary deregisters the proxy while it is set).
    pub fn drain_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then stops accepting and
    /// lets requests in flight finish (up to the request deadline + 1 s). Runs the
    /// background work (probing nodes marked down, reloading the token file, reclaiming
    /// idle state).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        let background = tokio::spawn(self.clone().background());
        let cfg = &self.inner.config;
        let proxy = self.clone();
        meshd_listener::serve(
            listener,
            &cfg.listener,
            self.inner.metrics.connections.clone(),
            move |peer| {
                let proxy = proxy.clone();
                hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, std::convert::Infallible>(proxy.handle(peer, req).await) }
                })
            },
            shutdown,
            cfg.request_deadline + Duration::from_secs(1),
        )
        .await;
        background.abort();
        Ok(())
    }

    async fn background(self) {
        let cfg = &self.inner.config;
        let mut tick = tokio::time::interval(cfg.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n = n.wrapping_add(1);
            for node in self.inner.routing.down_nodes() {
                let ok = self.probe(&node).await;
                if ok {
                    tracing::info!(node = %node.id, "node answers again");
                    self.inner.routing.mark_up(&node.id);
                }
            }
            if matches!(self.inner.tokens, Some(Tokens::File(_))) {
                // File I/O: on the blocking pool, not on an async worker.
                let proxy = self.clone();
                let reloaded = tokio::task::spawn_blocking(move || match &proxy.inner.tokens {
                    Some(Tokens::File(store)) => store.reload_if_changed(),
                    _ => Ok(false),
                })
                .await;
                if let Ok(Err(e)) = reloaded {
                    tracing::warn!(error = %e, "token file not reloaded; keeping the previous tokens");
                }
            }
            let reclaimed = self.inner.routing.reclaim_idle(cfg.group_idle_timeout);
            if reclaimed > 0 {
                tracing::debug!(reclaimed, "idle producer groups reclaimed");
            }
            if n % 20 == 0 {
                self.inner.limits.reclaim();
                if let Ok(mut s) = self.inner.sub_topics.lock() {
                    s.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
                }
            }
            let m = &self.inner.metrics;
            m.producer_groups
                .set(i64::try_from(self.inner.routing.producer_groups()).unwrap_or(i64::MAX));
            m.live_nodes
                .set(i64::try_from(self.inner.routing.live_nodes().len()).unwrap_or(i64::MAX));
            match &self.inner.tokens {
                Some(Tokens::File(store)) => {
                    m.tokens
                        .set(i64::try_from(store.list().len()).unwrap_or(i64::MAX));
                }
                Some(Tokens::Registry(r)) => {
                    m.tokens.set(i64::try_from(r.count()).unwrap_or(i64::MAX));
                    m.token_registry_up.set(i64::from(r.is_live()));
                }
                None => {}
            }
        }
    }

    /// Whether `node` answers `GET /healthz` with a success within a second.
    async fn probe(&self, node: &Upstream) -> bool {
        let Ok(uri) = format!("{}/healthz", node.url).parse::<http::Uri>() else {
            return false;
        };
        let mut req = Request::new(crate::body::boxed(http_body_util::Empty::<Bytes>::new()));
        *req.uri_mut() = uri;
        if let Some(t) = &self.inner.internal {
            req.headers_mut().insert(INTERNAL_HEADER, t.clone());
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.inner.client.request(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    /// Answers one request (any body type; the server passes hyper's): the tower stack of
    /// [`crate::layers`] (classify → IP limit → auth → route → token limit → forward),
    /// then the request log and the status count.
    pub async fn handle<B>(&self, peer: SocketAddr, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use tower::ServiceExt as _;
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // The id of the token presented (valid or not), never its secret.
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| match auth::claimed_id(auth::bearer(v)) {
                Some(id) => id.to_string(),
                None => "malformed".to_string(),
            })
            .unwrap_or_else(|| "-".to_string());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(Conn { peer, started });
        let req = Request::from_parts(parts, crate::body::boxed(body));
        let mut resp = match self.stack().oneshot(req).await {
            Ok(r) => {
                let status = r.status();
                let node = r
                    .headers()
                    .get(NODE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // A node's 5xx answer is a failure; the proxy's own `/readyz` 503 (while
                // draining or without a live node) is an answer to a probe.
                if status.is_server_error() && node != "-" {
                    tracing::warn!(status = status.as_u16(), %method, path, %peer, token, node, "request failed: the node answered with a server error");
                } else {
                    tracing::debug!(status = status.as_u16(), %method, path, %peer, token, node, elapsed = ?started.elapsed(), "request");
                }
                r
            }
            Err(rej) => {
                let status = rej.status.as_u16();
                let (code, reason) = (rej.code, rej.message.as_str());
                if rej.status.is_server_error() {
                    tracing::warn!(status, code, reason, %method, path, %peer, token, "request refused");
                } else {
                    tracing::info!(status, code, reason, %method, path, %peer, token, "request refused");
                }
                rej.into_response()
            }
        };
        self.inner
            .metrics
            .requests
            .with_label_values(&[resp.status().as_str()])
            .inc();
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp
    }

    /// The layers, outermost first ([`crate::layers`]).
    fn stack(
        &self,
    ) -> crate::layers::Classify<
        crate::layers::IpLimit<
            crate::layers::Auth<
                crate::layers::Route<crate::layers::TokenLimit<crate::layers::Forward>>,
            >,
        >,
    > {
        use crate::layers::*;
        tower::ServiceBuilder::new()
            .layer(ClassifyLayer(self.clone()))
            .layer(IpLimitLayer(self.clone()))
            .layer(AuthLayer(self.clone()))
            .layer(RouteLayer(self.clone()))
            .layer(TokenLimitLayer(self.clone()))
            .service(Forward(self.clone()))
    }

    /// `POST /v1/admin/drain` (`true`) or `/v1/admin/undrain` (`false`).
    pub(crate) fn drain(&self, on: bool) -> Response<Body> {
        let changed = self.set_draining(on);
        let cfg = &self.inner.config;
        tracing::info!(proxy = %cfg.proxy_id, draining = on, changed, "drain asked");
        json_response(
            StatusCode::OK,
            &meshd_core::api::ProxyDrainAnswer {
                proxy: cfg.proxy_id.clone(),
                draining: on,
                changed,
            },
        )
    }

    /// Takes one request of the client address's rate.
    pub(crate) fn check_ip(&self, ip: std::net::IpAddr) -> Result<(), Reject> {
        self.inner.limits.check_ip(ip).map_err(|l| self.limited(l))
    }

    /// Sends a routed request ([`crate::layers::Routed`]) to its nodes and shapes the
    /// answer.
    pub(crate) async fn forward_routed(
        &self,
        req: Request<SendBody>,
    ) -> Result<Response<Body>, Reject> {
        let (parts, body) = req.into_parts();
        let routed = parts
            .extensions
            .get::<crate::layers::Routed>()
            .cloned()
            .ok_or_else(|| unavailable("the request was not routed"))?;
        let conn = parts
            .extensions
            .get::<Conn>()
            .copied()
            .ok_or_else(|| unavailable("the request has no client"))?;
        let fault = parts
            .extensions
            .get::<crate::layers::BodyFault>()
            .map(|f| f.0.clone())
            .unwrap_or_default();
        let path_q = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        let attempt = Attempt {
            method: &parts.method,
            path_q: &path_q,
            headers: &parts.headers,
            body: &body,
            fault: &fault,
            peer: conn.peer,
            retry_uncertain: routed.retry_uncertain,
            deadline: routed.deadline,
        };
        let candidates = match routed.targets {
            crate::layers::Targets::All => return self.fan_out(&attempt).await,
            crate::layers::Targets::One(c) => c,
        };
        if candidates.is_empty() {
            return Err(unavailable("no runtime node is known"));
        }
        match self.forward(&attempt, &candidates).await {
            Ok(answer) => {
                if let Some(g) = routed.group {
                    if answer.status.is_success() {
                        self.inner.routing.stick(&g, &answer.node.id);
                    }
                }
                Ok(answer_response(answer))
            }
            Err(f) => failure_response(f),
        }
    }

    fn limited(&self, l: Limited) -> Reject {
        self.inner
            .metrics
            .rate_limited
            .with_label_values(&[l.kind])
            .inc();
        Reject::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("the {} rate limit is exhausted", l.kind),
        )
        .retry_after(l.retry_after)
    }

    /// Takes `cost` units (events) of the token's rate.
    pub(crate) fn check_token_rate(&self, token: &TokenRecord, cost: u32) -> Result<(), Reject> {
        match self.inner.limits.check_token(&token.id, cost) {
            Ok(()) => Ok(()),
            Err(TokenRefusal::Limited(l)) => Err(self.limited(l)),
            Err(TokenRefusal::OverBurst { cost, burst }) => {
                self.inner
                    .metrics
                    .rate_limited
                    .with_label_values(&["over_burst"])
                    .inc();
                Err(Reject::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch_exceeds_burst",
                    format!(
                        "the batch has {cost} events, more than the token's burst of {burst}: \
                         it can never pass in one request; send at most {burst} events per request"
                    ),
                ))
            }
        }
    }

    fn forbidden(&self, message: &str) -> Reject {
        self.inner
            .metrics
            .auth_failures
            .with_label_values(&["forbidden"])
            .inc();
        Reject::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// `Ok(None)` when auth is disabled.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<TokenRecord>>, Reject> {
        let Some(store) = &self.inner.tokens else {
            return Ok(None);
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(auth::bearer);
        match store.authenticate(presented) {
            Authn::Valid(r) => Ok(Some(r)),
            Authn::Missing => {
                self.inner
                    .metrics
                    .auth_failures
                    .with_label_values(&["missing"])
                    .inc();
                Err(Reject::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a token is required: Authorization: Bearer mshd_…",
                ))
            }
            Authn::Invalid => {
                self.inner
                    .metrics
                    .auth_failures
                    .with_label_values(&["invalid"])
                    .inc();
                Err(Reject::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the token is not valid",
                ))
            }
        }
    }

    pub(crate) fn require(
        &self,
        token: &Option<Arc<TokenRecord>>,
        action: Action,
        resource: Option<&str>,
    ) -> Result<(), Reject> {
        match token {
            None => Ok(()),
            Some(t) if auth::allows(t, action, resource) => Ok(()),
            Some(_) => Err(self.forbidden(&format!(
                "the token has no {} scope{}",
                action.as_str(),
                resource.map(|r| format!(" on {r}")).unwrap_or_default()
            ))),
        }
    }

    pub(crate) fn require_any(
        &self,
        token: &Option<Arc<TokenRecord>>,
        topic: &str,
    ) -> Result<(), Reject> {
        match token {
            None => Ok(()),
            Some(t)
                if t.scopes
                    .iter()
                    .any(|s| s.action != Action::ClusterAdmin && s.matches(topic)) =>
            {
                Ok(())
            }
            Some(_) => Err(self.forbidden(&format!("the token has no scope on {topic}"))),
        }
    }

    /// A subscription's dead-letter topic receives events the subscription's sink refused:
    /// whoever names it writes to it, so it needs `publish` on it; and the node creates it
    /// when missing, so a missing one needs `admin` on it too.
    pub(crate) async fn require_dead_letter_topic(
        &self,
        token: &Option<Arc<TokenRecord>>,
        dlt: &str,
    ) -> Result<(), Reject> {
        let Some(t) = token else { return Ok(()) };
        meshd_core::api::check_name("delivery.dead_letter_topic", dlt)
            .map_err(|e| Reject::new(StatusCode::BAD_REQUEST, "invalid_field", e.message))?;
        if !auth::allows(t, Action::Publish, Some(dlt)) {
            return Err(self.forbidden(&format!(
                "the token has no publish scope on {dlt}, the dead-letter topic \
                 (delivery.dead_letter_topic)"
            )));
        }
        if auth::allows(t, Action::Admin, Some(dlt)) {
            return Ok(());
        }
        if !self.topic_exists(dlt).await? {
            return Err(self.forbidden(&format!(
                "the dead-letter topic {dlt} does not exist and creating it needs the admin \
                 scope on it; create it first (PUT /v1/topics/{dlt}) or name an existing topic"
            )));
        }
        Ok(())
    }

    /// A GET the proxy makes for itself (no client headers), to the first of `candidates`
    /// that answers, within the request deadline; the answer read whole.
    async fn internal_get(
        &self,
        path: &str,
        candidates: &[Upstream],
    ) -> Result<(StatusCode, Bytes), Failure> {
        let deadline = Instant::now() + self.inner.config.request_deadline;
        let body = SendBody::Bytes(Bytes::new());
        let attempt = Attempt {
            method: &Method::GET,
            path_q: path,
            headers: &HeaderMap::new(),
            body: &body,
            fault: &Fault::default(),
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            retry_uncertain: true,
            deadline,
        };
        let a = self.forward(&attempt, candidates).await?;
        let status = a.status;
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(
            left,
            http_body_util::Limited::new(a.body, INTERNAL_ANSWER_LIMIT).collect(),
        )
        .await;
        match read {
            Ok(Ok(c)) => Ok((status, c.to_bytes())),
            _ => Err(Failure::Unavailable(format!(
                "node {} did not send its whole answer",
                a.node.id
            ))),
        }
    }

    /// The request of one attempt to `node`; `None` when its streamed body went out with
    /// an earlier attempt.
    fn upstream_request(&self, a: &Attempt<'_>, node: &Upstream) -> Option<Request<InBody>> {
        let body = a.body.attempt()?;
        let mut req = Request::new(body);
        *req.method_mut() = a.method.clone();
        *req.uri_mut() = format!("{}{}", node.url, a.path_q).parse().ok()?;
        let out = req.headers_mut();
        out.reserve(a.headers.len() + 2);
        for (k, v) in a.headers {
            // The client's credentials are for the proxy; a client's internal-token header
            // would displace the proxy's own.
            if !is_hop(k) && k != header::AUTHORIZATION && k != INTERNAL_HEADER {
                out.append(k.clone(), v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&a.peer.ip().to_string()) {
            out.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        if let Some(t) = &self.inner.internal {
            out.insert(INTERNAL_HEADER, t.clone());
        }
        Some(req)
    }

    /// One attempt per candidate until one answers (not 503) or the deadline passes. The
    /// answer's body is streamed to the client (a 503's is read, to pass the last one on).
    async fn forward(&self, a: &Attempt<'_>, candidates: &[Upstream]) -> Result<Answer, Failure> {
        let mut last = String::from("no node answered");
        let mut refused = None;
        for (i, node) in candidates.iter().enumerate() {
            let now = Instant::now();
            if now >= a.deadline {
                break;
            }
            let Some(req) = self.upstream_request(a, node) else {
                // The streamed body went to an earlier node, which failed after taking it.
                break;
            };
            if i > 0 {
                self.inner.metrics.upstream_retries.inc();
            }
            let t0 = Instant::now();
            let sent = tokio::time::timeout(a.deadline - now, self.inner.client.request(req)).await;
            self.inner
                .metrics
                .upstream_latency
                .observe(t0.elapsed().as_secs_f64());
            // The client's own body failed (too large, too slow, gone): the node got an
            // incomplete request, which it cannot act on; the client hears why.
            if let Some(e) = a.fault.take() {
                return Err(Failure::Client(e));
            }
            match sent {
                Ok(Ok(r)) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    last = format!("node {} answered 503", node.id);
                    let (parts, body) = r.into_parts();
                    let body = tokio::time::timeout(
                        a.deadline.saturating_duration_since(Instant::now()),
                        http_body_util::Limited::new(body, INTERNAL_ANSWER_LIMIT).collect(),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                    refused = Some(Answer {
                        node: node.clone(),
                        status: parts.status,
                        headers: parts.headers,
                        body: Body::from(body),
                    });
                }
                Ok(Ok(r)) => {
                    let (parts, body) = r.into_parts();
                    return Ok(Answer {
                        node: node.clone(),
                        status: parts.status,
                        headers: parts.headers,
                        body: Body::new(body),
                    });
                }
                Ok(Err(e)) if e.is_connect() => {
                    tracing::warn!(node = %node.id, error = %e, "node unreachable; trying the next one");
                    self.inner.routing.mark_down(&node.id);
                    last = format!("node {} is unreachable", node.id);
                }
                // Nothing of the request reached the node (a pooled connection found closed
                // before the body was read): safe to send elsewhere, even a POST.
                Ok(Err(e)) if matches!(a.body, SendBody::Stream(_)) && !a.body.taken() => {
                    last = format!("node {} failed before the request was sent: {e}", node.id);
                }
                Ok(Err(e)) if a.retry_uncertain && a.body.replayable() => {
                    last = format!("node {} failed: {e}", node.id);
                }
                Ok(Err(e)) => {
                    self.inner.routing.mark_down(&node.id);
                    return Err(Failure::Uncertain(format!("node {} failed: {e}", node.id)));
                }
                // Still connecting when the deadline came: nothing was sent.
                Err(_) if matches!(a.body, SendBody::Stream(_)) && !a.body.taken() => {
                    last = format!("node {} did not answer in time", node.id);
                }
                Err(_) if a.retry_uncertain && a.body.replayable() => {
                    last = format!("node {} did not answer in time", node.id);
                }
                Err(_) => {
                    return Err(Failure::Uncertain(format!(
                        "node {} did not answer in time",
                        node.id
                    )));
                }
            }
        }
        Err(match refused {
            Some(a) => Failure::Refused(a),
            None => Failure::Unavailable(last),
        })
    }

    /// Sends a topic or schema write to every node, concurrently (its body was read whole).
    async fn fan_out(&self, a: &Attempt<'_>) -> Result<Response<Body>, Reject> {
        let nodes = self.inner.routing.nodes();
        if nodes.is_empty() {
            return Err(unavailable("no runtime node is known"));
        }
        let attempts = nodes
            .iter()
            .map(|n| self.forward(a, std::slice::from_ref(n)));
        let results = futures::future::join_all(attempts).await;
        let mut ok: Option<Answer> = None;
        let mut unreachable = 0usize;
        let mut reasons = Vec::new();
        let mut refused = None;
        for r in results {
            match r {
                Ok(a) if a.status.is_success() => {
                    ok.get_or_insert(a);
                }
                Ok(a) => return Ok(answer_response(a)),
                Err(Failure::Client(e)) => return Err(body_reject(e)),
                Err(Failure::Unavailable(why) | Failure::Uncertain(why)) => {
                    unreachable += 1;
                    reasons.push(why);
                }
                Err(Failure::Refused(a)) => {
                    unreachable += 1;
                    reasons.push(format!("node {} answered 503", a.node.id));
                    refused = Some(a);
                }
            }
        }
        if ok.is_none() {
            if let Some(a) = refused {
                return Ok(answer_response(a));
            }
        }
        match ok {
            Some(a) => {
                let mut resp = answer_response(a);
                if unreachable > 0 {
                    if let Ok(v) = HeaderValue::from_str(&unreachable.to_string()) {
                        resp.headers_mut()
                            .insert(HeaderName::from_static("meshd-nodes-unreachable"), v);
                    }
                }
                Ok(resp)
            }
            None => Err(unavailable(format!(
                "no node answered: {}",
                reasons.join("; ")
            ))),
        }
    }

    /// Whether a topic exists (asked of a node).
    async fn topic_exists(&self, topic: &str) -> Result<bool, Reject> {
        let candidates = self.inner.routing.for_key(&format!("topic:{topic}"));
        let (status, _) = self
            .internal_get(&format!("/v1/topics/{topic}"), &candidates)
            .await
            .map_err(|_| unavailable("no node answered whether the topic exists"))?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(unavailable(format!(
                "a node answered {s} on whether topic {topic} exists"
            ))),
        }
    }

    /// The topic of a subscription (cached; else asked of the node that serves it).
    pub(crate) async fn subscription_topic(&self, name: &str) -> Result<String, Reject> {
        if let Ok(c) = self.inner.sub_topics.lock() {
            if let Some((t, at)) = c.get(name) {
                if at.elapsed() < Duration::from_secs(30) {
                    return Ok(t.clone());
                }
            }
        }
        let candidates = self.inner.routing.for_subscription(name);
        let (status, body) = self
            .internal_get(&format!("/v1/subscriptions/{name}"), &candidates)
            .await
            .map_err(|_| unavailable("the subscription's node is unavailable"))?;
        if status == StatusCode::NOT_FOUND {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                "subscription_not_found",
                format!("no subscription {name}"),
            ));
        }
        let head: SubSpecHead = serde_json::from_slice(&body)
            .map_err(|_| unavailable("the node answered an unreadable subscription"))?;
        let topic = head
            .topic
            .ok_or_else(|| unavailable("the node answered a subscription without a topic"))?;
        if let Ok(mut c) = self.inner.sub_topics.lock() {
            c.insert(name.to_string(), (topic.clone(), Instant::now()));
        }
        Ok(topic)
    }

    fn tokens(&self) -> Result<&Tokens, Reject> {
        self.inner.tokens.as_ref().ok_or_else(|| {
            Reject::new(
                StatusCode::NOT_FOUND,
                "auth_disabled",
                "this proxy runs without authentication",
            )
        })
    }

    pub(crate) fn tokens_list(&self) -> Response<Body> {
        let list = self
            .inner
            .tokens
            .as_ref()
            .map(Tokens::list)
            .unwrap_or_default();
        let body = meshd_core::api::TokenList {
            tokens: list
                .iter()
                .map(|t| meshd_core::api::TokenInfo {
                    id: t.id.clone(),
                    scopes: t.scopes.iter().map(ToString::to_string).collect(),
                    description: t.description.clone(),
                    created_at: t.created_at,
                })
                .collect(),
        };
        json_response(StatusCode::OK, &body)
    }

    /// Runs a token-file write off the async workers (it does blocking file I/O, and the
    /// store serializes writers with a lock held across the whole read-modify-write).
    async fn file_write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&TokenStore) -> Result<T, auth::AuthError> + Send + 'static,
    ) -> Result<Result<T, auth::AuthError>, Reject> {
        let proxy = self.clone();
        tokio::task::spawn_blocking(move || match &proxy.inner.tokens {
            Some(Tokens::File(store)) => Ok(write(store)),
            _ => Err(()),
        })
        .await
        .map_err(|e| unavailable(format!("the token write failed: {e}")))?
        .map_err(|()| unavailable("this proxy has no token file"))
    }

    pub(crate) async fn tokens_create(&self, body: &Bytes) -> Result<Response<Body>, Reject> {
        let tokens = self.tokens()?;
        let req: meshd_core::api::TokenCreateRequest =
            serde_json::from_slice(body).map_err(|e| {
                Reject::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("expected {{\"scopes\": [\"publish:orders.*\"]}}: {e}"),
                )
            })?;
        let scopes = req
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Reject::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string()))?;
        let description = req.description;
        let created = match tokens {
            Tokens::File(_) => {
                self.file_write(move |store| store.create(scopes, &description))
                    .await?
            }
            Tokens::Registry(r) => r.create(scopes, &description).await,
        };
        let (token, rec) = created.map_err(|e| match e {
            auth::AuthError::NoScopes => {
                Reject::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string())
            }
            other => token_store_failed(other),
        })?;
        Ok(json_response(
            StatusCode::CREATED,
            &meshd_core::api::TokenCreated {
                id: rec.id,
                token,
                scopes: rec.scopes.iter().map(ToString::to_string).collect(),
                description: rec.description,
            },
        ))
    }

    pub(crate) async fn tokens_revoke(&self, id: String) -> Result<Response<Body>, Reject> {
        let revoked = match self.tokens()? {
            Tokens::File(_) => {
                let id = id.clone();
                self.file_write(move |store| store.revoke(&id)).await?
            }
            Tokens::Registry(r) => r.revoke(&id).await,
        };
        match revoked {
            Ok(()) => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                Ok(r)
            }
            Err(auth::AuthError::NotFound { .. }) => Err(Reject::new(
                StatusCode::NOT_FOUND,
                "token_not_found",
                format!("no token {id}"),
            )),
            Err(e) => Err(token_store_failed(e)),
        }
    }
}

/// A token write that failed for want of its store: 503. When the store is the region's
/// registry, the code says so and the message says that existing tokens keep working.
fn token_store_failed(e: auth::AuthError) -> Reject {
    match e {
        auth::AuthError::Registry(e) => Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_registry_unavailable",
            format!(
                "token creation and revocation need the cluster's registry (etcd), which \
                 failed: {e}; tokens already issued keep working; retry when it is back"
            ),
        )
        .retry_after(Duration::from_secs(1)),
        other => unavailable(other.to_string()),
    }
}

pub(crate) fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(s.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_string(v).expect("an answer serializes");
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn answer_response(a: Answer) -> Response<Body> {
    let mut r = Response::new(a.body);
    *r.status_mut() = a.status;
    for (k, v) in &a.headers {
        if !is_hop(k) {
            r.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&a.node.id) {
        r.headers_mut()
            .insert(HeaderName::from_static(NODE_HEADER), v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            classify(&Method::POST, "/v1/topics/orders/events").ok(),
            Some(Op::Publish("orders".into()))
        );
        assert_eq!(
            classify(&Method::PUT, "/v1/topics/orders").ok(),
            Some(Op::TopicWrite("orders".into()))
        );
        assert_eq!(
            classify(&Method::PUT, "/v1/schemas/orders").ok(),
            Some(Op::SchemaWrite)
        );
        assert_eq!(
            classify(&Method::GET, "/v1/schemas").ok(),
            Some(Op::SchemaRead)
        );
        assert!(classify(&Method::POST, "/v1/schemas/orders").is_err());
        assert_eq!(
            classify(&Method::POST, "/v1/subscriptions/s/ack").ok(),
            Some(Op::SubPull("s".into()))
        );
        assert_eq!(
            classify(&Method::GET, "/v1/subscriptions/s/status").ok(),
            Some(Op::SubOne("s".into()))
        );
        assert_eq!(
            classify(&Method::GET, "/v1/topics/orders/events").ok(),
            Some(Op::TopicBrowse("orders".into()))
        );
        assert_eq!(classify(&Method::GET, "/v1/trace").ok(), Some(Op::Trace));
        assert_eq!(
            trace_timeout(Some("source=s&id=1&timeout_ms=500")),
            Duration::from_millis(500)
        );
        assert_eq!(trace_timeout(None), Duration::from_secs(2));
        assert_eq!(
            trace_timeout(Some("timeout_ms=999999999")),
            Duration::from_secs(30)
        );
        assert_eq!(
            classify(&Method::POST, "/v1/subscriptions/s/seek").ok(),
            Some(Op::SubSeek("s".into()))
        );
        assert_eq!(
            classify(&Method::POST, "/v1/replays").ok(),
            Some(Op::ReplayStart)
        );
        for (m, p) in [
            (Method::GET, "/v1/replays"),
            (Method::GET, "/v1/replays/r1"),
            (Method::POST, "/v1/replays/r1/cancel"),
        ] {
            assert_eq!(classify(&m, p).ok(), Some(Op::Replay), "{m} {p}");
        }
        assert_eq!(
            classify(&Method::DELETE, "/v1/replays/r1")
                .err()
                .map(|r| r.status),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            replay_subscription(Some("x=1&subscription=billing")),
            Some("billing".to_string())
        );
        assert_eq!(replay_subscription(Some("subscription=")), None);
        assert_eq!(
            classify(&Method::GET, "/v1/subscriptions/s/seek")
                .err()
                .map(|r| r.status),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            classify(&Method::GET, "/v1/mesh").ok(),
            Some(Op::Mesh(false))
        );
        assert_eq!(
            classify(&Method::POST, "/v1/mesh/links/b/pause").ok(),
            Some(Op::Mesh(true))
        );
        assert_eq!(
            classify(&Method::POST, "/v1/mesh/failover").ok(),
            Some(Op::Mesh(true))
        );
        assert_eq!(
            classify(&Method::DELETE, "/v1/mesh")
                .err()
                .map(|r| r.status),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            classify(&Method::GET, "/nope").err().map(|r| r.status),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            classify(&Method::PATCH, "/v1/topics/x")
                .err()
                .map(|r| r.status),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    /// A node that refuses (503 with its own code) is passed through as is: the client
    /// sees `catalog_unavailable` and the node's reason, not `upstream_unavailable`.
    #[tokio::test]
    async fn a_nodes_own_refusal_is_passed_through() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = s.read(&mut buf).await;
                    let body = r#"{"error":{"code":"catalog_unavailable","message":"the registry cannot be read"}}"#;
                    let resp = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let p = Proxy::new(
            ProxyConfig::new("c", "p1"),
            crate::static_nodes(&format!("http://{addr}")),
        )
        .expect("proxy");
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        for (m, path) in [(Method::GET, "/v1/topics"), (Method::PUT, "/v1/topics/t")] {
            let r = p
                .handle(
                    peer,
                    Request::builder()
                        .method(m.clone())
                        .uri(path)
                        .body(Body::empty())
                        .expect("request"),
                )
                .await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{m} {path}");
            let body = r.into_body().collect().await.expect("body").to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("catalog_unavailable"), "{m} {path}: {body}");
            assert!(
                body.contains("the registry cannot be read"),
                "{m} {path}: {body}"
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn drain_refuses_requests_and_undrain_serves_again() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let p = Proxy::new(
            ProxyConfig::new("c", "p1"),
            crate::static_nodes("http://127.0.0.1:9"),
        )
        .expect("proxy");
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let req = |m: Method, path: &str| {
            Request::builder()
                .method(m)
                .uri(path)
                .body(Body::empty())
                .expect("request")
        };
        assert_eq!(
            p.handle(peer, req(Method::GET, "/readyz")).await.status(),
            200
        );
        let r = p.handle(peer, req(Method::POST, "/v1/admin/drain")).await;
        assert_eq!(r.status(), 200);
        assert!(p.is_draining());
        assert_eq!(
            p.handle(peer, req(Method::GET, "/readyz")).await.status(),
            503
        );
        let r = p
            .handle(peer, req(Method::POST, "/v1/topics/t/events"))
            .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
        let body = r.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("\"draining\""));
        assert_eq!(
            p.handle(peer, req(Method::GET, "/healthz")).await.status(),
            200
        );
        assert_eq!(
            p.handle(peer, req(Method::GET, "/v1/admin/drain"))
                .await
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let r = p.handle(peer, req(Method::POST, "/v1/admin/undrain")).await;
        assert_eq!(r.status(), 200);
        assert!(!p.is_draining());
        assert_eq!(
            p.handle(peer, req(Method::GET, "/readyz")).await.status(),
            200
        );
    }

    #[test]
    fn producer_groups() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let body = Bytes::from_static(br#"{"source":"/shop","id":"1"}"#);
        assert_eq!(
            producer_group(&h, Some(&body), "t").ok(),
            Some(("/shop".into(), 1))
        );
        h.insert(PRODUCER_GROUP_HEADER, HeaderValue::from_static("g1"));
        assert_eq!(
            producer_group(&h, Some(&body), "t").ok(),
            Some(("g1".into(), 1))
        );
        h.remove(PRODUCER_GROUP_HEADER);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents-batch+json"),
        );
        let batch = Bytes::from_static(br#"[{"source":"/a"},{"source":"/b"},{}]"#);
        assert_eq!(
            producer_group(&h, Some(&batch), "t").ok(),
            Some(("/a".into(), 3))
        );
        assert!(producer_group(&h, Some(&Bytes::from_static(b"{nope")), "t").is_err());
        let dup = Bytes::from_static(br#"[{"source":"/a","source":"/b"}]"#);
        assert_eq!(
            producer_group(&h, Some(&dup), "t").err().map(|r| r.code),
            Some("duplicate_key")
        );
    }

    #[test]
    fn pull_wait_uses_the_one_duration_syntax() {
        let ok = |q: &str| pull_wait(Some(q)).ok();
        assert_eq!(ok("max=1&wait=5s"), Some(Duration::from_secs(5)));
        assert_eq!(ok("wait=250ms"), Some(Duration::from_millis(250)));
        assert_eq!(ok("wait=10.5s&max=3"), Some(Duration::from_millis(10_500)));
        assert_eq!(ok("wait=1m+30s"), None, "90s is past the bound");
        assert_eq!(ok("wait=0%2E5s"), Some(Duration::from_millis(500)));
        assert_eq!(ok("max=1"), Some(Duration::ZERO));
        assert_eq!(pull_wait(None).ok(), Some(Duration::ZERO));
        for bad in [
            "wait=999999",
            "wait=5",
            "wait=",
            "wait=soon",
            "wait=61s",
            "wait=%zz",
        ] {
            let r = pull_wait(Some(bad)).expect_err(bad);
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(r.field, Some("wait"), "{bad}");
        }
    }
}
