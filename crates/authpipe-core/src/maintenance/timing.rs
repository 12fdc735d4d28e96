//! When to refresh, when a token counts as stale, and how long to back off. Pure functions of
//! time and a jitter draw in [0, 1), so they are tested exactly.

/// The largest refresh margin: 5 minutes.
pub const MAX_MARGIN_MS: i64 = 5 * 60 * 1000;
/// Backoff: first retry after 1 s, doubling, at most 5 minutes.
pub const BACKOFF_BASE_MS: i64 = 1000;
pub const BACKOFF_MAX_MS: i64 = 5 * 60 * 1000;

/// The refresh margin of a token that lives `lifetime_ms`: min(5 min, lifetime / 2), so a
/// 2-second test token refreshes 1 s before expiry and a 1-hour token 5 minutes before.
pub fn margin(lifetime_ms: i64) -> i64 {
    (lifetime_ms / 2).clamp(0, MAX_MARGIN_MS)
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
