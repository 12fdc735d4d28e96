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
//!   and refreshes and probes are coordinated with them through store leases (refresh/, probe.rs).

mod connections;
mod connectors;
mod credentials;
mod flows;
mod follow;
mod health;
mod jobs;
mod keys;
mod observe;
mod open;
mod probe;
mod refresh;
mod rotation;

pub use connections::{ConnectionPage, ConnectionSecrets};
pub use credentials::{Credential, Lookup, Pending};
pub use health::Health;
pub use keys::Rotation;
pub use refresh::RefreshReason;
pub use rotation::{KeyRotationPolicy, TenantKeyRotation};

pub use open::{
    check_options, open_shared, open_unshared, DevKeyNotice, EngineOptions, MasterKeySource,
    Opened, StoreLocation,
};

use crate::cache::{Cache, CachedConnection};
use crate::clock::Clock;
use crate::error::{Error, ErrorCode, Result};
use crate::events::EventBus;
use crate::generations::GenerationPage;
use crate::ids::ConnectionKey;
use crate::maintenance::{self, timing};
use crate::records::{ConnectionRecord, ConnectionStatus};
use crate::scheduler::{Job, Runner, Scheduler};
use crate::store::{Observed, SecretKey, Store, StoreHealth, PRUNE_INTERVAL_MS};
use crate::telemetry::Telemetry;
use crate::vault::{RecordPlace, Vault};
use follow::FollowTask;
use secrecy::SecretString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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
    /// This engine's name in store leases: unique per process and engine.
    owner: String,
    store_reads: AtomicU64,
    /// Woken whenever the cache changes, for those waiting on another process's refresh.
    cache_changed: tokio::sync::Notify,
    /// Follows the store's change feed; stopped with the engine.
    follow: std::sync::OnceLock<FollowTask>,
    follow_stats: follow::FollowStats,
    /// Held shared by a reload of the store into the cache (follow.rs), from its read to its
    /// last write into the cache; a deletion here takes it exclusively between its store write
    /// and its cache removal. So a reload that read a row before the deletion cannot put it
    /// back after it (the store reports this process's own writes too).
    reload_gate: tokio::sync::RwLock<()>,
    /// The instances' provider configurations; refreshes and probes use the first still open.
    connectors: connectors::Connectors,
    refreshes: refresh::Refreshes,
    probes: probe::Probes,
    events: EventBus,
    /// When tenant keys are rotated on their own (`rotation.rs`).
    key_rotation: parking_lot::RwLock<KeyRotationPolicy>,
    /// Instruments and log records for the operator (`observe.rs`).
    telemetry: Arc<Telemetry>,
    /// Whether the store answers, as every operation on it finds (`store::Observed`).
    store_health: Arc<StoreHealth>,
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
        key_rotation: KeyRotationPolicy,
    ) -> Result<Arc<Self>> {
        let store_health = Arc::new(StoreHealth::default());
        let store: Arc<dyn Store> = Arc::new(Observed::new(store, store_health.clone()));
        let now = clock.now_ms();
        let tenant_keys = store.tenant_keys().await?;
        let older_keys = store.older_tenant_keys().await?;
        let wrapping = tenant_keys
            .iter()
            .chain(&older_keys)
            .map(|k| k.master_key_id.clone())
            .collect();
        if store.oldest_record_format().await? >= crate::vault::RECORD_FORMAT_V2 {
            vault.refuse_format_1();
        }
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
        let telemetry = Arc::new(Telemetry::default());
        let engine = Arc::new_cyclic(|weak: &Weak<Self>| {
            let runner: Weak<dyn Runner> = weak.clone();
            Self::listen_to_store(&telemetry, weak, &store_health);
            Self {
                id,
                store,
                vault,
                cache,
                scheduler: Scheduler::start(generations, clock.clone(), runner),
                clock,
                store_reads: AtomicU64::new(0),
                follow_stats: Default::default(),
                owner: format!("{}:{:016x}", std::process::id(), rand::random::<u64>()),
                cache_changed: tokio::sync::Notify::new(),
                follow: std::sync::OnceLock::new(),
                reload_gate: tokio::sync::RwLock::new(()),
                connectors: Default::default(),
                refreshes: Default::default(),
                probes: Default::default(),
                events: Default::default(),
                key_rotation: parking_lot::RwLock::new(key_rotation),
                telemetry,
                store_health,
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
        engine
            .scheduler
            .at(now + rotation::FIRST_KEY_MAINTENANCE_MS, Job::TenantKeys);
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
            remote_changes: self.follow_stats.remote_changes.load(Ordering::Relaxed),
            resyncs: self.follow_stats.resyncs.load(Ordering::Relaxed),
            remote_change_lag_ms: self.follow_stats.lags.summary(),
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

    /// Subscribes to this engine's connection events.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::events::Event> {
        self.events.subscribe()
    }
}
