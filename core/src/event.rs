//! CloudEvents 1.0: parsing the HTTP protocol binding (binary, structured and batch modes)
//! and validating events per the spec.
//!
//! Everything here is sans-IO: the HTTP layer hands over header pairs and the body bytes,
//! and gets back events or an [`EventError`] naming the offending field.

use std::borrow::Cow;

use base64::Engine as _;
use cloudevents::event::{AttributeValue, AttributesReader, Data, ExtensionValue};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use serde_json::{Map, Value};

/// Content type of a structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Content type of a batch of structured events.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// The extension that carries the partition key (CloudEvents partitioning extension).
pub const PARTITION_KEY: &str = "partitionkey";

/// Extension naming the cluster a replicated event was published in (set by the mesh).
pub const ORIGIN_EXT: &str = "meshdorigin";
/// Extension listing the clusters that stored a replicated event, origin first (set by
/// the mesh; loop prevention reads it).
pub const PATH_EXT: &str = "meshdpath";
/// Extension carrying a replicated event's position in its origin cluster,
/// `PARTITION:OFFSET` (set by the mesh when the event first leaves its origin; receivers
/// keep per origin partition the highest position they stored and resume links after it).
pub const POS_EXT: &str = "meshdpos";

/// Removes the mesh's own extensions ([`ORIGIN_EXT`], [`PATH_EXT`], [`POS_EXT`]) from an event a
/// client publishes: a publish is a new event of the cluster it is published in, also
/// when a consumer republishes an event it received from the mesh with those attributes
/// (or a client sets them): otherwise loop prevention would keep the event from clusters
/// named on the copied path.
pub fn strip_mesh_extensions(mut event: Event) -> Event {
    event.remove_extension(ORIGIN_EXT);
    event.remove_extension(PATH_EXT);
    event.remove_extension(POS_EXT);
    event
}
/// Longest extension name we accept. The spec says names SHOULD NOT exceed 20 characters;
/// we allow some slack for existing producers but bound it.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 64;
/// Most events accepted in one batch request.
pub const MAX_BATCH_EVENTS: usize = 10_000;

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];
const CONTEXT_ATTRIBUTES: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// Why an event (or a batch) was refused. `field` names the attribute at fault, with the
/// batch index in front (`[3].source`) for batches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    /// Stable machine-readable code, e.g. `missing_attribute`.
    pub code: &'static str,
    /// The attribute (or body part) at fault.
    pub field: Option<String>,
    /// A sentence saying what is wrong and what is expected.
    pub message: String,
}

impl EventError {
    fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        EventError {
            code,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    fn body(message: impl Into<String>) -> Self {
        EventError {
            code: "malformed_body",
            field: None,
            message: message.into(),
        }
    }

    fn at_index(mut self, i: usize) -> Self {
        self.field = Some(match self.field {
            Some(f) => format!("[{i}].{f}"),
            None => format!("[{i}]"),
        });
        self.message = format!("event {i} of the batch: {}", self.message);
        self
    }
}

/// Which encoding a publish request uses, decided from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce-*` headers, data in the body.
    Binary,
    /// One JSON event in the body.
    Structured,
    /// A JSON array of structured events.
    Batch,
}

/// Why the request's content type can not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported content type {content_type:?}: send a CloudEvent in binary mode (ce-* headers), structured mode ({STRUCTURED_CONTENT_TYPE}) or batch mode ({BATCH_CONTENT_TYPE})")]
pub struct UnsupportedMediaType {
    /// What the client sent (empty when it sent none).
    pub content_type: String,
}

/// The media type of a `Content-Type` value, lower-cased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decides the mode from the content type and whether a `ce-specversion` header is present.
pub fn detect_mode(
    content_type: Option<&str>,
    has_ce_specversion: bool,
) -> Result<Mode, UnsupportedMediaType> {
    let mt = content_type.map(media_type).unwrap_or_default();
    match mt.as_str() {
        STRUCTURED_CONTENT_TYPE => Ok(Mode::Structured),
        BATCH_CONTENT_TYPE => Ok(Mode::Batch),
        m if m.starts_with("application/cloudevents") => Err(UnsupportedMediaType {
            content_type: content_type.unwrap_or_default().to_string(),
        }),
        _ if has_ce_specversion => Ok(Mode::Binary),
        _ => Err(UnsupportedMediaType {
            content_type: content_type.unwrap_or_default().to_string(),
        }),
    }
}

/// Parses one structured-mode event (JSON event format). A key appearing twice at the
/// top level of the event is refused (`duplicate_key`): which one counts is ambiguous, and
/// ambiguous input is how filters and auditors get fooled.
pub fn parse_structured(body: &[u8]) -> Result<Event, EventError> {
    let item: Item = serde_json::from_slice(body)
        .map_err(|e| EventError::body(format!("body is not valid JSON: {e}")))?;
    match item {
        Item::Object(map) => from_json_object(map),
        Item::Duplicate(key) => Err(duplicate_key(key)),
        Item::Other => Err(EventError::body(
            "a structured-mode body must be one JSON object",
        )),
    }
}

/// Parses a batch (JSON array of structured events). All or nothing: the first bad event
/// fails the whole batch with its index in the error.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let batch: Batch = serde_json::from_slice(body)
        .map_err(|e| EventError::body(format!("body is not valid JSON: {e}")))?;
    let Batch::Items(items) = batch else {
        return Err(EventError::body(
            "a batch body must be a JSON array of events",
        ));
    };
    if items.is_empty() {
        return Err(EventError::body("a batch must hold at least one event"));
    }
    if items.len() > MAX_BATCH_EVENTS {
        return Err(EventError::body(format!(
            "a batch holds at most {MAX_BATCH_EVENTS} events, this one has {}",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Item::Object(map) => from_json_object(map).map_err(|e| e.at_index(i)),
            Item::Duplicate(key) => Err(duplicate_key(key).at_index(i)),
            Item::Other => {
                Err(EventError::body("each batch item must be a JSON object").at_index(i))
            }
        })
        .collect()
}

fn duplicate_key(key: String) -> EventError {
    let message = format!(
        "the event has the key {key:?} more than once; which one counts would be ambiguous, so it is refused"
    );
    EventError::new("duplicate_key", key, message)
}

/// One JSON value read in the same single pass as before, but an object's keys are
/// checked for duplicates while it is built (the map's insert says whether the key was
/// there: no second parse, no extra lookup).
enum Item {
    /// An object with unique keys.
    Object(Map<String, Value>),
    /// An object with this key twice (the first one found).
    Duplicate(String),
    /// Anything but an object.
    Other,
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Item, A::Error> {
        let mut map = Map::new();
        let mut duplicate = None;
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            match map.entry(key) {
                serde_json::map::Entry::Vacant(v) => {
                    v.insert(value);
                }
                serde_json::map::Entry::Occupied(o) => {
                    duplicate.get_or_insert_with(|| o.key().clone());
                }
            }
        }
        Ok(match duplicate {
            Some(key) => Item::Duplicate(key),
            None => Item::Object(map),
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Item, A::Error> {
        while access.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Item::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Item, E> {
        Ok(Item::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Item, E> {
        Ok(Item::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Item, E> {
        Ok(Item::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Item, E> {
        Ok(Item::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Item, E> {
        Ok(Item::Other)
    }

    fn visit_unit<E>(self) -> Result<Item, E> {
        Ok(Item::Other)
    }
}

/// A batch body: an array of [`Item`]s, or anything else.
enum Batch {
    Items(Vec<Item>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BatchVisitor)
    }
}

struct BatchVisitor;

impl<'de> serde::de::Visitor<'de> for BatchVisitor {
    type Value = Batch;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Batch, A::Error> {
        let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(MAX_BATCH_EVENTS));
        while let Some(item) = access.next_element::<Item>()? {
            items.push(item);
        }
        Ok(Batch::Items(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Batch, A::Error> {
        while access
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Batch::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Batch, E> {
        Ok(Batch::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Batch, E> {
        Ok(Batch::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Batch, E> {
        Ok(Batch::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Batch, E> {
        Ok(Batch::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Batch, E> {
        Ok(Batch::Other)
    }

    fn visit_unit<E>(self) -> Result<Batch, E> {
        Ok(Batch::Other)
    }
}

/// Parses a binary-mode event: `headers` are all request headers (name, value) with
/// lower-case names; `content_type` becomes `datacontenttype`.
pub fn parse_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, EventError> {
    let mut map = Map::new();
    for (name, raw) in headers {
        let Some(attr) = name.strip_prefix("ce-") else {
            continue;
        };
        let value = std::str::from_utf8(raw).map_err(|_| {
            EventError::new(
                "invalid_attribute",
                attr,
                format!("header ce-{attr} is not valid UTF-8"),
            )
        })?;
        let decoded = percent_decode(value).ok_or_else(|| {
            EventError::new(
                "invalid_attribute",
                attr,
                format!("header ce-{attr} has a bad percent-encoding"),
            )
        })?;
        if attr == "datacontenttype" {
            return Err(EventError::new(
                "invalid_attribute",
                attr,
                "in binary mode datacontenttype travels as the Content-Type header, not ce-datacontenttype",
            ));
        }
        if map
            .insert(attr.to_string(), Value::String(decoded))
            .is_some()
        {
            return Err(EventError::new(
                "invalid_attribute",
                attr,
                format!("header ce-{attr} appears more than once"),
            ));
        }
    }
    check_required(&map)?;
    let mut builder = base_builder(&map)?;
    for (name, value) in &map {
        if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
            continue;
        }
        check_extension_name(name)?;
        let Value::String(s) = value else {
            unreachable!("binary headers are strings")
        };
        builder = builder.extension(name, ExtensionValue::String(s.clone()));
    }
    if !body.is_empty() || content_type.is_some() {
        let ct = canonical_content_type(content_type.unwrap_or("application/octet-stream"));
        let ct = ct.as_str();
        let data = if is_json(ct) {
            let v: Value = serde_json::from_slice(body).map_err(|e| {
                EventError::new(
                    "invalid_data",
                    "data",
                    format!("Content-Type is {ct} but the body is not valid JSON: {e}"),
                )
            })?;
            Data::Json(v)
        } else if media_type(ct).starts_with("text/") {
            match std::str::from_utf8(body) {
                Ok(s) => Data::String(s.to_string()),
                Err(_) => Data::Binary(body.to_vec()),
            }
        } else {
            Data::Binary(body.to_vec())
        };
        builder = builder.data(ct.to_string(), data);
    }
    finish(builder.build().map_err(builder_error)?)
}

/// Builds an event from the members of a structured-mode JSON object (attributes, `data`
/// or `data_base64`) with the same checks as [`parse_structured`]: for the other encodings
/// of the same model (the gRPC protobuf format), so every way in validates alike.
pub fn from_object(map: Map<String, Value>) -> Result<Event, EventError> {
    from_json_object(map)
}

fn from_json_object(mut map: Map<String, Value>) -> Result<Event, EventError> {
    // The JSON format says null is the same as absent.
    map.retain(|_, v| !v.is_null());
    check_required(&map)?;
    for (name, value) in &map {
        if name == "data" || name == "data_base64" {
            continue;
        }
        if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
            if !value.is_string() {
                return Err(EventError::new(
                    "invalid_attribute",
                    name,
                    format!("attribute {name} must be a string"),
                ));
            }
        } else {
            check_extension_name(name)?;
        }
    }
    let mut builder = base_builder(&map)?;
    for (name, value) in &map {
        if CONTEXT_ATTRIBUTES.contains(&name.as_str()) || name == "data" || name == "data_base64" {
            continue;
        }
        builder = builder.extension(name, extension_value(name, value)?);
    }
    let ct = map
        .get("datacontenttype")
        .and_then(Value::as_str)
        .map(str::to_string);
    match (map.remove("data"), map.remove("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(EventError::new(
                "invalid_data",
                "data_base64",
                "an event carries either data or data_base64, never both",
            ))
        }
        (Some(data), None) => {
            let ct = canonical_content_type(ct.as_deref().unwrap_or("application/json"));
            let data = match data {
                Value::String(s) if !is_json(&ct) => Data::String(s),
                other if is_json(&ct) => Data::Json(other),
                // The JSON event format carries non-JSON data as a string; an object or a
                // number under e.g. text/plain would be stored in a form that no longer
                // decodes as an event (found by fuzzing).
                _ => {
                    return Err(EventError::new(
                        "invalid_data",
                        "data",
                        format!("datacontenttype {ct:?} is not a JSON content type (application/json or text/json, with parameters if any, or a type ending in +json without parameters), so data must be a string; or send data_base64"),
                    ))
                }
            };
            builder = builder.data(ct, data);
        }
        (None, Some(b64)) => {
            let Value::String(s) = b64 else {
                return Err(EventError::new(
                    "invalid_data",
                    "data_base64",
                    "data_base64 must be a base64 string",
                ));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| {
                    EventError::new(
                        "invalid_data",
                        "data_base64",
                        format!("data_base64 is not valid base64: {e}"),
                    )
                })?;
            let ct = ct.unwrap_or_else(|| "application/octet-stream".to_string());
            builder = builder.data(ct, Data::Binary(bytes));
        }
        (None, None) => {}
    }
    finish(builder.build().map_err(builder_error)?)
}

fn check_required(map: &Map<String, Value>) -> Result<(), EventError> {
    for name in REQUIRED {
        match map.get(name) {
            None => {
                return Err(EventError::new(
                    "missing_attribute",
                    name,
                    format!("required attribute {name} is missing"),
                ))
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(EventError::new(
                    "invalid_attribute",
                    name,
                    format!("attribute {name} must not be empty"),
                ))
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(EventError::new(
                    "invalid_attribute",
                    name,
                    format!("attribute {name} must be a string"),
                ))
            }
        }
    }
    let sv = map["specversion"].as_str().unwrap_or_default();
    if sv != "1.0" {
        return Err(EventError::new(
            "unsupported_specversion",
            "specversion",
            format!("specversion {sv:?} is not supported: meshd takes CloudEvents \"1.0\""),
        ));
    }
    Ok(())
}

fn base_builder(map: &Map<String, Value>) -> Result<EventBuilderV10, EventError> {
    let s = |k: &str| map.get(k).and_then(Value::as_str);
    let mut b = EventBuilderV10::new()
        .id(s("id").unwrap_or_default())
        .source(s("source").unwrap_or_default())
        .ty(s("type").unwrap_or_default());
    if let Some(subject) = s("subject") {
        if subject.is_empty() {
            return Err(EventError::new(
                "invalid_attribute",
                "subject",
                "subject, when present, must not be empty",
            ));
        }
        b = b.subject(subject);
    }
    if let Some(time) = s("time") {
        let t = chrono::DateTime::parse_from_rfc3339(time).map_err(|e| {
            EventError::new(
                "invalid_attribute",
                "time",
                format!("time {time:?} is not an RFC 3339 timestamp: {e}"),
            )
        })?;
        b = b.time(t.with_timezone(&chrono::Utc));
    }
    if let Some(schema) = s("dataschema") {
        let url = url_crate_parse(schema)
            .map(|u| u.to_string())
            .ok_or_else(|| {
                EventError::new(
                    "invalid_attribute",
                    "dataschema",
                    format!("dataschema {schema:?} is not an absolute URI"),
                )
            })?;
        b = b.extension("dataschema", url); // replaced below by the real attribute
    }
    Ok(b)
}

fn builder_error(e: cloudevents::event::EventBuilderError) -> EventError {
    use cloudevents::event::EventBuilderError as B;
    match e {
        B::MissingRequiredAttribute { attribute_name } => EventError::new(
            "missing_attribute",
            attribute_name,
            format!("required attribute {attribute_name} is missing"),
        ),
        B::InvalidUriRefError { attribute_name } => EventError::new(
            "invalid_attribute",
            attribute_name,
            format!("attribute {attribute_name} is not a valid URI reference"),
        ),
        B::ParseTimeError { attribute_name, .. } => EventError::new(
            "invalid_attribute",
            attribute_name,
            format!("attribute {attribute_name} is not an RFC 3339 timestamp"),
        ),
        B::ParseUrlError { attribute_name, .. } => EventError::new(
            "invalid_attribute",
            attribute_name,
            format!("attribute {attribute_name} is not a valid URI"),
        ),
    }
}

fn extension_value(name: &str, value: &Value) -> Result<ExtensionValue, EventError> {
    match value {
        Value::String(s) => Ok(ExtensionValue::String(s.clone())),
        Value::Bool(b) => Ok(ExtensionValue::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => Ok(ExtensionValue::Integer(i)),
            _ => Err(EventError::new(
                "invalid_attribute",
                name,
                format!(
                    "extension {name} = {n} is not a CloudEvents Integer (a whole number from -2147483648 to 2147483647); send it as a string"
                ),
            )),
        },
        Value::Null => unreachable!("nulls are removed before"),
        Value::Array(_) | Value::Object(_) => Err(EventError::new(
            "invalid_attribute",
            name,
            format!("extension {name} must be a string, boolean or integer, not a JSON array or object"),
        )),
    }
}

fn check_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || name.len() > MAX_ATTRIBUTE_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::new(
            "invalid_attribute_name",
            name,
            format!(
                "attribute name {name:?} is invalid: CloudEvents attribute names use only lower-case letters a-z and digits 0-9 (at most {MAX_ATTRIBUTE_NAME_LEN} characters here)"
            ),
        ));
    }
    Ok(())
}

fn is_json(ct: &str) -> bool {
    // What the CloudEvents SDK's JSON format takes as JSON data, on the canonical content
    // type (`canonical_content_type`). It is the rule the stored form is read back with, so
    // data is JSON exactly when the store will decode it as JSON (fuzzing found events that
    // a looser rule accepted and the store could not read back).
    ct.starts_with("application/json") || ct.starts_with("text/json") || ct.ends_with("+json")
}

/// A content type with its media type (type/subtype, case-insensitive by RFC 2045) in
/// lower case and its parameters as given.
fn canonical_content_type(ct: &str) -> String {
    let ct = ct.trim();
    match ct.find(';') {
        Some(i) => format!("{}{}", ct[..i].trim_end().to_ascii_lowercase(), &ct[i..]),
        None => ct.to_ascii_lowercase(),
    }
}

/// Final checks on a built event (both modes): dataschema moved to its attribute, the
/// partition key is a string.
pub fn validate(event: &Event) -> Result<(), EventError> {
    if let Some(v) = event.extension(PARTITION_KEY) {
        if !matches!(v, ExtensionValue::String(s) if !s.is_empty()) {
            return Err(EventError::new(
                "invalid_attribute",
                PARTITION_KEY,
                "partitionkey must be a non-empty string",
            ));
        }
    }
    Ok(())
}

/// Moves a `dataschema` that [`base_builder`] parked as an extension into the attribute.
/// (The builder's `dataschema` takes only through `data_with_schema`.)
fn fix_dataschema(mut event: Event) -> Result<Event, EventError> {
    use cloudevents::event::AttributesWriter;
    if let Some(ExtensionValue::String(s)) = event.remove_extension("dataschema") {
        let parsed = url_crate_parse(&s).ok_or_else(|| {
            EventError::new(
                "invalid_attribute",
                "dataschema",
                format!("dataschema {s:?} is not an absolute URI"),
            )
        })?;
        event.set_dataschema(Some(parsed));
    }
    Ok(event)
}

fn url_crate_parse(s: &str) -> Option<url::Url> {
    url::Url::parse(s).ok()
}

/// The partition key of an event, if it has one.
pub fn partition_key(event: &Event) -> Option<&str> {
    match event.extension(PARTITION_KEY) {
        Some(ExtensionValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The string form of a context attribute or extension, as the filter dialects and the
/// binary HTTP binding see it. `None` when the event does not have it.
pub fn attribute_string<'e>(event: &'e Event, name: &str) -> Option<Cow<'e, str>> {
    let v = match name {
        "id" => return Some(Cow::Borrowed(event.id())),
        "type" => return Some(Cow::Borrowed(event.ty())),
        "specversion" => return Some(Cow::Borrowed("1.0")),
        "source" => return Some(Cow::Borrowed(event.source().as_str())),
        "subject" => return event.subject().map(Cow::Borrowed),
        "datacontenttype" => return event.datacontenttype().map(Cow::Borrowed),
        "dataschema" => return event.dataschema().map(|u| Cow::Borrowed(u.as_str())),
        "time" => {
            return event
                .time()
                .map(|t| Cow::Owned(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        }
        _ => event.extension(name)?,
    };
    Some(match v {
        ExtensionValue::String(s) => Cow::Borrowed(s.as_str()),
        ExtensionValue::Boolean(b) => Cow::Owned(b.to_string()),
        ExtensionValue::Integer(i) => Cow::Owned(i.to_string()),
    })
}

/// An event in binary HTTP mode: the headers to send (`ce-*` plus `content-type`) and the
/// body. Header values are percent-encoded where the binding requires it.
pub fn to_binary_http(event: &Event) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers = Vec::with_capacity(8);
    for (name, value) in event.iter() {
        if name == "datacontenttype" {
            continue;
        }
        let s = match value {
            AttributeValue::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            other => other.to_string(),
        };
        headers.push((format!("ce-{name}"), percent_encode(&s)));
    }
    let body = match event.data() {
        None => Vec::new(),
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(v)) => serde_json::to_vec(v).unwrap_or_default(),
    };
    if let Some(ct) = event.datacontenttype() {
        headers.push(("content-type".to_string(), ct.to_string()));
    } else if event.data().is_some() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    (headers, body)
}

/// Percent-encodes what the HTTP binding says must be: space, `"`, `%` and anything
/// outside printable ASCII.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Runs the final fix-ups every parse path needs.
fn finish(event: Event) -> Result<Event, EventError> {
    let event = fix_dataschema(event)?;
    validate(&event)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Event {
        parse_structured(json.as_bytes()).unwrap()
    }

    fn err(json: &str) -> EventError {
        parse_structured(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn structured_minimal() {
        let e = ok(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#);
        assert_eq!(e.id(), "1");
        assert!(e.data().is_none());
    }

    #[test]
    fn structured_with_json_data_and_extensions() {
        let e = ok(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1},"partitionkey":"k","n":5,"flag":true}"#,
        );
        assert_eq!(e.data(), Some(&Data::Json(serde_json::json!({"a":1}))));
        assert_eq!(partition_key(&e), Some("k"));
        assert_eq!(e.extension("n"), Some(&ExtensionValue::Integer(5)));
        assert_eq!(e.extension("flag"), Some(&ExtensionValue::Boolean(true)));
    }

    #[test]
    fn missing_and_bad_attributes_name_the_field() {
        let e = err(r#"{"specversion":"1.0","id":"1","type":"t"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_attribute", Some("source"))
        );
        let e = err(r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#);
        assert_eq!(e.field.as_deref(), Some("specversion"));
        let e = err(r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#);
        assert_eq!(e.field.as_deref(), Some("id"));
        let e = err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad_Name":"x"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_attribute_name", Some("Bad_Name"))
        );
        let e = err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1.5}"#);
        assert_eq!(e.field.as_deref(), Some("ext"));
        let e = err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1}}"#);
        assert_eq!(e.field.as_deref(), Some("ext"));
        let e =
            err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#);
        assert_eq!(e.field.as_deref(), Some("time"));
        let e = err(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
        );
        assert_eq!(e.field.as_deref(), Some("data_base64"));
        let e =
            err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}"#);
        assert_eq!(e.field.as_deref(), Some("data_base64"));
        let e = err(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"not a uri"}"#,
        );
        assert_eq!(e.field.as_deref(), Some("dataschema"));
        let e = err(r#"{"specversion":"1.0","id":7,"source":"/s","type":"t"}"#);
        assert_eq!(e.field.as_deref(), Some("id"));
        let e =
            err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","partitionkey":true}"#);
        assert_eq!(e.field.as_deref(), Some("partitionkey"));
    }

    #[test]
    fn data_base64_and_dataschema() {
        let e = ok(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAEC","datacontenttype":"application/octet-stream","dataschema":"https://x/s.json"}"#,
        );
        assert_eq!(e.data(), Some(&Data::Binary(vec![0, 1, 2])));
        assert_eq!(e.dataschema().map(|u| u.as_str()), Some("https://x/s.json"));
        assert!(e.extension("dataschema").is_none());
    }

    #[test]
    fn duplicate_keys_are_refused_naming_the_key() {
        let e = err(r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","id":"b"}"#);
        assert_eq!(e.code, "duplicate_key");
        assert_eq!(e.field.as_deref(), Some("id"));
        assert!(e.message.contains("\"id\""), "{}", e.message);
        let e = err(r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":1,"data":2}"#);
        assert_eq!(e.field.as_deref(), Some("data"));
        // Inside data, keys are the application's business.
        ok(r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{"k":1,"k":2}}"#);
        let good = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let dup = r#"{"specversion":"1.0","id":"2","source":"/s","source":"/t","type":"t"}"#;
        let e = parse_batch(format!("[{good},{dup}]").as_bytes()).unwrap_err();
        assert_eq!(e.code, "duplicate_key");
        assert_eq!(e.field.as_deref(), Some("[1].source"));
        // What is not an object is still refused as before.
        assert_eq!(err("[1]").code, "malformed_body");
        assert_eq!(err("\"x\"").code, "malformed_body");
        assert!(err("{").message.contains("not valid JSON"));
        assert!(parse_batch(br#"[1, {"a": [1, {"b": 2}]}, "x"]"#).is_err());
        assert!(parse_batch(br#"{"a": {"b": [1]}}"#)
            .unwrap_err()
            .message
            .contains("JSON array"));
    }

    #[test]
    fn batch_is_all_or_nothing_with_index() {
        let good = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let bad = r#"{"specversion":"1.0","id":"2","type":"t"}"#;
        let events = parse_batch(format!("[{good},{good}]").as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        let e = parse_batch(format!("[{good},{bad}]").as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("[1].source"));
        assert!(parse_batch(b"[]").is_err());
        assert!(parse_batch(b"{}").is_err());
    }

    #[test]
    fn binary_mode() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("ce-id", b"abc"),
            ("ce-source", b"/src"),
            ("ce-type", b"com.example"),
            ("ce-partitionkey", b"k1"),
            ("ce-comment", b"hello%20world"),
            ("content-type", b"application/json"),
        ];
        let e = parse_binary(headers, Some("application/json"), br#"{"x":1}"#).unwrap();
        assert_eq!(e.id(), "abc");
        assert_eq!(partition_key(&e), Some("k1"));
        assert_eq!(
            e.extension("comment"),
            Some(&ExtensionValue::String("hello world".into()))
        );
        let (h, body) = to_binary_http(&e);
        assert!(h.contains(&("ce-comment".to_string(), "hello%20world".to_string())));
        assert_eq!(body, br#"{"x":1}"#);

        let bad: Vec<(&str, &[u8])> = vec![("ce-specversion", b"1.0"), ("ce-id", b"1")];
        let e = parse_binary(bad, None, b"").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("source"));
        let badjson: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"/s"),
            ("ce-type", b"t"),
        ];
        let e = parse_binary(badjson, Some("application/json"), b"{nope").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("data"));
    }

    #[test]
    fn modes() {
        assert_eq!(
            detect_mode(Some("application/cloudevents+json; charset=utf-8"), false),
            Ok(Mode::Structured)
        );
        assert_eq!(
            detect_mode(Some(BATCH_CONTENT_TYPE), false),
            Ok(Mode::Batch)
        );
        assert_eq!(detect_mode(Some("text/plain"), true), Ok(Mode::Binary));
        assert!(detect_mode(Some("text/plain"), false).is_err());
        assert!(detect_mode(Some("application/cloudevents+avro"), true).is_err());
    }
}
