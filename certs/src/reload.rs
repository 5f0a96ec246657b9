//! The running certificate set of a bridge and its rotation without restart.
//!
//! [`ReloadingCerts`] holds the current CA roots and the cluster's certificate and key as
//! one validated snapshot behind a lock. The TLS configs built by [`crate::tls`] never copy
//! them: their certificate resolvers and peer verifiers read the current snapshot at every
//! handshake, so after [`ReloadingCerts::reload`] new connections present (and verify
//! against) the new files while established connections are untouched. A reload validates
//! everything first (PEM, key matches certificate, certificate chains to the CA, is valid
//! now, names the same cluster) and keeps the old snapshot on any error. [`Watcher`] polls
//! the files' mtimes and sizes every N seconds and reloads on change (no inotify).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::issue::{parse_certs_pem, CA_CERT_FILE};
use crate::names::{cert_info, check_validity, peer_cluster, CertInfo};
use crate::CertError;

/// Where a bridge's certificate files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The mesh CA certificate(s) to trust (several during a CA rotation).
    pub ca: PathBuf,
    /// The cluster's certificate chain (NAME.pem).
    pub cert: PathBuf,
    /// The cluster's private key (NAME.key).
    pub key: PathBuf,
}

impl CertPaths {
    /// `dir/ca.pem`, `dir/CLUSTER.pem`, `dir/CLUSTER.key`: the layout `certs issue` writes
    /// when the CA directory and the output directory are the same.
    pub fn in_dir(dir: &Path, cluster: &str) -> CertPaths {
        CertPaths {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{cluster}.pem")),
            key: dir.join(format!("{cluster}.key")),
        }
    }
}

/// How strictly files are checked when loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPolicy {
    /// Refuse a certificate that is expired or not yet valid. On by default; tests turn it
    /// off to present an expired certificate and watch the peer refuse it.
    pub require_current: bool,
}

impl Default for LoadPolicy {
    fn default() -> Self {
        LoadPolicy {
            require_current: true,
        }
    }
}

/// One validated set: CA roots, the cluster's certified key, and facts about it.
#[derive(Debug)]
pub struct Loaded {
    /// The cluster this certificate names.
    pub cluster: String,
    /// Serial, validity, subject of the cluster certificate.
    pub info: CertInfo,
    /// What rustls presents.
    pub certified_key: Arc<CertifiedKey>,
    /// The trusted mesh CA certificates.
    pub roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::io(path, e))
}

impl Loaded {
    /// Reads and validates the three files.
    pub fn from_files(paths: &CertPaths, policy: LoadPolicy) -> Result<Loaded, CertError> {
        let ca = read(&paths.ca)?;
        let cert = read(&paths.cert)?;
        let key = read(&paths.key)?;
        Loaded::from_pem(
            &ca,
            &cert,
            &key,
            &paths.ca.display().to_string(),
            &paths.cert.display().to_string(),
            &paths.key.display().to_string(),
            policy,
        )
    }

    /// Validates PEM texts (names are for messages).
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        ca_name: &str,
        cert_name: &str,
        key_name: &str,
        policy: LoadPolicy,
    ) -> Result<Loaded, CertError> {
        let provider = provider();
        let ca_certs = parse_certs_pem(ca_pem, ca_name)?;
        let chain = parse_certs_pem(cert_pem, cert_name)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::BadPem {
                what: key_name.to_string(),
                reason: format!("no usable private key: {e}"),
            })?;
        let mut roots = RootCertStore::empty();
        for ca in &ca_certs {
            roots.add(ca.clone()).map_err(|e| CertError::BadPem {
                what: ca_name.to_string(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| CertError::BadPem {
                    what: key_name.to_string(),
                    reason: format!("unsupported private key: {e}"),
                })?;
        let certified_key = CertifiedKey::new(chain.clone(), signing_key);
        if certified_key.keys_match().is_err() {
            return Err(CertError::KeyMismatch {
                cert: cert_name.to_string(),
                key: key_name.to_string(),
            });
        }
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(CertError::BadPem {
                what: cert_name.to_string(),
                reason: "no CERTIFICATE block".into(),
            });
        };
        let info = cert_info(leaf)?;
        let cluster = peer_cluster(&chain)?;
        let now = if policy.require_current {
            let now = SystemTime::now();
            check_validity(leaf, now)?;
            now
        } else {
            // Still check the chain, at a time the certificate is valid.
            let half = info
                .not_after
                .duration_since(info.not_before)
                .unwrap_or_default()
                / 2;
            info.not_before.checked_add(half).unwrap_or(info.not_before)
        };
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
        let unix_now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        // Our own certificate must pass the checks peers will run on it.
        client_verifier
            .verify_client_cert(leaf, intermediates, unix_now)
            .map_err(|e| CertError::from_rustls(&e))?;
        let parsed = rustls::server::ParsedCertificate::try_from(leaf)
            .map_err(|e| CertError::from_rustls(&e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            unix_now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| CertError::from_rustls(&e))?;
        Ok(Loaded {
            cluster,
            info,
            certified_key: Arc::new(certified_key),
            roots,
            client_verifier,
        })
    }
}

/// The current certificate set of a bridge, swappable at run time.
#[derive(Debug)]
pub struct ReloadingCerts {
    paths: CertPaths,
    policy: LoadPolicy,
    current: RwLock<Arc<Loaded>>,
    generation: Mutex<u64>,
    reloaded: Condvar,
}

impl ReloadingCerts {
    /// Loads the files (strict policy).
    pub fn open(paths: CertPaths) -> Result<Arc<ReloadingCerts>, CertError> {
        ReloadingCerts::open_with(paths, LoadPolicy::default())
    }

    /// Loads the files with `policy` (which also applies to later reloads).
    pub fn open_with(
        paths: CertPaths,
        policy: LoadPolicy,
    ) -> Result<Arc<ReloadingCerts>, CertError> {
        let loaded = Loaded::from_files(&paths, policy)?;
        Ok(Arc::new(ReloadingCerts {
            paths,
            policy,
            current: RwLock::new(Arc::new(loaded)),
            generation: Mutex::new(0),
            reloaded: Condvar::new(),
        }))
    }

    /// The files this set is read from.
    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The cluster these certificates are for.
    pub fn cluster(&self) -> String {
        self.current().cluster.clone()
    }

    /// How many successful reloads happened.
    pub fn generation(&self) -> u64 {
        match self.generation.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    /// Blocks until [`generation`](Self::generation) is at least `at_least` or `timeout`
    /// passed; returns whether it got there. (Blocking: from async code, call it in
    /// `spawn_blocking`.)
    pub fn wait_for_generation(&self, at_least: u64, timeout: Duration) -> bool {
        let guard = match self.generation.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let result = self
            .reloaded
            .wait_timeout_while(guard, timeout, |g| *g < at_least);
        match result {
            Ok((g, _)) => *g >= at_least,
            Err(p) => *p.into_inner().0 >= at_least,
        }
    }

    /// Re-reads the files. On success the new set serves every later handshake; on any
    /// error (unreadable, garbage PEM, key mismatch, other CA, expired, another cluster)
    /// the running set is kept and the error returned.
    pub fn reload(&self) -> Result<Arc<Loaded>, CertError> {
        let new = Arc::new(Loaded::from_files(&self.paths, self.policy)?);
        let old_cluster = self.cluster();
        if new.cluster != old_cluster {
            return Err(CertError::ClusterChanged {
                old: old_cluster,
                new: new.cluster.clone(),
            });
        }
        match self.current.write() {
            Ok(mut g) => *g = new.clone(),
            Err(poisoned) => *poisoned.into_inner() = new.clone(),
        }
        match self.generation.lock() {
            Ok(mut g) => *g += 1,
            Err(p) => *p.into_inner() += 1,
        }
        self.reloaded.notify_all();
        tracing::info!(
            cluster = %new.cluster,
            serial = %new.info.serial,
            not_after = %crate::names::rfc3339(new.info.not_after),
            "reloaded mesh certificates"
        );
        Ok(new)
    }

    /// Starts a thread that polls the three files every `every` and reloads when one of
    /// them changed (mtime or size) since the previous poll (the first reference is taken
    /// when `watch` is called). Failed reloads are logged and retried at the next change.
    /// The thread stops when the [`Watcher`] is dropped or this set is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> Watcher {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let weak: Weak<ReloadingCerts> = Arc::downgrade(self);
        let paths = self.paths.clone();
        // Taken before this returns: any change after `watch` returns is seen.
        let mut last = fingerprint(&paths);
        let handle = std::thread::Builder::new()
            .name("meshd-certs-watch".into())
            .spawn(move || {
                loop {
                    match stop_rx.recv_timeout(every) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let now = fingerprint(&paths);
                    if now == last {
                        continue;
                    }
                    last = now;
                    let Some(certs) = weak.upgrade() else { return };
                    if let Err(e) = certs.reload() {
                        tracing::warn!(error = %e, "certificate files changed but were not loaded; keeping the running certificates");
                    }
                }
            });
        Watcher {
            stop: Some(stop_tx),
            thread: handle.ok(),
        }
    }
}

type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(paths: &CertPaths) -> Fingerprint {
    [&paths.ca, &paths.cert, &paths.key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A running file watcher; dropping it stops the thread.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Whether the watching thread started.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the current certificate of a [`ReloadingCerts`] to rustls, as server and client.
#[derive(Debug, Clone)]
pub struct CurrentCert(pub Arc<ReloadingCerts>);

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The first certificate of a PEM chain, for tests and tools.
pub fn leaf_of(pem: &str) -> Result<CertificateDer<'static>, CertError> {
    parse_certs_pem(pem, "certificate").map(|mut v| v.remove(0))
}
