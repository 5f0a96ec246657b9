//! The validated topology: [`Topology`] and the value types it is made of (cluster names,
//! clusters, bridge addresses, links, topic patterns, replication policies), plus the
//! replication decision [`Topology::may_receive`] and the canonical [`Topology::digest`].
//!
//! A `Topology` only exists validated: it is built by `Topology::parse` (parse.rs) and is
//! immutable afterwards.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::error::{LoadError, SyntaxError, TopologyErrors};

/// Largest link cost accepted (100 s of RTT in ms: anything above is a mistake).
pub const MAX_COST: u32 = 100_000;

/// A cluster name: 1..=63 of `a-z 0-9 -`, starting with a letter or digit, not ending with
/// `-` (a DNS label, because it goes into certificate SANs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    /// Checks the name syntax.
    pub fn new(name: &str) -> Result<Self, SyntaxError> {
        check_label(name)?;
        Ok(ClusterName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the DNS-label syntax shared by mesh and cluster names; the reason on failure.
pub(crate) fn check_label(name: &str) -> Result<(), SyntaxError> {
    if name.is_empty() {
        return Err(SyntaxError::EmptyName);
    }
    if name.len() > 63 {
        return Err(SyntaxError::NameTooLong(name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(SyntaxError::NameCharacter(c));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(SyntaxError::NameDash);
    }
    Ok(())
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl Borrow<str> for ClusterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A bridge address `host:port` (UDP/QUIC). The host is an IPv4 address, an IPv6 address in
/// brackets, or a hostname; it is not resolved here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeAddr {
    /// Host as written (IPv6 without the brackets).
    pub host: String,
    /// UDP port, 1..=65535.
    pub port: u16,
}

impl fmt::Display for BridgeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One cluster of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: ClusterName,
    /// Free text, e.g. `eu-west-1`.
    pub region: String,
    /// Free text, e.g. `aws`.
    pub cloud: String,
    /// Where its federation bridge listens (QUIC).
    pub bridge: BridgeAddr,
    /// Public address of its proxy tier (absolute http/https URL, normalized).
    pub proxy: url::Url,
}

/// An undirected link between two clusters; `a < b` always.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub a: ClusterName,
    pub b: ClusterName,
    /// Expected round-trip time in ms (the routing weight), 1..=[`MAX_COST`].
    pub cost: u32,
}

impl Link {
    /// The normalized key `(min, max)` of the pair.
    pub fn key(&self) -> (ClusterName, ClusterName) {
        (self.a.clone(), self.b.clone())
    }

    /// The other end, if `c` is one end.
    pub fn other(&self, c: &str) -> Option<&ClusterName> {
        if self.a.as_str() == c {
            Some(&self.b)
        } else if self.b.as_str() == c {
            Some(&self.a)
        } else {
            None
        }
    }
}

/// Normalizes an unordered pair to `(min, max)`.
pub fn link_key(x: &ClusterName, y: &ClusterName) -> (ClusterName, ClusterName) {
    if x <= y {
        (x.clone(), y.clone())
    } else {
        (y.clone(), x.clone())
    }
}

/// Which topics a policy covers.
///
/// Syntax: `*` (every topic); `PREFIX.*` (every topic whose name starts with `PREFIX.`,
/// i.e. at least one more segment; `PREFIX` itself is not matched); otherwise an exact topic
/// name (1..=200 of `A-Z a-z 0-9 . _ -`, not starting with `.`). `*` appears nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopicPattern {
    /// `*`
    All,
    /// `PREFIX.*`; holds `PREFIX.` (with the dot).
    Prefix(String),
    /// An exact topic name.
    Exact(String),
}

impl TopicPattern {
    /// Parses the pattern syntax; the reason on failure.
    pub fn parse(s: &str) -> Result<Self, SyntaxError> {
        if s == "*" {
            return Ok(TopicPattern::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            if prefix.contains('*') {
                return Err(SyntaxError::PatternStar);
            }
            if prefix.is_empty() {
                return Err(SyntaxError::PatternEmptyPrefix);
            }
            if prefix.ends_with('.') {
                return Err(SyntaxError::PatternPrefixDot);
            }
            meshd_core::api::check_name("topic", prefix)
                .map_err(|e| SyntaxError::TopicName(e.message))?;
            return Ok(TopicPattern::Prefix(format!("{prefix}.")));
        }
        if s.contains('*') {
            return Err(SyntaxError::PatternStar);
        }
        meshd_core::api::check_name("topic", s).map_err(|e| SyntaxError::TopicName(e.message))?;
        Ok(TopicPattern::Exact(s.to_string()))
    }

    /// Does the topic fall under this pattern?
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::All => true,
            TopicPattern::Prefix(p) => topic.len() > p.len() && topic.starts_with(p.as_str()),
            TopicPattern::Exact(t) => topic == t,
        }
    }

    /// Higher is more specific: exact > longer prefix > shorter prefix > `*`.
    fn specificity(&self) -> (u8, usize) {
        match self {
            TopicPattern::All => (0, 0),
            TopicPattern::Prefix(p) => (1, p.len()),
            TopicPattern::Exact(t) => (2, t.len()),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicPattern::All => f.write_str("*"),
            TopicPattern::Prefix(p) => write!(f, "{p}*"),
            TopicPattern::Exact(t) => f.write_str(t),
        }
    }
}

/// A replication policy: topics matching `topics` may be received only by `clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub topics: TopicPattern,
    /// The clusters allowed to receive matching topics (empty: none besides the origin).
    pub clusters: BTreeSet<ClusterName>,
}

/// A validated, immutable mesh topology. Build it with [`Topology::parse`] or
/// [`Topology::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub(crate) mesh: String,
    pub(crate) clusters: BTreeMap<ClusterName, Cluster>,
    /// Keyed by the normalized pair.
    pub(crate) links: BTreeMap<(ClusterName, ClusterName), Link>,
    /// Sorted by pattern.
    pub(crate) policies: BTreeMap<TopicPattern, Policy>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: impl AsRef<Path>) -> Result<Topology, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Topology::parse(&text).map_err(|errors: TopologyErrors| LoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// The mesh name.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// Clusters, sorted by name.
    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values()
    }

    /// One cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    /// How many clusters.
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }

    /// Links, sorted by (a, b).
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    /// The link between two clusters (either order).
    pub fn link(&self, x: &ClusterName, y: &ClusterName) -> Option<&Link> {
        self.links.get(&link_key(x, y))
    }

    /// How many links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The clusters directly linked to `c`, with the link cost, sorted by name.
    pub fn neighbors(&self, c: &str) -> Vec<(&ClusterName, u32)> {
        let mut out: Vec<_> = self
            .links
            .values()
            .filter_map(|l| l.other(c).map(|o| (o, l.cost)))
            .collect();
        out.sort();
        out
    }

    /// Policies, sorted by pattern.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// The policy that governs `topic`: the most specific matching one (exact name, then the
    /// longest `prefix.*`, then `*`), or `None` when no policy matches.
    pub fn policy_for(&self, topic: &str) -> Option<&Policy> {
        self.policies
            .values()
            .filter(|p| p.topics.matches(topic))
            .max_by_key(|p| p.topics.specificity())
    }

    /// May `cluster` receive (store and deliver) events of `topic` by replication? With no
    /// matching policy: yes (wherever there is interest). With one: only the clusters it
    /// lists. Unknown clusters: no.
    pub fn may_receive(&self, topic: &str, cluster: &str) -> bool {
        if !self.clusters.contains_key(cluster) {
            return false;
        }
        match self.policy_for(topic) {
            None => true,
            Some(p) => p.clusters.contains(cluster),
        }
    }

    /// SHA-256 (lowercase hex) of the canonical content: mesh name, clusters sorted by name
    /// with every field, links sorted by their normalized pair with cost, policies sorted by
    /// pattern with their sorted clusters. Each string is written as its byte length
    /// (u64 little-endian) then its bytes, so no two contents share an encoding. The order
    /// of entries in the file, comments and formatting do not change it.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        put("meshd-topology/1");
        put("mesh");
        put(&self.mesh);
        put("clusters");
        put(&self.clusters.len().to_string());
        for c in self.clusters.values() {
            put(c.name.as_str());
            put(&c.region);
            put(&c.cloud);
            put(&c.bridge.to_string());
            put(c.proxy.as_str());
        }
        put("links");
        put(&self.links.len().to_string());
        for l in self.links.values() {
            put(l.a.as_str());
            put(l.b.as_str());
            put(&l.cost.to_string());
        }
        put("policies");
        put(&self.policies.len().to_string());
        for p in self.policies.values() {
            put(&p.topics.to_string());
            put(&p.clusters.len().to_string());
            for c in &p.clusters {
                put(c.as_str());
            }
        }
        let out = h.finalize();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_syntax() {
        assert_eq!(TopicPattern::parse("*"), Ok(TopicPattern::All));
        assert_eq!(
            TopicPattern::parse("orders.*"),
            Ok(TopicPattern::Prefix("orders.".into()))
        );
        assert_eq!(
            TopicPattern::parse("orders.eu"),
            Ok(TopicPattern::Exact("orders.eu".into()))
        );
        for bad in [
            "",
            "or*ders",
            "*.orders",
            "orders.*.x",
            ".*",
            "a..*",
            ".orders",
            "a b",
            "orders*",
        ] {
            assert!(
                TopicPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn pattern_matching() {
        let p = TopicPattern::parse("orders.*").unwrap();
        assert!(p.matches("orders.eu"));
        assert!(p.matches("orders.eu.paid"));
        assert!(!p.matches("orders"));
        assert!(!p.matches("orders."));
        assert!(!p.matches("ordersx.eu"));
        assert!(TopicPattern::All.matches("anything"));
        let e = TopicPattern::parse("orders").unwrap();
        assert!(e.matches("orders"));
        assert!(!e.matches("orders.eu"));
    }

    #[test]
    fn cluster_names() {
        assert!(ClusterName::new("eu-west-1").is_ok());
        for bad in ["", "EU", "eu_west", "-eu", "eu-", &"a".repeat(64)] {
            assert!(ClusterName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bridge_addr_display_brackets_ipv6() {
        let a = BridgeAddr {
            host: "::1".into(),
            port: 7443,
        };
        assert_eq!(a.to_string(), "[::1]:7443");
    }
}
