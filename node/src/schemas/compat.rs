//! Compatibility of a new schema version with the previous one, checked structurally on
//! the two JSON Schema documents (no events involved), the way schema registries do it
//! for JSON Schema. Pure functions: no I/O.
//!
//! `backward` asks that every event valid under the previous version (`old`) stays valid
//! under the new one: the new version may only loosen. The rules, each named in the 409
//! answer, are checked on the root schema and recursively on the `properties` both
//! versions declare and on `items`:
//!
//! - `required-added`: a property required by the new version and not by the old;
//! - `type-narrowed`: a JSON type the old version accepts and the new does not (no
//!   `type` accepts every type; `number` covers `integer`);
//! - `enum-narrowed`: an `enum`/`const` in the new version that leaves out a value the old
//!   accepted, or one added where the old had none;
//! - `additional-properties-closed`: `additionalProperties: false` in the new version and
//!   not in the old;
//! - `property-removed`: under `additionalProperties: false` in the new version, a
//!   property the old version declared is no longer declared;
//! - `bound-tightened`: `minimum`, `exclusiveMinimum`, `minLength`, `minItems`,
//!   `minProperties` raised (or added), `maximum`, `exclusiveMaximum`, `maxLength`,
//!   `maxItems`, `maxProperties` lowered (or added);
//! - `pattern-changed`: a `pattern` added or changed (regular expressions are not
//!   compared: any change counts as narrowing).
//!
//! `forward` is the same check with the versions swapped (every event valid under the new
//! version is valid under the old); `full` is both; `none` checks nothing. Only the
//! latest version is compared (not every earlier one), and keywords not listed above
//! (`$ref`, `oneOf`, `if`, ...) are not compared: the check can miss a break there.

use meshd_core::api::Compatibility;
use serde_json::{Map, Value};

/// A rule a new version breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mode} compatibility, rule {rule}: {path}: {message}")]
pub struct Violation {
    /// The mode checked (`backward`, `forward`).
    pub mode: &'static str,
    /// The rule (see the module docs), e.g. `required-added`.
    pub rule: &'static str,
    /// JSON pointer of the (sub)schema at fault in the new version (`""` for the root).
    pub path: String,
    /// What changed.
    pub message: String,
}

/// Checks `new` against `old` under `mode`.
pub fn check(old: &Value, new: &Value, mode: Compatibility) -> Result<(), Violation> {
    let tag = |mode: &'static str| {
        move |(rule, path, message): (&'static str, String, String)| Violation {
            mode,
            rule,
            path,
            message,
        }
    };
    match mode {
        Compatibility::None => Ok(()),
        Compatibility::Backward => looser(old, new, "").map_err(tag("backward")),
        Compatibility::Forward => looser(new, old, "").map_err(tag("forward")),
        Compatibility::Full => {
            looser(old, new, "").map_err(tag("backward"))?;
            looser(new, old, "").map_err(tag("forward"))
        }
    }
}

type Broken = (&'static str, String, String);

const TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "string", "integer",
];

/// The JSON types a schema's `type` admits (`None`: every type).
fn types(s: &Map<String, Value>) -> Option<Vec<&str>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn admits_type(set: &Option<Vec<&str>>, t: &str) -> bool {
    match set {
        None => true,
        Some(set) => set.contains(&t) || (t == "integer" && set.contains(&"number")),
    }
}

fn allowed_values(s: &Map<String, Value>) -> Option<Vec<&Value>> {
    if let Some(c) = s.get("const") {
        return Some(vec![c]);
    }
    s.get("enum")?.as_array().map(|a| a.iter().collect())
}

fn closed(s: &Map<String, Value>) -> bool {
    s.get("additionalProperties") == Some(&Value::Bool(false))
}

fn required(s: &Map<String, Value>) -> Vec<&str> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn properties(s: &Map<String, Value>) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

/// Escapes a JSON pointer token.
fn token(t: &str) -> String {
    t.replace('~', "~0").replace('/', "~1")
}

/// `Ok` when every instance valid under `narrow` is valid under `wide` as far as the rules
/// see; else the first rule broken, at `path` in `wide`.
fn looser(narrow: &Value, wide: &Value, path: &str) -> Result<(), Broken> {
    let (n, w) = match (narrow, wide) {
        // `true`/`{}` accept everything; `false` nothing.
        (_, Value::Bool(true)) | (Value::Bool(false), _) => return Ok(()),
        (_, Value::Bool(false)) => {
            return Err((
                "type-narrowed",
                path.to_string(),
                "the schema became false (accepts nothing)".into(),
            ))
        }
        (Value::Bool(true), Value::Object(w)) => (&Map::new(), w),
        (Value::Object(n), Value::Object(w)) => (n, w),
        _ => return Ok(()),
    };
    let at = |rule, message: String| Err((rule, path.to_string(), message));

    let (nt, wt) = (types(n), types(w));
    let narrow_types: Vec<&str> = match &nt {
        None => TYPES.to_vec(),
        Some(t) => t.clone(),
    };
    for t in narrow_types {
        if !admits_type(&wt, t) {
            return at(
                "type-narrowed",
                format!("type {t:?} was accepted and no longer is"),
            );
        }
    }

    if let Some(wv) = allowed_values(w) {
        match allowed_values(n) {
            None => return at("enum-narrowed", "an enum/const was added".into()),
            Some(nv) => {
                if let Some(lost) = nv.iter().find(|v| !wv.contains(v)) {
                    return at(
                        "enum-narrowed",
                        format!("value {lost} was accepted and no longer is"),
                    );
                }
            }
        }
    }

    let nreq = required(n);
    if let Some(added) = required(w).into_iter().find(|r| !nreq.contains(r)) {
        return at(
            "required-added",
            format!("property {added:?} became required"),
        );
    }

    if closed(w) && !closed(n) {
        return at(
            "additional-properties-closed",
            "additionalProperties became false".into(),
        );
    }
    let (np, wp) = (properties(n), properties(w));
    if closed(w) {
        if let Some(np) = np {
            if let Some(gone) = np.keys().find(|k| wp.is_none_or(|wp| !wp.contains_key(*k))) {
                return at(
                    "property-removed",
                    format!("property {gone:?} was removed under additionalProperties: false"),
                );
            }
        }
    }

    const RAISED: [&str; 5] = [
        "minimum",
        "exclusiveMinimum",
        "minLength",
        "minItems",
        "minProperties",
    ];
    const LOWERED: [&str; 5] = [
        "maximum",
        "exclusiveMaximum",
        "maxLength",
        "maxItems",
        "maxProperties",
    ];
    for (keys, tighter) in [
        (&RAISED, (|n: f64, w: f64| w > n) as fn(f64, f64) -> bool),
        (&LOWERED, |n: f64, w: f64| w < n),
    ] {
        for k in keys.iter() {
            let Some(wb) = w.get(*k).and_then(Value::as_f64) else {
                continue;
            };
            match n.get(*k).and_then(Value::as_f64) {
                None => return at("bound-tightened", format!("{k} {wb} was added")),
                Some(nb) if tighter(nb, wb) => {
                    return at("bound-tightened", format!("{k} went from {nb} to {wb}"))
                }
                Some(_) => {}
            }
        }
    }

    if let Some(wpat) = w.get("pattern") {
        if n.get("pattern") != Some(wpat) {
            return at("pattern-changed", format!("pattern became {wpat}"));
        }
    }

    if let (Some(np), Some(wp)) = (np, wp) {
        for (k, ws) in wp {
            if let Some(ns) = np.get(k) {
                looser(ns, ws, &format!("{path}/properties/{}", token(k)))?;
            }
        }
    }
    if let (Some(ni), Some(wi)) = (n.get("items"), w.get("items")) {
        looser(ni, wi, &format!("{path}/items"))?;
    } else if let (None, Some(wi)) = (n.get("items"), w.get("items")) {
        looser(&Value::Bool(true), wi, &format!("{path}/items"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Value {
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "amount": {"type": "number", "minimum": 0},
                "state": {"enum": ["new", "paid"]},
                "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}}
            },
            "required": ["id"]
        })
    }

    fn with(mut v: Value, pointer: &str, key: &str, value: Value) -> Value {
        v.pointer_mut(pointer)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.into(), value);
        v
    }

    fn rule(old: &Value, new: &Value, mode: Compatibility) -> Option<(&'static str, String)> {
        check(old, new, mode).err().map(|v| (v.rule, v.path))
    }

    #[test]
    fn the_same_schema_is_compatible_every_way() {
        for mode in [
            Compatibility::Backward,
            Compatibility::Forward,
            Compatibility::Full,
        ] {
            assert_eq!(rule(&order(), &order(), mode), None);
        }
    }

    #[test]
    fn a_new_required_property_breaks_backward_not_forward() {
        let new = with(order(), "", "required", json!(["id", "amount"]));
        assert_eq!(
            rule(&order(), &new, Compatibility::Backward),
            Some(("required-added", String::new()))
        );
        assert_eq!(rule(&order(), &new, Compatibility::Forward), None);
        let v = check(&order(), &new, Compatibility::Full).unwrap_err();
        assert_eq!(v.mode, "backward");
        assert!(v.to_string().contains("\"amount\" became required"), "{v}");
    }

    #[test]
    fn an_optional_property_added_is_compatible_both_ways() {
        let new = with(order(), "/properties", "note", json!({"type": "string"}));
        assert_eq!(rule(&order(), &new, Compatibility::Full), None);
    }

    #[test]
    fn narrowed_types_enums_and_bounds_are_named_with_their_path() {
        let new = with(order(), "/properties/amount", "type", json!("integer"));
        assert_eq!(
            rule(&order(), &new, Compatibility::Backward),
            Some(("type-narrowed", "/properties/amount".into()))
        );
        // integer -> number widens: backward holds, forward breaks.
        let int = with(order(), "/properties/amount", "type", json!("integer"));
        assert_eq!(rule(&int, &order(), Compatibility::Backward), None);
        assert_eq!(
            rule(&int, &order(), Compatibility::Forward).map(|r| r.0),
            Some("type-narrowed")
        );
        let new = with(order(), "/properties/state", "enum", json!(["new"]));
        assert_eq!(
            rule(&order(), &new, Compatibility::Backward),
            Some(("enum-narrowed", "/properties/state".into()))
        );
        let new = with(
            order(),
            "/properties/state",
            "enum",
            json!(["new", "paid", "void"]),
        );
        assert_eq!(rule(&order(), &new, Compatibility::Backward), None);
        assert_eq!(
            rule(&order(), &new, Compatibility::Forward).map(|r| r.0),
            Some("enum-narrowed")
        );
        let new = with(order(), "/properties/amount", "minimum", json!(1));
        assert_eq!(
            rule(&order(), &new, Compatibility::Backward),
            Some(("bound-tightened", "/properties/amount".into()))
        );
        let new = with(
            order(),
            "/properties/lines/items/properties/sku",
            "pattern",
            json!("^[A-Z]+$"),
        );
        assert_eq!(
            rule(&order(), &new, Compatibility::Backward),
            Some((
                "pattern-changed",
                "/properties/lines/items/properties/sku".into()
            ))
        );
    }

    #[test]
    fn closing_or_removing_properties_under_closed_schemas_breaks_backward() {
        let new = with(order(), "", "additionalProperties", json!(false));
        assert_eq!(
            rule(&order(), &new, Compatibility::Backward).map(|r| r.0),
            Some("additional-properties-closed")
        );
        let old = with(order(), "", "additionalProperties", json!(false));
        let mut new = old.clone();
        new["properties"].as_object_mut().unwrap().remove("state");
        assert_eq!(
            rule(&old, &new, Compatibility::Backward).map(|r| r.0),
            Some("property-removed")
        );
        // Removing a property from an open schema keeps old events valid.
        let mut open = order();
        open["properties"].as_object_mut().unwrap().remove("state");
        assert_eq!(rule(&order(), &open, Compatibility::Backward), None);
    }

    #[test]
    fn none_accepts_anything() {
        assert_eq!(
            rule(&order(), &json!({"type": "string"}), Compatibility::None),
            None
        );
        assert_eq!(
            rule(&order(), &json!(false), Compatibility::Backward).map(|r| r.0),
            Some("type-narrowed")
        );
    }
}
