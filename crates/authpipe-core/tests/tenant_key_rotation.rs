//! Tenant data-key rotation, online, on SQLite and PostgreSQL: readers (in this process and in
//! another that has not heard of the rotation) never see an error while it runs, writers still
//! holding the old key re-seal with the new one, the old key goes once nothing needs it; the
//! automatic policy; and one field put back to an older ciphertext is refused.

mod processes;

use authpipe_core::store::SecretKey;
use authpipe_core::ErrorCode;
use authpipe_core::{open_unshared, KeyRotationPolicy, ManualClock, SecretName};
use processes::{conn, import, key, tenant, token, Backend, K1};
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const USERS: usize = 40;

#[tokio::test(flavor = "multi_thread")]
async fn readers_never_see_an_error_while_a_tenant_key_rotates() {
    for backend in Backend::all().await {
        let name = backend.name();
        let rotator = backend.engine(&[key("k1", K1)]).await.unwrap();
        // Another process: it loads generation 1 now and is never told of the rotation.
        let other = backend.engine(&[key("k1", K1)]).await.unwrap();
        let users: Vec<_> = (0..USERS).map(|i| conn("t", &format!("u{i}"))).collect();
        for user in &users {
            import(&rotator, user, &format!("{user}-0")).await.unwrap();
        }
        let secret = SecretKey {
            tenant: tenant("t"),
            provider: None,
            name: SecretName::parse("webhook").unwrap(),
        };
        rotator
            .set_secret(&secret, &SecretString::from("s3cret"))
            .await
            .unwrap();
        for user in &users {
            token(&other, user).await.unwrap();
        }

        let rotating = Arc::new(AtomicBool::new(true));
        let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for engine in [rotator.clone(), other.clone()] {
            // A reader of every connection and the secret, in a loop.
            let (all, running, read, secret) = (
                users.clone(),
                rotating.clone(),
                reads.clone(),
                secret.clone(),
            );
            let engine2 = engine.clone();
            tasks.push(tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    for user in &all {
                        let served = token(&engine2, user).await.unwrap_or_else(|e| {
                            panic!("{name}: reading {user} during the rotation: {e}")
                        });
                        assert!(served.starts_with(&user.to_string()), "{served}");
                        read.fetch_add(1, Ordering::Relaxed);
                    }
                    let value = engine2.secret(&secret).await.unwrap();
                    assert_eq!(value.expose_secret(), "s3cret");
                }
            }));
            // A writer that keeps replacing tokens (what a refresh stores), with whatever key
            // it holds: the other process's is generation 1 until the store refuses it.
            let (all, running, written) = (users.clone(), rotating.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut round = 1;
                while running.load(Ordering::Relaxed) {
                    let user = &all[round % all.len()];
                    import(&engine, user, &format!("{user}-{round}"))
                        .await
                        .unwrap_or_else(|e| panic!("{name}: writing {user}: {e}"));
                    written.fetch_add(1, Ordering::Relaxed);
                    round += 1;
                }
            }));
        }

        processes::eventually("readers and writers under way", || {
            let (reads, writes) = (reads.clone(), writes.clone());
            async move { reads.load(Ordering::Relaxed) > 0 && writes.load(Ordering::Relaxed) > 0 }
        })
        .await;
        let rotation = rotator.rotate_tenant_key(&tenant("t")).await.unwrap();
        rotating.store(false, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(rotation.generation, 2, "{name}");
        assert!(
            rotation.resealed >= 1,
            "{name}: {rotation:?} (the writers may have re-sealed some first)"
        );

        // Nothing is left under the old key, and the old key is gone.
        let store = backend.store().await;
        assert!(
            store.older_tenant_keys().await.unwrap().is_empty(),
            "{name}"
        );
        assert!(store
            .rows_sealed_otherwise(&tenant("t"), 2, 1_000)
            .await
            .unwrap()
            .is_empty());
        // A process opened now (no key in memory) reads everything, the latest values.
        let fresh = backend.engine(&[key("k1", K1)]).await.unwrap();
        // And the two that ran through it follow the store (through its change feed).
        for engine in [&other, &rotator] {
            for user in &users {
                let latest = token(&fresh, user).await.unwrap();
                processes::eventually("the latest token is served", || {
                    let latest = latest.clone();
                    async move { token(engine, user).await.unwrap() == latest }
                })
                .await;
            }
        }
        assert_eq!(
            fresh.secret(&secret).await.unwrap().expose_secret(),
            "s3cret"
        );
        // Rotating a tenant that has no key says so.
        assert_eq!(
            rotator
                .rotate_tenant_key(&tenant("nobody"))
                .await
                .unwrap_err()
                .code,
            ErrorCode::TenantNotFound
        );
        drop((rotator, other, fresh, store));
        backend.clean_up().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_rotates_by_count_of_values_sealed_and_by_age() {
    for backend in Backend::all().await {
        let name = backend.name();
        let clock = Arc::new(ManualClock::new(processes::now_ms()));
        let engine = open_unshared(backend.store().await, &[key("k1", K1)], Some(clock.clone()))
            .await
            .unwrap();
        engine.set_key_rotation_policy(KeyRotationPolicy {
            max_age_ms: None,
            max_encryptions: Some(5),
        });
        for user in ["a", "b"] {
            import(&engine, &conn("t", user), user).await.unwrap();
        }
        let store = backend.store().await;
        let usage = store.tenant_key_usage().await.unwrap();
        assert_eq!(
            usage[0].encryptions, 4,
            "{name}: two tokens each, counted in the store"
        );
        assert!(engine.maintain_tenant_keys_now().await.unwrap().is_empty());
        import(&engine, &conn("t", "c"), "c").await.unwrap();
        let rotations = engine.maintain_tenant_keys_now().await.unwrap();
        assert_eq!(rotations.len(), 1, "{name}: 6 values sealed, over 5");
        assert_eq!((rotations[0].generation, rotations[0].resealed), (2, 3));
        let usage = store.tenant_key_usage().await.unwrap();
        assert_eq!(
            (usage[0].generation, usage[0].encryptions),
            (2, 6),
            "{name}: the new key counts from its re-seal"
        );

        // By age: nothing is due until the key is 30 days old.
        engine.set_key_rotation_policy(KeyRotationPolicy {
            max_age_ms: Some(30 * 24 * 3600 * 1000),
            max_encryptions: None,
        });
        clock.advance(29 * 24 * 3600 * 1000);
        assert!(engine.maintain_tenant_keys_now().await.unwrap().is_empty());
        clock.advance(24 * 3600 * 1000);
        let rotations = engine.maintain_tenant_keys_now().await.unwrap();
        assert_eq!(rotations[0].generation, 3, "{name}");
        let record = engine
            .stored_connection(&conn("t", "a"))
            .await
            .unwrap()
            .unwrap();
        let secrets = engine.secrets_of(&record).await.unwrap();
        assert_eq!(secrets.credential.expose_secret(), "a");
        drop((engine, store));
        backend.clean_up().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_field_put_back_to_an_older_ciphertext_fails_integrity() {
    for backend in Backend::all().await {
        let name = backend.name();
        let engine = backend.engine(&[key("k1", K1)]).await.unwrap();
        let user = conn("t", "u");
        import(&engine, &user, "first").await.unwrap();
        backend
            .execute(
                "CREATE TABLE saved AS SELECT refresh_token FROM connections WHERE user_id = 'u'",
            )
            .await;
        // The row is written again (a refresh would do the same): new tokens, one new write.
        import(&engine, &user, "second").await.unwrap();
        assert_eq!(token(&engine, &user).await.unwrap(), "second");
        backend
            .execute(
                "UPDATE connections SET refresh_token = (SELECT refresh_token FROM saved) WHERE user_id = 'u'",
            )
            .await;
        let fresh = backend.engine(&[key("k1", K1)]).await.unwrap();
        let err = fresh.credential(&user).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::VaultIntegrity, "{name}: {err}");
        assert!(err.message.contains("not written together"), "{err}");
        let record = fresh.stored_connection(&user).await.unwrap().unwrap();
        assert_eq!(
            fresh.secrets_of(&record).await.err().map(|e| e.code),
            Some(ErrorCode::VaultIntegrity),
            "{name}: the refresh would not use the old refresh token either"
        );
        drop((engine, fresh));
        backend.clean_up().await;
    }
}
