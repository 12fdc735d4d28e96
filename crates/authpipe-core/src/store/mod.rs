//! Persistence behind one trait. The engine, vault and cache only ever see [`Store`]; a backend
//! persists records that are already sealed and never needs a key.
//!
//! Besides records, a store gives the engine what several processes sharing it need:
//! - leases ([`Store::try_lease`]): one refresh (or probe) of a connection at a time across all
//!   processes, expiring on their own if the holder dies;
//! - a change feed ([`Store::watch`]): which connections other processes changed, so every
//!   process's cache follows the store.
//!
//! Backends:
//! - [`sqlite::SqliteStore`]: the embedded default, one file, shareable by processes on one
//!   machine (WAL, busy timeout; the change feed polls a trigger-written log).
//! - [`postgres::PostgresStore`]: many app instances on one database (pooled, async; the change
//!   feed is LISTEN/NOTIFY), over TLS as [`postgres::tls`] sets it up.

mod health;
mod observed;
pub mod postgres;
mod row;
mod sql;
pub mod sqlite;

use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, ProviderId, SecretName, TenantId};
use crate::records::{
    ConnectionRecord, ConnectionStatus, FlowRecord, MasterKeyRecord, Sealed, SecretRecord,
    SessionRecord, TenantKeyRecord,
};
use async_trait::async_trait;
pub use health::{Availability, StoreHealth};
pub use observed::Observed;

/// How long ended connect flows are kept (to tell a replay from a forged state) before a
/// store drops them.
pub const ENDED_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Most connect flows one (tenant, user) may have pending: starting another drops the oldest,
/// so nobody can grow the store by starting flows they never finish.
pub const MAX_PENDING_FLOWS_PER_USER: i64 = 10;

/// How often an engine drops ended flows and expired sessions ([`Store::prune_ended`]).
pub const PRUNE_INTERVAL_MS: i64 = 10 * 60 * 1000;

/// A page request for [`Store::list_connections`]. Results are ordered by
/// (tenant, provider, user) and start strictly after `after`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub tenant: Option<TenantId>,
    pub provider: Option<ProviderId>,
    pub status: Option<ConnectionStatus>,
    pub after: Option<ConnectionKey>,
    pub limit: u32,
}

/// What `delete_tenant` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantDeletion {
    pub connections: u64,
    pub secrets: u64,
    /// Connect sessions, expired or not: none can start a flow for the tenant any more (one
    /// checked in the instant before the delete can still store its flow).
    pub sessions: u64,
    /// Connect flows, ended or not: no callback can complete one any more (one already past
    /// its state check stores nothing: see `Engine::import_connected`).
    pub flows: u64,
    pub had_key: bool,
}

/// A tenant's current data key: how old it is and how many values the store sealed with it
/// (counted in the transaction of every write of a sealed value, by every process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantKeyUsage {
    pub tenant: TenantId,
    pub generation: u32,
    pub created_at: i64,
    pub encryptions: i64,
}

/// A row holding a sealed value that is not of the tenant's current key and record format
/// ([`Store::rows_sealed_otherwise`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedRow {
    Connection(ConnectionKey),
    Secret(SecretKey),
    /// A connect flow, by its state hash.
    Flow(String),
}

/// A secret's address: (tenant, provider or none, name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretKey {
    pub tenant: TenantId,
    pub provider: Option<ProviderId>,
    pub name: SecretName,
}

/// What presenting a state found.
#[derive(Clone, Debug, PartialEq)]
pub enum FlowTake {
    /// First use, within its lifetime: the flow, now consumed.
    Fresh(FlowRecord),
    /// The flow had already been consumed.
    Used(FlowRecord),
    /// The flow's lifetime had passed (it is consumed now all the same).
    Expired(FlowRecord),
    /// A live flow presented without the browser binding it was started with: left as it was,
    /// so that someone who learnt a state cannot spend or cancel another browser's flow.
    WrongBrowser,
    Unknown,
}

impl FlowTake {
    /// What presenting `flow` (as read inside the store's transaction) comes to, and whether
    /// the store must mark it consumed. Written once for every store. Only a live flow needs
    /// its browser: one already used or past its lifetime leaves nothing to spend or cancel (and
    /// a reload of the callback page, whose cookie is gone by then, should hear "already used").
    pub fn decide(flow: FlowRecord, browser_hash: Option<&str>, now: i64) -> (Self, bool) {
        use subtle::ConstantTimeEq;
        if flow.consumed_at.is_some() {
            return (Self::Used(flow), false);
        }
        if flow.expires_at > now {
            if let Some(expected) = &flow.browser_hash {
                let same = browser_hash.is_some_and(|presented| {
                    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
                });
                if !same {
                    return (Self::WrongBrowser, false);
                }
            }
        }
        let consumed = FlowRecord {
            consumed_at: Some(now),
            ..flow
        };
        if consumed.expires_at <= now {
            (Self::Expired(consumed), true)
        } else {
            (Self::Fresh(consumed), true)
        }
    }
}

/// What a lease is for: at most one holder per connection and purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeasePurpose {
    /// Refreshing the token (a rotating refresh token must never be used twice).
    Refresh,
    /// Probing the connection's health (once per interval, by one process).
    Check,
}

impl LeasePurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refresh => "refresh",
            Self::Check => "check",
        }
    }
}

/// A lease request: `owner` holds (connection, purpose) until `until` (ms).
#[derive(Clone, Debug)]
pub struct Lease<'a> {
    pub key: &'a ConnectionKey,
    pub purpose: LeasePurpose,
    pub owner: &'a str,
    pub until: i64,
}

/// What asking for a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseTake {
    /// Ours until the requested time (free, or ours already and renewed).
    Acquired,
    /// Ours until the requested time, taken over from another owner whose lease had run out
    /// (it died, or stalled past its lease).
    TakenOver,
    /// Another owner holds it until this time (ms).
    HeldUntil(i64),
}

/// A change to the store, as the change feed reports it. Carries no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The connection was written (and now has `version`), or deleted (`None`).
    Connection {
        key: ConnectionKey,
        version: Option<i64>,
    },
    /// The tenant's data key was deleted (`deleteTenant`): forget it, and the tenant's
    /// connections (their deletions are reported too).
    TenantDeleted(TenantId),
    /// Changes may have been missed (the feed lost its database connection, or fell behind):
    /// reload everything.
    Resync,
}

/// The receiving end of [`Store::watch`]; dropping it stops the feed.
pub type ChangeFeed = tokio::sync::mpsc::UnboundedReceiver<Change>;

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A description for messages, without credentials (e.g. `sqlite:/srv/app/.authpipe/authpipe.db`).
    fn describe(&self) -> String;

    // Master keys and tenant keys -------------------------------------------------------------

    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>>;
    /// Inserts key-check records; existing ids are left as they are.
    async fn add_master_keys(&self, records: Vec<MasterKeyRecord>) -> Result<()>;
    /// Marks a master key retired. Fails with `KEY_IN_USE` (checked in the same transaction)
    /// while any tenant key is still wrapped by it.
    async fn retire_master_key(&self, id: &str, now: i64) -> Result<()>;

    async fn tenant_keys(&self) -> Result<Vec<TenantKeyRecord>>;
    async fn tenant_key(&self, tenant: &TenantId) -> Result<Option<TenantKeyRecord>>;
    /// The generation of the tenant's last deleted data key, if it ever had one: a new key must
    /// be of a later generation (see `vault` on generations).
    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>>;
    /// Stores a tenant's data key unless one exists; returns the stored key either way, so
    /// concurrent creators (other processes too) agree on one key. Checked in the same
    /// transaction: a key wrapped by a master key the store marks retired is refused with
    /// `VAULT_KEY_MISMATCH`, and one whose generation is not past the tenant's deleted key's
    /// with `VAULT_KEY_MISSING` (the tenant was deleted meanwhile).
    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord>;
    /// Replaces a tenant key's wrapping if it is still wrapped by `expected_master_key_id`.
    /// Returns whether it was replaced. A new wrapping by a retired master key is refused with
    /// `VAULT_KEY_MISMATCH`, in the same transaction.
    async fn rewrap_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_master_key_id: &str,
    ) -> Result<bool>;
    /// Makes `record` (a later generation) the tenant's data key if its key is still of
    /// `expected_generation`, keeping that one among the tenant's older keys, in one
    /// transaction; returns whether it did. From then on every write of sealed data is checked
    /// against the new generation. A wrapping by a retired master key is refused with
    /// `VAULT_KEY_MISMATCH`.
    async fn rotate_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_generation: u32,
    ) -> Result<bool>;
    /// Every tenant's older keys (rotations not finished).
    async fn older_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>>;
    async fn older_tenant_key(
        &self,
        tenant: &TenantId,
        generation: u32,
    ) -> Result<Option<TenantKeyRecord>>;
    /// Deletes an older key of the tenant if the store holds nothing sealed with it any more
    /// (checked in the same transaction); returns whether it did.
    async fn delete_older_tenant_key(&self, tenant: &TenantId, generation: u32) -> Result<bool>;
    /// The current keys' ages and counts of values sealed.
    async fn tenant_key_usage(&self) -> Result<Vec<TenantKeyUsage>>;
    /// Up to `limit` rows of each kind of the tenant holding a sealed value that is not in
    /// format 2 under the key of `generation`: what a rotation (or the format migration) has
    /// left to re-seal.
    async fn rows_sealed_otherwise(
        &self,
        tenant: &TenantId,
        generation: u32,
        limit: u32,
    ) -> Result<Vec<SealedRow>>;
    /// Replaces a secret's value if it is still `expected` (compare and swap); returns whether
    /// it did. Same tenant-key check as `put_connections`.
    async fn reseal_secret(&self, record: SecretRecord, expected: &Sealed) -> Result<bool>;
    /// Reads a connect flow without consuming it.
    async fn flow(&self, state_hash: &str) -> Result<Option<FlowRecord>>;
    /// Replaces a flow's verifier if it is still `expected`; returns whether it did. Same
    /// tenant-key check as `put_connections`.
    async fn reseal_flow(
        &self,
        flow: &FlowRecord,
        verifier: Sealed,
        expected: &Sealed,
    ) -> Result<bool>;
    /// The oldest record format the store may hold: 1, or 2 once migrated.
    async fn oldest_record_format(&self) -> Result<u8>;
    /// Marks the store as holding format-2 records only if it holds no format-1 record
    /// (checked in the same transaction); returns whether it is so marked now.
    async fn finish_format_migration(&self) -> Result<bool>;
    /// Deletes the tenant's data key, connections, secrets, connect sessions and flows (and
    /// leases) in one transaction, and makes sure the deleted key bytes do not linger in the
    /// store's live files. The key row's deletion also records its generation (see
    /// [`Store::deleted_generation`]) and reports [`Change::TenantDeleted`] on the change feed.
    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion>;

    // Connections ------------------------------------------------------------------------------

    /// Inserts or replaces connections in one transaction (all or nothing). `created_at` of an
    /// existing row is kept and its version bumped. Fails with `VAULT_KEY_MISSING` unless every
    /// sealed field was sealed with the tenant's data key as stored ([`check_sealed_with`]).
    /// Returns the rows as stored.
    async fn put_connections(
        &self,
        records: Vec<ConnectionRecord>,
    ) -> Result<Vec<ConnectionRecord>>;
    /// Replaces a connection if its stored version is still `expected_version` (compare and
    /// swap); returns the stored record with its new version, or `None` if another writer got
    /// there first. `created_at` is kept. Same tenant-key check as `put_connections`, in the
    /// same statement.
    async fn update_connection(
        &self,
        record: ConnectionRecord,
        expected_version: i64,
    ) -> Result<Option<ConnectionRecord>>;
    async fn connection(&self, key: &ConnectionKey) -> Result<Option<ConnectionRecord>>;
    /// The stored connections among `keys`, in no particular order (absent ones are left out).
    async fn connections(&self, keys: &[ConnectionKey]) -> Result<Vec<ConnectionRecord>>;
    /// Every connection, for warming the cache when an engine opens.
    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>>;
    async fn list_connections(&self, query: &ListQuery) -> Result<Vec<ConnectionRecord>>;
    /// Returns whether a row was deleted.
    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool>;

    // Secrets ----------------------------------------------------------------------------------

    /// Inserts or replaces a secret; same tenant-key check as `put_connections`.
    async fn put_secret(&self, record: SecretRecord) -> Result<()>;
    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>>;
    async fn delete_secret(&self, key: &SecretKey) -> Result<bool>;

    // Connect flows and sessions ----------------------------------------------------------------

    /// Stores a new flow, dropping the oldest pending ones of its (tenant, user) past
    /// [`MAX_PENDING_FLOWS_PER_USER`]. A sealed verifier gets the tenant-key check of
    /// `put_connections`.
    async fn put_flow(&self, flow: FlowRecord) -> Result<()>;
    /// Consumes the flow with this state hash if `browser_hash` is the one it was started with
    /// (see [`FlowTake::decide`]), atomically: of concurrent callers with the same state,
    /// exactly one gets `Fresh`.
    async fn take_flow(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: i64,
    ) -> Result<FlowTake>;
    async fn put_session(&self, session: SessionRecord) -> Result<()>;
    /// Reads a session without consuming it (to check it before [`Store::take_session`]).
    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>>;
    /// Consumes a session, atomically: of concurrent callers with the same token, one gets it.
    /// A session starts one flow.
    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>>;
    /// Drops flows that ended more than [`ENDED_RETENTION_MS`] before `now`, and expired
    /// sessions. Returns how many rows went.
    async fn prune_ended(&self, now: i64) -> Result<u64>;

    // Coordination between processes ----------------------------------------------------------

    /// Takes `lease` if it is free, expired, or already `lease.owner`'s (then it is renewed),
    /// atomically: of concurrent takers exactly one gets `Acquired`. `now` decides expiry.
    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake>;
    /// Gives a lease back early, if `owner` still holds it.
    async fn release_lease(
        &self,
        key: &ConnectionKey,
        purpose: LeasePurpose,
        owner: &str,
    ) -> Result<()>;
    /// Starts reporting connection changes, from this moment on (changes this process made
    /// may be reported too). `None` if no other process can write to this store.
    async fn watch(&self) -> Result<Option<ChangeFeed>>;
}

/// The check every write of sealed data makes inside its transaction, given the generation of
/// the tenant's data key as stored (`None`: it has none): the tenant still has a key, and every
/// value was sealed with it. A process that missed a `deleteTenant` seals with the destroyed
/// key; its write is refused here rather than stored unreadable (see `vault` on generations).
pub(crate) fn check_sealed_with<'a>(
    tenant: &TenantId,
    stored_generation: Option<u32>,
    sealed: impl IntoIterator<Item = &'a Sealed>,
) -> Result<()> {
    let Some(stored) = stored_generation else {
        return Err(Error::new(
            ErrorCode::VaultKeyMissing,
            format!(
                "tenant '{tenant}' has no data key (it was deleted while this write was prepared)"
            ),
        ));
    };
    for value in sealed {
        let generation = crate::vault::sealed_generation(value)?;
        if generation != stored {
            return Err(Error::new(
                ErrorCode::VaultKeyMissing,
                format!(
                    "tenant '{tenant}' was deleted and created again while this write was prepared: it was sealed with \
                     data key generation {generation}, and the tenant's key is generation {stored}"
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a new tenant key that is not of a later generation than the tenant's deleted one
/// (`deleted`): the tenant was deleted after the key was made, so make it again.
pub(crate) fn check_after_deleted(record: &TenantKeyRecord, deleted: Option<u32>) -> Result<()> {
    match deleted {
        Some(deleted) if record.generation <= deleted => Err(Error::new(
            ErrorCode::VaultKeyMissing,
            format!(
                "tenant '{}' was deleted while its new data key was made (generation {}, deleted generation {deleted}); try again",
                record.tenant, record.generation
            ),
        )),
        _ => Ok(()),
    }
}

/// The one generation all of a record's sealed fields were sealed with.
pub(crate) fn connection_generation(record: &ConnectionRecord) -> Result<u32> {
    let generation = crate::vault::sealed_generation(&record.credential)?;
    check_sealed_with(&record.key.tenant, Some(generation), record.sealed_fields())?;
    Ok(generation)
}

/// Why a new tenant key is not wrapped by `master_key_id`: another instance retired it
/// (`retired_at`); `active` are the store's master keys still in use.
pub(crate) fn retired_master_key(master_key_id: &str, retired_at: i64, active: &[String]) -> Error {
    let active = if active.is_empty() {
        "none".to_owned()
    } else {
        active
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Error::new(
        ErrorCode::VaultKeyMismatch,
        format!(
            "master key '{master_key_id}' was retired by another instance (at {retired_at} ms since epoch), so it wraps \
             no tenant key any more; configure the store's current master key first in masterKeys (active: {active}) \
             and restart this instance"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(browser_hash: Option<&str>, consumed_at: Option<i64>) -> FlowRecord {
        FlowRecord {
            state_hash: "h".into(),
            key: ConnectionKey::parse("attio", "t", "u").unwrap(),
            verifier: None,
            redirect_uri: "https://app.example/cb".into(),
            scopes: vec![],
            browser_hash: browser_hash.map(str::to_owned),
            created_at: 0,
            expires_at: 1_000,
            consumed_at,
        }
    }

    fn outcome(flow: FlowRecord, presented: Option<&str>, now: i64) -> (&'static str, bool) {
        let (take, consume) = FlowTake::decide(flow, presented, now);
        let name = match take {
            FlowTake::Fresh(_) => "fresh",
            FlowTake::Used(_) => "used",
            FlowTake::Expired(_) => "expired",
            FlowTake::WrongBrowser => "wrong browser",
            FlowTake::Unknown => "unknown",
        };
        (name, consume)
    }

    #[test]
    fn only_a_live_flow_asks_for_its_browser() {
        let bound = || flow(Some("b"), None);
        assert_eq!(outcome(bound(), Some("b"), 10), ("fresh", true));
        assert_eq!(outcome(bound(), Some("x"), 10), ("wrong browser", false));
        assert_eq!(outcome(bound(), None, 10), ("wrong browser", false));
        // Nothing left to spend: a reload after success, or a return after the lifetime.
        assert_eq!(outcome(flow(Some("b"), Some(5)), None, 10), ("used", false));
        assert_eq!(outcome(bound(), None, 1_000), ("expired", true));
        // A flow started without the handler has no binding to ask for.
        assert_eq!(outcome(flow(None, None), None, 10), ("fresh", true));
    }
}
