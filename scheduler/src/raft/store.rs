//! The scheduler's persistent Raft storage over one redb file: the log store
//! ([`LogStore`], openraft `RaftLogStorage`) and the state machine ([`StateMachine`],
//! openraft `RaftStateMachine`) holding the committed placement decisions.
//!
//! Tables (values are JSON):
//! - `log`: log index → `Entry`;
//! - `meta`: `vote`, `committed`, `last_purged` → log store metadata;
//! - `sm`: `state` → [`SmState`] (last applied log id, membership, latest decision),
//!   `snapshot` → the last built or installed snapshot (meta + data).
//!
//! Every write is one redb transaction, committed (fsync) before openraft is told it is
//! done, so a restart finds exactly what was acknowledged. redb calls run on the blocking
//! thread pool.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{NodeId, Request, Response, TypeConfig};
use crate::registry::Placement;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// Opens (or creates) the redb file of a scheduler member.
pub fn open_db(path: &Path) -> Result<Arc<Database>, redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    {
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.open_table(SM)?;
    }
    tx.commit()?;
    Ok(Arc::new(db))
}

fn any<E: std::fmt::Display>(e: E) -> AnyError {
    AnyError::error(e.to_string())
}

/// Runs a redb closure on the blocking pool; `wrap` turns its error into openraft's.
async fn blocking<T, F>(
    db: &Arc<Database>,
    wrap: fn(AnyError) -> StorageIOError<NodeId>,
    f: F,
) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
{
    let db = Arc::clone(db);
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(wrap(any(e)).into()),
        Err(e) => Err(wrap(any(e)).into()),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, redb::Error> {
    serde_json::to_vec(v).map_err(|e| redb::Error::Io(std::io::Error::other(e)))
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, redb::Error> {
    serde_json::from_slice(b).map_err(|e| redb::Error::Io(std::io::Error::other(e)))
}

fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, redb::Error> {
    let tx = db.begin_read()?;
    let t = tx.open_table(table)?;
    match t.get(key)? {
        Some(v) => Ok(Some(from_json(v.value())?)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    v: &T,
) -> Result<(), redb::Error> {
    let bytes = to_json(v)?;
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(table)?;
        t.insert(key, bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// The Raft log and vote, in redb. Cloning shares the database.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// A log store over an opened database.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }
}

fn bound_start(b: Bound<&u64>) -> u64 {
    match b {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn bound_end(b: Bound<&u64>) -> Option<u64> {
    match b {
        Bound::Included(x) => Some(*x),
        Bound::Excluded(x) => x.checked_sub(1),
        Bound::Unbounded => Some(u64::MAX),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let start = bound_start(range.start_bound());
        let Some(end) = bound_end(range.end_bound()) else {
            return Ok(Vec::new());
        };
        if end < start {
            return Ok(Vec::new());
        }
        blocking(&self.db, StorageIOError::read_logs, move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(LOG)?;
            let mut out = Vec::new();
            for item in t.range(start..=end)? {
                let (_, v) = item?;
                out.push(from_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        blocking(&self.db, StorageIOError::read_logs, |db| {
            let purged: Option<LogId<NodeId>> = get_meta(db, META, "last_purged")?;
            let tx = db.begin_read()?;
            let t = tx.open_table(LOG)?;
            let last = match t.last()? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = from_json(v.value())?;
                    Some(e.log_id)
                }
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let vote = *vote;
        blocking(&self.db, StorageIOError::write_vote, move |db| {
            put_meta(db, META, "vote", &vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        blocking(&self.db, StorageIOError::read_vote, |db| {
            get_meta(db, META, "vote")
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        blocking(&self.db, StorageIOError::write, move |db| {
            put_meta(db, META, "committed", &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        blocking(&self.db, StorageIOError::read, |db| {
            Ok(get_meta::<Option<LogId<NodeId>>>(db, META, "committed")?.flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let res = blocking(&self.db, StorageIOError::write_logs, move |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(LOG)?;
                for e in &entries {
                    let bytes = to_json(e)?;
                    t.insert(e.log_id.index, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        blocking(&self.db, StorageIOError::write_logs, move |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(LOG)?;
                t.retain_in(log_id.index.., |_, _| false)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        blocking(&self.db, StorageIOError::write_logs, move |db| {
            let bytes = to_json(&Some(log_id))?;
            let tx = db.begin_write()?;
            {
                let mut m = tx.open_table(META)?;
                m.insert("last_purged", bytes.as_slice())?;
                let mut t = tx.open_table(LOG)?;
                t.retain_in(..=log_id.index, |_, _| false)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

/// The state the scheduler's Raft group agrees on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmState {
    /// The last log entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The latest committed placement decision.
    pub placement: Option<Placement>,
    /// How many placement decisions were committed in total.
    pub decisions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The state machine: committed placement decisions, persisted in redb and announced on
/// a watch channel. Cloning shares the database and the channel.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    state: watch::Sender<SmState>,
}

impl StateMachine {
    /// Loads the state machine from the database (empty if new).
    pub async fn open(db: Arc<Database>) -> StoreResult<Self> {
        let state = blocking(&db, StorageIOError::read_state_machine, |db| {
            Ok(get_meta::<SmState>(db, SM, "state")?.unwrap_or_default())
        })
        .await?;
        Ok(Self {
            db,
            state: watch::channel(state).0,
        })
    }

    /// A receiver of the applied state, updated after every apply.
    pub fn subscribe(&self) -> watch::Receiver<SmState> {
        self.state.subscribe()
    }

    /// The applied state now.
    pub fn current(&self) -> SmState {
        self.state.borrow().clone()
    }

    async fn persist(&self, state: SmState) -> StoreResult<()> {
        let s = state.clone();
        blocking(&self.db, StorageIOError::write_state_machine, move |db| {
            put_meta(db, SM, "state", &s)
        })
        .await?;
        self.state.send_replace(state);
        Ok(())
    }
}

/// Applies one request to the state: a decision is taken only if its epoch is above the
/// last committed one, so a stale leader's late write cannot step the placement back.
pub fn apply_request(state: &mut SmState, req: &Request) -> Response {
    match req {
        Request::Place { placement } => {
            let cur = state.placement.as_ref().map(|p| p.epoch);
            if cur.is_some_and(|e| placement.epoch <= e) {
                return Response {
                    accepted: false,
                    epoch: cur,
                };
            }
            state.placement = Some(placement.clone());
            state.decisions = state.decisions.saturating_add(1);
            Response {
                accepted: true,
                epoch: Some(placement.epoch),
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let state = self.current();
        let data = serde_json::to_vec(&state)
            .map_err(|e| StorageIOError::<NodeId>::write_snapshot(None, any(e)))?;
        let id = match state.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        blocking(
            &self.db,
            |e| StorageIOError::write_snapshot(None, e),
            move |db| put_meta(db, SM, "snapshot", &stored),
        )
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let s = self.current();
        Ok((s.last_applied, s.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.current();
        let mut out = Vec::new();
        for e in entries {
            state.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(req) => out.push(apply_request(&mut state, &req)),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Response::default());
                }
            }
        }
        self.persist(state).await?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let mut state: SmState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::<NodeId>::read_snapshot(Some(meta.signature()), any(e)))?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        blocking(
            &self.db,
            |e| StorageIOError::write_snapshot(None, e),
            move |db| put_meta(db, SM, "snapshot", &stored),
        )
        .await?;
        self.persist(state).await
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = blocking(
            &self.db,
            |e| StorageIOError::read_snapshot(None, e),
            |db| get_meta(db, SM, "snapshot"),
        )
        .await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
