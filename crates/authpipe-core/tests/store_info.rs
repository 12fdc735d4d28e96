//! `Store::info`, what `authpipe doctor` reads of a store besides its records, on both stores:
//! the schema at this build's version once opened, PostgreSQL's clock, and the newest write.

use authpipe_core::records::{
    ConnectionRecord, ConnectionStatus, CredentialKind, ProviderAccount, Sealed, TenantKeyRecord,
};
use authpipe_core::store::postgres::tls::PostgresTls;
use authpipe_core::store::postgres::{store_exists, PostgresStore};
use authpipe_core::store::sqlite::SqliteStore;
use authpipe_core::store::Store;
use authpipe_core::{ConnectionKey, TenantId};
use std::time::{SystemTime, UNIX_EPOCH};

/// A sealed value's stand-in: a format-1 header of generation 1, then filler.
fn sealed(fill: u8) -> Sealed {
    let mut bytes = vec![1, 0, 0, 0, 1];
    bytes.resize(40, fill);
    Sealed(bytes)
}

fn connection(updated_at: i64) -> ConnectionRecord {
    ConnectionRecord {
        key: ConnectionKey::parse("attio", "t", "u").unwrap(),
        kind: CredentialKind::OAuth2,
        status: ConnectionStatus::Active,
        scopes: vec![],
        account: ProviderAccount {
            id: None,
            name: None,
        },
        expires_at: None,
        created_at: updated_at,
        updated_at,
        last_refresh_at: None,
        next_refresh_at: None,
        last_check_at: None,
        last_error: None,
        token_issued_at: None,
        credential: sealed(7),
        refresh_token: None,
        extras: None,
        version: 0,
    }
}

async fn reports(store: &dyn Store, kind: &str) {
    let fresh = store.info().await.unwrap();
    assert_eq!(fresh.kind, kind);
    assert!(fresh.expected_schema_version > 0);
    assert_eq!(
        fresh.schema_version, fresh.expected_schema_version,
        "opening migrated it"
    );
    assert_eq!(
        fresh.newest_write_ms, None,
        "an empty store has written nothing"
    );

    let tenant = TenantKeyRecord {
        tenant: TenantId::parse("t").unwrap(),
        generation: 1,
        master_key_id: "k1".into(),
        wrapped: Sealed(vec![1; 60]),
        created_at: 5,
    };
    store.insert_tenant_key(tenant).await.unwrap();
    assert_eq!(store.info().await.unwrap().newest_write_ms, Some(5));
    store
        .put_connections(vec![connection(1_000)])
        .await
        .unwrap();
    assert_eq!(store.info().await.unwrap().newest_write_ms, Some(1_000));
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_reports_its_schema_and_newest_write() {
    let store = SqliteStore::open_in_memory().unwrap();
    reports(&store, "sqlite").await;
    assert_eq!(
        store.info().await.unwrap().server_now_ms,
        None,
        "SQLite has no clock"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_reports_its_schema_clock_and_newest_write() {
    let url = std::env::var("AUTHPIPE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("authpipe_info_{:x}", now_ms());
    let store = match PostgresStore::connect(&url, &schema).await {
        Ok(store) => store,
        Err(e) if std::env::var_os("CI").is_none() => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: PostgreSQL ({})", e.message);
            return;
        }
        Err(e) => panic!("PostgreSQL is required under CI: {e}"),
    };
    reports(&store, "postgres").await;
    // Found without creating anything: a schema without a store stays absent.
    use secrecy::ExposeSecret;
    let (plain, tls) = PostgresTls::split_url(&url).unwrap();
    assert!(store_exists(plain.expose_secret(), &schema, &tls)
        .await
        .unwrap());
    let absent = format!("{schema}_absent");
    assert!(!store_exists(plain.expose_secret(), &absent, &tls)
        .await
        .unwrap());
    assert!(!store_exists(plain.expose_secret(), &absent, &tls)
        .await
        .unwrap());
    let before = now_ms();
    let server = store
        .info()
        .await
        .unwrap()
        .server_now_ms
        .expect("the server's clock");
    // The same machine's clock, read around one round trip.
    assert!(
        (server - before).abs() < 5_000,
        "server {server}, here {before}"
    );
    let (client, driver) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(driver);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
