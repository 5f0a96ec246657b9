//! The multi-pattern [`Matcher`]: every added pattern is split into conjunctions (one per
//! `$or` alternative) of leaf conditions, and every leaf predicate is registered in one
//! shared index per field path: hash maps for exact values and `equals-ignore-case`, byte
//! tries for prefixes and suffixes (case-sensitive and folded; wildcards are filed under
//! their literal prefix or suffix and re-checked), ordered maps for numeric bounds, a map
//! per CIDR prefix length. Matching walks only the event fields some pattern names, looks
//! each value up in its field's index, and sets one bit per satisfied leaf in a per-event
//! scratch table; a conjunction whose required bits are all set matches. When the walk
//! crossed an array, candidates are confirmed with the pattern's own evaluator so that
//! fields from different array elements never combine (array consistency).
//!
//! Cost of a match: proportional to the named fields in the event and the predicates hit,
//! not to the number of patterns (except `anything-but`, `exists: true` and wildcards with
//! no literal prefix or suffix, which are checked per predicate on their field, and
//! patterns made only of `exists: false`, which are candidates for every event).

use std::cell::RefCell;
use std::collections::BTreeMap;

use foldhash::HashMap;

use cloudevents::Event;
use serde_json::{Map, Value};

use super::ops::{fold_into, ip_bits, mask, Excl, Pred, Range, Scalar};
use super::scan::{Scanner, Sink};
use super::{EventRoot, Leaf, Pattern, Root, MAX_EVENT_ARRAY_DEPTH};

const NONE: u32 = u32::MAX;

/// One indexed predicate as stored in the index: where a hit goes, and whether the value
/// must still be checked against the predicate (wildcards, numeric ranges, anything-but).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hit {
    pid: u32,
    conj: u32,
    bit: u8,
    verify: bool,
}

type Hits = Vec<Hit>;

fn remove_hit(v: &mut Hits, pid: u32) {
    if let Some(i) = v.iter().position(|h| h.pid == pid) {
        v.swap_remove(i);
    }
}

/// Prefixes (or reversed suffixes) of one field: a byte trie, plus, while there are few
/// distinct key lengths, one hash map per length so that a lookup is one probe per length
/// instead of one pointer chase per byte.
#[derive(Debug, Clone, Default)]
struct Affixes {
    nodes: Vec<TrieNode>,
    by_len: HashMap<Vec<u8>, Hits>,
    /// Key length -> number of predicates with that length.
    lens: BTreeMap<usize, usize>,
}

/// Above this many distinct lengths the trie is walked instead of the per-length probes.
const MAX_PROBE_LENGTHS: usize = 12;

#[derive(Debug, Clone, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    hits: Hits,
}

impl Affixes {
    fn node_for(&mut self, key: &[u8]) -> usize {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut n = 0usize;
        for &b in key {
            let pos = self.nodes[n].children.binary_search_by_key(&b, |c| c.0);
            n = match pos {
                Ok(i) => self.nodes[n].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[n].children.insert(i, (b, id as u32));
                    id
                }
            };
        }
        n
    }

    fn insert(&mut self, key: Vec<u8>, hit: Hit) {
        let n = self.node_for(&key);
        self.nodes[n].hits.push(hit);
        *self.lens.entry(key.len()).or_default() += 1;
        self.by_len.entry(key).or_default().push(hit);
    }

    fn remove(&mut self, key: Vec<u8>, pid: u32) {
        if let Some(v) = self.by_len.get_mut(&key) {
            remove_hit(v, pid);
            if v.is_empty() {
                self.by_len.remove(&key);
            }
        }
        if let Some(c) = self.lens.get_mut(&key.len()) {
            *c -= 1;
            if *c == 0 {
                self.lens.remove(&key.len());
            }
        }
        if self.nodes.is_empty() {
            return;
        }
        let mut n = 0usize;
        for b in key {
            match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => n = self.nodes[n].children[i].1 as usize,
                Err(_) => return,
            }
        }
        remove_hit(&mut self.nodes[n].hits, pid);
    }

    /// Calls `f` with every hit whose key is a prefix of `s` (`s` already reversed for
    /// suffixes).
    fn walk(&self, s: &[u8], f: &mut dyn FnMut(Hit)) {
        if self.lens.is_empty() {
            return;
        }
        if self.lens.len() <= MAX_PROBE_LENGTHS {
            for &len in self.lens.keys() {
                if len > s.len() {
                    break;
                }
                if let Some(hits) = self.by_len.get(&s[..len]) {
                    hits.iter().for_each(|&h| f(h));
                }
            }
            return;
        }
        let Some(root) = self.nodes.first() else {
            return;
        };
        root.hits.iter().for_each(|&h| f(h));
        let mut n = root;
        for &b in s {
            match n.children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => {
                    n = &self.nodes[n.children[i].1 as usize];
                    n.hits.iter().for_each(|&h| f(h));
                }
                Err(_) => return,
            }
        }
    }

    fn bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<TrieNode>()
            + self
                .nodes
                .iter()
                .map(|n| n.children.capacity() * 8 + n.hits.capacity() * 12)
                .sum::<usize>()
            + self
                .by_len
                .iter()
                .map(|(k, v)| 56 + k.capacity() + v.capacity() * 12)
                .sum::<usize>()
    }
}

fn remove_from(v: &mut Vec<u32>, id: u32) {
    if let Some(i) = v.iter().position(|x| *x == id) {
        v.swap_remove(i);
    }
}

fn rev(s: &str) -> Vec<u8> {
    s.bytes().rev().collect()
}

/// Order-preserving map of an f64 onto u64.
fn ord(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

fn span_class(r: &Range) -> i32 {
    let span = r.hi - r.lo;
    if !span.is_finite() {
        return i32::MAX;
    }
    (span.log2().floor() as i32).clamp(-1100, 1100)
}

/// The index of one field path.
#[derive(Debug, Clone, Default)]
struct FieldIndex {
    exact_str: HashMap<String, Hits>,
    exact_num: HashMap<u64, Hits>,
    /// `true`, `false`, `null` exact values, in that order.
    exact_other: [Hits; 3],
    prefix: Affixes,
    suffix: Affixes,
    prefix_ic: Affixes,
    suffix_ic: Affixes,
    eq_ic: HashMap<String, Hits>,
    ic_count: usize,
    /// Predicates checked one by one: anything-but (other than value lists), exists, bare
    /// wildcards.
    scan: Hits,
    /// `anything-but` value lists: every value matches all of these except the predicates
    /// listed for it in `ab_str` / `ab_num`.
    ab_vals: Hits,
    ab_str: HashMap<String, Vec<u32>>,
    ab_num: HashMap<u64, Vec<u32>>,
    /// `>`/`>=` only: key is the lower bound.
    num_lo: BTreeMap<(u64, u32), Hit>,
    /// `<`/`<=` only: key is the upper bound.
    num_hi: BTreeMap<(u64, u32), Hit>,
    /// Two-sided ranges by log2 of their width, keyed by lower bound.
    num_two: BTreeMap<i32, BTreeMap<(u64, u32), Hit>>,
    cidr: HashMap<(bool, u8, u128), Hits>,
    cidr_lens: BTreeMap<(bool, u8), usize>,
}

fn pid_remove<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Vec<u32>>, k: &K, pid: u32) {
    if let Some(v) = m.get_mut(k) {
        remove_from(v, pid);
        if v.is_empty() {
            m.remove(k);
        }
    }
}

fn other_slot(s: &Scalar) -> Option<usize> {
    match s {
        Scalar::Bool(true) => Some(0),
        Scalar::Bool(false) => Some(1),
        Scalar::Null => Some(2),
        Scalar::Str(_) | Scalar::Num(_) => None,
    }
}

fn bucket_remove<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Hits>, k: &K, pid: u32) {
    if let Some(v) = m.get_mut(k) {
        remove_hit(v, pid);
        if v.is_empty() {
            m.remove(k);
        }
    }
}

impl FieldIndex {
    fn add(&mut self, h: Hit, pred: &Pred) {
        let exact = Hit { verify: false, ..h };
        let check = Hit { verify: true, ..h };
        match pred {
            Pred::Exact(Scalar::Str(s)) => self.exact_str.entry(s.clone()).or_default().push(exact),
            Pred::Exact(Scalar::Num(x)) => self.exact_num.entry(ord(*x)).or_default().push(exact),
            Pred::Exact(s) => {
                if let Some(i) = other_slot(s) {
                    self.exact_other[i].push(exact)
                }
            }
            Pred::Prefix(p) => self.prefix.insert(p.as_bytes().to_vec(), exact),
            Pred::Suffix(p) => self.suffix.insert(rev(p), exact),
            Pred::PrefixIc(p) => {
                self.ic_count += 1;
                self.prefix_ic.insert(p.as_bytes().to_vec(), exact)
            }
            Pred::SuffixIc(p) => {
                self.ic_count += 1;
                self.suffix_ic.insert(rev(p), exact)
            }
            Pred::EqIc(p) => {
                self.ic_count += 1;
                self.eq_ic.entry(p.clone()).or_default().push(exact)
            }
            Pred::Wildcard(w) => {
                if !w.literal_prefix().is_empty() {
                    self.prefix
                        .insert(w.literal_prefix().as_bytes().to_vec(), check)
                } else if !w.literal_suffix().is_empty() {
                    self.suffix.insert(rev(w.literal_suffix()), check)
                } else {
                    self.scan.push(check)
                }
            }
            Pred::Exists => self.scan.push(exact),
            Pred::AnythingBut(Excl::Values(vals)) => {
                self.ab_vals.push(exact);
                for v in vals {
                    match v {
                        Scalar::Str(s) => self.ab_str.entry(s.clone()).or_default().push(h.pid),
                        Scalar::Num(x) => self.ab_num.entry(ord(*x)).or_default().push(h.pid),
                        Scalar::Bool(_) | Scalar::Null => {}
                    }
                }
            }
            Pred::AnythingBut(_) => self.scan.push(check),
            Pred::Numeric(r) => {
                if r.lo == r.hi {
                    self.exact_num.entry(ord(r.lo)).or_default().push(exact);
                } else if r.hi == f64::INFINITY {
                    self.num_lo.insert((ord(r.lo), h.pid), check);
                } else if r.lo == f64::NEG_INFINITY {
                    self.num_hi.insert((ord(r.hi), h.pid), check);
                } else {
                    self.num_two
                        .entry(span_class(r))
                        .or_default()
                        .insert((ord(r.lo), h.pid), check);
                }
            }
            Pred::Cidr(c) => {
                self.cidr
                    .entry((c.v6, c.len, c.net))
                    .or_default()
                    .push(exact);
                *self.cidr_lens.entry((c.v6, c.len)).or_default() += 1;
            }
        }
    }

    fn remove(&mut self, pid: u32, pred: &Pred) {
        match pred {
            Pred::Exact(Scalar::Str(s)) => bucket_remove(&mut self.exact_str, s, pid),
            Pred::Exact(Scalar::Num(x)) => bucket_remove(&mut self.exact_num, &ord(*x), pid),
            Pred::Exact(s) => {
                if let Some(i) = other_slot(s) {
                    remove_hit(&mut self.exact_other[i], pid)
                }
            }
            Pred::Prefix(p) => self.prefix.remove(p.as_bytes().to_vec(), pid),
            Pred::Suffix(p) => self.suffix.remove(rev(p), pid),
            Pred::PrefixIc(p) => {
                self.ic_count -= 1;
                self.prefix_ic.remove(p.as_bytes().to_vec(), pid)
            }
            Pred::SuffixIc(p) => {
                self.ic_count -= 1;
                self.suffix_ic.remove(rev(p), pid)
            }
            Pred::EqIc(p) => {
                self.ic_count -= 1;
                bucket_remove(&mut self.eq_ic, p, pid)
            }
            Pred::Wildcard(w) => {
                if !w.literal_prefix().is_empty() {
                    self.prefix
                        .remove(w.literal_prefix().as_bytes().to_vec(), pid)
                } else if !w.literal_suffix().is_empty() {
                    self.suffix.remove(rev(w.literal_suffix()), pid)
                } else {
                    remove_hit(&mut self.scan, pid)
                }
            }
            Pred::AnythingBut(Excl::Values(vals)) => {
                remove_hit(&mut self.ab_vals, pid);
                for v in vals {
                    match v {
                        Scalar::Str(s) => pid_remove(&mut self.ab_str, s, pid),
                        Scalar::Num(x) => pid_remove(&mut self.ab_num, &ord(*x), pid),
                        Scalar::Bool(_) | Scalar::Null => {}
                    }
                }
            }
            Pred::AnythingBut(_) | Pred::Exists => remove_hit(&mut self.scan, pid),
            Pred::Numeric(r) => {
                if r.lo == r.hi {
                    bucket_remove(&mut self.exact_num, &ord(r.lo), pid)
                } else if r.hi == f64::INFINITY {
                    self.num_lo.remove(&(ord(r.lo), pid));
                } else if r.lo == f64::NEG_INFINITY {
                    self.num_hi.remove(&(ord(r.hi), pid));
                } else {
                    let c = span_class(r);
                    if let Some(m) = self.num_two.get_mut(&c) {
                        m.remove(&(ord(r.lo), pid));
                        if m.is_empty() {
                            self.num_two.remove(&c);
                        }
                    }
                }
            }
            Pred::Cidr(c) => {
                bucket_remove(&mut self.cidr, &(c.v6, c.len, c.net), pid);
                if let Some(n) = self.cidr_lens.get_mut(&(c.v6, c.len)) {
                    *n -= 1;
                    if *n == 0 {
                        self.cidr_lens.remove(&(c.v6, c.len));
                    }
                }
            }
        }
    }

    /// Calls `f` for candidate hits of the scalar `v`; hits with `verify` must still be
    /// checked with `Pred::matches`.
    fn lookup(&self, v: &Value, folded: &mut String, rbuf: &mut Vec<u8>, f: &mut dyn FnMut(Hit)) {
        match v {
            Value::String(s) => {
                if let Some(hits) = self.exact_str.get(s.as_str()) {
                    hits.iter().for_each(|&h| f(h));
                }
                self.prefix.walk(s.as_bytes(), f);
                if !self.suffix.lens.is_empty() {
                    rbuf.clear();
                    rbuf.extend(s.bytes().rev());
                    self.suffix.walk(rbuf, f);
                }
                if self.ic_count > 0 {
                    fold_into(s, folded);
                    if let Some(hits) = self.eq_ic.get(folded.as_str()) {
                        hits.iter().for_each(|&h| f(h));
                    }
                    self.prefix_ic.walk(folded.as_bytes(), f);
                    if !self.suffix_ic.lens.is_empty() {
                        rbuf.clear();
                        rbuf.extend(folded.bytes().rev());
                        self.suffix_ic.walk(rbuf, f);
                    }
                }
                if !self.cidr_lens.is_empty() {
                    if let Some((v6, bits)) = ip_bits(s) {
                        for &(cv6, len) in self.cidr_lens.keys() {
                            if cv6 == v6 {
                                if let Some(hits) = self.cidr.get(&(v6, len, mask(v6, bits, len))) {
                                    hits.iter().for_each(|&h| f(h));
                                }
                            }
                        }
                    }
                }
            }
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    let x = if x == 0.0 { 0.0 } else { x };
                    let k = ord(x);
                    if let Some(hits) = self.exact_num.get(&k) {
                        hits.iter().for_each(|&h| f(h));
                    }
                    for h in self.num_lo.range(..=(k, u32::MAX)).map(|e| e.1) {
                        f(*h);
                    }
                    for h in self.num_hi.range((k, 0)..).map(|e| e.1) {
                        f(*h);
                    }
                    for (&class, m) in &self.num_two {
                        let start = if class == i32::MAX {
                            0
                        } else {
                            ord(x - 2f64.powi(class.saturating_add(1)))
                        };
                        for h in m.range((start, 0)..=(k, u32::MAX)).map(|e| e.1) {
                            f(*h);
                        }
                    }
                }
            }
            _ => {
                let slot = match v {
                    Value::Bool(true) => Some(0),
                    Value::Bool(false) => Some(1),
                    Value::Null => Some(2),
                    _ => None,
                };
                if let Some(i) = slot {
                    self.exact_other[i].iter().for_each(|&h| f(h));
                }
            }
        }
        self.scan.iter().for_each(|&h| f(h));
        if !self.ab_vals.is_empty() {
            let excluded: &[u32] = match v {
                Value::String(s) => self
                    .ab_str
                    .get(s.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
                Value::Number(n) => n
                    .as_f64()
                    .map(|x| if x == 0.0 { 0.0 } else { x })
                    .and_then(|x| self.ab_num.get(&ord(x)))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
                _ => &[],
            };
            if excluded.is_empty() {
                self.ab_vals.iter().for_each(|&h| f(h));
            } else if excluded.len() <= 16 {
                self.ab_vals
                    .iter()
                    .filter(|h| !excluded.contains(&h.pid))
                    .for_each(|&h| f(h));
            } else {
                let set: foldhash::HashSet<u32> = excluded.iter().copied().collect();
                self.ab_vals
                    .iter()
                    .filter(|h| !set.contains(&h.pid))
                    .for_each(|&h| f(h));
            }
        }
    }

    fn bytes(&self) -> usize {
        let map = |n: usize| n * 56;
        self.exact_str
            .iter()
            .map(|(k, v)| map(1) + k.capacity() + v.capacity() * 12)
            .sum::<usize>()
            + self
                .exact_num
                .values()
                .map(|v| map(1) + v.capacity() * 12)
                .sum::<usize>()
            + self.prefix.bytes()
            + self.suffix.bytes()
            + self.prefix_ic.bytes()
            + self.suffix_ic.bytes()
            + self
                .eq_ic
                .iter()
                .map(|(k, v)| map(1) + k.capacity() + v.capacity() * 12)
                .sum::<usize>()
            + self.scan.capacity() * 12
            + self.ab_vals.capacity() * 12
            + self
                .ab_str
                .iter()
                .map(|(k, v)| map(1) + k.capacity() + v.capacity() * 4)
                .sum::<usize>()
            + self
                .ab_num
                .values()
                .map(|v| map(1) + v.capacity() * 4)
                .sum::<usize>()
            + (self.num_lo.len() + self.num_hi.len()) * 40
            + self.num_two.values().map(|m| m.len() * 40).sum::<usize>()
            + map(self.cidr.len())
    }
}

/// Interested field paths, one trie node per key.
#[derive(Debug, Clone, Default)]
struct PathNode {
    children: HashMap<String, u32>,
    field: u32,
    parent: u32,
    key: String,
    /// Number of leaves (in all conjunctions) at or below this node.
    refs: usize,
}

#[derive(Debug, Clone)]
struct PredEntry {
    field: u32,
    /// Kept only for predicates whose hits are re-checked (wildcards, numeric ranges,
    /// anything-but); the others are found again from the pattern on removal.
    check: Option<Pred>,
}

#[derive(Debug, Clone, Default)]
struct ConjEntry {
    slot: u32,
    /// The pattern's id, and whether the pattern has only this conjunction (so it cannot
    /// be reported twice).
    id: u64,
    single: bool,
    required: u64,
    /// (field, bit) of leaves that may also be satisfied by absence.
    optional: Vec<(u32, u8)>,
    preds: Vec<u32>,
    /// Path nodes of the leaves, to release on removal.
    nodes: Vec<u32>,
    live: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    pattern: Pattern,
    conjs: Vec<u32>,
}

/// Sizes of a [`Matcher`]'s structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatcherStats {
    /// Patterns added and not removed.
    pub patterns: usize,
    /// Conjunctions (one per `$or` alternative) indexed.
    pub conjunctions: usize,
    /// Leaf predicates indexed.
    pub predicates: usize,
    /// Approximate bytes held by the index (excluding the kept pattern copies).
    pub index_bytes: usize,
}

/// Many patterns compiled into one shared index; see the module docs.
#[derive(Debug, Clone)]
pub struct Matcher {
    paths: Vec<PathNode>,
    fields: Vec<FieldIndex>,
    preds: Vec<Option<PredEntry>>,
    free_preds: Vec<u32>,
    conjs: Vec<ConjEntry>,
    free_conjs: Vec<u32>,
    /// Conjunctions with no required leaf (only `exists: false`): candidates for every event.
    always: Vec<u32>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    by_id: HashMap<u64, u32>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new()
    }
}

#[derive(Default)]
struct Scratch {
    gen: u32,
    /// Per conjunction: (generation, bits of satisfied leaves).
    conj: Vec<(u32, u64)>,
    touched: Vec<u32>,
    field_gen: Vec<u32>,
    slot_gen: Vec<u32>,
    folded: String,
    rbuf: Vec<u8>,
    crossed_array: bool,
}

impl Scratch {
    fn begin(&mut self, conjs: usize, fields: usize, slots: usize) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.conj.iter_mut().for_each(|g| *g = (0, 0));
            self.field_gen.iter_mut().for_each(|g| *g = 0);
            self.slot_gen.iter_mut().for_each(|g| *g = 0);
            self.gen = 1;
        }
        if self.conj.len() < conjs {
            self.conj.resize(conjs, (0, 0));
        }
        if self.field_gen.len() < fields {
            self.field_gen.resize(fields, 0);
        }
        if self.slot_gen.len() < slots * 2 {
            self.slot_gen.resize(slots * 2, 0);
        }
        self.touched.clear();
        self.crossed_array = false;
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut sc) => f(&mut sc),
        // Re-entered from inside a match on this thread: use a fresh table.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Feeds the scanner's findings into the scratch table.
struct ScanSink<'a> {
    m: &'a Matcher,
    sc: &'a mut Scratch,
}

impl Sink for ScanSink<'_> {
    fn child(&self, node: usize, key: &str) -> Option<usize> {
        self.m.paths[node].children.get(key).map(|&c| c as usize)
    }
    fn is_field(&self, node: usize) -> bool {
        self.m.paths[node].field != NONE
    }
    fn has_children(&self, node: usize) -> bool {
        !self.m.paths[node].children.is_empty()
    }
    fn scalar(&mut self, node: usize, v: &Value) {
        let field = self.m.paths[node].field;
        if field != NONE {
            self.m.hit(field as usize, v, self.sc);
        }
    }
    fn crossed_array(&mut self) {
        self.sc.crossed_array = true;
    }
}

impl Matcher {
    /// An empty matcher.
    pub fn new() -> Self {
        Matcher {
            paths: vec![PathNode {
                field: NONE,
                ..PathNode::default()
            }],
            fields: Vec::new(),
            preds: Vec::new(),
            free_preds: Vec::new(),
            conjs: Vec::new(),
            free_conjs: Vec::new(),
            always: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::default(),
        }
    }

    /// Number of patterns held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no pattern is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Sizes of the structures.
    pub fn stats(&self) -> MatcherStats {
        let index_bytes = self.fields.iter().map(FieldIndex::bytes).sum::<usize>()
            + self.preds.capacity() * std::mem::size_of::<Option<PredEntry>>()
            + self.conjs.capacity() * std::mem::size_of::<ConjEntry>()
            + self
                .conjs
                .iter()
                .map(|c| c.preds.capacity() * 4 + c.optional.capacity() * 8)
                .sum::<usize>()
            + self.paths.len() * (std::mem::size_of::<PathNode>() + 48)
            + self.slots.capacity() * std::mem::size_of::<Option<Slot>>();
        MatcherStats {
            patterns: self.by_id.len(),
            conjunctions: self.conjs.iter().filter(|c| c.live).count(),
            predicates: self.preds.iter().filter(|p| p.is_some()).count(),
            index_bytes,
        }
    }

    fn field_for(&mut self, path: &[String]) -> (u32, u32) {
        let mut n = 0usize;
        for k in path {
            self.paths[n].refs += 1;
            n = match self.paths[n].children.get(k) {
                Some(&c) => c as usize,
                None => {
                    let id = self.paths.len();
                    self.paths.push(PathNode {
                        field: NONE,
                        parent: n as u32,
                        key: k.clone(),
                        ..PathNode::default()
                    });
                    self.paths[n].children.insert(k.clone(), id as u32);
                    id
                }
            };
        }
        self.paths[n].refs += 1;
        if self.paths[n].field == NONE {
            self.paths[n].field = self.fields.len() as u32;
            self.fields.push(FieldIndex::default());
        }
        (self.paths[n].field, n as u32)
    }

    /// Drops one leaf reference from the node and its ancestors; a node nothing refers to
    /// any more is unlinked from its parent so the walk no longer enters it.
    fn release_node(&mut self, node: u32) {
        let mut n = node as usize;
        loop {
            self.paths[n].refs = self.paths[n].refs.saturating_sub(1);
            if n == 0 {
                return;
            }
            let parent = self.paths[n].parent as usize;
            if self.paths[n].refs == 0 {
                let key = std::mem::take(&mut self.paths[n].key);
                self.paths[parent].children.remove(&key);
            }
            n = parent;
        }
    }

    /// Adds (or replaces) the pattern with this id. Cost: proportional to the pattern's
    /// size (plus, for `anything-but`/`exists`, nothing else).
    pub fn add(&mut self, id: u64, pattern: &Pattern) {
        self.remove(id);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let conjs = pattern.conjs();
        let mut conj_ids = Vec::with_capacity(conjs.len());
        for conj in &conjs {
            let cid = match self.free_conjs.pop() {
                Some(c) => c,
                None => {
                    self.conjs.push(ConjEntry::default());
                    (self.conjs.len() - 1) as u32
                }
            };
            let mut entry = ConjEntry {
                slot,
                id,
                single: pattern.conj_count() == 1,
                live: true,
                ..ConjEntry::default()
            };
            for (bit, (path, leaf)) in conj.leaves.iter().enumerate() {
                let bit = bit as u8;
                let (field, node) = self.field_for(path);
                entry.nodes.push(node);
                let Leaf { preds, absent_ok } = leaf;
                if *absent_ok {
                    entry.optional.push((field, bit));
                } else {
                    entry.required |= 1u64 << bit;
                }
                for pred in preds {
                    let pid = match self.free_preds.pop() {
                        Some(p) => p,
                        None => {
                            self.preds.push(None);
                            (self.preds.len() - 1) as u32
                        }
                    };
                    let hit = Hit {
                        pid,
                        conj: cid,
                        bit,
                        verify: false,
                    };
                    self.fields[field as usize].add(hit, pred);
                    let check = match pred {
                        Pred::AnythingBut(Excl::Values(_)) => None,
                        Pred::Wildcard(_) | Pred::AnythingBut(_) => Some(pred.clone()),
                        Pred::Numeric(r) if r.lo != r.hi => Some(pred.clone()),
                        _ => None,
                    };
                    self.preds[pid as usize] = Some(PredEntry { field, check });
                    entry.preds.push(pid);
                }
            }
            if entry.required == 0 {
                self.always.push(cid);
            }
            self.conjs[cid as usize] = entry;
            conj_ids.push(cid);
        }
        self.slots[slot as usize] = Some(Slot {
            pattern: pattern.clone(),
            conjs: conj_ids,
        });
        self.by_id.insert(id, slot);
    }

    /// Removes the pattern with this id; returns whether it was there. Cost: proportional
    /// to the pattern's size, plus a scan of its field's `anything-but`/`exists` list.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.by_id.remove(&id) else {
            return false;
        };
        let Some(s) = self.slots[slot as usize].take() else {
            return false;
        };
        let conjs = s.pattern.conjs();
        for (cid, conj) in s.conjs.into_iter().zip(conjs.iter()) {
            let entry = std::mem::take(&mut self.conjs[cid as usize]);
            // Predicate ids were handed out in the order of the expansion's leaves.
            let preds = conj.leaves.iter().flat_map(|(_, l)| l.preds.iter());
            for (pid, pred) in entry.preds.iter().zip(preds) {
                if let Some(p) = self.preds[*pid as usize].take() {
                    self.fields[p.field as usize].remove(*pid, pred);
                    self.free_preds.push(*pid);
                }
            }
            for node in &entry.nodes {
                self.release_node(*node);
            }
            if entry.required == 0 {
                remove_from(&mut self.always, cid);
            }
            self.free_conjs.push(cid);
        }
        self.free_slots.push(slot);
        true
    }

    /// Ids of the patterns the event matches (each once, in no particular order).
    pub fn matches(&self, event: &Event) -> Vec<u64> {
        let mut out = Vec::new();
        self.matches_into(&EventRoot::new(event), &mut out);
        out
    }

    /// Ids of the patterns the event, given as its `event_view` JSON object, matches.
    pub fn matches_value(&self, event: &Value) -> Vec<u64> {
        let mut out = Vec::new();
        let empty = Map::new();
        let expanded = super::expand_dotted(event);
        let root = match expanded.as_ref().unwrap_or(event) {
            Value::Object(m) => m,
            _ => &empty,
        };
        self.matches_into(root, &mut out);
        out
    }

    /// Whether any pattern matches the event (for interest checks).
    pub fn any_match(&self, event: &Event) -> bool {
        !self.matches(event).is_empty()
    }

    fn matches_into(&self, root: &dyn Root, out: &mut Vec<u64>) {
        if self.by_id.is_empty() {
            return;
        }
        let run = |sc: &mut Scratch, out: &mut Vec<u64>| {
            sc.begin(self.conjs.len(), self.fields.len(), self.slots.len());
            let top = &self.paths[0];
            for (k, &child) in &top.children {
                if let Some(v) = root.get(k) {
                    self.walk(child as usize, &v, 0, sc);
                }
            }
            self.finish(sc, out, &mut |p: &Pattern| p.eval_root(root));
        };
        with_scratch(|sc| run(sc, out));
    }

    /// Ids of the patterns the event, given as the JSON text of its `event_view`, matches.
    /// Decodes only the fields some pattern names and skips the rest by bracket counting
    /// (skipped parts are not fully validated); the whole event is parsed only to confirm
    /// candidates when a named field crossed an array.
    pub fn matches_json(&self, event: &[u8]) -> Result<Vec<u64>, serde_json::Error> {
        let mut out = Vec::new();
        if self.by_id.is_empty() {
            return Ok(out);
        }
        with_scratch(|sc| {
            sc.begin(self.conjs.len(), self.fields.len(), self.slots.len());
            Scanner::new(event, MAX_EVENT_ARRAY_DEPTH).event(
                &mut ScanSink {
                    m: self,
                    sc: &mut *sc,
                },
                0,
            )?;
            let mut parsed: Option<Option<Value>> = None;
            self.finish(sc, &mut out, &mut |p: &Pattern| {
                let v = parsed.get_or_insert_with(|| serde_json::from_slice::<Value>(event).ok());
                v.as_ref().is_some_and(|v| p.matches_value(v))
            });
            Ok(out)
        })
    }

    fn finish(
        &self,
        sc: &mut Scratch,
        out: &mut Vec<u64>,
        verify: &mut dyn FnMut(&Pattern) -> bool,
    ) {
        let gen = sc.gen;
        let touched = std::mem::take(&mut sc.touched);
        let always = self
            .always
            .iter()
            .filter(|&&c| sc.conj[c as usize].0 != gen);
        let candidates: Vec<u32> = if self.always.is_empty() {
            Vec::new()
        } else {
            always.copied().collect()
        };
        for &cid in touched.iter().chain(candidates.iter()) {
            let c = &self.conjs[cid as usize];
            let (g, m) = sc.conj[cid as usize];
            let mask = if g == gen { m } else { 0 };
            if mask & c.required != c.required {
                continue;
            }
            if !sc.crossed_array {
                let ok = c
                    .optional
                    .iter()
                    .all(|&(f, bit)| mask & (1u64 << bit) != 0 || sc.field_gen[f as usize] != gen);
                if !ok {
                    continue;
                }
                if c.single {
                    out.push(c.id);
                    continue;
                }
            }
            let slot = c.slot as usize;
            // slot_gen[2s] = reported, slot_gen[2s+1] = confirmed not matching.
            if sc.slot_gen[2 * slot] == gen || sc.slot_gen[2 * slot + 1] == gen {
                continue;
            }
            if sc.crossed_array {
                let Some(s) = &self.slots[slot] else {
                    continue;
                };
                if !verify(&s.pattern) {
                    sc.slot_gen[2 * slot + 1] = gen;
                    continue;
                }
            }
            sc.slot_gen[2 * slot] = gen;
            out.push(c.id);
        }
        sc.touched = touched;
    }

    fn walk(&self, node: usize, v: &Value, arrays: usize, sc: &mut Scratch) {
        let n = &self.paths[node];
        match v {
            Value::Object(m) => {
                if n.children.len() <= m.len() {
                    for (k, &c) in &n.children {
                        if let Some(cv) = m.get(k) {
                            self.walk(c as usize, cv, arrays, sc);
                        }
                    }
                } else {
                    for (k, cv) in m {
                        if let Some(&c) = n.children.get(k) {
                            self.walk(c as usize, cv, arrays, sc);
                        }
                    }
                }
            }
            Value::Array(items) => {
                if arrays >= MAX_EVENT_ARRAY_DEPTH {
                    return;
                }
                sc.crossed_array = true;
                for it in items {
                    self.walk(node, it, arrays + 1, sc);
                }
            }
            scalar => {
                if n.field != NONE {
                    self.hit(n.field as usize, scalar, sc);
                }
            }
        }
    }

    fn hit(&self, field: usize, v: &Value, sc: &mut Scratch) {
        let gen = sc.gen;
        sc.field_gen[field] = gen;
        let mut folded = std::mem::take(&mut sc.folded);
        let mut rbuf = std::mem::take(&mut sc.rbuf);
        let preds = &self.preds;
        self.fields[field].lookup(v, &mut folded, &mut rbuf, &mut |h| {
            if h.verify {
                match preds.get(h.pid as usize) {
                    Some(Some(PredEntry {
                        check: Some(pred), ..
                    })) if pred.matches(v) => {}
                    _ => return,
                }
            }
            let st = &mut sc.conj[h.conj as usize];
            if st.0 != gen {
                *st = (gen, 0);
                sc.touched.push(h.conj);
            }
            st.1 |= 1u64 << h.bit;
        });
        sc.folded = folded;
        sc.rbuf = rbuf;
    }
}

#[cfg(test)]
#[test]
fn matcher_and_pattern_are_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Matcher>();
    f::<Pattern>();
}
