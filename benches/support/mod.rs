//! Small pieces shared by the bench binaries (publish, proxy, federation): a child process
//! killed on drop, env knobs, wall-clock nanos for send stamps, free loopback TCP ports.
#![allow(dead_code)]

use std::process::Child;
use std::time::{SystemTime, UNIX_EPOCH};

/// A child process killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An integer knob from the environment, `default` when unset or unparsable.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub mod meshd;

/// Starts `nats-server -js` (file storage in `dir`) on a free port; `None` when it is not
/// installed or does not start (the NATS rows of a bench are then skipped).
pub fn start_nats(dir: &std::path::Path) -> Option<(Killed, String)> {
    let port = free_port();
    let child = std::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let guard = Killed(child);
    if !wait_port(port, std::time::Duration::from_secs(10)) {
        return None;
    }
    Some((guard, format!("nats://127.0.0.1:{port}")))
}

/// The URL a `meshd node` child prints on standard output (`cluster NAME node ID URL`);
/// the rest of its output is drained by a thread so the child never blocks on it.
pub fn node_url(child: &mut Child) -> String {
    use std::io::BufRead;
    let out = child.stdout.take().expect("the child's stdout is piped");
    let mut lines = std::io::BufReader::new(out).lines();
    let url = loop {
        let l = lines.next().expect("meshd exited").unwrap();
        if l.starts_with("cluster ") && l.contains(" node ") && l.contains("http://") {
            break l.rsplit(' ').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    url
}

/// Waits until something accepts TCP connections on loopback `port`; false after
/// `timeout`.
pub fn wait_port(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}
