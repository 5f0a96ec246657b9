//! The SAN scheme: how a cluster's name is written into its certificate and read back.
//!
//! The authoritative identity is one URI SAN `meshd://cluster/NAME` (every character of a
//! cluster name, `[A-Za-z0-9._-]`, is URI-unreserved, so the name is carried verbatim and
//! case is kept). A DNS SAN `NAME.cluster.meshd` is added as well when the name is a valid
//! lowercase DNS label sequence, for tools that only look at DNS names; meshd never uses it
//! for identity. Also: the certificate facts (serial, validity) tests and logs show.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;

/// Prefix of the URI SAN that names a cluster.
pub const CLUSTER_URI_PREFIX: &str = "meshd://cluster/";
/// Suffix of the convenience DNS SAN.
pub const CLUSTER_DNS_SUFFIX: &str = ".cluster.meshd";

/// Checks a cluster name: same rule as topic names (1..=200 of `[A-Za-z0-9._-]`, not
/// starting with `.`).
pub fn check_cluster_name(name: &str) -> Result<(), CertError> {
    meshd_core::api::check_name("cluster", name).map_err(|_| CertError::InvalidClusterName {
        name: name.to_string(),
    })
}

/// The URI SAN naming `cluster`.
pub fn cluster_uri(cluster: &str) -> String {
    format!("{CLUSTER_URI_PREFIX}{cluster}")
}

/// The convenience DNS SAN of `cluster`, when the name is a valid lowercase DNS name.
pub fn cluster_dns_name(cluster: &str) -> Option<String> {
    let dns = format!("{cluster}{CLUSTER_DNS_SUFFIX}");
    is_dns_name(&dns).then_some(dns)
}

/// A lowercase DNS name: labels of 1..=63 of `[a-z0-9-]`, not starting or ending with `-`,
/// at most 253 characters.
pub(crate) fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// What meshd reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lowercase hex with `:` separators.
    pub serial: String,
    /// Subject, as text.
    pub subject: String,
    /// Issuer, as text.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The cluster named by the URI SAN, if there is exactly one (and it is a valid name).
    pub cluster: Result<String, String>,
    /// Whether the certificate is a CA.
    pub is_ca: bool,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CertError::BadCertificate {
            reason: e.to_string(),
        })
}

fn to_system_time(secs: i64) -> SystemTime {
    let d = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Formats seconds since the epoch as RFC 3339 (UTC).
pub(crate) fn unix_to_rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    match t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }) {
        Some(s) => s,
        None => format!("{secs}s after the epoch"),
    }
}

/// Formats a `SystemTime` as RFC 3339 (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => unix_to_rfc3339(d.as_secs()),
        Err(_) => "(before 1970)".to_string(),
    }
}

fn cluster_of(cert: &X509Certificate<'_>) -> Result<String, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::BadCertificate {
            reason: format!("subjectAltName: {e}"),
        })?;
    let mut names: Vec<String> = Vec::new();
    if let Some(san) = san {
        for gn in &san.value.general_names {
            if let GeneralName::URI(uri) = gn {
                if let Some(name) = uri.strip_prefix(CLUSTER_URI_PREFIX) {
                    names.push(name.to_string());
                }
            }
        }
    }
    match names.len() {
        0 => Err(CertError::NoClusterName),
        1 => {
            let name = names.remove(0);
            check_cluster_name(&name)?;
            Ok(name)
        }
        _ => Err(CertError::SeveralClusterNames { names }),
    }
}

/// Reads a certificate's serial, validity and cluster name. Does not verify anything.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = parse(der)?;
    let validity = cert.validity();
    Ok(CertInfo {
        serial: cert.raw_serial_as_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        cluster: cluster_of(&cert).map_err(|e| e.to_string()),
        is_ca: cert.is_ca(),
    })
}

/// The cluster named by a peer's certificate chain (the first certificate is the peer's
/// own). Call it on a chain rustls has verified (e.g. `Connection::peer_identity()` of an
/// established QUIC connection): it only reads the `meshd://cluster/NAME` URI SAN.
pub fn peer_cluster(chain: &[CertificateDer<'_>]) -> Result<String, CertError> {
    let leaf = chain.first().ok_or(CertError::NoClientCert)?;
    cluster_of(&parse(leaf)?)
}

/// Checks a certificate's validity window against `now`.
pub(crate) fn check_validity(der: &[u8], now: SystemTime) -> Result<(), CertError> {
    let cert = parse(der)?;
    let validity = cert.validity();
    let not_before = to_system_time(validity.not_before.timestamp());
    let not_after = to_system_time(validity.not_after.timestamp());
    if now < not_before {
        return Err(CertError::NotYetValid {
            not_before: rfc3339(not_before),
        });
    }
    if now > not_after {
        return Err(CertError::Expired {
            not_after: rfc3339(not_after),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(
            cluster_dns_name("eu-west").as_deref(),
            Some("eu-west.cluster.meshd")
        );
        assert_eq!(cluster_dns_name("EU"), None);
        assert_eq!(cluster_dns_name("a_b"), None);
        assert_eq!(cluster_dns_name("a..b"), None);
        assert_eq!(cluster_dns_name("-a"), None);
    }

    #[test]
    fn cluster_names() {
        assert!(check_cluster_name("eu-west_1.A").is_ok());
        for bad in ["", ".x", "a/b", "a b", "é", &"x".repeat(201)] {
            assert!(
                matches!(
                    check_cluster_name(bad),
                    Err(CertError::InvalidClusterName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn garbage_der_is_an_error() {
        assert!(matches!(
            peer_cluster(&[CertificateDer::from(vec![1u8, 2, 3])]),
            Err(CertError::BadCertificate { .. })
        ));
        assert!(matches!(peer_cluster(&[]), Err(CertError::NoClientCert)));
    }
}
