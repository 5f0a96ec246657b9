//! The cluster's internal token: how a node knows that a request came through one of its
//! cluster's proxies (or from an operator who holds the token), not from whoever can reach
//! the node's port.
//!
//! A node started with a token answers every `/v1` request without it `401
//! internal_token_required`; `/healthz`, `/readyz` and `/metrics` stay open. Proxies send
//! it in the [`HEADER`] header on every request to a node (they drop the client's
//! `Authorization`). An operator or a drill may present it as `Authorization: Bearer`.
//! `meshd cluster up` makes one per region (a file of mode 0600) and gives it to every node
//! and proxy it starts.

use std::path::Path;

/// The header a proxy sends the token in.
pub const HEADER: &str = "meshd-internal-token";

/// Shortest token accepted (characters).
pub const MIN_LEN: usize = 16;

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InternalTokenError {
    /// The file could not be read.
    #[error("reading the internal token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Other users may read the file.
    #[error(
        "the internal token file {path} may be read by other users (mode {mode:o}); chmod 600 it"
    )]
    Readable {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// Too short, or not printable ASCII without spaces.
    #[error(
        "the internal token must be at least {MIN_LEN} printable ASCII characters without spaces"
    )]
    Invalid,
}

/// A cluster's internal token (its `Debug` does not show it).
#[derive(Clone, PartialEq, Eq)]
pub struct InternalToken(String);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(..)")
    }
}

impl InternalToken {
    /// Checks a token's text.
    pub fn new(text: &str) -> Result<InternalToken, InternalTokenError> {
        let t = text.trim();
        if t.len() < MIN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InternalTokenError::Invalid);
        }
        Ok(InternalToken(t.to_string()))
    }

    /// Reads a token file (refused when other users may read it).
    pub fn load(path: &Path) -> Result<InternalToken, InternalTokenError> {
        let read = |source| InternalTokenError::Read {
            path: path.display().to_string(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(InternalTokenError::Readable {
                    path: path.display().to_string(),
                    mode: mode & 0o777,
                });
            }
        }
        InternalToken::new(&std::fs::read_to_string(path).map_err(read)?)
    }

    /// The text (to send it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if presented.len() != mine.len() {
            return false;
        }
        presented
            .iter()
            .zip(mine)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Whether a request's headers carry the token (in [`HEADER`] or as a bearer token).
    pub fn admits(&self, header: Option<&[u8]>, authorization: Option<&[u8]>) -> bool {
        if header.is_some_and(|h| self.matches(h)) {
            return true;
        }
        authorization
            .and_then(|a| a.strip_prefix(b"Bearer "))
            .is_some_and(|t| self.matches(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_text_and_compares() {
        assert!(InternalToken::new("short").is_err());
        assert!(InternalToken::new("has a space in it 12345").is_err());
        let t = InternalToken::new(" 0123456789abcdef0123\n").unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef0124"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert!(t.admits(Some(b"0123456789abcdef0123"), None));
        assert!(t.admits(None, Some(b"Bearer 0123456789abcdef0123")));
        assert!(!t.admits(None, Some(b"Basic 0123456789abcdef0123")));
        assert!(!t.admits(Some(b"nope"), Some(b"Bearer nope")));
        assert_eq!(format!("{t:?}"), "InternalToken(..)");
    }

    #[cfg(unix)]
    #[test]
    fn files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            InternalToken::load(&p),
            Err(InternalTokenError::Readable { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            InternalToken::load(&p).unwrap().expose(),
            "0123456789abcdef0123"
        );
    }
}
