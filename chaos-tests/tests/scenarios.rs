//! Chaos scenarios against real `meshd` processes, each cluster in its own network
//! namespace when run as root (else on loopback, said in the report): canary load with
//! sequence numbers per key, a fault, the repair, and the checker's verdict — nothing
//! acknowledged lost, nothing reordered per key, duplicates counted. Short profile by
//! default (CI); `MESHD_CHAOS_PROFILE=soak` for 30 s faults.
//!
//! Scenarios run one at a time (a lock): each builds its own mesh, and timings on a small
//! shared machine mean more alone.

use std::time::{Duration, Instant};

use meshd_chaos::scenario::{wait_link_down, wait_link_up, Profile, Workload};
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
        .unwrap()["rtt_ms"]
        .as_f64()
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
        .unwrap()["rtt_ms"]
        .as_f64()
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
