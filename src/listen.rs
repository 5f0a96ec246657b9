//! `meshd listen`: a webhook receiver for trying subscriptions out. Prints every pushed
//! event as one JSON line (CloudEvents structured form) and answers 200.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

/// `meshd listen`
#[derive(clap::Args)]
pub struct ListenArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Address to bind (0.0.0.0 to take pushes from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
}

/// Runs the receiver until Ctrl-C or SIGTERM.
pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("the bound address")?;
    let app = axum::Router::new().fallback(receive);
    eprintln!(
        "listening on http://{local} for webhook pushes (any path; point a subscription's --webhook here, e.g. http://{local}/hook); Ctrl-C stops"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

async fn receive(method: axum::http::Method, headers: HeaderMap, body: Bytes) -> StatusCode {
    if method != axum::http::Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    for line in describe(&headers, &body) {
        println!("{line}");
    }
    StatusCode::OK
}

/// The JSON lines one push prints: the event(s) in structured form; a body that is not a
/// CloudEvent (e.g. a transform's output without `ce-*` headers) as `{"content-type",
/// "body"}`, with the reason.
fn describe(headers: &HeaderMap, body: &[u8]) -> Vec<Value> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let media = content_type
        .as_deref()
        .map(meshd_core::event::media_type)
        .unwrap_or_default();
    let parsed = if media == "application/cloudevents+json" {
        meshd_core::event::parse_structured(body).map(|e| vec![e])
    } else if media == "application/cloudevents-batch+json" {
        meshd_core::event::parse_batch(body)
    } else {
        let hs = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        meshd_core::event::parse_binary(hs, content_type.as_deref(), body).map(|e| vec![e])
    };
    match parsed {
        Ok(events) => events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
            .collect(),
        Err(e) => {
            let body = match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
            };
            vec![json!({
                "content-type": content_type,
                "body": body,
                "not_a_cloudevent": e.to_string(),
            })]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_mode_becomes_a_structured_event() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "e1".parse().unwrap());
        h.insert("ce-source", "/shop".parse().unwrap());
        h.insert("ce-type", "order.created".parse().unwrap());
        h.insert("ce-partitionkey", "k%20one".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let lines = describe(&h, br#"{"total":42}"#);
        assert_eq!(lines.len(), 1);
        let e = &lines[0];
        assert_eq!(e["id"], "e1");
        assert_eq!(e["type"], "order.created");
        assert_eq!(e["partitionkey"], "k one");
        assert_eq!(e["data"]["total"], 42);
    }

    #[test]
    fn a_body_without_attributes_is_shown_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        let lines = describe(&h, br#"{"total":42}"#);
        assert_eq!(lines[0]["body"]["total"], 42);
        assert!(lines[0]["not_a_cloudevent"].is_string());
    }
}
