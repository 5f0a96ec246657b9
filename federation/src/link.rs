//! One link's protocol pieces that are not about cursors or interest (sans-IO): the
//! handshake, the event path (loop prevention) and the duplicate window.
//!
//! # Handshake
//! On each link the cluster whose name sorts first dials; the other only accepts (so there
//! is one connection per link and nothing to dedupe). The dialer opens one bidirectional
//! stream and sends [`Frame::Hello`]; the acceptor checks it with [`check_hello`] and
//! answers with its own `Hello` or with [`Frame::Refuse`] and closes; the dialer checks the
//! answer the same way. A different protocol version or mesh name is refused with the
//! reason; a different topology digest is only a warning (hot reloads make digests differ
//! for a moment).
//!
//! # Path
//! A replicated event carries `meshdorigin` (the cluster it was published in) and
//! `meshdpath` (every cluster that stored it, comma-separated, origin first). A source
//! never sends an event to a cluster already on its path, so an event cannot loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::LazyLock;

use meshd_core::codec::RawEvent;

/// An event's (source, id) in the duplicate window: 128 bits of two independently keyed
/// SipHash-1-3 hashes of the pair. The keys are random per process, so nobody can choose
/// two events whose keys collide; by chance, two of a million remembered events collide
/// with probability about 2^-89. A fixed-size key costs no allocation per event (the
/// two-string key cost six per received event) and hashes once.
pub type DedupKey = u128;

/// Keys are already uniformly random: the sets only need a cheap mixer (foldhash).
type KeySet = HashSet<DedupKey, foldhash::fast::RandomState>;

/// The two SipHash keys for [`DedupKey`]s, drawn once per process. The window is rebuilt
/// from the store at start (`restore`), so keys never need to survive a restart.
static KEY_HASHERS: LazyLock<[std::collections::hash_map::RandomState; 2]> =
    LazyLock::new(Default::default);
use meshd_core::wire::{Frame, Hello, PROTOCOL_VERSION};

pub use meshd_core::event::{ORIGIN_EXT, PATH_EXT};

/// What to do with the peer's `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloOutcome {
    /// Go on; `digest_mismatch` asks for a warning.
    Accept {
        /// The peer's topology digest differs from ours.
        digest_mismatch: bool,
    },
    /// Refuse the link with this reason.
    Refuse(String),
}

/// Checks the first frame received on a link whose peer should be `expected_peer`.
pub fn check_hello(local: &Hello, expected_peer: &str, frame: &Frame) -> HelloOutcome {
    let peer = match frame {
        Frame::Hello(h) => h,
        Frame::Refuse { reason } => return HelloOutcome::Refuse(format!("peer refused: {reason}")),
        other => {
            return HelloOutcome::Refuse(format!(
                "expected a hello frame first, got {}",
                frame_name(other)
            ))
        }
    };
    if peer.version != PROTOCOL_VERSION {
        return HelloOutcome::Refuse(format!(
            "protocol version {} is not supported (this bridge speaks {PROTOCOL_VERSION}): run the same release of meshd on both sides of the link",
            peer.version
        ));
    }
    if peer.mesh != local.mesh {
        return HelloOutcome::Refuse(format!(
            "peer is in mesh {:?}, this bridge in mesh {:?}",
            peer.mesh, local.mesh
        ));
    }
    if peer.cluster != expected_peer {
        return HelloOutcome::Refuse(format!(
            "peer says it is cluster {:?} but its certificate names {expected_peer:?}",
            peer.cluster
        ));
    }
    HelloOutcome::Accept {
        digest_mismatch: peer.digest != local.digest,
    }
}

/// A short name of a frame kind for logs.
pub fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Refuse { .. } => "refuse",
        Frame::Interest(_) => "interest",
        Frame::Batch(_) => "batch",
        Frame::Ack { .. } => "ack",
        Frame::Marks(_) => "marks",
        Frame::Catalog(_) => "catalog",
        Frame::Subscriptions(_) => "subscriptions",
        Frame::Clock { .. } => "clock",
        Frame::Progress { .. } => "progress",
        Frame::TraceQuery(_) => "trace query",
        Frame::TraceReply(_) => "trace reply",
        Frame::Schemas(_) => "schemas",
    }
}

/// The clusters an event has been stored in, origin first. A local event (no extension)
/// has the path `[local]`.
pub fn event_path<'a>(event: &'a RawEvent<'_>, local: &'a str) -> Vec<&'a str> {
    match event.extension(PATH_EXT) {
        Some(p) if !p.is_empty() => p.split(',').collect(),
        _ => vec![local],
    }
}

/// The extensions to set on an event leaving `local` for the first time: its origin and
/// path (nothing when it already has them, i.e. it is passing through).
pub fn outgoing_stamps<'a>(event: &RawEvent<'_>, local: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut set = Vec::new();
    if event.extension(ORIGIN_EXT).is_none() {
        set.push((ORIGIN_EXT, local));
    }
    if event.extension(PATH_EXT).is_none() {
        set.push((PATH_EXT, local));
    }
    set
}

/// The path of an event received by `local` (its path with `local` appended), or `None`
/// when it already ends with `local`.
pub fn received_path(event: &RawEvent<'_>, local: &str) -> Option<String> {
    let path = event_path(event, local);
    if path.last() == Some(&local) {
        return None;
    }
    Some(format!("{},{local}", path.join(",")))
}

/// What [`DedupWindow::reserve_for`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Not seen: reserved for the caller.
    Fresh,
    /// Stored already (or twice in the caller's own reservations): a duplicate, counted.
    Duplicate,
    /// Reserved by another owner, not stored yet.
    HeldElsewhere,
}

/// Receivers drop events whose (source, id) they saw among the last `capacity` ones.
#[derive(Debug)]
pub struct DedupWindow {
    capacity: usize,
    seen: KeySet,
    order: VecDeque<DedupKey>,
    /// Keys of events being stored right now (reserved, not yet remembered): a second
    /// link delivering the same event meanwhile sees it as a duplicate.
    pending: HashMap<DedupKey, u64, foldhash::fast::RandomState>,
    duplicates: u64,
}

impl DedupWindow {
    /// A window remembering `capacity` events (at least 1).
    pub fn new(capacity: usize) -> DedupWindow {
        DedupWindow {
            capacity: capacity.max(1),
            seen: KeySet::default(),
            order: VecDeque::new(),
            pending: HashMap::default(),
            duplicates: 0,
        }
    }

    /// The key of an event in the window: its (source, id), hashed ([`DedupKey`]).
    pub fn key(event: &RawEvent<'_>) -> DedupKey {
        Self::key_of(event.source(), event.id())
    }

    /// The key of (source, id).
    pub fn key_of(source: &str, id: &str) -> DedupKey {
        let [a, b] = &*KEY_HASHERS;
        // `str`'s Hash writes a terminator byte that UTF-8 never contains, so ("ab", "c")
        // and ("a", "bc") hash differently.
        let half = |s: &std::collections::hash_map::RandomState| s.hash_one((source, id));
        (u128::from(half(a)) << 64) | u128::from(half(b))
    }

    /// Was this key seen in the window? Counts a duplicate when it was.
    pub fn check(&mut self, key: &DedupKey) -> bool {
        if self.seen.contains(key) {
            self.duplicates += 1;
            return true;
        }
        false
    }

    /// Reserves a key for an event `owner` (one storer of one link) is about to store;
    /// follow with [`DedupWindow::commit`] once stored or [`DedupWindow::release`] if
    /// storing failed. A key in the window, or reserved by `owner` already, is a
    /// duplicate (counted). A key reserved by another owner and not stored yet is
    /// [`Reservation::HeldElsewhere`], not a duplicate: the caller must wait until it is
    /// stored or released before it stores anything after it, or a later event could be
    /// stored before it (a reroute delivers the same events over two links).
    pub fn reserve_for(&mut self, key: &DedupKey, owner: u64) -> Reservation {
        if self.seen.contains(key) {
            self.duplicates += 1;
            return Reservation::Duplicate;
        }
        match self.pending.get(key) {
            Some(o) if *o != owner => Reservation::HeldElsewhere,
            Some(_) => {
                self.duplicates += 1;
                Reservation::Duplicate
            }
            None => {
                self.pending.insert(*key, owner);
                Reservation::Fresh
            }
        }
    }

    /// The reserved keys were stored: remember them.
    pub fn commit(&mut self, keys: &[DedupKey]) {
        for &k in keys {
            self.pending.remove(&k);
            self.remember(k);
        }
    }

    /// Storing the reserved keys failed: forget the reservation so a re-send is admitted.
    pub fn release(&mut self, keys: &[DedupKey]) {
        for k in keys {
            self.pending.remove(k);
        }
    }

    /// Remembers a key (call after the event is durably stored, so that a failed append
    /// does not make its re-send look like a duplicate).
    pub fn remember(&mut self, key: DedupKey) {
        if self.seen.contains(&key) {
            return;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key);
        self.order.push_back(key);
    }

    /// `true` for an event not seen in the window (and remembers it); `false` for a
    /// duplicate (and counts it).
    pub fn admit(&mut self, key: DedupKey) -> bool {
        if self.check(&key) {
            return false;
        }
        self.remember(key);
        true
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The most keys remembered.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refills the window from stored events, oldest first: `(timestamp_ms, key)` pairs
    /// from any number of partitions; only the newest `capacity` are kept.
    pub fn restore(&mut self, mut keys: Vec<(u64, DedupKey)>) -> usize {
        keys.sort_by_key(|(ts, _)| *ts);
        let skip = keys.len().saturating_sub(self.capacity);
        let mut n = 0;
        for (_, k) in keys.into_iter().skip(skip) {
            self.remember(k);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn hello(mesh: &str, cluster: &str, digest: &str) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            mesh: mesh.into(),
            cluster: cluster.into(),
            digest: digest.into(),
        }
    }

    fn key(id: &str) -> DedupKey {
        let bytes = meshd_core::codec::encode_event(&ev(id));
        DedupWindow::key(&RawEvent::parse(&bytes).unwrap())
    }

    fn ev(id: &str) -> meshd_core::Event {
        EventBuilderV10::new()
            .id(id)
            .source("s")
            .ty("t")
            .build()
            .unwrap()
    }

    #[test]
    fn handshake_outcomes() {
        let local = hello("m", "a", "d1");
        assert_eq!(
            check_hello(&local, "b", &Frame::Hello(hello("m", "b", "d1"))),
            HelloOutcome::Accept {
                digest_mismatch: false
            }
        );
        assert_eq!(
            check_hello(&local, "b", &Frame::Hello(hello("m", "b", "d2"))),
            HelloOutcome::Accept {
                digest_mismatch: true
            }
        );
        assert!(
            matches!(check_hello(&local, "b", &Frame::Hello(hello("other", "b", "d1"))), HelloOutcome::Refuse(r) if r.contains("mesh"))
        );
        assert!(
            matches!(check_hello(&local, "b", &Frame::Hello(hello("m", "c", "d1"))), HelloOutcome::Refuse(r) if r.contains("certificate"))
        );
        // Version 1 peers (no origin positions), version 2 peers (no trace frames),
        // version 3 peers (no schema frames) and unknown future versions are refused.
        assert_eq!(PROTOCOL_VERSION, 4);
        for v in [1, 2, 3, PROTOCOL_VERSION + 1] {
            let mut other = hello("m", "b", "d1");
            other.version = v;
            assert!(
                matches!(check_hello(&local, "b", &Frame::Hello(other)), HelloOutcome::Refuse(r) if r.contains(&format!("protocol version {v} ")) && r.contains("same release"))
            );
        }
        assert!(
            matches!(check_hello(&local, "b", &Frame::Ack { seq: 1 }), HelloOutcome::Refuse(r) if r.contains("hello"))
        );
        assert!(
            matches!(check_hello(&local, "b", &Frame::Refuse { reason: "x".into() }), HelloOutcome::Refuse(r) if r.contains("peer refused"))
        );
    }

    #[test]
    fn path_stamping_prevents_loops() {
        let bytes = meshd_core::codec::encode_event(&ev("1"));
        let raw = RawEvent::parse(&bytes).unwrap();
        assert_eq!(event_path(&raw, "a"), vec!["a"]);
        // a sends it: origin and path a; b receives it: path a,b
        let sent = raw.with_extensions(&outgoing_stamps(&raw, "a"));
        let raw = RawEvent::parse(&sent).unwrap();
        assert_eq!(received_path(&raw, "a"), None);
        let p = received_path(&raw, "b").unwrap();
        let at_b = raw.with_extensions(&[(PATH_EXT, &p)]);
        let raw = RawEvent::parse(&at_b).unwrap();
        assert_eq!(event_path(&raw, "b"), vec!["a", "b"]);
        // b forwards to c: no new stamps (the origin stays a); c appends itself
        assert!(outgoing_stamps(&raw, "b").is_empty());
        let p = received_path(&raw, "c").unwrap();
        let at_c = raw.with_extensions(&[(PATH_EXT, &p)]);
        let raw = RawEvent::parse(&at_c).unwrap();
        assert_eq!(event_path(&raw, "c"), vec!["a", "b", "c"]);
        assert_eq!(raw.extension(ORIGIN_EXT), Some("a"));
        let e = meshd_core::codec::decode_event(&at_c).unwrap();
        assert_eq!(
            e.extension(PATH_EXT).map(|v| v.to_string()),
            Some("a,b,c".into())
        );
        assert_eq!(
            e.extension(ORIGIN_EXT).map(|v| v.to_string()),
            Some("a".into())
        );
    }

    #[test]
    fn a_key_reserved_by_another_storer_is_held_not_duplicate() {
        let mut w = DedupWindow::new(10);
        let k = key("1");
        assert_eq!(w.reserve_for(&k, 1), Reservation::Fresh);
        // Another link's storer must wait for it, not drop it (nor count it).
        assert_eq!(w.reserve_for(&k, 2), Reservation::HeldElsewhere);
        assert_eq!(w.duplicates(), 0);
        // The same storer seeing it again in its round: a duplicate.
        assert_eq!(w.reserve_for(&k, 1), Reservation::Duplicate);
        // Released (the store failed): the other storer takes it.
        w.release(std::slice::from_ref(&k));
        assert_eq!(w.reserve_for(&k, 2), Reservation::Fresh);
        // Stored: a duplicate for everyone.
        w.commit(&[k]);
        assert_eq!(w.reserve_for(&k, 1), Reservation::Duplicate);
        assert_eq!(w.duplicates(), 2);
    }

    #[test]
    fn keys_tell_source_and_id_apart() {
        assert_eq!(DedupWindow::key_of("s", "1"), key("1"));
        assert_ne!(
            DedupWindow::key_of("ab", "c"),
            DedupWindow::key_of("a", "bc")
        );
        assert_ne!(DedupWindow::key_of("s", "1"), DedupWindow::key_of("1", "s"));
        let keys: HashSet<DedupKey> = (0..10_000)
            .map(|i| DedupWindow::key_of("s", &i.to_string()))
            .collect();
        assert_eq!(keys.len(), 10_000);
    }

    #[test]
    fn restore_keeps_the_newest_keys() {
        let mut d = DedupWindow::new(2);
        let k = |id: &str| DedupWindow::key_of("s", id);
        let n = d.restore(vec![(30, k("c")), (10, k("a")), (20, k("b"))]);
        assert_eq!(n, 2);
        assert_eq!(d.len(), 2);
        assert!(!d.admit(key("b")));
        assert!(!d.admit(key("c")));
        assert!(d.admit(key("a")), "the oldest key fell out of the window");
        assert_eq!(d.duplicates(), 2);
    }

    #[test]
    fn reserved_keys_are_duplicates_until_released() {
        let mut w = DedupWindow::new(10);
        let k = DedupWindow::key_of("src", "1");
        // The storer reserves the key while it stores the event.
        assert_eq!(w.reserve_for(&k, 1), Reservation::Fresh);
        // A second copy in its own round meanwhile is a duplicate.
        assert_eq!(w.reserve_for(&k, 1), Reservation::Duplicate);
        assert_eq!(w.duplicates(), 1);
        // The store failed: a re-send must be admitted again.
        w.release(std::slice::from_ref(&k));
        assert_eq!(w.reserve_for(&k, 1), Reservation::Fresh);
        // Stored: remembered in the window, still a duplicate afterwards.
        w.commit(&[k]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.reserve_for(&k, 1), Reservation::Duplicate);
        assert_eq!(w.duplicates(), 2);
    }

    #[test]
    fn dedup_window_is_bounded_and_counts() {
        let mut d = DedupWindow::new(2);
        assert!(d.admit(key("1")));
        assert!(!d.admit(key("1")));
        assert!(d.admit(key("2")));
        assert!(d.admit(key("3"))); // evicts 1
        assert!(d.admit(key("1")));
        assert_eq!(d.duplicates(), 1);
    }
}
