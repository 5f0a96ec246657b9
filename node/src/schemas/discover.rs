//! Schema discovery (sans-IO): infers a JSON Schema per (source, type) from the `data` of
//! the events a topic stores, as EventBridge's discovery does (docs/api.md, "Schema
//! discovery").
//!
//! A [`Shape`] is what was seen at one place of the data: the JSON types met there, and
//! for objects their fields (with how often each was present), for arrays the merged shape
//! of their items. [`Discovered::observe`] merges an event's data into the latest version's
//! shape; when the merged shape reads as another JSON Schema document (a new field, a
//! type widened, a field no longer present in every event) it becomes a new version, else
//! only the counts move.
//!
//! Rules: `required` lists the fields present in every object seen at that place;
//! integers and non-integral numbers merge to `number`; `null` joins the other types
//! (`["string", "null"]`); an empty array says nothing about its items. Bounds: at most
//! [`MAX_FIELDS`] fields per object (more are not tracked and the object is marked as
//! having more), [`MAX_DEPTH`] levels (deeper values are any value), field names up to
//! [`MAX_NAME`] bytes, [`MAX_VERSIONS`] versions per (source, type) (past it the latest
//! version is updated in place).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// Most fields tracked per object.
pub const MAX_FIELDS: usize = 64;
/// Deepest level inferred (the data itself is level 1).
pub const MAX_DEPTH: usize = 8;
/// Longest field name tracked (bytes).
pub const MAX_NAME: usize = 128;
/// Most versions kept per (source, type).
pub const MAX_VERSIONS: u32 = 50;

/// JSON types as JSON Schema names them (`integer` apart from `number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ty {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Boolean => "boolean",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::String => "string",
            Ty::Array => "array",
            Ty::Object => "object",
        }
    }
}

/// What was seen at one place of the data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    types: BTreeSet<Ty>,
    /// Fields of the objects seen here: (shape, objects they were present in).
    fields: BTreeMap<String, (Shape, u64)>,
    /// Objects seen here.
    objects: u64,
    /// Some object here had fields past the bounds.
    more_fields: bool,
    /// The merged shape of array items (`None`: no item seen).
    items: Option<Box<Shape>>,
    /// Past [`MAX_DEPTH`]: any value.
    any: bool,
}

impl Shape {
    /// The shape of one value.
    pub fn of(value: &Value) -> Shape {
        let mut s = Shape::default();
        s.add(value, 1);
        s
    }

    fn add(&mut self, value: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            self.any = true;
            return;
        }
        let ty = match value {
            Value::Null => Ty::Null,
            Value::Bool(_) => Ty::Boolean,
            Value::Number(n) if n.is_i64() || n.is_u64() => Ty::Integer,
            Value::Number(_) => Ty::Number,
            Value::String(_) => Ty::String,
            Value::Array(items) => {
                for item in items {
                    self.items
                        .get_or_insert_with(Default::default)
                        .add(item, depth + 1);
                }
                Ty::Array
            }
            Value::Object(map) => {
                self.objects += 1;
                for (name, v) in map {
                    let known = self.fields.contains_key(name);
                    if !known && (self.fields.len() >= MAX_FIELDS || name.len() > MAX_NAME) {
                        self.more_fields = true;
                        continue;
                    }
                    let (shape, seen) = self.fields.entry(name.clone()).or_default();
                    shape.add(v, depth + 1);
                    *seen += 1;
                }
                Ty::Object
            }
        };
        self.types.insert(ty);
    }

    /// Merges another shape seen at the same place.
    pub fn merge(&mut self, other: &Shape) {
        self.types.extend(other.types.iter().copied());
        self.objects += other.objects;
        self.more_fields |= other.more_fields;
        self.any |= other.any;
        for (name, (shape, seen)) in &other.fields {
            let room = self.fields.len() < MAX_FIELDS;
            match self.fields.get_mut(name) {
                Some((mine, n)) => {
                    mine.merge(shape);
                    *n += seen;
                }
                None if room => {
                    self.fields.insert(name.clone(), (shape.clone(), *seen));
                }
                None => self.more_fields = true,
            }
        }
        if let Some(items) = &other.items {
            match &mut self.items {
                Some(mine) => mine.merge(items),
                None => self.items = Some(items.clone()),
            }
        }
    }

    /// The JSON Schema this shape reads as (without `$schema`).
    pub fn to_schema(&self) -> Value {
        if self.any || self.types.is_empty() {
            return json!({});
        }
        let mut types: Vec<Ty> = self.types.iter().copied().collect();
        if types.contains(&Ty::Number) {
            types.retain(|t| *t != Ty::Integer);
        }
        let mut out = Map::new();
        out.insert(
            "type".into(),
            match types.as_slice() {
                [one] => Value::from(one.name()),
                many => many.iter().map(|t| Value::from(t.name())).collect(),
            },
        );
        if self.types.contains(&Ty::Object) {
            let props: Map<String, Value> = self
                .fields
                .iter()
                .map(|(n, (s, _))| (n.clone(), s.to_schema()))
                .collect();
            let required: Vec<Value> = self
                .fields
                .iter()
                .filter(|(_, (_, seen))| *seen == self.objects)
                .map(|(n, _)| Value::from(n.as_str()))
                .collect();
            out.insert("properties".into(), Value::Object(props));
            if !required.is_empty() {
                out.insert("required".into(), Value::Array(required));
            }
            if self.more_fields {
                out.insert(
                    "description".into(),
                    Value::from(format!(
                        "more fields were seen than discovery tracks ({MAX_FIELDS} per object)"
                    )),
                );
            }
        }
        if self.types.contains(&Ty::Array) {
            if let Some(items) = &self.items {
                out.insert("items".into(), items.to_schema());
            }
        }
        Value::Object(out)
    }
}

/// The schema document of a shape: [`Shape::to_schema`] with `$schema` (2020-12), ready
/// for `PUT /v1/schemas/{name}`.
pub fn document(shape: &Shape) -> Value {
    let mut doc = shape.to_schema();
    if let Value::Object(m) = &mut doc {
        m.insert(
            "$schema".into(),
            Value::from("https://json-schema.org/draft/2020-12/schema"),
        );
    }
    doc
}

/// One discovered version.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1, 2, …
    pub version: u32,
    /// Its schema document.
    pub schema: Value,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    shape: Shape,
}

/// What was discovered for one (source, type).
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// Oldest first.
    pub versions: Vec<Version>,
    /// Events observed.
    pub events: u64,
    /// When the last one was observed (ms since the epoch).
    pub last_ms: u64,
}

impl Discovered {
    /// Merges one event's data; answers whether a version was made.
    pub fn observe(&mut self, data: &Value, now_ms: u64) -> bool {
        self.events += 1;
        self.last_ms = now_ms;
        let seen = Shape::of(data);
        let Some(latest) = self.versions.last_mut() else {
            self.versions.push(Version {
                version: 1,
                schema: document(&seen),
                created_ms: now_ms,
                shape: seen,
            });
            return true;
        };
        let mut merged = latest.shape.clone();
        merged.merge(&seen);
        let schema = document(&merged);
        if schema == latest.schema {
            latest.shape = merged;
            return false;
        }
        if latest.version >= MAX_VERSIONS {
            // Bounded: the latest version follows in place.
            latest.shape = merged;
            latest.schema = schema;
            latest.created_ms = now_ms;
            return true;
        }
        let version = latest.version + 1;
        self.versions.push(Version {
            version,
            schema,
            created_ms: now_ms,
            shape: merged,
        });
        true
    }
}

/// Most (source, type) pairs discovered per topic; events of further pairs are counted
/// and not inferred.
pub const MAX_KEYS: usize = 100;

/// A (source, type) pair.
pub type Key = (String, String);

/// What happened to one observed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Its shape was known.
    Known,
    /// It made a new version (or the first).
    NewVersion,
    /// Its (source, type) is past [`MAX_KEYS`] for its topic: not inferred.
    TooManyKeys,
}

/// What a node discovered, by topic and (source, type).
#[derive(Debug, Default)]
pub struct Discoveries {
    topics: BTreeMap<String, BTreeMap<Key, Discovered>>,
}

impl Discoveries {
    /// Merges one event's data (`Value::Null` when it has none).
    pub fn observe(
        &mut self,
        topic: &str,
        source: &str,
        ty: &str,
        data: &Value,
        now_ms: u64,
    ) -> Observed {
        let keys = self.topics.entry(topic.to_string()).or_default();
        let key = (source.to_string(), ty.to_string());
        if !keys.contains_key(&key) && keys.len() >= MAX_KEYS {
            return Observed::TooManyKeys;
        }
        if keys.entry(key).or_default().observe(data, now_ms) {
            Observed::NewVersion
        } else {
            Observed::Known
        }
    }

    /// Everything discovered on a topic, by (source, type).
    pub fn topic(&self, topic: &str) -> Option<&BTreeMap<Key, Discovered>> {
        self.topics.get(topic)
    }

    /// Forgets a topic (deleted, or discovery turned off).
    pub fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(events: &[Value]) -> Discovered {
        let mut d = Discovered::default();
        for (i, e) in events.iter().enumerate() {
            d.observe(e, i as u64);
        }
        d
    }

    #[test]
    fn types_nested_objects_arrays_and_required() {
        let d = run(&[
            json!({"id": "a", "n": 1, "price": 2, "tags": ["x"], "customer": {"name": "c", "vip": true}}),
            json!({"id": "b", "n": 2, "price": 2.5, "tags": [], "customer": {"name": "d"}, "note": null}),
        ]);
        let latest = &d.versions.last().unwrap().schema;
        assert_eq!(
            latest,
            &json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "n": {"type": "integer"},
                    "price": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "customer": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "vip": {"type": "boolean"}},
                        "required": ["name"]
                    },
                    "note": {"type": "null"}
                },
                "required": ["customer", "id", "n", "price", "tags"]
            })
        );
        assert_eq!(d.events, 2);
    }

    #[test]
    fn a_known_shape_makes_no_version_and_a_new_one_does() {
        let mut d = Discovered::default();
        assert!(d.observe(&json!({"id": "a", "n": 1}), 1));
        // Same shape, other values: no version.
        assert!(!d.observe(&json!({"id": "b", "n": 7}), 2));
        // A new field: a version (not required: seen once in three).
        assert!(d.observe(&json!({"id": "c", "n": 1, "extra": "x"}), 3));
        assert_eq!(d.versions.len(), 2);
        assert_eq!(d.versions[1].schema["required"], json!(["id", "n"]));
        // A type widened: integer and string at n.
        assert!(d.observe(&json!({"id": "c", "n": "one"}), 4));
        assert_eq!(
            d.versions[2].schema["properties"]["n"]["type"],
            json!(["integer", "string"])
        );
        // Seen again: nothing new.
        assert!(!d.observe(&json!({"id": "d", "n": "two", "extra": "y"}), 5));
        assert_eq!(d.versions.len(), 3);
        // Non-object data (or none) is typed too.
        let mut s = Discovered::default();
        s.observe(&Value::Null, 1);
        s.observe(&json!("text"), 2);
        assert_eq!(s.versions[1].schema["type"], json!(["null", "string"]));
    }

    #[test]
    fn bounds_hold() {
        // Fields past the cap are not tracked and the object says so.
        let mut wide = Map::new();
        for i in 0..(MAX_FIELDS + 10) {
            wide.insert(format!("f{i:03}"), json!(i));
        }
        let d = run(&[Value::Object(wide)]);
        let doc = &d.versions[0].schema;
        assert_eq!(doc["properties"].as_object().unwrap().len(), MAX_FIELDS);
        assert!(doc["description"].is_string());
        // Depth is bounded: past it, any value.
        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 5) {
            deep = json!({ "d": deep });
        }
        let doc = document(&Shape::of(&deep));
        let mut at = &doc;
        let mut levels = 0;
        while let Some(next) = at.get("properties").and_then(|p| p.get("d")) {
            at = next;
            levels += 1;
        }
        assert_eq!(levels, MAX_DEPTH);
        assert_eq!(at, &json!({}));
        // Versions are bounded: the latest follows in place.
        let mut d = Discovered::default();
        for i in 0..(MAX_VERSIONS + 10) {
            d.observe(&json!({ format!("f{i}"): 1 }), u64::from(i));
        }
        assert_eq!(d.versions.len(), MAX_VERSIONS as usize);
        assert_eq!(
            d.versions.last().unwrap().schema["properties"]
                .as_object()
                .unwrap()
                .len(),
            (MAX_VERSIONS + 10) as usize
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-e]{1,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn pairs_per_topic_are_bounded() {
        let mut all = Discoveries::default();
        for i in 0..MAX_KEYS {
            let source = format!("/s{i}");
            assert_eq!(
                all.observe("t", &source, "ty", &json!({}), 1),
                Observed::NewVersion
            );
        }
        assert_eq!(
            all.observe("t", "/one-more", "ty", &json!({}), 2),
            Observed::TooManyKeys
        );
        // Known pairs still learn; other topics have their own bound.
        assert_eq!(
            all.observe("t", "/s0", "ty", &json!({}), 3),
            Observed::Known
        );
        assert_eq!(
            all.observe("u", "/one-more", "ty", &json!({}), 3),
            Observed::NewVersion
        );
        assert_eq!(all.topic("t").unwrap().len(), MAX_KEYS);
        all.forget("t");
        assert!(all.topic("t").is_none());
    }

    proptest! {
        /// Every event observed is valid under the latest discovered schema, the latest
        /// schema compiles, and observing the same events again makes no version.
        #[test]
        fn every_event_seen_is_valid_under_the_latest_version(
            events in prop::collection::vec(json_value(), 1..8)
        ) {
            let mut d = run(&events);
            let latest = d.versions.last().unwrap().schema.clone();
            let validator = jsonschema::validator_for(&latest).unwrap();
            for e in &events {
                prop_assert!(validator.is_valid(e), "{} not valid under {}", e, latest);
            }
            let versions = d.versions.len();
            for e in &events {
                prop_assert!(!d.observe(e, 99));
            }
            prop_assert_eq!(d.versions.len(), versions);
        }
    }
}
