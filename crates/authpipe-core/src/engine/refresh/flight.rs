//! What the engine keeps in memory about refreshes: whose turn it is (single-flight per
//! connection), which connections are backing off after a failure, and how many refreshes are
//! under way (so that `close()` can wait for them before the process exits).

use crate::ids::ConnectionKey;
use crate::maintenance::RetryState;
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

#[derive(Default)]
pub(in crate::engine) struct Refreshes {
    /// Single-flight: one refresh per connection at a time, the others wait for its result.
    locks: DashMap<String, Arc<Mutex<()>>>,
    /// Connections whose last refresh failed, and when to try again.
    retries: DashMap<String, RetryState>,
    /// Refreshes under way, and a signal when one ends.
    in_flight: AtomicUsize,
    ended: Notify,
}

impl Refreshes {
    /// Counts a refresh as under way until the guard drops.
    pub(super) fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Waits (at most `limit`) until no refresh is under way.
    pub(super) async fn settle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.ended.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }

    /// Waits for this connection's turn: one refresh at a time, the others queue behind it.
    pub(super) async fn single_flight(&self, cache_key: String) -> Flight<'_> {
        let lock = self.locks.entry(cache_key.clone()).or_default().clone();
        let guard = lock.lock_owned().await;
        Flight {
            refreshes: self,
            cache_key,
            guard: Some(guard),
        }
    }

    /// Whether the connection's last refresh failed and its retry is not due at `now`.
    pub(in crate::engine) fn backing_off(&self, cache_key: &str, now: i64) -> bool {
        self.retries
            .get(cache_key)
            .is_some_and(|r| r.retry_at > now)
    }

    /// Whether the connection's last refresh failed.
    pub(in crate::engine) fn failing(&self, key: &ConnectionKey) -> bool {
        self.retries.contains_key(&key.cache_key())
    }

    /// Records one more failure; `retry_at` turns the count of consecutive failures into the
    /// time of the next attempt. Returns both.
    pub(super) fn failed(
        &self,
        key: &ConnectionKey,
        retry_at: impl FnOnce(u32) -> i64,
    ) -> (u32, i64) {
        let attempts = self.retries.get(&key.cache_key()).map_or(0, |r| r.attempts) + 1;
        let retry_at = retry_at(attempts);
        self.retries
            .insert(key.cache_key(), RetryState { attempts, retry_at });
        (attempts, retry_at)
    }

    /// Forgets a connection's failures: it was refreshed, replaced or deleted.
    pub(in crate::engine) fn succeeded(&self, key: &ConnectionKey) {
        self.retries.remove(&key.cache_key());
    }

    /// Connections with a single-flight entry (tests: it must not grow with unknown ids).
    #[cfg(test)]
    pub(super) fn single_flight_entries(&self) -> usize {
        self.locks.len()
    }
}

/// Counts a refresh in flight for [`Refreshes::settle`] while alive.
pub(super) struct InFlight<'a>(&'a Refreshes);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

/// A connection's turn in the single-flight map. Its entry goes with the last caller that
/// waited on it, so the map holds the connections being refreshed now, not every id anyone
/// ever asked about (a stream of calls on unknown ids would otherwise grow it without bound).
pub(super) struct Flight<'a> {
    refreshes: &'a Refreshes,
    cache_key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // The map's own reference is the last one: nobody holds or waits for this lock.
        self.refreshes
            .locks
            .remove_if(&self.cache_key, |_, lock| Arc::strong_count(lock) == 1);
    }
}
