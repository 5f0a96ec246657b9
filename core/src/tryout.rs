//! Try a filter and a transform on one event without creating a subscription.
//!
//! Owns the pure logic behind `POST /v1/filters/test`: compile the given filter and
//! transform exactly as a subscription would (same errors, same field names), say whether
//! the event matches, and show what the sink would receive. The HTTP layer only parses the
//! body and serializes [`FilterTestResult`].

use base64::Engine as _;
use cloudevents::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::filter::{Filter, FilterError, FilterSpec};
use crate::transform::{Transform, TransformError, TransformOutput, TransformSpec};

/// Why a try-out could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TryoutError {
    /// The filter does not compile.
    #[error("filter: {0}")]
    Filter(#[from] FilterError),
    /// The transform does not compile, or failed on this event (output too large).
    #[error("{0}")]
    Transform(#[from] TransformError),
}

impl TryoutError {
    /// The request field at fault, e.g. `filter.all[0].exact` or `transform.partial.path`.
    pub fn field(&self) -> Option<String> {
        match self {
            TryoutError::Filter(e) => Some(format!("filter{}", e.path_suffix())),
            TryoutError::Transform(e) => e.field().map(str::to_string),
        }
    }
}

/// What the sink would receive, in a JSON-friendly form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "as", rename_all = "lowercase", deny_unknown_fields)]
pub enum TryoutOutput {
    /// A CloudEvent, shown in structured JSON form.
    Event {
        /// The event as `application/cloudevents+json`.
        event: Value,
    },
    /// A raw body. Exactly one of `json`, `text`, `base64` is set.
    Raw {
        /// Content type of the body.
        content_type: String,
        /// The body, when the content type is JSON and it parses.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json: Option<Value>,
        /// The body, when it is other UTF-8 text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The body in base64, when it is not UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base64: Option<String>,
    },
}

/// Answer of a try-out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterTestResult {
    /// Whether the event passes the filter (true when there is no filter).
    pub matched: bool,
    /// What the sink would receive; absent when the event does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<TryoutOutput>,
}

/// Compiles `filter` and `transform` as a subscription would and runs them on `event`.
/// No transform means the original event.
pub fn test_filter(
    filter: Option<&FilterSpec>,
    transform: Option<&TransformSpec>,
    event: &Event,
) -> Result<FilterTestResult, TryoutError> {
    let filter = filter.map(Filter::compile).transpose()?;
    let transform = transform
        .map(Transform::compile)
        .transpose()?
        .unwrap_or_default();
    let matched = filter.as_ref().is_none_or(|f| f.matches(event));
    if !matched {
        return Ok(FilterTestResult {
            matched,
            output: None,
        });
    }
    let output = match transform.apply(event)? {
        TransformOutput::Event(e) => TryoutOutput::Event {
            event: serde_json::to_value(&e).unwrap_or_else(|_| crate::transform::event_json(&e)),
        },
        TransformOutput::Raw { content_type, body } => raw_output(content_type, body),
    };
    Ok(FilterTestResult {
        matched,
        output: Some(output),
    })
}

fn raw_output(content_type: String, body: Vec<u8>) -> TryoutOutput {
    let media = crate::event::media_type(&content_type);
    let is_json = media == "application/json" || media == "text/json" || media.ends_with("+json");
    let json = is_json
        .then(|| serde_json::from_slice::<Value>(&body).ok())
        .flatten();
    let (text, base64) = if json.is_some() {
        (None, None)
    } else {
        match String::from_utf8(body) {
            Ok(s) => (Some(s), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
            ),
        }
    };
    TryoutOutput::Raw {
        content_type,
        json,
        text,
        base64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev() -> Event {
        crate::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/orders","type":"order.created",
                "datacontenttype":"application/json","data":{"order":{"id":"o-1"}}}"#,
        )
        .unwrap()
    }

    fn filter(j: &str) -> FilterSpec {
        serde_json::from_str(j).unwrap()
    }

    fn transform(j: &str) -> TransformSpec {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn no_filter_no_transform_is_the_event() {
        let r = test_filter(None, None, &ev()).unwrap();
        assert!(r.matched);
        let Some(TryoutOutput::Event { event }) = r.output else {
            panic!("event expected")
        };
        assert_eq!(event["id"], "1");
        assert_eq!(event["data"]["order"]["id"], "o-1");
    }

    #[test]
    fn match_and_transform() {
        let f = filter(r#"{"exact":{"type":"order.created"}}"#);
        let t = transform(r#"{"partial":{"path":"$.data.order","as":"raw"}}"#);
        let r = test_filter(Some(&f), Some(&t), &ev()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"matched":true,"output":{"as":"raw","content_type":"application/json",
                   "json":{"id":"o-1"}}})
        );
        let t = transform(r#"{"constant":{"text":"hi","as":"raw"}}"#);
        let r = test_filter(Some(&f), Some(&t), &ev()).unwrap();
        assert_eq!(
            r.output,
            Some(TryoutOutput::Raw {
                content_type: "text/plain; charset=utf-8".into(),
                json: None,
                text: Some("hi".into()),
                base64: None
            })
        );
    }

    #[test]
    fn no_match_has_no_output() {
        let f = filter(r#"{"exact":{"type":"order.deleted"}}"#);
        let t = transform(r#"{"data":{}}"#);
        let r = test_filter(Some(&f), Some(&t), &ev()).unwrap();
        assert_eq!(
            r,
            FilterTestResult {
                matched: false,
                output: None
            }
        );
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({"matched":false}));
    }

    #[test]
    fn binary_body_is_base64() {
        assert_eq!(
            raw_output("image/png".into(), vec![0xff, 0]),
            TryoutOutput::Raw {
                content_type: "image/png".into(),
                json: None,
                text: None,
                base64: Some("/wA=".into())
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad_f = filter(r#"{"all":[{"exact":{}}]}"#);
        let e = test_filter(Some(&bad_f), None, &ev()).unwrap_err();
        assert_eq!(e.field().as_deref(), Some("filter.all[0].exact"));
        let bad_t = transform(r#"{"partial":{"path":"nope"}}"#);
        let e = test_filter(None, Some(&bad_t), &ev()).unwrap_err();
        assert_eq!(e.field().as_deref(), Some("transform.partial.path"));
        assert!(e.to_string().starts_with("transform.partial.path: "), "{e}");
    }
}
