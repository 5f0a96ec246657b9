//! The proxy's request path as tower layers, outermost first:
//!
//! 1. [`Classify`]: which operation the head asks for; `/healthz`, `/readyz`, `/metrics`
//!    answered here; the header count.
//! 2. [`IpLimit`]: the client address's rate (before auth, so a flood of bad tokens costs
//!    no hashing).
//! 3. [`Auth`]: the token, and every scope check the head alone decides.
//! 4. [`Route`]: drain, the proxy's own endpoints (tokens), and the nodes a request goes to
//!    (path, topic, subscription, producer group → candidates). The body is read whole only
//!    where the route needs it (see [`needs_body`]); otherwise it is streamed.
//! 5. [`TokenLimit`]: the token's rate, charged the request's cost (events of a batch).
//! 6. [`Forward`]: the attempts to the candidates with failover (or to every node).
//!
//! Each layer refuses with a [`Reject`] (the service error) and changes nothing when it
//! does; what a layer learned travels to the next in the request's extensions.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Body as _;
use tower::Service;

use crate::auth::{Action, TokenRecord};
use crate::body::{ClientBody, Fault, InBody, SendBody, Slot};
use crate::server::{
    body_reject, classify, producer_group, pull_wait, replay_subscription, text, trace_timeout, Op,
    Proxy, Reject, ReplayHead, SubSpecHead, PRODUCER_GROUP_HEADER, TIMEOUT_HEADER,
};

type Fut<T> = Pin<Box<dyn Future<Output = Result<T, Reject>> + Send>>;

/// The client and when its request arrived (set by [`Proxy::handle`]).
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client's address.
    pub peer: SocketAddr,
    /// When the head arrived.
    pub started: Instant,
}

/// The token presented (`None`: auth disabled).
#[derive(Clone)]
pub struct Authed(pub Option<Arc<TokenRecord>>);

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// The candidates, best first: the first that answers (not 503) answers.
    One(Vec<crate::routing::Upstream>),
    /// Every node, concurrently (topic and schema writes).
    All,
}

/// What [`Route`] decided.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The nodes.
    pub targets: Targets,
    /// The producer group of a publish (stuck to the node that acknowledges it).
    pub group: Option<String>,
    /// Units of the token's rate (events of a publish; 1 otherwise).
    pub cost: u32,
    /// Whether a request sent without a complete answer may go to the next node.
    pub retry_uncertain: bool,
    /// When the request gives up.
    pub deadline: Instant,
}

/// Why the body fails, shared with [`Forward`] (set by [`Route`]).
#[derive(Clone)]
pub struct BodyFault(pub Fault);

fn ext<T: Clone + Send + Sync + 'static>(req: &Request<impl Sized>) -> Result<T, Reject> {
    req.extensions().get::<T>().cloned().ok_or_else(|| {
        Reject::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "a proxy layer ran out of order",
        )
    })
}

macro_rules! layer {
    ($layer:ident, $svc:ident) => {
        /// The tower layer of the service of the same name.
        #[derive(Clone)]
        pub struct $layer(pub Proxy);

        impl<S> tower::Layer<S> for $layer {
            type Service = $svc<S>;
            fn layer(&self, inner: S) -> $svc<S> {
                $svc {
                    proxy: self.0.clone(),
                    inner,
                }
            }
        }

        /// See the module documentation.
        #[derive(Clone)]
        pub struct $svc<S> {
            proxy: Proxy,
            inner: S,
        }
    };
}

layer!(ClassifyLayer, Classify);
layer!(IpLimitLayer, IpLimit);
layer!(AuthLayer, Auth);
layer!(RouteLayer, Route);
layer!(TokenLimitLayer, TokenLimit);

impl<S> Service<Request<InBody>> for Classify<S>
where
    S: Service<Request<InBody>, Response = Response<Body>, Error = Reject> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Reject;
    type Future = Fut<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Reject>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<InBody>) -> Self::Future {
        let proxy = self.proxy.clone();
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(async move {
            let op = classify(req.method(), req.uri().path())?;
            match op {
                Op::Health => return Ok(text(StatusCode::OK, "ok")),
                Op::Ready => {
                    return Ok(if proxy.is_draining() {
                        text(StatusCode::SERVICE_UNAVAILABLE, "draining")
                    } else if proxy.routing().live_nodes().is_empty() {
                        text(StatusCode::SERVICE_UNAVAILABLE, "no live node")
                    } else {
                        text(StatusCode::OK, "ready")
                    })
                }
                Op::Metrics => return Ok(text(StatusCode::OK, &proxy.metrics().render())),
                _ => {}
            }
            let max = proxy.config().listener.max_headers;
            if req.headers().len() > max {
                return Err(Reject::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("at most {max} headers are taken"),
                ));
            }
            req.extensions_mut().insert(op);
            inner.call(req).await
        })
    }
}

impl<S> Service<Request<InBody>> for IpLimit<S>
where
    S: Service<Request<InBody>, Response = Response<Body>, Error = Reject> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Reject;
    type Future = Fut<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Reject>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<InBody>) -> Self::Future {
        let proxy = self.proxy.clone();
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(async move {
            let conn: Conn = ext(&req)?;
            proxy.check_ip(conn.peer.ip())?;
            inner.call(req).await
        })
    }
}

impl<S> Service<Request<InBody>> for Auth<S>
where
    S: Service<Request<InBody>, Response = Response<Body>, Error = Reject> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Reject;
    type Future = Fut<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Reject>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<InBody>) -> Self::Future {
        let proxy = self.proxy.clone();
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(async move {
            let op: Op = ext(&req)?;
            // The console's static documents need no token (the page asks for one).
            if op == Op::Console {
                req.extensions_mut().insert(Authed(None));
                return inner.call(req).await;
            }
            let token = proxy.authenticate(req.headers())?;
            // Every scope check the head decides; the body's (a subscription's topic, a
            // replay's) are the route's.
            match &op {
                Op::Publish(t) => proxy.require(&token, Action::Publish, Some(t))?,
                Op::TopicWrite(t) => proxy.require(&token, Action::Admin, Some(t))?,
                Op::TopicRead(t) => proxy.require_any(&token, t)?,
                // Reading stored events takes what reading them through a subscription takes.
                Op::TopicBrowse(t) => proxy.require(&token, Action::Subscribe, Some(t))?,
                Op::TopicList
                | Op::SubList
                | Op::Mesh(false)
                | Op::Trace
                | Op::SchemaRead
                | Op::SchemaWrite
                | Op::DrillReports => proxy.require(&token, Action::Admin, None)?,
                Op::Mesh(true)
                | Op::TokensList
                | Op::TokensCreate
                | Op::TokensRevoke(_)
                | Op::Drain(_) => proxy.require(&token, Action::ClusterAdmin, None)?,
                Op::SubOne(name) | Op::SubPull(name) | Op::SubSeek(name) => {
                    if token.is_some() {
                        let topic = proxy.subscription_topic(name).await?;
                        proxy.require(&token, Action::Subscribe, Some(&topic))?;
                    }
                }
                Op::Replay => match replay_subscription(req.uri().query()) {
                    Some(name) => {
                        if token.is_some() {
                            let topic = proxy.subscription_topic(&name).await?;
                            proxy.require(&token, Action::Subscribe, Some(&topic))?;
                        }
                    }
                    None => proxy.require(&token, Action::Admin, None)?,
                },
                // Any valid token (the check above); the console's documents need none.
                Op::Cluster | Op::FilterTest | Op::SubCreate | Op::ReplayStart => {}
                Op::Console | Op::Health | Op::Ready | Op::Metrics => {}
            }
            req.extensions_mut().insert(Authed(token));
            inner.call(req).await
        })
    }
}

/// Whether the route of `op` reads the body whole before choosing a node, and why:
/// - a structured or batch publish without `meshd-producer-group`: the group is the
///   (first) event's `source`, and malformed JSON is refused without touching a node;
///   a batch also when the token has a rate (it costs its number of events);
/// - a subscription create and a replay start: the scope is checked on the body's topic;
/// - topic and schema writes: the same body goes to every node;
/// - a token create: the proxy answers it.
///
/// Everything else (binary-mode publishes, publishes naming their group, acks, seeks,
/// every read) is streamed to the node.
pub fn needs_body(proxy: &Proxy, op: &Op, headers: &http::HeaderMap) -> bool {
    match op {
        Op::Publish(_) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let batch = ct.starts_with("application/cloudevents-batch+json");
            let structured = ct.starts_with("application/cloudevents+json");
            let named = headers
                .get(PRODUCER_GROUP_HEADER)
                .is_some_and(|v| !v.is_empty());
            (batch || structured) && !named || batch && proxy.config().token_rate.is_some()
        }
        Op::SubCreate | Op::ReplayStart | Op::TopicWrite(_) | Op::SchemaWrite => true,
        Op::TokensCreate => true,
        _ => false,
    }
}

impl<S> Service<Request<InBody>> for Route<S>
where
    S: Service<Request<SendBody>, Response = Response<Body>, Error = Reject>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Reject;
    type Future = Fut<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Reject>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<InBody>) -> Self::Future {
        let proxy = self.proxy.clone();
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(async move {
            let op: Op = ext(&req)?;
            let conn: Conn = ext(&req)?;
            let Authed(token) = ext(&req)?;
            let cfg = proxy.config().clone();
            if let Op::Drain(on) = op {
                return Ok(proxy.drain(on));
            }
            if proxy.is_draining() {
                return Err(Reject::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining",
                    "this proxy is draining; use another proxy of the cluster",
                )
                .retry_after(Duration::from_secs(1)));
            }
            let (mut parts, body) = req.into_parts();
            // A declared length past the limit is refused before anything is read.
            if let Some(len) = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                if len > u64::try_from(cfg.max_body_bytes).unwrap_or(u64::MAX) {
                    return Err(body_reject(meshd_listener::BodyError::TooLarge {
                        limit: cfg.max_body_bytes,
                    }));
                }
            }
            let fault = Fault::default();
            let client_body = ClientBody::new(
                body,
                cfg.max_body_bytes,
                cfg.listener.body_read_timeout,
                fault.clone(),
            );
            let (read, send) =
                if needs_body(&proxy, &op, &parts.headers) || client_body.is_end_stream() {
                    let b = client_body.collect_all().await.map_err(body_reject)?;
                    (Some(b.clone()), SendBody::Bytes(b))
                } else {
                    (None, SendBody::Stream(Slot::new(client_body)))
                };
            let body = read.clone().unwrap_or_default();
            match &op {
                Op::TokensList => return Ok(proxy.tokens_list()),
                Op::TokensCreate => return proxy.tokens_create(&body).await,
                Op::TokensRevoke(id) => return proxy.tokens_revoke(id.clone()).await,
                _ => {}
            }
            let mut deadline_len = cfg.request_deadline;
            if let Some(ms) = parts
                .headers
                .get(TIMEOUT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                deadline_len = deadline_len.min(Duration::from_millis(ms.max(1)));
            }
            if op == Op::Trace {
                deadline_len += trace_timeout(parts.uri.query());
            }
            let routing = proxy.routing();
            let (targets, group, cost) = match &op {
                Op::Publish(topic) => {
                    let (group, count) = producer_group(&parts.headers, read.as_ref(), topic)?;
                    (
                        Targets::One(routing.for_producer(&group)),
                        Some(group),
                        count,
                    )
                }
                Op::SubCreate => {
                    let head: SubSpecHead = serde_json::from_slice(&body).map_err(|e| {
                        Reject::new(
                            StatusCode::BAD_REQUEST,
                            "malformed_body",
                            format!("the body is not a subscription: {e}"),
                        )
                    })?;
                    let (Some(name), Some(topic)) = (head.name, head.topic) else {
                        return Err(Reject::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_body",
                            "a subscription needs a name and a topic",
                        ));
                    };
                    proxy.require(&token, Action::Subscribe, Some(&topic))?;
                    if let Some(dlt) = head.delivery.and_then(|d| d.dead_letter_topic) {
                        proxy.require_dead_letter_topic(&token, &dlt).await?;
                    }
                    (Targets::One(routing.for_subscription(&name)), None, 1)
                }
                Op::ReplayStart => {
                    let head: ReplayHead = serde_json::from_slice(&body).map_err(|e| {
                        Reject::new(
                            StatusCode::BAD_REQUEST,
                            "malformed_body",
                            format!("the body is not a replay: {e}"),
                        )
                    })?;
                    let (Some(topic), Some(name)) = (head.topic, head.subscription) else {
                        return Err(Reject::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_body",
                            "a replay needs a topic and a subscription",
                        ));
                    };
                    proxy.require(&token, Action::Subscribe, Some(&topic))?;
                    (Targets::One(routing.for_subscription(&name)), None, 1)
                }
                Op::Replay => match replay_subscription(parts.uri.query()) {
                    Some(name) => (Targets::One(routing.for_subscription(&name)), None, 1),
                    None => (Targets::One(routing.for_key("admin")), None, 1),
                },
                Op::SubOne(name) | Op::SubPull(name) | Op::SubSeek(name) => {
                    if let Op::SubPull(_) = op {
                        deadline_len += pull_wait(parts.uri.query())?;
                    }
                    (Targets::One(routing.for_subscription(name)), None, 1)
                }
                Op::TopicWrite(_) | Op::SchemaWrite => (Targets::All, None, 1),
                Op::TopicRead(t) | Op::TopicBrowse(t) => (
                    Targets::One(routing.for_key(&format!("topic:{t}"))),
                    None,
                    1,
                ),
                Op::Mesh(_) => {
                    let to = routing.for_mesh();
                    if to.is_empty() {
                        return Err(Reject::new(
                            StatusCode::NOT_FOUND,
                            "no_mesh",
                            "no node of this cluster runs a federation bridge (a node started \
                             with --topology and --certs-dir, or [mesh] in cluster up's config)",
                        ));
                    }
                    (Targets::One(to), None, 1)
                }
                _ => (Targets::One(routing.for_key("admin")), None, 1),
            };
            // Tell the node which producer group it serves (it reports the groups it sees).
            if let Some(g) = &group {
                if !parts.headers.contains_key(PRODUCER_GROUP_HEADER) {
                    if let Ok(v) = HeaderValue::from_str(g) {
                        parts.headers.insert(PRODUCER_GROUP_HEADER, v);
                    }
                }
            }
            parts.extensions.insert(Routed {
                targets,
                group,
                cost,
                retry_uncertain: parts.method != Method::POST,
                deadline: conn.started + deadline_len,
            });
            parts.extensions.insert(BodyFault(fault));
            inner.call(Request::from_parts(parts, send)).await
        })
    }
}

impl<S> Service<Request<SendBody>> for TokenLimit<S>
where
    S: Service<Request<SendBody>, Response = Response<Body>, Error = Reject>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Reject;
    type Future = Fut<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Reject>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<SendBody>) -> Self::Future {
        let proxy = self.proxy.clone();
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(async move {
            let Authed(token) = ext(&req)?;
            let routed: Routed = ext(&req)?;
            if let Some(t) = &token {
                proxy.check_token_rate(t, routed.cost)?;
            }
            inner.call(req).await
        })
    }
}

/// The innermost service: the attempts.
#[derive(Clone)]
pub struct Forward(pub Proxy);

impl Service<Request<SendBody>> for Forward {
    type Response = Response<Body>;
    type Error = Reject;
    type Future = Fut<Response<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Reject>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<SendBody>) -> Self::Future {
        let proxy = self.0.clone();
        Box::pin(async move { proxy.forward_routed(req).await })
    }
}

#[cfg(test)]
mod tests {
    //! Each layer alone, over a recording inner service: no sockets.
    use super::*;
    use crate::auth::{Scope, TokenStore};
    use crate::body::boxed;
    use crate::{ProxyConfig, Rate};
    use std::sync::Mutex;
    use tower::{Layer as _, ServiceExt as _};

    /// The requests an inner service saw (their extensions' facts).
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl Seen {
        fn inner<B: Send + 'static>(
            &self,
            describe: fn(&Request<B>) -> String,
        ) -> impl Service<Request<B>, Response = Response<Body>, Error = Reject, Future = impl Send>
               + Clone
               + Send
               + 'static {
            let seen = self.clone();
            tower::service_fn(move |req: Request<B>| {
                let seen = seen.clone();
                async move {
                    seen.0.lock().expect("lock").push(describe(&req));
                    Ok::<_, Reject>(Response::new(Body::from("inner")))
                }
            })
        }

        fn all(&self) -> Vec<String> {
            self.0.lock().expect("lock").clone()
        }
    }

    fn proxy(cfg: ProxyConfig) -> Proxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Proxy::new(cfg, crate::static_nodes("http://127.0.0.1:9")).expect("proxy")
    }

    fn conn() -> Conn {
        Conn {
            peer: SocketAddr::from(([127, 0, 0, 1], 5000)),
            started: Instant::now(),
        }
    }

    fn req(method: Method, path: &str, body: &'static str) -> Request<InBody> {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .body(boxed(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            ))))
            .expect("request");
        r.extensions_mut().insert(conn());
        r
    }

    fn op_of(r: &Request<InBody>) -> String {
        format!("{:?}", r.extensions().get::<Op>())
    }

    #[tokio::test]
    async fn classify_answers_probes_itself_and_refuses_unknown_paths() {
        let p = proxy(ProxyConfig::new("c", "p"));
        let seen = Seen::default();
        let svc = ClassifyLayer(p.clone()).layer(seen.inner(op_of));
        let r = svc.clone().oneshot(req(Method::GET, "/healthz", "")).await;
        assert_eq!(r.expect("health").status(), StatusCode::OK);
        let r = svc.clone().oneshot(req(Method::GET, "/nope", "")).await;
        assert_eq!(r.expect_err("unknown").status(), StatusCode::NOT_FOUND);
        let r = svc.clone().oneshot(req(Method::DELETE, "/ui/", "")).await;
        assert_eq!(
            r.expect_err("method").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let mut many = req(Method::GET, "/v1/topics", "");
        for i in 0..70 {
            many.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
                HeaderValue::from_static("v"),
            );
        }
        let r = svc.clone().oneshot(many).await;
        assert_eq!(
            r.expect_err("headers").status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert!(seen.all().is_empty(), "nothing reached the inner layers");
        for path in ["/ui/", "/ui/console.js", "/openapi.json", "/"] {
            let r = svc.clone().oneshot(req(Method::GET, path, "")).await;
            assert_eq!(r.expect("console").status(), StatusCode::OK);
        }
        assert_eq!(seen.all(), vec!["Some(Console)"; 4]);
    }

    #[tokio::test]
    async fn ip_limit_refuses_past_the_burst_and_passes_nothing_on() {
        let mut cfg = ProxyConfig::new("c", "p");
        cfg.ip_rate = Some(Rate {
            per_second: 1,
            burst: 2,
        });
        let p = proxy(cfg);
        let seen = Seen::default();
        let svc = IpLimitLayer(p.clone()).layer(seen.inner(op_of));
        for _ in 0..2 {
            let r = svc
                .clone()
                .oneshot(req(Method::GET, "/v1/topics", ""))
                .await;
            assert!(r.is_ok());
        }
        let r = svc
            .clone()
            .oneshot(req(Method::GET, "/v1/topics", ""))
            .await;
        let e = r.expect_err("limited");
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code(), "rate_limited");
        assert_eq!(seen.all().len(), 2);
    }

    #[tokio::test]
    async fn auth_checks_the_token_and_the_scope_from_the_head() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tokens.json");
        let (token, _) = TokenStore::open(&file)
            .expect("store")
            .create(vec![Scope::parse("publish:orders").expect("scope")], "t")
            .expect("create");
        let mut cfg = ProxyConfig::new("c", "p");
        cfg.tokens = Some(file);
        let p = proxy(cfg);
        let seen = Seen::default();
        let svc = ClassifyLayer(p.clone()).layer(AuthLayer(p.clone()).layer(seen.inner(|r| {
            format!(
                "{:?} {}",
                r.extensions().get::<Op>(),
                r.extensions()
                    .get::<Authed>()
                    .and_then(|a| a.0.as_ref().map(|t| t.scopes.len()))
                    .unwrap_or(0)
            )
        })));
        let publish = |t: Option<&str>, topic: &str| {
            let mut r = req(Method::POST, &format!("/v1/topics/{topic}/events"), "{}");
            if let Some(t) = t {
                r.headers_mut().insert(
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {t}")).expect("value"),
                );
            }
            r
        };
        let e = svc.clone().oneshot(publish(None, "orders")).await;
        assert_eq!(e.expect_err("missing").status(), StatusCode::UNAUTHORIZED);
        let e = svc
            .clone()
            .oneshot(publish(Some("mshd_nope"), "orders"))
            .await;
        assert_eq!(e.expect_err("invalid").status(), StatusCode::UNAUTHORIZED);
        let e = svc.clone().oneshot(publish(Some(&token), "payments")).await;
        assert_eq!(e.expect_err("scope").status(), StatusCode::FORBIDDEN);
        let e = svc
            .clone()
            .oneshot(req(Method::GET, "/v1/drills/reports", ""))
            .await;
        assert_eq!(e.expect_err("no token").status(), StatusCode::UNAUTHORIZED);
        assert!(seen.all().is_empty());
        let ok = svc.clone().oneshot(publish(Some(&token), "orders")).await;
        assert!(ok.is_ok());
        // The console's documents need no token.
        let ok = svc
            .clone()
            .oneshot(req(Method::GET, "/openapi.json", ""))
            .await;
        assert!(ok.is_ok());
        assert_eq!(
            seen.all(),
            vec![
                "Some(Publish(\"orders\")) 1".to_string(),
                "Some(Console) 0".to_string()
            ]
        );
    }

    fn routed(r: &Request<SendBody>) -> String {
        let routed = r.extensions().get::<Routed>().expect("routed");
        let body = match r.body() {
            SendBody::Bytes(b) => format!("bytes:{}", String::from_utf8_lossy(b)),
            SendBody::Stream(_) => "stream".to_string(),
        };
        format!(
            "{:?} cost={} retry={} {body} group-header={:?}",
            routed.group,
            routed.cost,
            routed.retry_uncertain,
            r.headers().get(PRODUCER_GROUP_HEADER)
        )
    }

    /// Classify, auth (off) and route over the recorder.
    fn routing_stack(
        p: &Proxy,
        seen: &Seen,
    ) -> impl Service<Request<InBody>, Response = Response<Body>, Error = Reject> + Clone {
        ClassifyLayer(p.clone())
            .layer(AuthLayer(p.clone()).layer(RouteLayer(p.clone()).layer(seen.inner(routed))))
    }

    #[tokio::test]
    async fn route_streams_a_binary_publish_without_reading_its_body() {
        let p = proxy(ProxyConfig::new("c", "p"));
        let seen = Seen::default();
        let svc = routing_stack(&p, &seen);
        // A body that never ends: the route must not wait for it.
        let (_tx, rx) = futures::channel::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, crate::body::BoxError>,
        >(1);
        let mut r = Request::builder()
            .method(Method::POST)
            .uri("/v1/topics/orders/events")
            .header("ce-source", "/shop")
            .header("ce-id", "1")
            .body(boxed(http_body_util::StreamBody::new(rx)))
            .expect("request");
        r.extensions_mut().insert(conn());
        assert!(svc.clone().oneshot(r).await.is_ok());
        assert_eq!(
            seen.all(),
            vec!["Some(\"/shop\") cost=1 retry=false stream group-header=Some(\"/shop\")"]
        );
    }

    #[tokio::test]
    async fn route_reads_a_structured_publish_for_its_source_and_refuses_bad_ones() {
        let mut cfg = ProxyConfig::new("c", "p");
        cfg.max_body_bytes = 64;
        let p = proxy(cfg);
        let seen = Seen::default();
        let svc = routing_stack(&p, &seen);
        let structured = |body: &'static str| {
            let mut r = req(Method::POST, "/v1/topics/orders/events", body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents-batch+json"),
            );
            r
        };
        let ok = svc
            .clone()
            .oneshot(structured(r#"[{"source":"/a"},{"source":"/b"}]"#))
            .await;
        assert!(ok.is_ok());
        let e = svc.clone().oneshot(structured("[{nope")).await;
        assert_eq!(e.expect_err("malformed").code(), "malformed_body");
        let mut big = structured(r#"[{"source":"/a"}]"#);
        big.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("65"));
        let e = svc.clone().oneshot(big).await;
        assert_eq!(
            e.expect_err("large").status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let e = svc
            .clone()
            .oneshot(req(Method::POST, "/v1/subscriptions", "{}"))
            .await;
        assert_eq!(e.expect_err("no name").code(), "invalid_body");
        let ok = svc
            .clone()
            .oneshot(req(Method::GET, "/v1/subscriptions/s/events?wait=1s", ""))
            .await;
        assert!(ok.is_ok());
        assert_eq!(
            seen.all(),
            vec![
                r#"Some("/a") cost=2 retry=false bytes:[{"source":"/a"},{"source":"/b"}] group-header=Some("/a")"#,
                "None cost=1 retry=true bytes: group-header=None",
            ]
        );
    }

    #[tokio::test]
    async fn token_limit_refuses_a_batch_past_the_burst() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tokens.json");
        let (token, _) = TokenStore::open(&file)
            .expect("store")
            .create(vec![Scope::parse("publish:*").expect("scope")], "t")
            .expect("create");
        let mut cfg = ProxyConfig::new("c", "p");
        cfg.tokens = Some(file);
        cfg.token_rate = Some(Rate {
            per_second: 1,
            burst: 2,
        });
        let p = proxy(cfg);
        let seen = Seen::default();
        let svc = ClassifyLayer(p.clone()).layer(AuthLayer(p.clone()).layer(
            RouteLayer(p.clone()).layer(TokenLimitLayer(p.clone()).layer(seen.inner(routed))),
        ));
        let batch = |body: &'static str| {
            let mut r = req(Method::POST, "/v1/topics/orders/events", body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents-batch+json"),
            );
            r.headers_mut()
                .insert(PRODUCER_GROUP_HEADER, HeaderValue::from_static("g"));
            r.headers_mut().insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).expect("value"),
            );
            r
        };
        let e = svc.clone().oneshot(batch("[{},{},{}]")).await;
        assert_eq!(e.expect_err("over burst").code(), "batch_exceeds_burst");
        assert!(svc.clone().oneshot(batch("[{},{}]")).await.is_ok());
        let e = svc.clone().oneshot(batch("[{}]")).await;
        assert_eq!(e.expect_err("limited").code(), "rate_limited");
        assert_eq!(seen.all().len(), 1);
    }
}
