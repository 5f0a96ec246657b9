//! The scheduler's openraft group: type configuration, the replicated commands, the
//! HTTP transport between members, and member start-up.
//!
//! # Layout
//! - [`store`]: the redb log store and state machine (committed placement decisions).
//! - this file: [`TypeConfig`], [`Request`]/[`Response`], [`HttpNetworkFactory`] (reqwest
//!   client, JSON bodies), [`raft_routes`] (the axum routes a member serves for its
//!   peers under `/raft/*`, and the membership admin routes under `/admin/*`), and
//!   [`RaftMember::start`].

pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::registry::Placement;
pub use store::{SmState, StateMachine};

/// A scheduler member id.
pub type NodeId = u64;

/// A command replicated through the group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Commit a placement decision (taken only if its epoch is above the last one).
    Place {
        /// The decided placement.
        placement: Placement,
    },
}

/// The state machine's answer to a [`Request`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the decision was taken.
    pub accepted: bool,
    /// The committed epoch after applying.
    pub epoch: Option<u64>,
}

openraft::declare_raft_types!(
    /// The scheduler's openraft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The openraft handle of a scheduler member.
pub type SchedulerRaft = openraft::Raft<TypeConfig>;

/// Errors starting or administering a Raft member.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftSetupError {
    /// The redb file could not be opened.
    #[error("raft storage at {path}: {reason}")]
    Storage {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The openraft configuration is invalid.
    #[error("raft config: {0}")]
    Config(String),
    /// openraft refused to start.
    #[error("raft start: {0}")]
    Start(String),
    /// Initialising the group's membership failed.
    #[error("raft initialisation: {0}")]
    Initialize(String),
}

/// Timing of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice this).
    pub election_min: Duration,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(600),
        }
    }
}

/// One running Raft member: the openraft handle and its state machine.
#[derive(Clone)]
pub struct RaftMember {
    /// This member's id.
    pub id: NodeId,
    /// The openraft handle.
    pub raft: SchedulerRaft,
    /// The state machine (for reading committed decisions).
    pub sm: StateMachine,
}

impl std::fmt::Debug for RaftMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftMember").field("id", &self.id).finish()
    }
}

impl RaftMember {
    /// Opens `dir/raft.redb` and starts the member. Does not initialise the group.
    pub async fn start(id: NodeId, dir: &Path, timing: RaftTiming) -> Result<Self, RaftSetupError> {
        let path = dir.join("raft.redb");
        let storage_err = |reason: String| RaftSetupError::Storage {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| storage_err(e.to_string()))?;
        let db = store::open_db(&path).map_err(|e| storage_err(e.to_string()))?;
        let sm = StateMachine::open(Arc::clone(&db))
            .await
            .map_err(|e| storage_err(e.to_string()))?;
        let log = store::LogStore::new(db);
        let heartbeat = u64::try_from(timing.heartbeat.as_millis()).unwrap_or(150);
        let election = u64::try_from(timing.election_min.as_millis()).unwrap_or(600);
        let config = Config {
            cluster_name: "meshd-scheduler".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election.saturating_mul(2),
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftSetupError::Config(e.to_string()))?;
        let raft = openraft::Raft::new(
            id,
            Arc::new(config),
            HttpNetworkFactory::new(),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| RaftSetupError::Start(e.to_string()))?;
        Ok(Self { id, raft, sm })
    }

    /// Initialises the group with these members (id → `host:port`) if this member has
    /// no state yet; a member that is already initialised keeps its state.
    pub async fn initialize_if_new(
        &self,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<(), RaftSetupError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| RaftSetupError::Initialize(e.to_string()))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            // Another member initialised first and we already received its log.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(RaftSetupError::Initialize(e.to_string())),
        }
    }
}

/// Creates clients to peers.
#[derive(Debug, Clone)]
pub struct HttpNetworkFactory {
    client: reqwest::Client,
}

impl Default for HttpNetworkFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpNetworkFactory {
    /// A factory with one pooled HTTP client.
    pub fn new() -> Self {
        // reqwest with `rustls-no-provider` needs a process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .build()
            .unwrap_or_default();
        Self { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpNetwork {
        HttpNetwork {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The connection to one peer.
#[derive(Debug, Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl HttpNetwork {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("http://{}/raft/{path}", self.addr);
        let resp = self
            .client
            .post(url)
            .timeout(option.hard_ttl())
            .json(req)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&TransportError(e.to_string())))
                } else {
                    RPCError::Network(NetworkError::new(&TransportError(e.to_string())))
                }
            })?;
        let body: Result<Resp, E> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// Body of `POST /admin/add-learner`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddLearner {
    /// The new member's id.
    pub id: NodeId,
    /// Its `host:port`.
    pub addr: String,
}

/// Body of `POST /admin/change-membership`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeMembership {
    /// The voters after the change (learners must have been added first).
    pub voters: BTreeSet<NodeId>,
}

/// Body of `POST /admin/init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitCluster {
    /// id → `host:port` of the initial voters.
    pub members: BTreeMap<NodeId, String>,
}

fn json_result<T: Serialize, E: Serialize>(r: Result<T, E>) -> HttpResponse {
    Json(r).into_response()
}

async fn h_append(
    State(raft): State<SchedulerRaft>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> HttpResponse {
    json_result(raft.append_entries(req).await)
}

async fn h_vote(
    State(raft): State<SchedulerRaft>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> HttpResponse {
    json_result(raft.vote(req).await)
}

async fn h_snapshot(
    State(raft): State<SchedulerRaft>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> HttpResponse {
    json_result(raft.install_snapshot(req).await)
}

fn admin_answer<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> HttpResponse {
    match r {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn h_add_learner(
    State(raft): State<SchedulerRaft>,
    Json(req): Json<AddLearner>,
) -> HttpResponse {
    let r = raft
        .add_learner(req.id, BasicNode::new(req.addr), true)
        .await
        .map(|resp| resp.log_id);
    admin_answer(r)
}

async fn h_change_membership(
    State(raft): State<SchedulerRaft>,
    Json(req): Json<ChangeMembership>,
) -> HttpResponse {
    let r = raft
        .change_membership(req.voters, false)
        .await
        .map(|resp| resp.log_id);
    admin_answer(r)
}

async fn h_init(State(raft): State<SchedulerRaft>, Json(req): Json<InitCluster>) -> HttpResponse {
    let nodes: BTreeMap<NodeId, BasicNode> = req
        .members
        .into_iter()
        .map(|(id, a)| (id, BasicNode::new(a)))
        .collect();
    admin_answer(raft.initialize(nodes).await)
}

/// Longest time a stepping-down leader keeps its heartbeats and elections off.
const STEP_DOWN_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /admin/step-down` on the leader: it stops sending heartbeats and will not stand
/// for election, so the followers' election timers fire and one of them is elected
/// (openraft 0.9 has no leader transfer). Heartbeats and elections are switched back on
/// as soon as another member leads a newer term, or after [`STEP_DOWN_WINDOW`].
/// 409 on a member that is not the leader or when no other voter could take over.
async fn h_step_down(State(raft): State<SchedulerRaft>) -> HttpResponse {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(m.id) {
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": "this member is not the leader",
                "leader": m.current_leader,
            })),
        )
            .into_response();
    }
    let voters = m.membership_config.membership().voter_ids().count();
    if voters < 2 {
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": "no other voter could take over (a one-member group)",
            })),
        )
            .into_response();
    }
    let (me, term) = (m.id, m.current_term);
    raft.runtime_config().heartbeat(false);
    raft.runtime_config().elect(false);
    let r = raft.clone();
    tokio::spawn(async move {
        let mut w = r.metrics();
        let _ = tokio::time::timeout(STEP_DOWN_WINDOW, async {
            loop {
                {
                    let x = w.borrow_and_update();
                    if x.current_term > term && x.current_leader.is_some_and(|l| l != me) {
                        break;
                    }
                }
                if w.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        r.runtime_config().heartbeat(true);
        r.runtime_config().elect(true);
        tracing::info!(
            member = me,
            "step-down over: heartbeats and elections on again"
        );
    });
    tracing::info!(
        member = me,
        term,
        "stepping down: heartbeats and elections off"
    );
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"stepping_down": me, "term": term})),
    )
        .into_response()
}

/// The routes a member serves: peer RPCs under `/raft/{append,vote,snapshot}` and
/// membership administration under `/admin/{init,add-learner,change-membership}`.
pub fn raft_routes(raft: SchedulerRaft) -> Router {
    Router::new()
        .route("/raft/append", post(h_append))
        .route("/raft/vote", post(h_vote))
        .route("/raft/snapshot", post(h_snapshot))
        .route("/admin/init", post(h_init))
        .route("/admin/add-learner", post(h_add_learner))
        .route("/admin/change-membership", post(h_change_membership))
        .route("/admin/step-down", post(h_step_down))
        .with_state(raft)
}
