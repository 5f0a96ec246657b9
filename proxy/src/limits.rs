//! Rate limits (`governor`): one keyed limiter per client IP (every request costs 1) and
//! one per token id (a publish costs its number of events, anything else 1).
//!
//! The limits are configuration, not state: a restarted proxy starts every bucket full, and
//! the same limits apply. Idle keys are dropped by [`Limits::reclaim`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A rate: `per_second` units per second, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained units per second.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let per = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(1))?;
        Some(Quota::per_second(per).allow_burst(burst))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// `ip` or `token`.
    pub kind: &'static str,
    /// When to try again.
    pub retry_after: Duration,
}

/// The limiters of one proxy.
#[derive(Debug)]
pub struct Limits {
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    token: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl Limits {
    /// Limiters for the given rates (`None` or a zero rate: unlimited).
    pub fn new(ip: Option<Rate>, token: Option<Rate>) -> Limits {
        Limits {
            ip: ip.and_then(Rate::quota).map(RateLimiter::keyed),
            token: token.and_then(Rate::quota).map(RateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one unit for a client IP.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        let Some(l) = &self.ip else { return Ok(()) };
        l.check_key(&ip).map_err(|not_until| Limited {
            kind: "ip",
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Takes `cost` units for a token.
    pub fn check_token(&self, id: &str, cost: u32) -> Result<(), Limited> {
        let Some(l) = &self.token else { return Ok(()) };
        let key = id.to_string();
        let n = NonZeroU32::new(cost.max(1)).unwrap_or(NonZeroU32::MIN);
        match l.check_key_n(&key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Limited {
                kind: "token",
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            // More events in one request than the burst: it can never pass as one request.
            Err(_) => Err(Limited {
                kind: "token",
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Drops keys whose buckets are full again.
    pub fn reclaim(&self) {
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.token {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_with_retry_after() {
        let l = Limits::new(
            Some(Rate {
                per_second: 1,
                burst: 3,
            }),
            None,
        );
        let ip: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..3 {
            l.check_ip(ip).unwrap();
        }
        let e = l.check_ip(ip).unwrap_err();
        assert_eq!(e.kind, "ip");
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_secs(1));
        // Another IP has its own bucket; tokens are unlimited here.
        l.check_ip([127, 0, 0, 2].into()).unwrap();
        l.check_token("t", 1000).unwrap();
    }
}
