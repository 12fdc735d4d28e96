//! The napi binding of `@authpipe/node`: a thin shell over `authpipe-core`. It converts JS
//! values to core types and back and maps errors; the public API and its fast path live in
//! the TypeScript wrapper (`lib/`), which treats this module's exports as internal.

mod authpipe;
mod convert;
mod forward;
mod generation_pages;
mod telemetry;

use authpipe::NativeAuthpipe;
use authpipe_core::Catalog;
use authpipe_core::MasterKeyConfig;
use authpipe_core::{
    open_shared, EngineOptions, KeyRotationPolicy, MasterKeySource, StoreLocation,
};
use authpipe_core::{Client, Connector, ConnectorOptions, ConnectorSettings};
use convert::{IntoNapi, OpenInput};
use napi_derive::napi;
use secrecy::SecretString;

/// The core's view of `new Authpipe()` options; the provider settings stay JSON.
fn options(
    input: OpenInput,
) -> authpipe_core::Result<(
    EngineOptions,
    serde_json::Map<String, serde_json::Value>,
    ConnectorSettings,
)> {
    let store = StoreLocation::parse_or_default(input.store.as_deref())?;
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
        http_timeout_ms: input.http_timeout_ms,
        provider_concurrency: input.provider_concurrency,
        health_check_interval_ms: input.health_check_interval_ms,
    }
    .validate()?;
    Ok((
        EngineOptions {
            store,
            keys,
            clock: None,
            key_rotation: KeyRotationPolicy::from_options(
                input.tenant_key_max_age_days,
                input.tenant_key_max_encryptions,
            )?,
        },
        providers,
        connector,
    ))
}

/// Checks options synchronously, so `new Authpipe()` can throw for them.
#[napi(catch_unwind)]
pub fn check_options(input: OpenInput) -> napi::Result<()> {
    let (options, providers, _) = options(input).napi()?;
    authpipe_core::check_options(&options).napi()?;
    Catalog::check(&providers).napi()
}

/// Opens (or joins) the engine for the configured store and returns an instance handle.
#[napi]
pub async fn open(input: OpenInput) -> napi::Result<NativeAuthpipe> {
    let (options, providers, connector) = options(input).napi()?;
    let http = authpipe_core::http_client(connector.timeout).napi()?;
    let catalog = Catalog::discover(providers, &http).await.napi()?;
    let opened = open_shared(options).await.napi()?;
    let connector = Connector::new(catalog, http, connector);
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
