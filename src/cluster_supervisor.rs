//! The children of `meshd cluster up` and their supervision.
//!
//! - **Spawning.** Every child runs through `meshd cluster exec-child --parent PID --
//!   PROGRAM ARGS`: that process asks the kernel to SIGKILL it when its parent dies
//!   (`PR_SET_PDEATHSIG`, kept across `execve`), checks that its parent is still the one
//!   named (it may have died in between), then replaces itself with PROGRAM (same pid).
//!   So the children die with `cluster up` even when it is killed with SIGKILL. The
//!   death signal follows the *thread* that forked: every child is spawned from the
//!   thread that runs `cluster up`'s main future (the runtime's `block_on`), which lives
//!   as long as the process.
//! - **Restarts.** [`Procs::supervise`] looks at every child every [`CHECK`]; one that
//!   exited is restarted with the same arguments (same port and data dir) after a
//!   backoff of [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`] (back to the minimum once a
//!   child ran [`STABLE`]), said on stdout (`child ROLE ID exited (STATUS); restarting in
//!   D`, then `child ROLE ID pid N (restart K)`) and logged.
//! - **Status.** [`Procs::status_table`]: role, id, pid, state, restarts, URL; printed
//!   on start and on SIGUSR1.
//! - **Stopping.** [`Procs::stop_all`]: reverse start order, the scheduler group as a
//!   whole (leader first).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How often the children are looked at.
pub const CHECK: Duration = Duration::from_millis(200);
/// First restart delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long before it exited restarts after [`BACKOFF_MIN`] again.
pub const STABLE: Duration = Duration::from_secs(60);

/// What to run for one child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// `etcd`, `pulsar-lite`, `scheduler`, `node`, `proxy`.
    pub role: &'static str,
    /// Its id within the role.
    pub id: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// A meshd role: wait for its `cluster ... http://` line and print it.
    pub wait_url: bool,
}

/// Where a child stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Exited; restarted at this instant.
    RestartAt(Instant),
}

/// One child process.
pub struct Proc {
    pub spec: ChildSpec,
    child: Child,
    /// The URL it printed (roles with an HTTP API).
    pub url: Option<String>,
    pid: u32,
    state: State,
    started: Instant,
    restarts: u32,
    backoff: Duration,
}

/// The running children; stopped in reverse start order.
#[derive(Default)]
pub struct Procs(pub Vec<Proc>);

fn log_file(dir: &Path, role: &str, id: &str) -> anyhow::Result<std::fs::File> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let path = logs.join(format!("{role}-{id}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Starts one child (through `exec-child`); for a meshd role waits for its URL line and
/// prints it. Returns the child, its pid and its URL.
async fn start(dir: &Path, spec: &ChildSpec) -> anyhow::Result<(Child, u32, Option<String>)> {
    let (role, id) = (spec.role, spec.id.as_str());
    let log = log_file(dir, role, id)?;
    let exe = std::env::current_exe().context("locating the meshd binary")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "cluster",
        "exec-child",
        "--parent",
        &std::process::id().to_string(),
        "--",
    ])
    .arg(&spec.program)
    .args(&spec.args)
    // meshd children log as this process does (etcd ignores it).
    .env("MESHD_LOG_FORMAT", crate::logging::format().as_str())
    .stdin(Stdio::null())
    .stderr(Stdio::from(log))
    .kill_on_drop(true);
    cmd.stdout(if spec.wait_url {
        Stdio::piped()
    } else {
        Stdio::from(log_file(dir, role, id)?)
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {role} {id} ({})", spec.program.display()))?;
    let pid = child.id().unwrap_or(0);
    let mut url = None;
    if spec.wait_url {
        let Some(out) = child.stdout.take() else {
            bail!("{role} {id}: no stdout");
        };
        let mut lines = BufReader::new(out).lines();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("cluster ") && line.contains("http://") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => {
                println!("{line}");
                url = line.rsplit(' ').next().map(str::to_string);
                // Keep draining stdout so the child never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            }
            _ => {
                let _ = child.kill().await;
                bail!(
                    "{role} {id} did not start (see {}/logs/{role}-{id}.log)",
                    dir.display()
                );
            }
        }
    }
    Ok((child, pid, url))
}

impl Procs {
    /// Starts a child and adds it; prints `child ROLE ID pid N`.
    pub async fn spawn(&mut self, dir: &Path, spec: ChildSpec) -> anyhow::Result<()> {
        let (child, pid, url) = start(dir, &spec).await?;
        println!("child {} {} pid {pid}", spec.role, spec.id);
        self.0.push(Proc {
            spec,
            child,
            url,
            pid,
            state: State::Running,
            started: Instant::now(),
            restarts: 0,
            backoff: BACKOFF_MIN,
        });
        Ok(())
    }

    /// The last child started.
    pub fn last_mut(&mut self) -> Option<&mut Proc> {
        self.0.last_mut()
    }

    /// Notices exited children and restarts them when their backoff is over.
    pub async fn supervise(&mut self, dir: &Path) {
        let now = Instant::now();
        for p in &mut self.0 {
            match p.state {
                State::Running => {
                    let Ok(Some(status)) = p.child.try_wait() else {
                        continue;
                    };
                    if p.started.elapsed() >= STABLE {
                        p.backoff = BACKOFF_MIN;
                    }
                    let delay = p.backoff;
                    p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                    p.state = State::RestartAt(now + delay);
                    println!(
                        "child {} {} exited ({status}); restarting in {delay:?}",
                        p.spec.role, p.spec.id
                    );
                    tracing::warn!(role = p.spec.role, id = %p.spec.id, pid = p.pid, %status, ?delay, "child exited; restarting");
                }
                State::RestartAt(at) if at <= now => match start(dir, &p.spec).await {
                    Ok((child, pid, url)) => {
                        p.child = child;
                        p.pid = pid;
                        if url.is_some() {
                            p.url = url;
                        }
                        p.restarts += 1;
                        p.started = Instant::now();
                        p.state = State::Running;
                        println!(
                            "child {} {} pid {pid} (restart {})",
                            p.spec.role, p.spec.id, p.restarts
                        );
                        tracing::info!(role = p.spec.role, id = %p.spec.id, pid, restarts = p.restarts, "child restarted");
                    }
                    Err(e) => {
                        let delay = p.backoff;
                        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                        p.state = State::RestartAt(Instant::now() + delay);
                        println!(
                            "child {} {} did not restart ({e:#}); retrying in {delay:?}",
                            p.spec.role, p.spec.id
                        );
                        tracing::warn!(role = p.spec.role, id = %p.spec.id, error = %format!("{e:#}"), ?delay, "child did not restart");
                    }
                },
                State::RestartAt(_) => {}
            }
        }
    }

    /// The children as a table: role, id, pid, state, restarts, URL.
    pub fn status_table(&self) -> crate::table::Table {
        let now = Instant::now();
        let mut t = crate::table::Table::new(["ROLE", "ID", "PID", "STATE", "RESTARTS", "URL"]);
        for p in &self.0 {
            let state = match p.state {
                State::Running => format!("running {}s", p.started.elapsed().as_secs()),
                State::RestartAt(at) => format!(
                    "exited, restart in {:.1}s",
                    at.saturating_duration_since(now).as_secs_f64()
                ),
            };
            t.row([
                p.spec.role.to_string(),
                p.spec.id.clone(),
                p.pid.to_string(),
                state,
                p.restarts.to_string(),
                p.url.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        t
    }

    /// Stops every child, in reverse start order.
    pub async fn stop_all(&mut self) {
        while let Some(p) = self.0.pop() {
            if p.spec.role != "scheduler" {
                stop(p).await;
                continue;
            }
            // The scheduler group stops as a whole: its leader first, then the followers
            // at once, well within an election timeout. Followers stopped one by one
            // under a running leader would be unreachable to it (openraft logs that as
            // errors), and a leader stopped long before its followers would make them
            // hold elections among members that are going away.
            let mut group = vec![p];
            while self.0.last().is_some_and(|p| p.spec.role == "scheduler") {
                group.extend(self.0.pop());
            }
            if let Some(leader) = scheduler_leader(&group).await {
                if let Some(i) = group.iter().position(|p| p.spec.id == leader.to_string()) {
                    stop(group.remove(i)).await;
                }
            }
            for p in &group {
                term(p).await;
            }
            for p in group {
                stop(p).await;
            }
        }
    }
}

impl Proc {
    /// Whether the child exited (not restarted yet).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Sends SIGTERM (to a running child).
async fn term(p: &Proc) {
    if p.state != State::Running {
        return;
    }
    if let Some(pid) = p.child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
}

/// SIGTERM, and waits for the exit (killed after 10 s).
async fn stop(mut p: Proc) {
    term(&p).await;
    match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(role = p.spec.role, id = %p.spec.id, "did not stop within 10s; killing");
            let _ = p.child.kill().await;
        }
    }
}

/// The leader of the scheduler group, as the first member that answers knows it.
async fn scheduler_leader(group: &[Proc]) -> Option<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    for url in group.iter().filter_map(|p| p.url.as_deref()) {
        let Ok(r) = client.get(format!("{url}/v1/scheduler")).send().await else {
            continue;
        };
        if let Ok(s) = r.json::<meshd_scheduler::service::SchedulerStatus>().await {
            if s.leader.is_some() {
                return s.leader;
            }
        }
    }
    None
}

/// `meshd cluster exec-child --parent PID -- PROGRAM ARGS`: dies with `PID`, then becomes
/// PROGRAM. Returns only on failure.
pub fn exec_child(parent: u32, command: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("exec-child needs a program after --");
    };
    die_with_parent(parent)?;
    let err =
        std::os::unix::process::CommandExt::exec(std::process::Command::new(program).args(args));
    Err(err).with_context(|| format!("running {}", Path::new(program).display()))
}

#[cfg(target_os = "linux")]
fn die_with_parent(parent: u32) -> anyhow::Result<()> {
    use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .context("asking for SIGKILL when cluster up exits (PR_SET_PDEATHSIG)")?;
    // The parent may have died before the call: then this process was re-parented.
    if getppid().map(Pid::as_raw_nonzero).map(|p| p.get() as u32) != Some(parent) {
        bail!("cluster up (pid {parent}) is gone");
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_parent: u32) -> anyhow::Result<()> {
    Ok(())
}
