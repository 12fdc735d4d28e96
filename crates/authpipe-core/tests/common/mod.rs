//! What the integration tests share. (Each test crate uses a part of it.)
#![allow(dead_code)]

use authpipe_core::MasterKeyConfig;
use authpipe_core::{http_client, Catalog, Client, Connector, ConnectorSettings};
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
        key_rotation: Default::default(),
    })
    .await
    .unwrap()
    .engine
}

/// An instance on `engine` for the providers in `settings`, whose provider calls time out after
/// `timeout` (its HTTP client and its refresh lease agree on it).
pub fn client(
    engine: Arc<Engine>,
    settings: &serde_json::Map<String, serde_json::Value>,
    timeout: std::time::Duration,
) -> Client {
    let settings_of_calls = ConnectorSettings {
        timeout,
        concurrency: 4,
        health_interval_ms: None,
    };
    let connector = Connector::new(
        Catalog::from_settings(settings).unwrap(),
        http_client(timeout).unwrap(),
        settings_of_calls,
    );
    Client::new(engine, connector)
}
