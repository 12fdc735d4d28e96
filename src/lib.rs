//! The napi binding of `@authpipe/node`: a thin shell over `authpipe-core`. It converts JS
//! values to core types and back and maps errors; the public API and its fast path live in
//! the TypeScript wrapper (`lib/`), which treats this module's exports as internal.

mod authpipe;
mod convert;
mod generation_pages;

use authpipe::NativeAuthpipe;
use authpipe_core::client::{Client, Connector};
use authpipe_core::engine::{open_shared, EngineOptions, MasterKeySource, StoreLocation};
use authpipe_core::providers::Catalog;
use authpipe_core::vault::MasterKeyConfig;
use convert::{IntoNapi, OpenInput};
use napi_derive::napi;
use secrecy::SecretString;
use std::time::Duration;

/// Default timeout of a call to a provider.
const DEFAULT_HTTP_TIMEOUT_MS: u32 = 15_000;
/// Default limit of concurrent calls per provider, and default health-probe interval.
const DEFAULT_PROVIDER_CONCURRENCY: u32 = 8;
const DEFAULT_HEALTH_CHECK_INTERVAL_MS: f64 = 3_600_000.0;

/// The instance's way to providers, from its options.
struct ConnectorOptions {
    timeout: Duration,
    concurrency: usize,
    health_interval_ms: Option<i64>,
}

/// The core's view of `new Authpipe()` options; the provider settings stay JSON.
fn options(
    input: OpenInput,
) -> authpipe_core::Result<(
    EngineOptions,
    serde_json::Map<String, serde_json::Value>,
    ConnectorOptions,
)> {
    let store = StoreLocation::parse(
        input
            .store
            .as_deref()
            .unwrap_or(StoreLocation::DEFAULT_PATH),
    )?;
    let keys = match input.master_keys {
        Some(keys) => MasterKeySource::Configured(
            keys.into_iter()
                .map(|k| MasterKeyConfig {
                    id: k.id,
                    key: SecretString::from(k.key),
                    retired: k.retired.unwrap_or(false),
                })
                .collect(),
        ),
        None => MasterKeySource::Development {
            production: input.production,
        },
    };
    let providers = match serde_json::from_str(&input.providers) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            return Err(authpipe_core::Error::invalid_argument(
                "providers must be an object of provider id -> settings",
            ))
        }
    };
    let connector = ConnectorOptions {
        timeout: Duration::from_millis(
            input
                .http_timeout_ms
                .unwrap_or(DEFAULT_HTTP_TIMEOUT_MS)
                .clamp(1, 120_000)
                .into(),
        ),
        concurrency: input
            .provider_concurrency
            .unwrap_or(DEFAULT_PROVIDER_CONCURRENCY)
            .max(1) as usize,
        health_interval_ms: match input
            .health_check_interval_ms
            .unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL_MS)
        {
            ms if ms >= 1.0 && ms.is_finite() => Some(ms as i64),
            _ => None,
        },
    };
    Ok((
        EngineOptions {
            store,
            keys,
            clock: None,
        },
        providers,
        connector,
    ))
}

/// Checks options synchronously, so `new Authpipe()` can throw for them.
#[napi(catch_unwind)]
pub fn check_options(input: OpenInput) -> napi::Result<()> {
    let (options, providers, _) = options(input).napi()?;
    authpipe_core::engine::check_options(&options).napi()?;
    Catalog::check(&providers).napi()
}

/// Opens (or joins) the engine for the configured store and returns an instance handle.
#[napi]
pub async fn open(input: OpenInput) -> napi::Result<NativeAuthpipe> {
    let (options, providers, connector) = options(input).napi()?;
    let http = authpipe_core::connect::http::client(connector.timeout).napi()?;
    let catalog = Catalog::discover(providers, &http).await.napi()?;
    let opened = open_shared(options).await.napi()?;
    let connector = Connector::new(
        catalog,
        http,
        connector.timeout,
        connector.concurrency,
        connector.health_interval_ms,
    );
    Ok(NativeAuthpipe::new(
        Client::new(opened.engine, connector),
        opened.dev_key,
    ))
}

/// Panics inside Rust, for the test that proves a panic becomes a JS error, not an abort.
/// Only with the `test-hooks` feature (`npm run build:debug`, the tests' build): the builds
/// that ship do not enable it, so they export no such call.
#[cfg(feature = "test-hooks")]
#[napi(catch_unwind)]
pub fn test_only_panic(message: String) {
    panic!("{message}");
}

/// The same, inside an async call.
#[cfg(feature = "test-hooks")]
#[napi]
pub async fn test_only_panic_async(message: String) -> napi::Result<()> {
    panic!("{message}");
}
