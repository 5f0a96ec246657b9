//! How an event is encoded in the event store and inside wire frames.
//!
//! Today the record payload is the CloudEvents JSON event format (structured mode), so a
//! store can be read by any CloudEvents tool. The encoding is behind these two functions
//! so that it can change (with a version byte) without touching callers.
//!
//! [`RawEvent`] is the fast path for code that only routes events (the federation bridge):
//! it reads the few attributes routing needs straight from the stored bytes, without
//! building an [`Event`], and rewrites string extensions by splicing the bytes, so a
//! replicated event is not parsed and re-serialized on each hop.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use cloudevents::Event;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why stored bytes could not be turned back into an event.
#[derive(Debug, thiserror::Error)]
#[error("stored event is not decodable: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// Encodes an event for the store.
pub fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("a CloudEvent always serializes to JSON")
}

/// Decodes an event written by [`encode_event`].
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Why bytes are not a routable event (see [`RawEvent::parse`]).
#[derive(Debug, thiserror::Error)]
#[error("not a routable CloudEvent: {0}")]
pub struct RawEventError(String);

/// A string attribute found in the bytes: its value and where its JSON value sits.
#[derive(Debug, Clone)]
struct RawField<'a> {
    value: Cow<'a, str>,
    range: Range<usize>,
}

/// The routing view of a stored event (CloudEvents JSON format): `id`, `source`, the
/// `partitionkey` extension and the mesh's origin/path extensions, read without decoding
/// `data` or building an [`Event`]. Checks only what routing relies on: a JSON object
/// with `specversion` "1.0" and string `id`, `source` and `type`; everything else is
/// carried as it is.
#[derive(Debug, Clone)]
pub struct RawEvent<'a> {
    bytes: &'a [u8],
    id: Cow<'a, str>,
    source: Cow<'a, str>,
    partition_key: Option<Cow<'a, str>>,
    fields: [Option<RawField<'a>>; 3],
}

/// Index of `meshdorigin` / `meshdpath` / `meshdpos` in [`RawEvent::fields`] (the names are the
/// federation's; the codec only stores where they are).
const EXT_NAMES: [&str; 3] = [
    crate::event::ORIGIN_EXT,
    crate::event::PATH_EXT,
    crate::event::POS_EXT,
];

impl<'a> RawEvent<'a> {
    /// Reads the routing attributes of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<RawEvent<'a>, RawEventError> {
        let text = std::str::from_utf8(bytes).map_err(|e| RawEventError(e.to_string()))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let found = de
            .deserialize_map(PeekVisitor)
            .map_err(|e| RawEventError(e.to_string()))?;
        de.end().map_err(|e| RawEventError(e.to_string()))?;
        let base = text.as_ptr() as usize;
        // Extensions may also be integers or booleans: their text is their string form
        // (as `ExtensionValue`'s Display has it).
        let field = |name: &str,
                     raw: Option<&'a RawValue>,
                     any_scalar: bool|
         -> Result<Option<RawField<'a>>, RawEventError> {
            let Some(raw) = raw else { return Ok(None) };
            let text = raw.get();
            let start = text.as_ptr() as usize - base;
            let value = match json_str(raw) {
                Some(v) => v,
                None if any_scalar && !text.starts_with(['{', '[', 'n']) => Cow::Borrowed(text),
                None => return Err(RawEventError(format!("{name} is not a string"))),
            };
            Ok(Some(RawField {
                value,
                range: start..start + text.len(),
            }))
        };
        let required =
            |name: &str, raw: Option<&'a RawValue>| -> Result<Cow<'a, str>, RawEventError> {
                field(name, raw, false)?
                    .map(|f| f.value)
                    .ok_or_else(|| RawEventError(format!("missing {name}")))
            };
        if required("specversion", found.specversion)? != "1.0" {
            return Err(RawEventError("specversion is not 1.0".into()));
        }
        required("type", found.ty)?;
        let id = required("id", found.id)?;
        let source = required("source", found.source)?;
        // A non-string partition key is no key (as `event::partition_key` sees it).
        let partition_key = found.partitionkey.and_then(json_str);
        Ok(RawEvent {
            bytes,
            id,
            source,
            partition_key,
            fields: [
                field(EXT_NAMES[0], found.ext[0], true)?,
                field(EXT_NAMES[1], found.ext[1], true)?,
                field(EXT_NAMES[2], found.ext[2], true)?,
            ],
        })
    }

    /// The `id` attribute.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `partitionkey` extension, when it is a string.
    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    /// A string extension routing reads: `meshdorigin` or `meshdpath` (others: `None`).
    pub fn extension(&self, name: &str) -> Option<&str> {
        let i = EXT_NAMES.iter().position(|n| *n == name)?;
        self.fields[i].as_ref().map(|f| f.value.as_ref())
    }

    /// The bytes with string extensions set (`meshdorigin` / `meshdpath` / `meshdpos` only): an
    /// existing value is replaced in place, a missing one is added as the object's first
    /// member. Everything else is byte for byte the input.
    pub fn with_extensions(&self, set: &[(&str, &str)]) -> Vec<u8> {
        // (where, how many bytes replaced, new text)
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        let open = self
            .bytes
            .iter()
            .position(|b| *b == b'{')
            .map_or(0, |p| p + 1);
        let mut inserted = String::new();
        for (name, value) in set {
            let quoted = serde_json::to_string(value).expect("a string serializes");
            match EXT_NAMES.iter().position(|n| n == name) {
                Some(i) => match &self.fields[i] {
                    Some(f) => edits.push((f.range.start, f.range.len(), quoted)),
                    None => {
                        inserted
                            .push_str(&serde_json::to_string(name).expect("a string serializes"));
                        inserted.push(':');
                        inserted.push_str(&quoted);
                        inserted.push(',');
                    }
                },
                None => debug_assert!(false, "with_extensions: {name} is not a routing extension"),
            }
        }
        if !inserted.is_empty() {
            edits.push((open, 0, inserted));
        }
        edits.sort_by_key(|e| e.0);
        let extra: usize = edits.iter().map(|e| e.2.len()).sum();
        let mut out = Vec::with_capacity(self.bytes.len() + extra);
        let mut at = 0;
        for (pos, len, text) in edits {
            out.extend_from_slice(&self.bytes[at..pos]);
            out.extend_from_slice(text.as_bytes());
            at = pos + len;
        }
        out.extend_from_slice(&self.bytes[at..]);
        out
    }
}

/// A JSON string value, borrowed when it has no escapes.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<&str>(text) {
        return Some(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

#[derive(Default)]
struct Peeked<'a> {
    specversion: Option<&'a RawValue>,
    ty: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    partitionkey: Option<&'a RawValue>,
    ext: [Option<&'a RawValue>; 3],
}

struct PeekVisitor;

impl<'de> Visitor<'de> for PeekVisitor {
    type Value = Peeked<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CloudEvent JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Peeked<'de>, M::Error> {
        let mut p = Peeked::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "specversion" => &mut p.specversion,
                "type" => &mut p.ty,
                "id" => &mut p.id,
                "source" => &mut p.source,
                crate::event::PARTITION_KEY => &mut p.partitionkey,
                crate::event::ORIGIN_EXT => &mut p.ext[0],
                crate::event::PATH_EXT => &mut p.ext[1],
                crate::event::POS_EXT => &mut p.ext[2],
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format!("duplicate attribute {key}")));
            }
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};

    fn event() -> Event {
        EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .extension("partitionkey", "k")
            .data(
                "application/json",
                serde_json::json!({"a": [1, 2], "meshdpath": "no"}),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode_event(&encode_event(&event())).unwrap(), event());
    }

    #[test]
    fn raw_reads_routing_attributes() {
        let bytes = encode_event(&event());
        let r = RawEvent::parse(&bytes).unwrap();
        assert_eq!(
            (r.id(), r.source(), r.partition_key()),
            ("1", "/s", Some("k"))
        );
        // Members of `data` are not attributes.
        assert_eq!(r.extension("meshdpath"), None);
    }

    #[test]
    fn raw_splice_adds_then_replaces_extensions() {
        let bytes = encode_event(&event());
        let r = RawEvent::parse(&bytes).unwrap();
        let added = r.with_extensions(&[("meshdorigin", "a"), ("meshdpath", "a")]);
        let e = decode_event(&added).unwrap();
        assert_eq!(e.extension("meshdpath").unwrap().to_string(), "a");
        assert_eq!(e.extension("meshdorigin").unwrap().to_string(), "a");
        let r2 = RawEvent::parse(&added).unwrap();
        assert_eq!(r2.extension("meshdpath"), Some("a"));
        let replaced = r2.with_extensions(&[("meshdpath", "a,b\"c")]);
        let e2 = decode_event(&replaced).unwrap();
        assert_eq!(e2.extension("meshdpath").unwrap().to_string(), "a,b\"c");
        assert_eq!(e2.extension("meshdorigin").unwrap().to_string(), "a");
        assert_eq!(e2.data(), event().data());
        assert_eq!(e2.id(), "1");
        assert_eq!(
            RawEvent::parse(&replaced).unwrap().extension("meshdpath"),
            Some("a,b\"c")
        );
    }

    #[test]
    fn raw_unescapes_and_refuses_what_is_not_an_event() {
        let ok =
            br#"{"specversion":"1.0","id":"a\u0062","source":"/s","type":"t","partitionkey":7}"#;
        let r = RawEvent::parse(ok).unwrap();
        assert_eq!(r.id(), "ab");
        assert_eq!(r.partition_key(), None);
        let scalar = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","meshdpath":5}"#;
        assert_eq!(
            RawEvent::parse(scalar).unwrap().extension("meshdpath"),
            Some("5")
        );
        let bad: [&[u8]; 10] = [
            b"[1]",
            br#"{"id":"1""#,
            b"not json",
            b"\xff\xfe",
            br#"{"specversion":"1.0","id":"1","source":"/s"}"#,
            br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","meshdpath":[5]}"#,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"} x"#,
        ];
        for b in bad {
            assert!(
                RawEvent::parse(b).is_err(),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
