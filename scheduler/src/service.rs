//! The scheduler service: one Raft member, its HTTP server, and the leader loop that
//! turns registry membership into committed and published placements.
//!
//! # The leader loop
//! Every member runs it; it does work only while this member is the Raft leader:
//! 1. **Reconcile.** Wait until everything committed in earlier terms is applied
//!    (`ensure_linearizable`), read the last committed decision from the state machine
//!    and the published placement from the registry; if the registry is behind,
//!    republish the committed decision (this finishes a rebalance a dead leader started).
//! 2. **Follow membership.** `watch_members`; after the first `Synced` and after every
//!    change, run the placement reducer on (live nodes + reported groups, last
//!    decision). A new decision is committed through Raft (`client_write`) first, then
//!    published with `put_placement_if(previous epoch, new)`.
//! 3. On losing leadership, a registry error, or shutdown, leave the loop; errors are
//!    retried from step 1 after a short pause.
//!
//! # HTTP
//! `/healthz`, `/readyz` (a leader is known), `/metrics`, `GET /v1/placement` (the last
//! committed decision), `GET /v1/scheduler` (members, leader, term), plus the Raft peer
//! routes and membership admin routes of [`crate::raft::raft_routes`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::ServerState;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::placement::{pace, reduce, Decision, PlacementConfig, PlacementSpec};
use crate::raft::{raft_routes, NodeId, RaftMember, RaftSetupError, RaftTiming, Request};
use crate::registry::{MemberEvent, MemberId, MemberInfo, Placement, Registry, RegistryError};

/// Settings of one scheduler member.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This member's Raft id.
    pub id: NodeId,
    /// Every initial member, this one included: id → `host:port` of its HTTP server.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the redb file lives.
    pub data_dir: PathBuf,
    /// Placement algorithm settings.
    pub placement: PlacementConfig,
    /// Raft timing.
    pub timing: RaftTiming,
}

/// Errors starting the scheduler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The Raft member could not start.
    #[error(transparent)]
    Raft(#[from] RaftSetupError),
    /// The configuration is invalid.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
    /// The listener failed.
    #[error("scheduler listener: {0}")]
    Io(#[from] std::io::Error),
    /// The metrics registry refused a metric.
    #[error("metrics: {0}")]
    Metrics(String),
}

/// The scheduler's Prometheus metrics (`meshd_scheduler_*`).
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    registry: prometheus::Registry,
    /// Times the known leader changed.
    pub leader_changes: IntCounter,
    /// Epoch of the last committed placement.
    pub placement_epoch: IntGauge,
    /// Groups moved between nodes by committed decisions.
    pub groups_moved: IntCounter,
    /// Decisions this member committed as leader.
    pub decisions: IntCounter,
    /// 1 while this member is the leader.
    pub is_leader: IntGauge,
}

impl SchedulerMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = prometheus::Registry::new();
        let m = Self {
            leader_changes: IntCounter::new(
                "meshd_scheduler_leader_changes_total",
                "Times the known scheduler leader changed",
            )?,
            placement_epoch: IntGauge::new(
                "meshd_scheduler_placement_epoch",
                "Epoch of the last committed placement",
            )?,
            groups_moved: IntCounter::new(
                "meshd_scheduler_groups_moved_total",
                "Groups moved between nodes by placement decisions",
            )?,
            decisions: IntCounter::new(
                "meshd_scheduler_decisions_total",
                "Placement decisions committed by this member as leader",
            )?,
            is_leader: IntGauge::new("meshd_scheduler_is_leader", "1 while this member leads")?,
            registry,
        };
        m.registry.register(Box::new(m.leader_changes.clone()))?;
        m.registry.register(Box::new(m.placement_epoch.clone()))?;
        m.registry.register(Box::new(m.groups_moved.clone()))?;
        m.registry.register(Box::new(m.decisions.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        Ok(m)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        let _ = prometheus::Encoder::encode(&enc, &self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// A running scheduler member.
#[derive(Debug)]
pub struct Scheduler {
    member: RaftMember,
    metrics: SchedulerMetrics,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
struct AppState {
    member: RaftMember,
    metrics: SchedulerMetrics,
}

impl Scheduler {
    /// Starts the member on `listener` (its address must be `peers[id]`), initialises
    /// the group from the lowest-id member if it has no state, and runs the leader loop.
    pub async fn start(
        cfg: SchedulerConfig,
        registry: Arc<dyn Registry>,
        listener: TcpListener,
    ) -> Result<Self, SchedulerError> {
        if !cfg.peers.contains_key(&cfg.id) {
            return Err(SchedulerError::InvalidConfig(format!(
                "member {} is not in the peer list {:?}",
                cfg.id,
                cfg.peers.keys().collect::<Vec<_>>()
            )));
        }
        let placement = cfg
            .placement
            .validate()
            .map_err(|e| SchedulerError::InvalidConfig(e.to_string()))?;
        let metrics =
            SchedulerMetrics::new().map_err(|e| SchedulerError::Metrics(e.to_string()))?;
        let member = RaftMember::start(cfg.id, &cfg.data_dir, cfg.timing).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);

        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(h_ready))
            .route("/metrics", get(h_metrics))
            .route("/v1/placement", get(h_placement))
            .route("/v1/scheduler", get(h_scheduler))
            .with_state(AppState {
                member: member.clone(),
                metrics: metrics.clone(),
            })
            .merge(raft_routes(member.raft.clone()));
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "scheduler http server ended");
            }
        });

        let lowest = cfg.peers.keys().next().copied();
        let mut tasks = vec![server];
        if lowest == Some(cfg.id) {
            tasks.push(tokio::spawn(initialise_when_members_answer(
                member.clone(),
                cfg.peers.clone(),
                stop_rx.clone(),
            )));
        }

        let watcher = tokio::spawn(watch_leader(
            member.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
        let leader = tokio::spawn(leader_loop(
            member.clone(),
            registry,
            placement,
            metrics.clone(),
            stop_rx,
        ));
        Ok(Self {
            member,
            metrics,
            addr,
            stop,
            tasks: {
                tasks.extend([watcher, leader]);
                tasks
            },
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Raft member (metrics, state machine).
    pub fn member(&self) -> &RaftMember {
        &self.member
    }

    /// The metrics.
    pub fn metrics(&self) -> &SchedulerMetrics {
        &self.metrics
    }

    /// Stops the leader loop, the HTTP server and the Raft member, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.member.raft.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// How long the lowest member of a new group waits for every member to answer before it
/// initialises the group with the majority that does.
const INIT_WAIT_FOR_ALL: Duration = Duration::from_secs(10);

/// Initialises a new group (on the lowest member) once the other members listen: the
/// first election then reaches them, instead of failing against members whose process
/// has not started yet (which openraft logs as errors). Every member answering, or after
/// [`INIT_WAIT_FOR_ALL`] a majority, is enough; a member still silent then is a real
/// problem and is logged as one. A member that has state already does nothing.
async fn initialise_when_members_answer(
    member: RaftMember,
    peers: BTreeMap<NodeId, String>,
    mut stop: watch::Receiver<bool>,
) {
    if member.raft.is_initialized().await.unwrap_or(true) {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "raft initialisation: no HTTP client");
            return;
        }
    };
    let majority = peers.len() / 2 + 1;
    let started = tokio::time::Instant::now();
    let mut waiting_logged = false;
    loop {
        let mut silent = Vec::new();
        for (id, addr) in peers.iter().filter(|(id, _)| **id != member.id) {
            let answered = client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !answered {
                silent.push(*id);
            }
        }
        let answering = peers.len() - silent.len();
        if silent.is_empty() {
            break;
        }
        if answering >= majority && started.elapsed() >= INIT_WAIT_FOR_ALL {
            tracing::warn!(member = member.id, ?silent, "initialising the scheduler group without members that do not answer after {INIT_WAIT_FOR_ALL:?}");
            break;
        }
        if !waiting_logged {
            tracing::info!(member = member.id, ?silent, "new scheduler group: waiting for the other members to answer before initialising it");
            waiting_logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    match member.initialize_if_new(&peers).await {
        Ok(()) => {
            tracing::info!(member = member.id, members = ?peers.keys().collect::<Vec<_>>(), "scheduler group initialised")
        }
        Err(e) => tracing::warn!(member = member.id, error = %e, "raft initialisation"),
    }
}

async fn watch_leader(
    member: RaftMember,
    metrics: SchedulerMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = member.raft.metrics();
    let mut last = None;
    loop {
        let (leader, state) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.state)
        };
        if leader != last {
            if leader.is_some() {
                metrics.leader_changes.inc();
            }
            tracing::info!(member = member.id, ?leader, "scheduler leader");
            last = leader;
        }
        metrics
            .is_leader
            .set(i64::from(state == ServerState::Leader));
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Why a leadership term of the loop ended.
#[derive(Debug, thiserror::Error)]
enum LeadError {
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("the member watch ended")]
    WatchEnded,
}

fn is_leader(member: &RaftMember) -> bool {
    let m = member.raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(member.id)
}

async fn leader_loop(
    member: RaftMember,
    registry: Arc<dyn Registry>,
    cfg: PlacementConfig,
    metrics: SchedulerMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut raft_metrics = member.raft.metrics();
    loop {
        // Wait to lead.
        loop {
            if *stop.borrow() {
                return;
            }
            if is_leader(&member) {
                break;
            }
            tokio::select! {
                r = raft_metrics.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        match lead(&member, registry.as_ref(), &cfg, &metrics, &mut stop).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(member = member.id, error = %e, "leader loop; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// One leadership term: reconcile, then follow membership until leadership is lost.
async fn lead(
    member: &RaftMember,
    registry: &dyn Registry,
    cfg: &PlacementConfig,
    metrics: &SchedulerMetrics,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LeadError> {
    member
        .raft
        .ensure_linearizable()
        .await
        .map_err(|e| LeadError::Raft(e.to_string()))?;
    let mut published = registry.get_placement().await?;
    let committed = member.sm.current().placement;
    if let Some(c) = &committed {
        metrics
            .placement_epoch
            .set(i64::try_from(c.epoch).unwrap_or(i64::MAX));
    }
    publish_if_behind(registry, &mut published, committed.as_ref()).await?;
    tracing::info!(
        member = member.id,
        epoch = ?published.as_ref().map(|p| p.epoch),
        "scheduler leading; registry reconciled"
    );

    let mut watch = registry.watch_members().await?;
    let mut members: BTreeMap<MemberId, MemberInfo> = BTreeMap::new();
    let mut synced = false;
    let mut raft_metrics = member.raft.metrics();
    // A paced rebalance in progress: the spec it was decided for and where it goes.
    let mut target: Option<(PlacementSpec, Placement)> = None;
    let mut next_step: Option<tokio::time::Instant> = None;
    loop {
        let pause = async {
            match next_step {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = watch.recv() => match ev {
                None => return Err(LeadError::WatchEnded),
                Some(MemberEvent::Put(info)) => { members.insert(info.member_id(), info); }
                Some(MemberEvent::Delete(id)) => { members.remove(&id); }
                Some(MemberEvent::Synced) => synced = true,
            },
            r = raft_metrics.changed() => {
                if r.is_err() || !is_leader(member) { return Ok(()); }
                continue;
            }
            _ = pause => next_step = None,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        // Between paced steps only a change of the spec (nodes, groups) acts at once:
        // a node that died must not wait for the pace.
        let spec_changed = || {
            target
                .as_ref()
                .is_none_or(|(s, _)| *s != PlacementSpec::from_members(members.values()))
        };
        if synced && (next_step.is_none() || spec_changed()) {
            let more = step(
                member,
                registry,
                cfg,
                metrics,
                &members,
                &mut published,
                &mut target,
            )
            .await?;
            next_step = more.then(|| tokio::time::Instant::now() + cfg.rebalance_pause);
        }
    }
}

async fn publish_if_behind(
    registry: &dyn Registry,
    published: &mut Option<Placement>,
    committed: Option<&Placement>,
) -> Result<(), LeadError> {
    let Some(c) = committed else { return Ok(()) };
    let behind = published.as_ref().is_none_or(|p| p.epoch < c.epoch);
    if behind {
        let expected = published.as_ref().map(|p| p.epoch);
        match registry.put_placement_if(expected, c).await {
            Ok(()) => {
                tracing::info!(epoch = c.epoch, "published committed placement");
                *published = Some(c.clone());
            }
            Err(e @ RegistryError::PlacementConflict { .. }) => {
                *published = registry.get_placement().await?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Decide, commit, publish. A rebalance between live nodes is made in paced steps
/// ([`pace`]): `target` keeps where it goes while the spec stays the same; returns
/// whether steps remain (the caller calls again after [`PlacementConfig::rebalance_pause`]).
async fn step(
    member: &RaftMember,
    registry: &dyn Registry,
    cfg: &PlacementConfig,
    metrics: &SchedulerMetrics,
    members: &BTreeMap<MemberId, MemberInfo>,
    published: &mut Option<Placement>,
    target: &mut Option<(PlacementSpec, Placement)>,
) -> Result<bool, LeadError> {
    let spec = PlacementSpec::from_members(members.values());
    let mut current = member.sm.current().placement;
    // New epochs must be above both the committed and the published one.
    let floor = published.as_ref().map(|p| p.epoch).unwrap_or(0);
    if let Some(c) = current.as_mut() {
        c.epoch = c.epoch.max(floor);
    } else if published.is_some() {
        current.clone_from(published);
    }
    let goal = match target.take() {
        // The spec is the same: keep going where the paced rebalance was going.
        Some((s, t)) if s == spec => Some(t),
        _ => match reduce(cfg, &spec, current.as_ref()) {
            Decision::Publish { placement, .. } => Some(placement),
            Decision::Unchanged => None,
        },
    };
    let Some(goal) = goal else {
        // Nothing new; make sure the registry has the last decision.
        let committed = member.sm.current().placement;
        publish_if_behind(registry, published, committed.as_ref()).await?;
        return Ok(false);
    };
    let (placement, more) = match current.as_ref() {
        Some(c) => pace(c, &goal, &spec.nodes, cfg.rebalance_moves),
        None => (goal.clone(), false),
    };
    if current.as_ref().is_some_and(|c| {
        c.producer_groups == placement.producer_groups
            && c.consumer_groups == placement.consumer_groups
    }) {
        let committed = member.sm.current().placement;
        publish_if_behind(registry, published, committed.as_ref()).await?;
        return Ok(false);
    }
    if more {
        *target = Some((spec.clone(), goal));
    }
    let moves = crate::placement::moves_between(current.as_ref(), &placement);
    let resp = member
        .raft
        .client_write(Request::Place {
            placement: placement.clone(),
        })
        .await
        .map_err(|e| LeadError::Raft(e.to_string()))?;
    if !resp.data.accepted {
        return Err(LeadError::Raft(format!(
            "decision {} refused; committed epoch is {:?}",
            placement.epoch, resp.data.epoch
        )));
    }
    metrics.decisions.inc();
    metrics
        .groups_moved
        .inc_by(u64::try_from(moves.moved()).unwrap_or(u64::MAX));
    metrics
        .placement_epoch
        .set(i64::try_from(placement.epoch).unwrap_or(i64::MAX));
    tracing::info!(
        epoch = placement.epoch,
        nodes = spec.nodes.len(),
        moved = moves.moved(),
        more,
        "placement committed"
    );
    publish_if_behind(registry, published, Some(&placement)).await?;
    Ok(more)
}

async fn h_ready(State(s): State<AppState>) -> Response {
    let leader = s.member.raft.metrics().borrow().current_leader;
    match leader {
        Some(_) => (StatusCode::OK, "ready").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no raft leader").into_response(),
    }
}

async fn h_metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn h_placement(State(s): State<AppState>) -> Response {
    match s.member.sm.current().placement {
        Some(p) => Json(p).into_response(),
        None => (StatusCode::NOT_FOUND, "no placement committed yet").into_response(),
    }
}

/// Body of `GET /v1/scheduler`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SchedulerStatus {
    /// This member's id.
    pub id: NodeId,
    /// The known leader.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    /// Members (voters and learners): id → address.
    pub members: BTreeMap<NodeId, String>,
    /// Voter ids.
    pub voters: Vec<NodeId>,
    /// Epoch of the last committed placement.
    pub placement_epoch: Option<u64>,
    /// Decisions committed in total.
    pub decisions: u64,
}

async fn h_scheduler(State(s): State<AppState>) -> Response {
    let (leader, term, state, members, voters) = {
        let m = s.member.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let members: BTreeMap<NodeId, String> = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        (
            m.current_leader,
            m.current_term,
            format!("{:?}", m.state),
            members,
            voters,
        )
    };
    let sm = s.member.sm.current();
    Json(SchedulerStatus {
        id: s.member.id,
        leader,
        term,
        state,
        members,
        voters,
        placement_epoch: sm.placement.map(|p| p.epoch),
        decisions: sm.decisions,
    })
    .into_response()
}
