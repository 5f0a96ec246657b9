//! The canary checker: counts what publishers had acknowledged against what subscribers
//! in every cluster received, by sequence number per partition key. Pure bookkeeping, no
//! I/O and no clock: correctness is decided from sequence numbers only (wall-clock times
//! appear in a [`Report`] as measurements, never as a verdict).
//!
//! Definitions (per cluster):
//! - *delivered*: distinct acknowledged (key, seq) pairs the cluster's subscriber received;
//! - *lost*: acknowledged pairs it never received;
//! - *duplicated*: deliveries of a pair it had already received;
//! - *reordered*: first deliveries of (key, seq) after a higher seq of the same key had
//!   already arrived (a redelivery of an old event is a duplicate, not a reorder);
//! - *unacknowledged*: pairs received that no publisher saw acknowledged (a publish whose
//!   answer was lost; allowed, and counted).

use std::collections::{BTreeMap, BTreeSet};

/// The report types live in core (`meshd_core::api`): a node keeps the last drill reports
/// (`POST /v1/drills/reports`) and the console shows them.
pub use meshd_core::api::{DrillClusterReport as ClusterReport, DrillReport as Report};

/// What one cluster's subscriber saw.
#[derive(Debug, Default, Clone)]
struct ClusterLog {
    seen: BTreeMap<String, BTreeSet<u64>>,
    highest: BTreeMap<String, u64>,
    deliveries: u64,
    duplicated: u64,
    reordered: u64,
}

/// Counts acknowledged publishes and deliveries; see the module docs for the definitions.
#[derive(Debug, Default, Clone)]
pub struct Checker {
    acked: BTreeMap<String, BTreeSet<u64>>,
    clusters: BTreeMap<String, ClusterLog>,
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Declares a cluster whose subscriber must receive every acknowledged event (a
    /// cluster that received nothing at all still shows up, with everything lost).
    pub fn expect_cluster(&mut self, cluster: &str) {
        self.clusters.entry(cluster.to_string()).or_default();
    }

    /// A publisher saw (key, seq) acknowledged.
    pub fn acked(&mut self, key: &str, seq: u64) {
        self.acked.entry(key.to_string()).or_default().insert(seq);
    }

    /// `cluster`'s subscriber received (key, seq).
    pub fn delivered(&mut self, cluster: &str, key: &str, seq: u64) {
        let log = self.clusters.entry(cluster.to_string()).or_default();
        log.deliveries += 1;
        let seen = log.seen.entry(key.to_string()).or_default();
        if !seen.insert(seq) {
            log.duplicated += 1;
            return;
        }
        let highest = log.highest.entry(key.to_string()).or_insert(seq);
        if seq < *highest {
            log.reordered += 1;
        } else {
            *highest = seq;
        }
    }

    /// Every delivery `cluster`'s subscriber made so far (duplicates included).
    pub fn delivered_in(&self, cluster: &str) -> u64 {
        self.clusters.get(cluster).map_or(0, |l| l.deliveries)
    }

    /// Per key, the highest acknowledged seq so far (a mark for [`Checker::delivered_after`]).
    pub fn highest_acked(&self) -> BTreeMap<String, u64> {
        self.acked
            .iter()
            .filter_map(|(k, s)| s.last().map(|v| (k.clone(), *v)))
            .collect()
    }

    /// Distinct events `cluster`'s subscriber received that were published after `marks`
    /// was taken: seq above the key's mark, or any seq of a key without a mark.
    pub fn delivered_after(&self, cluster: &str, marks: &BTreeMap<String, u64>) -> u64 {
        let Some(log) = self.clusters.get(cluster) else {
            return 0;
        };
        log.seen
            .iter()
            .map(|(k, seen)| match marks.get(k) {
                Some(m) => seen.range(m.saturating_add(1)..).count() as u64,
                None => seen.len() as u64,
            })
            .sum()
    }

    /// Number of acknowledged publishes.
    pub fn acknowledged(&self) -> u64 {
        self.acked.values().map(|s| s.len() as u64).sum()
    }

    /// Acknowledged events `cluster` has not received yet.
    pub fn missing(&self, cluster: &str) -> u64 {
        let empty = ClusterLog::default();
        let log = self.clusters.get(cluster).unwrap_or(&empty);
        self.acked
            .iter()
            .map(|(k, seqs)| match log.seen.get(k) {
                Some(seen) => seqs.iter().filter(|s| !seen.contains(s)).count() as u64,
                None => seqs.len() as u64,
            })
            .sum()
    }

    /// Whether `cluster` received the last `n` acknowledged events of `key` (false when
    /// the key has fewer than `n`).
    pub fn tail_delivered(&self, cluster: &str, key: &str, n: usize) -> bool {
        let Some(acked) = self.acked.get(key) else {
            return false;
        };
        let seen = self.clusters.get(cluster).and_then(|l| l.seen.get(key));
        acked.len() >= n
            && acked
                .iter()
                .rev()
                .take(n)
                .all(|s| seen.is_some_and(|seen| seen.contains(s)))
    }

    /// Whether every declared cluster has received at least one event of every key that
    /// has an acknowledged event (canaries flow from every origin to every cluster).
    pub fn flowing(&self) -> bool {
        !self.acked.is_empty()
            && self.clusters.values().all(|log| {
                self.acked
                    .keys()
                    .all(|k| log.seen.get(k).is_some_and(|s| !s.is_empty()))
            })
    }

    /// Whether every declared cluster received every acknowledged event.
    pub fn complete(&self) -> bool {
        self.clusters.keys().all(|c| self.missing(c) == 0)
    }

    /// Acknowledged events of keys other than `keys` that some declared cluster has not
    /// received yet, summed over the clusters (what is still in flight elsewhere).
    pub fn missing_outside(&self, keys: &[String]) -> u64 {
        let empty = BTreeSet::new();
        self.clusters
            .values()
            .map(|log| {
                self.acked
                    .iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .map(|(k, acked)| {
                        let seen = log.seen.get(k).unwrap_or(&empty);
                        acked.iter().filter(|s| !seen.contains(s)).count() as u64
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    /// Whether every declared cluster received every acknowledged event of `keys` (the
    /// other keys may still be in flight).
    pub fn complete_for(&self, keys: &[String]) -> bool {
        let empty = BTreeSet::new();
        self.clusters.values().all(|log| {
            keys.iter().all(|k| {
                let seen = log.seen.get(k).unwrap_or(&empty);
                self.acked
                    .get(k)
                    .is_none_or(|acked| acked.iter().all(|s| seen.contains(s)))
            })
        })
    }

    /// The counts as a report (timings and notes left empty for the caller to fill).
    pub fn report(&self, scenario: &str, mode: &str) -> Report {
        let mut clusters = BTreeMap::new();
        for (name, log) in &self.clusters {
            let mut delivered = 0u64;
            let mut unacknowledged = 0u64;
            for (k, seen) in &log.seen {
                let acked = self.acked.get(k);
                for s in seen {
                    if acked.is_some_and(|a| a.contains(s)) {
                        delivered += 1;
                    } else {
                        unacknowledged += 1;
                    }
                }
            }
            clusters.insert(
                name.clone(),
                ClusterReport {
                    delivered,
                    deliveries: log.deliveries,
                    lost: self.missing(name),
                    duplicated: log.duplicated,
                    reordered: log.reordered,
                    unacknowledged,
                },
            );
        }
        Report {
            scenario: scenario.to_string(),
            mode: mode.to_string(),
            acknowledged: self.acknowledged(),
            keys: self.acked.len() as u64,
            lost: clusters.values().map(|c| c.lost).sum(),
            duplicated: clusters.values().map(|c| c.duplicated).sum(),
            reordered: clusters.values().map(|c| c.reordered).sum(),
            clusters,
            detection_ms: None,
            recovery_ms: None,
            duration_ms: None,
            notes: Vec::new(),
            facts: BTreeMap::new(),
        }
    }
}

/// Sum over keys of the sequence numbers seen without a gap from 0: how many events of
/// each key have all arrived, counting from the first. `seqs` are (key, seq) pairs in
/// any order, repeats allowed.
pub fn contiguous_from_zero<'a>(seqs: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    let mut by_key: BTreeMap<&str, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for (key, seq) in seqs {
        by_key.entry(key).or_default().insert(seq);
    }
    by_key
        .values()
        .map(|s| {
            s.iter()
                .enumerate()
                .take_while(|(i, v)| *i as u64 == **v)
                .count() as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_once_in_order_is_ok() {
        let mut c = Checker::new();
        c.expect_cluster("a");
        c.expect_cluster("b");
        for s in 0..5 {
            c.acked("k", s);
            c.delivered("a", "k", s);
            c.delivered("b", "k", s);
        }
        assert!(c.complete());
        assert!(c.flowing());
        let r = c.report("x", "loopback");
        assert!(r.ok(), "{r}");
        assert_eq!(r.acknowledged, 5);
        assert_eq!(r.clusters["a"].delivered, 5);
        assert_eq!(r.duplicated, 0);
    }

    #[test]
    fn completeness_can_be_asked_for_some_keys_only() {
        let mut c = Checker::new();
        c.expect_cluster("a");
        c.expect_cluster("b");
        let x = vec!["x-k0".to_string(), "x-k1".to_string()];
        assert!(c.complete_for(&x), "nothing acknowledged, nothing missing");
        for s in 0..3 {
            c.acked("x-k0", s);
            c.delivered("a", "x-k0", s);
        }
        // Another cluster's canary is still in flight: it does not concern x's keys.
        c.acked("y-k0", 0);
        assert!(!c.complete_for(&x), "b lacks x-k0");
        for s in 0..3 {
            c.delivered("b", "x-k0", s);
        }
        assert!(c.complete_for(&x));
        assert!(!c.complete(), "y-k0 is still missing everywhere");
        assert_eq!(c.missing_outside(&x), 2, "y-k0 in a and in b");
        c.acked("x-k1", 0);
        assert!(!c.complete_for(&x));
    }

    #[test]
    fn missing_events_are_lost_per_cluster() {
        let mut c = Checker::new();
        c.expect_cluster("a");
        c.expect_cluster("b");
        for s in 0..4 {
            c.acked("k", s);
            c.delivered("a", "k", s);
        }
        assert!(!c.flowing(), "b has seen nothing yet");
        c.delivered("b", "k", 0);
        assert!(c.flowing());
        assert!(!c.complete());
        assert_eq!(c.missing("b"), 3);
        let r = c.report("x", "netns");
        assert_eq!(r.clusters["b"].lost, 3);
        assert_eq!(r.lost, 3);
        assert!(!r.ok());
        assert!(r.to_string().contains("FAILED"));
    }

    #[test]
    fn redelivery_is_a_duplicate_not_a_reorder() {
        let mut c = Checker::new();
        for s in 0..3 {
            c.acked("k", s);
        }
        for s in [0, 1, 2, 1, 2] {
            c.delivered("a", "k", s);
        }
        let r = c.report("x", "netns");
        assert_eq!(r.clusters["a"].duplicated, 2);
        assert_eq!(r.clusters["a"].reordered, 0);
        assert_eq!(r.clusters["a"].deliveries, 5);
        assert!(r.ok());
    }

    #[test]
    fn a_late_first_delivery_is_a_reorder_per_key() {
        let mut c = Checker::new();
        for s in 0..3 {
            c.acked("k", s);
            c.acked("j", s);
        }
        for s in [0, 2, 1] {
            c.delivered("a", "k", s);
        }
        // Interleaving across keys is not a reorder.
        for (k, s) in [("j", 0), ("k", 0), ("j", 1), ("j", 2)] {
            c.delivered("b", k, s);
        }
        let r = c.report("x", "netns");
        assert_eq!(r.clusters["a"].reordered, 1);
        assert_eq!(r.clusters["b"].reordered, 0);
        assert!(!r.ok());
    }

    #[test]
    fn unacknowledged_deliveries_are_counted_not_lost() {
        let mut c = Checker::new();
        c.acked("k", 0);
        c.delivered("a", "k", 0);
        c.delivered("a", "k", 1);
        let r = c.report("x", "netns");
        assert_eq!(r.clusters["a"].unacknowledged, 1);
        assert_eq!(r.clusters["a"].delivered, 1);
        assert!(r.ok());
    }

    #[test]
    fn deliveries_after_a_mark_count_only_later_events() {
        let mut c = Checker::new();
        for s in 0..3 {
            c.acked("k", s);
            c.delivered("a", "k", s);
        }
        let marks = c.highest_acked();
        assert_eq!(marks["k"], 2);
        assert_eq!(c.delivered_after("a", &marks), 0);
        for s in 3..5 {
            c.acked("k", s);
            c.delivered("a", "k", s);
        }
        c.acked("j", 0);
        c.delivered("a", "j", 0);
        c.delivered("a", "k", 4);
        assert_eq!(c.delivered_after("a", &marks), 3);
        assert_eq!(c.delivered_after("b", &marks), 0);
    }

    #[test]
    fn report_roundtrips_as_json() {
        let mut c = Checker::new();
        c.acked("k", 0);
        c.delivered("a", "k", 0);
        let mut r = c.report("partition", "netns");
        r.recovery_ms = Some(120);
        r.notes.push("hello".into());
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
        assert!(r.to_string().contains("recovery 120 ms"));
    }
}
