//! Tenant data keys and master keys: a tenant's key is made once, by whichever writer comes
//! first, and a tenant created again after `deleteTenant` gets a newer generation of key (see
//! `vault` on generations); master-key rotation rewraps tenant keys online.

use super::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::TenantId;
use crate::records::{Sealed, TenantKeyRecord};
use crate::store::TenantDeletion;
use crate::vault::{check_key_id, sealed_generation, TenantKey};
use std::sync::Arc;

/// Result of `rotate_master_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub primary_key_id: String,
    pub rewrapped: u64,
    pub already_current: u64,
}

impl Engine {
    /// The tenant's data key: from memory, else the store, else (if `create`) a new one.
    pub(super) async fn tenant_key(
        &self,
        tenant: &TenantId,
        create: bool,
    ) -> Result<Arc<TenantKey>> {
        if let Some(key) = self.vault.cached(tenant) {
            return Ok(key);
        }
        self.count_read();
        let record = match self.store.tenant_key(tenant).await? {
            Some(record) => record,
            None if create => self.create_tenant_key(tenant).await?,
            None => {
                return Err(Error::new(
                    ErrorCode::VaultKeyMissing,
                    format!("tenant '{tenant}' has no data key (deleted with deleteTenant()), so its records cannot be decrypted"),
                ))
            }
        };
        self.vault.unwrap(&record)
    }

    /// The key to open `sealed` of `tenant` with: ours of the generation `sealed` was sealed
    /// with (current or older), else the store's current key (another process may have rotated
    /// it, or deleted the tenant and created it again), else the older key of that generation
    /// the store still holds while a rotation re-seals the tenant's records. If none is of that
    /// generation, the current key is returned, and opening with it says why.
    pub(super) async fn tenant_key_for(
        &self,
        tenant: &TenantId,
        sealed: &Sealed,
    ) -> Result<Arc<TenantKey>> {
        let generation = sealed_generation(sealed)?;
        if let Some(key) = self.vault.cached_generation(tenant, generation) {
            return Ok(key);
        }
        let current = match self.vault.cached(tenant) {
            Some(key) if key.generation() > generation => key,
            _ => {
                self.vault.forget(tenant);
                self.tenant_key(tenant, false).await?
            }
        };
        if generation < current.generation() {
            self.count_read();
            if let Some(older) = self.store.older_tenant_key(tenant, generation).await? {
                return self.vault.unwrap_older(&older);
            }
        }
        Ok(current)
    }

    /// Stores a new data key for `tenant`, of a later generation than any it had (or the one
    /// another creator stored first).
    async fn create_tenant_key(&self, tenant: &TenantId) -> Result<TenantKeyRecord> {
        let mut attempt = 0;
        loop {
            let deleted = self.store.deleted_generation(tenant).await?;
            let record = self.vault.new_tenant_key(tenant, deleted, self.now_ms())?;
            match self.store.insert_tenant_key(record).await {
                // The tenant was deleted between our two reads: its deleted generation moved on.
                Err(e) if e.code == ErrorCode::VaultKeyMissing && attempt == 0 => attempt += 1,
                stored => return stored,
            }
        }
    }

    /// Runs `write` (seal with a tenant's key, then store), and once more if the store refused
    /// it as sealed with a key that is not the tenant's current one any more (`VAULT_KEY_MISSING`:
    /// a `deleteTenant()` or a key rotation elsewhere): `tenants`' keys are forgotten first, so
    /// the second run seals with the key the store has now (or makes one, where `write` may).
    pub(super) async fn sealed_write<T, F, Fut>(&self, tenants: &[&TenantId], write: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match write().await {
            Err(e) if e.code == ErrorCode::VaultKeyMissing => {
                for tenant in tenants {
                    self.vault.forget(tenant);
                }
                write().await
            }
            done => done,
        }
    }

    /// Rewraps every tenant key under the primary master key, online: tenant data keys do not
    /// change, so nothing else is re-encrypted and readers never wait.
    pub async fn rotate_master_key(&self) -> Result<Rotation> {
        let primary_key_id = self.vault.primary_key_id();
        let (mut rewrapped, mut already_current) = (0, 0);
        for record in self.store.tenant_keys().await? {
            match self.vault.rewrap(&record)? {
                Some(new) => {
                    // Lost race: another process rewrapped it first, which is just as good.
                    if self
                        .store
                        .rewrap_tenant_key(new, &record.master_key_id)
                        .await?
                    {
                        rewrapped += 1;
                    } else {
                        already_current += 1;
                    }
                }
                None => already_current += 1,
            }
        }
        self.master_key_rotated(&primary_key_id, rewrapped);
        Ok(Rotation {
            primary_key_id,
            rewrapped,
            already_current,
        })
    }

    /// Retires a master key that no tenant key uses any more. Retiring a key the store has
    /// retired already (another instance did, or a repair) succeeds.
    pub async fn retire_master_key(&self, id: &str) -> Result<()> {
        // Checked first: the messages below name the id, and must not echo a NUL or 10 MB.
        check_key_id(id, "master key")?;
        if self.vault.primary_key_id() == id {
            return Err(Error::invalid_argument(format!(
                "master key '{id}' is the primary key; put the new key first in masterKeys before retiring this one"
            )));
        }
        if !self.vault.has_master_key(id) {
            let stored = self.store.master_keys().await?;
            if stored.iter().any(|k| k.id == id && k.retired_at.is_some()) {
                return Ok(());
            }
            return Err(Error::invalid_argument(format!(
                "no master key with id '{id}' is configured"
            )));
        }
        // The store refuses (KEY_IN_USE) while a tenant key still uses it; only then forget it.
        self.store.retire_master_key(id, self.now_ms()).await?;
        self.vault.retire(id)?;
        self.master_key_retired(id);
        Ok(())
    }

    /// Deletes a tenant: its data key is destroyed and its rows deleted, with its connect
    /// sessions and flows; other processes hear of it through the change feed. (Copies of the
    /// wrapped key elsewhere, backups above all, are not: see the README.)
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        self.forget_tenant(tenant);
        let deletion = self.store.delete_tenant(tenant).await?;
        // A read that raced the deletion may have reloaded either; drop them again, once no
        // reload that read before the deletion can still write into the cache.
        let _no_reload = self.reload_gate.write().await;
        self.forget_tenant(tenant);
        self.tenant_deleted(tenant, &deletion);
        Ok(deletion)
    }

    /// Drops a deleted tenant's key and connections from memory.
    pub(super) fn forget_tenant(&self, tenant: &TenantId) {
        self.vault.forget(tenant);
        for entry in self.cache.entries() {
            if &entry.record.key.tenant == tenant {
                self.refreshes.succeeded(&entry.record.key);
            }
        }
        self.cache.remove_tenant(tenant);
    }
}
