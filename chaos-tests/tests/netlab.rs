//! The namespace lab itself (as root; skipped with a message otherwise): namespaces and
//! the bridge are removed on drop even when the test panics, stale ones of dead processes
//! are removed at start, and an nftables partition really stops traffic between two
//! namespaces while leaving the host path alone.

use std::net::SocketAddr;
use std::process::Command;

use meshd_chaos::net::{NetLab, NS_PREFIX};

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

fn available() -> bool {
    match NetLab::available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

#[test]
fn lab_is_removed_on_panic_and_stale_ones_at_start() {
    if !available() {
        return;
    }
    let names = std::thread::spawn(|| {
        let lab = NetLab::new(2).expect("lab");
        let names: Vec<String> = (0..2)
            .map(|i| lab.namespace(i).unwrap().to_string())
            .collect();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("scenario failed");
        }));
        assert!(r.is_err());
        names
    })
    .join()
    .unwrap();
    let list = namespaces();
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind: {list}");
    }

    // A namespace of a process that is gone (pid 0 never names a live test) is stale.
    let stale = format!("{NS_PREFIX}0-7-0");
    Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    NetLab::cleanup_stale();
    assert!(!namespaces().contains(&stale), "stale namespace kept");
}

#[test]
fn nft_partition_cuts_between_namespaces_only() {
    if !available() {
        return;
    }
    let lab = NetLab::new(2).expect("lab");
    let ns1 = lab.namespace(1).unwrap().to_string();
    let ip1 = lab.ip(1);
    // A UDP echo in namespace 1 (socat-free: a tiny python one-liner).
    let mut echo = Command::new("ip")
        .args(["netns", "exec", &ns1, "python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{ip1}',9999))\nwhile True:\n d,a=s.recvfrom(100)\n s.sendto(d,a)"
        ))
        .spawn()
        .unwrap();
    let target: SocketAddr = format!("{ip1}:9999").parse().unwrap();
    let ns0 = lab.namespace(0).unwrap().to_string();
    let probe = |ns: &str| -> bool {
        // Send from namespace `ns` (or the host when empty) and wait for the echo.
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.3)\nfor _ in range(10):\n s.sendto(b'x',('{ip1}',9999))\n try:\n  s.recvfrom(10); sys.exit(0)\n except Exception: pass\nsys.exit(1)"
        );
        let mut cmd = if ns.is_empty() {
            Command::new("python3")
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        };
        cmd.args(["-c", &script]).status().unwrap().success()
    };
    assert!(probe(&ns0), "no echo before the partition");
    lab.drop_udp(0, target, None).expect("rule");
    assert!(!probe(&ns0), "the partition did not hold");
    assert!(probe(""), "the host path must stay open");
    lab.clear_rules(0).expect("clear");
    assert!(probe(&ns0), "no echo after the heal");
    let _ = echo.kill();
    let _ = echo.wait();
}
