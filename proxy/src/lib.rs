//! meshd-proxy: the stateless HTTP front door of a cluster.
//!
//! Owns: token auth (scoped, hashed, constant-time; [`auth`]; in a region the token set
//! lives in the registry and every proxy follows it, [`region_tokens`]), rate limits (`governor`;
//! [`limits`]), routing of producer groups by placement with a consistent-hash fallback and
//! failover to the next node ([`routing`], [`server`]). Request protection (body and
//! header limits, slow-client timeouts, connection limits) is `meshd_listener`'s, shared
//! with the node.
//!
//! Must not touch: the event store, placement decisions (read them, never write them),
//! or federation. It holds no state that matters: any proxy may be killed at any time.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub(crate) mod layers;
pub mod limits;
pub mod metrics;
pub mod region_tokens;
pub mod routing;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshd_listener::ListenerConfig;
use meshd_scheduler::registry::{MemberEvent, MemberHandle, MemberInfo, Registry, Role};

pub use limits::Rate;
pub use routing::Upstream;
pub use server::Proxy;

/// Settings of one proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Cluster name.
    pub cluster: String,
    /// Proxy id.
    pub proxy_id: String,
    /// The token file [`Proxy::new`] opens; `None` disables auth (development only).
    /// [`Proxy::with_tokens`] takes a token source instead (the region's registry).
    pub tokens: Option<PathBuf>,
    /// Largest request body (413 past it).
    pub max_body_bytes: usize,
    /// Header size and count, read timeouts and connection limits of the listener (the
    /// same mechanism and defaults as a node's).
    pub listener: ListenerConfig,
    /// Deadline of a request across every upstream attempt (503 past it).
    pub request_deadline: Duration,
    /// Per client IP limit (`None`: unlimited).
    pub ip_rate: Option<Rate>,
    /// Per token limit in events (`None`: unlimited).
    pub token_rate: Option<Rate>,
    /// Producer-group routing state idle longer than this is dropped.
    pub group_idle_timeout: Duration,
    /// How often nodes marked down are probed (`/healthz`) and the token file re-read.
    pub probe_interval: Duration,
    /// The cluster's internal token, sent to the nodes on every request
    /// ([`meshd_core::internal`]); `None` for nodes that do not require one.
    pub internal_token: Option<meshd_core::internal::InternalToken>,
}

impl ProxyConfig {
    /// Defaults for a cluster and proxy id.
    pub fn new(cluster: impl Into<String>, proxy_id: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            cluster: cluster.into(),
            proxy_id: proxy_id.into(),
            tokens: None,
            max_body_bytes: 4 * 1024 * 1024,
            listener: ListenerConfig::default(),
            request_deadline: Duration::from_secs(5),
            ip_rate: None,
            token_rate: None,
            group_idle_timeout: Duration::from_secs(300),
            probe_interval: Duration::from_millis(500),
            internal_token: None,
        }
    }

    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ProxyError> {
        let mut problems = self.listener.problems();
        if self.max_body_bytes == 0 {
            problems.push("max body bytes must be above zero".to_string());
        }
        for (name, d) in [
            ("request deadline", self.request_deadline),
            ("probe interval", self.probe_interval),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be above zero"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ProxyError::InvalidConfig(problems.join("; ")))
        }
    }
}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Invalid settings.
    #[error("invalid proxy configuration: {0}")]
    InvalidConfig(String),
    /// The token file.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The registry.
    #[error(transparent)]
    Registry(#[from] meshd_scheduler::registry::RegistryError),
    /// Socket errors.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Metrics registration.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The upstream HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
}

/// Parses a static node list (`http://a:1,http://b:2`); each node's id is its URL.
pub fn static_nodes(list: &str) -> Vec<Upstream> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let url = s.trim_end_matches('/').to_string();
            Upstream {
                id: url.clone(),
                url,
            }
        })
        .collect()
}

/// Follows a registry: nodes join and leave the routing table, the placement is applied,
/// and this proxy registers itself (role proxy) under a lease. Runs until the registry's
/// watch ends; keep the returned handle alive as long as the proxy serves.
pub async fn follow_registry(
    proxy: &Proxy,
    registry: Arc<dyn Registry>,
    own_url: &str,
) -> Result<MemberHandle, ProxyError> {
    let routing = proxy.routing();
    let mut members = registry.watch_members().await?;
    let r = routing.clone();
    tokio::spawn(async move {
        while let Some(ev) = members.recv().await {
            match ev {
                MemberEvent::Put(info) if info.role == Role::Node => {
                    r.set_bridge(&info.id, info.bridge);
                    r.upsert_node(Upstream {
                        id: info.id,
                        url: info.http_addr.trim_end_matches('/').to_string(),
                    })
                }
                MemberEvent::Delete(id) if id.role == Role::Node => r.remove_node(&id.id),
                _ => {}
            }
        }
    });
    let mut placement = registry.watch_placement().await?;
    routing.set_placement(placement.borrow_and_update().clone());
    let r = routing.clone();
    tokio::spawn(async move {
        while placement.changed().await.is_ok() {
            let p = placement.borrow_and_update().clone();
            r.set_placement(p);
        }
    });
    let info = MemberInfo::new(Role::Proxy, proxy.config().proxy_id.clone(), own_url);
    let handle = registry.register(info, Default::default()).await?;
    Ok(handle)
}
