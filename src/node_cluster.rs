//! `meshd node --registry ...`: a runtime node as a member of a cluster. Wires the node's
//! cluster seams (meshd-node knows nothing of the registry) to a [`Registry`]:
//!
//! - membership: registers the node (role `node`, its HTTP URL) under a lease kept alive
//!   in the background, re-registered after a registry outage (the node keeps serving
//!   publishes meanwhile), revoked on clean shutdown;
//! - reports: consumer groups (its subscriptions' groups) and producer groups (seen in the
//!   proxy's `meshd-producer-group` header within [`PRODUCER_GROUP_IDLE`]) as soon as they
//!   change, and load (events/s accepted, running deliveries) every [`LOAD_PERIOD`];
//! - the shared catalog: admin changes go to the registry's catalog (see
//!   [`RegistryCatalog`]); the catalog is watched and applied to the local node, as
//!   [`CatalogSync`] decides;
//! - placement: the decisions are the pure [`Membership`] machine's
//!   (`meshd_scheduler::membership`: epoch fencing, the lease deadline, peer promises
//!   through a registry outage, docs/scheduler.md "Registry outages"); this file feeds it
//!   the placement watch, the lease status, the node members and the peers' answers
//!   (`POST /v1/cluster/promise` on their listeners, with the internal token), answers
//!   the peers' questions with it, and carries out its actions: owned groups, questions,
//!   placement re-reads, `/readyz` (503 `registry_lease_lost` without lease nor promises,
//!   200 degraded while serving on promises). This holds for CLUSTERING and BROADCASTING
//!   groups alike: a BROADCASTING subscription is run by the one node placement names,
//!   which fans each event out to every member of the group.
//! - drain (`POST /v1/admin/drain`): the node refuses publishes at once (proxies retry the
//!   next node), keeps delivering the groups it owns until what was stored here for them
//!   when the drain began is committed (at most [`DRAIN_BACKLOG_WAIT`]; events its bridge
//!   stores afterwards wait for the next owner or the undrain), then stops delivery and revokes its
//!   lease, so the scheduler moves its groups and the next owner starts from the
//!   committed offsets with no overlap. Undrain registers it again.
//! - the store rule ([`meshd_scheduler::registry::store_shape`]): the member info carries
//!   the node's store; a node checks the members before and right after registering and
//!   refuses to join a cluster where an embedded store would not be alone, and a running
//!   embedded node that sees another node member stops ([`ClusterMember::conflict`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use meshd_core::api::{PromiseAnswer, PromiseRequest};
use meshd_core::api::{SubscriptionSpec, TopicConfig};
use meshd_node::server::StoreKind;
use meshd_node::server::{CatalogError, CatalogSink, DrainState, GroupLocator, GroupOwner, Node};
use meshd_scheduler::membership::catalog::{CatalogAction, CatalogSync};
use meshd_scheduler::membership::{Action, Health, Lease, Membership, Peer, PeerAnswer};
use meshd_scheduler::registry::{
    store_shape, CatalogKind, DeliveryReport, LeaseConfig, MemberEvent, MemberGroups, MemberHandle,
    MemberInfo, MemberLoad, MemberState, MemberStatus, MemberStore, Placement, Registry, Role,
    StoreConflict,
};
use tokio::sync::watch;
use tokio::time::Instant as TInstant;

/// How often group changes are looked for.
const GROUP_CHECK: Duration = Duration::from_millis(200);
/// How often load is written to the registry.
pub const LOAD_PERIOD: Duration = Duration::from_secs(5);
/// A producer group not seen for this long is no longer reported.
pub const PRODUCER_GROUP_IDLE: Duration = Duration::from_secs(60);
/// Retry period of catalog entries that could not be applied yet.
const CATALOG_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for a draining node's backlog to be delivered before it leaves anyway.
pub const DRAIN_BACKLOG_WAIT: Duration = Duration::from_secs(30);

/// The catalog of a cluster over its registry, as the node writes it.
pub struct RegistryCatalog(pub Arc<dyn Registry>);

fn registry_error(e: meshd_scheduler::registry::RegistryError) -> CatalogError {
    CatalogError::Registry(Box::new(e))
}

#[async_trait::async_trait]
impl CatalogSink for RegistryCatalog {
    async fn put_topic(&self, name: &str, config: &TopicConfig) -> Result<(), CatalogError> {
        self.0
            .catalog_put(CatalogKind::Topic, name, &serde_json::to_value(config)?)
            .await
            .map_err(registry_error)
    }

    async fn delete_topic(&self, name: &str) -> Result<(), CatalogError> {
        self.0
            .catalog_delete(CatalogKind::Topic, name)
            .await
            .map(|_| ())
            .map_err(registry_error)
    }

    async fn create_subscription(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Option<SubscriptionSpec>, CatalogError> {
        let existing = self
            .0
            .catalog_create(
                CatalogKind::Subscription,
                &spec.name,
                &serde_json::to_value(spec)?,
            )
            .await
            .map_err(registry_error)?;
        match existing {
            None => Ok(None),
            // Unreadable or vanished: report it as taken by something else (a conflict).
            Some(v) => Ok(Some(serde_json::from_value(v).unwrap_or_else(|_| {
                let mut other = spec.clone();
                other.topic = String::new();
                other
            }))),
        }
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), CatalogError> {
        self.0
            .catalog_delete(CatalogKind::Subscription, name)
            .await
            .map(|_| ())
            .map_err(registry_error)
    }
}

/// Which node delivers a consumer group, read from the registry: the placement names the
/// node, its member record gives the URL (`GET /v1/subscriptions/{name}/status` on another
/// node asks it).
pub struct RegistryLocator(pub Arc<dyn Registry>);

#[async_trait::async_trait]
impl GroupLocator for RegistryLocator {
    async fn owner(&self, group: &str) -> Option<GroupOwner> {
        let placement = match self.0.get_placement().await {
            Ok(p) => p?,
            Err(e) => {
                tracing::debug!(group, "reading the placement to find a group's node: {e}");
                return None;
            }
        };
        let node = placement.consumer_groups.get(group)?.clone();
        let members = match self.0.list_members().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(group, "listing members to find a group's node: {e}");
                return None;
            }
        };
        let member = members
            .into_iter()
            .find(|m| m.role == Role::Node && m.id == node)?;
        Some(GroupOwner {
            node,
            url: member.http_addr,
        })
    }

    async fn members(&self) -> Vec<GroupOwner> {
        match self.0.list_members().await {
            Ok(m) => m
                .into_iter()
                .filter(|m| m.role == Role::Node)
                .map(|m| GroupOwner {
                    node: m.id,
                    url: m.http_addr,
                })
                .collect(),
            Err(e) => {
                tracing::debug!("listing members for a trace: {e}");
                Vec::new()
            }
        }
    }
}

/// A node member as the membership machine sees it: its URL (asked for promises in a
/// registry outage) and its delivery report (waited for in a hand-over).
#[derive(Debug, Clone, PartialEq)]
struct PeerNode {
    url: String,
    report: Option<DeliveryReport>,
}

/// Keeps the webhook guard's view of the cluster's members (nodes and proxies, by their
/// HTTP addresses) current (a webhook must not reach any of them), and the node members
/// the membership machine needs (`peers`).
async fn watch_member_components(
    node: Arc<Node>,
    registry: Arc<dyn Registry>,
    peers: watch::Sender<BTreeMap<String, PeerNode>>,
) {
    loop {
        let watch = registry.watch_members().await;
        // List after the watch is up, so no change falls between the list and the watch.
        refresh_member_components(&node, registry.as_ref(), &peers).await;
        let Ok(mut watch) = watch else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while watch.recv().await.is_some() {
            refresh_member_components(&node, registry.as_ref(), &peers).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a node's member info says about its store.
fn member_store(store: &StoreKind) -> MemberStore {
    match store {
        StoreKind::Embedded => MemberStore::Embedded,
        StoreKind::Pulsar(p) => MemberStore::Shared {
            url: format!("{}/{}/{}", p.url, p.tenant, p.namespace),
        },
    }
}

/// Checks the store rule for `info` against the registry's members now.
async fn check_store(registry: &dyn Registry, info: &MemberInfo) -> anyhow::Result<()> {
    let members = registry
        .list_members()
        .await
        .context("listing the cluster's members")?;
    store_shape::check_join(registry.cluster(), info, &members)?;
    Ok(())
}

/// Whether node `node_id` on `store` may join the registry's cluster now: checked before
/// the node opens its store, so a refused node changes nothing. [`ClusterMember::join`]
/// checks again around its registration.
pub async fn precheck_store(
    registry: &dyn Registry,
    node_id: &str,
    store: &StoreKind,
) -> anyhow::Result<()> {
    let mut info = MemberInfo::new(Role::Node, node_id, "");
    info.store = Some(member_store(store));
    check_store(registry, &info).await
}

/// A running embedded node stops when another node member appears (see
/// [`store_shape::must_stop`]): the conflict is sent on `fatal`.
async fn guard_store(
    me: MemberInfo,
    registry: Arc<dyn Registry>,
    fatal: watch::Sender<Option<StoreConflict>>,
) {
    loop {
        if let Ok(mut w) = registry.watch_members().await {
            while let Some(event) = w.recv().await {
                if let MemberEvent::Put(other) = event {
                    if let Some(conflict) = store_shape::must_stop(registry.cluster(), &me, &other)
                    {
                        tracing::error!("{conflict}");
                        let _ = fatal.send(Some(conflict));
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn refresh_member_components(
    node: &Node,
    registry: &dyn Registry,
    peers: &watch::Sender<BTreeMap<String, PeerNode>>,
) {
    if let Ok(members) = registry.list_members().await {
        let nodes: BTreeMap<String, PeerNode> = members
            .iter()
            .filter(|m| m.role == Role::Node)
            .map(|m| {
                let peer = PeerNode {
                    url: m.http_addr.clone(),
                    report: m.delivering.clone(),
                };
                (m.id.clone(), peer)
            })
            .collect();
        peers.send_if_modified(|p| {
            if *p == nodes {
                return false;
            }
            *p = nodes;
            true
        });
        let urls: Vec<String> = members.into_iter().map(|m| m.http_addr).collect();
        node.set_mesh_components("registry", &urls).await;
    }
}

/// A node's membership in its cluster; [`ClusterMember::leave`] on clean shutdown.
pub struct ClusterMember {
    handle: tokio::sync::Mutex<Option<MemberHandle>>,
    obey: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    node: Arc<Node>,
    registry: Arc<dyn Registry>,
    url: String,
    lease: LeaseConfig,
    /// Set when the node must stop: the store rule broke while it ran.
    fatal: watch::Sender<Option<StoreConflict>>,
    /// The membership state machine (placement, lease, peer promises).
    machine: Arc<Machine>,
    /// The other node members, from the member watch.
    peers: watch::Sender<BTreeMap<String, PeerNode>>,
    /// What the node delivers, as the obey loop carried it out; written to the registry
    /// by the report loop as soon as it changes.
    delivered: watch::Sender<DeliveryReport>,
}

impl ClusterMember {
    /// Registers `node` (reachable at `url`) and starts reporting, the catalog sync and
    /// placement obedience. The node must have been opened with `placement_gated`.
    pub async fn join(
        node: Arc<Node>,
        registry: Arc<dyn Registry>,
        url: &str,
        lease: LeaseConfig,
    ) -> anyhow::Result<Arc<ClusterMember>> {
        node.set_catalog(Arc::new(RegistryCatalog(registry.clone())));
        node.set_group_locator(Arc::new(RegistryLocator(registry.clone())));
        let member = Arc::new(ClusterMember {
            handle: tokio::sync::Mutex::new(None),
            obey: std::sync::Mutex::new(None),
            tasks: std::sync::Mutex::new(Vec::new()),
            node: node.clone(),
            registry: registry.clone(),
            url: url.to_string(),
            lease,
            fatal: watch::channel(None).0,
            machine: Machine::new(&node.config.node_id, lease),
            peers: watch::channel(BTreeMap::new()).0,
            delivered: watch::channel(DeliveryReport::default()).0,
        });
        let (machine, me) = (member.machine.clone(), node.config.node_id.clone());
        // Weak: the node holds this answerer.
        let weak = Arc::downgrade(&node);
        node.set_promise(Arc::new(move |from: &str| {
            let answer = machine.answer(&me, from);
            if let (false, Some(n)) = (answer.reaches_registry, weak.upgrade()) {
                n.metrics.registry_promises_given.inc();
            }
            answer
        }));
        member.register().await?;
        let sync = tokio::spawn(sync_catalog(node.clone(), registry.clone()));
        let me = member.clone();
        let report = tokio::spawn(async move { me.report().await });
        let me = member.clone();
        let drain = tokio::spawn(async move { me.follow_drain().await });
        let components = tokio::spawn(watch_member_components(
            node.clone(),
            registry.clone(),
            member.peers.clone(),
        ));
        let guard = tokio::spawn(guard_store(
            member.info(),
            registry.clone(),
            member.fatal.clone(),
        ));
        member
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([sync, report, drain, components, guard]);
        Ok(member)
    }

    /// Resolves when the node must stop because the store rule broke while it ran (an
    /// embedded node saw another node member): the caller leaves and exits with it.
    pub async fn conflict(&self) -> StoreConflict {
        let mut rx = self.fatal.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                return c;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The node's member info now: id, URL, store and groups.
    fn info(&self) -> MemberInfo {
        let mut info = MemberInfo::new(Role::Node, self.node.config.node_id.clone(), &self.url);
        info.store = Some(member_store(&self.node.config.store));
        info.groups = groups_of(&self.node);
        info.bridge = self.node.runs_bridge();
        info.delivering = Some(self.delivered.borrow().clone());
        info
    }

    async fn check_store(&self, info: &MemberInfo) -> anyhow::Result<()> {
        check_store(self.registry.as_ref(), info).await
    }

    /// Registers under a new lease and starts obeying the placement. Refuses (with a
    /// [`StoreConflict`]) when the store rule would break, checked before registering and
    /// again right after (a node registering at the same time is seen by at least one of
    /// the two), in which case the registration is revoked before anything is delivered.
    async fn register(&self) -> anyhow::Result<()> {
        let info = self.info();
        self.check_store(&info).await?;
        let handle = self
            .registry
            .register(info.clone(), self.lease)
            .await
            .context("registering the node in the registry")?;
        if let Err(e) = self.check_store(&info).await {
            if let Err(d) = handle.deregister().await {
                tracing::warn!("revoking the lease: {d}");
            }
            return Err(e);
        }
        let placement = self
            .registry
            .watch_placement()
            .await
            .context("watching the placement")?;
        let obey = tokio::spawn(obey_placement(
            self.node.clone(),
            self.registry.clone(),
            self.machine.clone(),
            placement,
            handle.status(),
            self.peers.subscribe(),
            self.delivered.clone(),
        ));
        if let Some(old) = self
            .obey
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(obey)
        {
            old.abort();
        }
        *self.handle.lock().await = Some(handle);
        Ok(())
    }

    /// Stops delivering every group (progress committed), then revokes the lease.
    async fn release(&self) {
        if let Some(t) = self.obey.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        // The machine delivers nothing until the next registration.
        let acts = self.machine.with(|m| m.lease(Lease::Gone, TInstant::now()));
        self.node.set_owned_groups(Some(BTreeSet::new())).await;
        for a in acts {
            if let Action::Report(r) = a {
                self.delivered.send_replace(r);
            }
        }
        if let Some(h) = self.handle.lock().await.take() {
            match h.deregister().await {
                Ok(()) => tracing::info!("left the cluster (lease revoked)"),
                Err(e) => tracing::warn!("revoking the lease: {e}"),
            }
        }
    }

    /// Follows the node's drain state: hands the groups over on a drain, rejoins on undrain.
    async fn follow_drain(&self) {
        let mut w = self.node.drain_watch();
        loop {
            let state = *w.borrow_and_update();
            match state {
                DrainState::Draining => {
                    let started = Instant::now();
                    // Deliver what is stored here first: with the embedded store no other
                    // node can (each node has its own log). What was stored when the drain
                    // began, that is: events the bridge keeps storing here afterwards wait
                    // for the next owner or the undrain (with a steady inflow the backlog
                    // would never reach 0 and every drain would take the whole wait).
                    let marks = match self.node.backlog_marks().await {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!("drain: reading the backlog: {e}");
                            None
                        }
                    };
                    loop {
                        if self.node.drain_state() != DrainState::Draining {
                            break;
                        }
                        let backlog = match &marks {
                            Some(m) => self.node.backlog_before(m).await,
                            None => self.node.backlog().await,
                        };
                        match backlog {
                            Ok(0) => break,
                            Ok(n) if started.elapsed() >= DRAIN_BACKLOG_WAIT => {
                                tracing::warn!(
                                    backlog = n,
                                    "drain: leaving with events not delivered yet"
                                );
                                break;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("drain: reading the backlog: {e}"),
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if self.node.drain_state() == DrainState::Draining {
                        self.release().await;
                        self.node.mark_drained();
                        tracing::info!(
                            took_ms = started.elapsed().as_millis() as u64,
                            "drained: groups handed over"
                        );
                    }
                }
                DrainState::Serving => {
                    if self.handle.lock().await.is_none() {
                        loop {
                            match self.register().await {
                                Ok(()) => {
                                    tracing::info!("undrained: registered again");
                                    break;
                                }
                                Err(e) if e.downcast_ref::<StoreConflict>().is_some() => {
                                    // Another node joined while this one was drained.
                                    tracing::error!("undrain: {e:#}");
                                    if let Ok(c) = e.downcast::<StoreConflict>() {
                                        let _ = self.fatal.send(Some(c));
                                    }
                                    return;
                                }
                                Err(e) => {
                                    tracing::warn!("undrain: registering: {e:#}");
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                            if self.node.drain_state() != DrainState::Serving {
                                break;
                            }
                        }
                    }
                }
                DrainState::Drained => {}
            }
            if w.changed().await.is_err() {
                return;
            }
        }
    }

    async fn report(&self) {
        let mut info = self.info();
        let mut tick = tokio::time::interval(GROUP_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_load = Instant::now();
        let mut last_published = self.node.published_total();
        let mut delivered = self.delivered.subscribe();
        loop {
            // A delivery report is written at once: a node taking a group over waits
            // for it.
            tokio::select! {
                _ = tick.tick() => {}
                r = delivered.changed() => if r.is_err() { return },
            }
            let groups = groups_of(&self.node);
            let load_due = last_load.elapsed() >= LOAD_PERIOD;
            let report = Some(delivered.borrow_and_update().clone());
            if groups == info.groups && !load_due && report == info.delivering {
                continue;
            }
            info.delivering = report;
            if load_due {
                let published = self.node.published_total();
                let secs = last_load.elapsed().as_secs_f64().max(0.001);
                info.load = MemberLoad {
                    events_per_sec: (published.saturating_sub(last_published)) as f64 / secs,
                    connections: self.node.serving_count().await as u64,
                };
                last_published = published;
                last_load = Instant::now();
            }
            info.groups = groups;
            let guard = self.handle.lock().await;
            let Some(h) = guard.as_ref() else {
                // Drained: nothing to report until the node registers again.
                continue;
            };
            if let Err(e) = h.update(info.clone()).await {
                // Kept by the member task and written on re-registration.
                tracing::debug!("reporting to the registry: {e}");
            }
        }
    }

    /// Clean shutdown: stops delivering (progress committed) and revokes the lease, so
    /// the node leaves the registry at once and its groups move.
    pub async fn leave(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.release().await;
    }
}

/// What the node reports: its subscriptions' groups and the producer groups seen lately.
fn groups_of(node: &Node) -> MemberGroups {
    MemberGroups {
        producer: node.producer_groups(PRODUCER_GROUP_IDLE),
        consumer: node.consumer_groups(),
    }
}

/// The lease as the membership machine sees it.
fn lease_of(status: &MemberStatus) -> Lease {
    match status.state {
        // Unreachable: keep-alives fail but the deadline has not passed; the machine
        // counts it from `last_ack`.
        MemberState::Registered | MemberState::Unreachable => Lease::Held {
            last_ack: status.last_ack,
        },
        MemberState::Lost => Lease::Lost,
        MemberState::Deregistered => Lease::Gone,
    }
}

/// What the shell's helper tasks report back to the obey loop.
enum Input {
    Answer(String, TInstant, PeerAnswer),
    Placement(Option<Placement>),
    PlacementUnread,
}

/// The membership machine of a node, shared by its obey loop and the answerer of peers'
/// promise requests.
pub struct Machine {
    state: std::sync::Mutex<Membership>,
    /// Wakes the obey loop (a promise given changes when it must act next).
    wake: tokio::sync::Notify,
    /// The lease settings the machine runs with.
    lease: LeaseConfig,
}

impl Machine {
    fn new(node_id: &str, lease: LeaseConfig) -> Arc<Machine> {
        Arc::new(Machine {
            state: std::sync::Mutex::new(Membership::new(node_id, lease, TInstant::now())),
            wake: tokio::sync::Notify::new(),
            lease,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Membership) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A peer's `POST /v1/cluster/promise`.
    fn answer(&self, me: &str, from: &str) -> PromiseAnswer {
        let promise = self.with(|m| m.promise(TInstant::now()));
        self.wake.notify_one();
        match promise {
            Some(d) => {
                tracing::info!(
                    peer = from,
                    promise_ms = d.as_millis() as u64,
                    "registry unreachable: promised a peer to start no group"
                );
                PromiseAnswer {
                    node: me.to_string(),
                    reaches_registry: false,
                    promise_ms: Some(d.as_millis() as u64),
                }
            }
            None => PromiseAnswer {
                node: me.to_string(),
                reaches_registry: true,
                promise_ms: None,
            },
        }
    }
}

/// Asks `peer` for a promise; the answer goes to `tx`.
async fn ask_peer(
    client: reqwest::Client,
    node: Arc<Node>,
    peer: Peer,
    sent: TInstant,
    tx: tokio::sync::mpsc::UnboundedSender<Input>,
) {
    let mut req = client
        .post(format!(
            "{}/v1/cluster/promise",
            peer.url.trim_end_matches('/')
        ))
        .json(&PromiseRequest {
            from: node.config.node_id.clone(),
        });
    if let Some(t) = &node.config.internal_token {
        req = req.header(meshd_core::internal::HEADER, t.expose());
    }
    let answer = match req.send().await {
        Ok(r) if r.status().is_success() => match r.json::<PromiseAnswer>().await {
            Ok(a) if a.node != peer.id => {
                tracing::warn!(peer = %peer.id, answered = %a.node, "promise from another node than asked");
                PeerAnswer::NoAnswer
            }
            Ok(a) if a.reaches_registry => PeerAnswer::ReachesRegistry,
            Ok(a) => PeerAnswer::Promise(Duration::from_millis(a.promise_ms.unwrap_or(0))),
            Err(e) => {
                tracing::debug!(peer = %peer.id, "promise answer unreadable: {e}");
                PeerAnswer::NoAnswer
            }
        },
        Ok(r) => {
            tracing::debug!(peer = %peer.id, status = %r.status(), "promise refused");
            PeerAnswer::NoAnswer
        }
        Err(e) => {
            tracing::debug!(peer = %peer.id, "promise request failed: {e}");
            PeerAnswer::NoAnswer
        }
    };
    let label = match answer {
        PeerAnswer::Promise(_) => "promise",
        PeerAnswer::ReachesRegistry => "reaches_registry",
        PeerAnswer::NoAnswer => "no_answer",
    };
    node.metrics
        .registry_promise_answers
        .with_label_values(&[label])
        .inc();
    let _ = tx.send(Input::Answer(peer.id, sent, answer));
}

/// Follows placement, the registration state and the node members through the
/// membership machine ([`Membership`]) and carries out what it decides: sets the node's
/// owned groups, asks peers for promises, re-reads the placement, reports health.
async fn obey_placement(
    node: Arc<Node>,
    registry: Arc<dyn Registry>,
    machine: Arc<Machine>,
    mut placement: watch::Receiver<Option<Placement>>,
    mut status: watch::Receiver<MemberStatus>,
    mut peers: watch::Receiver<BTreeMap<String, PeerNode>>,
    delivered: watch::Sender<DeliveryReport>,
) {
    let lease = machine.lease;
    let me = node.config.node_id.clone();
    let client = match reqwest::Client::builder()
        .timeout(lease.interval().max(Duration::from_millis(200)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("building the peer client: {e}; delivering nothing");
            node.set_owned_groups(Some(BTreeSet::new())).await;
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
    let mut applied: Option<BTreeSet<String>> = None;
    let mut inputs: Vec<Input> = Vec::new();
    loop {
        let now = TInstant::now();
        let (actions, delivering, waiting, epoch, health, wake_at) = machine.with(|m| {
            let mut acts = Vec::new();
            if let Some(p) = placement.borrow_and_update().clone() {
                acts.extend(m.placement(p, now));
            }
            let st = status.borrow_and_update().clone();
            acts.extend(m.lease(lease_of(&st), now));
            let nodes = peers.borrow_and_update().clone();
            acts.extend(
                m.peers(
                    nodes
                        .iter()
                        .map(|(id, p)| (id.clone(), p.url.clone()))
                        .collect(),
                    now,
                ),
            );
            acts.extend(m.peer_reports(
                nodes.into_iter().map(|(id, p)| (id, p.report)).collect(),
                now,
            ));
            for input in inputs.drain(..) {
                acts.extend(match input {
                    Input::Answer(peer, sent, a) => m.peer_answer(&peer, sent, a, now),
                    Input::Placement(p) => m.placement_read(p, now),
                    Input::PlacementUnread => vec![Action::ReadPlacement],
                });
            }
            acts.extend(m.tick(now));
            (
                acts,
                m.delivering().clone(),
                m.waiting().clone(),
                m.epoch(),
                m.health(),
                m.next_wake(now),
            )
        });
        let mut report = None;
        for a in actions {
            match a {
                Action::Start(_) | Action::Stop(_) => {}
                // Written once the starts and stops are carried out (below).
                Action::Report(r) => report = Some(r),
                Action::AskPeers(ps) => {
                    for p in ps {
                        tokio::spawn(ask_peer(client.clone(), node.clone(), p, now, tx.clone()));
                    }
                }
                Action::ReadPlacement => {
                    let (registry, tx) = (registry.clone(), tx.clone());
                    tokio::spawn(async move {
                        match registry.get_placement().await {
                            Ok(p) => {
                                let _ = tx.send(Input::Placement(p));
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "re-reading the placement after re-registering: {e}"
                                );
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let _ = tx.send(Input::PlacementUnread);
                            }
                        }
                    });
                }
                Action::Health(h) => {
                    tracing::info!(node = %me, health = ?h, "cluster membership health");
                    node.set_lease_lost(h == Health::LeaseLost);
                    node.set_serving_on_promises(h == Health::ServingOnPromises);
                }
            }
        }
        if applied.as_ref() != Some(&delivering) {
            tracing::info!(
                node = %me,
                epoch,
                health = ?health,
                groups = ?delivering,
                waiting = ?waiting,
                "consumer groups placed here"
            );
            node.set_owned_groups(Some(delivering.clone())).await;
            applied = Some(delivering);
        } else if !waiting.is_empty() {
            tracing::debug!(node = %me, epoch, waiting = ?waiting, "groups wait for their previous owner to stop them");
        }
        if let Some(r) = report {
            // After set_owned_groups returned: the groups left out have stopped.
            delivered.send_replace(r);
        }
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = placement.changed() => if r.is_err() {
                tracing::warn!("placement watch ended; delivering nothing");
                node.set_owned_groups(Some(BTreeSet::new())).await;
                return;
            },
            r = status.changed() => if r.is_err() {
                node.set_owned_groups(Some(BTreeSet::new())).await;
                return;
            },
            _ = peers.changed() => {},
            Some(input) = rx.recv() => inputs.push(input),
            _ = machine.wake.notified() => {},
            _ = sleep => {},
        }
        while let Ok(input) = rx.try_recv() {
            inputs.push(input);
        }
    }
}

/// Applies one catalog entry to the node.
async fn apply(
    node: &Node,
    kind: CatalogKind,
    name: &str,
    value: &serde_json::Value,
) -> Result<(), anyhow::Error> {
    match kind {
        CatalogKind::Topic => {
            let cfg: TopicConfig = serde_json::from_value(value.clone())?;
            node.apply_topic(name, cfg).await?;
        }
        CatalogKind::Subscription => {
            let spec: SubscriptionSpec = serde_json::from_value(value.clone())?;
            node.apply_subscription(spec).await?;
        }
    }
    Ok(())
}

async fn remove(node: &Node, kind: CatalogKind, name: &str) {
    let r = match kind {
        CatalogKind::Topic => node.delete_topic(name).await,
        CatalogKind::Subscription => node.delete_subscription(name).await,
    };
    match r {
        Ok(()) => {}
        Err(meshd_node::server::NodeError::TopicNotFound { .. })
        | Err(meshd_node::server::NodeError::SubscriptionNotFound { .. }) => {}
        Err(e) => tracing::warn!(?kind, name, "applying a catalog delete: {e}"),
    }
}

/// Carries out the catalog sync's actions; failed applies go back to it.
async fn carry_out(node: &Node, sync: &mut CatalogSync, actions: Vec<CatalogAction>) {
    for a in actions {
        match a {
            CatalogAction::Apply { kind, name, value } => {
                if let Err(e) = apply(node, kind, &name, &value).await {
                    tracing::warn!(?kind, name, "catalog entry not applied yet: {e:#}");
                    sync.failed(kind, name, value);
                }
            }
            CatalogAction::Remove { kind, name } => remove(node, kind, &name).await,
        }
    }
}

/// Watches the catalog and applies it to the node through [`CatalogSync`] (idempotent;
/// a node started later catches up from the snapshot). Entries that cannot be applied
/// yet are retried every [`CATALOG_RETRY`].
async fn sync_catalog(node: Arc<Node>, registry: Arc<dyn Registry>) {
    loop {
        let mut w = match registry.watch_catalog().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("watching the catalog: {e}");
                tokio::time::sleep(CATALOG_RETRY).await;
                continue;
            }
        };
        let mut sync = CatalogSync::new();
        let mut retry = tokio::time::interval(CATALOG_RETRY);
        loop {
            let actions = tokio::select! {
                ev = w.recv() => match ev {
                    Some(ev) => sync.event(ev),
                    None => break,
                },
                _ = retry.tick() => sync.due(),
            };
            carry_out(&node, &mut sync, actions).await;
        }
    }
}
