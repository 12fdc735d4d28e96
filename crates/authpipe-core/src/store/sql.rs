//! The statements both SQL stores run, so that what an upsert keeps, what a compare-and-swap
//! update replaces and what the tenant-key checks read is written once. Placeholders are `$n` (PostgreSQL); SQLite
//! runs the same text as `?n` (see [`sqlite_placeholders`]), which binds by number too.

use std::sync::LazyLock;

/// Column order of `connections`, as every `SELECT` reads it.
pub const CONNECTION_COLUMNS: &str = "tenant_id, provider, user_id, kind, status, scopes, account_id, account_name, \
     expires_at, created_at, updated_at, last_refresh_at, next_refresh_at, last_check_at, last_error_code, \
     last_error_message, credential, refresh_token, extras, version, token_issued_at";

/// Insert or replace a connection: $1..$19 are the columns in order up to `extras`, $20 is
/// `token_issued_at`. An existing row keeps its `created_at` and gets `version + 1`.
pub static UPSERT_CONNECTION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO connections ({CONNECTION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, 1, $20) \
         ON CONFLICT (tenant_id, provider, user_id) DO UPDATE SET \
           kind = excluded.kind, status = excluded.status, scopes = excluded.scopes, \
           account_id = excluded.account_id, account_name = excluded.account_name, \
           expires_at = excluded.expires_at, updated_at = excluded.updated_at, \
           last_refresh_at = excluded.last_refresh_at, next_refresh_at = excluded.next_refresh_at, \
           last_check_at = excluded.last_check_at, last_error_code = excluded.last_error_code, \
           last_error_message = excluded.last_error_message, credential = excluded.credential, \
           refresh_token = excluded.refresh_token, extras = excluded.extras, \
           token_issued_at = excluded.token_issued_at, version = connections.version + 1 \
         RETURNING created_at, version"
    )
});

/// Replace a connection if its version is still $20 (compare and swap) and the tenant's data key
/// is still of generation $21, the one its values were sealed with (checked in the same
/// statement: see `store::check_sealed_with`). The values are the upsert's without `created_at`
/// (never updated): $1..$9, then `updated_at` $10 .. `token_issued_at` $19.
pub const UPDATE_CONNECTION: &str = "UPDATE connections SET kind = $4, status = $5, scopes = $6, account_id = $7, \
       account_name = $8, expires_at = $9, updated_at = $10, last_refresh_at = $11, next_refresh_at = $12, \
       last_check_at = $13, last_error_code = $14, last_error_message = $15, credential = $16, \
       refresh_token = $17, extras = $18, token_issued_at = $19, version = version + 1 \
     WHERE tenant_id = $1 AND provider = $2 AND user_id = $3 AND version = $20 \
       AND EXISTS (SELECT 1 FROM tenant_keys WHERE tenant_id = $1 AND generation = $21) \
     RETURNING version";

/// The generation of tenant $1's data key (no row: it has none).
pub const TENANT_KEY_GENERATION: &str = "SELECT generation FROM tenant_keys WHERE tenant_id = $1";

/// The generation of tenant $1's last deleted data key (no row: never deleted).
pub const DELETED_GENERATION: &str =
    "SELECT generation FROM deleted_tenant_keys WHERE tenant_id = $1";

/// When master key $1 was retired (NULL: active; no row: unknown to the store).
pub const MASTER_KEY_RETIRED_AT: &str = "SELECT retired_at FROM master_keys WHERE id = $1";

/// The master keys not retired, oldest first.
pub const ACTIVE_MASTER_KEYS: &str =
    "SELECT id FROM master_keys WHERE retired_at IS NULL ORDER BY created_at, id";

/// What `delete_tenant` empties of the tenant's rows besides its key, in this order (the order
/// of the counts in `TenantDeletion`; leases are not counted).
pub const TENANT_TABLES: [&str; 5] = [
    "connections",
    "secrets",
    "connect_sessions",
    "connect_flows",
    "leases",
];

/// Give back a lease ($1..$3, $4 purpose) if $5 still holds it.
pub const RELEASE_LEASE: &str = "DELETE FROM leases \
     WHERE tenant_id = $1 AND provider = $2 AND user_id = $3 AND purpose = $4 AND owner = $5";

/// Drop the oldest pending flows of ($1 tenant, $2 user) beyond the newest $3.
pub const PRUNE_PENDING_FLOWS: &str = "DELETE FROM connect_flows \
     WHERE tenant_id = $1 AND user_id = $2 AND consumed_at IS NULL AND state_hash NOT IN ( \
       SELECT state_hash FROM connect_flows \
       WHERE tenant_id = $1 AND user_id = $2 AND consumed_at IS NULL \
       ORDER BY created_at DESC, state_hash LIMIT $3)";

/// Drop flows that ended (expired, or were consumed) before $1.
pub const PRUNE_ENDED_FLOWS: &str =
    "DELETE FROM connect_flows WHERE expires_at < $1 OR consumed_at < $1";

/// Drop sessions that expired before $1.
pub const PRUNE_SESSIONS: &str = "DELETE FROM connect_sessions WHERE expires_at < $1";

/// Read the session with token hash $1.
pub const READ_SESSION: &str = "SELECT tenant_id, user_id, providers, created_at, expires_at \
     FROM connect_sessions WHERE token_hash = $1";

/// Consume the session with token hash $1 (same columns as [`READ_SESSION`]).
pub const TAKE_SESSION: &str = "DELETE FROM connect_sessions WHERE token_hash = $1 \
     RETURNING tenant_id, user_id, providers, created_at, expires_at";

/// Indexes for bounding connect flows and sessions (a migration of each store).
pub const FLOW_AND_SESSION_INDEXES: &str = "\
     CREATE INDEX connect_flows_by_user ON connect_flows (tenant_id, user_id, created_at); \
     CREATE INDEX connect_flows_by_expiry ON connect_flows (expires_at); \
     CREATE INDEX connect_sessions_by_expiry ON connect_sessions (expires_at);";

/// Index of `created_at` among the upsert's values, which the update leaves out.
pub const CREATED_AT_INDEX: usize = 9;

/// The statement with SQLite's numbered placeholders.
pub fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}
