#![allow(dead_code)] // each target uses a part of it
//! One instance for the targets that go through the public API: an engine on a private
//! in-memory store, and providers whose endpoints are a closed loopback port, so that a
//! callback that passes every check fails at the exchange without leaving the machine.

use authpipe_core::{
    http_client, open_shared, Catalog, Client, Connector, ConnectorSettings, EngineOptions,
    MasterKeyConfig, MasterKeySource, StoreLocation,
};
use secrecy::SecretString;
use std::time::Duration;

/// Nothing listens on the discard port: a request there is refused at once.
pub const CLOSED: &str = "http://127.0.0.1:9";
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
pub const ISSUER: &str = "https://issuer.fuzz.test";
/// The providers flows are started for: a custom one with an issuer (RFC 9207 `iss`), and two
/// built-ins whose endpoints are overridden (Zoho reads `accounts-server` from the callback).
pub const PROVIDERS: [&str; 3] = ["fuzz", "attio", "zoho"];

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

pub async fn client() -> Client {
    let keys = MasterKeySource::Configured(vec![MasterKeyConfig {
        id: None,
        key: SecretString::from("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        retired: false,
    }]);
    let engine = open_shared(EngineOptions {
        store: StoreLocation::Memory,
        keys,
        clock: None,
        key_rotation: Default::default(),
    })
    .await
    .expect("an in-memory engine")
    .engine;
    let endpoints = |extra: serde_json::Value| {
        let mut settings = serde_json::json!({
            "clientId": "fuzz-client",
            "clientSecret": "fuzz-client-secret",
            "redirectUri": REDIRECT_URI,
            "authorizeUrl": format!("{CLOSED}/authorize"),
            "tokenUrl": format!("{CLOSED}/token"),
            "revokeUrl": format!("{CLOSED}/revoke"),
        });
        settings
            .as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        settings
    };
    let settings = serde_json::json!({
        "fuzz": endpoints(serde_json::json!({ "issuer": ISSUER, "issParameterSupported": true, "pkce": true })),
        "attio": endpoints(serde_json::json!({ "identityUrl": format!("{CLOSED}/identity") })),
        "zoho": endpoints(serde_json::json!({ "identityUrl": format!("{CLOSED}/identity") })),
    });
    let timeout = Duration::from_millis(200);
    let connector = Connector::new(
        Catalog::from_settings(settings.as_object().expect("an object")).expect("valid settings"),
        http_client(timeout).expect("an HTTP client"),
        ConnectorSettings {
            timeout,
            concurrency: 4,
            health_interval_ms: None,
        },
    );
    Client::new(engine, connector)
}

/// An instance and a few things it issued (started flows, connect sessions) that inputs name by
/// index, so the fuzzer gets past the check that they are ours; one used up is issued anew.
pub struct Issued<T> {
    pub runtime: tokio::runtime::Runtime,
    pub client: Client,
    items: std::sync::Mutex<Vec<T>>,
    issue: fn(&tokio::runtime::Runtime, &Client, usize) -> T,
}

impl<T: Clone> Issued<T> {
    pub fn new(count: usize, issue: fn(&tokio::runtime::Runtime, &Client, usize) -> T) -> Self {
        let runtime = runtime();
        let client = runtime.block_on(self::client());
        let items = (0..count).map(|n| issue(&runtime, &client, n)).collect();
        Self {
            runtime,
            client,
            items: std::sync::Mutex::new(items),
            issue,
        }
    }

    /// The item an input's index names, and its slot.
    pub fn get(&self, index: usize) -> (usize, T) {
        let items = self.items.lock().unwrap();
        let slot = index % items.len();
        (slot, items[slot].clone())
    }

    /// Issues the slot's item again (its predecessor may have been used up).
    pub fn reissue(&self, slot: usize) {
        let fresh = (self.issue)(&self.runtime, &self.client, slot);
        self.items.lock().unwrap()[slot] = fresh;
    }
}
