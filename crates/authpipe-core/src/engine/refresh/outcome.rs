//! A refresh's outcome, stored: new tokens committed before anyone is handed them (retried
//! through a store outage, since a rotated refresh token exists nowhere else), or a failure
//! classified into revoked, backing off, or expired.

use super::super::{
    connection_place, utf8, Engine, FIELD_CREDENTIAL, FIELD_EXTRAS, FIELD_REFRESH_TOKEN,
};
use crate::error::{Error, ErrorCode, Result};
use crate::events::{Event, EventKind};
use crate::ids::ConnectionKey;
use crate::maintenance::{self, timing};
use crate::protocol::refresh::RefreshFailure;
use crate::protocol::token::TokenSet;
use crate::records::{ConnectionRecord, ConnectionStatus, LastError};
use crate::scheduler::Job;
use crate::store::{Lease, LeasePurpose};
use crate::vault::WriteId;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use std::time::Duration;

/// How long a refreshed token set is held in memory, retrying, while the store is unreachable.
const COMMIT_PERSISTENCE: Duration = Duration::from_secs(120);
const COMMIT_RETRY_MIN: Duration = Duration::from_millis(50);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(1);

impl Engine {
    /// Backs off the connection's next refresh attempt (a failed refresh, or an unreachable
    /// store) and schedules it, no later than `deadline` if one is given ([`timing::retry_at`]).
    pub(super) fn back_off(
        &self,
        key: &ConnectionKey,
        retry_after: Option<i64>,
        deadline: Option<i64>,
    ) -> (u32, i64) {
        let now = self.now_ms();
        let (attempts, retry_at) = self.refreshes.failed(key, |attempts| {
            let backoff = timing::backoff_ms(attempts, rand::random(), retry_after);
            timing::retry_at(now, backoff, deadline)
        });
        self.scheduler.at(retry_at, Job::Refresh(key.cache_key()));
        (attempts, retry_at)
    }

    pub(super) async fn store_refreshed(
        &self,
        record: ConnectionRecord,
        mut values: Map<String, Value>,
        tokens: TokenSet,
        requested_at: i64,
        lease_ms: i64,
    ) -> Result<ConnectionRecord> {
        let key = record.key.clone();
        let now = self.now_ms();
        values.extend(tokens.extras.clone());
        let extras = (!values.is_empty()).then(|| Value::Object(values).to_string());
        // RFC 6749 §6: a new refresh token replaces the old; without one, the old stays, sealed
        // again (every field of a write shares its write id: see `vault` on rollback).
        let kept_refresh_token = match (&tokens.refresh_token, &record.refresh_token) {
            (None, Some(sealed)) => {
                let old_key = self.tenant_key_for(&key.tenant, sealed).await?;
                let place = connection_place(&key, FIELD_REFRESH_TOKEN);
                Some(utf8(&self.vault.open(&old_key, &place, sealed)?)?)
            }
            _ => None,
        };
        let refresh_token = match (&tokens.refresh_token, &kept_refresh_token) {
            (Some(new), _) => Some(new.expose_secret()),
            (None, kept) => kept.as_ref().map(|kept| kept.expose_secret()),
        };
        let mut sealed_again = false;
        let stored = loop {
            // The tenant's current key: the store refuses any other.
            let tenant_key = self.tenant_key(&key.tenant, false).await?;
            let write = WriteId::random();
            let seal = |field: &str, value: &str| {
                self.vault.seal(
                    &tenant_key,
                    write,
                    &connection_place(&key, field),
                    value.as_bytes(),
                )
            };
            let expires_at = tokens.expires_at(requested_at);
            let updated = ConnectionRecord {
                credential: seal(FIELD_CREDENTIAL, tokens.access_token.expose_secret())?,
                refresh_token: refresh_token
                    .map(|rt| seal(FIELD_REFRESH_TOKEN, rt))
                    .transpose()?,
                extras: extras
                    .as_deref()
                    .map(|e| seal(FIELD_EXTRAS, e))
                    .transpose()?,
                expires_at,
                scopes: tokens
                    .scopes
                    .clone()
                    .unwrap_or_else(|| record.scopes.clone()),
                status: ConnectionStatus::Active,
                last_error: None,
                last_refresh_at: Some(now),
                token_issued_at: Some(requested_at),
                updated_at: now,
                next_refresh_at: expires_at.map(|e| timing::refresh_at(requested_at, e, 0.5)),
                ..record.clone()
            };
            // Commit before anyone is handed the new access token.
            match self
                .commit_refreshed(updated, record.version, lease_ms)
                .await
            {
                // Another process rotated the tenant's key since we loaded ours: the new
                // tokens exist only here, so seal them again with the key the store has now.
                // Not so after a deleteTenant(): this connection was deleted with its tenant,
                // and a connection of the same name since then is another one.
                Err(e)
                    if e.code == ErrorCode::VaultKeyMissing
                        && !sealed_again
                        && !self.deleted_since(&record).await? =>
                {
                    sealed_again = true;
                    self.vault.forget(&key.tenant);
                }
                stored => break stored?,
            }
        };
        self.refreshes.succeeded(&key);
        let entry = self.cache_put(stored);
        let mut event = Event::new(EventKind::Refreshed, &key, now);
        event.status = Some(ConnectionStatus::Active);
        event.expires_at = entry.record.expires_at;
        self.emit(event);
        if record.status != ConnectionStatus::Active {
            self.emit(Event::about(EventKind::Recovered, &entry.record, now));
        }
        Ok(entry.record.clone())
    }

    /// Whether the tenant was deleted since `record` was sealed (its key, or a later one, was
    /// destroyed), rather than its key rotated.
    async fn deleted_since(&self, record: &ConnectionRecord) -> Result<bool> {
        let sealed_with = crate::vault::sealed_generation(&record.credential)?;
        let deleted = self.store.deleted_generation(&record.key.tenant).await?;
        Ok(deleted.is_some_and(|deleted| deleted >= sealed_with))
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

    pub(super) async fn refresh_failed(
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
            self.refreshes.succeeded(&key);
            let mut event = Event::about(EventKind::Revoked, &revoked, now);
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
        let mut event = Event::about(EventKind::RefreshFailed, &stored, now);
        event.error = Some(error.clone());
        event.attempt = Some(attempts);
        event.next_retry_at = Some(retry_at);
        self.emit(event);
        if record.status == ConnectionStatus::Active {
            let mut event = Event::about(EventKind::Degraded, &stored, now);
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
}
