//! `meshd dev`: a complete local cluster in one process on loopback, on embedded
//! defaults (embedded store in a data dir). With `--demo`, sample traffic flows at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderMap;
use meshd_node::server::Node;
use serde_json::json;

use crate::StoreArgs;

/// `meshd dev`
#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the cluster keeps its data (reused across restarts).
    #[arg(long, default_value = ".meshd-dev")]
    data_dir: PathBuf,
    /// First port; roles take the next ones (0: any free ports).
    #[arg(long, default_value_t = 7700)]
    port: u16,
    /// Cluster name.
    #[arg(long, default_value = "dev")]
    cluster: String,
    /// Also publish sample events and run a sample webhook subscriber.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    store: StoreArgs,
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 {
        0
    } else {
        base.saturating_add(offset)
    }
}

/// Runs the dev cluster until interrupted.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let node_dir = args.data_dir.join(&args.cluster).join("node-1");
    let config = args
        .store
        .node_config(node_dir.clone(), &args.cluster, "node-1");
    let node = Node::open(config)
        .await
        .with_context(|| format!("opening the dev cluster's store in {}", node_dir.display()))?;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port(args.port, 0))))
            .await
            .context("binding the node port (is another meshd dev running? try --port)")?;
    let node_url = format!("http://{}", listener.local_addr()?);
    println!("cluster {} node {node_url}", args.cluster);
    println!("cluster {} metrics {node_url}/metrics", args.cluster);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        tokio::spawn(node.serve(listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    if args.demo {
        let sink = tokio::net::TcpListener::bind(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port(args.port, 90),
        )))
        .await
        .context("binding the demo subscriber port")?;
        let sink_url = format!("http://{}", sink.local_addr()?);
        println!("cluster {} demo-subscriber {sink_url}", args.cluster);
        tokio::spawn(demo_subscriber(sink, stop_rx.clone()));
        tokio::spawn(demo_traffic(node_url.clone(), sink_url, stop_rx.clone()));
    }
    println!(
        "meshd dev: cluster {:?} is up; data in {}; Ctrl-C stops it",
        args.cluster,
        args.data_dir.display()
    );
    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    server.await.context("node task")??;
    Ok(())
}

async fn demo_subscriber(
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|headers: HeaderMap, body: axum::body::Bytes| async move {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            println!(
                "demo: webhook got {} type={} key={} data={}",
                h("ce-id"),
                h("ce-type"),
                h("ce-partitionkey"),
                String::from_utf8_lossy(&body)
            );
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

async fn demo_traffic(node: String, sink: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => return eprintln!("demo: no HTTP client: {e}"),
    };
    let setup = async {
        client
            .put(format!("{node}/v1/topics/demo.orders"))
            .json(&json!({"partitions": 2}))
            .send()
            .await?
            .error_for_status()?;
        let sub = json!({
            "name": "demo-webhook",
            "topic": "demo.orders",
            "filter": {"exact": {"type": "com.example.order.created"}},
            "sink": {"webhook": {"url": sink}},
            "delivery": {"max_attempts": 5, "dead_letter_topic": "demo.orders.dlq"},
        });
        let resp = client
            .post(format!("{node}/v1/subscriptions"))
            .json(&sub)
            .send()
            .await?;
        if !(resp.status().is_success() || resp.status() == reqwest::StatusCode::CONFLICT) {
            resp.error_for_status()?;
        }
        Ok::<_, reqwest::Error>(())
    };
    if let Err(e) = setup.await {
        return eprintln!("demo: setup failed: {e}");
    }
    let types = ["com.example.order.created", "com.example.order.shipped"];
    for i in 0u64.. {
        let event = json!({
            "specversion": "1.0",
            "id": format!("demo-{}-{i}", std::process::id()),
            "source": "/demo/shop",
            "type": types[(i % 2) as usize],
            "partitionkey": format!("customer-{}", i % 3),
            "datacontenttype": "application/json",
            "data": {"order": i, "amount": (i * 7) % 100},
        });
        match client
            .post(format!("{node}/v1/topics/demo.orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                println!(
                    "demo: published demo-{}-{i} type={}",
                    std::process::id(),
                    types[(i % 2) as usize]
                )
            }
            Ok(r) => eprintln!("demo: publish answered {}", r.status()),
            Err(e) => eprintln!("demo: publish failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
