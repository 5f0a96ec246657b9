//! The CESQL syntax tree the parser builds and the evaluator walks.
//!
//! Owns the node shapes, attribute names resolved once, function dispatch resolved once
//! (name + arity), and compiled LIKE patterns ([`LikePattern`]). Runs of left-associative binary operators
//! of one precedence level are kept flat ([`Node::Chain`]) so that long `OR` lists or
//! sums do not make the tree deep.

use super::like::LikePattern;

/// A literal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Literal {
    Bool(bool),
    Int(i32),
    Str(String),
}

/// An attribute an expression reads, resolved when parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A context attribute defined by the CloudEvents spec (`id`, `source`, ...).
    Context(&'static str),
    /// Any other name: an extension attribute.
    Extension(String),
}

/// Context attributes that are read through the event's attribute accessors.
pub(crate) const CONTEXT_ATTRIBUTES: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

impl Attr {
    /// Resolves a lower-case attribute name.
    pub(crate) fn resolve(name: String) -> Attr {
        match CONTEXT_ATTRIBUTES.iter().find(|c| **c == name) {
            Some(c) => Attr::Context(c),
            None => Attr::Extension(name),
        }
    }

    /// The attribute's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Attr::Context(c) => c,
            Attr::Extension(e) => e,
        }
    }
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    /// Binding power: higher binds tighter. All levels are left-associative.
    pub(crate) fn level(self) -> u8 {
        match self {
            BinOp::And | BinOp::Or | BinOp::Xor => 1,
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 2,
            BinOp::Add | BinOp::Sub => 3,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 4,
        }
    }
}

/// Built-in functions, resolved by upper-case name and arity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring2,
    Substring3,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
    /// No function with this name and arity: evaluates to `false` and a
    /// MissingFunctionError.
    Missing {
        name: String,
        col: usize,
    },
}

impl Func {
    /// Dispatches a call with `arity` arguments to `name` (any case).
    pub(crate) fn resolve(name: &str, arity: usize, col: usize) -> Func {
        let upper = name.to_ascii_uppercase();
        match (upper.as_str(), arity) {
            ("LENGTH", 1) => Func::Length,
            ("CONCAT", _) => Func::Concat,
            ("CONCAT_WS", n) if n >= 1 => Func::ConcatWs,
            ("LOWER", 1) => Func::Lower,
            ("UPPER", 1) => Func::Upper,
            ("TRIM", 1) => Func::Trim,
            ("LEFT", 2) => Func::Left,
            ("RIGHT", 2) => Func::Right,
            ("SUBSTRING", 2) => Func::Substring2,
            ("SUBSTRING", 3) => Func::Substring3,
            ("ABS", 1) => Func::Abs,
            ("INT", 1) => Func::Int,
            ("BOOL", 1) => Func::Bool,
            ("STRING", 1) => Func::String,
            ("IS_BOOL", 1) => Func::IsBool,
            ("IS_INT", 1) => Func::IsInt,
            _ => Func::Missing { name: upper, col },
        }
    }
}

/// A node of the syntax tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Lit(Literal),
    Attr(Attr),
    Exists(Attr),
    Not(Box<Node>),
    Neg(Box<Node>),
    /// `first op1 x1 op2 x2 ...`, evaluated left to right; all ops share one level.
    Chain {
        first: Box<Node>,
        rest: Vec<(BinOp, Node)>,
    },
    Like {
        value: Box<Node>,
        pattern: LikePattern,
        negated: bool,
    },
    In {
        value: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Call {
        func: Func,
        args: Vec<Node>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_resolve_by_name_and_arity() {
        assert_eq!(Func::resolve("substring", 2, 1), Func::Substring2);
        assert_eq!(Func::resolve("SubString", 3, 1), Func::Substring3);
        assert_eq!(Func::resolve("concat", 0, 1), Func::Concat);
        assert!(matches!(
            Func::resolve("CONCAT_WS", 0, 1),
            Func::Missing { .. }
        ));
        assert!(matches!(
            Func::resolve("LENGTH", 2, 1),
            Func::Missing { .. }
        ));
    }
}
