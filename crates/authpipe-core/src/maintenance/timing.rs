//! When to refresh, when a token counts as stale, and how long to back off. Pure functions of
//! time and a jitter draw in [0, 1), so they are tested exactly.

/// The largest refresh margin: 5 minutes.
pub const MAX_MARGIN_MS: i64 = 5 * 60 * 1000;
/// Backoff: first retry after 1 s, doubling, at most 5 minutes.
pub const BACKOFF_BASE_MS: i64 = 1000;
pub const BACKOFF_MAX_MS: i64 = 5 * 60 * 1000;

/// How much earlier than computed a token can die: `expires_in` is whole seconds, counted by the
/// server from a moment it may have rounded down (oidc-provider's `iat` is whole seconds).
pub const EXPIRY_PRECISION_MS: i64 = 1000;

/// The refresh margin of a token that lives `lifetime_ms`: lifetime / 2, at most 5 minutes and
/// at least [`EXPIRY_PRECISION_MS`], so a 2-second test token refreshes 1 s before expiry and a
/// 1-hour token 5 minutes before. A token past its stale point is served only when no refresh
/// can replace it, and never past [`usable_until`].
pub fn margin(lifetime_ms: i64) -> i64 {
    (lifetime_ms / 2).clamp(EXPIRY_PRECISION_MS, MAX_MARGIN_MS)
}

/// The last moment a token expiring at `expires_at` may be handed out, even stale: after it,
/// the server may already refuse it.
pub fn usable_until(expires_at: i64) -> i64 {
    expires_at - EXPIRY_PRECISION_MS
}

/// From this moment the token is stale: `getCredential` waits for a refresh rather than
/// serving it.
pub fn stale_at(issued_at: i64, expires_at: i64) -> i64 {
    expires_at - margin(expires_at - issued_at)
}

/// When the scheduler refreshes: at the stale point, earlier by up to a tenth of the margin,
/// so that tokens issued together do not all come due at once.
pub fn refresh_at(issued_at: i64, expires_at: i64, jitter: f64) -> i64 {
    let m = margin(expires_at - issued_at);
    expires_at - m - (m as f64 * 0.1 * jitter.clamp(0.0, 1.0)) as i64
}

/// The soonest a retry with a deadline comes: a store that fails at once must not be retried in
/// a tight loop.
pub const RETRY_MIN_MS: i64 = 100;

/// When to retry after a failure at `now`: after `backoff_ms`, but no later than `deadline` (the
/// last moment a retry can still save the token), and never sooner than [`RETRY_MIN_MS`] from
/// now.
pub fn retry_at(now: i64, backoff_ms: i64, deadline: Option<i64>) -> i64 {
    match deadline {
        Some(deadline) => (now + backoff_ms).min(deadline).max(now + RETRY_MIN_MS),
        None => now + backoff_ms,
    }
}

/// When a process that did not obtain a token refreshes it, standing by for the process that
/// did: a tenth of the margin after the stale point, when that process's refresh (due up to a
/// tenth of the margin before it) has had its time.
pub fn standby_refresh_at(issued_at: i64, expires_at: i64) -> i64 {
    let m = margin(expires_at - issued_at);
    expires_at - m + m / 10
}

/// Delay before retry number `attempt` (1-based): exponential, capped, with jitter in
/// [50%, 100%] of the step, and never sooner than the provider's `Retry-After`.
pub fn backoff_ms(attempt: u32, jitter: f64, retry_after_ms: Option<i64>) -> i64 {
    let step = BACKOFF_BASE_MS
        .saturating_mul(1i64 << attempt.saturating_sub(1).min(20))
        .min(BACKOFF_MAX_MS);
    let jittered = step / 2 + (step as f64 / 2.0 * jitter.clamp(0.0, 1.0)) as i64;
    jittered.max(retry_after_ms.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_fit_short_and_long_tokens() {
        assert_eq!(margin(2_000), 1_000);
        assert_eq!(margin(1_800_000), MAX_MARGIN_MS); // HubSpot, 30 min
        assert_eq!(margin(3_600_000), MAX_MARGIN_MS);
        assert_eq!(stale_at(0, 2_000), 1_000);
        assert_eq!(stale_at(0, 3_600_000), 3_300_000);
        // A token shorter than two seconds is stale from the start: its last second is not ours.
        assert_eq!(margin(1_000), EXPIRY_PRECISION_MS);
        assert_eq!(stale_at(0, 1_000), 0);
    }

    #[test]
    fn a_stale_point_never_comes_after_the_last_usable_moment() {
        for lifetime in [0, 500, 1_000, 2_000, 59_000, 3_600_000, 86_400_000] {
            assert!(
                stale_at(0, lifetime) <= usable_until(lifetime),
                "{lifetime}"
            );
        }
    }

    #[test]
    fn refresh_jitter_stays_within_a_tenth_of_the_margin_before_the_stale_point() {
        for jitter in [0.0, 0.25, 0.5, 0.999] {
            let at = refresh_at(0, 3_600_000, jitter);
            assert!((3_300_000 - 30_000..=3_300_000).contains(&at), "{at}");
            let short = refresh_at(0, 2_000, jitter);
            assert!((900..=1_000).contains(&short), "{short}");
        }
        assert_eq!(refresh_at(0, 2_000, 0.0), stale_at(0, 2_000));
    }

    #[test]
    fn a_deadline_brings_a_retry_forward_but_not_into_a_tight_loop() {
        assert_eq!(retry_at(10_000, 8_000, None), 18_000);
        assert_eq!(retry_at(10_000, 8_000, Some(13_500)), 13_500);
        assert_eq!(
            retry_at(10_000, 2_000, Some(13_500)),
            12_000,
            "backoff already sooner"
        );
        assert_eq!(
            retry_at(10_000, 8_000, Some(9_000)),
            10_000 + RETRY_MIN_MS,
            "deadline past"
        );
    }

    #[test]
    fn a_standby_refresh_comes_after_every_jittered_one_and_before_expiry() {
        for (issued, expires) in [(0, 2_000), (0, 3_600_000), (5_000, 65_000)] {
            let standby = standby_refresh_at(issued, expires);
            assert!(standby > refresh_at(issued, expires, 0.0), "{expires}");
            assert!(standby > stale_at(issued, expires), "{expires}");
            assert!(standby < expires, "{expires}");
        }
        assert_eq!(standby_refresh_at(0, 2_000), 1_100);
        assert_eq!(standby_refresh_at(0, 3_600_000), 3_330_000);
    }

    #[test]
    fn backoff_doubles_caps_and_respects_retry_after() {
        assert_eq!(backoff_ms(1, 1.0, None), 1_000);
        assert_eq!(backoff_ms(1, 0.0, None), 500);
        assert_eq!(backoff_ms(4, 1.0, None), 8_000);
        assert_eq!(backoff_ms(30, 1.0, None), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(30, 0.0, None), BACKOFF_MAX_MS / 2);
        assert_eq!(
            backoff_ms(1, 0.5, Some(7_000)),
            7_000,
            "Retry-After wins when later"
        );
        assert_eq!(
            backoff_ms(5, 1.0, Some(1_000)),
            16_000,
            "and backoff when it is later"
        );
    }
}
