//! Creating the mesh CA and issuing cluster bridge certificates (rcgen), and writing them
//! to files (keys 0600, written to a temporary file and renamed into place so a watcher
//! never reads half a file).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::names::{check_cluster_name, cluster_dns_name, cluster_uri, is_dns_name};
use crate::CertError;

/// File name of the CA certificate in a certs directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA key in a certs directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Default validity of the mesh CA.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default validity of a cluster certificate.
pub const DEFAULT_CLUSTER_DAYS: u32 = 365;
/// Longest validity accepted, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;
/// How far before "now" a new certificate's validity starts, for clock skew between
/// clusters: a bridge whose clock is behind the issuing machine's by less than this still
/// accepts its own and its peers' new certificates. One hour, as public CAs do; with
/// 5 minutes a host 10 minutes behind refused to start its bridge.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: SystemTime,
    /// End.
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`BACKDATE`] ago until `days` days from now.
    pub fn days_from_now(days: u32) -> Result<Validity, CertError> {
        if days == 0 || days > MAX_DAYS {
            return Err(CertError::InvalidValidity {
                reason: format!("days must be between 1 and {MAX_DAYS}, not {days}"),
            });
        }
        let now = SystemTime::now();
        Ok(Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        })
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CertError> {
        if self.not_after <= self.not_before {
            return Err(CertError::InvalidValidity {
                reason: "not_after is not after not_before".into(),
            });
        }
        params.not_before = to_offset(self.not_before)?;
        params.not_after = to_offset(self.not_after)?;
        Ok(())
    }
}

/// `SystemTime` to `OffsetDateTime` without the panic of `From` on out-of-range values.
fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, CertError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|t| (1950..=9999).contains(&t.year()))
        .ok_or_else(|| CertError::InvalidValidity {
            reason: "date out of range (years 1950 to 9999)".into(),
        })
}

/// A certificate (chain) and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// Certificate chain PEM: the certificate first, then its issuer(s).
    pub cert_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
}

/// Creates a self-signed mesh CA for `mesh`: CN "meshd mesh CA <mesh>", basic constraints
/// CA with path length 0 (it signs cluster certificates only), key usage keyCertSign+cRLSign.
pub fn create_ca(mesh: &str, validity: Validity) -> Result<PemPair, CertError> {
    check_cluster_name(mesh)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("meshd mesh CA {mesh}"));
    dn.push(DnType::OrganizationName, "meshd");
    // Two CAs of one mesh (before and after a CA rotation) get distinct names.
    dn.push(
        DnType::OrganizationalUnitName,
        format!("created {}", crate::names::rfc3339(SystemTime::now())),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity.apply(&mut params)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a cluster certificate is for.
#[derive(Debug, Clone)]
pub struct ClusterCertRequest {
    /// The cluster (goes into the URI SAN, the CN and, when DNS-safe, a DNS SAN).
    pub cluster: String,
    /// Extra SANs: IP addresses or DNS names of the bridge.
    pub extra_sans: Vec<String>,
    /// When it is valid.
    pub validity: Validity,
}

/// Parses every certificate of a PEM text.
pub fn parse_certs_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            what: what.to_string(),
            reason: format!("unreadable PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertError::BadPem {
            what: what.to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn parse_key_pem(pem: &str, what: &str) -> Result<KeyPair, CertError> {
    KeyPair::from_pem(pem).map_err(|e| CertError::BadPem {
        what: what.to_string(),
        reason: format!("not a usable private key: {e}"),
    })
}

/// Issues `req.cluster`'s bridge certificate with the CA (`ca_cert_pem` may hold several
/// CA certificates during a CA rotation; the one matching `ca_key_pem` signs). The result
/// is usable for both server and client auth; its chain is the leaf then the signing CA.
pub fn issue_cluster_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    req: &ClusterCertRequest,
) -> Result<PemPair, CertError> {
    check_cluster_name(&req.cluster)?;
    let ca_key = parse_key_pem(ca_key_pem, CA_KEY_FILE)?;
    let ca_certs = parse_certs_pem(ca_cert_pem, CA_CERT_FILE)?;
    let ca_der = find_ca_for_key(&ca_certs, &ca_key).ok_or_else(|| CertError::CaKeyMismatch {
        ca: CA_CERT_FILE.into(),
        key: CA_KEY_FILE.into(),
    })?;
    let issuer = Issuer::from_ca_cert_der(ca_der, ca_key)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.cluster.clone());
    dn.push(DnType::OrganizationName, "meshd");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut sans = vec![SanType::URI(cluster_uri(&req.cluster).try_into()?)];
    if let Some(dns) = cluster_dns_name(&req.cluster) {
        sans.push(SanType::DnsName(dns.try_into()?));
    }
    for extra in &req.extra_sans {
        sans.push(extra_san(extra)?);
    }
    params.subject_alt_names = sans;
    req.validity.apply(&mut params)?;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let ca_pem = rustls::pki_types::pem::PemObject::pem_slice_iter(ca_cert_pem.as_bytes())
        .filter_map(|c: Result<CertificateDer<'static>, _>| c.ok())
        .find(|c| c.as_ref() == ca_der.as_ref())
        .map(|c| pem_of(&c))
        .unwrap_or_default();
    Ok(PemPair {
        cert_pem: format!("{}{}", cert.pem(), ca_pem),
        key_pem: key.serialize_pem(),
    })
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use std::fmt::Write as _;
    let b64 = base64_encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(chunk));
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn extra_san(s: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let lower = s.to_ascii_lowercase();
    if is_dns_name(&lower) {
        return Ok(SanType::DnsName(lower.try_into()?));
    }
    Err(CertError::InvalidSan { san: s.to_string() })
}

/// The CA certificate whose public key is `key`'s.
fn find_ca_for_key<'a>(
    certs: &'a [CertificateDer<'static>],
    key: &KeyPair,
) -> Option<&'a CertificateDer<'static>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    certs.iter().find(|der| {
        X509Certificate::from_der(der.as_ref())
            .map(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
            .unwrap_or(false)
    })
}

/// Paths of a written CA.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// ca.pem
    pub cert: PathBuf,
    /// ca.key
    pub key: PathBuf,
}

/// `meshd certs init`: creates the mesh CA in `dir` (created if missing). Refuses to
/// replace an existing ca.pem or ca.key unless `force`.
pub fn init_ca_dir(
    dir: &Path,
    mesh: &str,
    validity: Validity,
    force: bool,
) -> Result<CaFiles, CertError> {
    let files = CaFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    if !force {
        for p in [&files.cert, &files.key] {
            if p.exists() {
                return Err(CertError::AlreadyExists { path: p.clone() });
            }
        }
    }
    let pair = create_ca(mesh, validity)?;
    create_private_dir(dir)?;
    write_file(&files.key, pair.key_pem.as_bytes(), true)?;
    write_file(&files.cert, pair.cert_pem.as_bytes(), false)?;
    Ok(files)
}

/// Paths of a written cluster certificate.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    /// NAME.pem (leaf + chain)
    pub cert: PathBuf,
    /// NAME.key (0600)
    pub key: PathBuf,
}

/// `meshd certs issue`: issues `req.cluster`'s certificate with the CA in `ca_dir` and
/// writes NAME.pem and NAME.key into `out_dir` (created if missing). Existing files are
/// replaced (that is how a certificate is rotated); the key is written first.
pub fn issue_to_dir(
    ca_dir: &Path,
    req: &ClusterCertRequest,
    out_dir: &Path,
) -> Result<ClusterFiles, CertError> {
    check_cluster_name(&req.cluster)?;
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_cert =
        std::fs::read_to_string(&ca_cert_path).map_err(|e| CertError::io(&ca_cert_path, e))?;
    let ca_key =
        std::fs::read_to_string(&ca_key_path).map_err(|e| CertError::io(&ca_key_path, e))?;
    let pair = issue_cluster_cert(&ca_cert, &ca_key, req)?;
    create_private_dir(out_dir)?;
    let files = ClusterFiles {
        cert: out_dir.join(format!("{}.pem", req.cluster)),
        key: out_dir.join(format!("{}.key", req.cluster)),
    };
    write_file(&files.key, pair.key_pem.as_bytes(), true)?;
    write_file(&files.cert, pair.cert_pem.as_bytes(), false)?;
    Ok(files)
}

/// Creates a directory that will hold private keys, and its missing parents, with mode
/// 0700 (on Unix) from the start. An existing directory is left as it is (it may be one the
/// user chose and shares, e.g. `--out .`).
pub fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| CertError::io(dir, e))
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
/// Secret files are created with mode 0600 (on Unix).
pub fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        if secret {
            // A stale temporary file keeps its old mode: force 0600.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CertError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn issued_cert_names_the_cluster_and_chains() {
        let ca = create_ca("test", Validity::days_from_now(10).unwrap()).unwrap();
        let req = ClusterCertRequest {
            cluster: "eu-west".into(),
            extra_sans: vec!["127.0.0.1".into(), "Bridge.Example.com".into()],
            validity: Validity::days_from_now(1).unwrap(),
        };
        let pair = issue_cluster_cert(&ca.cert_pem, &ca.key_pem, &req).unwrap();
        let chain = parse_certs_pem(&pair.cert_pem, "leaf").unwrap();
        assert_eq!(chain.len(), 2);
        let ca_der = parse_certs_pem(&ca.cert_pem, "ca").unwrap();
        assert_eq!(chain[1], ca_der[0]);
        let info = crate::cert_info(&chain[0]).unwrap();
        assert_eq!(info.cluster, Ok("eu-west".to_string()));
        assert!(!info.is_ca);
        assert!(crate::cert_info(&chain[1]).unwrap().is_ca);
        assert!(
            info.issuer.contains("meshd mesh CA test"),
            "{}",
            info.issuer
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ca = create_ca("test", Validity::days_from_now(10).unwrap()).unwrap();
        let mut req = ClusterCertRequest {
            cluster: "a/b".into(),
            extra_sans: vec![],
            validity: Validity::days_from_now(1).unwrap(),
        };
        assert!(matches!(
            issue_cluster_cert(&ca.cert_pem, &ca.key_pem, &req),
            Err(CertError::InvalidClusterName { .. })
        ));
        req.cluster = "ok".into();
        req.extra_sans = vec!["not a name!".into()];
        assert!(matches!(
            issue_cluster_cert(&ca.cert_pem, &ca.key_pem, &req),
            Err(CertError::InvalidSan { .. })
        ));
        req.extra_sans.clear();
        let other = create_ca("other", Validity::days_from_now(10).unwrap()).unwrap();
        assert!(matches!(
            issue_cluster_cert(&ca.cert_pem, &other.key_pem, &req),
            Err(CertError::CaKeyMismatch { .. })
        ));
        assert!(matches!(
            issue_cluster_cert("garbage", &ca.key_pem, &req),
            Err(CertError::BadPem { .. })
        ));
        for days in [0, MAX_DAYS + 1, u32::MAX] {
            assert!(matches!(
                Validity::days_from_now(days),
                Err(CertError::InvalidValidity { .. })
            ));
        }
        req.validity = Validity {
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 86_400),
        };
        assert!(matches!(
            issue_cluster_cert(&ca.cert_pem, &ca.key_pem, &req),
            Err(CertError::InvalidValidity { .. })
        ));
    }
}
