//! The JSON view of an event that transform paths select from.
//!
//! Owns one function, [`event_json`]: the CloudEvents structured JSON form of an event
//! (context attributes and extensions at the top level, JSON data under `data`, other
//! binary data under `data_base64`), with two conveniences over the wire form: string or
//! binary data whose `datacontenttype` is JSON is parsed, so `$.data.x` works whichever
//! HTTP mode the producer used; `time` is RFC 3339 with `Z`, as the binary binding sends it.

use base64::Engine as _;
use cloudevents::event::{AttributeValue, Data, ExtensionValue};
use cloudevents::{AttributesReader, Event};
use serde_json::{Map, Value};

use crate::event::media_type;

/// Whether a content type says JSON (`application/json`, `text/json`, `*+json`).
pub(crate) fn is_json_content_type(ct: &str) -> bool {
    let mt = media_type(ct);
    mt == "application/json" || mt == "text/json" || mt.ends_with("+json")
}

/// The event as one JSON object: `$.id`, `$.type`, `$.source`, `$.time`, extensions by
/// name, `$.data` (JSON data, or text data as a string) or `$.data_base64`.
pub fn event_json(event: &Event) -> Value {
    let mut m = Map::new();
    for (name, value) in event.iter_attributes() {
        let s = match value {
            AttributeValue::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            other => other.to_string(),
        };
        m.insert(name.to_string(), Value::String(s));
    }
    for (name, value) in event.iter_extensions() {
        let v = match value {
            ExtensionValue::String(s) => Value::String(s.clone()),
            ExtensionValue::Boolean(b) => Value::Bool(*b),
            ExtensionValue::Integer(i) => Value::from(*i),
        };
        m.insert(name.to_string(), v);
    }
    let json_ct = event.datacontenttype().is_some_and(is_json_content_type);
    match event.data() {
        Some(Data::Json(v)) => {
            m.insert("data".into(), v.clone());
        }
        Some(Data::String(s)) => {
            let v = json_ct
                .then(|| serde_json::from_str::<Value>(s).ok())
                .flatten()
                .unwrap_or_else(|| Value::String(s.clone()));
            m.insert("data".into(), v);
        }
        Some(Data::Binary(b)) => match json_ct
            .then(|| serde_json::from_slice::<Value>(b).ok())
            .flatten()
        {
            Some(v) => {
                m.insert("data".into(), v);
            }
            None => {
                m.insert(
                    "data_base64".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
                );
            }
        },
        None => {}
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_shape() {
        let e = crate::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2024-01-02T03:04:05Z",
                "region":"eu","n":3,"datacontenttype":"application/json","data":{"a":[1,2]}}"#,
        )
        .unwrap();
        let v = event_json(&e);
        assert_eq!(v["id"], "1");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["time"], "2024-01-02T03:04:05Z");
        assert_eq!(v["region"], "eu");
        assert_eq!(v["data"], json!({"a":[1,2]}));
        assert!(v.get("data_base64").is_none());
    }

    #[test]
    fn binary_json_and_opaque_data() {
        let e = crate::event::parse_binary(
            [
                ("ce-id", &b"1"[..]),
                ("ce-source", b"/s"),
                ("ce-type", b"t"),
                ("ce-specversion", b"1.0"),
            ],
            Some("application/octet-stream"),
            &[0, 255],
        )
        .unwrap();
        let v = event_json(&e);
        assert_eq!(v["data_base64"], "AP8=");
        assert!(v.get("data").is_none());
        let e = crate::event::parse_binary(
            [
                ("ce-id", &b"1"[..]),
                ("ce-source", b"/s"),
                ("ce-type", b"t"),
                ("ce-specversion", b"1.0"),
            ],
            Some("text/plain"),
            b"hello",
        )
        .unwrap();
        assert_eq!(event_json(&e)["data"], "hello");
    }
}
