//! Keeping connections alive: when to refresh and how to back off ([`timing`]), and the
//! per-connection refresh state the engine keeps in memory. The refresh and probe procedures
//! themselves are `Engine` methods (`engine/refresh/`, `engine/probe.rs`), next to the store and
//! vault they use.

pub mod timing;

use crate::records::ConnectionRecord;

/// In-memory state of a connection whose last refresh failed.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryState {
    /// Consecutive failures.
    pub attempts: u32,
    /// No refresh before this time (ms); the still-valid token is served meanwhile.
    pub retry_at: i64,
}

/// When the record's current token was obtained.
pub fn issued_at(record: &ConnectionRecord) -> i64 {
    record.token_issued_at.unwrap_or(record.updated_at)
}

/// Whether `getCredential` should wait for a refresh instead of serving the token.
pub fn is_stale(record: &ConnectionRecord, now: i64) -> bool {
    match record.expires_at {
        Some(expires_at) if record.refresh_token.is_some() => {
            now >= timing::stale_at(issued_at(record), expires_at)
        }
        Some(_) => is_expired(record, now),
        None => false,
    }
}

/// Whether the token may no longer be handed out at all: the server may refuse it already.
pub fn is_expired(record: &ConnectionRecord, now: i64) -> bool {
    record
        .expires_at
        .is_some_and(|expires_at| now >= timing::usable_until(expires_at))
}

/// Whether a scheduled refresh is due: inside the window where jittered refreshes fall.
pub fn refresh_due(record: &ConnectionRecord, now: i64) -> bool {
    match record.expires_at {
        Some(expires_at) if record.refresh_token.is_some() => {
            now >= timing::refresh_at(issued_at(record), expires_at, 1.0)
        }
        _ => false,
    }
}
