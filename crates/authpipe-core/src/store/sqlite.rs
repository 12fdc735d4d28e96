//! The embedded default store: one SQLite file (or `:memory:`).
//!
//! - WAL journal with `synchronous = FULL`: a committed write (a rotated refresh token above
//!   all) survives power loss, not only a process crash.
//! - `secure_delete = ON` and a WAL truncate after `delete_tenant`: a crypto-shredded tenant
//!   key is overwritten on disk, not left in a free page or the WAL.
//! - The file is created 0600 in a 0700 directory; SQLite gives its -wal/-shm files the same mode.
//! - Calls run on tokio's blocking pool, one connection behind a mutex. The SQL is safe with
//!   several processes on the file (busy timeout); the engine's refreshes are not coordinated
//!   across processes yet.

use super::sql::{self, CONNECTION_COLUMNS};
use super::{FlowTake, ListQuery, SecretKey, Store, TenantDeletion, ENDED_RETENTION_MS};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, ProviderId, TenantId, UserId};
use crate::records::{
    ConnectionRecord, ConnectionStatus, CredentialKind, FlowRecord, LastError, MasterKeyRecord,
    ProviderAccount, Sealed, SecretRecord, SessionRecord, TenantKeyRecord,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `PRAGMA application_id` of an Authpipe store ("APP1"): tells our files from others.
const APPLICATION_ID: i32 = 0x4150_5031;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE master_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    key_check   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
) STRICT;

CREATE TABLE tenant_keys (
    tenant_id     TEXT PRIMARY KEY NOT NULL,
    generation    INTEGER NOT NULL,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE connections (
    tenant_id          TEXT NOT NULL,
    provider           TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    kind               TEXT NOT NULL,
    status             TEXT NOT NULL,
    scopes             TEXT NOT NULL,
    account_id         TEXT,
    account_name       TEXT,
    expires_at         INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_refresh_at    INTEGER,
    next_refresh_at    INTEGER,
    last_check_at      INTEGER,
    last_error_code    TEXT,
    last_error_message TEXT,
    credential         BLOB NOT NULL,
    refresh_token      BLOB,
    extras             BLOB,
    version            INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider, user_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX connections_by_provider ON connections (provider, tenant_id, user_id);

CREATE TABLE secrets (
    tenant_id  TEXT NOT NULL,
    provider   TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider, name)
) STRICT, WITHOUT ROWID;
"#,
    r#"
CREATE TABLE connect_flows (
    state_hash   TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL,
    provider     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    verifier     BLOB,
    redirect_uri TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    browser_hash TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    consumed_at  INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE connect_sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    providers  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"#,
    r#"
ALTER TABLE connections ADD COLUMN token_issued_at INTEGER;
"#,
];

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::store("SQLite", err)
    }
}

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    label: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`, and its directory.
    pub fn open(path: &Path) -> Result<Self> {
        let label = format!("sqlite:{}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)
                .map_err(|e| Error::store(&format!("cannot create {}", dir.display()), e))?;
        }
        create_private_file(path)
            .map_err(|e| Error::store(&format!("cannot create {}", path.display()), e))?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::store(&format!("cannot open {}", path.display()), e))?;
        Self::init(conn, label)
    }

    /// A private in-memory store; gone when closed. For tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, "sqlite::memory:".to_owned())
    }

    fn init(mut conn: Connection, label: String) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            label,
        })
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| Error::internal(format!("store task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Err(Error::new(
            ErrorCode::StoreError,
            format!("the store has schema version {applied}, newer than this @authpipe/node knows ({}); upgrade the package", MIGRATIONS.len()),
        ));
    }
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates the file 0600 if it does not exist, so SQLite never creates it world-readable.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resolves the store path the way `SqliteStore::open` will see it, for sharing one engine
/// per file in a process.
pub fn canonical_path(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    // The file may not exist yet; canonicalize its directory when that exists.
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir.canonicalize().map(|d| d.join(name)).unwrap_or(absolute),
        _ => absolute,
    }
}

fn invalid_row(what: &str) -> Error {
    Error::new(
        ErrorCode::StoreError,
        format!("the store holds an invalid {what}; was the file edited by hand?"),
    )
}

fn connection_from_row(row: &Row<'_>) -> Result<ConnectionRecord> {
    let key = ConnectionKey::new(
        ProviderId::parse(row.get::<_, String>(1)?).map_err(|_| invalid_row("provider id"))?,
        TenantId::parse(row.get::<_, String>(0)?).map_err(|_| invalid_row("tenant id"))?,
        UserId::parse(row.get::<_, String>(2)?).map_err(|_| invalid_row("user id"))?,
    );
    let kind = CredentialKind::parse(&row.get::<_, String>(3)?)
        .ok_or_else(|| invalid_row("credential kind"))?;
    let status =
        ConnectionStatus::parse(&row.get::<_, String>(4)?).ok_or_else(|| invalid_row("status"))?;
    let scopes: Vec<String> =
        serde_json::from_str(&row.get::<_, String>(5)?).map_err(|_| invalid_row("scope list"))?;
    let last_error = LastError::from_columns(row.get(14)?, row.get(15)?);
    Ok(ConnectionRecord {
        key,
        kind,
        status,
        scopes,
        account: ProviderAccount {
            id: row.get(6)?,
            name: row.get(7)?,
        },
        expires_at: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        last_refresh_at: row.get(11)?,
        next_refresh_at: row.get(12)?,
        last_check_at: row.get(13)?,
        last_error,
        credential: Sealed(row.get(16)?),
        refresh_token: row.get::<_, Option<Vec<u8>>>(17)?.map(Sealed),
        extras: row.get::<_, Option<Vec<u8>>>(18)?.map(Sealed),
        version: row.get(19)?,
        token_issued_at: row.get(20)?,
    })
}

fn tenant_key_from_row(row: &Row<'_>) -> Result<TenantKeyRecord> {
    Ok(TenantKeyRecord {
        tenant: TenantId::parse(row.get::<_, String>(0)?).map_err(|_| invalid_row("tenant id"))?,
        generation: row.get(1)?,
        master_key_id: row.get(2)?,
        wrapped: Sealed(row.get(3)?),
        created_at: row.get(4)?,
    })
}

/// A record's column values in `CONNECTION_COLUMNS` order, without `version`, with
/// `token_issued_at` last: the values of `sql::UPSERT_CONNECTION`.
fn row_values(r: &ConnectionRecord) -> Result<Vec<Value>> {
    let text = |s: &str| Value::Text(s.to_owned());
    let opt_text = |s: Option<&str>| s.map_or(Value::Null, text);
    let opt_int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    let opt_blob = |v: Option<&Sealed>| v.map_or(Value::Null, |s| Value::Blob(s.0.clone()));
    Ok(vec![
        text(r.key.tenant.as_str()),
        text(r.key.provider.as_str()),
        text(r.key.user.as_str()),
        text(r.kind.as_str()),
        text(r.status.as_str()),
        Value::Text(serde_json::to_string(&r.scopes).map_err(|e| Error::internal(e.to_string()))?),
        opt_text(r.account.id.as_deref()),
        opt_text(r.account.name.as_deref()),
        opt_int(r.expires_at),
        Value::Integer(r.created_at),
        Value::Integer(r.updated_at),
        opt_int(r.last_refresh_at),
        opt_int(r.next_refresh_at),
        opt_int(r.last_check_at),
        opt_text(r.last_error.as_ref().map(|e| e.code.as_str())),
        opt_text(r.last_error.as_ref().map(|e| e.message.as_str())),
        Value::Blob(r.credential.0.clone()),
        opt_blob(r.refresh_token.as_ref()),
        opt_blob(r.extras.as_ref()),
        opt_int(r.token_issued_at),
    ])
}

fn query_connections(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
) -> Result<Vec<ConnectionRecord>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(connection_from_row(row)?);
    }
    Ok(out)
}

fn provider_column(provider: &Option<ProviderId>) -> String {
    provider
        .as_ref()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>> {
        self.run(|conn| {
            let mut stmt = conn.prepare("SELECT id, key_check, created_at, retired_at FROM master_keys ORDER BY created_at, id")?;
            let rows = stmt.query_map([], |r| {
                Ok(MasterKeyRecord { id: r.get(0)?, key_check: Sealed(r.get(1)?), created_at: r.get(2)?, retired_at: r.get(3)? })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_master_keys(&self, records: Vec<MasterKeyRecord>) -> Result<()> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for r in &records {
                tx.execute(
                    "INSERT INTO master_keys (id, key_check, created_at, retired_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
                    params![r.id, r.key_check.0, r.created_at, r.retired_at],
                )?;
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
            let in_use: i64 = tx.query_row("SELECT count(*) FROM tenant_keys WHERE master_key_id = ?1", [&id], |r| r.get(0))?;
            if in_use > 0 {
                return Err(Error::new(
                    ErrorCode::KeyInUse,
                    format!("master key '{id}' still wraps {in_use} tenant key(s); call rotateMasterKey() first"),
                ));
            }
            tx.execute("UPDATE master_keys SET retired_at = ?2 WHERE id = ?1 AND retired_at IS NULL", params![id, now])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        self.run(|conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(tenant_key_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn tenant_key(&self, tenant: &TenantId) -> Result<Option<TenantKeyRecord>> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys WHERE tenant_id = ?1",
            )?;
            let mut rows = stmt.query([tenant.as_str()])?;
            rows.next()?.map(tenant_key_from_row).transpose()
        })
        .await
    }

    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO tenant_keys (tenant_id, generation, master_key_id, wrapped, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (tenant_id) DO NOTHING",
                params![record.tenant.as_str(), record.generation, record.master_key_id, record.wrapped.0, record.created_at],
            )?;
            let stored = tx.query_row(
                "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys WHERE tenant_id = ?1",
                [record.tenant.as_str()],
                |row| Ok(tenant_key_from_row(row)),
            )??;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn rewrap_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_master_key_id: &str,
    ) -> Result<bool> {
        let expected = expected_master_key_id.to_owned();
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE tenant_keys SET master_key_id = ?2, wrapped = ?3 WHERE tenant_id = ?1 AND master_key_id = ?4 AND generation = ?5",
                params![record.tenant.as_str(), record.master_key_id, record.wrapped.0, expected, record.generation],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let had_key = tx.execute(
                "DELETE FROM tenant_keys WHERE tenant_id = ?1",
                [tenant.as_str()],
            )? > 0;
            let connections = tx.execute(
                "DELETE FROM connections WHERE tenant_id = ?1",
                [tenant.as_str()],
            )? as u64;
            let secrets = tx.execute(
                "DELETE FROM secrets WHERE tenant_id = ?1",
                [tenant.as_str()],
            )? as u64;
            tx.commit()?;
            // secure_delete zeroed the pages in the database; the WAL may still hold copies.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(TenantDeletion {
                connections,
                secrets,
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
            {
                let mut has_key = tx.prepare_cached("SELECT 1 FROM tenant_keys WHERE tenant_id = ?1")?;
                let mut upsert = tx.prepare_cached(&sql::sqlite_placeholders(&sql::UPSERT_CONNECTION))?;
                for mut r in records {
                    if !has_key.exists([r.key.tenant.as_str()])? {
                        return Err(Error::new(
                            ErrorCode::VaultKeyMissing,
                            format!("tenant '{}' has no data key (it was deleted while this write was prepared)", r.key.tenant),
                        ));
                    }
                    let (created_at, version) = upsert.query_row(
                        params_from_iter(row_values(&r)?),
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?;
                    r.created_at = created_at;
                    r.version = version;
                    stored.push(r);
                }
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
        self.run(move |conn| {
            let mut values = row_values(&record)?;
            values.remove(sql::CREATED_AT_INDEX); // never updated
            values.push(Value::Integer(expected_version));
            let version: Option<i64> = conn
                .query_row(
                    &sql::sqlite_placeholders(sql::UPDATE_CONNECTION),
                    params_from_iter(values),
                    |row| row.get(0),
                )
                .optional()?;
            Ok(version.map(|version| ConnectionRecord { version, ..record }))
        })
        .await
    }

    async fn connection(&self, key: &ConnectionKey) -> Result<Option<ConnectionRecord>> {
        let key = key.clone();
        self.run(move |conn| {
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant_id = ?1 AND provider = ?2 AND user_id = ?3");
            let params = vec![
                Value::Text(key.tenant.as_str().to_owned()),
                Value::Text(key.provider.as_str().to_owned()),
                Value::Text(key.user.as_str().to_owned()),
            ];
            Ok(query_connections(conn, &sql, params)?.pop())
        })
        .await
    }

    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        self.run(|conn| {
            query_connections(
                conn,
                &format!("SELECT {CONNECTION_COLUMNS} FROM connections"),
                Vec::new(),
            )
        })
        .await
    }

    async fn list_connections(&self, query: &ListQuery) -> Result<Vec<ConnectionRecord>> {
        let query = query.clone();
        self.run(move |conn| {
            let mut conditions = Vec::new();
            let mut params = Vec::new();
            let mut bind = |condition: &str, value: &str, params: &mut Vec<Value>| {
                params.push(Value::Text(value.to_owned()));
                conditions.push(condition.replace('?', &format!("?{}", params.len())));
            };
            if let Some(t) = &query.tenant {
                bind("tenant_id = ?", t.as_str(), &mut params);
            }
            if let Some(p) = &query.provider {
                bind("provider = ?", p.as_str(), &mut params);
            }
            if let Some(s) = &query.status {
                bind("status = ?", s.as_str(), &mut params);
            }
            if let Some(after) = &query.after {
                params.push(Value::Text(after.tenant.as_str().to_owned()));
                params.push(Value::Text(after.provider.as_str().to_owned()));
                params.push(Value::Text(after.user.as_str().to_owned()));
                let n = params.len();
                conditions.push(format!("(tenant_id, provider, user_id) > (?{}, ?{}, ?{})", n - 2, n - 1, n));
            }
            let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
            params.push(Value::Integer(query.limit.into()));
            let sql = format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections {filter} ORDER BY tenant_id, provider, user_id LIMIT ?{}",
                params.len()
            );
            query_connections(conn, &sql, params)
        })
        .await
    }

    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        let key = key.clone();
        self.run(move |conn| {
            let n = conn.execute(
                "DELETE FROM connections WHERE tenant_id = ?1 AND provider = ?2 AND user_id = ?3",
                params![
                    key.tenant.as_str(),
                    key.provider.as_str(),
                    key.user.as_str()
                ],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_secret(&self, record: SecretRecord) -> Result<()> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let has_key = tx.prepare_cached("SELECT 1 FROM tenant_keys WHERE tenant_id = ?1")?.exists([record.tenant.as_str()])?;
            if !has_key {
                return Err(Error::new(
                    ErrorCode::VaultKeyMissing,
                    format!("tenant '{}' has no data key (it was deleted while this write was prepared)", record.tenant),
                ));
            }
            tx.execute(
                "INSERT INTO secrets (tenant_id, provider, name, value, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (tenant_id, provider, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![
                    record.tenant.as_str(),
                    provider_column(&record.provider),
                    record.name.as_str(),
                    record.value.0,
                    record.created_at,
                    record.updated_at
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>> {
        let key = key.clone();
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT value, created_at, updated_at FROM secrets WHERE tenant_id = ?1 AND provider = ?2 AND name = ?3",
                    params![key.tenant.as_str(), provider_column(&key.provider), key.name.as_str()],
                    |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
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
        let key = key.clone();
        self.run(move |conn| {
            let n = conn.execute(
                "DELETE FROM secrets WHERE tenant_id = ?1 AND provider = ?2 AND name = ?3",
                params![
                    key.tenant.as_str(),
                    provider_column(&key.provider),
                    key.name.as_str()
                ],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_flow(&self, flow: FlowRecord) -> Result<()> {
        self.run(move |conn| {
            let scopes = serde_json::to_string(&flow.scopes).map_err(|e| Error::internal(e.to_string()))?;
            conn.execute(
                "INSERT INTO connect_flows (state_hash, tenant_id, provider, user_id, verifier, redirect_uri, scopes, browser_hash, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    flow.state_hash,
                    flow.key.tenant.as_str(),
                    flow.key.provider.as_str(),
                    flow.key.user.as_str(),
                    flow.verifier.as_ref().map(|v| &v.0),
                    flow.redirect_uri,
                    scopes,
                    flow.browser_hash,
                    flow.created_at,
                    flow.expires_at
                ],
            )?;
            conn.execute("DELETE FROM connect_flows WHERE expires_at < ?1", [flow.created_at - ENDED_RETENTION_MS])?;
            Ok(())
        })
        .await
    }

    async fn take_flow(&self, state_hash: &str, now: i64) -> Result<FlowTake> {
        let state_hash = state_hash.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = tx
                .query_row(
                    "SELECT tenant_id, provider, user_id, verifier, redirect_uri, scopes, browser_hash, created_at, expires_at, consumed_at \
                     FROM connect_flows WHERE state_hash = ?1",
                    [&state_hash],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<Vec<u8>>>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, i64>(7)?,
                            r.get::<_, i64>(8)?,
                            r.get::<_, Option<i64>>(9)?,
                        ))
                    },
                )
                .optional()?;
            let Some((tenant, provider, user, verifier, redirect_uri, scopes, browser_hash, created_at, expires_at, consumed_at)) = row else {
                return Ok(FlowTake::Unknown);
            };
            let flow = FlowRecord {
                state_hash: state_hash.clone(),
                key: ConnectionKey::parse(&provider, &tenant, &user).map_err(|_| invalid_row("connect flow"))?,
                verifier: verifier.map(Sealed),
                redirect_uri,
                scopes: serde_json::from_str(&scopes).map_err(|_| invalid_row("connect flow"))?,
                browser_hash,
                created_at,
                expires_at,
                consumed_at,
            };
            if consumed_at.is_some() {
                return Ok(FlowTake::Used(flow));
            }
            tx.execute("UPDATE connect_flows SET consumed_at = ?2 WHERE state_hash = ?1", params![state_hash, now])?;
            tx.commit()?;
            let consumed = FlowRecord { consumed_at: Some(now), ..flow };
            Ok(if expires_at <= now { FlowTake::Expired(consumed) } else { FlowTake::Fresh(consumed) })
        })
        .await
    }

    async fn put_session(&self, session: SessionRecord) -> Result<()> {
        self.run(move |conn| {
            let providers = serde_json::to_string(&session.providers).map_err(|e| Error::internal(e.to_string()))?;
            conn.execute(
                "INSERT INTO connect_sessions (token_hash, tenant_id, user_id, providers, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![session.token_hash, session.tenant.as_str(), session.user.as_str(), providers, session.created_at, session.expires_at],
            )?;
            conn.execute("DELETE FROM connect_sessions WHERE expires_at < ?1", [session.created_at - ENDED_RETENTION_MS])?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let token_hash = token_hash.to_owned();
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT tenant_id, user_id, providers, created_at, expires_at FROM connect_sessions WHERE token_hash = ?1",
                    [&token_hash],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?)),
                )
                .optional()?;
            row.map(|(tenant, user, providers, created_at, expires_at)| {
                Ok(SessionRecord {
                    token_hash: token_hash.clone(),
                    tenant: TenantId::parse(tenant).map_err(|_| invalid_row("connect session"))?,
                    user: UserId::parse(user).map_err(|_| invalid_row("connect session"))?,
                    providers: serde_json::from_str(&providers).map_err(|_| invalid_row("connect session"))?,
                    created_at,
                    expires_at,
                })
            })
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(hash: &str, expires_at: i64) -> FlowRecord {
        FlowRecord {
            state_hash: hash.to_owned(),
            key: ConnectionKey::parse("attio", "t", "u").unwrap(),
            verifier: None,
            redirect_uri: "https://app.example/cb".into(),
            scopes: vec![],
            browser_hash: None,
            created_at: 1_000,
            expires_at,
            consumed_at: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flow_is_taken_once_and_expires() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        store.put_flow(flow("fresh", 10_000)).await.unwrap();
        store.put_flow(flow("old", 10_000)).await.unwrap();

        // Concurrent callbacks with one state: exactly one wins.
        let takes = futures_take(&store, "fresh", 5_000, 8).await;
        assert_eq!(
            takes
                .iter()
                .filter(|t| matches!(t, FlowTake::Fresh(_)))
                .count(),
            1
        );
        assert_eq!(
            takes
                .iter()
                .filter(|t| matches!(t, FlowTake::Used(_)))
                .count(),
            7
        );

        assert!(matches!(
            store.take_flow("old", 10_000).await.unwrap(),
            FlowTake::Expired(_)
        ));
        assert!(matches!(
            store.take_flow("old", 10_000).await.unwrap(),
            FlowTake::Used(_)
        ));
        assert_eq!(
            store.take_flow("never-issued", 5_000).await.unwrap(),
            FlowTake::Unknown
        );
    }

    async fn futures_take(
        store: &Arc<SqliteStore>,
        hash: &str,
        now: i64,
        n: usize,
    ) -> Vec<FlowTake> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let store = store.clone();
                let hash = hash.to_owned();
                tokio::spawn(async move { store.take_flow(&hash, now).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }
}
