//! The node's schema registry (docs/api.md, "Schemas"): named, versioned JSON Schema
//! documents, persisted in the store's metadata, each version compiled once into a cached
//! validator; and the check of published events against the schemas their topic binds.
//!
//! Storage: one metadata entry per version, `schemas/{name}/{version:010}`, holding
//! [`StoredVersion`] as JSON; a new version is one durable `put_meta` (kill -9 leaves the
//! version written or not). A delete removes the versions oldest first, so a delete cut
//! short leaves the latest version in force and a second delete finishes it.
//!
//! `$ref` is resolved within the document only: nothing is fetched (no network, no
//! files); a schema whose references leave the document is refused.

pub mod compat;
pub mod discover;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use cloudevents::event::{AttributesReader, AttributesWriter, Data};
use meshd_core::api::{
    check_name, schema_uri, Compatibility, InvalidField, SchemaCatalogEntry, SchemaList,
    SchemaSummary, SchemaVersionInfo,
};
use meshd_core::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::server::{CatalogError, CatalogSink};
use crate::store::{EventStore, StoreError};

/// Metadata key prefix of schema versions.
pub const SCHEMA_PREFIX: &str = "schemas/";
/// Largest schema document accepted (bytes of the request body).
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;
/// Most versions one schema may have.
pub const MAX_VERSIONS: u32 = 1000;
/// Most schemas a node keeps.
pub const MAX_SCHEMAS: usize = 10_000;
/// Longest refusal message (a failing value is cut, not echoed whole).
const MAX_MESSAGE: usize = 400;

/// Failures of schema administration (mapped to HTTP answers in `http.rs`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A name or query is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No such schema.
    #[error("schema {name:?} does not exist")]
    NotFound {
        /// Name.
        name: String,
    },
    /// No such version.
    #[error("schema {name:?} has no version {version}")]
    VersionNotFound {
        /// Name.
        name: String,
        /// The version asked.
        version: u32,
    },
    /// The document is not a JSON Schema this node can use.
    #[error("not a usable JSON Schema: {reason}")]
    BadSchema {
        /// Why (the validator's compile error).
        reason: String,
    },
    /// The new version breaks the compatibility mode.
    #[error("schema {name:?} v{version} would break {violation}")]
    Incompatible {
        /// Name.
        name: String,
        /// The version it would have become.
        version: u32,
        /// The rule broken.
        violation: compat::Violation,
    },
    /// Topics bind the schema.
    #[error("schema {name:?} is bound by topics {topics:?}; unbind it (delete or recreate those topics) first")]
    InUse {
        /// Name.
        name: String,
        /// The topics binding it.
        topics: Vec<String>,
    },
    /// A limit is reached.
    #[error("{0}")]
    Limit(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster catalog could not be written; nothing was changed.
    #[error("the cluster catalog is unavailable: {0}")]
    CatalogUnavailable(#[source] CatalogError),
}

/// The cluster catalog, when the node has one.
pub type Catalog<'a> = Option<&'a Arc<dyn CatalogSink>>;

/// One version as stored in the metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredVersion {
    compatibility: Compatibility,
    created_ms: u64,
    schema: Value,
}

/// A version with its compiled validator.
struct Version {
    info: SchemaVersionInfo,
    validator: jsonschema::Validator,
}

/// The schemas of a node.
#[derive(Default)]
pub struct SchemaRegistry {
    /// By name: versions oldest first (index `v - 1`).
    subjects: RwLock<BTreeMap<String, Vec<Arc<Version>>>>,
    /// Held by every change, and by topic creation while it checks its bindings.
    writes: tokio::sync::Mutex<()>,
    /// Bumped by every change (the mesh's schema catalog reads the registry again then).
    changes: std::sync::atomic::AtomicU64,
}

/// Refuses every `$ref` that leaves the document: nothing is fetched.
struct NoFetch;

impl jsonschema::Retrieve for NoFetch {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "{} is not fetched: $ref is resolved within the schema document only",
            uri.as_str()
        )
        .into())
    }
}

/// Compiles a schema document (JSON Schema 2020-12 unless its `$schema` names another
/// draft), checking it against its meta-schema.
pub fn compile(doc: &Value) -> Result<jsonschema::Validator, SchemaError> {
    if !doc.is_object() && !doc.is_boolean() {
        return Err(SchemaError::BadSchema {
            reason: "a schema is a JSON object (or true/false)".into(),
        });
    }
    jsonschema::options()
        .with_retriever(NoFetch)
        .build(doc)
        .map_err(|e| SchemaError::BadSchema {
            reason: cut(e.to_string()),
        })
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn key(name: &str, version: u32) -> String {
    format!("{SCHEMA_PREFIX}{name}/{version:010}")
}

fn version_of(name: &str, version: u32, stored: StoredVersion) -> Result<Version, SchemaError> {
    let validator = compile(&stored.schema)?;
    Ok(Version {
        info: SchemaVersionInfo {
            name: name.to_string(),
            version,
            uri: schema_uri(name, version),
            compatibility: stored.compatibility,
            created_ms: stored.created_ms,
            schema: stored.schema,
        },
        validator,
    })
}

/// What a put does, decided before anything is written.
enum Plan {
    /// The latest version is this document already.
    Same(SchemaVersionInfo),
    /// Writes `stored` as `version` (a new version, or the latest again with a new mode).
    Write {
        version: u32,
        stored: StoredVersion,
        new: bool,
    },
}

impl SchemaRegistry {
    /// An empty registry.
    pub fn new() -> SchemaRegistry {
        SchemaRegistry::default()
    }

    /// Loads the schemas kept in `store` (a version that no longer reads or compiles is
    /// logged and skipped).
    pub async fn load(store: &dyn EventStore) -> Result<SchemaRegistry, StoreError> {
        let mut subjects: BTreeMap<String, Vec<Arc<Version>>> = BTreeMap::new();
        for (k, value) in store.list_meta(SCHEMA_PREFIX).await? {
            let Some((name, version)) = k[SCHEMA_PREFIX.len()..]
                .rsplit_once('/')
                .and_then(|(n, v)| Some((n.to_string(), v.parse::<u32>().ok()?)))
            else {
                tracing::error!(key = %k, "stored schema key is unreadable, skipped");
                continue;
            };
            let loaded = serde_json::from_slice::<StoredVersion>(&value)
                .map_err(|e| SchemaError::BadSchema {
                    reason: e.to_string(),
                })
                .and_then(|s| version_of(&name, version, s));
            match loaded {
                Ok(v) => {
                    let versions = subjects.entry(name).or_default();
                    // Keys sort by version; a gap (a delete cut short) keeps numbering.
                    versions.push(Arc::new(v));
                }
                Err(e) => tracing::error!(key = %k, "stored schema version skipped: {e}"),
            }
        }
        tracing::info!(schemas = subjects.len(), "schemas loaded");
        Ok(SchemaRegistry {
            subjects: RwLock::new(subjects),
            writes: tokio::sync::Mutex::new(()),
            changes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<Arc<Version>>>> {
        self.subjects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Vec<Arc<Version>>>> {
        let guard = self.subjects.write().unwrap_or_else(|p| p.into_inner());
        // Moved while the lock is held: a reader of [`SchemaRegistry::entries`] sees the
        // number and the schemas of the same moment.
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        guard
    }

    /// A number that moves whenever a schema changes (read [`SchemaRegistry::entries`]
    /// again then).
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every schema with its every version, oldest first (what the mesh replicates), and
    /// [`SchemaRegistry::changes`] as of then.
    pub fn entries(&self) -> (u64, BTreeMap<String, SchemaCatalogEntry>) {
        let subjects = self.read();
        let changes = self.changes();
        let entries = subjects
            .iter()
            .map(|(name, versions)| {
                (
                    name.clone(),
                    SchemaCatalogEntry {
                        versions: versions.iter().map(|v| v.info.clone()).collect(),
                    },
                )
            })
            .collect();
        (changes, entries)
    }

    /// Applies a schema of the mesh's catalog to the cluster: `Some(versions)` makes its
    /// versions exactly these, `None` deletes it. Written to the cluster catalog first
    /// (when the node has one) so every node of the cluster follows.
    pub async fn replicate(
        &self,
        store: &dyn EventStore,
        catalog: Catalog<'_>,
        name: &str,
        versions: Option<SchemaCatalogEntry>,
    ) -> Result<(), SchemaError> {
        match versions {
            Some(entry) => {
                check_name("schema", name)?;
                for v in &entry.versions {
                    // Compiled first: a version this node cannot use changes nothing.
                    compile(&v.schema)?;
                }
                if let Some(c) = catalog {
                    c.put_schema(name, &entry)
                        .await
                        .map_err(SchemaError::CatalogUnavailable)?;
                }
                self.apply(store, name, entry).await
            }
            None => {
                if let Some(c) = catalog {
                    c.delete_schema(name)
                        .await
                        .map_err(SchemaError::CatalogUnavailable)?;
                }
                self.remove(store, name).await
            }
        }
    }

    /// Held while a topic's bindings are checked and the topic created, so that no schema
    /// it binds is deleted meanwhile.
    pub async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Whether a schema exists.
    pub fn exists(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Checks that every schema a topic binds exists (`field` `schemas.{type}`).
    pub fn check_bindings(&self, bindings: &BTreeMap<String, String>) -> Result<(), InvalidField> {
        let subjects = self.read();
        for (event_type, name) in bindings {
            if !subjects.contains_key(name) {
                return Err(InvalidField {
                    field: format!("schemas.{event_type}"),
                    message: format!(
                        "schema {name:?} does not exist; register it with PUT /v1/schemas/{name}"
                    ),
                });
            }
        }
        Ok(())
    }

    fn plan(
        &self,
        name: &str,
        doc: Value,
        mode: Option<Compatibility>,
        now_ms: u64,
    ) -> Result<Plan, SchemaError> {
        let subjects = self.read();
        let Some(latest) = subjects.get(name).and_then(|v| v.last()) else {
            if subjects.len() >= MAX_SCHEMAS {
                return Err(SchemaError::Limit(format!(
                    "this node keeps at most {MAX_SCHEMAS} schemas"
                )));
            }
            return Ok(Plan::Write {
                version: 1,
                stored: StoredVersion {
                    compatibility: mode.unwrap_or_default(),
                    created_ms: now_ms,
                    schema: doc,
                },
                new: true,
            });
        };
        let info = &latest.info;
        let mode = mode.unwrap_or(info.compatibility);
        if info.schema == doc {
            if mode == info.compatibility {
                return Ok(Plan::Same(info.clone()));
            }
            return Ok(Plan::Write {
                version: info.version,
                stored: StoredVersion {
                    compatibility: mode,
                    created_ms: info.created_ms,
                    schema: doc,
                },
                new: false,
            });
        }
        let version = info.version + 1;
        if version > MAX_VERSIONS {
            return Err(SchemaError::Limit(format!(
                "schema {name:?} has {MAX_VERSIONS} versions, the most it may have"
            )));
        }
        compat::check(&info.schema, &doc, mode).map_err(|violation| SchemaError::Incompatible {
            name: name.to_string(),
            version,
            violation,
        })?;
        Ok(Plan::Write {
            version,
            stored: StoredVersion {
                compatibility: mode,
                created_ms: now_ms,
                schema: doc,
            },
            new: true,
        })
    }

    /// `PUT /v1/schemas/{name}`: a new version unless the latest is this document
    /// already. Answers whether a version was made, and the version in force. With a
    /// cluster catalog the schema (every version) is written there first.
    pub async fn put(
        &self,
        store: &dyn EventStore,
        catalog: Catalog<'_>,
        name: &str,
        doc: Value,
        mode: Option<Compatibility>,
    ) -> Result<(bool, SchemaVersionInfo), SchemaError> {
        check_name("schema", name)?;
        // Compiled first: a document that is no schema changes nothing.
        let _ = compile(&doc)?;
        let _guard = self.writes.lock().await;
        match self.plan(name, doc, mode, crate::ingest::now_ms())? {
            Plan::Same(info) => Ok((false, info)),
            Plan::Write {
                version,
                stored,
                new,
            } => {
                let bytes = serde_json::to_vec(&stored).expect("a schema version serializes");
                let v = Arc::new(version_of(name, version, stored)?);
                if let Some(c) = catalog {
                    let mut versions: Vec<SchemaVersionInfo> = self
                        .read()
                        .get(name)
                        .map(|vs| vs.iter().map(|v| v.info.clone()).collect())
                        .unwrap_or_default();
                    versions.retain(|i| i.version != version);
                    versions.push(v.info.clone());
                    c.put_schema(name, &SchemaCatalogEntry { versions })
                        .await
                        .map_err(SchemaError::CatalogUnavailable)?;
                }
                store.put_meta(&key(name, version), &bytes).await?;
                let mut subjects = self.write();
                let versions = subjects.entry(name.to_string()).or_default();
                if new {
                    versions.push(v.clone());
                } else if let Some(last) = versions.last_mut() {
                    *last = v.clone();
                }
                tracing::info!(schema = %name, version, new, compatibility = v.info.compatibility.as_str(), "schema version stored");
                Ok((new, v.info.clone()))
            }
        }
    }

    /// One version (`None`: the latest).
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<SchemaVersionInfo, SchemaError> {
        self.version(name, version).map(|v| v.info.clone())
    }

    fn version(&self, name: &str, version: Option<u32>) -> Result<Arc<Version>, SchemaError> {
        let subjects = self.read();
        let versions = subjects.get(name).ok_or_else(|| SchemaError::NotFound {
            name: name.to_string(),
        })?;
        let found = match version {
            None => versions.last(),
            Some(n) => versions.iter().find(|v| v.info.version == n),
        };
        found.cloned().ok_or_else(|| SchemaError::VersionNotFound {
            name: name.to_string(),
            version: version.unwrap_or(0),
        })
    }

    /// `GET /v1/schemas`.
    pub fn list(&self) -> SchemaList {
        let subjects = self.read();
        SchemaList {
            schemas: subjects
                .iter()
                .filter_map(|(name, versions)| {
                    let latest = versions.last()?;
                    Some(SchemaSummary {
                        name: name.clone(),
                        latest: latest.info.version,
                        versions: versions.iter().map(|v| v.info.version).collect(),
                        uri: latest.info.uri.clone(),
                        compatibility: latest.info.compatibility,
                    })
                })
                .collect(),
        }
    }

    /// `DELETE /v1/schemas/{name}`: refused while a topic binds it; with a cluster catalog
    /// deleted there first.
    pub async fn delete(
        &self,
        store: &dyn EventStore,
        catalog: Catalog<'_>,
        name: &str,
    ) -> Result<(), SchemaError> {
        let _guard = self.writes.lock().await;
        let versions: Vec<u32> = match self.read().get(name) {
            None => {
                return Err(SchemaError::NotFound {
                    name: name.to_string(),
                })
            }
            Some(v) => v.iter().map(|v| v.info.version).collect(),
        };
        let topics: Vec<String> = store
            .list_topics()
            .await?
            .into_iter()
            .filter(|(_, c)| c.schemas.values().any(|s| s == name))
            .map(|(t, _)| t)
            .collect();
        if !topics.is_empty() {
            return Err(SchemaError::InUse {
                name: name.to_string(),
                topics,
            });
        }
        if let Some(c) = catalog {
            c.delete_schema(name)
                .await
                .map_err(SchemaError::CatalogUnavailable)?;
        }
        self.delete_versions(store, name, versions).await
    }

    async fn delete_versions(
        &self,
        store: &dyn EventStore,
        name: &str,
        versions: Vec<u32>,
    ) -> Result<(), SchemaError> {
        for v in versions {
            store.delete_meta(&key(name, v)).await?;
            let mut subjects = self.write();
            if let Some(list) = subjects.get_mut(name) {
                list.retain(|x| x.info.version != v);
                if list.is_empty() {
                    subjects.remove(name);
                }
            }
        }
        tracing::info!(schema = %name, "schema deleted");
        Ok(())
    }

    /// Applies a schema seen in the cluster catalog (idempotent): its versions become
    /// exactly the entry's (no compatibility check: the writer checked).
    pub async fn apply(
        &self,
        store: &dyn EventStore,
        name: &str,
        entry: SchemaCatalogEntry,
    ) -> Result<(), SchemaError> {
        check_name("schema", name)?;
        let _guard = self.writes.lock().await;
        let known: BTreeMap<u32, SchemaVersionInfo> = self
            .read()
            .get(name)
            .map(|vs| {
                vs.iter()
                    .map(|v| (v.info.version, v.info.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut fresh = Vec::with_capacity(entry.versions.len());
        for info in entry.versions {
            if info.version == 0 || info.version > MAX_VERSIONS {
                return Err(SchemaError::Limit(format!(
                    "catalog schema {name:?} has version {}",
                    info.version
                )));
            }
            let stored = StoredVersion {
                compatibility: info.compatibility,
                created_ms: info.created_ms,
                schema: info.schema.clone(),
            };
            if known.get(&info.version) != Some(&info) {
                let bytes = serde_json::to_vec(&stored).expect("a schema version serializes");
                store.put_meta(&key(name, info.version), &bytes).await?;
            }
            fresh.push((info.version, stored));
        }
        fresh.sort_by_key(|(v, _)| *v);
        let mut compiled = Vec::with_capacity(fresh.len());
        for (v, stored) in fresh {
            compiled.push(Arc::new(version_of(name, v, stored)?));
        }
        let gone: Vec<u32> = known
            .keys()
            .filter(|v| !compiled.iter().any(|c| c.info.version == **v))
            .copied()
            .collect();
        for v in gone {
            store.delete_meta(&key(name, v)).await?;
        }
        if compiled.is_empty() {
            self.write().remove(name);
        } else {
            self.write().insert(name.to_string(), compiled);
        }
        tracing::info!(schema = %name, "schema applied from the catalog");
        Ok(())
    }

    /// Removes a schema deleted in the cluster catalog (no binding check: the writer
    /// checked).
    pub async fn remove(&self, store: &dyn EventStore, name: &str) -> Result<(), SchemaError> {
        let _guard = self.writes.lock().await;
        let versions: Vec<u32> = match self.read().get(name) {
            None => return Ok(()),
            Some(v) => v.iter().map(|v| v.info.version).collect(),
        };
        self.delete_versions(store, name, versions).await
    }

    /// Checks published events against the schemas `bindings` (event type -> schema name)
    /// name, and sets `dataschema` of each checked event that has none to the version's
    /// URI. An event naming a `dataschema` is checked against that version when it is a
    /// version of the bound schema, and refused otherwise. `batch`: fields carry the index
    /// (`[3]/data/amount`). Nothing is changed when an event is refused.
    pub fn check_events(
        &self,
        bindings: &BTreeMap<String, String>,
        events: &mut [Event],
        batch: bool,
    ) -> Result<(), Refusal> {
        let mut stamps: Vec<(usize, String)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let Some(name) = bindings.get(event.ty()) else {
                continue;
            };
            let at = |f: &str| {
                if batch {
                    format!("[{i}]{}{f}", if f.starts_with('/') { "" } else { "." })
                } else {
                    f.to_string()
                }
            };
            let refuse = |code: &'static str, field: String, message: String| Refusal {
                code,
                message: cut(format!("{field}: {message}")),
                field,
            };
            let version = match event.dataschema() {
                None => self.version(name, None),
                Some(uri) => match meshd_core::api::parse_schema_uri(uri.as_str()) {
                    Some((n, v)) if n == name => self.version(name, Some(v)),
                    _ => {
                        return Err(refuse(
                            "dataschema_mismatch",
                            at("dataschema"),
                            format!(
                                "events of type {:?} on this topic follow schema {name:?}; dataschema {uri} is not one of its versions (leave dataschema out, or name meshd:schemas/{name}/vN)",
                                event.ty()
                            ),
                        ))
                    }
                },
            };
            let version = version.map_err(|e| match e {
                SchemaError::VersionNotFound { .. } => {
                    refuse("dataschema_mismatch", at("dataschema"), e.to_string())
                }
                // Bound but absent here (a topic that came through the mesh before its
                // schemas were registered in this cluster): refused, never let through.
                _ => refuse(
                    "schema_not_found",
                    at("type"),
                    format!("the topic binds type {:?} to schema {name:?}, which this node does not have; register it (PUT /v1/schemas/{name})", event.ty()),
                ),
            })?;
            let parsed;
            let data: &Value = match event.data() {
                None => &Value::Null,
                Some(Data::Json(v)) => v,
                Some(Data::String(s)) => {
                    parsed = serde_json::from_str::<Value>(s);
                    parsed.as_ref().map_err(|e| {
                        refuse("data_not_json", at("data"), format!("events of type {:?} are checked against schema {name:?} and their data must be JSON: {e}", event.ty()))
                    })?
                }
                Some(Data::Binary(b)) => {
                    parsed = serde_json::from_slice::<Value>(b);
                    parsed.as_ref().map_err(|e| {
                        refuse("data_not_json", at("data"), format!("events of type {:?} are checked against schema {name:?} and their data must be JSON: {e}", event.ty()))
                    })?
                }
            };
            if !version.validator.is_valid(data) {
                let (pointer, text, rule) = match version.validator.iter_errors(data).next() {
                    Some(e) => (
                        e.instance_path().to_string(),
                        e.to_string(),
                        e.kind().keyword().to_string(),
                    ),
                    None => (String::new(), "invalid".to_string(), "schema".to_string()),
                };
                return Err(refuse(
                    "schema_violation",
                    at(&format!("/data{pointer}")),
                    format!(
                        "{text} (schema {name} v{}, rule {rule})",
                        version.info.version
                    ),
                ));
            }
            if event.dataschema().is_none() {
                stamps.push((i, version.info.uri.clone()));
            }
        }
        for (i, uri) in stamps {
            // A schema URI always parses (meshd:schemas/{checked name}/v{n}).
            if let Ok(url) = url::Url::parse(&uri) {
                events[i].set_dataschema(Some(url));
            }
        }
        Ok(())
    }
}

/// An event refused by its schema (answered 400 with `code`, `field` and `message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// `schema_violation`, `data_not_json`, `dataschema_mismatch` or `schema_not_found`.
    pub code: &'static str,
    /// JSON pointer of the failing value (`/data/amount`; `[3]/data/amount` in a batch),
    /// or the attribute (`dataschema`, `data`).
    pub field: String,
    /// `{field}: {what failed} (schema {name} v{n}, rule {keyword})`.
    pub message: String,
}

#[cfg(test)]
mod tests;
