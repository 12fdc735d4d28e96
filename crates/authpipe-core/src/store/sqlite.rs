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

use super::sql::{self, CONNECTION_COLUMNS};
use super::{
    check_after_deleted, check_sealed_with, connection_generation, retired_master_key, Change,
    ChangeFeed, FlowTake, Lease, LeasePurpose, LeaseTake, ListQuery, SecretKey, Store,
    TenantDeletion, ENDED_RETENTION_MS, MAX_PENDING_FLOWS_PER_USER,
};
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
use std::collections::HashMap;
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
    r#"
CREATE TABLE leases (
    tenant_id  TEXT NOT NULL,
    provider   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider, user_id, purpose)
) STRICT, WITHOUT ROWID;

-- Every connection write, for other processes to follow (version NULL: deleted). Keys and
-- versions only, never a secret; the newest CHANGE_LOG_ROWS are kept.
CREATE TABLE connection_changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    provider  TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    version   INTEGER
) STRICT;
CREATE TRIGGER connections_inserted AFTER INSERT ON connections BEGIN
    INSERT INTO connection_changes (tenant_id, provider, user_id, version)
    VALUES (NEW.tenant_id, NEW.provider, NEW.user_id, NEW.version);
END;
CREATE TRIGGER connections_updated AFTER UPDATE ON connections BEGIN
    INSERT INTO connection_changes (tenant_id, provider, user_id, version)
    VALUES (NEW.tenant_id, NEW.provider, NEW.user_id, NEW.version);
END;
CREATE TRIGGER connections_deleted AFTER DELETE ON connections BEGIN
    INSERT INTO connection_changes (tenant_id, provider, user_id, version)
    VALUES (OLD.tenant_id, OLD.provider, OLD.user_id, NULL);
END;
CREATE TRIGGER connection_changes_pruned AFTER INSERT ON connection_changes BEGIN
    DELETE FROM connection_changes WHERE seq <= NEW.seq - 10000;
END;
"#,
    sql::FLOW_AND_SESSION_INDEXES,
    r#"
-- A deleted tenant key: other processes forget it (kind 'tenant_deleted', no provider or user),
-- and its generation is kept so that the tenant's next key is a later one. No key material.
ALTER TABLE connection_changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'connection';
CREATE TABLE deleted_tenant_keys (
    tenant_id  TEXT PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TRIGGER tenant_keys_deleted AFTER DELETE ON tenant_keys BEGIN
    INSERT OR REPLACE INTO deleted_tenant_keys (tenant_id, generation)
    VALUES (OLD.tenant_id, OLD.generation);
    INSERT INTO connection_changes (tenant_id, provider, user_id, version, kind)
    VALUES (OLD.tenant_id, '', '', NULL, 'tenant_deleted');
END;
"#,
];

/// `connection_changes.kind` of a deleted tenant key.
const TENANT_DELETED: &str = "tenant_deleted";

/// Rows `connection_changes` keeps (the pruning trigger's literal); a process that falls
/// further behind reloads everything.
#[cfg(test)]
const CHANGE_LOG_ROWS: i64 = 10_000;

/// How often other processes' changes are looked for: the bound on how stale this process's
/// cache is after another process's write (one `PRAGMA data_version` when nothing changed).
const CHANGE_POLL: Duration = Duration::from_millis(20);

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::store("SQLite", err)
    }
}

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

/// Where a change-feed reader is: the last change seen, and the last `data_version` read.
struct FeedPosition {
    seq: i64,
    data_version: Option<i64>,
}

/// Reads the changes other connections committed since `position`.
fn poll_changes(conn: &Connection, position: &mut FeedPosition) -> Result<Vec<Change>> {
    let data_version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if position.data_version == Some(data_version) {
        return Ok(Vec::new());
    }
    position.data_version = Some(data_version);
    let mut statement = conn.prepare_cached(
        "SELECT seq, tenant_id, provider, user_id, version, kind FROM connection_changes WHERE seq > ?1 ORDER BY seq",
    )?;
    let rows = statement.query_map([position.seq], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut changes = Vec::new();
    for row in rows {
        let (seq, tenant, provider, user, version, kind) = row?;
        // Sequence numbers have no gaps (AUTOINCREMENT, one writer at a time): a gap means the
        // rows in between were pruned before we read them.
        if changes.is_empty() && seq != position.seq + 1 {
            changes.push(Change::Resync);
        }
        position.seq = seq;
        if kind == TENANT_DELETED {
            if let Ok(tenant) = TenantId::parse(tenant) {
                changes.push(Change::TenantDeleted(tenant));
            }
        } else if let Ok(key) = ConnectionKey::parse(&provider, &tenant, &user) {
            changes.push(Change::Connection { key, version });
        }
    }
    Ok(changes)
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

/// Creates the store file 0600 if it does not exist, and takes group and other permissions
/// off an existing one and its `-wal` / `-shm` files. SQLite creates those two with the
/// database file's permissions, so once it is 0600 they are too.
fn ensure_private_files(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        let Ok(metadata) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

/// The session a statement of [`sql::READ_SESSION`]'s columns returns (reading or consuming it).
fn read_session(
    conn: &Connection,
    statement: &str,
    token_hash: String,
) -> Result<Option<SessionRecord>> {
    let row = conn
        .query_row(&sql::sqlite_placeholders(statement), [&token_hash], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    row.map(|(tenant, user, providers, created_at, expires_at)| {
        Ok(SessionRecord {
            token_hash: token_hash.clone(),
            tenant: TenantId::parse(tenant).map_err(|_| invalid_row("connect session"))?,
            user: UserId::parse(user).map_err(|_| invalid_row("connect session"))?,
            providers: serde_json::from_str(&providers)
                .map_err(|_| invalid_row("connect session"))?,
            created_at,
            expires_at,
        })
    })
    .transpose()
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

fn read_connection(conn: &Connection, key: &ConnectionKey) -> Result<Option<ConnectionRecord>> {
    let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant_id = ?1 AND provider = ?2 AND user_id = ?3");
    let params = vec![
        Value::Text(key.tenant.as_str().to_owned()),
        Value::Text(key.provider.as_str().to_owned()),
        Value::Text(key.user.as_str().to_owned()),
    ];
    Ok(query_connections(conn, &sql, params)?.pop())
}

/// Take a lease ($1..$3 connection, $4 purpose, $5 owner, $6 until) if it is free, ours, or
/// expired at $7. Returns a row only if taken. (SQLite takes the database's write lock for any
/// INSERT, so unlike PostgreSQL's, this one need not avoid writing when the lease is held.)
const TAKE_LEASE: &str =
    "INSERT INTO leases (tenant_id, provider, user_id, purpose, owner, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tenant_id, provider, user_id, purpose) DO UPDATE \
       SET owner = excluded.owner, expires_at = excluded.expires_at \
       WHERE leases.owner = excluded.owner OR leases.expires_at <= $7 \
     RETURNING owner";

/// When the lease ($1..$3, $4 purpose) held by someone else ends.
const LEASE_EXPIRY: &str = "SELECT expires_at FROM leases \
     WHERE tenant_id = $1 AND provider = $2 AND user_id = $3 AND purpose = $4";

/// A lease's row key and owner, in the order the lease statements bind them.
fn lease_columns(key: &ConnectionKey, purpose: LeasePurpose, owner: &str) -> [String; 5] {
    [
        key.tenant.as_str().to_owned(),
        key.provider.as_str().to_owned(),
        key.user.as_str().to_owned(),
        purpose.as_str().to_owned(),
        owner.to_owned(),
    ]
}

/// The generation of the tenant's data key as stored, for [`check_sealed_with`].
fn stored_generation(conn: &Connection, tenant: &TenantId) -> Result<Option<u32>> {
    Ok(conn
        .prepare_cached(&sql::sqlite_placeholders(sql::TENANT_KEY_GENERATION))?
        .query_row([tenant.as_str()], |r| r.get(0))
        .optional()?)
}

/// Refuses a new wrapping by a master key the store marks retired.
fn check_wrapping_key(conn: &Connection, master_key_id: &str) -> Result<()> {
    let retired_at: Option<i64> = conn
        .prepare_cached(&sql::sqlite_placeholders(sql::MASTER_KEY_RETIRED_AT))?
        .query_row([master_key_id], |r| r.get(0))
        .optional()?
        .flatten();
    let Some(retired_at) = retired_at else {
        return Ok(());
    };
    let active = conn
        .prepare_cached(sql::ACTIVE_MASTER_KEYS)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Err(retired_master_key(master_key_id, retired_at, &active))
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

    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            Ok(conn
                .prepare_cached(&sql::sqlite_placeholders(sql::DELETED_GENERATION))?
                .query_row([tenant.as_str()], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let select = "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys WHERE tenant_id = ?1";
            let existing = tx
                .query_row(select, [record.tenant.as_str()], |row| Ok(tenant_key_from_row(row)))
                .optional()?
                .transpose()?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
            check_wrapping_key(&tx, &record.master_key_id)?;
            let deleted: Option<u32> = tx
                .query_row(&sql::sqlite_placeholders(sql::DELETED_GENERATION), [record.tenant.as_str()], |r| r.get(0))
                .optional()?;
            check_after_deleted(&record, deleted)?;
            tx.execute(
                "INSERT INTO tenant_keys (tenant_id, generation, master_key_id, wrapped, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![record.tenant.as_str(), record.generation, record.master_key_id, record.wrapped.0, record.created_at],
            )?;
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
        let expected = expected_master_key_id.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_wrapping_key(&tx, &record.master_key_id)?;
            let changed = tx.execute(
                "UPDATE tenant_keys SET master_key_id = ?2, wrapped = ?3 WHERE tenant_id = ?1 AND master_key_id = ?4 AND generation = ?5",
                params![record.tenant.as_str(), record.master_key_id, record.wrapped.0, expected, record.generation],
            )?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // First the key (its triggers keep its generation and tell other processes).
            let had_key = tx.execute(
                "DELETE FROM tenant_keys WHERE tenant_id = ?1",
                [tenant.as_str()],
            )? > 0;
            let mut counts = [0u64; sql::TENANT_TABLES.len()];
            for (count, table) in counts.iter_mut().zip(sql::TENANT_TABLES) {
                *count = tx.execute(
                    &format!("DELETE FROM {table} WHERE tenant_id = ?1"),
                    [tenant.as_str()],
                )? as u64;
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
            {
                let mut upsert =
                    tx.prepare_cached(&sql::sqlite_placeholders(&sql::UPSERT_CONNECTION))?;
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
                    let (created_at, version) = upsert
                        .query_row(params_from_iter(row_values(&r)?), |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })?;
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
        let generation = connection_generation(&record)?;
        self.run(move |conn| {
            let mut values = row_values(&record)?;
            values.remove(sql::CREATED_AT_INDEX); // never updated
            values.push(Value::Integer(expected_version));
            values.push(Value::Integer(generation.into()));
            let version: Option<i64> = conn
                .prepare_cached(&sql::sqlite_placeholders(sql::UPDATE_CONNECTION))?
                .query_row(params_from_iter(values), |row| row.get(0))
                .optional()?;
            match version {
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
        let key = key.clone();
        self.run(move |conn| read_connection(conn, &key)).await
    }

    async fn connections(&self, keys: &[ConnectionKey]) -> Result<Vec<ConnectionRecord>> {
        let keys = keys.to_vec();
        self.run(move |conn| {
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                out.extend(read_connection(conn, key)?);
            }
            Ok(out)
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
            check_sealed_with(&record.tenant, stored_generation(&tx, &record.tenant)?, [&record.value])?;
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
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(verifier) = &flow.verifier {
                check_sealed_with(&flow.key.tenant, stored_generation(&tx, &flow.key.tenant)?, [verifier])?;
            }
            tx.execute(
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
            tx.execute(
                &sql::sqlite_placeholders(sql::PRUNE_PENDING_FLOWS),
                params![flow.key.tenant.as_str(), flow.key.user.as_str(), MAX_PENDING_FLOWS_PER_USER],
            )?;
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
            let (take, consume) = FlowTake::decide(flow, presented.as_deref(), now);
            if consume {
                tx.execute("UPDATE connect_flows SET consumed_at = ?2 WHERE state_hash = ?1", params![state_hash, now])?;
                tx.commit()?;
            }
            Ok(take)
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
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let token_hash = token_hash.to_owned();
        self.run(move |conn| read_session(conn, sql::READ_SESSION, token_hash))
            .await
    }

    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let token_hash = token_hash.to_owned();
        self.run(move |conn| read_session(conn, sql::TAKE_SESSION, token_hash))
            .await
    }

    async fn prune_ended(&self, now: i64) -> Result<u64> {
        self.run(move |conn| {
            let flows = conn.execute(
                &sql::sqlite_placeholders(sql::PRUNE_ENDED_FLOWS),
                [now - ENDED_RETENTION_MS],
            )?;
            let sessions = conn.execute(&sql::sqlite_placeholders(sql::PRUNE_SESSIONS), [now])?;
            Ok((flows + sessions) as u64)
        })
        .await
    }

    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake> {
        let values = lease_columns(lease.key, lease.purpose, lease.owner);
        let until = lease.until;
        run_on(&self.leases, move |conn| {
            let [tenant, provider, user, purpose, owner] = &values;
            let taken = conn
                .prepare_cached(&sql::sqlite_placeholders(TAKE_LEASE))?
                .exists(params![tenant, provider, user, purpose, owner, until, now])?;
            if taken {
                return Ok(LeaseTake::Acquired);
            }
            let held_until: Option<i64> = conn
                .prepare_cached(&sql::sqlite_placeholders(LEASE_EXPIRY))?
                .query_row(params![tenant, provider, user, purpose], |r| r.get(0))
                .optional()?;
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
        let values = lease_columns(key, purpose, owner);
        run_on(&self.leases, move |conn| {
            conn.prepare_cached(&sql::sqlite_placeholders(sql::RELEASE_LEASE))?
                .execute(params_from_iter(values.iter()))?;
            Ok(())
        })
        .await
    }

    async fn watch(&self) -> Result<Option<ChangeFeed>> {
        if !self.shared {
            return Ok(None);
        }
        let mut position = self
            .run(|conn| {
                let seq = conn.query_row(
                    "SELECT coalesce(max(seq), 0) FROM connection_changes",
                    [],
                    |r| r.get(0),
                )?;
                let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
                Ok(FeedPosition {
                    seq,
                    data_version: Some(data_version),
                })
            })
            .await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHANGE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                // The usual answer, nothing new, is one PRAGMA that reads shared memory: asked
                // here when the connection is free, not handed to the blocking pool.
                let unchanged = conn.try_lock().is_some_and(|c| {
                    c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                        .is_ok_and(|v| position.data_version == Some(v))
                });
                if unchanged {
                    continue;
                }
                let conn = conn.clone();
                let polled = tokio::task::spawn_blocking(move || {
                    let changes = poll_changes(&conn.lock(), &mut position);
                    (changes, position)
                })
                .await;
                let Ok((changes, moved)) = polled else { return };
                position = moved;
                // A failed poll (the file busy past the timeout) is tried again next tick.
                for change in changes.unwrap_or_default() {
                    if tx.send(change).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Some(rx))
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
            store.take_flow("old", None, 10_000).await.unwrap(),
            FlowTake::Expired(_)
        ));
        assert!(matches!(
            store.take_flow("old", None, 10_000).await.unwrap(),
            FlowTake::Used(_)
        ));
        assert_eq!(
            store.take_flow("never-issued", None, 5_000).await.unwrap(),
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
                tokio::spawn(async move { store.take_flow(&hash, None, now).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_store_file_and_its_wal_are_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loose.db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let loosen =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A store in use (another connection keeps its -wal and -shm), loosened as a copy or an
        // umask would leave it, then opened again.
        let first = SqliteStore::open(&path).unwrap();
        let wal = dir.path().join("loose.db-wal");
        let shm = dir.path().join("loose.db-shm");
        for p in [&path, &wal, &shm] {
            assert_eq!(mode(p), 0o600, "{} as created", p.display());
            loosen(p);
            assert_eq!(mode(p), 0o644);
        }
        let _again = SqliteStore::open(&path).unwrap();
        for p in [&path, &wal, &shm] {
            assert_eq!(mode(p), 0o600, "{} after opening again", p.display());
        }
        drop(first);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reader_that_falls_behind_the_change_log_resyncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let writer = SqliteStore::open(&path).unwrap();
        let reader = SqliteStore::open(&path).unwrap();
        writer
            .insert_tenant_key(TenantKeyRecord {
                tenant: TenantId::parse("t").unwrap(),
                generation: 1,
                master_key_id: "k".into(),
                wrapped: Sealed(vec![1; 60]),
                created_at: 1,
            })
            .await
            .unwrap();
        let mut position = reader
            .run(|conn| {
                Ok(FeedPosition {
                    seq: conn.query_row(
                        "SELECT coalesce(max(seq), 0) FROM connection_changes",
                        [],
                        |r| r.get(0),
                    )?,
                    data_version: None,
                })
            })
            .await
            .unwrap();
        let records: Vec<_> = (0..=CHANGE_LOG_ROWS)
            .map(|i| {
                // Sealed with the tenant key's generation (1), as far as the store looks.
                let mut sealed = vec![1, 0, 0, 0, 1];
                sealed.resize(40, 0);
                let mut r = crate::cache::tests::record(&format!("u{i}"), 0, &sealed);
                r.key = ConnectionKey::parse("attio", "t", &format!("u{i}")).unwrap();
                r
            })
            .collect();
        writer.put_connections(records).await.unwrap();
        let changes = reader
            .run(move |conn| poll_changes(conn, &mut position))
            .await
            .unwrap();
        assert_eq!(
            changes[0],
            Change::Resync,
            "the oldest change was pruned unread"
        );
        assert_eq!(
            changes.len(),
            1 + CHANGE_LOG_ROWS as usize,
            "and the log kept its newest rows"
        );
    }
}
