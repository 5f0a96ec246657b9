//! Chaos scenarios against real `meshd` processes, each cluster in its own network
//! namespace when run as root (else on loopback, said in the report): canary load with
//! sequence numbers per key, a fault, the repair, and the checker's verdict — nothing
//! acknowledged lost, nothing reordered per key, duplicates counted. Short profile by
//! default (CI); `MESHD_CHAOS_PROFILE=soak` for 30 s faults.
//!
//! Scenarios run one at a time (a lock): each builds its own mesh, and timings on a small
//! shared machine mean more alone.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use meshd_chaos::scenario::{
    date_skew, real_now, wait_link_down, wait_link_up, LinkSeen, LinkWatch, Profile, Workload,
};
use meshd_chaos::{Mesh, MeshOptions, Report};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds the mesh, or returns None (test skipped, with the reason printed) when even
/// loopback cannot work (no meshd binary).
async fn mesh(opts: MeshOptions) -> Option<Mesh> {
    match Mesh::start(opts).await {
        Ok(m) => {
            eprintln!(
                "mesh up in {} mode at {}",
                m.mode.as_str(),
                m.dir().display()
            );
            Some(m)
        }
        Err(meshd_chaos::ChaosError::NoBinary(p)) => {
            eprintln!(
                "SKIPPED: no meshd binary at {} (cargo build --bin meshd)",
                p.display()
            );
            None
        }
        Err(e) => panic!("building the mesh: {e}"),
    }
}

/// The canary workload set up, its publishers started and the first events acknowledged.
async fn under_load(mesh: &Mesh, profile: &Profile) -> Workload {
    let mut w = Workload::setup(mesh).await.expect("workload");
    w.start_publishers(mesh, profile);
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("load");
    w
}

fn verdict(report: &Report) {
    println!("{report}");
    println!("{}", report.to_json());
    assert_eq!(report.lost, 0, "acknowledged events lost:\n{report}");
    assert_eq!(report.reordered, 0, "events reordered per key:\n{report}");
    assert!(report.recovery_ms.is_some(), "did not recover:\n{report}");
    assert!(report.acknowledged > 0, "no load:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_link_and_heal() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let Some(mesh) = mesh(MeshOptions::line(&["a", "b"])).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    tokio::time::sleep(profile.before).await;
    // The emulated WAN is in the path: 10 ms ± 2 ms each way.
    let c = meshd_chaos::http::client().unwrap();
    let rtt = meshd_chaos::http::link(&c, &mesh.node_url("a").unwrap(), "b")
        .await
        .unwrap()
        .and_then(|l| l.rtt_ms)
        .unwrap_or(0.0);
    assert!(
        rtt >= 18.0,
        "QUIC RTT {rtt} ms: the link emulator is not in the path"
    );

    mesh.partition("a", "b").expect("partition");
    let detection = wait_link_down(&mesh, "a", "b", Duration::from_secs(20)).await;
    assert!(
        detection.is_some(),
        "the bridge never noticed the partition"
    );
    // Load keeps flowing inside each cluster during the partition.
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("load during partition");
    tokio::time::sleep(profile.fault.saturating_sub(detection.unwrap_or_default())).await;

    mesh.heal("a", "b").expect("heal");
    let repaired = Instant::now();
    wait_link_up(&mesh, "a", "b", Duration::from_secs(20))
        .await
        .expect("link back up");
    let mut report = w
        .finish(&mesh, "partition-link", &profile, repaired, detection)
        .await;
    report
        .notes
        .push(format!("QUIC RTT before the fault {rtt:.1} ms"));
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_percent_loss_on_a_link() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let Some(mesh) = mesh(MeshOptions::line(&["a", "b"])).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    mesh.loss("a", "b", 5).expect("loss");
    tokio::time::sleep(profile.before + profile.fault).await;
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("load under loss");
    mesh.heal("a", "b").expect("heal");
    let repaired = Instant::now();
    let report = w.finish(&mesh, "loss-5pct", &profile, repaired, None).await;
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_runtime_node_and_restart() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let Some(mut mesh) = mesh(MeshOptions::line(&["a", "b"])).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    tokio::time::sleep(profile.before).await;

    // b is a single-node cluster today: kill -9 takes the whole cluster down.
    mesh.kill_node("b").expect("kill");
    let detection = wait_link_down(&mesh, "a", "b", Duration::from_secs(20)).await;
    assert!(detection.is_some(), "a never noticed b's death");
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("a keeps taking load");
    tokio::time::sleep(profile.fault.saturating_sub(detection.unwrap_or_default())).await;
    mesh.start_node("b").await.expect("restart b");
    let repaired = Instant::now();
    let report = w
        .finish(&mesh, "kill9-node", &profile, repaired, detection)
        .await;
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_whole_middle_cluster_of_a_line() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b", "c"]);
    opts.proxies = 1;
    let Some(mut mesh) = mesh(opts).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    tokio::time::sleep(profile.before).await;

    // b relays between a and c: a and c are cut from each other while it is down.
    assert!(
        mesh.terminate_proxy("b", 0).expect("proxy"),
        "proxy exits cleanly"
    );
    assert!(
        mesh.terminate_node("b").expect("node"),
        "node exits cleanly"
    );
    let detection = wait_link_down(&mesh, "a", "b", Duration::from_secs(20)).await;
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("a and c keep taking load");
    tokio::time::sleep(profile.fault).await;
    mesh.start_node("b").await.expect("restart node");
    mesh.start_proxy("b", 0).await.expect("restart proxy");
    let repaired = Instant::now();
    let report = w
        .finish(&mesh, "restart-cluster", &profile, repaired, detection)
        .await;
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_every_process_under_load() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.proxies = 2;
    let Some(mut mesh) = mesh(opts).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    for c in mesh.cluster_names() {
        for k in 0..2 {
            assert!(
                mesh.terminate_proxy(&c, k).expect("proxy"),
                "{c} proxy {k} clean exit"
            );
            mesh.start_proxy(&c, k).await.expect("proxy back");
            w.wait_progress(10, Duration::from_secs(20))
                .await
                .expect("load after proxy restart");
        }
        assert!(
            mesh.terminate_node(&c).expect("node"),
            "{c} node clean exit"
        );
        mesh.start_node(&c).await.expect("node back");
        w.wait_progress(10, Duration::from_secs(20))
            .await
            .expect("load after node restart");
    }
    let repaired = Instant::now();
    let report = w
        .finish(&mesh, "rolling-restart", &profile, repaired, None)
        .await;
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_proxy_clients_switch_to_the_other() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.proxies = 2;
    let Some(mut mesh) = mesh(opts).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    tokio::time::sleep(profile.before).await;
    mesh.kill_proxy("a", 0).expect("kill proxy");
    let killed = Instant::now();
    // Every key keeps going through the surviving proxy.
    w.wait_progress(50, Duration::from_secs(20))
        .await
        .expect("load through proxy-2");
    let detection = Some(killed.elapsed());
    tokio::time::sleep(profile.fault).await;
    mesh.start_proxy("a", 0).await.expect("proxy back");
    let repaired = Instant::now();
    let report = w
        .finish(&mesh, "kill9-proxy", &profile, repaired, detection)
        .await;
    verdict(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_in_a_triangle_reroutes_through_the_third_cluster() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b", "c"]);
    opts.links.push(("a".into(), "c".into()));
    let Some(mesh) = mesh(opts).await else {
        return;
    };
    if mesh.mode != meshd_chaos::Mode::Netns {
        // On loopback a cut isolates whole clusters (the emulator sits in front of each),
        // so there is no third path to reroute through.
        eprintln!("SKIPPED: rerouting needs per-link faults (network namespaces)");
        return;
    }
    let mut w = under_load(&mesh, &profile).await;
    tokio::time::sleep(profile.before).await;

    mesh.partition("a", "c").expect("partition");
    let cut = Instant::now();
    let detection = wait_link_down(&mesh, "a", "c", Duration::from_secs(20)).await;
    assert!(
        detection.is_some(),
        "the bridge never noticed the partition"
    );
    tokio::time::sleep(profile.fault.saturating_sub(detection.unwrap_or_default())).await;
    // Still partitioned: everything must arrive everywhere through b.
    w.stop_publishers().await;
    let rerouted = meshd_chaos::canary::wait_complete(&w.checker, profile.recovery_timeout).await;
    let mut report = w
        .finish(
            &mesh,
            "partition-triangle-reroute",
            &profile,
            cut,
            detection,
        )
        .await;
    report.notes.push(format!(
        "complete while a-c was still cut: {}",
        rerouted.is_some()
    ));
    mesh.heal("a", "c").expect("heal");
    verdict(&report);
    assert!(
        rerouted.is_some(),
        "events did not reroute through b:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_fat_link_80ms_rtt_with_jitter_and_loss() {
    let _serial = SERIAL.lock().await;
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.shape = meshd_chaos::LinkShape {
        delay: Duration::from_millis(35),
        jitter: Duration::from_millis(10),
        loss_percent: 0,
    };
    let Some(mesh) = mesh(opts).await else {
        return;
    };
    let w = under_load(&mesh, &profile).await;
    let c = meshd_chaos::http::client().unwrap();
    let rtt = meshd_chaos::http::link(&c, &mesh.node_url("a").unwrap(), "b")
        .await
        .unwrap()
        .and_then(|l| l.rtt_ms)
        .unwrap_or(0.0);
    assert!(rtt >= 70.0, "QUIC RTT {rtt} ms, expected 70–90");
    mesh.loss("a", "b", 5).expect("loss");
    tokio::time::sleep(profile.before + profile.fault).await;
    mesh.heal("a", "b").expect("heal");
    let repaired = Instant::now();
    let mut report = w
        .finish(&mesh, "wan-80ms-jitter-loss", &profile, repaired, None)
        .await;
    report.notes.push(format!(
        "QUIC RTT {rtt:.1} ms; 5% loss both ways during the fault"
    ));
    verdict(&report);
}

/// Waits until the process serving `base` answers with a `Date` within 30 s of
/// `want` seconds ahead of the real clock; the skew it last saw.
async fn wait_skew(c: &reqwest::Client, base: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let skew = date_skew(c, base).await.unwrap_or(i64::MIN);
        if (skew - want).abs() <= 30 || Instant::now() > deadline {
            return skew;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that every link in `seen` was sampled, connected and reported a sane lag.
fn lag_sane(phase: &str, seen: &BTreeMap<String, LinkSeen>, report: &Report) {
    assert_eq!(seen.len(), 2, "{phase}: both links sampled: {seen:?}");
    for (link, s) in seen {
        assert!(s.samples >= 3, "{phase}: {link}: too few samples: {s:?}");
        assert_eq!(
            s.not_connected, 0,
            "{phase}: {link} dropped: {s:?}\n{report}"
        );
        assert!(
            s.min_lag_seconds >= 0.0 && s.max_lag_seconds < 30.0,
            "{phase}: {link}: lag nonsense: {s:?}\n{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_and_stepped_wall_clock_in_one_cluster() {
    let _serial = SERIAL.lock().await;
    if meshd_chaos::mesh::libfaketime().is_none() {
        eprintln!("SKIPPED: libfaketime not installed (apt-get install faketime)");
        return;
    }
    let profile = Profile::from_env();
    let mut opts = MeshOptions::line(&["a", "b"]);
    opts.proxies = 1;
    // Every process of b (node + bridge, proxy) reads a wall clock 2 h ahead.
    opts.faked_clocks.insert("b".into(), "+2h".into());
    let Some(mut mesh) = mesh(opts).await else {
        return;
    };
    let c = meshd_chaos::http::client().unwrap();
    let (a_node, b_node) = (mesh.node_url("a").unwrap(), mesh.node_url("b").unwrap());
    let b_proxy = mesh.proxy_urls("b")[0].clone();
    // The faked clock really applies (else this scenario proves nothing): b's node and
    // proxy stamp their answers 2 h ahead, a's node does not.
    let skew_a = date_skew(&c, &a_node).await.expect("a's Date");
    let skew_b = wait_skew(&c, &b_node, 7200).await;
    let skew_bp = wait_skew(&c, &b_proxy, 7200).await;
    assert!(skew_a.abs() <= 30, "a's clock is real: skew {skew_a} s");
    assert!(
        (skew_b - 7200).abs() <= 30 && (skew_bp - 7200).abs() <= 30,
        "b's node and proxy run 2 h ahead: skews {skew_b} s, {skew_bp} s"
    );
    // Phase 1: a steady 2 h skew under load, both directions of replication.
    let w = under_load(&mesh, &profile).await;
    let watch = LinkWatch::start(&mesh).expect("link watch");
    tokio::time::sleep(profile.before.max(Duration::from_secs(2))).await;
    let steady = watch.take();

    // Phase 2: step b's clock back 2 h 3 min (an NTP step to 3 min behind; the mesh
    // certificates are backdated 5 min, so new TLS handshakes still accept them), then
    // forward 1 d 3 min in one jump.
    mesh.set_clock("b", "-3m").expect("step back");
    let seen_back = mesh.clock_of("b").expect("b's clock") - real_now();
    assert!(
        (seen_back + 180).abs() <= 30,
        "b's clock file steps b back: {seen_back} s"
    );
    // Every process of b re-reads the file once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("load after the step back");
    tokio::time::sleep(profile.fault / 2).await;
    mesh.set_clock("b", "+1d").expect("step forward");
    let skew_day = wait_skew(&c, &b_node, 86_400).await;
    assert!(
        (skew_day - 86_400).abs() <= 30,
        "b's node follows the step to +1 d: skew {skew_day} s"
    );
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("load after the step forward");
    tokio::time::sleep(profile.fault / 2).await;
    let steps = watch.take();

    // Phase 3: kill -9 and restart b's node on its stepped clock (its log now holds
    // timestamps +2h, -3m and +1d out of order: cursors and the duplicate window are
    // restored from it).
    mesh.kill_node("b").expect("kill b");
    mesh.start_node("b").await.expect("restart b");
    let repaired = Instant::now();
    for (x, y) in [("a", "b"), ("b", "a")] {
        wait_link_up(&mesh, x, y, Duration::from_secs(20))
            .await
            .expect("link back after the restart");
    }
    watch.take();
    w.wait_progress(20, Duration::from_secs(20))
        .await
        .expect("load after the restart");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = watch.take();

    let mut report = w
        .finish(&mesh, "clock-skew-and-steps", &profile, repaired, None)
        .await;
    report.notes.push(format!(
        "b's clock: +2h at start (Date skew node {skew_b} s, proxy {skew_bp} s; a {skew_a} s), \
         stepped to -3m, then to +1d (node Date skew {skew_day} s), then b's node kill -9 + restart"
    ));
    for (phase, seen) in [("steady", &steady), ("steps", &steps), ("after", &after)] {
        report.facts.insert(
            format!("links_{phase}"),
            serde_json::to_value(seen).unwrap_or_default(),
        );
    }
    // Once everything is delivered both sides report no lag (by their own clocks).
    let settled = Instant::now();
    let mut last = BTreeMap::new();
    while settled.elapsed() < Duration::from_secs(10) {
        watch.take();
        tokio::time::sleep(Duration::from_millis(350)).await;
        last = watch.take();
        if last.len() == 2 && last.values().all(|s| s.max_lag_events == 0) {
            break;
        }
    }
    report.facts.insert(
        "links_settled".into(),
        serde_json::to_value(&last).unwrap_or_default(),
    );
    verdict(&report);
    lag_sane("steady 2 h skew", &steady, &report);
    for (link, s) in &last {
        assert!(
            s.max_lag_events == 0 && s.max_lag_seconds == 0.0 && s.not_connected == 0,
            "settled: {link} still reports lag after every canary arrived: {s:?}\n{report}"
        );
    }
    // During the steps: links stay up and the lag stays sane: a bridge that sees its
    // host's clock step reports how long it has seen the link behind (monotonic) instead
    // of the age of store timestamps written in the old frame. Known limit (reported,
    // not asserted): a bridge *started* after a step cannot tell, so after b's restart
    // its lag_seconds shows the step (about a day) until the events stored before the
    // step are sent.
    for (link, s) in &steps {
        assert_eq!(s.not_connected, 0, "steps: {link} dropped: {s:?}");
        assert!(
            s.min_lag_seconds >= 0.0 && s.max_lag_seconds < 30.0,
            "steps: {link}: lag nonsense across a clock step: {s:?}"
        );
    }
    for (link, s) in &after {
        assert!(
            s.min_lag_seconds >= 0.0,
            "after: {link}: negative lag: {s:?}"
        );
    }
    let a_to_b = &steps["a->b"];
    assert!(
        a_to_b.max_lag_seconds < 30.0,
        "a's view of its lag to b must not depend on b's clock: {a_to_b:?}"
    );
}
