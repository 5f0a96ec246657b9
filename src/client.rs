//! The client commands (`meshd pub`, `sub`, `topic`, `mesh`): HTTP clients of the `/v1`
//! API with one set of global options (`--url`, `--token`, `-o`), typed bodies from
//! `meshd_core::api`, aligned tables for people and JSON for scripts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use meshd_core::api::{
    AckRequest, AckResponse, BrowseResponse, DeliveryPolicy, ErrorBody, GroupMode, MeshStatus,
    PublishResponse, PullResponse, PullSink, Retention, SeekResponse, Sink, StartPosition,
    SubscriptionList, SubscriptionSpec, SubscriptionStatus, TopicConfig, TopicInfo, TopicList,
    WebhookSink,
};
use meshd_core::filter::FilterSpec;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::table::Table;

/// Where a client command without `--url` and `MESHD_URL` goes.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7700";

/// Options of every client command. Global: accepted before or after the subcommand
/// (`meshd --url X topic list` and `meshd topic list --url X`).
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Base URL of the node or proxy to talk to [env: MESHD_URL] [default:
    /// http://127.0.0.1:7700]. `meshd drill` takes it once per cluster, as CLUSTER=URL.
    #[arg(long = "url", value_name = "URL", global = true, action = clap::ArgAction::Append)]
    pub urls: Vec<String>,
    /// Bearer token, sent as `Authorization: Bearer TOKEN` (a proxy with auth needs one;
    /// see `meshd proxy token create`).
    #[arg(
        long,
        value_name = "TOKEN",
        global = true,
        env = "MESHD_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Output format: aligned tables for people, JSON for scripts.
    #[arg(short = 'o', long, value_name = "FORMAT", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How results are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON (one document; streams print one JSON value per line).
    Json,
}

/// A mistake in how the command was called (exit code 2, like clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// An answer of the API that is not a success: its status and the API's error code,
/// message and field.
#[derive(Debug)]
pub struct ApiFailure {
    /// `GET http://…/v1/…`.
    pub request: String,
    /// The status.
    pub status: StatusCode,
    /// The API's error body, when it sent one.
    pub error: Option<ErrorBody>,
    /// The body otherwise (shortened).
    pub text: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} answered {}", self.request, self.status)?;
        match &self.error {
            Some(b) => {
                write!(f, ": {}: {}", b.error.code, b.error.message)?;
                if let Some(field) = &b.error.field {
                    if !b.error.message.contains(field.as_str()) {
                        write!(f, " (field {field})")?;
                    }
                }
                Ok(())
            }
            None if self.text.is_empty() => Ok(()),
            None => write!(f, ": {}", self.text),
        }
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// The API's error code.
    pub fn code(&self) -> Option<&str> {
        self.error.as_ref().map(|b| b.error.code.as_str())
    }
}

/// A client of one node or proxy.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// How results are printed.
    pub output: Output,
}

impl Api {
    /// The client the global options describe: `--url`, else `MESHD_URL`, else
    /// [`DEFAULT_URL`].
    pub fn new(global: &GlobalArgs) -> anyhow::Result<Api> {
        let base = match global.urls.as_slice() {
            [] => std::env::var("MESHD_URL")
                .ok()
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_URL.to_string()),
            [one] => one.clone(),
            many => {
                return Err(usage(format!(
                    "--url given {} times; this command talks to one node or proxy",
                    many.len()
                )))
            }
        };
        let base = base.trim().trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&base).map_err(|e| {
            usage(format!(
                "--url {base:?} is not a URL ({e}); write it like http://127.0.0.1:7700"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(usage(format!(
                "--url {base:?}: give an http:// or https:// URL, like http://127.0.0.1:7700"
            )));
        }
        let token = global.token.clone().filter(|t| !t.trim().is_empty());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base,
            token,
            output: global.output,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> (reqwest::RequestBuilder, String) {
        let url = format!("{}{path}", self.base);
        let mut rb = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t.trim());
        }
        (rb, format!("{method} {url}"))
    }

    /// Sends a request; a non-success answer is an [`ApiFailure`]. Returns the status
    /// and the body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        prepare: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
        let (rb, what) = self.request(method, path);
        let resp = prepare(rb).send().await.context(what.clone())?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the answer"))?;
        if !status.is_success() {
            let error = serde_json::from_slice::<ErrorBody>(&body).ok();
            let mut text = String::from_utf8_lossy(&body).trim().to_string();
            if text.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push('…');
            }
            return Err(ApiFailure {
                request: what,
                status,
                error,
                text,
            }
            .into());
        }
        Ok((status, body))
    }

    /// Sends and parses a JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        prepare: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<(StatusCode, T)> {
        let what = format!("{method} {}{path}", self.base);
        let (status, body) = self.send(method, path, prepare).await?;
        let v = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{what}: the answer is not what the API sends: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        Ok((status, v))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.json(Method::GET, path, |r| r).await?.1)
    }

    /// Prints `value` as pretty JSON.
    pub(crate) fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// Path segment of a topic or subscription name (checked, so it needs no escaping).
pub(crate) fn name_segment(kind: &str, name: &str) -> anyhow::Result<String> {
    meshd_core::api::check_name(kind, name).map_err(|e| usage(e.message))?;
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------------------
// meshd pub

/// `meshd pub`
#[derive(clap::Args)]
pub struct PubArgs {
    /// Topic to publish to.
    #[arg(long)]
    topic: String,
    /// CloudEvents type.
    #[arg(long = "type", default_value = "com.example.event")]
    ty: String,
    /// CloudEvents source.
    #[arg(long, default_value = "/meshd/cli")]
    source: String,
    /// Event id (default: a new UUIDv7 per event). Only with --count 1: ids must be
    /// unique per source, and the mesh drops repeats as duplicates.
    #[arg(long)]
    id: Option<String>,
    /// JSON data (`-` reads it from standard input).
    #[arg(long, default_value = "{}")]
    data: String,
    /// Partition key (the `partitionkey` extension).
    #[arg(long)]
    key: Option<String>,
    /// How many events to publish (each gets its own id).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Events per request (batch mode when > 1).
    #[arg(long, default_value_t = 1)]
    batch: u64,
}

/// A new event id: a UUIDv7 (time-ordered, 74 random bits; unique across processes and
/// machines, unlike a timer read at start).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Publishes `count` events; prints each event's id and position (up to 10 events).
pub async fn publish(global: &GlobalArgs, args: PubArgs) -> anyhow::Result<()> {
    let api = Api::new(global)?;
    let topic = name_segment("topic", &args.topic)?;
    if args.id.is_some() && args.count != 1 {
        return Err(usage(
            "--id needs --count 1 (every event needs its own id; without --id each gets a UUIDv7)",
        ));
    }
    if args.id.as_deref() == Some("") {
        return Err(usage("--id must not be empty"));
    }
    let data: Value = if args.data == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading --data from standard input")?;
        serde_json::from_str(&s).context("--data from standard input is not JSON")?
    } else {
        serde_json::from_str(&args.data).map_err(|e| usage(format!("--data is not JSON: {e}")))?
    };
    let path = format!("/v1/topics/{topic}/events");
    let started = Instant::now();
    let batch = args.batch.max(1);
    let show = args.count <= 10;
    let mut table = Table::new(["ID", "PARTITION", "OFFSET"]);
    let mut sent = 0;
    while sent < args.count {
        let n = batch.min(args.count - sent);
        let events: Vec<Value> = (0..n)
            .map(|_| {
                let mut e = json!({
                    "specversion": "1.0",
                    "id": args.id.clone().unwrap_or_else(new_event_id),
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
        let (content_type, body) = if n == 1 {
            (
                "application/cloudevents+json",
                serde_json::to_vec(&events[0])?,
            )
        } else {
            (
                "application/cloudevents-batch+json",
                serde_json::to_vec(&events)?,
            )
        };
        let (_, answer): (_, PublishResponse) = api
            .json(Method::POST, &path, |r| {
                r.header("content-type", content_type).body(body)
            })
            .await?;
        if show {
            for (e, p) in events.iter().zip(&answer.positions) {
                let id = e["id"].as_str().unwrap_or_default();
                match api.output {
                    Output::Json => println!(
                        "{}",
                        json!({"id": id, "partition": p.partition, "offset": p.offset})
                    ),
                    Output::Table => table.row([
                        id.to_string(),
                        p.partition.to_string(),
                        p.offset.to_string(),
                    ]),
                }
            }
        }
        sent += n;
    }
    if show && api.output == Output::Table {
        table.print();
    }
    eprintln!(
        "published {sent} events to {topic} in {:.3}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// meshd topic

/// `meshd topic`
#[derive(clap::Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    action: TopicAction,
}

#[derive(clap::Subcommand)]
enum TopicAction {
    /// Create a topic (idempotent: an identical one is confirmed; another config is a
    /// conflict).
    Create {
        /// Name.
        name: String,
        /// Partitions (events with one partition key share one).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Retention by age (e.g. 7d, 12h, 30m; whole seconds).
        #[arg(long, value_parser = crate::duration_arg, conflicts_with = "max_age_secs")]
        max_age: Option<Duration>,
        /// Retention by age, in seconds (the older spelling of --max-age).
        #[arg(long, hide = true)]
        max_age_secs: Option<u64>,
        /// Retention by size per partition, in bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// A cluster that may receive the topic (federation; repeat).
        #[arg(long = "replicate-to", value_name = "CLUSTER")]
        replicate_to: Vec<String>,
        /// Bind a schema to an event type: `TYPE=SCHEMA` (repeat; see `meshd schema`).
        #[arg(long = "schema", value_name = "TYPE=SCHEMA", value_parser = crate::schema_cmd::binding_arg)]
        schemas: Vec<(String, String)>,
        /// Validate the data of events of bound types on publish.
        #[arg(long)]
        validate: bool,
        /// Infer a JSON Schema per (source, type) from the events stored (see
        /// `meshd schema discovered`).
        #[arg(long)]
        discover: bool,
    },
    /// List topics.
    List,
    /// Show one topic: its config and per-partition offsets.
    Get {
        /// Name.
        name: String,
    },
    /// Delete a topic (refused while a subscription reads it).
    Delete {
        /// Name.
        name: String,
    },
    /// Browse a topic's stored events (one partition, from an offset or a time).
    Events {
        /// The topic.
        name: String,
        /// The partition (may be left out when the topic has one).
        #[arg(long)]
        partition: Option<u32>,
        /// The first offset to show (default: the first retained event).
        #[arg(long, conflicts_with = "from_time")]
        from: Option<u64>,
        /// The first store time to show (RFC 3339).
        #[arg(long, value_name = "TIME")]
        from_time: Option<String>,
        /// Most events (1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

fn retained(info: &TopicInfo) -> u64 {
    info.partitions.values().map(|p| p.end - p.start).sum()
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_string())
}

fn topic_row(t: &TopicInfo) -> [String; 6] {
    let r = &t.config.retention;
    [
        t.name.clone(),
        t.config.partitions.to_string(),
        or_dash(
            r.max_age_secs
                .map(|s| meshd_core::duration::format(Duration::from_secs(s))),
        ),
        or_dash(r.max_bytes.map(|b| b.to_string())),
        retained(t).to_string(),
        if t.config.replicate_to.is_empty() {
            "-".to_string()
        } else {
            t.config.replicate_to.join(",")
        },
    ]
}

const TOPIC_HEADERS: [&str; 6] = [
    "NAME",
    "PARTITIONS",
    "MAX AGE",
    "MAX BYTES",
    "EVENTS",
    "REPLICATE TO",
];

/// Topic administration.
pub async fn topic(global: &GlobalArgs, args: TopicArgs) -> anyhow::Result<()> {
    let api = Api::new(global)?;
    match args.action {
        TopicAction::Create {
            name,
            partitions,
            max_age,
            max_age_secs,
            max_bytes,
            replicate_to,
            schemas,
            validate,
            discover,
        } => {
            let name = name_segment("topic", &name)?;
            let max_age_secs = match max_age {
                Some(d) if d.subsec_nanos() != 0 || d.is_zero() => {
                    return Err(usage(format!(
                        "--max-age {}: give whole seconds, at least 1s",
                        meshd_core::duration::format(d)
                    )))
                }
                Some(d) => Some(d.as_secs()),
                None => max_age_secs,
            };
            let config = TopicConfig {
                partitions,
                retention: Retention {
                    max_age_secs,
                    max_bytes,
                },
                replicate_to,
                schemas: schemas.into_iter().collect(),
                validate,
                discover,
            };
            config
                .validate()
                .map_err(|e| usage(format!("invalid topic: {e}")))?;
            let (status, info): (_, Value) = api
                .json(Method::PUT, &format!("/v1/topics/{name}"), |r| {
                    r.json(&config)
                })
                .await?;
            match api.output {
                Output::Json => api.print_json(&info)?,
                Output::Table if status == StatusCode::CREATED => {
                    println!("created topic {name} ({partitions} partitions)")
                }
                Output::Table => println!("topic {name} exists with this config (unchanged)"),
            }
        }
        TopicAction::List => {
            let list: TopicList = api.get("/v1/topics").await?;
            match api.output {
                Output::Json => api.print_json(&list)?,
                Output::Table => {
                    let mut t = Table::new(TOPIC_HEADERS);
                    for info in &list.topics {
                        t.row(topic_row(info));
                    }
                    t.print_or("no topics");
                }
            }
        }
        TopicAction::Get { name } => {
            let name = name_segment("topic", &name)?;
            let info: TopicInfo = api.get(&format!("/v1/topics/{name}")).await?;
            match api.output {
                Output::Json => api.print_json(&info)?,
                Output::Table => {
                    let mut t = Table::new(TOPIC_HEADERS);
                    t.row(topic_row(&info));
                    t.print();
                    println!();
                    let mut p = Table::new(["PARTITION", "START", "END", "EVENTS"]);
                    for (n, o) in &info.partitions {
                        p.row([
                            n.to_string(),
                            o.start.to_string(),
                            o.end.to_string(),
                            (o.end - o.start).to_string(),
                        ]);
                    }
                    p.print();
                }
            }
        }
        TopicAction::Delete { name } => {
            let name = name_segment("topic", &name)?;
            api.send(Method::DELETE, &format!("/v1/topics/{name}"), |r| r)
                .await?;
            match api.output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted topic {name}"),
            }
        }
        TopicAction::Events {
            name,
            partition,
            from,
            from_time,
            limit,
        } => {
            let name = name_segment("topic", &name)?;
            let mut query = vec![format!("limit={limit}")];
            if let Some(p) = partition {
                query.push(format!("partition={p}"));
            }
            if let Some(o) = from {
                query.push(format!("from={o}"));
            }
            if let Some(t) = &from_time {
                meshd_core::api::StartTime::parse(t)
                    .map_err(|e| usage(format!("--from-time: {e}")))?;
                // A valid RFC 3339 time holds no query syntax but `+` (a space there).
                query.push(format!("from_time={}", t.replace('+', "%2B")));
            }
            let page: BrowseResponse = api
                .get(&format!("/v1/topics/{name}/events?{}", query.join("&")))
                .await?;
            match api.output {
                Output::Json => api.print_json(&page)?,
                Output::Table => {
                    let mut t = Table::new(["PARTITION", "OFFSET", "TIME", "ID", "SOURCE", "TYPE"]);
                    let attr = |e: &Value, k: &str| {
                        e.get(k).and_then(Value::as_str).unwrap_or("-").to_string()
                    };
                    for e in &page.events {
                        t.row([
                            e.partition.to_string(),
                            e.offset.to_string(),
                            e.time.clone(),
                            attr(&e.event, "id"),
                            attr(&e.event, "source"),
                            attr(&e.event, "type"),
                        ]);
                    }
                    t.print_or("no events there");
                    println!(
                        "next: --from {} (partition {} ends at {})",
                        page.next, page.partition, page.end
                    );
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// meshd sub

/// `meshd sub`: manage subscriptions (`create`, `list`, `get`, `delete`) and read pull
/// subscriptions (`pull`). The older form `meshd sub --subscription S [--topic T]`
/// (create a pull subscription when --topic is given, then pull) still works.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SubArgs {
    #[command(subcommand)]
    action: Option<SubAction>,
    #[command(flatten)]
    follow: FollowArgs,
}

/// The older `meshd sub --subscription S [--topic T]` form.
#[derive(clap::Args)]
struct FollowArgs {
    /// The pull subscription to read.
    #[arg(long)]
    subscription: Option<String>,
    /// Create the subscription on this topic first (pull sink, CLUSTERING; like `sub
    /// create NAME --topic T --pull`).
    #[arg(long)]
    topic: Option<String>,
    /// With --topic: a filter in any dialect (JSON, e.g. '{"exact":{"type":"x"}}').
    #[arg(long, requires = "topic")]
    filter: Option<String>,
    #[command(flatten)]
    pull: PullOptions,
}

/// How `pull` reads.
#[derive(clap::Args, Clone)]
struct PullOptions {
    /// The member name of this consumer (BROADCASTING gives every member every event).
    #[arg(long, default_value = "default")]
    consumer: String,
    /// Stop after this many events (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Long-poll wait per request (at most 60s; e.g. 5s, 1.5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = crate::positive_duration_arg)]
    wait: Duration,
    /// Most events per request (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max: u32,
}

#[derive(clap::Subcommand)]
enum SubAction {
    /// Create a subscription (idempotent: an identical one is confirmed).
    Create(Box<CreateArgs>),
    /// List subscriptions.
    List,
    /// Show one subscription.
    Get {
        /// Name.
        name: String,
    },
    /// Where a subscription's delivery stands: backlog (events and age) per partition,
    /// committed offsets, in flight, delivered / retried / dead-lettered counts, the last
    /// error, and the node delivering it.
    Status {
        /// Name.
        name: String,
    },
    /// Delete a subscription (delivery stops).
    Delete {
        /// Name.
        name: String,
    },
    /// Move a subscription to a time or offsets (or the earliest/latest event): its
    /// consumers see the events from there again.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["time", "offset", "earliest", "latest"])))]
    Seek {
        /// The subscription.
        name: String,
        /// The first event stored at or after this time (RFC 3339), every partition.
        #[arg(long, value_name = "TIME")]
        time: Option<String>,
        /// PARTITION:OFFSET (repeat; partitions not named stay where they are).
        #[arg(long, value_name = "P:O")]
        offset: Vec<String>,
        /// Everything the topic still retains.
        #[arg(long)]
        earliest: bool,
        /// Only events stored from now on.
        #[arg(long)]
        latest: bool,
    },
    /// Pull events from a pull subscription, print each as one JSON line and acknowledge
    /// it.
    Pull {
        /// The subscription.
        name: String,
        #[command(flatten)]
        pull: PullOptions,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("sink").args(["webhook", "pull"])))]
struct CreateArgs {
    /// Name (unique in the cluster).
    name: String,
    /// The topic read.
    #[arg(long)]
    topic: String,
    /// Push each event to this URL (CloudEvents binary mode); repeat for more members of
    /// the group.
    #[arg(long, value_name = "URL")]
    webhook: Vec<String>,
    /// Pull sink: read with `meshd sub pull NAME` (the default without --webhook).
    #[arg(long)]
    pull: bool,
    /// Per-attempt timeout of a webhook push (e.g. 5s).
    #[arg(long, value_parser = crate::positive_duration_arg, requires = "webhook")]
    timeout: Option<Duration>,
    /// How long a pulled event may stay unacknowledged before it is handed out again
    /// (e.g. 30s).
    #[arg(long, value_parser = crate::positive_duration_arg, conflicts_with = "webhook")]
    ack_deadline: Option<Duration>,
    #[command(flatten)]
    filter: FilterArgs,
    /// What the sink receives, as JSON (see docs/transforms.md), or a file holding it.
    #[arg(long, value_name = "FILE|JSON")]
    transform: Option<String>,
    /// Where a new subscription starts: latest (events after creation) or earliest
    /// (everything retained).
    #[arg(long, value_enum, default_value_t = Start::Latest)]
    start: Start,
    /// Start at the first event stored at or after this time (RFC 3339, e.g.
    /// 2026-12-03T10:00:00Z) on every partition, instead of --start.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["start", "start_offset"])]
    start_time: Option<String>,
    /// Start at this offset of a partition, as PARTITION:OFFSET (repeat; partitions not
    /// named start at the end), instead of --start.
    #[arg(long, value_name = "P:O", conflicts_with = "start")]
    start_offset: Vec<String>,
    /// The consumer group (default: the name).
    #[arg(long)]
    group: Option<String>,
    /// clustering: each event to one member; broadcasting: to every member.
    #[arg(long, value_enum, default_value_t = Mode::Clustering)]
    mode: Mode,
    /// Attempts per event before it is dead-lettered (1 to 1000).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Where events that ran out of attempts go (created if missing).
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// A cluster that keeps a replica of the subscription and can take over its delivery
    /// (`meshd failover`); repeat for several. CLUSTERING only.
    #[arg(long, value_name = "CLUSTER")]
    standby: Vec<String>,
    /// Events in flight at once (push).
    #[arg(long)]
    max_in_flight: Option<u32>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Start {
    Latest,
    Earliest,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Mode {
    Clustering,
    Broadcasting,
}

/// `--pattern`, `--cesql` or `--filter`: a subscription's or a replay's filter (at most
/// one).
#[derive(clap::Args)]
#[group(id = "which", multiple = false)]
struct FilterArgs {
    /// An EventBridge-style event pattern: JSON, or a file holding it.
    #[arg(long, value_name = "FILE|JSON")]
    pattern: Option<String>,
    /// A CloudEvents SQL expression, e.g. "type = 'order.created' AND data.total > 10".
    #[arg(long, value_name = "EXPR")]
    cesql: Option<String>,
    /// A filter in any dialect of the API, as JSON (e.g. '{"prefix":{"type":"order."}}'),
    /// or a file holding it.
    #[arg(long, value_name = "FILE|JSON")]
    filter: Option<String>,
}

impl FilterArgs {
    /// The filter given, if any.
    fn spec(&self) -> anyhow::Result<Option<FilterSpec>> {
        Ok(if let Some(p) = &self.pattern {
            Some(FilterSpec::Pattern(json_or_file("--pattern", p)?))
        } else if let Some(c) = &self.cesql {
            Some(FilterSpec::Cesql(c.clone()))
        } else if let Some(f) = &self.filter {
            Some(
                serde_json::from_value(json_or_file("--filter", f)?)
                    .map_err(|e| usage(format!("--filter is not a filter: {e}")))?,
            )
        } else {
            None
        })
    }
}

/// JSON given inline, or the path of a file holding it.
pub(crate) fn json_or_file(flag: &str, s: &str) -> anyhow::Result<Value> {
    let t = s.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        return serde_json::from_str(s).map_err(|e| usage(format!("{flag} is not JSON: {e}")));
    }
    let text = std::fs::read_to_string(s).map_err(|e| {
        usage(format!(
            "{flag} {s:?} is neither JSON (it does not start with {{) nor a readable file ({e})"
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| usage(format!("{flag}: {s} is not JSON: {e}")))
}

impl CreateArgs {
    fn spec(&self) -> anyhow::Result<SubscriptionSpec> {
        let sink = if self.webhook.is_empty() {
            let mut p = PullSink::default();
            if let Some(d) = self.ack_deadline {
                p.ack_deadline_ms = millis(d);
            }
            Sink::Pull(p)
        } else {
            let mut urls = self.webhook.clone();
            let first = urls.remove(0);
            let mut w = WebhookSink {
                url: Some(first),
                urls,
                timeout_ms: 5_000,
            };
            if let Some(d) = self.timeout {
                w.timeout_ms = millis(d);
            }
            Sink::Webhook(w)
        };
        let filter = self.filter.spec()?;
        let transform = match &self.transform {
            Some(t) => Some(
                serde_json::from_value(json_or_file("--transform", t)?)
                    .map_err(|e| usage(format!("--transform is not a transform: {e}")))?,
            ),
            None => None,
        };
        let mut delivery = DeliveryPolicy::default();
        if let Some(n) = self.max_attempts {
            delivery.max_attempts = n;
        }
        if let Some(n) = self.max_in_flight {
            delivery.max_in_flight = n;
        }
        delivery.dead_letter_topic = self.dead_letter_topic.clone();
        let spec = SubscriptionSpec {
            name: self.name.clone(),
            topic: self.topic.clone(),
            group: self.group.clone().unwrap_or_default(),
            mode: match self.mode {
                Mode::Clustering => GroupMode::Clustering,
                Mode::Broadcasting => GroupMode::Broadcasting,
            },
            filter,
            transform,
            sink,
            delivery,
            start: position_args(
                &self.start_time,
                &self.start_offset,
                match self.start {
                    Start::Latest => StartPosition::Latest,
                    Start::Earliest => StartPosition::Earliest,
                },
                ("--start-time", "--start-offset"),
            )?,
            standby: self.standby.clone(),
        };
        // The node checks the same; checking here names the flag's field before anything
        // is sent.
        spec.clone()
            .compile()
            .map_err(|e| usage(format!("invalid subscription: {e}")))?;
        Ok(spec)
    }
}

/// A start position from `--…-time` / `--…-offset P:O` flags (`flags` names them for
/// errors), else `otherwise`.
fn position_args(
    time: &Option<String>,
    offsets: &[String],
    otherwise: StartPosition,
    flags: (&str, &str),
) -> anyhow::Result<StartPosition> {
    if let Some(t) = time {
        let t =
            meshd_core::api::StartTime::parse(t).map_err(|e| usage(format!("{}: {e}", flags.0)))?;
        return Ok(StartPosition::Time(t));
    }
    if offsets.is_empty() {
        return Ok(otherwise);
    }
    let mut map = BTreeMap::new();
    for o in offsets {
        let parsed = o
            .split_once(':')
            .and_then(|(p, o)| Some((p.parse::<u32>().ok()?, o.parse::<u64>().ok()?)));
        let Some((p, o)) = parsed else {
            return Err(usage(format!(
                "{} {o:?}: give PARTITION:OFFSET, e.g. 0:42",
                flags.1
            )));
        };
        if map.insert(p, o).is_some() {
            return Err(usage(format!("{}: partition {p} is named twice", flags.1)));
        }
    }
    Ok(StartPosition::Offsets(map))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn sink_text(s: &Sink) -> String {
    match s {
        Sink::Webhook(w) => format!("webhook {}", w.members().join(",")),
        Sink::Pull(_) => "pull".to_string(),
    }
}

fn filter_text(f: &Option<FilterSpec>) -> String {
    match f {
        None => "-".to_string(),
        Some(FilterSpec::Cesql(e)) => format!("cesql: {e}"),
        Some(other) => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn mode_text(m: GroupMode) -> &'static str {
    match m {
        GroupMode::Clustering => "CLUSTERING",
        GroupMode::Broadcasting => "BROADCASTING",
    }
}

async fn create_subscription(api: &Api, spec: &SubscriptionSpec) -> anyhow::Result<()> {
    let (status, answer): (_, Value) = api
        .json(Method::POST, "/v1/subscriptions", |r| r.json(spec))
        .await?;
    match api.output {
        Output::Json => api.print_json(&answer)?,
        Output::Table if status == StatusCode::CREATED => println!(
            "created subscription {} on topic {} ({})",
            spec.name,
            spec.topic,
            sink_text(&spec.sink)
        ),
        Output::Table => println!(
            "subscription {} exists with this spec (unchanged)",
            spec.name
        ),
    }
    Ok(())
}

/// Subscriptions: administration and pulling.
pub async fn subscription(global: &GlobalArgs, args: SubArgs) -> anyhow::Result<()> {
    let api = Api::new(global)?;
    let Some(action) = args.action else {
        let f = args.follow;
        let Some(name) = f.subscription else {
            return Err(usage(
                "give a subcommand (create, list, get, delete, pull; see `meshd sub --help`) or --subscription NAME",
            ));
        };
        if let Some(topic) = f.topic {
            let filter = match &f.filter {
                Some(s) => Some(
                    serde_json::from_value::<FilterSpec>(json_or_file("--filter", s)?)
                        .map_err(|e| usage(format!("--filter is not a filter: {e}")))?,
                ),
                None => None,
            };
            let spec = SubscriptionSpec {
                name: name.clone(),
                topic,
                group: String::new(),
                mode: GroupMode::Clustering,
                filter,
                transform: None,
                sink: Sink::Pull(PullSink::default()),
                delivery: DeliveryPolicy::default(),
                start: StartPosition::Latest,
                standby: Vec::new(),
            };
            spec.clone()
                .compile()
                .map_err(|e| usage(format!("invalid subscription: {e}")))?;
            let (_, _answer): (_, Value) = api
                .json(Method::POST, "/v1/subscriptions", |r| r.json(&spec))
                .await?;
        }
        return pull(&api, &name, &f.pull).await;
    };
    match action {
        SubAction::Create(args) => create_subscription(&api, &args.spec()?).await?,
        SubAction::List => {
            let list: SubscriptionList = api.get("/v1/subscriptions").await?;
            match api.output {
                Output::Json => api.print_json(&list)?,
                Output::Table => {
                    let mut t =
                        Table::new(["NAME", "TOPIC", "GROUP", "MODE", "START", "SINK", "FILTER"]);
                    for s in &list.subscriptions {
                        t.row([
                            s.name.clone(),
                            s.topic.clone(),
                            s.group.clone(),
                            mode_text(s.mode).to_string(),
                            s.start.describe(),
                            sink_text(&s.sink),
                            filter_text(&s.filter),
                        ]);
                    }
                    t.print_or("no subscriptions");
                }
            }
        }
        SubAction::Get { name } => {
            let name = name_segment("subscription", &name)?;
            let s: SubscriptionSpec = api.get(&format!("/v1/subscriptions/{name}")).await?;
            match api.output {
                Output::Json => api.print_json(&s)?,
                Output::Table => {
                    let d = &s.delivery;
                    let mut t = Table::new(["FIELD", "VALUE"]);
                    t.row(["name".into(), s.name.clone()]);
                    t.row(["topic".into(), s.topic.clone()]);
                    t.row(["group".into(), s.group.clone()]);
                    t.row(["mode".into(), mode_text(s.mode).into()]);
                    t.row(["start".into(), s.start.describe()]);
                    t.row(["sink".into(), sink_text(&s.sink)]);
                    match &s.sink {
                        Sink::Webhook(w) => t.row([
                            "timeout".into(),
                            meshd_core::duration::format(Duration::from_millis(w.timeout_ms)),
                        ]),
                        Sink::Pull(p) => t.row([
                            "ack deadline".into(),
                            meshd_core::duration::format(Duration::from_millis(p.ack_deadline_ms)),
                        ]),
                    }
                    t.row(["filter".into(), filter_text(&s.filter)]);
                    t.row([
                        "transform".into(),
                        or_dash(
                            s.transform
                                .as_ref()
                                .map(|x| serde_json::to_string(x).unwrap_or_default()),
                        ),
                    ]);
                    t.row(["max attempts".into(), d.max_attempts.to_string()]);
                    t.row(["max in flight".into(), d.max_in_flight.to_string()]);
                    t.row([
                        "dead-letter topic".into(),
                        or_dash(d.dead_letter_topic.clone()),
                    ]);
                    t.print();
                }
            }
        }
        SubAction::Status { name } => {
            let name = name_segment("subscription", &name)?;
            let s: SubscriptionStatus =
                api.get(&format!("/v1/subscriptions/{name}/status")).await?;
            match api.output {
                Output::Json => api.print_json(&s)?,
                Output::Table => print!("{}", status_text(&s)),
            }
        }
        SubAction::Delete { name } => {
            let name = name_segment("subscription", &name)?;
            api.send(Method::DELETE, &format!("/v1/subscriptions/{name}"), |r| r)
                .await?;
            match api.output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted subscription {name}"),
            }
        }
        SubAction::Pull { name, pull: opts } => pull(&api, &name, &opts).await?,
        SubAction::Seek {
            name,
            time,
            offset,
            earliest,
            latest: _,
        } => {
            let name = name_segment("subscription", &name)?;
            let otherwise = if earliest {
                StartPosition::Earliest
            } else {
                StartPosition::Latest
            };
            let to = position_args(&time, &offset, otherwise, ("--time", "--offset"))?;
            to.validate("")
                .map_err(|e| usage(format!("invalid position: {e}")))?;
            let (_, answer): (_, SeekResponse) = api
                .json(
                    Method::POST,
                    &format!("/v1/subscriptions/{name}/seek"),
                    |r| r.json(&to),
                )
                .await?;
            match api.output {
                Output::Json => api.print_json(&answer)?,
                Output::Table => {
                    println!("subscription {name} moved to {}", to.describe());
                    let mut t = Table::new(["PARTITION", "NEXT OFFSET"]);
                    for (p, o) in &answer.positions {
                        t.row([p.to_string(), o.to_string()]);
                    }
                    t.print();
                }
            }
        }
    }
    Ok(())
}

/// `meshd sub status` as text: the summary, then one row per partition.
fn status_text(s: &SubscriptionStatus) -> String {
    let mut t = Table::new(["FIELD", "VALUE"]);
    t.row(["name".into(), s.name.clone()]);
    t.row(["topic".into(), s.topic.clone()]);
    t.row([
        "group".into(),
        format!("{} ({})", s.group, mode_text(s.mode)),
    ]);
    let delivering = if s.delivering {
        "delivering"
    } else {
        "not delivering"
    };
    t.row([
        "node".into(),
        format!("{} in cluster {} ({delivering})", s.node, s.cluster),
    ]);
    if s.active_cluster != s.cluster && !s.active_cluster.is_empty() {
        t.row([
            "delivered by".into(),
            format!("cluster {} (took it over)", s.active_cluster),
        ]);
    }
    t.row(["backlog".into(), format!("{} events", s.backlog_events)]);
    t.row([
        "oldest undelivered".into(),
        if s.backlog_events == 0 {
            "-".into()
        } else {
            format!("{:.1}s ago", s.backlog_seconds)
        },
    ]);
    t.row(["in flight".into(), s.in_flight.to_string()]);
    t.row(["delivered".into(), s.delivered.to_string()]);
    t.row(["retried".into(), s.retried.to_string()]);
    t.row(["dead-lettered".into(), s.dead_lettered.to_string()]);
    t.row(["filtered out".into(), s.filtered_out.to_string()]);
    t.row([
        "last error".into(),
        match &s.last_error {
            None => "-".into(),
            Some(e) => format!(
                "{} at {}",
                e.message,
                meshd_certs::names::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms))
            ),
        },
    ]);
    let mut out = t.render();
    let mut p = Table::new(["PARTITION", "COMMITTED", "END", "BACKLOG", "OLDEST"]);
    for (n, ps) in &s.partitions {
        p.row([
            n.to_string(),
            ps.committed.to_string(),
            ps.end.to_string(),
            ps.backlog_events.to_string(),
            if ps.backlog_events == 0 {
                "-".into()
            } else {
                format!("{:.1}s", ps.backlog_seconds)
            },
        ]);
    }
    out.push('\n');
    out.push_str(&p.render());
    out
}

/// Pulls and acknowledges events, printing each event as one JSON line on stdout.
async fn pull(api: &Api, name: &str, opts: &PullOptions) -> anyhow::Result<()> {
    let name = name_segment("subscription", name)?;
    meshd_core::api::check_name("consumer", &opts.consumer).map_err(|e| usage(e.message))?;
    if opts.wait > Duration::from_secs(60) {
        return Err(usage("--wait: at most 60s"));
    }
    let wait = meshd_core::duration::format(opts.wait).replace(' ', "");
    let until = if opts.count == 0 {
        "until interrupted".to_string()
    } else {
        format!("until {} events", opts.count)
    };
    eprintln!(
        "waiting for events on subscription {name} as consumer {} ({until}; Ctrl-C stops)",
        opts.consumer
    );
    let mut got = 0u64;
    loop {
        let max = if opts.count == 0 {
            u64::from(opts.max)
        } else {
            (opts.count - got).min(u64::from(opts.max))
        };
        let path = format!(
            "/v1/subscriptions/{name}/events?max={max}&wait={wait}&consumer={}",
            opts.consumer
        );
        let answer: PullResponse = api.get(&path).await?;
        if answer.events.is_empty() {
            continue;
        }
        let mut ack_ids = Vec::with_capacity(answer.events.len());
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for e in &answer.events {
                writeln!(out, "{}", e.event).context("writing to standard output")?;
                ack_ids.push(e.ack_id.clone());
            }
            out.flush().context("writing to standard output")?;
        }
        let n = ack_ids.len() as u64;
        let ack = AckRequest {
            ack_ids,
            consumer: Some(opts.consumer.clone()),
        };
        let (_, acked): (_, AckResponse) = api
            .json(
                Method::POST,
                &format!("/v1/subscriptions/{name}/ack"),
                |r| r.json(&ack),
            )
            .await?;
        if !acked.unknown.is_empty() {
            eprintln!(
                "{} events were acknowledged too late (past the ack deadline) and will be handed out again",
                acked.unknown.len()
            );
        }
        got += n;
        if opts.count > 0 && got >= opts.count {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// meshd mesh

/// `meshd mesh`
#[derive(clap::Args)]
pub struct MeshArgs {
    #[command(subcommand)]
    action: MeshAction,
}

#[derive(clap::Subcommand)]
enum MeshAction {
    /// The federation bridge's view: clusters, links, their state and lag (GET /v1/mesh).
    Status,
    /// Take a subscription with standby clusters over here (run against a node of the
    /// cluster taking over: a standby when the home is lost, or the home taking it back).
    Failover {
        /// The subscription's name.
        subscription: String,
        /// The cluster where it was made.
        #[arg(long)]
        home: String,
    },
}

/// `meshd trace ID --source S`: an event's life across the mesh.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// The event's id.
    id: String,
    /// The event's source.
    #[arg(long)]
    source: String,
    /// Time the other nodes and clusters get to answer (at most 30s).
    #[arg(long, default_value = "2s", value_parser = crate::positive_duration_arg)]
    timeout: Duration,
}

/// The trace of one event (GET /v1/trace), as a table of its records then the clusters
/// asked, or the answer as JSON.
pub async fn trace(global: &GlobalArgs, args: TraceArgs) -> anyhow::Result<()> {
    let api = Api::new(global)?;
    let mut path = url::Url::parse("http://x/v1/trace").expect("a valid URL");
    path.query_pairs_mut()
        .append_pair("source", &args.source)
        .append_pair("id", &args.id)
        .append_pair("timeout_ms", &args.timeout.as_millis().to_string());
    let path = format!("/v1/trace?{}", path.query().unwrap_or_default());
    let answer: meshd_core::api::TraceAnswer = api.get(&path).await?;
    if api.output == Output::Json {
        return api.print_json(&answer);
    }
    println!(
        "event {} from {}: {} records",
        answer.id,
        answer.source,
        answer.records.len()
    );
    println!();
    let mut t = Table::new(["TIME", "CLUSTER", "NODE", "KIND", "DETAILS"]);
    for r in &answer.records {
        let (kind, details) = trace_kind_text(&r.kind);
        t.row([
            meshd_core::api::format_time_ms(r.at_ms),
            r.cluster.clone(),
            r.node.clone(),
            kind.to_string(),
            details,
        ]);
    }
    t.print_or("no records (unknown event, or older than the nodes' --trace-retention)");
    println!();
    let mut c = Table::new(["CLUSTER", "ANSWERED", "RECORDS", "ERROR"]);
    for cl in &answer.clusters {
        c.row([
            cl.cluster.clone(),
            if cl.answered { "yes" } else { "no" }.to_string(),
            cl.records.to_string(),
            or_dash(cl.error.clone()),
        ]);
    }
    c.print();
    Ok(())
}

/// A trace record's kind and its details, for the table.
fn trace_kind_text(k: &meshd_core::api::TraceKind) -> (&'static str, String) {
    use meshd_core::api::TraceKind as K;
    match k {
        K::Stored {
            topic,
            partition,
            offset,
        } => (
            "stored",
            format!("{topic} partition {partition} offset {offset}"),
        ),
        K::Forwarded { peer, topic } => ("forwarded", format!("to {peer} ({topic})")),
        K::Received {
            peer,
            topic,
            origin,
        } => (
            "received",
            format!("from {peer} ({topic}, published in {origin})"),
        ),
        K::Duplicate { peer, topic } => ("duplicate", format!("from {peer} ({topic})")),
        K::Matched { subscription } => ("matched", subscription.clone()),
        K::NotMatched { subscription } => ("not_matched", subscription.clone()),
        K::Delivered {
            subscription,
            attempt,
            status,
            latency_ms,
        } => (
            "delivered",
            format!(
                "{subscription} attempt {attempt}{} after {latency_ms} ms",
                status.map(|s| format!(" status {s}")).unwrap_or_default()
            ),
        ),
        K::Retried {
            subscription,
            attempt,
            error,
        } => (
            "retried",
            format!("{subscription} attempt {attempt}: {error}"),
        ),
        K::DeadLettered {
            subscription,
            reason,
        } => ("dead_lettered", format!("{subscription}: {reason}")),
    }
}

/// Mesh status.
pub async fn mesh(global: &GlobalArgs, args: MeshArgs) -> anyhow::Result<()> {
    let api = Api::new(global)?;
    if let MeshAction::Failover { subscription, home } = args.action {
        let req = meshd_core::api::FailoverRequest { subscription, home };
        let (_, answer): (_, meshd_core::api::FailoverResponse) = api
            .json(Method::POST, "/v1/mesh/failover", |r| r.json(&req))
            .await?;
        if api.output == Output::Json {
            return api.print_json(&serde_json::to_value(&answer)?);
        }
        let start: Vec<String> = answer
            .start
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect();
        println!(
            "subscription {} (made in {}) is delivered by {} from term {}; started at partition:offset {}",
            answer.subscription,
            answer.home,
            answer.active,
            answer.term,
            start.join(" ")
        );
        return Ok(());
    }
    let raw: Value = match api.get("/v1/mesh").await {
        Ok(v) => v,
        Err(e) => {
            if let Some(f) = e.downcast_ref::<ApiFailure>() {
                if f.code() == Some("no_mesh") {
                    anyhow::bail!(
                        "{} runs no federation bridge, so it is in no mesh (a node joins one with --topology and --certs-dir; `meshd dev` runs three clusters in a mesh)",
                        api.base()
                    );
                }
            }
            return Err(e);
        }
    };
    if api.output == Output::Json {
        return api.print_json(&raw);
    }
    let status: MeshStatus =
        serde_json::from_value(raw).context("GET /v1/mesh: the answer is not a mesh status")?;
    println!(
        "cluster {} in mesh {} ({} clusters, {} links, {} duplicates dropped)",
        status.cluster,
        status.mesh,
        status.clusters.len(),
        status.links.len(),
        status.duplicates
    );
    println!();
    let mut c = Table::new(["CLUSTER", "REGION", "CLOUD", "BRIDGE"]);
    for cl in &status.clusters {
        c.row([
            cl.name.clone(),
            or_dash(cl.region.clone()),
            or_dash(cl.cloud.clone()),
            or_dash(cl.bridge.clone()),
        ]);
    }
    c.print_or("no clusters");
    println!();
    let mut l = Table::new([
        "PEER",
        "STATE",
        "LAG EVENTS",
        "LAG",
        "RTT",
        "SENT",
        "RECEIVED",
        "DUPLICATES",
        "LAST ERROR",
    ]);
    for link in &status.links {
        let mut state = link.state.clone();
        if link.paused {
            state.push_str(" (paused)");
        }
        l.row([
            link.peer.clone(),
            state,
            link.lag_events.to_string(),
            format!("{:.1}s", link.lag_seconds),
            or_dash(link.rtt_ms.map(|r| format!("{r:.1}ms"))),
            link.events_sent.to_string(),
            link.events_received.to_string(),
            link.duplicates.to_string(),
            or_dash(link.last_error.clone()),
        ]);
    }
    l.print_or("no links");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// meshd replay

/// `meshd replay`: re-deliver a topic's stored events of a time window to one subscription
/// (EventBridge-style), follow and cancel it.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(subcommand)]
    action: ReplayAction,
}

#[derive(clap::Subcommand)]
enum ReplayAction {
    /// Start a replay: the events stored in [--from, --to) that pass the filter (and the
    /// subscription's own) go to the subscription again, marked `meshdreplay=NAME`.
    Start {
        /// The target subscription (of --topic).
        #[arg(long)]
        subscription: String,
        /// The topic whose stored events are replayed.
        #[arg(long)]
        topic: String,
        /// Window start (RFC 3339): events stored at or after it.
        #[arg(long, value_name = "TIME")]
        from: String,
        /// Window end (RFC 3339; default now): events stored before it.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// The replay's name (default: generated).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List the replays of the node (or of the node delivering --subscription).
    List {
        /// Only the replays into this subscription (asked of the node delivering it).
        #[arg(long)]
        subscription: Option<String>,
    },
    /// One replay: state, window offsets and progress per partition, counts.
    Status {
        /// The replay.
        name: String,
        /// The target subscription (a node of a cluster then asks the node delivering it).
        #[arg(long)]
        subscription: Option<String>,
    },
    /// Cancel a replay: nothing more is handed out once this returns.
    Cancel {
        /// The replay.
        name: String,
        /// The target subscription (a node of a cluster then asks the node delivering it).
        #[arg(long)]
        subscription: Option<String>,
    },
}

fn replay_time(flag: &str, t: &str) -> anyhow::Result<meshd_core::api::StartTime> {
    meshd_core::api::StartTime::parse(t).map_err(|e| usage(format!("{flag}: {e}")))
}

fn subscription_query(subscription: &Option<String>) -> anyhow::Result<String> {
    Ok(match subscription {
        Some(s) => format!("?subscription={}", name_segment("subscription", s)?),
        None => String::new(),
    })
}

/// `meshd replay`.
pub async fn replay(global: &GlobalArgs, args: ReplayArgs) -> anyhow::Result<()> {
    use meshd_core::api::{ReplayList, ReplayRequest, ReplayStatus};
    let api = Api::new(global)?;
    match args.action {
        ReplayAction::Start {
            subscription,
            topic,
            from,
            to,
            name,
            filter,
        } => {
            let to = match to {
                Some(t) => replay_time("--to", &t)?,
                None => replay_time(
                    "--to",
                    &meshd_core::api::format_time_ms(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0),
                    ),
                )?,
            };
            let req = ReplayRequest {
                name,
                topic,
                from: replay_time("--from", &from)?,
                to,
                filter: filter.spec()?,
                subscription,
            };
            req.validate()
                .map_err(|e| usage(format!("invalid replay: {e}")))?;
            let (_, s): (_, ReplayStatus) = api
                .json(Method::POST, "/v1/replays", |r| r.json(&req))
                .await?;
            match api.output {
                Output::Json => api.print_json(&s)?,
                Output::Table => print!("{}", replay_text(&s)),
            }
        }
        ReplayAction::List { subscription } => {
            let list: ReplayList = api
                .get(&format!(
                    "/v1/replays{}",
                    subscription_query(&subscription)?
                ))
                .await?;
            match api.output {
                Output::Json => api.print_json(&list)?,
                Output::Table => {
                    let mut t = Table::new([
                        "NAME",
                        "STATE",
                        "SUBSCRIPTION",
                        "FROM",
                        "TO",
                        "REPLAYED",
                        "PROGRESS",
                    ]);
                    for r in &list.replays {
                        t.row([
                            r.name.clone(),
                            r.state.as_str().to_string(),
                            r.subscription.clone(),
                            r.from.clone(),
                            r.to.clone(),
                            r.events_replayed.to_string(),
                            format!("{:.0}%", r.progress * 100.0),
                        ]);
                    }
                    t.print_or("no replays");
                }
            }
        }
        ReplayAction::Status { name, subscription } => {
            let name = name_segment("replay", &name)?;
            let s: ReplayStatus = api
                .get(&format!(
                    "/v1/replays/{name}{}",
                    subscription_query(&subscription)?
                ))
                .await?;
            match api.output {
                Output::Json => api.print_json(&s)?,
                Output::Table => print!("{}", replay_text(&s)),
            }
        }
        ReplayAction::Cancel { name, subscription } => {
            let name = name_segment("replay", &name)?;
            let (_, s): (_, ReplayStatus) = api
                .json(
                    Method::POST,
                    &format!(
                        "/v1/replays/{name}/cancel{}",
                        subscription_query(&subscription)?
                    ),
                    |r| r,
                )
                .await?;
            match api.output {
                Output::Json => api.print_json(&s)?,
                Output::Table => print!("{}", replay_text(&s)),
            }
        }
    }
    Ok(())
}

/// A replay's status as text: the summary, then one row per partition.
fn replay_text(s: &meshd_core::api::ReplayStatus) -> String {
    let mut t = Table::new(["FIELD", "VALUE"]);
    t.row(["name".into(), s.name.clone()]);
    t.row(["state".into(), s.state.as_str().to_string()]);
    t.row([
        "target".into(),
        format!("subscription {} of topic {}", s.subscription, s.topic),
    ]);
    t.row(["window".into(), format!("[{}, {})", s.from, s.to)]);
    t.row(["filter".into(), filter_text(&s.filter)]);
    t.row(["node".into(), s.node.clone()]);
    t.row(["scanned".into(), s.events_scanned.to_string()]);
    t.row(["replayed".into(), s.events_replayed.to_string()]);
    t.row(["progress".into(), format!("{:.1}%", s.progress * 100.0)]);
    t.row(["created".into(), s.created.clone()]);
    t.row([
        "ended".into(),
        s.ended.clone().unwrap_or_else(|| "-".into()),
    ]);
    if let Some(e) = &s.error {
        t.row(["error".into(), e.clone()]);
    }
    let mut out = t.render();
    let mut p = Table::new(["PARTITION", "START", "END", "NEXT"]);
    for (n, w) in &s.partitions {
        p.row([
            n.to_string(),
            w.start.to_string(),
            w.end.to_string(),
            w.next.to_string(),
        ]);
    }
    out.push_str(&p.render());
    out
}
