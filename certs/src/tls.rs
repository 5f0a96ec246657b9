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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

    use super::*;
    use crate::issue::{create_ca, issue_cluster_cert, parse_certs_pem, write_file};
    use crate::{CertPaths, ClusterCertRequest, PemPair, Validity};

    const DAY: Duration = Duration::from_secs(86_400);

    fn leaf(ca: &PemPair, cluster: &str, validity: Validity) -> CertificateDer<'static> {
        let req = ClusterCertRequest {
            cluster: cluster.into(),
            extra_sans: vec![],
            validity,
        };
        let pair = issue_cluster_cert(&ca.cert_pem, &ca.key_pem, &req).unwrap();
        parse_certs_pem(&pair.cert_pem, "leaf").unwrap().remove(0)
    }

    fn certs_for(dir: &std::path::Path, ca: &PemPair, cluster: &str) -> Arc<ReloadingCerts> {
        let req = ClusterCertRequest {
            cluster: cluster.into(),
            extra_sans: vec![],
            validity: Validity::days_from_now(1).unwrap(),
        };
        let pair = issue_cluster_cert(&ca.cert_pem, &ca.key_pem, &req).unwrap();
        let paths = CertPaths::in_dir(dir, cluster);
        write_file(&paths.ca, ca.cert_pem.as_bytes(), false).unwrap();
        write_file(&paths.cert, pair.cert_pem.as_bytes(), false).unwrap();
        write_file(&paths.key, pair.key_pem.as_bytes(), true).unwrap();
        ReloadingCerts::open(paths).unwrap()
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn every_refusal_has_its_own_variant() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = create_ca("m", Validity::days_from_now(10).unwrap()).unwrap();
        let other = create_ca("m", Validity::days_from_now(10).unwrap()).unwrap();
        let certs = certs_for(tmp.path(), &ca, "alpha");
        let server_side =
            MeshClientVerifier::new(certs.clone(), AllowedClusters::new(["alpha", "beta"]));
        let client_side = MeshServerVerifier::new(certs, "beta");
        let good = Validity::days_from_now(1).unwrap();
        let t = SystemTime::now();

        let beta = leaf(&ca, "beta", good);
        assert_eq!(server_side.check(&beta, &[], now()).unwrap(), "beta");
        assert_eq!(client_side.check(&beta, &[], now()).unwrap(), "beta");
        // A peer whose clock is 50 minutes behind the issuer still accepts a certificate
        // issued just now (BACKDATE); 2 hours behind it does not.
        let behind = |secs: u64| {
            UnixTime::since_unix_epoch(
                (t - Duration::from_secs(secs))
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap(),
            )
        };
        assert_eq!(
            server_side.check(&beta, &[], behind(50 * 60)).unwrap(),
            "beta"
        );
        assert_eq!(
            client_side.check(&beta, &[], behind(50 * 60)).unwrap(),
            "beta"
        );
        assert!(matches!(
            server_side.check(&beta, &[], behind(2 * 3600)),
            Err(CertError::NotYetValid { .. })
        ));

        let foreign = leaf(&other, "beta", good);
        assert!(matches!(
            server_side.check(&foreign, &[], now()),
            Err(CertError::UnknownCa)
        ));
        assert!(matches!(
            client_side.check(&foreign, &[], now()),
            Err(CertError::UnknownCa)
        ));

        let old = leaf(
            &ca,
            "beta",
            Validity {
                not_before: t - 3 * DAY,
                not_after: t - DAY,
            },
        );
        assert!(matches!(
            server_side.check(&old, &[], now()),
            Err(CertError::Expired { .. })
        ));
        assert!(matches!(
            client_side.check(&old, &[], now()),
            Err(CertError::Expired { .. })
        ));

        let early = leaf(
            &ca,
            "beta",
            Validity {
                not_before: t + DAY,
                not_after: t + 3 * DAY,
            },
        );
        assert!(matches!(
            server_side.check(&early, &[], now()),
            Err(CertError::NotYetValid { .. })
        ));

        let gamma = leaf(&ca, "gamma", good);
        assert!(matches!(
            server_side.check(&gamma, &[], now()),
            Err(CertError::UnknownCluster { name }) if name == "gamma"
        ));
        assert!(matches!(
            client_side.check(&gamma, &[], now()),
            Err(CertError::WrongPeer { expected, got }) if expected == "beta" && got == "gamma"
        ));

        // Signed by the mesh CA but with no cluster URI SAN.
        let ca_key = KeyPair::from_pem(&ca.key_pem).unwrap();
        let ca_der = parse_certs_pem(&ca.cert_pem, "ca").unwrap().remove(0);
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).unwrap();
        let mut params = CertificateParams::new(vec!["beta.example".to_string()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (t - DAY).into();
        params.not_after = (t + DAY).into();
        let key = KeyPair::generate().unwrap();
        let nameless: CertificateDer<'static> = params.signed_by(&key, &issuer).unwrap().into();
        assert!(matches!(
            server_side.check(&nameless, &[], now()),
            Err(CertError::NoClusterName)
        ));
        // Two cluster names.
        params.subject_alt_names = vec![
            SanType::URI("meshd://cluster/beta".try_into().unwrap()),
            SanType::URI("meshd://cluster/alpha".try_into().unwrap()),
        ];
        let two: CertificateDer<'static> = params.signed_by(&key, &issuer).unwrap().into();
        assert!(matches!(
            server_side.check(&two, &[], now()),
            Err(CertError::SeveralClusterNames { .. })
        ));
        // Only serverAuth: not acceptable as a client certificate.
        params.subject_alt_names = vec![SanType::URI("meshd://cluster/beta".try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_only: CertificateDer<'static> = params.signed_by(&key, &issuer).unwrap().into();
        assert!(matches!(
            server_side.check(&server_only, &[], now()),
            Err(CertError::InvalidPurpose)
        ));
        assert_eq!(client_side.check(&server_only, &[], now()).unwrap(), "beta");
        // Garbage.
        assert!(server_side
            .check(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]), &[], now())
            .is_err());
    }

    #[test]
    fn configs_are_tls13_with_alpn() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = create_ca("m", Validity::days_from_now(10).unwrap()).unwrap();
        let certs = certs_for(tmp.path(), &ca, "alpha");
        let s = server_config(certs.clone(), AllowedClusters::new(["beta"])).unwrap();
        assert_eq!(s.alpn_protocols, vec![ALPN.to_vec()]);
        let c = client_config(certs, "beta").unwrap();
        assert_eq!(c.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(c.client_auth_cert_resolver.has_certs());
        assert_eq!(server_name("beta"), "beta.cluster.meshd");
        assert_eq!(server_name("Beta_1"), "cluster.meshd");
    }
}
