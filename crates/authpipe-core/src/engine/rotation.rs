//! Tenant data-key rotation, online: a new key seals every new write at once, a sweep re-seals
//! the tenant's records under it with compare-and-swap writes, and the old key is deleted once
//! the store holds nothing sealed with it (see `vault` on rotation). The same sweep, with the
//! tenant's current key, migrates format-1 records to format 2; the maintenance job runs both,
//! and rotates keys by the automatic policy.

use super::{connection_place, flow_place, secret_place, Engine};
use super::{FIELD_CREDENTIAL, FIELD_EXTRAS, FIELD_REFRESH_TOKEN};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::TenantId;
use crate::records::{ConnectionRecord, Sealed, SecretRecord};
use crate::scheduler::Job;
use crate::store::SealedRow;
use crate::vault::{check_one_write, TenantKey, WriteId};
use std::sync::Arc;

/// How often the maintenance job looks at the tenant keys (and how long after open it first
/// does).
pub const KEY_MAINTENANCE_INTERVAL_MS: i64 = 10 * 60 * 1000;
pub(super) const FIRST_KEY_MAINTENANCE_MS: i64 = 60 * 1000;

/// Rows read per round of a re-seal sweep.
const RESEAL_BATCH: u32 = 200;
/// Rounds before a sweep gives up (each round re-seals a batch, or finds rows that changed
/// under it and looks again).
const RESEAL_ROUNDS: usize = 10_000;

/// When the maintenance job rotates a tenant's data key on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRotationPolicy {
    /// Rotate a key older than this (ms); `None`: never by age.
    pub max_age_ms: Option<i64>,
    /// Rotate a key that sealed this many values; `None`: never by count.
    pub max_encryptions: Option<i64>,
}

impl KeyRotationPolicy {
    /// 90 days: a data key's exposure (a copy of the store with one key unwrapped) is bounded
    /// to a quarter's records, well inside NIST SP 800-57's cryptoperiods for data keys, at the
    /// cost of re-sealing each tenant's rows four times a year.
    pub const DEFAULT_MAX_AGE_MS: i64 = 90 * 24 * 3600 * 1000;
    /// 2^30: AES-GCM with random 96-bit nonces must stay under 2^32 encryptions per key
    /// (NIST SP 800-38D §8.3); at 2^30 the chance of any nonce repeating is below 2^-37, and the
    /// margin of 4x covers the values sealed for writes that lost a race (not counted).
    pub const DEFAULT_MAX_ENCRYPTIONS: i64 = 1 << 30;
    /// The most a policy may allow: the 2^32 limit itself.
    pub const MAX_ENCRYPTIONS_LIMIT: i64 = 1 << 32;

    /// From the `tenantKeyRotation` option: `max_age_days` 0 turns rotation by age off;
    /// `max_encryptions` is 1..=2^32. Absent fields take the defaults.
    pub fn from_options(max_age_days: Option<i64>, max_encryptions: Option<i64>) -> Result<Self> {
        let max_age_ms = match max_age_days {
            None => Some(Self::DEFAULT_MAX_AGE_MS),
            Some(0) => None,
            Some(days) if (1..=36_500).contains(&days) => Some(days * 24 * 3600 * 1000),
            Some(_) => {
                return Err(Error::invalid_argument(
                    "tenantKeyRotation.maxAgeDays must be 0 (never by age) to 36500",
                ))
            }
        };
        let max_encryptions = match max_encryptions {
            None => Self::DEFAULT_MAX_ENCRYPTIONS,
            Some(n) if (1..=Self::MAX_ENCRYPTIONS_LIMIT).contains(&n) => n,
            Some(_) => {
                return Err(Error::invalid_argument(
                    "tenantKeyRotation.maxEncryptions must be 1 to 4294967296 (2^32, AES-GCM's limit for random nonces)",
                ))
            }
        };
        Ok(Self {
            max_age_ms,
            max_encryptions: Some(max_encryptions),
        })
    }

    fn due(&self, created_at: i64, encryptions: i64, now: i64) -> bool {
        self.max_age_ms.is_some_and(|age| now - created_at >= age)
            || self.max_encryptions.is_some_and(|max| encryptions >= max)
    }
}

impl Default for KeyRotationPolicy {
    fn default() -> Self {
        Self {
            max_age_ms: Some(Self::DEFAULT_MAX_AGE_MS),
            max_encryptions: Some(Self::DEFAULT_MAX_ENCRYPTIONS),
        }
    }
}

/// Result of `rotate_tenant_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantKeyRotation {
    pub tenant: TenantId,
    /// The tenant's data key now.
    pub generation: u32,
    /// Values re-sealed (rows: a connection counts once).
    pub resealed: u64,
}

impl Engine {
    /// Rotates the tenant's data key: a new key seals every write from now on, every record is
    /// re-sealed under it, and then the old key is deleted. Readers never wait for it.
    pub async fn rotate_tenant_key(&self, tenant: &TenantId) -> Result<TenantKeyRotation> {
        let Some(current) = self.store.tenant_key(tenant).await? else {
            return Err(Error::new(
                ErrorCode::TenantNotFound,
                format!(
                    "tenant '{tenant}' has no data key: it has stored nothing yet, or was deleted with deleteTenant()"
                ),
            ));
        };
        let new = self
            .vault
            .new_tenant_key(tenant, Some(current.generation), self.now_ms())?;
        // Lost to another rotation (or a deletion): the sweep goes on with whatever is current.
        let _ = self
            .store
            .rotate_tenant_key(new, current.generation)
            .await?;
        self.vault.forget(tenant);
        let resealed = self.finish_rotation(tenant).await?;
        let generation = self.tenant_key(tenant, false).await?.generation();
        self.tenant_key_rotated(tenant, generation, resealed);
        Ok(TenantKeyRotation {
            tenant: tenant.clone(),
            generation,
            resealed,
        })
    }

    /// Re-seals every record of the tenant not yet in format 2 under its current key, then
    /// deletes its older keys (each only if nothing is sealed with it, checked by the store).
    /// Returns how many rows it re-sealed.
    pub(super) async fn finish_rotation(&self, tenant: &TenantId) -> Result<u64> {
        let mut resealed = 0;
        for _ in 0..RESEAL_ROUNDS {
            let current = self.tenant_key(tenant, false).await?;
            let rows = self
                .store
                .rows_sealed_otherwise(tenant, current.generation(), RESEAL_BATCH)
                .await?;
            if rows.is_empty() {
                if self.delete_older_keys(tenant).await? {
                    return Ok(resealed);
                }
                continue;
            }
            for row in rows {
                match self.reseal(&current, row).await {
                    Ok(true) => resealed += 1,
                    // Changed under us (a refresh, say): the next round reads it again.
                    Ok(false) => {}
                    // Our key is not the current one any more (another rotation): reload it.
                    Err(e) if e.code == ErrorCode::VaultKeyMissing => {
                        self.vault.forget(tenant);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(Error::new(
            ErrorCode::StoreError,
            format!("the records of tenant '{tenant}' kept changing while they were re-sealed; the next maintenance run goes on"),
        ))
    }

    /// Deletes the tenant's older keys; whether none is left.
    async fn delete_older_keys(&self, tenant: &TenantId) -> Result<bool> {
        let mut all_gone = true;
        for older in self.store.older_tenant_keys().await? {
            if &older.tenant != tenant {
                continue;
            }
            if self
                .store
                .delete_older_tenant_key(tenant, older.generation)
                .await?
            {
                self.vault.forget_older(tenant, older.generation);
            } else {
                all_gone = false;
            }
        }
        Ok(all_gone)
    }

    /// Re-seals one row under `current` with a compare-and-swap; `false` if it changed (or went)
    /// meanwhile. A row whose fields come from different writes is refused, not laundered into
    /// one consistent write.
    async fn reseal(&self, current: &Arc<TenantKey>, row: SealedRow) -> Result<bool> {
        let write = WriteId::random();
        match row {
            SealedRow::Connection(key) => {
                let Some(record) = self.store.connection(&key).await? else {
                    return Ok(false);
                };
                check_one_write(|| format!("connection {key}"), record.sealed_fields())?;
                let old_key = self.tenant_key_for(&key.tenant, &record.credential).await?;
                let reseal = |field: &str, sealed: &Sealed| -> Result<Sealed> {
                    let place = connection_place(&key, field);
                    let opened = self.vault.open(&old_key, &place, sealed)?;
                    self.vault.seal(current, write, &place, &opened)
                };
                let updated = ConnectionRecord {
                    credential: reseal(FIELD_CREDENTIAL, &record.credential)?,
                    refresh_token: record
                        .refresh_token
                        .as_ref()
                        .map(|s| reseal(FIELD_REFRESH_TOKEN, s))
                        .transpose()?,
                    extras: record
                        .extras
                        .as_ref()
                        .map(|s| reseal(FIELD_EXTRAS, s))
                        .transpose()?,
                    ..record.clone()
                };
                match self
                    .store
                    .update_connection(updated, record.version)
                    .await?
                {
                    Some(stored) => {
                        self.cache_put(stored);
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            SealedRow::Secret(key) => {
                let Some(record) = self.store.secret(&key).await? else {
                    return Ok(false);
                };
                let old_key = self.tenant_key_for(&key.tenant, &record.value).await?;
                let place = secret_place(&key);
                let opened = self.vault.open(&old_key, &place, &record.value)?;
                let value = self.vault.seal(current, write, &place, &opened)?;
                let expected = record.value.clone();
                let resealed = SecretRecord { value, ..record };
                self.store.reseal_secret(resealed, &expected).await
            }
            SealedRow::Flow(state_hash) => {
                let Some(flow) = self.store.flow(&state_hash).await? else {
                    return Ok(false);
                };
                let Some(sealed) = &flow.verifier else {
                    return Ok(false);
                };
                let old_key = self.tenant_key_for(&flow.key.tenant, sealed).await?;
                let place = flow_place(&flow.key, &flow.state_hash);
                let opened = self.vault.open(&old_key, &place, sealed)?;
                let verifier = self.vault.seal(current, write, &place, &opened)?;
                self.store.reseal_flow(&flow, verifier, sealed).await
            }
        }
    }

    /// The maintenance job: finishes rotations left unfinished (a process that stopped midway),
    /// migrates format-1 records, and rotates the keys the policy says are due. Then schedules
    /// itself again. Failures wait for the next run; nothing depends on one.
    pub(crate) async fn maintain_tenant_keys(&self) {
        let _ = self.maintain_tenant_keys_now().await;
        self.scheduler
            .at(self.now_ms() + KEY_MAINTENANCE_INTERVAL_MS, Job::TenantKeys);
    }

    /// One run of the maintenance job (tests call it directly); returns the rotations it made.
    pub async fn maintain_tenant_keys_now(&self) -> Result<Vec<TenantKeyRotation>> {
        let mut unfinished: Vec<TenantId> = Vec::new();
        for older in self.store.older_tenant_keys().await? {
            if !unfinished.contains(&older.tenant) {
                unfinished.push(older.tenant);
            }
        }
        for tenant in &unfinished {
            self.finish_rotation(tenant).await?;
        }
        if self.vault.opens_format_1() {
            self.migrate_format_1().await?;
        }
        let policy = *self.key_rotation.read();
        let now = self.now_ms();
        let mut rotations = Vec::new();
        for usage in self.store.tenant_key_usage().await? {
            if policy.due(usage.created_at, usage.encryptions, now) {
                rotations.push(self.rotate_tenant_key(&usage.tenant).await?);
            }
        }
        Ok(rotations)
    }

    /// Re-seals every format-1 record in format 2, then marks the store so (every engine
    /// refuses format 1 from then on: see `vault` on migration). Another process may have
    /// finished already: then only the mark is read.
    async fn migrate_format_1(&self) -> Result<()> {
        if self.store.oldest_record_format().await? >= 2 {
            self.vault.refuse_format_1();
            return Ok(());
        }
        for tenant_key in self.store.tenant_keys().await? {
            self.finish_rotation(&tenant_key.tenant).await?;
        }
        if self.store.finish_format_migration().await? {
            self.vault.refuse_format_1();
        }
        Ok(())
    }

    /// Sets when keys are rotated on their own.
    pub fn set_key_rotation_policy(&self, policy: KeyRotationPolicy) {
        *self.key_rotation.write() = policy;
    }

    pub fn key_rotation_policy(&self) -> KeyRotationPolicy {
        *self.key_rotation.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{open_shared, EngineOptions, StoreLocation};
    use crate::ids::ConnectionKey;
    use crate::input::{ImportFields, ImportRequest};
    use crate::secrets::{AccessToken, RefreshToken};
    use crate::test_support::test_keys;
    use crate::vault::RECORD_FORMAT_V1;
    use secrecy::ExposeSecret;
    use std::path::Path;

    async fn engine(path: &Path) -> Arc<Engine> {
        open_shared(EngineOptions {
            store: StoreLocation::File(path.to_path_buf()),
            keys: test_keys(),
            clock: None,
            key_rotation: Default::default(),
        })
        .await
        .unwrap()
        .engine
    }

    fn key(user: &str) -> ConnectionKey {
        ConnectionKey::parse("attio", "t", user).unwrap()
    }

    /// Rewrites the stored connection in record format 1, as the previous version wrote it.
    async fn write_format_1(engine: &Engine, user: &str) {
        let record = engine.stored_connection(&key(user)).await.unwrap().unwrap();
        let tenant_key = engine.tenant_key(&record.key.tenant, false).await.unwrap();
        let secrets = engine.secrets_of(&record).await.unwrap();
        let seal = |field: &str, value: &str| {
            let place = connection_place(&record.key, field);
            engine
                .vault
                .seal_format_1(&tenant_key, &place, value.as_bytes())
                .unwrap()
        };
        let old = ConnectionRecord {
            credential: seal(FIELD_CREDENTIAL, secrets.credential.expose_secret()),
            refresh_token: secrets
                .refresh_token
                .as_ref()
                .map(|rt| seal(FIELD_REFRESH_TOKEN, rt.expose_secret())),
            ..record.clone()
        };
        engine.store.put_connections(vec![old]).await.unwrap();
    }

    fn sql(path: &Path, statements: &str) {
        rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(statements)
            .unwrap();
    }

    async fn served(engine: &Engine, user: &str) -> crate::Result<String> {
        let credential = engine.credential(&key(user)).await?;
        Ok(credential.secret.expose_secret().to_owned())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_of_format_1_records_is_migrated_and_then_refuses_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            // A store as the previous version left it: format-1 records, not marked migrated.
            let e = engine(&path).await;
            for user in ["u1", "u2"] {
                let fields = ImportFields {
                    access_token: Some(AccessToken::new(format!("at-{user}"))),
                    refresh_token: Some(RefreshToken::new(format!("rt-{user}"))),
                    ..Default::default()
                };
                e.import(vec![ImportRequest::new(key(user), fields).unwrap()])
                    .await
                    .unwrap();
                write_format_1(&e, user).await;
            }
        }
        sql(
            &path,
            "UPDATE vault_state SET oldest_record_format = 1; \
             CREATE TABLE saved AS SELECT credential FROM connections WHERE user_id = 'u1';",
        );

        let e = engine(&path).await;
        assert!(e.vault.opens_format_1());
        assert_eq!(
            served(&e, "u1").await.unwrap(),
            "at-u1",
            "format 1 still reads"
        );
        e.maintain_tenant_keys_now().await.unwrap();
        assert!(!e.vault.opens_format_1());
        assert_eq!(e.store.oldest_record_format().await.unwrap(), 2);
        for user in ["u1", "u2"] {
            let record = e.stored_connection(&key(user)).await.unwrap().unwrap();
            for field in record.sealed_fields() {
                assert_ne!(field.0[0], RECORD_FORMAT_V1, "{user} re-sealed in format 2");
            }
            assert_eq!(
                crate::vault::sealed_generation(&record.credential).unwrap(),
                1
            );
            let secrets = e.secrets_of(&record).await.unwrap();
            assert_eq!(
                secrets.refresh_token.unwrap().expose_secret(),
                format!("rt-{user}")
            );
        }
        drop(e);

        // Downgrading the whole row to its old format-1 ciphertexts is refused now.
        sql(
            &path,
            "UPDATE connections SET credential = (SELECT credential FROM saved), refresh_token = NULL \
             WHERE user_id = 'u1';",
        );
        let e = engine(&path).await;
        assert!(!e.vault.opens_format_1(), "read from the store at open");
        let err = served(&e, "u1").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::VaultIntegrity, "{err}");
        assert!(err.message.contains("record format 1"), "{err}");
        assert_eq!(served(&e, "u2").await.unwrap(), "at-u2");
    }
}
