//! The web console in a real browser: headless Chromium (Debian `chromium`) driven over
//! WebDriver (`chromium-driver`, spawned per test and killed with its browser when the
//! guard drops, also on panic). scripts/test.sh installs both.
//!
//! - A 3-cluster `meshd dev`: the first cluster's console shows the three clusters and
//!   their links on the map and the topic; an event published in the first cluster is
//!   delivered in the third, whose console's subscription page counts it; the filter
//!   sandbox answers; the event's trace shows its delivery in the third cluster.
//! - A node with an internal token: the console asks for it; hostile strings (a drill
//!   report's scenario and notes, a searched event id) are shown as text, never as markup.
//!
//! `MESHD_CONSOLE_SCREENSHOT=docs/console.png` saves the mesh view of the first test.

mod common;
mod federation_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, Meshd, Sink};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for something the page shows (it polls every 2 s).
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// A `chromedriver` in its own process group (the browsers it starts are in it too),
/// killed as a group on drop.
struct ChromeDriver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        use std::os::unix::process::CommandExt as _;
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: scripts/test.sh installs Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: tempfile::tempdir().expect("profile dir"),
        };
        rx.recv_timeout(Duration::from_secs(30))
            .expect("chromedriver did not start within 30s");
        driver
    }

    /// A browser session: headless Chromium with a fresh profile, nothing from the network.
    async fn session(&self) -> Client {
        let profile = self._profile.path().to_str().expect("utf-8 path");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-breakpad", "--disable-crash-reporter",
                    "--disable-dev-shm-usage", "--window-size=1100,820",
                    format!("--user-data-dir={profile}"),
                ],
            },
        });
        let caps = caps.as_object().expect("an object").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it started.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Texts of the elements `css` selects.
async fn texts(b: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in b.find_all(Locator::Css(css)).await.unwrap_or_default() {
        out.push(e.text().await.unwrap_or_default());
    }
    out
}

/// Waits until `css` selects at least `n` elements; returns their texts.
async fn wait_for(b: &Client, what: &str, css: &str, n: usize) -> Vec<String> {
    eventually(what, PAGE_WAIT, || async {
        let t = texts(b, css).await;
        (t.len() >= n).then_some(t)
    })
    .await
}

async fn fill(b: &Client, css: &str, text: &str) {
    let e = b.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_mesh_and_the_trace_of_an_event_across_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = Meshd::spawn_dev(&data);
    let c = common::client();
    let line_after = |prefix: String| {
        let lines = dev.stdout.clone();
        async move {
            eventually(&format!("meshd dev prints {prefix:?}"), PAGE_WAIT, || {
                let l = lines.lock().unwrap().clone();
                let p = prefix.clone();
                async move {
                    l.iter()
                        .find_map(|x| x.strip_prefix(&p).map(str::to_string))
                }
            })
            .await
        }
    };
    let console = line_after("cluster dev console ".into()).await;
    assert_eq!(console, format!("{}/ui/", dev.url));
    let dev3 = line_after("cluster dev-3 node ".into()).await;

    // A subscriber in the third cluster, two links away.
    common::create_topic(&c, &dev.url, "orders", json!({"partitions": 2})).await;
    eventually("the catalog makes orders in dev-3", PAGE_WAIT, || async {
        let t = common::try_get_json(&c, &format!("{dev3}/v1/topics/orders")).await?;
        (t["name"] == "orders").then_some(())
    })
    .await;
    let sink = Sink::start(|_, _| 204).await;
    let (status, body) = common::subscribe(
        &c,
        &dev3,
        federation_support::webhook_subscription("far", "orders", &sink.url),
    )
    .await;
    assert!(status < 300, "subscribe in dev-3: {body}");
    federation_support::wait_interest(&c, &dev, "dev-2", "dev-3", "orders").await;

    let driver = ChromeDriver::start();
    let b = driver.session().await;
    b.goto(&console).await.expect("load the console");
    let clusters = wait_for(
        &b,
        "three clusters on the map",
        "#map [data-cluster] text.name",
        3,
    )
    .await;
    assert_eq!(
        clusters,
        ["dev", "dev-2", "dev-3"].map(String::from).to_vec()
    );
    eventually(
        "dev's link to dev-2 drawn as connected",
        PAGE_WAIT,
        || async {
            let e = b
                .find(Locator::Css("#map [data-link='dev|dev-2']"))
                .await
                .ok()?;
            (e.attr("data-state").await.ok()?? == "connected").then_some(())
        },
    )
    .await;
    wait_for(
        &b,
        "the link dev-2—dev-3 (seen through dev's route to dev-3)",
        "#map [data-link='dev-2|dev-3']",
        1,
    )
    .await;
    let peers = texts(&b, "#links tbody tr td:first-child").await;
    assert_eq!(peers, ["dev-2"]);
    if let Ok(path) = std::env::var("MESHD_CONSOLE_SCREENSHOT") {
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
    }

    // An event published in dev reaches the subscriber in dev-3.
    let id = format!("console-{}", uuid::Uuid::now_v7());
    common::publish(
        &c,
        &dev.url,
        "orders",
        &[common::event(
            &id,
            "order.created",
            Some("k1"),
            json!({"total": 42}),
        )],
    )
    .await;
    eventually("the event delivered in dev-3", PAGE_WAIT, || async {
        sink.ids().contains(&id).then_some(())
    })
    .await;

    // The topics view lists it with its partitions.
    b.goto(&format!("{console}#topics")).await.unwrap();
    let topics = wait_for(
        &b,
        "orders in the topic list",
        "#topics tr[data-topic='orders'] td",
        2,
    )
    .await;
    assert_eq!(topics[1], "2", "partitions: {topics:?}");

    // dev-3's console: the subscription's status page counts the delivery.
    b.goto(&format!("{dev3}/ui/#subscription/far"))
        .await
        .unwrap();
    eventually(
        "far's status page shows one delivery",
        PAGE_WAIT,
        || async {
            let d = texts(&b, "#sub-status dd[data-fact='delivered']").await;
            (d == ["1"]).then_some(())
        },
    )
    .await;
    let backlog = texts(&b, "#sub-status dd[data-fact='backlog']").await;
    assert!(backlog[0].starts_with("0 events"), "{backlog:?}");

    // The filter sandbox runs its sample pattern on its sample event, then a miss.
    b.goto(&format!("{console}#filters")).await.unwrap();
    click(&b, "#filter-form button").await;
    let verdict = wait_for(&b, "the sandbox's verdict", "#filter-verdict.ok", 1).await;
    assert_eq!(verdict, ["matches"]);
    fill(&b, "#filter-pattern", r#"{"type": ["something.else"]}"#).await;
    click(&b, "#filter-form button").await;
    let verdict = wait_for(&b, "the sandbox's verdict", "#filter-verdict.failed", 1).await;
    assert_eq!(verdict, ["does not match"]);

    // Its trace, searched in the console, shows the delivery in dev-3.
    b.goto(&format!("{console}#trace")).await.unwrap();
    fill(&b, "#trace-source", "/test").await;
    fill(&b, "#trace-id", &id).await;
    click(&b, "#trace-form button").await;
    wait_for(
        &b,
        "a delivered record of dev-3 in the trace",
        "#trace-records tr[data-cluster='dev-3'][data-kind='delivered']",
        1,
    )
    .await;
    let stored_in = texts(&b, "#trace-records tr[data-kind='stored'] td:nth-child(2)").await;
    assert!(stored_in.contains(&"dev".to_string()), "{stored_in:?}");
    b.close().await.expect("close the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_the_token_and_shows_hostile_strings_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let tok = common::internal_token_file(dir.path(), 0o600);
    let node = Meshd::start(
        &dir.path().join("n"),
        &["--internal-token-file", tok.to_str().unwrap()],
    );
    let c = common::client();
    let hostile = r#"<img src=x onerror="document.title='pwned'">"#;
    let note = "<script>document.title='pwned'</script>";
    let r = c
        .post(node.at("/v1/drills/reports"))
        .bearer_auth(common::INTERNAL_TOKEN)
        .json(
            &json!({"scenario": hostile, "mode": "mesh", "acknowledged": 3, "keys": 1,
            "lost": 0, "duplicated": 0, "reordered": 0, "clusters": {}, "notes": [note]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let driver = ChromeDriver::start();
    let b = driver.session().await;
    b.goto(&node.at("/ui/#drills")).await.unwrap();
    wait_for(&b, "the login form", "#login:not(.hidden) #login-token", 1).await;
    fill(&b, "#login-token", common::INTERNAL_TOKEN).await;
    click(&b, "#login-form button").await;
    eventually("the console names the node", PAGE_WAIT, || async {
        let w = texts(&b, "#whoami").await.join("");
        w.starts_with("cluster ").then_some(())
    })
    .await;
    let cells = wait_for(&b, "the drill report", "#drills tbody tr td", 11).await;
    assert_eq!(cells[1], hostile, "the scenario is shown as text");
    assert_eq!(cells[10], note, "the note is shown as text");
    assert!(b
        .find_all(Locator::Css("main img, main script"))
        .await
        .unwrap()
        .is_empty());

    // A searched event id comes back in the page as text too.
    b.goto(&node.at("/ui/#trace")).await.unwrap();
    fill(&b, "#trace-source", "/x").await;
    fill(&b, "#trace-id", hostile).await;
    click(&b, "#trace-form button").await;
    let title = eventually("the trace answer", PAGE_WAIT, || async {
        let t = texts(&b, "#trace-title").await.join("");
        (!t.is_empty() && !t.starts_with("Searching")).then_some(t)
    })
    .await;
    assert!(title.contains(hostile), "{title}");
    assert!(b
        .find_all(Locator::Css("main img, main script"))
        .await
        .unwrap()
        .is_empty());
    let page_title = b.title().await.unwrap();
    assert!(
        page_title.starts_with("meshd console: ") && !page_title.contains("pwned"),
        "{page_title}"
    );
    b.close().await.expect("close the session");
}
