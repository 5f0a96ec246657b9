//! The one error type of meshd-certs. Every refusal of a peer maps to a variant that names
//! why (unknown CA, expired, not yet valid, unknown cluster, ...), so the bridge can log it.

use std::path::PathBuf;

/// Everything that can go wrong creating, loading or verifying mesh certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `certs init` found an existing CA and was not told to replace it.
    #[error("{path} already exists: refusing to overwrite the mesh CA (use --force to replace it; every cluster certificate must then be reissued)")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A cluster (or mesh) name outside `[A-Za-z0-9._-]`, empty, too long or starting with `.`.
    #[error(
        "cluster name {name:?} is invalid: use 1 to 200 of A-Z a-z 0-9 . _ - (not starting with .)"
    )]
    InvalidClusterName {
        /// The rejected name.
        name: String,
    },
    /// An extra SAN given with `--san` that is neither an IP address nor a DNS name.
    #[error("extra SAN {san:?} is neither an IP address nor a valid DNS name")]
    InvalidSan {
        /// The rejected SAN.
        san: String,
    },
    /// A validity of zero days, or one that ends before it starts.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// What is wrong.
        reason: String,
    },
    /// A PEM file with no usable certificate / key, or unparseable PEM.
    #[error("{what}: {reason}")]
    BadPem {
        /// Which file or input.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{key} does not match the certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// No certificate in the CA file matches the CA key.
    #[error("no CA certificate in {ca} matches the key {key}")]
    CaKeyMismatch {
        /// The CA certificate file.
        ca: String,
        /// The CA key file.
        key: String,
    },
    /// A certificate that is not valid DER X.509.
    #[error("certificate is not valid X.509: {reason}")]
    BadCertificate {
        /// What the parser said.
        reason: String,
    },
    /// rcgen failed to build a key or certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Building a rustls configuration failed.
    #[error("building the TLS configuration: {0}")]
    Tls(String),
    /// The peer's certificate does not chain to the mesh CA (unknown issuer, or an issuer
    /// with a mesh CA's name whose signature does not verify: another CA of the same name).
    #[error("certificate is not issued by the mesh CA (unknown issuer or bad signature)")]
    UnknownCa,
    /// The peer's certificate is past its notAfter.
    #[error("certificate expired at {not_after}")]
    Expired {
        /// notAfter, RFC 3339.
        not_after: String,
    },
    /// The peer's certificate is before its notBefore.
    #[error("certificate is not valid before {not_before}")]
    NotYetValid {
        /// notBefore, RFC 3339.
        not_before: String,
    },
    /// The certificate names a cluster the topology does not know.
    #[error("cluster {name:?} is not in the topology")]
    UnknownCluster {
        /// The cluster named by the certificate.
        name: String,
    },
    /// The certificate carries no `meshd://cluster/NAME` URI SAN.
    #[error("certificate carries no cluster name (no meshd://cluster/NAME URI SAN)")]
    NoClusterName,
    /// The certificate carries more than one cluster name.
    #[error("certificate carries several cluster names: {names:?}")]
    SeveralClusterNames {
        /// All of them.
        names: Vec<String>,
    },
    /// The server we dialled is a valid mesh member, but not the cluster the link is for.
    #[error("expected peer cluster {expected:?}, the certificate says {got:?}")]
    WrongPeer {
        /// The cluster the link is configured for.
        expected: String,
        /// The cluster the certificate names.
        got: String,
    },
    /// A reload found certificate files for another cluster than the one being served.
    #[error("new certificate is for cluster {new:?}, the running one is for {old:?}; refusing to switch identity")]
    ClusterChanged {
        /// The running cluster.
        old: String,
        /// The cluster in the new files.
        new: String,
    },
    /// The client presented no certificate.
    #[error("peer presented no client certificate")]
    NoClientCert,
    /// The certificate may not be used for this purpose (missing serverAuth/clientAuth EKU).
    #[error("certificate is not valid for this use (extended key usage)")]
    InvalidPurpose,
    /// Any other rejection by the TLS stack.
    #[error("certificate rejected: {0}")]
    Rejected(String),
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CertError::Io {
            path: path.into(),
            source,
        }
    }

    /// Classifies a rustls verification error. Errors raised by this crate's verifiers come
    /// back as the `CertError` they were built from (rendered as text).
    pub fn from_rustls(err: &rustls::Error) -> CertError {
        use rustls::CertificateError as C;
        match err {
            rustls::Error::NoCertificatesPresented => CertError::NoClientCert,
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => CertError::UnknownCa,
                C::Expired => CertError::Expired {
                    not_after: "(unknown)".into(),
                },
                C::ExpiredContext { not_after, .. } => CertError::Expired {
                    not_after: crate::names::unix_to_rfc3339(not_after.as_secs()),
                },
                C::NotValidYet => CertError::NotYetValid {
                    not_before: "(unknown)".into(),
                },
                C::NotValidYetContext { not_before, .. } => CertError::NotYetValid {
                    not_before: crate::names::unix_to_rfc3339(not_before.as_secs()),
                },
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => CertError::InvalidPurpose,
                // In a chain: a CA with the right name but another key.
                C::BadSignature => CertError::UnknownCa,
                other => CertError::Rejected(format!("{other:?}")),
            },
            other => CertError::Rejected(other.to_string()),
        }
    }

    /// The rustls error a verifier returns for this refusal: the alert is chosen by rustls,
    /// the text (seen in the peer's and our own handshake error) is this error's message.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(Refusal(self)),
        )))
    }
}

/// A `CertError` inside a rustls error. rustls and quinn render the inner error with
/// `Debug`, so `Debug` shows the readable message here.
struct Refusal(CertError);

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {}
