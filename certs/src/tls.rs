//! rustls configurations for federation links (QUIC, TLS 1.3 only, ALPN `meshd-fed/1`)
//! and the peer checks behind them.
//!
//! Server side: a client certificate is REQUIRED; [`MeshClientVerifier`] checks validity
//! dates, the chain to the current mesh CA (clientAuth), and that the certificate's cluster
//! is in the allowed set (the topology's clusters, updatable at run time). Client side:
//! [`MeshServerVerifier`] checks dates, the chain (serverAuth) and that the server's
//! cluster is the link's expected peer; the TLS server name is not used for identity.
//! Each refusal is logged (`tracing::warn!`) with the [`CertError`] naming why, and the same
//! text travels in the handshake error.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::names::{check_validity, peer_cluster};
use crate::reload::{provider, CurrentCert, ReloadingCerts};
use crate::CertError;

/// ALPN protocol of federation links.
pub const ALPN: &[u8] = b"meshd-fed/1";

/// The clusters allowed to connect: the topology's clusters. Shared with the verifier, so
/// a topology reload takes effect at the next handshake.
#[derive(Debug, Default)]
pub struct AllowedClusters {
    names: RwLock<BTreeSet<String>>,
}

impl AllowedClusters {
    /// An allowed set.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Arc<AllowedClusters> {
        Arc::new(AllowedClusters {
            names: RwLock::new(names.into_iter().map(Into::into).collect()),
        })
    }

    /// Replaces the set (topology reload).
    pub fn set<I: IntoIterator<Item = S>, S: Into<String>>(&self, names: I) {
        let new: BTreeSet<String> = names.into_iter().map(Into::into).collect();
        match self.names.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// Whether `name` is allowed.
    pub fn contains(&self, name: &str) -> bool {
        match self.names.read() {
            Ok(g) => g.contains(name),
            Err(p) => p.into_inner().contains(name),
        }
    }

    /// A copy of the set.
    pub fn names(&self) -> BTreeSet<String> {
        match self.names.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Post-handshake authorization: the cluster named by a verified peer chain, if allowed.
pub fn authorize(
    chain: &[CertificateDer<'_>],
    allowed: &AllowedClusters,
) -> Result<String, CertError> {
    let name = peer_cluster(chain)?;
    if allowed.contains(&name) {
        Ok(name)
    } else {
        Err(CertError::UnknownCluster { name })
    }
}

fn system_time(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn refuse(side: &str, err: CertError) -> rustls::Error {
    tracing::warn!(side, reason = %err, "refused a federation peer's certificate");
    err.into_rustls()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Verifies client (peer bridge) certificates on the accepting side.
#[derive(Debug)]
pub struct MeshClientVerifier {
    certs: Arc<ReloadingCerts>,
    allowed: Arc<AllowedClusters>,
    algs: WebPkiSupportedAlgorithms,
}

impl MeshClientVerifier {
    /// Trusts `certs`' current CA; admits the clusters in `allowed`.
    pub fn new(certs: Arc<ReloadingCerts>, allowed: Arc<AllowedClusters>) -> Self {
        MeshClientVerifier {
            certs,
            allowed,
            algs: algorithms(),
        }
    }

    /// The whole check, as a `CertError`.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, CertError> {
        check_validity(end_entity, system_time(now))?;
        let current = self.certs.current();
        current
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| CertError::from_rustls(&e))?;
        authorize(std::slice::from_ref(end_entity), &self.allowed)
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the client then presents its (only) certificate. Hints would have to
        // follow CA rotations, which a borrowed slice cannot.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => Err(refuse("server", e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies the server (peer bridge) certificate on the dialling side.
#[derive(Debug)]
pub struct MeshServerVerifier {
    certs: Arc<ReloadingCerts>,
    expected_peer: String,
    algs: WebPkiSupportedAlgorithms,
}

impl MeshServerVerifier {
    /// Trusts `certs`' current CA; expects the server to be `expected_peer`.
    pub fn new(certs: Arc<ReloadingCerts>, expected_peer: impl Into<String>) -> Self {
        MeshServerVerifier {
            certs,
            expected_peer: expected_peer.into(),
            algs: algorithms(),
        }
    }

    /// The whole check, as a `CertError`.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, CertError> {
        check_validity(end_entity, system_time(now))?;
        let current = self.certs.current();
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)
            .map_err(|e| CertError::from_rustls(&e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.roots,
            intermediates,
            now,
            self.algs.all,
        )
        .map_err(|e| CertError::from_rustls(&e))?;
        let got = peer_cluster(std::slice::from_ref(end_entity))?;
        if got != self.expected_peer {
            return Err(CertError::WrongPeer {
                expected: self.expected_peer.clone(),
                got,
            });
        }
        Ok(got)
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(refuse("client", e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The accepting side's config: TLS 1.3, ALPN `meshd-fed/1`, presents `certs`' current
/// certificate, requires a client certificate from the mesh CA naming an allowed cluster.
/// Convert for quinn with `QuicServerConfig::try_from(Arc::new(config))`.
pub fn server_config(
    certs: Arc<ReloadingCerts>,
    allowed: Arc<AllowedClusters>,
) -> Result<ServerConfig, CertError> {
    let verifier = Arc::new(MeshClientVerifier::new(certs.clone(), allowed));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert(certs)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The dialling side's config for the link to `expected_peer`: TLS 1.3, ALPN
/// `meshd-fed/1`, presents `certs`' current certificate, accepts only a server certificate
/// from the mesh CA naming `expected_peer`. Convert for quinn with
/// `QuicClientConfig::try_from(Arc::new(config))`; any server name may be dialled (e.g.
/// [`server_name`]).
pub fn client_config(
    certs: Arc<ReloadingCerts>,
    expected_peer: &str,
) -> Result<ClientConfig, CertError> {
    crate::names::check_cluster_name(expected_peer)?;
    let verifier = Arc::new(MeshServerVerifier::new(certs.clone(), expected_peer));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CurrentCert(certs)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A TLS server name for dialling `cluster`: its DNS SAN when it has one, else
/// `cluster.meshd` (the name is not used for identity; the URI SAN is).
pub fn server_name(cluster: &str) -> String {
    crate::names::cluster_dns_name(cluster).unwrap_or_else(|| "cluster.meshd".to_string())
}
