//! The proxy streams: a request body reaches the node while the client is still sending
//! it (a stand-in node on a raw socket sees the head and the first half of a body whose
//! second half the client has not sent), a client that disconnects mid-body leaves the
//! node an incomplete request (its connection is closed, nothing half-done is stored on a
//! real node), a large batch passes, and garbage, a slowloris head and cut-off bodies
//! leave the proxy serving.

mod common;

use std::io::Read as _;
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// What the stand-in node saw of one request.
#[derive(Debug)]
enum Seen {
    /// The head and this many body bytes so far.
    Progress(String, usize),
    /// The connection closed after this many body bytes.
    Closed(usize),
}

/// A stand-in node: accepts one connection and reports what it reads, as it reads it.
fn stand_in_node() -> (String, std::sync::mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut data = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let body = match data.windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(i) => data.len() - i - 4,
                        None => 0,
                    };
                    let _ = tx.send(Seen::Closed(body));
                    return;
                }
                Ok(n) => {
                    data.extend_from_slice(&buf[..n]);
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..i]).to_string();
                        let _ = tx.send(Seen::Progress(head, data.len() - i - 4));
                    }
                }
            }
        }
    });
    (url, rx)
}

const HALF: usize = 256 * 1024;

fn binary_head(len: usize) -> String {
    format!(
        "POST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: big-1\r\n\
         ce-source: /stream\r\nce-type: t\r\ncontent-type: application/octet-stream\r\n\
         content-length: {len}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_streams_through_and_a_cut_off_one_is_not_completed() {
    let d = tempfile::tempdir().unwrap();
    let (node, seen) = stand_in_node();
    let p = Meshd::spawn(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            &node,
            "--no-auth",
        ],
        d.path(),
    );
    let mut s = TcpStream::connect(p.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(binary_head(2 * HALF).as_bytes()).await.unwrap();
    s.write_all(&vec![b'a'; HALF]).await.unwrap();
    // The node gets the head and the whole first half while the client holds the second:
    // the proxy forwards as it reads (it would wait for all 512 KiB if it buffered).
    let head = tokio::task::spawn_blocking(move || loop {
        match seen
            .recv_timeout(Duration::from_secs(30))
            .expect("the node hears from the proxy")
        {
            Seen::Progress(head, n) if n >= HALF => break (head, seen),
            Seen::Progress(..) => {}
            Seen::Closed(n) => panic!("closed after {n} body bytes"),
        }
    })
    .await
    .unwrap();
    let (head, seen) = head;
    assert!(
        head.contains(&format!("content-length: {}", 2 * HALF)),
        "{head}"
    );
    assert!(head.contains("meshd-producer-group: /stream"), "{head}");
    // The client goes away mid-body: the node's request is cut off (its connection closes
    // short of the declared length), so the node cannot act on it.
    drop(s);
    let closed = tokio::task::spawn_blocking(move || loop {
        match seen
            .recv_timeout(Duration::from_secs(30))
            .expect("the node's connection ends")
        {
            Seen::Closed(n) => break n,
            Seen::Progress(..) => {}
        }
    })
    .await
    .unwrap();
    assert!(
        closed < 2 * HALF,
        "the node got {closed} bytes of {}",
        2 * HALF
    );
    // The proxy is still up.
    let c = client();
    assert_eq!(c.get(p.at("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_clients_leave_the_proxy_serving_and_nothing_half_done_stored() {
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
            "--header-timeout-ms",
            "500",
            "--body-timeout-ms",
            "500",
        ],
        d.path(),
    );
    let c = client();
    create_topic(&c, &p.url, "t", json!({"partitions": 1})).await;
    let addr = p.url.trim_start_matches("http://").to_string();

    // Garbage on the port: 400, and the connection is closed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out:?}");

    // A slowloris head: closed by the header timeout, never answered 200.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(!out.contains(" 200 "), "{out:?}");

    // Bodies cut off mid-way (the client disconnects) and bodies that stall: several.
    for i in 0..5 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(binary_head(2 * HALF).as_bytes()).await.unwrap();
        s.write_all(&vec![b'b'; HALF / 2]).await.unwrap();
        if i % 2 == 0 {
            drop(s);
        } else {
            let out = read_to_close(&mut s, Duration::from_secs(10))
                .await
                .expect("closed");
            assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
        }
    }

    // A large batch streams through (it names its producer group, so the proxy does not
    // read it) and is stored whole.
    let events: Vec<Value> = (0..2000)
        .map(|i| {
            event(
                &format!("b{i}"),
                "t",
                None,
                json!({"n": i, "pad": "x".repeat(100)}),
            )
        })
        .collect();
    let r = c
        .post(p.at("/v1/topics/t/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .header("meshd-producer-group", "batcher")
        .body(serde_json::to_vec(&events).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Nothing of the cut-off publishes was stored: only the batch.
    assert_eq!(stored_count(&c, &n.url, "t").await, 2000);
    assert_eq!(c.get(p.at("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_and_documents_of_a_node_come_through_the_proxy() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tokens.json");
    let admin = create_token(&file, "admin:*");
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
        ],
        d.path(),
    );
    let c = client();
    for path in ["/ui/", "/ui/console.js", "/ui/console.css", "/openapi.json"] {
        let via = c.get(p.at(path)).send().await.unwrap();
        assert_eq!(via.status(), 200, "{path}");
        assert!(via.headers().contains_key("meshd-node"), "{path}");
        let via = via.bytes().await.unwrap();
        let direct = c
            .get(n.at(path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(via, direct, "{path}");
    }
    let openapi: Value = get_json(&c, &p.at("/openapi.json")).await;
    assert!(openapi["paths"].is_object());
    // Drill reports take the admin scope, like the rest of the cluster's state.
    let r = c.get(p.at("/v1/drills/reports")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(p.at("/v1/drills/reports"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let via: Value = r.json().await.unwrap();
    assert_eq!(via, get_json(&c, &n.at("/v1/drills/reports")).await);
}
