//! The link session without sockets: two machines exchanging frames through in-memory
//! queues, a source "store" of one partition, and a receiver that stores batches the way
//! the bridge's storer does (duplicate window, origin marks). Time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cloudevents::{EventBuilder, EventBuilderV10};
use meshd_core::codec::{encode_event, RawEvent};
use meshd_core::event::{ORIGIN_EXT, PATH_EXT, POS_EXT};
use meshd_core::wire::{Frame, Hello, InterestEntry, PROTOCOL_VERSION};
use meshd_node::store::StoredRecord;

use super::*;
use crate::intake::{Admit, Round};
use crate::link::DedupWindow;
use crate::marks::{Marks, OriginPos, Start};

const T: &str = "t";

fn hello(cluster: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        mesh: "m".into(),
        cluster: cluster.into(),
        digest: "d".into(),
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        window: 4,
        progress_every: Duration::from_millis(200),
        handshake_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(10),
    }
}

fn at(t0: Instant, ms: u64) -> Now {
    Now {
        at: t0 + Duration::from_millis(ms),
        wall_ms: 1_000_000 + ms,
    }
}

fn actions(m: &mut LinkSession) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn sent(actions: &[Action]) -> Vec<&Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn closed(actions: &[Action]) -> Option<&SessionEnd> {
    actions.iter().find_map(|a| match a {
        Action::Close(e) => Some(e),
        _ => None,
    })
}

/// Event `i` as stored at `holder`: its own event (no origin) when `origin` is the
/// holder, else a relayed event of `origin` at origin position (0, i).
fn stored_event(holder: &str, origin: &str, i: u64) -> Vec<u8> {
    let e = EventBuilderV10::new()
        .id(format!("{origin}-{i}"))
        .source("src")
        .ty("t")
        .build()
        .unwrap();
    let bytes = encode_event(&e);
    if origin == holder {
        return bytes;
    }
    let raw = RawEvent::parse(&bytes).unwrap();
    let pos = OriginPos {
        partition: 0,
        offset: i,
    }
    .to_string();
    let path = format!("{origin},{holder}");
    raw.with_extensions(&[(ORIGIN_EXT, origin), (POS_EXT, &pos), (PATH_EXT, &path)])
}

/// One direction of a link: a source cluster with one partition of topic `t`, its
/// durable cursor (survives connections), a receiver with its duplicate window and
/// marks (survive connections), and the session machines of the current connection.
struct Sim {
    t0: Instant,
    ms: u64,
    src_name: String,
    dst_name: String,
    log: Vec<StoredRecord>,
    batch_max: usize,
    /// The source's committed cursor (the store's `__bridge/dst` group).
    cursor: Option<u64>,
    src: LinkSession,
    dst: LinkSession,
    /// Frames on the wire, source → receiver and back.
    to_dst: VecDeque<Frame>,
    to_src: VecDeque<Frame>,
    /// What the receiver stored: event ids, in order.
    stored: Vec<String>,
    dedup: DedupWindow,
    marks: Marks,
    /// Received batches not stored yet (the storer is behind).
    storing: VecDeque<meshd_core::wire::Batch>,
    /// Every batch the source sent, over all connections: (seq, offsets).
    batches: Vec<(u64, Vec<u64>)>,
    progress_frames: usize,
}

impl Sim {
    /// The receiver's marks hold `origin`'s events `offsets` (partition 0 of [`T`]).
    fn receiver_holds(&mut self, origin: &str, offsets: std::ops::Range<u64>) {
        for offset in offsets {
            self.marks.observe(
                origin,
                T,
                OriginPos {
                    partition: 0,
                    offset,
                },
            );
        }
    }

    /// `n` events of `origin` stored at `src`.
    fn new(src: &str, dst: &str, origin: &str, n: u64) -> Sim {
        let log = (0..n)
            .map(|i| StoredRecord {
                partition: 0,
                offset: i,
                timestamp_ms: 1_000 + i * 1_000,
                payload: stored_event(src, origin, i).into(),
            })
            .collect();
        let t0 = Instant::now();
        Sim {
            t0,
            ms: 0,
            src_name: src.into(),
            dst_name: dst.into(),
            log,
            batch_max: 10,
            cursor: None,
            src: LinkSession::new(config(), hello(src), dst, src < dst, t0),
            dst: LinkSession::new(config(), hello(dst), src, dst < src, t0),
            to_dst: VecDeque::new(),
            to_src: VecDeque::new(),
            stored: Vec::new(),
            dedup: DedupWindow::new(1_000),
            marks: Marks::default(),
            storing: VecDeque::new(),
            batches: Vec::new(),
            progress_frames: 0,
        }
    }

    fn now(&self) -> Now {
        at(self.t0, self.ms)
    }

    /// A new connection: fresh machines, empty wire; cursor, store, marks and window
    /// stay. Runs the handshake and the receiver's announcement (marks, then interest).
    fn connect(&mut self, since_ms: Option<u64>) {
        self.connect_filtered(since_ms, None);
    }

    /// [`Sim::connect`] with an interest filter (a `FilterSpec` as JSON).
    fn connect_filtered(&mut self, since_ms: Option<u64>, filter: Option<&str>) {
        let t = self.now().at;
        let (s, d) = (self.src_name.clone(), self.dst_name.clone());
        self.src = LinkSession::new(config(), hello(&s), &d, s < d, t);
        self.dst = LinkSession::new(config(), hello(&d), &s, d < s, t);
        self.to_dst.clear();
        self.to_src.clear();
        self.storing.clear();
        self.settle();
        assert!(self.src.is_open() && self.dst.is_open());
        let entry = InterestEntry {
            dest: d.clone(),
            topic: T.into(),
            filter: filter.map(str::to_string),
            since_ms,
        };
        let marks = &self.marks;
        self.dst
            .announce_interest(vec![entry], |topics| marks.for_topics(topics));
        self.settle();
    }

    /// The source's pump, as the bridge's `Driver::pump` runs it.
    fn pump(&mut self) {
        let may_receive = |_: &str, _: &str| true;
        let out = Outgoing {
            may_receive: &may_receive,
            forwarded: None,
        };
        for (topic, wire) in self.src.wanted() {
            if topic != T {
                continue; // no relay topic at the source
            }
            loop {
                let end = self.log.len() as u64;
                let pos = match self.src.read_at(&topic, 0) {
                    ReadAt::Blocked => break,
                    ReadAt::NeedStart => {
                        let start = match self.src.start_for(&wire, self.cursor, (0, end)) {
                            Start::At(o) => o,
                            Start::Since(ms) => self
                                .log
                                .iter()
                                .find(|r| r.timestamp_ms >= ms)
                                .map_or(end, |r| r.offset),
                        };
                        self.src.set_start(&topic, 0, start, self.cursor);
                        continue;
                    }
                    ReadAt::At(pos) => pos,
                };
                if pos >= end {
                    break;
                }
                let to = (pos as usize + self.batch_max).min(self.log.len());
                let records = self.log[pos as usize..to].to_vec();
                let now = self.now().at;
                if !self
                    .src
                    .on_records(now, &topic, &wire, 0, 1, end, &records, &out)
                {
                    break;
                }
            }
        }
        self.src.flush_progress(self.now().at);
        self.take_actions();
    }

    /// Performs both machines' actions (frames go on the wire, not delivered yet).
    fn take_actions(&mut self) {
        for a in actions(&mut self.src) {
            match a {
                Action::Send(f) => {
                    match &f {
                        Frame::Batch(b) => self
                            .batches
                            .push((b.seq, b.events.iter().map(|e| e.offset).collect())),
                        Frame::Progress { .. } => self.progress_frames += 1,
                        _ => {}
                    }
                    self.to_dst.push_back(f);
                }
                Action::CommitCursors(c) => {
                    for c in c {
                        self.cursor = Some(c.next);
                    }
                }
                Action::AnchorCursor(c) => self.cursor = Some(c.next),
                Action::Close(e) => panic!("source closed: {e}"),
                _ => {}
            }
        }
        for a in actions(&mut self.dst) {
            match a {
                Action::Send(f) => self.to_src.push_back(f),
                Action::Store(b) => self.storing.push_back(b),
                Action::Close(e) => panic!("receiver closed: {e}"),
                _ => {}
            }
        }
    }

    /// The receiver's storer stores what it was handed, as the bridge's does: a
    /// [`Round`] per batch (duplicate window, path stamp), appended, the keys committed
    /// and the origin marks moved; then it reports the batch stored.
    fn store(&mut self) {
        while let Some(b) = self.storing.pop_front() {
            let mut round = Round::new(&self.dst_name, 1);
            for e in &b.events {
                let raw = RawEvent::parse(&e.payload).unwrap();
                let admitted = round.admit(
                    &mut self.dedup,
                    &b.topic,
                    b.partitions,
                    &raw,
                    &e.payload,
                    false,
                );
                assert_ne!(admitted, Admit::HeldElsewhere, "one link only");
            }
            for g in round.take() {
                for r in &g.records {
                    let raw = RawEvent::parse(&r.payload).unwrap();
                    assert!(raw
                        .extension(PATH_EXT)
                        .unwrap()
                        .ends_with(&format!(",{}", self.dst_name)));
                    let (origin, pos) = r.origin.clone().expect("an origin position");
                    self.marks.observe(&origin, &g.topic, pos);
                    self.stored.push(raw.id().to_string());
                }
                self.dedup.commit(&g.keys);
            }
            self.dst.on_stored(b.seq);
        }
        self.take_actions();
    }

    /// Delivers up to `n` frames each way.
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(f) = self.to_dst.pop_front() else {
                break;
            };
            let now = self.now();
            self.dst.on_frame(now, f);
        }
        for _ in 0..n {
            let Some(f) = self.to_src.pop_front() else {
                break;
            };
            let now = self.now();
            self.src.on_frame(now, f);
        }
        self.take_actions();
    }

    /// Runs until nothing moves: pump, deliver, store; time advances 50 ms a step (so
    /// progress frames fall due).
    fn settle(&mut self) {
        for _ in 0..1_000 {
            self.take_actions();
            if self.src.is_open() {
                self.pump();
            }
            let moved =
                !self.to_dst.is_empty() || !self.to_src.is_empty() || !self.storing.is_empty();
            self.deliver(usize::MAX);
            self.store();
            self.ms += 50;
            if self.src.is_open() {
                self.src.handle_timeout(self.now().at);
            }
            let quiet = self.to_dst.is_empty() && self.to_src.is_empty();
            // Done when nothing moved, nothing is in flight and no timer (a progress
            // frame due) is pending.
            if !moved && quiet && self.src.in_flight() == 0 && self.src.poll_timeout().is_none() {
                return;
            }
        }
        panic!("the link did not settle");
    }

    /// Offsets sent in batches since batch index `from`.
    fn offsets_since(&self, from: usize) -> Vec<u64> {
        self.batches[from..]
            .iter()
            .flat_map(|(_, o)| o.iter().copied())
            .collect()
    }
}

fn ids(origin: &str, range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("{origin}-{i}")).collect()
}

#[test]
fn a_peer_on_another_version_is_refused_with_the_reason() {
    let t0 = Instant::now();
    // The acceptor gets a hello of version 2 (no trace frames): it answers with a refusal
    // and ends the session; nothing else is sent.
    let mut acceptor = LinkSession::new(config(), hello("b"), "a", false, t0);
    assert!(
        actions(&mut acceptor).is_empty(),
        "the acceptor waits for the dialer"
    );
    let mut old = hello("a");
    old.version = 2;
    acceptor.on_frame(at(t0, 1), Frame::Hello(old));
    let a = actions(&mut acceptor);
    let refuse = match sent(&a).as_slice() {
        [Frame::Refuse { reason }] => reason.clone(),
        other => panic!("expected one refuse frame, got {other:?}"),
    };
    assert!(
        refuse.contains("protocol version 2 ") && refuse.contains("same release"),
        "{refuse}"
    );
    assert!(
        matches!(closed(&a), Some(SessionEnd::Refused { reason }) if *reason == refuse),
        "{a:?}"
    );
    assert!(acceptor.is_closed() && !acceptor.is_open());
    // Closed: later frames change nothing and ask for nothing.
    acceptor.on_frame(at(t0, 2), Frame::Hello(hello("a")));
    assert!(actions(&mut acceptor).is_empty());
    assert_eq!(acceptor.read_at(T, 0), ReadAt::Blocked);

    // The dialer that receives the refusal ends without answering it.
    let mut dialer = LinkSession::new(config(), hello("a"), "b", true, t0);
    assert_eq!(
        sent(&actions(&mut dialer)),
        vec![&Frame::Hello(hello("a"))],
        "the dialer speaks first"
    );
    dialer.on_frame(at(t0, 3), Frame::Refuse { reason: refuse });
    let a = actions(&mut dialer);
    assert!(sent(&a).is_empty(), "{a:?}");
    assert!(
        matches!(closed(&a), Some(SessionEnd::Refused { reason }) if reason.starts_with("peer refused: protocol version 2")),
        "{a:?}"
    );
}

#[test]
fn an_accepted_hello_is_answered_then_the_clock_goes_first() {
    let t0 = Instant::now();
    let mut acceptor = LinkSession::new(config(), hello("b"), "a", false, t0);
    let mut other = hello("a");
    other.digest = "other".into();
    acceptor.on_frame(at(t0, 7), Frame::Hello(other));
    assert_eq!(
        actions(&mut acceptor),
        vec![
            Action::Send(Frame::Hello(hello("b"))),
            Action::Connected {
                digest_mismatch: true
            },
            Action::Send(Frame::Clock { now_ms: 1_000_007 }),
        ]
    );
    assert!(acceptor.is_open());
    // A second hello after the handshake is a protocol error.
    acceptor.on_frame(at(t0, 8), Frame::Hello(hello("a")));
    assert_eq!(
        actions(&mut acceptor),
        vec![Action::Close(SessionEnd::UnexpectedFrame { kind: "hello" })]
    );
}

#[test]
fn a_peer_that_never_answers_the_hello_hits_the_handshake_timeout() {
    let t0 = Instant::now();
    let mut dialer = LinkSession::new(config(), hello("a"), "b", true, t0);
    actions(&mut dialer);
    let deadline = dialer.poll_timeout().expect("a handshake deadline");
    assert_eq!(deadline, t0 + Duration::from_secs(5));
    dialer.handle_timeout(deadline - Duration::from_millis(1));
    assert!(actions(&mut dialer).is_empty(), "not before the deadline");
    dialer.handle_timeout(deadline);
    assert_eq!(
        actions(&mut dialer),
        vec![Action::Close(SessionEnd::HandshakeTimeout)]
    );
    assert_eq!(dialer.poll_timeout(), None);
}

#[test]
fn a_new_link_replicates_everything_once_and_moves_the_cursor() {
    let mut sim = Sim::new("a", "b", "a", 95);
    sim.connect(None);
    assert_eq!(sim.stored, ids("a", 0..95));
    assert_eq!(sim.offsets_since(0), (0..95).collect::<Vec<_>>());
    assert_eq!(sim.cursor, Some(95), "the durable cursor follows the acks");
    assert_eq!(sim.src.in_flight(), 0);
    // Batch sequence numbers count from 1 on the connection.
    let seqs: Vec<u64> = sim.batches.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_link_resumes_from_the_receivers_marks_without_replaying_history() {
    // The receiver (restarted, or fed over another path) holds a's events 0..60 by its
    // marks; the link has no cursor and the interest asks for the retained history.
    let mut sim = Sim::new("a", "b", "a", 100);
    sim.receiver_holds("a", 0..60);
    sim.connect(None);
    assert_eq!(sim.offsets_since(0), (60..100).collect::<Vec<_>>());
    assert_eq!(sim.stored, ids("a", 60..100));
    assert_eq!(sim.dedup.duplicates(), 0, "nothing sent twice");
    assert_eq!(sim.cursor, Some(100));
}

#[test]
fn a_reroute_sends_only_what_the_receiver_lacks() {
    // Triangle a, b, c: c got a's events 0..70 directly from a; a dies and b (holding
    // a's events 0..100 as relayed events) becomes c's path to a. The new b→c link
    // starts with no cursor and sends only 70..100.
    let mut sim = Sim::new("b", "c", "a", 100);
    sim.receiver_holds("a", 0..70);
    sim.connect(None);
    assert_eq!(sim.offsets_since(0), (70..100).collect::<Vec<_>>());
    assert_eq!(sim.stored, ids("a", 70..100));
    assert_eq!(sim.dedup.duplicates(), 0);
    assert_eq!(sim.cursor, Some(100));
}

#[test]
fn a_lost_connection_mid_round_resends_exactly_the_unacknowledged_events() {
    let mut sim = Sim::new("a", "b", "a", 100);
    sim.connect(None);
    let first = sim.batches.len();
    for i in 100..180 {
        sim.log.push(StoredRecord {
            partition: 0,
            offset: i,
            timestamp_ms: 1_000 + i,
            payload: stored_event("a", "a", i).into(),
        });
    }
    // A round of 4 batches (the window) goes out: 100..140.
    sim.pump();
    assert_eq!(sim.offsets_since(first), (100..140).collect::<Vec<_>>());
    assert_eq!(sim.src.in_flight(), 4);
    // The receiver gets the first two, stores them and its ack comes back; the other two
    // are lost with the connection.
    sim.deliver(2);
    sim.to_dst.clear();
    sim.store();
    sim.deliver(usize::MAX);
    assert_eq!(sim.cursor, Some(120), "acknowledged: 100..120");
    assert_eq!(sim.src.in_flight(), 2);
    // The connection is lost; the next one resends 120..140 first, nothing before.
    let resumed = sim.batches.len();
    sim.connect(None);
    let again = sim.offsets_since(resumed);
    assert_eq!(&again[..20], &(120..140).collect::<Vec<_>>()[..]);
    assert_eq!(again, (120..180).collect::<Vec<_>>());
    assert_eq!(
        sim.stored,
        ids("a", 0..180),
        "each event stored once, in order"
    );
    assert_eq!(sim.dedup.duplicates(), 0);
}

/// A link that sent 40..60 after 0..40 and lost the acks of 40..60 with its connection
/// (the receiver stored them).
fn lost_acks() -> Sim {
    let mut sim = Sim::new("a", "b", "a", 40);
    sim.connect(None);
    for i in 40..60 {
        sim.log.push(StoredRecord {
            partition: 0,
            offset: i,
            timestamp_ms: 1_000 + i,
            payload: stored_event("a", "a", i).into(),
        });
    }
    let before = sim.batches.len();
    sim.pump();
    sim.deliver(usize::MAX);
    sim.store();
    sim.to_src.clear();
    assert_eq!(sim.offsets_since(before), (40..60).collect::<Vec<_>>());
    assert_eq!(sim.cursor, Some(40));
    assert_eq!(sim.stored.len(), 60);
    sim
}

#[test]
fn a_lost_ack_sends_nothing_again() {
    // The receiver's marks say it holds 40..60: the new connection sends none again,
    // a progress frame moves the cursor over them.
    let mut sim = lost_acks();
    let resumed = sim.batches.len();
    let progress = sim.progress_frames;
    sim.connect(None);
    assert!(sim.offsets_since(resumed).is_empty(), "{:?}", sim.batches);
    assert_eq!(sim.progress_frames, progress + 1);
    assert_eq!(sim.cursor, Some(60), "progress marks moved the cursor");
    assert_eq!(sim.dedup.duplicates(), 0);
}

#[test]
fn a_resent_event_is_dropped_as_a_duplicate() {
    // The receiver crashed before it persisted its marks: the events come again and its
    // duplicate window drops them; each is stored once and the cursor moves on.
    let mut sim = lost_acks();
    sim.marks = Marks::default();
    let resumed = sim.batches.len();
    sim.connect(None);
    assert_eq!(sim.offsets_since(resumed), (40..60).collect::<Vec<_>>());
    assert_eq!(sim.dedup.duplicates(), 20);
    assert_eq!(sim.stored, ids("a", 0..60));
    assert_eq!(sim.cursor, Some(60));
}

#[test]
fn a_latest_interest_without_a_cursor_starts_at_its_time() {
    // Record i is stored at 1000 + 1000 i ms. The receiver's `since` is read in the
    // sender's clock: the Clock frames measured the receiver 50-100 ms behind (the frame's
    // time on the simulated wire), which moves it by less than a record.
    let mut sim = Sim::new("a", "b", "a", 50);
    sim.connect(Some(30_500));
    assert_eq!(sim.offsets_since(0), (30..50).collect::<Vec<_>>());
    assert_eq!(sim.cursor, Some(50));
}

#[test]
fn progress_is_acknowledged_only_after_the_batches_before_it_are_stored() {
    let t0 = Instant::now();
    let mut r = LinkSession::new(config(), hello("b"), "a", false, t0);
    r.on_frame(at(t0, 0), Frame::Hello(hello("a")));
    actions(&mut r);
    let batch = meshd_core::wire::Batch {
        seq: 1,
        topic: T.into(),
        partition: 0,
        partitions: 1,
        next: 5,
        events: Vec::new(),
    };
    r.on_frame(at(t0, 1), Frame::Batch(batch.clone()));
    assert_eq!(actions(&mut r), vec![Action::Store(batch)]);
    r.on_frame(
        at(t0, 2),
        Frame::Progress {
            seq: 2,
            marks: Vec::new(),
        },
    );
    assert!(actions(&mut r).is_empty(), "batch 1 is not stored yet");
    r.on_stored(1);
    assert_eq!(
        actions(&mut r),
        vec![Action::Send(Frame::Ack { seq: 2 })],
        "one cumulative ack for the batch and the progress frame"
    );
}

#[test]
fn an_ack_of_an_unsent_batch_ends_the_session() {
    let t0 = Instant::now();
    let mut s = LinkSession::new(config(), hello("b"), "a", false, t0);
    s.on_frame(at(t0, 0), Frame::Hello(hello("a")));
    actions(&mut s);
    s.on_frame(at(t0, 1), Frame::Ack { seq: 3 });
    let a = actions(&mut s);
    assert!(matches!(closed(&a), Some(SessionEnd::Ack(_))), "{a:?}");
}

#[test]
fn the_interest_is_announced_once_with_the_marks_of_new_topics_first() {
    let t0 = Instant::now();
    let mut s = LinkSession::new(config(), hello("b"), "a", false, t0);
    s.on_frame(at(t0, 0), Frame::Hello(hello("a")));
    actions(&mut s);
    let entry = |topic: &str| InterestEntry {
        dest: "b".into(),
        topic: topic.into(),
        filter: None,
        since_ms: None,
    };
    let mut marks = Marks::default();
    marks.observe(
        "a",
        "t",
        OriginPos {
            partition: 0,
            offset: 4,
        },
    );
    marks.observe(
        "a",
        "u",
        OriginPos {
            partition: 0,
            offset: 9,
        },
    );
    s.announce_interest(vec![entry("t")], |topics| marks.for_topics(topics));
    let a = actions(&mut s);
    match sent(&a).as_slice() {
        [Frame::Marks(m), Frame::Interest(i)] => {
            assert_eq!(m.len(), 1);
            assert_eq!((m[0].topic.as_str(), m[0].next), ("t", 5));
            assert_eq!(i, &vec![entry("t")]);
        }
        other => panic!("{other:?}"),
    }
    // Unchanged: nothing sent.
    s.announce_interest(vec![entry("t")], |_| panic!("no marks asked"));
    assert!(actions(&mut s).is_empty());
    // A topic added: only its marks go first.
    s.announce_interest(vec![entry("t"), entry("u")], |topics| {
        assert_eq!(topics.into_iter().collect::<Vec<_>>(), vec!["u"]);
        marks.for_topics(["u"])
    });
    let a = actions(&mut s);
    assert!(
        matches!(sent(&a).as_slice(), [Frame::Marks(m), Frame::Interest(_)] if m[0].topic == "u")
    );
}

#[test]
fn a_draining_link_closes_when_acknowledged_or_on_its_timeout() {
    // Acknowledged: closes once the peer has been quiet for 200 ms.
    let mut sim = Sim::new("a", "b", "a", 10);
    sim.connect(None);
    sim.log.push(StoredRecord {
        partition: 0,
        offset: 10,
        timestamp_ms: 2_000,
        payload: stored_event("a", "a", 10).into(),
    });
    sim.pump();
    assert_eq!(sim.src.in_flight(), 1);
    let t = sim.now().at;
    sim.src.start_drain(t);
    assert!(sim.src.is_draining());
    assert_eq!(sim.src.read_at(T, 0), ReadAt::Blocked, "no new batches");
    sim.src.handle_timeout(t + Duration::from_millis(300));
    assert!(actions(&mut sim.src).is_empty(), "a batch is in flight");
    sim.deliver(usize::MAX);
    sim.store();
    sim.deliver(usize::MAX);
    assert_eq!(sim.src.in_flight(), 0);
    assert_eq!(sim.cursor, Some(11));
    sim.src.handle_timeout(t + Duration::from_millis(400));
    assert_eq!(
        actions(&mut sim.src),
        vec![Action::Close(SessionEnd::Drained)]
    );

    // A stalled peer never acknowledges: the drain timeout ends it, not before.
    let mut sim = Sim::new("a", "b", "a", 10);
    sim.connect(None);
    sim.log.push(StoredRecord {
        partition: 0,
        offset: 10,
        timestamp_ms: 2_000,
        payload: stored_event("a", "a", 10).into(),
    });
    sim.pump();
    let t = sim.now().at;
    sim.src.start_drain(t);
    assert_eq!(sim.src.poll_timeout(), Some(t + Duration::from_secs(10)));
    sim.src.handle_timeout(t + Duration::from_secs(10));
    assert!(actions(&mut sim.src).is_empty());
    sim.src
        .handle_timeout(t + Duration::from_secs(10) + Duration::from_millis(1));
    let a = actions(&mut sim.src);
    assert_eq!(a, vec![Action::Close(SessionEnd::DrainTimedOut)]);
    assert!(SessionEnd::DrainTimedOut.is_removal());
    assert_eq!(
        sim.cursor,
        Some(10),
        "the unacknowledged event is not committed"
    );
}

#[test]
fn a_paused_link_sends_nothing_until_resumed() {
    let mut sim = Sim::new("a", "b", "a", 0);
    sim.connect(None);
    sim.src.set_paused(true);
    for i in 0..5 {
        sim.log.push(StoredRecord {
            partition: 0,
            offset: i,
            timestamp_ms: 1_000 + i,
            payload: stored_event("a", "a", i).into(),
        });
    }
    sim.settle();
    assert!(sim.batches.is_empty());
    sim.src.set_paused(false);
    sim.settle();
    assert_eq!(sim.stored, ids("a", 0..5));
}

#[test]
fn a_filtered_link_sends_progress_frames_not_empty_batches() {
    // The peer wants events of type "x" only: none of the 95 are. No batch goes out;
    // progress frames (one per interval, covering every partition read) move the cursor.
    let mut sim = Sim::new("a", "b", "a", 95);
    sim.connect_filtered(None, Some(r#"{"exact":{"type":"x"}}"#));
    assert!(sim.batches.is_empty(), "{:?}", sim.batches);
    assert!(sim.stored.is_empty());
    assert_eq!(
        sim.progress_frames, 1,
        "95 records skipped in one interval: one frame"
    );
    assert_eq!(sim.cursor, Some(95));
    // An unparsable filter is dropped (named in the log): with no other entry the topic
    // is not wanted at all, so nothing is read, sent or anchored; the link stays up.
    let mut sim = Sim::new("a", "b", "a", 5);
    sim.connect_filtered(None, Some("{not json"));
    assert!(sim.src.is_open());
    assert!(sim.src.wanted().is_empty());
    assert!(sim.batches.is_empty());
    assert_eq!(sim.cursor, None);
}
