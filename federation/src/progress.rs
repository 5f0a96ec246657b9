//! Progress marks instead of empty batches (sans-IO).
//!
//! On a filtered link most records the source reads are not for the peer. Sending a batch
//! for every read, even an empty one, cost one frame (and one QUIC packet, and an ack
//! back) per few source events: at 1 % interest the link carried 20 % of the unfiltered
//! bytes. Instead, a read that yields nothing for the peer only moves the connection's read
//! position ([`crate::cursor::SendWindow::skipped`]) and leaves a *pending mark* here. The
//! pending marks of every partition go out together in one [`Frame::Progress`] at most once
//! per interval (`every`, counted from the oldest pending mark), taking one sequence number
//! and one window slot like a batch; its acknowledgement moves the durable cursors. A batch
//! sent for a partition covers its pending mark (the batch's `next` is past it).
//!
//! The receiver acknowledges a progress frame like a batch, cumulatively, once every batch
//! before it is stored: [`AckTracker`] merges progress frames (nothing to store) into the
//! storer's acknowledgements.
//!
//! [`Frame::Progress`]: meshd_core::wire::Frame::Progress

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use meshd_core::wire::ProgressMark;

use crate::cursor::Commit;

/// Default interval between two progress frames of one link.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A pending mark: the store topic (the cursor's), the wire topic, the partition, `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The store topic read (the cursor is kept under it; `__relay.T` for relayed events).
    pub store_topic: String,
    /// The topic's name on the wire.
    pub wire_topic: String,
    /// Partition.
    pub partition: u32,
    /// The read position after the skipped records.
    pub next: u64,
}

/// Progress frame contents ready to send: the wire marks and the cursors they commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMarks {
    /// For the frame.
    pub marks: Vec<ProgressMark>,
    /// For the send window ([`crate::cursor::SendWindow::sent_marks`]).
    pub commits: Vec<Commit>,
}

/// The sender's pending progress marks of one connection.
#[derive(Debug)]
pub struct ProgressMarks {
    every: Duration,
    pending: BTreeMap<(String, u32), Mark>,
    /// When the oldest pending mark was left.
    since: Option<Instant>,
}

impl ProgressMarks {
    /// At most one progress frame per `every`.
    pub fn new(every: Duration) -> ProgressMarks {
        ProgressMarks {
            every,
            pending: BTreeMap::new(),
            since: None,
        }
    }

    /// Records read on (store topic, partition) up to `next` had nothing for the peer.
    pub fn skipped(
        &mut self,
        store_topic: &str,
        wire_topic: &str,
        partition: u32,
        next: u64,
        now: Instant,
    ) {
        self.pending.insert(
            (store_topic.to_string(), partition),
            Mark {
                store_topic: store_topic.to_string(),
                wire_topic: wire_topic.to_string(),
                partition,
                next,
            },
        );
        self.since.get_or_insert(now);
    }

    /// A batch was sent on (store topic, partition): it covers the pending mark.
    pub fn covered(&mut self, store_topic: &str, partition: u32) {
        if self
            .pending
            .remove(&(store_topic.to_string(), partition))
            .is_some()
            && self.pending.is_empty()
        {
            self.since = None;
        }
    }

    /// Pending marks.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The marks to send now (and forget), once the oldest has waited `every`.
    pub fn due(&mut self, now: Instant) -> Option<DueMarks> {
        let since = self.since?;
        if now.saturating_duration_since(since) < self.every {
            return None;
        }
        self.since = None;
        let marks = std::mem::take(&mut self.pending);
        let mut out = DueMarks {
            marks: Vec::with_capacity(marks.len()),
            commits: Vec::with_capacity(marks.len()),
        };
        for m in marks.into_values() {
            out.marks.push(ProgressMark {
                topic: m.wire_topic,
                partition: m.partition,
                next: m.next,
            });
            out.commits.push(Commit {
                topic: m.store_topic,
                partition: m.partition,
                next: m.next,
            });
        }
        Some(out)
    }

    /// When the next frame is due, if any mark is pending.
    pub fn due_at(&self) -> Option<Instant> {
        self.since.map(|s| s + self.every)
    }
}

/// The receiver's cumulative acknowledgement over batches (acknowledged by the storer once
/// stored) and progress frames (nothing to store: acknowledged as soon as every batch
/// before them is stored). Sequence numbers arrive in order.
#[derive(Debug, Default)]
pub struct AckTracker {
    /// The highest batch handed to the storer.
    handed: u64,
    /// The highest batch the storer stored.
    stored: u64,
    /// The highest sequence number acknowledged.
    acked: u64,
    /// Progress frames not acknowledged yet: (seq, highest batch handed before it).
    progress: VecDeque<(u64, u64)>,
}

impl AckTracker {
    /// A tracker for a new connection.
    pub fn new() -> AckTracker {
        AckTracker::default()
    }

    /// Batch `seq` was handed to the storer.
    pub fn on_batch(&mut self, seq: u64) {
        self.handed = seq;
    }

    /// Progress frame `seq` arrived: `Some(ack)` to send now when every batch before it is
    /// stored already.
    pub fn on_progress(&mut self, seq: u64) -> Option<u64> {
        if self.stored >= self.handed {
            self.acked = self.acked.max(seq);
            return Some(self.acked);
        }
        self.progress.push_back((seq, self.handed));
        None
    }

    /// The storer stored every batch up to `seq`: the cumulative ack to send (it also
    /// covers the progress frames that only waited for those batches).
    pub fn on_stored(&mut self, seq: u64) -> u64 {
        self.stored = self.stored.max(seq);
        let mut ack = self.stored;
        while let Some(&(p, before)) = self.progress.front() {
            if before > self.stored {
                break;
            }
            ack = ack.max(p);
            self.progress.pop_front();
        }
        self.acked = self.acked.max(ack);
        self.acked
    }

    /// Whether every batch handed to the storer is stored.
    pub fn idle(&self) -> bool {
        self.stored >= self.handed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_wait_for_the_interval_and_go_out_together() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = ProgressMarks::new(ms(200));
        assert_eq!(m.due(t0 + ms(1000)), None, "nothing pending");
        m.skipped("t", "t", 0, 5, t0);
        m.skipped("t", "t", 0, 9, t0 + ms(50));
        m.skipped("__relay.t", "t", 1, 3, t0 + ms(150));
        assert_eq!(m.pending(), 2, "one mark per partition, the latest");
        assert_eq!(m.due_at(), Some(t0 + ms(200)));
        assert_eq!(m.due(t0 + ms(199)), None, "counted from the oldest mark");
        let due = m.due(t0 + ms(200)).expect("due");
        assert_eq!(
            due.marks,
            vec![
                ProgressMark {
                    topic: "t".into(),
                    partition: 1,
                    next: 3
                },
                ProgressMark {
                    topic: "t".into(),
                    partition: 0,
                    next: 9
                },
            ]
        );
        assert_eq!(due.commits[0].topic, "__relay.t", "the cursor's own topic");
        assert_eq!(m.pending(), 0);
        assert_eq!(m.due(t0 + ms(5000)), None, "sent once");
        // The interval restarts with the next skip.
        m.skipped("t", "t", 0, 12, t0 + ms(5000));
        assert_eq!(m.due(t0 + ms(5100)), None);
        assert!(m.due(t0 + ms(5200)).is_some());
    }

    #[test]
    fn a_batch_covers_the_pending_mark_of_its_partition() {
        let t0 = Instant::now();
        let mut m = ProgressMarks::new(Duration::from_millis(100));
        m.skipped("t", "t", 0, 5, t0);
        m.covered("t", 0);
        assert_eq!(m.pending(), 0);
        assert_eq!(m.due_at(), None);
        assert_eq!(m.due(t0 + Duration::from_secs(1)), None);
        m.skipped("t", "t", 0, 6, t0);
        m.skipped("t", "t", 1, 6, t0);
        m.covered("t", 0);
        let due = m
            .due(t0 + Duration::from_secs(1))
            .expect("partition 1 still due");
        assert_eq!(due.marks.len(), 1);
        assert_eq!(due.marks[0].partition, 1);
    }

    #[test]
    fn progress_is_acknowledged_only_after_the_batches_before_it() {
        let mut a = AckTracker::new();
        // Nothing handed: acknowledged at once.
        assert_eq!(a.on_progress(1), Some(1));
        a.on_batch(2);
        assert!(!a.idle());
        // Batch 2 is being stored: progress 3 waits for it.
        assert_eq!(a.on_progress(3), None);
        a.on_batch(4);
        assert_eq!(a.on_progress(5), None);
        // Batch 2 stored: covers progress 3 (it only waited for 2), not 5 (waits for 4).
        assert_eq!(a.on_stored(2), 3);
        assert_eq!(a.on_stored(4), 5);
        assert!(a.idle());
        assert_eq!(a.on_progress(6), Some(6));
        // Acks never go back.
        a.on_batch(7);
        assert_eq!(a.on_stored(7), 7);
        assert_eq!(a.on_progress(8), Some(8));
        assert_eq!(a.on_stored(7), 8);
    }
}
