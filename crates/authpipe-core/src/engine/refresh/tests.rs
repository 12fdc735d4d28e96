//! The refresh state machine, driven in-process.

use super::*;
use crate::engine::{open_shared, EngineOptions, StoreLocation};
use crate::ids::ConnectionKey;
use crate::ids::{ProviderId, TenantId, UserId};
use crate::test_support::test_keys;
use std::sync::Arc;

async fn engine() -> Arc<Engine> {
    let options = EngineOptions {
        store: StoreLocation::Memory,
        keys: test_keys(),
        clock: None,
        key_rotation: Default::default(),
    };
    open_shared(options).await.unwrap().engine
}

fn unknown(i: usize) -> ConnectionKey {
    ConnectionKey::new(
        ProviderId::parse("attio").unwrap(),
        TenantId::parse(format!("tenant_{i}")).unwrap(),
        UserId::parse("nobody").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_flight_map_keeps_no_entry_for_connections_not_being_refreshed() {
    let engine = engine().await;
    for i in 0..500 {
        let err = engine
            .refresh(&unknown(i), RefreshReason::Forced)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ConnectionNotFound);
    }
    // Many callers queued on one connection at once: the entry goes with the last of them.
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.refresh(&unknown(0), RefreshReason::Stale).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().is_err());
    }
    assert_eq!(engine.refreshes.single_flight_entries(), 0);
}

// The state machine against a provider on loopback, under a manual clock. A token lives an
// hour: stale (refresh first) 5 minutes before expiry, usable until 1 s before it.

use crate::error::ErrorCode;
use crate::events::EventKind;
use crate::records::{ConnectionStatus, LastError};
use crate::test_support::{Fixture, Reply};
use secrecy::ExposeSecret;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;
/// From a fresh one-hour token to a moment past its stale point, before its expiry.
const TO_STALE_MS: i64 = HOUR_MS - 200_000;

/// The next event `wanted` accepts (failing, not hanging, if none comes).
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<crate::events::Event>,
    wanted: impl Fn(EventKind) -> bool,
) -> crate::events::Event {
    let find = async {
        loop {
            let event = events.recv().await.unwrap();
            if wanted(event.kind) {
                return event;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), find)
        .await
        .expect("the event did not come")
}

fn error_code(record: &ConnectionRecord) -> Option<String> {
    record
        .last_error
        .as_ref()
        .map(|e: &LastError| e.code.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_a_stale_token_share_one_refresh_whose_rotated_token_is_stored_first() {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    f.provider.reply([Reply::tokens(1, 3600)]);
    f.provider.close_gate();
    f.clock.advance(TO_STALE_MS);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (engine, key) = (f.engine.clone(), f.key());
            tokio::spawn(async move { engine.credential(&key).await })
        })
        .collect();
    f.provider.received(1).await;
    f.provider.open_gate();
    for caller in callers {
        let credential = caller.await.unwrap().unwrap();
        assert_eq!(credential.secret.expose_secret(), "at-1");
    }
    assert_eq!(f.provider.token_requests().len(), 1);
    assert!(f.provider.token_requests()[0]
        .body
        .contains("refresh_token=rt-0"));
    let stored = f.stored().await;
    let secrets = f.engine.secrets_of(&stored).await.unwrap();
    assert_eq!(secrets.refresh_token.unwrap().expose_secret(), "rt-1");
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert_eq!(stored.expires_at, Some(f.engine.now_ms() + HOUR_MS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_backs_off_serving_the_usable_token_and_retries_once_it_is_due() {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    f.provider
        .reply([Reply::error(503, "temporarily_unavailable")]);
    f.clock.advance(TO_STALE_MS);
    assert_eq!(f.served().await.unwrap(), "at-0");
    let stored = f.stored().await;
    assert_eq!(stored.status, ConnectionStatus::Degraded);
    assert_eq!(
        error_code(&stored).as_deref(),
        Some("temporarily_unavailable")
    );
    let now = f.engine.now_ms();
    let cache_key = f.key().cache_key();
    // The first retry comes after 0.5 to 1 s (1 s, jittered down by up to half).
    assert!(f.engine.refreshes.backing_off(&cache_key, now + 499));
    assert!(!f.engine.refreshes.backing_off(&cache_key, now + 1_000));

    // Inside the backoff, callers are served the usable token and send nothing.
    for _ in 0..5 {
        assert_eq!(f.served().await.unwrap(), "at-0");
    }
    assert_eq!(f.provider.token_requests().len(), 1);

    // The second failure doubles the step: 1 to 2 s. (Replies are queued before the clock
    // moves: the retry the scheduler holds may fire the moment it does.)
    f.provider.reply([Reply::error(500, "server_error")]);
    f.clock.advance(1_000);
    assert_eq!(f.served().await.unwrap(), "at-0");
    assert_eq!(f.provider.token_requests().len(), 2);
    let now = f.engine.now_ms();
    assert!(f.engine.refreshes.backing_off(&cache_key, now + 999));
    assert!(!f.engine.refreshes.backing_off(&cache_key, now + 2_000));

    f.provider.reply([Reply::tokens(1, 3600)]);
    f.clock.advance(2_000);
    assert_eq!(f.served().await.unwrap(), "at-1");
    assert_eq!(f.provider.token_requests().len(), 3);
    assert_eq!(f.stored().await.status, ConnectionStatus::Active);
    assert!(!f.engine.refreshes.failing(&f.key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_next_attempt_back_to_the_millisecond() {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    f.provider.reply([Reply::Json {
        status: 429,
        body: serde_json::json!({ "error": "rate_limited" }),
        retry_after: Some("120"),
    }]);
    f.clock.advance(TO_STALE_MS);
    assert_eq!(f.served().await.unwrap(), "at-0");
    let failed_at = f.engine.now_ms();
    let cache_key = f.key().cache_key();
    assert!(f
        .engine
        .refreshes
        .backing_off(&cache_key, failed_at + 119_999));
    assert!(!f
        .engine
        .refreshes
        .backing_off(&cache_key, failed_at + 120_000));
    assert_eq!(
        error_code(&f.stored().await).as_deref(),
        Some("rate_limited")
    );

    f.clock.advance(119_999);
    assert_eq!(f.served().await.unwrap(), "at-0");
    assert_eq!(f.provider.token_requests().len(), 1);
    f.provider.reply([Reply::tokens(1, 3600)]);
    f.clock.advance(1);
    assert_eq!(f.served().await.unwrap(), "at-1");
    assert_eq!(f.provider.token_requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_may_have_reached_the_provider_is_not_sent_again_at_once_nor_taken_for_revoked(
) {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    f.provider.reply([Reply::BreakOff]);
    f.clock.advance(TO_STALE_MS);
    assert_eq!(f.served().await.unwrap(), "at-0");
    let stored = f.stored().await;
    assert_eq!(stored.status, ConnectionStatus::Degraded);
    assert_eq!(
        error_code(&stored).as_deref(),
        Some("refresh_outcome_unknown")
    );
    for _ in 0..5 {
        assert_eq!(f.served().await.unwrap(), "at-0");
    }
    assert_eq!(f.provider.token_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_or_refused_refresh_yields_to_tokens_another_writer_stored_meanwhile() {
    for reply in [Reply::BreakOff, Reply::error(400, "invalid_grant")] {
        let f = Fixture::start().await;
        f.connect(HOUR_MS).await;
        f.provider.reply([reply.clone()]);
        f.provider.close_gate();
        f.clock.advance(TO_STALE_MS);
        let refresh = {
            let (engine, key) = (f.engine.clone(), f.key());
            tokio::spawn(async move { engine.refresh(&key, RefreshReason::Forced).await })
        };
        f.provider.received(1).await;
        // Another process refreshed (or the app imported) while our request was out.
        f.store_tokens("at-elsewhere", "rt-elsewhere", HOUR_MS)
            .await;
        f.provider.open_gate();
        let after = refresh.await.unwrap().unwrap();
        assert_eq!(after.status, ConnectionStatus::Active, "{reply:?}");
        assert_eq!(after.last_error, None, "{reply:?}");
        assert_eq!(f.served().await.unwrap(), "at-elsewhere", "{reply:?}");
        assert!(!f.engine.refreshes.failing(&f.key()), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_on_the_current_token_revokes_the_connection_with_an_event() {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    let mut events = f.engine.subscribe();
    f.provider.reply([Reply::error(400, "invalid_grant")]);
    f.clock.advance(TO_STALE_MS);
    let err = f.served().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ConnectionRevoked);
    let stored = f.stored().await;
    assert_eq!(stored.status, ConnectionStatus::Revoked);
    assert_eq!(error_code(&stored).as_deref(), Some("invalid_grant"));
    let revoked = next_event(&mut events, |kind| kind != EventKind::Created).await;
    assert_eq!(revoked.kind, EventKind::Revoked);
    // Revoked is final: no further request, whatever the caller does.
    f.clock.advance(HOUR_MS);
    assert_eq!(
        f.served().await.unwrap_err().code,
        ErrorCode::ConnectionRevoked
    );
    assert_eq!(f.provider.token_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_refresh_stands_by_while_another_process_holds_the_lease_and_takes_over_when_it_lapses(
) {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    f.clock.advance(TO_STALE_MS);
    let now = f.engine.now_ms();
    // Another process took the lease and died; it lapses 300 ms from now.
    let key = f.key();
    let held = crate::store::Lease {
        key: &key,
        purpose: LeasePurpose::Refresh,
        owner: "another-process",
        until: now + 300,
    };
    assert_eq!(
        f.engine.store.try_lease(held, now).await.unwrap(),
        LeaseTake::Acquired
    );
    let before = f
        .engine
        .refresh(&key, RefreshReason::Scheduled)
        .await
        .unwrap();
    assert_eq!(before.credential, f.stored().await.credential);
    assert_eq!(f.provider.token_requests().len(), 0);

    // The holder never writes. Once its lease lapses, the retry the standby scheduled for that
    // moment refreshes.
    let mut events = f.engine.subscribe();
    f.provider.reply([Reply::tokens(1, 3600)]);
    f.clock.advance(301);
    let refreshed = next_event(&mut events, |kind| kind == EventKind::Refreshed).await;
    assert_eq!(refreshed.key, key);
    assert_eq!(f.provider.token_requests().len(), 1);
    assert_eq!(f.served().await.unwrap(), "at-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_flight_while_the_tenant_key_rotates_stores_its_tokens_under_the_new_key() {
    let f = Fixture::start().await;
    f.connect(HOUR_MS).await;
    f.provider.reply([Reply::tokens(1, 3600)]);
    f.provider.close_gate();
    f.clock.advance(TO_STALE_MS);
    let caller = {
        let (engine, key) = (f.engine.clone(), f.key());
        tokio::spawn(async move { engine.credential(&key).await })
    };
    f.provider.received(1).await;
    // The row is re-sealed under the lease, and the old key deleted, while the provider answers.
    let rotation = f.engine.rotate_tenant_key(&f.key().tenant).await.unwrap();
    assert_eq!((rotation.generation, rotation.resealed), (2, 1));
    f.provider.open_gate();
    let credential = caller.await.unwrap().unwrap();
    assert_eq!(credential.secret.expose_secret(), "at-1");
    let stored = f.stored().await;
    assert_eq!(
        crate::vault::sealed_generation(&stored.credential).unwrap(),
        2
    );
    let secrets = f.engine.secrets_of(&stored).await.unwrap();
    assert_eq!(secrets.refresh_token.unwrap().expose_secret(), "rt-1");
}
