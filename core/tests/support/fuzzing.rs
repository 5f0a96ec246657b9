//! Fuzzing on the stable toolchain, for every parser that reads bytes from the network
//! (shared by `core/tests/fuzz_parsers.rs` and `node/tests/fuzz_pulsar.rs`).
//!
//! Inputs are arbitrary bytes, and valid encodings (the seeds) with a few random mutations:
//! flipped bits, overwritten, inserted or removed bytes, truncations, duplicated chunks. The
//! parser must return (`Ok` or a typed error), never panic, hang or allocate without
//! bound. proptest shrinks a failure to a small input, which the panic message shows.
//! `MESHD_FUZZ_CASES` sets the number of inputs per parser (default 3,000; CI runs more).
//! Coverage-guided fuzzing with libFuzzer lives in fuzz/ (nightly, `cargo fuzz`).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Inputs per parser.
pub fn cases() -> u32 {
    std::env::var("MESHD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), any::<u8>()]
        )
            .prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: Vec<Mutation>) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::FlipBit(i, b) if len > 0 => bytes[at(i)] ^= 1 << b,
            Mutation::Set(i, v) if len > 0 => bytes[at(i)] = v,
            Mutation::Insert(i, v) => {
                let i = if len == 0 { 0 } else { i % (len + 1) };
                bytes.splice(i..i, v);
            }
            Mutation::Remove(i, n) if len > 0 => {
                let i = at(i);
                bytes.drain(i..(i + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(if len == 0 { 0 } else { i % len }),
            Mutation::Duplicate(i, n) if len > 0 => {
                let i = at(i);
                let chunk = bytes[i..(i + n).min(len)].to_vec();
                bytes.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    bytes
}

/// Arbitrary bytes, and mutated seeds (three times as often).
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(
        !seeds.is_empty(),
        "give at least one valid encoding as a seed"
    );
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        3 => (
            prop::sample::select(seeds),
            prop::collection::vec(mutation(), 1..8)
        )
            .prop_map(|(seed, ms)| apply(seed, ms)),
    ]
}

/// Feeds [`cases`] inputs made from `seeds` to `parse`; panics (naming `name` and the
/// shrunk input) if `parse` panics on one of them. Every seed is also checked as it is.
pub fn run(name: &str, seeds: Vec<Vec<u8>>, parse: impl Fn(&[u8])) {
    for s in &seeds {
        parse(s);
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&inputs(seeds), |bytes| {
        parse(&bytes);
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzzing {name}: {e}");
    }
}
