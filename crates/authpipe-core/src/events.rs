//! Connection events, broadcast to every instance on the engine. Payloads carry ids, status,
//! times and error codes, never a secret.

use crate::ids::ConnectionKey;
use crate::records::{ConnectionRecord, ConnectionStatus, LastError};
use tokio::sync::broadcast;

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

impl Event {
    /// An event about `record` as it stands: its status, expiry and last error.
    pub fn about(kind: EventKind, record: &ConnectionRecord, at: i64) -> Self {
        let mut event = Self::new(kind, &record.key, at);
        event.status = Some(record.status);
        event.expires_at = record.expires_at;
        event.error = record.last_error.clone();
        event
    }
}

/// Events buffered per subscriber before a slow one starts missing them.
const EVENT_BUFFER: usize = 4096;

/// Where an engine's events go: every subscribed instance gets each one.
pub struct EventBus(broadcast::Sender<Event>);

impl Default for EventBus {
    fn default() -> Self {
        Self(broadcast::channel(EVENT_BUFFER).0)
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }

    /// Sends to the subscribers there are (none is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.0.send(event);
    }
}
