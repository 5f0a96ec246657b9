//! How a stored record becomes a Pulsar message and back.
//!
//! A record whose payload is an encoded CloudEvent ([`meshd_core::codec`]) is written the
//! way other Pulsar clients expect: every attribute as a message property named
//! `ce_{attribute}` (`ce_id`, `ce_source`, `ce_type`, `ce_specversion`, `ce_time`,
//! `ce_datacontenttype`, extensions...), the event data as the payload and the partition
//! key extension as the message key. Reading rebuilds the event through the binary HTTP
//! binding parser and re-encodes it. The write side checks that this round trip gives the
//! very same bytes; when it would not (an integer or boolean extension, data without a
//! content type, or a payload that is not an event at all) the record is written as-is
//! (`meshd-format=raw`), still with the attributes as properties when it is an event.
//!
//! Bookkeeping properties on every message: `meshd-ts` (publish time, ms),
//! `meshd-incarnation` (which creation of the topic it belongs to), `meshd-append` (which
//! append call, and how many records it had; informational) and `meshd-format` (`ce` or
//! `raw`). The offset is not a property: it is derived from the message id
//! ([`super::offset_of`]). Messages written by earlier versions carry `meshd-offset`,
//! which is ignored.

use std::collections::HashMap;

use bytes::Bytes;
use cloudevents::event::{AttributeValue, Data};
use meshd_core::Event;

/// Property: the dense offset written by earlier versions (ignored now).
pub const P_OFFSET: &str = "meshd-offset";
/// Property: publish time in ms.
pub const P_TS: &str = "meshd-ts";
/// Property: the topic incarnation.
pub const P_INCARNATION: &str = "meshd-incarnation";
/// Property: `{append id}:{records in the append}`, to drop half-written appends.
pub const P_APPEND: &str = "meshd-append";
/// Property: `ce` (payload is the event data) or `raw` (payload is the record).
pub const P_FORMAT: &str = "meshd-format";

/// The parts of a message carrying one record (bookkeeping properties not included).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageParts {
    /// The Pulsar payload.
    pub payload: Vec<u8>,
    /// CloudEvents attributes as `ce_*` properties, plus `meshd-format`.
    pub properties: HashMap<String, String>,
    /// The partition key, if the event has one.
    pub key: Option<String>,
}

fn attribute_properties(event: &Event) -> HashMap<String, String> {
    let mut props = HashMap::new();
    for (name, value) in event.iter() {
        let s = match value {
            AttributeValue::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            other => other.to_string(),
        };
        props.insert(format!("ce_{name}"), s);
    }
    props
}

fn data_bytes(event: &Event) -> Vec<u8> {
    match event.data() {
        None => Vec::new(),
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(v)) => serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// Rebuilds a record payload from `ce_*` properties and the event data.
pub fn rebuild_event(properties: &HashMap<String, String>, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut content_type = None;
    for (k, v) in properties {
        let Some(name) = k.strip_prefix("ce_") else {
            continue;
        };
        if name == "datacontenttype" {
            content_type = Some(v.as_str());
            continue;
        }
        headers.push((
            format!("ce-{name}"),
            meshd_core::event::percent_encode(v).into_bytes(),
        ));
    }
    let event = meshd_core::event::parse_binary(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        content_type,
        data,
    )
    .map_err(|e| e.to_string())?;
    Ok(meshd_core::codec::encode_event(&event))
}

/// Turns a record payload into message parts (see the module docs).
pub fn to_message(payload: &[u8]) -> MessageParts {
    let Ok(event) = meshd_core::codec::decode_event(payload) else {
        return raw(payload, HashMap::new(), None);
    };
    let mut properties = attribute_properties(&event);
    let key = meshd_core::event::partition_key(&event).map(str::to_string);
    let data = data_bytes(&event);
    if rebuild_event(&properties, &data).as_deref() == Ok(payload) {
        properties.insert(P_FORMAT.into(), "ce".into());
        MessageParts {
            payload: data,
            properties,
            key,
        }
    } else {
        raw(payload, properties, key)
    }
}

fn raw(
    payload: &[u8],
    mut properties: HashMap<String, String>,
    key: Option<String>,
) -> MessageParts {
    properties.insert(P_FORMAT.into(), "raw".into());
    MessageParts {
        payload: payload.to_vec(),
        properties,
        key,
    }
}

/// Turns a message back into the record payload.
pub fn from_message(properties: &HashMap<String, String>, payload: Bytes) -> Result<Bytes, String> {
    match properties.get(P_FORMAT).map(String::as_str) {
        Some("raw") | None => Ok(payload),
        Some("ce") => rebuild_event(properties, &payload).map(Bytes::from),
        Some(other) => Err(format!("unknown {P_FORMAT} {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn roundtrip(payload: &[u8]) -> MessageParts {
        let m = to_message(payload);
        let back = from_message(&m.properties, Bytes::from(m.payload.clone())).unwrap();
        assert_eq!(back.as_ref(), payload);
        m
    }

    #[test]
    fn events_travel_as_attributes_and_data() {
        let e = EventBuilderV10::new()
            .id("e1")
            .source("/orders")
            .ty("order.created")
            .subject("o-1")
            .extension("partitionkey", "cust-9")
            .data("application/json", serde_json::json!({"total": 12.5}))
            .build()
            .unwrap();
        let m = roundtrip(&meshd_core::codec::encode_event(&e));
        assert_eq!(m.properties[P_FORMAT], "ce");
        assert_eq!(m.properties["ce_id"], "e1");
        assert_eq!(m.properties["ce_source"], "/orders");
        assert_eq!(m.properties["ce_type"], "order.created");
        assert_eq!(m.properties["ce_specversion"], "1.0");
        assert_eq!(m.properties["ce_datacontenttype"], "application/json");
        assert_eq!(m.key.as_deref(), Some("cust-9"));
        assert_eq!(m.payload, br#"{"total":12.5}"#);
    }

    #[test]
    fn non_events_and_lossy_events_are_raw() {
        assert_eq!(roundtrip(b"plain").properties[P_FORMAT], "raw");
        assert_eq!(roundtrip(b"").properties[P_FORMAT], "raw");
        let e = EventBuilderV10::new()
            .id("e1")
            .source("/s")
            .ty("t")
            .extension("count", 5i64)
            .build()
            .unwrap();
        let m = roundtrip(&meshd_core::codec::encode_event(&e));
        assert_eq!(m.properties[P_FORMAT], "raw");
        assert_eq!(m.properties["ce_id"], "e1");
    }
}
