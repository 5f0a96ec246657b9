//! Errors of the topology file: one [`TopologyError`] per problem found, each with the
//! position (line, column, byte span) in the file, gathered in [`TopologyErrors`] so that a
//! check reports every problem at once. [`LoadError`] adds the file-reading failure.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a name, topic pattern, bridge address or proxy URL of the file is invalid (the
/// `reason` of the matching [`TopologyErrorKind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyntaxError {
    /// An empty name.
    #[error("it must not be empty")]
    EmptyName,
    /// A name over 63 characters.
    #[error("it has {0} characters, at most 63")]
    NameTooLong(usize),
    /// A character outside a DNS label.
    #[error("character {0:?} is not allowed: use a-z 0-9 and - (a DNS label)")]
    NameCharacter(char),
    /// A name starting or ending with `-`.
    #[error("it must not start or end with -")]
    NameDash,
    /// `*` elsewhere than the whole pattern or the last segment.
    #[error("`*` may only be the whole pattern or the last segment after a dot, as in `orders.*`")]
    PatternStar,
    /// `.*` with nothing before it.
    #[error("the prefix before `.*` is empty (use `*` for every topic)")]
    PatternEmptyPrefix,
    /// `a..*`.
    #[error("the prefix must not end with a dot before `.*`")]
    PatternPrefixDot,
    /// The topic (or prefix) is not a valid topic name.
    #[error("{0}")]
    TopicName(String),
    /// An empty bridge address.
    #[error("it is empty; write host:port, e.g. bridge.eu.example.com:7443")]
    EmptyAddress,
    /// Whitespace in a bridge address.
    #[error("it contains whitespace")]
    AddressWhitespace,
    /// `quic://host:port`.
    #[error("write host:port without a scheme (the bridge speaks QUIC over UDP)")]
    AddressScheme,
    /// `[2001:db8::1`.
    #[error("missing `]` after the IPv6 address")]
    MissingBracket,
    /// Not an IPv6 address between the brackets.
    #[error("{0:?} is not an IPv6 address")]
    NotIpv6(String),
    /// No `:port`.
    #[error("missing :port (write host:port)")]
    MissingPort,
    /// An IPv6 address without brackets.
    #[error("an IPv6 address needs brackets, as in [2001:db8::1]:7443")]
    Ipv6Brackets,
    /// A port outside 1..=65535.
    #[error("port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    /// An empty host.
    #[error("the host is empty")]
    EmptyHost,
    /// Digits and dots that are not an IPv4 address.
    #[error("{0:?} is not an IPv4 address")]
    NotIpv4(String),
    /// A hostname over 253 characters.
    #[error("the hostname is longer than 253 characters")]
    HostTooLong,
    /// A hostname label outside the syntax.
    #[error("{0:?} is not a valid hostname (labels of 1 to 63 of A-Z a-z 0-9 -, not starting or ending with -)")]
    BadHostname(String),
    /// A proxy URL that does not parse.
    #[error("{0} (write e.g. https://events.eu.example.com)")]
    Url(url::ParseError),
    /// A proxy URL with another scheme.
    #[error("scheme {0:?} is not http or https")]
    UrlScheme(String),
    /// A proxy URL without a host.
    #[error("it has no host")]
    UrlHost,
    /// `https://user:pw@...`.
    #[error("credentials do not belong in the topology file")]
    UrlCredentials,
    /// `?...` or `#...`.
    #[error("a proxy address takes no query or fragment")]
    UrlQuery,
}

/// What is wrong, without the position. The `Display` text is the message a user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// The text is not valid TOML.
    #[error("TOML syntax error: {message}")]
    Syntax { message: String },
    /// A key the format does not define (typo or misplaced field).
    #[error("unknown field `{field}` in {section}; expected one of: {expected}")]
    UnknownField {
        section: String,
        field: String,
        expected: String,
    },
    /// A required field is absent.
    #[error("missing field `{field}` in {section}")]
    MissingField { section: String, field: String },
    /// A value of the wrong TOML type, or a shape serde refused.
    #[error("{section}: {message}")]
    InvalidValue { section: String, message: String },
    /// The mesh name is empty or uses characters outside the name syntax.
    #[error("mesh name {name:?} is invalid: {reason}")]
    BadMeshName { name: String, reason: SyntaxError },
    /// `[mesh]` is absent.
    #[error("missing [mesh] table (it holds the mesh name: [mesh] name = \"...\")")]
    MissingMesh,
    /// No `[[cluster]]` at all.
    #[error("the mesh has no clusters: add at least one [[cluster]]")]
    NoClusters,
    /// A cluster name outside the name syntax.
    #[error("cluster name {name:?} is invalid: {reason}")]
    BadClusterName { name: String, reason: SyntaxError },
    /// Two clusters share a name.
    #[error("duplicate cluster name {name:?} (first defined on line {first_line})")]
    DuplicateCluster { name: String, first_line: usize },
    /// `region` or `cloud` is empty.
    #[error("cluster {cluster:?}: `{field}` must not be empty")]
    EmptyField { cluster: String, field: String },
    /// The bridge address is not `host:port`.
    #[error("cluster {cluster:?}: bad bridge address {address:?}: {reason}")]
    BadBridgeAddress {
        cluster: String,
        address: String,
        reason: SyntaxError,
    },
    /// Two clusters declare the same bridge address.
    #[error(
        "cluster {cluster:?}: bridge address {address:?} is already used by cluster {other:?}"
    )]
    DuplicateBridgeAddress {
        cluster: String,
        address: String,
        other: String,
    },
    /// The proxy address is not an absolute http(s) URL.
    #[error("cluster {cluster:?}: bad proxy URL {url:?}: {reason}")]
    BadProxyUrl {
        cluster: String,
        url: String,
        reason: SyntaxError,
    },
    /// `between` does not hold exactly two cluster names.
    #[error("link `between` must name exactly two clusters, found {count}")]
    LinkArity { count: usize },
    /// A link names a cluster that no `[[cluster]]` defines.
    #[error("link names unknown cluster {name:?}{hint}")]
    LinkUnknownCluster { name: String, hint: String },
    /// A link joins a cluster to itself.
    #[error("link joins cluster {name:?} to itself")]
    SelfLink { name: String },
    /// Two links join the same pair of clusters (in either order).
    #[error("duplicate link between {a:?} and {b:?} (first declared on line {first_line})")]
    DuplicateLink {
        a: String,
        b: String,
        first_line: usize,
    },
    /// Cost outside `1..=MAX_COST`.
    #[error("link cost {cost} is out of range: use an integer from 1 to {max} (expected round-trip time in ms)")]
    BadCost { cost: i64, max: u32 },
    /// Some clusters cannot reach the others over the declared links.
    #[error("the mesh is not connected: {cut_off} cannot reach {rest} over the declared links")]
    Disconnected { cut_off: String, rest: String },
    /// A policy's topic pattern is malformed.
    #[error("bad topic pattern {pattern:?}: {reason}")]
    BadTopicPattern {
        pattern: String,
        reason: SyntaxError,
    },
    /// Two policies with the same pattern.
    #[error(
        "duplicate policy for topic pattern {pattern:?} (first declared on line {first_line})"
    )]
    DuplicatePolicy { pattern: String, first_line: usize },
    /// A policy names a cluster that no `[[cluster]]` defines.
    #[error("policy for {pattern:?} names unknown cluster {name:?}{hint}")]
    PolicyUnknownCluster {
        pattern: String,
        name: String,
        hint: String,
    },
    /// A policy lists a cluster twice.
    #[error("policy for {pattern:?} lists cluster {name:?} twice")]
    PolicyDuplicateCluster { pattern: String, name: String },
}

/// One problem in a topology file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// 1-based line of the offending text (0 when the problem has no place in the file).
    pub line: usize,
    /// 1-based column, in characters (0 when unknown).
    pub column: usize,
    /// Byte range in the text, when known.
    pub span: Option<Range<usize>>,
    /// What is wrong.
    pub kind: TopologyErrorKind,
}

impl TopologyError {
    /// An error located at byte span `span` of `text`.
    pub(crate) fn at(text: &str, span: Option<Range<usize>>, kind: TopologyErrorKind) -> Self {
        let (line, column) = match &span {
            Some(s) => line_col(text, s.start),
            None => (0, 0),
        };
        TopologyError {
            line,
            column,
            span,
            kind,
        }
    }

    /// The message, without position.
    pub fn message(&self) -> String {
        self.kind.to_string()
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.kind)
    }
}

impl std::error::Error for TopologyError {}

/// Every problem found in one topology file, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyErrors {
    errors: Vec<TopologyError>,
}

impl TopologyErrors {
    pub(crate) fn new(mut errors: Vec<TopologyError>) -> Self {
        // File order; the sort is stable so errors at one place keep their discovery order.
        errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        TopologyErrors { errors }
    }

    /// The errors, in file order (errors without a position last).
    pub fn errors(&self) -> &[TopologyError] {
        &self.errors
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// One line per error, `PREFIX:LINE:COL: message` (the way compilers print them).
    pub fn render(&self, prefix: &str) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("{prefix}:{e}\n"));
        }
        out
    }
}

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the topology", self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyErrors {}

/// `Topology::load` failed: the file could not be read, or it is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("reading topology file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("topology file {}: {errors}", path.display())]
    Invalid {
        path: PathBuf,
        errors: TopologyErrors,
    },
}

/// 1-based (line, column) of byte `offset` in `text`; column counts characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters() {
        let t = "ab\ncdé\nfg";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 1), (1, 2));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4)); // after "cdé" (é is 2 bytes)
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 100), (3, 3));
        assert_eq!(line_col(t, 6), (2, 3)); // inside é: snaps back to its start
    }
}
