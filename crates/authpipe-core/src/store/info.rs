//! What a store says about itself besides its records, for `authpipe doctor`: the schema version
//! it is at and the one this build migrates to, and a clock reference to compare ours with.

/// A store's self-description ([`super::Store::info`]). No secret, no key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
    /// Migrations the store has run (opening it runs the missing ones, so after an open this is
    /// `expected_schema_version`).
    pub schema_version: u32,
    /// Migrations this build knows.
    pub expected_schema_version: u32,
    /// The database server's clock (PostgreSQL's `now()`), ms since the epoch; `None` for SQLite,
    /// which has no clock of its own.
    pub server_now_ms: Option<i64>,
    /// The newest timestamp any writer put into the store (connections, secrets, keys), ms since
    /// the epoch: a clock behind it went back, or another writer's is ahead. `None` when empty.
    pub newest_write_ms: Option<i64>,
}

/// The newest write time in the store, over the tables every writer stamps.
pub(crate) const NEWEST_WRITE: &str = "SELECT max(at) FROM ( \
       SELECT max(updated_at) AS at FROM connections \
       UNION ALL SELECT max(updated_at) FROM secrets \
       UNION ALL SELECT max(created_at) FROM tenant_keys \
       UNION ALL SELECT max(created_at) FROM master_keys \
     ) AS writes";
