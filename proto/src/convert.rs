//! A protobuf `io.cloudevents.v1.CloudEvent` to a [`meshd_core::Event`] and back, following
//! the CloudEvents protobuf format: required attributes in their fields, the others
//! (`datacontenttype`, `dataschema`, `subject`, `time`, extensions) in `attributes`; data
//! as `binary_data` (bytes, kept byte-exact), `text_data` (text, or JSON when the content
//! type is JSON) or `proto_data` (refused: meshd stores no protobuf `Any`).
//!
//! Incoming events are checked by the same code as HTTP publishes
//! ([`meshd_core::event::from_object`]), so both ways accept and refuse the same events;
//! the field an error names is the protobuf one (`spec_version`, `attributes["subject"]`,
//! `text_data`).

use base64::Engine as _;
use cloudevents::event::{AttributesReader, Data, ExtensionValue};
use meshd_core::event::{from_object, EventError};
use meshd_core::Event;
use serde_json::{Map, Value};

use crate::cloudevents::cloud_event::cloud_event_attribute_value::Attr;
use crate::cloudevents::cloud_event::{CloudEventAttributeValue, Data as PbData};
use crate::cloudevents::CloudEvent;

/// The only `spec_version` there is.
pub const SPEC_VERSION: &str = "1.0";

/// Attributes that have their own field in the protobuf format (and `data` members).
const OWN_FIELDS: [&str; 6] = ["id", "source", "specversion", "type", "data", "data_base64"];

fn invalid(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> EventError {
    EventError {
        code,
        field: Some(field.into()),
        message: message.into(),
    }
}

/// The protobuf name of the field an [`EventError`] of the JSON model names.
fn proto_field(field: &str) -> String {
    match field {
        "id" | "source" | "type" => field.to_string(),
        "specversion" => "spec_version".to_string(),
        "data" => "text_data".to_string(),
        "data_base64" => "binary_data".to_string(),
        other => format!("attributes[{other:?}]"),
    }
}

/// Converts a protobuf CloudEvent into an event, with the checks of an HTTP publish.
pub fn to_event(pb: CloudEvent) -> Result<Event, EventError> {
    let mut map = Map::new();
    // Required attributes: an empty string is an absent one (proto3 has no presence).
    for (name, value) in [
        ("id", pb.id),
        ("source", pb.source),
        ("specversion", pb.spec_version),
        ("type", pb.r#type),
    ] {
        if !value.is_empty() {
            map.insert(name.to_string(), Value::String(value));
        }
    }
    for (name, value) in pb.attributes {
        if OWN_FIELDS.contains(&name.as_str()) {
            return Err(invalid(
                "invalid_attribute",
                format!("attributes[{name:?}]"),
                format!("{name} has its own field in the CloudEvents protobuf format; it may not be in attributes"),
            ));
        }
        let json = attribute_json(&name, value)?;
        map.insert(name, json);
    }
    let content_type = map
        .get("datacontenttype")
        .and_then(Value::as_str)
        .map(str::to_string);
    match pb.data {
        None => {}
        Some(PbData::BinaryData(bytes)) => {
            map.insert(
                "data_base64".to_string(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
        Some(PbData::TextData(text)) => {
            let json = content_type.as_deref().is_some_and(is_json);
            let value = if json {
                serde_json::from_str(&text).map_err(|e| {
                    invalid(
                        "invalid_data",
                        "text_data",
                        format!("datacontenttype is JSON but text_data is not valid JSON: {e}"),
                    )
                })?
            } else {
                if content_type.is_none() {
                    // The JSON model reads data without a content type as JSON; text
                    // without one is text.
                    map.insert(
                        "datacontenttype".to_string(),
                        Value::String("text/plain".to_string()),
                    );
                }
                Value::String(text)
            };
            map.insert("data".to_string(), value);
        }
        Some(PbData::ProtoData(_)) => {
            return Err(invalid(
                "invalid_data",
                "proto_data",
                "meshd does not store protobuf Any data; send the encoded message as binary_data with its datacontenttype (e.g. application/protobuf)",
            ))
        }
    }
    from_object(map).map_err(|mut e| {
        e.field = e.field.as_deref().map(proto_field);
        e
    })
}

/// Whether a content type is JSON the way the JSON event model decides it.
fn is_json(content_type: &str) -> bool {
    let ct = content_type.trim().to_ascii_lowercase();
    ct.starts_with("application/json") || ct.starts_with("text/json") || ct.ends_with("+json")
}

fn attribute_json(name: &str, value: CloudEventAttributeValue) -> Result<Value, EventError> {
    let field = || format!("attributes[{name:?}]");
    Ok(match value.attr {
        None => {
            return Err(invalid(
                "invalid_attribute",
                field(),
                format!("attribute {name} has no value (set one of ce_string, ce_boolean, ce_integer, ce_bytes, ce_uri, ce_uri_ref, ce_timestamp)"),
            ))
        }
        Some(Attr::CeBoolean(b)) => Value::Bool(b),
        Some(Attr::CeInteger(i)) => Value::from(i),
        Some(Attr::CeString(s)) | Some(Attr::CeUri(s)) | Some(Attr::CeUriRef(s)) => {
            Value::String(s)
        }
        // Binary has no value type of its own in the event model: its canonical string
        // form (base64), as the JSON format carries it.
        Some(Attr::CeBytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(Attr::CeTimestamp(ts)) => {
            let nanos = u32::try_from(ts.nanos).ok();
            let time = nanos
                .and_then(|n| chrono::DateTime::from_timestamp(ts.seconds, n))
                .ok_or_else(|| {
                    invalid(
                        "invalid_attribute",
                        field(),
                        format!("attribute {name} is not a valid timestamp"),
                    )
                })?;
            Value::String(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
    })
}

fn string_value(s: impl Into<String>) -> CloudEventAttributeValue {
    CloudEventAttributeValue {
        attr: Some(Attr::CeString(s.into())),
    }
}

/// Converts an event into a protobuf CloudEvent: binary data as `binary_data` (the same
/// bytes), text as `text_data`, JSON data as `text_data` holding the JSON.
pub fn from_event(event: &Event) -> CloudEvent {
    let mut attributes = std::collections::HashMap::new();
    if let Some(ct) = event.datacontenttype() {
        attributes.insert("datacontenttype".to_string(), string_value(ct));
    }
    if let Some(schema) = event.dataschema() {
        attributes.insert(
            "dataschema".to_string(),
            CloudEventAttributeValue {
                attr: Some(Attr::CeUri(schema.to_string())),
            },
        );
    }
    if let Some(subject) = event.subject() {
        attributes.insert("subject".to_string(), string_value(subject));
    }
    if let Some(time) = event.time() {
        attributes.insert(
            "time".to_string(),
            CloudEventAttributeValue {
                attr: Some(Attr::CeTimestamp(prost_types::Timestamp {
                    seconds: time.timestamp(),
                    nanos: time.timestamp_subsec_nanos() as i32,
                })),
            },
        );
    }
    for (name, value) in event.iter_extensions() {
        let attr = match value {
            ExtensionValue::String(s) => Attr::CeString(s.clone()),
            ExtensionValue::Boolean(b) => Attr::CeBoolean(*b),
            ExtensionValue::Integer(i) => match i32::try_from(*i) {
                Ok(i) => Attr::CeInteger(i),
                Err(_) => Attr::CeString(i.to_string()),
            },
        };
        attributes.insert(
            name.to_string(),
            CloudEventAttributeValue { attr: Some(attr) },
        );
    }
    let data = event.data().map(|d| match d {
        Data::Binary(b) => PbData::BinaryData(b.clone()),
        Data::String(s) => PbData::TextData(s.clone()),
        Data::Json(v) => PbData::TextData(v.to_string()),
    });
    CloudEvent {
        id: event.id().to_string(),
        source: event.source().to_string(),
        spec_version: SPEC_VERSION.to_string(),
        r#type: event.ty().to_string(),
        attributes,
        data,
    }
}

/// Converts the JSON of a structured-mode event (what a pull hands out) into a protobuf
/// CloudEvent; `None` when it is not an event (a transform's raw output).
pub fn from_structured_json(value: &Value) -> Option<CloudEvent> {
    let Value::Object(map) = value else {
        return None;
    };
    from_object(map.clone()).ok().map(|e| from_event(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(a: Attr) -> CloudEventAttributeValue {
        CloudEventAttributeValue { attr: Some(a) }
    }

    fn base() -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: "/shop".into(),
            spec_version: "1.0".into(),
            r#type: "order.created".into(),
            ..Default::default()
        }
    }

    #[test]
    fn binary_data_and_attributes_round_trip_exactly() {
        let mut pb = base();
        let bytes: Vec<u8> = (0..=255).collect();
        pb.data = Some(PbData::BinaryData(bytes.clone()));
        pb.attributes.insert(
            "datacontenttype".into(),
            attr(Attr::CeString("application/octet-stream".into())),
        );
        pb.attributes
            .insert("subject".into(), attr(Attr::CeString("s-1".into())));
        pb.attributes.insert(
            "dataschema".into(),
            attr(Attr::CeUri("https://example.com/s".into())),
        );
        pb.attributes.insert(
            "time".into(),
            attr(Attr::CeTimestamp(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            })),
        );
        pb.attributes
            .insert("partitionkey".into(), attr(Attr::CeString("k".into())));
        pb.attributes
            .insert("flag".into(), attr(Attr::CeBoolean(true)));
        pb.attributes
            .insert("count".into(), attr(Attr::CeInteger(-7)));
        let event = to_event(pb.clone()).unwrap();
        assert_eq!(event.data(), Some(&Data::Binary(bytes)));
        assert_eq!(meshd_core::event::partition_key(&event), Some("k"));
        assert_eq!(from_event(&event), pb);
    }

    #[test]
    fn text_and_json_data() {
        let mut pb = base();
        pb.data = Some(PbData::TextData("héllo".into()));
        let event = to_event(pb).unwrap();
        assert_eq!(event.data(), Some(&Data::String("héllo".into())));
        assert_eq!(event.datacontenttype(), Some("text/plain"));

        let mut pb = base();
        pb.attributes.insert(
            "datacontenttype".into(),
            attr(Attr::CeString("application/json".into())),
        );
        pb.data = Some(PbData::TextData(r#"{"total":42}"#.into()));
        let event = to_event(pb).unwrap();
        assert_eq!(
            event.data(),
            Some(&Data::Json(serde_json::json!({"total": 42})))
        );
        let back = from_event(&event);
        assert_eq!(back.data, Some(PbData::TextData(r#"{"total":42}"#.into())));
    }

    #[test]
    fn refusals_name_the_protobuf_field() {
        let mut pb = base();
        pb.source.clear();
        assert_eq!(to_event(pb).unwrap_err().field.as_deref(), Some("source"));

        let mut pb = base();
        pb.spec_version = "0.3".into();
        assert_eq!(
            to_event(pb).unwrap_err().field.as_deref(),
            Some("spec_version")
        );

        let mut pb = base();
        pb.attributes
            .insert("Bad-Name".into(), attr(Attr::CeString("x".into())));
        assert_eq!(
            to_event(pb).unwrap_err().field.as_deref(),
            Some("attributes[\"Bad-Name\"]")
        );

        let mut pb = base();
        pb.attributes
            .insert("id".into(), attr(Attr::CeString("2".into())));
        assert_eq!(
            to_event(pb).unwrap_err().field.as_deref(),
            Some("attributes[\"id\"]")
        );

        let mut pb = base();
        pb.attributes.insert(
            "datacontenttype".into(),
            attr(Attr::CeString("application/json".into())),
        );
        pb.data = Some(PbData::TextData("{not json".into()));
        assert_eq!(
            to_event(pb).unwrap_err().field.as_deref(),
            Some("text_data")
        );

        let mut pb = base();
        pb.data = Some(PbData::ProtoData(prost_types::Any::default()));
        assert_eq!(
            to_event(pb).unwrap_err().field.as_deref(),
            Some("proto_data")
        );

        let mut pb = base();
        pb.attributes
            .insert("x".into(), CloudEventAttributeValue { attr: None });
        assert_eq!(to_event(pb).unwrap_err().code, "invalid_attribute");
    }

    #[test]
    fn pulled_json_becomes_the_same_event() {
        let mut pb = base();
        pb.data = Some(PbData::BinaryData(vec![0, 159, 146, 150]));
        pb.attributes.insert(
            "datacontenttype".into(),
            attr(Attr::CeString("application/octet-stream".into())),
        );
        let event = to_event(pb.clone()).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(from_structured_json(&json), Some(pb));
        assert_eq!(from_structured_json(&serde_json::json!({"body": 1})), None);
    }
}
