//! A reload of what other processes changed never puts back what this process deleted.

mod processes;

use authpipe_core::open_unshared;
use authpipe_core::ErrorCode;
use processes::{conn, eventually, import, key, token, Backend, HeldFeed, K1};
use std::time::Duration;

/// B follows A's writes. A stores a new token; B's reload reads that row and is held there
/// while B deletes the connection. When the reload goes on, the deleted connection must not
/// come back into B's cache (on PostgreSQL a process hears its own writes, so this is also the
/// path by which `importConnection`, `deleteConnection`, `getCredential` in a row could serve
/// the deleted token).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_read_before_a_deletion_does_not_bring_the_connection_back() {
    let keys = [key("k1", K1)];
    for backend in Backend::all().await {
        let name = backend.name();
        let a = backend.engine(&keys).await.unwrap();
        let b_store = HeldFeed::new(backend.store().await);
        let b = open_unshared(b_store.clone(), &keys, None).await.unwrap();
        let key = conn("t", "u1");
        import(&a, &key, "first").await.unwrap();
        assert_eq!(token(&b, &key).await.unwrap(), "first", "{name}");

        let mut held = b_store.hold_reads();
        import(&a, &key, "second").await.unwrap();
        held.recv().await.expect("B's reload of A's write");
        // The deletion's own change must not tidy up after the reload before B is asked.
        b_store.hold();

        let mut deletion = tokio::spawn({
            let (b, key) = (b.clone(), key.clone());
            async move { b.delete_connection(&key).await }
        });
        eventually("the deletion reached the store", || async {
            a.stored_connection(&key).await.unwrap().is_none()
        })
        .await;
        // Unfixed, the deletion has finished by now (it only had its cache left to clear);
        // fixed, it waits for the held reload. Either way it gets a moment before the release.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut deletion).await;
        b_store.release_reads();
        let deleted = match early {
            Ok(done) => done.unwrap().unwrap(),
            Err(_) => deletion.await.unwrap().unwrap(),
        };
        assert!(deleted, "{name}");

        let err = token(&b, &key).await.unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::ConnectionNotFound,
            "{name}: {}",
            err.message
        );
        b_store.release();
        drop((a, b));
        backend.clean_up().await;
    }
}
