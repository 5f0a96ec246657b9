//! A small userspace UDP link emulator for QUIC links: a forwarder from one front address
//! to one server address that adds one-way delay (with FIFO-preserving jitter), random
//! loss, and can cut the link (drop everything) and heal it. One upstream socket per
//! client address, so replies find their way back.
//!
//! This machine's kernel has no `netem`; delay comes from here. In network namespaces,
//! cuts and loss are done with nftables instead (see [`crate::net`]); on loopback this
//! forwarder does them too. Kept small on purpose; a fuller emulator may replace it.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Link properties; all may change while the link runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// One-way delay added to every datagram, in each direction.
    pub delay: Duration,
    /// Up to this much extra delay, uniformly random (never reorders: FIFO is kept).
    pub jitter: Duration,
    /// Percent of datagrams dropped, per direction (0–100).
    pub loss_percent: u32,
}

struct Knobs {
    cut: AtomicBool,
    stop: AtomicBool,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    loss: AtomicU32,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Knobs {
    fn drop_now(&self) -> bool {
        if self.cut.load(Ordering::Relaxed) {
            return true;
        }
        let loss = self.loss.load(Ordering::Relaxed);
        loss > 0 && rand::random_range(0..100u32) < loss
    }

    fn due(&self, last: &mut Instant) -> Instant {
        let delay = self.delay_us.load(Ordering::Relaxed);
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        let extra = if jitter > 0 {
            rand::random_range(0..=jitter)
        } else {
            0
        };
        let due = Instant::now() + Duration::from_micros(delay + extra);
        // FIFO: never schedule before the previous datagram of this direction.
        let due = due.max(*last);
        *last = due;
        due
    }
}

type Packet = (Instant, Vec<u8>, Arc<UdpSocket>, SocketAddr);

/// A running forwarder; stops (and joins its threads) on drop.
pub struct LinkEmulator {
    knobs: Arc<Knobs>,
    front: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// The front socket could not be bound.
    #[error("binding the link emulator on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

fn sender(rx: mpsc::Receiver<Packet>, knobs: Arc<Knobs>) {
    while let Ok((due, data, sock, to)) = rx.recv() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if knobs.stop.load(Ordering::Relaxed) {
            return;
        }
        if sock.send_to(&data, to).is_ok() {
            knobs.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LinkEmulator {
    /// Listens on `listen` (port 0: any) and forwards to `to` with `shape`.
    pub fn start(
        listen: SocketAddr,
        to: SocketAddr,
        shape: LinkShape,
    ) -> Result<LinkEmulator, EmuError> {
        let front = UdpSocket::bind(listen).map_err(|source| EmuError::Bind {
            addr: listen,
            source,
        })?;
        let front_addr = front.local_addr().map_err(|source| EmuError::Bind {
            addr: listen,
            source,
        })?;
        let timeout = Some(Duration::from_millis(50));
        front
            .set_read_timeout(timeout)
            .map_err(|source| EmuError::Bind {
                addr: listen,
                source,
            })?;
        let knobs = Arc::new(Knobs {
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            loss: AtomicU32::new(0),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let mut emu = LinkEmulator {
            knobs: knobs.clone(),
            front: front_addr,
            threads: Vec::new(),
        };
        emu.set_shape(shape);
        let front = Arc::new(front);
        let (up_tx, up_rx) = mpsc::channel::<Packet>();
        let (down_tx, down_rx) = mpsc::channel::<Packet>();
        {
            let k = knobs.clone();
            emu.threads
                .push(std::thread::spawn(move || sender(up_rx, k)));
            let k = knobs.clone();
            emu.threads
                .push(std::thread::spawn(move || sender(down_rx, k)));
        }
        let uplinks: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let k = knobs.clone();
        emu.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut last = Instant::now();
            let mut back: Vec<JoinHandle<()>> = Vec::new();
            while !k.stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = front.recv_from(&mut buf) else {
                    continue;
                };
                if k.drop_now() {
                    k.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let up = {
                    let mut u = uplinks.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(s) = u.get(&from) {
                        s.clone()
                    } else {
                        let bind: SocketAddr = if to.is_ipv4() {
                            SocketAddr::from(([0, 0, 0, 0], 0))
                        } else {
                            SocketAddr::from(([0u16; 8], 0))
                        };
                        let Ok(s) = UdpSocket::bind(bind) else {
                            continue;
                        };
                        let _ = s.set_read_timeout(timeout);
                        let s = Arc::new(s);
                        u.insert(from, s.clone());
                        let (s2, front2, k2, tx2) =
                            (s.clone(), front.clone(), k.clone(), down_tx.clone());
                        back.push(std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65536];
                            let mut last = Instant::now();
                            while !k2.stop.load(Ordering::Relaxed) {
                                let Ok((n, _)) = s2.recv_from(&mut buf) else {
                                    continue;
                                };
                                if k2.drop_now() {
                                    k2.dropped.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                let due = k2.due(&mut last);
                                let _ = tx2.send((due, buf[..n].to_vec(), front2.clone(), from));
                            }
                        }));
                        s
                    }
                };
                let due = k.due(&mut last);
                let _ = up_tx.send((due, buf[..n].to_vec(), up, to));
            }
            drop(up_tx);
            drop(down_tx);
            for t in back {
                let _ = t.join();
            }
        }));
        Ok(emu)
    }

    /// The address clients send to.
    pub fn front(&self) -> SocketAddr {
        self.front
    }

    /// Changes delay, jitter and loss.
    pub fn set_shape(&self, shape: LinkShape) {
        self.knobs
            .delay_us
            .store(shape.delay.as_micros() as u64, Ordering::Relaxed);
        self.knobs
            .jitter_us
            .store(shape.jitter.as_micros() as u64, Ordering::Relaxed);
        self.knobs
            .loss
            .store(shape.loss_percent.min(100), Ordering::Relaxed);
    }

    /// Drops every datagram, both directions, until [`LinkEmulator::heal`].
    pub fn cut(&self) {
        self.knobs.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again after a cut.
    pub fn heal(&self) {
        self.knobs.cut.store(false, Ordering::SeqCst);
    }

    /// Datagrams forwarded and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.knobs.forwarded.load(Ordering::Relaxed),
            self.knobs.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.knobs.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        (server, client)
    }

    #[test]
    fn forwards_both_ways_with_delay() {
        let (server, client) = pair();
        let shape = LinkShape {
            delay: Duration::from_millis(30),
            ..LinkShape::default()
        };
        let emu = LinkEmulator::start(
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr().unwrap(),
            shape,
        )
        .unwrap();
        let t0 = Instant::now();
        client.send_to(b"ping", emu.front()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        let (n, back_from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(back_from, emu.front());
        assert!(
            t0.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn cut_drops_and_heal_forwards_in_order() {
        let (server, client) = pair();
        let emu = LinkEmulator::start(
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr().unwrap(),
            LinkShape {
                delay: Duration::from_millis(2),
                jitter: Duration::from_millis(5),
                loss_percent: 0,
            },
        )
        .unwrap();
        emu.cut();
        client.send_to(b"lost", emu.front()).unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(server.recv_from(&mut buf).is_err(), "cut must drop");
        emu.heal();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        for i in 0..50u8 {
            client.send_to(&[i], emu.front()).unwrap();
        }
        for i in 0..50u8 {
            let (n, _) = server.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i], "jitter must not reorder");
        }
        assert_eq!(emu.counts().1, 1);
    }

    #[test]
    fn loss_drops_about_the_share_asked() {
        let (server, client) = pair();
        let emu = LinkEmulator::start(
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr().unwrap(),
            LinkShape {
                loss_percent: 50,
                ..LinkShape::default()
            },
        )
        .unwrap();
        for i in 0..400 {
            client.send_to(b"x", emu.front()).unwrap();
            if i % 50 == 49 {
                // Throttle so the front socket's receive buffer never overflows.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Every datagram is either forwarded or dropped: wait for all 400 to be decided.
        let deadline = Instant::now() + Duration::from_secs(5);
        while emu.counts().0 + emu.counts().1 < 400 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (fwd, dropped) = emu.counts();
        assert_eq!(fwd + dropped, 400);
        assert!((100..300).contains(&dropped), "dropped {dropped} of 400");
    }
}
