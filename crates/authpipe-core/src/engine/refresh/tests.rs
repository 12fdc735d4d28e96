//! The refresh state machine, driven in-process.

use super::*;
use crate::engine::{open_shared, EngineOptions, MasterKeySource, StoreLocation};
use crate::ids::ConnectionKey;
use crate::ids::{ProviderId, TenantId, UserId};
use crate::vault::MasterKeyConfig;
use secrecy::SecretString;
use std::sync::Arc;

async fn engine() -> Arc<Engine> {
    let keys = MasterKeySource::Configured(vec![MasterKeyConfig {
        id: None,
        key: SecretString::from("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        retired: false,
    }]);
    let options = EngineOptions {
        store: StoreLocation::Memory,
        keys,
        clock: None,
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
