//! Keeping connections alive: the single-flight refresh, health probes, their status changes
//! and events. The rules (RFC 6749 §6, RFC 9700 §4.14.2, reference/peers.md §12):
//!
//! - one refresh per connection at a time, across processes: in-process callers wait on one
//!   lock and get its result; processes take a lease in the store (expiring on its own if the
//!   holder dies) before they spend the refresh token;
//! - the store is re-read under the lease, so a refresh done meanwhile is adopted, not repeated;
//! - a caller that finds the token stale while another process refreshes it waits for that
//!   process's commit (the change feed brings it), as it would for a refresh in this process: a
//!   token past its stale point is not served while a refresh can still replace it (its expiry
//!   is only known to the second, see timing.rs);
//! - a new refresh token is committed (compare-and-swap on the version) before the new access
//!   token is served; a response without one keeps the old;
//! - `invalid_grant` means revoked only after a re-read shows nobody else rotated the token;
//! - transient failures back off with jitter, honour `Retry-After`, and leave the still-valid
//!   token in service (status `degraded`);
//! - a request that may have reached the provider is re-read before it is ever sent again;
//! - a scheduled health probe runs in one process per interval (a lease as long as the interval).

use super::{Engine, Event, EventKind, RetryState};
use crate::client::Connector;
use crate::connect::refresh::{self as grant, RefreshFailure};
use crate::connect::{identity, token::TokenSet};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::ConnectionKey;
use crate::maintenance::{self, timing};
use crate::providers::Provider;
use crate::records::{ConnectionRecord, ConnectionStatus, CredentialKind, LastError};
use crate::scheduler::{Job, Runner};
use crate::store::{Lease, LeasePurpose, LeaseTake};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// While waiting for another process's refresh, the store is asked this often, and when the
/// holder's lease ends. The change feed brings the outcome (within milliseconds) and wakes the
/// waiter; the poll only covers a feed that fell behind, or a holder that gave the lease back
/// without writing. Polling more often costs two round trips per waiting connection and
/// process each time, which under load slows the very refresh being waited for.
const LEASE_POLL: Duration = Duration::from_millis(500);

/// After a store failure, a refresh is retried at least this long before the token's last usable
/// moment.
const STORE_RETRY_LEAD_MS: i64 = 500;

/// How long a refreshed token set is held in memory, retrying, while the store is unreachable.
const COMMIT_PERSISTENCE: Duration = Duration::from_secs(120);
const COMMIT_RETRY_MIN: Duration = Duration::from_millis(50);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(1);

/// Counts a refresh in flight for [`Engine::settle`] while alive.
struct InFlight<'a>(&'a Engine);

impl<'a> InFlight<'a> {
    fn new(engine: &'a Engine) -> Self {
        engine.refreshes_in_flight.fetch_add(1, Ordering::SeqCst);
        Self(engine)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.refreshes_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.refresh_ended.notify_waiters();
    }
}

/// Marks a scheduled probe of a connection as under way in this process while alive.
struct Probing<'a>(&'a Engine, String);

impl<'a> Probing<'a> {
    fn start(engine: &'a Engine, key: &ConnectionKey) -> Option<Self> {
        let cache_key = key.cache_key();
        engine
            .probing
            .insert(cache_key.clone(), ())
            .is_none()
            .then(|| Self(engine, cache_key))
    }
}

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.0.probing.remove(&self.1);
    }
}

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

/// Counts of connections by status, overall and per provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_provider: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Runner for Engine {
    fn run(self: Arc<Self>, job: Job) {
        // A job in flight keeps the engine alive until it ends.
        let engine = self;
        tokio::spawn(async move {
            match job {
                Job::Refresh(cache_key) => {
                    if let Some(entry) = engine.cache.get_by_cache_key(&cache_key) {
                        if !engine.backing_off(&cache_key, engine.now_ms()) {
                            let _ = engine
                                .refresh(&entry.record.key, RefreshReason::Scheduled)
                                .await;
                        }
                    }
                }
                Job::Check(cache_key) => {
                    if let Some(entry) = engine.cache.get_by_cache_key(&cache_key) {
                        // Several changes can each schedule a probe for the same time: the first
                        // runs (and schedules the next), the rest find it recently checked.
                        let interval = engine
                            .connector()
                            .and_then(|c| c.health_interval_ms)
                            .unwrap_or(i64::MAX);
                        let checked_recently = entry
                            .record
                            .last_check_at
                            .is_some_and(|last| engine.now_ms() - last < interval / 2);
                        if !checked_recently {
                            let _ = engine.scheduled_check(&entry.record.key, interval).await;
                        }
                    }
                }
                Job::PruneEnded => engine.prune_ended().await,
                Job::Invalidate { .. } => {}
            }
        });
    }
}

impl Engine {
    /// Registers an instance's provider configuration for refreshes and probes.
    pub fn attach(&self, connector: &Arc<Connector>) {
        let mut connectors = self.connectors.write();
        connectors.retain(|c| c.strong_count() > 0);
        let first = connectors.is_empty();
        connectors.push(Arc::downgrade(connector));
        drop(connectors);
        // Connections loaded before any instance could say how to probe them (once: later
        // instances join the probes already scheduled).
        if first {
            for entry in self.cache.entries() {
                self.schedule_check(&entry.record);
            }
        }
    }

    /// The settings of an instance still open.
    pub(super) fn connector(&self) -> Option<Arc<Connector>> {
        self.connectors
            .read()
            .iter()
            .find_map(|c| c.upgrade().filter(|c| !c.is_closed()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(super) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(super) fn backing_off(&self, cache_key: &str, now: i64) -> bool {
        self.retries
            .get(cache_key)
            .is_some_and(|r| r.retry_at > now)
    }

    pub(super) fn retries_clear(&self, records: &[ConnectionRecord]) {
        for record in records {
            self.retries.remove(&record.key.cache_key());
        }
    }

    /// Schedules the next health probe of a connection, spread over the interval by its key.
    pub(super) fn schedule_check(&self, record: &ConnectionRecord) {
        let Some(connector) = self.connector() else {
            return;
        };
        let Some(interval) = connector.health_interval_ms else {
            return;
        };
        // Only connections Authpipe can speak for: OAuth, of a provider the app configured.
        let probe = connector
            .catalog
            .get(&record.key.provider)
            .is_some_and(|p| p.definition.identity.is_some() && p.require_client().is_ok());
        if !probe
            || record.kind != CredentialKind::OAuth2
            || record.status == ConnectionStatus::Revoked
        {
            return;
        }
        let due = match record.last_check_at {
            Some(last) => last + interval,
            // First probe: a stable offset inside the interval, so probes spread evenly.
            None => {
                self.now_ms() + (spread(&record.key.cache_key()) % interval.max(1) as u64) as i64
            }
        };
        self.scheduler.at(due, Job::Check(record.key.cache_key()));
    }

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
        let _in_flight = InFlight::new(self);
        let _flight = self.single_flight(key.cache_key()).await;
        // What the cache holds may settle it (a refresh by this process just now, or by another
        // one, which the change feed brought): no store round trip, no lease.
        let now = self.now_ms();
        if let Some(settled) = self.cached_settled(key, reason, now) {
            return Ok(settled);
        }
        // The refresh this caller queued behind may just have failed: its backoff (and any
        // Retry-After) holds for the callers that waited on it too, or each would send the
        // request again at once, and a refresh token that may have been spent with it.
        if reason != RefreshReason::Forced && self.backing_off(&key.cache_key(), now) {
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
            .refresh_leased(record, slot, &connector, &provider)
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
            let permit = connector.permit(&key.provider).await;
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
            let held_until = match self.store.try_lease(lease, now).await? {
                LeaseTake::Acquired => {
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
        slot: tokio::sync::OwnedSemaphorePermit,
        connector: &Connector,
        provider: &Provider,
    ) -> Result<ConnectionRecord> {
        let secrets = self.secrets_of(&record).await?;
        let values = json_object(secrets.extras.as_ref());
        let refresh_token = secrets
            .refresh_token
            .clone()
            .ok_or_else(|| Error::internal("refresh token vanished"))?;
        let requested_at = self.now_ms();
        let answer = grant::refresh(
            &connector.http,
            provider,
            &refresh_token,
            &values,
            requested_at,
        )
        .await;
        drop(slot);
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
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.refresh_ended.notified();
            if self.refreshes_in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }

    /// Backs off the connection's next refresh attempt (a failed refresh, or an unreachable
    /// store) and schedules it, no later than `deadline` if one is given ([`timing::retry_at`]).
    fn back_off(
        &self,
        key: &ConnectionKey,
        retry_after: Option<i64>,
        deadline: Option<i64>,
    ) -> (u32, i64) {
        let attempts = self.retries.get(&key.cache_key()).map_or(0, |r| r.attempts) + 1;
        let now = self.now_ms();
        let backoff = timing::backoff_ms(attempts, rand::random(), retry_after);
        let retry_at = timing::retry_at(now, backoff, deadline);
        self.retries
            .insert(key.cache_key(), RetryState { attempts, retry_at });
        self.scheduler.at(retry_at, Job::Refresh(key.cache_key()));
        (attempts, retry_at)
    }

    async fn store_refreshed(
        &self,
        record: ConnectionRecord,
        mut values: Map<String, Value>,
        tokens: TokenSet,
        requested_at: i64,
        lease_ms: i64,
    ) -> Result<ConnectionRecord> {
        let key = record.key.clone();
        let now = self.now_ms();
        // The key that opened the row this replaces: the store refuses anything else.
        let tenant_key = self.tenant_key_for(&key.tenant, &record.credential).await?;
        let seal = |field: &str, value: &str| {
            self.vault.seal(
                &tenant_key,
                &super::connection_place(&key, field),
                value.as_bytes(),
            )
        };
        values.extend(tokens.extras.clone());
        let updated = ConnectionRecord {
            credential: seal(super::FIELD_CREDENTIAL, tokens.access_token.expose_secret())?,
            // RFC 6749 §6: a new refresh token replaces the old; without one, the old stays.
            refresh_token: match &tokens.refresh_token {
                Some(rt) => Some(seal(super::FIELD_REFRESH_TOKEN, rt.expose_secret())?),
                None => record.refresh_token.clone(),
            },
            extras: if values.is_empty() {
                None
            } else {
                Some(seal(
                    super::FIELD_EXTRAS,
                    &Value::Object(values).to_string(),
                )?)
            },
            expires_at: tokens.expires_at(requested_at),
            scopes: tokens
                .scopes
                .clone()
                .unwrap_or_else(|| record.scopes.clone()),
            status: ConnectionStatus::Active,
            last_error: None,
            last_refresh_at: Some(now),
            token_issued_at: Some(requested_at),
            updated_at: now,
            next_refresh_at: None,
            ..record.clone()
        };
        let updated = ConnectionRecord {
            next_refresh_at: updated
                .expires_at
                .map(|e| timing::refresh_at(requested_at, e, 0.5)),
            ..updated
        };
        // Commit before anyone is handed the new access token.
        let stored = self
            .commit_refreshed(updated, record.version, lease_ms)
            .await?;
        self.retries.remove(&key.cache_key());
        let entry = self.cache_put(stored);
        let mut event = Event::new(EventKind::Refreshed, &key, now);
        event.status = Some(ConnectionStatus::Active);
        event.expires_at = entry.record.expires_at;
        self.emit(event);
        if record.status != ConnectionStatus::Active {
            self.emit(status_event(EventKind::Recovered, &entry.record, now));
        }
        Ok(entry.record.clone())
    }

    /// Writes a refresh's result. The provider has rotated the refresh token, so the new one
    /// exists only here: while the store is unreachable (a database restart) the write is
    /// retried, and the lease renewed, for up to [`COMMIT_PERSISTENCE`]. A conflict means
    /// another writer changed the row (a status, a probe) but not the tokens (we hold the
    /// lease): ours win, keeping the time of a probe made meanwhile (else the next one would
    /// come at once). Conflicts are retried as long.
    async fn commit_refreshed(
        &self,
        mut updated: ConnectionRecord,
        mut expected_version: i64,
        lease_ms: i64,
    ) -> Result<ConnectionRecord> {
        let key = updated.key.clone();
        let give_up = tokio::time::Instant::now() + COMMIT_PERSISTENCE;
        let mut pause = COMMIT_RETRY_MIN;
        loop {
            let written = match self
                .store
                .update_connection(updated.clone(), expected_version)
                .await
            {
                Ok(Some(stored)) => return Ok(stored),
                Ok(None) => self.load(&key).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(current) if tokio::time::Instant::now() < give_up => {
                    updated.last_check_at = updated.last_check_at.max(current.last_check_at);
                    expected_version = current.version;
                }
                Ok(_) => {
                    return Err(Error::new(
                        ErrorCode::StoreError,
                        "the connection kept changing while a refresh was stored",
                    ))
                }
                Err(e)
                    if e.code == ErrorCode::StoreError && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMMIT_RETRY_MAX);
                    let now = self.now_ms();
                    let renew = Lease {
                        key: &key,
                        purpose: LeasePurpose::Refresh,
                        owner: &self.owner,
                        until: now + lease_ms,
                    };
                    let _ = self.store.try_lease(renew, now).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn refresh_failed(
        &self,
        record: ConnectionRecord,
        failure: RefreshFailure,
    ) -> Result<ConnectionRecord> {
        let key = record.key.clone();
        let now = self.now_ms();
        let mut record = record;
        // Whatever went wrong: if another writer rotated the token meanwhile, theirs stands. A
        // write that kept the tokens (a probe's time, say) does not settle our failure: it is
        // recorded on that newer row.
        if matches!(
            failure,
            RefreshFailure::Terminal { .. } | RefreshFailure::Ambiguous { .. }
        ) {
            if let Some(current) = self.stored_connection(&key).await? {
                if current.credential != record.credential
                    || current.refresh_token != record.refresh_token
                {
                    return Ok(self.cache_put(current).record.clone());
                }
                record = current;
            }
        }
        let error = LastError {
            code: failure.code().to_owned(),
            message: failure.message().to_owned(),
        };
        if let RefreshFailure::Terminal { .. } = failure {
            let revoked = self
                .set_status(&record, ConnectionStatus::Revoked, Some(error.clone()), now)
                .await?;
            self.retries.remove(&key.cache_key());
            let mut event = status_event(EventKind::Revoked, &revoked, now);
            event.error = Some(error);
            self.emit(event);
            return Ok(revoked);
        }
        // Transient, ambiguous after the re-read, or a configuration problem: back off and keep
        // serving the still-valid token. (Configuration problems retry no sooner than a minute.)
        let retry_after = match &failure {
            RefreshFailure::Transient { retry_after_ms, .. } => *retry_after_ms,
            RefreshFailure::Config { .. } => Some(60_000),
            _ => None,
        };
        let (attempts, retry_at) = self.back_off(&key, retry_after, None);
        let status = if maintenance::is_expired(&record, now) {
            ConnectionStatus::Expired
        } else {
            ConnectionStatus::Degraded
        };
        let stored = self
            .set_status(&record, status, Some(error.clone()), now)
            .await?;
        let mut event = status_event(EventKind::RefreshFailed, &stored, now);
        event.error = Some(error.clone());
        event.attempt = Some(attempts);
        event.next_retry_at = Some(retry_at);
        self.emit(event);
        if record.status == ConnectionStatus::Active {
            let mut event = status_event(EventKind::Degraded, &stored, now);
            event.error = Some(error);
            self.emit(event);
        }
        Ok(stored)
    }

    /// Writes a status change (compare-and-swap; on a conflict the newer row wins and is kept).
    async fn set_status(
        &self,
        record: &ConnectionRecord,
        status: ConnectionStatus,
        error: Option<LastError>,
        now: i64,
    ) -> Result<ConnectionRecord> {
        let changed = ConnectionRecord {
            status,
            last_error: error,
            updated_at: now,
            ..record.clone()
        };
        self.write_or_keep_newer(changed, record.version).await
    }

    /// Writes `changed` if the row is still at `expected_version`; if another writer got there
    /// first, their newer row stands. Either way the cache follows what is stored.
    async fn write_or_keep_newer(
        &self,
        changed: ConnectionRecord,
        expected_version: i64,
    ) -> Result<ConnectionRecord> {
        let key = changed.key.clone();
        let stored = match self
            .store
            .update_connection(changed, expected_version)
            .await?
        {
            Some(stored) => stored,
            None => self.load(&key).await?,
        };
        Ok(self.cache_put(stored).record.clone())
    }

    /// A scheduled probe: run by whichever process takes the connection's probe lease for
    /// this interval; the others skip it, and learn its result through the change feed.
    async fn scheduled_check(&self, key: &ConnectionKey, interval: i64) -> Result<()> {
        // One probe per connection at a time in this process (jobs for the same moment pile up;
        // the lease would let them all through, since it is ours).
        let Some(_probing) = Probing::start(self, key) else {
            return Ok(());
        };
        let now = self.now_ms();
        let lease = Lease {
            key,
            purpose: LeasePurpose::Check,
            owner: &self.owner,
            until: now + interval,
        };
        match self.store.try_lease(lease, now).await? {
            LeaseTake::Acquired => {
                let record = self.load(key).await?;
                let probed_meanwhile = record
                    .last_check_at
                    .is_some_and(|last| now - last < interval / 2);
                // A token about to be refreshed says little; its refresh will tell, and the
                // probe comes after it (the refreshed record schedules it).
                let refreshing =
                    record.refresh_token.is_some() && maintenance::is_stale(&record, now);
                if refreshing {
                    let _ = self
                        .store
                        .release_lease(key, LeasePurpose::Check, &self.owner)
                        .await;
                } else if !probed_meanwhile {
                    self.check(key).await?;
                }
            }
            // Should its holder die before probing, this process probes after the lease ends.
            LeaseTake::HeldUntil(until) => {
                self.scheduler.at(until + 1, Job::Check(key.cache_key()))
            }
        }
        Ok(())
    }

    /// Probes a connection's health now: the provider's identity probe decides whether it is
    /// alive (`revoked` otherwise) and still has its required scopes.
    pub async fn check(&self, key: &ConnectionKey) -> Result<ConnectionRecord> {
        let record = self.load(key).await?;
        let Some(connector) = self.connector() else {
            return Ok(self.cache_put(record).record.clone());
        };
        let Some(provider) = connector.catalog.get(&key.provider).cloned() else {
            return Ok(self.cache_put(record).record.clone());
        };
        let Some(probe) = provider.definition.identity.clone() else {
            return Ok(self.cache_put(record).record.clone());
        };
        if record.status == ConnectionStatus::Revoked {
            return Ok(self.cache_put(record).record.clone());
        }
        let secrets = self.secrets_of(&record).await?;
        let values = json_object(secrets.extras.as_ref());
        let url = provider
            .definition
            .fill("identity.url", &probe.url, &|name| {
                provider.template_value(&[&values], name)
            })?;
        let outcome = {
            let _permit = connector.permit(&key.provider).await;
            identity::probe(&connector.http, &provider, url, &secrets.credential).await
        };
        let now = self.now_ms();
        let refresh_failing = self.retries.contains_key(&key.cache_key());
        // A token near its end may already be dead at the provider (expiry is known to the second
        // only): "inactive" then proves nothing, and its refresh will tell.
        let near_end = maintenance::is_stale(&record, now);
        let (status, error, kind) = match outcome {
            Ok(identity) if !identity.active && near_end => {
                (record.status, record.last_error.clone(), None)
            }
            Ok(identity) if !identity.active => (
                ConnectionStatus::Revoked,
                Some(LastError {
                    code: "inactive".into(),
                    message: format!(
                        "{} reports the token inactive (revoked or uninstalled)",
                        provider.definition.display_name
                    ),
                }),
                Some(EventKind::Revoked),
            ),
            Ok(identity) => {
                let missing = identity
                    .scopes
                    .as_deref()
                    .map(|granted| provider.missing_scopes(granted))
                    .unwrap_or_default();
                if !missing.is_empty() {
                    let error = LastError {
                        code: ErrorCode::InsufficientScope.as_str().into(),
                        message: format!(
                            "the connection lost required scope(s) {}",
                            missing.join(", ")
                        ),
                    };
                    (
                        ConnectionStatus::InsufficientScope,
                        Some(error),
                        Some(EventKind::Degraded),
                    )
                } else if refresh_failing {
                    (record.status, record.last_error.clone(), None)
                } else {
                    let recovered = record.status != ConnectionStatus::Active;
                    (
                        ConnectionStatus::Active,
                        None,
                        recovered.then_some(EventKind::Recovered),
                    )
                }
            }
            // Our configuration, not the connection's health.
            Err(e) if e.code == ErrorCode::InvalidArgument => return Err(e),
            Err(e) => {
                let error = LastError {
                    code: e.code.as_str().into(),
                    message: e.message,
                };
                let kind =
                    (record.status == ConnectionStatus::Active).then_some(EventKind::Degraded);
                (ConnectionStatus::Degraded, Some(error), kind)
            }
        };
        let checked = |base: &ConnectionRecord| ConnectionRecord {
            status,
            last_error: error.clone(),
            last_check_at: Some(now),
            updated_at: now,
            ..base.clone()
        };
        // Another writer may have got there first: a refresh, most often, which moots what the
        // probe said of the old token. Its row stands, with the probe's time on it, so that the
        // next probe comes an interval from now and not at once (probing again and again while
        // refreshes keep winning). A status change found on the same token is still applied.
        let (stored, changed_from) = match self
            .store
            .update_connection(checked(&record), record.version)
            .await?
        {
            Some(stored) => (stored, Some(record.status)),
            None => {
                let newer = self.load(key).await?;
                let applies = kind.is_some() && newer.credential == record.credential;
                let rewritten = if applies {
                    checked(&newer)
                } else {
                    ConnectionRecord {
                        last_check_at: Some(now),
                        updated_at: now,
                        ..newer.clone()
                    }
                };
                match self
                    .store
                    .update_connection(rewritten, newer.version)
                    .await?
                {
                    Some(stored) => (stored, applies.then_some(newer.status)),
                    None => (self.load(key).await?, None),
                }
            }
        };
        let stored = self.cache_put(stored).record.clone();
        let kind = kind.filter(|_| changed_from.is_some_and(|from| from != status));
        if let Some(kind) = kind {
            let mut event = status_event(kind, &stored, now);
            event.error = error;
            self.emit(event);
        }
        Ok(stored)
    }

    /// Connection counts by status and provider, from the cache (no I/O).
    pub fn health(&self) -> Health {
        let mut health = Health::default();
        for entry in self.cache.entries() {
            let record = &entry.record;
            let status = record.status.as_str().to_owned();
            health.total += 1;
            *health.by_status.entry(status.clone()).or_default() += 1;
            *health
                .by_provider
                .entry(record.key.provider.to_string())
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        health
    }
}

/// Whether another process's refresh of `waited_on` has had its outcome, as `seen` shows: a new
/// token, or its failure recorded. Another write (a probe's timestamp) leaves the token as stale
/// as it was.
fn settled_by_holder(waited_on: &ConnectionRecord, seen: &ConnectionRecord) -> bool {
    seen.credential != waited_on.credential
        || (seen.version != waited_on.version && seen.status != ConnectionStatus::Active)
}

fn status_event(kind: EventKind, record: &ConnectionRecord, now: i64) -> Event {
    let mut event = Event::new(kind, &record.key, now);
    event.status = Some(record.status);
    event.expires_at = record.expires_at;
    event.error = record.last_error.clone();
    event
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

fn json_object(json: Option<&SecretString>) -> Map<String, Value> {
    json.and_then(|j| serde_json::from_str(j.expose_secret()).ok())
        .unwrap_or_default()
}

/// A stable spread of keys over an interval (FNV-1a).
fn spread(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A connection's turn in the single-flight map. Its entry goes with the last caller that
/// waited on it, so the map holds the connections being refreshed now, not every id anyone
/// ever asked about (a stream of calls on unknown ids would otherwise grow it without bound).
struct Flight<'a> {
    engine: &'a Engine,
    cache_key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // The map's own reference is the last one: nobody holds or waits for this lock.
        self.engine
            .refresh_locks
            .remove_if(&self.cache_key, |_, lock| Arc::strong_count(lock) == 1);
    }
}

impl Engine {
    /// Waits for this connection's turn: one refresh at a time, the others queue behind it.
    async fn single_flight(&self, cache_key: String) -> Flight<'_> {
        let lock = self
            .refresh_locks
            .entry(cache_key.clone())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        Flight {
            engine: self,
            cache_key,
            guard: Some(guard),
        }
    }

    /// Connections with a single-flight entry (tests: it must not grow with unknown ids).
    #[cfg(test)]
    pub(crate) fn single_flight_entries(&self) -> usize {
        self.refresh_locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{open_shared, EngineOptions, MasterKeySource, StoreLocation};
    use crate::ids::{ProviderId, TenantId, UserId};
    use crate::vault::MasterKeyConfig;
    use secrecy::SecretString;

    async fn engine() -> Arc<Engine> {
        let keys = MasterKeySource::Configured(vec![MasterKeyConfig {
            id: None,
            key: SecretString::from("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
            retired: false,
        }]);
        let options = EngineOptions {
            store: StoreLocation::Memory,
            keys,
            clock: None,
        };
        open_shared(options).await.unwrap().engine
    }

    fn unknown(i: usize) -> ConnectionKey {
        ConnectionKey::new(
            ProviderId::parse("attio").unwrap(),
            TenantId::parse(format!("tenant_{i}")).unwrap(),
            UserId::parse("nobody").unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_single_flight_map_keeps_no_entry_for_connections_not_being_refreshed() {
        let engine = engine().await;
        for i in 0..500 {
            let err = engine
                .refresh(&unknown(i), RefreshReason::Forced)
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::ConnectionNotFound);
        }
        // Many callers queued on one connection at once: the entry goes with the last of them.
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.refresh(&unknown(0), RefreshReason::Stale).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_err());
        }
        assert_eq!(engine.single_flight_entries(), 0);
    }
}
