//! PostgreSQL store: many app instances sharing connections. Same records and semantics as the
//! SQLite store (the conformance tests run against both); pooled async connections
//! (deadpool + tokio-postgres); migrations applied under an advisory lock, so instances starting
//! at once apply each migration exactly once.
//!
//! The change feed is LISTEN/NOTIFY: triggers notify every connection write and every deleted
//! tenant key on a channel named after the schema (payload: the connection's key and version,
//! or the tenant; no secret). A listener
//! that loses its database connection reconnects with backoff and reports [`Change::Resync`],
//! since notifications sent meanwhile are lost.

use super::postgres_tls::{PostgresTls, TlsConnector};
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
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};

/// The advisory lock key that serialises migrations ("authpipe" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x6175_7468_7069_7065;

/// Serialises, per tenant, creating and deleting its data key (the class of a two-key advisory
/// lock; the other key is the hash of the tenant id): a key made from a stale
/// [`Store::deleted_generation`] is then always caught by `insert_tenant_key`'s check.
const TENANT_KEY_LOCK: &str = "SELECT pg_advisory_xact_lock(1635087464, hashtext($1))";

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE master_keys (
    id          text PRIMARY KEY,
    key_check   bytea NOT NULL,
    created_at  bigint NOT NULL,
    retired_at  bigint
);
CREATE TABLE tenant_keys (
    tenant_id     text PRIMARY KEY,
    generation    integer NOT NULL,
    master_key_id text NOT NULL,
    wrapped       bytea NOT NULL,
    created_at    bigint NOT NULL
);
CREATE TABLE connections (
    tenant_id          text COLLATE "C" NOT NULL,
    provider           text COLLATE "C" NOT NULL,
    user_id            text COLLATE "C" NOT NULL,
    kind               text NOT NULL,
    status             text NOT NULL,
    scopes             text NOT NULL,
    account_id         text,
    account_name       text,
    expires_at         bigint,
    created_at         bigint NOT NULL,
    updated_at         bigint NOT NULL,
    last_refresh_at    bigint,
    next_refresh_at    bigint,
    last_check_at      bigint,
    last_error_code    text,
    last_error_message text,
    credential         bytea NOT NULL,
    refresh_token      bytea,
    extras             bytea,
    version            bigint NOT NULL,
    token_issued_at    bigint,
    PRIMARY KEY (tenant_id, provider, user_id)
);
CREATE INDEX connections_by_provider ON connections (provider, tenant_id, user_id);
CREATE TABLE secrets (
    tenant_id  text NOT NULL,
    provider   text NOT NULL,
    name       text NOT NULL,
    value      bytea NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, provider, name)
);
CREATE TABLE connect_flows (
    state_hash   text PRIMARY KEY,
    tenant_id    text NOT NULL,
    provider     text NOT NULL,
    user_id      text NOT NULL,
    verifier     bytea,
    redirect_uri text NOT NULL,
    scopes       text NOT NULL,
    browser_hash text,
    created_at   bigint NOT NULL,
    expires_at   bigint NOT NULL,
    consumed_at  bigint
);
CREATE TABLE connect_sessions (
    token_hash text PRIMARY KEY,
    tenant_id  text NOT NULL,
    user_id    text NOT NULL,
    providers  text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
"#,
    r#"
CREATE TABLE leases (
    tenant_id  text COLLATE "C" NOT NULL,
    provider   text COLLATE "C" NOT NULL,
    user_id    text COLLATE "C" NOT NULL,
    purpose    text NOT NULL,
    owner      text NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, provider, user_id, purpose)
);
-- Tells listeners which connection changed (version NULL: deleted). Keys only, never a secret.
CREATE FUNCTION connections_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA, json_build_array(OLD.tenant_id, OLD.provider, OLD.user_id, NULL)::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify(TG_TABLE_SCHEMA, json_build_array(NEW.tenant_id, NEW.provider, NEW.user_id, NEW.version)::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER connections_notify AFTER INSERT OR UPDATE OR DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION connections_notify();
"#,
    sql::FLOW_AND_SESSION_INDEXES,
    r#"
-- A deleted tenant key: its generation is kept, so that the tenant's next key is a later one (no
-- key material), and listeners are told to forget it.
CREATE TABLE deleted_tenant_keys (
    tenant_id  text PRIMARY KEY,
    generation integer NOT NULL
);
CREATE FUNCTION tenant_keys_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deleted_tenant_keys (tenant_id, generation) VALUES (OLD.tenant_id, OLD.generation)
        ON CONFLICT (tenant_id) DO UPDATE SET generation = excluded.generation;
    PERFORM pg_notify(TG_TABLE_SCHEMA, json_build_object('tenant_deleted', OLD.tenant_id)::text);
    RETURN OLD;
END
$$;
CREATE TRIGGER tenant_keys_deleted AFTER DELETE ON tenant_keys
    FOR EACH ROW EXECUTE FUNCTION tenant_keys_deleted();
"#,
];

/// Takes a lease ($1..$3 connection, $4 purpose, $5 owner, $6 until) if it is free, ours, or
/// expired at $7: `(true, until)`. Held by another: `(false, its expiry)`. In one round trip, and
/// without a write when the lease is held: SQLite's `INSERT .. ON CONFLICT DO UPDATE .. WHERE`
/// locks the existing row before it reads the condition, which makes every refused attempt a
/// commit waiting on a WAL flush, and with several instances racing for each refresh those
/// flushes took most of the database's time.
const TAKE_LEASE: &str = "WITH lease AS ( \
       SELECT owner, expires_at FROM leases \
       WHERE tenant_id = $1 AND provider = $2 AND user_id = $3 AND purpose = $4), \
     renewed AS ( \
       UPDATE leases SET owner = $5, expires_at = $6 \
       WHERE tenant_id = $1 AND provider = $2 AND user_id = $3 AND purpose = $4 \
         AND (owner = $5 OR expires_at <= $7) \
       RETURNING expires_at), \
     created AS ( \
       INSERT INTO leases (tenant_id, provider, user_id, purpose, owner, expires_at) \
       SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM lease) \
       ON CONFLICT DO NOTHING \
       RETURNING expires_at) \
     SELECT true, expires_at FROM renewed \
     UNION ALL SELECT true, expires_at FROM created \
     UNION ALL SELECT false, expires_at FROM lease \
       WHERE NOT EXISTS (SELECT 1 FROM renewed)";

/// [`sql::RELEASE_LEASE`] in one round trip that does not wait for the WAL to reach the disk:
/// `set_config(.., true)` turns `synchronous_commit` off for this statement's own transaction
/// (evaluated only on the row it deletes). A release lost in a database crash only leaves the
/// lease to run out on its own (a later refresh, never a second one), and each flush saved is
/// one more refresh per flush the disk can do.
static RELEASE_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} AND set_config('synchronous_commit', 'off', true) IS NOT NULL",
        sql::RELEASE_LEASE
    )
});

/// Reconnecting a lost listener: the first retry after this, doubling up to `LISTEN_RETRY_MAX`.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(50);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(2);

fn pg(context: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    // The database's own message (a constraint, a missing table) names no secret: values are
    // sent as parameters, never printed.
    move |e| {
        Error::store(
            &format!("PostgreSQL: {context}"),
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        )
    }
}

fn pool_error(tls: &PostgresTls, e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => tls.connect_error(&e),
        e => Error::store("PostgreSQL: no connection from the pool", e),
    }
}

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    label: String,
    /// For the change feed's own (unpooled) connection.
    config: tokio_postgres::Config,
    tls: PostgresTls,
    /// The pool's connector, shared by the change feed.
    connector: TlsConnector,
    /// The schema, which is also the notification channel.
    schema: String,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`, libpq's `sslmode` and `sslrootcert` included) and
    /// applies migrations in `schema` (created if missing).
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        use secrecy::ExposeSecret;
        let (url, tls) = PostgresTls::split_url(url)?;
        Self::connect_with_tls(url.expose_secret(), schema, &tls).await
    }

    /// [`PostgresStore::connect`] with the TLS parameters already taken off `url`
    /// ([`PostgresTls::split_url`]).
    pub async fn connect_with_tls(url: &str, schema: &str, tls: &PostgresTls) -> Result<Self> {
        check_schema(schema)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| Error::invalid_argument("store is not a valid postgres:// URL"))?;
        tls.apply(&mut config);
        let connector = tls.connector()?;
        config.options(format!("-c search_path={schema}"));
        let label = format!(
            "postgres://{}/{}?schema={schema}",
            config
                .get_hosts()
                .first()
                .map(|h| format!("{h:?}"))
                .unwrap_or_default(),
            config.get_dbname().unwrap_or("")
        );
        config.keepalives_idle(Duration::from_secs(10));
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| Error::store("PostgreSQL pool", e))?;
        let store = Self {
            pool,
            label,
            config,
            tls: tls.clone(),
            connector,
            schema: schema.to_owned(),
        };
        store.migrate(schema).await?;
        Ok(store)
    }

    async fn migrate(&self, schema: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg("lock"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)"
        ))
        .await
        .map_err(pg("create the migration table"))?;
        let applied: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM {schema}.schema_migrations"),
                &[],
            )
            .await
            .map_err(pg("read migrations"))?
            .get(0);
        let applied = applied as usize;
        if applied > MIGRATIONS.len() {
            return Err(Error::new(
                ErrorCode::StoreError,
                format!(
                    "the store has schema version {applied}, newer than this @authpipe/node knows"
                ),
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.batch_execute(sql).await.map_err(pg("migrate"))?;
            let version = (i + 1) as i32;
            tx.execute(
                &format!(
                    "INSERT INTO {schema}.schema_migrations (version, applied_at) VALUES ($1, 0)"
                ),
                &[&version],
            )
            .await
            .map_err(pg("record migration"))?;
        }
        tx.commit().await.map_err(pg("commit migrations"))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| pool_error(&self.tls, e))
    }
}

/// `sql` from the pooled connection's statement cache: parsed and planned by the server once per
/// connection instead of on every call. (For the statements a refresh runs, that parsing cost
/// PostgreSQL more time than running them.)
async fn prepared(
    client: &deadpool_postgres::Client,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    client.prepare_cached(sql).await.map_err(pg("prepare"))
}

/// Schema names are used unquoted in SQL (and as the notification channel): a plain identifier.
pub fn check_schema(schema: &str) -> Result<()> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "the PostgreSQL schema name must be 1-63 lowercase letters, digits or '_', not starting with a digit",
        ))
    }
}

/// A connection subscribed to the change channel.
struct Listener {
    /// Kept alive: dropping the client ends the connection.
    _client: tokio_postgres::Client,
    notes: tokio::sync::mpsc::UnboundedReceiver<String>,
    driver: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn connect(
        config: &tokio_postgres::Config,
        connector: &TlsConnector,
        channel: &str,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(connector.clone()).await?;
        let (notes_tx, notes) = tokio::sync::mpsc::unbounded_channel();
        // The connection only makes progress while polled, LISTEN included.
        let driver = tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(note) = message {
                    if notes_tx.send(note.payload().to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
            driver.abort();
            return Err(e);
        }
        Ok(Self {
            _client: client,
            notes,
            driver,
        })
    }

    /// Forwards changes until the connection is lost or nobody is listening any more.
    async fn forward(mut self, tx: &UnboundedSender<Change>) {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                note = self.notes.recv() => match note {
                    Some(payload) => {
                        if let Some(change) = parse_notification(&payload) {
                            let _ = tx.send(change);
                        }
                    }
                    None => break,
                }
            }
        }
        self.driver.abort();
    }
}

/// What the triggers send: `[tenant, provider, user, version]` for a connection,
/// `{"tenant_deleted": tenant}` for a deleted tenant key.
fn parse_notification(payload: &str) -> Option<Change> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Note {
        Connection(String, String, String, Option<i64>),
        TenantDeleted { tenant_deleted: String },
    }
    Some(match serde_json::from_str(payload).ok()? {
        Note::Connection(tenant, provider, user, version) => Change::Connection {
            key: ConnectionKey::parse(&provider, &tenant, &user).ok()?,
            version,
        },
        Note::TenantDeleted { tenant_deleted } => {
            Change::TenantDeleted(TenantId::parse(tenant_deleted).ok()?)
        }
    })
}

/// The generation of the tenant's data key as stored, for [`check_sealed_with`], locked until
/// the transaction ends: the key cannot be deleted under the write it checks.
async fn stored_generation(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &TenantId,
) -> Result<Option<u32>> {
    let row = tx
        .query_opt(
            &format!("{} FOR SHARE", sql::TENANT_KEY_GENERATION),
            &[&tenant.as_str()],
        )
        .await
        .map_err(pg("check tenant key"))?;
    Ok(row.map(|r| r.get::<_, i32>(0) as u32))
}

/// Refuses a new wrapping by a master key the store marks retired. Locks the key's row until
/// the transaction ends, so that it cannot be retired meanwhile (`retire_master_key` locks it
/// before it counts the tenant keys it wraps).
async fn check_wrapping_key(
    tx: &tokio_postgres::Transaction<'_>,
    master_key_id: &str,
) -> Result<()> {
    let retired_at: Option<i64> = tx
        .query_opt(
            &format!("{} FOR SHARE", sql::MASTER_KEY_RETIRED_AT),
            &[&master_key_id],
        )
        .await
        .map_err(pg("check master key"))?
        .and_then(|r| r.get(0));
    let Some(retired_at) = retired_at else {
        return Ok(());
    };
    let active: Vec<String> = tx
        .query(sql::ACTIVE_MASTER_KEYS, &[])
        .await
        .map_err(pg("read master keys"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Err(retired_master_key(master_key_id, retired_at, &active))
}

fn invalid_row(what: &str) -> Error {
    Error::new(
        ErrorCode::StoreError,
        format!("the store holds an invalid {what}"),
    )
}

/// A row with [`sql::READ_SESSION`]'s columns.
fn session_from_row(token_hash: &str, r: &Row) -> Result<SessionRecord> {
    Ok(SessionRecord {
        token_hash: token_hash.to_owned(),
        tenant: TenantId::parse(r.get::<_, String>(0))
            .map_err(|_| invalid_row("connect session"))?,
        user: UserId::parse(r.get::<_, String>(1)).map_err(|_| invalid_row("connect session"))?,
        providers: serde_json::from_str(&r.get::<_, String>(2))
            .map_err(|_| invalid_row("connect session"))?,
        created_at: r.get(3),
        expires_at: r.get(4),
    })
}

fn connection_from_row(row: &Row) -> Result<ConnectionRecord> {
    let text = |i: usize| -> String { row.get(i) };
    let key = ConnectionKey::new(
        ProviderId::parse(text(1)).map_err(|_| invalid_row("provider id"))?,
        TenantId::parse(text(0)).map_err(|_| invalid_row("tenant id"))?,
        UserId::parse(text(2)).map_err(|_| invalid_row("user id"))?,
    );
    let last_error = LastError::from_columns(row.get(14), row.get(15));
    Ok(ConnectionRecord {
        key,
        kind: CredentialKind::parse(&text(3)).ok_or_else(|| invalid_row("credential kind"))?,
        status: ConnectionStatus::parse(&text(4)).ok_or_else(|| invalid_row("status"))?,
        scopes: serde_json::from_str(&text(5)).map_err(|_| invalid_row("scope list"))?,
        account: ProviderAccount {
            id: row.get(6),
            name: row.get(7),
        },
        expires_at: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
        last_refresh_at: row.get(11),
        next_refresh_at: row.get(12),
        last_check_at: row.get(13),
        last_error,
        credential: Sealed(row.get(16)),
        refresh_token: row.get::<_, Option<Vec<u8>>>(17).map(Sealed),
        extras: row.get::<_, Option<Vec<u8>>>(18).map(Sealed),
        version: row.get(19),
        token_issued_at: row.get(20),
    })
}

fn tenant_key_from_row(row: &Row) -> Result<TenantKeyRecord> {
    Ok(TenantKeyRecord {
        tenant: TenantId::parse(row.get::<_, String>(0)).map_err(|_| invalid_row("tenant id"))?,
        generation: row.get::<_, i32>(1) as u32,
        master_key_id: row.get(2),
        wrapped: Sealed(row.get(3)),
        created_at: row.get(4),
    })
}

/// A record's values in `CONNECTION_COLUMNS` order without `version`: $1..$20, issued-at last.
struct RowValues {
    texts: [String; 6],
    account: [Option<String>; 2],
    times: [Option<i64>; 5],
    created_at: i64,
    updated_at: i64,
    error: [Option<String>; 2],
    blobs: (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
}

impl RowValues {
    fn new(r: &ConnectionRecord) -> Result<Self> {
        Ok(Self {
            texts: [
                r.key.tenant.to_string(),
                r.key.provider.to_string(),
                r.key.user.to_string(),
                r.kind.as_str().to_owned(),
                r.status.as_str().to_owned(),
                serde_json::to_string(&r.scopes).map_err(|e| Error::internal(e.to_string()))?,
            ],
            account: [r.account.id.clone(), r.account.name.clone()],
            times: [
                r.expires_at,
                r.last_refresh_at,
                r.next_refresh_at,
                r.last_check_at,
                r.token_issued_at,
            ],
            created_at: r.created_at,
            updated_at: r.updated_at,
            error: [
                r.last_error.as_ref().map(|e| e.code.clone()),
                r.last_error.as_ref().map(|e| e.message.clone()),
            ],
            blobs: (
                r.credential.0.clone(),
                r.refresh_token.as_ref().map(|s| s.0.clone()),
                r.extras.as_ref().map(|s| s.0.clone()),
            ),
        })
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.texts[0],
            &self.texts[1],
            &self.texts[2],
            &self.texts[3],
            &self.texts[4],
            &self.texts[5],
            &self.account[0],
            &self.account[1],
            &self.times[0],
            &self.created_at,
            &self.updated_at,
            &self.times[1],
            &self.times[2],
            &self.times[3],
            &self.error[0],
            &self.error[1],
            &self.blobs.0,
            &self.blobs.1,
            &self.blobs.2,
            &self.times[4],
        ]
    }
}

fn provider_column(provider: &Option<ProviderId>) -> String {
    provider.as_ref().map(|p| p.to_string()).unwrap_or_default()
}

#[async_trait]
impl Store for PostgresStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>> {
        let rows = self
            .client()
            .await?
            .query("SELECT id, key_check, created_at, retired_at FROM master_keys ORDER BY created_at, id", &[])
            .await
            .map_err(pg("read master keys"))?;
        Ok(rows
            .iter()
            .map(|r| MasterKeyRecord {
                id: r.get(0),
                key_check: Sealed(r.get(1)),
                created_at: r.get(2),
                retired_at: r.get(3),
            })
            .collect())
    }

    async fn add_master_keys(&self, records: Vec<MasterKeyRecord>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        for r in &records {
            tx.execute(
                "INSERT INTO master_keys (id, key_check, created_at, retired_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&r.id, &r.key_check.0, &r.created_at, &r.retired_at],
            )
            .await
            .map_err(pg("add master keys"))?;
        }
        tx.commit().await.map_err(pg("commit"))
    }

    async fn retire_master_key(&self, id: &str, now: i64) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // The key's row first: a tenant key being wrapped with it now (which holds it FOR SHARE)
        // is committed before we count, and none is wrapped with it after we decide.
        tx.execute("SELECT 1 FROM master_keys WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(pg("lock master key"))?;
        // Block concurrent rewraps of this key's tenants until we decide.
        let in_use: i64 = tx
            .query_one("SELECT count(*) FROM (SELECT 1 FROM tenant_keys WHERE master_key_id = $1 FOR UPDATE) t", &[&id])
            .await
            .map_err(pg("count tenant keys"))?
            .get(0);
        if in_use > 0 {
            return Err(Error::new(
                ErrorCode::KeyInUse,
                format!("master key '{id}' still wraps {in_use} tenant key(s); call rotateMasterKey() first"),
            ));
        }
        tx.execute(
            "UPDATE master_keys SET retired_at = $2 WHERE id = $1 AND retired_at IS NULL",
            &[&id, &now],
        )
        .await
        .map_err(pg("retire master key"))?;
        tx.commit().await.map_err(pg("commit"))
    }

    async fn tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys",
                &[],
            )
            .await
            .map_err(pg("read tenant keys"))?;
        rows.iter().map(tenant_key_from_row).collect()
    }

    async fn tenant_key(&self, tenant: &TenantId) -> Result<Option<TenantKeyRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys WHERE tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(pg("read tenant key"))?;
        row.as_ref().map(tenant_key_from_row).transpose()
    }

    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>> {
        let row = self
            .client()
            .await?
            .query_opt(sql::DELETED_GENERATION, &[&tenant.as_str()])
            .await
            .map_err(pg("read deleted tenant key"))?;
        Ok(row.map(|r| r.get::<_, i32>(0) as u32))
    }

    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        let select = "SELECT tenant_id, generation, master_key_id, wrapped, created_at FROM tenant_keys WHERE tenant_id = $1";
        let t = record.tenant.as_str();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // Each statement after the lock sees every creation and deletion committed before it.
        tx.execute(TENANT_KEY_LOCK, &[&t])
            .await
            .map_err(pg("lock tenant key"))?;
        if let Some(row) = tx
            .query_opt(select, &[&t])
            .await
            .map_err(pg("read tenant key"))?
        {
            return tenant_key_from_row(&row);
        }
        check_wrapping_key(&tx, &record.master_key_id).await?;
        let deleted = tx
            .query_opt(sql::DELETED_GENERATION, &[&t])
            .await
            .map_err(pg("read deleted tenant key"))?
            .map(|r| r.get::<_, i32>(0) as u32);
        check_after_deleted(&record, deleted)?;
        tx.execute(
            "INSERT INTO tenant_keys (tenant_id, generation, master_key_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&t, &(record.generation as i32), &record.master_key_id, &record.wrapped.0, &record.created_at],
        )
        .await
        .map_err(pg("insert tenant key"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(record)
    }

    async fn rewrap_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_master_key_id: &str,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        check_wrapping_key(&tx, &record.master_key_id).await?;
        let changed = tx
            .execute(
                "UPDATE tenant_keys SET master_key_id = $2, wrapped = $3 WHERE tenant_id = $1 AND master_key_id = $4 AND generation = $5",
                &[&record.tenant.as_str(), &record.master_key_id, &record.wrapped.0, &expected_master_key_id, &(record.generation as i32)],
            )
            .await
            .map_err(pg("rewrap tenant key"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(changed == 1)
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let t = tenant.as_str();
        tx.execute(TENANT_KEY_LOCK, &[&t])
            .await
            .map_err(pg("lock tenant key"))?;
        // First the key (its trigger keeps its generation and tells the listeners).
        let had_key = tx
            .execute("DELETE FROM tenant_keys WHERE tenant_id = $1", &[&t])
            .await
            .map_err(pg("delete tenant"))?
            > 0;
        let mut counts = [0u64; sql::TENANT_TABLES.len()];
        for (count, table) in counts.iter_mut().zip(sql::TENANT_TABLES) {
            *count = tx
                .execute(&format!("DELETE FROM {table} WHERE tenant_id = $1"), &[&t])
                .await
                .map_err(pg("delete tenant"))?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        let [connections, secrets, sessions, flows, _leases] = counts;
        Ok(TenantDeletion {
            connections,
            secrets,
            sessions,
            flows,
            had_key,
        })
    }

    async fn put_connections(
        &self,
        records: Vec<ConnectionRecord>,
    ) -> Result<Vec<ConnectionRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let upsert = sql::UPSERT_CONNECTION.as_str();
        let mut stored = Vec::with_capacity(records.len());
        // Once per tenant (its key row stays locked FOR SHARE until the commit): a batch often
        // holds many users of one tenant.
        let mut generations: HashMap<TenantId, Option<u32>> = HashMap::new();
        for mut r in records {
            let generation = match generations.get(&r.key.tenant) {
                Some(known) => *known,
                None => {
                    let stored = stored_generation(&tx, &r.key.tenant).await?;
                    generations.insert(r.key.tenant.clone(), stored);
                    stored
                }
            };
            check_sealed_with(&r.key.tenant, generation, r.sealed_fields())?;
            let values = RowValues::new(&r)?;
            let row = tx
                .query_one(upsert, &values.params())
                .await
                .map_err(pg("store connection"))?;
            r.created_at = row.get(0);
            r.version = row.get(1);
            stored.push(r);
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(stored)
    }

    async fn update_connection(
        &self,
        record: ConnectionRecord,
        expected_version: i64,
    ) -> Result<Option<ConnectionRecord>> {
        let generation = connection_generation(&record)? as i32;
        let values = RowValues::new(&record)?;
        let mut params = values.params();
        params.remove(sql::CREATED_AT_INDEX); // never updated
        params.push(&expected_version);
        params.push(&generation);
        let client = self.client().await?;
        let row = client
            .query_opt(&prepared(&client, sql::UPDATE_CONNECTION).await?, &params)
            .await
            .map_err(pg("update connection"))?;
        if let Some(row) = row {
            return Ok(Some(ConnectionRecord {
                version: row.get(0),
                ..record
            }));
        }
        // Lost to another writer, or refused by the key check: which one, reported.
        let tenant = &record.key.tenant;
        let stored = client
            .query_opt(sql::TENANT_KEY_GENERATION, &[&tenant.as_str()])
            .await
            .map_err(pg("check tenant key"))?
            .map(|r| r.get::<_, i32>(0) as u32);
        check_sealed_with(tenant, stored, record.sealed_fields())?;
        Ok(None)
    }

    async fn connections(&self, keys: &[ConnectionKey]) -> Result<Vec<ConnectionRecord>> {
        let column = |f: fn(&ConnectionKey) -> &str| keys.iter().map(f).collect::<Vec<&str>>();
        let (tenants, providers, users) = (
            column(|k| k.tenant.as_str()),
            column(|k| k.provider.as_str()),
            column(|k| k.user.as_str()),
        );
        let client = self.client().await?;
        let statement = prepared(
            &client,
            &format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections \
                 WHERE (tenant_id, provider, user_id) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))"
            ),
        )
        .await?;
        let rows = client
            .query(&statement, &[&tenants, &providers, &users])
            .await
            .map_err(pg("read connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn connection(&self, key: &ConnectionKey) -> Result<Option<ConnectionRecord>> {
        let client = self.client().await?;
        let statement = prepared(
            &client,
            &format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant_id = $1 AND provider = $2 AND user_id = $3"),
        )
        .await?;
        let row = client
            .query_opt(
                &statement,
                &[
                    &key.tenant.as_str(),
                    &key.provider.as_str(),
                    &key.user.as_str(),
                ],
            )
            .await
            .map_err(pg("read connection"))?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {CONNECTION_COLUMNS} FROM connections"),
                &[],
            )
            .await
            .map_err(pg("read connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn list_connections(&self, query: &ListQuery) -> Result<Vec<ConnectionRecord>> {
        let mut conditions = Vec::new();
        let mut values: Vec<String> = Vec::new();
        let mut bind = |column: &str, value: String, values: &mut Vec<String>| {
            values.push(value);
            conditions.push(format!("{column} = ${}", values.len()));
        };
        if let Some(t) = &query.tenant {
            bind("tenant_id", t.to_string(), &mut values);
        }
        if let Some(p) = &query.provider {
            bind("provider", p.to_string(), &mut values);
        }
        if let Some(s) = &query.status {
            bind("status", s.as_str().to_owned(), &mut values);
        }
        if let Some(after) = &query.after {
            values.extend([
                after.tenant.to_string(),
                after.provider.to_string(),
                after.user.to_string(),
            ]);
            let n = values.len();
            conditions.push(format!(
                "(tenant_id, provider, user_id) > (${}, ${}, ${})",
                n - 2,
                n - 1,
                n
            ));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let limit = i64::from(query.limit);
        let mut params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        params.push(&limit);
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections {filter} ORDER BY tenant_id, provider, user_id LIMIT ${}",
            params.len()
        );
        let rows = self
            .client()
            .await?
            .query(sql.as_str(), &params)
            .await
            .map_err(pg("list connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM connections WHERE tenant_id = $1 AND provider = $2 AND user_id = $3",
                &[
                    &key.tenant.as_str(),
                    &key.provider.as_str(),
                    &key.user.as_str(),
                ],
            )
            .await
            .map_err(pg("delete connection"))?;
        Ok(n > 0)
    }

    async fn put_secret(&self, record: SecretRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let generation = stored_generation(&tx, &record.tenant).await?;
        check_sealed_with(&record.tenant, generation, [&record.value])?;
        tx.execute(
            "INSERT INTO secrets (tenant_id, provider, name, value, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, provider, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            &[&record.tenant.as_str(), &provider_column(&record.provider), &record.name.as_str(), &record.value.0, &record.created_at, &record.updated_at],
        )
        .await
        .map_err(pg("store secret"))?;
        tx.commit().await.map_err(pg("commit"))
    }

    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT value, created_at, updated_at FROM secrets WHERE tenant_id = $1 AND provider = $2 AND name = $3",
                &[&key.tenant.as_str(), &provider_column(&key.provider), &key.name.as_str()],
            )
            .await
            .map_err(pg("read secret"))?;
        Ok(row.map(|r| SecretRecord {
            tenant: key.tenant.clone(),
            provider: key.provider.clone(),
            name: key.name.clone(),
            value: Sealed(r.get(0)),
            created_at: r.get(1),
            updated_at: r.get(2),
        }))
    }

    async fn delete_secret(&self, key: &SecretKey) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM secrets WHERE tenant_id = $1 AND provider = $2 AND name = $3",
                &[
                    &key.tenant.as_str(),
                    &provider_column(&key.provider),
                    &key.name.as_str(),
                ],
            )
            .await
            .map_err(pg("delete secret"))?;
        Ok(n > 0)
    }

    async fn put_flow(&self, flow: FlowRecord) -> Result<()> {
        let scopes =
            serde_json::to_string(&flow.scopes).map_err(|e| Error::internal(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        if let Some(verifier) = &flow.verifier {
            let generation = stored_generation(&tx, &flow.key.tenant).await?;
            check_sealed_with(&flow.key.tenant, generation, [verifier])?;
        }
        tx.execute(
                "INSERT INTO connect_flows (state_hash, tenant_id, provider, user_id, verifier, redirect_uri, scopes, browser_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &flow.state_hash,
                    &flow.key.tenant.as_str(),
                    &flow.key.provider.as_str(),
                    &flow.key.user.as_str(),
                    &flow.verifier.as_ref().map(|v| v.0.clone()),
                    &flow.redirect_uri,
                    &scopes,
                    &flow.browser_hash,
                    &flow.created_at,
                    &flow.expires_at,
                ],
            )
        .await
        .map_err(pg("store connect flow"))?;
        tx.commit().await.map_err(pg("commit"))?;
        client
            .execute(
                sql::PRUNE_PENDING_FLOWS,
                &[
                    &flow.key.tenant.as_str(),
                    &flow.key.user.as_str(),
                    &MAX_PENDING_FLOWS_PER_USER,
                ],
            )
            .await
            .map_err(pg("prune pending connect flows"))?;
        Ok(())
    }

    async fn take_flow(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: i64,
    ) -> Result<FlowTake> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let row = tx
            .query_opt(
                "SELECT tenant_id, provider, user_id, verifier, redirect_uri, scopes, browser_hash, created_at, expires_at, consumed_at \
                 FROM connect_flows WHERE state_hash = $1 FOR UPDATE",
                &[&state_hash],
            )
            .await
            .map_err(pg("read connect flow"))?;
        let Some(row) = row else {
            return Ok(FlowTake::Unknown);
        };
        let flow = FlowRecord {
            state_hash: state_hash.to_owned(),
            key: ConnectionKey::parse(
                &row.get::<_, String>(1),
                &row.get::<_, String>(0),
                &row.get::<_, String>(2),
            )
            .map_err(|_| invalid_row("connect flow"))?,
            verifier: row.get::<_, Option<Vec<u8>>>(3).map(Sealed),
            redirect_uri: row.get(4),
            scopes: serde_json::from_str(&row.get::<_, String>(5))
                .map_err(|_| invalid_row("connect flow"))?,
            browser_hash: row.get(6),
            created_at: row.get(7),
            expires_at: row.get(8),
            consumed_at: row.get(9),
        };
        let (take, consume) = FlowTake::decide(flow, browser_hash, now);
        if consume {
            tx.execute(
                "UPDATE connect_flows SET consumed_at = $2 WHERE state_hash = $1",
                &[&state_hash, &now],
            )
            .await
            .map_err(pg("consume connect flow"))?;
            tx.commit().await.map_err(pg("commit"))?;
        }
        Ok(take)
    }

    async fn put_session(&self, session: SessionRecord) -> Result<()> {
        let providers = serde_json::to_string(&session.providers)
            .map_err(|e| Error::internal(e.to_string()))?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO connect_sessions (token_hash, tenant_id, user_id, providers, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&session.token_hash, &session.tenant.as_str(), &session.user.as_str(), &providers, &session.created_at, &session.expires_at],
            )
            .await
            .map_err(pg("store connect session"))?;
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(sql::READ_SESSION, &[&token_hash])
            .await
            .map_err(pg("read connect session"))?;
        row.map(|r| session_from_row(token_hash, &r)).transpose()
    }

    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(sql::TAKE_SESSION, &[&token_hash])
            .await
            .map_err(pg("take connect session"))?;
        row.map(|r| session_from_row(token_hash, &r)).transpose()
    }

    async fn prune_ended(&self, now: i64) -> Result<u64> {
        let client = self.client().await?;
        let flows = client
            .execute(sql::PRUNE_ENDED_FLOWS, &[&(now - ENDED_RETENTION_MS)])
            .await
            .map_err(pg("prune connect flows"))?;
        let sessions = client
            .execute(sql::PRUNE_SESSIONS, &[&now])
            .await
            .map_err(pg("prune connect sessions"))?;
        Ok(flows + sessions)
    }

    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake> {
        let key = lease.key;
        let (t, p, u, purpose) = (
            key.tenant.as_str(),
            key.provider.as_str(),
            key.user.as_str(),
            lease.purpose.as_str(),
        );
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prepared(&client, TAKE_LEASE).await?,
                &[&t, &p, &u, &purpose, &lease.owner, &lease.until, &now],
            )
            .await
            .map_err(pg("take lease"))?;
        Ok(match row {
            Some(row) if row.get::<_, bool>(0) => LeaseTake::Acquired,
            Some(row) => LeaseTake::HeldUntil(row.get(1)),
            // Taken or released by another in the meantime: let the caller ask again.
            None => LeaseTake::HeldUntil(now),
        })
    }

    async fn release_lease(
        &self,
        key: &ConnectionKey,
        purpose: LeasePurpose,
        owner: &str,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                &prepared(&client, &RELEASE_LEASE).await?,
                &[
                    &key.tenant.as_str(),
                    &key.provider.as_str(),
                    &key.user.as_str(),
                    &purpose.as_str(),
                    &owner,
                ],
            )
            .await
            .map_err(pg("release lease"))?;
        Ok(())
    }

    async fn watch(&self) -> Result<Option<ChangeFeed>> {
        let (config, channel) = (self.config.clone(), self.schema.clone());
        let connector = self.connector.clone();
        // Subscribed before we return: the engine loads connections after this, so no change
        // can fall between its load and the feed.
        let first = Listener::connect(&config, &connector, &channel)
            .await
            .map_err(pg("listen for connection changes"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut listener = first;
            loop {
                listener.forward(&tx).await;
                // Lost (a restart, a network failure): reconnect, then have everything reloaded,
                // since whatever was notified meanwhile is gone.
                let mut retry = LISTEN_RETRY_MIN;
                listener = loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    match Listener::connect(&config, &connector, &channel).await {
                        Ok(listener) => break listener,
                        Err(_) => retry = (retry * 2).min(LISTEN_RETRY_MAX),
                    }
                };
                if tx.send(Change::Resync).is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }
}
