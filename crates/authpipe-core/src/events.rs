//! Connection events, broadcast to every instance on the engine. Payloads carry ids, status,
//! times and error codes, never a secret.

use crate::ids::ConnectionKey;
use crate::records::{ConnectionStatus, LastError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Refreshed,
    /// A transient refresh failure; the connection keeps serving its still-valid token.
    RefreshFailed,
    Degraded,
    Revoked,
    Recovered,
    Deleted,
}

impl EventKind {
    /// The event's name in JS (`authpipe.on(name, ...)`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "connection.created",
            Self::Refreshed => "connection.refreshed",
            Self::RefreshFailed => "connection.refresh_failed",
            Self::Degraded => "connection.degraded",
            Self::Revoked => "connection.revoked",
            Self::Recovered => "connection.recovered",
            Self::Deleted => "connection.deleted",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub key: ConnectionKey,
    pub at: i64,
    pub status: Option<ConnectionStatus>,
    pub expires_at: Option<i64>,
    pub error: Option<LastError>,
    /// For `RefreshFailed`: which consecutive failure this is, and when the next try is due.
    pub attempt: Option<u32>,
    pub next_retry_at: Option<i64>,
}

impl Event {
    pub fn new(kind: EventKind, key: &ConnectionKey, at: i64) -> Self {
        Self {
            kind,
            key: key.clone(),
            at,
            status: None,
            expires_at: None,
            error: None,
            attempt: None,
            next_retry_at: None,
        }
    }
}
