//! The PostgreSQL schema: migrations applied in order under an advisory lock (instances starting
//! at once apply each exactly once), `schema_migrations` recording which ran. Never edit one
//! that shipped: existing databases have run it.

use super::pg;
use crate::error::{Error, ErrorCode, Result};
use crate::store::sql;
use crate::store::StoreInfo;

/// The advisory lock key that serialises migrations ("authpipe" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x6175_7468_7069_7065;

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
    r#"
-- Tenant-key rotation: a tenant's older keys while its records are re-sealed, how many values
-- each current key sealed (counted below, in the transaction of each write), and whether the
-- store may still hold records of format 1 (a new store holds none).
ALTER TABLE tenant_keys ADD COLUMN encryptions bigint NOT NULL DEFAULT 0;
CREATE TABLE older_tenant_keys (
    tenant_id     text NOT NULL,
    generation    integer NOT NULL,
    master_key_id text NOT NULL,
    wrapped       bytea NOT NULL,
    created_at    bigint NOT NULL,
    PRIMARY KEY (tenant_id, generation)
);
CREATE TABLE vault_state (
    id                   integer PRIMARY KEY CHECK (id = 1),
    oldest_record_format integer NOT NULL
);
INSERT INTO vault_state (id, oldest_record_format)
    SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM tenant_keys) THEN 1 ELSE 2 END;
CREATE FUNCTION count_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
BEGIN
    IF TG_TABLE_NAME = 'connections' THEN
        IF TG_OP = 'INSERT' THEN
            n := 1 + (NEW.refresh_token IS NOT NULL)::int + (NEW.extras IS NOT NULL)::int;
        ELSE
            n := (NEW.credential IS DISTINCT FROM OLD.credential)::int
                + (NEW.refresh_token IS NOT NULL AND NEW.refresh_token IS DISTINCT FROM OLD.refresh_token)::int
                + (NEW.extras IS NOT NULL AND NEW.extras IS DISTINCT FROM OLD.extras)::int;
        END IF;
    ELSIF TG_TABLE_NAME = 'secrets' THEN
        IF TG_OP = 'INSERT' THEN
            n := 1;
        ELSE
            n := (NEW.value IS DISTINCT FROM OLD.value)::int;
        END IF;
    ELSE
        IF TG_OP = 'INSERT' THEN
            n := (NEW.verifier IS NOT NULL)::int;
        ELSE
            n := (NEW.verifier IS NOT NULL AND NEW.verifier IS DISTINCT FROM OLD.verifier)::int;
        END IF;
    END IF;
    IF n > 0 THEN
        UPDATE tenant_keys SET encryptions = encryptions + n WHERE tenant_id = NEW.tenant_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER connections_count_sealed AFTER INSERT OR UPDATE ON connections
    FOR EACH ROW EXECUTE FUNCTION count_sealed();
CREATE TRIGGER secrets_count_sealed AFTER INSERT OR UPDATE ON secrets
    FOR EACH ROW EXECUTE FUNCTION count_sealed();
CREATE TRIGGER connect_flows_count_sealed AFTER INSERT OR UPDATE ON connect_flows
    FOR EACH ROW EXECUTE FUNCTION count_sealed();
"#,
];

/// Applies the migrations `schema` (created if missing) has not run yet.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client, schema: &str) -> Result<()> {
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
            format!("the store has schema version {applied}, newer than this @authpipe/node knows"),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await.map_err(pg("migrate"))?;
        let version = (i + 1) as i32;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, applied_at) VALUES ($1, 0)"),
            &[&version],
        )
        .await
        .map_err(pg("record migration"))?;
    }
    tx.commit().await.map_err(pg("commit migrations"))
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

/// The migrations the schema has run, beside this build's, the server's clock and the newest
/// write ([`StoreInfo`]).
pub(super) async fn info(client: &deadpool_postgres::Client) -> Result<StoreInfo> {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM schema_migrations), \
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint, ({})",
                crate::store::info::NEWEST_WRITE
            ),
            &[],
        )
        .await
        .map_err(pg("read the schema version"))?;
    let applied: i64 = row.get(0);
    Ok(StoreInfo {
        kind: "postgres",
        schema_version: applied as u32,
        expected_schema_version: MIGRATIONS.len() as u32,
        server_now_ms: row.get(1),
        newest_write_ms: row.get(2),
    })
}

/// Whether `schema` of the database at `url` holds an Authpipe store (its migration table),
/// asked on a connection of its own and without creating anything: for a caller that must not
/// turn a mistyped schema into a new, empty store (the `authpipe` command line).
pub async fn store_exists(url: &str, schema: &str, tls: &super::tls::PostgresTls) -> Result<bool> {
    check_schema(schema)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| Error::invalid_argument("store is not a valid postgres:// URL"))?;
    tls.apply(&mut config);
    let (client, connection) = config
        .connect(tls.connector()?)
        .await
        .map_err(pg("connect"))?;
    let driver = tokio::spawn(connection);
    let found = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name = 'schema_migrations')",
            &[&schema],
        )
        .await
        .map_err(pg("look for the store"))?
        .get(0);
    drop(client);
    let _ = driver.await;
    Ok(found)
}
