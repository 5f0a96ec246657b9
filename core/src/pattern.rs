//! EventBridge / event-ruler compatible JSON event patterns.
//!
//! STUB until the filter-engine issue lands: only exact values (lists of strings, numbers,
//! booleans, null) on attributes and `data` fields are supported, evaluated directly.
//! The signatures here are the interface the rest of meshd uses.

use cloudevents::event::{Data, ExtensionValue};
use cloudevents::Event;
use serde_json::{Map, Value};

/// Why a pattern was refused: names the path in the pattern and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {path}: {message}")]
pub struct PatternError {
    /// JSON path into the pattern, e.g. `data.price`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    root: Map<String, Value>,
}

impl Pattern {
    /// Validates and compiles a pattern.
    pub fn compile(pattern: &Value) -> Result<Pattern, PatternError> {
        let Value::Object(root) = pattern else {
            return Err(PatternError {
                path: "$".into(),
                message: "a pattern must be a JSON object".into(),
            });
        };
        check(root, "")?;
        Ok(Pattern { root: root.clone() })
    }

    /// Whether the event matches.
    pub fn matches(&self, event: &Event) -> bool {
        let view = event_view(event);
        match_obj(&self.root, &view)
    }
}

fn check(obj: &Map<String, Value>, path: &str) -> Result<(), PatternError> {
    for (k, v) in obj {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            Value::Object(m) => check(m, &p)?,
            Value::Array(items) => {
                if items.iter().any(|i| i.is_object() || i.is_array()) {
                    return Err(PatternError {
                        path: p,
                        message: "only exact values are supported yet".into(),
                    });
                }
            }
            _ => {
                return Err(PatternError {
                    path: p,
                    message: "match values must be in an array".into(),
                })
            }
        }
    }
    Ok(())
}

/// The event as one JSON object: context attributes and extensions at the top level, the
/// JSON `data` under `data`.
pub fn event_view(event: &Event) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, value) in event.iter_attributes() {
        m.insert(name.to_string(), Value::String(value.to_string()));
    }
    for (name, value) in event.iter_extensions() {
        let v = match value {
            ExtensionValue::String(s) => Value::String(s.clone()),
            ExtensionValue::Boolean(b) => Value::Bool(*b),
            ExtensionValue::Integer(i) => Value::from(*i),
        };
        m.insert(name.to_string(), v);
    }
    match event.data() {
        Some(Data::Json(v)) => {
            m.insert("data".into(), v.clone());
        }
        Some(Data::String(s)) => {
            if let Ok(v) = serde_json::from_str::<Value>(s) {
                m.insert("data".into(), v);
            }
        }
        _ => {}
    }
    m
}

fn match_obj(pattern: &Map<String, Value>, event: &Map<String, Value>) -> bool {
    pattern.iter().all(|(k, pv)| match (pv, event.get(k)) {
        (Value::Object(p), Some(Value::Object(e))) => match_obj(p, e),
        (Value::Array(allowed), Some(Value::Array(items))) => items
            .iter()
            .any(|i| allowed.iter().any(|a| scalar_eq(a, i))),
        (Value::Array(allowed), Some(v)) => allowed.iter().any(|a| scalar_eq(a, v)),
        (Value::Array(_), None) => false,
        _ => false,
    })
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}
