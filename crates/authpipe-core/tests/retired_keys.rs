//! A master key that another process retired never wraps a tenant key again, so no process
//! still configured with it can leave the store unopenable; and a store already left so is
//! repaired with the retired key configured for unwrapping only.

mod processes;

use authpipe_core::ErrorCode;
use processes::{all_open, conn, import, key, retired_key, token, Backend, K1, K2};

#[tokio::test(flavor = "multi_thread")]
async fn a_process_left_with_a_retired_key_wraps_no_new_tenant_key() {
    for backend in Backend::all().await {
        let name = backend.name();
        let old = backend.engine(&[key("k1", K1)]).await.unwrap();
        import(&old, &conn("t1", "u1"), "t1-token").await.unwrap();
        let current = backend
            .engine(&[key("k2", K2), key("k1", K1)])
            .await
            .unwrap();
        assert_eq!(current.rotate_master_key().await.unwrap().rewrapped, 1);
        current.retire_master_key("k1").await.unwrap();

        // `old` never heard of k2: a new tenant's key would be wrapped with the retired k1.
        let err = import(&old, &conn("t2", "u1"), "t2-token")
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::VaultKeyMismatch, "{name}: {err}");
        assert!(
            err.message.contains("retired by another instance") && err.message.contains("'k2'"),
            "{}",
            err.message
        );

        // Nothing was written: the store opens with k2 alone and holds t1 only.
        drop((old, current));
        let fresh = backend.engine(&[key("k2", K2)]).await.unwrap();
        assert_eq!(token(&fresh, &conn("t1", "u1")).await.unwrap(), "t1-token");
        assert_eq!(all_open(&fresh, "t2").await.unwrap(), 0, "{name}");
        drop(fresh);
        backend.clean_up().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_process_rotating_cannot_rewrap_onto_a_retired_key() {
    for backend in Backend::all().await {
        let name = backend.name();
        // Configured before the rotation was decided: k1 first.
        let old = backend
            .engine(&[key("k1", K1), key("k2", K2)])
            .await
            .unwrap();
        import(&old, &conn("t1", "u1"), "t1-token").await.unwrap();
        let current = backend
            .engine(&[key("k2", K2), key("k1", K1)])
            .await
            .unwrap();
        current.rotate_master_key().await.unwrap();
        current.retire_master_key("k1").await.unwrap();

        let err = old.rotate_master_key().await.unwrap_err();
        assert_eq!(err.code, ErrorCode::VaultKeyMismatch, "{name}: {err}");

        drop((old, current));
        let fresh = backend.engine(&[key("k2", K2)]).await.unwrap();
        assert_eq!(token(&fresh, &conn("t1", "u1")).await.unwrap(), "t1-token");
        drop(fresh);
        backend.clean_up().await;
    }
}

/// A store an older version left broken: k1 retired by one instance while another still wrapped
/// a new tenant key with it. No configuration opened it; configuring k1 `retired` does, and a
/// rotation moves that tenant key to k2, after which k2 alone opens it.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_left_with_a_tenant_key_wrapped_by_a_retired_key_is_repaired() {
    for backend in Backend::all().await {
        let name = backend.name();
        {
            let old = backend.engine(&[key("k1", K1)]).await.unwrap();
            import(&old, &conn("t1", "u1"), "t1-token").await.unwrap();
            let current = backend
                .engine(&[key("k2", K2), key("k1", K1)])
                .await
                .unwrap();
            import(&current, &conn("t2", "u1"), "t2-token")
                .await
                .unwrap();
        }
        // The state the store now refuses to make: k1 retired while it still wraps t1's key.
        backend
            .execute("UPDATE master_keys SET retired_at = 1 WHERE id = 'k1'")
            .await;

        let err = backend.engine(&[key("k2", K2)]).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::VaultKeyMismatch, "{name}: {err}");
        let err = backend
            .engine(&[key("k2", K2), key("k1", K1)])
            .await
            .unwrap_err();
        assert!(err.message.contains("retired: true"), "{name}: {err}");
        let err = backend
            .engine(&[retired_key("k1", K1), key("k2", K2)])
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{name}: {err}");

        let repair = backend
            .engine(&[key("k2", K2), retired_key("k1", K1)])
            .await
            .unwrap();
        assert_eq!(token(&repair, &conn("t1", "u1")).await.unwrap(), "t1-token");
        let rotation = repair.rotate_master_key().await.unwrap();
        assert_eq!((rotation.rewrapped, rotation.already_current), (1, 1));
        repair.retire_master_key("k1").await.unwrap();
        repair.retire_master_key("k1").await.unwrap();
        drop(repair);

        let repaired = backend.engine(&[key("k2", K2)]).await.unwrap();
        for t in ["t1", "t2"] {
            assert_eq!(all_open(&repaired, t).await.unwrap(), 1, "{name}");
        }
        assert_eq!(
            token(&repaired, &conn("t1", "u1")).await.unwrap(),
            "t1-token"
        );
        drop(repaired);
        backend.clean_up().await;
    }
}
