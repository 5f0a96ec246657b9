//! `meshd topology check`: run the real binary on a good and a bad file.

use std::process::Command;

const GOOD: &str = include_str!("../topology/tests/data/example.toml");

const BAD: &str = r#"[mesh]
name = ""

[[cluster]]
name = "eu-west"
region = "eu-west-1"
cloud = "aws"
bridge = "bridge.eu-west.example:0"
proxy = "https://events.eu-west.example"
zone = "a"

[[cluster]]
name = "us-east"
region = "us-east-1"
cloud = "aws"
bridge = "bridge.us-east.example:7443"
proxy = "https://events.us-east.example"

[[link]]
between = ["eu-west", "us-eats"]
cost = 80

[[policy]]
topics = "payments.*"
clusters = ["eu-central"]
"#;

fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["topology", "check"])
        .arg(file)
        .env("MESHD_LOG", "error")
        .output()
        .expect("run meshd")
}

#[test]
fn check_accepts_a_good_file_and_prints_routes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mesh.toml");
    std::fs::write(&file, GOOD).expect("write");
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let digest = meshd_topology::Topology::parse(GOOD)
        .expect("valid")
        .digest();
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("ok: mesh acme, 4 clusters, 4 links, digest {digest}")
    );
    // One table per cluster, and us-east reaches ap-south via eu-west at cost 207.
    assert_eq!(stdout.matches("routes from ").count(), 4);
    let us_east = stdout
        .split("routes from us-east:")
        .nth(1)
        .expect("us-east table");
    let ap = us_east
        .lines()
        .find(|l| l.trim_start().starts_with("ap-south"))
        .expect("route to ap-south");
    assert!(ap.contains("next hop eu-west"), "{ap}");
    assert!(ap.contains("cost    207"), "{ap}");
    assert!(
        ap.contains("us-east > eu-west > eu-central > ap-south"),
        "{ap}"
    );
}

#[test]
fn check_reports_every_problem_with_file_line_col() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, BAD).expect("write");
    let out = check(&file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display().to_string();
    let want = [
        format!("{f}:2:8: mesh name \"\" is invalid: it must not be empty"),
        format!("{f}:8:10: cluster \"eu-west\": bad bridge address \"bridge.eu-west.example:0\": port \"0\" is not a number from 1 to 65535"),
        format!("{f}:10:1: unknown field `zone` in cluster \"eu-west\"; expected one of: name, region, cloud, bridge, proxy"),
        format!("{f}:13:8: the mesh is not connected: cluster \"us-east\" cannot reach cluster \"eu-west\" over the declared links"),
        format!("{f}:20:23: link names unknown cluster \"us-eats\" (did you mean \"us-east\"?)"),
        format!("{f}:25:13: policy for \"payments.*\" names unknown cluster \"eu-central\""),
        format!("{f}: 6 problem(s)"),
    ];
    let got: Vec<&str> = stderr.lines().collect();
    assert_eq!(got, want);
}

#[test]
fn check_of_a_missing_file_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = check(&dir.path().join("nope.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading topology file"));
}
