//! The engine: one per store per process, shared by every `Authpipe` instance that opens that
//! store. It composes the store (persistence), the vault (keys and sealing) and the cache
//! (sealed connections in memory), and owns the rules that tie them together:
//!
//! - a secret is sealed before it reaches the store and opened only on its way out to a caller;
//! - the cache mirrors the store, and every change bumps the connection's generation;
//! - a tenant's data key is created once, by whichever writer comes first, and a tenant created
//!   again after `deleteTenant` gets a new generation of key (see `vault` on generations): a
//!   write the store refuses as sealed with a destroyed key is sealed again with the stored one;
//! - other processes sharing the store are followed through its change feed (engine/follow.rs),
//!   and refreshes and probes are coordinated with them through store leases (maintain.rs).

mod follow;
pub mod input;
mod maintain;
mod open;

pub use maintain::{Health, RefreshReason};

pub use open::{
    check_options, open_shared, open_unshared, DevKeyNotice, EngineOptions, MasterKeySource,
    Opened, StoreLocation,
};

use crate::cache::{Cache, CachedConnection};
use crate::client::Connector;
use crate::clock::Clock;
use crate::error::{Error, ErrorCode, Result};
use crate::events::{Event, EventKind};
use crate::generations::GenerationPage;
use crate::ids::{ConnectionKey, TenantId};
use crate::maintenance::{self, timing, RetryState};
use crate::records::{
    ConnectionRecord, ConnectionStatus, CredentialKind, FlowRecord, Sealed, SecretRecord,
    SessionRecord, TenantKeyRecord,
};
use crate::scheduler::{Job, Runner, Scheduler};
use crate::store::{FlowTake, ListQuery, SecretKey, Store, TenantDeletion, PRUNE_INTERVAL_MS};
use crate::vault::{sealed_generation, RecordPlace, TenantKey, Vault};
use dashmap::DashMap;
use follow::FollowTask;
use input::{ImportRequest, ImportedCredential};
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::broadcast;

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

/// The decrypted secret fields of one connection.
pub struct ConnectionSecrets {
    pub credential: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Provider extras as a JSON object.
    pub extras: Option<SecretString>,
}

/// Result of `rotate_master_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub primary_key_id: String,
    pub rewrapped: u64,
    pub already_current: u64,
}

/// A page of `list`.
#[derive(Debug)]
pub struct ConnectionPage {
    pub connections: Vec<ConnectionRecord>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<ConnectionKey>,
}

/// Counters for diagnostics and tests.
#[derive(Clone, Debug)]
pub struct EngineStats {
    pub engine_id: u64,
    pub store: String,
    pub cached_connections: u64,
    pub store_reads: u64,
    /// Cache entries changed because another process changed the store.
    pub remote_changes: u64,
    /// Full reloads after the change feed may have missed changes.
    pub resyncs: u64,
    /// How long other processes' writes took to reach this cache (from the writer's clock
    /// reading just before its commit to the cache update here), over the last
    /// [`follow::LAG_SAMPLES`] changes: median, 99th percentile, max; `None` before any.
    pub remote_change_lag_ms: Option<[u64; 3]>,
}

pub struct Engine {
    id: u64,
    store: Arc<dyn Store>,
    vault: Vault,
    cache: Cache,
    scheduler: Scheduler,
    clock: Arc<dyn Clock>,
    store_reads: AtomicU64,
    remote_changes: AtomicU64,
    resyncs: AtomicU64,
    follow_lags: follow::Lags,
    /// This engine's name in store leases: unique per process and engine.
    owner: String,
    /// Refreshes under way, and a signal when one ends.
    refreshes_in_flight: std::sync::atomic::AtomicUsize,
    refresh_ended: tokio::sync::Notify,
    /// Woken whenever the cache changes, for those waiting on another process's refresh.
    cache_changed: tokio::sync::Notify,
    /// Follows the store's change feed; stopped with the engine.
    follow: std::sync::OnceLock<FollowTask>,
    /// Held shared by a reload of the store into the cache (follow.rs), from its read to its
    /// last write into the cache; a deletion here takes it exclusively between its store write
    /// and its cache removal. So a reload that read a row before the deletion cannot put it
    /// back after it (the store reports this process's own writes too).
    reload_gate: tokio::sync::RwLock<()>,
    /// The instances' provider configurations; refreshes and probes use the first still open.
    connectors: parking_lot::RwLock<Vec<Weak<Connector>>>,
    /// Single-flight: one refresh per connection at a time, the others wait for its result.
    refresh_locks: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Connections with a scheduled probe under way.
    probing: DashMap<String, ()>,
    /// Connections whose last refresh failed, and when to try again.
    retries: DashMap<String, RetryState>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({} connections)", self.len())
    }
}

/// Tokens leave the JS memo at least this long before their last usable moment (or at their
/// stale point, if sooner), so that a timer running late (by hundreds of ms on a loaded machine)
/// cannot let the memo, which reads no clock, serve them past it; Rust serves them, reading the
/// clock, until then. A one-hour token leaves at its stale point, five minutes before expiry; a
/// two-second test token is never memoised.
const MEMO_LEAD_MS: i64 = 1_000;
/// New tokens a caller refreshes for in a row when each arrives already stale; after them it
/// serves what it has while that is usable.
const STALE_ON_ARRIVAL_REFRESHES: usize = 2;
/// Events buffered per subscriber before a slow one starts missing them.
const EVENT_BUFFER: usize = 4096;

/// Which process refreshes a cached token before its stale point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresher {
    /// This one: it obtained the token, or read it from the store itself.
    Us,
    /// The one whose refresh the change feed just brought: it refreshes the next token too, so
    /// this process stands by, and refreshes only if the token goes stale without one (its
    /// callers, meanwhile, refresh on demand). Otherwise every process would race for every
    /// refresh, and all but one would spend store round trips learning they lost.
    Elsewhere,
}

/// Whether a write may make the tenant's data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TenantKeyUse {
    CreateIfMissing,
    /// The key must be there (a connect flow made it when it started).
    MustExist,
}

/// What the cache can do for a credential request.
enum Reveal {
    Credential(Credential),
    /// The tenant's data key is not in memory yet.
    NeedsKey,
    /// The token is stale: refresh first.
    NeedsRefresh,
}

const FIELD_CREDENTIAL: &str = "credential";
const FIELD_REFRESH_TOKEN: &str = "refresh_token";
const FIELD_EXTRAS: &str = "extras";

fn connection_place<'a>(key: &'a ConnectionKey, field: &'a str) -> RecordPlace<'a> {
    RecordPlace {
        tenant: key.tenant.as_str(),
        scope: "connection",
        provider: key.provider.as_str(),
        subject: key.user.as_str(),
        field,
    }
}

fn flow_place<'a>(key: &'a ConnectionKey, state_hash: &'a str) -> RecordPlace<'a> {
    RecordPlace {
        tenant: key.tenant.as_str(),
        scope: "flow",
        provider: key.provider.as_str(),
        subject: key.user.as_str(),
        field: state_hash,
    }
}

fn secret_place<'a>(key: &'a SecretKey) -> RecordPlace<'a> {
    RecordPlace {
        tenant: key.tenant.as_str(),
        scope: "secret",
        provider: key.provider.as_ref().map_or("", |p| p.as_str()),
        subject: key.name.as_str(),
        field: "value",
    }
}

fn not_found(key: &ConnectionKey) -> Error {
    Error::new(
        ErrorCode::ConnectionNotFound,
        format!(
            "no {} connection for tenant '{}' and user '{}'; connect it first, or import it with importConnection()",
            key.provider, key.tenant, key.user
        ),
    )
}

fn utf8(bytes: &[u8]) -> Result<SecretString> {
    std::str::from_utf8(bytes)
        .map(|s| SecretString::from(s.to_owned()))
        .map_err(|_| Error::new(ErrorCode::VaultIntegrity, "a decrypted value is not UTF-8"))
}

impl Engine {
    async fn new(
        id: u64,
        store: Arc<dyn Store>,
        vault: Vault,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>> {
        let now = clock.now_ms();
        let tenant_keys = store.tenant_keys().await?;
        let wrapping = tenant_keys
            .iter()
            .map(|k| k.master_key_id.clone())
            .collect();
        let new_checks = vault.reconcile(&store.master_keys().await?, &wrapping, now)?;
        if !new_checks.is_empty() {
            store.add_master_keys(new_checks).await?;
        }
        // A tenant key that fails to unwrap is left locked; reading that tenant reports why.
        for record in &tenant_keys {
            let _ = vault.unwrap(record);
        }
        // Watch first, then load: a change made in between is reported, none is missed.
        let feed = store.watch().await?;
        let records = store.all_connections().await?;
        let cache = Cache::default();
        let generations = cache.generations().clone();
        let engine = Arc::new_cyclic(|weak: &Weak<Self>| {
            let runner: Weak<dyn Runner> = weak.clone();
            Self {
                id,
                store,
                vault,
                cache,
                scheduler: Scheduler::start(generations, clock.clone(), runner),
                clock,
                store_reads: AtomicU64::new(0),
                remote_changes: AtomicU64::new(0),
                resyncs: AtomicU64::new(0),
                follow_lags: Default::default(),
                owner: format!("{}:{:016x}", std::process::id(), rand::random::<u64>()),
                refreshes_in_flight: Default::default(),
                refresh_ended: tokio::sync::Notify::new(),
                cache_changed: tokio::sync::Notify::new(),
                follow: std::sync::OnceLock::new(),
                reload_gate: tokio::sync::RwLock::new(()),
                connectors: Default::default(),
                refresh_locks: DashMap::new(),
                probing: DashMap::new(),
                retries: DashMap::new(),
                events: broadcast::channel(EVENT_BUFFER).0,
            }
        });
        for record in records {
            engine.cache_put(record);
        }
        if let Some(feed) = feed {
            let _ = engine
                .follow
                .set(FollowTask::start(Arc::downgrade(&engine), feed));
        }
        engine
            .scheduler
            .at(now + PRUNE_INTERVAL_MS, Job::PruneEnded);
        Ok(engine)
    }

    /// Caches a record and, if that changed the cache, schedules what its timing asks for: memos
    /// lapse at the stale point, or [`MEMO_LEAD_MS`] before the last usable moment if sooner; a
    /// refresh comes before the stale point (after it, on standby, for a token another process
    /// refreshes); and the next health probe.
    fn cache_put(&self, record: ConnectionRecord) -> Arc<CachedConnection> {
        self.cache_put_from(record, Refresher::Us)
    }

    /// [`Engine::cache_put`] for a record whose token `refresher` will refresh ahead of time.
    fn cache_put_from(
        &self,
        record: ConnectionRecord,
        refresher: Refresher,
    ) -> Arc<CachedConnection> {
        let (entry, changed) = self.cache.put_changed(record);
        if !changed {
            // Its jobs are scheduled already; scheduling again would only add duplicates.
            return entry;
        }
        self.cache_changed.notify_waiters();
        let record = &entry.record;
        if let Some(expires_at) = record.expires_at {
            let issued = maintenance::issued_at(record);
            let refreshable =
                record.refresh_token.is_some() && record.status != ConnectionStatus::Revoked;
            let last_memoised = timing::usable_until(expires_at) - MEMO_LEAD_MS;
            let memo_until = if refreshable {
                timing::stale_at(issued, expires_at).min(last_memoised)
            } else {
                last_memoised
            };
            self.scheduler.at(
                memo_until,
                Job::Invalidate {
                    slot: entry.slot,
                    generation: entry.generation,
                },
            );
            if refreshable {
                let at = match refresher {
                    Refresher::Us => timing::refresh_at(issued, expires_at, rand::random()),
                    Refresher::Elsewhere => timing::standby_refresh_at(issued, expires_at),
                };
                self.scheduler.at(at, Job::Refresh(record.key.cache_key()));
            }
        }
        self.schedule_check(record);
        entry
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            engine_id: self.id,
            store: self.store.describe(),
            cached_connections: self.cache.len() as u64,
            store_reads: self.store_reads.load(Ordering::Relaxed),
            remote_changes: self.remote_changes.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            remote_change_lag_ms: self.follow_lags.summary(),
        }
    }

    /// A page of generation counters, for the JS memo.
    pub fn generation_page(&self, index: usize) -> Option<Arc<GenerationPage>> {
        self.cache.generations().page(index)
    }

    /// The stored connection (a counted store read), or `CONNECTION_NOT_FOUND`.
    async fn load(&self, key: &ConnectionKey) -> Result<ConnectionRecord> {
        self.stored_connection(key)
            .await?
            .ok_or_else(|| not_found(key))
    }

    fn count_read(&self) {
        self.store_reads.fetch_add(1, Ordering::Relaxed);
    }

    // Credentials ---------------------------------------------------------------------------

    /// The hot path: serves a credential from the cache without I/O. `Ok(None)` means the
    /// cache cannot answer (not cached, its tenant key is not in memory, or the token is stale
    /// and must be refreshed first); then call [`Engine::credential`].
    pub fn cached_credential(
        &self,
        provider: &str,
        tenant: &str,
        user: &str,
    ) -> Result<Option<Credential>> {
        match self.cache.get(provider, tenant, user) {
            Some(entry) => match self.reveal(&entry, false)? {
                Reveal::Credential(credential) => Ok(Some(credential)),
                Reveal::NeedsKey | Reveal::NeedsRefresh => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Serves a credential: reads the store on a cache miss, and waits for the (single) refresh
    /// of a stale token. If that refresh fails, the token is served as long as it is usable.
    pub async fn credential(&self, key: &ConnectionKey) -> Result<Credential> {
        let mut allow_stale = false;
        let mut refreshes = 0;
        // A cache miss, a tenant key to load, the refreshes, and the serving.
        for _ in 0..(3 + STALE_ON_ARRIVAL_REFRESHES) {
            let entry = match self.cache.get_key(key) {
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
                && !self.backing_off(&key.cache_key(), now);
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
        let Some(tenant_key) = self
            .vault
            .cached(&key.tenant)
            .filter(|k| k.generation() == generation)
        else {
            return Ok(Reveal::NeedsKey);
        };
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

    /// The tenant's data key: from memory, else the store, else (if `create`) a new one.
    async fn tenant_key(&self, tenant: &TenantId, create: bool) -> Result<Arc<TenantKey>> {
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

    /// The key to open `sealed` of `tenant` with: ours if it is of the generation `sealed` was
    /// sealed with, else the store's (another process may have deleted the tenant and created
    /// it again, under a newer key than ours).
    async fn tenant_key_for(&self, tenant: &TenantId, sealed: &Sealed) -> Result<Arc<TenantKey>> {
        let generation = sealed_generation(sealed)?;
        match self.vault.cached(tenant) {
            Some(key) if key.generation() == generation => Ok(key),
            _ => {
                self.vault.forget(tenant);
                self.tenant_key(tenant, false).await
            }
        }
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

    // Connections ---------------------------------------------------------------------------

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
        self.retries_clear(&stored);
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

    /// Runs `write` (seal with a tenant's key, then store), and once more if the store refused
    /// it as sealed with a key that a `deleteTenant()` elsewhere destroyed meanwhile
    /// (`VAULT_KEY_MISSING`): `tenants`' keys are forgotten first, so the second run seals with
    /// the key the store has now (or makes one, where `write` may).
    async fn sealed_write<T, F, Fut>(&self, tenants: &[&TenantId], write: F) -> Result<T>
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

    async fn seal_import(
        &self,
        request: &ImportRequest,
        use_key: TenantKeyUse,
    ) -> Result<ConnectionRecord> {
        let key = &request.key;
        let tenant_key = self
            .tenant_key(&key.tenant, use_key == TenantKeyUse::CreateIfMissing)
            .await?;
        let seal = |field: &str, value: &SecretString| {
            self.vault.seal(
                &tenant_key,
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
                .map(|s| open(FIELD_REFRESH_TOKEN, s))
                .transpose()?,
            extras: record
                .extras
                .as_ref()
                .map(|s| open(FIELD_EXTRAS, s))
                .transpose()?,
        })
    }

    /// Stores a connect flow, with its PKCE verifier (if any) sealed with the tenant's key,
    /// bound to that flow.
    pub async fn put_flow(&self, flow: FlowRecord, verifier: Option<&str>) -> Result<()> {
        let flow = &flow;
        self.sealed_write(&[&flow.key.tenant], move || async move {
            // The key is made now even without a verifier to seal: the callback stores its
            // connection only into a tenant that still has it (see `import_connected`).
            let tenant_key = self.tenant_key(&flow.key.tenant, true).await?;
            let mut flow = flow.clone();
            if let Some(secret) = verifier {
                let place = flow_place(&flow.key, &flow.state_hash);
                flow.verifier = Some(self.vault.seal(&tenant_key, &place, secret.as_bytes())?);
            }
            self.store.put_flow(flow).await
        })
        .await
    }

    pub async fn open_flow_secret(
        &self,
        key: &ConnectionKey,
        state_hash: &str,
        sealed: &Sealed,
    ) -> Result<SecretString> {
        let tenant_key = self.tenant_key_for(&key.tenant, sealed).await?;
        utf8(
            &self
                .vault
                .open(&tenant_key, &flow_place(key, state_hash), sealed)?,
        )
    }

    /// Consumes a flow, if `browser_hash` is the binding it was started with.
    pub async fn take_flow(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
    ) -> Result<FlowTake> {
        self.store
            .take_flow(state_hash, browser_hash, self.now_ms())
            .await
    }

    pub async fn put_session(&self, session: SessionRecord) -> Result<()> {
        self.store.put_session(session).await
    }

    /// Reads a connect session without consuming it.
    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self.store.session(token_hash).await
    }

    /// Consumes a connect session (one flow per session).
    pub async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self.store.take_session(token_hash).await
    }

    /// Drops ended flows and expired sessions now, and again every [`PRUNE_INTERVAL_MS`].
    pub(crate) async fn prune_ended(&self) {
        // A failure (the store is down) is retried at the next interval; nothing depends on it.
        let _ = self.store.prune_ended(self.now_ms()).await;
        self.scheduler
            .at(self.now_ms() + PRUNE_INTERVAL_MS, Job::PruneEnded);
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
        self.retries.remove(&key.cache_key());
        if existed || cached {
            self.emit(Event::new(EventKind::Deleted, key, self.now_ms()));
        }
        Ok(existed || cached)
    }

    // Secrets --------------------------------------------------------------------------------

    pub async fn set_secret(&self, key: &SecretKey, value: &SecretString) -> Result<()> {
        input::check_secret("value", value)?;
        self.sealed_write(&[&key.tenant], move || async move {
            let tenant_key = self.tenant_key(&key.tenant, true).await?;
            let sealed = self.vault.seal(
                &tenant_key,
                &secret_place(key),
                value.expose_secret().as_bytes(),
            )?;
            let now = self.now_ms();
            self.store
                .put_secret(SecretRecord {
                    tenant: key.tenant.clone(),
                    provider: key.provider.clone(),
                    name: key.name.clone(),
                    value: sealed,
                    created_at: now,
                    updated_at: now,
                })
                .await
        })
        .await
    }

    pub async fn secret(&self, key: &SecretKey) -> Result<SecretString> {
        self.count_read();
        let record = self.store.secret(key).await?.ok_or_else(|| {
            let provider = key
                .provider
                .as_ref()
                .map(|p| format!(" and provider '{p}'"))
                .unwrap_or_default();
            Error::new(
                ErrorCode::SecretNotFound,
                format!(
                    "no secret named '{}' for tenant '{}'{provider}; store it with setSecret()",
                    key.name, key.tenant
                ),
            )
        })?;
        let tenant_key = self.tenant_key_for(&key.tenant, &record.value).await?;
        utf8(
            &self
                .vault
                .open(&tenant_key, &secret_place(key), &record.value)?,
        )
    }

    pub async fn delete_secret(&self, key: &SecretKey) -> Result<bool> {
        self.store.delete_secret(key).await
    }

    // Keys and tenants ------------------------------------------------------------------------

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
        Ok(Rotation {
            primary_key_id,
            rewrapped,
            already_current,
        })
    }

    /// Retires a master key that no tenant key uses any more. Retiring a key the store has
    /// retired already (another instance did, or a repair) succeeds.
    pub async fn retire_master_key(&self, id: &str) -> Result<()> {
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
        self.vault.retire(id)
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
        Ok(deletion)
    }

    /// Drops a deleted tenant's key and connections from memory.
    fn forget_tenant(&self, tenant: &TenantId) {
        self.vault.forget(tenant);
        for entry in self.cache.entries() {
            if &entry.record.key.tenant == tenant {
                self.retries.remove(&entry.record.key.cache_key());
            }
        }
        self.cache.remove_tenant(tenant);
    }
}
