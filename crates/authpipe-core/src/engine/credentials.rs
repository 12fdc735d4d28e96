//! Serving credentials: from the cache without I/O on the hot path, else from the store, and
//! through the (single) refresh of a stale token.

use super::{connection_place, utf8, Engine, RefreshReason, FIELD_CREDENTIAL, FIELD_EXTRAS};
use crate::cache::CachedConnection;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::ConnectionKey;
use crate::maintenance;
use crate::records::{ConnectionStatus, CredentialKind};
use crate::vault::{check_one_write, sealed_generation};
use secrecy::SecretString;
use std::sync::Arc;

/// A credential on its way out to a caller, with what the JS memo needs to know when it goes
/// stale: the connection's generation slot and the generation this value belongs to.
pub struct Credential {
    pub kind: CredentialKind,
    pub secret: SecretString,
    pub expires_at: Option<i64>,
    /// Provider fields as a JSON object, if any were stored.
    pub extras_json: Option<SecretString>,
    pub slot: u32,
    pub generation: u32,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("expires_at", &self.expires_at)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// New tokens a caller refreshes for in a row when each arrives already stale; after them it
/// serves what it has while that is usable.
const STALE_ON_ARRIVAL_REFRESHES: usize = 2;

/// What [`Engine::lookup`] found.
pub enum Lookup {
    Hit(Credential),
    /// Only I/O can answer: pass this to [`Engine::resolve`].
    Pending(Pending),
}

/// What the cache held for a credential it could not serve (nothing, a stale token, or one
/// whose tenant key is not in memory yet).
pub struct Pending(Option<Arc<CachedConnection>>);

/// What the cache can do for a credential request.
enum Reveal {
    Credential(Credential),
    /// The tenant's data key is not in memory yet.
    NeedsKey,
    /// The token is stale: refresh first.
    NeedsRefresh,
}

impl Engine {
    /// The hot path: serves a credential from the cache without I/O, or says what the cache
    /// had ([`Lookup::Pending`]) for [`Engine::resolve`] to finish with I/O. The ids are not
    /// validated here: only valid ones are ever cached, so a hit proves them; `resolve` takes
    /// the validated key.
    pub fn lookup(&self, provider: &str, tenant: &str, user: &str) -> Result<Lookup> {
        match self.cache.get(provider, tenant, user) {
            Some(entry) => match self.reveal(&entry, false)? {
                Reveal::Credential(credential) => {
                    self.served_from_cache(provider);
                    Ok(Lookup::Hit(credential))
                }
                Reveal::NeedsKey | Reveal::NeedsRefresh => {
                    Ok(Lookup::Pending(Pending(Some(entry))))
                }
            },
            None => Ok(Lookup::Pending(Pending(None))),
        }
    }

    /// Serves a credential, with I/O where needed: reads the store on a cache miss, and waits
    /// for the (single) refresh of a stale token. If that refresh fails, the token is served as
    /// long as it is usable.
    pub async fn credential(&self, key: &ConnectionKey) -> Result<Credential> {
        let entry = self.cache.get_key(key);
        self.resolve(key, Pending(entry)).await
    }

    /// [`Engine::credential`], going on from what [`Engine::lookup`] found for `key`, so that a
    /// miss looks at the cache once.
    pub async fn resolve(&self, key: &ConnectionKey, pending: Pending) -> Result<Credential> {
        let served = self.resolve_io(key, pending).await;
        if served.is_ok() {
            self.served_after_io(key);
        }
        served
    }

    async fn resolve_io(&self, key: &ConnectionKey, pending: Pending) -> Result<Credential> {
        let mut allow_stale = false;
        let mut refreshes = 0;
        let mut looked_up = Some(pending.0);
        // A cache miss, a tenant key to load, the refreshes, and the serving.
        for _ in 0..(3 + STALE_ON_ARRIVAL_REFRESHES) {
            let cached = match looked_up.take() {
                Some(found) => found,
                None => self.cache.get_key(key),
            };
            let entry = match cached {
                Some(entry) => entry,
                None => {
                    let record = self.load(key).await?;
                    self.cache_put(record)
                }
            };
            match self.reveal(&entry, allow_stale)? {
                Reveal::Credential(credential) => return Ok(credential),
                Reveal::NeedsKey => {
                    let record = &entry.record;
                    let tenant_key = self.tenant_key_for(&key.tenant, &record.credential).await?;
                    let place = connection_place(key, FIELD_CREDENTIAL);
                    if let Err(stale) =
                        self.vault
                            .check_generation(&tenant_key, &place, &record.credential)
                    {
                        // Sealed with a key the tenant no longer has: our copy predates a
                        // deleteTenant() by another process that the change feed has not
                        // brought yet. The stored row replaces it, unless it is that row.
                        let stored = self.stored_connection(key).await?;
                        if stored.as_ref() == Some(record) {
                            return Err(stale);
                        }
                        self.follow_stored(key, stored);
                    }
                }
                Reveal::NeedsRefresh => {
                    refreshes += 1;
                    match self.refresh(key, RefreshReason::Stale).await {
                        // A new token: served next time round, or, if it arrived already
                        // stale (its answer took longer than its margin), refreshed again
                        // rather than served while it may be dead.
                        Ok(record)
                            if record.credential != entry.record.credential
                                && refreshes <= STALE_ON_ARRIVAL_REFRESHES => {}
                        Ok(_) => allow_stale = true,
                        Err(e) => {
                            // The store is unreachable, say: a still-usable token is served
                            // all the same (refreshes back off and retry).
                            let now = self.now_ms();
                            let usable = self
                                .cache
                                .get_key(key)
                                .is_some_and(|entry| !maintenance::is_expired(&entry.record, now));
                            if !usable {
                                return Err(e);
                            }
                            allow_stale = true;
                        }
                    }
                }
            }
        }
        Err(Error::internal(
            "could not serve a credential after refreshing",
        ))
    }

    fn reveal(&self, entry: &CachedConnection, allow_stale: bool) -> Result<Reveal> {
        let record = &entry.record;
        let key = &record.key;
        if record.status == ConnectionStatus::Revoked {
            return Err(Error::new(
                ErrorCode::ConnectionRevoked,
                format!(
                    "the {} connection of tenant '{}' and user '{}' was revoked; the user has to connect again",
                    key.provider, key.tenant, key.user
                ),
            ));
        }
        let now = self.clock.now_ms();
        if maintenance::is_stale(record, now) {
            let expired = maintenance::is_expired(record, now);
            // Refresh first, unless a refresh just failed (backing off) or already ran for this call.
            let refresh_first = record.refresh_token.is_some()
                && !allow_stale
                && !self.refreshes.backing_off(&key.cache_key(), now);
            if refresh_first {
                return Ok(Reveal::NeedsRefresh);
            }
            if expired {
                let why = record
                    .last_error
                    .as_ref()
                    .map(|e| format!(" (last error: {})", e.message))
                    .unwrap_or_default();
                return Err(Error::new(
                    ErrorCode::ConnectionExpired,
                    format!(
                        "the {} access token of tenant '{}' and user '{}' expired and could not be refreshed{why}",
                        key.provider, key.tenant, key.user
                    ),
                ));
            }
        }
        let generation = sealed_generation(&record.credential)?;
        let Some(tenant_key) = self.vault.cached_generation(&key.tenant, generation) else {
            return Ok(Reveal::NeedsKey);
        };
        // A header comparison: a field put back to an older ciphertext is caught here even
        // when it is one (the refresh token) that serving does not open.
        check_one_write(|| format!("connection {key}"), record.sealed_fields())?;
        let secret = self.vault.open(
            &tenant_key,
            &connection_place(key, FIELD_CREDENTIAL),
            &record.credential,
        )?;
        let extras_json = match &record.extras {
            Some(sealed) => Some(utf8(&self.vault.open(
                &tenant_key,
                &connection_place(key, FIELD_EXTRAS),
                sealed,
            )?)?),
            None => None,
        };
        Ok(Reveal::Credential(Credential {
            kind: record.kind,
            secret: utf8(&secret)?,
            expires_at: record.expires_at,
            extras_json,
            slot: entry.slot,
            generation: entry.generation,
        }))
    }
}
