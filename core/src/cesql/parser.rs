//! CESQL parser: tokens to a syntax tree, with bounded depth.
//!
//! Owns the grammar and precedence (CESQL v1 §2 and §3.6), from loosest to tightest:
//! `AND`/`OR`/`XOR` (one level), comparisons, `+ -`, `* / %`, postfix `[NOT] IN (...)`,
//! postfix `[NOT] LIKE 'pattern'`, then the unary `NOT` and `-`, and the atoms (literals,
//! attributes, `EXISTS name`, function calls, parenthesized expressions). Binary levels
//! are left-associative, as the spec's text says ("evaluated left to right when the
//! precedence is equal").
//!
//! Limits: the parser recursion and the height of the tree are both capped at
//! [`MAX_DEPTH`](super::MAX_DEPTH); deeper input is a parse error, never a stack overflow.

use super::ast::{Attr, BinOp, Func, Literal, Node};
use super::lexer::{error_at, lex, Tok, Token};
use super::like::LikePattern;
use super::{CesqlError, MAX_DEPTH, MAX_IDENTIFIER_LEN};

/// Binding power of postfix `IN`.
const BP_IN: u8 = 5;
/// Binding power of postfix `LIKE`.
const BP_LIKE: u8 = 6;
/// Operand of a unary operator: nothing binds tighter, so only an atom (or another unary).
const BP_UNARY: u8 = 7;

/// Parses a whole expression.
pub(crate) fn parse(text: &str) -> Result<Node, CesqlError> {
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let (node, _) = p.expr(0)?;
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(error_at(
            t.col,
            format!(
                "unexpected {}, expected an operator or the end",
                t.tok.describe()
            ),
        ));
    }
    Ok(node)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// A parsed subtree and its height.
type Parsed = (Node, usize);

fn checked(node: Node, height: usize, col: usize) -> Result<Parsed, CesqlError> {
    if height > MAX_DEPTH {
        return Err(error_at(
            col,
            format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
        ));
    }
    Ok((node, height))
}

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with Eof and `pos` never passes it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.toks[(self.pos + ahead).min(self.toks.len() - 1)].tok
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<Token, CesqlError> {
        let t = self.bump();
        if t.tok == want {
            Ok(t)
        } else {
            Err(error_at(
                t.col,
                format!("unexpected {}, expected {what}", t.tok.describe()),
            ))
        }
    }

    fn expr(&mut self, min_bp: u8) -> Result<Parsed, CesqlError> {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH {
            Err(error_at(
                self.peek().col,
                format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
            ))
        } else {
            self.expr_inner(min_bp)
        };
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self, min_bp: u8) -> Result<Parsed, CesqlError> {
        let (mut lhs, mut height) = self.prefix()?;
        loop {
            let t = self.peek().clone();
            let (negated, post) = match (&t.tok, self.peek_at(1)) {
                (Tok::Not, Tok::Like) => (true, Some(BP_LIKE)),
                (Tok::Not, Tok::In) => (true, Some(BP_IN)),
                (Tok::Not, other) => {
                    return Err(error_at(
                        self.toks[self.pos + 1].col,
                        format!(
                            "unexpected {} after NOT, expected LIKE or IN",
                            other.describe()
                        ),
                    ))
                }
                (Tok::Like, _) => (false, Some(BP_LIKE)),
                (Tok::In, _) => (false, Some(BP_IN)),
                _ => (false, None),
            };
            if let Some(bp) = post {
                if bp < min_bp {
                    break;
                }
                if negated {
                    self.bump();
                }
                let op = self.bump();
                (lhs, height) = if bp == BP_LIKE {
                    self.like_rest(lhs, height, negated, op.col)?
                } else {
                    self.in_rest(lhs, height, negated, op.col)?
                };
                continue;
            }
            let Some(op) = binop(&t.tok) else { break };
            if op.level() < min_bp {
                break;
            }
            self.bump();
            let (rhs, rh) = self.expr(op.level() + 1)?;
            let (node, new_height) = match lhs {
                Node::Chain { first, mut rest }
                    if rest.first().map(|(o, _)| o.level()) == Some(op.level()) =>
                {
                    rest.push((op, rhs));
                    (Node::Chain { first, rest }, height.max(rh + 1))
                }
                other => (
                    Node::Chain {
                        first: Box::new(other),
                        rest: vec![(op, rhs)],
                    },
                    height.max(rh) + 1,
                ),
            };
            (lhs, height) = checked(node, new_height, t.col)?;
        }
        Ok((lhs, height))
    }

    fn like_rest(
        &mut self,
        lhs: Node,
        height: usize,
        negated: bool,
        col: usize,
    ) -> Result<Parsed, CesqlError> {
        let t = self.bump();
        let Tok::Str(pattern) = t.tok else {
            return Err(error_at(
                t.col,
                format!(
                    "the pattern of LIKE must be a string literal, found {}",
                    t.tok.describe()
                ),
            ));
        };
        checked(
            Node::Like {
                value: Box::new(lhs),
                pattern: LikePattern::compile(&pattern),
                negated,
            },
            height + 1,
            col,
        )
    }

    fn in_rest(
        &mut self,
        lhs: Node,
        height: usize,
        negated: bool,
        col: usize,
    ) -> Result<Parsed, CesqlError> {
        self.expect(Tok::LParen, "'(' opening the IN set")?;
        let mut set = Vec::new();
        let mut h = height;
        loop {
            let (e, eh) = self.expr(0)?;
            h = h.max(eh);
            set.push(e);
            let t = self.bump();
            match t.tok {
                Tok::Comma => continue,
                Tok::RParen => break,
                other => {
                    return Err(error_at(
                        t.col,
                        format!("unexpected {}, expected ',' or ')'", other.describe()),
                    ))
                }
            }
        }
        checked(
            Node::In {
                value: Box::new(lhs),
                set,
                negated,
            },
            h + 1,
            col,
        )
    }

    fn prefix(&mut self) -> Result<Parsed, CesqlError> {
        let t = self.bump();
        match t.tok {
            Tok::True => Ok((Node::Lit(Literal::Bool(true)), 1)),
            Tok::False => Ok((Node::Lit(Literal::Bool(false)), 1)),
            Tok::Str(s) => Ok((Node::Lit(Literal::Str(s)), 1)),
            Tok::Int(v) => Ok((Node::Lit(Literal::Int(int_literal(v, false, t.col)?)), 1)),
            Tok::Plus => match self.bump() {
                Token {
                    tok: Tok::Int(v), ..
                } => Ok((Node::Lit(Literal::Int(int_literal(v, false, t.col)?)), 1)),
                other => Err(error_at(
                    other.col,
                    format!(
                        "unexpected {} after '+', expected digits",
                        other.tok.describe()
                    ),
                )),
            },
            Tok::Minus => {
                if let Tok::Int(v) = *self.peek_at(0) {
                    // A signed literal: this is how -2147483648 is written.
                    self.bump();
                    return Ok((Node::Lit(Literal::Int(int_literal(v, true, t.col)?)), 1));
                }
                let (e, h) = self.expr(BP_UNARY)?;
                checked(Node::Neg(Box::new(e)), h + 1, t.col)
            }
            Tok::Not => {
                let (e, h) = self.expr(BP_UNARY)?;
                checked(Node::Not(Box::new(e)), h + 1, t.col)
            }
            Tok::LParen => {
                let inner = self.expr(0)?;
                self.expect(Tok::RParen, "')'")?;
                Ok(inner)
            }
            Tok::Exists => {
                let n = self.bump();
                match n.tok {
                    Tok::Word(w) if *self.peek_at(0) != Tok::LParen => {
                        Ok((Node::Exists(Attr::resolve(identifier(&w, n.col)?)), 1))
                    }
                    other => Err(error_at(
                        n.col,
                        format!(
                            "unexpected {} after EXISTS, expected an attribute name",
                            other.describe()
                        ),
                    )),
                }
            }
            Tok::Word(w) => {
                if *self.peek_at(0) == Tok::LParen {
                    self.call(&w, t.col)
                } else {
                    Ok((Node::Attr(Attr::resolve(identifier(&w, t.col)?)), 1))
                }
            }
            other => Err(error_at(
                t.col,
                format!("unexpected {}, expected an expression", other.describe()),
            )),
        }
    }

    fn call(&mut self, name: &str, col: usize) -> Result<Parsed, CesqlError> {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid {
            return Err(error_at(
                col,
                format!("{name:?} is not a valid function name (letters and '_' only)"),
            ));
        }
        self.expect(Tok::LParen, "'('")?;
        let mut args = Vec::new();
        let mut h = 0;
        if *self.peek_at(0) == Tok::RParen {
            self.bump();
        } else {
            loop {
                let (e, eh) = self.expr(0)?;
                h = h.max(eh);
                args.push(e);
                let t = self.bump();
                match t.tok {
                    Tok::Comma => continue,
                    Tok::RParen => break,
                    other => {
                        return Err(error_at(
                            t.col,
                            format!(
                                "unexpected {} in the arguments of {name}, expected ',' or ')'",
                                other.describe()
                            ),
                        ))
                    }
                }
            }
        }
        let func = Func::resolve(name, args.len(), col);
        checked(Node::Call { func, args }, h + 1, col)
    }
}

fn binop(t: &Tok) -> Option<BinOp> {
    Some(match t {
        Tok::And => BinOp::And,
        Tok::Or => BinOp::Or,
        Tok::Xor => BinOp::Xor,
        Tok::Eq => BinOp::Eq,
        Tok::NotEq => BinOp::NotEq,
        Tok::Lt => BinOp::Lt,
        Tok::Le => BinOp::Le,
        Tok::Gt => BinOp::Gt,
        Tok::Ge => BinOp::Ge,
        Tok::Plus => BinOp::Add,
        Tok::Minus => BinOp::Sub,
        Tok::Star => BinOp::Mul,
        Tok::Slash => BinOp::Div,
        Tok::Percent => BinOp::Mod,
        _ => return None,
    })
}

/// An integer literal must be a valid 32-bit signed integer (spec §2.2).
fn int_literal(v: Option<u64>, negative: bool, col: usize) -> Result<i32, CesqlError> {
    let value = v
        .and_then(|v| i64::try_from(v).ok())
        .map(|v| if negative { -v } else { v });
    value.and_then(|v| i32::try_from(v).ok()).ok_or_else(|| {
        error_at(
            col,
            "integer literal out of range (-2147483648 to 2147483647)",
        )
    })
}

/// Value identifiers: letters and digits, case-insensitive (read as lower case).
fn identifier(word: &str, col: usize) -> Result<String, CesqlError> {
    if word.contains('_') {
        return Err(error_at(
            col,
            format!("{word:?} is not a valid attribute name (letters and digits only)"),
        ));
    }
    if word.len() > MAX_IDENTIFIER_LEN {
        return Err(error_at(
            col,
            format!("attribute name longer than {MAX_IDENTIFIER_LEN} characters"),
        ));
    }
    Ok(word.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Node {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn int(i: i32) -> Node {
        Node::Lit(Literal::Int(i))
    }

    #[test]
    fn arithmetic_precedence_and_flat_chains() {
        assert_eq!(
            p("1 + 2 * 3 - 4"),
            Node::Chain {
                first: Box::new(int(1)),
                rest: vec![
                    (
                        BinOp::Add,
                        Node::Chain {
                            first: Box::new(int(2)),
                            rest: vec![(BinOp::Mul, int(3))]
                        }
                    ),
                    (BinOp::Sub, int(4)),
                ]
            }
        );
    }

    #[test]
    fn unary_binds_tighter_than_like_and_binary() {
        let n = p("NOT a LIKE 'x'");
        assert!(matches!(n, Node::Like { value, .. } if matches!(*value, Node::Not(_))));
        let n = p("-4 + 1");
        assert!(matches!(n, Node::Chain { first, .. } if *first == int(-4)));
        assert_eq!(p("--10"), Node::Neg(Box::new(int(-10))));
    }

    #[test]
    fn logic_is_left_to_right() {
        // (TRUE OR FALSE) AND FALSE, one flat chain.
        let n = p("TRUE OR FALSE AND FALSE");
        let Node::Chain { rest, .. } = n else {
            panic!("chain")
        };
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].0, BinOp::Or);
        assert_eq!(rest[1].0, BinOp::And);
    }

    #[test]
    fn integer_literal_bounds() {
        assert_eq!(p("-2147483648"), int(i32::MIN));
        assert_eq!(p("+7"), int(7));
        assert!(parse("2147483648").is_err());
        assert!(parse("-2147483649").is_err());
        assert!(parse("123456789012345678901234567890").is_err());
    }

    #[test]
    fn parse_errors_name_the_column() {
        let e = parse("ABC(").expect_err("unclosed");
        assert!(e.message.contains("column 5"), "{}", e.message);
        let e = parse("x LIKE 123").expect_err("pattern must be a string");
        assert!(e.message.contains("column 8"), "{}", e.message);
        assert!(parse("1 IN ()").is_err());
        assert!(parse("a NOT b").is_err());
        assert!(parse("EXISTS 'a'").is_err());
        assert!(parse("my_ext = 1").is_err());
        assert!(parse("fn1(2)").is_err());
        assert!(parse("").is_err());
        assert!(parse("1 2").is_err());
        assert!(parse("(1").is_err());
        assert!(parse("1 = = 2").is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(&ok).is_ok());
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = parse(&deep).expect_err("too deep");
        assert!(e.message.contains("nested too deeply"), "{}", e.message);
        assert!(parse(&"NOT ".repeat(10_000)).is_err());
        assert!(parse(&format!("{}1", "-".repeat(10_000))).is_err());
        assert!(parse(&format!("1{}", " LIKE 'a'".repeat(1000))).is_err());
        // Long flat chains are fine: they do not nest.
        let long_or = vec!["a = 1"; 2000].join(" OR ");
        assert!(parse(&long_or).is_ok());
    }
}
