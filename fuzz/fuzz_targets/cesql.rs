//! Fuzzes the CESQL parser and evaluator: any input text must parse or fail cleanly, and a
//! parsed expression must evaluate on a fixed event without panicking, with `matches`
//! agreeing with `evaluate`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_core::cesql::{Expression, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let event = meshd_core::event::parse_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"sub","n":42,"flag":true,"data":{"a":1}}"#,
    )
    .expect("fixed event is valid");
    for parsed in [Expression::parse(text), Expression::parse_strict(text)] {
        let Ok(expr) = parsed else { continue };
        let (value, errors) = expr.evaluate(&event);
        let expected = errors.is_empty() && value == Value::Boolean(true);
        assert_eq!(expr.matches(&event), expected, "{text}");
    }
});
