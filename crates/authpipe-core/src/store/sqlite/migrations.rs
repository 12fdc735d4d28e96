//! The SQLite schema: migrations applied in order, `PRAGMA user_version` counting how many ran.
//! Never edit one that shipped: existing files have run it.

use crate::error::{Error, ErrorCode, Result};
use crate::store::sql;
use crate::store::StoreInfo;
use rusqlite::{Connection, TransactionBehavior};

/// `PRAGMA application_id` of an Authpipe store ("APP1"): tells our files from others.
pub(super) const APPLICATION_ID: i32 = 0x4150_5031;

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
    r#"
-- Tenant-key rotation: a tenant's older keys while its records are re-sealed, how many values
-- each current key sealed (counted below, in the transaction of each write), and whether the
-- store may still hold records of format 1 (a new store holds none).
ALTER TABLE tenant_keys ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0;
CREATE TABLE older_tenant_keys (
    tenant_id     TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, generation)
) STRICT, WITHOUT ROWID;
CREATE TABLE vault_state (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_record_format INTEGER NOT NULL
) STRICT;
INSERT INTO vault_state (id, oldest_record_format)
    SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM tenant_keys) THEN 1 ELSE 2 END;
CREATE TRIGGER connections_sealed AFTER INSERT ON connections BEGIN
    UPDATE tenant_keys
    SET encryptions = encryptions + 1 + (NEW.refresh_token IS NOT NULL) + (NEW.extras IS NOT NULL)
    WHERE tenant_id = NEW.tenant_id;
END;
CREATE TRIGGER connections_resealed AFTER UPDATE OF credential, refresh_token, extras ON connections BEGIN
    UPDATE tenant_keys
    SET encryptions = encryptions + (NEW.credential IS NOT OLD.credential)
        + (NEW.refresh_token IS NOT NULL AND NEW.refresh_token IS NOT OLD.refresh_token)
        + (NEW.extras IS NOT NULL AND NEW.extras IS NOT OLD.extras)
    WHERE tenant_id = NEW.tenant_id;
END;
CREATE TRIGGER secrets_sealed AFTER INSERT ON secrets BEGIN
    UPDATE tenant_keys SET encryptions = encryptions + 1 WHERE tenant_id = NEW.tenant_id;
END;
CREATE TRIGGER secrets_resealed AFTER UPDATE OF value ON secrets WHEN NEW.value IS NOT OLD.value BEGIN
    UPDATE tenant_keys SET encryptions = encryptions + 1 WHERE tenant_id = NEW.tenant_id;
END;
CREATE TRIGGER connect_flows_sealed AFTER INSERT ON connect_flows WHEN NEW.verifier IS NOT NULL BEGIN
    UPDATE tenant_keys SET encryptions = encryptions + 1 WHERE tenant_id = NEW.tenant_id;
END;
CREATE TRIGGER connect_flows_resealed AFTER UPDATE OF verifier ON connect_flows
    WHEN NEW.verifier IS NOT NULL AND NEW.verifier IS NOT OLD.verifier BEGIN
    UPDATE tenant_keys SET encryptions = encryptions + 1 WHERE tenant_id = NEW.tenant_id;
END;
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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

/// The schema version the file is at, beside this build's, and its newest write ([`StoreInfo`]).
pub(super) fn info(conn: &mut Connection) -> Result<StoreInfo> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let newest: Option<i64> = conn.query_row(crate::store::info::NEWEST_WRITE, [], |r| r.get(0))?;
    Ok(StoreInfo {
        kind: "sqlite",
        schema_version: applied as u32,
        expected_schema_version: MIGRATIONS.len() as u32,
        server_now_ms: None,
        newest_write_ms: newest,
    })
}
