//! The embedded default store: one SQLite file (or `:memory:`).
//!
//! - WAL journal with `synchronous = FULL`: a committed write (a rotated refresh token above
//!   all) survives power loss, not only a process crash.
//! - `secure_delete = ON` and a WAL truncate after `delete_tenant`: a crypto-shredded tenant
//!   key is overwritten on disk, not left in a free page or the WAL.
//! - The file is created 0600 in a 0700 directory; SQLite gives its -wal/-shm files the same mode.
//! - Calls run on tokio's blocking pool, one connection behind a mutex. Several processes may
//!   share the file (busy timeout; leases coordinate their refreshes and probes).
//! - Leases go through a second connection with `synchronous = OFF`: they are coordination
//!   between live processes, not data, so they are not worth an fsync each (after a power loss
//!   no process that held one is alive).
//! - Other processes' changes are found by polling: triggers append every connection write and
//!   every deleted tenant key to `connection_changes`, and [`Store::watch`] reads what is new
//!   whenever `PRAGMA data_version` says another connection committed.
//!
//! Why this file is long: it is the one `impl Store for SqliteStore`, each method one
//! transaction; what the two stores share is in `sql.rs` and `row.rs`, the rest in the modules
//! below.

mod driver;
mod feed;
mod files;
mod migrations;
#[cfg(test)]
mod tests;

use super::row::{
    connection_from_row, flow_from_row, master_key_from_row, sealed_row, session_from_row,
    tenant_key_from_row, tenant_key_usage_from_row, SqlRow,
};
use super::sql::{self, Params, Placeholders::Sqlite, Statement};
use super::{
    check_after_deleted, check_sealed_with, connection_generation, retired_master_key, ChangeFeed,
    FlowTake, Lease, LeasePurpose, LeaseTake, ListQuery, SealedRow, SecretKey, Store,
    TenantDeletion, TenantKeyUsage,
};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, TenantId};
use crate::records::{
    ConnectionRecord, FlowRecord, MasterKeyRecord, Sealed, SecretRecord, SessionRecord,
    TenantKeyRecord,
};
use async_trait::async_trait;
use driver::{execute, plain, query, query_opt};
pub use files::canonical_path;
use files::{create_private_dir, ensure_private_files};
use migrations::{migrate, APPLICATION_ID};
use parking_lot::Mutex;
use rusqlite::{params_from_iter, Connection, OpenFlags, TransactionBehavior};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Statements each connection keeps prepared: every statement this store runs fits, so the
/// hot ones (upsert, update, the tenant-key check) are never evicted by a rare one.
const STATEMENT_CACHE: usize = 64;

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// For leases (the same connection for an in-memory store).
    leases: Arc<Mutex<Connection>>,
    label: String,
    /// Whether other processes can open it (a file, not `:memory:`).
    shared: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`, and its directory.
    pub fn open(path: &Path) -> Result<Self> {
        let label = format!("sqlite:{}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)
                .map_err(|e| Error::store(&format!("cannot create {}", dir.display()), e))?;
        }
        ensure_private_files(path).map_err(|e| {
            Error::store(
                &format!(
                    "{} (or its -wal / -shm) is open to group or others and cannot be made 0600 \
                     (open it as the file's owner, or chmod 600 it)",
                    path.display()
                ),
                e,
            )
        })?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::store(&format!("cannot open {}", path.display()), e))?;
        let mut store = Self::init(conn, label, true)?;
        let leases = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        leases.busy_timeout(Duration::from_secs(10))?;
        leases.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        leases.pragma_update(None, "synchronous", "OFF")?;
        store.leases = Arc::new(Mutex::new(leases));
        Ok(store)
    }

    /// A private in-memory store; gone when closed. For tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(
            Connection::open_in_memory()?,
            "sqlite::memory:".to_owned(),
            false,
        )
    }

    fn init(mut conn: Connection, label: String, shared: bool) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let not_ours = |what: &str| {
            Error::new(
                ErrorCode::StoreError,
                format!("{label} is not an Authpipe store ({what}); point `store` at another file"),
            )
        };
        let app_id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|_| not_ours("not a SQLite database"))?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
            return Err(not_ours("it holds other data"));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Self {
            leases: conn.clone(),
            conn,
            label,
            shared,
        })
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        run_on(&self.conn, f).await
    }
}

/// Runs `f` with `conn` on tokio's blocking pool.
async fn run_on<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || f(&mut conn.lock()))
        .await
        .map_err(|e| Error::internal(format!("store task failed: {e}")))?
}

/// Take a lease if it is free, ours, or expired at `now`. Returns a row only if taken. (SQLite
/// takes the database's write lock for any INSERT, so unlike PostgreSQL's, this one need not
/// avoid writing when the lease is held.)
fn take_lease(lease: &Lease<'_>, now: i64) -> Statement {
    let mut params = Params::new(Sqlite);
    let values = [
        params.bind(lease.key.tenant.as_str()),
        params.bind(lease.key.provider.as_str()),
        params.bind(lease.key.user.as_str()),
        params.bind(lease.purpose.as_str()),
        params.bind(lease.owner),
        params.bind(lease.until),
    ];
    let now = params.bind(now);
    let values: Vec<_> = values.iter().map(ToString::to_string).collect();
    params.statement(format!(
        "INSERT INTO leases (tenant_id, provider, user_id, purpose, owner, expires_at) \
         VALUES ({}) \
         ON CONFLICT (tenant_id, provider, user_id, purpose) DO UPDATE \
           SET owner = excluded.owner, expires_at = excluded.expires_at \
           WHERE leases.owner = excluded.owner OR leases.expires_at <= {now} \
         RETURNING owner",
        values.join(", ")
    ))
}

/// Who holds the lease, and until when.
fn lease_holder(key: &ConnectionKey, purpose: LeasePurpose) -> Statement {
    let mut params = Params::new(Sqlite);
    let lease = sql::lease_key(&mut params, key, purpose);
    params.statement(format!(
        "SELECT owner, expires_at FROM leases WHERE {lease}"
    ))
}

/// The generation of the tenant's data key as stored, for [`check_sealed_with`].
fn stored_generation(conn: &Connection, tenant: &TenantId) -> Result<Option<u32>> {
    query_opt(conn, &sql::tenant_key_generation(Sqlite, tenant), |r| {
        r.generation(0)
    })
}

/// Refuses a new wrapping by a master key the store marks retired.
fn check_wrapping_key(conn: &Connection, master_key_id: &str) -> Result<()> {
    let retired_at = query_opt(
        conn,
        &sql::master_key_retired_at(Sqlite, master_key_id),
        |r| r.read::<Option<i64>>(0),
    )?
    .flatten();
    let Some(retired_at) = retired_at else {
        return Ok(());
    };
    let active = query(conn, &plain(sql::ACTIVE_MASTER_KEYS.to_owned()), |r| {
        r.read(0)
    })?;
    Err(retired_master_key(master_key_id, retired_at, &active))
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>> {
        self.run(|conn| query(conn, &plain(sql::master_keys()), |r| master_key_from_row(r)))
            .await
    }

    async fn add_master_keys(&self, records: Vec<MasterKeyRecord>) -> Result<()> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for r in &records {
                execute(&tx, &sql::add_master_key(Sqlite, r))?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn retire_master_key(&self, id: &str, now: i64) -> Result<()> {
        let id = id.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let count = Params::one(Sqlite, id.as_str(), |key| {
                format!(
                    "SELECT (SELECT count(*) FROM tenant_keys WHERE master_key_id = {key}) \
                          + (SELECT count(*) FROM older_tenant_keys WHERE master_key_id = {key})"
                )
            });
            let in_use: i64 = query_opt(&tx, &count, |r| r.read(0))?.unwrap_or(0);
            if in_use > 0 {
                return Err(Error::new(
                    ErrorCode::KeyInUse,
                    format!("master key '{id}' still wraps {in_use} tenant key(s); call rotateMasterKey() first"),
                ));
            }
            execute(&tx, &sql::retire_master_key(Sqlite, &id, now))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        self.run(|conn| query(conn, &plain(sql::tenant_keys()), |r| tenant_key_from_row(r)))
            .await
    }

    async fn tenant_key(&self, tenant: &TenantId) -> Result<Option<TenantKeyRecord>> {
        let statement = sql::tenant_key(Sqlite, tenant);
        self.run(move |conn| query_opt(conn, &statement, |r| tenant_key_from_row(r)))
            .await
    }

    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>> {
        let statement = sql::deleted_generation(Sqlite, tenant);
        self.run(move |conn| query_opt(conn, &statement, |r| r.generation(0)))
            .await
    }

    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = query_opt(&tx, &sql::tenant_key(Sqlite, &record.tenant), |r| {
                tenant_key_from_row(r)
            })?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
            check_wrapping_key(&tx, &record.master_key_id)?;
            let deleted = query_opt(&tx, &sql::deleted_generation(Sqlite, &record.tenant), |r| {
                r.generation(0)
            })?;
            check_after_deleted(&record, deleted)?;
            execute(&tx, &sql::insert_tenant_key(Sqlite, &record))?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    async fn rewrap_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_master_key_id: &str,
    ) -> Result<bool> {
        let rewrap = sql::rewrap_tenant_key(Sqlite, &record, expected_master_key_id);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_wrapping_key(&tx, &record.master_key_id)?;
            let changed = execute(&tx, &rewrap)?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn rotate_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_generation: u32,
    ) -> Result<bool> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_wrapping_key(&tx, &record.master_key_id)?;
            let keep = sql::keep_older_tenant_key(Sqlite, &record.tenant, expected_generation);
            if execute(&tx, &keep)? == 0 {
                return Ok(false);
            }
            execute(
                &tx,
                &sql::replace_tenant_key(Sqlite, &record, expected_generation),
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn older_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        self.run(|conn| {
            query(conn, &plain(sql::older_tenant_keys()), |r| {
                tenant_key_from_row(r)
            })
        })
        .await
    }

    async fn older_tenant_key(
        &self,
        tenant: &TenantId,
        generation: u32,
    ) -> Result<Option<TenantKeyRecord>> {
        let statement = sql::older_tenant_key(Sqlite, tenant, generation);
        self.run(move |conn| query_opt(conn, &statement, |r| tenant_key_from_row(r)))
            .await
    }

    async fn delete_older_tenant_key(&self, tenant: &TenantId, generation: u32) -> Result<bool> {
        let count = sql::count_sealed_with(Sqlite, Some(tenant), 2, &generation.to_be_bytes());
        let delete = sql::delete_older_tenant_key(Sqlite, tenant, generation);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let left: i64 = query_opt(&tx, &count, |r| r.read(0))?.unwrap_or(0);
            if left > 0 {
                return Ok(false);
            }
            execute(&tx, &delete)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn tenant_key_usage(&self) -> Result<Vec<TenantKeyUsage>> {
        self.run(|conn| {
            query(conn, &plain(sql::TENANT_KEY_USAGE.to_owned()), |r| {
                tenant_key_usage_from_row(r)
            })
        })
        .await
    }

    async fn rows_sealed_otherwise(
        &self,
        tenant: &TenantId,
        generation: u32,
        limit: u32,
    ) -> Result<Vec<SealedRow>> {
        let prefix = sql::current_prefix(generation);
        let statements: Vec<Statement> = (0..sql::SEALED_TABLES.len())
            .map(|table| sql::rows_sealed_otherwise(Sqlite, table, tenant, &prefix, limit))
            .collect();
        let tenant = tenant.clone();
        self.run(move |conn| {
            let mut rows = Vec::new();
            for (table, statement) in statements.iter().enumerate() {
                let found = query(conn, statement, |r| sealed_row(table, &tenant, r))?;
                rows.extend(found);
            }
            Ok(rows)
        })
        .await
    }

    async fn reseal_secret(&self, record: SecretRecord, expected: &Sealed) -> Result<bool> {
        let update = sql::reseal_secret(Sqlite, &record, expected);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let generation = stored_generation(&tx, &record.tenant)?;
            check_sealed_with(&record.tenant, generation, [&record.value])?;
            let changed = execute(&tx, &update)?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn flow(&self, state_hash: &str) -> Result<Option<FlowRecord>> {
        let (statement, state_hash) = (sql::flow(Sqlite, state_hash), state_hash.to_owned());
        self.run(move |conn| query_opt(conn, &statement, |r| flow_from_row(&state_hash, r)))
            .await
    }

    async fn reseal_flow(
        &self,
        flow: &FlowRecord,
        verifier: Sealed,
        expected: &Sealed,
    ) -> Result<bool> {
        let update = sql::reseal_flow(Sqlite, &flow.state_hash, &verifier, expected);
        let tenant = flow.key.tenant.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let generation = stored_generation(&tx, &tenant)?;
            check_sealed_with(&tenant, generation, [&verifier])?;
            let changed = execute(&tx, &update)?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn oldest_record_format(&self) -> Result<u8> {
        self.run(|conn| {
            let format: Option<i64> =
                query_opt(conn, &plain(sql::OLDEST_RECORD_FORMAT.to_owned()), |r| {
                    r.read(0)
                })?;
            Ok(format.unwrap_or(1) as u8)
        })
        .await
    }

    async fn finish_format_migration(&self) -> Result<bool> {
        let count = sql::count_sealed_with(Sqlite, None, 1, &[crate::vault::RECORD_FORMAT_V1]);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let left: i64 = query_opt(&tx, &count, |r| r.read(0))?.unwrap_or(0);
            if left > 0 {
                return Ok(false);
            }
            execute(&tx, &plain(sql::FORMAT_2_ONLY.to_owned()))?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // First the key (its triggers keep its generation and tell other processes).
            let had_key = execute(
                &tx,
                &sql::delete_tenant_rows(Sqlite, "tenant_keys", &tenant),
            )? > 0;
            execute(
                &tx,
                &sql::delete_tenant_rows(Sqlite, "older_tenant_keys", &tenant),
            )?;
            let mut counts = [0u64; sql::TENANT_TABLES.len()];
            for (count, table) in counts.iter_mut().zip(sql::TENANT_TABLES) {
                *count = execute(&tx, &sql::delete_tenant_rows(Sqlite, table, &tenant))? as u64;
            }
            tx.commit()?;
            // secure_delete zeroed the pages in the database; the WAL may still hold copies.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            let [connections, secrets, sessions, flows, _leases] = counts;
            Ok(TenantDeletion {
                connections,
                secrets,
                sessions,
                flows,
                had_key,
            })
        })
        .await
    }

    async fn put_connections(
        &self,
        records: Vec<ConnectionRecord>,
    ) -> Result<Vec<ConnectionRecord>> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut stored = Vec::with_capacity(records.len());
            // Once per tenant: a batch often holds many users of one tenant.
            let mut generations: HashMap<TenantId, Option<u32>> = HashMap::new();
            for mut r in records {
                let generation = match generations.get(&r.key.tenant) {
                    Some(known) => *known,
                    None => {
                        let stored = stored_generation(&tx, &r.key.tenant)?;
                        generations.insert(r.key.tenant.clone(), stored);
                        stored
                    }
                };
                check_sealed_with(&r.key.tenant, generation, r.sealed_fields())?;
                let upsert = sql::upsert_connection(Sqlite, &r)?;
                let (created_at, version) = tx
                    .prepare_cached(&upsert.sql)?
                    .query_row(params_from_iter(&upsert.values), |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                r.created_at = created_at;
                r.version = version;
                stored.push(r);
            }
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn update_connection(
        &self,
        record: ConnectionRecord,
        expected_version: i64,
    ) -> Result<Option<ConnectionRecord>> {
        let generation = connection_generation(&record)?;
        let update = sql::update_connection(Sqlite, &record, expected_version, generation)?;
        self.run(move |conn| {
            match query_opt(conn, &update, |row| row.read(0))? {
                Some(version) => Ok(Some(ConnectionRecord { version, ..record })),
                // Lost to another writer, or refused by the key check: which one, reported.
                None => {
                    let tenant = &record.key.tenant;
                    check_sealed_with(
                        tenant,
                        stored_generation(conn, tenant)?,
                        record.sealed_fields(),
                    )?;
                    Ok(None)
                }
            }
        })
        .await
    }

    async fn connection(&self, key: &ConnectionKey) -> Result<Option<ConnectionRecord>> {
        let statement = sql::connection(Sqlite, key);
        self.run(move |conn| query_opt(conn, &statement, |r| connection_from_row(r)))
            .await
    }

    async fn connections(&self, keys: &[ConnectionKey]) -> Result<Vec<ConnectionRecord>> {
        let statements: Vec<_> = keys.iter().map(|k| sql::connection(Sqlite, k)).collect();
        self.run(move |conn| {
            let mut out = Vec::with_capacity(statements.len());
            for statement in &statements {
                out.extend(query_opt(conn, statement, |r| connection_from_row(r))?);
            }
            Ok(out)
        })
        .await
    }

    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        self.run(|conn| {
            query(conn, &plain(sql::all_connections()), |r| {
                connection_from_row(r)
            })
        })
        .await
    }

    async fn list_connections(&self, query: &ListQuery) -> Result<Vec<ConnectionRecord>> {
        let statement = sql::list_connections(Sqlite, query);
        self.run(move |conn| self::query(conn, &statement, |r| connection_from_row(r)))
            .await
    }

    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        let statement = sql::delete_connection(Sqlite, key);
        self.run(move |conn| Ok(execute(conn, &statement)? > 0))
            .await
    }

    async fn put_secret(&self, record: SecretRecord) -> Result<()> {
        let put = sql::put_secret(Sqlite, &record);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let generation = stored_generation(&tx, &record.tenant)?;
            check_sealed_with(&record.tenant, generation, [&record.value])?;
            execute(&tx, &put)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>> {
        let key = key.clone();
        let statement = sql::secret(Sqlite, &key);
        self.run(move |conn| {
            let row = query_opt(conn, &statement, |r| {
                Ok((r.read::<Vec<u8>>(0)?, r.read(1)?, r.read(2)?))
            })?;
            Ok(row.map(|(value, created_at, updated_at)| SecretRecord {
                tenant: key.tenant,
                provider: key.provider,
                name: key.name,
                value: Sealed(value),
                created_at,
                updated_at,
            }))
        })
        .await
    }

    async fn delete_secret(&self, key: &SecretKey) -> Result<bool> {
        let statement = sql::delete_secret(Sqlite, key);
        self.run(move |conn| Ok(execute(conn, &statement)? > 0))
            .await
    }

    async fn put_flow(&self, flow: FlowRecord) -> Result<()> {
        let (insert, prune) = (
            sql::insert_flow(Sqlite, &flow)?,
            sql::prune_pending_flows(Sqlite, &flow),
        );
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(verifier) = &flow.verifier {
                let generation = stored_generation(&tx, &flow.key.tenant)?;
                check_sealed_with(&flow.key.tenant, generation, [verifier])?;
            }
            execute(&tx, &insert)?;
            execute(&tx, &prune)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn take_flow(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: i64,
    ) -> Result<FlowTake> {
        let state_hash = state_hash.to_owned();
        let presented = browser_hash.map(str::to_owned);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let flow = query_opt(&tx, &sql::flow(Sqlite, &state_hash), |r| {
                flow_from_row(&state_hash, r)
            })?;
            let Some(flow) = flow else {
                return Ok(FlowTake::Unknown);
            };
            let (take, consume) = FlowTake::decide(flow, presented.as_deref(), now);
            if consume {
                execute(&tx, &sql::consume_flow(Sqlite, &state_hash, now))?;
                tx.commit()?;
            }
            Ok(take)
        })
        .await
    }

    async fn put_session(&self, session: SessionRecord) -> Result<()> {
        let insert = sql::insert_session(Sqlite, &session)?;
        self.run(move |conn| execute(conn, &insert).map(drop)).await
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let (statement, token_hash) = (sql::session(Sqlite, token_hash), token_hash.to_owned());
        self.run(move |conn| query_opt(conn, &statement, |r| session_from_row(&token_hash, r)))
            .await
    }

    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let (statement, token_hash) =
            (sql::take_session(Sqlite, token_hash), token_hash.to_owned());
        self.run(move |conn| query_opt(conn, &statement, |r| session_from_row(&token_hash, r)))
            .await
    }

    async fn prune_ended(&self, now: i64) -> Result<u64> {
        self.run(move |conn| {
            let flows = execute(conn, &sql::prune_ended_flows(Sqlite, now))?;
            let sessions = execute(conn, &sql::prune_sessions(Sqlite, now))?;
            Ok((flows + sessions) as u64)
        })
        .await
    }

    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake> {
        let take = take_lease(&lease, now);
        let holder = lease_holder(lease.key, lease.purpose);
        let owner = lease.owner.to_owned();
        run_on(&self.leases, move |conn| {
            // Who held it before, to tell a takeover from a free lease. (Another process may
            // take or release it in between: then the take below settles it, and at worst a
            // takeover is counted as a plain take.)
            let before: Option<(String, i64)> =
                query_opt(conn, &holder, |r| Ok((r.read(0)?, r.read(1)?)))?;
            let taken = conn
                .prepare_cached(&take.sql)?
                .exists(params_from_iter(&take.values))?;
            if taken {
                let took_over = before.is_some_and(|(previous, _)| previous != owner);
                return Ok(if took_over {
                    LeaseTake::TakenOver
                } else {
                    LeaseTake::Acquired
                });
            }
            let held_until = query_opt(conn, &holder, |r| r.read(1))?;
            // Released in between: free now, but let the caller ask again.
            Ok(LeaseTake::HeldUntil(held_until.unwrap_or(now)))
        })
        .await
    }

    async fn release_lease(
        &self,
        key: &ConnectionKey,
        purpose: LeasePurpose,
        owner: &str,
    ) -> Result<()> {
        let release = sql::release_lease(Sqlite, key, purpose, owner);
        run_on(&self.leases, move |conn| execute(conn, &release).map(drop)).await
    }

    async fn watch(&self) -> Result<Option<ChangeFeed>> {
        if !self.shared {
            return Ok(None);
        }
        Ok(Some(feed::watch(&self.conn).await?))
    }
}
