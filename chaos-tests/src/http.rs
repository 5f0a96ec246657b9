//! Small HTTP helpers over the public meshd API (used by the harness and the drills):
//! readiness, topics, subscriptions, `/v1/mesh` link state.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use meshd_core::api::{MeshLink, MeshStatus};

use crate::ChaosError;

/// An HTTP client with short timeouts (a chaos run must not hang on a dead peer). With
/// `MESHD_TOKEN` in the environment every request carries it as a bearer token (a proxy's
/// client token, or the cluster's internal token for nodes that require one).
pub fn client() -> Result<reqwest::Client, ChaosError> {
    crate::init_tls();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("MESHD_TOKEN") {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|e| ChaosError::Http(format!("MESHD_TOKEN: {e}")))?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| ChaosError::Http(format!("building the client: {e}")))
}

/// GET `url` as JSON, any 2xx.
/// `GET url` read as the API type `T` (a renamed field is a compile error here, a
/// missing one an error naming the URL).
pub async fn get_typed<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: &str,
) -> Result<T, ChaosError> {
    let v = get_json(c, url).await?;
    serde_json::from_value(v).map_err(|e| ChaosError::Http(format!("GET {url}: {e}")))
}

/// `GET base/v1/cluster`: a node's view of itself.
pub async fn cluster_status(
    c: &reqwest::Client,
    base: &str,
) -> Result<meshd_core::api::ClusterStatus, ChaosError> {
    get_typed(c, &format!("{base}/v1/cluster")).await
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> Result<Value, ChaosError> {
    let r = c
        .get(url)
        .send()
        .await
        .map_err(|e| ChaosError::Http(format!("GET {url}: {e}")))?;
    let status = r.status();
    let text = r
        .text()
        .await
        .map_err(|e| ChaosError::Http(format!("GET {url}: {e}")))?;
    if !status.is_success() {
        return Err(ChaosError::Http(format!("GET {url}: {status}: {text}")));
    }
    serde_json::from_str(&text).map_err(|e| ChaosError::Http(format!("GET {url}: {e}: {text}")))
}

/// The names of the subscriptions the node or proxy at `base` lists.
pub async fn subscription_names(
    c: &reqwest::Client,
    base: &str,
) -> Result<Vec<String>, ChaosError> {
    let url = format!("{base}/v1/subscriptions");
    let subs = get_json(c, &url).await?;
    let list = subs["subscriptions"]
        .as_array()
        .ok_or_else(|| ChaosError::Http(format!("GET {url}: no subscriptions list: {subs}")))?;
    Ok(list
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect())
}

/// Sends a JSON body with `method`; returns status and body (any status).
pub async fn send_json(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ChaosError> {
    let mut req = c.request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req
        .send()
        .await
        .map_err(|e| ChaosError::Http(format!("{method} {url}: {e}")))?;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Whether `base/readyz` answers 200.
pub async fn ready(c: &reqwest::Client, base: &str) -> bool {
    matches!(c.get(format!("{base}/readyz")).send().await, Ok(r) if r.status().is_success())
}

/// Polls `base/readyz` until it answers 200.
pub async fn wait_ready(base: &str, timeout: Duration) -> Result<(), ChaosError> {
    let c = client()?;
    let deadline = Instant::now() + timeout;
    loop {
        if ready(&c, base).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout(format!("{base}/readyz")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long setup calls (topic, subscription) keep retrying a 503: a cluster that has
/// just been through a fault (an etcd election, a node's lease renewal) may refuse a
/// catalog write for a moment, and a 503 means nothing was changed.
const SETUP_RETRY_FOR: Duration = Duration::from_secs(15);

/// [`send_json`], repeated while the answer is 503 (until [`SETUP_RETRY_FOR`] passes).
async fn send_json_retrying_503(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ChaosError> {
    let deadline = Instant::now() + SETUP_RETRY_FOR;
    loop {
        let (status, answer) = send_json(c, method.clone(), url, body).await?;
        if status != 503 || Instant::now() > deadline {
            return Ok((status, answer));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates `topic` (idempotent: 200 or 201); a 503 is retried for a while.
pub async fn put_topic(
    c: &reqwest::Client,
    base: &str,
    topic: &str,
    partitions: u32,
) -> Result<(), ChaosError> {
    let (status, body) = send_json_retrying_503(
        c,
        reqwest::Method::PUT,
        &format!("{base}/v1/topics/{topic}"),
        Some(&json!({ "partitions": partitions })),
    )
    .await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ChaosError::Http(format!(
            "PUT topic {topic} at {base}: {status} {body}"
        )))
    }
}

/// Creates a subscription; an existing one of that name (409) is fine, a 503 is retried
/// for a while.
pub async fn subscribe(c: &reqwest::Client, base: &str, spec: &Value) -> Result<(), ChaosError> {
    let (status, body) = send_json_retrying_503(
        c,
        reqwest::Method::POST,
        &format!("{base}/v1/subscriptions"),
        Some(spec),
    )
    .await?;
    if (200..300).contains(&status) || status == 409 {
        Ok(())
    } else {
        Err(ChaosError::Http(format!(
            "subscribe at {base}: {status} {body}"
        )))
    }
}

/// Deletes a subscription (404 is fine).
pub async fn unsubscribe(c: &reqwest::Client, base: &str, name: &str) -> Result<(), ChaosError> {
    let (status, body) = send_json(
        c,
        reqwest::Method::DELETE,
        &format!("{base}/v1/subscriptions/{name}"),
        None,
    )
    .await?;
    if (200..300).contains(&status) || status == 404 {
        Ok(())
    } else {
        Err(ChaosError::Http(format!(
            "unsubscribe {name} at {base}: {status} {body}"
        )))
    }
}

/// `GET base/v1/mesh`.
pub async fn mesh(c: &reqwest::Client, base: &str) -> Result<MeshStatus, ChaosError> {
    get_typed(c, &format!("{base}/v1/mesh")).await
}

/// The link to `peer` as `/v1/mesh` shows it (None when absent).
pub async fn link(
    c: &reqwest::Client,
    base: &str,
    peer: &str,
) -> Result<Option<MeshLink>, ChaosError> {
    let m = mesh(c, base).await?;
    Ok(m.links.into_iter().find(|l| l.peer == peer))
}

/// Whether every link in `/v1/mesh` is connected and not stalled or paused.
pub fn links_healthy(mesh: &MeshStatus) -> Result<(), String> {
    if mesh.links.is_empty() {
        return Err("no links in /v1/mesh".into());
    }
    for l in &mesh.links {
        if l.state != "connected" || l.paused {
            return Err(format!(
                "link to {} is {}{}",
                l.peer,
                l.state,
                if l.paused { " (paused)" } else { "" }
            ));
        }
    }
    Ok(())
}

/// Whether `node` (at `base`) learned from its peers an interest of every cluster in
/// `dests` on `topic`.
pub async fn knows_interest(
    c: &reqwest::Client,
    base: &str,
    dests: &[String],
    topic: &str,
) -> Result<bool, ChaosError> {
    let m = mesh(c, base).await?;
    Ok(dests.iter().all(|d| {
        m.learned_interest
            .values()
            .any(|entries| entries.iter().any(|e| e.dest == *d && e.topic == topic))
    }))
}
