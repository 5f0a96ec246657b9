//! Unit tests of the CESQL public API: values, errors, filter semantics, limits, and a
//! randomized no-panic check of parse + evaluate.

use cloudevents::{EventBuilder, EventBuilderV10};

use super::*;

fn event() -> Event {
    EventBuilderV10::new()
        .id("e1")
        .source("https://example.com/src")
        .ty("com.example.order")
        .subject("orders/42")
        .extension("sequence", "5")
        .extension("count", 7i64)
        .extension("flag", true)
        .extension("big", 5_000_000_000i64)
        .build()
        .expect("valid event")
}

fn eval(text: &str) -> (Value, Vec<ErrorKind>) {
    let e = Expression::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let (v, errs) = e.evaluate(&event());
    (v, errs.iter().map(EvalError::kind).collect())
}

fn ok(text: &str, want: Value) {
    assert_eq!(eval(text), (want, vec![]), "{text}");
}

#[test]
fn attributes_have_their_types() {
    ok("id", Value::String("e1".into()));
    ok("count", Value::Integer(7));
    ok("flag", Value::Boolean(true));
    // Wider than 32 bits: readable as a String.
    ok("big", Value::String("5000000000".into()));
    ok("sequence = 5", Value::Boolean(true));
    ok("count + sequence", Value::Integer(12));
    ok("TYPE LIKE 'com.%.order'", Value::Boolean(true));
    ok("EXISTS subject AND NOT EXISTS time", Value::Boolean(true));
}

#[test]
fn missing_attribute_gives_zero_value_of_the_operator() {
    use ErrorKind::MissingAttribute as M;
    assert_eq!(eval("nope"), (Value::Boolean(false), vec![M]));
    assert_eq!(eval("nope * 5"), (Value::Integer(0), vec![M]));
    assert_eq!(eval("1 / nope"), (Value::Integer(0), vec![M]));
    assert_eq!(eval("LOWER(nope)"), (Value::String(String::new()), vec![M]));
    assert_eq!(eval("NOT nope"), (Value::Boolean(false), vec![M]));
    assert_eq!(eval("1 IN (2, nope)"), (Value::Boolean(false), vec![M]));
    // Short-circuit: the right side is never read.
    assert_eq!(eval("TRUE OR nope"), (Value::Boolean(true), vec![]));
    assert_eq!(eval("FALSE AND nope"), (Value::Boolean(false), vec![]));
}

#[test]
fn math_errors() {
    use ErrorKind::Math;
    assert_eq!(
        eval("2147483647 + 1"),
        (Value::Integer(i32::MAX), vec![Math])
    );
    assert_eq!(
        eval("-2147483648 - 1"),
        (Value::Integer(i32::MIN), vec![Math])
    );
    assert_eq!(
        eval("-2147483648 / -1"),
        (Value::Integer(i32::MAX), vec![Math])
    );
    assert_eq!(
        eval("-(-2147483648)"),
        (Value::Integer(i32::MAX), vec![Math])
    );
    assert_eq!(
        eval("65536 * 65536"),
        (Value::Integer(i32::MAX), vec![Math])
    );
    assert_eq!(eval("-2147483648 % -1"), (Value::Integer(0), vec![]));
    assert_eq!(eval("-7 % 3"), (Value::Integer(-1), vec![]));
    assert_eq!(eval("-7 / 2"), (Value::Integer(-3), vec![]));
    // Errors are collected, evaluation continues.
    assert_eq!(eval("1/0 + 1/0"), (Value::Integer(0), vec![Math, Math]));
}

#[test]
fn casts_and_comparisons() {
    use ErrorKind::Cast;
    ok("TRUE = 'true' AND FALSE = 'false'", Value::Boolean(true));
    ok("TRUE = 'TRUE' OR FALSE = 'FALSE'", Value::Boolean(false));
    ok("BOOL(10)", Value::Boolean(true));
    assert_eq!(eval("NOT 10"), (Value::Boolean(true), vec![Cast]));
    assert_eq!(eval("'abc' < 3"), (Value::Boolean(true), vec![Cast]));
    ok(
        "IS_INT('-12') AND NOT IS_INT('x') AND IS_BOOL('False')",
        Value::Boolean(true),
    );
    ok("STRING(-12) = '-12'", Value::Boolean(true));
    ok("'it''s' = \"it's\"", Value::Boolean(true));
}

#[test]
fn string_functions_count_characters() {
    ok("LENGTH('héllo')", Value::Integer(5));
    ok("LEFT('héllo', 2)", Value::String("hé".into()));
    ok("RIGHT('héllo', 3)", Value::String("llo".into()));
    ok("SUBSTRING('héllo', -4, 2)", Value::String("él".into()));
    ok("TRIM('\u{2003} a \t')", Value::String("a".into()));
    ok(
        "concat_ws('-', 1, TRUE, 'x')",
        Value::String("1-true-x".into()),
    );
}

#[test]
fn unknown_functions() {
    assert_eq!(
        eval("NOPE(1)"),
        (Value::Boolean(false), vec![ErrorKind::MissingFunction])
    );
    assert!(Expression::parse_strict("NOPE(1) OR TRUE").is_err());
    assert!(Expression::parse_strict("LENGTH('a', 'b')").is_err());
    assert!(Expression::parse_strict("LENGTH('a') = 1").is_ok());
}

#[test]
fn matches_follows_the_filter_rule() {
    let ev = event();
    let m = |t: &str| Expression::parse(t).expect("parses").matches(&ev);
    assert!(m("type = 'com.example.order' AND sequence > 4"));
    assert!(!m("type = 'other'"));
    // Not a Boolean: no match.
    assert!(!m("count"));
    // Any error: no match, even if the value is true.
    assert!(!m("NOT 10"));
    assert!(!m("nope = 1 OR TRUE"));
    assert!(m("TRUE OR nope = 1"));
}

#[test]
fn limits_are_parse_errors() {
    let long = format!("'{}'", "a".repeat(MAX_EXPRESSION_LEN));
    assert!(Expression::parse(&long).is_err());
    let name = "a".repeat(MAX_IDENTIFIER_LEN + 1);
    assert!(Expression::parse(&name).is_err());
    let deep = format!(
        "{}1{}",
        "ABS(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert!(Expression::parse(&deep).is_err());
}

#[test]
fn string_growth_is_bounded() {
    let big = "x".repeat(600 * 1024);
    let ev = EventBuilderV10::new()
        .id("e1")
        .source("s")
        .ty("t")
        .extension("big", big.as_str())
        .build()
        .expect("valid");
    let e = Expression::parse("LENGTH(CONCAT(big, big))").expect("parses");
    let (v, errs) = e.evaluate(&ev);
    assert_eq!(v, Value::Integer(0));
    assert_eq!(
        errs.iter().map(EvalError::kind).collect::<Vec<_>>(),
        vec![ErrorKind::FunctionEvaluation]
    );
}

/// A small deterministic PRNG (xorshift64*) so the randomized test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let n = items.len() as u64;
        items[usize::try_from(self.next() % n).unwrap_or(0)]
    }
}

/// A random expression that is mostly well-formed, to reach deep into the evaluator.
fn gen_expr(rng: &mut Rng, depth: u32) -> String {
    const ATOMS: &[&str] = &[
        "TRUE",
        "false",
        "0",
        "1",
        "-1",
        "7",
        "-2147483648",
        "2147483647",
        "'5'",
        "'abc'",
        "'TRUE'",
        "\"\"",
        "id",
        "subject",
        "sequence",
        "count",
        "flag",
        "big",
        "nope",
        "time",
    ];
    const BIN: &[&str] = &[
        " AND ", " OR ", " XOR ", " = ", " != ", " <> ", " < ", " <= ", " > ", " >= ", " + ",
        " - ", " * ", " / ", " % ",
    ];
    const FUNCS: &[&str] = &[
        "ABS",
        "LENGTH",
        "CONCAT",
        "CONCAT_WS",
        "LOWER",
        "UPPER",
        "TRIM",
        "LEFT",
        "RIGHT",
        "SUBSTRING",
        "INT",
        "BOOL",
        "STRING",
        "IS_BOOL",
        "IS_INT",
        "NOPE",
    ];
    if depth == 0 {
        return rng.pick(ATOMS).to_string();
    }
    match rng.next() % 9 {
        0 | 1 => format!(
            "{}{}{}",
            gen_expr(rng, depth - 1),
            rng.pick(BIN),
            gen_expr(rng, depth - 1)
        ),
        2 => format!("NOT {}", gen_expr(rng, depth - 1)),
        3 => format!("-{}", gen_expr(rng, depth - 1)),
        4 => format!("({})", gen_expr(rng, depth - 1)),
        5 => format!(
            "{} {}LIKE '{}'",
            gen_expr(rng, depth - 1),
            if rng.next() % 2 == 0 { "NOT " } else { "" },
            rng.pick(&["%", "_", "a%", "%c", "\\%", "1_", "t%e", ""])
        ),
        6 => {
            let n = 1 + rng.next() % 3;
            let items: Vec<String> = (0..n).map(|_| gen_expr(rng, depth - 1)).collect();
            format!("{} IN ({})", gen_expr(rng, depth - 1), items.join(", "))
        }
        7 => {
            let n = rng.next() % 4;
            let args: Vec<String> = (0..n).map(|_| gen_expr(rng, depth - 1)).collect();
            format!("{}({})", rng.pick(FUNCS), args.join(", "))
        }
        _ => format!("EXISTS {}", rng.pick(&["id", "time", "nope", "flag"])),
    }
}

fn check_consistent(text: &str, ev: &Event) -> bool {
    let Ok(e) = Expression::parse(text) else {
        return false;
    };
    let (v, errs) = e.evaluate(ev);
    // `matches` is true only when evaluate says Boolean true without errors.
    assert_eq!(
        e.matches(ev),
        errs.is_empty() && v == Value::Boolean(true),
        "{text}"
    );
    true
}

#[test]
fn random_input_never_panics() {
    const PIECES: &[&str] = &[
        "(",
        ")",
        ",",
        "+",
        "-",
        "*",
        "/",
        "%",
        "=",
        "!=",
        "<>",
        "<",
        "<=",
        ">",
        ">=",
        " AND ",
        " OR ",
        " XOR ",
        "NOT ",
        " LIKE ",
        " IN ",
        "EXISTS ",
        "TRUE",
        "false",
        "0",
        "1",
        "-2147483648",
        "2147483647",
        "99999999999",
        "'a%b_'",
        "\"x\\\"y\"",
        "'\\'",
        "id",
        "subject",
        "sequence",
        "count",
        "flag",
        "nope",
        "ABS(",
        "LENGTH(",
        "CONCAT(",
        "CONCAT_WS(",
        "LEFT(",
        "RIGHT(",
        "SUBSTRING(",
        "INT(",
        "BOOL(",
        "STRING(",
        "LOWER(",
        "UPPER(",
        "TRIM(",
        "IS_INT(",
        "NOPE(",
        " ",
        "é",
        "#",
        "'",
    ];
    let ev = event();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Token soup: mostly parse errors, must never panic.
    for _ in 0..20_000 {
        let n = 1 + rng.next() % 24;
        let text: String = (0..n).map(|_| rng.pick(PIECES)).collect();
        check_consistent(&text, &ev);
    }
    // Grammar-shaped expressions, and the same with one character removed.
    let mut parsed = 0;
    for _ in 0..20_000 {
        let depth = u32::try_from(rng.next() % 6).unwrap_or(0);
        let text = gen_expr(&mut rng, depth);
        if check_consistent(&text, &ev) {
            parsed += 1;
        }
        let mut chars: Vec<char> = text.chars().collect();
        let at = usize::try_from(rng.next() % chars.len() as u64).unwrap_or(0);
        chars.remove(at);
        check_consistent(&chars.into_iter().collect::<String>(), &ev);
    }
    // The generator must reach the evaluator, or the test proves little.
    assert!(
        parsed > 15_000,
        "only {parsed} generated expressions parsed"
    );
}

/// The deepest expressions the parser accepts can be parsed, cloned, printed, evaluated
/// and dropped within 2 MiB of stack, tokio's default for worker threads. (Measured: about
/// 1 MiB is needed in debug builds, 128 KiB in release builds.)
#[test]
fn deepest_accepted_expressions_fit_a_worker_stack() {
    let d = MAX_DEPTH - 1;
    let shapes = vec![
        format!("{}1{}", "(".repeat(d), ")".repeat(d)),
        format!("{}1{}", "ABS(".repeat(d), ")".repeat(d)),
        format!("{}TRUE", "NOT ".repeat(d)),
        format!("{}1{}", "-(".repeat(d / 2), ")".repeat(d / 2)),
        format!("{}1{}", "(1 + (2 * ".repeat(d / 4), "))".repeat(d / 4)),
        format!(
            "{}TRUE{}",
            "(TRUE AND (1 = ".repeat(d / 4),
            "))".repeat(d / 4)
        ),
        format!("1{}", " IN (1)".repeat(d)),
        format!("sequence{}", " LIKE '%'".repeat(d)),
    ];
    let count = shapes.len();
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let ev = event();
            let mut n = 0;
            for text in &shapes {
                let e = Expression::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
                let copy = e.clone();
                assert!(!format!("{copy:?}").is_empty());
                let _ = e.evaluate(&ev);
                let _ = e.matches(&ev);
                n += 1;
            }
            n
        })
        .expect("spawn");
    assert_eq!(handle.join().expect("no stack overflow"), count);
}

/// Rough throughput of `matches` for a typical filter. Run with
/// `cargo test -p meshd-core --release --lib cesql::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_matches() {
    let ev = event();
    let e = Expression::parse(
        "type LIKE 'com.example.%' AND (subject LIKE 'orders/%' OR source = 'x') \
         AND sequence > 3 AND count IN (1, 7, 9) AND NOT EXISTS missing",
    )
    .expect("parses");
    let n = 1_000_000u32;
    let started = std::time::Instant::now();
    let mut hits = 0u32;
    for _ in 0..n {
        hits += u32::from(e.matches(std::hint::black_box(&ev)));
    }
    let el = started.elapsed();
    assert_eq!(hits, n);
    println!(
        "matches: {n} evaluations in {el:?}, {:.0} ns each",
        el.as_nanos() as f64 / f64::from(n)
    );
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        let _ = std::hint::black_box(Expression::parse(e.as_str()));
    }
    println!("parse: {:?} each", started.elapsed() / 10_000);
}

#[test]
fn parse_error_messages_read_well() {
    let msg = |t: &str| Expression::parse(t).expect_err(t).message;
    assert_eq!(
        msg(""),
        "unexpected end of input, expected an expression (at column 1)"
    );
    assert_eq!(
        msg("ABC("),
        "unexpected end of input, expected an expression (at column 5)"
    );
    assert_eq!(
        msg("x LIKE 123"),
        "the pattern of LIKE must be a string literal, found an integer (at column 8)"
    );
    assert_eq!(
        msg("a = 1 b"),
        "unexpected 'b', expected an operator or the end (at column 7)"
    );
    assert_eq!(
        msg("2147483648"),
        "integer literal out of range (-2147483648 to 2147483647) (at column 1)"
    );
    assert_eq!(
        msg("LENGTH('a' 'b')"),
        "unexpected a string literal in the arguments of LENGTH, expected ',' or ')' (at column 12)"
    );
}
