//! Tokens: creation, the hashed token file, scope checks.
//!
//! Owns the token format (`mshd_<id>_<secret>`: a 16-hex-digit id and a 64-hex-digit secret
//! of 32 random bytes), the stored form (the SHA-256 of the whole token, hex, never the
//! secret), the JSON token file the proxy loads and reloads when it changes, and the
//! authorization rule: a token grants an action on a resource when one of its scopes has
//! that action (or `admin`) and a pattern matching the resource (`exact`, `prefix.*`, `*`).
//! Hashes are compared in constant time (`subtle`).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// What a scope allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Publish events to matching topics.
    Publish,
    /// Create/read/delete subscriptions on matching topics, pull and ack them.
    Subscribe,
    /// Everything on matching topics and their subscriptions (create/delete topics,
    /// list topics and subscriptions, and what publish and subscribe allow).
    Admin,
    /// Cluster-wide operations that are no topic's: drain and undrain, token management,
    /// anything under `/v1/admin` and `/v1/tokens`. Takes no pattern (`cluster-admin`) and
    /// grants nothing on topics; `admin:*` does not grant it.
    ClusterAdmin,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "publish" => Some(Action::Publish),
            "subscribe" => Some(Action::Subscribe),
            "admin" => Some(Action::Admin),
            "cluster-admin" => Some(Action::ClusterAdmin),
            _ => None,
        }
    }

    /// `publish`, `subscribe`, `admin` or `cluster-admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Admin => "admin",
            Action::ClusterAdmin => "cluster-admin",
        }
    }
}

/// One grant: an action on topics matching a pattern. Written `action:pattern`
/// (`publish:orders.*`); a bare action means pattern `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope {
    /// The action.
    pub action: Action,
    /// `*`, `prefix.*` (any name starting with `prefix.`) or an exact name.
    pub pattern: String,
}

impl Scope {
    /// Parses `action:pattern` or `action`.
    pub fn parse(s: &str) -> Result<Scope, AuthError> {
        let (a, p) = match s.split_once(':') {
            Some((a, p)) => (a, p),
            None => (s, "*"),
        };
        let action = Action::parse(a.trim()).ok_or_else(|| AuthError::InvalidScope {
            scope: s.to_string(),
            reason: "the action must be publish, subscribe, admin or cluster-admin".into(),
        })?;
        let pattern = p.trim().to_string();
        if action == Action::ClusterAdmin && pattern != "*" {
            return Err(AuthError::InvalidScope {
                scope: s.to_string(),
                reason: "cluster-admin is cluster-wide and takes no topic pattern".into(),
            });
        }
        let stem = pattern.strip_suffix('*').unwrap_or(&pattern);
        if pattern.is_empty()
            || stem.contains('*')
            || (pattern.ends_with('*') && !(stem.is_empty() || stem.ends_with('.')))
        {
            return Err(AuthError::InvalidScope {
                scope: s.to_string(),
                reason: "the pattern must be `*`, `prefix.*` or an exact topic name".into(),
            });
        }
        Ok(Scope { action, pattern })
    }

    /// Whether the pattern matches `resource`.
    pub fn matches(&self, resource: &str) -> bool {
        pattern_matches(&self.pattern, resource)
    }
}

/// `*` matches everything, `p.*` every name starting with `p.`, anything else itself.
pub fn pattern_matches(pattern: &str, resource: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => resource.starts_with(prefix) && resource.len() > prefix.len(),
        None => pattern == resource,
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.action == Action::ClusterAdmin {
            return f.write_str(self.action.as_str());
        }
        write!(f, "{}:{}", self.action.as_str(), self.pattern)
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A stored token: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (the middle part of the token).
    pub id: String,
    /// Hex SHA-256 of the whole token string.
    pub hash: String,
    /// What it grants.
    pub scopes: Vec<Scope>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
}

/// The token file: `{"tokens": [TokenRecord...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFile {
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

/// Errors of token handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A scope string could not be parsed.
    #[error("invalid scope `{scope}`: {reason}")]
    InvalidScope {
        /// The scope as given.
        scope: String,
        /// Why.
        reason: String,
    },
    /// A token needs at least one scope.
    #[error("a token needs at least one scope")]
    NoScopes,
    /// The token file could not be read or written.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file is not valid JSON of the expected shape.
    #[error("token file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No token with this id.
    #[error("no token with id {id}")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The registry holding the region's tokens failed (unreachable, timed out).
    #[error("the token registry: {0}")]
    Registry(#[from] meshd_scheduler::registry::RegistryError),
}

/// Outcome of authenticating a presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// No token presented.
    Missing,
    /// A token was presented but is not valid.
    Invalid,
    /// A valid token.
    Valid(Arc<TokenRecord>),
}

/// The token in an `Authorization` header value (`Bearer TOKEN`, or the bare token).
pub fn bearer(header: &str) -> &str {
    header.strip_prefix("Bearer ").unwrap_or(header).trim()
}

/// The id part of a token in the `mshd_<id>_<secret>` format (whether the token is valid
/// or not): what logs may name, never the secret. `None` when it is not in that format.
pub fn claimed_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix("mshd_")?.split_once('_')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (id.len() == 16 && hex(id) && hex(secret)).then_some(id)
}

/// Hex SHA-256 of a token string.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Makes a new token; returns the token string (shown once) and its record.
pub fn new_token(
    scopes: Vec<Scope>,
    description: &str,
) -> Result<(String, TokenRecord), AuthError> {
    if scopes.is_empty() {
        return Err(AuthError::NoScopes);
    }
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex(&id);
    let token = format!("mshd_{id}_{}", hex(&secret));
    let created_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let record = TokenRecord {
        id,
        hash: hash_token(&token),
        scopes,
        description: description.to_string(),
        created_at,
    };
    Ok((token, record))
}

/// Reads a token file; a missing file is an empty one.
pub fn read_file(path: &Path) -> Result<TokenFile, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(TokenFile::default()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuthError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a token file atomically (temp file + rename), mode 0600 on Unix.
pub fn write_file(path: &Path, file: &TokenFile) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(file).map_err(|e| AuthError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Unique per process and write: two writers never share a temp file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        // 0600 from the start: the hashes are never readable by others, not even briefly.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // A stale temporary file keeps its old mode: force 0600 before writing.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&json)?;
        // On disk before it replaces the old file: a crash leaves the old or the new set.
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The tokens a proxy checks against, backed by a JSON file it reloads on change.
///
/// Writes ([`TokenStore::create`], [`TokenStore::revoke`]) are serialized: one lock is held
/// across read, change, atomic write (temp file, fsync, rename) and reload, so concurrent
/// writers through one store never lose each other's change. They do blocking file I/O:
/// call them off the async workers (`spawn_blocking`).
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    inner: RwLock<Loaded>,
    writer: Mutex<()>,
}

#[derive(Debug, Default)]
struct Loaded {
    by_id: BTreeMap<String, Arc<TokenRecord>>,
    modified: Option<SystemTime>,
}

impl TokenStore {
    /// Loads the file (missing: no tokens yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<TokenStore, AuthError> {
        let store = TokenStore {
            path: path.into(),
            inner: RwLock::new(Loaded::default()),
            writer: Mutex::new(()),
        };
        store.reload()?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads the file if its modification time changed; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, AuthError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let current = self.inner.read().map(|l| l.modified).unwrap_or(None);
        if modified == current {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Reloads the file.
    pub fn reload(&self) -> Result<(), AuthError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let file = read_file(&self.path)?;
        let by_id = file
            .tokens
            .into_iter()
            .map(|t| (t.id.clone(), Arc::new(t)))
            .collect();
        if let Ok(mut l) = self.inner.write() {
            *l = Loaded { by_id, modified };
        }
        Ok(())
    }

    /// Checks a presented token string.
    pub fn authenticate(&self, token: Option<&str>) -> Authn {
        match self.inner.read() {
            Ok(l) => authenticate_in(&l.by_id, token),
            Err(_) => authenticate_in(&BTreeMap::new(), token),
        }
    }

    /// All records, by id.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.inner
            .read()
            .map(|l| l.by_id.values().map(|r| (**r).clone()).collect())
            .unwrap_or_default()
    }

    /// Creates a token, writes the file, returns the token string and its record.
    pub fn create(
        &self,
        scopes: Vec<Scope>,
        description: &str,
    ) -> Result<(String, TokenRecord), AuthError> {
        let (token, record) = new_token(scopes, description)?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = read_file(&self.path)?;
        file.tokens.push(record.clone());
        write_file(&self.path, &file)?;
        self.reload()?;
        Ok((token, record))
    }

    /// Revokes a token by id, writes the file.
    pub fn revoke(&self, id: &str) -> Result<(), AuthError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = read_file(&self.path)?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.id != id);
        if file.tokens.len() == before {
            return Err(AuthError::NotFound { id: id.to_string() });
        }
        write_file(&self.path, &file)?;
        self.reload()
    }
}

/// Checks a presented token string against records by id: the claimed id picks the
/// record, the token's hash must equal the stored one (compared in constant time).
pub fn authenticate_in(by_id: &BTreeMap<String, Arc<TokenRecord>>, token: Option<&str>) -> Authn {
    let Some(token) = token else {
        return Authn::Missing;
    };
    let Some(id) = claimed_id(token) else {
        return Authn::Invalid;
    };
    let presented = hash_token(token);
    match by_id.get(id) {
        Some(r) if bool::from(presented.as_bytes().ct_eq(r.hash.as_bytes())) => {
            Authn::Valid(r.clone())
        }
        _ => Authn::Invalid,
    }
}

/// Whether `record` grants `action` on `resource` (`None`: on any resource, e.g. listing).
/// `admin` on a pattern grants publish, subscribe and admin on it; `cluster-admin` grants
/// only itself, and nothing else grants it.
pub fn allows(record: &TokenRecord, action: Action, resource: Option<&str>) -> bool {
    if action == Action::ClusterAdmin {
        return is_cluster_admin(record);
    }
    record.scopes.iter().any(|s| {
        (s.action == action || s.action == Action::Admin)
            && match resource {
                Some(r) => s.matches(r),
                None => true,
            }
    })
}

/// Whether `record` may do cluster-wide operations (drain, token management): it has the
/// `cluster-admin` scope.
pub fn is_cluster_admin(record: &TokenRecord) -> bool {
    record
        .scopes
        .iter()
        .any(|s| s.action == Action::ClusterAdmin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_claimed_id_never_includes_the_secret() {
        let (token, record) = new_token(vec![Scope::parse("publish").unwrap()], "").unwrap();
        assert_eq!(claimed_id(&token), Some(record.id.as_str()));
        assert_eq!(
            claimed_id(bearer(&format!("Bearer {token}"))),
            Some(record.id.as_str())
        );
        for bad in [
            "",
            "mshd_",
            "mshd_abc_def",
            "bearer",
            "mshd_0123456789abcdef_",
            "x_0123456789abcdef_00",
        ] {
            assert_eq!(claimed_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "orders"));
        assert!(pattern_matches("orders.*", "orders.eu"));
        assert!(!pattern_matches("orders.*", "orders"));
        assert!(!pattern_matches("orders.*", "ordersx"));
        assert!(pattern_matches("orders", "orders"));
        assert!(!pattern_matches("orders", "orders.eu"));
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(
            Scope::parse("publish:orders.*").unwrap().to_string(),
            "publish:orders.*"
        );
        assert_eq!(Scope::parse("admin").unwrap().pattern, "*");
        assert!(Scope::parse("write:x").is_err());
        assert!(Scope::parse("publish:or*ders").is_err());
        assert!(Scope::parse("publish:orders*").is_err());
        assert!(Scope::parse("publish:").is_err());
        assert_eq!(
            Scope::parse("cluster-admin").unwrap().to_string(),
            "cluster-admin"
        );
        assert_eq!(
            Scope::parse("cluster-admin:*").unwrap().action,
            Action::ClusterAdmin
        );
        assert!(Scope::parse("cluster-admin:orders.*").is_err());
    }

    #[test]
    fn cluster_admin_is_apart_from_topic_admin() {
        let rec = |scopes: &[&str]| TokenRecord {
            id: "x".into(),
            hash: String::new(),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            description: String::new(),
            created_at: 0,
        };
        let topic_admin = rec(&["admin:*"]);
        assert!(!allows(&topic_admin, Action::ClusterAdmin, None));
        assert!(!is_cluster_admin(&topic_admin));
        let cluster = rec(&["cluster-admin"]);
        assert!(allows(&cluster, Action::ClusterAdmin, None));
        assert!(!allows(&cluster, Action::Publish, Some("orders")));
        assert!(!allows(&cluster, Action::Admin, Some("orders")));
        // The file keeps it as written.
        let json = serde_json::to_string(&cluster.scopes).unwrap();
        assert_eq!(json, r#"["cluster-admin"]"#);
    }

    #[test]
    fn concurrent_creates_all_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let store = Arc::new(TokenStore::open(&path).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .create(vec![Scope::parse("publish:x").unwrap()], &format!("t{i}"))
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read_file(&path).unwrap().tokens.len(), 16);
        assert_eq!(store.list().len(), 16);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temp files left behind");
    }

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let store = TokenStore::open(&path).unwrap();
        let (token, rec) = store
            .create(vec![Scope::parse("publish:orders.*").unwrap()], "t")
            .unwrap();
        assert!(token.starts_with(&format!("mshd_{}_", rec.id)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(token.rsplit('_').next().unwrap()),
            "secret stored"
        );
        let Authn::Valid(r) = store.authenticate(Some(&token)) else {
            panic!("token not valid")
        };
        assert!(allows(&r, Action::Publish, Some("orders.eu")));
        assert!(!allows(&r, Action::Publish, Some("billing")));
        assert!(!allows(&r, Action::Subscribe, Some("orders.eu")));
        assert!(!is_cluster_admin(&r));
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(store.authenticate(Some(&wrong)), Authn::Invalid);
        assert_eq!(store.authenticate(Some("garbage")), Authn::Invalid);
        assert_eq!(store.authenticate(None), Authn::Missing);
        // A second store sees the file.
        let other = TokenStore::open(&path).unwrap();
        assert!(matches!(other.authenticate(Some(&token)), Authn::Valid(_)));
        store.revoke(&rec.id).unwrap();
        assert_eq!(store.authenticate(Some(&token)), Authn::Invalid);
        assert!(store.revoke(&rec.id).is_err());
    }
}
