//! A real `etcd` (Debian `etcd-server`, `/usr/bin/etcd`) for tests: started on free
//! loopback ports with a temporary data directory, ready once a status call answers,
//! killed when the guard drops (also when a test panics). It can be paused (SIGSTOP),
//! resumed, and killed and restarted on the same data directory and ports.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::time::{timeout, Instant};

/// Why the harness could not provide an etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// Spawning, signalling or the temp dir failed.
    #[error("etcd harness i/o: {0}")]
    Io(#[from] std::io::Error),
    /// etcd did not answer a status call in time, or exited.
    #[error("etcd not ready: {reason}; log:\n{log}")]
    NotReady {
        /// What went wrong.
        reason: String,
        /// The tail of etcd's log.
        log: String,
    },
}

/// A running etcd, killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// More loopback addresses etcd also takes clients on (same port), e.g. `127.0.0.2`:
    /// a test can cut one client off with a firewall rule on its address alone.
    aliases: Vec<String>,
}

const BINARY: &str = "/usr/bin/etcd";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd on free ports and waits until it answers.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with_aliases(&[]).await
    }

    /// Like [`EtcdServer::start`], also taking clients on each of `aliases` (loopback
    /// addresses such as `127.0.0.2`) at the same port; see [`EtcdServer::endpoint_at`].
    pub async fn start_with_aliases(aliases: &[&str]) -> Result<Self, HarnessError> {
        let mut last = None;
        // A port picked free can be taken before etcd binds it: try a few times.
        for _ in 0..3 {
            let mut server = Self {
                child: None,
                dir: tempfile::tempdir()?,
                client_port: free_port()?,
                peer_port: free_port()?,
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::NotReady {
            reason: "no attempt made".into(),
            log: String::new(),
        }))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URL on one of the aliases given to [`EtcdServer::start_with_aliases`].
    pub fn endpoint_at(&self, alias: &str) -> String {
        format!("http://{alias}:{}", self.client_port)
    }

    /// The client port (the same on every address).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The etcd process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last 4 KiB of etcd's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let mut start = text.len().saturating_sub(4096);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }

    async fn launch(&mut self) -> Result<(), HarnessError> {
        let data = self.dir.path().join("data");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let client = self.endpoint();
        let listen = std::iter::once(client.clone())
            .chain(self.aliases.iter().map(|a| self.endpoint_at(a)))
            .collect::<Vec<_>>()
            .join(",");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(BINARY)
            .arg("--name=default")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // Short raft timers: fast start, and a lease minimum well below 1 s.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        if let Err(e) = self.wait_ready().await {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let opts = ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(HarnessError::NotReady {
                        reason: format!("etcd exited: {status}"),
                        log: self.log_tail(),
                    });
                }
            }
            let attempt = async {
                let mut c = Client::connect([self.endpoint()], Some(opts.clone())).await?;
                c.status().await
            };
            if let Ok(Ok(_)) = timeout(Duration::from_millis(500), attempt).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    reason: format!("no answer within {READY_TIMEOUT:?}"),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: &str) -> Result<(), HarnessError> {
        let pid = self.pid().ok_or_else(|| HarnessError::NotReady {
            reason: "etcd is not running".into(),
            log: String::new(),
        })?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Io(std::io::Error::other(format!(
                "kill -{sig} {pid}: {status}"
            ))))
        }
    }

    /// Freezes etcd (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal("STOP")
    }

    /// Unfreezes etcd (SIGCONT).
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal("CONT")
    }

    /// Kills etcd (SIGKILL) and waits for it to exit; [`EtcdServer::restart`] brings it
    /// back on the same data directory and ports.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again (after [`EtcdServer::kill`]) on the same data dir and ports.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.launch().await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
