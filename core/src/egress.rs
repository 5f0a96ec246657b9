//! Which addresses a webhook may reach (the rules; no I/O).
//!
//! A subscription's webhook URL is chosen by a client, but the push is made by a node, from
//! inside the mesh. Without rules a client could make a node call the mesh's own APIs (a
//! node's `/v1/subscriptions`, a proxy's admin API, etcd), a cloud metadata service or any
//! internal service the node can reach, with the node's network position. The node checks
//! every target twice: when the subscription is created (the URL's host, resolved), and at
//! every connection (on the addresses the name resolves to then, so DNS rebinding does not
//! help; redirects are not followed).
//!
//! The decision for one address, in order:
//! 1. Never: unspecified, multicast and broadcast addresses, link-local addresses
//!    (169.254.0.0/16, fe80::/10: cloud metadata lives there) and the known metadata
//!    addresses outside them (`100.100.100.200`, `fd00:ec2::254`).
//! 2. Never: a meshd component of the mesh (a node, proxy, scheduler, bridge or etcd
//!    address known to the node), whatever the rules below say. A component bound on this
//!    host is matched on its port for every address of this host (loopback included).
//! 3. Denied by an operator rule (`deny`: a CIDR or a host name, `*.suffix` allowed).
//! 4. Allowed by an operator rule (`allow`).
//! 5. Loopback and this host's own addresses: only with `allow_loopback`.
//! 6. Private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7): only with
//!    `allow_private`.
//! 7. Anything else (public addresses): allowed.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One operator rule: a network or a host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TargetRule {
    /// A CIDR (`10.1.0.0/16`) or a single address (`10.1.2.3`).
    Net(IpNet),
    /// A host name, exact (`hooks.example.com`) or a suffix (`*.example.com`), compared
    /// without case.
    Host(String),
}

/// A rule that is neither an address, a CIDR nor a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule:?} is not a CIDR (10.0.0.0/8), an address or a host name (hooks.example.com, *.example.com)")]
pub struct BadRule {
    /// The text given.
    pub rule: String,
}

impl std::str::FromStr for TargetRule {
    type Err = BadRule;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(net) = t.parse::<IpNet>() {
            return Ok(TargetRule::Net(net.trunc()));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(TargetRule::Net(IpNet::from(ip)));
        }
        let host = t.strip_prefix("*.").unwrap_or(t);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid {
            return Err(BadRule {
                rule: s.to_string(),
            });
        }
        Ok(TargetRule::Host(t.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for TargetRule {
    type Error = BadRule;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TargetRule> for String {
    fn from(r: TargetRule) -> String {
        r.to_string()
    }
}

impl std::fmt::Display for TargetRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRule::Net(n) => write!(f, "{n}"),
            TargetRule::Host(h) => f.write_str(h),
        }
    }
}

impl TargetRule {
    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            TargetRule::Net(n) => n.contains(&ip),
            TargetRule::Host(_) => false,
        }
    }

    fn matches_host(&self, host: &str) -> bool {
        let TargetRule::Host(rule) = self else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match rule.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
            None => host == *rule,
        }
    }
}

/// The operator's rules for webhook targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRules {
    /// Loopback and this host's own addresses may be targets (`meshd dev`; tests).
    #[serde(default)]
    pub allow_loopback: bool,
    /// Private ranges may be targets.
    #[serde(default)]
    pub allow_private: bool,
    /// Always allowed (unless a component or an address of step 1).
    #[serde(default)]
    pub allow: Vec<TargetRule>,
    /// Always denied.
    #[serde(default)]
    pub deny: Vec<TargetRule>,
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// Unspecified, multicast, broadcast.
    #[error("{0} is not a unicast address")]
    NotUnicast(IpAddr),
    /// Link-local or a cloud metadata address.
    #[error("{0} is a link-local or cloud metadata address")]
    Metadata(IpAddr),
    /// A component of the mesh.
    #[error("{0} is a component of the mesh (node, proxy, scheduler, bridge or etcd)")]
    Component(SocketAddr),
    /// A component named by host name.
    #[error("host {0} is a component of the mesh")]
    ComponentHost(String),
    /// An operator deny rule.
    #[error("{target} is denied by the rule {rule}")]
    Rule {
        /// The address or host.
        target: String,
        /// The rule.
        rule: String,
    },
    /// Loopback or this host.
    #[error("{0} is this host (loopback or one of its own addresses); the node is started without allowing loopback targets")]
    Loopback(IpAddr),
    /// A private range.
    #[error("{0} is in a private range; the node is started without allowing private targets")]
    Private(IpAddr),
}

impl Denied {
    /// A short stable label (metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Denied::NotUnicast(_) => "not_unicast",
            Denied::Metadata(_) => "metadata",
            Denied::Component(_) | Denied::ComponentHost(_) => "component",
            Denied::Rule { .. } => "rule",
            Denied::Loopback(_) => "loopback",
            Denied::Private(_) => "private",
        }
    }
}

/// The mesh's own endpoints, as far as a node knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Components {
    /// Ports of components bound on this host (any of its addresses).
    pub local_ports: BTreeSet<u16>,
    /// Components elsewhere, by address.
    pub remote: BTreeSet<SocketAddr>,
    /// Components known by host name (lower case, no trailing dot), with their port.
    pub hosts: BTreeSet<(String, u16)>,
}

impl Components {
    /// Adds a component at `addr`; `is_local` tells whether the address is this host's.
    pub fn add_addr(&mut self, addr: SocketAddr, is_local: bool) {
        if is_local || addr.ip().is_unspecified() {
            self.local_ports.insert(addr.port());
        } else {
            self.remote
                .insert(SocketAddr::new(canonical(addr.ip()), addr.port()));
        }
    }

    /// Adds a component known by name.
    pub fn add_host(&mut self, host: &str, port: u16) {
        self.hosts
            .insert((host.trim_end_matches('.').to_ascii_lowercase(), port));
    }

    /// Merges another set in.
    pub fn extend(&mut self, other: &Components) {
        self.local_ports.extend(other.local_ports.iter().copied());
        self.remote.extend(other.remote.iter().copied());
        self.hosts.extend(other.hosts.iter().cloned());
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

const METADATA_V4: [Ipv4Addr; 1] = [Ipv4Addr::new(100, 100, 100, 200)];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || METADATA_V6.contains(&v6),
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn is_not_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

impl EgressRules {
    /// The decision for a connection to `ip:port`, reached under the name `host` (when the
    /// URL named a host rather than an address). `is_local` tells whether `ip` is one of
    /// this host's own addresses (loopback addresses always are).
    pub fn check(
        &self,
        host: Option<&str>,
        ip: IpAddr,
        port: u16,
        is_local: bool,
        components: &Components,
    ) -> Result<(), Denied> {
        let ip = canonical(ip);
        if is_not_unicast(ip) {
            return Err(Denied::NotUnicast(ip));
        }
        if is_link_local(ip) {
            return Err(Denied::Metadata(ip));
        }
        let local = is_local || ip.is_loopback();
        if (local && components.local_ports.contains(&port))
            || components.remote.contains(&SocketAddr::new(ip, port))
        {
            return Err(Denied::Component(SocketAddr::new(ip, port)));
        }
        if let Some(h) = host {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if components.hosts.contains(&(h.clone(), port)) {
                return Err(Denied::ComponentHost(format!("{h}:{port}")));
            }
        }
        let rule_hit = |rules: &[TargetRule]| {
            rules
                .iter()
                .find(|r| r.matches_ip(ip) || host.is_some_and(|h| r.matches_host(h)))
                .cloned()
        };
        if let Some(rule) = rule_hit(&self.deny) {
            return Err(Denied::Rule {
                target: host.map_or_else(|| ip.to_string(), str::to_string),
                rule: rule.to_string(),
            });
        }
        if rule_hit(&self.allow).is_some() {
            return Ok(());
        }
        if local {
            return if self.allow_loopback {
                Ok(())
            } else {
                Err(Denied::Loopback(ip))
            };
        }
        if is_private(ip) && !self.allow_private {
            return Err(Denied::Private(ip));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rules(s: &str) -> Vec<TargetRule> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap())
            .collect()
    }

    #[test]
    fn metadata_and_non_unicast_are_never_allowed() {
        let r = EgressRules {
            allow_loopback: true,
            allow_private: true,
            allow: rules("0.0.0.0/0,::/0"),
            deny: vec![],
        };
        let c = Components::default();
        for a in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "100.100.100.200",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                matches!(
                    r.check(None, ip(a), 80, false, &c),
                    Err(Denied::Metadata(_))
                ),
                "{a}"
            );
        }
        for a in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"] {
            assert!(
                matches!(
                    r.check(None, ip(a), 80, false, &c),
                    Err(Denied::NotUnicast(_))
                ),
                "{a}"
            );
        }
    }

    #[test]
    fn components_are_denied_on_every_local_address_and_by_name() {
        let r = EgressRules {
            allow_loopback: true,
            allow_private: true,
            allow: rules("10.0.0.0/8"),
            deny: vec![],
        };
        let mut c = Components::default();
        c.add_addr("0.0.0.0:7700".parse().unwrap(), false);
        c.add_addr("127.0.0.1:2379".parse().unwrap(), true);
        c.add_addr("10.1.2.3:8080".parse().unwrap(), false);
        c.add_host("Proxy.EU.example.", 443);
        for (a, local) in [
            ("127.0.0.1", true),
            ("127.0.0.2", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.10", true),
        ] {
            assert!(
                matches!(
                    r.check(None, ip(a), 7700, local, &c),
                    Err(Denied::Component(_))
                ),
                "{a}"
            );
            assert!(r.check(None, ip(a), 2379, local, &c).is_err(), "{a}");
            assert!(r.check(None, ip(a), 9000, local, &c).is_ok(), "{a}");
        }
        assert!(matches!(
            r.check(None, ip("10.1.2.3"), 8080, false, &c),
            Err(Denied::Component(_))
        ));
        assert!(r.check(None, ip("10.1.2.3"), 8081, false, &c).is_ok());
        assert!(matches!(
            r.check(Some("proxy.eu.example"), ip("203.0.113.5"), 443, false, &c),
            Err(Denied::ComponentHost(_))
        ));
        assert!(r
            .check(Some("proxy.eu.example"), ip("203.0.113.5"), 8443, false, &c)
            .is_ok());
    }

    #[test]
    fn defaults_deny_loopback_and_private_and_allow_public() {
        let r = EgressRules::default();
        let c = Components::default();
        assert!(matches!(
            r.check(None, ip("127.0.0.1"), 9000, true, &c),
            Err(Denied::Loopback(_))
        ));
        assert!(matches!(
            r.check(None, ip("192.0.2.7"), 9000, true, &c),
            Err(Denied::Loopback(_))
        ));
        for a in [
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
        ] {
            assert!(
                matches!(r.check(None, ip(a), 80, false, &c), Err(Denied::Private(_))),
                "{a}"
            );
        }
        for a in ["172.32.0.1", "100.128.0.1", "203.0.113.9", "2001:db8::1"] {
            assert!(r.check(None, ip(a), 80, false, &c).is_ok(), "{a}");
        }
    }

    #[test]
    fn operator_rules_deny_before_allow_and_match_hosts() {
        let r = EgressRules {
            allow_loopback: false,
            allow_private: false,
            allow: rules("10.20.0.0/16,*.hooks.example"),
            deny: rules("10.20.30.0/24,bad.hooks.example"),
        };
        let c = Components::default();
        assert!(r.check(None, ip("10.20.1.1"), 80, false, &c).is_ok());
        assert!(matches!(
            r.check(None, ip("10.20.30.1"), 80, false, &c),
            Err(Denied::Rule { .. })
        ));
        assert!(r
            .check(Some("a.hooks.example"), ip("10.9.9.9"), 80, false, &c)
            .is_ok());
        assert!(r
            .check(Some("hooks.example"), ip("10.9.9.9"), 80, false, &c)
            .is_err());
        assert!(matches!(
            r.check(Some("BAD.hooks.example."), ip("203.0.113.1"), 80, false, &c),
            Err(Denied::Rule { .. })
        ));
        assert!(r.check(None, ip("203.0.113.1"), 80, false, &c).is_ok());
    }

    #[test]
    fn rules_parse_and_refuse_garbage() {
        assert_eq!(
            "10.1.2.3/8".parse::<TargetRule>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<TargetRule>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!("::1".parse::<TargetRule>().unwrap().to_string(), "::1/128");
        assert_eq!(
            "*.Example.COM".parse::<TargetRule>().unwrap().to_string(),
            "*.example.com"
        );
        for bad in ["", "*.", "a..b", "-a.com", "10.0.0.0/33", "http://x", "a b"] {
            assert!(bad.parse::<TargetRule>().is_err(), "{bad:?}");
        }
    }
}
