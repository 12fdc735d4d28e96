//! The SQLite store's own tests (the conformance tests in `tests/` run against both stores).

use super::feed::{poll_changes, FeedPosition, CHANGE_LOG_ROWS};
use super::*;
use crate::store::Change;

fn flow(hash: &str, expires_at: i64) -> FlowRecord {
    FlowRecord {
        state_hash: hash.to_owned(),
        key: ConnectionKey::parse("attio", "t", "u").unwrap(),
        verifier: None,
        redirect_uri: "https://app.example/cb".into(),
        scopes: vec![],
        browser_hash: None,
        created_at: 1_000,
        expires_at,
        consumed_at: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_is_taken_once_and_expires() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    store.put_flow(flow("fresh", 10_000)).await.unwrap();
    store.put_flow(flow("old", 10_000)).await.unwrap();

    // Concurrent callbacks with one state: exactly one wins.
    let takes = futures_take(&store, "fresh", 5_000, 8).await;
    assert_eq!(
        takes
            .iter()
            .filter(|t| matches!(t, FlowTake::Fresh(_)))
            .count(),
        1
    );
    assert_eq!(
        takes
            .iter()
            .filter(|t| matches!(t, FlowTake::Used(_)))
            .count(),
        7
    );

    assert!(matches!(
        store.take_flow("old", None, 10_000).await.unwrap(),
        FlowTake::Expired(_)
    ));
    assert!(matches!(
        store.take_flow("old", None, 10_000).await.unwrap(),
        FlowTake::Used(_)
    ));
    assert_eq!(
        store.take_flow("never-issued", None, 5_000).await.unwrap(),
        FlowTake::Unknown
    );
}

async fn futures_take(store: &Arc<SqliteStore>, hash: &str, now: i64, n: usize) -> Vec<FlowTake> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let hash = hash.to_owned();
            tokio::spawn(async move { store.take_flow(&hash, None, now).await.unwrap() })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[cfg(unix)]
#[test]
fn an_existing_store_file_and_its_wal_are_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loose.db");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let loosen =
        |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A store in use (another connection keeps its -wal and -shm), loosened as a copy or an
    // umask would leave it, then opened again.
    let first = SqliteStore::open(&path).unwrap();
    let wal = dir.path().join("loose.db-wal");
    let shm = dir.path().join("loose.db-shm");
    for p in [&path, &wal, &shm] {
        assert_eq!(mode(p), 0o600, "{} as created", p.display());
        loosen(p);
        assert_eq!(mode(p), 0o644);
    }
    let _again = SqliteStore::open(&path).unwrap();
    for p in [&path, &wal, &shm] {
        assert_eq!(mode(p), 0o600, "{} after opening again", p.display());
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_falls_behind_the_change_log_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let writer = SqliteStore::open(&path).unwrap();
    let reader = SqliteStore::open(&path).unwrap();
    writer
        .insert_tenant_key(TenantKeyRecord {
            tenant: TenantId::parse("t").unwrap(),
            generation: 1,
            master_key_id: "k".into(),
            wrapped: Sealed(vec![1; 60]),
            created_at: 1,
        })
        .await
        .unwrap();
    let mut position = reader.run(|conn| FeedPosition::now(conn)).await.unwrap();
    position.data_version = None;
    let records: Vec<_> = (0..=CHANGE_LOG_ROWS)
        .map(|i| {
            // Sealed with the tenant key's generation (1), as far as the store looks.
            let mut sealed = vec![1, 0, 0, 0, 1];
            sealed.resize(40, 0);
            let mut r = crate::cache::tests::record(&format!("u{i}"), 0, &sealed);
            r.key = ConnectionKey::parse("attio", "t", &format!("u{i}")).unwrap();
            r
        })
        .collect();
    writer.put_connections(records).await.unwrap();
    let changes = reader
        .run(move |conn| poll_changes(conn, &mut position))
        .await
        .unwrap();
    assert_eq!(
        changes[0],
        Change::Resync,
        "the oldest change was pruned unread"
    );
    assert_eq!(
        changes.len(),
        1 + CHANGE_LOG_ROWS as usize,
        "and the log kept its newest rows"
    );
}
