//! Crash recovery: `kill -9` the node during a publish storm, restart it on the same data
//! dir: every acknowledged event (counted here, outside the node) is in the log exactly
//! once, and the webhook subscription delivers every one of them (at least once). Run
//! with fsync=always and with fsync=interval (whose acknowledged events reached the
//! kernel through the store's write-ahead tail, so a process kill loses none of them).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_publish_storm_loses_nothing_acknowledged() {
    kill9_during_publish_storm(&["--fsync", "always"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_with_fsync_interval_loses_nothing_acknowledged() {
    // A long interval: without the write-ahead tail every event acknowledged since the
    // node started would be lost, so the test fails loudly if the tail does not work.
    kill9_during_publish_storm(&["--fsync", "interval", "--fsync-interval-ms", "60000"]).await;
}

async fn kill9_during_publish_storm(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Meshd::start(dir.path(), args);
    let c = client();
    let sink = Sink::start(|_, _| 200).await;
    create_topic(&c, &m.url, "storm", json!({"partitions": 4})).await;
    let r = c
        .post(m.at("/v1/subscriptions"))
        .json(
            &json!({"name": "hook", "topic": "storm", "sink": {"webhook": {"url": sink.url}},
                      "delivery": {"max_in_flight": 32}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (c, url, acked, stop) = (
            c.clone(),
            m.at("/v1/topics/storm/events"),
            acked.clone(),
            stop.clone(),
        );
        publishers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Mix single events and small batches.
                let n = if i % 5 == 0 { 10 } else { 1 };
                let events: Vec<Value> = (0..n)
                    .map(|j| {
                        event(
                            &format!("p{p}-{i}-{j}"),
                            "storm",
                            Some(&format!("k{p}")),
                            json!({"p": p, "i": i}),
                        )
                    })
                    .collect();
                let (ct, body) = if n == 1 {
                    ("application/cloudevents+json", events[0].to_string())
                } else {
                    (
                        "application/cloudevents-batch+json",
                        json!(events).to_string(),
                    )
                };
                match c
                    .post(&url)
                    .header("content-type", ct)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let mut a = acked.lock().unwrap();
                        a.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
                    }
                    Ok(r) => panic!("publish answered {}", r.status()),
                    Err(_) => return, // the node died under us
                }
                i += 1;
            }
        }));
    }
    eventually(
        "2000 events acknowledged",
        Duration::from_secs(60),
        || async { (acked.lock().unwrap().len() >= 2000).then_some(()) },
    )
    .await;
    m.kill9();
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    eprintln!("acknowledged before kill -9: {}", acked.len());

    let m2 = Meshd::start(dir.path(), args);
    // Read the whole log back through a pull subscription from the earliest offset.
    let r = c
        .post(m2.at("/v1/subscriptions"))
        .json(
            &json!({"name": "audit", "topic": "storm", "sink": {"pull": {}}, "start": "earliest"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let stored_total = stored_count(&c, &m2.url, "storm").await;
    let mut in_log: HashMap<String, u32> = HashMap::new();
    let mut read = 0u64;
    while read < stored_total {
        let evs = pull(&c, &m2.url, "audit", "default", 1000, 1000).await;
        assert!(
            !evs.is_empty(),
            "the log ended early: read {read} of {stored_total}"
        );
        for e in &evs {
            *in_log.entry(id_of(e)).or_default() += 1;
        }
        read += evs.len() as u64;
        ack(&c, &m2.url, "audit", "default", &evs).await;
    }
    for id in &acked {
        assert_eq!(
            in_log.get(id),
            Some(&1),
            "acknowledged event {id} must be in the log exactly once"
        );
    }
    assert!(in_log.values().all(|n| *n == 1), "no event stored twice");
    eprintln!(
        "stored: {stored_total} (acknowledged {}, stored but unacknowledged {})",
        acked.len(),
        stored_total as usize - acked.len()
    );

    // The webhook subscription resumes from its committed offset and delivers every
    // acknowledged event at least once.
    let delivered = eventually(
        "every acknowledged event delivered",
        Duration::from_secs(120),
        || async {
            let mut counts: HashMap<String, u32> = HashMap::new();
            for id in sink.ids() {
                *counts.entry(id).or_default() += 1;
            }
            acked
                .iter()
                .all(|id| counts.contains_key(id))
                .then_some(counts)
        },
    )
    .await;
    let dups: u32 = delivered.values().map(|n| n - 1).sum();
    eprintln!(
        "delivered {} distinct events, {dups} duplicates after the crash",
        delivered.len()
    );
}
