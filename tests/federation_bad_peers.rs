//! Bad peers at a bridge's port: a certificate from another CA, a cluster the topology
//! does not name, an expired certificate, and garbage datagrams. Each is refused and
//! logged, nothing is replicated to it, and the bridge keeps serving its good link.

mod common;
mod federation_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{event, eventually, publish, Sink};
use federation_support::*;
use meshd_certs::{CertPaths, LoadPolicy, ReloadingCerts, Validity};
use quinn::crypto::rustls::QuicClientConfig;
use serde_json::json;

/// Dials `addr` as `cluster` with the certificates in `dir` (loaded even if expired) and
/// returns how the connection ended: `Err(reason)` when refused.
async fn dial_as(dir: &Path, cluster: &str, addr: SocketAddr) -> Result<(), String> {
    let certs = ReloadingCerts::open_with(
        CertPaths::in_dir(dir, cluster),
        LoadPolicy {
            require_current: false,
        },
    )
    .map_err(|e| format!("load: {e}"))?;
    let tls = meshd_certs::client_config(certs, "m").map_err(|e| e.to_string())?;
    let quic = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| e.to_string())?;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(
            quinn::ClientConfig::new(Arc::new(quic)),
            addr,
            &meshd_certs::server_name("m"),
        )
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the client may finish before the server judges its certificate; the
    // refusal then arrives as a close.
    match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(e) => Err(e.to_string()),
        Err(_) => Ok(()),
    }
}

/// A certificates dir for `cluster` whose certificate is issued by a second CA, and
/// whose `ca.pem` trusts both CAs (so only the peer's check can refuse it).
fn other_ca_certs(files: &MeshFiles, cluster: &str) -> PathBuf {
    let ca2 = files.dir.path().join("ca2");
    meshd_certs::init_ca_dir(&ca2, "test", Validity::days_from_now(30).unwrap(), false).unwrap();
    let dir = files.dir.path().join("wrong-ca");
    issue(&ca2, cluster, &dir, Validity::days_from_now(30).unwrap());
    let bundle = std::fs::read_to_string(files.ca.join("ca.pem")).unwrap()
        + &std::fs::read_to_string(ca2.join("ca.pem")).unwrap();
    std::fs::write(dir.join("ca.pem"), bundle).unwrap();
    dir
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .map(|s| s.contains(needle))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_and_logged_while_the_good_link_serves() {
    let files = MeshFiles::new(&["a", "m"], &[("a", "m", 1)], &[]);
    let c = common::client();
    let log = files.dir.path().join("m.log");
    let a = files.start("a");
    let m = files.start_custom("m", &files.certs, &files.topology, Some(&log));
    topic(&c, &a, "orders", 1).await;
    topic(&c, &m, "orders", 1).await;
    let sink = Sink::start(|_, _| 200).await;
    subscribe(&c, &a, "all", "orders", None, &sink.url).await;
    wait_connected(&c, &m, "a").await;
    wait_interest(&c, &m, "a", "a", "orders").await;
    let m_addr = files.bind["m"];

    // 1. Another CA (the client trusts both CAs, so only m's check can refuse it).
    let wrong = other_ca_certs(&files, "b");
    let r = dial_as(&wrong, "b", m_addr).await;
    assert!(r.is_err(), "a certificate from another CA was accepted");

    // 2. A cluster the topology does not name, with a good certificate.
    let unknown = files.dir.path().join("unknown");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::copy(files.ca.join("ca.pem"), unknown.join("ca.pem")).unwrap();
    issue(
        &files.ca,
        "zz",
        &unknown,
        Validity::days_from_now(30).unwrap(),
    );
    let r = dial_as(&unknown, "zz", m_addr).await;
    assert!(r.is_err(), "an unknown cluster was accepted");

    // 3. An expired certificate of a known cluster.
    let expired = files.dir.path().join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    std::fs::copy(files.ca.join("ca.pem"), expired.join("ca.pem")).unwrap();
    let now = SystemTime::now();
    issue(
        &files.ca,
        "a",
        &expired,
        Validity {
            not_before: now - Duration::from_secs(10 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        },
    );
    let r = dial_as(&expired, "a", m_addr).await;
    assert!(r.is_err(), "an expired certificate was accepted");

    // 4. Garbage datagrams, some shaped like QUIC long headers.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..2000usize {
        let mut d = vec![0u8; 1 + (i * 37) % 1300];
        for b in d.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if i % 2 == 0 {
            d[0] = 0xc0 | (d[0] & 0x0f);
        }
        let _ = sock.send_to(&d, m_addr);
    }

    // Each refusal is logged with its reason.
    eventually("m logged the refusals", Duration::from_secs(10), || async {
        (log_has(&log, "not issued by the mesh CA")
            && log_has(&log, "\"zz\" is not in the topology")
            && log_has(&log, "expired"))
        .then_some(())
    })
    .await;

    // The good link still serves, and nothing went anywhere else.
    let events: Vec<_> = (0..50)
        .map(|i| event(&format!("e{i}"), "t", None, json!({})))
        .collect();
    publish(&c, &m.url, "orders", &events).await;
    eventually("a gets m's events", Duration::from_secs(15), || async {
        (unique_ids(&sink).len() >= 50).then_some(())
    })
    .await;
    let status = mesh(&c, &m).await;
    let links = status["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{status}");
    assert_eq!(links[0]["peer"], "a");
    assert_eq!(links[0]["state"], "connected");
    assert_eq!(links[0]["events_sent"], 50);
    assert_eq!(
        links[0]["connections"], 1,
        "the good link never dropped: {status}"
    );
    let learned = status["learned_interest"].as_object().unwrap();
    assert_eq!(learned.keys().collect::<Vec<_>>(), vec!["a"], "{status}");
}

/// A bridge that its peer refuses (its certificate is from another CA) shows the peer's
/// reason in its link's `last_error`, not only "connection lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dialer_shows_why_in_its_link_state() {
    let files = MeshFiles::new(&["a", "m"], &[("a", "m", 1)], &[]);
    let c = common::client();
    // a ("a" < "m", so a dials) trusts both CAs, but its certificate is from the other.
    let wrong = other_ca_certs(&files, "a");
    let _m = files.start("m");
    let a = files.start_with_certs("a", &wrong);
    let error = eventually(
        "a's link says why m refused it",
        Duration::from_secs(20),
        || async {
            let l = link(&c, &a, "m").await;
            let e = l["last_error"].as_str().unwrap_or_default().to_string();
            // The TLS refusal arrives as the peer's close (a crypto error with the alert).
            (e.contains("handshake") || e.contains("certificate")).then_some(e)
        },
    )
    .await;
    assert_ne!(link(&c, &a, "m").await["state"], "connected", "{error}");
}

/// A node started as `a` with `b`'s certificate (copied over a.pem/a.key) refuses to start
/// and says which cluster the certificate names; it used to start and only the peer
/// refused it.
#[test]
fn a_node_with_another_clusters_certificate_refuses_to_start() {
    let files = MeshFiles::new(&["a", "b"], &[("a", "b", 10)], &[]);
    let dir = files.dir.path().join("swapped");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(files.certs.join("ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::copy(files.certs.join("b.pem"), dir.join("a.pem")).unwrap();
    std::fs::copy(files.certs.join("b.key"), dir.join("a.key")).unwrap();
    let data = files.data_dir("a");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "a",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--topology")
        .arg(&files.topology)
        .arg("--certs-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "it must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is for cluster \"b\"") && err.contains("runs as cluster \"a\""),
        "{err}"
    );
}
