//! Scenario plumbing shared by the chaos tests: the profile (short for CI, soak by hand
//! with `MESHD_CHAOS_PROFILE=soak`), and a [`Workload`] that puts the canary topic,
//! a webhook sink and a subscription in every cluster of a [`Mesh`], runs publishers in
//! every cluster, and turns the checker into a [`Report`] with the recovery time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::canary::{self, Publishers, SharedChecker, Sink, TOPIC};
use crate::checker::{Checker, Report};
use crate::http;
use crate::mesh::Mesh;
use crate::ChaosError;

/// How long each phase of a scenario lasts.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `short` or `soak`.
    pub name: &'static str,
    /// Load before the fault.
    pub before: Duration,
    /// How long a fault (partition, loss) lasts.
    pub fault: Duration,
    /// Partition keys per publishing cluster.
    pub keys_per_cluster: usize,
    /// Pause between acknowledged events of one key.
    pub pace: Duration,
    /// Longest wait for every cluster to have every acknowledged event after the repair.
    pub recovery_timeout: Duration,
}

impl Profile {
    /// The short CI profile, or the soak profile when `MESHD_CHAOS_PROFILE=soak`.
    pub fn from_env() -> Profile {
        match std::env::var("MESHD_CHAOS_PROFILE").as_deref() {
            Ok("soak") => Profile {
                name: "soak",
                before: Duration::from_secs(10),
                fault: Duration::from_secs(30),
                keys_per_cluster: 8,
                pace: Duration::from_millis(10),
                recovery_timeout: Duration::from_secs(120),
            },
            _ => Profile {
                name: "short",
                before: Duration::from_secs(1),
                fault: Duration::from_secs(3),
                keys_per_cluster: 3,
                pace: Duration::from_millis(20),
                recovery_timeout: Duration::from_secs(45),
            },
        }
    }
}

/// The canary workload on a mesh.
pub struct Workload {
    /// What was acknowledged and delivered.
    pub checker: SharedChecker,
    /// This run's id.
    pub run: String,
    client: reqwest::Client,
    _sinks: Vec<Sink>,
    publishers: Vec<Publishers>,
    started: Instant,
}

impl Workload {
    /// Creates the canary topic, a sink and a subscription in every cluster, and waits
    /// until every cluster learned every other cluster's interest.
    pub async fn setup(mesh: &Mesh) -> Result<Workload, ChaosError> {
        let c = http::client()?;
        let run = canary::run_id();
        let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
        let names = mesh.cluster_names();
        let mut sinks = Vec::new();
        for name in &names {
            let node = mesh.node_url(name)?;
            http::put_topic(&c, &node, TOPIC, 2).await?;
            let sink = Sink::start(mesh.host_ip(), name, &run, checker.clone()).await?;
            http::subscribe(
                &c,
                &node,
                &json!({
                    "name": format!("canary-{name}"), "topic": TOPIC, "group": format!("canary-{name}"),
                    "mode": "CLUSTERING", "sink": {"webhook": {"url": sink.url}},
                }),
            )
            .await?;
            checker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expect_cluster(name);
            sinks.push(sink);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for name in &names {
            let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
            let node = mesh.node_url(name)?;
            while !http::knows_interest(&c, &node, &others, TOPIC)
                .await
                .unwrap_or(false)
            {
                if Instant::now() > deadline {
                    return Err(ChaosError::Timeout(format!(
                        "{name} learning the canary interest of {others:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(Workload {
            checker,
            run,
            client: c,
            _sinks: sinks,
            publishers: Vec::new(),
            started: Instant::now(),
        })
    }

    /// Starts publishers in every cluster (keys `CLUSTER-kN`), through its entry URLs.
    pub fn start_publishers(&mut self, mesh: &Mesh, profile: &Profile) {
        for name in mesh.cluster_names() {
            let keys = (0..profile.keys_per_cluster)
                .map(|k| format!("{name}-k{k}"))
                .collect();
            self.publishers.push(Publishers::start(
                self.client.clone(),
                mesh.entry_urls(&name),
                keys,
                &self.run,
                profile.pace,
                self.checker.clone(),
            ));
        }
    }

    /// Acknowledged publishes so far.
    pub fn acknowledged(&self) -> u64 {
        self.checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acknowledged()
    }

    /// Waits until at least `n` more publishes than now are acknowledged (load is flowing).
    pub async fn wait_progress(&self, n: u64, timeout: Duration) -> Result<(), ChaosError> {
        let target = self.acknowledged() + n;
        let deadline = Instant::now() + timeout;
        while self.acknowledged() < target {
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout(format!(
                    "{n} more acknowledged publishes"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops every publisher (publishes in flight finish or are abandoned).
    pub async fn stop_publishers(&mut self) {
        for p in &mut self.publishers {
            p.stop().await;
        }
    }

    /// Stops publishing, waits (up to the profile's timeout) until every cluster has every
    /// acknowledged event, and reports; `repaired` is when the fault was repaired.
    pub async fn finish(
        mut self,
        mesh: &Mesh,
        scenario: &str,
        profile: &Profile,
        repaired: Instant,
        detection: Option<Duration>,
    ) -> Report {
        self.stop_publishers().await;
        let done = canary::wait_complete(&self.checker, profile.recovery_timeout).await;
        let mut report = self
            .checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(scenario, mesh.mode.as_str());
        if done.is_some() {
            report.recovery_ms = Some(repaired.elapsed().as_millis() as u64);
        } else {
            report
                .notes
                .push(format!("not complete after {:?}", profile.recovery_timeout));
        }
        report.detection_ms = detection.map(|d| d.as_millis() as u64);
        report.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        let failures: u64 = self
            .publishers
            .iter()
            .map(|p| p.failures.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let gap = self
            .publishers
            .iter()
            .map(|p| p.longest_gap_ms.load(std::sync::atomic::Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        report.notes.push(format!(
            "profile {}; publish attempts retried {failures}; longest wait for one ack {gap} ms",
            profile.name
        ));
        report.notes.extend(mesh.notes.iter().cloned());
        report
    }
}

/// Waits until `a`'s `/v1/mesh` shows its link to `b` not connected; the time it took.
pub async fn wait_link_down(mesh: &Mesh, a: &str, b: &str, timeout: Duration) -> Option<Duration> {
    wait_link(mesh, a, b, timeout, |s| s != "connected").await
}

/// Waits until `a`'s link to `b` is connected again; the time it took.
pub async fn wait_link_up(mesh: &Mesh, a: &str, b: &str, timeout: Duration) -> Option<Duration> {
    wait_link(mesh, a, b, timeout, |s| s == "connected").await
}

async fn wait_link(
    mesh: &Mesh,
    a: &str,
    b: &str,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> Option<Duration> {
    let c = http::client().ok()?;
    let url = mesh.node_url(a).ok()?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(l) = http::link(&c, &url, b).await {
            if want(l.as_ref().map_or("", |l| l.state.as_str())) {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Parses an HTTP `Date` header (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) into Unix
/// seconds; None for anything else.
pub fn parse_http_date(v: &str) -> Option<i64> {
    let mut it = v.split_whitespace();
    let _weekday = it.next()?;
    let day: i64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Unix seconds of the real clock of the test process.
pub fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How far ahead of the test process's clock (seconds; negative: behind) the `Date` header
/// of `base/readyz` is: the wall clock the process serving `base` reads.
pub async fn date_skew(c: &reqwest::Client, base: &str) -> Result<i64, ChaosError> {
    let r = c
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_err(|e| ChaosError::Http(format!("GET {base}/readyz: {e}")))?;
    let now = real_now();
    let date = r
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .ok_or_else(|| ChaosError::Http(format!("{base}/readyz: no valid Date header")))?;
    Ok(date - now)
}

/// What a [`LinkWatch`] saw of one link (`a`'s view of its link to `b`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkSeen {
    /// Samples taken.
    pub samples: u64,
    /// Samples that found the link not connected.
    pub not_connected: u64,
    /// Largest `lag_seconds` reported.
    pub max_lag_seconds: f64,
    /// Smallest `lag_seconds` reported (negative would be nonsense).
    pub min_lag_seconds: f64,
    /// Largest `lag_events` reported.
    pub max_lag_events: u64,
}

/// Samples `/v1/mesh` of every cluster every 100 ms in the background and keeps, per link,
/// the extremes of its reported lag and how often it was not connected.
pub struct LinkWatch {
    seen: Arc<Mutex<std::collections::BTreeMap<String, LinkSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkWatch {
    /// Starts sampling every link of every cluster of `mesh`.
    pub fn start(mesh: &Mesh) -> Result<LinkWatch, ChaosError> {
        let c = http::client()?;
        let mut nodes = Vec::new();
        for name in mesh.cluster_names() {
            nodes.push((name.clone(), mesh.node_url(&name)?));
        }
        let seen: Arc<Mutex<std::collections::BTreeMap<String, LinkSeen>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                for (name, url) in &nodes {
                    let Ok(m) = http::mesh(&c, url).await else {
                        continue;
                    };
                    let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                    for l in &m.links {
                        let e = seen
                            .entry(format!("{name}->{}", l.peer))
                            .or_insert(LinkSeen {
                                min_lag_seconds: f64::MAX,
                                ..LinkSeen::default()
                            });
                        e.samples += 1;
                        if l.state != "connected" {
                            e.not_connected += 1;
                        }
                        e.max_lag_seconds = e.max_lag_seconds.max(l.lag_seconds);
                        e.min_lag_seconds = e.min_lag_seconds.min(l.lag_seconds);
                        e.max_lag_events = e.max_lag_events.max(l.lag_events);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(LinkWatch { seen, task })
    }

    /// What was seen so far, per link (`a->b`).
    pub fn seen(&self) -> std::collections::BTreeMap<String, LinkSeen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What was seen since the start or the last `take`, and starts over (phases).
    pub fn take(&self) -> std::collections::BTreeMap<String, LinkSeen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_to_unix_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Mon, 23 Nov 2026 19:24:41 GMT"),
            Some(1_795_461_881)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
