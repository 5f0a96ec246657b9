//! `meshd pub`, `meshd sub`, `meshd topic`: small HTTP clients of the `/v1` API.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// `meshd pub`
#[derive(clap::Args)]
pub struct PubArgs {
    /// Base URL of a node or proxy.
    #[arg(long, default_value = "http://127.0.0.1:7700", env = "MESHD_URL")]
    url: String,
    /// Topic to publish to.
    #[arg(long)]
    topic: String,
    /// CloudEvents type.
    #[arg(long = "type", default_value = "com.example.event")]
    ty: String,
    /// CloudEvents source.
    #[arg(long, default_value = "/meshd/cli")]
    source: String,
    /// JSON data (`-` reads it from standard input).
    #[arg(long, default_value = "{}")]
    data: String,
    /// Partition key (the `partitionkey` extension).
    #[arg(long)]
    key: Option<String>,
    /// How many events to publish (ids get a sequence suffix).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Events per request (batch mode when > 1).
    #[arg(long, default_value_t = 1)]
    batch: u64,
}

/// `meshd sub`
#[derive(clap::Args)]
pub struct SubArgs {
    /// Base URL of a node or proxy.
    #[arg(long, default_value = "http://127.0.0.1:7700", env = "MESHD_URL")]
    url: String,
    /// The pull subscription to read.
    #[arg(long)]
    subscription: String,
    /// Create the subscription on this topic first (pull sink, CLUSTERING).
    #[arg(long)]
    topic: Option<String>,
    /// With --topic: a filter (JSON, e.g. '{"exact":{"type":"x"}}').
    #[arg(long)]
    filter: Option<String>,
    /// The member name of this consumer.
    #[arg(long, default_value = "default")]
    consumer: String,
    /// Stop after this many events (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Long-poll wait per request.
    #[arg(long, default_value = "5s")]
    wait: String,
}

/// `meshd topic`
#[derive(clap::Args)]
pub struct TopicArgs {
    /// Base URL of a node or proxy.
    #[arg(long, default_value = "http://127.0.0.1:7700", env = "MESHD_URL")]
    url: String,
    #[command(subcommand)]
    action: TopicAction,
}

#[derive(clap::Subcommand)]
enum TopicAction {
    /// Create a topic (idempotent).
    Create {
        /// Name.
        name: String,
        /// Partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Retention by age, in seconds.
        #[arg(long)]
        max_age_secs: Option<u64>,
        /// Retention by size per partition, in bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// List topics.
    List,
    /// Delete a topic.
    Delete {
        /// Name.
        name: String,
    },
}

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .context("building the HTTP client")
}

async fn check(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("answer is not JSON: {text}"))
}

/// Publishes `count` events.
pub async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let data: Value = if args.data == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        serde_json::from_str(&s).context("--data from stdin is not JSON")?
    } else {
        serde_json::from_str(&args.data).context("--data is not JSON")?
    };
    let client = http()?;
    let url = format!(
        "{}/v1/topics/{}/events",
        args.url.trim_end_matches('/'),
        args.topic
    );
    let started = Instant::now();
    let run = started.elapsed().as_nanos();
    let batch = args.batch.max(1);
    let mut sent = 0;
    while sent < args.count {
        let n = batch.min(args.count - sent);
        let events: Vec<Value> = (sent..sent + n)
            .map(|i| {
                let mut e = json!({
                    "specversion": "1.0",
                    "id": format!("cli-{run:x}-{i}"),
                    "source": args.source,
                    "type": args.ty,
                    "datacontenttype": "application/json",
                    "data": data,
                });
                if let Some(k) = &args.key {
                    e["partitionkey"] = json!(k);
                }
                e
            })
            .collect();
        let req = if n == 1 {
            client
                .post(&url)
                .header("content-type", "application/cloudevents+json")
                .body(serde_json::to_vec(&events[0])?)
        } else {
            client
                .post(&url)
                .header("content-type", "application/cloudevents-batch+json")
                .body(serde_json::to_vec(&events)?)
        };
        let answer = check(req.send().await.with_context(|| format!("POST {url}"))?).await?;
        if args.count <= 10 {
            println!("{answer}");
        }
        sent += n;
    }
    eprintln!(
        "published {sent} events to {} in {:.3}s",
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Pulls and acknowledges events, printing each as a JSON line.
pub async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    let client = http()?;
    let base = args.url.trim_end_matches('/').to_string();
    if let Some(topic) = &args.topic {
        let mut spec = json!({
            "name": args.subscription,
            "topic": topic,
            "sink": {"pull": {}},
        });
        if let Some(f) = &args.filter {
            spec["filter"] = serde_json::from_str(f).context("--filter is not JSON")?;
        }
        check(
            client
                .post(format!("{base}/v1/subscriptions"))
                .json(&spec)
                .send()
                .await?,
        )
        .await?;
    }
    let mut got = 0u64;
    loop {
        let url = format!(
            "{base}/v1/subscriptions/{}/events?max=100&wait={}&consumer={}",
            args.subscription, args.wait, args.consumer
        );
        let answer = check(
            client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?,
        )
        .await?;
        let events = answer["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            continue;
        }
        let mut ack_ids = Vec::with_capacity(events.len());
        for e in &events {
            println!("{}", e["event"]);
            ack_ids.push(e["ack_id"].clone());
        }
        check(
            client
                .post(format!("{base}/v1/subscriptions/{}/ack", args.subscription))
                .json(&json!({"ack_ids": ack_ids, "consumer": args.consumer}))
                .send()
                .await?,
        )
        .await?;
        got += events.len() as u64;
        if args.count > 0 && got >= args.count {
            return Ok(());
        }
    }
}

/// Topic administration.
pub async fn topic(args: TopicArgs) -> anyhow::Result<()> {
    let client = http()?;
    let base = args.url.trim_end_matches('/');
    let answer = match args.action {
        TopicAction::Create {
            name,
            partitions,
            max_age_secs,
            max_bytes,
        } => {
            let mut retention = json!({});
            if let Some(a) = max_age_secs {
                retention["max_age_secs"] = json!(a);
            }
            if let Some(b) = max_bytes {
                retention["max_bytes"] = json!(b);
            }
            let body = json!({"partitions": partitions, "retention": retention});
            check(
                client
                    .put(format!("{base}/v1/topics/{name}"))
                    .json(&body)
                    .send()
                    .await?,
            )
            .await?
        }
        TopicAction::List => check(client.get(format!("{base}/v1/topics")).send().await?).await?,
        TopicAction::Delete { name } => {
            check(
                client
                    .delete(format!("{base}/v1/topics/{name}"))
                    .send()
                    .await?,
            )
            .await?
        }
    };
    if !answer.is_null() {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(())
}
