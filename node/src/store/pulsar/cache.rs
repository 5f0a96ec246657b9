//! A partition's tail cache: the records of one Pulsar partition topic from `base` to
//! `end`, fed by two sources, with no I/O.
//!
//! - The **tailer** (this store's subscription on the topic) sees every message of every
//!   store in broker order: it is the authority on what lies between two offsets.
//! - This store's own **send receipts**: an append knows the offset of each of its records
//!   as soon as the broker acknowledged it, and the record itself, so it need not wait for
//!   the tailer to see it (that wait was what made appends slow, docs/pulsar.md). A receipt
//!   at exactly `end` extends the cache at once: offsets are `ledger << 24 | entry` and
//!   entry ids are dense within a ledger, so `end` (one past the last message seen) is the
//!   very next message. A receipt above `end` (another store wrote in between, a new
//!   ledger began, or an earlier receipt of ours is not in yet) waits in `pending` until
//!   the records before it arrive, from the tailer or from our own receipts.
//!
//! Invariant: every record of the partition with an offset in `[base, end)` is in
//! `records`, in offset order. `acked` is one past the highest offset this store was
//! acknowledged; the partition's visible end (`bounds`, `watch_end`) is
//! `max(end, acked)`, and a read below `acked` that finds nothing at or after its start
//! waits for `end` to pass it (read-your-writes without making the append wait).

use std::collections::{BTreeMap, VecDeque};

use crate::store::StoredRecord;

/// What the tailer should do with a message at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tailed {
    /// Below `end`: seen already (or delivered twice); nothing to do.
    Known,
    /// Below `end` but missing from the cached range: a hole, so the cache restarted at
    /// its end (the caller says so in the log).
    Hole,
    /// Was one of our own pending records: it is in the cache now (no decoding needed).
    Taken,
    /// New: decode it and hand it to [`Cache::insert_tailed`].
    Decode,
}

/// The tail cache of one partition.
#[derive(Debug)]
pub(crate) struct Cache {
    /// Every record at or above `base` and below `end` is in `records`.
    pub base: u64,
    /// One past the last message seen in broker order (records or not).
    pub end: u64,
    pub records: VecDeque<StoredRecord>,
    /// Payload bytes in `records`.
    pub bytes: usize,
    /// Own acknowledged records above `end`, waiting for the ones before them.
    pending: BTreeMap<u64, StoredRecord>,
    pending_bytes: usize,
    /// One past the highest offset this store was acknowledged.
    pub acked: u64,
    max_records: usize,
    max_bytes: usize,
}

impl Cache {
    /// An empty cache starting (and ending) at `at`.
    pub fn new(at: u64, max_records: usize, max_bytes: usize) -> Cache {
        Cache {
            base: at,
            end: at,
            records: VecDeque::new(),
            bytes: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            acked: at,
            max_records,
            max_bytes,
        }
    }

    /// The end readers see: everything below it is stored (in the broker).
    pub fn visible_end(&self) -> u64 {
        self.end.max(self.acked)
    }

    /// Whether own acknowledged records lie at or above `end`, i.e. a read there must
    /// wait for the tailer before it may answer "nothing more".
    pub fn awaits_tailer(&self) -> bool {
        self.end < self.acked
    }

    /// The number of own records waiting for earlier ones.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The broker acknowledged one of our records. `true` when it is in the cache now.
    pub fn acknowledged(&mut self, record: StoredRecord) -> bool {
        let offset = record.offset;
        self.acked = self.acked.max(offset + 1);
        if offset < self.end {
            // The tailer was faster.
            return true;
        }
        if offset == self.end {
            self.push(record);
            self.drain();
            return true;
        }
        // A bounded optimisation only: a record dropped here comes from the tailer (or
        // the broker, below `base`) like anyone else's.
        if self.pending.len() < self.max_records
            && self.pending_bytes + record.payload.len() <= self.max_bytes
        {
            self.pending_bytes += record.payload.len();
            self.pending.insert(offset, record);
        }
        false
    }

    /// The tailer received the message at `offset`.
    pub fn tailed(&mut self, offset: u64) -> Tailed {
        if offset < self.end {
            // Published between the subscription and its last-id answer (below the
            // cache, read from the broker when asked for), or delivered twice. A record
            // inside the cached range that the cache lacks would be a hole: the cache
            // then restarts at its end.
            let hole = offset >= self.base
                && self
                    .records
                    .binary_search_by_key(&offset, |r| r.offset)
                    .is_err();
            if hole {
                self.records.clear();
                self.bytes = 0;
                self.base = self.end;
                return Tailed::Hole;
            }
            return Tailed::Known;
        }
        if let Some(r) = self.pending.remove(&offset) {
            self.pending_bytes -= r.payload.len();
            self.push(r);
            self.drain();
            return Tailed::Taken;
        }
        Tailed::Decode
    }

    /// The tailer decoded the message at `offset` (`None`: not a record of this
    /// incarnation, or undecodable): the cache now ends after it.
    pub fn insert_tailed(&mut self, offset: u64, record: Option<StoredRecord>) {
        if offset < self.end {
            return; // our own receipt got there first
        }
        match record {
            Some(r) => self.push(r),
            // Nothing of ours lives there; the range stays complete.
            None => self.end = offset + 1,
        }
        self.drain();
    }

    /// The tailer subscribed again and the partition ends at `end` now: what lies between
    /// is read from the broker when asked for.
    pub fn restart_at(&mut self, end: u64) {
        if end > self.end {
            self.end = end;
            self.records.clear();
            self.bytes = 0;
            self.base = end;
            self.drain();
        }
    }

    /// Up to `max` cached records with offsets `>= from` (`from >= base`).
    pub fn collect(&self, from: u64, max: usize) -> Vec<StoredRecord> {
        let i = self.records.partition_point(|r| r.offset < from);
        self.records.iter().skip(i).take(max).cloned().collect()
    }

    fn push(&mut self, r: StoredRecord) {
        debug_assert!(r.offset >= self.end);
        self.end = r.offset + 1;
        self.bytes += r.payload.len();
        self.records.push_back(r);
        while self.records.len() > self.max_records
            || (self.bytes > self.max_bytes && !self.records.is_empty())
        {
            if let Some(r) = self.records.pop_front() {
                self.bytes -= r.payload.len();
                self.base = r.offset + 1;
            }
        }
    }

    /// Moves pending records that now follow `end` into the cache; drops those below.
    fn drain(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            let offset = *entry.key();
            if offset > self.end {
                break;
            }
            let r = entry.remove();
            self.pending_bytes -= r.payload.len();
            if offset == self.end {
                self.push(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn r(offset: u64) -> StoredRecord {
        StoredRecord {
            partition: 0,
            offset,
            timestamp_ms: 1,
            payload: Bytes::from(format!("r{offset}")),
        }
    }

    fn offsets(c: &Cache) -> Vec<u64> {
        c.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn receipts_at_the_end_extend_the_cache_at_once() {
        let mut c = Cache::new(10, 100, 1 << 20);
        assert!(c.acknowledged(r(10)));
        assert!(c.acknowledged(r(11)));
        assert_eq!(offsets(&c), vec![10, 11]);
        assert_eq!((c.base, c.end, c.visible_end()), (10, 12, 12));
        assert!(!c.awaits_tailer());
        // The tailer sees them later: nothing changes, nothing to decode.
        assert_eq!(c.tailed(10), Tailed::Known);
        assert_eq!(c.tailed(11), Tailed::Known);
        assert_eq!(offsets(&c), vec![10, 11]);
    }

    #[test]
    fn receipts_out_of_order_wait_for_the_earlier_ones() {
        let mut c = Cache::new(10, 100, 1 << 20);
        assert!(!c.acknowledged(r(12)));
        assert!(!c.acknowledged(r(11)));
        assert_eq!(c.visible_end(), 13);
        assert!(c.awaits_tailer());
        assert!(offsets(&c).is_empty());
        assert!(c.acknowledged(r(10)));
        assert_eq!(offsets(&c), vec![10, 11, 12]);
        assert_eq!((c.end, c.pending_len()), (13, 0));
        assert!(!c.awaits_tailer());
    }

    #[test]
    fn another_writers_record_from_the_tailer_fills_the_gap() {
        let mut c = Cache::new(10, 100, 1 << 20);
        // 10 is another store's; ours is 11.
        assert!(!c.acknowledged(r(11)));
        assert_eq!(c.pending_len(), 1);
        assert_eq!(c.tailed(10), Tailed::Decode);
        c.insert_tailed(10, Some(r(10)));
        assert_eq!(offsets(&c), vec![10, 11]);
        assert_eq!(c.end, 12);
        // The tailer's copy of ours is known already.
        assert_eq!(c.tailed(11), Tailed::Known);
    }

    #[test]
    fn the_tailer_takes_pending_records_without_decoding() {
        let mut c = Cache::new(0, 100, 1 << 20);
        // First message of a new ledger: not at `end`.
        assert!(!c.acknowledged(r(5 << 24)));
        assert!(!c.acknowledged(r((5 << 24) + 1)));
        assert_eq!(c.tailed(5 << 24), Tailed::Taken);
        assert_eq!(offsets(&c), vec![5 << 24, (5 << 24) + 1]);
        assert_eq!(c.end, (5 << 24) + 2);
        assert_eq!(c.tailed((5 << 24) + 1), Tailed::Known);
    }

    #[test]
    fn skipped_messages_keep_the_range_complete() {
        let mut c = Cache::new(10, 100, 1 << 20);
        assert!(!c.acknowledged(r(11)));
        // 10 is not a record of this incarnation.
        assert_eq!(c.tailed(10), Tailed::Decode);
        c.insert_tailed(10, None);
        assert_eq!(offsets(&c), vec![11]);
        assert_eq!((c.base, c.end), (10, 12));
    }

    #[test]
    fn a_restart_drops_pending_records_below_the_new_end() {
        let mut c = Cache::new(10, 100, 1 << 20);
        c.acknowledged(r(12));
        c.acknowledged(r(20));
        c.restart_at(13);
        assert_eq!((c.base, c.end, c.pending_len()), (13, 13, 1));
        assert!(c.awaits_tailer(), "20 is still awaited");
        c.restart_at(21);
        assert_eq!((c.base, c.end, c.pending_len()), (21, 21, 0));
        assert!(!c.awaits_tailer());
        // An older end changes nothing.
        c.restart_at(15);
        assert_eq!(c.end, 21);
    }

    #[test]
    fn eviction_keeps_the_bounds() {
        let mut c = Cache::new(0, 3, 1 << 20);
        for o in 0..5 {
            assert!(c.acknowledged(r(o)));
        }
        assert_eq!(offsets(&c), vec![2, 3, 4]);
        assert_eq!((c.base, c.end), (2, 5));
        assert_eq!(c.collect(3, 10).len(), 2);
        assert_eq!(c.collect(0, 1)[0].offset, 2);
        // Pending is bounded as well: the fourth waiting record is not kept.
        for o in [10, 11, 12, 13] {
            assert!(!c.acknowledged(r(o)));
        }
        assert_eq!(c.pending_len(), 3);
        assert_eq!(c.visible_end(), 14, "acknowledged all the same");
    }

    #[test]
    fn a_hole_restarts_the_cache() {
        let mut c = Cache::new(0, 100, 1 << 20);
        c.insert_tailed(0, Some(r(0)));
        c.insert_tailed(2, Some(r(2))); // 1 was not a record: fine
        assert_eq!(c.tailed(2), Tailed::Known);
        // 1 delivered late although the range [0, 3) was complete: a hole.
        assert_eq!(c.tailed(1), Tailed::Hole);
        assert!(c.records.is_empty());
        assert_eq!((c.base, c.end), (3, 3));
    }
}
