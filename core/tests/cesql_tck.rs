//! Runs the official CloudEvents SQL TCK (cloudevents/spec `cesql/cesql_tck`) against
//! `meshd_core::cesql`.
//!
//! The YAML files are read from `$MESHD_CESQL_TCK` if set, else from
//! `<core>/../../shared/testdata/cesql-tck` (the project's shared test data next to the
//! repository). Every case of every file runs; the test fails if the directory is missing,
//! holds no files, or any case fails, and prints how many cases passed.
//!
//! Per case: a case expecting a `parse` error must fail to parse; any other case must
//! parse, evaluate to the expected `result` (if given) and raise errors only of the
//! expected kind (at least one) or none if no `error` is given. `matches` is also checked
//! against the filter rule (Boolean `true` and no error).
//!
//! One accommodation, counted and printed: cloudevents-sdk keeps `time` as a UTC instant,
//! so `2018-04-26T14:48:09+02:00` is read back as `2018-04-26T12:48:09Z`. A result that is
//! a timestamp is compared as an instant.

use std::path::{Path, PathBuf};

use meshd_core::cesql::{ErrorKind, Expression, Value};
use meshd_core::Event;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    name: String,
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    expression: String,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    event: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, rename = "eventOverrides")]
    event_overrides: Option<serde_json::Map<String, serde_json::Value>>,
}

fn tck_dir() -> PathBuf {
    match std::env::var_os("MESHD_CESQL_TCK") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/cesql-tck"),
    }
}

/// The event a case runs against: its own `event`, or a minimal valid event with the
/// `eventOverrides` applied.
fn build_event(case: &Case) -> Result<Event, String> {
    let mut json = match &case.event {
        Some(e) => e.clone(),
        None => {
            let mut m = serde_json::Map::new();
            m.insert("specversion".into(), "1.0".into());
            m.insert("id".into(), "tck-id".into());
            m.insert("source".into(), "localhost.localdomain".into());
            m.insert("type".into(), "tck.type".into());
            m
        }
    };
    if let Some(o) = &case.event_overrides {
        for (k, v) in o {
            json.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::Value::Object(json)).map_err(|e| format!("event: {e}"))
}

fn expected_value(v: &serde_json::Value) -> Result<Value, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Boolean(*b)),
        serde_json::Value::String(s) => Ok(Value::String(s.clone())),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Value::Integer)
            .ok_or_else(|| format!("result {n} is not a 32-bit integer")),
        other => Err(format!("unsupported result {other}")),
    }
}

fn error_kind(s: &str) -> Result<ErrorKind, String> {
    Ok(match s {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        "generic" => ErrorKind::Generic,
        other => return Err(format!("unknown error kind {other:?}")),
    })
}

/// Same instant, for results that are RFC 3339 timestamps.
fn same_instant(got: &Value, want: &Value) -> bool {
    let (Value::String(g), Value::String(w)) = (got, want) else {
        return false;
    };
    match (
        chrono::DateTime::parse_from_rfc3339(g),
        chrono::DateTime::parse_from_rfc3339(w),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    time_normalized: usize,
}

fn run_case(case: &Case, tally: &mut Tally) -> Result<(), String> {
    let want_error = case.error.as_deref().map(error_kind).transpose()?;
    let parsed = Expression::parse(&case.expression);
    if want_error == Some(ErrorKind::Parse) {
        return match parsed {
            Err(_) => Ok(()),
            Ok(e) => Err(format!("expected a parse error, parsed as {e:?}")),
        };
    }
    let expr = parsed.map_err(|e| format!("parse error: {e}"))?;
    let event = build_event(case)?;
    let (value, errors) = expr.evaluate(&event);
    let kinds: Vec<ErrorKind> = errors.iter().map(|e| e.kind()).collect();
    match want_error {
        None if !kinds.is_empty() => return Err(format!("unexpected errors {errors:?}")),
        Some(k) if kinds.is_empty() || kinds.iter().any(|g| *g != k) => {
            return Err(format!("expected only {k:?} errors, got {errors:?}"))
        }
        _ => {}
    }
    if let Some(r) = &case.result {
        let want = expected_value(r)?;
        if value != want {
            if same_instant(&value, &want) {
                tally.time_normalized += 1;
            } else {
                return Err(format!("expected {want:?}, got {value:?}"));
            }
        }
    }
    let should_match = kinds.is_empty() && value == Value::Boolean(true);
    if expr.matches(&event) != should_match {
        return Err(format!(
            "matches() disagrees with evaluate(): {value:?} {errors:?}"
        ));
    }
    Ok(())
}

#[test]
fn cesql_tck() {
    let dir = tck_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("CESQL TCK directory {} unreadable: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no TCK files in {}", dir.display());

    let mut tally = Tally::default();
    let mut total = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let suite: Suite = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a TCK file: {e}", file.display()));
        assert!(!suite.tests.is_empty(), "{}: no tests", file.display());
        for case in &suite.tests {
            total += 1;
            match run_case(case, &mut tally) {
                Ok(()) => tally.passed += 1,
                Err(why) => failures.push(format!(
                    "{} / {}: `{}`: {why}",
                    suite.name, case.name, case.expression
                )),
            }
        }
    }
    println!(
        "CESQL TCK: {} of {total} cases pass ({} files; {} compared a timestamp as an instant)",
        tally.passed,
        files.len(),
        tally.time_normalized
    );
    assert!(
        failures.is_empty(),
        "{} of {total} TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
