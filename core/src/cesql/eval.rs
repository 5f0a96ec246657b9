//! CESQL evaluator: walks the syntax tree against one event.
//!
//! Owns the semantics of CESQL v1 §3: the three value types, implicit and explicit casts
//! (§3.7), operators (§3.4) including short-circuit `AND`/`OR`, 32-bit integer math with
//! errors instead of overflow or division by zero, `LIKE` matching, `IN`, `EXISTS`, the
//! built-in functions (§3.5), missing attributes (§3.2) and the error list (§3.3).
//!
//! Every operator is total: it always yields a value, and problems are recorded as
//! [`EvalError`]s. In fail-fast mode (used by `matches`) the first error stops the walk
//! and nothing is allocated for it.

use std::borrow::Cow;

use cloudevents::event::ExtensionValue;
use cloudevents::Event;

use super::ast::{Attr, BinOp, Func, Literal, Node};
use super::{EvalError, Value, MAX_STRING_LEN};

/// A value during evaluation; strings borrow from the expression or the event if they can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

impl Val<'_> {
    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Bool(b) => Value::Boolean(b),
            Val::Int(i) => Value::Integer(i),
            Val::Str(s) => Value::String(s.into_owned()),
        }
    }
}

/// Evaluation state: the event and the error sink.
pub(crate) struct Eval<'a> {
    event: &'a Event,
    /// `Some` in complete-evaluation mode: every error is kept.
    errors: Option<Vec<EvalError>>,
    /// Whether any error happened.
    pub(crate) failed: bool,
    /// How many errors happened (also counted in fail-fast mode).
    count: usize,
}

/// Which conversion a cast is for: explicit ones (`INT`, `BOOL`, `STRING`) accept every
/// conversion of the spec's table; implicit ones (operands) do not turn an Integer into
/// a Boolean (see the module docs of `cesql`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CastKind {
    Implicit,
    Explicit,
}

impl<'a> Eval<'a> {
    pub(crate) fn new(event: &'a Event, collect: bool) -> Self {
        Eval {
            event,
            errors: collect.then(Vec::new),
            failed: false,
            count: 0,
        }
    }

    pub(crate) fn into_errors(self) -> Vec<EvalError> {
        self.errors.unwrap_or_default()
    }

    fn error(&mut self, make: impl FnOnce() -> EvalError) {
        self.failed = true;
        self.count += 1;
        if let Some(errors) = &mut self.errors {
            errors.push(make());
        }
    }

    /// Fail-fast mode after an error: stop evaluating.
    fn stop(&self) -> bool {
        self.failed && self.errors.is_none()
    }

    /// The value of the whole expression.
    pub(crate) fn root(&mut self, node: &'a Node) -> Val<'a> {
        self.eval(node)
    }

    /// Evaluates an operand for an operator or function: `None` when evaluating it raised
    /// any error (e.g. a missing attribute, §3.2, or a division by zero). The consumer
    /// then returns the zero value of its own return type, so an error inside a
    /// subexpression never produces a meaningful-looking value above it (the TCK's
    /// `true AND (1 != 1 / 0)` is `false`). Errors an operator raises itself, such as
    /// casting its operand, do not: it goes on with the cast's zero value (`NOT 10` is
    /// `true`).
    fn operand(&mut self, node: &'a Node) -> Option<Val<'a>> {
        let before = self.count;
        let v = self.eval(node);
        (self.count == before).then_some(v)
    }

    /// Evaluates a node to its own value. A bare missing attribute is `false` (the spec
    /// assumes Boolean when the type cannot be known).
    fn eval(&mut self, node: &'a Node) -> Val<'a> {
        if self.stop() {
            return Val::Bool(false);
        }
        match node {
            Node::Lit(Literal::Bool(b)) => Val::Bool(*b),
            Node::Lit(Literal::Int(i)) => Val::Int(*i),
            Node::Lit(Literal::Str(s)) => Val::Str(Cow::Borrowed(s)),
            Node::Attr(attr) => self.attribute(attr).unwrap_or(Val::Bool(false)),
            Node::Exists(attr) => Val::Bool(self.lookup(attr).is_some()),
            Node::Not(e) => match self.operand(e) {
                None => Val::Bool(false),
                Some(v) => Val::Bool(!self.cast_bool(v, CastKind::Implicit)),
            },
            Node::Neg(e) => match self.operand(e) {
                None => Val::Int(0),
                Some(v) => {
                    let i = self.cast_int(v, CastKind::Implicit);
                    Val::Int(self.checked(i.checked_neg(), i32::MAX, "-", i))
                }
            },
            Node::Chain { first, rest } => self.chain(first, rest),
            Node::Like {
                value,
                pattern,
                negated,
            } => match self.operand(value) {
                None => Val::Bool(false),
                Some(v) => Val::Bool(pattern.matches(&to_str(v)) != *negated),
            },
            Node::In {
                value,
                set,
                negated,
            } => self.in_set(value, set, *negated),
            Node::Call { func, args } => self.call(func, args),
        }
    }

    fn lookup(&self, attr: &Attr) -> Option<Val<'a>> {
        match attr {
            Attr::Context(name) => crate::event::attribute_string(self.event, name).map(Val::Str),
            Attr::Extension(name) => Some(match self.event.extension(name)? {
                ExtensionValue::String(s) => Val::Str(Cow::Borrowed(s)),
                ExtensionValue::Boolean(b) => Val::Bool(*b),
                // CESQL integers are 32-bit; a wider value stays readable as a String.
                ExtensionValue::Integer(i) => match i32::try_from(*i) {
                    Ok(i) => Val::Int(i),
                    Err(_) => Val::Str(Cow::Owned(i.to_string())),
                },
            }),
        }
    }

    fn attribute(&mut self, attr: &Attr) -> Option<Val<'a>> {
        let v = self.lookup(attr);
        if v.is_none() {
            self.error(|| EvalError::MissingAttribute {
                name: attr.name().to_string(),
            });
        }
        v
    }

    fn checked(&mut self, r: Option<i32>, fallback: i32, op: &'static str, x: i32) -> i32 {
        match r {
            Some(v) => v,
            None => {
                self.error(|| EvalError::Math {
                    message: format!("integer overflow in '{op}' with {x}"),
                });
                fallback
            }
        }
    }

    // ---- casts (§3.7) ----

    fn cast_int(&mut self, v: Val<'a>, _kind: CastKind) -> i32 {
        match v {
            Val::Int(i) => i,
            Val::Bool(b) => i32::from(b),
            Val::Str(s) => match parse_int(&s) {
                Some(i) => i,
                None => {
                    self.error(|| EvalError::Cast {
                        message: format!("cannot cast string {:?} to Integer", clip(&s)),
                    });
                    0
                }
            },
        }
    }

    fn cast_bool(&mut self, v: Val<'a>, kind: CastKind) -> bool {
        match v {
            Val::Bool(b) => b,
            Val::Int(i) if kind == CastKind::Explicit => i != 0,
            Val::Int(i) => {
                self.error(|| EvalError::Cast {
                    message: format!("cannot implicitly cast integer {i} to Boolean (use BOOL(x))"),
                });
                false
            }
            Val::Str(s) => match parse_bool(&s) {
                Some(b) => b,
                None => {
                    self.error(|| EvalError::Cast {
                        message: format!("cannot cast string {:?} to Boolean", clip(&s)),
                    });
                    false
                }
            },
        }
    }

    /// `x = y`: the type of `y` picks the definition (§3.7, ambiguous binary operators).
    fn equals(&mut self, x: Val<'a>, y: Val<'a>) -> bool {
        match y {
            Val::Bool(b) => self.cast_bool(x, CastKind::Implicit) == b,
            Val::Int(i) => self.cast_int(x, CastKind::Implicit) == i,
            Val::Str(s) => to_str(x) == s,
        }
    }

    // ---- operators (§3.4) ----

    /// A left-to-right run of binary operators of one level. Each step is exactly the
    /// binary operator applied to the previous result, so this is the left-associative
    /// tree without its depth.
    fn chain(&mut self, first: &'a Node, rest: &'a [(BinOp, Node)]) -> Val<'a> {
        let mut acc = self.operand(first);
        let mut out = Val::Bool(false);
        for (op, rhs) in rest {
            let before = self.count;
            out = self.binary(*op, acc, rhs);
            acc = (self.count == before).then(|| out.clone());
        }
        out
    }

    fn binary(&mut self, op: BinOp, left: Option<Val<'a>>, rhs: &'a Node) -> Val<'a> {
        match op {
            BinOp::And | BinOp::Or => {
                // Short-circuit: the right operand is not evaluated when the left decides.
                let Some(l) = left else {
                    return Val::Bool(false);
                };
                let l = self.cast_bool(l, CastKind::Implicit);
                if (op == BinOp::And && !l) || (op == BinOp::Or && l) {
                    return Val::Bool(l);
                }
                match self.operand(rhs) {
                    None => Val::Bool(false),
                    Some(r) => Val::Bool(self.cast_bool(r, CastKind::Implicit)),
                }
            }
            _ => {
                let right = self.operand(rhs);
                let (Some(l), Some(r)) = (left, right) else {
                    // An operand that errored (or is missing): the zero value of the operator's return type.
                    return match op.level() {
                        3 | 4 => Val::Int(0),
                        _ => Val::Bool(false),
                    };
                };
                self.apply(op, l, r)
            }
        }
    }

    fn apply(&mut self, op: BinOp, l: Val<'a>, r: Val<'a>) -> Val<'a> {
        match op {
            BinOp::Xor => {
                let a = self.cast_bool(l, CastKind::Implicit);
                let b = self.cast_bool(r, CastKind::Implicit);
                Val::Bool(a ^ b)
            }
            BinOp::Eq => Val::Bool(self.equals(l, r)),
            BinOp::NotEq => Val::Bool(!self.equals(l, r)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let a = self.cast_int(l, CastKind::Implicit);
                let b = self.cast_int(r, CastKind::Implicit);
                Val::Bool(match op {
                    BinOp::Lt => a < b,
                    BinOp::Le => a <= b,
                    BinOp::Gt => a > b,
                    _ => a >= b,
                })
            }
            _ => {
                let a = self.cast_int(l, CastKind::Implicit);
                let b = self.cast_int(r, CastKind::Implicit);
                Val::Int(self.arith(op, a, b))
            }
        }
    }

    fn arith(&mut self, op: BinOp, a: i32, b: i32) -> i32 {
        let (sym, r) = match op {
            BinOp::Add => ("+", a.checked_add(b)),
            BinOp::Sub => ("-", a.checked_sub(b)),
            BinOp::Mul => ("*", a.checked_mul(b)),
            BinOp::Div | BinOp::Mod if b == 0 => {
                self.error(|| EvalError::Math {
                    message: format!("division by zero: {a} {} 0", sym_of(op)),
                });
                return 0;
            }
            BinOp::Div => ("/", a.checked_div(b)),
            // MIN % -1 is 0 (no overflow in the mathematical result).
            _ => return a.wrapping_rem(b),
        };
        match r {
            Some(v) => v,
            None => {
                self.error(|| EvalError::Math {
                    message: format!("integer overflow: {a} {sym} {b}"),
                });
                // Saturate, as ABS(-2147483648) does in the spec.
                let wide = match op {
                    BinOp::Add => i64::from(a) + i64::from(b),
                    BinOp::Sub => i64::from(a) - i64::from(b),
                    BinOp::Mul => i64::from(a) * i64::from(b),
                    _ => i64::from(a) / i64::from(b),
                };
                i32::try_from(wide.clamp(i64::from(i32::MIN), i64::from(i32::MAX))).unwrap_or(0)
            }
        }
    }

    fn in_set(&mut self, value: &'a Node, set: &'a [Node], negated: bool) -> Val<'a> {
        let Some(x) = self.operand(value) else {
            return Val::Bool(false);
        };
        let mut found = false;
        let mut errored = false;
        for e in set {
            match self.operand(e) {
                None => errored = true,
                Some(y) if !found => {
                    // The left operand's type is the target type (§3.7).
                    found = match &x {
                        Val::Bool(b) => self.cast_bool(y, CastKind::Implicit) == *b,
                        Val::Int(i) => self.cast_int(y, CastKind::Implicit) == *i,
                        Val::Str(s) => to_str(y) == *s,
                    };
                }
                Some(_) => {}
            }
        }
        if errored {
            return Val::Bool(false);
        }
        Val::Bool(found != negated)
    }

    // ---- functions (§3.5) ----

    fn call(&mut self, func: &'a Func, args: &'a [Node]) -> Val<'a> {
        if let Func::Missing { name, .. } = func {
            self.error(|| EvalError::MissingFunction {
                name: name.clone(),
                arity: args.len(),
            });
            return Val::Bool(false);
        }
        let mut vals = Vec::with_capacity(args.len());
        let mut errored = false;
        for a in args {
            match self.operand(a) {
                Some(v) => vals.push(v),
                None => errored = true,
            }
        }
        if errored {
            return zero_of(func);
        }
        let mut it = vals.into_iter();
        let mut next = || it.next().unwrap_or(Val::Bool(false));
        match func {
            Func::Length => {
                let s = to_str(next());
                Val::Int(i32::try_from(s.chars().count()).unwrap_or(i32::MAX))
            }
            Func::Concat => {
                let parts: Vec<Cow<'a, str>> = std::iter::from_fn(|| Some(next()))
                    .take(args.len())
                    .map(to_str)
                    .collect();
                self.join("CONCAT", &parts, "")
            }
            Func::ConcatWs => {
                let sep = to_str(next());
                let parts: Vec<Cow<'a, str>> = std::iter::from_fn(|| Some(next()))
                    .take(args.len().saturating_sub(1))
                    .map(to_str)
                    .collect();
                self.join("CONCAT_WS", &parts, &sep)
            }
            Func::Lower => {
                let s = to_str(next()).to_lowercase();
                self.bounded("LOWER", s)
            }
            Func::Upper => {
                let s = to_str(next()).to_uppercase();
                self.bounded("UPPER", s)
            }
            Func::Trim => match to_str(next()) {
                Cow::Borrowed(s) => Val::Str(Cow::Borrowed(s.trim())),
                Cow::Owned(s) => Val::Str(Cow::Owned(s.trim().to_string())),
            },
            Func::Left | Func::Right => {
                let s = to_str(next());
                let n = self.cast_int(next(), CastKind::Implicit);
                let name = if *func == Func::Left { "LEFT" } else { "RIGHT" };
                if n < 0 {
                    self.error(|| EvalError::FunctionEvaluation {
                        function: name,
                        message: format!("length {n} is negative"),
                    });
                    return Val::Str(s);
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let len = s.chars().count();
                if n >= len {
                    return Val::Str(s);
                }
                let (from, to) = if *func == Func::Left {
                    (0, n)
                } else {
                    (len - n, len)
                };
                Val::Str(Cow::Owned(s.chars().skip(from).take(to - from).collect()))
            }
            Func::Substring2 | Func::Substring3 => {
                let s = to_str(next());
                let pos = self.cast_int(next(), CastKind::Implicit);
                let len = if *func == Func::Substring3 {
                    Some(self.cast_int(next(), CastKind::Implicit))
                } else {
                    None
                };
                self.substring(&s, pos, len)
            }
            Func::Abs => {
                let i = self.cast_int(next(), CastKind::Implicit);
                Val::Int(self.checked(i.checked_abs(), i32::MAX, "ABS", i))
            }
            Func::Int => Val::Int(self.cast_int(next(), CastKind::Explicit)),
            Func::Bool => Val::Bool(self.cast_bool(next(), CastKind::Explicit)),
            Func::String => Val::Str(to_str(next())),
            Func::IsBool => Val::Bool(parse_bool(&to_str(next())).is_some()),
            Func::IsInt => Val::Bool(parse_int(&to_str(next())).is_some()),
            Func::Missing { .. } => Val::Bool(false),
        }
    }

    fn join(&mut self, name: &'static str, parts: &[Cow<'a, str>], sep: &str) -> Val<'a> {
        let total = parts.iter().map(|p| p.len()).sum::<usize>()
            + sep.len() * parts.len().saturating_sub(1);
        if total > MAX_STRING_LEN {
            self.error(|| EvalError::FunctionEvaluation {
                function: name,
                message: format!("result longer than {MAX_STRING_LEN} bytes"),
            });
            return Val::Str(Cow::Borrowed(""));
        }
        Val::Str(Cow::Owned(parts.join(sep)))
    }

    fn bounded(&mut self, name: &'static str, s: String) -> Val<'a> {
        if s.len() > MAX_STRING_LEN {
            self.error(|| EvalError::FunctionEvaluation {
                function: name,
                message: format!("result longer than {MAX_STRING_LEN} bytes"),
            });
            return Val::Str(Cow::Borrowed(""));
        }
        Val::Str(Cow::Owned(s))
    }

    fn substring(&mut self, s: &str, pos: i32, len: Option<i32>) -> Val<'a> {
        let n = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
        let p = i64::from(pos);
        if p > n || p < -n {
            self.error(|| EvalError::FunctionEvaluation {
                function: "SUBSTRING",
                message: format!("position {pos} is outside the string (length {n})"),
            });
            return Val::Str(Cow::Borrowed(""));
        }
        if let Some(l) = len {
            if l < 0 {
                self.error(|| EvalError::FunctionEvaluation {
                    function: "SUBSTRING",
                    message: format!("length {l} is negative"),
                });
                return Val::Str(Cow::Borrowed(""));
            }
        }
        if p == 0 {
            return Val::Str(Cow::Borrowed(""));
        }
        let start = if p > 0 { p - 1 } else { n + p };
        let take = len.map_or(n - start, |l| i64::from(l).min(n - start));
        let start = usize::try_from(start).unwrap_or(0);
        let take = usize::try_from(take).unwrap_or(0);
        Val::Str(Cow::Owned(s.chars().skip(start).take(take).collect()))
    }
}

fn sym_of(op: BinOp) -> &'static str {
    if op == BinOp::Div {
        "/"
    } else {
        "%"
    }
}

/// The zero value of a function's return type (§3.1), for a call whose argument errored.
fn zero_of<'a>(func: &Func) -> Val<'a> {
    match func {
        Func::Length | Func::Abs | Func::Int => Val::Int(0),
        Func::Bool | Func::IsBool | Func::IsInt | Func::Missing { .. } => Val::Bool(false),
        _ => Val::Str(Cow::Borrowed("")),
    }
}

/// Any value as a String (never fails).
fn to_str(v: Val<'_>) -> Cow<'_, str> {
    match v {
        Val::Str(s) => s,
        Val::Bool(true) => Cow::Borrowed("true"),
        Val::Bool(false) => Cow::Borrowed("false"),
        Val::Int(i) => Cow::Owned(i.to_string()),
    }
}

/// String → Integer: base 10, optional leading `+` or `-`, 32 bits.
fn parse_int(s: &str) -> Option<i32> {
    s.parse::<i32>().ok()
}

/// String → Boolean: `true` or `false`, any case.
fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A short excerpt of a value for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts() {
        assert_eq!(parse_int("+12"), Some(12));
        assert_eq!(parse_int("-2147483648"), Some(i32::MIN));
        assert_eq!(parse_int("2147483648"), None);
        assert_eq!(parse_int(" 1"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_bool("TrUe"), Some(true));
        assert_eq!(parse_bool("no"), None);
    }
}
