//! The `consumer-failover` drill: a subscription of the home cluster H with a standby S
//! loses its home to a real crash (the operator's kill command, e.g. `kill -9` of H's
//! node; not a drain), and the drill measures what its consumers see when S takes it over.
//!
//! 1. Makes topic `meshd-drill-cf` in H (the mesh catalog makes it in S) and, in H, a pull
//!    subscription of the same name with `standby: [S]`; in S a second pull subscription
//!    (`meshd-drill-cf-keep`) so that S stores H's events (its copy is what it delivers
//!    from after a takeover).
//! 2. Publishes canaries (keys `k0..`, sequence numbers per key) to H while the drill's
//!    consumer pulls and acknowledges them from H.
//! 3. Half-way, runs the kill command; from then on, publishes to S.
//! 4. Takeover: with `--takeover manual`, asks S (`POST /v1/mesh/failover`, retried while
//!    S answers `not_caught_up`); with `auto`, waits for S (run with `--failover-after`).
//! 5. Consumes from S until every acknowledged canary arrived or the recovery timeout.
//!
//! Reported (one "cluster", the application): lost, duplicated, reordered, and
//! `takeover_ms` (kill → S accepting pulls for the subscription) and `recovery_ms` (kill →
//! every acknowledged canary delivered). The drill deletes the subscriptions it made in S
//! at the end; H is down (restart it yourself; it stays fenced until taken back).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::checker::{Checker, Report};
use crate::{http, ChaosError};

/// The drill's topic and subscription.
pub const NAME: &str = "meshd-drill-cf";

/// How the standby takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeoverMode {
    /// The drill asks the standby (`POST /v1/mesh/failover`).
    Manual,
    /// The standby does it by itself (`meshd node --failover-after`).
    Auto,
}

/// Settings of `consumer-failover`.
#[derive(Debug, Clone)]
pub struct ConsumerFailoverOptions {
    /// The home cluster's name and node URL.
    pub home: (String, String),
    /// The standby cluster's name and node URL.
    pub standby: (String, String),
    /// Shell command that kills the home's node (run with `sh -c`).
    pub kill: String,
    /// Canaries in all.
    pub events: u64,
    /// Partition keys.
    pub keys: u64,
    /// Partitions of the drill's topic.
    pub partitions: u32,
    /// Canaries per second.
    pub rate: u64,
    /// How the standby takes over.
    pub takeover: TakeoverMode,
    /// Longest wait for the takeover and for every canary after the kill.
    pub recovery_timeout: Duration,
}

struct Run {
    c: reqwest::Client,
    checker: Checker,
    run: String,
    next_seq: Vec<u64>,
    published: u64,
}

fn canary(run: &str, key: u64, seq: u64) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{run}-k{key}-{seq}"),
        "source": "/meshd/drill/consumer-failover",
        "type": "meshd.drill.canary",
        "partitionkey": format!("k{key}"),
        "datacontenttype": "application/json",
        "data": {"key": format!("k{key}"), "seq": seq},
    })
}

impl Run {
    /// Publishes one canary to `base`; true when acknowledged.
    async fn publish(&mut self, base: &str) -> bool {
        let key = self.published % self.next_seq.len() as u64;
        let seq = self.next_seq[key as usize];
        let event = canary(&self.run, key, seq);
        let r = self
            .c
            .post(format!("{base}/v1/topics/{NAME}/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        self.next_seq[key as usize] += 1;
        self.published += 1;
        match r {
            Ok(r) if r.status().is_success() => {
                self.checker.acked(&format!("k{key}"), seq);
                true
            }
            _ => false,
        }
    }

    /// Pulls and acknowledges what `base` has for the drill's subscription; `None` when
    /// the subscription does not answer there (not taken over yet, or the node is down).
    async fn consume(&mut self, base: &str, wait_ms: u64) -> Option<usize> {
        let url = format!(
            "{base}/v1/subscriptions/{NAME}/events?max=500&wait={wait_ms}ms&consumer=drill"
        );
        let r = self
            .c
            .get(&url)
            .timeout(Duration::from_millis(wait_ms + 2_000))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        let events = v["events"].as_array()?.clone();
        let mut ack_ids = Vec::new();
        for e in &events {
            let data = &e["event"]["data"];
            if let (Some(k), Some(s)) = (data["key"].as_str(), data["seq"].as_u64()) {
                self.checker.delivered("application", k, s);
            }
            if let Some(id) = e["ack_id"].as_str() {
                ack_ids.push(id.to_string());
            }
        }
        if !ack_ids.is_empty() {
            let _ = self
                .c
                .post(format!("{base}/v1/subscriptions/{NAME}/ack"))
                .json(&json!({"ack_ids": ack_ids, "consumer": "drill"}))
                .send()
                .await;
        }
        Some(events.len())
    }
}

/// Runs the drill.
pub async fn consumer_failover(opts: &ConsumerFailoverOptions) -> Result<Report, ChaosError> {
    let c = http::client()?;
    let (home, home_url) = (&opts.home.0, opts.home.1.trim_end_matches('/'));
    let (standby, standby_url) = (&opts.standby.0, opts.standby.1.trim_end_matches('/'));
    let started = Instant::now();
    // Setup.
    http::put_topic(&c, home_url, NAME, opts.partitions).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = http::send_json(
            &c,
            reqwest::Method::GET,
            &format!("{standby_url}/v1/topics/{NAME}"),
            None,
        )
        .await?;
        if status == 200 {
            break;
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout(format!(
                "topic {NAME} made in {home} to reach {standby} through the mesh catalog"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    http::subscribe(
        &c,
        home_url,
        &json!({"name": NAME, "topic": NAME, "start": "latest",
                "sink": {"pull": {"ack_deadline_ms": 5000}}, "standby": [standby]}),
    )
    .await?;
    let keep = format!("{NAME}-keep");
    http::subscribe(
        &c,
        standby_url,
        &json!({"name": keep, "topic": NAME, "start": "latest", "sink": {"pull": {}}}),
    )
    .await?;
    let mut run = Run {
        c: c.clone(),
        checker: Checker::new(),
        run: format!(
            "{:x}",
            started.elapsed().as_nanos() ^ u128::from(std::process::id())
        ),
        next_seq: vec![0; opts.keys.max(1) as usize],
        published: 0,
    };
    run.checker.expect_cluster("application");
    let gap = Duration::from_micros(1_000_000 / opts.rate.max(1));
    // Before the crash: publish to and consume from the home.
    let half = opts.events / 2;
    while run.published < half {
        run.publish(home_url).await;
        if run.published % 50 == 0 {
            run.consume(home_url, 0).await;
        }
        tokio::time::sleep(gap).await;
    }
    run.consume(home_url, 200).await;
    // The crash.
    let killed = Instant::now();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&opts.kill)
        .status()
        .await
        .map_err(|e| ChaosError::Io(format!("running the kill command {:?}: {e}", opts.kill)))?;
    if !status.success() {
        return Err(ChaosError::Io(format!(
            "the kill command {:?} failed: {status}",
            opts.kill
        )));
    }
    // After it: publishers move to the standby; the consumer waits for the takeover.
    let mut takeover_ms = None;
    let mut notes = Vec::new();
    let limit = killed + opts.recovery_timeout;
    let mut asked = false;
    loop {
        if run.published < opts.events {
            run.publish(standby_url).await;
        }
        if takeover_ms.is_none() && opts.takeover == TakeoverMode::Manual && !asked {
            let (status, body) = http::send_json(
                &c,
                reqwest::Method::POST,
                &format!("{standby_url}/v1/mesh/failover"),
                Some(&json!({"subscription": NAME, "home": home})),
            )
            .await?;
            match status {
                200 => {
                    asked = true;
                    notes.push(format!("takeover: {body}"));
                }
                409 if body["error"]["code"] == "not_caught_up" => {}
                _ => {
                    return Err(ChaosError::Http(format!(
                        "POST {standby_url}/v1/mesh/failover: {status} {body}"
                    )))
                }
            }
        }
        if run.consume(standby_url, 0).await.is_some() && takeover_ms.is_none() {
            takeover_ms = Some(killed.elapsed().as_millis() as u64);
        }
        let done = run.published >= opts.events && run.checker.missing("application") == 0;
        if done || Instant::now() > limit {
            break;
        }
        tokio::time::sleep(if run.published < opts.events {
            gap
        } else {
            Duration::from_millis(50)
        })
        .await;
    }
    let recovered = run.checker.missing("application") == 0;
    let mut report = run.checker.report("consumer-failover", "mesh");
    report.detection_ms = takeover_ms;
    report.recovery_ms = recovered.then(|| killed.elapsed().as_millis() as u64);
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    report.facts.insert("home".into(), json!(home));
    report.facts.insert("standby".into(), json!(standby));
    report
        .facts
        .insert("takeover_ms".into(), json!(takeover_ms));
    report.facts.insert(
        "takeover".into(),
        json!(match opts.takeover {
            TakeoverMode::Manual => "manual",
            TakeoverMode::Auto => "auto",
        }),
    );
    report.notes.extend(notes);
    report.notes.push(format!(
        "{home} was killed by {:?}; restart it yourself: it stays fenced (not delivering {NAME}) until `meshd mesh failover {NAME} --home {home}` at {home} takes it back",
        opts.kill
    ));
    // The keeper is the drill's; the taken-over subscription stays (delete it, or take it
    // back to the home, as you would after a real failover).
    let _ = http::unsubscribe(&c, standby_url, &keep).await;
    Ok(report)
}
