//! The core of `@authpipe/node`: an encrypted, multi-tenant credential vault with an in-memory
//! cache that serves credentials without I/O. Plain Rust with no Node types, so it is tested
//! with `cargo test` alone; the napi binding at the repository root only converts.
//!
//! Map of the crate, one concern per module:
//!
//! | module        | owns                                                                  |
//! |---------------|-----------------------------------------------------------------------|
//! | [`ids`]       | validated tenant, user, provider and secret ids                       |
//! | [`records`]   | what the store persists (secret fields already sealed)                |
//! | [`vault`]     | master keyring, per-tenant data keys, the sealed record format        |
//! | [`store`]     | the `Store` trait (records, leases, change feed); SQLite, PostgreSQL  |
//! | [`cache`]     | sealed connections in memory, and [`generations`] for the JS memo     |
//! | [`scheduler`] | one timer queue per engine: memo invalidation, refreshes, probes      |
//! | [`maintenance`] | refresh timing and backoff (the procedures: `engine/maintain.rs`)   |
//! | [`events`]    | connection events broadcast to every instance                          |
//! | [`providers`] | provider definitions (endpoints, quirks) and the app's settings        |
//! | [`connect`]   | the connect flow: PKCE, state, callback, code exchange, identity, revoke |
//! | [`engine`]    | ties store, vault and cache together; one per store per process;     |
//! |               | refreshes and probes under store leases, follows other processes     |
//! | [`client`]    | one `new Authpipe()`: an engine plus that instance's configuration   |
//! | [`error`]     | `Error` with a stable `ErrorCode`                                     |
//! | `string_enum` | the macro behind every public string list (codes, statuses, events)  |

pub mod cache;
pub mod client;
pub mod clock;
pub mod connect;
pub mod engine;
pub mod error;
pub mod events;
pub mod generations;
pub mod ids;
pub mod maintenance;
pub mod providers;
pub mod records;
pub mod scheduler;
pub mod store;
mod string_enum;
pub mod vault;

pub use error::{Error, ErrorCode, Result};
