//! `meshd proxy`: run the proxy role, or manage its token file (`meshd proxy token ...`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use meshd_proxy::auth::{self, Scope, TokenStore};
use meshd_proxy::region_tokens::{RegionTokensConfig, RegistryTokens, Tokens};
use meshd_proxy::{Proxy, ProxyConfig, Rate};
use meshd_scheduler::registry::Registry;

/// `meshd proxy`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum ProxyCommand {
    /// Manage the token file (hashes only; the token is printed once on create).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Where `meshd proxy token` works: a token file, or a region's registry.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TokenTarget {
    /// The token file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The region's registry (`etcd://HOST:PORT[,HOST:PORT]`), where the tokens of proxies
    /// run with `--registry` live.
    #[arg(long)]
    registry: Option<String>,
}

#[derive(clap::Args)]
struct TokenCluster {
    /// The cluster (with `--registry`).
    #[arg(long, default_value = "local")]
    cluster: String,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Create a token; prints it (once) on stdout.
    Create {
        /// Scopes `action:pattern`, comma separated or repeated: publish, subscribe, admin on
        /// `*`, `prefix.*` or an exact topic; `cluster-admin` (no pattern) for drain,
        /// undrain and token management.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[command(flatten)]
        target: TokenTarget,
        #[command(flatten)]
        cluster: TokenCluster,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids and scopes, never secrets).
    List {
        #[command(flatten)]
        target: TokenTarget,
        #[command(flatten)]
        cluster: TokenCluster,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token id (the part after `mshd_`).
        id: String,
        #[command(flatten)]
        target: TokenTarget,
        #[command(flatten)]
        cluster: TokenCluster,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address to serve HTTP on (port 0: any free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// Where nodes are found: `memory` (in-process, for tests) or `etcd://host:port[,host:port]`.
    #[arg(long)]
    registry: Option<String>,
    /// Static node list `http://a:7700,http://b:7700` (when no registry is used).
    #[arg(long)]
    nodes: Option<String>,
    /// Cluster name.
    #[arg(long, default_value = "local")]
    cluster: String,
    /// The cluster's internal token file (mode 0600), sent to the nodes on every request;
    /// give the nodes the same file.
    #[arg(long, env = "MESHD_INTERNAL_TOKEN_FILE")]
    internal_token_file: Option<PathBuf>,
    /// Proxy id within the cluster.
    #[arg(long, default_value = "proxy-1")]
    proxy_id: String,
    /// The token file (JSON, hashes only); reloaded when it changes. With an etcd
    /// `--registry` the tokens live in etcd instead, and this file is imported into it once
    /// per cluster (by the first proxy started with a file), then no longer read.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Serve without authentication (development only).
    #[arg(long)]
    no_auth: bool,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    #[command(flatten)]
    listener: crate::listener_args::ListenerArgs,
    /// Deadline of a request across every upstream attempt, ms (503 past it).
    #[arg(long, default_value_t = 5_000)]
    deadline_ms: u64,
    /// Requests per second per client IP (0: unlimited).
    #[arg(long, default_value_t = 0)]
    ip_rate: u32,
    /// Burst per client IP (default: the rate).
    #[arg(long)]
    ip_burst: Option<u32>,
    /// Events per second per token (0: unlimited).
    #[arg(long, default_value_t = 0)]
    token_rate: u32,
    /// Burst per token (default: the rate).
    #[arg(long)]
    token_burst: Option<u32>,
    /// Producer-group routing state idle this long is dropped, seconds.
    #[arg(long, default_value_t = 300)]
    group_idle_secs: u64,
}

fn parse_scopes(list: &[String]) -> anyhow::Result<Vec<Scope>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Scope::parse(s).map_err(anyhow::Error::from))
        .collect()
}

/// Runs `meshd proxy ...`.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ProxyCommand::Token { command }) => token(command).await,
        None => serve(args.run).await,
    }
}

fn scope_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The region's tokens as `meshd proxy token --registry` sees them.
async fn region_tokens(spec: &str, cluster: &str) -> anyhow::Result<RegistryTokens> {
    if !spec.starts_with("etcd://") {
        bail!("--registry must be etcd://HOST:PORT[,HOST:PORT] (tokens live in etcd)");
    }
    let registry = crate::scheduler_cmd::connect_registry(spec, cluster).await?;
    RegistryTokens::start(
        registry,
        RegionTokensConfig {
            proxy_id: "cli".into(),
            import: None,
            first_sync_timeout: Duration::from_secs(10),
        },
    )
    .await
    .with_context(|| format!("reading the tokens of cluster {cluster} at {spec}"))
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            scopes,
            target,
            cluster,
            description,
        } => {
            let scopes = parse_scopes(&scopes)?;
            let (token, rec, place) = match (target.file, target.registry) {
                (Some(file), _) => {
                    let store = TokenStore::open(&file)?;
                    let (t, r) = store.create(scopes, &description)?;
                    (t, r, file.display().to_string())
                }
                (None, Some(spec)) => {
                    let tokens = region_tokens(&spec, &cluster.cluster).await?;
                    let (t, r) = tokens.create(scopes, &description).await?;
                    (t, r, format!("cluster {} at {spec}", cluster.cluster))
                }
                (None, None) => bail!("give --file FILE or --registry etcd://HOST:PORT"),
            };
            eprintln!(
                "created token {} with scopes {} in {place} (shown once; only its hash is stored)",
                rec.id,
                scope_list(&rec.scopes),
            );
            println!("{token}");
        }
        TokenCommand::List { target, cluster } => {
            let records = match (target.file, target.registry) {
                (Some(file), _) => auth::read_file(&file)?.tokens,
                (None, Some(spec)) => region_tokens(&spec, &cluster.cluster).await?.list(),
                (None, None) => bail!("give --file FILE or --registry etcd://HOST:PORT"),
            };
            for t in records {
                println!("{}\t{}\t{}", t.id, scope_list(&t.scopes), t.description);
            }
        }
        TokenCommand::Revoke {
            id,
            target,
            cluster,
        } => {
            match (target.file, target.registry) {
                (Some(file), _) => TokenStore::open(&file)?.revoke(&id)?,
                (None, Some(spec)) => {
                    region_tokens(&spec, &cluster.cluster)
                        .await?
                        .revoke(&id)
                        .await?
                }
                (None, None) => bail!("give --file FILE or --registry etcd://HOST:PORT"),
            }
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}

async fn serve(a: RunArgs) -> anyhow::Result<()> {
    let etcd = a
        .registry
        .as_deref()
        .is_some_and(|r| r.starts_with("etcd://"));
    if a.tokens.is_none() && !a.no_auth && !etcd {
        bail!("give --tokens FILE (create the first operator token with `meshd proxy token create --scopes cluster-admin,admin:* --file FILE`), --registry etcd://HOST:PORT (the region's tokens live in etcd), or --no-auth for development");
    }
    let mut config = ProxyConfig::new(&a.cluster, &a.proxy_id);
    if let Some(path) = &a.internal_token_file {
        config.internal_token = Some(meshd_core::internal::InternalToken::load(path)?);
    }
    config.max_body_bytes = a.max_body_bytes;
    config.listener = a.listener.config();
    config.request_deadline = Duration::from_millis(a.deadline_ms);
    config.group_idle_timeout = Duration::from_secs(a.group_idle_secs);
    config.ip_rate = (a.ip_rate > 0).then(|| Rate {
        per_second: a.ip_rate,
        burst: a.ip_burst.unwrap_or(a.ip_rate),
    });
    config.token_rate = (a.token_rate > 0).then(|| Rate {
        per_second: a.token_rate,
        burst: a.token_burst.unwrap_or(a.token_rate),
    });
    let nodes = a
        .nodes
        .as_deref()
        .map(meshd_proxy::static_nodes)
        .unwrap_or_default();
    if nodes.is_empty() && a.registry.is_none() {
        bail!("give --nodes http://a,http://b or --registry memory|etcd://host:port");
    }
    let registry = match a.registry.as_deref() {
        None => None,
        Some(spec) => Some(crate::scheduler_cmd::connect_registry(spec, &a.cluster).await?),
    };
    let tokens = match (&registry, a.no_auth) {
        (_, true) => None,
        (Some(registry), false) if etcd => Some(Tokens::Registry(
            RegistryTokens::start(
                registry.clone(),
                RegionTokensConfig {
                    proxy_id: a.proxy_id.clone(),
                    import: a.tokens.clone(),
                    first_sync_timeout: Duration::from_secs(10),
                },
            )
            .await
            .context("reading the region's tokens from etcd")?,
        )),
        _ => match &a.tokens {
            Some(path) => Some(Tokens::File(TokenStore::open(path)?)),
            None => None,
        },
    };
    let proxy = Proxy::with_tokens(config, nodes, tokens).context("starting the proxy")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let _member = match registry {
        None => None,
        Some(registry) => {
            let handle = meshd_proxy::follow_registry(&proxy, registry.clone(), &url)
                .await
                .context("following the registry")?;
            let handle = Arc::new(tokio::sync::Mutex::new(Some(handle)));
            tokio::spawn(follow_drain(
                proxy.clone(),
                registry,
                url.clone(),
                handle.clone(),
            ));
            Some(handle)
        }
    };
    println!("cluster {} proxy {} {url}", a.cluster, a.proxy_id);
    proxy.serve(listener, crate::shutdown_signal()).await?;
    if let Some(m) = _member {
        if let Some(h) = m.lock().await.take() {
            let _ = h.deregister().await;
        }
    }
    Ok(())
}

/// Leaves the registry while the proxy is drained (`POST /v1/admin/drain`), so nothing
/// discovers it; registers again on undrain.
async fn follow_drain(
    proxy: Proxy,
    registry: Arc<dyn Registry>,
    url: String,
    handle: Arc<tokio::sync::Mutex<Option<meshd_scheduler::registry::MemberHandle>>>,
) {
    let mut w = proxy.drain_watch();
    loop {
        let draining = *w.borrow_and_update();
        let mut h = handle.lock().await;
        if draining {
            if let Some(old) = h.take() {
                match old.deregister().await {
                    Ok(()) => tracing::info!("drained: left the registry"),
                    Err(e) => tracing::warn!("drain: revoking the lease: {e}"),
                }
            }
        } else if h.is_none() {
            let info = meshd_scheduler::registry::MemberInfo::new(
                meshd_scheduler::registry::Role::Proxy,
                proxy.config().proxy_id.clone(),
                &url,
            );
            match registry.register(info, Default::default()).await {
                Ok(new) => {
                    tracing::info!("undrained: registered again");
                    *h = Some(new);
                }
                Err(e) => {
                    tracing::warn!("undrain: registering: {e}");
                    drop(h);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        drop(h);
        if w.changed().await.is_err() {
            return;
        }
    }
}
