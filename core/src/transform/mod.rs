//! Transforms: what a subscription's sink receives.
//!
//! Owns the transform language of the subscription API (`"transform": {...}`): the
//! [`TransformSpec`] the API takes, [`Transform::compile`] which validates it once and
//! names the offending field, and [`Transform::apply`] which turns a stored event into a
//! [`TransformOutput`] (a CloudEvent, or a raw body). Kinds:
//!
//! - `original`: the event unchanged (the default);
//! - `data`: the event's data as a raw body with its `datacontenttype`;
//! - `partial`: a JSONPath (RFC 9535) selecting part of the event's JSON view;
//! - `constant`: a fixed JSON value or text;
//! - `template`: EventBridge InputTransformer semantics (see `template.rs`).
//!
//! Paths select from [`view::event_json`], the structured JSON form of the event
//! (`$.type`, `$.source`, `$.data.x`). Limits (template size, number of paths, path
//! length and nesting, output size) are constants below, checked at compile or apply time.
//! The reference with examples is docs/transforms.md.

mod template;
mod view;

use std::collections::BTreeMap;

use cloudevents::event::Data;
use cloudevents::{AttributesReader, AttributesWriter, Event};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;

pub use template::{TemplateFormat, RESERVED_EVENT, RESERVED_EVENT_JSON};
pub use view::event_json;

/// Largest template accepted, in bytes (as EventBridge).
pub const MAX_TEMPLATE_BYTES: usize = 8192;
/// Most variables in a template's `paths` (as EventBridge).
pub const MAX_TEMPLATE_PATHS: usize = 100;
/// Longest JSONPath accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 512;
/// Deepest nesting of brackets and parentheses in a JSONPath.
pub const MAX_PATH_NESTING: usize = 16;
/// Largest body a `partial`, `constant` or `template` transform may produce (256 KiB).
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;

/// Content type of JSON produced by a transform.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content type of text produced by a transform.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// What the sink gets: a CloudEvent carrying the result as its data, or the result alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// A CloudEvent: the result becomes `data`, other attributes are kept.
    Event,
    /// The result alone, as a raw body with its content type.
    Raw,
}

/// A transform as the API takes it (externally tagged: `{"partial": {...}}`). Read through
/// [`TransformSpec::deserialize`], which names the problem when the object does not hold
/// exactly one known kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TransformSpec {
    /// The event unchanged.
    Original(OriginalSpec),
    /// The event's data only.
    Data(DataSpec),
    /// Part of the event selected by a JSONPath.
    Partial(PartialSpec),
    /// A fixed value.
    Constant(ConstantSpec),
    /// An EventBridge-style input template.
    Template(TemplateSpec),
}

/// The transform kinds, as their keys in the API.
pub const TRANSFORM_KINDS: [&str; 5] = ["original", "data", "partial", "constant", "template"];

impl<'de> Deserialize<'de> for TransformSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(d)?;
        let kinds = TRANSFORM_KINDS.join(", ");
        let Value::Object(map) = value else {
            return Err(D::Error::custom(format!(
                "a transform is an object with exactly one key, its kind ({kinds})"
            )));
        };
        let mut entries = map.into_iter();
        let (kind, body) = match (entries.next(), entries.next()) {
            (Some(one), None) => one,
            (None, _) => {
                return Err(D::Error::custom(format!(
                    "a transform needs exactly one kind ({kinds}); got none"
                )))
            }
            (Some((a, _)), Some((b, _))) => {
                let mut given = vec![a, b];
                given.extend(entries.map(|(k, _)| k));
                return Err(D::Error::custom(format!(
                    "a transform has exactly one kind; got {} ({}): pick one of {kinds}",
                    given.len(),
                    given.join(", ")
                )));
            }
        };
        fn body_of<T: serde::de::DeserializeOwned, E: Error>(
            kind: &str,
            body: Value,
        ) -> Result<T, E> {
            serde_json::from_value(body).map_err(|e| E::custom(format!("{kind}: {e}")))
        }
        Ok(match kind.as_str() {
            "original" => TransformSpec::Original(body_of(&kind, body)?),
            "data" => TransformSpec::Data(body_of(&kind, body)?),
            "partial" => TransformSpec::Partial(body_of(&kind, body)?),
            "constant" => TransformSpec::Constant(body_of(&kind, body)?),
            "template" => TransformSpec::Template(body_of(&kind, body)?),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown transform kind {other:?}; expected one of {kinds}"
                )))
            }
        })
    }
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec::Original(OriginalSpec::default())
    }
}

/// `{"original":{}}`: the event unchanged. `"as":"raw"` sends it as a structured-mode body
/// (`application/cloudevents+json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginalSpec {
    /// `event` (default) or `raw`.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMode>,
}

/// `{"data":{}}`: the event's data as a raw body with the event's `datacontenttype`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Only `raw` (the default) makes sense here.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMode>,
}

/// `{"partial":{"path":"$.data.order"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartialSpec {
    /// RFC 9535 JSONPath into the event's JSON view.
    pub path: String,
    /// `event` (default) or `raw`.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMode>,
}

/// `{"constant":{"value":...}}` or `{"constant":{"text":"..."}}` (exactly one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConstantSpec {
    /// A JSON value (may be `null`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    /// A text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `event` (default) or `raw`.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMode>,
}

/// `{"template":{"paths":{"name":"$.data.name"},"template":"{\"n\": <name>}"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Variable name → JSONPath.
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
    /// The template, with `<name>` placeholders.
    pub template: String,
    /// `json` or `text`; absent: JSON when the template starts with `{` or `[`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TemplateFormat>,
    /// `event` (default) or `raw`.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMode>,
}

/// Keeps an explicit `null` as `Some(Value::Null)`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why a transform was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The spec is invalid (at compile time).
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault, e.g. `transform.template.paths.name`.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The output would exceed [`MAX_OUTPUT_BYTES`].
    #[error("transform output is {size} bytes or more; at most {limit} are allowed")]
    OutputTooLarge {
        /// Size reached when the transform stopped.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Rendering failed (should not happen for a compiled transform).
    #[error("transform failed: {0}")]
    Render(String),
}

impl TransformError {
    /// The spec field at fault, for compile errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            TransformError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TransformError {
    TransformError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What the sink receives.
// `Event(Event)` is the interface others match on; one value per delivery, so the size
// difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TransformOutput {
    /// A CloudEvent (possibly with transformed data), sent in binary mode.
    Event(Event),
    /// A raw body.
    Raw {
        /// Content type of the body.
        content_type: String,
        /// The body.
        body: Vec<u8>,
    },
}

/// A compiled transform.
#[derive(Debug, Clone)]
pub struct Transform {
    kind: Kind,
    output: OutputMode,
}

#[derive(Debug, Clone)]
enum Kind {
    Original,
    Data,
    Partial(JsonPath),
    Constant(Produced),
    Template(template::Template),
}

/// A transform's result before it is wrapped for the sink.
#[derive(Debug, Clone)]
enum Produced {
    Json(Value),
    Text(String),
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            kind: Kind::Original,
            output: OutputMode::Event,
        }
    }
}

/// Parses a JSONPath with our limits; `field` names the spec field in errors.
pub(crate) fn compile_path(path: &str, field: &str) -> Result<JsonPath, TransformError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(
            field,
            format!(
                "the JSONPath is {} bytes; at most {MAX_PATH_BYTES} are allowed",
                path.len()
            ),
        ));
    }
    let depth = nesting(path);
    if depth > MAX_PATH_NESTING {
        return Err(invalid(
            field,
            format!("the JSONPath nests {depth} deep; at most {MAX_PATH_NESTING} are allowed"),
        ));
    }
    JsonPath::parse(&bracket_dashed_names(path)).map_err(|e| {
        invalid(
            field,
            format!("{path:?} is not an RFC 9535 JSONPath (e.g. \"$.data.order\"): {e}"),
        )
    })
}

/// Tracks quoted names (`'...'`, `"..."`, with `\\` escapes) while a JSONPath is scanned.
#[derive(Default)]
struct Quotes {
    open: Option<char>,
    escaped: bool,
}

impl Quotes {
    /// Whether `c` is part of a quoted name (the opening and closing quotes included).
    fn quoted(&mut self, c: char) -> bool {
        match self.open {
            Some(q) => {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == q {
                    self.open = None;
                }
                true
            }
            None if c == '\'' || c == '"' => {
                self.open = Some(c);
                true
            }
            None => false,
        }
    }
}

/// Rewrites dot-notation member names with `-` or `/`, which RFC 9535 does not allow in that
/// form but EventBridge paths use (`$.detail-type`, `$.data.instance-id`), into bracket
/// notation (`$['detail-type']`), so paths copied from AWS examples work. Text inside quotes,
/// names RFC 9535 already accepts, and names starting with a digit (`1.5e-3` in a filter is
/// a number) are left alone.
fn bracket_dashed_names(path: &str) -> std::borrow::Cow<'_, str> {
    fn name_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' || !c.is_ascii()
    }
    if !path.contains(['-', '/']) {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 8);
    let mut quotes = Quotes::default();
    let mut chars = path.char_indices().peekable();
    let mut changed = false;
    while let Some((i, c)) = chars.next() {
        if quotes.quoted(c) {
            out.push(c);
            continue;
        }
        if c != '.' {
            out.push(c);
            continue;
        }
        let start = i + 1;
        let end = path[start..]
            .find(|ch: char| !name_char(ch))
            .map_or(path.len(), |n| start + n);
        let name = &path[start..end];
        let rewrite = name.contains(['-', '/'])
            && name
                .chars()
                .next()
                .is_some_and(|f| !f.is_ascii_digit() && f != '-');
        if !rewrite {
            out.push(c);
            continue;
        }
        // `..name` keeps its descendant segment: `..['name']`.
        if path[..i].ends_with('.') {
            out.push('.');
        }
        out.push_str("['");
        out.push_str(name);
        out.push_str("']");
        changed = true;
        while chars.peek().is_some_and(|&(j, _)| j < end) {
            chars.next();
        }
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// Deepest nesting of `[`/`(` outside quoted names (bounds the recursive-descent parser).
fn nesting(path: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quotes = Quotes::default();
    for c in path.chars() {
        if quotes.quoted(c) {
            continue;
        }
        match c {
            '[' | '(' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// What a path selects: nothing → `None`; one node → it; several → an array of them.
pub(crate) fn select(path: &JsonPath, view: &Value) -> Option<Value> {
    let nodes = path.query(view);
    match nodes.len() {
        0 => None,
        1 => nodes.first().cloned(),
        _ => Some(Value::Array(nodes.iter().map(|v| (*v).clone()).collect())),
    }
}

fn produced_len(p: &Produced) -> Result<usize, TransformError> {
    match p {
        Produced::Json(v) => serde_json::to_vec(v)
            .map(|b| b.len())
            .map_err(|e| TransformError::Render(e.to_string())),
        Produced::Text(s) => Ok(s.len()),
    }
}

impl Transform {
    /// Validates and compiles. Errors name the spec field (`transform.partial.path`, ...).
    pub fn compile(spec: &TransformSpec) -> Result<Transform, TransformError> {
        let (kind, output) = match spec {
            TransformSpec::Original(s) => (Kind::Original, s.output.unwrap_or(OutputMode::Event)),
            TransformSpec::Data(s) => {
                if s.output == Some(OutputMode::Event) {
                    return Err(invalid(
                        "transform.data.as",
                        "a data transform sends the data as a raw body; for the whole event \
                         use {\"original\":{}}",
                    ));
                }
                (Kind::Data, OutputMode::Raw)
            }
            TransformSpec::Partial(s) => (
                Kind::Partial(compile_path(&s.path, "transform.partial.path")?),
                s.output.unwrap_or(OutputMode::Event),
            ),
            TransformSpec::Constant(s) => {
                let p = match (&s.value, &s.text) {
                    (Some(v), None) => Produced::Json(v.clone()),
                    (None, Some(t)) => Produced::Text(t.clone()),
                    _ => {
                        return Err(invalid(
                            "transform.constant",
                            "give exactly one of \"value\" (any JSON) or \"text\" (a string)",
                        ))
                    }
                };
                let len = produced_len(&p)?;
                if len > MAX_OUTPUT_BYTES {
                    return Err(invalid(
                        "transform.constant",
                        format!("is {len} bytes; at most {MAX_OUTPUT_BYTES} are allowed"),
                    ));
                }
                (Kind::Constant(p), s.output.unwrap_or(OutputMode::Event))
            }
            TransformSpec::Template(s) => (
                Kind::Template(template::Template::compile(
                    &s.paths,
                    &s.template,
                    s.format,
                    "transform.template",
                )?),
                s.output.unwrap_or(OutputMode::Event),
            ),
        };
        Ok(Transform { kind, output })
    }

    /// Whether the sink gets a CloudEvent or a raw body.
    pub fn output_mode(&self) -> OutputMode {
        self.output
    }

    /// Applies the transform. Never panics; fails only when the output would be too large.
    pub fn apply(&self, event: &Event) -> Result<TransformOutput, TransformError> {
        let produced = match &self.kind {
            Kind::Original => {
                return match self.output {
                    OutputMode::Event => Ok(TransformOutput::Event(event.clone())),
                    OutputMode::Raw => Ok(TransformOutput::Raw {
                        content_type: crate::event::STRUCTURED_CONTENT_TYPE.to_string(),
                        body: serde_json::to_vec(event)
                            .map_err(|e| TransformError::Render(e.to_string()))?,
                    }),
                }
            }
            Kind::Data => return Ok(data_body(event)),
            Kind::Partial(p) => {
                Produced::Json(select(p, &event_json(event)).unwrap_or(Value::Null))
            }
            Kind::Constant(p) => p.clone(),
            Kind::Template(t) => match t.render(&event_json(event))? {
                template::Rendered::Json(v) => Produced::Json(v),
                template::Rendered::Text(s) => Produced::Text(s),
            },
        };
        self.wrap(event, produced)
    }

    fn wrap(&self, event: &Event, produced: Produced) -> Result<TransformOutput, TransformError> {
        let (content_type, body, data) = match produced {
            Produced::Json(v) => {
                let body =
                    serde_json::to_vec(&v).map_err(|e| TransformError::Render(e.to_string()))?;
                (JSON_CONTENT_TYPE, body, Data::Json(v))
            }
            Produced::Text(s) => (TEXT_CONTENT_TYPE, s.as_bytes().to_vec(), Data::String(s)),
        };
        if body.len() > MAX_OUTPUT_BYTES {
            return Err(TransformError::OutputTooLarge {
                size: body.len(),
                limit: MAX_OUTPUT_BYTES,
            });
        }
        Ok(match self.output {
            OutputMode::Raw => TransformOutput::Raw {
                content_type: content_type.to_string(),
                body,
            },
            OutputMode::Event => {
                let mut e = event.clone();
                e.set_data(content_type, data);
                // The schema described the old data.
                e.set_dataschema(None::<url::Url>);
                TransformOutput::Event(e)
            }
        })
    }
}

/// The event's data as the body of a binary-mode request would carry it.
fn data_body(event: &Event) -> TransformOutput {
    let (default_ct, body) = match event.data() {
        None => ("application/octet-stream", Vec::new()),
        Some(Data::Binary(b)) => ("application/octet-stream", b.clone()),
        Some(Data::String(s)) => (TEXT_CONTENT_TYPE, s.as_bytes().to_vec()),
        Some(Data::Json(v)) => (JSON_CONTENT_TYPE, serde_json::to_vec(v).unwrap_or_default()),
    };
    TransformOutput::Raw {
        content_type: event.datacontenttype().unwrap_or(default_ct).to_string(),
        body,
    }
}

#[cfg(test)]
mod tests;
