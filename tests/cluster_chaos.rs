//! Control-plane chaos on a real cluster (loopback): etcd (harness), three schedulers,
//! two nodes on one pulsar-lite broker, two proxies, with the canary workload of meshd-chaos (publishers with
//! sequence numbers per key through both proxies, a CLUSTERING pull subscriber through a
//! proxy). Scenarios, one after the other on one cluster (each a few seconds in the short
//! profile; `MESHD_CHAOS_PROFILE=soak` holds each fault longer):
//! 1. kill -9 the scheduler leader under load: another member leads a newer term and
//!    still places groups (a subscription created after the kill is placed); canary
//!    lost 0, reordered 0;
//! 2. etcd unreachable (SIGSTOP) under load: publishes keep being acknowledged during the
//!    freeze, both nodes are registered again after it; canary lost 0, reordered 0;
//! 3. kill -9 one proxy of two under load: publishers switch to the other; lost 0.
//!
//! Every process is killed by its guard, also on panic.

mod cluster_support;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::*;
use common::client;
use meshd_chaos::canary::{self, Publishers, PullRecorder, SharedChecker};
use meshd_chaos::scenario::Profile;
use meshd_chaos::{Checker, Report};
use meshd_scheduler::registry::Role;

struct Load {
    sub: String,
    checker: SharedChecker,
    publishers: Publishers,
    recorder: PullRecorder,
    started: Instant,
}

async fn load(c: &reqwest::Client, publish: Vec<String>, pull: &str, sub: &str) -> Load {
    let profile = Profile::from_env();
    canary_subscription(c, pull, sub).await;
    let keys =
        meshd_chaos::cluster_drill::canary_keys(c, profile.keys_per_cluster, &publish, pull, sub)
            .await
            .expect("canary keys");
    let run = canary::run_id();
    let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
    checker.lock().unwrap().expect_cluster(CLUSTER);
    let recorder = PullRecorder::start(c.clone(), pull, sub, CLUSTER, &run, checker.clone());
    let publishers = Publishers::start(
        c.clone(),
        publish,
        keys,
        &run,
        profile.pace,
        checker.clone(),
    );
    let l = Load {
        sub: sub.to_string(),
        checker,
        publishers,
        recorder,
        started: Instant::now(),
    };
    assert!(
        until(Duration::from_secs(20), || async { l.acked() >= 20 }).await,
        "canaries flow before the fault"
    );
    l
}

impl Load {
    fn acked(&self) -> u64 {
        self.checker.lock().unwrap().acknowledged()
    }

    /// Stops publishing and waits for every acknowledged canary (the nodes share one
    /// store, so whichever node acknowledged a canary, the group's owner delivers it).
    async fn finish(
        mut self,
        cl: &Cluster,
        c: &reqwest::Client,
        name: &str,
        fault_at: Instant,
    ) -> Report {
        self.publishers.stop().await;
        let done = canary::wait_complete(&self.checker, Profile::from_env().recovery_timeout).await;
        self.recorder.stop().await;
        delete_subscription(cl, c, &self.sub).await;
        let mut r = self.checker.lock().unwrap().report(name, "loopback");
        r.recovery_ms = done.map(|_| fault_at.elapsed().as_millis() as u64);
        r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        r.facts.insert(
            "longest_publish_wait_ms".into(),
            self.publishers
                .longest_gap_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                .into(),
        );
        r.facts.insert(
            "acked_by".into(),
            format!(
                "{:?}",
                self.publishers
                    .acked_by
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0))
                    .collect::<Vec<_>>()
            )
            .into(),
        );
        r.facts.insert(
            "delivered_by".into(),
            format!(
                "{:?}",
                self.recorder
                    .served_by
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0))
                    .collect::<Vec<_>>()
            )
            .into(),
        );
        eprintln!("{name}: {}", serde_json::to_string(&r).unwrap_or_default());
        assert!(done.is_some(), "every acknowledged canary delivered: {r}");
        assert_eq!(r.lost, 0, "{r}");
        assert_eq!(r.reordered, 0, "{r}");
        assert!(r.acknowledged >= 20, "{r}");
        r
    }
}

/// Deletes a subscription through a live proxy (a pull subscription nobody pulls would
/// hold up a later drain's backlog wait).
async fn delete_subscription(cl: &Cluster, c: &reqwest::Client, name: &str) {
    for p in &cl.proxies {
        if let Ok(r) = c
            .delete(format!("{}/v1/subscriptions/{name}", p.url))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
    }
    panic!("could not delete subscription {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_leader_kill_etcd_freeze_and_proxy_kill_under_load() {
    let mut cl = Cluster::start().await;
    let c = client();
    let profile = Profile::from_env();
    let proxies: Vec<String> = cl.proxies.iter().map(|p| p.url.clone()).collect();

    // 1. kill -9 the scheduler leader.
    let l = load(&c, proxies.clone(), &proxies[1], "chaos-sched").await;
    tokio::time::sleep(profile.before).await;
    let (leader, term) = cl.leader(&c, &cl.scheduler_urls).await.expect("leader");
    let idx = usize::try_from(leader - 1).expect("index");
    let _ = cl.schedulers[idx].0.kill();
    let _ = cl.schedulers[idx].0.wait();
    let killed = Instant::now();
    let rest: Vec<String> = cl
        .scheduler_urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, u)| u.clone())
        .collect();
    assert!(
        until(Duration::from_secs(15), || async {
            matches!(cl.leader(&c, &rest).await, Some((l, t)) if l != leader && t > term)
        })
        .await,
        "a new scheduler leader"
    );
    let elected = killed.elapsed();
    // The new leader still places: a group created now gets a node.
    canary_subscription(&c, &proxies[0], "after-leader-kill").await;
    assert!(
        until(Duration::from_secs(15), || async {
            cl.owner(&c, "after-leader-kill").await.is_some()
        })
        .await,
        "a group created after the kill is placed by the new leader"
    );
    let placed = killed.elapsed();
    delete_subscription(&cl, &c, "after-leader-kill").await;
    tokio::time::sleep(profile.fault).await;
    let mut r = l.finish(&cl, &c, "kill9-scheduler-leader", killed).await;
    r.detection_ms = Some(elected.as_millis() as u64);
    eprintln!(
        "kill9-scheduler-leader: new leader after {elected:?}, new group placed after {placed:?}"
    );

    // 2. etcd unreachable (SIGSTOP) under load.
    let l = load(&c, proxies.clone(), &proxies[1], "chaos-etcd").await;
    tokio::time::sleep(profile.before).await;
    let before = l.acked();
    cl.etcd.pause().expect("SIGSTOP etcd");
    let frozen = Instant::now();
    let freeze = profile.fault.max(Duration::from_secs(3));
    tokio::time::sleep(freeze).await;
    let during = l.acked() - before;
    cl.etcd.resume().expect("SIGCONT etcd");
    assert!(
        during >= 10,
        "publishes kept being acknowledged while etcd was frozen ({during})"
    );
    assert!(
        until(Duration::from_secs(20), || async {
            let m = members(&cl.reg, Role::Node).await;
            m.contains(&"a".to_string()) && m.contains(&"b".to_string())
        })
        .await,
        "both nodes registered after the freeze"
    );
    let back = frozen.elapsed();
    let r = l.finish(&cl, &c, "etcd-sigstop", frozen).await;
    eprintln!(
        "etcd-sigstop: frozen {freeze:?}, {during} acks during it, registered again {back:?} after the freeze began; recovery {:?} ms",
        r.recovery_ms
    );

    // 3. kill -9 one of two proxies.
    let l = load(&c, proxies.clone(), &proxies[1], "chaos-proxy").await;
    tokio::time::sleep(profile.before).await;
    cl.proxies[0].kill9();
    let killed = Instant::now();
    tokio::time::sleep(profile.fault).await;
    let acked_after = l.acked();
    assert!(
        acked_after > 20,
        "publishes continue through the other proxy"
    );
    l.finish(&cl, &c, "kill9-proxy", killed).await;
}
