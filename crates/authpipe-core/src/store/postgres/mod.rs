//! PostgreSQL store: many app instances sharing connections. Same records and semantics as the
//! SQLite store (the conformance tests run against both); pooled async connections
//! (deadpool + tokio-postgres). What differs from SQLite is here: row locks (`FOR SHARE`,
//! `FOR UPDATE`, advisory locks) where SQLite has one writer at a time, the lease statement, and
//! the schema ([`schema`]) and change feed ([`feed`]: LISTEN/NOTIFY).

mod feed;
mod schema;

pub use schema::check_schema;

use super::postgres_tls::{PostgresTls, TlsConnector};
use super::row::{
    connection_from_row, flow_from_row, master_key_from_row, session_from_row, tenant_key_from_row,
    FromColumn, SqlRow, SqlValue, CONNECTION_COLUMNS,
};
use super::sql::{self, Params, Placeholders::Postgres, Statement};
use super::{
    check_after_deleted, check_sealed_with, connection_generation, retired_master_key, ChangeFeed,
    FlowTake, Lease, LeasePurpose, LeaseTake, ListQuery, SecretKey, Store, TenantDeletion,
};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, TenantId};
use crate::records::{
    ConnectionRecord, FlowRecord, MasterKeyRecord, Sealed, SecretRecord, SessionRecord,
    TenantKeyRecord,
};
use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::types::{IsNull, ToSql, Type};

pub(super) fn pg(context: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
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
        schema::migrate(&mut store.client().await?, schema).await?;
        Ok(store)
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

impl SqlRow for tokio_postgres::Row {
    const INVALID_ROW_HINT: &'static str = "";

    fn read<T: FromColumn>(&self, index: usize) -> Result<T> {
        self.try_get(index).map_err(pg("read a row"))
    }

    fn generation(&self, index: usize) -> Result<u32> {
        Ok(self.try_get::<_, i32>(index).map_err(pg("read a row"))? as u32)
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Each value as its Rust type would be sent; an integer for an `integer` column (a key
/// generation) goes as 32 bits.
impl ToSql for SqlValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            SqlValue::Int(v) => v.to_sql(ty, out),
            SqlValue::Text(s) => s.to_sql(ty, out),
            SqlValue::Blob(b) => b.to_sql(ty, out),
        }
    }

    /// Any type: which ones a value takes depends on its variant, checked in `to_sql_checked`.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, BoxError> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql_checked(ty, out),
            SqlValue::Int(v) => v.to_sql_checked(ty, out),
            SqlValue::Text(s) => s.to_sql_checked(ty, out),
            SqlValue::Blob(b) => b.to_sql_checked(ty, out),
        }
    }
}

/// A statement's values as tokio-postgres takes them.
fn params(statement: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    statement
        .values
        .iter()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect()
}

/// Serialises, per tenant, creating and deleting its data key (the class of a two-key advisory
/// lock; the other key is the hash of the tenant id): a key made from a stale
/// [`Store::deleted_generation`] is then always caught by `insert_tenant_key`'s check.
fn tenant_key_lock(tenant: &TenantId) -> Statement {
    Params::one(Postgres, tenant.as_str(), |tenant| {
        format!("SELECT pg_advisory_xact_lock(1635087464, hashtext({tenant}))")
    })
}

/// Takes a lease if it is free, ours, or expired at `now`: `(true, until)`. Held by another:
/// `(false, its expiry)`. In one round trip, and without a write when the lease is held:
/// SQLite's `INSERT .. ON CONFLICT DO UPDATE .. WHERE` locks the existing row before it reads
/// the condition, which makes every refused attempt a commit waiting on a WAL flush, and with
/// several instances racing for each refresh those flushes took most of the database's time.
fn take_lease(lease: &Lease<'_>, now: i64) -> Statement {
    let mut params = Params::new(Postgres);
    let (t, p, u, purpose) = (
        params.bind(lease.key.tenant.as_str()),
        params.bind(lease.key.provider.as_str()),
        params.bind(lease.key.user.as_str()),
        params.bind(lease.purpose.as_str()),
    );
    let (owner, until, now) = (
        params.bind(lease.owner),
        params.bind(lease.until),
        params.bind(now),
    );
    let this =
        format!("tenant_id = {t} AND provider = {p} AND user_id = {u} AND purpose = {purpose}");
    params.statement(format!(
        "WITH lease AS ( \
           SELECT owner, expires_at FROM leases WHERE {this}), \
         renewed AS ( \
           UPDATE leases SET owner = {owner}, expires_at = {until} \
           WHERE {this} AND (owner = {owner} OR expires_at <= {now}) \
           RETURNING expires_at), \
         created AS ( \
           INSERT INTO leases (tenant_id, provider, user_id, purpose, owner, expires_at) \
           SELECT {t}, {p}, {u}, {purpose}, {owner}, {until} WHERE NOT EXISTS (SELECT 1 FROM lease) \
           ON CONFLICT DO NOTHING \
           RETURNING expires_at) \
         SELECT true, expires_at FROM renewed \
         UNION ALL SELECT true, expires_at FROM created \
         UNION ALL SELECT false, expires_at FROM lease \
           WHERE NOT EXISTS (SELECT 1 FROM renewed)"
    ))
}

/// The generation of the tenant's data key as stored, for [`check_sealed_with`], locked until
/// the transaction ends: the key cannot be deleted under the write it checks.
async fn stored_generation(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &TenantId,
) -> Result<Option<u32>> {
    let statement = sql::tenant_key_generation(Postgres, tenant).then("FOR SHARE");
    tx.query_opt(&statement.sql, &params(&statement))
        .await
        .map_err(pg("check tenant key"))?
        .map(|r| r.generation(0))
        .transpose()
}

/// Refuses a new wrapping by a master key the store marks retired. Locks the key's row until
/// the transaction ends, so that it cannot be retired meanwhile (`retire_master_key` locks it
/// before it counts the tenant keys it wraps).
async fn check_wrapping_key(
    tx: &tokio_postgres::Transaction<'_>,
    master_key_id: &str,
) -> Result<()> {
    let statement = sql::master_key_retired_at(Postgres, master_key_id).then("FOR SHARE");
    let row = tx
        .query_opt(&statement.sql, &params(&statement))
        .await
        .map_err(pg("check master key"))?;
    let Some(retired_at) = row.map(|r| r.read::<Option<i64>>(0)).transpose()?.flatten() else {
        return Ok(());
    };
    let active = tx
        .query(sql::ACTIVE_MASTER_KEYS, &[])
        .await
        .map_err(pg("read master keys"))?
        .iter()
        .map(|r| r.read(0))
        .collect::<Result<Vec<String>>>()?;
    Err(retired_master_key(master_key_id, retired_at, &active))
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
            .query(&sql::master_keys(), &[])
            .await
            .map_err(pg("read master keys"))?;
        rows.iter().map(master_key_from_row).collect()
    }

    async fn add_master_keys(&self, records: Vec<MasterKeyRecord>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        for r in &records {
            let add = sql::add_master_key(Postgres, r);
            tx.execute(&add.sql, &params(&add))
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
        let lock = Params::one(Postgres, id, |key| {
            format!("SELECT 1 FROM master_keys WHERE id = {key} FOR UPDATE")
        });
        tx.execute(&lock.sql, &params(&lock))
            .await
            .map_err(pg("lock master key"))?;
        // Block concurrent rewraps of this key's tenants until we decide.
        let count = Params::one(Postgres, id, |key| {
            format!("SELECT count(*) FROM (SELECT 1 FROM tenant_keys WHERE master_key_id = {key} FOR UPDATE) t")
        });
        let in_use: i64 = tx
            .query_one(&count.sql, &params(&count))
            .await
            .map_err(pg("count tenant keys"))?
            .read(0)?;
        if in_use > 0 {
            return Err(Error::new(
                ErrorCode::KeyInUse,
                format!("master key '{id}' still wraps {in_use} tenant key(s); call rotateMasterKey() first"),
            ));
        }
        let retire = sql::retire_master_key(Postgres, id, now);
        tx.execute(&retire.sql, &params(&retire))
            .await
            .map_err(pg("retire master key"))?;
        tx.commit().await.map_err(pg("commit"))
    }

    async fn tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        let rows = self
            .client()
            .await?
            .query(&sql::tenant_keys(), &[])
            .await
            .map_err(pg("read tenant keys"))?;
        rows.iter().map(tenant_key_from_row).collect()
    }

    async fn tenant_key(&self, tenant: &TenantId) -> Result<Option<TenantKeyRecord>> {
        let statement = sql::tenant_key(Postgres, tenant);
        let row = self
            .client()
            .await?
            .query_opt(&statement.sql, &params(&statement))
            .await
            .map_err(pg("read tenant key"))?;
        row.as_ref().map(tenant_key_from_row).transpose()
    }

    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>> {
        let statement = sql::deleted_generation(Postgres, tenant);
        let row = self
            .client()
            .await?
            .query_opt(&statement.sql, &params(&statement))
            .await
            .map_err(pg("read deleted tenant key"))?;
        row.map(|r| r.generation(0)).transpose()
    }

    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // Each statement after the lock sees every creation and deletion committed before it.
        let lock = tenant_key_lock(&record.tenant);
        tx.execute(&lock.sql, &params(&lock))
            .await
            .map_err(pg("lock tenant key"))?;
        let existing = sql::tenant_key(Postgres, &record.tenant);
        if let Some(row) = tx
            .query_opt(&existing.sql, &params(&existing))
            .await
            .map_err(pg("read tenant key"))?
        {
            return tenant_key_from_row(&row);
        }
        check_wrapping_key(&tx, &record.master_key_id).await?;
        let deleted = sql::deleted_generation(Postgres, &record.tenant);
        let deleted = tx
            .query_opt(&deleted.sql, &params(&deleted))
            .await
            .map_err(pg("read deleted tenant key"))?
            .map(|r| r.generation(0))
            .transpose()?;
        check_after_deleted(&record, deleted)?;
        let insert = sql::insert_tenant_key(Postgres, &record);
        tx.execute(&insert.sql, &params(&insert))
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
        let rewrap = sql::rewrap_tenant_key(Postgres, &record, expected_master_key_id);
        let changed = tx
            .execute(&rewrap.sql, &params(&rewrap))
            .await
            .map_err(pg("rewrap tenant key"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(changed == 1)
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let lock = tenant_key_lock(tenant);
        tx.execute(&lock.sql, &params(&lock))
            .await
            .map_err(pg("lock tenant key"))?;
        // First the key (its trigger keeps its generation and tells the listeners).
        let delete = sql::delete_tenant_rows(Postgres, "tenant_keys", tenant);
        let had_key = tx
            .execute(&delete.sql, &params(&delete))
            .await
            .map_err(pg("delete tenant"))?
            > 0;
        let mut counts = [0u64; sql::TENANT_TABLES.len()];
        for (count, table) in counts.iter_mut().zip(sql::TENANT_TABLES) {
            let delete = sql::delete_tenant_rows(Postgres, table, tenant);
            *count = tx
                .execute(&delete.sql, &params(&delete))
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
            let upsert = sql::upsert_connection(Postgres, &r)?;
            let row = tx
                .query_one(&upsert.sql, &params(&upsert))
                .await
                .map_err(pg("store connection"))?;
            r.created_at = row.read(0)?;
            r.version = row.read(1)?;
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
        let generation = connection_generation(&record)?;
        let update = sql::update_connection(Postgres, &record, expected_version, generation)?;
        let client = self.client().await?;
        let row = client
            .query_opt(&prepared(&client, &update.sql).await?, &params(&update))
            .await
            .map_err(pg("update connection"))?;
        if let Some(row) = row {
            return Ok(Some(ConnectionRecord {
                version: row.read(0)?,
                ..record
            }));
        }
        // Lost to another writer, or refused by the key check: which one, reported.
        let tenant = &record.key.tenant;
        let check = sql::tenant_key_generation(Postgres, tenant);
        let stored = client
            .query_opt(&check.sql, &params(&check))
            .await
            .map_err(pg("check tenant key"))?
            .map(|r| r.generation(0))
            .transpose()?;
        check_sealed_with(tenant, stored, record.sealed_fields())?;
        Ok(None)
    }

    async fn connections(&self, keys: &[ConnectionKey]) -> Result<Vec<ConnectionRecord>> {
        // One statement for any number of keys: each key column as an array (PostgreSQL's own,
        // so written here and not with `Params`).
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
        let statement = sql::connection(Postgres, key);
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prepared(&client, &statement.sql).await?,
                &params(&statement),
            )
            .await
            .map_err(pg("read connection"))?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        let rows = self
            .client()
            .await?
            .query(&sql::all_connections(), &[])
            .await
            .map_err(pg("read connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn list_connections(&self, query: &ListQuery) -> Result<Vec<ConnectionRecord>> {
        let statement = sql::list_connections(Postgres, query);
        let rows = self
            .client()
            .await?
            .query(&statement.sql, &params(&statement))
            .await
            .map_err(pg("list connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        let statement = sql::delete_connection(Postgres, key);
        let n = self
            .client()
            .await?
            .execute(&statement.sql, &params(&statement))
            .await
            .map_err(pg("delete connection"))?;
        Ok(n > 0)
    }

    async fn put_secret(&self, record: SecretRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let generation = stored_generation(&tx, &record.tenant).await?;
        check_sealed_with(&record.tenant, generation, [&record.value])?;
        let put = sql::put_secret(Postgres, &record);
        tx.execute(&put.sql, &params(&put))
            .await
            .map_err(pg("store secret"))?;
        tx.commit().await.map_err(pg("commit"))
    }

    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>> {
        let statement = sql::secret(Postgres, key);
        let row = self
            .client()
            .await?
            .query_opt(&statement.sql, &params(&statement))
            .await
            .map_err(pg("read secret"))?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(SecretRecord {
            tenant: key.tenant.clone(),
            provider: key.provider.clone(),
            name: key.name.clone(),
            value: Sealed(r.read(0)?),
            created_at: r.read(1)?,
            updated_at: r.read(2)?,
        }))
    }

    async fn delete_secret(&self, key: &SecretKey) -> Result<bool> {
        let statement = sql::delete_secret(Postgres, key);
        let n = self
            .client()
            .await?
            .execute(&statement.sql, &params(&statement))
            .await
            .map_err(pg("delete secret"))?;
        Ok(n > 0)
    }

    async fn put_flow(&self, flow: FlowRecord) -> Result<()> {
        let insert = sql::insert_flow(Postgres, &flow)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        if let Some(verifier) = &flow.verifier {
            let generation = stored_generation(&tx, &flow.key.tenant).await?;
            check_sealed_with(&flow.key.tenant, generation, [verifier])?;
        }
        tx.execute(&insert.sql, &params(&insert))
            .await
            .map_err(pg("store connect flow"))?;
        tx.commit().await.map_err(pg("commit"))?;
        let prune = sql::prune_pending_flows(Postgres, &flow);
        client
            .execute(&prune.sql, &params(&prune))
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
        let select = sql::flow(Postgres, state_hash).then("FOR UPDATE");
        let row = tx
            .query_opt(&select.sql, &params(&select))
            .await
            .map_err(pg("read connect flow"))?;
        let Some(row) = row else {
            return Ok(FlowTake::Unknown);
        };
        let flow = flow_from_row(state_hash, &row)?;
        let (take, consume) = FlowTake::decide(flow, browser_hash, now);
        if consume {
            let consume = sql::consume_flow(Postgres, state_hash, now);
            tx.execute(&consume.sql, &params(&consume))
                .await
                .map_err(pg("consume connect flow"))?;
            tx.commit().await.map_err(pg("commit"))?;
        }
        Ok(take)
    }

    async fn put_session(&self, session: SessionRecord) -> Result<()> {
        let insert = sql::insert_session(Postgres, &session)?;
        self.client()
            .await?
            .execute(&insert.sql, &params(&insert))
            .await
            .map_err(pg("store connect session"))?;
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let statement = sql::session(Postgres, token_hash);
        let row = self
            .client()
            .await?
            .query_opt(&statement.sql, &params(&statement))
            .await
            .map_err(pg("read connect session"))?;
        row.map(|r| session_from_row(token_hash, &r)).transpose()
    }

    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let statement = sql::take_session(Postgres, token_hash);
        let row = self
            .client()
            .await?
            .query_opt(&statement.sql, &params(&statement))
            .await
            .map_err(pg("take connect session"))?;
        row.map(|r| session_from_row(token_hash, &r)).transpose()
    }

    async fn prune_ended(&self, now: i64) -> Result<u64> {
        let client = self.client().await?;
        let prune = sql::prune_ended_flows(Postgres, now);
        let flows = client
            .execute(&prune.sql, &params(&prune))
            .await
            .map_err(pg("prune connect flows"))?;
        let prune = sql::prune_sessions(Postgres, now);
        let sessions = client
            .execute(&prune.sql, &params(&prune))
            .await
            .map_err(pg("prune connect sessions"))?;
        Ok(flows + sessions)
    }

    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake> {
        let take = take_lease(&lease, now);
        let client = self.client().await?;
        let row = client
            .query_opt(&prepared(&client, &take.sql).await?, &params(&take))
            .await
            .map_err(pg("take lease"))?;
        Ok(match row {
            Some(row) if row.read::<bool>(0)? => LeaseTake::Acquired,
            Some(row) => LeaseTake::HeldUntil(row.read(1)?),
            // Taken or released by another in the meantime: let the caller ask again.
            None => LeaseTake::HeldUntil(now),
        })
    }

    /// In one round trip that does not wait for the WAL to reach the disk: `set_config(.., true)`
    /// turns `synchronous_commit` off for this statement's own transaction (evaluated only on the
    /// row it deletes). A release lost in a database crash only leaves the lease to run out on
    /// its own (a later refresh, never a second one), and each flush saved is one more refresh
    /// per flush the disk can do.
    async fn release_lease(
        &self,
        key: &ConnectionKey,
        purpose: LeasePurpose,
        owner: &str,
    ) -> Result<()> {
        let release = sql::release_lease(Postgres, key, purpose, owner)
            .then("AND set_config('synchronous_commit', 'off', true) IS NOT NULL");
        let client = self.client().await?;
        client
            .execute(&prepared(&client, &release.sql).await?, &params(&release))
            .await
            .map_err(pg("release lease"))?;
        Ok(())
    }

    async fn watch(&self) -> Result<Option<ChangeFeed>> {
        let feed = feed::watch(
            self.config.clone(),
            self.connector.clone(),
            self.schema.clone(),
        )
        .await?;
        Ok(Some(feed))
    }
}
