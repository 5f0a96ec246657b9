//! Trace questions across the mesh (`GET /v1/trace`): who a cluster asks, with how much
//! time, and how the answers become one per cluster. No I/O; the bridge sends the
//! [`Frame::TraceQuery`] frames and waits for the [`Frame::TraceReply`] frames.
//!
//! A question travels along links: the asking cluster asks its connected neighbours,
//! each of them answers for its own cluster and relays to its own connected neighbours
//! not asked yet (the query carries the clusters asked so far and a hop limit), and
//! gives each relay less time than it got, so the answers come back before the asker's
//! deadline. A cluster no answer covered is listed as not answered, with why.
//!
//! [`Frame::TraceQuery`]: meshd_core::wire::Frame::TraceQuery
//! [`Frame::TraceReply`]: meshd_core::wire::Frame::TraceReply

use std::collections::BTreeSet;
use std::time::Duration;

use meshd_core::api::{TraceClusterAnswer, TraceRecord};
use meshd_core::wire::TraceClusterReply;
use meshd_node::server::ClusterTrace;

/// Most relays a question makes (longer lines are not reached).
pub const MAX_HOPS: u32 = 8;

/// Who to ask: the connected neighbours not asked yet; the neighbours not asked yet whose
/// link is down (listed as not answered); and the `asked` set the questions carry
/// (everyone asked so far, this cluster and the neighbours asked now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Neighbours to send the question to.
    pub ask: Vec<String>,
    /// Neighbours not asked because their link is down.
    pub down: Vec<String>,
    /// What the questions carry as `asked`.
    pub asked: Vec<String>,
}

/// Plans a question from `me` given its neighbours (by link) and which are connected.
pub fn plan(me: &str, neighbours: &[String], connected: &[String], asked: &[String]) -> Plan {
    let asked_before: BTreeSet<&str> = asked.iter().map(String::as_str).collect();
    let mut ask = Vec::new();
    let mut down = Vec::new();
    for n in neighbours {
        if n == me || asked_before.contains(n.as_str()) {
            continue;
        }
        if connected.contains(n) {
            ask.push(n.clone());
        } else {
            down.push(n.clone());
        }
    }
    let mut next: BTreeSet<String> = asked.iter().cloned().collect();
    next.insert(me.to_string());
    next.extend(ask.iter().cloned());
    Plan {
        ask,
        down,
        asked: next.into_iter().collect(),
    }
}

/// The time a relayed question gets out of `t`: four fifths, so the answer still travels
/// back in time (at least 20 ms).
pub fn relay_timeout(t: Duration) -> Duration {
    t.mul_f64(0.8).max(Duration::from_millis(20))
}

/// A reply entry for a cluster that did not answer.
pub fn not_answered(cluster: &str, why: String) -> TraceClusterReply {
    TraceClusterReply {
        cluster: cluster.to_string(),
        answered: false,
        error: Some(why),
        records_json: "[]".into(),
    }
}

/// Most records one cluster puts in a reply (a reply must fit in one frame; an id
/// reused by very many events could otherwise exceed it).
pub const MAX_REPLY_RECORDS: usize = 10_000;

/// A reply entry for a cluster's own records (the first [`MAX_REPLY_RECORDS`], saying so
/// in `error` when there were more).
pub fn answered(cluster: &str, records: &[TraceRecord], errors: &[String]) -> TraceClusterReply {
    let mut errors = errors.to_vec();
    let sent = &records[..records.len().min(MAX_REPLY_RECORDS)];
    if sent.len() < records.len() {
        errors.push(format!(
            "{} records, only the first {MAX_REPLY_RECORDS} sent",
            records.len()
        ));
    }
    TraceClusterReply {
        cluster: cluster.to_string(),
        answered: true,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        records_json: serde_json::to_string(sent).expect("trace records serialize"),
    }
}

/// One entry per cluster of the mesh other than `me`, in `clusters` order: the first
/// answer of each (a cluster reached on two paths answers twice), a cluster that sent
/// unreadable records listed as not answered, and a cluster no reply covers listed as
/// not answered (not reached within `timeout`).
pub fn complete(
    me: &str,
    clusters: &[String],
    replies: Vec<TraceClusterReply>,
    timeout: Duration,
) -> Vec<ClusterTrace> {
    let mut out: Vec<ClusterTrace> = Vec::new();
    for c in clusters.iter().filter(|c| c.as_str() != me) {
        let mut best: Option<&TraceClusterReply> = None;
        for r in replies.iter().filter(|r| &r.cluster == c) {
            if best.is_none_or(|b| !b.answered && r.answered) {
                best = Some(r);
            }
        }
        let entry = match best {
            Some(r) if r.answered => match serde_json::from_str::<Vec<TraceRecord>>(&r.records_json)
            {
                Ok(records) => ClusterTrace {
                    answer: TraceClusterAnswer {
                        cluster: c.clone(),
                        answered: true,
                        records: records.len() as u64,
                        error: r.error.clone(),
                    },
                    records,
                },
                Err(e) => failed(c, format!("its answer was unreadable: {e}")),
            },
            Some(r) => failed(
                c,
                r.error.clone().unwrap_or_else(|| "no answer".to_string()),
            ),
            None => failed(
                c,
                format!(
                    "not reached within {} ms (no connected path, or a cluster on the way did not answer)",
                    timeout.as_millis()
                ),
            ),
        };
        out.push(entry);
    }
    out
}

fn failed(cluster: &str, why: String) -> ClusterTrace {
    ClusterTrace {
        answer: TraceClusterAnswer {
            cluster: cluster.to_string(),
            answered: false,
            records: 0,
            error: Some(why),
        },
        records: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_core::api::TraceKind;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_question_goes_to_connected_neighbours_not_asked_yet() {
        // b in a line a-b-c, asked by a.
        let p = plan("b", &s(&["a", "c"]), &s(&["a", "c"]), &s(&["a", "b"]));
        assert_eq!(p.ask, s(&["c"]));
        assert!(p.down.is_empty());
        assert_eq!(p.asked, s(&["a", "b", "c"]));
        // a in a triangle whose link to c is down: b may still relay to c.
        let p = plan("a", &s(&["b", "c"]), &s(&["b"]), &[]);
        assert_eq!(p.ask, s(&["b"]));
        assert_eq!(p.down, s(&["c"]));
        assert_eq!(p.asked, s(&["a", "b"]));
    }

    #[test]
    fn every_cluster_is_listed_once_and_the_missing_ones_say_why() {
        let rec = TraceRecord {
            cluster: "b".into(),
            node: "n".into(),
            at_ms: 1,
            kind: TraceKind::Matched {
                subscription: "s".into(),
            },
        };
        let replies = vec![
            not_answered("c", "no answer within 1600 ms".into()),
            answered("b", std::slice::from_ref(&rec), &[]),
            answered("b", &[], &[]),
            TraceClusterReply {
                cluster: "e".into(),
                answered: true,
                error: None,
                records_json: "nonsense".into(),
            },
        ];
        let all = s(&["a", "b", "c", "d", "e"]);
        let got = complete("a", &all, replies, Duration::from_secs(2));
        let names: Vec<&str> = got.iter().map(|c| c.answer.cluster.as_str()).collect();
        assert_eq!(names, ["b", "c", "d", "e"]);
        assert!(got[0].answer.answered);
        assert_eq!(got[0].records, vec![rec]);
        assert_eq!(got[0].answer.records, 1);
        assert!(!got[1].answer.answered);
        assert_eq!(
            got[1].answer.error.as_deref(),
            Some("no answer within 1600 ms")
        );
        assert!(!got[2].answer.answered);
        assert!(got[2]
            .answer
            .error
            .as_deref()
            .unwrap()
            .contains("not reached within 2000 ms"));
        assert!(!got[3].answer.answered);
        assert!(got[3]
            .answer
            .error
            .as_deref()
            .unwrap()
            .contains("unreadable"));
    }

    #[test]
    fn a_reply_carries_at_most_the_cap() {
        let rec = TraceRecord {
            cluster: "b".into(),
            node: "n".into(),
            at_ms: 1,
            kind: TraceKind::Matched {
                subscription: "s".into(),
            },
        };
        let many = vec![rec; MAX_REPLY_RECORDS + 5];
        let r = answered("b", &many, &[]);
        let back: Vec<TraceRecord> = serde_json::from_str(&r.records_json).unwrap();
        assert_eq!(back.len(), MAX_REPLY_RECORDS);
        assert!(r.error.unwrap().contains("10005 records"));
    }

    #[test]
    fn relays_get_less_time() {
        assert_eq!(
            relay_timeout(Duration::from_secs(2)),
            Duration::from_millis(1600)
        );
        assert_eq!(
            relay_timeout(Duration::from_millis(1)),
            Duration::from_millis(20)
        );
    }
}
