//! OAuth as the provider sees it, and nothing of ours: building the authorize URL, exchanging a
//! code, the refresh grant, the identity probe, revocation, the HTTP client they share, and
//! verifying the signatures of the webhooks providers send (`webhook`). No
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
pub mod webhook;

mod connector;

pub use connector::{Connector, ConnectorOptions, ConnectorSettings};
pub use revoke::Revocation;
