//! CloudEvents SQL (CESQL v1) expressions: parse once, evaluate against many events.
//!
//! Owns the CESQL language as meshd implements it: [`Expression::parse`] (text to a
//! checked syntax tree, [`CesqlError`] with the column on failure),
//! [`Expression::evaluate`] (the CESQL value plus the list of [`EvalError`]s, the spec's
//! "complete evaluation mode") and [`Expression::matches`] (the Subscriptions API filter
//! rule: the event passes only if the value is Boolean `true` and no error occurred; it
//! uses "fail fast mode" and allocates nothing for errors).
//!
//! Layout: `lexer` tokens, `parser` grammar and precedence, `ast` tree shapes,
//! `like` LIKE patterns, `eval` semantics. `docs/cesql.md` is the user-facing reference.
//!
//! Choices where the spec leaves room, or where the TCK and the spec's text differ:
//! - `AND`, `OR`, `XOR` share one precedence level and associate left to right, as the
//!   spec's §3.6 text says (the ANTLR grammar marks them right-associative).
//! - An Integer is never implicitly cast to a Boolean (`NOT 10` is `true` with a
//!   CastError, as the TCK requires); the explicit `BOOL(10)` is `true`.
//! - Integer overflow in `+ - * /`, unary `-` and `ABS` gives a MathError and the result
//!   saturated to the 32-bit range (as the spec defines for `ABS(-2147483648)`).
//! - `IS_BOOL(x)` and `IS_INT(x)` from the pre-v1 draft are kept as extensions.
//! - Limits: [`MAX_EXPRESSION_LEN`], [`MAX_DEPTH`], [`MAX_IDENTIFIER_LEN`] (parse errors),
//!   [`MAX_STRING_LEN`] (a FunctionEvaluationError when a function would build a longer
//!   string).

mod ast;
mod eval;
mod lexer;
mod like;
mod parser;

use std::fmt;

use cloudevents::Event;

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 16 * 1024;
/// Deepest nesting accepted: each parenthesis, unary operator, function call, `IN` set,
/// `LIKE` and right-hand operand counts one level. A flat run of one precedence level
/// (`a OR b OR c ...`) counts once.
pub const MAX_DEPTH: usize = 64;
/// Longest attribute name accepted (as [`crate::event::MAX_ATTRIBUTE_NAME_LEN`]).
pub const MAX_IDENTIFIER_LEN: usize = crate::event::MAX_ATTRIBUTE_NAME_LEN;
/// Longest string a function (`CONCAT`, `CONCAT_WS`, `LOWER`, `UPPER`) may build, in bytes.
pub const MAX_STRING_LEN: usize = 1024 * 1024;

/// Why an expression does not parse (a CESQL ParseError).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CesqlError {
    /// What is wrong, with the column (1-based, in characters) when known.
    pub message: String,
}

/// The error kinds of CESQL v1 §3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The expression does not parse.
    Parse,
    /// Division by zero or integer overflow.
    Math,
    /// An implicit or explicit cast failed.
    Cast,
    /// The expression reads an attribute the event does not have.
    MissingAttribute,
    /// No function with that name and number of arguments.
    MissingFunction,
    /// A function refused its arguments.
    FunctionEvaluation,
    /// Anything else.
    Generic,
}

/// An error raised while evaluating (the expression still yields a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Division or modulo by zero, or a 32-bit overflow.
    #[error("math error: {message}")]
    Math {
        /// What overflowed or divided by zero.
        message: String,
    },
    /// A value could not be converted to the type an operator or function needs.
    #[error("cast error: {message}")]
    Cast {
        /// The value and the target type.
        message: String,
    },
    /// The event has no such attribute.
    #[error("missing attribute: the event has no attribute {name:?}")]
    MissingAttribute {
        /// The attribute name.
        name: String,
    },
    /// No function with this name takes this many arguments.
    #[error("missing function: no function {name} with {arity} argument(s)")]
    MissingFunction {
        /// The function name, upper case.
        name: String,
        /// How many arguments the call passed.
        arity: usize,
    },
    /// A function was called with arguments it refuses.
    #[error("function {function}: {message}")]
    FunctionEvaluation {
        /// The function name.
        function: &'static str,
        /// What is wrong with the arguments.
        message: String,
    },
}

impl EvalError {
    /// The CESQL error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EvalError::Math { .. } => ErrorKind::Math,
            EvalError::Cast { .. } => ErrorKind::Cast,
            EvalError::MissingAttribute { .. } => ErrorKind::MissingAttribute,
            EvalError::MissingFunction { .. } => ErrorKind::MissingFunction,
            EvalError::FunctionEvaluation { .. } => ErrorKind::FunctionEvaluation,
        }
    }
}

/// A CESQL value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// `true` or `false`.
    Boolean(bool),
    /// A 32-bit signed integer.
    Integer(i32),
    /// A string (attributes of type URI, URI-reference and Timestamp are strings too).
    String(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => f.write_str(s),
        }
    }
}

/// A parsed CESQL expression.
#[derive(Debug, Clone)]
pub struct Expression {
    text: String,
    root: ast::Node,
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Expression {
    /// Parses an expression. Calls to unknown functions parse (they evaluate to `false`
    /// with a MissingFunctionError, as the spec says); use [`Expression::parse_strict`]
    /// to refuse them up front.
    pub fn parse(text: &str) -> Result<Expression, CesqlError> {
        if text.len() > MAX_EXPRESSION_LEN {
            return Err(CesqlError {
                message: format!(
                    "expression is {} bytes long, at most {MAX_EXPRESSION_LEN} are accepted",
                    text.len()
                ),
            });
        }
        let root = parser::parse(text)?;
        Ok(Expression {
            text: text.to_string(),
            root,
        })
    }

    /// Parses an expression and also refuses calls that cannot be dispatched (unknown
    /// function name or wrong number of arguments): a user mistake caught at subscription
    /// time instead of a filter that never matches.
    pub fn parse_strict(text: &str) -> Result<Expression, CesqlError> {
        let e = Expression::parse(text)?;
        if let Some((name, col)) = first_missing_function(&e.root) {
            return Err(lexer::error_at(
                col,
                format!("unknown function {name} (or wrong number of arguments)"),
            ));
        }
        Ok(e)
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Evaluates against `event` in complete-evaluation mode: the value (always one of
    /// the three types) and every error raised on the way, in order.
    pub fn evaluate(&self, event: &Event) -> (Value, Vec<EvalError>) {
        let mut ev = eval::Eval::new(event, true);
        let v = ev.root(&self.root).into_value();
        (v, ev.into_errors())
    }

    /// Whether the event passes this expression used as a filter: the value is Boolean
    /// `true` and no error occurred (evaluation errors: no match).
    pub fn matches(&self, event: &Event) -> bool {
        let mut ev = eval::Eval::new(event, false);
        let v = ev.root(&self.root);
        !ev.failed && v == eval::Val::Bool(true)
    }
}

fn first_missing_function(node: &ast::Node) -> Option<(String, usize)> {
    use ast::Node;
    match node {
        Node::Lit(_) | Node::Attr(_) | Node::Exists(_) => None,
        Node::Not(e) | Node::Neg(e) => first_missing_function(e),
        Node::Like { value, .. } => first_missing_function(value),
        Node::Chain { first, rest } => first_missing_function(first)
            .or_else(|| rest.iter().find_map(|(_, n)| first_missing_function(n))),
        Node::In { value, set, .. } => {
            first_missing_function(value).or_else(|| set.iter().find_map(first_missing_function))
        }
        Node::Call { func, args } => match func {
            ast::Func::Missing { name, col } => Some((name.clone(), *col)),
            _ => args.iter().find_map(first_missing_function),
        },
    }
}

#[cfg(test)]
mod tests;
