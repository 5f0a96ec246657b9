//! The chaos suite's view of a WAN link: a [`meshd_linkemu::LinkEmulator`] (userspace UDP
//! forwarder for QUIC links: one-way delay with FIFO-preserving jitter, random loss, cut and
//! heal) behind the small shape API the mesh harness and scenarios use.
//!
//! This machine's kernel has no `netem`; delay comes from here. In network namespaces,
//! cuts and loss are done with nftables instead (see [`crate::net`]); on loopback this
//! forwarder does them too.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use meshd_linkemu::{LinkConfig, LinkEmuError};

/// Link properties; all may change while the link runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// One-way delay added to every datagram, in each direction.
    pub delay: Duration,
    /// Jitter around the delay (`delay ± jitter`; never reorders: FIFO is kept).
    pub jitter: Duration,
    /// Percent of datagrams dropped, per direction (0–100).
    pub loss_percent: u32,
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// The emulator could not bind or configure its sockets.
    #[error("starting the link emulator: {0}")]
    Start(#[from] LinkEmuError),
}

/// A running forwarder; stops (and joins its threads) on drop.
pub struct LinkEmulator {
    inner: meshd_linkemu::LinkEmulator,
    /// Serialises read-modify-write of the configuration (shape vs cut).
    config: Mutex<()>,
}

fn apply(config: &mut LinkConfig, shape: LinkShape) {
    config.delay = shape.delay;
    config.jitter = shape.jitter;
    config.loss = f64::from(shape.loss_percent.min(100)) / 100.0;
}

impl LinkEmulator {
    /// Listens on `listen` (port 0: any) and forwards to `to` with `shape`.
    pub fn start(
        listen: SocketAddr,
        to: SocketAddr,
        shape: LinkShape,
    ) -> Result<LinkEmulator, EmuError> {
        let mut config = LinkConfig::default();
        apply(&mut config, shape);
        Ok(LinkEmulator {
            inner: meshd_linkemu::LinkEmulator::start(listen, to, config)?,
            config: Mutex::new(()),
        })
    }

    /// The address clients send to.
    pub fn front(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Changes delay, jitter and loss (a cut stays as it is).
    pub fn set_shape(&self, shape: LinkShape) {
        let _g = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut config = self.inner.config();
        apply(&mut config, shape);
        self.inner.set_config(config);
    }

    /// Drops every datagram, both directions, until [`LinkEmulator::heal`].
    pub fn cut(&self) {
        let _g = self.config.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.set_cut(true);
    }

    /// Forwards again after a cut.
    pub fn heal(&self) {
        let _g = self.config.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.set_cut(false);
    }

    /// Datagrams forwarded and dropped (by loss, cut or size) so far.
    pub fn counts(&self) -> (u64, u64) {
        let c = self.inner.counters();
        (c.forwarded, c.dropped_loss + c.dropped_cut + c.dropped_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Instant;

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
}
