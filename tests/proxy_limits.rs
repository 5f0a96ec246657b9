//! Rate limits and request protection of a real `meshd proxy`: a token's burst then 429
//! with Retry-After, a client IP's burst then 429, 413 for large bodies, 408 for a body
//! that does not arrive, a closed connection for a head that does not arrive, 400 for
//! garbage and malformed JSON, 431 for too many headers.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn publish_one(c: &reqwest::Client, base: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = c
        .post(format!("{base}/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event("e", "t", None, json!(1)).to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Sends raw bytes, then reads until the server closes or `wait` passes.
fn raw(url: &str, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(host_port(url)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let t0 = Instant::now();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 1") {
                    // Give the body a moment, then stop: we only look at the head.
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).to_string(), t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_and_ip_rate_limits() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "admin:*");
    let small = create_token(&file, "publish:orders");
    let n = Meshd::start(&d.path().join("n1"), &[]);
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &n.url,
            "--tokens",
            file.to_str().unwrap(),
            "--token-rate",
            "1",
            "--token-burst",
            "5",
        ],
        d.path(),
    );
    let c = client();
    create_topic_with(&c, &p.url, &admin).await;
    for i in 0..5 {
        let r = publish_one(&c, &p.url, Some(&small)).await;
        assert_eq!(r.status(), 200, "publish {i} within the burst");
    }
    let r = publish_one(&c, &p.url, Some(&small)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // Another token has its own bucket.
    assert_eq!(publish_one(&c, &p.url, Some(&admin)).await.status(), 200);
    // A batch counts its events: 10 events never fit a burst of 5, so the answer says so
    // (413), not 429 with a Retry-After that would only be followed by another 429.
    let batch: Vec<Value> = (0..10)
        .map(|i| event(&format!("b{i}"), "t", None, json!(i)))
        .collect();
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .bearer_auth(&small)
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(batch).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.headers().get("retry-after").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "batch_exceeds_burst", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("10 events") && msg.contains("burst of 5"),
        "{v}"
    );
    // The bucket refills: one per second.
    eventually("the token bucket refills", Duration::from_secs(5), || {
        let (c, url, t) = (c.clone(), p.url.clone(), small.clone());
        async move { (publish_one(&c, &url, Some(&t)).await.status() == 200).then_some(()) }
    })
    .await;

    // Per client IP, counted per request, before auth.
    let p2 = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &n.url,
            "--no-auth",
            "--ip-rate",
            "1",
            "--ip-burst",
            "3",
        ],
        d.path(),
    );
    for i in 0..3 {
        assert_eq!(
            publish_one(&c, &p2.url, None).await.status(),
            200,
            "request {i}"
        );
    }
    let r = publish_one(&c, &p2.url, None).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let metrics = common::get_text(&c, &p2.at("/metrics")).await;
    assert!(
        metrics.contains("meshd_proxy_rate_limited_total{kind=\"ip\"} 1"),
        "{metrics}"
    );
}

async fn create_topic_with(c: &reqwest::Client, base: &str, token: &str) {
    let r = c
        .put(format!("{base}/v1/topics/orders"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_header_and_slow_client_protection() {
    let d = tempfile::tempdir().unwrap();
    let n = Meshd::start(&d.path().join("n1"), &[]);
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &n.url,
            "--no-auth",
            "--max-body-bytes",
            "1024",
            "--max-headers",
            "32",
            "--body-timeout-ms",
            "500",
            "--header-timeout-ms",
            "1000",
        ],
        d.path(),
    );
    let c = client();
    create_topic(&c, &p.url, "orders", json!({})).await;

    // 413 by Content-Length, and for a chunked body past the limit.
    let big = event("big", "t", None, json!("x".repeat(2000))).to_string();
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The rest of the body is still on the connection: it must not be reused.
    assert_eq!(r.headers()["connection"], "close");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| {
                Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c)))
            })
            .collect::<Vec<_>>(),
    );
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(stream)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["connection"], "close");

    // Malformed JSON: a fast 400 from the proxy.
    let r = c
        .post(p.at("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "malformed_body");

    // Too many headers: 431.
    let mut rb = c.get(p.at("/v1/topics/orders"));
    for i in 0..40 {
        rb = rb.header(format!("x-h{i}"), "v");
    }
    assert_eq!(rb.send().await.unwrap().status(), 431);

    let url = p.url.clone();
    tokio::task::spawn_blocking(move || {
        // Garbage: 400.
        let (out, _) = raw(&url, b"GARBAGE \x01\x02\r\n\r\n", Duration::from_secs(5));
        assert!(out.starts_with("HTTP/1.1 400"), "garbage answered {out:?}");
        // A body that never arrives: 408 after the body timeout.
        let head = "POST /v1/topics/orders/events HTTP/1.1\r\nhost: x\r\n\
                    content-type: application/cloudevents+json\r\ncontent-length: 100\r\n\r\n{";
        let (out, took) = raw(&url, head.as_bytes(), Duration::from_secs(5));
        assert!(
            out.starts_with("HTTP/1.1 408"),
            "slow body answered {out:?}"
        );
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(4),
            "{took:?}"
        );
        // A head that never completes: the connection is closed after the header timeout.
        let (out, took) = raw(
            &url,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n",
            Duration::from_secs(10),
        );
        assert!(!out.starts_with("HTTP/1.1 200"), "{out:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    })
    .await
    .unwrap();

    // The proxy still serves.
    assert_eq!(
        publish(&c, &p.url, "orders", &[event("ok", "t", None, json!(1))])
            .await
            .len(),
        1
    );
}
