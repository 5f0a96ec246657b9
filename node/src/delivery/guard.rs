//! The webhook target guard: applies [`meshd_core::egress`]'s rules to real addresses.
//!
//! Checked twice: [`WebhookGuard::check_url`] when a subscription is created (the URL's
//! host resolved now: any denied address refuses the subscription), and at every push by
//! [`WebhookGuard::check_push`] plus the HTTP client's resolver ([`GuardedResolver`]), so
//! the address actually connected to is the one checked: a name that resolves to a
//! different address later (DNS rebinding) is refused at that moment. The push client
//! follows no redirects and uses no proxy from the environment.
//!
//! The guard knows the mesh's components (this node, the registry's members, etcd, the
//! topology's bridges and proxies) through [`WebhookGuard::set_components`], one set per
//! source, replaced whenever the source changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use meshd_core::egress::{canonical, Components, Denied, EgressRules};

/// Why a webhook target is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookTargetError {
    /// Not an absolute http(s) URL with a host.
    #[error("{url:?} is not an absolute http:// or https:// URL with a host")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// The host name does not resolve.
    #[error("the webhook host {host} does not resolve: {reason}")]
    Unresolvable {
        /// The host.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
    /// An address of the target is refused by the rules.
    #[error("webhook target {url} refused: {denied}")]
    Denied {
        /// The URL.
        url: String,
        /// The rule that refused it.
        denied: Denied,
    },
}

impl WebhookTargetError {
    /// The rule's label for metrics (`bad_url`, `unresolvable`, or [`Denied::label`]).
    pub fn label(&self) -> &'static str {
        match self {
            WebhookTargetError::BadUrl { .. } => "bad_url",
            WebhookTargetError::Unresolvable { .. } => "unresolvable",
            WebhookTargetError::Denied { denied, .. } => denied.label(),
        }
    }
}

/// The host and port a URL connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address literal.
    Addr(SocketAddr),
    /// A name to resolve.
    Name(String, u16),
}

/// Parses a webhook URL into what it connects to.
pub fn target_of(url: &str) -> Result<Target, WebhookTargetError> {
    let bad = || WebhookTargetError::BadUrl {
        url: url.to_string(),
    };
    let u = url::Url::parse(url).map_err(|_| bad())?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(bad());
    }
    let port = u.port_or_known_default().ok_or_else(bad)?;
    match u.host().ok_or_else(bad)? {
        url::Host::Ipv4(ip) => Ok(Target::Addr(SocketAddr::new(IpAddr::V4(ip), port))),
        url::Host::Ipv6(ip) => Ok(Target::Addr(SocketAddr::new(IpAddr::V6(ip), port))),
        url::Host::Domain(d) => Ok(Target::Name(d.to_ascii_lowercase(), port)),
    }
}

/// Applies the rules; shared by the API (create) and the push client (connect).
pub struct WebhookGuard {
    rules: EgressRules,
    sources: RwLock<BTreeMap<String, Components>>,
    merged: RwLock<Arc<Components>>,
    /// Whether an address is this host's (cached: a bind probe per new address).
    local: Mutex<HashMap<IpAddr, bool>>,
    /// Ports used with each host name by the pushes (the resolver sees names only).
    name_ports: Mutex<HashMap<String, BTreeSet<u16>>>,
}

impl std::fmt::Debug for WebhookGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookGuard")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl WebhookGuard {
    /// A guard with the operator's rules and no component known yet.
    pub fn new(rules: EgressRules) -> Arc<WebhookGuard> {
        Arc::new(WebhookGuard {
            rules,
            sources: RwLock::new(BTreeMap::new()),
            merged: RwLock::new(Arc::new(Components::default())),
            local: Mutex::new(HashMap::new()),
            name_ports: Mutex::new(HashMap::new()),
        })
    }

    /// The rules in force.
    pub fn rules(&self) -> &EgressRules {
        &self.rules
    }

    /// Replaces the components known from `source` (e.g. `"self"`, `"registry"`).
    pub fn set_components(&self, source: &str, components: Components) {
        let mut sources = self.sources.write().unwrap_or_else(|e| e.into_inner());
        sources.insert(source.to_string(), components);
        let mut merged = Components::default();
        for c in sources.values() {
            merged.extend(c);
        }
        *self.merged.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
    }

    /// Components of every source.
    pub fn components(&self) -> Arc<Components> {
        self.merged
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `ip` is one of this host's addresses (loopback, unspecified, or an address
    /// a socket can be bound to here).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip.is_loopback() || ip.is_unspecified() {
            return true;
        }
        let mut cache = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(&ip) {
            return *v;
        }
        let v = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(ip, v);
        v
    }

    /// The rules' decision for one address.
    pub fn check_addr(&self, host: Option<&str>, addr: SocketAddr) -> Result<(), Denied> {
        let components = self.components();
        self.rules.check(
            host,
            addr.ip(),
            addr.port(),
            self.is_local(addr.ip()),
            &components,
        )
    }

    /// The check made when a subscription is created: the URL parses, its host resolves,
    /// and every address it resolves to is allowed.
    pub async fn check_url(&self, url: &str) -> Result<(), WebhookTargetError> {
        let denied = |denied| WebhookTargetError::Denied {
            url: url.to_string(),
            denied,
        };
        match target_of(url)? {
            Target::Addr(a) => self.check_addr(None, a).map_err(denied),
            Target::Name(host, port) => {
                let addrs = resolve(&host, port).await?;
                for a in addrs {
                    self.check_addr(Some(&host), a).map_err(denied)?;
                }
                Ok(())
            }
        }
    }

    /// The check made before each push: an address literal is checked here; for a name,
    /// the port is remembered for the resolver, which checks each address it returns.
    pub fn check_push(&self, url: &str) -> Result<(), WebhookTargetError> {
        match target_of(url)? {
            Target::Addr(a) => {
                self.check_addr(None, a)
                    .map_err(|denied| WebhookTargetError::Denied {
                        url: url.to_string(),
                        denied,
                    })
            }
            Target::Name(host, port) => {
                let components = self.components();
                if components.hosts.contains(&(host.clone(), port)) {
                    return Err(WebhookTargetError::Denied {
                        url: url.to_string(),
                        denied: Denied::ComponentHost(format!("{host}:{port}")),
                    });
                }
                let mut ports = self.name_ports.lock().unwrap_or_else(|e| e.into_inner());
                if ports.len() > 65_536 {
                    ports.clear();
                }
                ports.entry(host).or_default().insert(port);
                Ok(())
            }
        }
    }

    /// The addresses of `name` the push client may connect to: each resolved address is
    /// checked with every port the pushes use with that name.
    fn filter_resolved(
        &self,
        name: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, WebhookTargetError> {
        let ports: Vec<u16> = self
            .name_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default();
        let mut allowed = Vec::with_capacity(addrs.len());
        let mut first_denied = None;
        for a in addrs {
            let mut verdict = Ok(());
            for p in ports.iter().copied().chain(ports.is_empty().then_some(0)) {
                verdict = self.check_addr(Some(name), SocketAddr::new(a.ip(), p));
                if verdict.is_err() {
                    break;
                }
            }
            match verdict {
                Ok(()) => allowed.push(a),
                Err(d) => {
                    first_denied.get_or_insert(d);
                }
            }
        }
        match (allowed.is_empty(), first_denied) {
            (true, Some(denied)) => Err(WebhookTargetError::Denied {
                url: name.to_string(),
                denied,
            }),
            _ => Ok(allowed),
        }
    }
}

/// Resolves `host:port` (the system resolver, off the async workers).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, WebhookTargetError> {
    let unresolvable = |reason: String| WebhookTargetError::Unresolvable {
        host: host.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unresolvable(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no address".into()));
    }
    Ok(addrs)
}

/// The push client's resolver: the system resolver, then the guard.
pub struct GuardedResolver {
    guard: Arc<WebhookGuard>,
}

impl GuardedResolver {
    /// A resolver checking with `guard`.
    pub fn new(guard: Arc<WebhookGuard>) -> GuardedResolver {
        GuardedResolver { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addrs = resolve(&host, 0).await?;
            let allowed = guard.filter_resolved(&host, addrs)?;
            let it: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(it)
        })
    }
}

/// Components at `urls` (absolute URLs or `host:port`): literal addresses as they are,
/// names both by name and by what they resolve to now.
pub async fn components_of(guard: &WebhookGuard, urls: &[String]) -> Components {
    let mut c = Components::default();
    for u in urls {
        let target = if u.contains("://") {
            target_of(u).ok()
        } else if let Ok(a) = u.parse::<SocketAddr>() {
            Some(Target::Addr(a))
        } else {
            u.rsplit_once(':')
                .and_then(|(h, p)| Some(Target::Name(h.to_ascii_lowercase(), p.parse().ok()?)))
        };
        match target {
            Some(Target::Addr(a)) => c.add_addr(a, guard.is_local(a.ip())),
            Some(Target::Name(h, port)) => {
                c.add_host(&h, port);
                if let Ok(addrs) = resolve(&h, port).await {
                    for a in addrs {
                        c.add_addr(a, guard.is_local(a.ip()));
                    }
                }
            }
            None => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_rules() -> EgressRules {
        EgressRules {
            allow_loopback: true,
            ..EgressRules::default()
        }
    }

    #[tokio::test]
    async fn create_time_check_resolves_names_and_knows_components() {
        let g = WebhookGuard::new(dev_rules());
        g.set_components(
            "self",
            components_of(&g, &["http://127.0.0.1:7700".to_string()]).await,
        );
        g.check_url("http://127.0.0.1:9000/hook").await.unwrap();
        g.check_url("http://localhost:9000/hook").await.unwrap();
        for bad in [
            "http://127.0.0.1:7700/v1/subscriptions",
            "http://localhost:7700/v1/admin/drain",
            "http://[::1]:7700/",
            "http://127.9.9.9:7700/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:9000/",
        ] {
            let e = g.check_url(bad).await.unwrap_err();
            assert!(matches!(e, WebhookTargetError::Denied { .. }), "{bad}: {e}");
        }
        assert!(matches!(
            g.check_url("ftp://127.0.0.1/").await,
            Err(WebhookTargetError::BadUrl { .. })
        ));
        assert!(matches!(
            g.check_url("http://no-such-host.invalid/").await,
            Err(WebhookTargetError::Unresolvable { .. })
        ));
    }

    #[tokio::test]
    async fn resolver_refuses_names_whose_addresses_are_denied() {
        let g = WebhookGuard::new(EgressRules::default());
        g.check_push("http://localhost:9000/x").unwrap();
        let e = g
            .filter_resolved("localhost", vec!["127.0.0.1:0".parse().unwrap()])
            .unwrap_err();
        assert!(matches!(
            e,
            WebhookTargetError::Denied {
                denied: Denied::Loopback(_),
                ..
            }
        ));
        // A name resolving to a public and a denied address keeps the public one only.
        let ok = g
            .filter_resolved(
                "mixed.example",
                vec![
                    "203.0.113.7:0".parse().unwrap(),
                    "10.0.0.1:0".parse().unwrap(),
                ],
            )
            .unwrap();
        assert_eq!(ok, vec!["203.0.113.7:0".parse::<SocketAddr>().unwrap()]);
        // With loopback allowed, a component's port on a name is still refused.
        let g = WebhookGuard::new(dev_rules());
        let mut c = Components::default();
        c.add_addr("127.0.0.1:7700".parse().unwrap(), true);
        g.set_components("self", c);
        g.check_push("http://localhost:9000/x").unwrap();
        assert!(g
            .filter_resolved("localhost", vec!["127.0.0.1:0".parse().unwrap()])
            .is_ok());
        g.check_push("http://localhost:7700/x").unwrap();
        assert!(g
            .filter_resolved("localhost", vec!["127.0.0.1:0".parse().unwrap()])
            .is_err());
    }

    #[test]
    fn literal_pushes_are_checked_before_connecting() {
        let g = WebhookGuard::new(EgressRules::default());
        assert!(g.check_push("http://203.0.113.1:8080/").is_ok());
        assert!(matches!(
            g.check_push("http://127.0.0.1:8080/").unwrap_err().label(),
            "loopback"
        ));
        assert!(matches!(
            g.check_push("http://[::ffff:a9fe:a9fe]/")
                .unwrap_err()
                .label(),
            "metadata"
        ));
    }
}
