//! Connections: storing them (imported, or just connected) sealed with their tenant's key,
//! reading, listing and deleting them, and opening their secret fields for provider calls.

use super::{
    connection_place, not_found, utf8, Engine, FIELD_CREDENTIAL, FIELD_EXTRAS, FIELD_REFRESH_TOKEN,
};
use crate::error::{Error, Result};
use crate::events::{Event, EventKind};
use crate::ids::{ConnectionKey, TenantId};
use crate::input::{ImportRequest, ImportedCredential};
use crate::records::{ConnectionRecord, ConnectionStatus, CredentialKind, Sealed};
use crate::secrets::RefreshToken;
use crate::store::ListQuery;
use crate::vault::{check_one_write, WriteId};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

/// The decrypted secret fields of one connection.
pub struct ConnectionSecrets {
    /// The access token (or API key, as the connection's kind says).
    pub credential: SecretString,
    pub refresh_token: Option<RefreshToken>,
    /// Provider extras as a JSON object.
    pub extras: Option<SecretString>,
}

impl ConnectionSecrets {
    /// The extras as template values for provider URLs (`{accounts-server}`, ...).
    pub fn values(&self) -> Map<String, Value> {
        self.extras
            .as_ref()
            .and_then(|j| serde_json::from_str(j.expose_secret()).ok())
            .unwrap_or_default()
    }
}

/// A page of `list`.
#[derive(Debug)]
pub struct ConnectionPage {
    pub connections: Vec<ConnectionRecord>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<ConnectionKey>,
}

/// Whether a write may make the tenant's data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TenantKeyUse {
    CreateIfMissing,
    /// The key must be there (a connect flow made it when it started).
    MustExist,
}

impl Engine {
    /// Stores connections (all or nothing) and returns them as stored.
    pub async fn import(&self, requests: Vec<ImportRequest>) -> Result<Vec<ConnectionRecord>> {
        self.import_with(requests, TenantKeyUse::CreateIfMissing)
            .await
    }

    /// [`Engine::import`], for a tenant whose key must exist already: a connect flow's, whose
    /// key was made when the flow started, so that a `deleteTenant()` that ran while the flow's
    /// code was being exchanged is not undone by storing its connection.
    pub async fn import_connected(&self, request: ImportRequest) -> Result<ConnectionRecord> {
        let mut stored = self
            .import_with(vec![request], TenantKeyUse::MustExist)
            .await?;
        stored
            .pop()
            .ok_or_else(|| Error::internal("the store returned no connection"))
    }

    async fn import_with(
        &self,
        requests: Vec<ImportRequest>,
        use_key: TenantKeyUse,
    ) -> Result<Vec<ConnectionRecord>> {
        for request in &requests {
            request.validate()?;
        }
        let tenants: Vec<&TenantId> = requests.iter().map(|r| &r.key.tenant).collect();
        let requests = &requests;
        let stored = self
            .sealed_write(&tenants, move || async move {
                let mut records = Vec::with_capacity(requests.len());
                for request in requests {
                    records.push(self.seal_import(request, use_key).await?);
                }
                self.store.put_connections(records).await
            })
            .await?;
        for record in &stored {
            self.refreshes.succeeded(&record.key);
        }
        let stored: Vec<ConnectionRecord> = stored
            .into_iter()
            .map(|r| self.cache_put(r).record.clone())
            .collect();
        for record in &stored {
            let mut event = Event::new(EventKind::Created, &record.key, self.now_ms());
            event.status = Some(record.status);
            event.expires_at = record.expires_at;
            self.emit(event);
        }
        Ok(stored)
    }

    async fn seal_import(
        &self,
        request: &ImportRequest,
        use_key: TenantKeyUse,
    ) -> Result<ConnectionRecord> {
        let key = &request.key;
        let tenant_key = self
            .tenant_key(&key.tenant, use_key == TenantKeyUse::CreateIfMissing)
            .await?;
        let write = WriteId::random();
        let seal = |field: &str, value: &dyn ExposeSecret<str>| {
            self.vault.seal(
                &tenant_key,
                write,
                &connection_place(key, field),
                value.expose_secret().as_bytes(),
            )
        };
        let (kind, credential, refresh_token, expires_at) = match &request.credential {
            ImportedCredential::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => (
                CredentialKind::OAuth2,
                seal(FIELD_CREDENTIAL, access_token)?,
                refresh_token
                    .as_ref()
                    .map(|rt| seal(FIELD_REFRESH_TOKEN, rt))
                    .transpose()?,
                *expires_at,
            ),
            ImportedCredential::ApiKey { api_key } => (
                CredentialKind::ApiKey,
                seal(FIELD_CREDENTIAL, api_key)?,
                None,
                None,
            ),
        };
        let extras: Option<Sealed> = request
            .extras
            .as_ref()
            .map(|e| seal(FIELD_EXTRAS, e))
            .transpose()?;
        let now = self.now_ms();
        Ok(ConnectionRecord {
            key: key.clone(),
            kind,
            status: ConnectionStatus::Active,
            scopes: request.scopes.clone(),
            account: request.account.clone(),
            expires_at,
            created_at: now,
            updated_at: now,
            last_refresh_at: None,
            next_refresh_at: None,
            last_check_at: None,
            last_error: None,
            token_issued_at: Some(now),
            credential,
            refresh_token,
            extras,
            version: 0,
        })
    }

    /// The secret fields of a stored connection, for the provider calls that need them
    /// (revocation, refresh).
    pub async fn secrets_of(&self, record: &ConnectionRecord) -> Result<ConnectionSecrets> {
        let key = &record.key;
        check_one_write(|| format!("connection {key}"), record.sealed_fields())?;
        let tenant_key = self.tenant_key_for(&key.tenant, &record.credential).await?;
        let open = |field: &str, sealed: &Sealed| -> Result<SecretString> {
            utf8(
                &self
                    .vault
                    .open(&tenant_key, &connection_place(key, field), sealed)?,
            )
        };
        Ok(ConnectionSecrets {
            credential: open(FIELD_CREDENTIAL, &record.credential)?,
            refresh_token: record
                .refresh_token
                .as_ref()
                .map(|s| open(FIELD_REFRESH_TOKEN, s).map(RefreshToken::from))
                .transpose()?,
            extras: record
                .extras
                .as_ref()
                .map(|s| open(FIELD_EXTRAS, s))
                .transpose()?,
        })
    }

    /// The stored connection, if any, without touching the cache.
    pub async fn stored_connection(&self, key: &ConnectionKey) -> Result<Option<ConnectionRecord>> {
        self.count_read();
        self.store.connection(key).await
    }

    /// A connection's metadata, read from the store (the cache follows what it finds).
    pub async fn connection(&self, key: &ConnectionKey) -> Result<ConnectionRecord> {
        self.count_read();
        match self.store.connection(key).await? {
            Some(record) => Ok(self.cache_put(record).record.clone()),
            None => {
                self.cache.remove(key);
                Err(not_found(key))
            }
        }
    }

    /// One page of connections in (tenant, provider, user) order.
    pub async fn list(&self, mut query: ListQuery) -> Result<ConnectionPage> {
        let limit = query.limit as usize;
        query.limit += 1;
        self.count_read();
        let mut connections = self.store.list_connections(&query).await?;
        let next_after = if connections.len() > limit {
            connections.truncate(limit);
            connections.last().map(|r| r.key.clone())
        } else {
            None
        };
        Ok(ConnectionPage {
            connections,
            next_after,
        })
    }

    /// Deletes a connection; returns whether it existed.
    pub async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        let existed = self.store.delete_connection(key).await?;
        let cached = {
            let _no_reload = self.reload_gate.write().await;
            self.cache.remove(key)
        };
        self.refreshes.succeeded(key);
        if existed || cached {
            self.emit(Event::new(EventKind::Deleted, key, self.now_ms()));
        }
        Ok(existed || cached)
    }
}
