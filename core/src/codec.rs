//! How an event is encoded in the event store and inside wire frames.
//!
//! Today the record payload is the CloudEvents JSON event format (structured mode), so a
//! store can be read by any CloudEvents tool. The encoding is behind these two functions
//! so that it can change (with a version byte) without touching callers.

use cloudevents::Event;

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

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    #[test]
    fn round_trip() {
        let e = EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .extension("partitionkey", "k")
            .data("application/json", serde_json::json!({"a": [1, 2]}))
            .build()
            .unwrap();
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
    }
}
