//! Real-process crash test of the embedded store.
//!
//! The parent re-executes this test binary as a child (`storm_child`, enabled by an
//! environment variable). The child opens the store and appends from several concurrent
//! tasks in a loop, printing every acknowledged record (`ACK partition offset id`) as soon
//! as its append returns. The parent reads those lines, sends SIGKILL in the middle of the
//! storm, reopens the store and checks: every acknowledged record is present exactly once
//! at its acknowledged position with the right payload, no record fails its checksum, and
//! offsets are contiguous from start to end. Several rounds run on the same directory, so
//! recovery after a kill is itself killed and recovered.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meshd_core::api::TopicConfig;
use meshd_node::store::embedded::{EmbeddedOptions, EmbeddedStore};
use meshd_node::store::{AppendRecord, EventStore, FsyncPolicy};

const ENV_DIR: &str = "MESHD_STORE_STORM_DIR";
const ENV_ROUND: &str = "MESHD_STORE_STORM_ROUND";
const ENV_FSYNC: &str = "MESHD_STORE_STORM_FSYNC";
const TOPIC: &str = "storm";
const PARTITIONS: u32 = 4;
const TASKS: u32 = 8;

/// The payload of a record id: deterministic, of varying length, so a record can be
/// checked byte for byte after recovery.
fn payload_for(id: &str) -> Vec<u8> {
    let h = id
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let len = 40 + (h % 400) as usize;
    let mut p = format!("{id}|").into_bytes();
    let fill = id.as_bytes();
    while p.len() < len {
        p.push(fill[p.len() % fill.len()]);
    }
    p
}

fn options(fsync: FsyncPolicy) -> EmbeddedOptions {
    EmbeddedOptions {
        fsync,
        fsync_interval: Duration::from_millis(50),
    }
}

/// The child: only does something when the parent started it.
#[test]
fn storm_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let round: u32 = std::env::var(ENV_ROUND)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let fsync: FsyncPolicy = std::env::var(ENV_FSYNC)
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(FsyncPolicy::Always);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = EmbeddedStore::open(Path::new(&dir), options(fsync)).unwrap();
        let config = TopicConfig {
            partitions: PARTITIONS,
            ..TopicConfig::default()
        };
        store.create_topic(TOPIC, &config).await.unwrap();
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0u64.. {
                    let n = 1 + (seq % 3) as u32;
                    let ids: Vec<String> = (0..n)
                        .map(|i| format!("r{round}-t{task}-s{seq}-i{i}"))
                        .collect();
                    let records = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| AppendRecord {
                            partition: (task + seq as u32 + i as u32) % PARTITIONS,
                            timestamp_ms: seq,
                            payload: Bytes::from(payload_for(id)),
                        })
                        .collect();
                    let appended = store.append(TOPIC, records).await.unwrap();
                    let mut lines = String::new();
                    for (a, id) in appended.iter().zip(&ids) {
                        lines.push_str(&format!("ACK {} {} {id}\n", a.partition, a.offset));
                    }
                    // One write per append (well under PIPE_BUF): lines arrive whole.
                    let mut out = std::io::stdout().lock();
                    out.write_all(lines.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        // The parent kills us; stop on our own if it never does.
        tokio::time::sleep(Duration::from_secs(120)).await;
        std::process::exit(3);
    });
}

/// Kills the child when dropped, also when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    partition: u32,
    offset: u64,
    id: String,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_string();
    Some(Ack {
        partition,
        offset,
        id,
    })
}

/// Runs one child on `dir`, kills it with SIGKILL after `kill_after` acknowledgements,
/// and returns every acknowledgement it printed.
fn storm_round(dir: &Path, round: u32, fsync: &str, kill_after: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "storm_child", "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_ROUND, round.to_string())
        .env(ENV_FSYNC, fsync)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(child);
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Ack>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    // A last line without its newline was cut by the kill: not an ack.
                    if buf.last() != Some(&b'\n') {
                        return;
                    }
                    if let Some(ack) = parse_ack(String::from_utf8_lossy(&buf).trim_end()) {
                        if tx.send(ack).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let mut acks = Vec::new();
    while acks.len() < kill_after {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(ack) => acks.push(ack),
            Err(e) => panic!(
                "round {round}: child stopped acknowledging after {} acks: {e}",
                acks.len()
            ),
        }
    }
    // SIGKILL in the middle of the storm (Child::kill sends SIGKILL on Unix).
    guard.0.kill().unwrap();
    let status = guard.0.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    // Everything printed before the kill was acknowledged.
    acks.extend(rx.iter());
    reader.join().unwrap();
    acks
}

/// What the reopened store holds: id -> (partition, offset).
fn verify_store(dir: &Path, fsync: FsyncPolicy) -> HashMap<String, (u32, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store: Arc<EmbeddedStore> = EmbeddedStore::open(dir, options(fsync)).unwrap();
        let mut found = HashMap::new();
        for p in 0..PARTITIONS {
            let b = store.bounds(TOPIC, p).await.unwrap();
            assert_eq!(b.start, 0, "no retention ran");
            let mut next = b.start;
            while next < b.end {
                // A bad checksum or a hole would fail this read.
                let records = store
                    .read(TOPIC, p, next, 500)
                    .await
                    .unwrap_or_else(|e| panic!("partition {p} at {next}: {e}"));
                assert!(
                    !records.is_empty(),
                    "partition {p}: nothing at {next} < end {}",
                    b.end
                );
                for r in records {
                    assert_eq!(r.offset, next, "contiguous offsets in partition {p}");
                    let text = String::from_utf8_lossy(&r.payload);
                    let id = text.split('|').next().unwrap_or_default().to_string();
                    assert_eq!(
                        r.payload.as_ref(),
                        payload_for(&id).as_slice(),
                        "payload of {id} at {p}/{next}"
                    );
                    if let Some(prev) = found.insert(id.clone(), (p, r.offset)) {
                        panic!("{id} stored twice: {prev:?} and {:?}", (p, r.offset));
                    }
                    next += 1;
                }
            }
            assert!(
                store.read(TOPIC, p, b.end, 10).await.unwrap().is_empty(),
                "nothing past the end"
            );
        }
        store.close().await.unwrap();
        found
    })
}

#[test]
fn kill_9_during_storm_loses_no_acknowledged_record() {
    kill_9_rounds("always", FsyncPolicy::Always);
}

/// `interval` acknowledges once the group commit reached the kernel (the write-ahead
/// tail), so a process kill loses nothing acknowledged either; only a machine crash may.
#[test]
fn kill_9_with_fsync_interval_loses_no_acknowledged_record() {
    kill_9_rounds("interval", FsyncPolicy::Interval);
}

fn kill_9_rounds(fsync: &str, policy: FsyncPolicy) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let mut all_acks: Vec<Ack> = Vec::new();
    for (round, kill_after) in [(0u32, 600usize), (1, 1500), (2, 300)] {
        let acks = storm_round(&dir, round, fsync, kill_after);
        assert!(acks.len() >= kill_after);
        all_acks.extend(acks);
        let found = verify_store(&dir, policy);
        for ack in &all_acks {
            assert_eq!(
                found.get(&ack.id),
                Some(&(ack.partition, ack.offset)),
                "fsync={fsync} round {round}: acknowledged {} missing or moved",
                ack.id
            );
        }
        assert!(found.len() >= all_acks.len());
        eprintln!(
            "fsync={fsync} round {round}: {} acknowledged so far, {} stored (the rest appended but killed before the ack was printed)",
            all_acks.len(),
            found.len()
        );
    }
}
