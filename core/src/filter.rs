//! The filter a subscription (or a federation interest) carries.
//!
//! A [`FilterSpec`] is what the API takes: an EventBridge-style `pattern`, a CESQL
//! expression (`cesql`, alias `sql`), or the CloudEvents Subscriptions API dialects
//! `exact`, `prefix`, `suffix`, `all`, `any`, `not`. [`Filter::compile`] validates it once;
//! [`Filter::matches`] never re-parses.

use std::collections::BTreeMap;

use cloudevents::Event;
use serde::{Deserialize, Serialize};

use crate::cesql;
use crate::event::attribute_string;
use crate::pattern;

/// Deepest nesting of `all`/`any`/`not` accepted.
pub const MAX_FILTER_DEPTH: usize = 32;

/// A filter as the API takes it (externally tagged: `{"exact": {...}}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FilterSpec {
    /// EventBridge / event-ruler JSON event pattern.
    Pattern(serde_json::Value),
    /// CloudEvents SQL v1 expression.
    #[serde(alias = "sql")]
    Cesql(String),
    /// Every named attribute equals the value.
    Exact(BTreeMap<String, String>),
    /// Every named attribute starts with the value.
    Prefix(BTreeMap<String, String>),
    /// Every named attribute ends with the value.
    Suffix(BTreeMap<String, String>),
    /// Every sub-filter matches.
    All(Vec<FilterSpec>),
    /// At least one sub-filter matches.
    Any(Vec<FilterSpec>),
    /// The sub-filter does not match.
    Not(Box<FilterSpec>),
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The pattern is malformed.
    #[error("pattern: {0}")]
    Pattern(#[from] pattern::PatternError),
    /// The CESQL expression does not parse.
    #[error("cesql: {0}")]
    Cesql(#[from] cesql::CesqlError),
    /// A dialect is used wrongly.
    #[error("{path}: {message}")]
    Dialect {
        /// Where, e.g. `.all[2].exact`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl FilterError {
    /// A path to append to `filter` when reporting the field.
    pub fn path_suffix(&self) -> String {
        match self {
            FilterError::Dialect { path, .. } => path.clone(),
            FilterError::Pattern(_) => ".pattern".into(),
            FilterError::Cesql(_) => ".cesql".into(),
        }
    }
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// A compiled pattern.
    Pattern(pattern::Pattern),
    /// A parsed CESQL expression.
    Cesql(cesql::Expression),
    /// Attribute equals.
    Exact(Vec<(String, String)>),
    /// Attribute starts with.
    Prefix(Vec<(String, String)>),
    /// Attribute ends with.
    Suffix(Vec<(String, String)>),
    /// And.
    All(Vec<Filter>),
    /// Or.
    Any(Vec<Filter>),
    /// Not.
    Not(Box<Filter>),
}

impl Filter {
    /// Validates and compiles a spec.
    pub fn compile(spec: &FilterSpec) -> Result<Filter, FilterError> {
        compile_at(spec, String::new(), 0)
    }

    /// Whether the event passes the filter. Evaluation errors (CESQL) mean "no match".
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::Pattern(p) => p.matches(event),
            Filter::Cesql(e) => e.matches(event),
            Filter::Exact(pairs) => pairs
                .iter()
                .all(|(k, v)| attribute_string(event, k).is_some_and(|a| a == v.as_str())),
            Filter::Prefix(pairs) => pairs.iter().all(|(k, v)| {
                attribute_string(event, k).is_some_and(|a| a.starts_with(v.as_str()))
            }),
            Filter::Suffix(pairs) => pairs
                .iter()
                .all(|(k, v)| attribute_string(event, k).is_some_and(|a| a.ends_with(v.as_str()))),
            Filter::All(fs) => fs.iter().all(|f| f.matches(event)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(event)),
            Filter::Not(f) => !f.matches(event),
        }
    }
}

fn compile_at(spec: &FilterSpec, path: String, depth: usize) -> Result<Filter, FilterError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(FilterError::Dialect {
            path,
            message: format!("filters nest at most {MAX_FILTER_DEPTH} deep"),
        });
    }
    let pairs = |m: &BTreeMap<String, String>, kind: &str| {
        if m.is_empty() {
            return Err(FilterError::Dialect {
                path: format!("{path}.{kind}"),
                message: format!("{kind} needs at least one attribute"),
            });
        }
        for k in m.keys() {
            let ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err(FilterError::Dialect {
                    path: format!("{path}.{kind}.{k}"),
                    message: format!("{k:?} is not a CloudEvents attribute name (a-z, 0-9)"),
                });
            }
        }
        Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    };
    let list = |fs: &[FilterSpec], kind: &str| -> Result<Vec<Filter>, FilterError> {
        if fs.is_empty() {
            return Err(FilterError::Dialect {
                path: format!("{path}.{kind}"),
                message: format!("{kind} needs at least one filter"),
            });
        }
        fs.iter()
            .enumerate()
            .map(|(i, f)| compile_at(f, format!("{path}.{kind}[{i}]"), depth + 1))
            .collect()
    };
    Ok(match spec {
        FilterSpec::Pattern(v) => Filter::Pattern(pattern::Pattern::compile(v)?),
        FilterSpec::Cesql(s) => Filter::Cesql(cesql::Expression::parse_strict(s)?),
        FilterSpec::Exact(m) => Filter::Exact(pairs(m, "exact")?),
        FilterSpec::Prefix(m) => Filter::Prefix(pairs(m, "prefix")?),
        FilterSpec::Suffix(m) => Filter::Suffix(pairs(m, "suffix")?),
        FilterSpec::All(fs) => Filter::All(list(fs, "all")?),
        FilterSpec::Any(fs) => Filter::Any(list(fs, "any")?),
        FilterSpec::Not(f) => {
            Filter::Not(Box::new(compile_at(f, format!("{path}.not"), depth + 1)?))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        crate::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/orders/eu","type":"order.created","region":"eu","n":3}"#,
        )
        .unwrap()
    }

    fn f(json: &str) -> Filter {
        Filter::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn dialects() {
        let e = ev();
        assert!(f(r#"{"exact":{"type":"order.created"}}"#).matches(&e));
        assert!(!f(r#"{"exact":{"type":"order.deleted"}}"#).matches(&e));
        assert!(f(r#"{"exact":{"n":"3"}}"#).matches(&e));
        assert!(!f(r#"{"exact":{"missing":"x"}}"#).matches(&e));
        assert!(f(r#"{"prefix":{"source":"/orders/"}}"#).matches(&e));
        assert!(f(r#"{"suffix":{"type":".created"}}"#).matches(&e));
        assert!(
            f(r#"{"all":[{"exact":{"region":"eu"}},{"prefix":{"type":"order"}}]}"#).matches(&e)
        );
        assert!(
            f(r#"{"any":[{"exact":{"region":"us"}},{"prefix":{"type":"order"}}]}"#).matches(&e)
        );
        assert!(f(r#"{"not":{"exact":{"region":"us"}}}"#).matches(&e));
    }

    #[test]
    fn bad_filters_name_the_path() {
        let spec: FilterSpec = serde_json::from_str(r#"{"all":[{"exact":{}}]}"#).unwrap();
        let e = Filter::compile(&spec).unwrap_err();
        assert_eq!(e.path_suffix(), ".all[0].exact");
        assert!(serde_json::from_str::<FilterSpec>(r#"{"regex":"x"}"#).is_err());
        let spec: FilterSpec = serde_json::from_str(r#"{"exact":{"Type":"x"}}"#).unwrap();
        assert!(Filter::compile(&spec).is_err());
    }
}
