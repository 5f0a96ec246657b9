//! The leaf operators of a pattern: parsing one leaf array into predicates, and testing one
//! scalar event value against a predicate. Shared by [`super::Pattern`] and the matcher.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{Leaf, PatternError, MAX_STRING, MAX_VALUES};

/// An exact scalar value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

impl Scalar {
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => a == b,
            (Scalar::Num(a), Value::Number(n)) => n.as_f64() == Some(*a),
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Null, Value::Null) => true,
            _ => false,
        }
    }
}

/// A numeric range; bounds are infinite when absent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Range {
    pub(crate) lo: f64,
    pub(crate) lo_incl: bool,
    pub(crate) hi: f64,
    pub(crate) hi_incl: bool,
}

impl Range {
    pub(crate) fn contains(&self, x: f64) -> bool {
        (x > self.lo || (self.lo_incl && x == self.lo))
            && (x < self.hi || (self.hi_incl && x == self.hi))
    }
}

/// A compiled `wildcard`: literal segments separated by `*`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wildcard {
    /// `segs[0]` must be a prefix, `segs[last]` a suffix, the rest appear in order.
    /// One segment means no `*` at all (exact match).
    pub(crate) segs: Vec<String>,
}

impl Wildcard {
    pub(crate) fn matches(&self, s: &str) -> bool {
        let n = self.segs.len();
        let Some(first) = self.segs.first() else {
            return false;
        };
        if n == 1 {
            return s == first;
        }
        let last = &self.segs[n - 1];
        if s.len() < first.len() + last.len()
            || !s.starts_with(first.as_str())
            || !s.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &s[first.len()..s.len() - last.len()];
        for seg in &self.segs[1..n - 1] {
            match rest.find(seg.as_str()) {
                Some(i) => rest = &rest[i + seg.len()..],
                None => return false,
            }
        }
        true
    }

    /// The literal text every match starts with.
    pub(crate) fn literal_prefix(&self) -> &str {
        self.segs.first().map(String::as_str).unwrap_or("")
    }

    /// The literal text every match ends with.
    pub(crate) fn literal_suffix(&self) -> &str {
        if self.segs.len() < 2 {
            return "";
        }
        self.segs.last().map(String::as_str).unwrap_or("")
    }
}

/// A CIDR block; `v6` selects the address family, `net` is the masked address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cidr {
    pub(crate) v6: bool,
    pub(crate) len: u8,
    pub(crate) net: u128,
}

pub(crate) fn ip_bits(s: &str) -> Option<(bool, u128)> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some((false, u128::from(u32::from(a)))),
        IpAddr::V6(a) => Some((true, u128::from(a))),
    }
}

pub(crate) fn mask(v6: bool, bits: u128, len: u8) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    let len = u32::from(len).min(width);
    if len == 0 {
        return 0;
    }
    let keep = width - len;
    (bits >> keep) << keep
}

impl Cidr {
    pub(crate) fn matches(&self, s: &str) -> bool {
        match ip_bits(s) {
            Some((v6, bits)) => v6 == self.v6 && mask(v6, bits, self.len) == self.net,
            None => false,
        }
    }
}

/// What `anything-but` excludes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Excl {
    Values(Vec<Scalar>),
    Prefix(Vec<String>),
    Suffix(Vec<String>),
    Wildcard(Vec<Wildcard>),
    /// Case-folded strings.
    EqIc(Vec<String>),
}

/// One predicate on a scalar event value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pred {
    Exact(Scalar),
    Prefix(String),
    /// Case-folded prefix.
    PrefixIc(String),
    Suffix(String),
    /// Case-folded suffix.
    SuffixIc(String),
    /// Case-folded value.
    EqIc(String),
    Wildcard(Wildcard),
    AnythingBut(Excl),
    Numeric(Range),
    Exists,
    Cidr(Cidr),
}

impl Pred {
    /// Whether the scalar (never an object or array) satisfies this predicate.
    pub(crate) fn matches(&self, v: &Value) -> bool {
        match self {
            Pred::Exact(s) => s.matches(v),
            Pred::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Pred::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
            Pred::PrefixIc(p) => v.as_str().is_some_and(|s| fold(s).starts_with(p.as_str())),
            Pred::SuffixIc(p) => v.as_str().is_some_and(|s| fold(s).ends_with(p.as_str())),
            Pred::EqIc(p) => v.as_str().is_some_and(|s| fold(s) == *p),
            Pred::Wildcard(w) => v.as_str().is_some_and(|s| w.matches(s)),
            Pred::AnythingBut(e) => !excluded(e, v),
            Pred::Numeric(r) => {
                matches!(v, Value::Number(n) if n.as_f64().is_some_and(|x| r.contains(x)))
            }
            Pred::Exists => true,
            Pred::Cidr(c) => v.as_str().is_some_and(|s| c.matches(s)),
        }
    }
}

fn excluded(e: &Excl, v: &Value) -> bool {
    match e {
        Excl::Values(vals) => vals.iter().any(|s| s.matches(v)),
        Excl::Prefix(ps) => v
            .as_str()
            .is_some_and(|s| ps.iter().any(|p| s.starts_with(p.as_str()))),
        Excl::Suffix(ps) => v
            .as_str()
            .is_some_and(|s| ps.iter().any(|p| s.ends_with(p.as_str()))),
        Excl::Wildcard(ws) => v.as_str().is_some_and(|s| ws.iter().any(|w| w.matches(s))),
        Excl::EqIc(ps) => v.as_str().is_some_and(|s| {
            let f = fold(s);
            ps.contains(&f)
        }),
    }
}

/// Case folding used by the `*-ignore-case` operators: per character, the lowercase of its
/// uppercase when that is one character (so `ſ`, `s` and `S` fold together), else its
/// lowercase. Per character, so folding commutes with taking prefixes and suffixes.
pub(crate) fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    fold_into(s, &mut out);
    out
}

pub(crate) fn fold_into(s: &str, out: &mut String) {
    out.clear();
    if s.is_ascii() {
        out.push_str(s);
        out.make_ascii_lowercase();
        return;
    }
    for c in s.chars() {
        let mut up = c.to_uppercase();
        match (up.next(), up.next()) {
            (Some(u), None) => out.extend(u.to_lowercase()),
            _ => out.extend(c.to_lowercase()),
        }
    }
}

fn err(path: &str, msg: impl Into<String>) -> PatternError {
    PatternError::new(path, msg)
}

fn check_len(s: &str, path: &str) -> Result<(), PatternError> {
    if s.len() > MAX_STRING {
        return Err(err(path, format!("string longer than {MAX_STRING} bytes")));
    }
    Ok(())
}

fn scalar(v: &Value, path: &str) -> Result<Scalar, PatternError> {
    Ok(match v {
        Value::String(s) => {
            check_len(s, path)?;
            Scalar::Str(s.clone())
        }
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Scalar::Num(if x == 0.0 { 0.0 } else { x }),
            _ => return Err(err(path, "number out of range")),
        },
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Null => Scalar::Null,
        _ => return Err(err(path, "expected a string, number, boolean or null")),
    })
}

/// Compiles one leaf array (the allowed values of a field).
pub(crate) fn compile_leaf(items: &[Value], path: &str) -> Result<Leaf, PatternError> {
    if items.is_empty() {
        return Err(err(
            path,
            "an empty list of values is not allowed (as EventBridge): it could never match",
        ));
    }
    if items.len() > MAX_VALUES {
        return Err(err(
            path,
            format!("more than {MAX_VALUES} values in one field"),
        ));
    }
    let mut leaf = Leaf {
        preds: Vec::with_capacity(items.len()),
        absent_ok: false,
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match item {
            Value::Array(_) => return Err(err(&p, "nested arrays are not allowed in a pattern")),
            Value::Object(m) => {
                if let Some(pred) = compile_op(m, &p, &mut leaf.absent_ok)? {
                    leaf.preds.push(pred);
                }
            }
            other => leaf.preds.push(Pred::Exact(scalar(other, &p)?)),
        }
    }
    Ok(leaf)
}

fn one_string<'a>(v: &'a Value, path: &str, op: &str) -> Result<&'a str, PatternError> {
    match v {
        Value::String(s) => {
            check_len(s, path)?;
            Ok(s)
        }
        _ => Err(err(path, format!("{op} needs a string"))),
    }
}

/// Compiles an operator object; `Ok(None)` for `{"exists": false}` (recorded in `absent_ok`).
fn compile_op(
    m: &Map<String, Value>,
    path: &str,
    absent_ok: &mut bool,
) -> Result<Option<Pred>, PatternError> {
    let mut it = m.iter();
    let (Some((op, arg)), None) = (it.next(), it.next()) else {
        return Err(err(path, "an operator object must have exactly one key"));
    };
    let p = format!("{path}.{op}");
    let pred = match op.as_str() {
        "prefix" | "suffix" => {
            let prefix = op == "prefix";
            match arg {
                Value::Object(inner) => {
                    let s = ignore_case_arg(inner, &p)?;
                    if prefix {
                        Pred::PrefixIc(fold(s))
                    } else {
                        Pred::SuffixIc(fold(s))
                    }
                }
                _ => {
                    let s = one_string(arg, &p, op)?.to_string();
                    if prefix {
                        Pred::Prefix(s)
                    } else {
                        Pred::Suffix(s)
                    }
                }
            }
        }
        "equals-ignore-case" => Pred::EqIc(fold(one_string(arg, &p, op)?)),
        "wildcard" => Pred::Wildcard(wildcard(one_string(arg, &p, op)?, &p)?),
        "exists" => match arg {
            Value::Bool(true) => Pred::Exists,
            Value::Bool(false) => {
                *absent_ok = true;
                return Ok(None);
            }
            _ => return Err(err(&p, "exists needs true or false")),
        },
        "numeric" => Pred::Numeric(numeric(arg, &p)?),
        "cidr" => Pred::Cidr(cidr(one_string(arg, &p, op)?, &p)?),
        "anything-but" => Pred::AnythingBut(anything_but(arg, &p)?),
        _ => return Err(err(&p, format!("unknown operator {op:?}"))),
    };
    Ok(Some(pred))
}

fn ignore_case_arg<'a>(inner: &'a Map<String, Value>, path: &str) -> Result<&'a str, PatternError> {
    let mut it = inner.iter();
    match (it.next(), it.next()) {
        (Some((k, v)), None) if k == "equals-ignore-case" => one_string(
            v,
            &format!("{path}.equals-ignore-case"),
            "equals-ignore-case",
        ),
        _ => Err(err(
            path,
            "expected a string or {\"equals-ignore-case\": \"...\"}",
        )),
    }
}

fn strings(v: &Value, path: &str, op: &str) -> Result<Vec<String>, PatternError> {
    match v {
        Value::String(s) => {
            check_len(s, path)?;
            Ok(vec![s.clone()])
        }
        Value::Array(items) => {
            if items.is_empty() {
                return Err(err(path, format!("{op} needs at least one value")));
            }
            if items.len() > MAX_VALUES {
                return Err(err(path, format!("more than {MAX_VALUES} values")));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, x)| one_string(x, &format!("{path}[{i}]"), op).map(str::to_string))
                .collect()
        }
        _ => Err(err(
            path,
            format!("{op} needs a string or a list of strings"),
        )),
    }
}

/// `anything-but` with an empty prefix or suffix would exclude everything: refused, as
/// EventBridge does.
fn non_empty(v: Vec<String>, path: &str, op: &str) -> Result<Vec<String>, PatternError> {
    if v.iter().any(String::is_empty) {
        return Err(err(
            path,
            format!("anything-but {op} must not be empty (it would exclude every value)"),
        ));
    }
    Ok(v)
}

fn anything_but(arg: &Value, path: &str) -> Result<Excl, PatternError> {
    match arg {
        Value::String(_) | Value::Number(_) => Ok(Excl::Values(vec![scalar(arg, path)?])),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(err(path, "anything-but needs at least one value"));
            }
            if items.len() > MAX_VALUES {
                return Err(err(path, format!("more than {MAX_VALUES} values")));
            }
            let all_str = items.iter().all(Value::is_string);
            let all_num = items.iter().all(Value::is_number);
            if !all_str && !all_num {
                return Err(err(
                    path,
                    "anything-but list must hold only strings or only numbers",
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, x)| scalar(x, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Excl::Values)
        }
        Value::Object(m) => {
            let mut it = m.iter();
            let (Some((op, v)), None) = (it.next(), it.next()) else {
                return Err(err(path, "anything-but object must have exactly one key"));
            };
            let p = format!("{path}.{op}");
            match op.as_str() {
                "prefix" => Ok(Excl::Prefix(non_empty(strings(v, &p, op)?, &p, op)?)),
                "suffix" => Ok(Excl::Suffix(non_empty(strings(v, &p, op)?, &p, op)?)),
                "equals-ignore-case" => Ok(Excl::EqIc(
                    strings(v, &p, op)?.iter().map(|s| fold(s)).collect(),
                )),
                "wildcard" => {
                    let ws = strings(v, &p, op)?;
                    ws.iter()
                        .map(|w| wildcard(w, &p))
                        .collect::<Result<Vec<_>, _>>()
                        .map(Excl::Wildcard)
                }
                _ => Err(err(&p, format!("unknown anything-but operator {op:?}"))),
            }
        }
        _ => Err(err(
            path,
            "anything-but needs a string, a number, a list or an operator object",
        )),
    }
}

fn wildcard(s: &str, path: &str) -> Result<Wildcard, PatternError> {
    let mut segs = vec![String::new()];
    let mut chars = s.chars();
    let mut prev_star = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('*' | '\\')) => {
                    if let Some(last) = segs.last_mut() {
                        last.push(e);
                    }
                    prev_star = false;
                }
                Some(e) => {
                    return Err(err(
                        path,
                        format!("invalid escape \\{e} in wildcard (only \\* and \\\\)"),
                    ))
                }
                None => return Err(err(path, "wildcard ends with a lone backslash")),
            },
            '*' => {
                if segs.len() > super::MAX_WILDCARDS {
                    return Err(err(
                        path,
                        format!(
                            "wildcard too complex: more than {} `*` characters",
                            super::MAX_WILDCARDS
                        ),
                    ));
                }
                if prev_star {
                    return Err(err(
                        path,
                        "consecutive wildcard characters (**) are not allowed",
                    ));
                }
                segs.push(String::new());
                prev_star = true;
            }
            c => {
                if let Some(last) = segs.last_mut() {
                    last.push(c);
                }
                prev_star = false;
            }
        }
    }
    Ok(Wildcard { segs })
}

fn cidr(s: &str, path: &str) -> Result<Cidr, PatternError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Some((v6, bits)) = ip_bits(addr.trim()) else {
        return Err(err(path, format!("invalid IP address {addr:?}")));
    };
    let width = if v6 { 128 } else { 32 };
    let len = match len {
        None => width,
        Some(l) => match l.trim().parse::<u8>() {
            Ok(n) if n <= width => n,
            _ => {
                return Err(err(
                    path,
                    format!("invalid prefix length {l:?} (0..={width})"),
                ))
            }
        },
    };
    Ok(Cidr {
        v6,
        len,
        net: mask(v6, bits, len),
    })
}

fn numeric(arg: &Value, path: &str) -> Result<Range, PatternError> {
    let Value::Array(items) = arg else {
        return Err(err(path, "numeric needs a list like [\">\", 0, \"<=\", 5]"));
    };
    if items.len() != 2 && items.len() != 4 {
        return Err(err(
            path,
            "numeric needs one or two (operator, number) pairs",
        ));
    }
    let mut r = Range {
        lo: f64::NEG_INFINITY,
        lo_incl: false,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    let (mut has_lo, mut has_hi) = (false, false);
    for (i, pair) in items.chunks(2).enumerate() {
        let op = pair[0]
            .as_str()
            .ok_or_else(|| err(&format!("{path}[{}]", 2 * i), "expected an operator string"))?;
        let np = format!("{path}[{}]", 2 * i + 1);
        let x = match &pair[1] {
            Value::Number(n) => n
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(&np, "number out of range"))?,
            _ => return Err(err(&np, "expected a number")),
        };
        let x = if x == 0.0 { 0.0 } else { x };
        match op {
            "=" => {
                if items.len() != 2 {
                    return Err(err(
                        path,
                        "\"=\" cannot be combined with another comparison",
                    ));
                }
                return Ok(Range {
                    lo: x,
                    lo_incl: true,
                    hi: x,
                    hi_incl: true,
                });
            }
            ">" | ">=" => {
                if has_lo {
                    return Err(err(path, "two lower bounds"));
                }
                has_lo = true;
                r.lo = x;
                r.lo_incl = op == ">=";
            }
            "<" | "<=" => {
                if has_hi {
                    return Err(err(path, "two upper bounds"));
                }
                has_hi = true;
                r.hi = x;
                r.hi_incl = op == "<=";
            }
            _ => {
                return Err(err(
                    &format!("{path}[{}]", 2 * i),
                    format!("unknown numeric operator {op:?}"),
                ))
            }
        }
    }
    if has_lo && has_hi && r.lo >= r.hi {
        return Err(err(
            path,
            format!(
                "empty range: lower bound {} is not below upper bound {}",
                r.lo, r.hi
            ),
        ));
    }
    Ok(r)
}
