//! The send window and the replication cursors of one link (sans-IO).
//!
//! The source of a link sends batches of one (topic, partition) in offset order and keeps
//! at most `window` batches unacknowledged. The receiver acknowledges a batch once its
//! events are durably appended; only then does the source move its durable cursor (the
//! store's committed offset of the consumer group `__bridge/{peer}`) to the batch's
//! `next`. A new connection starts from the durable cursors again, so whatever was in
//! flight when a link broke is sent again (duplicates possible, loss not). The same
//! consumer group holds the source's age retention: the bridge registers it with the node
//! for every link (`Node::hold_retention`), so a partition longer than a topic's
//! `max_age_secs` does not expire what the link has not sent.

use std::collections::{HashMap, VecDeque};

/// The store consumer group holding a link's durable cursors at the source.
pub fn cursor_group(peer: &str) -> String {
    format!("__bridge/{peer}")
}

/// A cursor to make durable: `next` is the next offset to send on (topic, partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to replicate.
    pub next: u64,
}

/// Protocol violations seen by the window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The peer acknowledged a batch that was never sent.
    #[error("ack for batch {seq} but the highest batch sent is {highest}")]
    AckOfUnsent {
        /// The acknowledged sequence number.
        seq: u64,
        /// The highest sent.
        highest: u64,
    },
}

/// Unacknowledged batches and in-memory send positions of one connection.
#[derive(Debug)]
pub struct SendWindow {
    window: usize,
    next_seq: u64,
    /// (seq, cursor it commits): one entry per batch, one per mark of a progress frame.
    in_flight: VecDeque<(u64, Commit)>,
    /// Frames (distinct seqs) in `in_flight`.
    frames: usize,
    sent: HashMap<(String, u32), u64>,
}

impl SendWindow {
    /// A window of at most `window` unacknowledged batches (at least 1).
    pub fn new(window: usize) -> SendWindow {
        SendWindow {
            window: window.max(1),
            next_seq: 1,
            in_flight: VecDeque::new(),
            frames: 0,
            sent: HashMap::new(),
        }
    }

    /// May another batch be sent now?
    pub fn can_send(&self) -> bool {
        self.frames < self.window
    }

    /// Batches (and progress frames) sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.frames
    }

    /// Where sending continues on (topic, partition): after the last batch sent on this
    /// connection, or at the durable cursor `durable`.
    pub fn position(&self, topic: &str, partition: u32, durable: u64) -> u64 {
        self.sent
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(durable)
    }

    /// Records a batch covering (topic, partition) up to `next`; returns its sequence number.
    pub fn sent(&mut self, topic: &str, partition: u32, next: u64) -> u64 {
        self.sent_marks(&[Commit {
            topic: topic.to_string(),
            partition,
            next,
        }])
    }

    /// Records one frame moving several cursors (a progress frame; its marks must have
    /// been [`SendWindow::skipped`] already, or cover what was); returns its sequence
    /// number.
    pub fn sent_marks(&mut self, commits: &[Commit]) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.frames += 1;
        for c in commits {
            self.sent.insert((c.topic.clone(), c.partition), c.next);
            self.in_flight.push_back((seq, c.clone()));
        }
        seq
    }

    /// Reading (topic, partition) continues at `next` on this connection although no frame
    /// was sent for what was read (nothing in it was for the peer): the cursor moves once
    /// a later batch or progress frame covering it is acknowledged.
    pub fn skipped(&mut self, topic: &str, partition: u32, next: u64) {
        self.sent.insert((topic.to_string(), partition), next);
    }

    /// The peer acknowledged every batch up to `seq`: the cursors to make durable, the
    /// latest per (topic, partition), in acknowledgement order.
    pub fn on_ack(&mut self, seq: u64) -> Result<Vec<Commit>, CursorError> {
        if seq >= self.next_seq {
            return Err(CursorError::AckOfUnsent {
                seq,
                highest: self.next_seq - 1,
            });
        }
        let mut out: Vec<Commit> = Vec::new();
        let mut last = None;
        while let Some((s, _)) = self.in_flight.front() {
            if *s > seq {
                break;
            }
            let Some((s, c)) = self.in_flight.pop_front() else {
                break;
            };
            if last != Some(s) {
                self.frames -= 1;
                last = Some(s);
            }
            if let Some(prev) = out
                .iter_mut()
                .find(|p| p.topic == c.topic && p.partition == c.partition)
            {
                prev.next = c.next;
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limits_and_cumulative_acks_commit_latest() {
        let mut w = SendWindow::new(2);
        assert_eq!(w.position("t", 0, 5), 5);
        let s1 = w.sent("t", 0, 10);
        assert!(w.can_send());
        let s2 = w.sent("t", 0, 20);
        assert!(!w.can_send());
        assert_eq!(w.position("t", 0, 5), 20);
        assert_eq!(
            w.on_ack(s1).unwrap(),
            vec![Commit {
                topic: "t".into(),
                partition: 0,
                next: 10
            }]
        );
        assert!(w.can_send());
        let s3 = w.sent("u", 1, 3);
        let commits = w.on_ack(s3).unwrap();
        assert_eq!(
            commits,
            vec![
                Commit {
                    topic: "t".into(),
                    partition: 0,
                    next: 20
                },
                Commit {
                    topic: "u".into(),
                    partition: 1,
                    next: 3
                }
            ]
        );
        let _ = s2;
        assert_eq!(w.in_flight(), 0);
        // Acks are idempotent for old sequence numbers, refused for unsent ones.
        assert_eq!(w.on_ack(1).unwrap(), vec![]);
        assert!(matches!(
            w.on_ack(99),
            Err(CursorError::AckOfUnsent {
                seq: 99,
                highest: 3
            })
        ));
    }

    #[test]
    fn a_progress_frame_is_one_slot_and_commits_every_mark() {
        let mut w = SendWindow::new(2);
        w.skipped("t", 0, 7);
        assert_eq!(w.position("t", 0, 0), 7, "reading continues after the skip");
        assert_eq!(w.in_flight(), 0, "a skip sends nothing");
        let marks = [
            Commit {
                topic: "t".into(),
                partition: 0,
                next: 7,
            },
            Commit {
                topic: "t".into(),
                partition: 1,
                next: 4,
            },
        ];
        let s1 = w.sent_marks(&marks);
        assert_eq!(w.in_flight(), 1, "one frame, however many marks");
        assert!(w.can_send());
        let s2 = w.sent("t", 0, 9);
        assert!(!w.can_send());
        assert_eq!(w.on_ack(s1).unwrap(), marks.to_vec());
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.on_ack(s2).unwrap()[0].next, 9);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn a_new_connection_restarts_from_the_durable_cursor() {
        let mut w = SendWindow::new(4);
        w.sent("t", 0, 10);
        // the connection breaks before the ack: a new window knows nothing
        let w2 = SendWindow::new(4);
        assert_eq!(w2.position("t", 0, 0), 0);
        assert_eq!(cursor_group("b"), "__bridge/b");
    }
}
