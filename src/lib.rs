//! The napi binding of `@authpipe/node`: a thin shell over `authpipe-core`. It converts JS
//! values to core types and back and maps errors; the public API and its fast path live in
//! the TypeScript wrapper (`lib/`), which treats this module's exports as internal.

mod authpipe;
mod convert;
mod generation_pages;

use authpipe::NativeAuthpipe;
use authpipe_core::client::Client;
use authpipe_core::engine::{open_shared, EngineOptions, MasterKeySource, StoreLocation};
use authpipe_core::providers::Catalog;
use authpipe_core::vault::MasterKeyConfig;
use convert::{IntoNapi, OpenInput};
use napi_derive::napi;
use secrecy::SecretString;
use std::time::Duration;

/// Default timeout of a call to a provider.
const DEFAULT_HTTP_TIMEOUT_MS: u32 = 15_000;

/// The core's view of `new Authpipe()` options; the provider settings stay JSON.
fn options(
    input: OpenInput,
) -> authpipe_core::Result<(
    EngineOptions,
    serde_json::Map<String, serde_json::Value>,
    Duration,
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
    let timeout = Duration::from_millis(
        input
            .http_timeout_ms
            .unwrap_or(DEFAULT_HTTP_TIMEOUT_MS)
            .clamp(1, 120_000)
            .into(),
    );
    Ok((
        EngineOptions {
            store,
            keys,
            clock: None,
        },
        providers,
        timeout,
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
    let (options, providers, timeout) = options(input).napi()?;
    let http = authpipe_core::connect::http::client(timeout).napi()?;
    let catalog = Catalog::discover(providers, &http).await.napi()?;
    let opened = open_shared(options).await.napi()?;
    Ok(NativeAuthpipe::new(
        Client::new(opened.engine, catalog, http),
        opened.dev_key,
    ))
}

/// Panics inside Rust, for the test that proves a panic becomes a JS error, not an abort.
#[napi(catch_unwind)]
pub fn test_only_panic(message: String) {
    panic!("{message}");
}

/// The same, inside an async call.
#[napi]
pub async fn test_only_panic_async(message: String) -> napi::Result<()> {
    panic!("{message}");
}
