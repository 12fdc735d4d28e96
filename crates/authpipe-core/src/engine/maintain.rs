//! Keeping connections alive: the single-flight refresh, health probes, their status changes
//! and events. The rules (RFC 6749 §6, RFC 9700 §4.14.2, reference/peers.md §12):
//!
//! - one refresh per connection at a time; waiters get its result, never a second refresh;
//! - the store is re-read under the lock, so a refresh done meanwhile is adopted, not repeated;
//! - a new refresh token is committed (compare-and-swap on the version) before the new access
//!   token is served; a response without one keeps the old;
//! - `invalid_grant` means revoked only after a re-read shows nobody else rotated the token;
//! - transient failures back off with jitter, honour `Retry-After`, and leave the still-valid
//!   token in service (status `degraded`);
//! - a request that may have reached the provider is re-read before it is ever sent again.

use super::{Engine, Event, EventKind, RetryState};
use crate::client::Connector;
use crate::connect::refresh::{self as grant, RefreshFailure};
use crate::connect::{identity, token::TokenSet};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::ConnectionKey;
use crate::maintenance::{self, timing};
use crate::records::{ConnectionRecord, ConnectionStatus, CredentialKind, LastError};
use crate::scheduler::{Job, Runner};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::broadcast;

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
                            let _ = engine.check(&entry.record.key).await;
                        }
                    }
                }
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

    pub(super) fn connector(&self) -> Option<Arc<Connector>> {
        self.connectors.read().iter().find_map(|c| c.upgrade())
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

    /// Refreshes a connection (single-flight) and returns it as stored afterwards.
    pub async fn refresh(
        &self,
        key: &ConnectionKey,
        reason: RefreshReason,
    ) -> Result<ConnectionRecord> {
        let cache_key = key.cache_key();
        let lock = self
            .refresh_locks
            .entry(cache_key.clone())
            .or_default()
            .clone();
        let _flight = lock.lock().await;
        let record = self.load(key).await?;
        let now = self.now_ms();
        let due = match reason {
            RefreshReason::Stale => maintenance::is_stale(&record, now),
            RefreshReason::Scheduled => maintenance::refresh_due(&record, now),
            RefreshReason::Forced => true,
        };
        if !due || record.status == ConnectionStatus::Revoked || record.refresh_token.is_none() {
            // Someone refreshed meanwhile (or there is nothing to refresh with): adopt what is stored.
            return Ok(self.cache_put(record).record.clone());
        }
        let Some(connector) = self.connector() else {
            return Ok(self.cache_put(record).record.clone());
        };
        let Some(provider) = connector.catalog.get(&key.provider).cloned() else {
            return Ok(self.cache_put(record).record.clone());
        };
        if !provider.definition.refresh.supported || provider.require_client().is_err() {
            // Not refreshable here: the token is served until it expires, then CONNECTION_EXPIRED.
            return Ok(self.cache_put(record).record.clone());
        }
        let secrets = self.secrets_of(&record).await?;
        let values = json_object(secrets.extras.as_ref());
        let refresh_token = secrets
            .refresh_token
            .clone()
            .ok_or_else(|| Error::internal("refresh token vanished"))?;
        let outcome = {
            let _permit = connector.permit(&key.provider).await;
            grant::refresh(&connector.http, &provider, &refresh_token, &values, now).await
        };
        match outcome {
            Ok(tokens) => self.store_refreshed(record, values, tokens).await,
            Err(failure) => self.refresh_failed(record, failure).await,
        }
    }

    async fn store_refreshed(
        &self,
        record: ConnectionRecord,
        mut values: Map<String, Value>,
        tokens: TokenSet,
    ) -> Result<ConnectionRecord> {
        let key = record.key.clone();
        let now = self.now_ms();
        let tenant_key = self.tenant_key(&key.tenant, false).await?;
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
            expires_at: tokens
                .expires_in
                .map(|s| now + (s as i64).saturating_mul(1000)),
            scopes: tokens
                .scopes
                .clone()
                .unwrap_or_else(|| record.scopes.clone()),
            status: ConnectionStatus::Active,
            last_error: None,
            last_refresh_at: Some(now),
            token_issued_at: Some(now),
            updated_at: now,
            next_refresh_at: None,
            ..record.clone()
        };
        let updated = ConnectionRecord {
            next_refresh_at: updated.expires_at.map(|e| timing::refresh_at(now, e, 0.5)),
            ..updated
        };
        // Commit before anyone is handed the new access token. We hold the refresh lock, so a
        // conflict means another process wrote the row: our tokens are the newest the provider
        // issued (it just rotated), so they win.
        let stored = match self
            .store
            .update_connection(updated.clone(), record.version)
            .await?
        {
            Some(stored) => stored,
            None => {
                let current = self.load(&key).await?;
                self.store
                    .update_connection(updated, current.version)
                    .await?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::StoreError,
                            "the connection kept changing while a refresh was stored",
                        )
                    })?
            }
        };
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

    async fn refresh_failed(
        &self,
        record: ConnectionRecord,
        failure: RefreshFailure,
    ) -> Result<ConnectionRecord> {
        let key = record.key.clone();
        let now = self.now_ms();
        // Whatever went wrong: if another writer rotated the token meanwhile, theirs stands.
        if matches!(
            failure,
            RefreshFailure::Terminal { .. } | RefreshFailure::Ambiguous { .. }
        ) {
            if let Some(current) = self.stored_connection(&key).await? {
                if current.version != record.version {
                    return Ok(self.cache_put(current).record.clone());
                }
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
        let attempts = self.retries.get(&key.cache_key()).map_or(0, |r| r.attempts) + 1;
        let retry_at = now + timing::backoff_ms(attempts, rand::random(), retry_after);
        self.retries
            .insert(key.cache_key(), RetryState { attempts, retry_at });
        let expired = record.expires_at.is_some_and(|e| e <= now);
        let status = if expired {
            ConnectionStatus::Expired
        } else {
            ConnectionStatus::Degraded
        };
        let stored = self
            .set_status(&record, status, Some(error.clone()), now)
            .await?;
        self.scheduler.at(retry_at, Job::Refresh(key.cache_key()));
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
        let (status, error, kind) = match outcome {
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
        let checked = ConnectionRecord {
            status,
            last_error: error.clone(),
            last_check_at: Some(now),
            updated_at: now,
            ..record.clone()
        };
        let stored = self.write_or_keep_newer(checked, record.version).await?;
        if let Some(kind) = kind.filter(|_| status != record.status) {
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

fn status_event(kind: EventKind, record: &ConnectionRecord, now: i64) -> Event {
    let mut event = Event::new(kind, &record.key, now);
    event.status = Some(record.status);
    event.expires_at = record.expires_at;
    event.error = record.last_error.clone();
    event
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
