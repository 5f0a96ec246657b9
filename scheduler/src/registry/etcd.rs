//! The etcd [`Registry`]: members as leased keys, groups as leased keys, placement as one
//! document updated by compare-and-set, membership watched from a listed revision.
//!
//! Every call carries a timeout ([`EtcdConfig::op_timeout`]); the HTTP/2 keep-alive of
//! the gRPC channel detects a silent etcd (a stopped process, a dead link) so broken
//! watches are noticed. Watches that break, or whose start revision was compacted away,
//! re-list and continue (see `watch.rs`); reconnects back off
//! exponentially between [`EtcdConfig::backoff_min`] and [`EtcdConfig::backoff_max`].
//! The lease logic (keep-alive, loss, re-registration) is shared with the in-process
//! registry in `member.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::catalog::{self, CatalogTracker};
use super::keys::Keys;
use super::member::{self, Backoff, LeaseBackend};
use super::tokens::{check_import, TokenEntry, TokenEvent, TokenWatch};
use super::watch::{forward, Tracker};
use super::{
    check_epoch, CatalogEntry, CatalogEvent, CatalogKind, CatalogWatch, GroupKind, GroupReport,
    LeaseConfig, MemberHandle, MemberInfo, MemberWatch, Placement, Registry, RegistryError, Role,
};

/// Most operations etcd accepts in one transaction is 128 by default; stay below.
const MAX_TXN_OPS: usize = 100;
const WATCH_CHANNEL: usize = 256;

/// Settings of an etcd registry client.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The cluster whose keys this client reads and writes.
    pub cluster: String,
    /// Timeout of every unary call (get, put, txn, grant, revoke, one keep-alive round).
    pub op_timeout: Duration,
    /// Timeout of establishing a connection.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping period of the connection (detects a dead link under an
    /// idle watch). Keep it at or above etcd's `--grpc-keepalive-min-time` (default 5 s):
    /// etcd answers more frequent pings with GOAWAY and drops the connection (measured: a
    /// 500 ms period broke an idle watch every ~2 s).
    pub http2_keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub http2_keep_alive_timeout: Duration,
    /// First delay before retrying after a failure.
    pub backoff_min: Duration,
    /// Largest delay between retries.
    pub backoff_max: Duration,
    /// TLS to etcd (`https://` endpoints).
    pub tls: Option<TlsOptions>,
}

impl EtcdConfig {
    /// Defaults for `cluster` at `endpoints`: 2 s call timeout, 2 s connect timeout,
    /// HTTP/2 pings every 10 s answered within 5 s, backoff 100 ms → 2 s, no TLS.
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> Self {
        Self {
            endpoints,
            cluster: cluster.into(),
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            http2_keep_alive_interval: Duration::from_secs(10),
            http2_keep_alive_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            tls: None,
        }
    }

    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push("no etcd endpoints".to_string());
        }
        if self.cluster.is_empty() {
            problems.push("empty cluster name".to_string());
        }
        for (name, d) in [
            ("op_timeout", self.op_timeout),
            ("connect_timeout", self.connect_timeout),
            ("http2_keep_alive_interval", self.http2_keep_alive_interval),
            ("http2_keep_alive_timeout", self.http2_keep_alive_timeout),
            ("backoff_min", self.backoff_min),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be above zero"));
            }
        }
        if self.backoff_max < self.backoff_min {
            problems.push("backoff_max is below backoff_min".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::InvalidConfig(problems.join("; ")))
        }
    }
}

/// [`Registry`] over etcd v3. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    keys: Keys,
    cfg: Arc<EtcdConfig>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.cfg.endpoints)
            .field("cluster", &self.cfg.cluster)
            .finish_non_exhaustive()
    }
}

fn map_err(e: etcd_client::Error) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

/// Runs one etcd call under the timeout.
async fn call<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RegistryError> {
    match timeout(limit, f).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(RegistryError::Timeout { op, timeout: limit }),
    }
}

fn decode_member(keys: &Keys, kv: &KeyValue) -> Option<MemberInfo> {
    let key = kv.key_str().ok()?;
    let id = keys.parse_member(key)?;
    match serde_json::from_slice::<MemberInfo>(kv.value()) {
        Ok(info) if info.member_id() == id => Some(info),
        Ok(info) => {
            tracing::warn!(key, found = %info.member_id(), "member key holds another member's info; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "undecodable member info; ignored");
            None
        }
    }
}

fn decode_placement(key: &str, kv: &KeyValue) -> Result<Placement, RegistryError> {
    serde_json::from_slice(kv.value()).map_err(|e| RegistryError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl EtcdRegistry {
    /// Connects to etcd. The connection itself is made lazily and re-made on failure, so
    /// this succeeds even while etcd is down; calls then fail with `Unavailable` or
    /// `Timeout` until it is back.
    pub async fn connect(cfg: EtcdConfig) -> Result<Self, RegistryError> {
        cfg.validate()?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(cfg.http2_keep_alive_interval, cfg.http2_keep_alive_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = cfg.tls.clone() {
            opts = opts.with_tls(tls);
        }
        let client = call(
            "connect",
            cfg.connect_timeout,
            Client::connect(cfg.endpoints.clone(), Some(opts)),
        )
        .await?;
        Ok(Self {
            client,
            keys: Keys::new(&cfg.cluster),
            cfg: Arc::new(cfg),
        })
    }

    /// The key layout of this cluster.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The members and the revision they were read at.
    async fn list_at(&self) -> Result<(Vec<MemberInfo>, i64), RegistryError> {
        let mut client = self.client.clone();
        let t = self.cfg.op_timeout;
        let nodes = call(
            "get",
            t,
            client.get(
                self.keys.members_prefix(Role::Node),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        let rev = nodes.header().map(|h| h.revision()).unwrap_or(0);
        let proxies = call(
            "get",
            t,
            client.get(
                self.keys.members_prefix(Role::Proxy),
                Some(GetOptions::new().with_prefix().with_revision(rev)),
            ),
        )
        .await?;
        let members = nodes
            .kvs()
            .iter()
            .chain(proxies.kvs())
            .filter_map(|kv| decode_member(&self.keys, kv))
            .collect();
        Ok((members, rev))
    }

    /// The placement, its key's mod revision, and the revision it was read at.
    async fn placement_at(&self) -> Result<(Option<(Placement, i64)>, i64), RegistryError> {
        let key = self.keys.placement();
        let mut client = self.client.clone();
        let resp = call("get", self.cfg.op_timeout, client.get(key.as_str(), None)).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        match resp.kvs().first() {
            None => Ok((None, rev)),
            Some(kv) => Ok((Some((decode_placement(&key, kv)?, kv.mod_revision())), rev)),
        }
    }

    fn decode_catalog(&self, kv: &KeyValue) -> Option<CatalogEntry> {
        let key = kv.key_str().ok()?;
        let (kind, name) = self.keys.parse_catalog(key)?;
        match serde_json::from_slice(kv.value()) {
            Ok(value) => Some(CatalogEntry { kind, name, value }),
            Err(e) => {
                tracing::warn!(key, error = %e, "undecodable catalog entry; ignored");
                None
            }
        }
    }

    /// Every record under `prefix` that `decode` reads (the others are skipped) and the
    /// revision they were read at.
    async fn records_at<T>(
        &self,
        prefix: String,
        decode: impl Fn(&KeyValue) -> Option<T>,
    ) -> Result<(Vec<T>, i64), RegistryError> {
        let mut client = self.client.clone();
        let resp = call(
            "get",
            self.cfg.op_timeout,
            client.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.kvs().iter().filter_map(decode).collect(), rev))
    }

    /// The catalog (topics first) and the revision it was read at.
    async fn catalog_at(&self) -> Result<(Vec<CatalogEntry>, i64), RegistryError> {
        let (mut entries, rev) = self
            .records_at(self.keys.catalog_prefix(), |kv| self.decode_catalog(kv))
            .await?;
        entries.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok((entries, rev))
    }

    /// The catalog watch loop: list at R, watch from R + 1, re-list on any break.
    async fn run_catalog_watch(self, tx: mpsc::Sender<CatalogEvent>) {
        let mut tracker = CatalogTracker::default();
        let mut backoff = self.backoff();
        'relist: loop {
            match self.catalog_at().await {
                Ok((snapshot, rev)) => {
                    if !catalog::forward(&tx, tracker.resync(snapshot)).await {
                        return;
                    }
                    let opts = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1);
                    let mut client = self.client.clone();
                    let watched = call(
                        "watch",
                        self.cfg.op_timeout,
                        client.watch(self.keys.catalog_prefix(), Some(opts)),
                    )
                    .await;
                    if let Ok(mut stream) = watched {
                        backoff.reset();
                        loop {
                            let msg = tokio::select! {
                                _ = tx.closed() => return,
                                m = stream.message() => m,
                            };
                            let Ok(Some(resp)) = msg else { break };
                            if resp.canceled() || resp.compact_revision() > 0 {
                                break;
                            }
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                let out = match ev.event_type() {
                                    EventType::Put => {
                                        self.decode_catalog(kv).and_then(|e| tracker.put(e))
                                    }
                                    EventType::Delete => kv
                                        .key_str()
                                        .ok()
                                        .and_then(|k| self.keys.parse_catalog(k))
                                        .and_then(|(kind, name)| tracker.delete(kind, name)),
                                };
                                if let Some(e) = out {
                                    if tx.send(e).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "catalog watch: listing failed"),
            }
            if !pause(&tx, &mut backoff).await {
                return;
            }
            continue 'relist;
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max)
    }

    fn decode_token(&self, kv: &KeyValue) -> Option<TokenEntry> {
        let key = kv.key_str().ok()?;
        let id = self.keys.parse_token(key)?;
        match serde_json::from_slice(kv.value()) {
            Ok(value) => Some(TokenEntry { id, value }),
            Err(e) => {
                tracing::warn!(key, error = %e, "undecodable token record; ignored");
                None
            }
        }
    }

    /// The token records (sorted by id) and the revision they were read at.
    async fn tokens_at(&self) -> Result<(Vec<TokenEntry>, i64), RegistryError> {
        let (mut entries, rev) = self
            .records_at(self.keys.tokens_prefix(), |kv| self.decode_token(kv))
            .await?;
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((entries, rev))
    }

    /// The token watch loop: list at R and send the snapshot, watch from R + 1; on any
    /// break tell the consumer, back off, and list again (never resume from an old
    /// revision, so compaction cannot hide a revocation).
    async fn run_token_watch(self, tx: mpsc::Sender<TokenEvent>) {
        let mut backoff = self.backoff();
        // Whether the consumer holds a snapshot it has not been told is stale.
        let mut live = false;
        loop {
            let broke = match self.tokens_at().await {
                Ok((snapshot, rev)) => {
                    if tx.send(TokenEvent::Snapshot(snapshot)).await.is_err() {
                        return;
                    }
                    live = true;
                    match self.follow_tokens(rev, &tx, &mut backoff).await {
                        Ok(Follow::ConsumerGone) => return,
                        Ok(Follow::Broken) => RegistryError::Unavailable(
                            "the token watch was cancelled or its history compacted".into(),
                        ),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            tracing::debug!(error = %broke, "token watch broke");
            if live {
                live = false;
                if tx.send(TokenEvent::Interrupted(broke)).await.is_err() {
                    return;
                }
            }
            if !pause(&tx, &mut backoff).await {
                return;
            }
        }
    }

    /// Forwards token events from revision `rev + 1` until the watch breaks (an error:
    /// stream error or end; `Broken`: cancellation, compacted start revision).
    async fn follow_tokens(
        &self,
        rev: i64,
        tx: &mpsc::Sender<TokenEvent>,
        backoff: &mut Backoff,
    ) -> Result<Follow, RegistryError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut client = self.client.clone();
        let mut stream = call(
            "watch",
            self.cfg.op_timeout,
            client.watch(self.keys.tokens_prefix(), Some(opts)),
        )
        .await?;
        backoff.reset();
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => return Ok(Follow::ConsumerGone),
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    return Err(RegistryError::Unavailable(
                        "the token watch stream ended".into(),
                    ))
                }
                Err(e) => return Err(map_err(e)),
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok(Follow::Broken);
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let out = match ev.event_type() {
                    EventType::Put => self.decode_token(kv).map(TokenEvent::Put),
                    EventType::Delete => kv
                        .key_str()
                        .ok()
                        .and_then(|k| self.keys.parse_token(k))
                        .map(TokenEvent::Delete),
                };
                if let Some(e) = out {
                    if tx.send(e).await.is_err() {
                        return Ok(Follow::ConsumerGone);
                    }
                }
            }
        }
    }
}

/// Lease operations of one member over etcd.
struct EtcdLease {
    client: Client,
    keys: Keys,
    op_timeout: Duration,
    keeper: Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
}

#[async_trait]
impl LeaseBackend for EtcdLease {
    async fn grant(&mut self, ttl: Duration) -> Result<i64, RegistryError> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let resp = call(
            "lease_grant",
            self.op_timeout,
            self.client.lease_grant(secs, None),
        )
        .await?;
        Ok(resp.id())
    }

    async fn write(
        &mut self,
        lease: i64,
        prev: Option<&MemberInfo>,
        info: &MemberInfo,
    ) -> Result<(), RegistryError> {
        let id = info.member_id();
        let value = serde_json::to_vec(info).map_err(|e| RegistryError::Corrupt {
            key: self.keys.member(&id),
            reason: e.to_string(),
        })?;
        let tag = serde_json::to_vec(&id).map_err(|e| RegistryError::Corrupt {
            key: self.keys.member(&id),
            reason: e.to_string(),
        })?;
        let mut ops = Vec::new();
        for kind in [GroupKind::Producer, GroupKind::Consumer] {
            for g in info.groups.of(kind) {
                ops.push(TxnOp::put(
                    self.keys.group_member(kind, g, &id),
                    tag.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
            if let Some(prev) = prev {
                for g in prev.groups.of(kind).difference(info.groups.of(kind)) {
                    ops.push(TxnOp::delete(self.keys.group_member(kind, g, &id), None));
                }
            }
        }
        // The member key goes last, with the final chunk, so a watcher that sees the
        // member's new info can already read its group keys.
        ops.push(TxnOp::put(
            self.keys.member(&id),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ));
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().and_then(chunk.to_vec());
            match timeout(self.op_timeout, self.client.txn(txn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_lease_not_found(&e) => {
                    return Err(RegistryError::LeaseNotFound { lease })
                }
                Ok(Err(e)) => return Err(map_err(e)),
                Err(_) => {
                    return Err(RegistryError::Timeout {
                        op: "txn",
                        timeout: self.op_timeout,
                    })
                }
            }
        }
        Ok(())
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<bool, RegistryError> {
        if self.keeper.as_ref().map(|(l, _, _)| *l) != Some(lease) {
            // Opening the stream is itself one renewal round (etcd-client sends the first
            // request and checks its answer).
            let opened = timeout(self.op_timeout, self.client.lease_keep_alive(lease)).await;
            return match opened {
                Ok(Ok((keeper, stream))) => {
                    self.keeper = Some((lease, keeper, stream));
                    Ok(true)
                }
                Ok(Err(e)) if is_lease_not_found(&e) => Ok(false),
                Ok(Err(e)) => Err(map_err(e)),
                Err(_) => Err(RegistryError::Timeout {
                    op: "lease_keep_alive",
                    timeout: self.op_timeout,
                }),
            };
        }
        let Some((_, keeper, stream)) = self.keeper.as_mut() else {
            return Err(RegistryError::Unavailable("no keep-alive stream".into()));
        };
        let round = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match call("lease_keep_alive", self.op_timeout, round).await {
            Ok(Some(resp)) => Ok(resp.ttl() > 0),
            Ok(None) => {
                self.keeper = None;
                Err(RegistryError::Unavailable(
                    "keep-alive stream closed".into(),
                ))
            }
            Err(e) => {
                // Drop the stream: a late answer must not be taken for the next round's.
                self.keeper = None;
                Err(e)
            }
        }
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), RegistryError> {
        if self.keeper.as_ref().map(|(l, _, _)| *l) == Some(lease) {
            self.keeper = None;
        }
        match timeout(self.op_timeout, self.client.lease_revoke(lease)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_lease_not_found(&e) => Ok(()),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(RegistryError::Timeout {
                op: "lease_revoke",
                timeout: self.op_timeout,
            }),
        }
    }
}

/// How following a watch ended.
#[derive(Debug, PartialEq, Eq)]
enum Follow {
    /// The watch broke: re-list and watch again.
    Broken,
    /// The consumer dropped its end: stop.
    ConsumerGone,
}

/// Sleeps for the backoff delay; `false` if the consumer went away meanwhile.
async fn pause<T>(tx: &mpsc::Sender<T>, backoff: &mut Backoff) -> bool {
    tokio::select! {
        _ = tx.closed() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

impl EtcdRegistry {
    /// The membership watch loop: list at R, watch from R + 1, re-list on any break.
    async fn run_member_watch(self, tx: mpsc::Sender<super::MemberEvent>) {
        let mut tracker = Tracker::default();
        let mut backoff = self.backoff();
        loop {
            match self.list_at().await {
                Ok((snapshot, rev)) => {
                    if !forward(&tx, tracker.resync(snapshot)).await {
                        return;
                    }
                    if self
                        .follow_members(rev, &mut tracker, &tx, &mut backoff)
                        .await
                        == Follow::ConsumerGone
                    {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "member watch: listing failed"),
            }
            if !pause(&tx, &mut backoff).await {
                return;
            }
        }
    }

    /// Forwards member events from revision `rev + 1` until the watch breaks (stream
    /// error or end, cancellation, compacted start revision).
    async fn follow_members(
        &self,
        rev: i64,
        tracker: &mut Tracker,
        tx: &mpsc::Sender<super::MemberEvent>,
        backoff: &mut Backoff,
    ) -> Follow {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut client = self.client.clone();
        let mut stream = match call(
            "watch",
            self.cfg.op_timeout,
            client.watch(self.keys.root(), Some(opts)),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "member watch: watch failed");
                return Follow::Broken;
            }
        };
        backoff.reset();
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => return Follow::ConsumerGone,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => return Follow::Broken,
                Err(e) => {
                    tracing::debug!(error = %e, "member watch: stream broke");
                    return Follow::Broken;
                }
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                tracing::debug!(
                    reason = resp.cancel_reason(),
                    compacted = resp.compact_revision(),
                    "member watch cancelled"
                );
                return Follow::Broken;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(id) = kv.key_str().ok().and_then(|k| self.keys.parse_member(k)) else {
                    continue;
                };
                let out = match ev.event_type() {
                    EventType::Put => decode_member(&self.keys, kv).map(|i| tracker.put(i)),
                    EventType::Delete => tracker.delete(id),
                };
                if let Some(e) = out {
                    if tx.send(e).await.is_err() {
                        return Follow::ConsumerGone;
                    }
                }
            }
        }
    }

    /// The placement watch loop: keeps `tx` at the latest document.
    async fn run_placement_watch(self, tx: watch::Sender<Option<Placement>>, mut rev: i64) {
        let mut backoff = self.backoff();
        let key = self.keys.placement();
        loop {
            let opts = WatchOptions::new().with_start_revision(rev + 1);
            let mut client = self.client.clone();
            let stream = call(
                "watch",
                self.cfg.op_timeout,
                client.watch(key.as_str(), Some(opts)),
            )
            .await;
            if let Ok(mut stream) = stream {
                backoff.reset();
                loop {
                    let msg = tokio::select! {
                        _ = tx.closed() => return,
                        m = stream.message() => m,
                    };
                    let Ok(Some(resp)) = msg else { break };
                    if resp.canceled() || resp.compact_revision() > 0 {
                        break;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        rev = rev.max(kv.mod_revision());
                        match ev.event_type() {
                            EventType::Put => match decode_placement(&key, kv) {
                                Ok(p) => {
                                    tx.send_replace(Some(p));
                                }
                                Err(e) => tracing::warn!(error = %e, "ignoring placement"),
                            },
                            EventType::Delete => {
                                tx.send_replace(None);
                            }
                        }
                    }
                }
            }
            // Broken: back off, re-read, and watch again from the read revision.
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                match self.placement_at().await {
                    Ok((current, at)) => {
                        let current = current.map(|(p, _)| p);
                        tx.send_if_modified(|v| {
                            let changed = *v != current;
                            *v = current;
                            changed
                        });
                        rev = at;
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "placement watch: read failed"),
                }
            }
        }
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn cluster(&self) -> &str {
        &self.cfg.cluster
    }

    async fn register(
        &self,
        info: MemberInfo,
        lease: LeaseConfig,
    ) -> Result<MemberHandle, RegistryError> {
        let backend = EtcdLease {
            client: self.client.clone(),
            keys: self.keys.clone(),
            op_timeout: self.cfg.op_timeout,
            keeper: None,
        };
        member::start(backend, info, lease, self.backoff()).await
    }

    async fn list_members(&self) -> Result<Vec<MemberInfo>, RegistryError> {
        let (mut members, _) = self.list_at().await?;
        members.sort_by_key(|m| m.member_id());
        Ok(members)
    }

    async fn list_groups(&self) -> Result<GroupReport, RegistryError> {
        let mut client = self.client.clone();
        let resp = call(
            "get",
            self.cfg.op_timeout,
            client.get(
                format!("{}groups/", self.keys.root()),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        let mut report = GroupReport::default();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            if let Some((kind, group, member)) = self.keys.parse_group_member(key) {
                report.insert(kind, group, member);
            }
        }
        Ok(report)
    }

    async fn watch_members(&self) -> Result<MemberWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        tokio::spawn(self.clone().run_member_watch(tx));
        Ok(MemberWatch::new(rx))
    }

    async fn get_placement(&self) -> Result<Option<Placement>, RegistryError> {
        Ok(self.placement_at().await?.0.map(|(p, _)| p))
    }

    async fn put_placement_if(
        &self,
        expected_epoch: Option<u64>,
        new: &Placement,
    ) -> Result<(), RegistryError> {
        check_epoch(expected_epoch, new)?;
        let key = self.keys.placement();
        let value = serde_json::to_vec(new).map_err(|e| RegistryError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        // Read the epoch, then write only if the key was not modified since: two writers
        // cannot both succeed from the same epoch.
        for _ in 0..3 {
            let (current, _) = self.placement_at().await?;
            let actual = current.as_ref().map(|(p, _)| p.epoch);
            if actual != expected_epoch {
                return Err(RegistryError::PlacementConflict {
                    expected: expected_epoch,
                    actual,
                });
            }
            let guard = match &current {
                Some((_, mod_rev)) => {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, *mod_rev)
                }
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when(vec![guard]).and_then(vec![TxnOp::put(
                key.as_str(),
                value.clone(),
                None,
            )]);
            let mut client = self.client.clone();
            let resp = call("txn", self.cfg.op_timeout, client.txn(txn)).await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        let actual = self.get_placement().await?.map(|p| p.epoch);
        Err(RegistryError::PlacementConflict {
            expected: expected_epoch,
            actual,
        })
    }

    async fn watch_placement(&self) -> Result<watch::Receiver<Option<Placement>>, RegistryError> {
        let (current, rev) = self.placement_at().await?;
        let (tx, rx) = watch::channel(current.map(|(p, _)| p));
        tokio::spawn(self.clone().run_placement_watch(tx, rev));
        Ok(rx)
    }

    async fn catalog_put(
        &self,
        kind: CatalogKind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(), RegistryError> {
        let key = self.keys.catalog(kind, name);
        let bytes = serde_json::to_vec(value).map_err(|e| RegistryError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let mut client = self.client.clone();
        call("put", self.cfg.op_timeout, client.put(key, bytes, None)).await?;
        Ok(())
    }

    async fn catalog_create(
        &self,
        kind: CatalogKind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        let key = self.keys.catalog(kind, name);
        let bytes = serde_json::to_vec(value).map_err(|e| RegistryError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let txn = Txn::new()
            .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key.as_str(), bytes, None)])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let mut client = self.client.clone();
        let resp = call("txn", self.cfg.op_timeout, client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(None);
        }
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first() {
                    let existing =
                        serde_json::from_slice(kv.value()).map_err(|e| RegistryError::Corrupt {
                            key: key.clone(),
                            reason: e.to_string(),
                        })?;
                    return Ok(Some(existing));
                }
            }
        }
        // Deleted between the compare and the get: report it as taken by nothing.
        Ok(Some(serde_json::Value::Null))
    }

    async fn catalog_delete(&self, kind: CatalogKind, name: &str) -> Result<bool, RegistryError> {
        let key = self.keys.catalog(kind, name);
        let mut client = self.client.clone();
        let resp = call("delete", self.cfg.op_timeout, client.delete(key, None)).await?;
        Ok(resp.deleted() > 0)
    }

    async fn catalog_list(&self) -> Result<Vec<CatalogEntry>, RegistryError> {
        Ok(self.catalog_at().await?.0)
    }

    async fn watch_catalog(&self) -> Result<CatalogWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        tokio::spawn(self.clone().run_catalog_watch(tx));
        Ok(CatalogWatch::new(rx))
    }

    async fn token_create(
        &self,
        id: &str,
        value: &serde_json::Value,
    ) -> Result<bool, RegistryError> {
        let key = self.keys.token(id);
        let bytes = serde_json::to_vec(value).map_err(|e| RegistryError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        // Create revision 0: the key does not exist; of two racing creators one writes.
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.as_str(), bytes, None)]);
        let mut client = self.client.clone();
        let resp = call("txn", self.cfg.op_timeout, client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    async fn token_delete(&self, id: &str) -> Result<bool, RegistryError> {
        let mut client = self.client.clone();
        let resp = call(
            "delete",
            self.cfg.op_timeout,
            client.delete(self.keys.token(id), None),
        )
        .await?;
        Ok(resp.deleted() > 0)
    }

    async fn token_list(&self) -> Result<Vec<TokenEntry>, RegistryError> {
        Ok(self.tokens_at().await?.0)
    }

    async fn tokens_import_once(
        &self,
        marker: &serde_json::Value,
        entries: &[TokenEntry],
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        check_import(entries)?;
        let key = self.keys.tokens_import();
        let encode = |key: &str, v: &serde_json::Value| {
            serde_json::to_vec(v).map_err(|e| RegistryError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
        };
        let mut ops = vec![TxnOp::put(key.as_str(), encode(&key, marker)?, None)];
        for e in entries {
            let k = self.keys.token(&e.id);
            ops.push(TxnOp::put(k.as_str(), encode(&k, &e.value)?, None));
        }
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(ops)
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let mut client = self.client.clone();
        let resp = call("txn", self.cfg.op_timeout, client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(None);
        }
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first() {
                    return serde_json::from_slice(kv.value()).map(Some).map_err(|e| {
                        RegistryError::Corrupt {
                            key: key.clone(),
                            reason: e.to_string(),
                        }
                    });
                }
            }
        }
        Ok(Some(serde_json::Value::Null))
    }

    async fn watch_tokens(&self) -> Result<TokenWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        tokio::spawn(self.clone().run_token_watch(tx));
        Ok(TokenWatch::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "testing")]
    use crate::registry::Role;

    #[test]
    fn config_reports_every_problem() {
        let mut cfg = EtcdConfig::new(vec![], "");
        cfg.op_timeout = Duration::ZERO;
        let err = cfg.validate().expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("no etcd endpoints"), "{msg}");
        assert!(msg.contains("empty cluster"), "{msg}");
        assert!(msg.contains("op_timeout"), "{msg}");
    }

    /// A watch whose start revision was compacted away ends (so the caller re-lists)
    /// instead of hanging or skipping the lost history.
    #[cfg(feature = "testing")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compacted_start_revision_breaks_the_watch() {
        use crate::registry::testing::EtcdServer;
        let server = EtcdServer::start().await.expect("etcd");
        let reg = EtcdRegistry::connect(EtcdConfig::new(vec![server.endpoint()], "c"))
            .await
            .expect("connect");
        let (_, old_rev) = reg.list_at().await.expect("list");
        let h = reg
            .register(
                MemberInfo::new(Role::Node, "n1", "http://n1"),
                LeaseConfig::with_ttl(Duration::from_secs(2)),
            )
            .await
            .expect("register");
        for connections in 1..=3 {
            h.set_load(crate::registry::MemberLoad {
                connections,
                ..Default::default()
            })
            .await
            .expect("update");
        }
        let (_, now) = reg.list_at().await.expect("list");
        assert!(now > old_rev + 2);
        // Compaction keeps `now` and drops everything before it, old_rev + 1 included.
        let mut raw = reg.client.clone();
        raw.compact(now, None).await.expect("compact");
        let (tx, _rx) = mpsc::channel(16);
        let mut tracker = Tracker::default();
        let mut backoff = reg.backoff();
        let ended = timeout(
            Duration::from_secs(5),
            reg.follow_members(old_rev, &mut tracker, &tx, &mut backoff),
        )
        .await
        .expect("the watch must end, not hang");
        assert_eq!(ended, Follow::Broken);
        h.deregister().await.expect("deregister");
    }

    /// The token watch: a compacted start revision ends `follow_tokens` (the loop then
    /// re-lists); a killed etcd is reported as `Interrupted`, and once etcd is back a
    /// fresh `Snapshot` comes, holding what changed meanwhile.
    #[cfg(feature = "testing")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_watch_relists_after_compaction_and_outage() {
        use crate::registry::testing::EtcdServer;
        let mut server = EtcdServer::start().await.expect("etcd");
        let mut cfg = EtcdConfig::new(vec![server.endpoint()], "c");
        cfg.backoff_max = Duration::from_millis(200);
        let reg = EtcdRegistry::connect(cfg).await.expect("connect");
        let (_, old_rev) = reg.tokens_at().await.expect("list");
        for n in 0..3 {
            assert!(reg
                .token_create(&format!("t{n}"), &serde_json::json!({"n": n}))
                .await
                .expect("create"));
        }
        let (_, now) = reg.tokens_at().await.expect("list");
        let mut raw = reg.client.clone();
        raw.compact(now, None).await.expect("compact");
        let (tx, _rx) = mpsc::channel(16);
        let mut backoff = reg.backoff();
        let ended = timeout(
            Duration::from_secs(5),
            reg.follow_tokens(old_rev, &tx, &mut backoff),
        )
        .await
        .expect("the watch must end, not hang");
        assert_eq!(ended, Ok(Follow::Broken));

        let mut w = reg.watch_tokens().await.expect("watch");
        async fn next(w: &mut TokenWatch) -> TokenEvent {
            timeout(Duration::from_secs(20), w.recv())
                .await
                .expect("a token event")
                .expect("watch alive")
        }
        let TokenEvent::Snapshot(s) = next(&mut w).await else {
            panic!("snapshot first")
        };
        assert_eq!(s.len(), 3);
        server.kill();
        assert!(matches!(next(&mut w).await, TokenEvent::Interrupted(_)));
        server.restart().await.expect("restart");
        let TokenEvent::Snapshot(s) = next(&mut w).await else {
            panic!("a fresh snapshot after the outage")
        };
        assert_eq!(
            s.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["t0", "t1", "t2"]
        );
        assert!(reg.token_delete("t1").await.expect("delete"));
        assert_eq!(next(&mut w).await, TokenEvent::Delete("t1".into()));
    }
}
