//! The vault's guarantees against someone with write access to the store file: moved, altered
//! or restored ciphertexts fail to decrypt, with the right error, even with the master key.

use authpipe_core::ErrorCode;
use authpipe_core::MasterKeyConfig;
use authpipe_core::{open_shared, Engine, EngineOptions, MasterKeySource, StoreLocation};
use authpipe_core::{AccessToken, ImportFields, ImportRequest};
use authpipe_core::{ConnectionKey, TenantId};
use rusqlite::Connection;
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::sync::Arc;

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

async fn engine(path: &Path) -> Arc<Engine> {
    let keys = MasterKeySource::Configured(vec![MasterKeyConfig {
        id: None,
        key: SecretString::from(MASTER_KEY),
        retired: false,
    }]);
    open_shared(EngineOptions {
        store: StoreLocation::File(path.to_path_buf()),
        keys,
        clock: None,
        key_rotation: Default::default(),
    })
    .await
    .unwrap()
    .engine
}

fn key(tenant: &str, user: &str) -> ConnectionKey {
    ConnectionKey::parse("attio", tenant, user).unwrap()
}

async fn import(engine: &Engine, tenant: &str, user: &str, token: &str) {
    let fields = ImportFields {
        access_token: Some(AccessToken::new(token)),
        ..Default::default()
    };
    engine
        .import(vec![ImportRequest::new(key(tenant, user), fields).unwrap()])
        .await
        .unwrap();
}

/// Runs SQL on the store file while no engine has it open.
fn tamper(path: &Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

async fn credential_error(path: &Path, tenant: &str, user: &str) -> ErrorCode {
    let engine = engine(path).await;
    engine
        .credential(&key(tenant, user))
        .await
        .unwrap_err()
        .code
}

#[tokio::test(flavor = "multi_thread")]
async fn moved_and_altered_ciphertexts_fail_integrity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tamper.db");
    {
        let e = engine(&path).await;
        import(&e, "t1", "u1", "token-t1-u1").await;
        import(&e, "t1", "u2", "token-t1-u2").await;
        import(&e, "t2", "u1", "token-t2-u1").await;
        assert_eq!(
            e.credential(&key("t1", "u1"))
                .await
                .unwrap()
                .secret
                .expose_secret(),
            "token-t1-u1"
        );
    }

    // Another tenant's ciphertext copied into t2's row: t2's key cannot open it.
    tamper(&path, "UPDATE connections SET credential = (SELECT credential FROM connections WHERE tenant_id='t1' AND user_id='u1') WHERE tenant_id='t2'");
    assert_eq!(
        credential_error(&path, "t2", "u1").await,
        ErrorCode::VaultIntegrity
    );

    // Another user's ciphertext in the same tenant: same key, but the AAD names another user.
    tamper(&path, "UPDATE connections SET credential = (SELECT credential FROM connections WHERE user_id='u1' AND tenant_id='t1') WHERE tenant_id='t1' AND user_id='u2'");
    assert_eq!(
        credential_error(&path, "t1", "u2").await,
        ErrorCode::VaultIntegrity
    );

    // One flipped bit, anywhere: in the header, the nonce, the ciphertext or the tag.
    let conn = Connection::open(&path).unwrap();
    let original: Vec<u8> = conn
        .query_row(
            "SELECT credential FROM connections WHERE tenant_id='t1' AND user_id='u1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    for byte in [0, 3, 10, 20, original.len() - 1] {
        let mut flipped = original.clone();
        flipped[byte] ^= 0x01;
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE connections SET credential = ?1 WHERE tenant_id='t1' AND user_id='u1'",
                [&flipped],
            )
            .unwrap();
        assert_eq!(
            credential_error(&path, "t1", "u1").await,
            ErrorCode::VaultIntegrity,
            "byte {byte}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_bit_in_a_wrapped_tenant_key_is_a_key_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrapped.db");
    import(&*engine(&path).await, "t1", "u1", "token").await;
    tamper(
        &path,
        "UPDATE tenant_keys SET wrapped = zeroblob(length(wrapped))",
    );
    assert_eq!(
        credential_error(&path, "t1", "u1").await,
        ErrorCode::VaultKeyMismatch
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_tenant_crypto_shreds_even_restored_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shred.db");
    let backup = dir.path().join("backup.db");
    {
        let e = engine(&path).await;
        import(&e, "doomed", "u1", "doomed-token").await;
        import(&e, "kept", "u1", "kept-token").await;
        // A backup of the connection rows (not of the key), as a replica or an export would hold.
        tamper(&path, &format!("VACUUM INTO '{}'", backup.display()));
        e.delete_tenant(&TenantId::parse("doomed").unwrap())
            .await
            .unwrap();
    }
    // Restore the deleted tenant's connection rows from the backup.
    tamper(
        &path,
        &format!(
            "ATTACH '{}' AS b; INSERT INTO connections SELECT * FROM b.connections WHERE tenant_id = 'doomed'; DETACH b;",
            backup.display()
        ),
    );
    let e = engine(&path).await;
    assert_eq!(
        e.credential(&key("doomed", "u1")).await.unwrap_err().code,
        ErrorCode::VaultKeyMissing
    );
    assert_eq!(
        e.credential(&key("kept", "u1"))
            .await
            .unwrap()
            .secret
            .expose_secret(),
        "kept-token"
    );

    // The wrapped key's bytes are gone from the live file (secure_delete + WAL truncate).
    let wrapped: Vec<u8> = Connection::open(&backup)
        .unwrap()
        .query_row(
            "SELECT wrapped FROM tenant_keys WHERE tenant_id = 'doomed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(e);
    let mut live = std::fs::read(&path).unwrap();
    for suffix in ["-wal", "-shm"] {
        live.extend(std::fs::read(format!("{}{suffix}", path.display())).unwrap_or_default());
    }
    assert!(
        !live.windows(wrapped.len()).any(|w| w == wrapped.as_slice()),
        "wrapped key still on disk"
    );
}
