//! OAuth as the provider sees it, and nothing of ours: building the authorize URL, exchanging a
//! code, the refresh grant, the identity probe, revocation, and the HTTP client they share. No
//! store, vault or engine here; callers pass in what a request needs and get back what the
//! provider said, classified ([`refresh::RefreshFailure`], [`Revocation`], typed errors).

pub mod authorize;
pub mod exchange;
pub mod http;
pub mod identity;
pub mod refresh;
pub mod revoke;
pub(crate) mod scrub;
pub mod token;

mod connector;

pub use connector::{Connector, ConnectorOptions, ConnectorSettings};
pub use revoke::Revocation;
