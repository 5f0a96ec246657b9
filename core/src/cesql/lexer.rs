//! CESQL lexer: turns expression text into tokens with their column.
//!
//! Owns the lexical rules: whitespace (space, tab, CR, LF), punctuation and operators,
//! case-insensitive keywords, integer digits, quoted strings with their escapes, and
//! words (identifiers and function names, told apart later by the parser).

use super::CesqlError;

/// One lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    /// `!=` or `<>`.
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    Not,
    Like,
    In,
    Exists,
    True,
    False,
    /// Unsigned digits; `None` when the value does not fit in 64 bits.
    Int(Option<u64>),
    /// A string literal, escapes resolved.
    Str(String),
    /// An identifier or a function name, as written.
    Word(String),
    /// End of input.
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        let s = match self {
            Tok::LParen => "'('",
            Tok::RParen => "')'",
            Tok::Comma => "','",
            Tok::Plus => "'+'",
            Tok::Minus => "'-'",
            Tok::Star => "'*'",
            Tok::Slash => "'/'",
            Tok::Percent => "'%'",
            Tok::Eq => "'='",
            Tok::NotEq => "'!='",
            Tok::Lt => "'<'",
            Tok::Le => "'<='",
            Tok::Gt => "'>'",
            Tok::Ge => "'>='",
            Tok::And => "AND",
            Tok::Or => "OR",
            Tok::Xor => "XOR",
            Tok::Not => "NOT",
            Tok::Like => "LIKE",
            Tok::In => "IN",
            Tok::Exists => "EXISTS",
            Tok::True => "TRUE",
            Tok::False => "FALSE",
            Tok::Int(_) => "an integer",
            Tok::Str(_) => "a string literal",
            Tok::Word(w) => return format!("'{}'", truncate(w)),
            Tok::Eof => "end of input",
        };
        s.to_string()
    }
}

fn truncate(w: &str) -> String {
    if w.chars().count() > 32 {
        let mut t: String = w.chars().take(32).collect();
        t.push('…');
        t
    } else {
        w.to_string()
    }
}

/// A token and the 1-based column (in characters) where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) col: usize,
}

pub(crate) fn error_at(col: usize, message: impl std::fmt::Display) -> CesqlError {
    CesqlError {
        message: format!("{message} (at column {col})"),
    }
}

/// Splits `text` into tokens, ending with [`Tok::Eof`].
pub(crate) fn lex(text: &str) -> Result<Vec<Token>, CesqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            ' ' | '\t' | '\r' | '\n' => {
                i += 1;
                continue;
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '*' => (Tok::Star, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '=' => (Tok::Eq, 1),
            '!' if next == Some('=') => (Tok::NotEq, 2),
            '<' if next == Some('>') => (Tok::NotEq, 2),
            '<' if next == Some('=') => (Tok::Le, 2),
            '<' => (Tok::Lt, 1),
            '>' if next == Some('=') => (Tok::Ge, 2),
            '>' => (Tok::Gt, 1),
            '\'' | '"' => {
                let (s, len) = lex_string(&chars[i..], col)?;
                (Tok::Str(s), len)
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                let word: String = chars[i..i + len].iter().collect();
                (word_token(word), len)
            }
            other => return Err(error_at(col, format!("unexpected character {other:?}"))),
        };
        out.push(Token { tok, col });
        i += len;
    }
    out.push(Token {
        tok: Tok::Eof,
        col: chars.len() + 1,
    });
    Ok(out)
}

fn word_token(word: String) -> Tok {
    if word.bytes().all(|b| b.is_ascii_digit()) {
        let mut v: Option<u64> = Some(0);
        for b in word.bytes() {
            v = v
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(b - b'0')));
        }
        return Tok::Int(v);
    }
    match word.to_ascii_uppercase().as_str() {
        "AND" => Tok::And,
        "OR" => Tok::Or,
        "XOR" => Tok::Xor,
        "NOT" => Tok::Not,
        "LIKE" => Tok::Like,
        "IN" => Tok::In,
        "EXISTS" => Tok::Exists,
        "TRUE" => Tok::True,
        "FALSE" => Tok::False,
        _ => Tok::Word(word),
    }
}

/// Reads a quoted string starting at `chars[0]` (the quote). Escapes: `\'`, `\"` and `\\`
/// give the character after the backslash; a doubled delimiter (`''` inside `'...'`)
/// gives one delimiter; a backslash before any other character is kept as written, so
/// that LIKE patterns see `\%` and `\_`. Returns the value and the length consumed.
fn lex_string(chars: &[char], col: usize) -> Result<(String, usize), CesqlError> {
    let quote = chars[0];
    let mut s = String::new();
    let mut i = 1;
    loop {
        match chars.get(i) {
            None => return Err(error_at(col, "unterminated string literal")),
            Some('\\') => match chars.get(i + 1) {
                None => return Err(error_at(col, "unterminated string literal")),
                Some(&n @ ('\'' | '"' | '\\')) => {
                    s.push(n);
                    i += 2;
                }
                Some(&n) => {
                    s.push('\\');
                    s.push(n);
                    i += 2;
                }
            },
            Some(&c) if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    s.push(quote);
                    i += 2;
                } else {
                    return Ok((s, i + 1));
                }
            }
            Some(&c) => {
                s.push(c);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).expect("lexes").into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn operators_and_keywords() {
        assert_eq!(
            toks("a<>b != c <= >= < > = aNd Or xOR not LIKE in exists TRUE false"),
            vec![
                Tok::Word("a".into()),
                Tok::NotEq,
                Tok::Word("b".into()),
                Tok::NotEq,
                Tok::Word("c".into()),
                Tok::Le,
                Tok::Ge,
                Tok::Lt,
                Tok::Gt,
                Tok::Eq,
                Tok::And,
                Tok::Or,
                Tok::Xor,
                Tok::Not,
                Tok::Like,
                Tok::In,
                Tok::Exists,
                Tok::True,
                Tok::False,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(toks(r#"'a"b\'c'"#)[0], Tok::Str("a\"b'c".into()));
        assert_eq!(toks(r#""a'b\"c""#)[0], Tok::Str("a'b\"c".into()));
        assert_eq!(toks(r"'a\_b\%'")[0], Tok::Str(r"a\_b\%".into()));
        assert_eq!(toks(r"'a\\b'")[0], Tok::Str(r"a\b".into()));
        assert_eq!(toks("'it''s'")[0], Tok::Str("it's".into()));
        assert!(lex("'abc").is_err());
        assert!(lex(r"'abc\'").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(toks("123")[0], Tok::Int(Some(123)));
        assert_eq!(toks("99999999999999999999999999")[0], Tok::Int(None));
        assert_eq!(toks("12ab")[0], Tok::Word("12ab".into()));
    }

    #[test]
    fn bad_character_has_column() {
        let e = lex("a = #").expect_err("bad char");
        assert!(e.message.contains("column 5"), "{}", e.message);
    }
}
