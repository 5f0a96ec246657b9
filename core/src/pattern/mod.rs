//! EventBridge / event-ruler compatible JSON event patterns.
//!
//! Owns: parsing and validating a JSON pattern into a compiled [`Pattern`] (this file for
//! the object structure and `$or`, `ops` for the leaf operators), evaluating one pattern
//! against one event ([`Pattern::matches`]), the event-to-JSON mapping users address fields
//! through ([`event_view`]), and the multi-pattern [`Matcher`] (`matcher`, with the JSON
//! byte scanner in `scan`) that shares one index across many patterns for fan-out and
//! federation interest.
//!
//! Semantics and limits are documented in `docs/patterns.md`. In short: a pattern is a JSON
//! object whose leaves are arrays of allowed values or operator objects (`prefix`,
//! `suffix`, `equals-ignore-case`, `wildcard`, `anything-but`, `numeric`, `exists`,
//! `cidr`), objects nest into the event, `$or` takes a list of sub-patterns; arrays in the
//! event match when any element matches, and fields of one pattern object that lands on an
//! array of objects must all match within the same element ("array consistency").

mod matcher;
mod ops;
mod scan;

use std::borrow::Cow;
use std::sync::Arc;

use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event};
use serde_json::{Map, Value};

pub use matcher::{Matcher, MatcherStats};
pub(crate) use ops::Pred;

/// Maximum nesting depth of objects in a pattern (the root object is depth 1).
pub const MAX_DEPTH: usize = 32;
/// Maximum number of values (or operator objects) in one leaf array, and of values in one
/// `anything-but` list.
pub const MAX_VALUES: usize = 1024;
/// Maximum number of leaf fields in one conjunction (after `$or` expansion).
pub const MAX_FIELDS: usize = 64;
/// Maximum number of conjunctions a pattern expands to through (nested) `$or`.
pub const MAX_BRANCHES: usize = 256;
/// Maximum length in bytes of any string in a pattern.
pub const MAX_STRING: usize = 4096;
/// Most `*` characters in one `wildcard` value (EventBridge refuses wildcard patterns past a
/// complexity limit; this is meshd's).
pub const MAX_WILDCARDS: usize = 16;
/// Array nesting in an event deeper than this is not looked into.
pub const MAX_EVENT_ARRAY_DEPTH: usize = 64;

/// Why a pattern was refused: names the path in the pattern and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {path}: {message}")]
pub struct PatternError {
    /// JSON path into the pattern, e.g. `data.price` or `data.price[0].numeric`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl PatternError {
    pub(crate) fn new(path: &str, message: impl Into<String>) -> Self {
        PatternError {
            path: if path.is_empty() {
                "$".into()
            } else {
                path.to_string()
            },
            message: message.into(),
        }
    }
}

/// The allowed values of one leaf field: any predicate matching any value of the field
/// satisfies it; `absent_ok` (from `{"exists": false}`) also accepts a missing field.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub(crate) preds: Vec<Pred>,
    pub(crate) absent_ok: bool,
}

/// One object level of a pattern.
#[derive(Debug, Clone)]
pub(crate) struct ObjPat {
    pub(crate) fields: Vec<(String, FieldPat)>,
    /// `$or` branches; empty means no `$or` at this level.
    pub(crate) or: Vec<ObjPat>,
}

#[derive(Debug, Clone)]
pub(crate) enum FieldPat {
    Leaf(Leaf),
    Obj(ObjPat),
}

/// One AND-clause of a pattern after `$or` expansion: leaf conditions by absolute path.
#[derive(Debug, Clone)]
pub(crate) struct Conj {
    pub(crate) leaves: Vec<(Vec<String>, Leaf)>,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: ObjPat,
    /// Number of conjunctions `$or` expands to (checked at compile).
    n_conjs: usize,
}

impl Pattern {
    /// Validates and compiles a pattern.
    pub fn compile(pattern: &Value) -> Result<Pattern, PatternError> {
        let Value::Object(root) = pattern else {
            return Err(PatternError::new("", "a pattern must be a JSON object"));
        };
        let root = compile_obj(root, "", 1)?;
        let conjs = expand(&root, &[])?;
        for c in &conjs {
            if c.leaves.len() > MAX_FIELDS {
                return Err(PatternError::new(
                    "",
                    format!(
                        "a pattern may test at most {MAX_FIELDS} fields at once (after $or expansion), this one tests {}",
                        c.leaves.len()
                    ),
                ));
            }
        }
        Ok(Pattern {
            inner: Arc::new(Inner {
                n_conjs: conjs.len(),
                root,
            }),
        })
    }

    /// Whether the event matches.
    pub fn matches(&self, event: &Event) -> bool {
        self.inner.root.eval_root(&EventRoot::new(event))
    }

    /// Whether the event, given as its [`event_view`] JSON object, matches.
    pub fn matches_value(&self, event: &Value) -> bool {
        let expanded = expand_dotted(event);
        match expanded.as_ref().unwrap_or(event) {
            Value::Object(m) => self.inner.root.eval_root(m),
            _ => self.inner.root.eval_root(&Map::new()),
        }
    }

    /// The pattern's `$or` expansion (computed on demand; it was bounded at compile).
    pub(crate) fn conjs(&self) -> Vec<Conj> {
        expand(&self.inner.root, &[]).unwrap_or_default()
    }

    /// How many conjunctions [`Pattern::conjs`] yields.
    pub(crate) fn conj_count(&self) -> usize {
        self.inner.n_conjs
    }

    pub(crate) fn eval_root(&self, root: &dyn Root) -> bool {
        self.inner.root.eval_root(root)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn compile_obj(obj: &Map<String, Value>, path: &str, depth: usize) -> Result<ObjPat, PatternError> {
    if depth > MAX_DEPTH {
        return Err(PatternError::new(
            path,
            format!("pattern nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    if obj.is_empty() {
        return Err(PatternError::new(path, "empty pattern object"));
    }
    let mut out = ObjPat {
        fields: Vec::new(),
        or: Vec::new(),
    };
    for (k, v) in obj {
        if k.len() > MAX_STRING {
            return Err(PatternError::new(path, "field name too long"));
        }
        let p = join(path, k);
        if k == "$or" {
            if let Some(branches) = or_branches(v) {
                if branches.len() > MAX_BRANCHES {
                    return Err(PatternError::new(&p, "too many $or branches"));
                }
                for (i, bo) in branches.into_iter().enumerate() {
                    out.or
                        .push(compile_obj(bo, &format!("{p}[{i}]"), depth + 1)?);
                }
                continue;
            }
            // Not an `$or` by event-ruler's rules: an ordinary field named "$or".
        }
        let field = match v {
            Value::Object(m) => FieldPat::Obj(compile_obj(m, &p, depth + 1)?),
            Value::Array(items) => FieldPat::Leaf(ops::compile_leaf(items, &p)?),
            _ => {
                return Err(PatternError::new(
                    &p,
                    "match values must be in an array (e.g. [\"value\"]) or an object",
                ))
            }
        };
        let key = if depth == 1 {
            alias(k, obj)
        } else {
            k.as_str()
        };
        let segs = dotted_segments(key);
        if let Some(segs) = &segs {
            if depth + segs.len() > MAX_DEPTH + 1 {
                return Err(PatternError::new(
                    &p,
                    format!("pattern nested deeper than {MAX_DEPTH} levels (counting dots)"),
                ));
            }
        }
        match segs {
            Some(segs) => insert_dotted(&mut out, &segs, field),
            None => insert_field(&mut out, key.to_string(), field),
        }
    }
    Ok(out)
}

/// EventBridge's envelope names, at the top of a pattern, for the CloudEvents attributes
/// they map onto (docs/patterns.md "Patterns from EventBridge"): `detail-type` → `type`,
/// `detail` → `data` (unless the pattern also names `data`).
fn alias<'a>(key: &'a str, obj: &Map<String, Value>) -> &'a str {
    match key {
        "detail-type" if !obj.contains_key("type") => "type",
        "detail" if !obj.contains_key("data") => "data",
        _ => key,
    }
}

/// The segments of a dotted key (`"a.b"` → `["a", "b"]`), or `None` when it has no dot or
/// an empty segment (such keys are matched literally).
pub(crate) fn dotted_segments(key: &str) -> Option<Vec<&str>> {
    if !key.contains('.') {
        return None;
    }
    let segs: Vec<&str> = key.split('.').collect();
    segs.iter().all(|s| !s.is_empty()).then_some(segs)
}

/// Adds a field, merging a sub-pattern into one already there for the same key (so `a.b`
/// and `a: {c}` test one object: array consistency holds across both).
fn insert_field(obj: &mut ObjPat, key: String, field: FieldPat) {
    if let FieldPat::Obj(new) = field {
        if let Some((_, FieldPat::Obj(existing))) = obj.fields.iter_mut().find(|(k, f)| {
            // Two `$or`s at one level would need AND between them: keep those apart.
            *k == key && matches!(f, FieldPat::Obj(o) if o.or.is_empty() || new.or.is_empty())
        }) {
            for (k, f) in new.fields {
                insert_field(existing, k, f);
            }
            existing.or.extend(new.or);
            return;
        }
        obj.fields.push((key, FieldPat::Obj(new)));
    } else {
        obj.fields.push((key, field));
    }
}

/// Adds a field named by a dotted key: `a.b.c: F` is `a: {b: {c: F}}`.
fn insert_dotted(obj: &mut ObjPat, segs: &[&str], field: FieldPat) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    let mut field = field;
    for seg in rest.iter().rev() {
        field = FieldPat::Obj(ObjPat {
            fields: vec![(seg.to_string(), field)],
            or: Vec::new(),
        });
    }
    insert_field(obj, first.to_string(), field);
}

/// Operator names; an object using one as a key is an operator, not a sub-pattern.
const OPERATORS: [&str; 8] = [
    "prefix",
    "suffix",
    "equals-ignore-case",
    "wildcard",
    "anything-but",
    "numeric",
    "exists",
    "cidr",
];

/// Event-ruler reads `"$or"` as OR only when its value is an array of at least two objects
/// none of which uses an operator name as a key; otherwise `$or` is a plain field name.
fn or_branches(v: &Value) -> Option<Vec<&Map<String, Value>>> {
    let Value::Array(items) = v else {
        return None;
    };
    if items.len() < 2 {
        return None;
    }
    items
        .iter()
        .map(|it| match it {
            Value::Object(m) if !m.keys().any(|k| OPERATORS.contains(&k.as_str())) => Some(m),
            _ => None,
        })
        .collect()
}

/// Expands `$or` into a list of conjunctions with absolute paths.
fn expand(obj: &ObjPat, prefix: &[String]) -> Result<Vec<Conj>, PatternError> {
    let too_many = || {
        PatternError::new(
            &prefix.join("."),
            format!("pattern expands to more than {MAX_BRANCHES} alternatives through $or"),
        )
    };
    let mut acc = vec![Conj { leaves: Vec::new() }];
    for (k, f) in &obj.fields {
        let mut path = prefix.to_vec();
        path.push(k.clone());
        match f {
            FieldPat::Leaf(l) => {
                for c in &mut acc {
                    c.leaves.push((path.clone(), l.clone()));
                }
            }
            FieldPat::Obj(o) => {
                let sub = expand(o, &path)?;
                acc = cross(&acc, &sub).ok_or_else(too_many)?;
            }
        }
    }
    if !obj.or.is_empty() {
        let mut alts = Vec::new();
        for b in &obj.or {
            alts.extend(expand(b, prefix)?);
            if alts.len() > MAX_BRANCHES {
                return Err(too_many());
            }
        }
        acc = cross(&acc, &alts).ok_or_else(too_many)?;
    }
    Ok(acc)
}

fn cross(a: &[Conj], b: &[Conj]) -> Option<Vec<Conj>> {
    if a.len().saturating_mul(b.len()) > MAX_BRANCHES {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut leaves = x.leaves.clone();
            leaves.extend(y.leaves.iter().cloned());
            out.push(Conj { leaves });
        }
    }
    Some(out)
}

/// The event with every dotted key (`{"a.b": 1}`) expanded into nested objects (`{"a":
/// {"b": 1}}`), or `None` when it has none (the common case: nothing is copied). EventBridge
/// flattens events and patterns into dotted field names, so `a.b` and `a` → `b` are one
/// field. A dotted key meeting a non-object under the same name makes an array of both
/// (each still matches as that field's value).
pub(crate) fn expand_dotted(v: &Value) -> Option<Value> {
    has_dotted(v, 0).then(|| expanded(v))
}

fn has_dotted(v: &Value, depth: usize) -> bool {
    if depth > MAX_EVENT_ARRAY_DEPTH * 2 {
        return false;
    }
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| dotted_segments(k).is_some() || has_dotted(x, depth + 1)),
        Value::Array(items) => items.iter().any(|x| has_dotted(x, depth + 1)),
        _ => false,
    }
}

fn expanded(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let x = expanded(x);
                match dotted_segments(k) {
                    Some(segs) => {
                        let (first, rest) = segs.split_first().unwrap_or((&"", &[]));
                        let mut nested = x;
                        for seg in rest.iter().rev() {
                            let mut o = Map::new();
                            o.insert((*seg).to_string(), nested);
                            nested = Value::Object(o);
                        }
                        merge_value(&mut out, first, nested);
                    }
                    None => merge_value(&mut out, k, x),
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(expanded).collect()),
        other => other.clone(),
    }
}

fn merge_value(out: &mut Map<String, Value>, key: &str, v: Value) {
    match (out.get_mut(key), v) {
        (None, v) => {
            out.insert(key.to_string(), v);
        }
        (Some(Value::Object(existing)), Value::Object(new)) => {
            for (k, x) in new {
                merge_value(existing, &k, x);
            }
        }
        (Some(Value::Array(items)), v) => items.push(v),
        (Some(existing), v) => {
            let old = std::mem::take(existing);
            *existing = Value::Array(vec![old, v]);
        }
    }
}

/// Read access to the top level of an event (an event_view object or a CloudEvent).
pub(crate) trait Root {
    fn get(&self, key: &str) -> Option<Cow<'_, Value>>;
}

impl Root for Map<String, Value> {
    fn get(&self, key: &str) -> Option<Cow<'_, Value>> {
        Map::get(self, key).map(Cow::Borrowed)
    }
}

/// A CloudEvent seen as its [`event_view`], without copying `data`.
pub(crate) struct EventRoot<'a> {
    event: &'a Event,
}

impl<'a> EventRoot<'a> {
    pub(crate) fn new(event: &'a Event) -> Self {
        EventRoot { event }
    }
}

impl Root for EventRoot<'_> {
    fn get(&self, key: &str) -> Option<Cow<'_, Value>> {
        if key == "data" {
            return event_data(self.event).map(|d| match expand_dotted(&d) {
                Some(x) => Cow::Owned(x),
                None => d,
            });
        }
        for (name, value) in self.event.iter_attributes() {
            if name == key {
                return Some(Cow::Owned(Value::String(value.to_string())));
            }
        }
        self.event.extension(key).map(|v| Cow::Owned(ext_value(v)))
    }
}

fn ext_value(value: &ExtensionValue) -> Value {
    match value {
        ExtensionValue::String(s) => Value::String(s.clone()),
        ExtensionValue::Boolean(b) => Value::Bool(*b),
        ExtensionValue::Integer(i) => Value::from(*i),
    }
}

fn event_data(event: &Event) -> Option<Cow<'_, Value>> {
    match event.data() {
        Some(Data::Json(v)) => Some(Cow::Borrowed(v)),
        Some(Data::String(s)) => serde_json::from_str::<Value>(s).ok().map(Cow::Owned),
        Some(Data::Binary(b)) => {
            let json = event
                .datacontenttype()
                .is_some_and(|ct| ct.contains("json"));
            if json {
                serde_json::from_slice::<Value>(b).ok().map(Cow::Owned)
            } else {
                None
            }
        }
        None => None,
    }
}

/// The event as one JSON object: context attributes and extensions at the top level, the
/// JSON `data` under `data` (string data that parses as JSON, and binary data whose
/// `datacontenttype` says JSON, are parsed).
pub fn event_view(event: &Event) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, value) in event.iter_attributes() {
        m.insert(name.to_string(), Value::String(value.to_string()));
    }
    for (name, value) in event.iter_extensions() {
        m.insert(name.to_string(), ext_value(value));
    }
    if let Some(d) = event_data(event) {
        m.insert("data".into(), d.into_owned());
    }
    m
}

impl ObjPat {
    fn eval_root(&self, root: &dyn Root) -> bool {
        self.fields.iter().all(|(k, f)| {
            let v = root.get(k);
            f.eval(v.as_deref(), 0)
        }) && (self.or.is_empty() || self.or.iter().any(|b| b.eval_root(root)))
    }

    /// Evaluates against one event object (or, with `None`, an absent/non-object value).
    fn eval_obj(&self, obj: Option<&Map<String, Value>>, depth: usize) -> bool {
        self.fields
            .iter()
            .all(|(k, f)| f.eval(obj.and_then(|o| o.get(k)), depth))
            && (self.or.is_empty() || self.or.iter().any(|b| b.eval_obj(obj, depth)))
    }

    fn eval_value(&self, v: Option<&Value>, depth: usize) -> bool {
        match v {
            Some(Value::Object(m)) => self.eval_obj(Some(m), depth),
            Some(Value::Array(items)) => {
                if depth >= MAX_EVENT_ARRAY_DEPTH {
                    return false;
                }
                let mut saw_object = false;
                for it in items {
                    match it {
                        Value::Object(_) | Value::Array(_) => {
                            saw_object = true;
                            if self.eval_value(Some(it), depth + 1) {
                                return true;
                            }
                        }
                        _ => {}
                    }
                }
                !saw_object && self.eval_obj(None, depth)
            }
            _ => self.eval_obj(None, depth),
        }
    }
}

impl FieldPat {
    fn eval(&self, v: Option<&Value>, depth: usize) -> bool {
        match self {
            FieldPat::Obj(o) => o.eval_value(v, depth),
            FieldPat::Leaf(l) => {
                let mut present = false;
                let hit = v.is_some_and(|v| leaf_any(l, v, &mut present, depth));
                hit || (!present && l.absent_ok)
            }
        }
    }
}

/// Whether any scalar in `v` (descending into arrays) satisfies the leaf; sets `present`
/// when at least one scalar was seen.
fn leaf_any(l: &Leaf, v: &Value, present: &mut bool, depth: usize) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Array(items) => {
            if depth >= MAX_EVENT_ARRAY_DEPTH {
                return false;
            }
            items.iter().any(|it| leaf_any(l, it, present, depth + 1))
        }
        scalar => {
            *present = true;
            l.preds.iter().any(|p| p.matches(scalar))
        }
    }
}

#[cfg(test)]
mod tests;
