//! One connection of a link as a sans-IO state machine ([`LinkSession`]).
//!
//! The machine owns the protocol of a connection: the handshake (version, mesh and peer
//! checks, with a deadline), the sending side (which store partitions to read and from
//! where, the send window of unacknowledged batches, which records the peer gets, the
//! progress marks over filtered-out records, the durable cursors the peer's acks move),
//! the receiving side's acknowledgements (batches go to the storer, progress frames are
//! acknowledged once every batch before them is stored), what it announces (catalog and
//! replica changes, the interest with this cluster's marks first), and the drain of a link
//! removed from the topology. It does no I/O: it takes received frames, what the store
//! answered, local changes and the time (`Instant` and wall clock passed in) and queues
//! [`Action`]s, which the caller takes with [`LinkSession::poll_action`] and performs in
//! order (the bridge's tokio/quinn shell: `crate::bridge`). Like `quinn-proto`'s
//! `Connection` and openraft's `Engine`, nothing here knows about sockets, tasks or the
//! node.
//!
//! What stays in the shell: reading and writing frames, reading the store (the machine
//! says where: [`LinkSession::read_at`], and takes the records: [`LinkSession::on_records`]),
//! storing received batches (the storer; its per-event decisions are
//! [`crate::intake::Round`], sans-IO too), committing cursors, and the gossip sets
//! themselves (catalog, replicas, marks).
//!
//! # Resuming
//! A new connection starts with an empty window: every partition is read from the durable
//! cursor (the last acknowledged position, [`LinkSession::start_for`]), so what was in
//! flight when the previous connection broke is sent again and nothing acknowledged is.
//! Records the peer holds by its marks ([`Frame::Marks`], sent before its interest) are
//! skipped one by one, so a reroute or a restarted receiver gets only what it lacks.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cloudevents::Event;
use meshd_core::codec::{decode_event, RawEvent};
use meshd_core::event::POS_EXT;
use meshd_core::wire::{
    Batch, CatalogEntry, Frame, Hello, InterestEntry, Mark, SchemaEntry, SubReplica, TraceQuery,
    TraceReply, WireEvent,
};
use meshd_node::store::StoredRecord;

use crate::cursor::{Commit, CursorError, SendWindow};
use crate::interest::PeerInterest;
use crate::link::{check_hello, event_path, frame_name, outgoing_stamps, HelloOutcome, ORIGIN_EXT};
use crate::marks::{self, OriginPos, PeerMarks, Start};
use crate::progress::{AckTracker, ProgressMarks};
use crate::routing::relay_topic;

/// Settings of a link session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most unacknowledged batches (and progress frames).
    pub window: usize,
    /// At most one progress frame per this interval.
    pub progress_every: Duration,
    /// The whole handshake (stream opened, hellos exchanged) must finish within this.
    pub handshake_timeout: Duration,
    /// A draining link closes after this even with batches unacknowledged.
    pub drain_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            window: 32,
            progress_every: crate::progress::PROGRESS_EVERY,
            handshake_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The time, as the machine needs it: monotonic for deadlines, the wall clock for the
/// `Clock` frame (the peer reads this side's `since` times with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic.
    pub at: Instant,
    /// Wall clock, ms since the epoch.
    pub wall_ms: u64,
}

/// Why a session ended (the machine's side of it; I/O failures are the shell's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The handshake failed: this side refused the peer, or the peer refused this side.
    #[error("handshake refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// A frame that has no place after the handshake.
    #[error("unexpected {kind} frame after the handshake")]
    UnexpectedFrame {
        /// Its kind.
        kind: &'static str,
    },
    /// The peer acknowledged something never sent.
    #[error(transparent)]
    Ack(#[from] CursorError),
    /// Draining (removed from the topology) and everything is acknowledged.
    #[error("link removed from the topology: drained")]
    Drained,
    /// Draining and the drain timeout passed with batches unacknowledged.
    #[error("link removed from the topology: drain timed out")]
    DrainTimedOut,
}

impl SessionEnd {
    /// Whether the link ended because it was removed from the topology.
    pub fn is_removal(&self) -> bool {
        matches!(self, SessionEnd::Drained | SessionEnd::DrainTimedOut)
    }
}

/// What the machine asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this frame.
    Send(Frame),
    /// A received batch: hand it to the storer (which answers with
    /// [`LinkSession::on_stored`]).
    Store(Batch),
    /// The peer acknowledged these positions: make them durable (the link cursor).
    CommitCursors(Vec<Commit>),
    /// The link has no durable cursor at this position yet: commit it now (retention holds
    /// committed cursors even before the peer's interest is known after a restart).
    AnchorCursor(Commit),
    /// The peer's interest (its `since` times in this cluster's clock): what the link's
    /// lag and the routes of other links' announcements read.
    LearnInterest(Vec<InterestEntry>),
    /// Topic catalog entries the peer sent: merge them (before the batches after them).
    MergeCatalog(Vec<CatalogEntry>),
    /// Schema catalog entries the peer sent: merge them.
    MergeSchemas(Vec<SchemaEntry>),
    /// Subscription replicas the peer sent: merge them.
    MergeReplicas(Vec<SubReplica>),
    /// The peer asks for an event's trace: answer (later) with a `TraceReply` frame.
    AnswerTrace(TraceQuery),
    /// The answer to a trace question this cluster asked.
    TraceAnswered(TraceReply),
    /// The handshake succeeded.
    Connected {
        /// The peer's topology digest differs from ours (a reload in progress?).
        digest_mismatch: bool,
    },
    /// End the session; the connection is closed with this reason.
    Close(SessionEnd),
}

/// Where reading one store partition for the peer goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// Nothing may be sent now (window full, draining, paused, closed).
    Blocked,
    /// The start is unknown: read the durable cursor and the bounds, then call
    /// [`LinkSession::start_for`] and [`LinkSession::set_start`].
    NeedStart,
    /// Read from this offset.
    At(u64),
}

/// What the sending side needs to know about the mesh to pick a record's recipients.
pub struct Outgoing<'a> {
    /// Whether the replication policy lets cluster `dest` receive topic `topic`.
    pub may_receive: &'a (dyn Fn(&str, &str) -> bool + Sync),
    /// Called for each record forwarded to the peer (the event trace).
    pub forwarded: Option<&'a (dyn Fn(&RawEvent<'_>) + Sync)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's hello (the dialer sent its own already).
    Handshake { deadline: Instant },
    /// Replicating.
    Open,
    /// Ended; every input is ignored.
    Closed,
}

/// One connection of a link (see the module docs).
#[derive(Debug)]
pub struct LinkSession {
    config: SessionConfig,
    me: String,
    peer: String,
    dialer: bool,
    hello: Hello,
    phase: Phase,
    actions: std::collections::VecDeque<Action>,
    window: SendWindow,
    interest: PeerInterest,
    /// Durable cursors (acknowledged or anchored) by (store topic, partition).
    durable: HashMap<(String, u32), u64>,
    /// What the peer told it holds, in origin terms (this connection).
    peer_marks: PeerMarks,
    /// The peer's wall clock minus this one's (ms), from its `Clock` frame.
    peer_clock_offset: Option<i64>,
    /// Cursor moves over records the peer does not want, not sent yet.
    progress: ProgressMarks,
    /// The cumulative ack over stored batches and received progress frames.
    acks: AckTracker,
    /// The interest last announced to the peer on this connection.
    announced: Option<Vec<InterestEntry>>,
    catalog_sent: u64,
    schemas_sent: u64,
    replicas_sent: u64,
    /// When draining started and how many batches were in flight then.
    draining: Option<(Instant, usize)>,
    /// When the peer last sent a batch or progress frame.
    last_batch_rx: Instant,
    paused: bool,
    rtt: Duration,
}

impl LinkSession {
    /// A new connection of the link between `hello.cluster` (this side) and `peer`. The
    /// dialer speaks first: its hello is queued at once.
    pub fn new(
        config: SessionConfig,
        hello: Hello,
        peer: &str,
        dialer: bool,
        now: Instant,
    ) -> LinkSession {
        let mut s = LinkSession {
            window: SendWindow::new(config.window),
            progress: ProgressMarks::new(config.progress_every),
            phase: Phase::Handshake {
                deadline: now + config.handshake_timeout,
            },
            config,
            me: hello.cluster.clone(),
            peer: peer.to_string(),
            dialer,
            hello,
            actions: Default::default(),
            interest: PeerInterest::default(),
            durable: HashMap::new(),
            peer_marks: PeerMarks::default(),
            peer_clock_offset: None,
            acks: AckTracker::new(),
            announced: None,
            catalog_sent: 0,
            schemas_sent: 0,
            replicas_sent: 0,
            draining: None,
            last_batch_rx: now,
            paused: false,
            rtt: Duration::ZERO,
        };
        if dialer {
            s.push(Action::Send(Frame::Hello(s.hello.clone())));
        }
        s
    }

    /// The next action to perform, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`LinkSession::handle_timeout`] must be called next, if at all: the handshake
    /// deadline, the next progress frame, the drain timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Handshake { deadline } => Some(*deadline),
            Phase::Closed => None,
            Phase::Open => {
                let drain = self
                    .draining
                    .map(|(since, _)| since + self.config.drain_timeout);
                [drain, self.progress.due_at()].into_iter().flatten().min()
            }
        }
    }

    /// Whether the handshake is done and the session not ended.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the session ended ([`Action::Close`] was queued).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the link is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Batches (and progress frames) sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.window.in_flight()
    }

    /// The peer's interest on this connection.
    pub fn interest(&self) -> &PeerInterest {
        &self.interest
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn close(&mut self, end: SessionEnd) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.push(Action::Close(end));
        }
    }

    /// A frame from the peer.
    pub fn on_frame(&mut self, now: Now, frame: Frame) {
        match self.phase {
            Phase::Closed => {}
            Phase::Handshake { .. } => self.on_hello(now, frame),
            Phase::Open => self.on_open_frame(now, frame),
        }
    }

    fn on_hello(&mut self, now: Now, frame: Frame) {
        match check_hello(&self.hello, &self.peer, &frame) {
            HelloOutcome::Accept { digest_mismatch } => {
                if digest_mismatch {
                    tracing::warn!(cluster = %self.me, peer = %self.peer, "peer has another topology digest (reload in progress?); continuing");
                }
                if !self.dialer {
                    self.push(Action::Send(Frame::Hello(self.hello.clone())));
                }
                self.phase = Phase::Open;
                self.last_batch_rx = now.at;
                self.push(Action::Connected { digest_mismatch });
                // First of all, this side's clock (the peer reads our `since` times with it).
                self.push(Action::Send(Frame::Clock {
                    now_ms: now.wall_ms,
                }));
            }
            HelloOutcome::Refuse(reason) => {
                if !matches!(frame, Frame::Refuse { .. }) {
                    self.push(Action::Send(Frame::Refuse {
                        reason: reason.clone(),
                    }));
                }
                tracing::error!(cluster = %self.me, peer = %self.peer, "link refused: {reason}");
                self.close(SessionEnd::Refused { reason });
            }
        }
    }

    fn on_open_frame(&mut self, now: Now, frame: Frame) {
        match frame {
            Frame::Interest(mut entries) => {
                // The peer's `since` times are in its clock: read them in ours.
                if let Some(offset) = self.peer_clock_offset {
                    for e in &mut entries {
                        e.since_ms = e.since_ms.map(|s| marks::since_in_local_clock(s, offset));
                    }
                }
                let (compiled, bad) = PeerInterest::compile(entries.clone());
                for b in bad {
                    tracing::warn!(cluster = %self.me, peer = %self.peer, topic = %b.entry.topic, "ignoring an interest entry: {}", b.reason);
                }
                tracing::debug!(cluster = %self.me, peer = %self.peer, entries = entries.len(), "interest received");
                self.interest = compiled;
                self.push(Action::LearnInterest(entries));
            }
            // Merged by the shell in frame order, so a topic the peer's next batches need
            // is known before the storer sees them.
            Frame::Catalog(entries) => self.push(Action::MergeCatalog(entries)),
            Frame::Schemas(entries) => self.push(Action::MergeSchemas(entries)),
            Frame::Subscriptions(replicas) => self.push(Action::MergeReplicas(replicas)),
            Frame::Clock { now_ms: peer_now } => {
                let offset = peer_now as i64 - now.wall_ms as i64;
                if offset.abs() > 2_000 {
                    tracing::info!(cluster = %self.me, peer = %self.peer, offset_ms = offset, "the peer's clock differs from this one's (its `latest` subscriptions' start times are read accordingly)");
                }
                self.peer_clock_offset = Some(offset);
            }
            Frame::Marks(marks) => {
                tracing::debug!(cluster = %self.me, peer = %self.peer, marks = marks.len(), "peer marks received");
                self.peer_marks.update(marks);
            }
            Frame::Progress { seq, .. } => {
                self.last_batch_rx = now.at;
                if let Some(ack) = self.acks.on_progress(seq) {
                    self.push(Action::Send(Frame::Ack { seq: ack }));
                }
            }
            Frame::Batch(b) => {
                self.last_batch_rx = now.at;
                self.acks.on_batch(b.seq);
                self.push(Action::Store(b));
            }
            Frame::TraceQuery(q) => self.push(Action::AnswerTrace(q)),
            Frame::TraceReply(r) => self.push(Action::TraceAnswered(r)),
            Frame::Ack { seq } => match self.window.on_ack(seq) {
                Ok(commits) => {
                    if commits.is_empty() {
                        return;
                    }
                    for c in &commits {
                        self.durable.insert((c.topic.clone(), c.partition), c.next);
                    }
                    self.push(Action::CommitCursors(commits));
                }
                Err(e) => self.close(e.into()),
            },
            other @ (Frame::Hello(_) | Frame::Refuse { .. }) => {
                self.close(SessionEnd::UnexpectedFrame {
                    kind: frame_name(&other),
                });
            }
        }
    }

    /// The storer stored every received batch up to `seq`: one cumulative ack for them
    /// (and for the progress frames that waited for them).
    pub fn on_stored(&mut self, seq: u64) {
        if !self.is_open() {
            return;
        }
        let seq = self.acks.on_stored(seq);
        self.push(Action::Send(Frame::Ack { seq }));
    }

    /// Deadlines: the handshake's, the drain's, and a due progress frame.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Handshake { deadline } if now >= deadline => {
                self.close(SessionEnd::HandshakeTimeout);
            }
            Phase::Open => {
                self.check_drain(now);
                self.flush_progress(now);
            }
            _ => {}
        }
    }

    /// The link was removed from the topology: send no new batches, close once those in
    /// flight are acknowledged and the peer is quiet (or on the drain timeout).
    pub fn start_drain(&mut self, now: Instant) {
        if self.draining.is_some() || self.is_closed() {
            return;
        }
        let in_flight = self.window.in_flight();
        self.draining = Some((now, in_flight));
        tracing::info!(cluster = %self.me, peer = %self.peer, in_flight, "link removed from the topology: draining (no new batches; waiting for the acks of those in flight)");
    }

    /// The connection's round-trip time (how long "quiet" is while draining).
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt;
    }

    /// An operator paused (or resumed) sending batches on this link.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// While draining: closes once this side has nothing in flight and the peer has been
    /// quiet for two round trips (its own batches acknowledged), or on the timeout.
    fn check_drain(&mut self, now: Instant) {
        let Some((since, at_start)) = self.draining else {
            return;
        };
        let in_flight = self.window.in_flight();
        let quiet = (self.rtt * 2).max(Duration::from_millis(200));
        let elapsed = now.saturating_duration_since(since);
        if in_flight == 0
            && self.acks.idle()
            && now.saturating_duration_since(self.last_batch_rx) >= quiet
        {
            tracing::info!(cluster = %self.me, peer = %self.peer, acknowledged = at_start, ?elapsed, "link drained: {at_start} batches in flight were acknowledged; closed");
            self.close(SessionEnd::Drained);
        } else if elapsed > self.config.drain_timeout {
            tracing::warn!(cluster = %self.me, peer = %self.peer, in_flight, "link drain timed out: {in_flight} batches unacknowledged (resent from the durable cursor if the link returns); closed");
            self.close(SessionEnd::DrainTimedOut);
        }
    }

    /// The store topics to read for the peer, with their wire topic: each wanted topic
    /// from its own store topic and from the relay topic where this cluster keeps events
    /// it may only pass on.
    pub fn wanted(&self) -> Vec<(String, String)> {
        self.interest
            .topics()
            .flat_map(|wire| {
                [
                    (wire.clone(), wire.clone()),
                    (relay_topic(wire), wire.clone()),
                ]
            })
            .collect()
    }

    /// Whether a batch may be sent now (open, not draining, not paused, room in the
    /// window).
    pub fn may_send(&self) -> bool {
        self.is_open() && self.draining.is_none() && !self.paused && self.window.can_send()
    }

    /// Where reading (store topic, partition) for the peer goes on.
    pub fn read_at(&self, topic: &str, partition: u32) -> ReadAt {
        if !self.may_send() {
            return ReadAt::Blocked;
        }
        match self.durable.get(&(topic.to_string(), partition)) {
            Some(d) => ReadAt::At(self.window.position(topic, partition, *d)),
            None => ReadAt::NeedStart,
        }
    }

    /// Where the link starts in (store topic `topic`, wire topic `wire`) given its durable
    /// cursor and the partition's bounds (see [`marks::start_position`]).
    pub fn start_for(&self, wire: &str, cursor: Option<u64>, bounds: (u64, u64)) -> Start {
        let since = marks::since_for(self.interest.entries(), wire);
        marks::start_position(cursor, bounds, since)
    }

    /// The start of (store topic, partition) is `offset` (a [`Start::Since`] resolved by
    /// the shell); `cursor` is the durable cursor read from the store. A start other than
    /// the cursor is anchored ([`Action::AnchorCursor`]).
    pub fn set_start(&mut self, topic: &str, partition: u32, offset: u64, cursor: Option<u64>) {
        if cursor != Some(offset) {
            self.push(Action::AnchorCursor(Commit {
                topic: topic.to_string(),
                partition,
                next: offset,
            }));
        }
        self.durable.insert((topic.to_string(), partition), offset);
    }

    /// Records read from (store topic `topic`, partition) at the position [`Self::read_at`]
    /// gave, for wire topic `wire`; `partitions` is the topic's partition count and `end`
    /// the partition's end when it was read. Queues a batch of what the peer gets, or (when
    /// it gets nothing) moves the read position and leaves a progress mark. Returns
    /// whether reading this partition may go on now.
    #[allow(clippy::too_many_arguments)]
    pub fn on_records(
        &mut self,
        now: Instant,
        topic: &str,
        wire: &str,
        partition: u32,
        partitions: u32,
        end: u64,
        records: &[StoredRecord],
        out: &Outgoing<'_>,
    ) -> bool {
        let Some(last) = records.last() else {
            return false;
        };
        let next = last.offset + 1;
        let own_end = (topic == wire).then_some(end);
        let mut events = Vec::new();
        for r in records {
            if let Some(payload) =
                self.outgoing(wire, &r.payload, r.offset, partition, own_end, out)
            {
                events.push(WireEvent {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    payload,
                });
            }
        }
        if events.is_empty() {
            // Nothing for the peer: no frame now, a progress mark later.
            self.window.skipped(topic, partition, next);
            self.progress.skipped(topic, wire, partition, next, now);
            return self.window.can_send();
        }
        self.progress.covered(topic, partition);
        let seq = self.window.sent(topic, partition, next);
        self.push(Action::Send(Frame::Batch(Batch {
            seq,
            topic: wire.to_string(),
            partition,
            partitions,
            next,
            events,
        })));
        self.window.can_send()
    }

    /// Sends the pending progress marks once due (and the window has room).
    pub fn flush_progress(&mut self, now: Instant) {
        if !self.may_send() {
            return;
        }
        if let Some(due) = self.progress.due(now) {
            let seq = self.window.sent_marks(&due.commits);
            self.push(Action::Send(Frame::Progress {
                seq,
                marks: due.marks,
            }));
        }
    }

    /// The wire payload of a stored record for the peer, or `None` when the peer must not
    /// get it (already on its path, it holds it already by its marks, or no interest wants
    /// it). `own_end` is the partition's end when the record is in the topic itself (not
    /// the relay topic): a record there without an origin is this cluster's own event, at
    /// origin position (partition, offset). Works on the stored bytes ([`RawEvent`]): the
    /// event is decoded only when an interest filter has to look at it, and origin/path
    /// are spliced in, not re-serialized.
    fn outgoing(
        &self,
        wire: &str,
        stored: &[u8],
        offset: u64,
        partition: u32,
        own_end: Option<u64>,
        out: &Outgoing<'_>,
    ) -> Option<Vec<u8>> {
        let me = self.me.as_str();
        let peer = self.peer.as_str();
        let raw = match RawEvent::parse(stored) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(cluster = %me, topic = %wire, partition, offset, "skipping an undecodable stored event: {e}");
                return None;
            }
        };
        let path = event_path(&raw, me);
        if path.contains(&peer) {
            return None;
        }
        let own = OriginPos { partition, offset };
        let held = match raw.extension(ORIGIN_EXT) {
            Some(origin) => raw
                .extension(POS_EXT)
                .and_then(OriginPos::parse)
                .is_some_and(|pos| self.peer_marks.holds(origin, wire, pos, None)),
            None => own_end.is_some_and(|end| self.peer_marks.holds(me, wire, own, Some(end))),
        };
        if held {
            return None;
        }
        let mut decoded: Option<Option<Event>> = None;
        let wanted = self.interest.wants_with(wire, &path, out.may_receive, |f| {
            decoded
                .get_or_insert_with(|| decode_event(stored).ok())
                .as_ref()
                .is_some_and(|ev| f.matches(ev))
        });
        if !wanted {
            return None;
        }
        let mut set = outgoing_stamps(&raw, me);
        // Leaving its origin: its origin position goes with it (formatted only then: a
        // relayed event, most of a busy relay's traffic, already carries it).
        let leaving = raw.extension(ORIGIN_EXT).is_none() && raw.extension(POS_EXT).is_none();
        let pos = if leaving {
            own.to_string()
        } else {
            String::new()
        };
        if leaving {
            set.push((POS_EXT, &pos));
        }
        if let Some(f) = out.forwarded {
            f(&raw);
        }
        tracing::trace!(cluster = %me, peer, topic = %wire, source = raw.source(), id = raw.id(), traceparent = raw.extension("traceparent"), "forwarded");
        Some(if set.is_empty() {
            stored.to_vec()
        } else {
            raw.with_extensions(&set)
        })
    }

    /// The catalog generation sent to the peer on this connection.
    pub fn catalog_sent(&self) -> u64 {
        self.catalog_sent
    }

    /// The schema catalog generation sent to the peer on this connection.
    pub fn schemas_sent(&self) -> u64 {
        self.schemas_sent
    }

    /// The replicas generation sent to the peer on this connection.
    pub fn replicas_sent(&self) -> u64 {
        self.replicas_sent
    }

    /// Catalog entries changed since [`Self::catalog_sent`], now at generation `gen`: sent
    /// in frames of at most `chunk` entries.
    pub fn announce_catalog(&mut self, gen: u64, changed: Vec<CatalogEntry>, chunk: usize) {
        if !self.is_open() {
            return;
        }
        for c in changed.chunks(chunk.max(1)) {
            self.push(Action::Send(Frame::Catalog(c.to_vec())));
        }
        self.catalog_sent = gen;
    }

    /// Schema catalog entries changed since [`Self::schemas_sent`], now at generation `gen`.
    pub fn announce_schemas(&mut self, gen: u64, changed: Vec<SchemaEntry>, chunk: usize) {
        if !self.is_open() {
            return;
        }
        for c in changed.chunks(chunk.max(1)) {
            self.push(Action::Send(Frame::Schemas(c.to_vec())));
        }
        self.schemas_sent = gen;
    }

    /// Replicas changed since [`Self::replicas_sent`], now at generation `gen`.
    pub fn announce_replicas(&mut self, gen: u64, changed: Vec<SubReplica>, chunk: usize) {
        if !self.is_open() {
            return;
        }
        for c in changed.chunks(chunk.max(1)) {
            self.push(Action::Send(Frame::Subscriptions(c.to_vec())));
        }
        self.replicas_sent = gen;
    }

    /// The interest this cluster wants from the peer now. When it changed, it is sent,
    /// preceded by this cluster's marks for the topics it starts to want (all of them on a
    /// new connection; `marks_for` reads them), so the peer sends only what is missing.
    pub fn announce_interest(
        &mut self,
        set: Vec<InterestEntry>,
        marks_for: impl FnOnce(HashSet<&str>) -> Vec<Mark>,
    ) {
        if !self.is_open() || self.announced.as_ref() == Some(&set) {
            return;
        }
        let before: HashSet<&str> = self
            .announced
            .iter()
            .flatten()
            .map(|e| e.topic.as_str())
            .collect();
        let new_topics: HashSet<&str> = set
            .iter()
            .map(|e| e.topic.as_str())
            .filter(|t| !before.contains(t))
            .collect();
        if !new_topics.is_empty() {
            let marks = marks_for(new_topics);
            if !marks.is_empty() {
                self.actions.push_back(Action::Send(Frame::Marks(marks)));
            }
        }
        tracing::debug!(cluster = %self.me, peer = %self.peer, entries = set.len(), "interest announced");
        self.actions
            .push_back(Action::Send(Frame::Interest(set.clone())));
        self.announced = Some(set);
    }
}

#[cfg(test)]
mod tests;
