//! Which offsets of one partition are done, and how far the committed offset may move.
//!
//! Events complete out of order (lanes, leases), but the committed offset is "the next
//! offset to read": it may only pass offsets that are all done (delivered, filtered out
//! or dead-lettered). [`OffsetTracker`] holds the contiguous done prefix plus the done
//! offsets beyond it; it is pure and does no I/O.

use std::collections::BTreeMap;

/// Completion state of one partition for one offset group.
///
/// Offsets need not be dense (the Pulsar store's are sparse, see docs/pulsar.md): done
/// offsets beyond the commit point are kept as ranges, so a gap of any width (records
/// removed by retention, offsets a store never assigns) costs one entry, not one per
/// offset.
#[derive(Debug, Clone)]
pub struct OffsetTracker {
    /// Every offset below this one is done: the offset that may be committed.
    next: u64,
    /// Done ranges `[start, end)` above `next`, disjoint and not adjacent (waiting for
    /// the gap before them to close), keyed by start.
    done: BTreeMap<u64, u64>,
    /// What was last committed (or the starting point).
    committed: u64,
}

impl OffsetTracker {
    /// A tracker whose committed offset is `start`.
    pub fn new(start: u64) -> OffsetTracker {
        OffsetTracker {
            next: start,
            done: BTreeMap::new(),
            committed: start,
        }
    }

    /// Marks one offset done. Offsets below the commit point are ignored (duplicates).
    pub fn complete(&mut self, offset: u64) {
        self.complete_range(offset, offset.saturating_add(1));
    }

    /// Marks `[from, to)` done (records that no longer exist, e.g. removed by retention,
    /// or offsets the store skips).
    pub fn complete_range(&mut self, from: u64, to: u64) {
        let mut from = from.max(self.next);
        let mut to = to;
        if from >= to {
            return;
        }
        // Merge with every range that overlaps or touches [from, to).
        let touching: Vec<(u64, u64)> = self
            .done
            .range(..=to)
            .rev()
            .take_while(|(_, e)| **e >= from)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.done.remove(&s);
            from = from.min(s);
            to = to.max(e);
        }
        if from == self.next {
            self.next = to;
        } else {
            self.done.insert(from, to);
        }
        // A range that now starts at the commit point moves it.
        while let Some(e) = self.done.remove(&self.next) {
            self.next = e;
        }
    }

    /// Whether `offset` is done.
    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.next
            || self
                .done
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, e)| offset < *e)
    }

    /// The offset that may be committed now.
    pub fn commit_point(&self) -> u64 {
        self.next
    }

    /// Done offsets waiting behind a gap.
    pub fn pending_done(&self) -> usize {
        let n: u64 = self.done.iter().map(|(s, e)| e - s).sum();
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The commit point if it moved since the last call (and records it as committed).
    pub fn take_commit(&mut self) -> Option<u64> {
        if self.next != self.committed {
            self.committed = self.next;
            Some(self.next)
        } else {
            None
        }
    }

    /// Puts back a commit point that failed to be stored, so the next call retries it.
    pub fn commit_failed(&mut self, previous: u64) {
        self.committed = previous;
    }

    /// The last committed offset.
    pub fn committed(&self) -> u64 {
        self.committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_done_sees_the_prefix_and_the_ranges_beyond_a_gap() {
        let mut t = OffsetTracker::new(10);
        t.complete_range(12, 15);
        assert!(t.is_done(9), "below the start");
        assert!(!t.is_done(10) && !t.is_done(11));
        assert!(t.is_done(12) && t.is_done(14));
        assert!(!t.is_done(15));
        t.complete(10);
        t.complete(11);
        assert!(t.is_done(11) && t.is_done(14) && !t.is_done(15));
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new(10);
        assert_eq!(t.take_commit(), None);
        t.complete(12);
        t.complete(11);
        assert_eq!(t.commit_point(), 10, "10 is still in flight");
        assert_eq!(t.take_commit(), None);
        t.complete(10);
        assert_eq!(t.commit_point(), 13);
        assert_eq!(t.take_commit(), Some(13));
        assert_eq!(t.take_commit(), None);
        assert_eq!(t.pending_done(), 0);
    }

    #[test]
    fn duplicates_and_old_offsets_are_ignored() {
        let mut t = OffsetTracker::new(5);
        t.complete(3);
        t.complete(5);
        t.complete(5);
        t.complete(7);
        t.complete(7);
        assert_eq!(t.commit_point(), 6);
        assert_eq!(t.pending_done(), 1);
    }

    #[test]
    fn ranges_close_gaps() {
        let mut t = OffsetTracker::new(0);
        t.complete(9);
        t.complete_range(0, 5);
        assert_eq!(t.commit_point(), 5);
        t.complete_range(6, 9);
        assert_eq!(t.commit_point(), 5);
        t.complete(5);
        assert_eq!(t.commit_point(), 10);
        t.complete_range(20, 20);
        assert_eq!(t.commit_point(), 10);
    }

    #[test]
    fn sparse_offsets_and_huge_gaps_cost_one_entry() {
        let mut t = OffsetTracker::new(0);
        let far = 5u64 << 24;
        t.complete_range(3, far);
        t.complete(far);
        assert_eq!(t.commit_point(), 0);
        assert_eq!(t.done.len(), 1, "touching ranges merge");
        t.complete_range(0, 3);
        assert_eq!(t.commit_point(), far + 1);
        assert!(t.done.is_empty());
        t.complete(u64::MAX - 1);
        t.complete(far + 1);
        assert_eq!(t.commit_point(), far + 2);
        assert_eq!(t.pending_done(), 1);
    }

    #[test]
    fn failed_commit_is_retried() {
        let mut t = OffsetTracker::new(0);
        t.complete(0);
        assert_eq!(t.take_commit(), Some(1));
        t.commit_failed(0);
        assert_eq!(t.take_commit(), Some(1));
        assert_eq!(t.committed(), 1);
    }
}
