//! PostgreSQL store: many app instances sharing connections. Same records and semantics as the
//! SQLite store (the conformance tests run against both); pooled async connections
//! (deadpool + tokio-postgres). What differs from SQLite is here: row locks (`FOR SHARE`,
//! `FOR UPDATE`, advisory locks) where SQLite has one writer at a time, the lease statement, and
//! the schema ([`schema`]) and change feed ([`feed`]: LISTEN/NOTIFY).
//!
//! Why this file is long: it is the one `impl Store for PostgresStore`, each method one
//! transaction with its locks; what the two stores share is in `sql.rs` and `row.rs`.

mod driver;
mod feed;
mod schema;
pub mod tls;

pub use schema::{check_schema, store_exists};

use super::row::{
    connection_from_row, flow_from_row, master_key_from_row, sealed_row, session_from_row,
    tenant_key_from_row, tenant_key_usage_from_row, SqlRow, CONNECTION_COLUMNS,
};
use super::sql::{self, Params, Placeholders::Postgres, Statement};
use super::StoreInfo;
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
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use driver::{
    execute, execute_cached, pg, pool_error, prepared, query_one, query_opt, query_opt_cached,
};
use std::collections::HashMap;
use std::time::Duration;
use tls::{PostgresTls, TlsConnector};

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
        // Host, port and database only: never the user's password.
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
            Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().map_or(5432, |p| *p);
        let label = format!(
            "postgres://{host}:{port}/{}?schema={schema}",
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
         SELECT true, expires_at, (SELECT owner FROM lease) <> {owner} FROM renewed \
         UNION ALL SELECT true, expires_at, false FROM created \
         UNION ALL SELECT false, expires_at, false FROM lease \
           WHERE NOT EXISTS (SELECT 1 FROM renewed)"
    ))
}

/// The generation of the tenant's data key as stored, for [`check_sealed_with`], locked until
/// the transaction ends: the key cannot be deleted or rotated under the write it checks. The
/// lock is the one the write's count of sealed values (a trigger updating the key's row) takes
/// anyway: taking a weaker one first would let two writers deadlock on the upgrade.
async fn stored_generation(tx: &impl GenericClient, tenant: &TenantId) -> Result<Option<u32>> {
    let statement = sql::tenant_key_generation(Postgres, tenant).then("FOR NO KEY UPDATE");
    query_opt(tx, &statement, "check tenant key")
        .await?
        .map(|r| r.generation(0))
        .transpose()
}

/// Refuses a new wrapping by a master key the store marks retired. Locks the key's row until
/// the transaction ends, so that it cannot be retired meanwhile (`retire_master_key` locks it
/// before it counts the tenant keys it wraps).
async fn check_wrapping_key(tx: &impl GenericClient, master_key_id: &str) -> Result<()> {
    let statement = sql::master_key_retired_at(Postgres, master_key_id).then("FOR SHARE");
    let row = query_opt(tx, &statement, "check master key").await?;
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

    async fn info(&self) -> Result<StoreInfo> {
        schema::info(&self.client().await?).await
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
            execute(&tx, &add, "add master keys").await?;
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
        execute(&tx, &lock, "lock master key").await?;
        // Block concurrent rewraps of this key's tenants until we decide.
        let count = Params::one(Postgres, id, |key| {
            format!("SELECT count(*) FROM (SELECT 1 FROM tenant_keys WHERE master_key_id = {key} FOR UPDATE) t")
        });
        let mut in_use: i64 = query_one(&tx, &count, "count tenant keys").await?.read(0)?;
        let older = Params::one(Postgres, id, |key| {
            format!("SELECT count(*) FROM (SELECT 1 FROM older_tenant_keys WHERE master_key_id = {key} FOR UPDATE) t")
        });
        in_use += query_one(&tx, &older, "count older tenant keys")
            .await?
            .read::<i64>(0)?;
        if in_use > 0 {
            return Err(Error::new(
                ErrorCode::KeyInUse,
                format!("master key '{id}' still wraps {in_use} tenant key(s); call rotateMasterKey() first"),
            ));
        }
        let retire = sql::retire_master_key(Postgres, id, now);
        execute(&tx, &retire, "retire master key").await?;
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
        let row = query_opt(&self.client().await?, &statement, "read tenant key").await?;
        row.as_ref().map(tenant_key_from_row).transpose()
    }

    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>> {
        let statement = sql::deleted_generation(Postgres, tenant);
        let row = query_opt(&self.client().await?, &statement, "read deleted tenant key").await?;
        row.map(|r| r.generation(0)).transpose()
    }

    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // Each statement after the lock sees every creation and deletion committed before it.
        let lock = tenant_key_lock(&record.tenant);
        execute(&tx, &lock, "lock tenant key").await?;
        let existing = sql::tenant_key(Postgres, &record.tenant);
        if let Some(row) = query_opt(&tx, &existing, "read tenant key").await? {
            return tenant_key_from_row(&row);
        }
        check_wrapping_key(&tx, &record.master_key_id).await?;
        let deleted = sql::deleted_generation(Postgres, &record.tenant);
        let deleted = query_opt(&tx, &deleted, "read deleted tenant key")
            .await?
            .map(|r| r.generation(0))
            .transpose()?;
        check_after_deleted(&record, deleted)?;
        let insert = sql::insert_tenant_key(Postgres, &record);
        execute(&tx, &insert, "insert tenant key").await?;
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
        let changed = execute(&tx, &rewrap, "rewrap tenant key").await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(changed == 1)
    }

    async fn rotate_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_generation: u32,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        execute(&tx, &tenant_key_lock(&record.tenant), "lock tenant key").await?;
        check_wrapping_key(&tx, &record.master_key_id).await?;
        let keep = sql::keep_older_tenant_key(Postgres, &record.tenant, expected_generation);
        if execute(&tx, &keep, "keep older tenant key").await? == 0 {
            return Ok(false);
        }
        let replace = sql::replace_tenant_key(Postgres, &record, expected_generation);
        execute(&tx, &replace, "rotate tenant key").await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(true)
    }

    async fn older_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        let rows = self
            .client()
            .await?
            .query(&sql::older_tenant_keys(), &[])
            .await
            .map_err(pg("read older tenant keys"))?;
        rows.iter().map(tenant_key_from_row).collect()
    }

    async fn older_tenant_key(
        &self,
        tenant: &TenantId,
        generation: u32,
    ) -> Result<Option<TenantKeyRecord>> {
        let statement = sql::older_tenant_key(Postgres, tenant, generation);
        let row = query_opt(&self.client().await?, &statement, "read older tenant key").await?;
        row.as_ref().map(tenant_key_from_row).transpose()
    }

    async fn delete_older_tenant_key(&self, tenant: &TenantId, generation: u32) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // Waits for every write of the tenant in flight (each holds its key's row, see
        // `stored_generation`); one that starts later is checked against the newer key.
        let lock = sql::tenant_key_generation(Postgres, tenant).then("FOR UPDATE");
        execute(&tx, &lock, "lock tenant key").await?;
        let count = sql::count_sealed_with(Postgres, Some(tenant), 2, &generation.to_be_bytes());
        let left: i64 = query_one(&tx, &count, "count sealed values")
            .await?
            .read(0)?;
        if left > 0 {
            return Ok(false);
        }
        let delete = sql::delete_older_tenant_key(Postgres, tenant, generation);
        execute(&tx, &delete, "delete older tenant key").await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(true)
    }

    async fn tenant_key_usage(&self) -> Result<Vec<TenantKeyUsage>> {
        let rows = self
            .client()
            .await?
            .query(sql::TENANT_KEY_USAGE, &[])
            .await
            .map_err(pg("read tenant keys"))?;
        rows.iter().map(tenant_key_usage_from_row).collect()
    }

    async fn rows_sealed_otherwise(
        &self,
        tenant: &TenantId,
        generation: u32,
        limit: u32,
    ) -> Result<Vec<SealedRow>> {
        let prefix = sql::current_prefix(generation);
        let client = self.client().await?;
        let mut rows = Vec::new();
        for table in 0..sql::SEALED_TABLES.len() {
            let statement = sql::rows_sealed_otherwise(Postgres, table, tenant, &prefix, limit);
            for row in driver::query(&client, &statement, "find rows to re-seal").await? {
                rows.push(sealed_row(table, tenant, &row)?);
            }
        }
        Ok(rows)
    }

    async fn reseal_secret(&self, record: SecretRecord, expected: &Sealed) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let generation = stored_generation(&tx, &record.tenant).await?;
        check_sealed_with(&record.tenant, generation, [&record.value])?;
        let update = sql::reseal_secret(Postgres, &record, expected);
        let changed = execute(&tx, &update, "re-seal secret").await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(changed == 1)
    }

    async fn flow(&self, state_hash: &str) -> Result<Option<FlowRecord>> {
        let statement = sql::flow(Postgres, state_hash);
        let row = query_opt(&self.client().await?, &statement, "read connect flow").await?;
        row.map(|r| flow_from_row(state_hash, &r)).transpose()
    }

    async fn reseal_flow(
        &self,
        flow: &FlowRecord,
        verifier: Sealed,
        expected: &Sealed,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let generation = stored_generation(&tx, &flow.key.tenant).await?;
        check_sealed_with(&flow.key.tenant, generation, [&verifier])?;
        let update = sql::reseal_flow(Postgres, &flow.state_hash, &verifier, expected);
        let changed = execute(&tx, &update, "re-seal connect flow").await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(changed == 1)
    }

    async fn oldest_record_format(&self) -> Result<u8> {
        let row = self
            .client()
            .await?
            .query_opt(sql::OLDEST_RECORD_FORMAT, &[])
            .await
            .map_err(pg("read the record format"))?;
        let format: i32 = match row {
            Some(row) => row.read(0)?,
            None => 1,
        };
        Ok(format as u8)
    }

    async fn finish_format_migration(&self) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        tx.execute("LOCK TABLE vault_state IN EXCLUSIVE MODE", &[])
            .await
            .map_err(pg("lock the record format"))?;
        let count = sql::count_sealed_with(Postgres, None, 1, &[crate::vault::RECORD_FORMAT_V1]);
        let left: i64 = query_one(&tx, &count, "count format-1 records")
            .await?
            .read(0)?;
        if left > 0 {
            return Ok(false);
        }
        tx.execute(sql::FORMAT_2_ONLY, &[])
            .await
            .map_err(pg("mark the record format"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(true)
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let lock = tenant_key_lock(tenant);
        execute(&tx, &lock, "lock tenant key").await?;
        // First the key (its trigger keeps its generation and tells the listeners).
        let delete = sql::delete_tenant_rows(Postgres, "tenant_keys", tenant);
        let had_key = execute(&tx, &delete, "delete tenant").await? > 0;
        let older = sql::delete_tenant_rows(Postgres, "older_tenant_keys", tenant);
        execute(&tx, &older, "delete tenant").await?;
        let mut counts = [0u64; sql::TENANT_TABLES.len()];
        for (count, table) in counts.iter_mut().zip(sql::TENANT_TABLES) {
            let delete = sql::delete_tenant_rows(Postgres, table, tenant);
            *count = execute(&tx, &delete, "delete tenant").await?;
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
            let row = query_one(&tx, &upsert, "store connection").await?;
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // The tenant key's row before the connection's, as every write of sealed data locks them
        // (the count of values sealed updates the key's row): the other order deadlocks.
        let tenant = &record.key.tenant;
        let stored = stored_generation(&tx, tenant).await?;
        check_sealed_with(tenant, stored, record.sealed_fields())?;
        let row = query_opt(&tx, &update, "update connection").await?;
        tx.commit().await.map_err(pg("commit"))?;
        // `None`: lost to another writer.
        row.map(|row| {
            Ok(ConnectionRecord {
                version: row.read(0)?,
                ..record
            })
        })
        .transpose()
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
        let row = query_opt_cached(&client, &statement, "read connection").await?;
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
        let rows = driver::query(&self.client().await?, &statement, "list connections").await?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        let statement = sql::delete_connection(Postgres, key);
        let n = execute(&self.client().await?, &statement, "delete connection").await?;
        Ok(n > 0)
    }

    async fn put_secret(&self, record: SecretRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let generation = stored_generation(&tx, &record.tenant).await?;
        check_sealed_with(&record.tenant, generation, [&record.value])?;
        let put = sql::put_secret(Postgres, &record);
        execute(&tx, &put, "store secret").await?;
        tx.commit().await.map_err(pg("commit"))
    }

    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>> {
        let statement = sql::secret(Postgres, key);
        let row = query_opt(&self.client().await?, &statement, "read secret").await?;
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
        let n = execute(&self.client().await?, &statement, "delete secret").await?;
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
        execute(&tx, &insert, "store connect flow").await?;
        tx.commit().await.map_err(pg("commit"))?;
        let prune = sql::prune_pending_flows(Postgres, &flow);
        execute(&client, &prune, "prune pending connect flows").await?;
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
        let row = query_opt(&tx, &select, "read connect flow").await?;
        let Some(row) = row else {
            return Ok(FlowTake::Unknown);
        };
        let flow = flow_from_row(state_hash, &row)?;
        let (take, consume) = FlowTake::decide(flow, browser_hash, now);
        if consume {
            let consume = sql::consume_flow(Postgres, state_hash, now);
            execute(&tx, &consume, "consume connect flow").await?;
            tx.commit().await.map_err(pg("commit"))?;
        }
        Ok(take)
    }

    async fn put_session(&self, session: SessionRecord) -> Result<()> {
        let insert = sql::insert_session(Postgres, &session)?;
        execute(&self.client().await?, &insert, "store connect session").await?;
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let statement = sql::session(Postgres, token_hash);
        let row = query_opt(&self.client().await?, &statement, "read connect session").await?;
        row.map(|r| session_from_row(token_hash, &r)).transpose()
    }

    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let statement = sql::take_session(Postgres, token_hash);
        let row = query_opt(&self.client().await?, &statement, "take connect session").await?;
        row.map(|r| session_from_row(token_hash, &r)).transpose()
    }

    async fn prune_ended(&self, now: i64) -> Result<u64> {
        let client = self.client().await?;
        let prune = sql::prune_ended_flows(Postgres, now);
        let flows = execute(&client, &prune, "prune connect flows").await?;
        let prune = sql::prune_sessions(Postgres, now);
        let sessions = execute(&client, &prune, "prune connect sessions").await?;
        Ok(flows + sessions)
    }

    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake> {
        let take = take_lease(&lease, now);
        let client = self.client().await?;
        let row = query_opt_cached(&client, &take, "take lease").await?;
        Ok(match row {
            Some(row) if row.read::<bool>(0)? && row.read::<bool>(2)? => LeaseTake::TakenOver,
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
        execute_cached(&client, &release, "release lease").await?;
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
