//! The napi binding of `@authpipe/node`: a thin shell over `authpipe-core`. It converts JS
//! values to core types and back and maps errors; the public API and its fast path live in
//! the TypeScript wrapper (`lib/`), which treats this module's exports as internal.

mod authpipe;
mod convert;
mod generation_pages;

use authpipe::NativeAuthpipe;
use authpipe_core::client::Client;
use authpipe_core::engine::{open_shared, EngineOptions, MasterKeySource, StoreLocation};
use authpipe_core::ids::ProviderId;
use authpipe_core::providers::Catalog;
use authpipe_core::vault::MasterKeyConfig;
use convert::{IntoNapi, OpenInput};
use napi_derive::napi;
use secrecy::SecretString;

/// The core's view of `new Authpipe()` options.
fn options(input: OpenInput) -> authpipe_core::Result<(EngineOptions, Catalog)> {
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
    let custom = input
        .providers
        .into_iter()
        .map(ProviderId::parse)
        .collect::<authpipe_core::Result<Vec<_>>>()?;
    Ok((
        EngineOptions {
            store,
            keys,
            clock: None,
        },
        Catalog::new(custom),
    ))
}

/// Checks options synchronously, so `new Authpipe()` can throw for them.
#[napi(catch_unwind)]
pub fn check_options(input: OpenInput) -> napi::Result<()> {
    let (options, _) = options(input).napi()?;
    authpipe_core::engine::check_options(&options).napi()
}

/// Opens (or joins) the engine for the configured store and returns an instance handle.
#[napi]
pub async fn open(input: OpenInput) -> napi::Result<NativeAuthpipe> {
    let (options, catalog) = options(input).napi()?;
    let opened = open_shared(options).await.napi()?;
    Ok(NativeAuthpipe::new(
        Client::new(opened.engine, catalog),
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
