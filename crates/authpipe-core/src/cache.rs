//! The in-memory mirror of the store's connections: metadata in the clear, secret fields still
//! sealed. A hit costs a hash lookup and one AES-GCM decryption in the engine; nothing here
//! ever holds plaintext.

use crate::generations::Generations;
use crate::ids::{cache_key, ConnectionKey, TenantId};
use crate::records::ConnectionRecord;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::sync::Arc;

/// A cached connection, its generation slot, and the slot's generation when it was cached.
/// The slot is bumped *before* a replacement is inserted, so a reader that pairs a value with
/// `generation` can never pair an old value with a new generation.
#[derive(Debug)]
pub struct CachedConnection {
    pub record: ConnectionRecord,
    pub slot: u32,
    pub generation: u32,
}

#[derive(Default)]
pub struct Cache {
    entries: DashMap<String, Arc<CachedConnection>>,
    generations: Arc<Generations>,
}

impl Cache {
    pub fn get(&self, provider: &str, tenant: &str, user: &str) -> Option<Arc<CachedConnection>> {
        self.entries
            .get(&cache_key(provider, tenant, user))
            .map(|e| e.clone())
    }

    pub fn get_by_cache_key(&self, cache_key: &str) -> Option<Arc<CachedConnection>> {
        self.entries.get(cache_key).map(|e| e.clone())
    }

    /// A snapshot of every entry.
    pub fn entries(&self) -> Vec<Arc<CachedConnection>> {
        self.entries.iter().map(|e| e.value().clone()).collect()
    }

    pub fn get_key(&self, key: &ConnectionKey) -> Option<Arc<CachedConnection>> {
        self.entries.get(&key.cache_key()).map(|e| e.clone())
    }

    /// Caches `record` unless the cache already holds a newer version of it, and bumps the
    /// slot's generation when something changed. Returns what the cache holds afterwards.
    #[cfg(test)]
    pub fn put(&self, record: ConnectionRecord) -> Arc<CachedConnection> {
        self.put_changed(record).0
    }

    /// [`Cache::put`], also telling whether the cache changed (a new or replaced entry).
    pub fn put_changed(&self, record: ConnectionRecord) -> (Arc<CachedConnection>, bool) {
        match self.entries.entry(record.key.cache_key()) {
            Entry::Occupied(mut occupied) => {
                let current = occupied.get();
                if current.record.version > record.version
                    || (current.record.version == record.version && current.record == record)
                {
                    return (current.clone(), false);
                }
                let slot = current.slot;
                let generation = self.generations.bump(slot);
                let entry = Arc::new(CachedConnection {
                    record,
                    slot,
                    generation,
                });
                occupied.insert(entry.clone());
                (entry, true)
            }
            Entry::Vacant(vacant) => {
                let (slot, generation) = self.generations.allocate();
                let entry = Arc::new(CachedConnection {
                    record,
                    slot,
                    generation,
                });
                vacant.insert(entry.clone());
                (entry, true)
            }
        }
    }

    pub fn remove(&self, key: &ConnectionKey) -> bool {
        match self.entries.remove(&key.cache_key()) {
            Some((_, entry)) => {
                self.generations.release(entry.slot);
                true
            }
            None => false,
        }
    }

    pub fn remove_tenant(&self, tenant: &TenantId) -> usize {
        let keys: Vec<ConnectionKey> = self
            .entries
            .iter()
            .filter(|e| &e.record.key.tenant == tenant)
            .map(|e| e.record.key.clone())
            .collect();
        keys.iter().filter(|k| self.remove(k)).count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn generations(&self) -> &Arc<Generations> {
        &self.generations
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::records::{ConnectionStatus, CredentialKind, ProviderAccount, Sealed};

    pub(crate) fn record(user: &str, version: i64, token: &[u8]) -> ConnectionRecord {
        ConnectionRecord {
            key: ConnectionKey::parse("attio", "t1", user).unwrap(),
            kind: CredentialKind::OAuth2,
            status: ConnectionStatus::Active,
            scopes: vec![],
            account: ProviderAccount::default(),
            expires_at: None,
            created_at: 1,
            updated_at: 1,
            last_refresh_at: None,
            next_refresh_at: None,
            last_check_at: None,
            last_error: None,
            token_issued_at: None,
            credential: Sealed(token.to_vec()),
            refresh_token: None,
            extras: None,
            version,
        }
    }

    #[test]
    fn changes_bump_the_generation_and_stale_versions_are_ignored() {
        let cache = Cache::default();
        let slot = cache.put(record("u1", 1, b"a")).slot;
        let g1 = cache.generations().current(slot);

        cache.put(record("u1", 1, b"a"));
        assert_eq!(
            cache.generations().current(slot),
            g1,
            "an identical write changes nothing"
        );

        cache.put(record("u1", 2, b"b"));
        let g2 = cache.generations().current(slot);
        assert!(g2 > g1);

        let kept = cache.put(record("u1", 1, b"old"));
        assert_eq!(
            kept.record.credential.0, b"b",
            "an older version never replaces a newer one"
        );
        assert_eq!(cache.generations().current(slot), g2);

        assert!(
            !cache.put_changed(record("u1", 2, b"b")).1,
            "the same record again changes nothing"
        );
        assert!(cache.put_changed(record("u1", 3, b"c")).1);
        assert!(
            cache.put_changed(record("u2", 1, b"x")).1,
            "a new entry is a change"
        );
        let g3 = cache.generations().current(slot);

        assert!(cache.remove(&kept.record.key));
        assert!(
            cache.generations().current(slot) > g3,
            "removal invalidates memos"
        );
        assert!(cache.get("attio", "t1", "u1").is_none());
    }
}
