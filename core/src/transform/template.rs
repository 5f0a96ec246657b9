//! Input templates with EventBridge InputTransformer semantics.
//!
//! Owns parsing a template into literal pieces and `<variable>` placeholders (each tagged
//! with the JSON context it sits in), validating it once, and rendering it against an
//! event's JSON view with the quoting rules of docs/transforms.md:
//!
//! | placeholder sits…            | string value        | number/bool/object/array | path missing |
//! |------------------------------|---------------------|--------------------------|--------------|
//! | JSON template, outside quotes| `"quoted"` JSON     | JSON text                | `""`         |
//! | JSON template, inside quotes | escaped content     | JSON text without `"`s, escaped | empty |
//! | text template                | as is               | JSON text without `"`s (objects, arrays) | empty |
//!
//! Because every insertion is one whole JSON value or valid string content, a JSON
//! template that parses with dummy values always renders valid JSON; compile checks that.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json_path::JsonPath;

use super::{
    compile_path, TransformError, MAX_OUTPUT_BYTES, MAX_TEMPLATE_BYTES, MAX_TEMPLATE_PATHS,
};

/// The whole event (attributes and extensions, without `data`), as JSON.
pub const RESERVED_EVENT: &str = "meshd.event";
/// The whole event with its `data`, as JSON.
pub const RESERVED_EVENT_JSON: &str = "meshd.event.json";
/// Longest variable name accepted in `paths`.
pub const MAX_VARIABLE_NAME_LEN: usize = 64;
/// Longest `<...>` name looked at when scanning a template.
const MAX_PLACEHOLDER_LEN: usize = 128;

/// How the template's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateFormat {
    /// The template is JSON (checked at compile time); the output is JSON.
    Json,
    /// The template is plain text; the output is text.
    Text,
}

/// Where a placeholder sits, which decides how its value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    JsonValue,
    JsonString,
    Text,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var { idx: usize, ctx: Ctx },
}

#[derive(Debug, Clone)]
enum Var {
    Path(JsonPath),
    Event,
    EventJson,
}

/// A compiled template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
    vars: Vec<Var>,
    format: TemplateFormat,
}

/// What a template produced.
pub(crate) enum Rendered {
    Json(Value),
    Text(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TransformError {
    TransformError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn valid_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VARIABLE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn placeholder_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

impl Template {
    /// Validates and compiles; `field` is the spec's field path, e.g. `transform.template`.
    pub(crate) fn compile(
        paths: &BTreeMap<String, String>,
        template: &str,
        format: Option<TemplateFormat>,
        field: &str,
    ) -> Result<Template, TransformError> {
        if template.is_empty() {
            return Err(invalid(format!("{field}.template"), "must not be empty"));
        }
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(invalid(
                format!("{field}.template"),
                format!(
                    "is {} bytes; at most {MAX_TEMPLATE_BYTES} are allowed",
                    template.len()
                ),
            ));
        }
        if paths.len() > MAX_TEMPLATE_PATHS {
            return Err(invalid(
                format!("{field}.paths"),
                format!(
                    "has {} variables; at most {MAX_TEMPLATE_PATHS} are allowed",
                    paths.len()
                ),
            ));
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut vars = Vec::with_capacity(paths.len() + 2);
        for (name, path) in paths {
            if !valid_variable_name(name) {
                return Err(invalid(
                    format!("{field}.paths"),
                    format!(
                        "variable name {name:?} must be 1 to {MAX_VARIABLE_NAME_LEN} characters \
                         of A-Z, a-z, 0-9, _ and - (names starting with meshd. are reserved)"
                    ),
                ));
            }
            let p = compile_path(path, &format!("{field}.paths.{name}"))?;
            names.insert(name.as_str(), vars.len());
            vars.push(Var::Path(p));
        }
        names.insert(RESERVED_EVENT, vars.len());
        vars.push(Var::Event);
        names.insert(RESERVED_EVENT_JSON, vars.len());
        vars.push(Var::EventJson);

        let format = format.unwrap_or_else(|| {
            let t = template.trim_start();
            if t.starts_with('{') || t.starts_with('[') {
                TemplateFormat::Json
            } else {
                TemplateFormat::Text
            }
        });
        let parts = scan(template, format, &names, field)?;
        let t = Template {
            parts,
            vars,
            format,
        };
        if format == TemplateFormat::Json {
            // Dummy values: `null` outside quotes, nothing inside. Real values keep the same
            // structure, so if this parses every rendering does.
            let mut dummy = String::with_capacity(template.len());
            for p in &t.parts {
                match p {
                    Part::Lit(s) => dummy.push_str(s),
                    Part::Var {
                        ctx: Ctx::JsonValue,
                        ..
                    } => dummy.push_str("null"),
                    Part::Var { .. } => {}
                }
            }
            if let Err(e) = serde_json::from_str::<Value>(&dummy) {
                return Err(invalid(
                    format!("{field}.template"),
                    format!(
                        "is not valid JSON with its placeholders filled in ({e}); placeholders \
                         may stand for values or sit inside strings, never be object keys; \
                         set \"format\":\"text\" for a text template"
                    ),
                ));
            }
        }
        Ok(t)
    }

    /// Renders against an event's JSON view.
    pub(crate) fn render(&self, view: &Value) -> Result<Rendered, TransformError> {
        let mut resolved: Vec<Option<Option<Value>>> = vec![None; self.vars.len()];
        let mut cache: Vec<[Option<String>; 3]> = vec![[None, None, None]; self.vars.len()];
        let mut out = String::new();
        for part in &self.parts {
            let piece: &str = match part {
                Part::Lit(s) => s,
                Part::Var { idx, ctx } => {
                    let slot = ctx_slot(*ctx);
                    let Some(cached) = cache.get_mut(*idx).map(|c| &mut c[slot]) else {
                        return Err(TransformError::Render("variable index out of range".into()));
                    };
                    if cached.is_none() {
                        let value = match resolved.get_mut(*idx) {
                            Some(r @ None) => {
                                let v = self.resolve(*idx, view);
                                r.insert(v).as_ref()
                            }
                            Some(Some(v)) => v.as_ref(),
                            None => None,
                        };
                        *cached = Some(write_value(value, *ctx)?);
                    }
                    cached.as_deref().unwrap_or("")
                }
            };
            if out.len() + piece.len() > MAX_OUTPUT_BYTES {
                return Err(TransformError::OutputTooLarge {
                    size: out.len() + piece.len(),
                    limit: MAX_OUTPUT_BYTES,
                });
            }
            out.push_str(piece);
        }
        match self.format {
            TemplateFormat::Text => Ok(Rendered::Text(out)),
            TemplateFormat::Json => serde_json::from_str(&out)
                .map(Rendered::Json)
                .map_err(|e| TransformError::Render(format!("rendered JSON does not parse: {e}"))),
        }
    }

    fn resolve(&self, idx: usize, view: &Value) -> Option<Value> {
        match self.vars.get(idx)? {
            Var::Path(p) => super::select(p, view),
            Var::EventJson => Some(view.clone()),
            Var::Event => {
                let mut v = view.clone();
                if let Value::Object(m) = &mut v {
                    m.remove("data");
                    m.remove("data_base64");
                }
                Some(v)
            }
        }
    }
}

fn ctx_slot(ctx: Ctx) -> usize {
    match ctx {
        Ctx::JsonValue => 0,
        Ctx::JsonString => 1,
        Ctx::Text => 2,
    }
}

fn to_json(v: &Value) -> Result<String, TransformError> {
    serde_json::to_string(v).map_err(|e| TransformError::Render(e.to_string()))
}

/// The content of a JSON string literal holding `s` (escaped, without the quotes).
fn escape_content(s: &str) -> Result<String, TransformError> {
    let quoted = serde_json::to_string(s).map_err(|e| TransformError::Render(e.to_string()))?;
    Ok(quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string())
}

/// JSON text of an object or array with every `"` removed: how EventBridge writes an object
/// or array whose placeholder sits inside a string ("EventBridge removes any internal quotes
/// to ensure a valid string"), e.g. `{"id":"o-1"}` → `{id:o-1}`.
fn unquoted_json(v: &Value) -> Result<String, TransformError> {
    Ok(to_json(v)?.replace('"', ""))
}

fn write_value(value: Option<&Value>, ctx: Ctx) -> Result<String, TransformError> {
    Ok(match (ctx, value) {
        // A missing path gives an empty string where a value is needed (as EventBridge).
        (Ctx::JsonValue, None) => "\"\"".to_string(),
        (Ctx::JsonValue, Some(v)) => to_json(v)?,
        (Ctx::JsonString | Ctx::Text, None) => String::new(),
        (Ctx::JsonString, Some(Value::String(s))) => escape_content(s)?,
        (Ctx::JsonString, Some(v @ (Value::Object(_) | Value::Array(_)))) => {
            escape_content(&unquoted_json(v)?)?
        }
        (Ctx::JsonString, Some(v)) => escape_content(&to_json(v)?)?,
        (Ctx::Text, Some(Value::String(s))) => s.clone(),
        (Ctx::Text, Some(v @ (Value::Object(_) | Value::Array(_)))) => unquoted_json(v)?,
        (Ctx::Text, Some(v)) => to_json(v)?,
    })
}

/// Splits a template into literals and placeholders. In JSON format it tracks whether each
/// placeholder sits inside a string literal. A `<name>` (name of placeholder characters)
/// that is not a variable is refused wherever it sits, as EventBridge does.
fn scan(
    template: &str,
    format: TemplateFormat,
    names: &BTreeMap<&str, usize>,
    field: &str,
) -> Result<Vec<Part>, TransformError> {
    let json = format == TemplateFormat::Json;
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if json && in_string && escaped {
            escaped = false;
            lit.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '<' {
            let after = &rest[1..];
            let name_len = after
                .char_indices()
                .take(MAX_PLACEHOLDER_LEN + 1)
                .find(|(_, ch)| !placeholder_char(*ch))
                .map(|(i, _)| i);
            if let Some(n) = name_len {
                let name = &after[..n];
                if n > 0 && after[n..].starts_with('>') {
                    if let Some(&idx) = names.get(name) {
                        if !lit.is_empty() {
                            parts.push(Part::Lit(std::mem::take(&mut lit)));
                        }
                        let ctx = match (json, in_string) {
                            (false, _) => Ctx::Text,
                            (true, true) => Ctx::JsonString,
                            (true, false) => Ctx::JsonValue,
                        };
                        parts.push(Part::Var { idx, ctx });
                        rest = &after[n + 1..];
                        continue;
                    }
                    // As EventBridge: `<` and `>` cannot be escaped, so every `<name>` is a
                    // placeholder and an undefined one is refused, wherever it sits.
                    return Err(invalid(
                        format!("{field}.template"),
                        format!(
                            "<{name}> is neither a variable defined in paths nor a \
                             reserved one (<{RESERVED_EVENT}>, <{RESERVED_EVENT_JSON}>)"
                        ),
                    ));
                }
            }
        }
        if json {
            match c {
                '"' => in_string = !in_string,
                '\\' if in_string => escaped = true,
                _ => {}
            }
        }
        lit.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}
