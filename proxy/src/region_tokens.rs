//! Tokens of a region: every proxy of a cluster run with an etcd registry checks tokens
//! against the same set, held in the registry (`/meshd/{cluster}/tokens/{id}`, the same
//! records as the token file: id, SHA-256 of the token, scopes; never a secret).
//!
//! Two parts:
//! - [`TokenView`], a state machine without I/O: registry token events in (a whole
//!   snapshot at start and after every break, then single changes), the token set and
//!   [`Notice`]s for the log out. A snapshot *replaces* the set, so whatever was revoked
//!   while the watch was broken (registry unreachable, history compacted) is gone once the
//!   registry answers again.
//! - [`RegistryTokens`], its tokio shell: imports a token file once per cluster, follows
//!   the watch, publishes each new set to the request path, and writes creations and
//!   revocations to the registry (a create never replaces an existing id). While the
//!   registry is unreachable the last set seen keeps authenticating and writes fail (the
//!   server answers 503).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshd_scheduler::registry::{Registry, RegistryError, TokenEntry, TokenEvent};
use tokio::sync::watch;

use crate::auth::{self, AuthError, Authn, Scope, TokenRecord, TokenStore};
use crate::ProxyError;

/// The tokens a proxy checks against, by id.
pub type TokenSet = Arc<BTreeMap<String, Arc<TokenRecord>>>;

/// Where the link to the registry stands, as the view knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Link {
    /// No snapshot yet.
    #[default]
    Starting,
    /// Following the registry's changes.
    Live,
    /// The watch broke; the last set is kept until a snapshot comes.
    Interrupted,
}

/// What the shell logs about the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The first snapshot: the proxy authenticates against `tokens` tokens.
    Synced {
        /// Tokens in the set.
        tokens: usize,
    },
    /// The watch broke: the last set is kept (logged once per outage, at WARN).
    Lost {
        /// Tokens kept.
        tokens: usize,
        /// Why it broke.
        reason: String,
    },
    /// A snapshot after an outage: the set was read again.
    Restored {
        /// Tokens in the set.
        tokens: usize,
        /// Tokens that were dropped by the snapshot (revoked during the outage).
        revoked: usize,
    },
    /// A record that is not a token record (ignored, so that token is refused).
    Undecodable {
        /// The key's id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The token set built from a registry's token events; no I/O.
#[derive(Debug, Default)]
pub struct TokenView {
    set: TokenSet,
    link: Link,
}

fn decode(entry: &TokenEntry) -> Result<TokenRecord, String> {
    let record: TokenRecord =
        serde_json::from_value(entry.value.clone()).map_err(|e| e.to_string())?;
    if record.id != entry.id {
        return Err(format!(
            "the record under id {} names id {}",
            entry.id, record.id
        ));
    }
    Ok(record)
}

impl TokenView {
    /// An empty view that has seen nothing yet.
    pub fn new() -> TokenView {
        TokenView::default()
    }

    /// The current set.
    pub fn set(&self) -> TokenSet {
        self.set.clone()
    }

    /// Whether the view follows the registry now (a snapshot came and no break since).
    pub fn is_live(&self) -> bool {
        self.link == Link::Live
    }

    /// Applies one event; answers what to log.
    pub fn apply(&mut self, event: TokenEvent) -> Vec<Notice> {
        let mut notices = Vec::new();
        match event {
            TokenEvent::Snapshot(entries) => {
                let mut fresh = BTreeMap::new();
                for e in &entries {
                    match decode(e) {
                        Ok(r) => {
                            fresh.insert(e.id.clone(), Arc::new(r));
                        }
                        Err(reason) => notices.push(Notice::Undecodable {
                            id: e.id.clone(),
                            reason,
                        }),
                    }
                }
                let revoked = self
                    .set
                    .keys()
                    .filter(|id| !fresh.contains_key(*id))
                    .count();
                let tokens = fresh.len();
                notices.push(match self.link {
                    Link::Starting => Notice::Synced { tokens },
                    Link::Live | Link::Interrupted => Notice::Restored { tokens, revoked },
                });
                self.set = Arc::new(fresh);
                self.link = Link::Live;
            }
            TokenEvent::Put(entry) => {
                let mut next = (*self.set).clone();
                match decode(&entry) {
                    Ok(r) => {
                        next.insert(entry.id, Arc::new(r));
                    }
                    Err(reason) => {
                        // Fail closed: a record replaced by one we cannot read grants nothing.
                        next.remove(&entry.id);
                        notices.push(Notice::Undecodable {
                            id: entry.id,
                            reason,
                        });
                    }
                }
                self.set = Arc::new(next);
            }
            TokenEvent::Delete(id) => {
                if self.set.contains_key(&id) {
                    let mut next = (*self.set).clone();
                    next.remove(&id);
                    self.set = Arc::new(next);
                }
            }
            TokenEvent::Interrupted(e) => {
                if self.link == Link::Live {
                    notices.push(Notice::Lost {
                        tokens: self.set.len(),
                        reason: e.to_string(),
                    });
                    self.link = Link::Interrupted;
                }
            }
        }
        notices
    }
}

/// How long a create or revoke waits for this proxy's own view to show it (the registry
/// has it already; this makes the answer mean "this proxy applies it now").
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);

/// Settings of [`RegistryTokens::start`].
#[derive(Debug, Clone)]
pub struct RegionTokensConfig {
    /// This proxy's id (named in the import marker).
    pub proxy_id: String,
    /// A token file to import once per cluster (see [`RegistryTokens::start`]).
    pub import: Option<PathBuf>,
    /// How long the start waits for the first token set from the registry.
    pub first_sync_timeout: Duration,
}

/// What became of the token file given at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// No file given.
    NoFile,
    /// This proxy imported the file's `tokens` tokens.
    Imported {
        /// How many.
        tokens: usize,
    },
    /// The cluster's tokens were imported before (by any proxy, from any file): the file
    /// was not used. `not_in_registry` of its ids are not in the registry's set (revoked
    /// since, or added to the file after the import) and are refused.
    AlreadyImported {
        /// The marker of the earlier import (JSON text).
        marker: String,
        /// Ids of the file the registry does not hold.
        not_in_registry: usize,
    },
}

/// The region's tokens as one proxy follows them; cheap to clone.
#[derive(Clone)]
pub struct RegistryTokens {
    registry: Arc<dyn Registry>,
    set: watch::Receiver<TokenSet>,
    live: Arc<AtomicBool>,
    import: ImportOutcome,
}

impl std::fmt::Debug for RegistryTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryTokens")
            .field("cluster", &self.registry.cluster())
            .field("tokens", &self.set.borrow().len())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn corrupt(id: &str, e: &serde_json::Error) -> AuthError {
    AuthError::Registry(RegistryError::Corrupt {
        key: id.to_string(),
        reason: e.to_string(),
    })
}

fn log(notice: Notice, cluster: &str) {
    match notice {
        Notice::Synced { tokens } => {
            tracing::info!(cluster, tokens, "tokens: following the registry");
        }
        Notice::Lost { tokens, reason } => tracing::warn!(
            cluster,
            tokens,
            %reason,
            "tokens: the registry is unreachable; authenticating with the last {tokens} tokens seen, refusing token creation and revocation (503) until it is back"
        ),
        Notice::Restored { tokens, revoked } => tracing::info!(
            cluster,
            tokens,
            revoked,
            "tokens: the registry answers again; the token set was read again"
        ),
        Notice::Undecodable { id, reason } => {
            tracing::warn!(cluster, token = %id, %reason, "tokens: ignoring an unreadable token record (that token is refused)");
        }
    }
}

/// Reads a token file off the async workers.
async fn read_file(path: &Path) -> Result<auth::TokenFile, AuthError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || auth::read_file(&p))
        .await
        .map_err(|e| AuthError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

impl RegistryTokens {
    /// Imports the token file if one is given and the cluster never imported one, then
    /// follows the registry's tokens; answers once the first set is in.
    ///
    /// The import rule: the first proxy of a cluster started with a token file writes
    /// its records and a marker in one transaction; every later start (any proxy, any
    /// file) finds the marker and leaves the registry alone, so a token revoked through
    /// the API never comes back from a file. Racing proxies import at most once.
    pub async fn start(
        registry: Arc<dyn Registry>,
        cfg: RegionTokensConfig,
    ) -> Result<RegistryTokens, ProxyError> {
        let cluster = registry.cluster().to_string();
        let mut file_ids = Vec::new();
        let mut import = ImportOutcome::NoFile;
        if let Some(path) = &cfg.import {
            let file = read_file(path).await?;
            file_ids = file.tokens.iter().map(|t| t.id.clone()).collect();
            let entries = file
                .tokens
                .iter()
                .map(|t| {
                    serde_json::to_value(t)
                        .map(|value| TokenEntry {
                            id: t.id.clone(),
                            value,
                        })
                        .map_err(|e| corrupt(&t.id, &e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let marker = serde_json::json!({
                "proxy": cfg.proxy_id,
                "file": path.display().to_string(),
                "tokens": entries.len(),
                "at": unix_now(),
            });
            import = match registry.tokens_import_once(&marker, &entries).await? {
                None => {
                    tracing::info!(cluster, file = %path.display(), tokens = entries.len(), "tokens: imported the token file into the registry (once per cluster)");
                    ImportOutcome::Imported {
                        tokens: entries.len(),
                    }
                }
                Some(m) => ImportOutcome::AlreadyImported {
                    marker: m.to_string(),
                    not_in_registry: 0,
                },
            };
        }
        let mut events = registry.watch_tokens().await?;
        let mut view = TokenView::new();
        let first = tokio::time::timeout(cfg.first_sync_timeout, async {
            loop {
                match events.recv().await {
                    None => return false,
                    Some(e) => {
                        for n in view.apply(e) {
                            log(n, &cluster);
                        }
                        if view.is_live() {
                            return true;
                        }
                    }
                }
            }
        })
        .await;
        if first != Ok(true) {
            // Name the cause when there is one to name.
            let cause = match registry.token_list().await {
                Err(e) => format!(": {e}"),
                Ok(_) => String::new(),
            };
            return Err(ProxyError::Registry(RegistryError::Unavailable(format!(
                "no token set from the registry within {:?}{cause}",
                cfg.first_sync_timeout
            ))));
        }
        let set = view.set();
        if let ImportOutcome::AlreadyImported {
            marker,
            not_in_registry,
        } = &mut import
        {
            *not_in_registry = file_ids.iter().filter(|id| !set.contains_key(*id)).count();
            tracing::info!(
                cluster,
                file = %cfg.import.as_deref().unwrap_or(Path::new("")).display(),
                earlier_import = %marker,
                not_in_registry = *not_in_registry,
                "tokens: the token file is not used, the cluster's tokens were imported before; tokens of the file the registry does not hold are refused (manage tokens with /v1/tokens or `meshd proxy token --registry`)"
            );
        }
        if set.is_empty() {
            tracing::warn!(cluster, "tokens: the cluster has no tokens, so every request is refused: create one with `meshd proxy token create --registry etcd://HOST:PORT --cluster {cluster} --scopes cluster-admin,admin:*`");
        }
        let (tx, rx) = watch::channel(set);
        let live = Arc::new(AtomicBool::new(true));
        let following = live.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    e = events.recv() => e,
                };
                let Some(event) = event else { return };
                let notices = view.apply(event);
                following.store(view.is_live(), Ordering::Relaxed);
                tx.send_if_modified(|s| {
                    let next = view.set();
                    let changed = !Arc::ptr_eq(s, &next);
                    *s = next;
                    changed
                });
                for n in notices {
                    log(n, &cluster);
                }
            }
        });
        Ok(RegistryTokens {
            registry,
            set: rx,
            live,
            import,
        })
    }

    /// What became of the token file given at start.
    pub fn import_outcome(&self) -> &ImportOutcome {
        &self.import
    }

    /// Whether the proxy follows the registry now (false while cut off from it).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// How many tokens the last set seen holds.
    pub fn count(&self) -> usize {
        self.set.borrow().len()
    }

    /// Checks a presented token against the last set seen.
    pub fn authenticate(&self, token: Option<&str>) -> Authn {
        auth::authenticate_in(&self.set.borrow(), token)
    }

    /// Every record of the last set seen, by id.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.set.borrow().values().map(|r| (**r).clone()).collect()
    }

    /// Waits (bounded) until this proxy's set satisfies `f`.
    async fn visible(&self, f: impl Fn(&TokenSet) -> bool) {
        let mut rx = self.set.clone();
        if tokio::time::timeout(VISIBLE_WITHIN, rx.wait_for(|s| f(s)))
            .await
            .is_err()
        {
            tracing::debug!("tokens: a write is not in this proxy's set yet");
        }
    }

    /// Creates a token in the registry (never replacing an existing id); answers the
    /// token string (shown once) and its record once this proxy accepts it.
    pub async fn create(
        &self,
        scopes: Vec<Scope>,
        description: &str,
    ) -> Result<(String, TokenRecord), AuthError> {
        // Ids are 64 random bits: a taken id means a collision, and a fresh one is drawn.
        for _ in 0..3 {
            let (token, record) = auth::new_token(scopes.clone(), description)?;
            let value = serde_json::to_value(&record).map_err(|e| corrupt(&record.id, &e))?;
            if self.registry.token_create(&record.id, &value).await? {
                let id = record.id.clone();
                self.visible(|s| s.contains_key(&id)).await;
                return Ok((token, record));
            }
        }
        Err(AuthError::Registry(RegistryError::Unavailable(
            "three random token ids in a row were taken".into(),
        )))
    }

    /// Revokes a token in the registry; answers once this proxy refuses it.
    pub async fn revoke(&self, id: &str) -> Result<(), AuthError> {
        if !self.registry.token_delete(id).await? {
            return Err(AuthError::NotFound { id: id.to_string() });
        }
        self.visible(|s| !s.contains_key(id)).await;
        Ok(())
    }
}

/// Where a proxy's tokens live.
#[derive(Debug)]
pub enum Tokens {
    /// A local JSON file (one proxy, or proxies sharing the file).
    File(TokenStore),
    /// The cluster's registry (every proxy of the region).
    Registry(RegistryTokens),
}

impl Tokens {
    /// Checks a presented token string.
    pub fn authenticate(&self, token: Option<&str>) -> Authn {
        match self {
            Tokens::File(s) => s.authenticate(token),
            Tokens::Registry(r) => r.authenticate(token),
        }
    }

    /// Every record, by id.
    pub fn list(&self) -> Vec<TokenRecord> {
        match self {
            Tokens::File(s) => s.list(),
            Tokens::Registry(r) => r.list(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, hash: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "hash": hash, "scopes": ["publish:orders.*"]})
    }

    fn entry(id: &str, hash: &str) -> TokenEntry {
        TokenEntry {
            id: id.into(),
            value: record(id, hash),
        }
    }

    fn ids(v: &TokenView) -> Vec<String> {
        v.set().keys().cloned().collect()
    }

    fn down() -> TokenEvent {
        TokenEvent::Interrupted(RegistryError::Unavailable("connection refused".into()))
    }

    #[test]
    fn snapshot_then_changes() {
        let mut v = TokenView::new();
        assert!(!v.is_live());
        assert_eq!(v.apply(TokenEvent::Put(entry("a", "h"))), vec![]);
        assert_eq!(
            v.apply(TokenEvent::Snapshot(vec![entry("b", "h"), entry("c", "h")])),
            vec![Notice::Synced { tokens: 2 }]
        );
        assert!(v.is_live());
        assert_eq!(ids(&v), ["b", "c"], "a snapshot replaces the set");
        v.apply(TokenEvent::Put(entry("d", "h")));
        v.apply(TokenEvent::Delete("b".into()));
        v.apply(TokenEvent::Delete("unknown".into()));
        assert_eq!(ids(&v), ["c", "d"]);
    }

    /// A revocation made while the watch was broken is applied by the snapshot that
    /// follows; the outage is reported once, however many breaks it has.
    #[test]
    fn no_revocation_is_missed_across_an_outage() {
        let mut v = TokenView::new();
        v.apply(TokenEvent::Snapshot(vec![entry("a", "h"), entry("b", "h")]));
        assert_eq!(
            v.apply(down()),
            vec![Notice::Lost {
                tokens: 2,
                reason: "registry unavailable: connection refused".into()
            }]
        );
        assert!(!v.is_live());
        assert_eq!(v.apply(down()), vec![], "logged once per outage");
        assert_eq!(ids(&v), ["a", "b"], "the last set keeps authenticating");
        // Meanwhile `a` was revoked and `c` created elsewhere.
        assert_eq!(
            v.apply(TokenEvent::Snapshot(vec![entry("b", "h"), entry("c", "h")])),
            vec![Notice::Restored {
                tokens: 2,
                revoked: 1
            }]
        );
        assert_eq!(ids(&v), ["b", "c"]);
        assert!(v.is_live());
        // A later outage is reported again.
        assert_eq!(v.apply(down()).len(), 1);
    }

    #[test]
    fn unreadable_records_grant_nothing() {
        let mut v = TokenView::new();
        let notices = v.apply(TokenEvent::Snapshot(vec![
            entry("a", "h"),
            TokenEntry {
                id: "b".into(),
                value: serde_json::json!({"id": "b"}),
            },
            TokenEntry {
                id: "c".into(),
                value: record("other", "h"),
            },
        ]));
        assert_eq!(notices.len(), 3, "{notices:?}");
        assert!(matches!(&notices[0], Notice::Undecodable { id, .. } if id == "b"));
        assert!(matches!(&notices[1], Notice::Undecodable { id, .. } if id == "c"));
        assert_eq!(ids(&v), ["a"]);
        // A record replaced by an unreadable one is dropped, not kept.
        let n = v.apply(TokenEvent::Put(TokenEntry {
            id: "a".into(),
            value: serde_json::json!("garbage"),
        }));
        assert_eq!(n.len(), 1);
        assert!(ids(&v).is_empty());
    }

    #[test]
    fn the_view_authenticates_like_the_file() {
        let (token, rec) = auth::new_token(vec![Scope::parse("publish:x").unwrap()], "").unwrap();
        let mut v = TokenView::new();
        v.apply(TokenEvent::Snapshot(vec![TokenEntry {
            id: rec.id.clone(),
            value: serde_json::to_value(&rec).unwrap(),
        }]));
        assert!(matches!(
            auth::authenticate_in(&v.set(), Some(&token)),
            Authn::Valid(_)
        ));
        v.apply(TokenEvent::Delete(rec.id.clone()));
        assert_eq!(
            auth::authenticate_in(&v.set(), Some(&token)),
            Authn::Invalid
        );
    }

    /// The shell over the in-process registry: import once under racing proxies,
    /// create through one proxy and use it through the other, revoke through the other,
    /// and a second import does not bring a revoked token back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_proxies_share_one_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.json");
        let store = TokenStore::open(&file).unwrap();
        let (boot, boot_rec) = store
            .create(vec![Scope::parse("cluster-admin").unwrap()], "boot")
            .unwrap();
        let reg = meshd_scheduler::registry::InProcessRegistry::new("c");
        let cfg = |id: &str| RegionTokensConfig {
            proxy_id: id.into(),
            import: Some(file.clone()),
            first_sync_timeout: Duration::from_secs(5),
        };
        let (a, b) = tokio::join!(
            RegistryTokens::start(Arc::new(reg.clone()), cfg("a")),
            RegistryTokens::start(Arc::new(reg.clone()), cfg("b")),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let imported = [a.import_outcome(), b.import_outcome()]
            .iter()
            .filter(|o| matches!(o, ImportOutcome::Imported { tokens: 1 }))
            .count();
        assert_eq!(imported, 1, "exactly one proxy imports");
        assert!(matches!(b.authenticate(Some(&boot)), Authn::Valid(_)));
        let (t, rec) = a
            .create(vec![Scope::parse("publish:x").unwrap()], "shop")
            .await
            .unwrap();
        assert!(matches!(a.authenticate(Some(&t)), Authn::Valid(_)));
        let mut seen = false;
        for _ in 0..100 {
            if matches!(b.authenticate(Some(&t)), Authn::Valid(_)) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "b never saw the token a created");
        b.revoke(&boot_rec.id).await.unwrap();
        assert_eq!(b.authenticate(Some(&boot)), Authn::Invalid);
        assert!(matches!(
            b.revoke(&boot_rec.id).await,
            Err(AuthError::NotFound { .. })
        ));
        // A later start with the same file: nothing imported, the revoked token stays out.
        let c = RegistryTokens::start(Arc::new(reg.clone()), cfg("c"))
            .await
            .unwrap();
        assert!(matches!(
            c.import_outcome(),
            ImportOutcome::AlreadyImported {
                not_in_registry: 1,
                ..
            }
        ));
        assert_eq!(c.authenticate(Some(&boot)), Authn::Invalid);
        let listed: Vec<String> = c.list().into_iter().map(|r| r.id).collect();
        assert_eq!(listed, vec![rec.id]);
    }
}
