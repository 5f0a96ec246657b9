//! One registered member: its handle, and the background task that keeps its lease alive,
//! notices a lost lease, and re-registers. Written once over a small [`LeaseBackend`]
//! seam so etcd and the in-process registry share the same lease logic.
//!
//! The rule for a lost lease: if no keep-alive was acknowledged for a whole TTL (counted
//! from the moment the last acknowledged request was sent), other watchers may already
//! have seen the member leave, so the member treats the lease as lost, keeps running, and
//! registers again under a fresh lease as soon as the registry answers (retrying with
//! backoff). The stale lease is revoked best-effort afterwards.
//!
//! "A whole TTL" is enforced by a deadline, not by the next failed call: the member gives
//! its lease up at `last_ok + ttl - safety_margin` even when a keep-alive or a write hangs
//! (etcd stopped, packets dropped), since a hanging call must not keep a member serving
//! past the moment etcd may expire its lease (docs/scheduler.md, "Registry outages").

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::{LeaseConfig, MemberGroups, MemberId, MemberInfo, MemberLoad, RegistryError};

/// The operations the member task needs from a registry implementation.
#[async_trait]
pub(crate) trait LeaseBackend: Send + 'static {
    /// Grants a lease of about `ttl`; returns its id.
    async fn grant(&mut self, ttl: Duration) -> Result<i64, RegistryError>;
    /// Writes the member's keys under `lease`. `prev` is what this lease last carried
    /// (its group keys no longer reported are removed).
    async fn write(
        &mut self,
        lease: i64,
        prev: Option<&MemberInfo>,
        info: &MemberInfo,
    ) -> Result<(), RegistryError>;
    /// Renews the lease: `Ok(false)` when it no longer exists.
    async fn keep_alive(&mut self, lease: i64) -> Result<bool, RegistryError>;
    /// Revokes the lease, deleting its keys.
    async fn revoke(&mut self, lease: i64) -> Result<(), RegistryError>;
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Where a member's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Registered under a lease that was renewed within the TTL.
    Registered,
    /// Keep-alives are failing but the lease may still be alive (less than a TTL since
    /// the last acknowledged one).
    Unreachable,
    /// The lease is considered lost; re-registration is being retried.
    Lost,
    /// Deregistered (or the task ended).
    Deregistered,
}

/// Status of a registration, with monotonic counters suitable for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Current state.
    pub state: MemberState,
    /// The lease held now, if any.
    pub lease_id: Option<i64>,
    /// Successful registrations, the first one included (re-registrations = this − 1).
    pub registrations: u64,
    /// Leases considered lost (expired on the server or unconfirmed for a TTL).
    pub lease_losses: u64,
    /// Keep-alive calls that failed or timed out.
    pub keep_alive_failures: u64,
    /// When (the member's monotonic clock) the last keep-alive or registration that the
    /// registry acknowledged was sent: the lease is alive on the server until at least
    /// TTL after it.
    pub last_ack: Instant,
}

type Modify = Box<dyn FnOnce(&mut MemberInfo) + Send>;

enum Command {
    Modify(Modify, oneshot::Sender<Result<(), RegistryError>>),
    Deregister(oneshot::Sender<Result<(), RegistryError>>),
}

/// A live registration. Dropping it revokes the lease (in the background);
/// [`MemberHandle::deregister`] does the same and waits for it.
#[derive(Debug)]
pub struct MemberHandle {
    id: MemberId,
    cmds: mpsc::Sender<Command>,
    status: watch::Receiver<MemberStatus>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Modify(..) => f.write_str("Modify"),
            Command::Deregister(..) => f.write_str("Deregister"),
        }
    }
}

impl MemberHandle {
    /// The member's identity.
    pub fn id(&self) -> &MemberId {
        &self.id
    }

    /// The registration status; changes are observable with `changed()`.
    pub fn status(&self) -> watch::Receiver<MemberStatus> {
        self.status.clone()
    }

    /// Replaces the member's info (same role and id) under the same lease. If the lease
    /// is not held right now the info is kept and written on re-registration, and
    /// [`RegistryError::NotRegistered`] is returned.
    pub async fn update(&self, info: MemberInfo) -> Result<(), RegistryError> {
        if info.member_id() != self.id {
            return Err(RegistryError::InvalidConfig(format!(
                "update for {} sent to the handle of {}",
                info.member_id(),
                self.id
            )));
        }
        self.modify(Box::new(move |i| *i = info)).await
    }

    /// Sets the reported load.
    pub async fn set_load(&self, load: MemberLoad) -> Result<(), RegistryError> {
        self.modify(Box::new(move |i| i.load = load)).await
    }

    /// Sets the reported groups.
    pub async fn set_groups(&self, groups: MemberGroups) -> Result<(), RegistryError> {
        self.modify(Box::new(move |i| i.groups = groups)).await
    }

    async fn modify(&self, f: Modify) -> Result<(), RegistryError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || RegistryError::MemberStopped {
            member: self.id.to_string(),
        };
        self.cmds
            .send(Command::Modify(f, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Clean shutdown: revokes the lease so the member disappears at once.
    pub async fn deregister(self) -> Result<(), RegistryError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || RegistryError::MemberStopped {
            member: self.id.to_string(),
        };
        self.cmds
            .send(Command::Deregister(tx))
            .await
            .map_err(|_| stopped())?;
        let result = rx.await.map_err(|_| stopped())?;
        // The task returns right after replying.
        let _ = self.task.await;
        result
    }

    /// Test hook simulating a crashed process: stops the keep-alive task without revoking
    /// the lease, so the member disappears only when its lease expires.
    pub fn abandon(self) {
        self.task.abort();
    }
}

/// Registers `info` now (grant + write) and spawns the keep-alive task.
pub(crate) async fn start<B: LeaseBackend>(
    mut backend: B,
    info: MemberInfo,
    lease: LeaseConfig,
    backoff: Backoff,
) -> Result<MemberHandle, RegistryError> {
    lease.validate()?;
    let sent = Instant::now();
    let lease_id = backend.grant(lease.ttl).await?;
    if let Err(e) = backend.write(lease_id, None, &info).await {
        let _ = backend.revoke(lease_id).await;
        return Err(e);
    }
    let (status_tx, status_rx) = watch::channel(MemberStatus {
        state: MemberState::Registered,
        lease_id: Some(lease_id),
        registrations: 1,
        lease_losses: 0,
        keep_alive_failures: 0,
        last_ack: sent,
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let id = info.member_id();
    let runner = Runner {
        backend,
        written: Some(info.clone()),
        info,
        lease: Some(lease_id),
        stale: None,
        cfg: lease,
        backoff,
        status: status_tx,
        last_ok: sent,
        dirty: false,
    };
    let task = tokio::spawn(runner.run(cmd_rx));
    Ok(MemberHandle {
        id,
        cmds: cmd_tx,
        status: status_rx,
        task,
    })
}

struct Runner<B> {
    backend: B,
    /// What the member wants published.
    info: MemberInfo,
    /// What the current lease carries (None: nothing known written).
    written: Option<MemberInfo>,
    lease: Option<i64>,
    /// A lease given up as lost, revoked best-effort after re-registering.
    stale: Option<i64>,
    cfg: LeaseConfig,
    backoff: Backoff,
    status: watch::Sender<MemberStatus>,
    /// When the last acknowledged keep-alive (or grant) was sent.
    last_ok: Instant,
    /// `info` differs from what the lease carries because a write failed.
    dirty: bool,
}

impl<B: LeaseBackend> Runner<B> {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let mut next = Instant::now() + self.cfg.interval();
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => {
                        let _ = self.shutdown().await;
                        return;
                    }
                    Some(Command::Deregister(reply)) => {
                        let r = self.shutdown().await;
                        let _ = reply.send(r);
                        return;
                    }
                    Some(Command::Modify(f, reply)) => {
                        f(&mut self.info);
                        let r = match tokio::time::timeout_at(self.lose_at(), self.write_current()).await {
                            Ok(r) => r,
                            Err(_) => {
                                self.dirty = true;
                                Err(RegistryError::Timeout { op: "member write", timeout: self.cfg.ttl })
                            }
                        };
                        let _ = reply.send(r);
                    }
                },
                _ = sleep_until(next) => {
                    next = self.tick().await;
                }
                _ = sleep_until(self.lose_at()), if self.lease.is_some() => {
                    self.lose();
                    next = Instant::now();
                }
            }
        }
    }

    /// When the lease is given up as lost if no keep-alive is acknowledged before.
    fn lose_at(&self) -> Instant {
        self.last_ok + self.cfg.ttl.saturating_sub(self.cfg.safety_margin())
    }

    fn set_state(&self, state: MemberState) {
        let lease = self.lease;
        self.status.send_modify(|s| {
            s.state = state;
            s.lease_id = lease;
        });
    }

    async fn write_current(&mut self) -> Result<(), RegistryError> {
        let Some(lease) = self.lease else {
            self.dirty = true;
            return Err(RegistryError::NotRegistered {
                member: self.info.member_id().to_string(),
            });
        };
        match self
            .backend
            .write(lease, self.written.as_ref(), &self.info)
            .await
        {
            Ok(()) => {
                self.written = Some(self.info.clone());
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    fn lose(&mut self) {
        tracing::warn!(member = %self.info.member_id(), lease = ?self.lease, "registry lease lost; re-registering");
        if let Some(l) = self.lease.take() {
            self.stale = Some(l);
        }
        self.written = None;
        // One update, so observers never see a half-changed status.
        self.status.send_modify(|s| {
            s.lease_losses += 1;
            s.state = MemberState::Lost;
            s.lease_id = None;
        });
    }

    /// One keep-alive or re-registration attempt; returns when to run the next one.
    async fn tick(&mut self) -> Instant {
        let interval = self.cfg.interval();
        let sent = Instant::now();
        match self.lease {
            Some(lease) => {
                match tokio::time::timeout_at(self.lose_at(), self.backend.keep_alive(lease))
                    .await
                    .unwrap_or(Err(RegistryError::Timeout {
                        op: "keep-alive",
                        timeout: self.cfg.ttl,
                    })) {
                    Ok(true) => {
                        self.last_ok = sent;
                        self.backoff.reset();
                        if self.dirty {
                            let _ = self.write_current().await;
                        }
                        self.status.send_modify(|s| s.last_ack = sent);
                        self.set_state(MemberState::Registered);
                        sent + interval
                    }
                    Ok(false) => {
                        self.lose();
                        Instant::now()
                    }
                    Err(e) => {
                        self.status.send_modify(|s| s.keep_alive_failures += 1);
                        tracing::debug!(member = %self.info.member_id(), error = %e, "keep-alive failed");
                        if Instant::now() >= self.lose_at() {
                            self.lose();
                        } else {
                            self.set_state(MemberState::Unreachable);
                        }
                        Instant::now() + self.backoff.next_delay().min(interval)
                    }
                }
            }
            None => match self.reregister().await {
                Ok(()) => {
                    self.last_ok = sent;
                    self.backoff.reset();
                    let lease = self.lease;
                    self.status.send_modify(|s| {
                        s.registrations += 1;
                        s.state = MemberState::Registered;
                        s.lease_id = lease;
                        s.last_ack = sent;
                    });
                    tracing::info!(member = %self.info.member_id(), lease = ?self.lease, "re-registered");
                    if let Some(old) = self.stale.take() {
                        let _ = self.backend.revoke(old).await;
                    }
                    sent + interval
                }
                Err(e) => {
                    tracing::debug!(member = %self.info.member_id(), error = %e, "re-registration failed");
                    Instant::now() + self.backoff.next_delay()
                }
            },
        }
    }

    async fn reregister(&mut self) -> Result<(), RegistryError> {
        let lease = self.backend.grant(self.cfg.ttl).await?;
        if let Err(e) = self.backend.write(lease, None, &self.info).await {
            let _ = self.backend.revoke(lease).await;
            return Err(e);
        }
        self.lease = Some(lease);
        self.written = Some(self.info.clone());
        self.dirty = false;
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), RegistryError> {
        let mut result = Ok(());
        if let Some(l) = self.lease.take() {
            result = self.backend.revoke(l).await;
        }
        if let Some(l) = self.stale.take() {
            let _ = self.backend.revoke(l).await;
        }
        self.set_state(MemberState::Deregistered);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MemberInfo, Role};

    /// A registry that grants and writes, then hangs on every keep-alive (etcd stopped).
    struct Hanging;

    #[async_trait]
    impl LeaseBackend for Hanging {
        async fn grant(&mut self, _ttl: Duration) -> Result<i64, RegistryError> {
            Ok(7)
        }
        async fn write(
            &mut self,
            _lease: i64,
            _prev: Option<&MemberInfo>,
            _info: &MemberInfo,
        ) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn keep_alive(&mut self, _lease: i64) -> Result<bool, RegistryError> {
            std::future::pending().await
        }
        async fn revoke(&mut self, _lease: i64) -> Result<(), RegistryError> {
            Ok(())
        }
    }

    /// A keep-alive that never returns must not keep the member "alive" past its TTL:
    /// the lease is given up at `ttl - safety_margin` after the last acknowledged send.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_keep_alive_loses_the_lease_before_the_ttl() {
        let ttl = Duration::from_secs(3);
        let cfg = LeaseConfig::with_ttl(ttl);
        let t0 = Instant::now();
        let h = start(
            Hanging,
            MemberInfo::new(Role::Node, "n1", "http://n1"),
            cfg,
            Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
        )
        .await
        .expect("registered");
        let mut st = h.status();
        tokio::time::timeout(ttl * 2, async {
            while st.borrow_and_update().state != MemberState::Lost {
                st.changed().await.expect("status");
            }
        })
        .await
        .expect("the lease is given up although the keep-alive hangs");
        let lost_after = t0.elapsed();
        assert!(
            lost_after <= ttl - cfg.safety_margin(),
            "lost after {lost_after:?}"
        );
        assert!(lost_after >= ttl - cfg.safety_margin() - Duration::from_millis(10));
        h.abandon();
    }
}
