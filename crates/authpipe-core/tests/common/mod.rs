//! What the integration tests share.

use authpipe_core::MasterKeyConfig;
use authpipe_core::{open_shared, Engine, EngineOptions, MasterKeySource, StoreLocation};
use secrecy::SecretString;
use std::sync::Arc;

/// An engine on a private in-memory store, under a fixed test master key.
pub async fn memory_engine() -> Arc<Engine> {
    let keys = MasterKeySource::Configured(vec![MasterKeyConfig {
        id: None,
        key: SecretString::from("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        retired: false,
    }]);
    open_shared(EngineOptions {
        store: StoreLocation::Memory,
        keys,
        clock: None,
    })
    .await
    .unwrap()
    .engine
}
