//! CloudEvents SQL (CESQL v1) expressions.
//!
//! STUB until the filter-engine issue lands: parsing always fails with a clear message.
//! The signatures here are the interface the rest of meshd uses.

use cloudevents::Event;

/// Why an expression does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CesqlError {
    /// What is wrong, with the position when known.
    pub message: String,
}

/// A parsed CESQL expression.
#[derive(Debug, Clone)]
pub struct Expression {
    _private: (),
}

impl Expression {
    /// Parses an expression.
    pub fn parse(_text: &str) -> Result<Expression, CesqlError> {
        Err(CesqlError {
            message: "CESQL filters are not supported yet".into(),
        })
    }

    /// Whether the event matches (evaluation errors: no match).
    pub fn matches(&self, _event: &Event) -> bool {
        false
    }
}
