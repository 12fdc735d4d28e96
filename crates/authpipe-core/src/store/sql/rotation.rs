//! The statements of tenant-key rotation and of the record-format migration: the older keys a
//! tenant keeps while its records are re-sealed, which rows are still sealed otherwise, the
//! compare-and-swap re-seals, and the store's oldest record format.

use super::*;

/// The current keys with their age and how many values the store sealed with each.
pub const TENANT_KEY_USAGE: &str =
    "SELECT tenant_id, generation, created_at, encryptions FROM tenant_keys";

pub fn older_tenant_keys() -> String {
    format!("SELECT {TENANT_KEY_COLUMNS} FROM older_tenant_keys")
}

pub fn older_tenant_key(p: Placeholders, tenant: &TenantId, generation: u32) -> Statement {
    let mut params = Params::new(p);
    let filter = params.matching([
        ("tenant_id", tenant.as_str().into()),
        ("generation", generation.into()),
    ]);
    params.statement(format!("{} WHERE {filter}", older_tenant_keys()))
}

/// Keep the tenant's current key, if it is of `expected`, among its older keys.
pub fn keep_older_tenant_key(p: Placeholders, tenant: &TenantId, expected: u32) -> Statement {
    let mut params = Params::new(p);
    let filter = params.matching([
        ("tenant_id", tenant.as_str().into()),
        ("generation", expected.into()),
    ]);
    params.statement(format!(
        "INSERT INTO older_tenant_keys ({TENANT_KEY_COLUMNS}) SELECT {TENANT_KEY_COLUMNS} FROM tenant_keys WHERE {filter}"
    ))
}

/// Make `r` the tenant's current key in place of generation `expected` (an UPDATE, so that
/// the deletion trigger, which means `deleteTenant`, does not fire), its count starting at 0.
pub fn replace_tenant_key(p: Placeholders, r: &TenantKeyRecord, expected: u32) -> Statement {
    let mut params = Params::new(p);
    let sets = [
        format!("generation = {}", params.bind(r.generation)),
        format!("master_key_id = {}", params.bind(r.master_key_id.as_str())),
        format!("wrapped = {}", params.bind(&r.wrapped)),
        format!("created_at = {}", params.bind(r.created_at)),
    ];
    let filter = params.matching([
        ("tenant_id", r.tenant.as_str().into()),
        ("generation", expected.into()),
    ]);
    params.statement(format!(
        "UPDATE tenant_keys SET {}, encryptions = 0 WHERE {filter}",
        sets.join(", ")
    ))
}

pub fn delete_older_tenant_key(p: Placeholders, tenant: &TenantId, generation: u32) -> Statement {
    let mut params = Params::new(p);
    let filter = params.matching([
        ("tenant_id", tenant.as_str().into()),
        ("generation", generation.into()),
    ]);
    params.statement(format!("DELETE FROM older_tenant_keys WHERE {filter}"))
}

/// Every sealed column, by table, with the columns that address its row.
const SEALED_COLUMNS: [(&str, &[&str], &[&str]); 3] = [
    (
        "connections",
        &["provider", "user_id"],
        &["credential", "refresh_token", "extras"],
    ),
    ("secrets", &["provider", "name"], &["value"]),
    ("connect_flows", &["state_hash"], &["verifier"]),
];

/// Which tables hold sealed values, in the order [`rows_sealed_otherwise`] lists them.
pub const SEALED_TABLES: [&str; 3] = ["connections", "secrets", "connect_flows"];

/// The tenant's rows of `SEALED_TABLES[table]` (their addressing columns) holding a sealed value
/// whose header does not start with `prefix` (format and generation: [`current_prefix`]).
pub fn rows_sealed_otherwise(
    p: Placeholders,
    table: usize,
    tenant: &TenantId,
    prefix: &[u8],
    limit: u32,
) -> Statement {
    let (name, key, sealed) = SEALED_COLUMNS[table];
    let mut params = Params::new(p);
    let tenant = params.bind(tenant.as_str());
    let prefix_len = prefix.len();
    let prefix = params.bind(SqlValue::Blob(prefix.to_vec()));
    let limit = params.bind(i64::from(limit));
    let stale: Vec<String> = sealed
        .iter()
        .map(|c| format!("substr({c}, 1, {prefix_len}) <> {prefix}"))
        .collect();
    params.statement(format!(
        "SELECT {} FROM {name} WHERE tenant_id = {tenant} AND ({}) LIMIT {limit}",
        key.join(", "),
        stale.join(" OR ")
    ))
}

/// The header prefix of a record sealed now with the tenant key of `generation`.
pub fn current_prefix(generation: u32) -> Vec<u8> {
    let mut prefix = vec![crate::vault::RECORD_FORMAT_V2];
    prefix.extend_from_slice(&generation.to_be_bytes());
    prefix
}

/// How many sealed values of `tenant` (all tenants: `None`) have a header whose bytes
/// `[from, from + bytes.len())` (1-based) are `bytes`.
pub fn count_sealed_with(
    p: Placeholders,
    tenant: Option<&TenantId>,
    from: usize,
    bytes: &[u8],
) -> Statement {
    let mut params = Params::new(p);
    let tenant = tenant.map(|t| format!("tenant_id = {} AND ", params.bind(t.as_str())));
    let tenant = tenant.unwrap_or_default();
    let len = bytes.len();
    let bytes = params.bind(SqlValue::Blob(bytes.to_vec()));
    let counts: Vec<String> = SEALED_COLUMNS
        .iter()
        .map(|(name, _, sealed)| {
            let matching: Vec<String> = sealed
                .iter()
                .map(|c| format!("substr({c}, {from}, {len}) = {bytes}"))
                .collect();
            format!(
                "(SELECT count(*) FROM {name} WHERE {tenant}({}))",
                matching.join(" OR ")
            )
        })
        .collect();
    params.statement(format!("SELECT {}", counts.join(" + ")))
}

/// Replace a secret's value if it is still `expected` (a re-seal's compare and swap).
pub fn reseal_secret(p: Placeholders, r: &SecretRecord, expected: &Sealed) -> Statement {
    let mut params = Params::new(p);
    let value = params.bind(&r.value);
    let key = secret_key(
        &mut params,
        &SecretKey {
            tenant: r.tenant.clone(),
            provider: r.provider.clone(),
            name: r.name.clone(),
        },
    );
    let expected = params.bind(expected);
    params.statement(format!(
        "UPDATE secrets SET value = {value} WHERE {key} AND value = {expected}"
    ))
}

/// Replace a flow's verifier if it is still `expected`.
pub fn reseal_flow(
    p: Placeholders,
    state_hash: &str,
    verifier: &Sealed,
    expected: &Sealed,
) -> Statement {
    let mut params = Params::new(p);
    let (verifier, state_hash, expected) = (
        params.bind(verifier),
        params.bind(state_hash),
        params.bind(expected),
    );
    params.statement(format!(
        "UPDATE connect_flows SET verifier = {verifier} WHERE state_hash = {state_hash} AND verifier = {expected}"
    ))
}

/// The oldest record format the store may hold (1 until migrated).
pub const OLDEST_RECORD_FORMAT: &str = "SELECT oldest_record_format FROM vault_state";

pub const FORMAT_2_ONLY: &str = "UPDATE vault_state SET oldest_record_format = 2";

/// What `delete_tenant` empties of the tenant's rows besides its key, in this order (the order
/// of the counts in `TenantDeletion`; leases are not counted).
pub const TENANT_TABLES: [&str; 5] = [
    "connections",
    "secrets",
    "connect_sessions",
    "connect_flows",
    "leases",
];

/// Delete the tenant's rows of `table` (`tenant_keys`, or one of [`TENANT_TABLES`]).
pub fn delete_tenant_rows(p: Placeholders, table: &str, tenant: &TenantId) -> Statement {
    let mut params = Params::new(p);
    let tenant = params.bind(tenant.as_str());
    params.statement(format!("DELETE FROM {table} WHERE tenant_id = {tenant}"))
}
