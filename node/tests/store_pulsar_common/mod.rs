//! Test support: a real `pulsar-lite` broker (PyPI package `pulsar-lite`) started on a
//! free loopback port with its own data directory and killed when the guard drops (also
//! on panic). Shared by the node's Pulsar store tests and the root `pulsar_node` test.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the `pulsar-lite` binary is: `$PULSAR_LITE_BINARY`, or the one shipped inside the
/// installed Python package. Panics with instructions when it is missing.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("PULSAR_LITE_BINARY") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import pulsar_lite.binary_finder as b; print(b.find_pulsar_lite_binary())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            assert!(
                p.is_file(),
                "pulsar-lite binary {} is not a file",
                p.display()
            );
            p
        }
        _ => panic!(
            "the pulsar-lite broker is missing: these tests need a real Pulsar-protocol \
             broker; install it with `pip install pulsar-lite` (scripts/test.sh does) or set \
             PULSAR_LITE_BINARY"
        ),
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A running broker; killed on drop.
pub struct Broker {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its data directory.
    pub db: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker with a fresh data directory on a free port.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        let mut b = Broker::start_at(&db, free_port());
        b._dir = Some(dir);
        b
    }

    /// Starts a broker on `db` and `port` and waits until it accepts connections.
    pub fn start_at(db: &Path, port: u16) -> Broker {
        std::fs::create_dir_all(db).expect("create the broker data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(db.with_extension("log"))
            .expect("broker log file");
        let child = Command::new(binary())
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--db-path")
            .arg(db)
            .arg("--log-level")
            .arg("warn")
            .current_dir(db)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log)
            .spawn()
            .expect("spawn pulsar-lite");
        let mut b = Broker {
            child: Some(child),
            port,
            db: db.to_path_buf(),
            _dir: None,
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(
                &format!("127.0.0.1:{}", self.port).parse().expect("addr"),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "pulsar-lite exited with {status} before listening; log: {}",
                        std::fs::read_to_string(self.db.with_extension("log")).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "pulsar-lite did not listen on port {} within 30 s",
                self.port
            );
            // Polling the port: there is no readiness event to await from another process.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pulsar://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let mut again = Broker::start_at(&self.db, self.port);
        self.child = again.child.take();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
