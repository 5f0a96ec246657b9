//! A real `meshd node` under slow and hostile clients: 300 connections sending their
//! request head at 1 byte/s are closed by the header read timeout while a normal client's
//! publishes keep succeeding; a body that does not arrive gets 408; a head over the size
//! limit gets 431; connections over the limits (in total, per client IP) are refused at once
//! with 503 and counted, and normal requests work again once the flood is gone.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("node address")
}

async fn publish(c: &reqwest::Client, url: &str, i: usize) -> reqwest::StatusCode {
    c.post(format!("{url}/v1/topics/t/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event(&format!("e{i}"), "t", None, json!(i)).to_string())
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(reqwest::StatusCode::BAD_GATEWAY)
}

async fn create_topic(c: &reqwest::Client, url: &str) {
    let r = c
        .put(format!("{url}/v1/topics/t"))
        .json(&json!({}))
        .send()
        .await
        .expect("create topic");
    assert!(r.status().is_success(), "{}", r.status());
}

/// A client sending a request head one byte per second; answers how long the server
/// kept the connection open (`None`: still open after `limit`).
async fn slow_head(to: SocketAddr, limit: Duration) -> Option<Duration> {
    let head = b"POST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 2\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n{}";
    let mut s = TcpStream::connect(to).await.ok()?;
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    while t0.elapsed() < limit {
        tokio::select! {
            _ = tick.tick() => {
                if sent < head.len() {
                    if s.write_all(&head[sent..=sent]).await.is_err() {
                        return Some(t0.elapsed());
                    }
                    sent += 1;
                }
            }
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(t0.elapsed()),
                // An answer (the server may say 408 before closing): keep reading to the close.
                Ok(_) => {}
            },
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_heads_are_closed_while_publishes_keep_succeeding() {
    let d = tempfile::tempdir().unwrap();
    let header_timeout = Duration::from_secs(3);
    let n = Meshd::start(
        d.path(),
        &[
            "--header-timeout-ms",
            "3000",
            "--body-timeout-ms",
            "2000",
            "--max-connections-per-ip",
            "2000",
        ],
    );
    let c = client();
    create_topic(&c, &n.url).await;
    let to = addr(&n.url);
    // Well past the timeout, far below the 150 s the head would take at 1 byte/s.
    let limit = header_timeout * 5;
    let slow: Vec<_> = (0..300)
        .map(|_| tokio::spawn(slow_head(to, limit)))
        .collect();
    eventually(
        "the 300 slow connections are open",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let url = n.at("/metrics");
            async move {
                let text = get_text(&c, &url).await;
                let open = text
                    .lines()
                    .find_map(|l| l.strip_prefix("meshd_node_open_connections "))
                    .and_then(|v| v.trim().parse::<f64>().ok())?;
                (open >= 300.0).then_some(())
            }
        },
    )
    .await;
    // A normal client publishes throughout, each publish answered within a second.
    let mut i = 0;
    while slow.iter().any(|h| !h.is_finished()) && i < 5_000 {
        let t0 = Instant::now();
        let status = publish(&c, &n.url, i).await;
        let took = t0.elapsed();
        assert_eq!(status, 200, "publish {i}");
        assert!(
            took < Duration::from_secs(1),
            "publish {i} took {took:?} with slow clients connected"
        );
        i += 1;
    }
    assert!(
        i > 0,
        "no publish ran while the slow clients were connected"
    );
    for h in slow {
        let kept = h.await.unwrap();
        let kept = kept.expect("a slow connection was still open well past the header timeout");
        assert!(
            kept >= header_timeout - Duration::from_millis(500),
            "closed after {kept:?}, before the timeout"
        );
    }

    // A body that does not arrive: 408 and the connection closed.
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(
        b"POST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 100\r\n\r\n{\"id\"",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(20))
        .await
        .expect("the slow body's connection was not closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("request_timeout"), "{answer}");

    // A 64 KiB header: over the 16 KiB default, refused like the proxy refuses it.
    let r = c
        .get(n.at("/healthz"))
        .header("x-big", "a".repeat(64 * 1024))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        // hyper may close the connection while the client is still sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert_eq!(publish(&c, &n.url, 99_999).await, 200);
}

/// Opens a connection from `source` (a loopback address) that sends nothing.
async fn idle_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((source, 0))).unwrap();
    sock.connect(to).await.unwrap()
}

/// The node's `meshd_node_open_connections`, asked on a connection of its own (closed after).
async fn open_connections(to: SocketAddr) -> Option<i64> {
    let mut s = TcpStream::connect(to).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let text = read_to_close(&mut s, Duration::from_secs(5)).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("meshd_node_open_connections "))
        .and_then(|v| v.trim().parse().ok())
}

/// A connection the server must refuse: it answers 503 at once and closes.
async fn assert_refused(mut s: TcpStream, what: &str) {
    let answer = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{what}: not closed"));
    assert!(answer.starts_with("HTTP/1.1 503"), "{what}: {answer:?}");
    assert!(answer.contains("too_many_connections"), "{what}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_limits_are_refused_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let n = Meshd::start(
        d.path(),
        &[
            "--max-connections",
            "15",
            "--max-connections-per-ip",
            "10",
            "--header-timeout-ms",
            "60000",
        ],
    );
    let c = client();
    create_topic(&c, &n.url).await;
    let to = addr(&n.url);
    // The test client's own pooled connection would count too: let it go, and wait until
    // the node has seen it close (only the one asking is open then).
    drop(c);
    common::eventually(
        "the test client's connection closed at the node",
        Duration::from_secs(10),
        || async { (open_connections(to).await == Some(1)).then_some(()) },
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(idle_from([127, 0, 0, 1], to).await);
    }
    assert_refused(
        idle_from([127, 0, 0, 1], to).await,
        "11th connection from one IP",
    )
    .await;
    for _ in 0..5 {
        flood.push(idle_from([127, 0, 0, 2], to).await);
    }
    assert_refused(
        idle_from([127, 0, 0, 3], to).await,
        "16th connection in total",
    )
    .await;
    // A normal client is refused too while the flood holds every place ...
    let c = client();
    let r = c.get(n.at("/healthz")).send().await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 503);
    }
    // ... and served again once it is gone.
    drop(flood);
    eventually(
        "publishes succeed after the flood",
        Duration::from_secs(10),
        || {
            let (c, url) = (c.clone(), n.url.clone());
            async move { (publish(&c, &url, 1).await == 200).then_some(()) }
        },
    )
    .await;
    let metrics = get_text(&c, &n.at("/metrics")).await;
    for reason in ["max_connections", "max_connections_per_ip"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "meshd_node_connections_refused_total{{reason=\"{reason}\"}}"
            ))),
            "{reason}: {metrics}"
        );
    }
}
