//! `meshd dev` starts a small mesh in one process: three clusters, linked bridges.

mod common;

use std::time::Duration;

use common::{eventually, Meshd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_a_connected_three_cluster_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = Meshd::spawn_dev(&data);
    let c = common::client();
    let status = eventually(
        "the first cluster's links connect",
        Duration::from_secs(20),
        || async {
            let m = common::try_get_json(&c, &dev.at("/v1/mesh")).await?;
            let links = m["links"].as_array()?;
            (links.len() == 1 && links[0]["state"] == "connected").then_some(m)
        },
    )
    .await;
    assert_eq!(status["cluster"], "dev");
    assert_eq!(status["clusters"].as_array().unwrap().len(), 3);
    assert_eq!(
        status["routes"]["dev-3"],
        serde_json::json!(["dev", "dev-2", "dev-3"])
    );
    assert!(data.join("mesh/mesh.toml").exists());
    assert!(data.join("mesh/certs/dev-3.pem").exists());
}
