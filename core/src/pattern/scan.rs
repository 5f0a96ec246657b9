//! A small JSON scanner for [`super::Matcher::matches_json`]: walks the event bytes along
//! the matcher's field-path trie, decodes only the scalars of named fields, and skips every
//! other value by bracket counting (no allocation, no number parsing). Skipped parts are
//! checked only for balanced brackets and string quoting, not fully validated; the named
//! parts and the overall structure are. No recursion beyond the trie's depth and the
//! event array-depth limit.

use serde::de::Error as _;
use serde_json::Value;

/// Why scanning stopped.
pub(crate) type ScanError = serde_json::Error;

/// The path node a dotted event key (`"a.b"`) reaches through its segments: `a.b` and a
/// nested `a` → `b` name the same field (as EventBridge flattens them).
fn dotted_child(sink: &dyn Sink, node: usize, key: &str) -> Option<usize> {
    let segs = super::dotted_segments(key)?;
    segs.into_iter().try_fold(node, |n, seg| sink.child(n, seg))
}

fn err(at: usize, what: &str) -> ScanError {
    ScanError::custom(format!("{what} at byte {at}"))
}

/// The events a scan reports to its sink.
pub(crate) trait Sink {
    /// Child of `node` named `key`, if some pattern names it.
    fn child(&self, node: usize, key: &str) -> Option<usize>;
    /// Whether `node` has predicates (so its scalars must be decoded).
    fn is_field(&self, node: usize) -> bool;
    /// Whether `node` has named children.
    fn has_children(&self, node: usize) -> bool;
    /// A scalar at a field node.
    fn scalar(&mut self, node: usize, v: &Value);
    /// The walk entered an array on a named path.
    fn crossed_array(&mut self);
}

pub(crate) struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    max_arrays: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(b: &'a [u8], max_arrays: usize) -> Self {
        Scanner {
            b,
            i: 0,
            max_arrays,
        }
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(err(self.i, &format!("expected '{}'", c as char)))
        }
    }

    /// Scans a whole event: an object walked from `root`, anything else skipped.
    pub(crate) fn event(&mut self, sink: &mut dyn Sink, root: usize) -> Result<(), ScanError> {
        self.ws();
        if self.peek() == Some(b'{') {
            self.value(sink, root, 0)?;
        } else {
            self.skip()?;
        }
        self.ws();
        if self.i != self.b.len() {
            return Err(err(self.i, "trailing characters"));
        }
        Ok(())
    }

    /// Returns the end (exclusive) of the string starting at `self.i` (on the opening quote)
    /// and whether it contains escapes; leaves `self.i` after the closing quote.
    fn string_end(&mut self) -> Result<(usize, bool), ScanError> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            // Jump to the next byte that needs a look.
            let rest = self.b.get(self.i..).unwrap_or(&[]);
            match rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            {
                Some(n) => self.i += n,
                None => return Err(err(start, "unterminated string")),
            }
            match self.b.get(self.i) {
                None => return Err(err(start, "unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok((self.i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 2;
                }
                Some(c) if *c < 0x20 => return Err(err(self.i, "control character in string")),
                Some(_) => self.i += 1,
            }
        }
    }

    /// Decodes the string at `self.i`.
    fn string(&mut self) -> Result<std::borrow::Cow<'a, str>, ScanError> {
        let start = self.i;
        let (end, escaped) = self.string_end()?;
        let raw = self
            .b
            .get(start..end)
            .ok_or_else(|| err(start, "bad string"))?;
        if escaped {
            serde_json::from_slice::<String>(raw).map(std::borrow::Cow::Owned)
        } else {
            let inner = raw
                .get(1..raw.len() - 1)
                .ok_or_else(|| err(start, "bad string"))?;
            std::str::from_utf8(inner)
                .map(std::borrow::Cow::Borrowed)
                .map_err(|_| err(start, "invalid UTF-8 in string"))
        }
    }

    fn number(&mut self) -> Result<Value, ScanError> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.i += 1;
            } else {
                break;
            }
        }
        let tok = self.b.get(start..self.i).unwrap_or(&[]);
        // serde_json gives the exact same Number (u64, i64, or f64) as a full parse.
        serde_json::from_slice::<serde_json::Number>(tok)
            .map(Value::Number)
            .map_err(|_| err(start, "invalid number"))
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, ScanError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(err(self.i, "invalid literal"))
        }
    }

    /// Walks the value at `self.i` for path node `node`.
    fn value(&mut self, sink: &mut dyn Sink, node: usize, arrays: usize) -> Result<(), ScanError> {
        self.ws();
        match self.peek() {
            Some(b'{') => {
                if !sink.has_children(node) {
                    return self.skip();
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(err(self.i, "expected an object key"));
                    }
                    let key = self.string()?;
                    let child = sink
                        .child(node, &key)
                        .or_else(|| dotted_child(sink, node, &key));
                    self.expect(b':')?;
                    match child {
                        Some(c) => self.value(sink, c, arrays)?,
                        None => self.skip()?,
                    }
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(err(self.i, "expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                if arrays >= self.max_arrays {
                    return self.skip();
                }
                sink.crossed_array();
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.value(sink, node, arrays + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(err(self.i, "expected ',' or ']'")),
                    }
                }
            }
            Some(_) if !sink.is_field(node) => self.skip(),
            Some(b'"') => {
                let s = self.string()?;
                sink.scalar(node, &Value::String(s.into_owned()));
                Ok(())
            }
            Some(b't') => {
                let v = self.literal(b"true", Value::Bool(true))?;
                sink.scalar(node, &v);
                Ok(())
            }
            Some(b'f') => {
                let v = self.literal(b"false", Value::Bool(false))?;
                sink.scalar(node, &v);
                Ok(())
            }
            Some(b'n') => {
                let v = self.literal(b"null", Value::Null)?;
                sink.scalar(node, &v);
                Ok(())
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let v = self.number()?;
                sink.scalar(node, &v);
                Ok(())
            }
            _ => Err(err(self.i, "expected a value")),
        }
    }

    /// Skips one value: strings by their quotes, containers by bracket counting (up to 128
    /// levels, like serde_json's own limit). Inside a skipped container only brackets and
    /// strings are checked.
    fn skip(&mut self) -> Result<(), ScanError> {
        self.ws();
        let start = self.i;
        match self.peek() {
            Some(b'"') => self.string_end().map(|_| ()),
            Some(b'{' | b'[') => self.skip_container(),
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.') => {
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.') {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(())
            }
            None => Err(err(start, "unexpected end of input")),
            Some(_) => Err(err(start, "expected a value")),
        }
    }

    fn skip_container(&mut self) -> Result<(), ScanError> {
        let start = self.i;
        // Bit d of `braces` says whether open level d is an object.
        let mut braces: u128 = 0;
        let mut depth = 0usize;
        let b = self.b;
        let mut i = self.i;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    self.i = i;
                    self.string_end()?;
                    i = self.i;
                    continue;
                }
                c @ (b'{' | b'[') => {
                    if depth >= 128 {
                        return Err(err(i, "nesting too deep"));
                    }
                    if c == b'{' {
                        braces |= 1u128 << depth;
                    } else {
                        braces &= !(1u128 << depth);
                    }
                    depth += 1;
                }
                c @ (b'}' | b']') => {
                    if depth == 0 {
                        return Err(err(i, "unbalanced brackets"));
                    }
                    depth -= 1;
                    if (braces & (1u128 << depth) != 0) != (c == b'}') {
                        return Err(err(i, "mismatched brackets"));
                    }
                    if depth == 0 {
                        self.i = i + 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            i += 1;
        }
        Err(err(start, "unexpected end of input"))
    }
}
