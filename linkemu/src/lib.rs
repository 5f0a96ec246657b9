//! meshd-linkemu: a userspace link emulator for loopback benchmarks and chaos tests.
//!
//! Owns: forwarding UDP datagrams ([`LinkEmulator`]) or TCP byte streams
//! ([`TcpLinkEmulator`]) from a listening address to one upstream address while adding a
//! one-way delay with optional jitter, random loss, a size filter and a cut, each
//! changeable at run time. This machine's kernel has no `netem` qdisc; this is the
//! replacement the federation benchmark and the chaos suite share.
//!
//! Must not touch: anything above the transport (it never parses what it forwards).
//!
//! # Model
//! - **Delay** applies to each direction separately: a datagram (or a chunk of a TCP
//!   stream) leaves `delay ± jitter` after it arrived, so the round trip is `2 × delay`.
//!   Jitter is uniform in `[-jitter, +jitter]`; departures stay in arrival order (a
//!   datagram never overtakes an earlier one), like `netem` with a rate limit.
//! - **Loss** (UDP only) drops each datagram with the given probability (deterministic
//!   for a given `seed`). TCP does not lose bytes; its loss setting is ignored.
//! - **Max datagram** (UDP only) drops datagrams longer than the limit: with QUIC this
//!   lets keep-alives and acknowledgements through and stops data packets, i.e. a link
//!   that is connected but makes no progress.
//! - **Cut** drops everything in both directions, including what is queued. For TCP it
//!   closes the live connections and refuses new ones until restored.
//!
//! Each emulator runs on a few OS threads (precise sleeps; no async runtime needed) and
//! stops them when dropped.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// The behaviour of an emulated link; the same in both directions.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way delay added to every datagram or chunk.
    pub delay: Duration,
    /// Uniform jitter around `delay` (`delay ± jitter`, never below zero).
    pub jitter: Duration,
    /// Probability of dropping a datagram, 0.0–1.0 (UDP only).
    pub loss: f64,
    /// Drop everything in both directions.
    pub cut: bool,
    /// Drop datagrams longer than this many bytes (UDP only).
    pub max_datagram: Option<usize>,
    /// Seed of the loss and jitter generator.
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            cut: false,
            max_datagram: None,
            seed: 0x6d65_7368_6421,
        }
    }
}

impl LinkConfig {
    /// A link with this one-way delay and nothing else.
    pub fn with_delay(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            ..LinkConfig::default()
        }
    }
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkEmuError {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Another socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Counters of an emulator (both directions together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Datagrams (UDP) or chunks (TCP) delivered.
    pub forwarded: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Dropped by the loss setting.
    pub dropped_loss: u64,
    /// Dropped because the link was cut.
    pub dropped_cut: u64,
    /// Dropped by the size filter.
    pub dropped_size: u64,
    /// TCP connections accepted.
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_cut: AtomicU64,
    dropped_size: AtomicU64,
    connections: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> LinkCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkCounters {
            forwarded: g(&self.forwarded),
            bytes: g(&self.bytes),
            dropped_loss: g(&self.dropped_loss),
            dropped_cut: g(&self.dropped_cut),
            dropped_size: g(&self.dropped_size),
            connections: g(&self.connections),
        }
    }
}

/// splitmix64: small, seedable, good enough for loss and jitter.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// State shared by the threads of one emulator.
struct Control {
    config: Mutex<LinkConfig>,
    /// Mirrors `config.cut` for the hot path.
    cut: AtomicBool,
    stop: AtomicBool,
    rng: Mutex<Rng>,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to do with one arriving datagram or chunk.
enum Verdict {
    /// Send it at this instant.
    Send(Instant),
    /// Drop it.
    Drop,
}

impl Control {
    fn new(config: LinkConfig) -> Arc<Control> {
        Arc::new(Control {
            cut: AtomicBool::new(config.cut),
            rng: Mutex::new(Rng(config.seed)),
            config: Mutex::new(config),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    fn update(&self, f: impl FnOnce(&mut LinkConfig)) {
        let mut c = lock(&self.config);
        f(&mut c);
        self.cut.store(c.cut, Ordering::SeqCst);
    }

    /// Decides the fate of `len` bytes arriving now; `last` is the direction's last
    /// departure time (kept so that nothing overtakes).
    fn judge(&self, len: usize, datagram: bool, last: &mut Instant) -> Verdict {
        let c = lock(&self.config).clone();
        if c.cut {
            self.counters.dropped_cut.fetch_add(1, Ordering::Relaxed);
            return Verdict::Drop;
        }
        if datagram {
            if c.max_datagram.is_some_and(|m| len > m) {
                self.counters.dropped_size.fetch_add(1, Ordering::Relaxed);
                return Verdict::Drop;
            }
            if c.loss > 0.0 && lock(&self.rng).unit() < c.loss {
                self.counters.dropped_loss.fetch_add(1, Ordering::Relaxed);
                return Verdict::Drop;
            }
        }
        let mut delay = c.delay;
        if !c.jitter.is_zero() {
            let u = lock(&self.rng).unit() * 2.0 - 1.0; // [-1, 1)
            let j = c.jitter.as_secs_f64() * u;
            delay = Duration::from_secs_f64((c.delay.as_secs_f64() + j).max(0.0));
        }
        let due = (Instant::now() + delay).max(*last);
        *last = due;
        Verdict::Send(due)
    }
}

/// Sleeps until `due` (or returns early when stopping).
/// A UDP socket with large kernel buffers (asked for 4 MiB each way; the kernel caps it
/// at `net.core.rmem_max`/`wmem_max`): a burst of a fast QUIC sender must queue in the
/// emulator, not overflow its socket, or the emulator adds loss nobody asked for.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn sleep_until(ctl: &Control, due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due || ctl.stopped() {
            return;
        }
        std::thread::sleep((due - now).min(POLL));
    }
}

/// One datagram waiting for its departure.
struct Pending {
    due: Instant,
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

/// A delay line: a thread that sends each queued datagram at its due time.
fn udp_delay_line(ctl: Arc<Control>, rx: mpsc::Receiver<Pending>) -> JoinHandle<()> {
    std::thread::spawn(move || loop {
        let p = match rx.recv_timeout(POLL) {
            Ok(p) => p,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if ctl.stopped() {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        sleep_until(&ctl, p.due);
        if ctl.stopped() {
            return;
        }
        if ctl.is_cut() {
            ctl.counters.dropped_cut.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if p.socket.send_to(&p.data, p.to).is_ok() {
            ctl.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            ctl.counters
                .bytes
                .fetch_add(p.data.len() as u64, Ordering::Relaxed);
        }
    })
}

/// A UDP link: datagrams from any client to `listen` go to `upstream` (one upstream socket
/// per client address, so replies find their way back), both directions delayed,
/// dropped or cut as the [`LinkConfig`] says.
pub struct LinkEmulator {
    ctl: Arc<Control>,
    local: SocketAddr,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl LinkEmulator {
    /// Binds `listen` (port 0 picks one) and forwards to `upstream`.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: LinkConfig,
    ) -> Result<LinkEmulator, LinkEmuError> {
        let front = bind_udp(listen).map_err(|source| LinkEmuError::Bind {
            addr: listen,
            source,
        })?;
        front
            .set_read_timeout(Some(POLL))
            .map_err(|source| LinkEmuError::Io {
                what: "setting a read timeout",
                source,
            })?;
        let local = front.local_addr().map_err(|source| LinkEmuError::Io {
            what: "reading the bound address",
            source,
        })?;
        // Unspecified, not loopback: the upstream may be on another interface (a veth into
        // a network namespace in the chaos suite).
        let up_bind: SocketAddr = if upstream.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let ctl = Control::new(config);
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let front = Arc::new(front);
        let (to_up, to_up_rx) = mpsc::channel::<Pending>();
        let (to_client, to_client_rx) = mpsc::channel::<Pending>();
        {
            let mut t = lock(&threads);
            t.push(udp_delay_line(ctl.clone(), to_up_rx));
            t.push(udp_delay_line(ctl.clone(), to_client_rx));
        }
        let (c2, th2) = (ctl.clone(), threads.clone());
        let main = std::thread::spawn(move || {
            let ctl = c2;
            let mut uplinks: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut last = Instant::now();
            let mut buf = vec![0u8; 65_536];
            while !ctl.stopped() {
                let (n, from) = match front.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                let up = match uplinks.get(&from) {
                    Some(s) => s.clone(),
                    None => {
                        let Ok(s) = bind_udp(up_bind) else {
                            continue;
                        };
                        if s.set_read_timeout(Some(POLL)).is_err() {
                            continue;
                        }
                        let s = Arc::new(s);
                        uplinks.insert(from, s.clone());
                        let back = spawn_udp_back_path(
                            ctl.clone(),
                            s.clone(),
                            front.clone(),
                            from,
                            to_client.clone(),
                        );
                        lock(&th2).push(back);
                        s
                    }
                };
                if let Verdict::Send(due) = ctl.judge(n, true, &mut last) {
                    let _ = to_up.send(Pending {
                        due,
                        data: buf[..n].to_vec(),
                        socket: up,
                        to: upstream,
                    });
                }
            }
        });
        lock(&threads).push(main);
        Ok(LinkEmulator {
            ctl,
            local,
            threads,
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The current settings.
    pub fn config(&self) -> LinkConfig {
        lock(&self.ctl.config).clone()
    }

    /// Replaces every setting (the generator keeps its state).
    pub fn set_config(&self, config: LinkConfig) {
        self.ctl.update(|c| *c = config);
    }

    /// Sets the one-way delay.
    pub fn set_delay(&self, delay: Duration) {
        self.ctl.update(|c| c.delay = delay);
    }

    /// Sets the jitter.
    pub fn set_jitter(&self, jitter: Duration) {
        self.ctl.update(|c| c.jitter = jitter);
    }

    /// Sets the loss probability (clamped to 0–1).
    pub fn set_loss(&self, loss: f64) {
        let loss = if loss.is_nan() {
            0.0
        } else {
            loss.clamp(0.0, 1.0)
        };
        self.ctl.update(|c| c.loss = loss);
    }

    /// Cuts (`true`) or restores (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.ctl.update(|c| c.cut = cut);
    }

    /// Drops datagrams longer than `max` bytes (`None`: no limit).
    pub fn set_max_datagram(&self, max: Option<usize>) {
        self.ctl.update(|c| c.max_datagram = max);
    }

    /// Counters so far.
    pub fn counters(&self) -> LinkCounters {
        self.ctl.counters.snapshot()
    }
}

fn spawn_udp_back_path(
    ctl: Arc<Control>,
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    tx: mpsc::Sender<Pending>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while !ctl.stopped() {
            let n = match up.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(_) => continue,
            };
            if let Verdict::Send(due) = ctl.judge(n, true, &mut last) {
                if tx
                    .send(Pending {
                        due,
                        data: buf[..n].to_vec(),
                        socket: front.clone(),
                        to: client,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

fn stop_threads(ctl: &Control, threads: &Mutex<Vec<JoinHandle<()>>>) {
    ctl.stop.store(true, Ordering::SeqCst);
    // Joining may find threads that spawned more threads meanwhile: loop until empty.
    loop {
        let batch: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(threads));
        if batch.is_empty() {
            return;
        }
        for t in batch {
            let _ = t.join();
        }
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        stop_threads(&self.ctl, &self.threads);
    }
}

/// A TCP link: each connection to `listen` gets its own connection to `upstream`; bytes
/// are forwarded in both directions in chunks as they arrive, each chunk delayed as the
/// [`LinkConfig`] says. A cut closes every live connection and refuses new ones.
pub struct TcpLinkEmulator {
    ctl: Arc<Control>,
    local: SocketAddr,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpLinkEmulator {
    /// Binds `listen` (port 0 picks one) and forwards connections to `upstream`.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: LinkConfig,
    ) -> Result<TcpLinkEmulator, LinkEmuError> {
        let listener = TcpListener::bind(listen).map_err(|source| LinkEmuError::Bind {
            addr: listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| LinkEmuError::Io {
                what: "making the listener non-blocking",
                source,
            })?;
        let local = listener.local_addr().map_err(|source| LinkEmuError::Io {
            what: "reading the bound address",
            source,
        })?;
        let ctl = Control::new(config);
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c2, th2) = (ctl.clone(), threads.clone());
        let main = std::thread::spawn(move || {
            let ctl = c2;
            while !ctl.stopped() {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                if ctl.is_cut() {
                    ctl.counters.dropped_cut.fetch_add(1, Ordering::Relaxed);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                ctl.counters.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nonblocking(false);
                for s in [&client, &server] {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(POLL));
                }
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let mut t = lock(&th2);
                t.extend(tcp_direction(ctl.clone(), client, s2));
                t.extend(tcp_direction(ctl.clone(), server, c2));
            }
        });
        lock(&threads).push(main);
        Ok(TcpLinkEmulator {
            ctl,
            local,
            threads,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The current settings.
    pub fn config(&self) -> LinkConfig {
        lock(&self.ctl.config).clone()
    }

    /// Replaces every setting.
    pub fn set_config(&self, config: LinkConfig) {
        self.ctl.update(|c| *c = config);
    }

    /// Sets the one-way delay.
    pub fn set_delay(&self, delay: Duration) {
        self.ctl.update(|c| c.delay = delay);
    }

    /// Sets the jitter.
    pub fn set_jitter(&self, jitter: Duration) {
        self.ctl.update(|c| c.jitter = jitter);
    }

    /// Cuts (closes live connections, refuses new ones) or restores the link.
    pub fn set_cut(&self, cut: bool) {
        self.ctl.update(|c| c.cut = cut);
    }

    /// Counters so far.
    pub fn counters(&self) -> LinkCounters {
        self.ctl.counters.snapshot()
    }
}

impl Drop for TcpLinkEmulator {
    fn drop(&mut self) {
        stop_threads(&self.ctl, &self.threads);
    }
}

/// Forwards `from` → `to` through a delay line: a reader thread and a writer thread.
fn tcp_direction(ctl: Arc<Control>, mut from: TcpStream, mut to: TcpStream) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let c1 = ctl.clone();
    let reader = std::thread::spawn(move || {
        let ctl = c1;
        let mut last = Instant::now();
        let mut buf = vec![0u8; 65_536];
        loop {
            if ctl.stopped() || ctl.is_cut() {
                break;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => break,
            };
            match ctl.judge(n, false, &mut last) {
                Verdict::Send(due) => {
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Verdict::Drop => break,
            }
        }
        let _ = from.shutdown(Shutdown::Both);
    });
    let writer = std::thread::spawn(move || {
        loop {
            let (due, data) = match rx.recv_timeout(POLL) {
                Ok(x) => x,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if ctl.stopped() || ctl.is_cut() {
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            sleep_until(&ctl, due);
            if ctl.stopped() || ctl.is_cut() || to.write_all(&data).is_err() {
                break;
            }
            ctl.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            ctl.counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(Shutdown::Both);
    });
    [reader, writer]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// An echo server on UDP; returns its address.
    fn udp_echo() -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
        let s = UdpSocket::bind(any()).unwrap();
        s.set_read_timeout(Some(POLL)).unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        (addr, stop, h)
    }

    fn client() -> UdpSocket {
        let c = UdpSocket::bind(any()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c
    }

    #[test]
    fn udp_round_trip_takes_twice_the_delay() {
        let (echo, stop, h) = udp_echo();
        let emu = LinkEmulator::start(
            any(),
            echo,
            LinkConfig::with_delay(Duration::from_millis(15)),
        )
        .unwrap();
        let c = client();
        let mut buf = [0u8; 64];
        let mut rtts = Vec::new();
        for i in 0..5u8 {
            let t = Instant::now();
            c.send_to(&[i; 10], emu.local_addr()).unwrap();
            let (n, _) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i; 10]);
            rtts.push(t.elapsed());
        }
        for r in &rtts {
            assert!(*r >= Duration::from_millis(30), "{rtts:?}");
            assert!(*r < Duration::from_millis(60), "{rtts:?}");
        }
        // Delay changes at run time.
        emu.set_delay(Duration::ZERO);
        let t = Instant::now();
        c.send_to(b"x", emu.local_addr()).unwrap();
        c.recv_from(&mut buf).unwrap();
        assert!(t.elapsed() < Duration::from_millis(20));
        // The counter moves just after the send: give the delay line a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while emu.counters().forwarded < 12 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(emu.counters().forwarded, 12);
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn udp_cut_loss_and_size_filter_drop_and_count() {
        let (echo, stop, h) = udp_echo();
        let emu = LinkEmulator::start(any(), echo, LinkConfig::default()).unwrap();
        let c = client();
        let mut buf = [0u8; 2048];
        emu.set_cut(true);
        c.send_to(b"lost", emu.local_addr()).unwrap();
        assert!(c.recv_from(&mut buf).is_err());
        assert_eq!(emu.counters().dropped_cut, 1);
        emu.set_cut(false);
        c.send_to(b"back", emu.local_addr()).unwrap();
        assert_eq!(c.recv_from(&mut buf).unwrap().0, 4);

        emu.set_max_datagram(Some(100));
        c.send_to(&[1u8; 101], emu.local_addr()).unwrap();
        c.send_to(&[2u8; 100], emu.local_addr()).unwrap();
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[2u8; 100][..]);
        assert_eq!(emu.counters().dropped_size, 1);
        emu.set_max_datagram(None);

        // 50% loss on each direction: out of 400 round trips, well under all and over none
        // come back (deterministic seed).
        emu.set_loss(0.5);
        c.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let mut back = 0;
        for _ in 0..400 {
            c.send_to(b"p", emu.local_addr()).unwrap();
            if c.recv_from(&mut buf).is_ok() {
                back += 1;
            }
        }
        let drops = emu.counters().dropped_loss;
        assert!((40..200).contains(&back), "{back} came back");
        assert!(drops > 150, "{drops} dropped");
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn jitter_never_reorders() {
        let (echo, stop, h) = udp_echo();
        let cfg = LinkConfig {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(4),
            ..LinkConfig::default()
        };
        let emu = LinkEmulator::start(any(), echo, cfg).unwrap();
        let c = client();
        for i in 0..50u8 {
            c.send_to(&[i], emu.local_addr()).unwrap();
        }
        let mut buf = [0u8; 8];
        for i in 0..50u8 {
            let (n, _) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i]);
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn tcp_delay_and_cut() {
        let server = TcpListener::bind(any()).unwrap();
        let saddr = server.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            // Echo two connections, then stop.
            for _ in 0..2 {
                let Ok((mut s, _)) = server.accept() else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let emu = TcpLinkEmulator::start(
            any(),
            saddr,
            LinkConfig::with_delay(Duration::from_millis(10)),
        )
        .unwrap();
        let mut c = TcpStream::connect(emu.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let t = Instant::now();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(20), "{rtt:?}");
        assert!(rtt < Duration::from_millis(80), "{rtt:?}");
        emu.set_cut(true);
        // The live connection is closed: a read ends (EOF or error) within a moment.
        let mut one = [0u8; 1];
        let r = c.read(&mut one);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        emu.set_cut(false);
        let mut c2 = TcpStream::connect(emu.local_addr()).unwrap();
        c2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c2.write_all(b"again").unwrap();
        c2.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"again");
        assert_eq!(emu.counters().connections, 2);
        drop(c2);
        drop(emu);
        h.join().unwrap();
    }
}
