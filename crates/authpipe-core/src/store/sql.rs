//! The statements both SQL stores run, so that what an upsert keeps, what a compare-and-swap
//! update replaces, what a page of `list_connections` filters on and what the tenant-key checks
//! read is written once. Each statement is built with its values by [`Params`], which numbers
//! the placeholders as values are bound (`?1` for SQLite, `$1` for PostgreSQL): no index is
//! written by hand, and text and values cannot drift apart. The same shape gives the same text,
//! so the drivers' statement caches still hit.

use super::row::{
    connection_values, json, ConnectionColumn, SqlValue, CONNECTION_COLUMNS, FLOW_COLUMNS,
    MASTER_KEY_COLUMNS, SESSION_COLUMNS, TENANT_KEY_COLUMNS,
};
use super::{LeasePurpose, ListQuery, SecretKey, ENDED_RETENTION_MS, MAX_PENDING_FLOWS_PER_USER};
use crate::error::Result;
use crate::ids::{ConnectionKey, ProviderId, TenantId};
use crate::records::{
    ConnectionRecord, FlowRecord, MasterKeyRecord, Sealed, SecretRecord, SessionRecord,
    TenantKeyRecord,
};
use std::fmt;

mod rotation;
pub use rotation::*;

/// How a driver writes its n-th parameter. Both bind by number, so a placeholder may be used
/// twice in one statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholders {
    /// `?1`, `?2`, ...
    Sqlite,
    /// `$1`, `$2`, ...
    Postgres,
}

/// SQL text and the values of its placeholders, in their order.
#[derive(Clone, Debug)]
pub struct Statement {
    pub sql: String,
    pub values: Vec<SqlValue>,
}

impl Statement {
    /// This statement with `sql` appended (a locking clause, say).
    pub fn then(mut self, sql: &str) -> Self {
        self.sql.push(' ');
        self.sql.push_str(sql);
        self
    }
}

/// The values bound so far, numbering each one's placeholder.
pub struct Params {
    style: Placeholders,
    values: Vec<SqlValue>,
}

/// The placeholder of one bound value, as it goes into the SQL text.
#[derive(Clone, Copy)]
pub struct Placeholder {
    style: Placeholders,
    number: usize,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.style {
            Placeholders::Sqlite => write!(f, "?{}", self.number),
            Placeholders::Postgres => write!(f, "${}", self.number),
        }
    }
}

impl Params {
    pub fn new(style: Placeholders) -> Self {
        Self {
            style,
            values: Vec::new(),
        }
    }

    pub fn bind(&mut self, value: impl Into<SqlValue>) -> Placeholder {
        self.values.push(value.into());
        Placeholder {
            style: self.style,
            number: self.values.len(),
        }
    }

    /// `column = placeholder` for each value, joined by `AND`.
    pub fn matching<'a>(
        &mut self,
        columns: impl IntoIterator<Item = (&'a str, SqlValue)>,
    ) -> String {
        let conditions: Vec<_> = columns
            .into_iter()
            .map(|(column, value)| format!("{column} = {}", self.bind(value)))
            .collect();
        conditions.join(" AND ")
    }

    /// The condition selecting one connection's row (or lease's, with its purpose).
    pub fn connection_key(&mut self, key: &ConnectionKey) -> String {
        self.matching([
            ("tenant_id", key.tenant.as_str().into()),
            ("provider", key.provider.as_str().into()),
            ("user_id", key.user.as_str().into()),
        ])
    }

    /// A statement of one value, its text made from its placeholder.
    pub fn one(
        style: Placeholders,
        value: impl Into<SqlValue>,
        sql: impl FnOnce(Placeholder) -> String,
    ) -> Statement {
        let mut params = Self::new(style);
        let placeholder = params.bind(value);
        params.statement(sql(placeholder))
    }

    pub fn statement(self, sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            values: self.values,
        }
    }
}

// Connections ----------------------------------------------------------------------------------

pub fn all_connections() -> String {
    format!("SELECT {CONNECTION_COLUMNS} FROM connections")
}

pub fn connection(p: Placeholders, key: &ConnectionKey) -> Statement {
    let mut params = Params::new(p);
    let filter = params.connection_key(key);
    params.statement(format!("{} WHERE {filter}", all_connections()))
}

/// One page: the filters the query has, after its cursor, in key order.
pub fn list_connections(p: Placeholders, query: &ListQuery) -> Statement {
    let mut params = Params::new(p);
    let mut conditions = Vec::new();
    let filters = [
        ("tenant_id", query.tenant.as_ref().map(TenantId::as_str)),
        ("provider", query.provider.as_ref().map(ProviderId::as_str)),
        ("status", query.status.map(|s| s.as_str())),
    ];
    for (column, value) in filters {
        if let Some(value) = value {
            conditions.push(format!("{column} = {}", params.bind(value)));
        }
    }
    if let Some(after) = &query.after {
        conditions.push(format!(
            "(tenant_id, provider, user_id) > ({}, {}, {})",
            params.bind(after.tenant.as_str()),
            params.bind(after.provider.as_str()),
            params.bind(after.user.as_str())
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let limit = params.bind(i64::from(query.limit));
    params.statement(format!(
        "{} {filter} ORDER BY tenant_id, provider, user_id LIMIT {limit}",
        all_connections()
    ))
}

/// Insert or replace a connection. An existing row keeps its `created_at` and gets
/// `version + 1` (a new one starts at 1). Returns `created_at, version` as stored.
pub fn upsert_connection(p: Placeholders, r: &ConnectionRecord) -> Result<Statement> {
    let mut params = Params::new(p);
    let mut values = Vec::new();
    let mut replaced = Vec::new();
    for (column, value) in connection_values(r)? {
        if column == ConnectionColumn::Version {
            values.push("1".to_owned());
            continue;
        }
        values.push(params.bind(value).to_string());
        if column.is_replaced() {
            replaced.push(format!("{0} = excluded.{0}", column.name()));
        }
    }
    Ok(params.statement(format!(
        "INSERT INTO connections ({CONNECTION_COLUMNS}) VALUES ({}) \
         ON CONFLICT (tenant_id, provider, user_id) DO UPDATE SET {}, version = connections.version + 1 \
         RETURNING created_at, version",
        values.join(", "),
        replaced.join(", ")
    )))
}

/// Replace a connection if its version is still `expected_version` (compare and swap) and the
/// tenant's data key is still of `generation`, the one its values were sealed with (checked in
/// the same statement: see `store::check_sealed_with`). `created_at` is never updated. Returns
/// the new version.
pub fn update_connection(
    p: Placeholders,
    r: &ConnectionRecord,
    expected_version: i64,
    generation: u32,
) -> Result<Statement> {
    let mut params = Params::new(p);
    let mut key = Vec::new();
    let mut replaced = Vec::new();
    for (column, value) in connection_values(r)? {
        if column.is_key() {
            key.push((column.name(), value));
        } else if column.is_replaced() {
            replaced.push(format!("{} = {}", column.name(), params.bind(value)));
        }
    }
    let key = params.matching(key);
    let tenant = params.bind(r.key.tenant.as_str());
    let (version, generation) = (params.bind(expected_version), params.bind(generation));
    Ok(params.statement(format!(
        "UPDATE connections SET {}, version = version + 1 \
         WHERE {key} AND version = {version} \
           AND EXISTS (SELECT 1 FROM tenant_keys WHERE tenant_id = {tenant} AND generation = {generation}) \
         RETURNING version",
        replaced.join(", ")
    )))
}

pub fn delete_connection(p: Placeholders, key: &ConnectionKey) -> Statement {
    let mut params = Params::new(p);
    let filter = params.connection_key(key);
    params.statement(format!("DELETE FROM connections WHERE {filter}"))
}

// Master keys and tenant keys -----------------------------------------------------------------

pub fn master_keys() -> String {
    format!("SELECT {MASTER_KEY_COLUMNS} FROM master_keys ORDER BY created_at, id")
}

/// Inserts a key-check record unless its id exists.
pub fn add_master_key(p: Placeholders, r: &MasterKeyRecord) -> Statement {
    let mut params = Params::new(p);
    let values = [
        params.bind(r.id.as_str()),
        params.bind(&r.key_check),
        params.bind(r.created_at),
        params.bind(r.retired_at),
    ];
    params.statement(format!(
        "INSERT INTO master_keys ({MASTER_KEY_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
        join(&values)
    ))
}

pub fn retire_master_key(p: Placeholders, id: &str, now: i64) -> Statement {
    let mut params = Params::new(p);
    let (id, now) = (params.bind(id), params.bind(now));
    params.statement(format!(
        "UPDATE master_keys SET retired_at = {now} WHERE id = {id} AND retired_at IS NULL"
    ))
}

/// When master key `id` was retired (NULL: active; no row: unknown to the store).
pub fn master_key_retired_at(p: Placeholders, id: &str) -> Statement {
    let mut params = Params::new(p);
    let id = params.bind(id);
    params.statement(format!(
        "SELECT retired_at FROM master_keys WHERE id = {id}"
    ))
}

/// The master keys not retired, oldest first.
pub const ACTIVE_MASTER_KEYS: &str =
    "SELECT id FROM master_keys WHERE retired_at IS NULL ORDER BY created_at, id";

pub fn tenant_keys() -> String {
    format!("SELECT {TENANT_KEY_COLUMNS} FROM tenant_keys")
}

pub fn tenant_key(p: Placeholders, tenant: &TenantId) -> Statement {
    let mut params = Params::new(p);
    let tenant = params.bind(tenant.as_str());
    params.statement(format!("{} WHERE tenant_id = {tenant}", tenant_keys()))
}

pub fn insert_tenant_key(p: Placeholders, r: &TenantKeyRecord) -> Statement {
    let mut params = Params::new(p);
    let values = [
        params.bind(r.tenant.as_str()),
        params.bind(r.generation),
        params.bind(r.master_key_id.as_str()),
        params.bind(&r.wrapped),
        params.bind(r.created_at),
    ];
    params.statement(format!(
        "INSERT INTO tenant_keys ({TENANT_KEY_COLUMNS}) VALUES ({})",
        join(&values)
    ))
}

/// Replace a tenant key's wrapping if it is still of its generation and wrapped by `expected`.
pub fn rewrap_tenant_key(p: Placeholders, r: &TenantKeyRecord, expected: &str) -> Statement {
    let mut params = Params::new(p);
    let (master_key_id, wrapped) = (
        params.bind(r.master_key_id.as_str()),
        params.bind(&r.wrapped),
    );
    let filter = params.matching([
        ("tenant_id", r.tenant.as_str().into()),
        ("master_key_id", expected.into()),
        ("generation", r.generation.into()),
    ]);
    params.statement(format!(
        "UPDATE tenant_keys SET master_key_id = {master_key_id}, wrapped = {wrapped} WHERE {filter}"
    ))
}

/// The generation of the tenant's data key (no row: it has none).
pub fn tenant_key_generation(p: Placeholders, tenant: &TenantId) -> Statement {
    let mut params = Params::new(p);
    let tenant = params.bind(tenant.as_str());
    params.statement(format!(
        "SELECT generation FROM tenant_keys WHERE tenant_id = {tenant}"
    ))
}

/// The generation of the tenant's last deleted data key (no row: never deleted).
pub fn deleted_generation(p: Placeholders, tenant: &TenantId) -> Statement {
    let mut params = Params::new(p);
    let tenant = params.bind(tenant.as_str());
    params.statement(format!(
        "SELECT generation FROM deleted_tenant_keys WHERE tenant_id = {tenant}"
    ))
}

// Secrets ---------------------------------------------------------------------------------------

/// A secret's `provider` column: empty for a tenant-wide secret.
fn provider_column(provider: &Option<ProviderId>) -> &str {
    provider.as_ref().map_or("", ProviderId::as_str)
}

fn secret_key(params: &mut Params, key: &SecretKey) -> String {
    params.matching([
        ("tenant_id", key.tenant.as_str().into()),
        ("provider", provider_column(&key.provider).into()),
        ("name", key.name.as_str().into()),
    ])
}

/// Insert or replace a secret (a replaced one keeps its `created_at`).
pub fn put_secret(p: Placeholders, r: &SecretRecord) -> Statement {
    let mut params = Params::new(p);
    let values = [
        params.bind(r.tenant.as_str()),
        params.bind(provider_column(&r.provider)),
        params.bind(r.name.as_str()),
        params.bind(&r.value),
        params.bind(r.created_at),
        params.bind(r.updated_at),
    ];
    params.statement(format!(
        "INSERT INTO secrets (tenant_id, provider, name, value, created_at, updated_at) VALUES ({}) \
         ON CONFLICT (tenant_id, provider, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        join(&values)
    ))
}

/// The secret's `value, created_at, updated_at`.
pub fn secret(p: Placeholders, key: &SecretKey) -> Statement {
    let mut params = Params::new(p);
    let filter = secret_key(&mut params, key);
    params.statement(format!(
        "SELECT value, created_at, updated_at FROM secrets WHERE {filter}"
    ))
}

pub fn delete_secret(p: Placeholders, key: &SecretKey) -> Statement {
    let mut params = Params::new(p);
    let filter = secret_key(&mut params, key);
    params.statement(format!("DELETE FROM secrets WHERE {filter}"))
}

// Connect flows and sessions --------------------------------------------------------------------

pub fn insert_flow(p: Placeholders, flow: &FlowRecord) -> Result<Statement> {
    let mut params = Params::new(p);
    let values = [
        params.bind(flow.state_hash.as_str()),
        params.bind(flow.key.tenant.as_str()),
        params.bind(flow.key.provider.as_str()),
        params.bind(flow.key.user.as_str()),
        params.bind(flow.verifier.as_ref()),
        params.bind(flow.redirect_uri.as_str()),
        params.bind(json(&flow.scopes)?),
        params.bind(flow.browser_hash.as_deref()),
        params.bind(flow.created_at),
        params.bind(flow.expires_at),
    ];
    Ok(params.statement(format!(
        "INSERT INTO connect_flows (state_hash, tenant_id, provider, user_id, verifier, redirect_uri, scopes, \
         browser_hash, created_at, expires_at) VALUES ({})",
        join(&values)
    )))
}

/// Drop the oldest pending flows of the flow's (tenant, user) beyond the newest
/// [`MAX_PENDING_FLOWS_PER_USER`].
pub fn prune_pending_flows(p: Placeholders, flow: &FlowRecord) -> Statement {
    let mut params = Params::new(p);
    let (tenant, user) = (
        params.bind(flow.key.tenant.as_str()),
        params.bind(flow.key.user.as_str()),
    );
    let keep = params.bind(MAX_PENDING_FLOWS_PER_USER);
    params.statement(format!(
        "DELETE FROM connect_flows \
         WHERE tenant_id = {tenant} AND user_id = {user} AND consumed_at IS NULL AND state_hash NOT IN ( \
           SELECT state_hash FROM connect_flows \
           WHERE tenant_id = {tenant} AND user_id = {user} AND consumed_at IS NULL \
           ORDER BY created_at DESC, state_hash LIMIT {keep})"
    ))
}

/// The flow with this state hash, as [`super::row::flow_from_row`] reads it.
pub fn flow(p: Placeholders, state_hash: &str) -> Statement {
    let mut params = Params::new(p);
    let state_hash = params.bind(state_hash);
    params.statement(format!(
        "SELECT {FLOW_COLUMNS} FROM connect_flows WHERE state_hash = {state_hash}"
    ))
}

/// Mark the flow consumed at `now` (as `FlowTake::decide` said to).
pub fn consume_flow(p: Placeholders, state_hash: &str, now: i64) -> Statement {
    let mut params = Params::new(p);
    let (state_hash, now) = (params.bind(state_hash), params.bind(now));
    params.statement(format!(
        "UPDATE connect_flows SET consumed_at = {now} WHERE state_hash = {state_hash}"
    ))
}

/// Drop flows that ended (expired, or were consumed) more than [`ENDED_RETENTION_MS`] before
/// `now`.
pub fn prune_ended_flows(p: Placeholders, now: i64) -> Statement {
    let mut params = Params::new(p);
    let before = params.bind(now.saturating_sub(ENDED_RETENTION_MS));
    params.statement(format!(
        "DELETE FROM connect_flows WHERE expires_at < {before} OR consumed_at < {before}"
    ))
}

/// Drop sessions that expired before `now`.
pub fn prune_sessions(p: Placeholders, now: i64) -> Statement {
    let mut params = Params::new(p);
    let now = params.bind(now);
    params.statement(format!(
        "DELETE FROM connect_sessions WHERE expires_at < {now}"
    ))
}

pub fn insert_session(p: Placeholders, s: &SessionRecord) -> Result<Statement> {
    let mut params = Params::new(p);
    let values = [
        params.bind(s.token_hash.as_str()),
        params.bind(s.tenant.as_str()),
        params.bind(s.user.as_str()),
        params.bind(json(&s.providers)?),
        params.bind(s.created_at),
        params.bind(s.expires_at),
    ];
    Ok(params.statement(format!(
        "INSERT INTO connect_sessions (token_hash, {SESSION_COLUMNS}) VALUES ({})",
        join(&values)
    )))
}

/// The session with this token hash, as [`super::row::session_from_row`] reads it.
pub fn session(p: Placeholders, token_hash: &str) -> Statement {
    let mut params = Params::new(p);
    let token_hash = params.bind(token_hash);
    params.statement(format!(
        "SELECT {SESSION_COLUMNS} FROM connect_sessions WHERE token_hash = {token_hash}"
    ))
}

/// Consume the session with this token hash (returning what [`session`] reads).
pub fn take_session(p: Placeholders, token_hash: &str) -> Statement {
    let mut params = Params::new(p);
    let token_hash = params.bind(token_hash);
    params.statement(format!(
        "DELETE FROM connect_sessions WHERE token_hash = {token_hash} RETURNING {SESSION_COLUMNS}"
    ))
}

/// Indexes for bounding connect flows and sessions (a migration of each store: never edit).
pub const FLOW_AND_SESSION_INDEXES: &str = "\
     CREATE INDEX connect_flows_by_user ON connect_flows (tenant_id, user_id, created_at); \
     CREATE INDEX connect_flows_by_expiry ON connect_flows (expires_at); \
     CREATE INDEX connect_sessions_by_expiry ON connect_sessions (expires_at);";

// Leases ----------------------------------------------------------------------------------------

/// The condition selecting one lease's row.
pub fn lease_key(params: &mut Params, key: &ConnectionKey, purpose: LeasePurpose) -> String {
    let key = params.connection_key(key);
    format!("{key} AND purpose = {}", params.bind(purpose.as_str()))
}

/// Give back a lease if `owner` still holds it.
pub fn release_lease(
    p: Placeholders,
    key: &ConnectionKey,
    purpose: LeasePurpose,
    owner: &str,
) -> Statement {
    let mut params = Params::new(p);
    let lease = lease_key(&mut params, key, purpose);
    let owner = params.bind(owner);
    params.statement(format!(
        "DELETE FROM leases WHERE {lease} AND owner = {owner}"
    ))
}

fn join(placeholders: &[Placeholder]) -> String {
    let texts: Vec<_> = placeholders.iter().map(Placeholder::to_string).collect();
    texts.join(", ")
}

#[cfg(test)]
mod tests;
