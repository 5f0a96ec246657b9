//! The one duration syntax of meshd: every flag, config file field and query parameter
//! that takes a duration parses it here.
//!
//! The syntax is [`humantime`]'s: a number and a unit, several of them summed
//! (`500ms`, `10s`, `1.5s`, `2m`, `1h 30m`, `1h30m`); units `ns`, `us`, `ms`, `s`, `m`, `h`,
//! `d` and their long forms (`sec`, `min`, `hours`, ...). Fractions work with every unit
//! (`10.5s`, `0.25h`).
//!
//! **Bare numbers are refused** (`"10"`: "add a unit, e.g. 10s"): meshd used to read them
//! as seconds in some places and as milliseconds in others, so a bare number has no safe
//! meaning. The one exception is `0`, which is zero in every unit.

use std::time::Duration;

/// A duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration: give a number and a unit, e.g. 10s or 500ms")]
    Empty,
    /// A number without a unit.
    #[error("{value:?} has no unit: add a unit, e.g. {value}s or {value}ms")]
    NoUnit {
        /// What was given.
        value: String,
    },
    /// Not a duration at all.
    #[error("{value:?} is not a duration ({reason}); write e.g. 10s, 1.5s, 500ms, 2m or 1h30m")]
    Invalid {
        /// What was given.
        value: String,
        /// Why, as the parser says it.
        reason: String,
    },
    /// Parsed, but past the bound of the field.
    #[error("{value:?} is longer than the most allowed, {max}")]
    TooLong {
        /// What was given.
        value: String,
        /// The bound, formatted.
        max: String,
    },
}

/// Parses a duration (see the module documentation for the syntax).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if t.bytes().all(|b| b == b'0' || b == b'.') && t.bytes().any(|b| b == b'0') {
            return Ok(Duration::ZERO);
        }
        return Err(DurationError::NoUnit {
            value: t.to_string(),
        });
    }
    humantime::parse_duration(t).map_err(|e| DurationError::Invalid {
        value: t.to_string(),
        reason: e.to_string(),
    })
}

/// Parses a duration of at most `max`.
pub fn parse_at_most(s: &str, max: Duration) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d > max {
        return Err(DurationError::TooLong {
            value: s.trim().to_string(),
            max: format(max),
        });
    }
    Ok(d)
}

/// Parses a duration that must not be zero (timeouts, periods, lease lengths).
pub fn parse_positive(s: &str) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(DurationError::Invalid {
            value: s.trim().to_string(),
            reason: "must be longer than zero".into(),
        });
    }
    Ok(d)
}

/// Formats a duration in the same syntax (`1s 500ms`, `2m`), so it parses back.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fractions_and_sums() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("10.5s"), Ok(Duration::from_millis(10_500)));
        assert_eq!(parse("0.25h"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bare_numbers_are_refused_with_a_hint() {
        let e = parse("10").unwrap_err();
        assert_eq!(e, DurationError::NoUnit { value: "10".into() });
        assert!(e.to_string().contains("add a unit, e.g. 10s"), "{e}");
        assert!(matches!(parse("1.5"), Err(DurationError::NoUnit { .. })));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("  "), Err(DurationError::Empty));
        for bad in ["s", "-1s", "5x", "abc", "1..5s", "ms10"] {
            assert!(
                matches!(parse(bad), Err(DurationError::Invalid { .. })),
                "{bad}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn bounds() {
        let max = Duration::from_secs(60);
        assert_eq!(parse_at_most("60s", max), Ok(max));
        let e = parse_at_most("61s", max).unwrap_err();
        assert!(matches!(e, DurationError::TooLong { .. }));
        assert!(e.to_string().contains("1m"), "{e}");
        assert!(parse_positive("0s").is_err());
        assert_eq!(parse_positive("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn format_parses_back() {
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(3600),
            Duration::from_millis(1),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
