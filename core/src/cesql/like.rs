//! The CESQL `LIKE` operator: pattern compilation and matching.
//!
//! Owns the pattern rules (spec §3.4.3): `%` matches any run of characters, `_` exactly
//! one character, `\%`, `\_` and `\\` the character after the backslash, any other
//! character (including a lone backslash) itself, case-sensitively.
//!
//! Matching splits the pattern at `%` into fixed-length segments: the first must match at
//! the start, the last at the end, and the ones between are placed leftmost, in order,
//! which is optimal because each has a fixed length. A segment without `_` is found with
//! `str::find` (linear time), so a hostile value or pattern costs
//! O(len(value) + len(pattern)); only a middle segment containing `_` is searched
//! position by position, O(len(value) × len(segment)). No recursion.

/// One element of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegTok {
    /// Exactly this character.
    Char(char),
    /// `_`: any one character.
    One,
}

/// A run of the pattern between two `%`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    toks: Vec<SegTok>,
    /// The segment as a plain string when it has no `_`, for `str::find`.
    literal: Option<String>,
}

/// A compiled LIKE pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    /// The pattern split at `%`; one segment means there is no `%`.
    segments: Vec<Segment>,
}

impl LikePattern {
    /// Compiles a pattern (the value of the string literal after `LIKE`).
    pub(crate) fn compile(pattern: &str) -> LikePattern {
        let mut segments = Vec::new();
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '%' => segments.push(Segment::new(std::mem::take(&mut toks))),
                '_' => toks.push(SegTok::One),
                '\\' => match chars.peek() {
                    Some(&n @ ('%' | '_' | '\\')) => {
                        chars.next();
                        toks.push(SegTok::Char(n));
                    }
                    _ => toks.push(SegTok::Char('\\')),
                },
                c => toks.push(SegTok::Char(c)),
            }
        }
        segments.push(Segment::new(toks));
        // `%%` is the same as `%`: drop empty segments between two `%`.
        let n = segments.len();
        if n > 2 {
            let last = segments.pop();
            let first = segments.remove(0);
            segments.retain(|s| !s.toks.is_empty());
            segments.insert(0, first);
            segments.extend(last);
        }
        LikePattern { segments }
    }

    /// Whether `value` matches the whole pattern.
    pub(crate) fn matches(&self, value: &str) -> bool {
        let segs = &self.segments;
        let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
            return value.is_empty();
        };
        if segs.len() == 1 {
            return match_at(value, 0, first) == Some(value.len());
        }
        let Some(mut start) = match_at(value, 0, first) else {
            return false;
        };
        let Some(end) = nth_boundary_from_end(value, last.toks.len()) else {
            return false;
        };
        if end < start || match_at(value, end, last) != Some(value.len()) {
            return false;
        }
        for seg in &segs[1..segs.len() - 1] {
            let Some(region) = value.get(start..end) else {
                return false;
            };
            match find(region, seg) {
                Some(seg_end) => start += seg_end,
                None => return false,
            }
        }
        true
    }
}

impl Segment {
    fn new(toks: Vec<SegTok>) -> Segment {
        let literal = toks
            .iter()
            .map(|t| match t {
                SegTok::Char(c) => Some(*c),
                SegTok::One => None,
            })
            .collect::<Option<String>>();
        Segment { toks, literal }
    }
}

/// Matches `seg` at byte `at` of `value`; returns the byte index after it.
fn match_at(value: &str, at: usize, seg: &Segment) -> Option<usize> {
    let mut chars = value.get(at..)?.char_indices();
    for t in &seg.toks {
        let (_, c) = chars.next()?;
        if let SegTok::Char(want) = t {
            if *want != c {
                return None;
            }
        }
    }
    Some(chars.next().map_or(value.len(), |(i, _)| at + i))
}

/// Byte index where the last `n` characters of `value` start.
fn nth_boundary_from_end(value: &str, n: usize) -> Option<usize> {
    if n == 0 {
        return Some(value.len());
    }
    value.char_indices().rev().nth(n - 1).map(|(i, _)| i)
}

/// Leftmost occurrence of `seg` in `region`; returns the byte index after it.
fn find(region: &str, seg: &Segment) -> Option<usize> {
    if let Some(lit) = &seg.literal {
        return region.find(lit.as_str()).map(|p| p + lit.len());
    }
    region
        .char_indices()
        .find_map(|(p, _)| match_at(region, p, seg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward backtracking matcher over characters, as a reference.
    fn reference(value: &str, pattern: &str) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum T {
            C(char),
            One,
            Many,
        }
        let mut toks = Vec::new();
        let mut it = pattern.chars().peekable();
        while let Some(c) = it.next() {
            toks.push(match c {
                '%' => T::Many,
                '_' => T::One,
                '\\' => match it.peek() {
                    Some(&n @ ('%' | '_' | '\\')) => {
                        it.next();
                        T::C(n)
                    }
                    _ => T::C('\\'),
                },
                c => T::C(c),
            });
        }
        let v: Vec<char> = value.chars().collect();
        // dp[j]: pattern[..i] matches v[..j]
        let mut dp = vec![false; v.len() + 1];
        dp[0] = true;
        for t in toks {
            let mut next = vec![false; v.len() + 1];
            for j in 0..=v.len() {
                next[j] = match t {
                    T::Many => dp[j] || (j > 0 && next[j - 1]),
                    T::One => j > 0 && dp[j - 1],
                    T::C(c) => j > 0 && dp[j - 1] && v[j - 1] == c,
                };
            }
            dp = next;
        }
        dp[v.len()]
    }

    fn l(v: &str, p: &str) -> bool {
        let got = LikePattern::compile(p).matches(v);
        assert_eq!(got, reference(v, p), "{v:?} LIKE {p:?}");
        got
    }

    #[test]
    fn examples() {
        assert!(l("abc", "abc"));
        assert!(!l("abcd", "abc"));
        assert!(l("azzzbzzzc", "a%b%c"));
        assert!(!l("ab.cde", ".%.%."));
        assert!(l(".ab.cde.", ".%.%."));
        assert!(l("azbzc", "a_b_c"));
        assert!(!l("azbzc", r"a\_b\_c"));
        assert!(l("a%b", r"a\%b"));
        assert!(l("", "%"));
        assert!(l("", "%%"));
        assert!(!l("", "_"));
        assert!(l("héllo wörld", "h_llo%d"));
        assert!(l(r"a\b", r"a\b"));
        assert!(l(r"a\", r"a\"));
        assert!(l("mississippi", "%issip%"));
        assert!(!l("mississippi", "%issipx%"));
        assert!(l("abcabd", "%abd"));
        assert!(l("ab", "a%%b"));
        assert!(!l("a", "a%a"));
        assert!(l("aa", "a%a"));
        assert!(l("xaybz", "%a_b%"));
    }

    /// A small deterministic PRNG for the differential test.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn agrees_with_the_reference_on_random_input() {
        let alphabet = ['a', 'b', 'é', '%', '_', '\\'];
        let mut s = 0x1234_5678_9ABC_DEF1u64;
        let pick = |n: u64, s: &mut u64| -> String {
            let len = rng(s) % n;
            (0..len)
                .map(|_| alphabet[usize::try_from(rng(s) % 6).unwrap_or(0)])
                .collect()
        };
        let mut matched = 0;
        for _ in 0..50_000 {
            let v: String = pick(9, &mut s).replace(['%', '_', '\\'], "a");
            let p = pick(7, &mut s);
            if l(&v, &p) {
                matched += 1;
            }
        }
        assert!(
            matched > 1_000,
            "only {matched} matches: the test is too weak"
        );
    }

    #[test]
    fn linear_on_hostile_input() {
        let value = "a".repeat(1 << 20);
        let pattern = format!("%{}b%", "a".repeat(8_000));
        let started = std::time::Instant::now();
        assert!(!LikePattern::compile(&pattern).matches(&value));
        assert!(LikePattern::compile("%a%a%a%a%a%a%a%").matches(&value));
        assert!(!LikePattern::compile("%a%a%a%a%a%a%a%b").matches(&value));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
