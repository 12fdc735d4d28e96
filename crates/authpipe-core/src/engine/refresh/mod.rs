//! Refreshing a connection's token: single-flight in this process, one refresher across
//! processes. The rules (RFC 6749 §6, RFC 9700 §4.14.2, reference/peers.md §12):
//!
//! - one refresh per connection at a time, across processes: in-process callers wait on one
//!   lock and get its result ([`flight`]); processes take a lease in the store (expiring on its
//!   own if the holder dies) before they spend the refresh token;
//! - the store is re-read under the lease, so a refresh done meanwhile is adopted, not repeated;
//! - a caller that finds the token stale while another process refreshes it waits for that
//!   process's commit (the change feed brings it), as it would for a refresh in this process: a
//!   token past its stale point is not served while a refresh can still replace it (its expiry
//!   is only known to the second, see timing.rs);
//! - a new refresh token is committed (compare-and-swap on the version) before the new access
//!   token is served; a response without one keeps the old ([`outcome`]);
//! - `invalid_grant` means revoked only after a re-read shows nobody else rotated the token;
//! - transient failures back off with jitter, honour `Retry-After`, and leave the still-valid
//!   token in service (status `degraded`);
//! - a request that may have reached the provider is re-read before it is ever sent again.

mod flight;
mod outcome;
#[cfg(test)]
mod tests;

pub(super) use flight::Refreshes;

use super::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::ConnectionKey;
use crate::maintenance::{self, timing};
use crate::protocol::refresh as grant;
use crate::protocol::Connector;
use crate::providers::Provider;
use crate::records::{ConnectionRecord, ConnectionStatus};
use crate::scheduler::Job;
use crate::store::{Lease, LeasePurpose, LeaseTake};
use std::time::Duration;

/// While waiting for another process's refresh, the store is asked this often, and when the
/// holder's lease ends. The change feed brings the outcome (within milliseconds) and wakes the
/// waiter; the poll only covers a feed that fell behind, or a holder that gave the lease back
/// without writing. Polling more often costs two round trips per waiting connection and
/// process each time, which under load slows the very refresh being waited for.
const LEASE_POLL: Duration = Duration::from_millis(500);

/// After a store failure, a refresh is retried at least this long before the token's last usable
/// moment.
const STORE_RETRY_LEAD_MS: i64 = 500;

/// How a refresh lease was settled.
enum Leased {
    /// Ours: the connection as stored when we got it, still in need of a refresh, and a slot to
    /// send its request.
    Ours(ConnectionRecord, tokio::sync::OwnedSemaphorePermit),
    /// No refresh of ours is needed (any more): serve this.
    Settled(ConnectionRecord),
}

/// Why a refresh was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshReason {
    /// `getCredential` found the token stale: refresh unless someone already did.
    Stale,
    /// The scheduler: refresh if inside the refresh window.
    Scheduled,
    /// `refreshConnection()`: refresh now.
    Forced,
}

impl Engine {
    /// Refreshes a connection (single-flight across processes) and returns it as stored
    /// afterwards. A store failure backs the connection off like a failed refresh, but retries
    /// before the token's last usable moment: an outage of the store (a database restart) must
    /// not outlast a token that a retry just after it could still replace.
    pub async fn refresh(
        &self,
        key: &ConnectionKey,
        reason: RefreshReason,
    ) -> Result<ConnectionRecord> {
        let refreshed = self.refresh_once(key, reason).await;
        if let Err(e) = &refreshed {
            if e.code == ErrorCode::StoreError {
                let last_chance = self
                    .cache
                    .get_key(key)
                    .and_then(|entry| entry.record.expires_at)
                    .map(|expires_at| timing::usable_until(expires_at) - STORE_RETRY_LEAD_MS);
                self.back_off(key, None, last_chance);
            }
        }
        refreshed
    }

    async fn refresh_once(
        &self,
        key: &ConnectionKey,
        reason: RefreshReason,
    ) -> Result<ConnectionRecord> {
        // Counted before anything else: close() closes its connector and then waits for this
        // count to reach zero, so a refresh either is counted when close() looks, or finds no
        // open connector (see Client::close). Counted any later, one could get the connector
        // just before close(), and send its request while the process exits: a rotated refresh
        // token then never reaches the store, and the grant is lost.
        let _in_flight = self.refreshes.start();
        let _flight = self.refreshes.single_flight(key.cache_key()).await;
        // What the cache holds may settle it (a refresh by this process just now, or by another
        // one, which the change feed brought): no store round trip, no lease.
        let now = self.now_ms();
        if let Some(settled) = self.cached_settled(key, reason, now) {
            return Ok(settled);
        }
        // The refresh this caller queued behind may just have failed: its backoff (and any
        // Retry-After) holds for the callers that waited on it too, or each would send the
        // request again at once, and a refresh token that may have been spent with it.
        if reason != RefreshReason::Forced && self.refreshes.backing_off(&key.cache_key(), now) {
            if let Some(entry) = self.cache.get_key(key) {
                return Ok(entry.record.clone());
            }
        }
        let connector = self.connector();
        let provider = connector
            .as_ref()
            .and_then(|c| c.catalog.get(&key.provider).cloned())
            .filter(|p| p.definition.refresh.supported && p.require_client().is_ok());
        let (Some(connector), Some(provider)) = (connector, provider) else {
            // Not refreshable here: the token is served until it expires, then CONNECTION_EXPIRED.
            let record = self.load(key).await?;
            return Ok(self.cache_put(record).record.clone());
        };
        let (record, slot) = match self.lease_refresh(key, reason, &connector).await? {
            // Closed while it waited for the lease: close() may have stopped waiting for it.
            Leased::Ours(record, _) if connector.is_closed() => {
                let _ = self
                    .store
                    .release_lease(key, LeasePurpose::Refresh, &self.owner)
                    .await;
                return Ok(record);
            }
            Leased::Ours(record, slot) => (record, slot),
            Leased::Settled(record) => return Ok(record),
        };
        let refreshed = self
            .refresh_leased(record, reason, slot, &connector, &provider)
            .await;
        // After the commit; if this fails, the lease runs out on its own.
        let _ = self
            .store
            .release_lease(key, LeasePurpose::Refresh, &self.owner)
            .await;
        refreshed
    }

    /// The cached record of `key`, if it needs no refresh for `reason` at `now` (a refresh by
    /// this process just now, or by another one that the change feed brought).
    fn cached_settled(
        &self,
        key: &ConnectionKey,
        reason: RefreshReason,
        now: i64,
    ) -> Option<ConnectionRecord> {
        self.cache
            .get_key(key)
            .filter(|entry| !refresh_needed(&entry.record, reason, now))
            .map(|entry| entry.record.clone())
    }

    /// Gets the refresh lease of `key` (and a request slot for its provider), or finds that no
    /// refresh of ours is needed because another process holds it or has just refreshed.
    async fn lease_refresh(
        &self,
        key: &ConnectionKey,
        reason: RefreshReason,
        connector: &Connector,
    ) -> Result<Leased> {
        // A read first: another process's refresh may be stored and not yet brought here by the
        // change feed. A read costs far less than taking a lease (a write that waits on the
        // database's disk) and giving it back.
        if reason != RefreshReason::Forced {
            let stored = self.load(key).await?;
            if !refresh_needed(&stored, reason, self.now_ms()) {
                return Ok(Leased::Settled(self.cache_put(stored).record.clone()));
            }
        }
        loop {
            // The slot first: waiting for one must not eat into the lease.
            let (permit, waited) = connector.permit(&key.provider).await;
            if waited {
                self.waited_for_slot(key);
            }
            let now = self.now_ms();
            // The wait for a slot can be long: the refresh we waited for may have come through
            // the change feed meanwhile.
            if reason != RefreshReason::Forced {
                if let Some(settled) = self.cached_settled(key, reason, now) {
                    return Ok(Leased::Settled(settled));
                }
            }
            let lease = Lease {
                key,
                purpose: LeasePurpose::Refresh,
                owner: &self.owner,
                until: now + connector.refresh_lease_ms,
            };
            let take = self.store.try_lease(lease, now).await?;
            self.lease_taken(key, LeasePurpose::Refresh, take);
            let held_until = match take {
                LeaseTake::Acquired | LeaseTake::TakenOver => {
                    // Re-read under the lease: another process may have refreshed just before.
                    match self.load(key).await {
                        Ok(record) if refresh_needed(&record, reason, now) => {
                            return Ok(Leased::Ours(record, permit));
                        }
                        stored => {
                            let _ = self
                                .store
                                .release_lease(key, LeasePurpose::Refresh, &self.owner)
                                .await;
                            let record = self.cache_put(stored?).record.clone();
                            return Ok(Leased::Settled(record));
                        }
                    }
                }
                LeaseTake::HeldUntil(until) => until,
            };
            drop(permit);
            // Another process is refreshing it.
            let current = match self.cache.get_key(key) {
                Some(entry) => entry.record.clone(),
                None => self.cache_put(self.load(key).await?).record.clone(),
            };
            if reason == RefreshReason::Stale && !refresh_needed(&current, reason, now) {
                // Its new token reached the cache already.
                return Ok(Leased::Settled(current));
            }
            if reason == RefreshReason::Scheduled {
                // Its result arrives through the change feed; should it die, we take over when
                // its lease ends.
                self.scheduler
                    .at(held_until + 1, Job::Refresh(key.cache_key()));
                return Ok(Leased::Settled(current));
            }
            // A caller waits for the holder's outcome, which the change feed brings into the
            // cache, usually within milliseconds. Every change in this process wakes it, and
            // costs only a look at the cache; the store (its lease, then the row) is asked again
            // each LEASE_POLL only, in case the feed is behind or the holder is gone.
            let poll_at = tokio::time::Instant::now()
                + LEASE_POLL.min(Duration::from_millis((held_until - now).max(1) as u64));
            loop {
                let changed = self.cache_changed.notified();
                if let Some(entry) = self.cache.get_key(key) {
                    if settled_by_holder(&current, &entry.record) {
                        return Ok(Leased::Settled(entry.record.clone()));
                    }
                }
                if tokio::time::timeout_at(poll_at, changed).await.is_err() {
                    break;
                }
            }
            let stored = self.load(key).await?;
            if settled_by_holder(&current, &stored) {
                return Ok(Leased::Settled(self.cache_put(stored).record.clone()));
            }
        }
    }

    /// The refresh itself, under the lease. `slot` is given back as soon as the provider has
    /// answered: it bounds requests in flight, not the bookkeeping after them.
    async fn refresh_leased(
        &self,
        record: ConnectionRecord,
        reason: RefreshReason,
        slot: tokio::sync::OwnedSemaphorePermit,
        connector: &Connector,
        provider: &Provider,
    ) -> Result<ConnectionRecord> {
        let secrets = self.secrets_of(&record).await?;
        let values = secrets.values();
        let refresh_token = secrets
            .refresh_token
            .as_ref()
            .ok_or_else(|| Error::internal("refresh token vanished"))?;
        let requested_at = self.now_ms();
        let sent = std::time::Instant::now();
        let answer = {
            let _in_flight = self.request_in_flight(&record.key);
            grant::refresh(
                &connector.http,
                provider,
                refresh_token,
                &values,
                requested_at,
            )
            .await
        };
        drop(slot);
        let expires_at = answer
            .as_ref()
            .ok()
            .and_then(|t| t.expires_at(requested_at));
        self.refresh_answered(
            &record.key,
            reason,
            answer.as_ref().err(),
            sent.elapsed(),
            expires_at,
        );
        match answer {
            Ok(tokens) => {
                let lease_ms = connector.refresh_lease_ms;
                self.store_refreshed(record, values, tokens, requested_at, lease_ms)
                    .await
            }
            Err(failure) => self.refresh_failed(record, failure).await,
        }
    }

    /// Waits (at most `limit`) until no refresh of this engine is under way, so that a process
    /// can exit without losing a rotated refresh token.
    pub async fn settle(&self, limit: Duration) {
        self.refreshes.settle(limit).await
    }
}

/// Whether another process's refresh of `waited_on` has had its outcome, as `seen` shows: a new
/// token, or its failure recorded. Another write (a probe's timestamp) leaves the token as stale
/// as it was.
fn settled_by_holder(waited_on: &ConnectionRecord, seen: &ConnectionRecord) -> bool {
    seen.credential != waited_on.credential
        || (seen.version != waited_on.version && seen.status != ConnectionStatus::Active)
}

/// Whether `record` still needs the refresh `reason` asks for.
fn refresh_needed(record: &ConnectionRecord, reason: RefreshReason, now: i64) -> bool {
    if record.status == ConnectionStatus::Revoked || record.refresh_token.is_none() {
        return false;
    }
    match reason {
        RefreshReason::Stale => maintenance::is_stale(record, now),
        RefreshReason::Scheduled => maintenance::refresh_due(record, now),
        RefreshReason::Forced => true,
    }
}
