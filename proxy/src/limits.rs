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

/// Why a token's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// The bucket is empty now; later the request passes.
    Limited(Limited),
    /// The request costs more than the whole bucket: it can never pass as one request
    /// (answer 413, not 429 with a Retry-After that would only repeat).
    OverBurst {
        /// What the request costs (its number of events).
        cost: u32,
        /// The token's burst.
        burst: u32,
    },
}

/// The limiters of one proxy.
#[derive(Debug)]
pub struct Limits {
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    token: Option<DefaultKeyedRateLimiter<String>>,
    token_burst: u32,
    clock: DefaultClock,
}

impl Limits {
    /// Limiters for the given rates (`None` or a zero rate: unlimited).
    pub fn new(ip: Option<Rate>, token: Option<Rate>) -> Limits {
        Limits {
            ip: ip.and_then(Rate::quota).map(RateLimiter::keyed),
            token: token.and_then(Rate::quota).map(RateLimiter::keyed),
            token_burst: token.map_or(0, |r| r.burst.max(1)),
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
    pub fn check_token(&self, id: &str, cost: u32) -> Result<(), TokenRefusal> {
        let Some(l) = &self.token else { return Ok(()) };
        let cost = cost.max(1);
        if cost > self.token_burst {
            return Err(TokenRefusal::OverBurst {
                cost,
                burst: self.token_burst,
            });
        }
        let key = id.to_string();
        let n = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match l.check_key_n(&key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(TokenRefusal::Limited(Limited {
                kind: "token",
                retry_after: not_until.wait_time_from(self.clock.now()),
            })),
            // Checked above; the limiter says the same.
            Err(_) => Err(TokenRefusal::OverBurst {
                cost,
                burst: self.token_burst,
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

    #[test]
    fn a_request_larger_than_the_burst_is_refused_as_such() {
        let l = Limits::new(
            None,
            Some(Rate {
                per_second: 10,
                burst: 5,
            }),
        );
        assert_eq!(
            l.check_token("t", 6),
            Err(TokenRefusal::OverBurst { cost: 6, burst: 5 })
        );
        // Nothing was taken: the full burst still passes, then the bucket is empty.
        l.check_token("t", 5).unwrap();
        assert!(matches!(
            l.check_token("t", 1),
            Err(TokenRefusal::Limited(_))
        ));
    }
}
