//! Parsing and validation of the topology file: TOML text → [`Topology`], or every problem
//! found, each with its position.
//!
//! How: the text is parsed by `toml`'s spanned document parser with error recovery (all
//! syntax errors at once). The document is then walked field by field against the schema
//! below (the list of allowed keys per table plays the part of serde's
//! `deny_unknown_fields`, but reports every unknown key instead of stopping at the first),
//! so every type error, missing field and semantic problem (duplicates, unknown clusters,
//! addresses, costs, connectivity, patterns) is collected with the span of the value at
//! fault. Only a document without any problem becomes a `Topology`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{SyntaxError, TopologyError, TopologyErrorKind as K, TopologyErrors};
use crate::model::{
    check_label, link_key, BridgeAddr, Cluster, ClusterName, Link, Policy, TopicPattern, Topology,
    MAX_COST,
};

const TOP_FIELDS: &[&str] = &["mesh", "cluster", "link", "policy"];
const MESH_FIELDS: &[&str] = &["name"];
const CLUSTER_FIELDS: &[&str] = &["name", "region", "cloud", "bridge", "proxy"];
const LINK_FIELDS: &[&str] = &["between", "cost"];
const POLICY_FIELDS: &[&str] = &["topics", "clusters"];

type Span = Range<usize>;

impl Topology {
    /// Parses and validates a topology file's text. On failure, every problem found, in
    /// file order, each with line and column.
    pub fn parse(text: &str) -> Result<Topology, TopologyErrors> {
        let mut cx = Cx {
            text,
            newlines: text.match_indices('\n').map(|(i, _)| i).collect(),
            errors: Vec::new(),
        };
        let (doc, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            for e in syntax {
                let kind = K::Syntax {
                    message: e.message().trim().to_string(),
                };
                cx.errors.push(TopologyError::at(text, e.span(), kind));
            }
            return Err(TopologyErrors::new(cx.errors));
        }
        let doc_span = doc.span();
        let doc = doc.into_inner();
        let built = cx.document(&doc, doc_span);
        match built {
            Some(t) if cx.errors.is_empty() => Ok(t),
            _ => Err(TopologyErrors::new(cx.errors)),
        }
    }
}

/// A cluster as read, before cross-checks.
struct RawCluster {
    name: (String, Span),
    region: Option<String>,
    cloud: Option<String>,
    bridge: Option<(BridgeAddr, Span)>,
    proxy: Option<url::Url>,
}

/// Validation context: the text (for positions) and the problems found so far.
struct Cx<'t> {
    text: &'t str,
    /// Byte offsets of every `\n`, to turn offsets into lines without rescanning.
    newlines: Vec<usize>,
    errors: Vec<TopologyError>,
}

impl Cx<'_> {
    fn err(&mut self, span: Span, kind: K) {
        self.errors
            .push(TopologyError::at(self.text, Some(span), kind));
    }

    /// 1-based line of the span's start.
    fn line(&self, span: &Span) -> usize {
        self.newlines.partition_point(|&nl| nl < span.start) + 1
    }

    /// The whole document. `None` when something is missing; problems go to `self.errors`.
    fn document(&mut self, doc: &DeTable<'_>, doc_span: Span) -> Option<Topology> {
        self.check_keys(doc, "the top level", TOP_FIELDS);

        // [mesh]
        let mesh = match get(doc, "mesh") {
            None => {
                self.errors.push(TopologyError::at(
                    self.text,
                    Some(doc_span.start..doc_span.start),
                    K::MissingMesh,
                ));
                None
            }
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => self.mesh(t, v.span()),
                other => {
                    self.err(
                        v.span(),
                        K::InvalidValue {
                            section: "mesh".into(),
                            message: format!(
                                "`mesh` must be a table ([mesh] name = \"...\"), found {}",
                                other.type_str()
                            ),
                        },
                    );
                    None
                }
            },
        };

        // [[cluster]]
        let before = self.errors.len();
        let cluster_tables = self.array_of_tables(doc, "cluster");
        // No clusters at all (absent or `cluster = []`), unless the shape was wrong.
        if cluster_tables.is_empty() && self.errors.len() == before {
            self.err(doc_span.start..doc_span.start, K::NoClusters);
        }
        let mut raw_clusters: Vec<RawCluster> = Vec::new();
        for (i, (t, span)) in cluster_tables.iter().enumerate() {
            if let Some(c) = self.cluster(t, span.clone(), i + 1) {
                raw_clusters.push(c);
            }
        }
        // Duplicate names and bridge addresses; `names` is every name seen (even malformed),
        // so references to it are not reported twice.
        let mut names: HashMap<String, Span> = HashMap::new();
        let mut bridges: HashMap<(String, u16), String> = HashMap::new();
        let mut clusters: BTreeMap<ClusterName, Cluster> = BTreeMap::new();
        let mut order: Vec<(String, Span)> = Vec::new();
        for c in &raw_clusters {
            let (name, span) = &c.name;
            if let Some(first) = names.get(name) {
                let first_line = self.line(first);
                self.err(
                    span.clone(),
                    K::DuplicateCluster {
                        name: name.clone(),
                        first_line,
                    },
                );
                continue;
            }
            names.insert(name.clone(), span.clone());
            order.push((name.clone(), span.clone()));
            if let Some((b, bspan)) = &c.bridge {
                let key = (b.host.to_ascii_lowercase(), b.port);
                if let Some(other) = bridges.get(&key) {
                    let other = other.clone();
                    self.err(
                        bspan.clone(),
                        K::DuplicateBridgeAddress {
                            cluster: name.clone(),
                            address: b.to_string(),
                            other,
                        },
                    );
                } else {
                    bridges.insert(key, name.clone());
                }
            }
            if let (Ok(cn), Some(region), Some(cloud), Some((bridge, _)), Some(proxy)) = (
                ClusterName::new(name),
                &c.region,
                &c.cloud,
                &c.bridge,
                &c.proxy,
            ) {
                clusters.insert(
                    cn.clone(),
                    Cluster {
                        name: cn,
                        region: region.clone(),
                        cloud: cloud.clone(),
                        bridge: bridge.clone(),
                        proxy: proxy.clone(),
                    },
                );
            }
        }

        // [[link]]
        let link_tables = self.array_of_tables(doc, "link");
        let mut links: BTreeMap<(ClusterName, ClusterName), Link> = BTreeMap::new();
        let mut seen_pairs: HashMap<(String, String), Span> = HashMap::new();
        // Edges for the connectivity check: pairs of known, distinct names.
        let mut edges: Vec<(String, String)> = Vec::new();
        for (t, span) in &link_tables {
            self.link(
                t,
                span.clone(),
                &names,
                &mut seen_pairs,
                &mut edges,
                &mut links,
            );
        }
        self.connectivity(&order, &edges);

        // [[policy]]
        let policy_tables = self.array_of_tables(doc, "policy");
        let mut policies: BTreeMap<TopicPattern, Policy> = BTreeMap::new();
        let mut seen_patterns: HashMap<TopicPattern, Span> = HashMap::new();
        for (t, span) in &policy_tables {
            self.policy(t, span.clone(), &names, &mut seen_patterns, &mut policies);
        }

        let mesh = mesh?;
        Some(Topology {
            mesh,
            clusters,
            links,
            policies,
        })
    }

    fn mesh(&mut self, t: &DeTable<'_>, span: Span) -> Option<String> {
        self.check_keys(t, "[mesh]", MESH_FIELDS);
        let (name, nspan) = self.req_str(t, &span, "[mesh]", "name")?;
        if let Err(reason) = check_label(&name) {
            self.err(nspan, K::BadMeshName { name, reason });
            return None;
        }
        Some(name)
    }

    /// The tables of `[[key]]`; problems reported for anything else under `key`.
    fn array_of_tables<'a, 'i>(
        &mut self,
        doc: &'a DeTable<'i>,
        key: &str,
    ) -> Vec<(&'a DeTable<'i>, Span)> {
        let Some(v) = get(doc, key) else {
            return Vec::new();
        };
        let shape = format!("`{key}` must be an array of tables: write each one as [[{key}]]");
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => out.push((t, item.span())),
                        other => self.err(
                            item.span(),
                            K::InvalidValue {
                                section: key.into(),
                                message: format!(
                                    "{shape}, found an array holding a {}",
                                    other.type_str()
                                ),
                            },
                        ),
                    }
                }
                out
            }
            other => {
                self.err(
                    v.span(),
                    K::InvalidValue {
                        section: key.into(),
                        message: format!("{shape}, found a {}", other.type_str()),
                    },
                );
                Vec::new()
            }
        }
    }

    fn cluster(&mut self, t: &DeTable<'_>, span: Span, index: usize) -> Option<RawCluster> {
        let anon = format!("[[cluster]] #{index}");
        let name = self.req_str(t, &span, &anon, "name");
        let section = match &name {
            Some((n, _)) => format!("cluster {n:?}"),
            None => anon,
        };
        self.check_keys(t, &section, CLUSTER_FIELDS);
        let label = name.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
        if let Some((n, nspan)) = &name {
            if let Err(reason) = check_label(n) {
                self.err(
                    nspan.clone(),
                    K::BadClusterName {
                        name: n.clone(),
                        reason,
                    },
                );
            }
        }
        let text_field = |cx: &mut Self, field: &str| -> Option<String> {
            let (v, vspan) = cx.req_str(t, &span, &section, field)?;
            if v.trim().is_empty() {
                cx.err(
                    vspan,
                    K::EmptyField {
                        cluster: label.clone(),
                        field: field.into(),
                    },
                );
                return None;
            }
            Some(v)
        };
        let region = text_field(self, "region");
        let cloud = text_field(self, "cloud");
        let bridge = match self.req_str(t, &span, &section, "bridge") {
            Some((b, bspan)) => match parse_bridge(&b) {
                Ok(addr) => Some((addr, bspan)),
                Err(reason) => {
                    self.err(
                        bspan,
                        K::BadBridgeAddress {
                            cluster: label.clone(),
                            address: b,
                            reason,
                        },
                    );
                    None
                }
            },
            None => None,
        };
        let proxy = match self.req_str(t, &span, &section, "proxy") {
            Some((p, pspan)) => match parse_proxy(&p) {
                Ok(u) => Some(u),
                Err(reason) => {
                    self.err(
                        pspan,
                        K::BadProxyUrl {
                            cluster: label.clone(),
                            url: p,
                            reason,
                        },
                    );
                    None
                }
            },
            None => None,
        };
        let name = name?;
        Some(RawCluster {
            name,
            region,
            cloud,
            bridge,
            proxy,
        })
    }

    fn link(
        &mut self,
        t: &DeTable<'_>,
        span: Span,
        names: &HashMap<String, Span>,
        seen: &mut HashMap<(String, String), Span>,
        edges: &mut Vec<(String, String)>,
        links: &mut BTreeMap<(ClusterName, ClusterName), Link>,
    ) {
        let section = format!("[[link]] on line {}", self.line(&span));
        self.check_keys(t, &section, LINK_FIELDS);
        let between = self.req_str_array(t, &span, &section, "between");
        let cost = match self.req_int(t, &span, &section, "cost") {
            Some((c, cspan)) => {
                if c < 1 || c > i64::from(MAX_COST) {
                    self.err(
                        cspan,
                        K::BadCost {
                            cost: c,
                            max: MAX_COST,
                        },
                    );
                    None
                } else {
                    u32::try_from(c).ok()
                }
            }
            None => None,
        };
        let Some((ends, bspan)) = between else {
            return;
        };
        if ends.len() != 2 {
            self.err(bspan, K::LinkArity { count: ends.len() });
            return;
        }
        let (x, xspan) = &ends[0];
        let (y, yspan) = &ends[1];
        let mut known = true;
        for (n, nspan) in [(x, xspan), (y, yspan)] {
            if !names.contains_key(n) {
                known = false;
                let hint = suggest(n, names.keys());
                self.err(
                    nspan.clone(),
                    K::LinkUnknownCluster {
                        name: n.clone(),
                        hint,
                    },
                );
            }
        }
        if x == y {
            self.err(bspan, K::SelfLink { name: x.clone() });
            return;
        }
        let pair = if x <= y {
            (x.clone(), y.clone())
        } else {
            (y.clone(), x.clone())
        };
        if let Some(first) = seen.get(&pair) {
            let first_line = self.line(first);
            self.err(
                bspan,
                K::DuplicateLink {
                    a: pair.0,
                    b: pair.1,
                    first_line,
                },
            );
            return;
        }
        seen.insert(pair.clone(), bspan);
        if !known {
            return;
        }
        edges.push(pair.clone());
        if let (Ok(a), Ok(b), Some(cost)) =
            (ClusterName::new(&pair.0), ClusterName::new(&pair.1), cost)
        {
            let key = link_key(&a, &b);
            links.insert(
                key.clone(),
                Link {
                    a: key.0,
                    b: key.1,
                    cost,
                },
            );
        }
    }

    /// Every cluster must reach every other. Reports each component cut off from the
    /// largest one (ties: the one holding the first cluster in the file), at its first
    /// cluster's name.
    fn connectivity(&mut self, order: &[(String, Span)], edges: &[(String, String)]) {
        if order.len() < 2 {
            return;
        }
        let index: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut parent: Vec<usize> = (0..order.len()).collect();
        fn find(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        for (a, b) in edges {
            if let (Some(&i), Some(&j)) = (index.get(a.as_str()), index.get(b.as_str())) {
                let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                if ri != rj {
                    parent[ri.max(rj)] = ri.min(rj);
                }
            }
        }
        // Components in order of their first cluster in the file.
        let mut comps: Vec<(usize, Vec<usize>)> = Vec::new();
        for i in 0..order.len() {
            let r = find(&mut parent, i);
            match comps.iter_mut().find(|(root, _)| *root == r) {
                Some((_, members)) => members.push(i),
                None => comps.push((r, vec![i])),
            }
        }
        if comps.len() < 2 {
            return;
        }
        let main = comps
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| a.1.len().cmp(&b.1.len()).then(ib.cmp(ia)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let describe = |members: &[usize]| -> String {
            let mut names: Vec<&str> = members.iter().map(|&i| order[i].0.as_str()).collect();
            names.sort_unstable();
            let list = names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() == 1 {
                format!("cluster {list}")
            } else {
                format!("clusters {list}")
            }
        };
        let rest = describe(&comps[main].1);
        for (i, (_, members)) in comps.iter().enumerate() {
            if i == main {
                continue;
            }
            let span = order[members[0]].1.clone();
            self.err(
                span,
                K::Disconnected {
                    cut_off: describe(members),
                    rest: rest.clone(),
                },
            );
        }
    }

    fn policy(
        &mut self,
        t: &DeTable<'_>,
        span: Span,
        names: &HashMap<String, Span>,
        seen: &mut HashMap<TopicPattern, Span>,
        policies: &mut BTreeMap<TopicPattern, Policy>,
    ) {
        let section = format!("[[policy]] on line {}", self.line(&span));
        self.check_keys(t, &section, POLICY_FIELDS);
        let topics = self.req_str(t, &span, &section, "topics");
        let clusters = self.req_str_array(t, &span, &section, "clusters");
        let mut pattern_ok = None;
        let shown = topics.as_ref().map(|(p, _)| p.clone()).unwrap_or_default();
        if let Some((p, pspan)) = &topics {
            match TopicPattern::parse(p) {
                Err(reason) => self.err(
                    pspan.clone(),
                    K::BadTopicPattern {
                        pattern: p.clone(),
                        reason,
                    },
                ),
                Ok(pat) => {
                    if let Some(first) = seen.get(&pat) {
                        let first_line = self.line(first);
                        self.err(
                            pspan.clone(),
                            K::DuplicatePolicy {
                                pattern: p.clone(),
                                first_line,
                            },
                        );
                    } else {
                        seen.insert(pat.clone(), pspan.clone());
                        pattern_ok = Some(pat);
                    }
                }
            }
        }
        let Some((list, _)) = clusters else {
            return;
        };
        let mut set = BTreeSet::new();
        let mut ok = true;
        for (n, nspan) in list {
            if !names.contains_key(&n) {
                ok = false;
                let hint = suggest(&n, names.keys());
                self.err(
                    nspan,
                    K::PolicyUnknownCluster {
                        pattern: shown.clone(),
                        name: n,
                        hint,
                    },
                );
                continue;
            }
            match ClusterName::new(&n) {
                Ok(c) => {
                    if !set.insert(c) {
                        ok = false;
                        self.err(
                            nspan,
                            K::PolicyDuplicateCluster {
                                pattern: shown.clone(),
                                name: n,
                            },
                        );
                    }
                }
                Err(_) => ok = false, // reported at the cluster's definition
            }
        }
        if let (Some(pat), true) = (pattern_ok, ok) {
            policies.insert(
                pat.clone(),
                Policy {
                    topics: pat,
                    clusters: set,
                },
            );
        }
    }

    // ---- field access -------------------------------------------------------------------

    /// Reports every key of `t` not in `allowed`.
    fn check_keys(&mut self, t: &DeTable<'_>, section: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            let key: &str = k.get_ref().as_ref();
            if !allowed.contains(&key) {
                self.err(
                    k.span(),
                    K::UnknownField {
                        section: section.into(),
                        field: key.into(),
                        expected: allowed.join(", "),
                    },
                );
            }
        }
    }

    /// A required value of `t`, or a `MissingField` at the table.
    fn req<'a, 'i>(
        &mut self,
        t: &'a DeTable<'i>,
        table_span: &Span,
        section: &str,
        key: &str,
    ) -> Option<&'a Spanned<DeValue<'i>>> {
        let v = get(t, key);
        if v.is_none() {
            self.err(
                table_span.clone(),
                K::MissingField {
                    section: section.into(),
                    field: key.into(),
                },
            );
        }
        v
    }

    fn wrong_type(&mut self, span: Span, section: &str, key: &str, want: &str, v: &DeValue<'_>) {
        self.err(
            span,
            K::InvalidValue {
                section: section.into(),
                message: format!("`{key}` must be {want}, found {}", v.type_str()),
            },
        );
    }

    fn req_str(
        &mut self,
        t: &DeTable<'_>,
        table_span: &Span,
        section: &str,
        key: &str,
    ) -> Option<(String, Span)> {
        let v = self.req(t, table_span, section, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                self.wrong_type(v.span(), section, key, "a string", other);
                None
            }
        }
    }

    fn req_int(
        &mut self,
        t: &DeTable<'_>,
        table_span: &Span,
        section: &str,
        key: &str,
    ) -> Option<(i64, Span)> {
        let v = self.req(t, table_span, section, key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some((n, v.span())),
                Err(_) => {
                    self.err(
                        v.span(),
                        K::InvalidValue {
                            section: section.into(),
                            message: format!("`{key}` is too large"),
                        },
                    );
                    None
                }
            },
            other => {
                self.wrong_type(v.span(), section, key, "an integer", other);
                None
            }
        }
    }

    fn req_str_array(
        &mut self,
        t: &DeTable<'_>,
        table_span: &Span,
        section: &str,
        key: &str,
    ) -> Option<(Vec<(String, Span)>, Span)> {
        let v = self.req(t, table_span, section, key)?;
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.to_string(), item.span())),
                        other => {
                            ok = false;
                            self.wrong_type(
                                item.span(),
                                section,
                                key,
                                "an array of strings",
                                other,
                            );
                        }
                    }
                }
                ok.then_some((out, v.span()))
            }
            other => {
                self.wrong_type(v.span(), section, key, "an array of strings", other);
                None
            }
        }
    }
}

/// The value under `key` in `t`.
fn get<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    t.iter()
        .find(|(k, _)| {
            let k: &str = k.get_ref().as_ref();
            k == key
        })
        .map(|(_, v)| v)
}

/// ` (did you mean "x"?)` when a known name is within edit distance 2 and differs in at
/// most a third of its characters, else empty.
fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let best = known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2 && d * 3 <= name.chars().count().max(k.chars().count()))
        .min();
    match best {
        Some((_, k)) => format!(" (did you mean {k:?}?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `host:port` with a hostname, an IPv4 address or a bracketed IPv6 address.
pub(crate) fn parse_bridge(s: &str) -> Result<BridgeAddr, SyntaxError> {
    if s.is_empty() {
        return Err(SyntaxError::EmptyAddress);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(SyntaxError::AddressWhitespace);
    }
    if s.contains("://") {
        return Err(SyntaxError::AddressScheme);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(SyntaxError::MissingBracket);
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(SyntaxError::NotIpv6(inside.to_string()));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(SyntaxError::MissingPort);
        };
        (inside.to_string(), port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(SyntaxError::MissingPort);
        };
        if host.contains(':') {
            return Err(SyntaxError::Ipv6Brackets);
        }
        check_host(host)?;
        (host.to_string(), port)
    };
    let port = match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => p as u16,
        _ => return Err(SyntaxError::BadPort(port.to_string())),
    };
    Ok(BridgeAddr { host, port })
}

fn check_host(host: &str) -> Result<(), SyntaxError> {
    if host.is_empty() {
        return Err(SyntaxError::EmptyHost);
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(SyntaxError::NotIpv4(host.to_string())),
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err(SyntaxError::HostTooLong);
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(SyntaxError::BadHostname(host.to_string()));
        }
    }
    Ok(())
}

/// An absolute `http`/`https` URL with a host, without credentials, query or fragment.
pub(crate) fn parse_proxy(s: &str) -> Result<url::Url, SyntaxError> {
    let u = url::Url::parse(s).map_err(SyntaxError::Url)?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(SyntaxError::UrlScheme(u.scheme().to_string()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(SyntaxError::UrlHost);
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(SyntaxError::UrlCredentials);
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(SyntaxError::UrlQuery);
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_addresses() {
        let ok = |s: &str| parse_bridge(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("bridge.eu.example.com:7443").port, 7443);
        assert_eq!(ok("10.0.0.1:1").host, "10.0.0.1");
        assert_eq!(ok("[::1]:65535").host, "::1");
        assert_eq!(ok("localhost:9").to_string(), "localhost:9");
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            ":7443",
            "::1:7443",
            "[::1]7443",
            "[nope]:1",
            "300.1.1.1:80",
            "-bad.example:80",
            "a..b:80",
            "quic://h:1",
            "h st:1",
            "under_score:1",
        ] {
            assert!(parse_bridge(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn proxy_urls() {
        assert!(parse_proxy("https://events.eu.example.com").is_ok());
        assert!(parse_proxy("http://127.0.0.1:8080/base").is_ok());
        for bad in [
            "events.example.com",
            "ftp://x",
            "https://u:p@x",
            "https://x/?q=1",
            "https://x/#f",
            "http://",
        ] {
            assert!(parse_proxy(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn edit_distance_and_hints() {
        assert_eq!(edit_distance("eu-west", "eu-wset"), 2);
        assert_eq!(edit_distance("abc", "abc"), 0);
        let known = ["eu-west".to_string(), "us-east".to_string()];
        assert_eq!(
            suggest("eu-wes", known.iter()),
            " (did you mean \"eu-west\"?)"
        );
        assert_eq!(suggest("ap-south", known.iter()), "");
    }
}
