//! The proxies' API tokens of a region, stored in the registry so that every proxy of the
//! cluster checks against the same set.
//!
//! Owns the types ([`TokenEntry`], [`TokenEvent`], [`TokenWatch`]); the registry stores
//! values as opaque JSON (the proxy's token record: id, the SHA-256 of the token, scopes;
//! never a secret) and gives them no meaning. Unlike the catalog and membership watches,
//! the token watch hands its consumer a whole [`TokenEvent::Snapshot`] at start and after
//! every break (registry unreachable, history compacted): the consumer replaces its set
//! with it, so a revocation that happened while the watch was broken is never missed.
//! Between snapshots it sends every change in order. [`TokenEvent::Interrupted`] tells the
//! consumer the watch broke; a snapshot follows once the registry answers again.

use tokio::sync::mpsc;

use super::RegistryError;

/// One stored token record.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEntry {
    /// The token's public id.
    pub id: String,
    /// Its record (JSON, as the proxy wrote it).
    pub value: serde_json::Value,
}

/// A change of the token set, as [`Registry::watch_tokens`](super::Registry::watch_tokens)
/// reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// The complete token set now: replaces whatever the consumer held. Sent first and
    /// after every interruption.
    Snapshot(Vec<TokenEntry>),
    /// A token was created (or its record replaced).
    Put(TokenEntry),
    /// A token was revoked.
    Delete(String),
    /// The watch broke (registry unreachable, history compacted away); a `Snapshot`
    /// follows as soon as the registry answers again.
    Interrupted(RegistryError),
}

/// A stream of token changes. Dropping it stops the watch.
#[derive(Debug)]
pub struct TokenWatch {
    rx: mpsc::Receiver<TokenEvent>,
}

impl TokenWatch {
    pub(crate) fn new(rx: mpsc::Receiver<TokenEvent>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the watch ended.
    pub async fn recv(&mut self) -> Option<TokenEvent> {
        self.rx.recv().await
    }
}

/// The most tokens one [`Registry::tokens_import_once`](super::Registry::tokens_import_once)
/// writes: it is one etcd transaction, and etcd takes at most 128 operations in one
/// (`--max-txn-ops`), the import marker being one of them.
pub const MAX_IMPORT: usize = 99;

/// Checks the size rule of an import.
pub(crate) fn check_import(entries: &[TokenEntry]) -> Result<(), RegistryError> {
    if entries.len() > MAX_IMPORT {
        return Err(RegistryError::InvalidConfig(format!(
            "{} tokens to import, at most {MAX_IMPORT} go in one transaction: import a \
             smaller file and create the rest with POST /v1/tokens",
            entries.len()
        )));
    }
    Ok(())
}
