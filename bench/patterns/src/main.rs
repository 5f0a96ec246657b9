//! pattern-bench: meshd's `pattern::Matcher` against the `quamina` crate on the same
//! generated GeoJSON-like "city lots" events and the same patterns, per operator family.
//!
//! Usage: `pattern-bench [--events N] [--counts 1,100,10000] [--families exact,prefix,...]
//! [--budget-ms MS]`; `--full` means 200k events and counts up to 100k. Prints one table
//! row per (family, count): events per CPU-second for meshd on already parsed events
//! (`matches_value`, as for a CloudEvent whose data is JSON), meshd on the JSON bytes
//! (`matches_json`), quamina on the bytes, the ratios, and the total matches of each on the
//! first 5000 events (which must agree). A child process (`--mem FAMILY COUNT ENGINE`) measures resident
//! memory of 10k patterns per engine.

use std::process::Command;
use std::time::{Duration, Instant};

use meshd_core::pattern::{Matcher, Pattern};
use quamina::{Quamina, QuaminaBuilder};
use serde_json::{json, Value};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const SYL: [&str; 20] = [
    "AL", "BE", "CA", "DO", "EL", "FA", "GO", "HA", "IN", "JO", "KE", "LA", "MI", "NO", "OR", "PA",
    "RE", "SU", "TI", "VA",
];

/// Street name number `i` (8000 distinct: three syllables).
fn street(i: u64) -> String {
    let i = i % 8000;
    format!(
        "{}{}{}",
        SYL[(i / 400) as usize],
        SYL[((i / 20) % 20) as usize],
        SYL[(i % 20) as usize]
    )
}

fn event(r: &mut Rng, n: u64) -> Value {
    let street_no = r.below(5000);
    let lot_area = r.below(100_000_000) as f64 / 1000.0;
    let (x, y) = (
        -122.5 + r.below(10_000) as f64 / 1e5,
        37.7 + r.below(10_000) as f64 / 1e5,
    );
    let coords: Vec<Value> = (0..12)
        .map(|k| json!([x + k as f64 * 1e-5, y - k as f64 * 1e-5, 0]))
        .collect();
    json!({
        "type": "Feature",
        "properties": {
            "MAPBLKLOT": format!("{:07}", n % 9_999_999),
            "BLKLOT": format!("{:07}", (n * 7) % 9_999_999),
            "BLOCK_NUM": format!("{:04}", n % 9999),
            "LOT_NUM": format!("{:03}", n % 999),
            "FROM_ST": (r.below(3000)).to_string(),
            "TO_ST": (r.below(3000)).to_string(),
            "STREET": street(street_no),
            "ST_TYPE": ST_TYPES[r.below(4) as usize],
            "ODD_EVEN": if n & 1 == 0 { "E" } else { "O" },
            "LOT_AREA": lot_area
        },
        "geometry": {"type": "Polygon", "coordinates": [coords]}
    })
}

const ST_TYPES: [&str; 4] = ["ST", "AVE", "BLVD", "WAY"];

const FAMILIES: [&str; 7] = [
    "exact",
    "prefix",
    "suffix",
    "equals-ignore-case",
    "wildcard",
    "anything-but",
    "numeric",
];

fn pattern(family: &str, r: &mut Rng) -> Value {
    let w = street(r.below(8000));
    let leaf = match family {
        "exact" => json!([w]),
        "prefix" => json!([{"prefix": &w[..5]}]),
        "suffix" => json!([{"suffix": &w[1..]}]),
        "equals-ignore-case" => json!([{"equals-ignore-case": w.to_lowercase()}]),
        "wildcard" => json!([{"wildcard": format!("{}*{}", &w[..3], &w[5..])}]),
        "anything-but" => json!([{"anything-but": w}]),
        _ => {
            let lo = r.below(100_000) as f64;
            let width = 1 + r.below(1000);
            return json!({"properties": {"LOT_AREA": [{"numeric": [">=", lo, "<", lo + width as f64]}]}});
        }
    };
    json!({"properties": {"STREET": leaf}})
}

fn patterns(family: &str, count: usize) -> Vec<Value> {
    let mut r = Rng(0x5eed_0000 + family.len() as u64 * 7919 + count as u64);
    (0..count).map(|_| pattern(family, &mut r)).collect()
}

fn build_meshd(ps: &[Value]) -> Matcher {
    let mut m = Matcher::new();
    for (i, p) in ps.iter().enumerate() {
        match Pattern::compile(p) {
            Ok(c) => m.add(i as u64, &c),
            Err(e) => eprintln!("meshd refused {p}: {e}"),
        }
    }
    m
}

/// quamina with its automaton byte budget raised from the default 10 MiB (which refuses
/// 100k wildcards) to 4 GiB, so that every pattern is added.
fn build_quamina(ps: &[Value]) -> Quamina<u64> {
    let mut q = match QuaminaBuilder::new()
        .with_arena_byte_budget(4 << 30)
        .build()
    {
        Ok(q) => q,
        Err(_) => Quamina::new(),
    };
    let mut refused = 0;
    for (i, p) in ps.iter().enumerate() {
        if let Err(e) = q.add_pattern(i as u64, &p.to_string()) {
            if refused == 0 {
                eprintln!("quamina refused {p}: {e:?}");
            }
            refused += 1;
        }
    }
    if refused > 0 {
        eprintln!("quamina refused {refused} of {} patterns", ps.len());
    }
    q
}

/// CPU seconds used by this thread (user + system), from /proc; `None` if unavailable.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}

/// Runs `f` over events in order until all are done or the CPU budget is spent; returns
/// (events per CPU-second of this thread, total matches, events done). Uses CPU time so
/// that other load on the machine does not count against either engine.
fn measure(n: usize, budget: Duration, mut f: impl FnMut(usize) -> usize) -> (f64, usize, usize) {
    let wall = Instant::now();
    let cpu0 = cpu_secs();
    let spent = |cpu0: Option<f64>| match (cpu0, cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed().as_secs_f64(),
    };
    let mut matches = 0;
    let mut done = 0;
    // Cycle over the events until the budget is spent (at least one pass when the budget
    // allows), so that short runs are not below the clock's 10 ms resolution.
    loop {
        matches += f(done % n.max(1));
        done += 1;
        if done & 511 == 0 && spent(cpu0) > budget.as_secs_f64() {
            break;
        }
    }
    let secs = spent(cpu0).max(0.01);
    (done as f64 / secs, matches, done.min(n))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
        })
        .map(|pages| pages * 4)
        .unwrap_or(0)
}

fn mem_child(family: &str, count: usize, engine: &str) {
    let ps = patterns(family, count);
    let before = rss_kib();
    if engine == "meshd" {
        let m = build_meshd(&ps);
        let after = rss_kib();
        println!(
            "{} {}",
            after.saturating_sub(before),
            m.stats().index_bytes / 1024
        );
    } else {
        let q = build_quamina(&ps);
        let after = rss_kib();
        println!("{} {}", after.saturating_sub(before), q.pattern_count());
    }
}

fn mem_of(family: &str, count: usize, engine: &str) -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "?".into();
    };
    let out = Command::new(exe)
        .args(["--mem", family, &count.to_string(), engine])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_string(),
        Err(_) => "?".into(),
    }
}

fn main() {
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--mem") && args.len() == 5 {
        mem_child(&args[2], args[3].parse().unwrap_or(10_000), &args[4]);
        return;
    }
    let mut n_events = 20_000usize;
    let mut counts = vec![1usize, 100, 10_000];
    let mut families: Vec<String> = FAMILIES.iter().map(|s| s.to_string()).collect();
    let mut budget = Duration::from_millis(400);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--full" => {
                n_events = 200_000;
                counts = vec![1, 100, 10_000, 100_000];
                budget = Duration::from_millis(2000);
            }
            "--events" => n_events = it.next().and_then(|v| v.parse().ok()).unwrap_or(n_events),
            "--counts" => {
                if let Some(v) = it.next() {
                    counts = v.split(',').filter_map(|x| x.parse().ok()).collect();
                }
            }
            "--families" => {
                if let Some(v) = it.next() {
                    families = v.split(',').map(str::to_string).collect();
                }
            }
            "--budget-ms" => {
                budget =
                    Duration::from_millis(it.next().and_then(|v| v.parse().ok()).unwrap_or(400))
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }

    let mut r = Rng(0xc17e_10a5);
    let values: Vec<Value> = (0..n_events as u64).map(|i| event(&mut r, i)).collect();
    let bytes: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
    let avg = bytes.iter().map(Vec::len).sum::<usize>() / bytes.len().max(1);
    println!("events: {n_events} (avg {avg} bytes), budget per measurement {budget:?}");
    println!(
        "| family | patterns | meshd ev/s (parsed Value) | meshd ev/s (bytes) | quamina ev/s (bytes) | ratio parsed | ratio bytes | matches meshd / quamina (events measured) | add ms meshd / quamina |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    for fam in &families {
        for &count in &counts {
            if fam == "anything-but" && count > 10_000 {
                // Every event matches nearly every pattern: the run measures only output
                // size, and quamina already fails at 10k (see the table).
                println!("| {fam} | {count} | skipped | | | | | | |");
                continue;
            }
            let ps = patterns(fam, count);
            let t = Instant::now();
            let m = build_meshd(&ps);
            let add_m = t.elapsed();
            let t = Instant::now();
            let q = build_quamina(&ps);
            let add_q = t.elapsed();
            // quamina 0.7.0 panics inside its automaton on some large pattern sets
            // (e.g. 10k anything-but on one field); report that instead of aborting.
            let q_ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                values.iter().take(64).enumerate().for_each(|(i, _)| {
                    let _ = q.matches_for_event(&bytes[i]);
                })
            }))
            .is_ok();
            let check_n = n_events.min(5000);
            let check_m: usize = (0..check_n)
                .map(|i| m.matches_value(&values[i]).len())
                .sum();
            let (eps_m, _, _) = measure(n_events, budget, |i| m.matches_value(&values[i]).len());
            let (eps_p, _, _) = measure(n_events, budget, |i| {
                m.matches_json(&bytes[i]).map(|v| v.len()).unwrap_or(0)
            });
            let check_b: usize = (0..check_n)
                .map(|i| m.matches_json(&bytes[i]).map(|v| v.len()).unwrap_or(0))
                .sum();
            assert_eq!(
                check_m, check_b,
                "matches_json disagrees with matches_value"
            );
            if !q_ok {
                println!(
                    "| {fam} | {count} | {eps_m:.0} | {eps_p:.0} | quamina panicked | - | - | {check_m} / - ({check_n}) | {:.1} / {:.1} |",
                    add_m.as_secs_f64() * 1e3,
                    add_q.as_secs_f64() * 1e3
                );
                continue;
            }
            let (eps_q, _, _) = measure(n_events, budget, |i| {
                q.matches_for_event(&bytes[i]).map(|v| v.len()).unwrap_or(0)
            });
            // Compare match totals on the same prefix of events.
            let common = check_n;
            let check_q: usize = (0..common)
                .map(|i| q.matches_for_event(&bytes[i]).map(|v| v.len()).unwrap_or(0))
                .sum();
            let flag = if check_m == check_q { "" } else { " MISMATCH" };
            println!(
                "| {fam} | {count} | {eps_m:.0} | {eps_p:.0} | {eps_q:.0} | {:.2} | {:.2} | {check_m} / {check_q} ({common}){flag} | {:.1} / {:.1} |",
                eps_m / eps_q,
                eps_p / eps_q,
                add_m.as_secs_f64() * 1e3,
                add_q.as_secs_f64() * 1e3
            );
        }
    }

    println!();
    println!("| family | RSS KiB per 10k patterns meshd | quamina |");
    println!("|---|---:|---:|");
    for fam in &families {
        println!(
            "| {fam} | {} | {} |",
            mem_of(fam, 10_000, "meshd"),
            mem_of(fam, 10_000, "quamina")
        );
    }

    // Incremental add/remove cost in a matcher that already holds many patterns.
    let big = *counts.iter().max().unwrap_or(&10_000);
    let ps = patterns("exact", big);
    let mut m = build_meshd(&ps);
    let extra: Vec<Pattern> = patterns("prefix", 1000)
        .iter()
        .filter_map(|p| Pattern::compile(p).ok())
        .collect();
    let t = Instant::now();
    for (i, p) in extra.iter().enumerate() {
        m.add(1_000_000 + i as u64, p);
    }
    let add_us = t.elapsed().as_secs_f64() * 1e6 / extra.len().max(1) as f64;
    let t = Instant::now();
    for i in 0..extra.len() {
        m.remove(1_000_000 + i as u64);
    }
    let rm_us = t.elapsed().as_secs_f64() * 1e6 / extra.len().max(1) as f64;
    println!();
    println!("incremental: add {add_us:.2} µs, remove {rm_us:.2} µs per pattern into a matcher of {big} patterns");
}
