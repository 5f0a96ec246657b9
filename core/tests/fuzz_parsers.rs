//! Stable-toolchain fuzzing of meshd-core's parsers of network bytes: federation frames,
//! the raw (routing) view of a stored event, stored events, and the three CloudEvents HTTP
//! modes. See `support/fuzzing.rs`.

#[path = "support/fuzzing.rs"]
mod fuzzing;

use cloudevents::AttributesReader as _;
use meshd_core::codec::{decode_event, encode_event, RawEvent};
use meshd_core::event::{parse_batch, parse_binary, parse_structured, validate};
use meshd_core::wire::{
    check_frame_len, decode_frame, encode_frame, Batch, Frame, Hello, InterestEntry, Mark,
    ProgressMark, WireEvent, PROTOCOL_VERSION,
};

const EVENT: &str = r#"{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.created","datacontenttype":"application/json","partitionkey":"k1","meshdorigin":"a","meshdpath":"a,b","time":"2026-12-03T08:00:00Z","data":{"total":42,"items":["x","y"],"nested":{"a":[1,2.5,null,true]}}}"#;
const EVENT_B64: &str =
    r#"{"specversion":"1.0","id":"e-2","source":"/shop","type":"t","data_base64":"AAEC/w=="}"#;

fn event_seeds() -> Vec<Vec<u8>> {
    vec![
        EVENT.as_bytes().to_vec(),
        EVENT_B64.as_bytes().to_vec(),
        br#"{"specversion":"1.0","id":"\u00e9\ud83d\ude00","source":"s","type":"t","data":"text"}"#
            .to_vec(),
    ]
}

fn frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            mesh: "mesh".into(),
            cluster: "a".into(),
            digest: "0fcfad05".into(),
        }),
        Frame::Refuse {
            reason: "no".into(),
        },
        Frame::Interest(vec![InterestEntry {
            dest: "b".into(),
            topic: "orders".into(),
            filter: Some(r#"{"exact":{"type":"x"}}"#.into()),
            since_ms: None,
        }]),
        Frame::Batch(Batch {
            seq: 7,
            topic: "orders".into(),
            partition: 3,
            partitions: 4,
            next: 12,
            events: vec![
                WireEvent {
                    offset: 10,
                    timestamp_ms: 1_700_000_000_000,
                    payload: EVENT.as_bytes().to_vec(),
                },
                WireEvent {
                    offset: 11,
                    timestamp_ms: 1_700_000_000_001,
                    payload: EVENT_B64.as_bytes().to_vec(),
                },
            ],
        }),
        Frame::Ack { seq: u64::MAX },
        Frame::Marks(vec![Mark {
            origin: "a".into(),
            topic: "orders".into(),
            partition: 3,
            next: 12,
        }]),
        Frame::Progress {
            seq: 7,
            marks: vec![ProgressMark {
                topic: "orders".into(),
                partition: 2,
                next: 1_000_000,
            }],
        },
    ]
}

#[test]
fn federation_frames() {
    let seeds = frames()
        .iter()
        .map(|f| encode_frame(f).expect("encodes"))
        .collect();
    fuzzing::run("federation frames", seeds, |bytes| {
        // As the bridge reads: a 4-byte length prefix, checked, then the body.
        let Some(prefix) = bytes.get(..4) else { return };
        let Ok(len) = check_frame_len([prefix[0], prefix[1], prefix[2], prefix[3]]) else {
            return;
        };
        let body = &bytes[4..];
        let body = &body[..len.min(body.len())];
        if let Ok(frame) = decode_frame(body) {
            // Whatever decodes re-encodes to a frame that decodes to the same value.
            let again = encode_frame(&frame).expect("a decoded frame encodes");
            assert_eq!(decode_frame(&again[4..]).expect("round trip"), frame);
        }
    });
}

#[test]
fn raw_event_view() {
    fuzzing::run("RawEvent::parse", event_seeds(), |bytes| {
        if let Ok(raw) = RawEvent::parse(bytes) {
            // The routing view never claims an empty or foreign id.
            let _ = (raw.id(), raw.source(), raw.partition_key());
        }
    });
}

#[test]
fn stored_events() {
    fuzzing::run("codec::decode_event", event_seeds(), |bytes| {
        if let Ok(e) = decode_event(bytes) {
            let again = encode_event(&e);
            assert_eq!(decode_event(&again).expect("round trip"), e);
        }
    });
}

#[test]
fn structured_and_batch_events() {
    let mut seeds = event_seeds();
    seeds.push(format!("[{EVENT},{EVENT_B64}]").into_bytes());
    fuzzing::run("parse_structured / parse_batch", seeds, |bytes| {
        if let Ok(e) = parse_structured(bytes) {
            assert!(validate(&e).is_ok(), "a parsed event is valid");
            assert_eq!(decode_event(&encode_event(&e)).expect("stores"), e);
        }
        if let Ok(events) = parse_batch(bytes) {
            assert!(!events.is_empty());
            for e in &events {
                assert!(validate(e).is_ok());
            }
        }
    });
}

#[test]
fn binary_mode_events() {
    // The input is "name: value" header lines, an empty line, then the body.
    let seeds = vec![
        b"ce-specversion: 1.0\nce-id: 1\nce-source: /shop\nce-type: order.created\nce-partitionkey: k\ncontent-type: application/json\n\n{\"total\":42}".to_vec(),
        b"ce-specversion: 1.0\nce-id: 2\nce-source: s\nce-type: t\nce-time: 2026-12-03T08:00:00Z\nce-dataschema: http://x/y\n\n\x00\x01\xff".to_vec(),
    ];
    fuzzing::run("parse_binary", seeds, |bytes| {
        let (head, body) = match bytes.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&bytes[..i], &bytes[i + 2..]),
            None => (bytes, &[][..]),
        };
        let mut headers: Vec<(String, &[u8])> = Vec::new();
        let mut content_type = None;
        for line in head.split(|b| *b == b'\n') {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let Ok(name) = std::str::from_utf8(&line[..colon]) else {
                continue;
            };
            let value = line[colon + 1..].trim_ascii();
            if name == "content-type" {
                content_type = std::str::from_utf8(value).ok();
            }
            headers.push((name.to_ascii_lowercase(), value));
        }
        let headers = headers.iter().map(|(n, v)| (n.as_str(), *v));
        if let Ok(e) = parse_binary(headers, content_type, body) {
            assert!(validate(&e).is_ok(), "a parsed event is valid");
        }
    });
}

/// Found by `structured_and_batch_events`: non-string data under a non-JSON content type was
/// accepted and stored in a form that no longer decodes; it is refused now.
#[test]
fn non_json_content_type_needs_string_data() {
    for data in [r#"{"a":1}"#, "[1]", "42", "true"] {
        let body = format!(
            r#"{{"specversion":"1.0","id":"x","source":"s","type":"t","datacontenttype":"text/plain","data":{data}}}"#
        );
        let err = parse_structured(body.as_bytes()).expect_err(data);
        assert_eq!(err.code, "invalid_data", "{data}");
        assert_eq!(err.field.as_deref(), Some("data"));
    }
    let ok = parse_structured(
        br#"{"specversion":"1.0","id":"x","source":"s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
    )
    .unwrap();
    assert_eq!(decode_event(&encode_event(&ok)).unwrap(), ok);
}

/// Found by `structured_and_batch_events` with 50,000 cases: a JSON content type in another
/// case (`Application/JSON`) was taken as JSON but stored in a form the store could not read
/// back. The media type is canonical (lower case) now, in both modes.
#[test]
fn content_types_are_canonical_and_round_trip() {
    let e = parse_structured(
        br#"{"specversion":"1.0","id":"x","source":"s","type":"t","datacontenttype":"Application/JSON; charset=UTF-8","data":{"a":1}}"#,
    )
    .unwrap();
    assert_eq!(e.datacontenttype(), Some("application/json; charset=UTF-8"));
    assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
    let headers = [
        ("ce-specversion", &b"1.0"[..]),
        ("ce-id", b"y"),
        ("ce-source", b"s"),
        ("ce-type", b"t"),
    ];
    for ct in [
        "Application/JSON",
        "application/vnd.x+json; charset=utf-8",
        "TEXT/plain",
    ] {
        let e = parse_binary(headers.iter().copied(), Some(ct), br#"{"a":1}"#).unwrap();
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e, "{ct}");
    }
}
