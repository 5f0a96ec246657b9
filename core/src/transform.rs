//! Transforms: what a sink receives.
//!
//! STUB until the filter-engine issue lands: only the identity transform (`{"original":{}}`)
//! is accepted. The signatures here are the interface the rest of meshd uses.

use cloudevents::Event;
use serde::{Deserialize, Serialize};

/// A transform as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct TransformSpec(pub serde_json::Value);

/// Why a transform was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransformError {
    /// What is wrong.
    pub message: String,
}

/// What the sink receives.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
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
    _private: (),
}

impl Transform {
    /// Validates and compiles.
    pub fn compile(spec: &TransformSpec) -> Result<Transform, TransformError> {
        match &spec.0 {
            serde_json::Value::Object(m) if m.len() == 1 && m.contains_key("original") => {
                Ok(Transform { _private: () })
            }
            _ => Err(TransformError {
                message: "only {\"original\":{}} is supported yet".into(),
            }),
        }
    }

    /// Applies the transform.
    pub fn apply(&self, event: &Event) -> Result<TransformOutput, TransformError> {
        Ok(TransformOutput::Event(event.clone()))
    }
}
