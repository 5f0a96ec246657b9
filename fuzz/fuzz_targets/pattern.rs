//! Fuzzes pattern compilation and matching: the input is split at the first NUL byte into a
//! pattern and an event (both JSON). Compile must never panic; when it succeeds, the single
//! pattern evaluator and the shared Matcher must agree on the event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_core::pattern::{Matcher, Pattern};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (p, e) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let (Ok(p), Ok(e)) = (serde_json::from_slice::<Value>(p), serde_json::from_slice::<Value>(e)) else {
        return;
    };
    let Ok(pat) = Pattern::compile(&p) else {
        return;
    };
    let single = pat.matches_value(&e);
    let mut m = Matcher::new();
    m.add(1, &pat);
    m.add(2, &pat);
    let multi = m.matches_value(&e);
    assert_eq!(single, multi.len() == 2, "pattern {p} event {e}");
    m.remove(1);
    assert_eq!(single, m.matches_value(&e) == vec![2]);
});
