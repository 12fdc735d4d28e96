//! Following other processes: the store's change feed says which connections they changed and
//! which tenants they deleted; the cache reloads those connections (or everything, after the
//! feed may have missed some) and forgets the deleted tenants' keys. What another process
//! refreshed is then served here as soon as the reload lands.

use super::Engine;
use crate::error::Result;
use crate::ids::ConnectionKey;
use crate::records::ConnectionRecord;
use crate::store::{Change, ChangeFeed};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// After a reload failed (the store unreachable), the next full reload is tried this much later.
const RESYNC_RETRY: Duration = Duration::from_millis(250);

/// The task that applies the change feed; aborted (and the feed with it) when dropped.
pub(super) struct FollowTask(tokio::task::JoinHandle<()>);

impl Drop for FollowTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many recent follow lags [`Lags`] keeps.
pub const LAG_SAMPLES: usize = 4096;

/// What following has done, for `stats()`.
#[derive(Default)]
pub(super) struct FollowStats {
    /// Cache entries changed because another process changed the store.
    pub remote_changes: AtomicU64,
    /// Full reloads after the change feed may have missed changes.
    pub resyncs: AtomicU64,
    pub lags: Lags,
}

/// The most recent lags between another process's write and our cache update (ms).
#[derive(Default)]
pub(super) struct Lags(parking_lot::Mutex<std::collections::VecDeque<u64>>);

impl Lags {
    fn record(&self, lag_ms: u64) {
        let mut lags = self.0.lock();
        if lags.len() == LAG_SAMPLES {
            lags.pop_front();
        }
        lags.push_back(lag_ms);
    }

    /// Median, 99th percentile and max.
    pub(super) fn summary(&self) -> Option<[u64; 3]> {
        let mut lags: Vec<u64> = self.0.lock().iter().copied().collect();
        if lags.is_empty() {
            return None;
        }
        lags.sort_unstable();
        let at = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
        Some([at(0.5), at(0.99), lags[lags.len() - 1]])
    }
}

/// Changes applied together: what arrived while the previous batch was being applied.
const MAX_BATCH: usize = 512;

impl FollowTask {
    /// Applies `feed` to `engine` until the engine is gone. Holds it weakly, so the task does
    /// not keep it alive.
    pub(super) fn start(engine: Weak<Engine>, mut feed: ChangeFeed) -> Self {
        Self(tokio::spawn(async move {
            let mut resync_pending = false;
            loop {
                let first = if resync_pending {
                    match tokio::time::timeout(RESYNC_RETRY, feed.recv()).await {
                        Ok(change) => change,
                        Err(_) => Some(Change::Resync),
                    }
                } else {
                    feed.recv().await
                };
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match feed.try_recv() {
                        Ok(change) => batch.push(change),
                        Err(_) => break,
                    }
                }
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                // A batch that could not be applied leaves the cache behind the store: catch up
                // with a full reload as soon as the store answers again.
                let resync = resync_pending || batch.contains(&Change::Resync);
                let applied = if resync {
                    engine.resync().await
                } else {
                    engine.apply_changes(batch).await
                };
                resync_pending = applied.is_err();
            }
        }))
    }
}

impl Engine {
    /// Forgets the tenants the changes say were deleted, then reloads the connections they
    /// name, unless the cache already has their version.
    async fn apply_changes(&self, changes: Vec<Change>) -> Result<()> {
        // Deletions first: whatever the batch says of a deleted tenant's connections after its
        // deletion is then reloaded, not mistaken for a version the cache already has.
        for change in &changes {
            if let Change::TenantDeleted(tenant) = change {
                self.forget_tenant(tenant);
            }
        }
        let mut wanted: HashMap<String, ConnectionKey> = HashMap::new();
        for change in changes {
            let Change::Connection { key, version } = change else {
                continue;
            };
            let known = match (self.cache.get_key(&key), version) {
                (Some(entry), Some(version)) => entry.record.version >= version,
                (None, None) => true,
                _ => false,
            };
            // Known: our own write, or one an earlier reload already brought.
            if !known {
                wanted.insert(key.cache_key(), key);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let keys: Vec<ConnectionKey> = wanted.values().cloned().collect();
        // From the read to the last cache write: a deletion here waits for it (see reload_gate).
        let _reloading = self.reload_gate.read().await;
        self.count_read();
        for record in self.store.connections(&keys).await? {
            if let Some(key) = wanted.remove(&record.key.cache_key()) {
                self.follow_stored(&key, Some(record));
            }
        }
        // What is left was deleted.
        for key in wanted.values() {
            self.follow_stored(key, None);
        }
        Ok(())
    }

    /// Reloads every connection, after changes may have been missed, and forgets the tenant
    /// keys that are not stored any more.
    async fn resync(&self) -> Result<()> {
        let _reloading = self.reload_gate.read().await;
        self.count_read();
        self.vault.forget_all_but(&self.store.tenant_keys().await?);
        let records = self.store.all_connections().await?;
        let present: HashSet<String> = records.iter().map(|r| r.key.cache_key()).collect();
        for record in records {
            let key = record.key.clone();
            self.follow_stored(&key, Some(record));
        }
        for entry in self.cache.entries() {
            if !present.contains(&entry.record.key.cache_key()) {
                self.follow_stored(&entry.record.key, None);
            }
        }
        self.follow_stats.resyncs.fetch_add(1, Ordering::Relaxed);
        self.resynced();
        Ok(())
    }

    /// Makes the cache hold what the store holds for `key`.
    pub(super) fn follow_stored(&self, key: &ConnectionKey, stored: Option<ConnectionRecord>) {
        let changed = match stored {
            Some(record) => {
                // Versions start again when a row is deleted and created again: then the
                // stored row replaces ours whatever its version. (Otherwise the cache keeps the
                // newer of the two: a reload can race our own newer write.)
                if self
                    .cache
                    .get_key(key)
                    .is_some_and(|entry| entry.record.created_at != record.created_at)
                {
                    self.cache.remove(key);
                }
                let written_at = record.updated_at;
                let before = self.cache.get_key(key);
                // Another process stored a new token: this one's failures to refresh the old
                // one (its backoff) no longer apply.
                if before
                    .as_ref()
                    .is_some_and(|b| b.record.credential != record.credential)
                {
                    self.refreshes.succeeded(key);
                }
                let after = self.cache_put_from(record, super::Refresher::Elsewhere);
                let changed = before.is_none_or(|b| !Arc::ptr_eq(&b, &after));
                if changed {
                    let lag_ms = (self.now_ms() - written_at).max(0) as u64;
                    self.follow_stats.lags.record(lag_ms);
                    self.followed(lag_ms);
                }
                changed
            }
            None => {
                self.refreshes.succeeded(key);
                self.cache.remove(key)
            }
        };
        if changed {
            self.follow_stats
                .remote_changes
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
