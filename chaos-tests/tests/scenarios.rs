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
            eprintln!("mesh up in {} mode at {}", m.mode.as_str(), m.dir().display());
            Some(m)
        }
        Err(meshd_chaos::ChaosError::NoBinary(p)) => {
            eprintln!("SKIPPED: no meshd binary at {} (cargo build --bin meshd)", p.display());
            None
        }
        Err(e) => panic!("building the mesh: {e}"),
    }
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
    let mut w = Workload::setup(&mesh).await.expect("workload");
    w.start_publishers(&mesh, &profile);
    w.wait_progress(20, Duration::from_secs(20)).await.expect("load");
    tokio::time::sleep(profile.before).await;

    mesh.partition("a", "b").expect("partition");
    let detection = wait_link_down(&mesh, "a", "b", Duration::from_secs(20)).await;
    assert!(detection.is_some(), "the bridge never noticed the partition");
    // Load keeps flowing inside each cluster during the partition.
    w.wait_progress(20, Duration::from_secs(20)).await.expect("load during partition");
    tokio::time::sleep(profile.fault.saturating_sub(detection.unwrap_or_default())).await;

    mesh.heal("a", "b").expect("heal");
    let repaired = Instant::now();
    wait_link_up(&mesh, "a", "b", Duration::from_secs(20))
        .await
        .expect("link back up");
    let report = w.finish(&mesh, "partition-link", &profile, repaired, detection).await;
    verdict(&report);
}
