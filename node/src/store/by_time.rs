//! Time → offset: the first record of a partition stored at or after a time, found by a
//! binary search over offsets that reads one record per step (no index, no scan).
//!
//! [`TimeSearch`] is the search without I/O: [`TimeSearch::probe`] names an offset, the
//! caller reads the first record at or after it (one record, `read(from, 1)`) and hands
//! its offset and store timestamp to [`TimeSearch::answer`]. It works on dense offsets
//! (the embedded log) and on sparse ones (the Pulsar store: offsets packed from message
//! ids, with gaps), because each answer says where the record really is.
//!
//! Store timestamps are taken at append (`now` of the appending node), so they grow with
//! offsets within a partition up to clock steps (several Pulsar writers, an NTP step). On
//! a monotone partition the result is exact: every record before it is older than the
//! time, it is not. Otherwise the search finds *a* boundary where older records stop;
//! a step back only moves it a little. Probes: about log2(end - start) (Pulsar: of the
//! offset space, at most 64).

use super::{EventStore, StoreError};

/// The search for the first record at or after `time_ms` in `[start, end)`.
#[derive(Debug, Clone)]
pub struct TimeSearch {
    /// Every record below `lo` is older than the time.
    lo: u64,
    /// No record lies in `[hi, best)`.
    hi: u64,
    /// The first record known at or after the time (or the end when none is known).
    best: u64,
    time_ms: u64,
}

impl TimeSearch {
    /// A search in `[start, end)` for `time_ms` (ms since the epoch).
    pub fn new(start: u64, end: u64, time_ms: u64) -> TimeSearch {
        let end = end.max(start);
        TimeSearch {
            lo: start,
            hi: end,
            best: end,
            time_ms,
        }
    }

    /// The offset to read the first record at or after next, or `None` when
    /// [`TimeSearch::result`] is final.
    pub fn probe(&self) -> Option<u64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// What the read at the last probe found: the first record at or after it, as
    /// `(offset, timestamp_ms)`, or `None` when there is none (the end, or trimmed).
    pub fn answer(&mut self, first: Option<(u64, u64)>) {
        let Some(mid) = self.probe() else { return };
        match first {
            // Nothing between the probe and the best known: the answer is not below it.
            None => self.hi = mid,
            Some((offset, _)) if offset >= self.best => self.hi = mid,
            Some((offset, ts)) if ts >= self.time_ms => {
                self.best = offset;
                self.hi = mid;
            }
            Some((offset, _)) => self.lo = (offset + 1).min(self.hi),
        }
    }

    /// The offset of the first record at or after the time (the end when none is).
    pub fn result(&self) -> u64 {
        self.best
    }
}

/// Runs a [`TimeSearch`] over `[start, end)` of a partition with `store.read(o, 1)` as
/// the probe.
pub async fn search_by_reads<S: EventStore + ?Sized>(
    store: &S,
    topic: &str,
    partition: u32,
    start: u64,
    end: u64,
    time_ms: u64,
) -> Result<u64, StoreError> {
    let mut search = TimeSearch::new(start, end, time_ms);
    while let Some(o) = search.probe() {
        let first = store.read(topic, partition, o, 1).await?;
        search.answer(first.first().map(|r| (r.offset, r.timestamp_ms)));
    }
    Ok(search.result())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search over `records` (offset, timestamp), sorted by offset.
    fn search(records: &[(u64, u64)], start: u64, end: u64, time: u64) -> (u64, usize) {
        let mut s = TimeSearch::new(start, end, time);
        let mut reads = 0;
        while let Some(o) = s.probe() {
            let first = records.iter().find(|(off, _)| *off >= o).copied();
            s.answer(first);
            reads += 1;
            assert!(reads <= 70, "no end");
        }
        (s.result(), reads)
    }

    #[test]
    fn dense_offsets() {
        let recs: Vec<(u64, u64)> = [10u64, 20, 20, 30, 40, 50]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64, *t))
            .collect();
        assert_eq!(search(&recs, 0, 6, 0).0, 0);
        assert_eq!(search(&recs, 0, 6, 20).0, 1, "the first of equal times");
        assert_eq!(search(&recs, 0, 6, 21).0, 3);
        assert_eq!(search(&recs, 0, 6, 50).0, 5);
        assert_eq!(search(&recs, 0, 6, 51).0, 6, "after everything: the end");
        assert_eq!(search(&recs, 2, 6, 0).0, 2, "never below start");
        assert_eq!(search(&recs, 6, 6, 0).0, 6, "empty");
        let (_, reads) = search(&recs, 0, 6, 35);
        assert!(reads <= 4, "{reads} reads");
    }

    #[test]
    fn sparse_offsets_land_on_records() {
        // Pulsar-like: ledger 1 entries 0..3, ledger 5 entries 0..2.
        let l = |ledger: u64, entry: u64| ledger << 24 | entry;
        let recs = [
            (l(1, 0), 100),
            (l(1, 1), 110),
            (l(1, 2), 120),
            (l(5, 0), 200),
            (l(5, 1), 210),
        ];
        let end = l(5, 2);
        assert_eq!(search(&recs, l(1, 0), end, 0).0, l(1, 0));
        assert_eq!(search(&recs, l(1, 0), end, 115).0, l(1, 2));
        assert_eq!(search(&recs, l(1, 0), end, 150).0, l(5, 0), "across a gap");
        assert_eq!(search(&recs, l(1, 0), end, 210).0, l(5, 1));
        assert_eq!(search(&recs, l(1, 0), end, 211).0, end);
        let (_, reads) = search(&recs, l(1, 0), end, 150);
        assert!(reads <= 64, "{reads} reads");
    }

    #[test]
    fn a_million_records_take_twenty_reads() {
        let recs: Vec<(u64, u64)> = (0..1_000_000u64).map(|i| (i, 1000 + i / 3)).collect();
        let mut s = TimeSearch::new(0, 1_000_000, 1000 + 123_456);
        let mut reads = 0;
        while let Some(o) = s.probe() {
            s.answer(recs.get(o as usize).copied());
            reads += 1;
        }
        assert_eq!(s.result(), 123_456 * 3);
        assert!(reads <= 21, "{reads} reads");
    }

    #[test]
    fn trimmed_meanwhile_or_appended_past_the_end() {
        // Nothing found at all (retention removed everything): the probe positions.
        assert_eq!(search(&[], 0, 10, 5).0, 10);
        // A record appended past the end the search began with is not taken.
        let recs = [(0, 1), (1, 2), (12, 99)];
        assert_eq!(search(&recs, 0, 2, 50).0, 2);
    }
}
