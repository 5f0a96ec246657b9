//! Real QUIC handshakes over loopback (quinn + rustls, ring) between endpoints whose
//! certificates this crate issued: mutual auth, every refusal reason, rotation.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshd_certs::{
    cert_info, client_config, issue_to_dir, peer_cluster, server_config, server_name,
    AllowedClusters, CertError, CertPaths, ClusterCertRequest, LoadPolicy, ReloadingCerts,
    Validity, ALPN,
};
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

const DAY: Duration = Duration::from_secs(86_400);
const WAIT: Duration = Duration::from_secs(10);

// ---------- fixtures ----------

fn init_ca(dir: &Path, mesh: &str) {
    meshd_certs::init_ca_dir(dir, mesh, Validity::days_from_now(30).unwrap(), false).unwrap();
}

fn issue(ca_dir: &Path, cluster: &str, validity: Validity, out: &Path) {
    let req = ClusterCertRequest {
        cluster: cluster.into(),
        extra_sans: vec!["127.0.0.1".into()],
        validity,
    };
    issue_to_dir(ca_dir, &req, out).unwrap();
}

fn days(n: u32) -> Validity {
    Validity::days_from_now(n).unwrap()
}

fn expired() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - 10 * DAY,
        not_after: now - DAY,
    }
}

fn not_yet_valid() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now + DAY,
        not_after: now + 10 * DAY,
    }
}

/// One mesh CA in `dir/ca`, with alpha and beta issued into `dir/ca` too.
fn mesh(dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    init_ca(&ca, "test");
    issue(&ca, "alpha", days(5), &ca);
    issue(&ca, "beta", days(5), &ca);
    ca
}

fn open(dir: &Path, cluster: &str) -> Arc<ReloadingCerts> {
    ReloadingCerts::open(CertPaths::in_dir(dir, cluster)).unwrap()
}

fn open_lenient(dir: &Path, cluster: &str) -> Arc<ReloadingCerts> {
    ReloadingCerts::open_with(
        CertPaths::in_dir(dir, cluster),
        LoadPolicy {
            require_current: false,
        },
    )
    .unwrap()
}

/// Concatenates the CA files of `dirs` into `into/ca.pem` (a CA bundle).
fn bundle(into: &Path, dirs: &[&Path]) {
    let mut pem = String::new();
    for d in dirs {
        pem.push_str(&std::fs::read_to_string(d.join("ca.pem")).unwrap());
    }
    std::fs::create_dir_all(into).unwrap();
    std::fs::write(into.join("ca.pem"), pem).unwrap();
}

fn copy_cluster(from: &Path, to: &Path, cluster: &str) {
    std::fs::create_dir_all(to).unwrap();
    for ext in ["pem", "key"] {
        std::fs::copy(
            from.join(format!("{cluster}.{ext}")),
            to.join(format!("{cluster}.{ext}")),
        )
        .unwrap();
    }
}

// ---------- endpoints ----------

type Accepted = Result<(String, quinn::Connection), String>;

struct Server {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<Accepted>,
    _endpoint: quinn::Endpoint,
}

/// A bridge-like server: every accepted connection reports its peer cluster (or the
/// handshake error) and echoes every bidirectional stream.
fn server(certs: Arc<ReloadingCerts>, allowed: Arc<AllowedClusters>) -> Server {
    let tls = server_config(certs, allowed).unwrap();
    let quic = QuicServerConfig::try_from(Arc::new(tls)).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        let name = peer_name(&conn);
                        assert_eq!(alpn(&conn), ALPN);
                        let _ = tx.send(Ok((name, conn.clone())));
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            let Ok(data) = recv.read_to_end(1 << 16).await else {
                                break;
                            };
                            let _ = send.write_all(&data).await;
                            let _ = send.finish();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    Server {
        addr,
        accepted: rx,
        _endpoint: endpoint,
    }
}

impl Server {
    async fn next(&mut self) -> Accepted {
        tokio::time::timeout(WAIT, self.accepted.recv())
            .await
            .expect("server saw no handshake")
            .expect("server task ended")
    }
}

fn peer_chain(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    *conn
        .peer_identity()
        .expect("peer identity")
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("rustls peer identity")
}

fn peer_name(conn: &quinn::Connection) -> String {
    peer_cluster(&peer_chain(conn)).unwrap()
}

fn peer_serial(conn: &quinn::Connection) -> String {
    cert_info(&peer_chain(conn)[0]).unwrap().serial
}

fn alpn(conn: &quinn::Connection) -> Vec<u8> {
    conn.handshake_data()
        .expect("handshake data")
        .downcast::<HandshakeData>()
        .expect("rustls handshake data")
        .protocol
        .expect("ALPN negotiated")
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn quic_client(tls: rustls::ClientConfig) -> quinn::ClientConfig {
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(Arc::new(tls)).unwrap()))
}

/// Dials `addr` expecting `expected`; Ok only when the connection is up on both sides
/// (an echo round trip succeeded), else the client's error text.
async fn dial(
    ep: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    expected: &str,
) -> Result<quinn::Connection, String> {
    let connecting = ep
        .connect_with(config, addr, &server_name(expected))
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(WAIT, connecting)
        .await
        .map_err(|_| "client handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    // In TLS 1.3 the client finishes before the server has checked its certificate: a
    // round trip proves the server accepted it (or yields the server's close).
    match tokio::time::timeout(WAIT, echo(&conn, b"ping")).await {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(e)) => Err(match conn.close_reason() {
            Some(reason) => reason.to_string(),
            None => e,
        }),
        Err(_) => Err("echo timed out".to_string()),
    }
}

async fn echo(conn: &quinn::Connection, data: &[u8]) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(data).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let back = recv.read_to_end(1 << 16).await.map_err(|e| e.to_string())?;
    if back == data {
        Ok(())
    } else {
        Err("echo mismatch".into())
    }
}

fn alpha_beta() -> Arc<AllowedClusters> {
    AllowedClusters::new(["alpha", "beta"])
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in {haystack:?}"
    );
}

// ---------- tests ----------

#[tokio::test]
async fn good_mutual_handshake_each_side_sees_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let mut srv = server(open(&ca, "alpha"), alpha_beta());
    let beta = open(&ca, "beta");
    let ep = client_endpoint();
    let conn = dial(
        &ep,
        quic_client(client_config(beta, "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap();
    assert_eq!(peer_name(&conn), "alpha");
    assert_eq!(alpn(&conn), ALPN);
    let (name, _server_side) = srv.next().await.unwrap();
    assert_eq!(name, "beta");
}

#[tokio::test]
async fn client_from_another_ca_is_refused_by_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let other = tmp.path().join("other");
    init_ca(&other, "evil");
    issue(&other, "beta", days(5), &other);
    // The impostor trusts the real CA (so it accepts alpha) but its cert is from `other`.
    let imp = tmp.path().join("imp");
    bundle(&imp, &[&ca, &other]);
    copy_cluster(&other, &imp, "beta");
    let mut srv = server(open(&ca, "alpha"), alpha_beta());
    let ep = client_endpoint();
    let res = dial(
        &ep,
        quic_client(client_config(open(&imp, "beta"), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await;
    // Both sides get the reason: the server's handshake error, and the client through the
    // CONNECTION_CLOSE reason.
    assert_contains(&res.unwrap_err(), "not issued by the mesh CA");
    assert_contains(&srv.next().await.unwrap_err(), "not issued by the mesh CA");
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let other = tmp.path().join("other");
    init_ca(&other, "evil");
    issue(&other, "alpha", days(5), &other);
    let imp = tmp.path().join("imp");
    bundle(&imp, &[&ca, &other]);
    copy_cluster(&other, &imp, "alpha");
    let mut srv = server(open(&imp, "alpha"), alpha_beta());
    let ep = client_endpoint();
    let err = dial(
        &ep,
        quic_client(client_config(open(&ca, "beta"), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap_err();
    assert_contains(&err, "not issued by the mesh CA");
    // The server saw the client's alert: no connection was established.
    assert!(srv.next().await.is_err());
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let old = tmp.path().join("old");
    bundle(&old, &[&ca]);
    issue(&ca, "beta", expired(), &old);
    issue(&ca, "alpha", expired(), &old);
    let future = tmp.path().join("future");
    bundle(&future, &[&ca]);
    issue(&ca, "beta", not_yet_valid(), &future);

    // An expired certificate does not load by default.
    assert!(matches!(
        ReloadingCerts::open(CertPaths::in_dir(&old, "beta")),
        Err(CertError::Expired { .. })
    ));

    // Expired client -> the server refuses.
    let mut srv = server(open(&ca, "alpha"), alpha_beta());
    let ep = client_endpoint();
    let res = dial(
        &ep,
        quic_client(client_config(open_lenient(&old, "beta"), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await;
    assert_contains(&res.unwrap_err(), "certificate expired at");
    assert_contains(&srv.next().await.unwrap_err(), "certificate expired at");

    // Not yet valid client -> the server refuses.
    let res = dial(
        &ep,
        quic_client(client_config(open_lenient(&future, "beta"), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await;
    assert_contains(&res.unwrap_err(), "not valid before");
    assert_contains(&srv.next().await.unwrap_err(), "not valid before");

    // Expired server -> the client refuses.
    let old_srv = server(open_lenient(&old, "alpha"), alpha_beta());
    let err = dial(
        &ep,
        quic_client(client_config(open(&ca, "beta"), "alpha").unwrap()),
        old_srv.addr,
        "alpha",
    )
    .await
    .unwrap_err();
    assert_contains(&err, "certificate expired at");
}

#[tokio::test]
async fn unknown_cluster_is_refused_until_the_topology_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    issue(&ca, "gamma", days(5), &ca);
    let allowed = alpha_beta();
    let mut srv = server(open(&ca, "alpha"), allowed.clone());
    let ep = client_endpoint();
    let gamma = open(&ca, "gamma");
    let res = dial(
        &ep,
        quic_client(client_config(gamma.clone(), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await;
    assert_contains(
        &res.unwrap_err(),
        "cluster \"gamma\" is not in the topology",
    );
    assert_contains(
        &srv.next().await.unwrap_err(),
        "cluster \"gamma\" is not in the topology",
    );

    // A topology reload adds gamma: the next handshake is admitted, no restart.
    allowed.set(["alpha", "beta", "gamma"]);
    dial(
        &ep,
        quic_client(client_config(gamma, "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap();
    assert_eq!(srv.next().await.unwrap().0, "gamma");
}

#[tokio::test]
async fn client_refuses_a_valid_member_that_is_not_the_expected_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let mut srv = server(open(&ca, "alpha"), alpha_beta());
    let ep = client_endpoint();
    let err = dial(
        &ep,
        quic_client(client_config(open(&ca, "beta"), "gamma").unwrap()),
        srv.addr,
        "gamma",
    )
    .await
    .unwrap_err();
    assert_contains(
        &err,
        "expected peer cluster \"gamma\", the certificate says \"alpha\"",
    );
    assert!(srv.next().await.is_err());
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let mut srv = server(open(&ca, "alpha"), alpha_beta());
    // A client that verifies the server properly but has no certificate to present.
    let verifier = Arc::new(meshd_certs::MeshServerVerifier::new(
        open(&ca, "beta"),
        "alpha",
    ));
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let ep = client_endpoint();
    let res = dial(&ep, quic_client(tls), srv.addr, "alpha").await;
    assert_contains(&res.unwrap_err(), "peer sent no certificates");
    assert_contains(&srv.next().await.unwrap_err(), "peer sent no certificates");
}

#[tokio::test]
async fn rotation_new_handshakes_get_the_new_cert_old_connections_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let alpha = open(&ca, "alpha");
    let beta = open(&ca, "beta");
    let mut srv = server(alpha.clone(), alpha_beta());
    let ep = client_endpoint();
    let old = dial(
        &ep,
        quic_client(client_config(beta.clone(), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap();
    let (_, old_server_side) = srv.next().await.unwrap();
    let old_alpha_serial = peer_serial(&old);
    let old_beta_serial = peer_serial(&old_server_side);
    let old_not_after = alpha.current().info.not_after;

    // Rotate both sides by replacing the files, then reload.
    issue(&ca, "alpha", days(9), &ca);
    issue(&ca, "beta", days(9), &ca);
    let loaded = alpha.reload().unwrap();
    beta.reload().unwrap();
    assert_eq!(alpha.generation(), 1);
    assert!(loaded.info.not_after > old_not_after + 3 * DAY);

    let new = dial(
        &ep,
        quic_client(client_config(beta.clone(), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap();
    let (_, new_server_side) = srv.next().await.unwrap();
    assert_ne!(peer_serial(&new), old_alpha_serial);
    assert_eq!(peer_serial(&new), loaded.info.serial);
    assert_ne!(peer_serial(&new_server_side), old_beta_serial);
    assert_eq!(peer_serial(&new_server_side), beta.current().info.serial);
    // The connection made before the rotation is unaffected.
    echo(&old, b"still here").await.unwrap();
    assert_eq!(peer_serial(&old), old_alpha_serial);
}

#[tokio::test]
async fn bad_new_files_are_rejected_and_the_old_cert_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let alpha = open(&ca, "alpha");
    let serial = alpha.current().info.serial.clone();
    let mut srv = server(alpha.clone(), alpha_beta());
    let pem = ca.join("alpha.pem");
    let key = ca.join("alpha.key");
    let good_pem = std::fs::read(&pem).unwrap();

    // Garbage PEM.
    std::fs::write(
        &pem,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(matches!(alpha.reload(), Err(CertError::BadPem { .. })));
    std::fs::write(&pem, b"hello").unwrap();
    assert!(matches!(alpha.reload(), Err(CertError::BadPem { .. })));
    // A key that is not the certificate's.
    std::fs::write(&pem, &good_pem).unwrap();
    let good_key = std::fs::read(&key).unwrap();
    std::fs::copy(ca.join("beta.key"), &key).unwrap();
    assert!(matches!(alpha.reload(), Err(CertError::KeyMismatch { .. })));
    std::fs::write(&key, &good_key).unwrap();
    // Another cluster's files under this name.
    std::fs::copy(ca.join("beta.pem"), &pem).unwrap();
    std::fs::copy(ca.join("beta.key"), &key).unwrap();
    assert!(matches!(
        alpha.reload(),
        Err(CertError::ClusterChanged { .. })
    ));
    // An expired certificate.
    issue(&ca, "alpha", expired(), &ca);
    assert!(matches!(alpha.reload(), Err(CertError::Expired { .. })));

    assert_eq!(alpha.generation(), 0);
    assert_eq!(alpha.current().info.serial, serial);
    let conn = dial(
        &client_endpoint(),
        quic_client(client_config(open(&ca, "beta"), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap();
    assert_eq!(peer_serial(&conn), serial);
    assert_eq!(srv.next().await.unwrap().0, "beta");
}

#[tokio::test]
async fn watcher_picks_up_replaced_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = mesh(tmp.path());
    let alpha = open(&ca, "alpha");
    let old_serial = alpha.current().info.serial.clone();
    let _watcher = alpha.watch(Duration::from_millis(20));
    let mut srv = server(alpha.clone(), alpha_beta());
    issue(&ca, "alpha", days(7), &ca);
    let waiting = alpha.clone();
    let reloaded = tokio::task::spawn_blocking(move || waiting.wait_for_generation(1, WAIT))
        .await
        .unwrap();
    assert!(reloaded, "watcher never reloaded");
    let new_serial = alpha.current().info.serial.clone();
    assert_ne!(new_serial, old_serial);
    let conn = dial(
        &client_endpoint(),
        quic_client(client_config(open(&ca, "beta"), "alpha").unwrap()),
        srv.addr,
        "alpha",
    )
    .await
    .unwrap();
    assert_eq!(peer_serial(&conn), new_serial);
    srv.next().await.unwrap();
}

#[tokio::test]
async fn ca_rotation_through_a_bundle_without_downtime() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (tmp.path().join("ca1"), tmp.path().join("ca2"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init_ca(&ca1, "test");
    init_ca(&ca2, "test");
    bundle(&a, &[&ca1]);
    bundle(&b, &[&ca1]);
    issue(&ca1, "alpha", days(5), &a);
    issue(&ca1, "beta", days(5), &b);
    let alpha = open(&a, "alpha");
    let beta = open(&b, "beta");
    let mut srv = server(alpha.clone(), alpha_beta());
    let ep = client_endpoint();
    let link = |beta: Arc<ReloadingCerts>| quic_client(client_config(beta, "alpha").unwrap());

    // 1. Every bridge trusts old + new CA.
    bundle(&a, &[&ca1, &ca2]);
    bundle(&b, &[&ca1, &ca2]);
    alpha.reload().unwrap();
    beta.reload().unwrap();
    // 2. alpha moves to the new CA; beta still has an old-CA certificate: both accepted.
    issue(&ca2, "alpha", days(5), &a);
    alpha.reload().unwrap();
    let conn = dial(&ep, link(beta.clone()), srv.addr, "alpha")
        .await
        .unwrap();
    assert!(cert_info(&peer_chain(&conn)[0])
        .unwrap()
        .issuer
        .contains("meshd mesh CA test"));
    assert_eq!(srv.next().await.unwrap().0, "beta");
    // 3. beta moves too, then the old CA is dropped everywhere.
    issue(&ca2, "beta", days(5), &b);
    beta.reload().unwrap();
    bundle(&a, &[&ca2]);
    bundle(&b, &[&ca2]);
    alpha.reload().unwrap();
    beta.reload().unwrap();
    dial(&ep, link(beta.clone()), srv.addr, "alpha")
        .await
        .unwrap();
    assert_eq!(srv.next().await.unwrap().0, "beta");
    // A certificate from the retired CA is now refused.
    let stale = tmp.path().join("stale");
    bundle(&stale, &[&ca1, &ca2]);
    issue(&ca1, "beta", days(5), &stale);
    let err = dial(&ep, link(open(&stale, "beta")), srv.addr, "alpha")
        .await
        .unwrap_err();
    assert_contains(&err, "not issued by the mesh CA");
    assert_contains(&srv.next().await.unwrap_err(), "not issued by the mesh CA");
}
