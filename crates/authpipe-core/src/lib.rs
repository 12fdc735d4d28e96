//! The core of `@authpipe/node`: an encrypted, multi-tenant credential vault with an in-memory
//! cache that serves credentials without I/O. Plain Rust with no Node types, so it is tested
//! with `cargo test` alone; the napi binding at the repository root only converts.
//!
//! Map of the crate, one concern per module, each depending only on those below it:
//!
//! | module          | owns                                                                   |
//! |-----------------|------------------------------------------------------------------------|
//! | `connect`       | the connect flow: state, callback phases, sessions, deletion + revoke  |
//! | `webhook`       | `verifyWebhook`: the provider's scheme, the key, then the pure check   |
//! | `client`        | one `new Authpipe()`: an engine plus that instance's [`Connector`]     |
//! | `engine`        | ties store, vault and cache together; one per store per process;       |
//! |                 | serves credentials, refreshes (`engine/refresh/`) and probes           |
//! |                 | (`engine/probe.rs`) under store leases, follows other processes        |
//! | `protocol`      | OAuth on the wire: authorize URL, code exchange, refresh grant,        |
//! |                 | identity probe, revocation, the HTTP client (no engine, no store),     |
//! |                 | webhook signatures (`protocol/webhook.rs`, pure)                       |
//! | `providers`     | provider definitions (endpoints, quirks) and the app's settings        |
//! | `input`         | what callers hand the engine (imports), validated                       |
//! | `events`        | connection events, broadcast to every instance                          |
//! | `telemetry`     | the operator's view: metric families and structured log records         |
//! | `scheduler`     | one timer queue per engine: memo invalidation, refreshes, probes        |
//! | `maintenance`   | refresh timing and backoff                                             |
//! | `cache`         | sealed connections in memory, and `generations` for the JS memo        |
//! | [`store`]       | the `Store` trait (records, leases, change feed); SQLite, PostgreSQL   |
//! | `vault`         | master keyring, per-tenant data keys, the sealed record format         |
//! | [`records`]     | what the store persists (secret fields already sealed)                 |
//! | `secrets`       | one type per secret role (access token, state, ...), none printable    |
//! | `string_enum`   | the macro behind every public string list (codes, statuses, events)    |
//! | `ids`, `error`  | validated ids; [`Error`] with a stable [`ErrorCode`]                    |
//!
//! The modules are private: what callers use is re-exported here. `store` and `records` stay
//! public as modules, since a store implementation (and its conformance tests) speaks them.

#![forbid(unsafe_code)]

mod cache;
mod client;
mod clock;
mod connect;
mod engine;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod generations;
mod ids;
mod input;
mod maintenance;
mod protocol;
mod providers;
pub mod records;
mod scheduler;
mod secrets;
pub mod store;
mod string_enum;
mod telemetry;
#[cfg(test)]
mod test_support;
mod vault;
mod webhook;

pub use client::{encode_cursor, Client, ListFilter, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use clock::{Clock, ManualClock, SystemClock};
pub use connect::{Callback, Deletion, Revocation, SessionGrant, StartRequest, Started};
pub use engine::{
    check_options, open_shared, open_unshared, ConnectionPage, ConnectionSecrets, Credential,
    DevKeyNotice, Engine, EngineOptions, EngineStats, Health, KeyRotationPolicy, Lookup,
    MasterKeySource, Opened, Pending, RefreshReason, Rotation, StoreLocation, TenantKeyRotation,
};
pub use error::{Error, ErrorCode, Result};
pub use events::{Event, EventKind};
pub use generations::{GenerationPage, PAGE_SLOTS};
pub use ids::{ConnectionKey, ProviderId, SecretName, TenantId, UserId};
pub use input::{ImportFields, ImportRequest, ImportedCredential};
pub use protocol::http::client as http_client;
pub use protocol::webhook::{verify_webhook_signature, WebhookRequest};
pub use protocol::{Connector, ConnectorOptions, ConnectorSettings};
pub use providers::{
    CallbackMethod, Catalog, ProviderSettings, WebhookScheme, DEFAULT_WEBHOOK_SECRET_NAME,
};
pub use secrets::{
    AccessToken, ApiKey, BrowserBinding, ClientSecret, PkceVerifier, RefreshToken, SessionToken,
    StateToken,
};
pub use telemetry::metrics::HistogramSnapshot;
pub use telemetry::{Family, Level, MetricKind, Record, Series, Telemetry};
pub use vault::MasterKeyConfig;
pub use webhook::WebhookCall;
