//! Retry timing of push delivery, sans-IO: exponential backoff with full jitter, the
//! `Retry-After` header, and the "give up?" decision. The caller supplies the random draw
//! and the elapsed time, so every rule here is a pure function.

use std::time::Duration;

use meshd_core::api::DeliveryPolicy;

/// The backoff ceiling before retry number `attempt` (1 = the retry after the first
/// failed attempt): `initial_backoff_ms * 2^(attempt-1)`, capped at `max_backoff_ms`.
pub fn backoff_ceiling(policy: &DeliveryPolicy, attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(40);
    let ms = policy
        .initial_backoff_ms
        .saturating_mul(1u64 << shift)
        .min(policy.max_backoff_ms);
    Duration::from_millis(ms)
}

/// The delay before the next attempt. `jitter` is a draw from `[0, 1]`: full jitter sleeps
/// a uniform share of the ceiling (pass `1.0` for no jitter). A `Retry-After` the sink sent
/// wins over the computed backoff, capped at `max_backoff_ms`.
pub fn retry_delay(
    policy: &DeliveryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let cap = Duration::from_millis(policy.max_backoff_ms);
    if let Some(ra) = retry_after {
        return ra.min(cap);
    }
    let ceiling = backoff_ceiling(policy, attempt);
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        1.0
    };
    ceiling.mul_f64(j)
}

/// Whether to give up after `attempts` failed attempts, `elapsed` since the first one,
/// when the next attempt would start after `next_delay`.
pub fn should_give_up(
    policy: &DeliveryPolicy,
    attempts: u32,
    elapsed: Duration,
    next_delay: Duration,
) -> bool {
    attempts >= policy.max_attempts
        || elapsed.saturating_add(next_delay) >= Duration::from_secs(policy.max_age_secs)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (relative to `now_ms`,
/// milliseconds since the epoch). Garbage gives `None`.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at_ms = u64::try_from(date.timestamp_millis()).ok()?;
    Some(Duration::from_millis(at_ms.saturating_sub(now_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, max: u64) -> DeliveryPolicy {
        DeliveryPolicy {
            initial_backoff_ms: initial,
            max_backoff_ms: max,
            max_attempts: 5,
            max_age_secs: 10,
            ..DeliveryPolicy::default()
        }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let p = policy(100, 1_000);
        let got: Vec<u64> = (1..=6)
            .map(|a| backoff_ceiling(&p, a).as_millis() as u64)
            .collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        // Huge attempt numbers do not overflow.
        assert_eq!(backoff_ceiling(&p, u32::MAX).as_millis(), 1000);
        assert_eq!(
            backoff_ceiling(&policy(u64::MAX / 2, u64::MAX), 64).as_millis() as u64,
            u64::MAX
        );
    }

    #[test]
    fn full_jitter_stays_within_ceiling() {
        let p = policy(100, 1_000);
        assert_eq!(retry_delay(&p, 3, None, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(&p, 3, None, 1.0), Duration::from_millis(400));
        assert_eq!(retry_delay(&p, 3, None, 0.5), Duration::from_millis(200));
        assert_eq!(retry_delay(&p, 3, None, 7.0), Duration::from_millis(400));
        assert_eq!(
            retry_delay(&p, 3, None, f64::NAN),
            Duration::from_millis(400)
        );
        for _ in 0..100 {
            let d = retry_delay(&p, 2, None, rand::random::<f64>());
            assert!(d <= Duration::from_millis(200));
        }
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = policy(100, 1_000);
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_millis(700)), 0.0),
            Duration::from_millis(700)
        );
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_secs(120)), 0.0),
            Duration::from_millis(1000)
        );
    }

    #[test]
    fn give_up_by_count_or_age() {
        let p = policy(100, 1_000);
        assert!(!should_give_up(
            &p,
            4,
            Duration::from_secs(1),
            Duration::from_secs(1)
        ));
        assert!(should_give_up(&p, 5, Duration::ZERO, Duration::ZERO));
        assert!(should_give_up(
            &p,
            1,
            Duration::from_secs(9),
            Duration::from_secs(1)
        ));
        assert!(should_give_up(
            &p,
            1,
            Duration::from_secs(11),
            Duration::ZERO
        ));
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(parse_retry_after(" 3 ", 0), Some(Duration::from_secs(3)));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp_millis() as u64;
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
