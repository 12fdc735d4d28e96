//! Envelope encryption with per-tenant key isolation.
//!
//! ```text
//! master keyring (config) ──wraps──► tenant data key (random, one per tenant, stored wrapped)
//!                                        └──seals──► each secret field (AES-256-GCM, AAD = its place)
//! ```
//!
//! The vault is pure computation over keys it holds in memory; the engine brings it records
//! from the store. Unwrapped tenant keys are kept in memory (zeroized on drop) so a cache hit
//! costs one AES-GCM decryption and no key unwrap.
//!
//! # Generations: a deleted tenant's key is never mistaken for its successor's
//!
//! `deleteTenant` destroys a tenant's data key, but other processes may still hold it in memory
//! (until the change feed tells them) and may seal with it after the tenant was created again
//! under a new key. Two rules make the resulting unreadable row impossible:
//!
//! - a tenant's data keys are numbered, and a number is never used twice: the store keeps the
//!   generation of a deleted tenant's last key, and the next key gets the one after it
//!   ([`Vault::new_tenant_key`]). The generation is in the wrapped key's AAD and in every record
//!   header, so it is fixed before the key is wrapped;
//! - every write of sealed data is checked in its transaction against the tenant key as stored:
//!   a record whose header names another generation (or a tenant without a key) is refused with
//!   `VAULT_KEY_MISSING`, and the engine forgets its key, reloads it and seals again.
//!
//! Reading, a record of another generation than the cached key's makes the engine reload the
//! key (and, for its cache, the row) from the store instead of failing.
//!
//! # Rotation: a tenant holds more than one data key while its records are re-sealed
//!
//! `rotateTenantKey` (or the automatic policy: by age, or by the number of values a key sealed,
//! which the store counts in the transaction of each write, so that no key comes near the 2^32
//! random-nonce limit of AES-GCM) makes a key of the next generation and, in one store
//! transaction, makes it the tenant's key and keeps the old one among the tenant's *older* keys.
//! From then on:
//!
//! - every write seals with the newest key: the in-transaction check above compares against the
//!   tenant's current generation, so a process still holding only the old key is refused
//!   (`VAULT_KEY_MISSING`), reloads the key and seals again;
//! - reads open a record with the key of the generation its header names, the current one or
//!   an older one the store still holds ([`Vault::cached_generation`]);
//! - a sweep re-seals every record of the tenant (connection fields, secrets, pending flows'
//!   verifiers) under the new key, each with a compare-and-swap, so a concurrent refresh is
//!   never lost (a conflict is read again and re-sealed);
//! - once the store holds nothing sealed with an older key (checked in the transaction that
//!   deletes it), the older key is deleted. A reader that read a row before its re-seal and
//!   looks for the old key after its deletion reads the row again.
//!
//! # Rollback: one field cannot be put back to an older ciphertext of itself
//!
//! The issue asked for the row version in the AAD. The record header carries a random *write
//! id* instead, the same in every field sealed by one write of a row, and every write that
//! seals one field of a connection seals all of them anew. A reader refuses a row whose
//! fields name different write ids (`VAULT_INTEGRITY`), and since the header is part of the
//! AAD, the id cannot be changed without failing authentication. This gives what the row
//! version would, without its costs: the version changes on writes that seal nothing (a probe's
//! time, a status), which would have to re-seal every field, and an upsert does not know the
//! version it will write; and unlike the version, a write id does not start again at 1 when a
//! connection is deleted and created again. What no scheme inside the database can stop is
//! putting back *every* sealed field of a row together (a whole older row), or the single
//! sealed value of a secret or an API-key connection: that needs a counter outside the store.
//!
//! # Migration: format-1 records
//!
//! Records written before format 2 (no write id) are still opened. A job after open re-seals
//! them in format 2 (the sweep above, with the tenant's current key); when the store holds
//! none, it is marked in the same transaction that checks so, and from then on every engine
//! refuses format 1 (`VAULT_INTEGRITY`): otherwise someone could downgrade a field to an old
//! format-1 ciphertext, which carries no write id.

mod envelope;
mod keyring;
#[cfg(test)]
mod tests;

pub use envelope::{RecordHeader, RecordPlace, WriteId, RECORD_FORMAT_V1, RECORD_FORMAT_V2};
pub(crate) use keyring::check_key_id;
pub use keyring::{Keyring, MasterKey, MasterKeyConfig, KEY_BYTES};

/// The tenant-key generation a sealed record names in its header (`VAULT_INTEGRITY` if it is
/// not in the record format). Needs no key: stores check it against the tenant key they hold.
pub fn sealed_generation(sealed: &Sealed) -> Result<u32> {
    envelope::record_generation(sealed)
}

/// Whether the sealed fields of one row come from one write (see the module docs on rollback):
/// all in format 2 with one write id, or (before migration) all in format 1.
pub fn check_one_write<'a>(
    what: impl FnOnce() -> String,
    fields: impl IntoIterator<Item = &'a Sealed>,
) -> Result<()> {
    let mut first: Option<RecordHeader> = None;
    for field in fields {
        let header = envelope::record_header(field)?;
        match first {
            None => first = Some(header),
            Some(f) if f.format == header.format && f.write == header.write => {}
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::VaultIntegrity,
                    format!(
                        "the sealed fields of {} were not written together: one was put back to an older ciphertext",
                        what()
                    ),
                ))
            }
        }
    }
    Ok(())
}

use crate::error::{Error, ErrorCode, Result};
use crate::ids::TenantId;
use crate::records::{MasterKeyRecord, Sealed, TenantKeyRecord};
use aes_gcm::{Aes256Gcm, KeyInit};
use dashmap::DashMap;
use parking_lot::RwLock;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The generation of a tenant's first data key; a tenant created again after `deleteTenant`
/// starts one past its deleted key's (see the module docs).
const FIRST_GENERATION: u32 = 1;

/// An unwrapped tenant data key. The AES key schedule is zeroized when this is dropped.
pub struct TenantKey {
    generation: u32,
    cipher: Aes256Gcm,
}

impl TenantKey {
    /// Which of the tenant's data keys this is.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantKey")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A tenant's keys in memory: the current one, and older ones still needed to read records a
/// rotation has not re-sealed yet.
#[derive(Debug, Clone)]
struct TenantKeys {
    current: Arc<TenantKey>,
    older: Vec<Arc<TenantKey>>,
}

/// Master keyring plus the tenant data keys unwrapped so far.
#[derive(Debug)]
pub struct Vault {
    keyring: RwLock<Keyring>,
    tenant_keys: DashMap<TenantId, TenantKeys>,
    /// Whether format-1 records are still opened (until the store is marked migrated).
    opens_format_1: AtomicBool,
}

impl Vault {
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring: RwLock::new(keyring),
            tenant_keys: DashMap::new(),
            opens_format_1: AtomicBool::new(true),
        }
    }

    /// From now on, format-1 records are refused (the store holds none: see the module docs).
    pub fn refuse_format_1(&self) {
        self.opens_format_1.store(false, Ordering::Relaxed);
    }

    pub fn opens_format_1(&self) -> bool {
        self.opens_format_1.load(Ordering::Relaxed)
    }

    pub fn same_keys(&self, other: &Keyring) -> bool {
        self.keyring.read().same_keys(other)
    }

    pub fn primary_key_id(&self) -> String {
        self.keyring.read().primary().id().to_owned()
    }

    /// Checks the configured keyring against what the store says about master keys, before
    /// anything is read or written. Returns key-check records for keys the store has not seen.
    ///
    /// - a configured key whose stored check does not decrypt is the wrong key material;
    /// - a key that wraps any tenant key must be configured;
    /// - a store that has active keys must share at least one with the configured active keys;
    /// - a retired key may not come back, except configured `retired` (unwrap only, to repair).
    pub fn reconcile(
        &self,
        stored: &[MasterKeyRecord],
        wrapping_key_ids: &BTreeSet<String>,
        now: i64,
    ) -> Result<Vec<MasterKeyRecord>> {
        let keyring = self.keyring.read();
        let configured: Vec<&str> = keyring.ids().collect();
        for record in stored {
            let Some(key) = keyring.get(&record.id) else {
                continue;
            };
            if let Some(retired_at) = record.retired_at {
                if !keyring.is_retired(&record.id) {
                    let repair = if wrapping_key_ids.contains(&record.id) {
                        ", or, since tenant keys are still wrapped with it, configure it after the current \
                         primary with retired: true and call rotateMasterKey()"
                    } else {
                        ""
                    };
                    return Err(Error::invalid_argument(format!(
                        "master key '{}' was retired (at {retired_at} ms since epoch); remove it from masterKeys{repair}",
                        record.id
                    )));
                }
            }
            if !envelope::verify_key_check(&key.cipher, &record.id, &record.key_check) {
                return Err(Error::new(
                    ErrorCode::VaultKeyMismatch,
                    format!(
                        "master key '{}' is not the key this store was created with: its key material differs",
                        record.id
                    ),
                ));
            }
        }
        let missing: Vec<&str> = wrapping_key_ids
            .iter()
            .map(String::as_str)
            .filter(|id| keyring.get(id).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorCode::VaultKeyMismatch,
                format!(
                    "tenant keys in this store are wrapped with master key(s) {}, which are not configured (configured: {}); \
                     configure the key(s) this store was written with",
                    quote_list(&missing),
                    quote_list(&configured)
                ),
            ));
        }
        let active: Vec<&str> = stored
            .iter()
            .filter(|r| r.retired_at.is_none())
            .map(|r| r.id.as_str())
            .collect();
        if !active.is_empty() && !keyring.active_ids().any(|id| active.contains(&id)) {
            return Err(Error::new(
                ErrorCode::VaultKeyMismatch,
                format!(
                    "this store was written with master key(s) {}, none of which is configured (configured: {})",
                    quote_list(&active),
                    quote_list(&configured)
                ),
            ));
        }
        // Key checks for new active keys only: a key configured retired wraps nothing.
        keyring
            .active_ids()
            .filter(|id| !stored.iter().any(|r| r.id == *id))
            .map(|id| {
                let key = keyring.get(id).expect("listed from the keyring");
                Ok(MasterKeyRecord {
                    id: id.to_owned(),
                    key_check: envelope::make_key_check(&key.cipher, id)?,
                    created_at: now,
                    retired_at: None,
                })
            })
            .collect()
    }

    /// A new random data key for `tenant`, wrapped by the primary master key, one generation
    /// past `deleted_generation` (the tenant's last deleted key, if it had one). The caller
    /// stores the record (first writer wins) and then calls [`Vault::unwrap`] on the winner.
    pub fn new_tenant_key(
        &self,
        tenant: &TenantId,
        deleted_generation: Option<u32>,
        now: i64,
    ) -> Result<TenantKeyRecord> {
        let generation = match deleted_generation {
            None => FIRST_GENERATION,
            Some(deleted) => deleted
                .checked_add(1)
                .ok_or_else(|| Error::internal("tenant key generations exhausted"))?,
        };
        let key: Zeroizing<[u8; KEY_BYTES]> = Zeroizing::new(rand::random());
        let keyring = self.keyring.read();
        let primary = keyring.primary();
        let wrapped = envelope::wrap_tenant_key(
            &primary.cipher,
            primary.id(),
            tenant.as_str(),
            generation,
            &key[..],
        )?;
        Ok(TenantKeyRecord {
            tenant: tenant.clone(),
            generation,
            master_key_id: primary.id().to_owned(),
            wrapped,
            created_at: now,
        })
    }

    /// Unwraps a stored tenant key, the tenant's current one, and keeps it in memory (older
    /// keys in memory are kept, for records not re-sealed yet).
    pub fn unwrap(&self, record: &TenantKeyRecord) -> Result<Arc<TenantKey>> {
        if let Some(key) = self.cached(&record.tenant) {
            if key.generation == record.generation {
                return Ok(key);
            }
        }
        let key = unwrap_tenant_key(&self.keyring.read(), record)?;
        let mut entry = self
            .tenant_keys
            .entry(record.tenant.clone())
            .or_insert_with(|| TenantKeys {
                current: key.clone(),
                older: Vec::new(),
            });
        if entry.current.generation != key.generation {
            let previous = std::mem::replace(&mut entry.current, key.clone());
            entry.older.push(previous);
            let current = key.generation;
            entry.older.retain(|k| k.generation < current);
        }
        Ok(key)
    }

    /// Unwraps one of a tenant's older keys (a rotation is re-sealing its records) and keeps it
    /// in memory beside the current one.
    pub fn unwrap_older(&self, record: &TenantKeyRecord) -> Result<Arc<TenantKey>> {
        if let Some(key) = self.cached_generation(&record.tenant, record.generation) {
            return Ok(key);
        }
        let key = unwrap_tenant_key(&self.keyring.read(), record)?;
        if let Some(mut entry) = self.tenant_keys.get_mut(&record.tenant) {
            if key.generation < entry.current.generation {
                entry.older.push(key.clone());
            }
        }
        Ok(key)
    }

    /// The tenant's current key, if in memory.
    pub fn cached(&self, tenant: &TenantId) -> Option<Arc<TenantKey>> {
        self.tenant_keys.get(tenant).map(|k| k.current.clone())
    }

    /// The tenant's key of `generation` (current or older), if in memory.
    pub fn cached_generation(&self, tenant: &TenantId, generation: u32) -> Option<Arc<TenantKey>> {
        let keys = self.tenant_keys.get(tenant)?;
        std::iter::once(&keys.current)
            .chain(&keys.older)
            .find(|k| k.generation == generation)
            .cloned()
    }

    /// Drops a tenant's keys from memory (after `deleteTenant`).
    pub fn forget(&self, tenant: &TenantId) {
        self.tenant_keys.remove(tenant);
    }

    /// Drops an older key of a tenant from memory (its rotation is done).
    pub fn forget_older(&self, tenant: &TenantId, generation: u32) {
        if let Some(mut keys) = self.tenant_keys.get_mut(tenant) {
            keys.older.retain(|k| k.generation != generation);
        }
    }

    /// Drops the keys in memory that are not in `stored` (as generation), after the change feed
    /// may have missed a `deleteTenant`; older keys go too (they are read again when needed).
    pub fn forget_all_but(&self, stored: &[TenantKeyRecord]) {
        self.tenant_keys.retain(|tenant, keys| {
            keys.older.clear();
            stored
                .iter()
                .any(|r| &r.tenant == tenant && r.generation == keys.current.generation)
        });
    }

    /// Every configured master key id with its role: `primary`, `active` or `retired`.
    pub fn configured_keys(&self) -> Vec<(String, &'static str)> {
        let keyring = self.keyring.read();
        let role = |i: usize, id: &str| match () {
            _ if i == 0 => "primary",
            _ if keyring.is_retired(id) => "retired",
            _ => "active",
        };
        keyring
            .ids()
            .enumerate()
            .map(|(i, id)| (id.to_owned(), role(i, id)))
            .collect()
    }

    /// Whether a master key with this id is configured (active or retired).
    pub fn has_master_key(&self, id: &str) -> bool {
        self.keyring.read().get(id).is_some()
    }

    /// The same data key wrapped by the primary master key, or `None` if it already is.
    pub fn rewrap(&self, record: &TenantKeyRecord) -> Result<Option<TenantKeyRecord>> {
        let keyring = self.keyring.read();
        let primary = keyring.primary();
        if record.master_key_id == primary.id() {
            return Ok(None);
        }
        let bytes = unwrap_key_bytes(&keyring, record)?;
        let wrapped = envelope::wrap_tenant_key(
            &primary.cipher,
            primary.id(),
            record.tenant.as_str(),
            record.generation,
            &bytes,
        )?;
        Ok(Some(TenantKeyRecord {
            master_key_id: primary.id().to_owned(),
            wrapped,
            ..record.clone()
        }))
    }

    /// Removes a retired key from memory.
    pub fn retire(&self, id: &str) -> Result<()> {
        self.keyring.write().remove(id)
    }

    /// Seals one field of write `write` (every field a write of a row seals shares one id).
    pub fn seal(
        &self,
        key: &TenantKey,
        write: WriteId,
        place: &RecordPlace<'_>,
        plaintext: &[u8],
    ) -> Result<Sealed> {
        envelope::seal_record(&key.cipher, key.generation, write, place, plaintext)
    }

    /// Seals in record format 1, as stores written before format 2 hold records (tests of the
    /// migration).
    #[cfg(test)]
    pub fn seal_format_1(
        &self,
        key: &TenantKey,
        place: &RecordPlace<'_>,
        plaintext: &[u8],
    ) -> Result<Sealed> {
        envelope::seal_record_v1(&key.cipher, key.generation, place, plaintext)
    }

    pub fn open(
        &self,
        key: &TenantKey,
        place: &RecordPlace<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.check_generation(key, place, sealed)?;
        if envelope::record_header(sealed)?.format == RECORD_FORMAT_V1 && !self.opens_format_1() {
            return Err(Error::new(
                ErrorCode::VaultIntegrity,
                format!(
                    "the stored {} of {} {}/{}/{} is in record format 1, which this store no longer holds \
                     (every record was re-sealed in format 2): it was put back from an older copy",
                    place.field, place.scope, place.provider, place.tenant, place.subject
                ),
            ));
        }
        envelope::open_record(&key.cipher, place, sealed)
    }

    /// Whether `sealed` was sealed with `key`'s generation. An older one was destroyed by
    /// `deleteTenant` (`VAULT_KEY_MISSING`); a newer one is not this tenant's (`VAULT_INTEGRITY`).
    pub fn check_generation(
        &self,
        key: &TenantKey,
        place: &RecordPlace<'_>,
        sealed: &Sealed,
    ) -> Result<()> {
        let generation = envelope::record_generation(sealed)?;
        let what = || {
            format!(
                "the stored {} of {} {}/{}/{} was sealed with data key generation {generation}",
                place.field, place.scope, place.provider, place.tenant, place.subject
            )
        };
        match generation.cmp(&key.generation) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(Error::new(
                ErrorCode::VaultKeyMissing,
                format!(
                    "{}, which deleteTenant() destroyed or a finished rotation deleted (the tenant's key is now generation {})",
                    what(),
                    key.generation
                ),
            )),
            std::cmp::Ordering::Greater => Err(Error::new(
                ErrorCode::VaultIntegrity,
                format!(
                    "{}, but the tenant's key is generation {}",
                    what(),
                    key.generation
                ),
            )),
        }
    }
}

fn unwrap_tenant_key(keyring: &Keyring, record: &TenantKeyRecord) -> Result<Arc<TenantKey>> {
    let bytes = unwrap_key_bytes(keyring, record)?;
    let cipher =
        Aes256Gcm::new_from_slice(&bytes).map_err(|_| Error::internal("tenant key length"))?;
    Ok(Arc::new(TenantKey {
        generation: record.generation,
        cipher,
    }))
}

/// A tenant's data key, unwrapped with the master key its record names.
fn unwrap_key_bytes(keyring: &Keyring, record: &TenantKeyRecord) -> Result<Zeroizing<Vec<u8>>> {
    let master = keyring.get(&record.master_key_id).ok_or_else(|| {
        Error::new(
            ErrorCode::VaultKeyMismatch,
            format!(
                "tenant '{}' has its data key wrapped with master key '{}', which is not configured",
                record.tenant, record.master_key_id
            ),
        )
    })?;
    envelope::unwrap_tenant_key(&master.cipher, master.id(), record.tenant.as_str(), record.generation, &record.wrapped)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::VaultKeyMismatch,
                format!(
                    "the data key of tenant '{}' does not decrypt with master key '{}': wrong key material, or the wrapped key was altered",
                    record.tenant, record.master_key_id
                ),
            )
        })
}

fn quote_list(ids: &[&str]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ")
}
