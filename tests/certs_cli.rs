//! `meshd certs init/issue/show` as a user runs them: files, key permissions, refusal to
//! overwrite a CA, and that the issued files load as a bridge's certificate set.

use std::path::Path;
use std::process::{Command, Output};

fn meshd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(args)
        .env("MESHD_LOG", "warn")
        .output()
        .expect("running meshd")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "meshd failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "meshd unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_issue_show_and_refuse_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");

    let out = ok(&meshd(&[
        "certs",
        "init",
        "--dir",
        s(&dir),
        "--mesh",
        "prod",
        "--days",
        "30",
    ]));
    assert!(out.contains("mesh CA \"prod\""), "{out}");
    let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();
    assert!(String::from_utf8_lossy(&ca_pem).contains("BEGIN CERTIFICATE"));
    assert!(std::fs::read_to_string(dir.join("ca.key"))
        .unwrap()
        .contains("PRIVATE KEY"));
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    #[cfg(unix)]
    assert_eq!(mode(&dir), 0o700, "the directory of the CA key");
    let ca = meshd_certs::cert_info(
        &meshd_certs::reload::leaf_of(&String::from_utf8_lossy(&ca_pem)).unwrap(),
    )
    .unwrap();
    assert!(ca.is_ca);
    assert!(ca.subject.contains("meshd mesh CA prod"), "{}", ca.subject);

    // A second init refuses and leaves the CA alone.
    let err = failed(&meshd(&["certs", "init", "--dir", s(&dir)]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_pem);

    // Issue a cluster certificate into another directory.
    let out_dir = tmp.path().join("eu");
    let out = ok(&meshd(&[
        "certs",
        "issue",
        "--dir",
        s(&dir),
        "--cluster",
        "eu-west",
        "--days",
        "7",
        "--out",
        s(&out_dir),
        "--san",
        "127.0.0.1",
        "--san",
        "bridge.eu.example",
    ]));
    assert!(out.contains("cluster \"eu-west\""), "{out}");
    let pem = std::fs::read_to_string(out_dir.join("eu-west.pem")).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf + CA");
    #[cfg(unix)]
    assert_eq!(mode(&out_dir.join("eu-west.key")), 0o600);
    #[cfg(unix)]
    assert_eq!(mode(&out_dir), 0o700, "the directory of the cluster key");
    let leaf = meshd_certs::cert_info(&meshd_certs::reload::leaf_of(&pem).unwrap()).unwrap();
    assert_eq!(leaf.cluster, Ok("eu-west".to_string()));
    let days = leaf
        .not_after
        .duration_since(leaf.not_before)
        .unwrap()
        .as_secs()
        / 86_400;
    assert_eq!(days, 7);

    // The files form a loadable bridge certificate set.
    let certs = meshd_certs::ReloadingCerts::open(meshd_certs::CertPaths {
        ca: dir.join("ca.pem"),
        cert: out_dir.join("eu-west.pem"),
        key: out_dir.join("eu-west.key"),
    })
    .unwrap();
    assert_eq!(certs.cluster(), "eu-west");

    let out = ok(&meshd(&["certs", "show", s(&out_dir.join("eu-west.pem"))]));
    assert!(out.contains("cluster    eu-west"), "{out}");
    assert!(out.contains(&leaf.serial), "{out}");

    // Bad cluster name.
    let err = failed(&meshd(&[
        "certs",
        "issue",
        "--dir",
        s(&dir),
        "--cluster",
        "eu/west",
    ]));
    assert!(err.contains("cluster name \"eu/west\" is invalid"), "{err}");

    // --force replaces the CA.
    ok(&meshd(&["certs", "init", "--dir", s(&dir), "--force"]));
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    #[cfg(unix)]
    assert_eq!(mode(&dir), 0o700, "the directory of the CA key");
    // The old cluster certificate no longer loads against the new CA.
    let err = meshd_certs::ReloadingCerts::open(meshd_certs::CertPaths {
        ca: dir.join("ca.pem"),
        cert: out_dir.join("eu-west.pem"),
        key: out_dir.join("eu-west.key"),
    })
    .unwrap_err();
    assert!(matches!(err, meshd_certs::CertError::UnknownCa), "{err}");
}

#[test]
fn issue_without_a_ca_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let err = failed(&meshd(&[
        "certs",
        "issue",
        "--dir",
        s(tmp.path()),
        "--cluster",
        "x",
    ]));
    assert!(err.contains("ca.pem"), "{err}");
}
